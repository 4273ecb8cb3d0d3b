//! How a batch of elements becomes the payload of one ring frame, and back.
//!
//! ```text
//! payload = kind: u8 | 3 zero bytes | word: u32 (little endian) | body
//! kind 1, plain data: word = count, body = count × size_of::<T>() bytes, the elements' own bytes
//! kind 2, postcard:   word = count, body = count × (len: u32 | len bytes of postcard)
//! kind 3, first part: word = total, body = the first bytes of one element's record
//! kind 4, next part:  word = offset, body = bytes offset.. of that record
//! kind 5, mark:       word = tag (0 watermark, 1 idle), body = value: u64 (the watermark; 0
//!                     for idle), 8 bytes exactly
//! ```
//!
//! # Marks
//!
//! A [`Mark`] (a watermark, or idleness) is a frame of its own, of no element, between the
//! frames of the data around it: it travels in order with them and is never merged into a
//! batch ([`mark_frame`] writes it, [`Reader::read`] returns [`Decoded::Mark`]). Like any
//! frame other than a part, it never comes between the parts of a large element (the writer
//! sends it behind them). Its tag and length are checked like everything else: an unknown
//! tag, a body that is not 8 bytes, or an idleness mark with a value are corrupt data.
//!
//! # Large elements
//!
//! An element whose record (its postcard bytes, or its own bytes for plain data) does not fit
//! one frame with its header travels as **parts**: a kind-3 frame with the record's `total`
//! length and its first bytes, then kind-4 frames, each with the `offset` of its bytes in the
//! record, until `total` bytes have come; nothing else comes between them. A part has any
//! length from 1 byte to a largest frame's: the writer shortens one to the room the ring has. The writer refuses
//! a record over [`MAX_ELEMENT_BYTES`] (naming its size and the limit), so any element up to
//! that crosses any ring; the reader reassembles parts in private memory ([`Reader`]), checks
//! `total` against the same limit before it reserves anything, and checks every offset.
//!
//! A writer killed between the parts of an element leaves it cut short. The writer restarted
//! in its place takes the producer role over, and its first frame is flagged so
//! ([`Payload::after_take_over`]): there, and only there, the reader drops the element it was
//! reassembling ([`Reader::take_abandoned`]): the restarted writer sends it again if its
//! input still holds it. Anywhere else, an element cut short by another frame is corrupt data.
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
//! Each record is decoded within a budget ([`bounded`](super::bounded)): sequence and map
//! elements at most eight per byte of the record (and 256 more), nesting at most 128 levels,
//! so that zero-sized values and deep nesting, which take no bytes, cannot keep a reader
//! counting for ever or overflow its stack.

use std::any::TypeId;
use std::marker::PhantomData;

use super::bounded;
use super::shm::ring::{Payload, PayloadMut};
use crate::stream::{Element, Mark, MAX_ELEMENT_BYTES};

const KIND_PLAIN: u8 = 1;
const KIND_POSTCARD: u8 = 2;
const KIND_FIRST: u8 = 3;
const KIND_NEXT: u8 = 4;
const KIND_MARK: u8 = 5;
const HEADER: usize = 8;

/// The bytes of a payload's header (kind, and count or offset) before its body.
pub(crate) const PAYLOAD_HEADER_BYTES: usize = HEADER;

/// A mark's tag: a watermark (the value is its time).
const MARK_WATERMARK: u32 = 0;
/// A mark's tag: idleness (the value is 0).
const MARK_IDLE: u32 = 1;

/// Bytes of a mark frame's payload: the header and the value.
pub(crate) const MARK_FRAME_LEN: usize = HEADER + 8;

/// The tag and value `mark` travels as (the ring's kind-5 frame; a TCP link's Mark frame).
pub(crate) fn mark_parts(mark: Mark) -> (u32, u64) {
    match mark {
        Mark::Watermark(w) => (MARK_WATERMARK, w),
        Mark::Idle => (MARK_IDLE, 0),
    }
}

/// The mark a tag and value stand for; an error naming what is wrong for an unknown tag or an
/// idleness mark with a value.
pub(crate) fn mark_from_parts(tag: u32, value: u64) -> Result<Mark, String> {
    match (tag, value) {
        (MARK_WATERMARK, w) => Ok(Mark::Watermark(w)),
        (MARK_IDLE, 0) => Ok(Mark::Idle),
        (MARK_IDLE, v) => Err(format!("an idleness mark carries a value ({v}), not 0")),
        (t, _) => Err(format!(
            "a mark with tag {t}, neither 0 (watermark) nor 1 (idle)"
        )),
    }
}

/// The payload of the frame of `mark` ([`MARK_FRAME_LEN`] bytes).
pub(crate) fn mark_frame(mark: Mark) -> [u8; MARK_FRAME_LEN] {
    let (tag, value) = mark_parts(mark);
    let mut f = [0u8; MARK_FRAME_LEN];
    f[0] = KIND_MARK;
    f[4..8].copy_from_slice(&tag.to_le_bytes());
    f[HEADER..].copy_from_slice(&value.to_le_bytes());
    f
}

/// What fits the next frame (see [`Codec::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A frame of `n` whole elements, a payload of `len` bytes.
    Frame { n: usize, len: usize },
    /// The first element alone does not fit a frame: it goes in parts
    /// ([`Codec::take_large`]).
    Large,
}

/// The header of part `at` of a record of `total` bytes: a first part (`at == 0`) says the
/// total, a next part its offset.
pub(crate) fn part_header(at: usize, total: usize) -> [u8; HEADER] {
    let (kind, word) = if at == 0 {
        (KIND_FIRST, total)
    } else {
        (KIND_NEXT, at)
    };
    let mut h = [kind, 0, 0, 0, 0, 0, 0, 0];
    h[4..8].copy_from_slice(&(word as u32).to_le_bytes());
    h
}

/// Counts the elements of a ring's frames, read in order: what a writer that took a ring over
/// counts in flight of the frames its dead predecessor left unreleased (see
/// `transport::Credit`).
#[derive(Default)]
pub(crate) struct FrameCounter {
    /// The record length of the large element whose parts are being counted.
    total: Option<usize>,
}

impl FrameCounter {
    /// The elements `payload` completes: a batch's count, 1 for the part that ends a large
    /// element, 0 for any other part, a mark, or what is not a frame of this codec (the bytes
    /// are another process's: a wrong count only makes the writer wait, or write sooner, by
    /// what the reader's own frames claim).
    pub fn elements(&mut self, payload: &Payload<'_>) -> usize {
        if payload.len() < HEADER {
            return 0;
        }
        let mut header = [0u8; HEADER];
        payload.copy_to(0, &mut header);
        let word = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let body = payload.len() - HEADER;
        let (total, at) = match header[0] {
            KIND_PLAIN | KIND_POSTCARD => {
                self.total = None;
                return word;
            }
            KIND_FIRST => (word, 0),
            KIND_NEXT => match self.total {
                Some(total) => (total, word),
                None => return 0,
            },
            _ => return 0,
        };
        if at.saturating_add(body) >= total {
            self.total = None;
            1
        } else {
            self.total = Some(total);
            0
        }
    }
}

