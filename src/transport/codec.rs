//! How a batch of elements becomes the payload of one ring frame, and back.
//!
//! ```text
//! payload = kind: u8 | 3 zero bytes | count: u32 (little endian) | body
//! kind 1, plain data: body = count × size_of::<T>() bytes, the elements' own bytes
//! kind 2, postcard:   body = count × (len: u32 | len bytes of postcard)
//! ```
//!
//! Plain-data element types (the primitive integers and floats, and any `bytemuck::Pod` type
//! declared with [`Graph::plain_data`](crate::Graph::plain_data)) are copied as bytes: no
//! encoding at all. Every other type is encoded with postcard, element by element, into a scratch buffer
//! the encoder keeps (no allocation per element). The ring's bytes are another process's to
//! write, so they are read once, into private memory, before anything is checked or decoded:
//! plain data straight into the batch's allocation, postcard records into a buffer the feeder
//! reuses (see [`Payload`]). Decoding trusts nothing: the kind, the count
//! (bounded by the payload's length before anything is allocated), every record length and the
//! absence of trailing bytes are checked, and a postcard error names the element's index.

use std::any::TypeId;
use std::marker::PhantomData;

use super::shm::ring::{Payload, PayloadMut};
use crate::stream::Element;

const KIND_PLAIN: u8 = 1;
const KIND_POSTCARD: u8 = 2;
const HEADER: usize = 8;

/// Types declared plain data with `Graph::plain_data` (only `bytemuck::Pod` types can be).
static DECLARED_PLAIN: std::sync::RwLock<Vec<TypeId>> = std::sync::RwLock::new(Vec::new());

/// Declares `T` plain data: its batches cross processes as their bytes.
pub(crate) fn declare_plain<T: bytemuck::Pod>() {
    let mut declared = DECLARED_PLAIN.write().unwrap_or_else(|p| p.into_inner());
    if !declared.contains(&TypeId::of::<T>()) {
        declared.push(TypeId::of::<T>());
    }
}

/// The element size if `T` is a plain-data type whose every bit pattern is a valid value and
/// that has no padding: a primitive number, or a `bytemuck::Pod` type declared with
/// `declare_plain` (whose bound guarantees both).
fn plain_size<T: 'static>() -> Option<usize> {
    let t = TypeId::of::<T>();
    if DECLARED_PLAIN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&t)
    {
        return Some(std::mem::size_of::<T>());
    }
    let plain = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<u128>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<i128>(),
        TypeId::of::<isize>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
    ];
    plain.contains(&t).then(std::mem::size_of::<T>)
}

