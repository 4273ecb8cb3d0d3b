//! Decoding a peer's postcard records within a bound on the work they may ask for.
//!
//! A record's bytes bound most of what decoding it costs: each element of a sequence or map
//! takes at least one byte, each level of nesting at least one. Two things escape that bound,
//! and a peer (another process, another host: never trusted) could use either:
//!
//! - **zero-sized values**: a `Vec<()>` (or a `Vec` of a unit struct, of `PhantomData`) takes
//!   no byte per element, so a record of a few bytes may claim 2^62 of them, and serde's
//!   visitor counts through them one by one: a reading thread kept busy for ever;
//! - **nesting**: a recursive type (`enum Tree { Leaf, Node(Vec<Tree>) }`) nested a million
//!   levels deep in a megabyte overflows the reading thread's stack, which aborts the process.
//!
//! [`Bounded`] wraps postcard's deserializer, and everything it hands to a visitor, and counts,
//! for each record (each element) on its own, so that whether an element decodes never
//! depends on what travels beside it:
//!
//! - every element of a sequence or map, at most eight per byte of the record and
//!   [`ZERO_SIZED_PER_RECORD`] more ([`elements_for`]): far above what a record's bytes can
//!   hold of anything but zero-sized values. A frame's records together then ask for at most
//!   about 72 counts per byte of the frame (a record takes at least 4 bytes with its length);
//! - the nesting of sequences, maps, tuples, structs and enums (not of options, newtypes or
//!   numbers), at most [`MAX_DEPTH`] levels, as serde_json's `recursion_limit` counts them.
//!   Each level takes some of the reading thread's stack (2 MiB), more for types with large
//!   inline fields: a review's debug build decoded 64 levels of a type with 2 KiB inline, and
//!   overflowed at 48 levels of one with 8 KiB. Box what is large in a recursive type.
//!
//! Past either, decoding fails with an error saying which.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess};
use serde::de::{VariantAccess, Visitor};

/// The deepest nesting of sequences, maps, tuples, structs and enums a record may have (as
/// serde_json's `recursion_limit`).
pub(crate) const MAX_DEPTH: u32 = 128;

/// Sequence and map elements a record may hold beyond eight per byte of it: zero-sized values
/// (a `Vec<()>`, a `Vec` of a unit struct), which take no bytes.
pub(crate) const ZERO_SIZED_PER_RECORD: u64 = 256;

/// Elements of sequences and maps a record of `bytes` may hold: eight per byte, and
/// [`ZERO_SIZED_PER_RECORD`] more.
pub(crate) fn elements_for(bytes: usize) -> u64 {
    (bytes as u64)
        .saturating_mul(8)
        .saturating_add(ZERO_SIZED_PER_RECORD)
}

/// What one record may still ask for, and what went over.
struct Budget {
    /// The elements it started with, for the error.
    limit: u64,
    elements: Cell<u64>,
    depth: Cell<u32>,
    over: Cell<Option<Over>>,
}

/// What a record asked for beyond its [`Budget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    /// More sequence or map elements than the record's bytes allow (the limit).
    Elements(u64),
    /// Nesting deeper than [`MAX_DEPTH`].
    Depth,
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Over::Elements(n) => write!(
                f,
                "more than {n} sequence or map elements in one element's record (eight per byte, \
                 and {ZERO_SIZED_PER_RECORD} more): a sequence of zero-sized values (a Vec<()>) \
                 longer than its record allows"
            ),
            Over::Depth => write!(f, "values nested more than {MAX_DEPTH} deep"),
        }
    }
}

impl Budget {
    /// A budget of `elements` sequence and map elements.
    fn new(elements: u64) -> Budget {
        Budget {
            limit: elements,
            elements: Cell::new(elements),
            depth: Cell::new(0),
            over: Cell::new(None),
        }
    }

    /// What went over, if anything did: the reason of the error decoding returned.
    fn over(&self) -> Option<Over> {
        self.over.get()
    }

    fn fail<E: de::Error>(&self, over: Over) -> E {
        self.over.set(Some(over));
        E::custom(over)
    }