/// The bytes of record payload a part frame of at most `max_len` bytes carries.
pub(crate) fn part_room(max_len: usize) -> usize {
    max_len - HEADER
}

/// Types declared plain data with `Graph::plain_data` (only `bytemuck::Pod` types can be).
static DECLARED_PLAIN: std::sync::RwLock<Vec<TypeId>> = std::sync::RwLock::new(Vec::new());

/// Declares `T` plain data: its batches cross processes as their bytes.
pub(crate) fn declare_plain<T: bytemuck::Pod>() {
    let mut declared = DECLARED_PLAIN.write().unwrap_or_else(|p| p.into_inner());
    if !declared.contains(&TypeId::of::<T>()) {
        declared.push(TypeId::of::<T>());
    }
}

/// The element type's fingerprint: the first 8 bytes of SHA-256 over the type's name, its size
/// and whether it travels as plain bytes. Stable across builds of the same code, different when
/// either side's type changes shape: the links between hosts and through the broker check it.
pub(crate) fn type_fingerprint<T: Element>() -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::any::type_name::<T>().as_bytes());
    h.update((std::mem::size_of::<T>() as u64).to_le_bytes());
    h.update([u8::from(plain_size::<T>().is_some())]);
    let digest = h.finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The element size if `T` is a plain-data type whose every bit pattern is a valid value and
/// that has no padding: a primitive number, or a `bytemuck::Pod` type declared with
/// `declare_plain` (whose bound guarantees both). Never for a zero-sized type: a plain frame's
/// element count is bounded only by its bytes, so a peer's 8-byte frame of "4 billion `()`"
/// would pass; encoded (postcard, a 4-byte length per element), each element costs the peer
/// bytes it must send.
pub(crate) fn plain_size<T: 'static>() -> Option<usize> {
    if std::mem::size_of::<T>() == 0 {
        return None;
    }
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

