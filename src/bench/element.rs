//! The bench's element: `N` bytes of plain data, a sequence number in the first eight.
//!
//! Why a fixed-size array and not a `Vec<u8>`: a [`Payload<N>`] is plain data
//! ([`Graph::plain_data`](crate::Graph::plain_data)), so it crosses a shared-memory ring and a
//! TCP link as its own `N` bytes, with no encoding, exactly the bytes the raw baselines move;
//! and making one allocates nothing. A `Vec<u8>` would add a heap allocation per element at
//! the source, at the map and at every decode, and a length prefix on the wire: the bench
//! would measure the allocator and postcard as much as the runtime, and the baselines would
//! not move the same bytes.
//!
//! The sizes are fixed when the crate is built (each is a type of its own):
//! [`SIZES`]. `with_size!` turns a run-time size into the type.

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The element sizes the bench supports, in bytes (`--sizes` takes any of them).
pub const SIZES: [usize; 6] = [8, 64, 256, 1024, 4096, 65536];

/// `N` bytes of plain data; the first eight hold a sequence number (little-endian).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Payload<const N: usize>(pub [u8; N]);

// SAFETY: `Payload<N>` is `repr(transparent)` over `[u8; N]`: no padding, every bit pattern
// is a valid value, and all zeroes is a valid value.
unsafe impl<const N: usize> bytemuck::Zeroable for Payload<N> {}
// SAFETY: as above; `[u8; N]` is `Copy` and `'static`.
unsafe impl<const N: usize> bytemuck::Pod for Payload<N> {}

impl<const N: usize> Payload<N> {
    /// The element with sequence number `seq`, the rest zeroes.
    #[inline]
    pub fn new(seq: u64) -> Self {
        let mut bytes = [0u8; N];
        bytes[..8].copy_from_slice(&seq.to_le_bytes());
        Payload(bytes)
    }

    /// Its sequence number.
    #[inline]
    pub fn seq(&self) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(word)
    }

    /// What the bench's map stage computes: a copy with the sequence number times 7.
    #[inline]
    pub fn mapped(&self) -> Self {
        let mut out = *self;
        out.map_in_place();
        out
    }

    /// [`mapped`](Payload::mapped), in place: what a map stage does to its output's copy of a
    /// batch (one bulk copy, then this per element), where `mapped` per element would copy each
    /// element twice (into a temporary, then into the output).
    #[inline]
    pub fn map_in_place(&mut self) {
        let seq = self.seq().wrapping_mul(7);
        self.0[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

impl<const N: usize> Serialize for Payload<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Payload<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
            type Value = Payload<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload<N>, E> {
                let bytes: [u8; N] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Payload(bytes))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload<N>, A::Error> {
                let mut bytes = [0u8; N];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(Payload(bytes))
            }
        }
        d.deserialize_bytes(Bytes::<N>)
    }
}

/// Runs `$body` with `$n` bound (as a `const`) to the supported size `$size`; evaluates to
/// `None` for a size not in [`SIZES`].
macro_rules! with_size {
    ($size:expr, $n:ident => $body:expr) => {
        match $size {
            8 => {
                const $n: usize = 8;
                Some($body)
            }
            64 => {
                const $n: usize = 64;
                Some($body)
            }
            256 => {
                const $n: usize = 256;
                Some($body)
            }
            1024 => {
                const $n: usize = 1024;
                Some($body)
            }
            4096 => {
                const $n: usize = 4096;
                Some($body)
            }
            65536 => {
                const $n: usize = 65536;
                Some($body)
            }
            _ => None,
        }
    };
}
pub(crate) use with_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_keeps_its_sequence_number_and_round_trips_through_postcard() {
        let p = Payload::<64>::new(0x0102_0304_0506_0708);
        assert_eq!(p.seq(), 0x0102_0304_0506_0708);
        assert_eq!(p.mapped().seq(), 0x0102_0304_0506_0708u64.wrapping_mul(7));
        let mut q = p;
        q.map_in_place();
        assert_eq!(q.0, p.mapped().0);
        let bytes = postcard::to_allocvec(&p).unwrap();
        let back: Payload<64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.0, p.0);
        assert!(postcard::from_bytes::<Payload<64>>(&bytes[..10]).is_err());
        for size in SIZES {
            assert_eq!(with_size!(size, N => N), Some(size));
        }
        assert_eq!(with_size!(7usize, N => N), None);
    }
}