    fn take_element<E: de::Error>(&self) -> Result<(), E> {
        match self.elements.get().checked_sub(1) {
            Some(left) => {
                self.elements.set(left);
                Ok(())
            }
            None => Err(self.fail(Over::Elements(self.limit))),
        }
    }

    /// Runs `decode` one level of nesting deeper, or fails past [`MAX_DEPTH`].
    fn nested<R, E: de::Error>(&self, decode: impl FnOnce() -> Result<R, E>) -> Result<R, E> {
        let depth = self.depth.get();
        if depth >= MAX_DEPTH {
            return Err(self.fail(Over::Depth));
        }
        self.depth.set(depth + 1);
        let value = decode();
        self.depth.set(depth);
        value
    }
}

/// Decodes one `T` from the front of `bytes` (one element's record) with postcard, within a
/// budget for it ([`elements_for`] its length, [`MAX_DEPTH`]); returns it and the bytes after
/// it, or what is wrong: what went over the budget, if that was the reason, else postcard's
/// error.
pub(crate) fn take_from_bytes<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, &'de [u8]), String> {
    let budget = Budget::new(elements_for(bytes.len()));
    decode_within(bytes, &budget).map_err(|e| {
        budget
            .over()
            .map_or_else(|| e.to_string(), |over| over.to_string())
    })
}

/// [`take_from_bytes`] within `budget`.
fn decode_within<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
    budget: &Budget,
) -> Result<(T, &'de [u8]), postcard::Error> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let value = T::deserialize(Bounded {
        inner: &mut de,
        budget,
    })?;
    Ok((value, de.finalize()?))
}

/// A deserializer that counts what it hands out against a [`Budget`].
struct Bounded<'b, D> {
    inner: D,
    budget: &'b Budget,
}

/// A visitor that wraps what it is handed (sequences, maps, enums, nested values).
struct Visit<'b, V> {
    inner: V,
    budget: &'b Budget,
}

/// A seed whose value is decoded through [`Bounded`].
struct Seed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

/// Sequence, map, enum and variant access, counted.
struct Access<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, 'b, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'b, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Bounded {
            inner: d,
            budget: self.budget,
        })
    }
}

/// `deserialize_*` methods that hand the inner deserializer a wrapped visitor: `flat` ones
/// as they are, `nested` ones one level deeper (a sequence, a map, a tuple, a struct, an enum).
macro_rules! forward {
    (flat { $($method:ident($($arg:ident: $ty:ty),*);)* } nested { $($nested:ident($($narg:ident: $nty:ty),*);)* }) => {
        $(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Visit { inner: visitor, budget: self.budget })
        }
        )*
        $(
        fn $nested<V: Visitor<'de>>(self, $($narg: $nty,)* visitor: V) -> Result<V::Value, D::Error> {
            let budget = self.budget;
            budget.nested(|| self.inner.$nested($($narg,)* Visit { inner: visitor, budget }))
        }
        )*
    };
}

impl<'de, 'b, D: Deserializer<'de>> Deserializer<'de> for Bounded<'b, D> {
    type Error = D::Error;

    forward! {
        flat {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_identifier();
        deserialize_ignored_any();
        }
        nested {
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        }
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A `visit_*` method handed on unchanged.
macro_rules! pass {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, 'b, V: Visitor<'de>> Visitor<'de> for Visit<'b, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    pass! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Bounded {
            inner: d,
            budget: self.budget,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Bounded {
            inner: d,
            budget: self.budget,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Access {
            inner: seq,
            budget: self.budget,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Access {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Access {
            inner: data,
            budget: self.budget,
        })
    }
}

impl<'de, 'b, A: SeqAccess<'de>> SeqAccess<'de> for Access<'b, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let next = self.inner.next_element_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        if next.is_some() {
            self.budget.take_element()?;
        }
        Ok(next)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: MapAccess<'de>> MapAccess<'de> for Access<'b, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let next = self.inner.next_key_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        if next.is_some() {
            self.budget.take_element()?;
        }
        Ok(next)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Access<'b, A> {
    type Error = A::Error;
    type Variant = Access<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, variant) = self.inner.variant_seed(Seed {
            inner: seed,
            budget,
        })?;
        Ok((
            value,
            Access {
                inner: variant,
                budget,
            },
        ))
    }
}