/// Encodes and decodes batches of `T`.
pub(crate) struct Codec<T> {
    plain: Option<usize>,
    /// Postcard bytes of the elements being encoded, and where each ends.
    scratch: Vec<u8>,
    ends: Vec<usize>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Element> Codec<T> {
    pub fn new() -> Self {
        Codec {
            plain: plain_size::<T>(),
            scratch: Vec::new(),
            ends: Vec::new(),
            _t: PhantomData,
        }
    }

    /// Bytes a ring needs per element, roughly (to size a ring from a capacity in elements).
    pub fn estimate(&self) -> usize {
        self.plain.unwrap_or(std::mem::size_of::<T>().max(8) + 4)
    }

    /// Plans a frame of at most `max_len` bytes for the first elements of `items`: how many
    /// elements go in it and the payload's length. An element that alone exceeds `max_len` is
    /// an error.
    pub fn plan(&mut self, items: &[T], max_len: usize) -> Result<(usize, usize), String> {
        if let Some(size) = self.plain {
            let n = items
                .len()
                .min(max_len.saturating_sub(HEADER) / size.max(1));
            if n == 0 && !items.is_empty() {
                return Err(format!(
                    "an element of {size} bytes does not fit a frame of {max_len} bytes"
                ));
            }
            return Ok((n, HEADER + n * size));
        }
        self.scratch.clear();
        self.ends.clear();
        let mut len = HEADER;
        for (i, item) in items.iter().enumerate() {
            let start = self.scratch.len();
            self.scratch = postcard::to_extend(item, std::mem::take(&mut self.scratch))
                .map_err(|e| format!("cannot encode element {i} with postcard: {e}"))?;
            let record = 4 + self.scratch.len() - start;
            if len + record > max_len {
                self.scratch.truncate(start);
                if i == 0 {
                    return Err(format!(
                        "an encoded element of {record} bytes does not fit a frame of {max_len} bytes; raise the connection's capacity"
                    ));
                }
                break;
            }
            len += record;
            self.ends.push(self.scratch.len());
        }
        Ok((self.ends.len(), len))
    }

    /// Writes the frame planned by the last `plan` for `items` into the ring payload `buf`
    /// (exactly the planned length), with raw copies of private bytes (see [`PayloadMut`]).
    pub fn write(&self, items: &[T], n: usize, buf: &mut PayloadMut<'_>) {
        let kind = if self.plain.is_some() {
            KIND_PLAIN
        } else {
            KIND_POSTCARD
        };
        let mut header = [kind, 0, 0, 0, 0, 0, 0, 0];
        header[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        buf.write_at(0, &header);
        match self.plain {
            Some(size) => {
                // SAFETY: `T` is plain data (`plain_size`: a primitive number or a declared
                // `bytemuck::Pod` type): no padding, every byte initialised, so viewing `n` of
                // them as `n * size` bytes is sound.
                let bytes =
                    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), n * size) };
                buf.write_at(HEADER, bytes);
            }
            None => {
                let mut at = HEADER;
                let mut start = 0;
                for &end in &self.ends[..n] {
                    let rec = &self.scratch[start..end];
                    buf.write_at(at, &(rec.len() as u32).to_le_bytes());
                    buf.write_at(at + 4, rec);
                    at += 4 + rec.len();
                    start = end;
                }
            }
        }
    }

    /// Decodes one frame's payload, read in place from the ring, into the shared allocation a
    /// batch is made of. Every shared byte is read once, into private memory, before anything
    /// is checked or decoded (see [`Payload`]): plain data is copied straight from the ring
    /// into the batch's allocation (one copy, no intermediate vector) after its 8-byte header
    /// was copied and checked; anything else is copied into `private` (the caller's buffer,
    /// reused from frame to frame) and decoded from there.
    pub fn decode_shared(
        &self,
        payload: Payload<'_>,
        private: &mut Vec<u8>,
    ) -> Result<std::sync::Arc<[T]>, String> {
        if let (Some(size), true) = (self.plain, payload.len() >= HEADER) {
            let mut header = [0u8; HEADER];
            payload.copy_to(0, &mut header);
            if header[0] == KIND_PLAIN {
                let count = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
                let body_len = payload.len() - HEADER;
                if count.checked_mul(size) != Some(body_len) {
                    return Err(format!(
                        "a frame says {count} elements of {size} bytes but carries {body_len} bytes"
                    ));
                }
                let mut shared = std::sync::Arc::<[T]>::new_uninit_slice(count);
                let slots = std::sync::Arc::get_mut(&mut shared).expect("a new Arc is unique");
                // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`); the
                // slice has room for `count` elements, exactly `body_len` bytes, the payload's
                // bytes after the header; it is private, so it does not overlap the ring. Every
                // element is then initialised, so `assume_init` is sound.
                unsafe {
                    payload.copy_to_ptr(HEADER, slots.as_mut_ptr().cast::<u8>(), body_len);
                    return Ok(shared.assume_init());
                }
            }
        }
        payload.copy_into(private);
        self.decode(private).map(Into::into)
    }

    /// Decodes one frame's payload from private memory, checking everything (see the module
    /// docs).
    pub fn decode(&self, payload: &[u8]) -> Result<Vec<T>, String> {
        if payload.len() < HEADER {
            return Err(format!(
                "a frame of {} bytes is shorter than its 8-byte header",
                payload.len()
            ));
        }
        let kind = payload[0];
        let count = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes")) as usize;
        let body = &payload[HEADER..];
        match (kind, self.plain) {
            (KIND_PLAIN, Some(size)) => {
                if count.checked_mul(size) != Some(body.len()) {
                    return Err(format!(
                        "a frame says {count} elements of {size} bytes but carries {} bytes",
                        body.len()
                    ));
                }
                let mut out: Vec<T> = Vec::with_capacity(count);
                // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`); the
                // vector has room for `count` elements, which is exactly `body.len()` bytes;
                // the regions do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        body.as_ptr(),
                        out.as_mut_ptr().cast::<u8>(),
                        body.len(),
                    );
                    out.set_len(count);
                }
                Ok(out)
            }
            (KIND_POSTCARD, None) => {
                if count > body.len() / 4 {
                    return Err(format!(
                        "a frame says {count} elements but carries only {} bytes",
                        body.len()
                    ));
                }
                let mut out = Vec::with_capacity(count);
                let mut rest = body;
                for i in 0..count {
                    if rest.len() < 4 {
                        return Err(format!(
                            "element {i} of {count}: the frame ends inside its length"
                        ));
                    }
                    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    rest = &rest[4..];
                    if len > rest.len() {
                        return Err(format!(
                            "element {i} of {count}: length {len} runs past the frame's end ({} bytes left)",
                            rest.len()
                        ));
                    }
                    let v = postcard::from_bytes::<T>(&rest[..len]).map_err(|e| {
                        format!(
                            "element {i} of {count}: postcard cannot decode it as {}: {e}",
                            std::any::type_name::<T>()
                        )
                    })?;
                    out.push(v);
                    rest = &rest[len..];
                }
                if !rest.is_empty() {
                    return Err(format!(
                        "{} bytes follow the last of {count} elements",
                        rest.len()
                    ));
                }
                Ok(out)
            }
            (k, _) => Err(format!(
                "frame kind {k} is not the kind of {} ({})",
                std::any::type_name::<T>(),
                if self.plain.is_some() {
                    "plain data, 1"
                } else {
                    "postcard, 2"
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Element + PartialEq + std::fmt::Debug>(items: &[T], max: usize) -> Vec<T> {
        let mut c = Codec::<T>::new();
        let mut out = Vec::new();
        let mut rest = items;
        while !rest.is_empty() {
            let (n, len) = c.plan(rest, max).unwrap();
            assert!(n > 0 && len <= max);
            let mut buf = vec![0xAA; len];
            c.write(rest, n, &mut PayloadMut::from_private(&mut buf));
            let shared = c
                .decode_shared(Payload::from_private(&buf), &mut Vec::new())
                .unwrap();
            let owned = c.decode(&buf).unwrap();
            assert_eq!(&shared[..], &owned[..]);
            out.extend(owned);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn plain_and_postcard_round_trip_across_frames() {
        let nums: Vec<u64> = (0..1000).collect();
        assert_eq!(round_trip(&nums, 256), nums);
        let floats: Vec<f64> = (0..100).map(|i| i as f64 / 3.0).collect();
        assert_eq!(round_trip(&floats, 64), floats);
        let words: Vec<(u32, String)> =
            (0..300).map(|i| (i, "x".repeat(i as usize % 17))).collect();
        assert_eq!(round_trip(&words, 200), words);
    }

    #[derive(
        Clone,
        Copy,
        Debug,
        PartialEq,
        bytemuck::Pod,
        bytemuck::Zeroable,
        serde::Serialize,
        serde::Deserialize,
    )]
    #[repr(C)]
    struct Sample {
        t: u64,
        v: f32,
        w: f32,
    }

    #[test]
    fn declared_pod_types_travel_as_bytes() {
        let items: Vec<Sample> = (0..100)
            .map(|i| Sample {
                t: i,
                v: i as f32,
                w: -1.5,
            })
            .collect();
        let mut before = Codec::<Sample>::new();
        let (n, len) = before.plan(&items, 4096).unwrap();
        let mut buf = vec![0; len];
        before.write(&items, n, &mut PayloadMut::from_private(&mut buf));
        assert_eq!(buf[0], KIND_POSTCARD, "undeclared: postcard");
        declare_plain::<Sample>();
        let mut after = Codec::<Sample>::new();
        let (n, len) = after.plan(&items, 4096).unwrap();
        assert_eq!(
            (n, len),
            (100, HEADER + 100 * 16),
            "declared: 16 bytes each, no encoding"
        );
        let mut buf = vec![0; len];
        after.write(&items, n, &mut PayloadMut::from_private(&mut buf));
        assert_eq!(buf[0], KIND_PLAIN);
        assert_eq!(
            &after
                .decode_shared(Payload::from_private(&buf), &mut Vec::new())
                .unwrap()[..],
            &items[..]
        );
        assert_eq!(round_trip(&items, 200), items);
    }

    #[test]
    fn an_element_larger_than_a_frame_is_an_error() {
        let mut c = Codec::<String>::new();
        let err = c.plan(&["y".repeat(500)], 100).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let c = Codec::<u64>::new();
        assert!(c
            .decode(&[1, 0, 0, 0, 5, 0, 0, 0, 1, 2, 3])
            .unwrap_err()
            .contains("says 5 elements"));
        assert!(c
            .decode(&[2, 0, 0, 0, 0, 0, 0, 0])
            .unwrap_err()
            .contains("kind 2"));
        assert!(c.decode(&[1, 0]).unwrap_err().contains("shorter"));
        let s = Codec::<String>::new();
        assert!(s
            .decode(&[2, 0, 0, 0, 255, 255, 255, 255])
            .unwrap_err()
            .contains("says 4294967295"));
        assert!(s
            .decode(&[2, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1])
            .unwrap_err()
            .contains("runs past"));
        assert!(s
            .decode(&[2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5, b'a'])
            .unwrap_err()
            .contains("postcard"));
        assert!(s
            .decode(&[2, 0, 0, 0, 0, 0, 0, 0, 7])
            .unwrap_err()
            .contains("follow"));
        // Random bytes: never a panic.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = s.decode(&bytes);
            let _ = c.decode(&bytes);
            let _ = c.decode_shared(Payload::from_private(&bytes), &mut Vec::new());
            let _ = s.decode_shared(Payload::from_private(&bytes), &mut Vec::new());
        }
    }
}