/// An error if a record of `len` bytes exceeds [`MAX_ELEMENT_BYTES`].
fn too_large(len: usize) -> Result<(), String> {
    if len > MAX_ELEMENT_BYTES {
        return Err(format!(
            "an element of {len} bytes (encoded) is larger than the largest element a \
             connection between processes carries ({MAX_ELEMENT_BYTES} bytes, \
             iotstream::MAX_ELEMENT_BYTES)"
        ));
    }
    Ok(())
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

    /// The ring bytes a frame holding a single element of `T` takes: the ring's frame header,
    /// this payload's header and the element, padded to 8 (24 bytes for a `u64`). Exact for
    /// plain data, the worst case per element (a frame of more elements takes less per
    /// element). For encoded types the element's postcard size is unknown before encoding: it
    /// is estimated as `size_of::<T>()` (at least 8) plus its 4-byte length, which sizes rings
    /// for throughput only; what keeps their elements safe does not depend on it (see
    /// `transport::held`).
    pub fn one_element_frame(&self) -> usize {
        let body = self.plain.unwrap_or(4 + std::mem::size_of::<T>().max(8));
        super::shm::ring::FRAME_HEADER + (HEADER + body).div_ceil(8) * 8
    }

    /// Plans a frame of at most `max_len` bytes for the first elements of `items`: how many
    /// elements go in it and the payload's length, or [`Plan::Large`] if the first element
    /// alone does not fit (its record is then kept for [`take_large`](Self::take_large)). An
    /// element whose record exceeds [`MAX_ELEMENT_BYTES`] is an error naming both sizes.
    pub fn plan(&mut self, items: &[T], max_len: usize) -> Result<Plan, String> {
        if let Some(size) = self.plain {
            let n = items
                .len()
                .min(max_len.saturating_sub(HEADER) / size.max(1));
            if n == 0 && !items.is_empty() {
                too_large(size)?;
                return Ok(Plan::Large);
            }
            return Ok(Plan::Frame {
                n,
                len: HEADER + n * size,
            });
        }
        self.scratch.clear();
        self.ends.clear();
        let mut len = HEADER;
        for (i, item) in items.iter().enumerate() {
            let start = self.scratch.len();
            self.scratch = postcard::to_extend(item, std::mem::take(&mut self.scratch))
                .map_err(|e| format!("cannot encode element {i} with postcard: {e}"))?;
            let record = self.scratch.len() - start;
            if len + 4 + record > max_len {
                if i == 0 {
                    too_large(record)?;
                    return Ok(Plan::Large);
                }
                self.scratch.truncate(start);
                break;
            }
            len += 4 + record;
            self.ends.push(self.scratch.len());
        }
        Ok(Plan::Frame {
            n: self.ends.len(),
            len,
        })
    }

    /// After [`Plan::Large`] for `first`: its record (postcard bytes, or its own bytes for
    /// plain data), in `into` (replacing its contents).
    pub fn take_large(&mut self, first: &T, into: &mut Vec<u8>) {
        into.clear();
        match self.plain {
            Some(size) => {
                // SAFETY: `T` is plain data (see `write`): its `size` bytes are initialised.
                let bytes =
                    unsafe { std::slice::from_raw_parts((first as *const T).cast::<u8>(), size) };
                into.extend_from_slice(bytes);
            }
            None => std::mem::swap(into, &mut self.scratch),
        }
    }

    /// Writes the frame planned by the last `plan` for `items` into the ring payload `buf`
    /// (exactly the planned length), with raw copies of private bytes (see [`PayloadMut`]).
    pub fn write(&self, items: &[T], n: usize, buf: &mut PayloadMut<'_>) {
        self.write_with(items, n, |at, bytes| buf.write_at(at, bytes));
    }

    /// For plain data: how many of `count` elements a frame of at most `max_len` bytes holds,
    /// and that payload's length; `None` for an encoded type (its records' sizes are known only
    /// once encoded) or when not one element fits. What [`write_made`](Self::write_made) writes.
    pub fn plan_made(&self, count: usize, max_len: usize) -> Option<(usize, usize)> {
        let size = self.plain?;
        let n = count.min(max_len.saturating_sub(HEADER) / size.max(1));
        (n > 0).then_some((n, HEADER + n * size))
    }

    /// Writes a frame of the `n` elements `make(0)`, …, `make(n - 1)` into the ring payload
    /// `buf`, each straight into its place: the frame [`write`](Self::write) would write for
    /// those elements, without them ever being in a vector. Plain data only, as planned by
    /// [`plan_made`](Self::plan_made).
    pub fn write_made(&self, n: usize, buf: &mut PayloadMut<'_>, make: impl FnMut(usize) -> T) {
        let size = self
            .plain
            .expect("write_made is planned for plain data only");
        debug_assert_eq!(size, std::mem::size_of::<T>());
        let mut header = [KIND_PLAIN, 0, 0, 0, 0, 0, 0, 0];
        header[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        buf.write_at(0, &header);
        buf.write_each(HEADER, n, make);
    }

    /// Appends the payload planned by the last `plan` for `items` to `out` (exactly the planned
    /// length): a TCP link's Data frame carries the same payload as a ring frame.
    pub fn append(&self, items: &[T], n: usize, out: &mut Vec<u8>) {
        let start = out.len();
        self.write_with(items, n, |at, bytes| {
            debug_assert_eq!(start + at, out.len(), "the payload is written in order");
            out.extend_from_slice(bytes);
        });
    }

    /// Appends the elements planned by the last `plan` for `items` to the payload that ends
    /// `out` and starts at `at` (one this codec wrote, of whole elements), as if they had
    /// been planned with the elements it holds: its body grows by the planned length less the
    /// header, and the count in its header by `n`. False, and `out` untouched, if that
    /// payload is not one of whole elements of this codec's kind (a large element's part).
    pub fn append_joined(&self, items: &[T], n: usize, out: &mut Vec<u8>, at: usize) -> bool {
        let kind = if self.plain.is_some() {
            KIND_PLAIN
        } else {
            KIND_POSTCARD
        };
        let Some(header) = out.get(at..at + HEADER) else {
            return false;
        };
        if header[0] != kind {
            return false;
        }
        let count = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let Some(count) = u32::try_from(n).ok().and_then(|n| count.checked_add(n)) else {
            return false;
        };
        let start = out.len();
        self.append(items, n, out);
        // The new elements' header goes: their body follows the earlier body.
        out.copy_within(start + HEADER.., start);
        out.truncate(out.len() - HEADER);
        out[at + 4..at + 8].copy_from_slice(&count.to_le_bytes());
        true
    }

    /// The planned payload's bytes, in order, each piece with its offset in the payload.
    fn write_with(&self, items: &[T], n: usize, mut put: impl FnMut(usize, &[u8])) {
        let kind = if self.plain.is_some() {
            KIND_PLAIN
        } else {
            KIND_POSTCARD
        };
        let mut header = [kind, 0, 0, 0, 0, 0, 0, 0];
        header[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        put(0, &header);
        match self.plain {
            Some(size) => {
                // SAFETY: `T` is plain data (`plain_size`: a primitive number or a declared
                // `bytemuck::Pod` type): no padding, every byte initialised, so viewing `n` of
                // them as `n * size` bytes is sound.
                let bytes =
                    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), n * size) };
                put(HEADER, bytes);
            }
            None => {
                let mut at = HEADER;
                let mut start = 0;
                for &end in &self.ends[..n] {
                    let rec = &self.scratch[start..end];
                    put(at, &(rec.len() as u32).to_le_bytes());
                    put(at + 4, rec);
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
    /// reused from frame to frame) and decoded from there. Parts of large elements are for a
    /// [`Reader`], which the feeder uses; this serves tests.
    #[cfg(test)]
    pub fn decode_shared(
        &self,
        payload: Payload<'_>,
        private: &mut Vec<u8>,
    ) -> Result<std::sync::Arc<[T]>, String> {
        if payload.len() < HEADER {
            return Err(format!(
                "a frame of {} bytes is shorter than its 8-byte header",
                payload.len()
            ));
        }
        let mut header = [0u8; HEADER];
        payload.copy_to(0, &mut header);
        self.decode_after_header(header, &payload, private)
    }

    /// [`decode_shared`](Self::decode_shared) with the payload's `header` already copied out:
    /// reads only the bytes after it.
    fn decode_after_header(
        &self,
        header: [u8; HEADER],
        payload: &Payload<'_>,
        private: &mut Vec<u8>,
    ) -> Result<std::sync::Arc<[T]>, String> {
        let body_len = payload.len() - HEADER;
        if let (Some(size), KIND_PLAIN) = (self.plain, header[0]) {
            let count = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
            if count.checked_mul(size) != Some(body_len) {
                return Err(format!(
                    "a frame says {count} elements of {size} bytes but carries {body_len} bytes"
                ));
            }
            let mut shared = std::sync::Arc::<[T]>::new_uninit_slice(count);
            let slots = std::sync::Arc::get_mut(&mut shared).expect("a new Arc is unique");
            // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`); the slice
            // has room for `count` elements, exactly `body_len` bytes, the payload's bytes
            // after the header; it is private, so it does not overlap the ring. Every element
            // is then initialised, so `assume_init` is sound.
            unsafe {
                payload.copy_to_ptr(HEADER, slots.as_mut_ptr().cast::<u8>(), body_len);
                return Ok(shared.assume_init());
            }
        }
        private.clear();
        private.reserve(payload.len());
        private.extend_from_slice(&header);
        // SAFETY: `private` has room for the `body_len` bytes after its `HEADER` (reserved),
        // is private memory, and they are initialised by the copy before `set_len`.
        unsafe {
            payload.copy_to_ptr(HEADER, private.as_mut_ptr().add(HEADER), body_len);
            private.set_len(payload.len());
        }
        self.decode(private).map(Into::into)
    }

    /// Like [`decode_after_header`](Self::decode_after_header), but appends the elements to
    /// `out` (a vector the caller reuses, from a pool) and returns how many: plain data is
    /// copied once, straight from the ring into `out`'s spare capacity, and needs no checking
    /// beyond its length (every bit pattern is a value); anything else is copied into
    /// `private` and decoded from there. On an error `out` is left as it was.
    fn append_after_header(
        &self,
        header: [u8; HEADER],
        payload: &Payload<'_>,
        private: &mut Vec<u8>,
        out: &mut Vec<T>,
    ) -> Result<usize, String> {
        let body_len = payload.len() - HEADER;
        if let (Some(size), KIND_PLAIN) = (self.plain, header[0]) {
            let count = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
            if count.checked_mul(size) != Some(body_len) {
                return Err(format!(
                    "a frame says {count} elements of {size} bytes but carries {body_len} bytes"
                ));
            }
            let have = out.len();
            out.reserve(count);
            // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`); `out` has
            // room for `count` more elements (reserved), exactly `body_len` bytes, the
            // payload's bytes after the header; it is private, so it does not overlap the
            // ring. Those elements are initialised by the copy before `set_len`.
            unsafe {
                payload.copy_to_ptr(HEADER, out.as_mut_ptr().add(have).cast::<u8>(), body_len);
                out.set_len(have + count);
            }
            return Ok(count);
        }
        private.clear();
        private.reserve(payload.len());
        private.extend_from_slice(&header);
        // SAFETY: as in `decode_after_header`.
        unsafe {
            payload.copy_to_ptr(HEADER, private.as_mut_ptr().add(HEADER), body_len);
            private.set_len(payload.len());
        }
        let have = out.len();
        self.decode_into(private, out)
            .inspect_err(|_| out.truncate(have))
    }

    /// Decodes the record of one large element, reassembled in private memory.
    fn decode_record(&self, record: &[u8]) -> Result<T, String> {
        if let Some(size) = self.plain {
            if record.len() != size {
                return Err(format!(
                    "a large element of {} bytes, but {} has {size}",
                    record.len(),
                    std::any::type_name::<T>()
                ));
            }
            // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`) of `size`
            // bytes, which `record` holds; the read is unaligned-safe.
            return Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) });
        }
        match bounded::take_from_bytes::<T>(record) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(format!(
                "{} bytes follow a large element of {} bytes",
                rest.len(),
                record.len() - rest.len()
            )),
            Err(e) => Err(format!(
                "a large element of {} bytes: postcard cannot decode it as {}: {e}",
                record.len(),
                std::any::type_name::<T>(),
            )),
        }
    }

    /// [`decode`](Self::decode) into the shared allocation a batch is made of: plain data is
    /// copied once, straight from `payload` into it (no intermediate vector); anything else,
    /// and any payload that does not check, goes through `decode` (the same errors).
    pub fn decode_shared_private(&self, payload: &[u8]) -> Result<std::sync::Arc<[T]>, String> {
        if let (Some(size), Some(header)) = (self.plain, payload.first_chunk::<HEADER>()) {
            let count = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
            let body = &payload[HEADER..];
            if header[0] == KIND_PLAIN && count.checked_mul(size) == Some(body.len()) {
                let mut shared = std::sync::Arc::<[T]>::new_uninit_slice(count);
                let slots = std::sync::Arc::get_mut(&mut shared).expect("a new Arc is unique");
                // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`); the
                // slice has room for `count` elements, exactly `body.len()` bytes; the regions
                // do not overlap (a new allocation). Every element is then initialised, so
                // `assume_init` is sound.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        body.as_ptr(),
                        slots.as_mut_ptr().cast::<u8>(),
                        body.len(),
                    );
                    return Ok(shared.assume_init());
                }
            }
        }
        self.decode(payload).map(std::sync::Arc::from)
    }

    /// Decodes one frame's payload from private memory, checking everything (see the module
    /// docs).
    pub fn decode(&self, payload: &[u8]) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        self.decode_into(payload, &mut out)?;
        Ok(out)
    }

    /// [`decode`](Self::decode), appending the elements to `out`; returns how many. On an
    /// error, some may have been appended.
    pub fn decode_into(&self, payload: &[u8], out: &mut Vec<T>) -> Result<usize, String> {
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
                let have = out.len();
                out.reserve(count);
                // SAFETY: `T` is plain data (every bit pattern valid, see `plain_size`); the
                // vector has room for `count` more elements (reserved), which is exactly
                // `body.len()` bytes; the regions do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        body.as_ptr(),
                        out.as_mut_ptr().add(have).cast::<u8>(),
                        body.len(),
                    );
                    out.set_len(have + count);
                }
                Ok(count)
            }
            (KIND_POSTCARD, None) => {
                if count > body.len() / 4 {
                    return Err(format!(
                        "a frame says {count} elements but carries only {} bytes",
                        body.len()
                    ));
                }
                // Room for what the frame's bytes could hold as `T`s in memory, not for the
                // count it claims: a peer's frame of 4-byte empty records would otherwise
                // reserve `size_of::<T>() / 4` times its size (gigabytes for large types)
                // before a single element decodes. More elements grow the vector as they come.
                let room = body.len().max(4096) / std::mem::size_of::<T>().max(1);
                out.reserve(count.min(room));
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
                    // Within a budget of what takes no bytes (zero-sized values, nesting: see
                    // `bounded`). Bytes after the value inside its record are left, as
                    // postcard's `from_bytes` leaves them (a last field that is serialized
                    // but `skip_deserializing`).
                    let v = match bounded::take_from_bytes::<T>(&rest[..len]) {
                        Ok((v, _)) => v,
                        Err(e) => {
                            return Err(format!(
                                "element {i} of {count}: postcard cannot decode it as {}: {e}",
                                std::any::type_name::<T>(),
                            ))
                        }
                    };
                    out.push(v);
                    rest = &rest[len..];
                }
                if !rest.is_empty() {
                    return Err(format!(
                        "{} bytes follow the last of {count} elements",
                        rest.len()
                    ));
                }
                Ok(count)
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