impl<'de, 'b, A: VariantAccess<'de>> VariantAccess<'de> for Access<'b, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        budget.nested(|| {
            self.inner.tuple_variant(
                len,
                Visit {
                    inner: visitor,
                    budget,
                },
            )
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        budget.nested(|| {
            self.inner.struct_variant(
                fields,
                Visit {
                    inner: visitor,
                    budget,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        match take_from_bytes::<T>(bytes) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(format!("{} bytes left", rest.len())),
            Err(e) => Err(e),
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Newtype(u32),
        Tuple(i8, String),
        Struct { x: f64, tags: Vec<String> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Reading {
        id: u64,
        name: String,
        values: Vec<f32>,
        extra: Option<Box<Reading>>,
        by_key: std::collections::BTreeMap<String, i64>,
        shapes: Vec<Shape>,
        bytes: Vec<u8>,
        unit: (),
        pair: (u8, char),
    }

    /// Every kind of serde value decodes through the wrapper as postcard decodes it alone.
    #[test]
    fn decodes_what_postcard_decodes() {
        let r = Reading {
            id: 7,
            name: "pump".into(),
            values: vec![1.5, -2.0],
            extra: Some(Box::new(Reading {
                id: 8,
                name: String::new(),
                values: vec![],
                extra: None,
                by_key: Default::default(),
                shapes: vec![],
                bytes: vec![],
                unit: (),
                pair: (0, 'a'),
            })),
            by_key: [("a".to_string(), -1), ("b".to_string(), 2)].into(),
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(3),
                Shape::Tuple(-4, "t".into()),
                Shape::Struct {
                    x: 0.25,
                    tags: vec!["u".into()],
                },
            ],
            bytes: vec![1, 2, 3],
            unit: (),
            pair: (9, 'é'),
        };
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(decode::<Reading>(&bytes), Ok(r));
        // Bad input stays an error.
        assert!(decode::<Reading>(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A record of a few bytes claiming 2^62 zero-sized values fails at once (postcard alone
    /// counts through them for ever).
    #[test]
    fn a_huge_sequence_of_zero_sized_values_fails() {
        let claim = postcard::to_allocvec(&(1u64 << 62)).unwrap();
        let err = decode::<Vec<()>>(&claim).unwrap_err();
        assert!(
            err.contains("more than 328 sequence or map elements"),
            "{err}"
        );
        assert!(err.contains("zero-sized values"), "{err}");
        // A map of them too.
        let err = decode::<std::collections::BTreeMap<(), ()>>(&claim).unwrap_err();
        assert!(err.contains("zero-sized values"), "{err}");
        // Within the budget, they decode (a record of 2 bytes: 16 + 256).
        let few = postcard::to_allocvec(&vec![(); 272]).unwrap();
        assert_eq!(decode::<Vec<()>>(&few).map(|v| v.len()), Ok(272));
        let more = postcard::to_allocvec(&vec![(); 273]).unwrap();
        assert!(decode::<Vec<()>>(&more).is_err());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    /// Nesting deeper than MAX_DEPTH fails with an error, not a stack overflow.
    #[test]
    fn deep_nesting_fails_instead_of_overflowing_the_stack() {
        // Node([Node([ ... Leaf ... ])]): variant 1, length 1, repeated; then Leaf (variant 0).
        let levels = 1_000_000;
        let mut bytes = [1u8, 1].repeat(levels);
        bytes.push(0);
        let err = decode::<Tree>(&bytes).unwrap_err();
        assert!(err.contains("nested more than 128 deep"), "{err}");
        // Shallow trees decode.
        let mut tree = Tree::Leaf;
        for _ in 0..50 {
            tree = Tree::Node(vec![tree]);
        }
        let bytes = postcard::to_allocvec(&tree).unwrap();
        assert_eq!(decode::<Tree>(&bytes), Ok(tree));
    }
}