/// What one frame held (see [`Reader::read`]).
#[derive(Debug)]
pub(crate) enum Decoded<T> {
    /// Whole elements (possibly none).
    Batch(std::sync::Arc<[T]>),
    /// Whole elements (possibly none), appended to the caller's vector
    /// ([`Reader::read_into`]): how many.
    Appended(usize),
    /// A part of a large element, the first one if `first`; with the last part, the element.
    Part {
        first: bool,
        element: Option<std::sync::Arc<[T]>>,
    },
    /// A next part of an element whose first part this reader never saw: it took the ring over
    /// where its predecessor had released that first part early (see `transport::held`), so
    /// the element is lost; `new` for the first such part of that element. Only before
    /// anything else was read.
    Orphan { new: bool },
    /// A mark, between the frames before and after it (see "Marks" above).
    Mark(Mark),
}

/// A record buffer larger than this is freed once its element is decoded, not kept for the
/// next large element.
const KEEP_RECORD_BYTES: usize = 1 << 20;

/// The reading side of a ring's payloads: decodes frames and reassembles large elements, in
/// private memory (see the module docs). One per feeder.
pub(crate) struct Reader<T> {
    codec: Codec<T>,
    /// Frames copied out of the ring to be decoded; reused.
    private: Vec<u8>,
    /// The record of the large element being reassembled.
    record: Vec<u8>,
    /// Its total length, while one is being reassembled.
    total: Option<usize>,
    /// A frame other than an orphan part was read, or the reader is at the ring's start
    /// ([`new`](Self::new)): a part without its first part is then an error.
    started: bool,
    /// The last frame was an orphan part.
    orphan: bool,
    /// A large element being reassembled was dropped because its writer died (see
    /// [`take_abandoned`](Reader::take_abandoned)).
    abandoned: bool,
}

impl<T: Element> Reader<T> {
    /// A reader at the start of a ring: every large element's parts come after its first.
    pub fn new() -> Self {
        Reader {
            codec: Codec::new(),
            private: Vec::new(),
            record: Vec::new(),
            total: None,
            started: true,
            orphan: false,
            abandoned: false,
        }
    }

    /// A reader where a dead reader released the ring: its first frames may be the rest of an
    /// element whose first part that reader released early ([`Decoded::Orphan`]).
    pub fn resuming() -> Self {
        Reader {
            started: false,
            ..Reader::new()
        }
    }

    /// True once after [`read`](Self::read) dropped the large element it was reassembling: the
    /// frame read was the first of a producer that took the ring over from a dead one, which
    /// had written only some of that element's parts. Nothing of it is delivered here: the
    /// restarted writer sends it again if its input still holds it.
    pub fn take_abandoned(&mut self) -> bool {
        std::mem::take(&mut self.abandoned)
    }

    /// Decodes one frame, checking everything, reading each of its bytes once.
    #[cfg(test)]
    pub fn read(&mut self, payload: Payload<'_>) -> Result<Decoded<T>, String> {
        self.read_with(payload, None)
    }

    /// Like [`read`](Self::read), but a frame of whole elements is appended to `out`
    /// ([`Decoded::Appended`]): the feeder gathers consecutive frames into one vector of its
    /// pool, plain data copied once, straight from the ring into it.
    pub fn read_into(
        &mut self,
        payload: Payload<'_>,
        out: &mut Vec<T>,
    ) -> Result<Decoded<T>, String> {
        self.read_with(payload, Some(out))
    }

    fn read_with(
        &mut self,
        payload: Payload<'_>,
        out: Option<&mut Vec<T>>,
    ) -> Result<Decoded<T>, String> {
        if payload.len() < HEADER {
            return Err(format!(
                "a frame of {} bytes is shorter than its 8-byte header",
                payload.len()
            ));
        }
        let mut header = [0u8; HEADER];
        payload.copy_to(0, &mut header);
        let word = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let body = payload.len() - HEADER;
        if payload.after_take_over() && self.total.take().is_some() {
            // The dead writer's element ends here, cut short: dropped. Anywhere else, an
            // element cut short is corruption (below).
            self.record.clear();
            self.abandoned = true;
        }
        match header[0] {
            KIND_FIRST => {
                if let Some(total) = self.total {
                    return Err(format!(
                        "a large element starts before the previous one ended ({} of its {total} \
                         bytes came)",
                        self.record.len()
                    ));
                }
                if word > MAX_ELEMENT_BYTES {
                    return Err(format!(
                        "a large element of {word} bytes exceeds the largest \
                         ({MAX_ELEMENT_BYTES} bytes)"
                    ));
                }
                if body > word {
                    return Err(format!(
                        "the first part ({body} bytes) of a large element is longer than the \
                         element ({word} bytes)"
                    ));
                }
                (self.started, self.orphan) = (true, false);
                self.record.clear();
                self.record.reserve(word);
                self.total = Some(word);
                self.append(&payload, body);
                self.finish(true)
            }
            KIND_NEXT => {
                let Some(total) = self.total else {
                    if self.started {
                        return Err(format!(
                            "a part of a large element (offset {word}) without its first part"
                        ));
                    }
                    let new = !self.orphan;
                    self.orphan = true;
                    return Ok(Decoded::Orphan { new });
                };
                let have = self.record.len();
                if word != have {
                    return Err(format!(
                        "a part of a large element at offset {word}, but {have} of its {total} \
                         bytes came so far"
                    ));
                }
                if body == 0 {
                    return Err(format!(
                        "a part of 0 bytes at offset {word} of a large element of {total} bytes"
                    ));
                }
                if have + body > total {
                    return Err(format!(
                        "a part of {body} bytes at offset {word} runs past the end of its large \
                         element ({total} bytes)"
                    ));
                }
                self.append(&payload, body);
                self.finish(false)
            }
            KIND_MARK => {
                if let Some(total) = self.total {
                    return Err(format!(
                        "a mark inside a large element ({} of its {total} bytes came)",
                        self.record.len()
                    ));
                }
                if body != 8 {
                    return Err(format!("a mark frame with a body of {body} bytes, not 8"));
                }
                let mut value = [0u8; 8];
                payload.copy_to(HEADER, &mut value);
                let mark = mark_from_parts(word as u32, u64::from_le_bytes(value))?;
                (self.started, self.orphan) = (true, false);
                Ok(Decoded::Mark(mark))
            }
            _ => {
                if let Some(total) = self.total {
                    return Err(format!(
                        "a frame of whole elements inside a large element ({} of its {total} \
                         bytes came)",
                        self.record.len()
                    ));
                }
                (self.started, self.orphan) = (true, false);
                if let Some(out) = out {
                    let n =
                        self.codec
                            .append_after_header(header, &payload, &mut self.private, out)?;
                    return Ok(Decoded::Appended(n));
                }
                let batch = self
                    .codec
                    .decode_after_header(header, &payload, &mut self.private)?;
                Ok(Decoded::Batch(batch))
            }
        }
    }

    /// Appends the `body` bytes after the payload's header to the record.
    fn append(&mut self, payload: &Payload<'_>, body: usize) {
        let have = self.record.len();
        debug_assert!(have + body <= self.total.unwrap_or(0));
        self.record.reserve(body);
        // SAFETY: `record` has room for `body` more bytes (reserved), is private memory, and
        // they are initialised by the copy before `set_len`; `HEADER + body` is the payload's
        // length.
        unsafe {
            payload.copy_to_ptr(HEADER, self.record.as_mut_ptr().add(have), body);
            self.record.set_len(have + body);
        }
    }

    /// After a part: the element, if this was its last part.
    fn finish(&mut self, first: bool) -> Result<Decoded<T>, String> {
        let total = self.total.expect("a large element is being reassembled");
        if self.record.len() < total {
            return Ok(Decoded::Part {
                first,
                element: None,
            });
        }
        self.total = None;
        let element = self.codec.decode_record(&self.record)?;
        if self.record.capacity() > KEEP_RECORD_BYTES {
            self.record = Vec::new();
        }
        Ok(Decoded::Part {
            first,
            element: Some(std::sync::Arc::from([element])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn round_trip<T: Element + PartialEq + std::fmt::Debug>(items: &[T], max: usize) -> Vec<T> {
        let mut c = Codec::<T>::new();
        let mut out = Vec::new();
        let mut rest = items;
        while !rest.is_empty() {
            let Plan::Frame { n, len } = c.plan(rest, max).unwrap() else {
                panic!("an element larger than {max}");
            };
            assert!(n > 0 && len <= max);
            let mut buf = vec![0xAA; len];
            c.write(rest, n, &mut PayloadMut::from_private(&mut buf));
            let shared = c
                .decode_shared(Payload::from_private(&buf), &mut Vec::new())
                .unwrap();
            let owned = c.decode(&buf).unwrap();
            assert_eq!(&shared[..], &owned[..]);
            let private = c.decode_shared_private(&buf).unwrap();
            assert_eq!(&private[..], &owned[..]);
            out.extend(owned);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn a_frame_counter_counts_batches_and_large_elements_once_and_nothing_else() {
        let mut counter = FrameCounter::default();
        let mut count = |bytes: &[u8]| counter.elements(&Payload::from_private(bytes));
        let mut batch = vec![KIND_POSTCARD, 0, 0, 0];
        batch.extend(3u32.to_le_bytes());
        batch.extend([0; 12]);
        assert_eq!(count(&batch), 3);
        assert_eq!(count(&mark_frame(Mark::Idle)), 0);
        // A record of 10 bytes in three parts: one element, at its last part.
        let part = |at: usize, n: usize| {
            let mut p = part_header(at, 10).to_vec();
            p.extend(vec![0; n]);
            p
        };
        assert_eq!(count(&part(0, 4)), 0);
        assert_eq!(count(&part(4, 4)), 0);
        assert_eq!(count(&part(8, 2)), 1);
        // A next part with no first part before it (a restarted writer's first frame cut an
        // element short), an unknown kind, a payload shorter than a header: nothing.
        assert_eq!(count(&part(4, 6)), 0);
        assert_eq!(count(&[9, 0, 0, 0, 1, 0, 0, 0]), 0);
        assert_eq!(count(&[KIND_PLAIN, 0]), 0);
        // A first part cut short by a batch: the batch counts, the element never does.
        assert_eq!(count(&part(0, 4)), 0);
        assert_eq!(count(&batch), 3);
        assert_eq!(count(&part(4, 6)), 0);
    }

    #[test]
    fn a_zero_sized_type_is_never_plain_so_a_frame_cannot_claim_billions_of_them() {
        declare_plain::<()>();
        assert_eq!(plain_size::<()>(), None);
        // Four billion `()` in the eight bytes of a plain frame's header: refused.
        let mut frame = vec![KIND_PLAIN, 0, 0, 0];
        frame.extend(u32::MAX.to_le_bytes());
        assert!(Codec::<()>::new().decode(&frame).is_err());
        let mut postcard = vec![KIND_POSTCARD, 0, 0, 0];
        postcard.extend(u32::MAX.to_le_bytes());
        let e = Codec::<()>::new().decode(&postcard).unwrap_err();
        assert!(e.contains("4294967295 elements"), "{e}");
        // Encoded, each costs its 4-byte length: a real batch still goes through.
        assert_eq!(round_trip(&[(); 100], 256), [(); 100]);
    }

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    /// Decodes a postcard frame of one element whose record is `record`, on a thread of its
    /// own, giving it 60 s (the decoder used to count for ever, or to abort the process).
    fn decode_one<T: Element + std::fmt::Debug>(record: Vec<u8>) -> Result<Vec<T>, String> {
        let mut frame = vec![KIND_POSTCARD, 0, 0, 0];
        frame.extend(1u32.to_le_bytes());
        frame.extend((record.len() as u32).to_le_bytes());
        frame.extend(record);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Codec::<T>::new().decode(&frame));
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the decoder is still at it after 60 s")
    }

    /// A peer's record of a few bytes claiming 2^62 zero-sized values, or a value nested a
    /// million deep, is an error saying so: before, the decoder counted through the values
    /// for ever (a reading thread lost), or overflowed the reading thread's stack (the
    /// process aborted). What such types legitimately carry still decodes.
    #[test]
    fn endless_zero_sized_values_or_deep_nesting_from_a_peer_fail_with_an_error() {
        let claim = postcard::to_allocvec(&(1u64 << 62)).unwrap();
        let e = decode_one::<Vec<()>>(claim.clone()).unwrap_err();
        assert!(
            e.contains("element 0 of 1") && e.contains("zero-sized"),
            "{e}"
        );
        let e = decode_one::<std::collections::BTreeMap<(), ()>>(claim).unwrap_err();
        assert!(e.contains("zero-sized"), "{e}");
        let mut deep = [1u8, 1].repeat(1_000_000);
        deep.push(0);
        let e = decode_one::<Tree>(deep).unwrap_err();
        assert!(e.contains("nested more than 128 deep"), "{e}");
        let units = postcard::to_allocvec(&vec![(); 200]).unwrap();
        assert_eq!(decode_one::<Vec<()>>(units).unwrap()[0].len(), 200);
        let tree = (0..40).fold(Tree::Leaf, |t, _| Tree::Node(vec![t, Tree::Leaf]));
        assert_eq!(
            decode_one::<Tree>(postcard::to_allocvec(&tree).unwrap()).unwrap(),
            [tree]
        );
    }

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Link {
        v: u32,
        next: Option<Box<Link>>,
    }

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Skips {
        v: u32,
        #[serde(skip_deserializing)]
        note: u8,
    }

    /// The decoding budget is each element's own (found by a review: one budget per frame
    /// refused frames of the crate's own making once enough elements of 50 zero-sized values
    /// travelled together), nesting counts as serde_json counts it (a list of 100 links, which
    /// serde_json decodes, was refused as 200 levels), and bytes a type leaves unread inside its
    /// record are left as postcard leaves them.
    #[test]
    fn what_a_peer_legitimately_sends_decodes_in_any_batch() {
        let many = vec![vec![(); 200]; 20_000];
        assert_eq!(round_trip(&many, 1 << 20), many);
        let list = (0..100).fold(None, |next, v| Some(Box::new(Link { v, next })));
        let list = *list.unwrap();
        assert_eq!(round_trip(std::slice::from_ref(&list), 1 << 20), [list]);
        let skips = [Skips { v: 1, note: 9 }, Skips { v: 2, note: 9 }];
        let back = round_trip(&skips, 1 << 20);
        assert_eq!(back, [Skips { v: 1, note: 0 }, Skips { v: 2, note: 0 }]);
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
        let Plan::Frame { n, len } = before.plan(&items, 4096).unwrap() else {
            panic!("small elements")
        };
        let mut buf = vec![0; len];
        before.write(&items, n, &mut PayloadMut::from_private(&mut buf));
        assert_eq!(buf[0], KIND_POSTCARD, "undeclared: postcard");
        declare_plain::<Sample>();
        let mut after = Codec::<Sample>::new();
        let plan = after.plan(&items, 4096).unwrap();
        assert_eq!(
            plan,
            Plan::Frame {
                n: 100,
                len: HEADER + 100 * 16
            },
            "declared: 16 bytes each, no encoding"
        );
        let Plan::Frame { n, len } = plan else {
            unreachable!()
        };
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

    /// The frames `items` become with frames of at most `max` bytes (large elements in parts).
    fn frames<T: Element>(items: &[T], max: usize) -> Vec<Vec<u8>> {
        let mut c = Codec::<T>::new();
        let mut out = Vec::new();
        let mut rest = items;
        let mut record = Vec::new();
        while !rest.is_empty() {
            match c.plan(rest, max).unwrap() {
                Plan::Frame { n, len } => {
                    let mut buf = vec![0xAA; len];
                    c.write(rest, n, &mut PayloadMut::from_private(&mut buf));
                    out.push(buf);
                    rest = &rest[n..];
                }
                Plan::Large => {
                    c.take_large(&rest[0], &mut record);
                    for at in (0..record.len()).step_by(part_room(max)) {
                        let end = (at + part_room(max)).min(record.len());
                        let mut buf = part_header(at, record.len()).to_vec();
                        buf.extend_from_slice(&record[at..end]);
                        out.push(buf);
                    }
                    rest = &rest[1..];
                }
            }
        }
        out
    }

    /// `(first, last)` of each part a [`Reader`] read.
    type Parts = Vec<(bool, bool)>;

    /// What a [`Reader`] makes of `frames`: elements, and (first, last) of each part.
    fn read_all<T: Element>(frames: &[Vec<u8>]) -> Result<(Vec<T>, Parts), String> {
        let mut r = Reader::<T>::new();
        let (mut items, mut parts) = (Vec::new(), Vec::new());
        for f in frames {
            // Whole elements are appended to `items` (the feeder's way).
            match r.read_into(Payload::from_private(f), &mut items)? {
                Decoded::Appended(_) => {}
                Decoded::Batch(b) => items.extend_from_slice(&b),
                Decoded::Part { first, element } => {
                    parts.push((first, element.is_some()));
                    items.extend_from_slice(&element.unwrap_or_else(|| Arc::from([])));
                }
                Decoded::Orphan { .. } => return Err("orphan".into()),
                Decoded::Mark(m) => return Err(format!("mark {m:?}")),
            }
        }
        Ok((items, parts))
    }

    #[test]
    fn an_element_larger_than_a_frame_goes_in_parts_between_whole_frames() {
        let words = vec!["a".to_string(), "y".repeat(500), "b".into(), "z".repeat(92)];
        let f = frames(&words, 100);
        assert_eq!(
            f.len(),
            1 + 6 + 1 + 2,
            "500 + 2 bytes in parts of 92: 6; 92 + 1: 2"
        );
        let (got, parts) = read_all::<String>(&f).unwrap();
        assert_eq!(got, words);
        let mut want = vec![(true, false)];
        want.extend([(false, false); 4]);
        want.extend([(false, true), (true, false), (false, true)]);
        assert_eq!(parts, want);
        // Plain data too: an element larger than a frame.
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
        struct Block {
            w: [u64; 32],
        }
        declare_plain::<Block>();
        let blocks: Vec<Block> = (0..3).map(|i| Block { w: [i; 32] }).collect();
        let f = frames(&blocks, 100);
        assert_eq!(f.len(), 3 * 3, "256 bytes in parts of 92");
        assert_eq!(read_all::<Block>(&f).unwrap().0, blocks);
    }

    #[test]
    fn an_element_over_the_largest_is_an_error_naming_both_sizes() {
        let mut c = Codec::<String>::new();
        let err = c.plan(&["y".repeat(MAX_ELEMENT_BYTES)], 4096).unwrap_err();
        assert!(
            err.contains(&format!("{} bytes", MAX_ELEMENT_BYTES + 4))
                && err.contains(&format!("({MAX_ELEMENT_BYTES} bytes")),
            "{err}"
        );
    }

    #[test]
    fn parts_are_checked() {
        let f = frames(&["x".repeat(300), "y".repeat(300)], 100);
        let fail = |frames: Vec<Vec<u8>>, needle: &str| {
            let err = read_all::<String>(&frames).unwrap_err();
            assert!(err.contains(needle), "{err:?} does not say {needle:?}");
        };
        // A part missing, a part twice, a whole frame or a new element inside one.
        fail(
            vec![f[0].clone(), f[2].clone()],
            "at offset 184, but 92 of its 302",
        );
        fail(
            vec![f[0].clone(), f[1].clone(), f[1].clone()],
            "at offset 92, but 184",
        );
        let whole = frames(&["w".to_string()], 100).remove(0);
        fail(
            vec![f[0].clone(), whole],
            "a frame of whole elements inside",
        );
        fail(
            vec![f[0].clone(), f[4].clone()],
            "starts before the previous one ended",
        );
        // A part running past its element, an empty part, a hostile total, a first part
        // longer than its element, a record that is not the type's.
        let mut long = f[3].clone();
        long.extend_from_slice(&[0; 40]);
        fail(
            vec![f[0].clone(), f[1].clone(), f[2].clone(), long],
            "runs past",
        );
        fail(
            vec![f[0].clone(), part_header(92, 302).to_vec()],
            "a part of 0 bytes",
        );
        let huge = part_header(0, u32::MAX as usize).to_vec();
        fail(vec![huge], "of 4294967295 bytes exceeds the largest");
        let mut short = part_header(0, 4).to_vec();
        short.extend_from_slice(&[1; 8]);
        fail(vec![short], "longer than the element");
        let mut bad = part_header(0, 3).to_vec();
        bad.extend_from_slice(&[9, 0xFF, 0xFF]);
        fail(vec![bad], "postcard cannot decode it");
        // Parts whose first part a previous reader released: skipped by a reader that took
        // the ring over, only before anything else; afterwards a part without its first part
        // is an error. So is such a part at the start of a ring.
        let mut r = Reader::<String>::new();
        let err = r.read(Payload::from_private(&f[1])).unwrap_err();
        assert!(err.contains("without its first part"), "{err}");
        let mut r = Reader::<String>::resuming();
        for (frame, new) in [(&f[1], true), (&f[2], false), (&f[3], false)] {
            assert!(matches!(
                r.read(Payload::from_private(frame)),
                Ok(Decoded::Orphan { new: n }) if n == new
            ));
        }
        assert!(matches!(
            r.read(Payload::from_private(&f[4])),
            Ok(Decoded::Part {
                first: true,
                element: None
            })
        ));
        let mut r = Reader::<String>::new();
        r.read(Payload::from_private(&frames(&["w".to_string()], 100)[0]))
            .unwrap();
        assert!(r
            .read(Payload::from_private(&f[1]))
            .unwrap_err()
            .contains("without its first part"));
    }

    #[test]
    fn an_element_cut_short_is_dropped_only_at_a_restarted_writers_first_frame() {
        let f = frames(&["x".repeat(300), "y".repeat(300)], 100);
        let whole = frames(&["w".to_string()], 100).remove(0);
        // Unflagged, a new element or a whole frame cutting one short is corrupt data.
        for next in [&f[4], &whole] {
            let mut r = Reader::<String>::new();
            r.read(Payload::from_private(&f[0])).unwrap();
            assert!(r.read(Payload::from_private(next)).is_err());
        }
        // Flagged: the element is dropped, once, and the frame read as usual.
        let mut r = Reader::<String>::new();
        r.read(Payload::from_private(&f[0])).unwrap();
        r.read(Payload::from_private(&f[1])).unwrap();
        assert!(!r.take_abandoned());
        assert!(matches!(
            r.read(Payload::from_private_after_take_over(&whole)),
            Ok(Decoded::Batch(b)) if b[..] == ["w".to_string()]
        ));
        assert!(r.take_abandoned());
        assert!(!r.take_abandoned(), "once");
        let mut got = Vec::new();
        for part in &f[4..] {
            if let Decoded::Part {
                element: Some(e), ..
            } = r.read(Payload::from_private(part)).unwrap()
            {
                got.extend_from_slice(&e);
            }
        }
        assert_eq!(got, ["y".repeat(300)]);
        // A flagged frame with nothing being reassembled drops nothing.
        let mut r = Reader::<String>::new();
        r.read(Payload::from_private_after_take_over(&f[0]))
            .unwrap();
        assert!(!r.take_abandoned());
    }

    #[test]
    fn marks_are_frames_of_their_own_between_batches_never_inside_a_large_element() {
        let batch = |items: &[u64]| frames(items, 4096).remove(0);
        let mut r = Reader::<u64>::new();
        let mut got = Vec::new();
        for f in [
            batch(&[1, 2]),
            mark_frame(Mark::Watermark(2)).to_vec(),
            mark_frame(Mark::Idle).to_vec(),
            batch(&[3]),
            mark_frame(Mark::Watermark(u64::MAX)).to_vec(),
            mark_frame(Mark::Watermark(0)).to_vec(),
        ] {
            assert_eq!(f.len() % 8, 0);
            got.push(match r.read(Payload::from_private(&f)).unwrap() {
                Decoded::Batch(b) => format!("{:?}", &b[..]),
                Decoded::Mark(m) => format!("{m:?}"),
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(
            got,
            [
                "[1, 2]",
                "Watermark(2)",
                "Idle",
                "[3]",
                "Watermark(18446744073709551615)",
                "Watermark(0)"
            ]
        );
        // Inside a large element: corrupt; at a restarted writer's first frame, the element
        // is dropped and the mark read.
        let parts = frames(&["x".repeat(300)], 100);
        let mark = mark_frame(Mark::Watermark(7));
        let mut r = Reader::<String>::new();
        r.read(Payload::from_private(&parts[0])).unwrap();
        let err = r.read(Payload::from_private(&mark)).unwrap_err();
        assert!(err.contains("a mark inside a large element"), "{err}");
        let mut r = Reader::<String>::new();
        r.read(Payload::from_private(&parts[0])).unwrap();
        assert!(matches!(
            r.read(Payload::from_private_after_take_over(&mark)),
            Ok(Decoded::Mark(Mark::Watermark(7)))
        ));
        assert!(r.take_abandoned());
        // Bad tags, values and lengths, from an untrusted peer: errors naming them.
        let fail = |bytes: &[u8], needle: &str| {
            let err = Reader::<u64>::new()
                .read(Payload::from_private(bytes))
                .unwrap_err();
            assert!(err.contains(needle), "{err:?} does not say {needle:?}");
        };
        let mut tag = mark_frame(Mark::Watermark(1));
        tag[4] = 9;
        fail(&tag, "a mark with tag 9");
        let mut idle = mark_frame(Mark::Idle);
        idle[8] = 1;
        fail(&idle, "an idleness mark carries a value (1)");
        let mark = mark_frame(Mark::Idle);
        fail(&mark[..12], "a body of 4 bytes, not 8");
        let mut long = mark.to_vec();
        long.extend_from_slice(&[0; 8]);
        fail(&long, "a body of 16 bytes, not 8");
        fail(&mark[..8], "a body of 0 bytes");
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
            // From private memory, into a batch's allocation: the same result, the same error.
            let (sd, cd) = (s.decode(&bytes), c.decode(&bytes));
            assert_eq!(s.decode_shared_private(&bytes).map(|a| a.to_vec()), sd);
            assert_eq!(c.decode_shared_private(&bytes).map(|a| a.to_vec()), cd);
            let _ = c.decode_shared(Payload::from_private(&bytes), &mut Vec::new());
            let _ = s.decode_shared(Payload::from_private(&bytes), &mut Vec::new());
        }
    }

    /// A frame of 4-byte empty records that claims a million elements of a large type: an
    /// error, having reserved no more than the frame's own size. Before, the claimed count was
    /// reserved: 8 GiB for 8 KiB elements, and 32 KiB elements aborted the process.
    #[test]
    fn a_frames_claimed_count_reserves_no_more_than_its_bytes_hold() {
        fn claim<T: Element>() -> (Result<(), String>, usize, usize) {
            let n: u32 = 1 << 20;
            let mut frame = vec![KIND_POSTCARD, 0, 0, 0];
            frame.extend_from_slice(&n.to_le_bytes());
            frame.resize(HEADER + 4 * n as usize, 0);
            let mut reader = Reader::<T>::new();
            let mut out: Vec<T> = Vec::new();
            let r = reader
                .read_into(Payload::from_private(&frame), &mut out)
                .map(|_| ());
            (r, out.capacity() * std::mem::size_of::<T>(), frame.len())
        }
        let (r, reserved, frame) = claim::<[[u64; 32]; 32]>();
        assert!(r.is_err());
        assert!(
            reserved <= frame,
            "a {frame}-byte frame made the reader reserve {reserved} bytes"
        );
        let (r, reserved, frame) = claim::<[[[u64; 32]; 32]; 4]>();
        assert!(r.is_err());
        assert!(reserved <= frame, "{reserved} bytes reserved");
    }
}
