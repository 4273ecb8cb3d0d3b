//! Streams and ports: the typed handles an application is wired with.
//!
//! # Streams
//!
//! A [`Stream<T>`] is an unbounded, append-only, ordered sequence of elements, written by exactly
//! one agent (its owner) and read by any number of agents, each at its own position. The handle
//! is a small `Copy` value: it names the stream, it does not hold data.
//!
//! # Ports
//!
//! An agent declares its inputs ([`Input<T>`]) and outputs (a [`Stream<T>`] it owns) when it is
//! added to a [`Graph`](crate::Graph). The same handles serve two purposes: the agent uses them in
//! its step to read and append, and the application uses them to wire streams with
//! [`Graph::connect`](crate::Graph::connect).
//!
//! # Elements
//!
//! Any `Clone + Send + Sync + 'static` type that serde can serialize is an [`Element`]: the
//! serde bound is what lets an edge cross a process or host boundary without changing agent code.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest element, in bytes of its encoding, that a connection between processes carries
/// (17 MiB): postcard's encoding, or for plain-data types (see
/// [`Graph::plain_data`](crate::Graph::plain_data)) the element's own bytes.
///
/// Every element up to this size works in every placement: within a process elements are not
/// encoded at all, and across a shared-memory ring an element larger than a frame is split into
/// several frames and reassembled by the reader, whatever the ring's size. A larger element is
/// an error of the writing process naming the connection, its size and this limit. It holds any
/// line a line source reads (at most 16 MiB), with room for the fields of a struct around it.
pub const MAX_ELEMENT_BYTES: usize = 17 << 20;

/// A type that can travel on a stream.
///
/// Implemented for every `Clone + Send + Sync + Serialize + DeserializeOwned + 'static` type;
/// there is nothing to implement by hand.
pub trait Element: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Element for T {}

/// Identifies a port: which graph, which agent, which port of that agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PortId {
    pub graph: u32,
    pub agent: u32,
    pub port: u32,
}

/// A stream of `T`, named by the agent that owns (writes) it.
///
/// Read it by connecting it to an agent's [`Input<T>`]; the owning agent appends to it in its
/// step with [`Outputs::push`](crate::Outputs::push) and friends.
pub struct Stream<T> {
    pub(crate) id: PortId,
    _t: PhantomData<fn() -> T>,
}

/// An agent's input port of type `T`: the agent reads it in its step, and the application wires
/// a stream to it with [`Graph::connect`](crate::Graph::connect).
pub struct Input<T> {
    pub(crate) id: PortId,
    _t: PhantomData<fn() -> T>,
}

macro_rules! handle_impls {
    ($name:ident, $what:literal) => {
        impl<T> $name<T> {
            pub(crate) fn new(id: PortId) -> Self {
                $name {
                    id,
                    _t: PhantomData,
                }
            }
        }
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $name<T> {}
        impl<T> PartialEq for $name<T> {
            fn eq(&self, other: &Self) -> bool {
                self.id == other.id
            }
        }
        impl<T> Eq for $name<T> {}
        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!($what, "(agent #{}, port #{})"),
                    self.id.agent, self.id.port
                )
            }
        }
    };
}
handle_impls!(Stream, "Stream");
handle_impls!(Input, "Input");

/// Event-time progress, travelling in band with a stream's elements (see the
/// [`ops::event`](crate::ops::event) guide).
///
/// A mark sits between two elements of a stream and says something about every element after
/// it. Marks never overtake elements, nor elements marks, on any transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mark {
    /// A watermark: no element with a timestamp below this one follows (an element that does
    /// is *late*). Watermarks of one stream never decrease.
    Watermark(u64),
    /// The stream is idle: it sends nothing for now, and should not hold back the watermark of
    /// agents that read it together with other streams. The next element or watermark ends
    /// the idleness.
    Idle,
}

/// A run of elements shared by every reader of one batch: a range of one shared buffer.
///
/// A step's appends to one output become one batch; each reader gets a clone (a reference
/// count, no per-reader copy). Splitting a batch (when a link has credit for only part of it)
/// only narrows the range.
///
/// The buffer is either the vector the step appended to, moved in without a copy
/// ([`Batch::pooled`]), or an `Arc<[T]>` ([`Batch::new`], what a transport decodes). The
/// vector goes back to its writer's [`VecPool`] when the last reader drops its batch, so a
/// writer in a steady state reuses the same few buffers instead of allocating one per batch;
/// and so does the reference-counted box around it (the pool keeps the empty box), so a
/// pooled batch costs no allocation at all once its writer is warm.
pub(crate) struct Batch<T> {
    data: Shared<T>,
    range: Range<usize>,
}

/// The buffer behind a [`Batch`].
enum Shared<T> {
    Slice(Arc<[T]>),
    Vec(Arc<Owned<T>>),
    /// Nothing: only while a batch is taken apart (its buffer moved out in `drop` or
    /// `into_any`), or what [`Batch::take_all`] leaves; never seen by a reader.
    Gone,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        match self {
            Shared::Slice(a) => Shared::Slice(Arc::clone(a)),
            Shared::Vec(a) => Shared::Vec(Arc::clone(a)),
            Shared::Gone => Shared::Gone,
        }
    }
}

/// A vector shared by the readers of a batch, and the pool it returns to: none while the
/// box waits, empty, in that pool's list of boxes.
struct Owned<T> {
    items: Vec<T>,
    home: Option<Arc<VecPool<T>>>,
}

impl<T> Drop for Owned<T> {
    /// The last reference went without [`Batch`]'s drop seeing it unique (two readers let go
    /// at once): the vector goes home, its box is freed.
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            home.put(std::mem::take(&mut self.items));
        }
    }
}

impl<T> Batch<T> {
    /// The elements of `data`.
    pub fn new(data: Arc<[T]>) -> Self {
        let range = 0..data.len();
        Batch {
            data: Shared::Slice(data),
            range,
        }
    }
    /// The elements of `items`, moved in (no copy); the vector goes back to `pool` when the
    /// last clone of the batch is dropped, in a box the pool kept (no allocation) if it has
    /// one.
    pub fn pooled(items: Vec<T>, pool: &Arc<VecPool<T>>) -> Self {
        Self::pooled_in(items, pool, pool.take_box())
    }
    /// [`Batch::pooled`] of what `items` holds, leaving in its place an empty vector from
    /// `pool` ([`VecPool::take`]): one look at the pool for both.
    pub fn pooled_replacing(items: &mut Vec<T>, pool: &Arc<VecPool<T>>) -> Self {
        let (empty, boxed) = pool.take_with_box();
        Self::pooled_in(std::mem::replace(items, empty), pool, boxed)
    }
    fn pooled_in(items: Vec<T>, pool: &Arc<VecPool<T>>, boxed: Option<Arc<Owned<T>>>) -> Self {
        let range = 0..items.len();
        let home = Some(Arc::clone(pool));
        let data = match boxed {
            Some(mut boxed) => {
                let owned = Arc::get_mut(&mut boxed).expect("a box the pool keeps is unique");
                owned.items = items;
                owned.home = home;
                boxed
            }
            None => Arc::new(Owned { items, home }),
        };
        Batch {
            data: Shared::Vec(data),
            range,
        }
    }
    pub fn len(&self) -> usize {
        self.range.len()
    }
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
    pub fn as_slice(&self) -> &[T] {
        let all: &[T] = match &self.data {
            Shared::Slice(a) => a,
            Shared::Vec(a) => &a.items,
            Shared::Gone => &[],
        };
        &all[self.range.clone()]
    }
    /// Takes every element as a batch, leaving this one empty and holding nothing: unlike
    /// [`split_front`](Self::split_front) of all of them, the buffer keeps no second
    /// reference, so the batch taken stays unshared (a reader may change it in place, see
    /// [`take_whole`](Self::take_whole)).
    pub fn take_all(&mut self) -> Batch<T> {
        std::mem::replace(
            self,
            Batch {
                data: Shared::Gone,
                range: 0..0,
            },
        )
    }
    /// Takes the first `n` elements off the front as a batch of their own.
    pub fn split_front(&mut self, n: usize) -> Batch<T> {
        debug_assert!(n <= self.len());
        let mid = self.range.start + n;
        let front = Batch {
            data: self.data.clone(),
            range: self.range.start..mid,
        };
        self.range.start = mid;
        front
    }
    /// The capacity of the vector behind the batch, if it is one (not an `Arc<[T]>`).
    #[cfg(test)]
    pub fn vec_capacity(&self) -> Option<usize> {
        match &self.data {
            Shared::Slice(_) | Shared::Gone => None,
            Shared::Vec(a) => Some(a.items.capacity()),
        }
    }
    /// Drops the first `n` elements.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.range.start += n;
    }
    /// Moves the whole vector out of this batch, if nothing else holds it (no other reader, not
    /// split) and the batch is all of it: `replacement`, emptied, takes its place, and the
    /// batch is left empty. When the batch is dropped, `replacement` goes to the pool the
    /// vector came from, so a writer that hands its vectors on this way gets as many back.
    /// Otherwise `replacement` comes back and the batch is untouched.
    pub fn take_whole(&mut self, mut replacement: Vec<T>) -> Result<Vec<T>, Vec<T>> {
        let Shared::Vec(a) = &mut self.data else {
            return Err(replacement);
        };
        let Some(owned) = Arc::get_mut(a) else {
            return Err(replacement);
        };
        if self.range != (0..owned.items.len()) {
            return Err(replacement);
        }
        replacement.clear();
        self.range = 0..0;
        Ok(std::mem::replace(&mut owned.items, replacement))
    }
}

impl<T: Clone> Batch<T> {
    /// Appends the batch's elements to `out`, leaving it empty: an element that owns
    /// something (`needs_drop`: a `String`, a `Vec`) is moved out of its vector if nothing else
    /// holds it (no clone: a `String` keeps its text where it is); plain data, and a batch
    /// another reader holds, are copied (cloned).
    pub fn move_into(&mut self, out: &mut Vec<T>) {
        if let (Shared::Vec(a), true) = (&mut self.data, std::mem::needs_drop::<T>()) {
            if let Some(owned) = Arc::get_mut(a) {
                out.extend(owned.items.drain(self.range.clone()));
                self.range = 0..0;
                return;
            }
        }
        out.extend_from_slice(self.as_slice());
        self.range.start = self.range.end;
    }
}

impl<T: Clone + Send + Sync + 'static> Batch<T> {
    /// The batch with its element type erased, to travel in an envelope to a reader of any
    /// type. A pooled batch's box becomes the erased one: no allocation (only an `Arc<[T]>`
    /// batch is boxed).
    pub fn into_any(mut self) -> AnyBatch {
        let range = self.range.clone();
        match std::mem::replace(&mut self.data, Shared::Gone) {
            Shared::Vec(a) => AnyBatch::Pooled {
                data: a,
                range,
                typed: typed::<T>,
            },
            data => AnyBatch::Boxed(Box::new(Batch { data, range })),
        }
    }
}

/// A small vector: at most this many bytes of capacity. A few elements that a step appended
/// to a much larger vector travel in a small one of their own (see `OutBuf::take_batch`), and
/// a writer's [`VecPool`] keeps small vectors apart for them ([`VecPool::take_fitting`]).
pub(crate) const SMALL_VEC_BYTES: usize = 4 << 10;

/// A batch that has joined another ([`AnyBatch::absorb`]) holds at most this many bytes of
/// elements: its vector, which goes back to the writer's pool, stays a small one.
pub(crate) const JOINED_MAX_BYTES: usize = SMALL_VEC_BYTES;

/// Only a batch of at most this many bytes of elements joins another (one element of up to
/// 64 bytes, eight `u64`): where what a batch costs of its own (an envelope, a vector and its
/// box, a share of a step) outweighs copying its elements once more. Larger batches go as
/// they are: a reader behind on them gathers them into one slice anyway, and joining would
/// copy them twice (in alternated runs, joins of batches up to 4 KiB made one element per
/// push across processes a tenth slower; up to 64 bytes, as fast as without joins).
pub(crate) const JOIN_MAX_BYTES: usize = 64;

/// What an erased pooled batch asks of the code that knows its element type (see
/// [`AnyBatch::Pooled`]'s `typed`).
pub(crate) enum Typed<'a> {
    /// Append `later` to the batch (`data`, `range`) in place: see [`AnyBatch::absorb`].
    Absorb {
        data: &'a mut Arc<dyn Any + Send + Sync>,
        range: &'a mut Range<usize>,
        later: &'a AnyBatch,
    },
    /// Drop the batch as the typed [`Batch`] it is: see [`AnyBatch::release`].
    Release {
        data: Arc<dyn Any + Send + Sync>,
        range: Range<usize>,
    },
}

/// The typed half of an erased pooled batch of `T`s; what it returns is [`AnyBatch::absorb`]'s
/// answer (always true for a release).
fn typed<T: Clone + Send + Sync + 'static>(op: Typed<'_>) -> bool {
    match op {
        Typed::Absorb { data, range, later } => absorb_into::<T>(data, range, later),
        Typed::Release { data, range } => {
            if let Ok(a) = data.downcast::<Owned<T>>() {
                drop(Batch {
                    data: Shared::Vec(a),
                    range,
                });
            }
            true
        }
    }
}

/// Appends the elements of `later` to the pooled batch (`data`, `range`) of `T`s in place, if
/// `later` holds `T`s too and the batch may grow ([`join_in_place`]). True if it appended them.
fn absorb_into<T: Clone + Send + Sync + 'static>(
    data: &mut Arc<dyn Any + Send + Sync>,
    range: &mut Range<usize>,
    later: &AnyBatch,
) -> bool {
    let Some(add) = later.as_slice::<T>() else {
        return false;
    };
    match Arc::get_mut(data).and_then(|a| a.downcast_mut::<Owned<T>>()) {
        Some(owned) => join_in_place(owned, range, add),
        None => false,
    }
}

/// Appends `add` to the batch of `owned`'s elements in `range`, in place, if `add` is small
/// ([`JOIN_MAX_BYTES`]) and the batch may grow: it covers the whole vector (not split), the
/// vector is a pooled one, and the two together stay within [`JOINED_MAX_BYTES`]. Only for elements without drop glue (plain
/// data, whose clone is a copy): the copy cannot fail half-way. The caller has checked that
/// nothing else holds `owned`. True if it appended them.
fn join_in_place<T: Clone>(owned: &mut Owned<T>, range: &mut Range<usize>, add: &[T]) -> bool {
    if std::mem::needs_drop::<T>() {
        return false;
    }
    let size = std::mem::size_of::<T>().max(1);
    let joined = range.len() + add.len();
    if add.len().saturating_mul(size) > JOIN_MAX_BYTES
        || joined.saturating_mul(size) > JOINED_MAX_BYTES
        || range.start != 0
        || range.end != owned.items.len()
        || owned.home.is_none()
    {
        return false;
    }
    if owned.items.capacity() < joined {
        // Straight to the most a joined batch holds: one allocation, and the vector, back in
        // the writer's pool, has room for the next joins.
        let most = JOINED_MAX_BYTES / size;
        owned.items.reserve_exact(most - owned.items.len());
    }
    owned.items.extend_from_slice(add);
    range.end = owned.items.len();
    true
}

impl<T: Clone> Batch<T> {
    /// Appends `add` to this batch in place, if it can: a pooled batch of plain data that
    /// nothing else holds (no other reader, not split), small with `add` (see
    /// [`AnyBatch::absorb`], the same for an erased batch). True if it did.
    pub fn join(&mut self, add: &[T]) -> bool {
        match &mut self.data {
            Shared::Vec(a) => match Arc::get_mut(a) {
                Some(owned) => join_in_place(owned, &mut self.range, add),
                None => false,
            },
            Shared::Slice(_) | Shared::Gone => false,
        }
    }
}

impl<T> Drop for Batch<T> {
    /// The last reference to a pooled vector sends both it and its box back to the pool.
    fn drop(&mut self) {
        let Shared::Vec(a) = &mut self.data else {
            return;
        };
        let Some(owned) = Arc::get_mut(a) else {
            return;
        };
        let Some(home) = owned.home.take() else {
            return;
        };
        let items = std::mem::take(&mut owned.items);
        let Shared::Vec(boxed) = std::mem::replace(&mut self.data, Shared::Gone) else {
            unreachable!("matched just above")
        };
        home.put_with_box(items, boxed);
    }
}

impl<T> Clone for Batch<T> {
    fn clone(&self) -> Self {
        Batch {
            data: self.data.clone(),
            range: self.range.clone(),
        }
    }
}

/// A [`Batch`] of some element type, as an envelope carries it (see [`Batch::into_any`]).
pub(crate) enum AnyBatch {
    /// A pooled batch: its shared box, type-erased, and its range; and the code that knows
    /// its type, to append a later batch of the same type to it in place
    /// ([`AnyBatch::absorb`]) and to drop it as a typed batch ([`AnyBatch::release`]).
    Pooled {
        data: Arc<dyn Any + Send + Sync>,
        range: Range<usize>,
        typed: fn(Typed<'_>) -> bool,
    },
    /// Any other batch, boxed.
    Boxed(Box<dyn Any + Send>),
}

impl fmt::Debug for AnyBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyBatch { .. }")
    }
}

impl AnyBatch {
    /// The batch, if its elements are `T`s; else the batch back.
    pub fn downcast<T: Send + Sync + 'static>(self) -> Result<Batch<T>, AnyBatch> {
        match self {
            AnyBatch::Pooled { data, range, typed } => match data.downcast::<Owned<T>>() {
                Ok(a) => Ok(Batch {
                    data: Shared::Vec(a),
                    range,
                }),
                Err(data) => Err(AnyBatch::Pooled { data, range, typed }),
            },
            AnyBatch::Boxed(b) => b
                .downcast::<Batch<T>>()
                .map(|b| *b)
                .map_err(AnyBatch::Boxed),
        }
    }

    /// The elements, if they are `T`s.
    fn as_slice<T: 'static>(&self) -> Option<&[T]> {
        match self {
            AnyBatch::Pooled { data, range, .. } => data
                .downcast_ref::<Owned<T>>()
                .and_then(|o| o.items.get(range.clone())),
            AnyBatch::Boxed(b) => b.downcast_ref::<Batch<T>>().map(Batch::as_slice),
        }
    }

    /// Appends the elements of `later`, a batch that followed this one on the same input, to
    /// this one, in place, if it can: this is a pooled batch of plain data that nothing else
    /// shares, `later` holds the same type, and the two stay small together (see
    /// `absorb_into`). True if it did: `later` is spent ([`release`](Self::release) it, and
    /// its vector and box go back to its pool). The way a reader's queue joins the one-element batches that pile up while
    /// the reader is busy, instead of keeping (and its writer allocating) one per element.
    pub fn absorb(&mut self, later: &AnyBatch) -> bool {
        match self {
            AnyBatch::Pooled { data, range, typed } => typed(Typed::Absorb { data, range, later }),
            AnyBatch::Boxed(_) => false,
        }
    }

    /// Drops the batch as the typed [`Batch`] it is: if this was the last reference to a
    /// pooled vector, both the vector and its box go back to the writer's pool. (Dropped as
    /// it is, an erased batch that holds the last reference sends the vector home but frees
    /// the box: an allocation at the writer's next batch.) For a batch spent by a join, whose
    /// writer may have let go of it already.
    pub fn release(self) {
        if let AnyBatch::Pooled { data, range, typed } = self {
            typed(Typed::Release { data, range });
        }
    }
}

/// The process's bound on spare buffers: empty vectors kept for reuse (a writer's
/// [`VecPool`], an input's vector for gathering batches), not data.
///
/// Each keeper asks [`keep`] before it keeps a vector and [`release`]s the bytes when the
/// vector leaves (reused, freed, or its keeper dropped). In all they keep at most
/// [`MAX_BYTES`]: a few busy agents reuse their buffers as before, while the spare buffers of
/// a process of 100,000 agents, each of which has seen a stream go by, stay a few MiB in all
/// rather than hundreds of KiB per agent. A vector that finds no room is freed: its owner
/// allocates when it next needs one (once per batch, never per element).
pub(crate) mod spare {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Most bytes of spare buffers kept in the process, every keeper together.
    pub const MAX_BYTES: usize = 16 << 20;

    static PROCESS: Budget = Budget::new(MAX_BYTES);

    /// Counts `bytes` more kept in the process, if they fit under [`MAX_BYTES`]; false
    /// (nothing counted) if they do not.
    pub fn keep(bytes: usize) -> bool {
        PROCESS.keep(bytes)
    }

    /// Counts `bytes` (kept with [`keep`]) no longer kept.
    pub fn release(bytes: usize) {
        PROCESS.release(bytes)
    }

    /// Bytes counted as kept, up to a bound.
    pub(super) struct Budget {
        kept: AtomicUsize,
        max: usize,
    }

    impl Budget {
        pub(super) const fn new(max: usize) -> Self {
            Budget {
                kept: AtomicUsize::new(0),
                max,
            }
        }

        pub(super) fn keep(&self, bytes: usize) -> bool {
            self.kept
                .fetch_update(Relaxed, Relaxed, |k| {
                    k.checked_add(bytes).filter(|&t| t <= self.max)
                })
                .is_ok()
        }

        pub(super) fn release(&self, bytes: usize) {
            if bytes > 0 {
                let before = self.kept.fetch_sub(bytes, Relaxed);
                debug_assert!(before >= bytes, "released more spare bytes than kept");
            }
        }

        #[cfg(test)]
        pub(super) fn kept(&self) -> usize {
            self.kept.load(Relaxed)
        }
    }
}

/// What an element owns on the heap, which `size_of` does not see: the count a connection's
/// byte bound needs for elements such as a `String` or a `Vec<u8>` (see
/// [`Graph::heap_bytes`](crate::Graph::heap_bytes) and [`graph`](crate::graph), "Capacity").
///
/// A counter is found once per link, when the run starts: one declared for the type with
/// `Graph::heap_bytes`, else a built-in one (`String`, `Box<str>`, `Box<[u8]>`, `Vec<String>`
/// and the `Vec`s of primitive numbers, `bool` and `char`), else none, and then the type's
/// `size_of` is all an element counts (a plain-data type: nothing on the heap). What is counted
/// is the heap memory the element holds: a vector's capacity, not its length.
pub(crate) mod heap {
    use std::any::{Any, TypeId};
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

    /// Counts the bytes one element owns on the heap.
    pub(crate) type Counter<T> = Arc<dyn Fn(&T) -> usize + Send + Sync>;

    /// The counters declared with `Graph::heap_bytes`, by type: a `Counter<T>` each.
    static DECLARED: RwLock<Option<HashMap<TypeId, Box<dyn Any + Send + Sync>>>> =
        RwLock::new(None);

    /// Declares `count` the counter of `T` (the last declaration holds).
    pub(crate) fn declare<T: 'static>(count: Counter<T>) {
        let mut declared = DECLARED.write().unwrap_or_else(|p| p.into_inner());
        declared
            .get_or_insert_with(HashMap::new)
            .insert(TypeId::of::<T>(), Box::new(count));
    }

    /// Declares `count` the counter of `T` unless one is declared already (a library's
    /// default, which the user's own declaration overrides, before or after).
    pub(crate) fn declare_if_absent<T: 'static>(count: Counter<T>) {
        let mut declared = DECLARED.write().unwrap_or_else(|p| p.into_inner());
        declared
            .get_or_insert_with(HashMap::new)
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(count));
    }

    /// `T`'s counter: declared, built in, or none (see the module docs).
    pub(crate) fn counter<T: 'static>() -> Option<Counter<T>> {
        let declared = DECLARED.read().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = declared.as_ref().and_then(|d| d.get(&TypeId::of::<T>())) {
            return c.downcast_ref::<Counter<T>>().cloned();
        }
        drop(declared);
        built_in::<T>()
    }

    /// The counter of `U` as a counter of `T`, if they are the same type.
    fn same<T: 'static, U: 'static>(count: fn(&U) -> usize) -> Option<Counter<T>> {
        if TypeId::of::<T>() != TypeId::of::<U>() {
            return None;
        }
        let count: Counter<U> = Arc::new(count);
        (Box::new(count) as Box<dyn Any>)
            .downcast::<Counter<T>>()
            .ok()
            .map(|c| *c)
    }

    fn vec_bytes<E>(v: &Vec<E>) -> usize {
        v.capacity() * std::mem::size_of::<E>()
    }

    fn built_in<T: 'static>() -> Option<Counter<T>> {
        macro_rules! vecs {
            ($($e:ty),*) => {
                None$(.or_else(|| same::<T, Vec<$e>>(vec_bytes::<$e>)))*
            };
        }
        same::<T, String>(|s| s.capacity())
            .or_else(|| same::<T, Box<str>>(|s| s.len()))
            .or_else(|| same::<T, Box<[u8]>>(|s| s.len()))
            .or_else(|| {
                same::<T, Vec<String>>(|v| {
                    vec_bytes(v) + v.iter().map(String::capacity).sum::<usize>()
                })
            })
            .or_else(|| {
                vecs!(
                    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool,
                    char
                )
            })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn built_in_counters_count_capacity_and_plain_types_have_none() {
            let s = String::with_capacity(100);
            assert_eq!(counter::<String>().unwrap()(&s), 100);
            let v: Vec<f64> = Vec::with_capacity(10);
            assert_eq!(counter::<Vec<f64>>().unwrap()(&v), 80);
            let strings = vec![String::from("abc"), String::with_capacity(7)];
            assert_eq!(
                counter::<Vec<String>>().unwrap()(&strings),
                strings.capacity() * std::mem::size_of::<String>() + 3 + 7
            );
            assert!(counter::<u64>().is_none());
            assert!(counter::<[u8; 1024]>().is_none());
        }

        #[test]
        fn a_declared_counter_is_found_for_its_type_only() {
            #[derive(Clone)]
            struct Frame(Vec<u8>);
            assert!(counter::<Frame>().is_none());
            declare::<Frame>(Arc::new(|f: &Frame| f.0.len()));
            assert_eq!(counter::<Frame>().unwrap()(&Frame(vec![0; 9])), 9);
            assert!(counter::<(Frame, u8)>().is_none());
        }
    }
}

/// A writer's bounded free list of batch vectors (see [`Batch::pooled`]).
///
/// It keeps at most [`VecPool::MAX_VECS`] large vectors and as many small ones (at most
/// [`SMALL_VEC_BYTES`] each, kept apart: see [`VecPool::take_fitting`]), of at most
/// [`VecPool::MAX_BYTES`] bytes of capacity in all, and only while the process's bound on
/// spare buffers ([`spare`]) has room; a vector that does not fit is freed. Eight batches fit, 4 MiB in all: four
/// times what a default connection has in flight ([`crate::DEFAULT_CAPACITY_BYTES`]), so that
/// batches of large elements (256 KiB of 1 KiB elements at the default bound), and connections
/// raised to 4 MiB,
/// reuse their vectors too,
/// instead of an allocation and its fresh pages per batch. What it keeps is what the writer
/// allocated anyway: vectors come back only from batches it sent. The trade-off: four
/// writers of such batches can fill the process's bound, and other pools then free what
/// comes back (an allocation per batch, as without a pool) until one of those is dropped.
pub(crate) struct VecPool<T> {
    free: std::sync::Mutex<Free<T>>,
    /// Most vectors kept ([`VecPool::MAX_VECS`] unless made [`with_limits`](VecPool::with_limits)).
    max_vecs: usize,
    /// Most bytes of capacity kept, all vectors together ([`VecPool::MAX_BYTES`] by default).
    max_bytes: usize,
}

/// The vectors a [`VecPool`] keeps, and their capacity in bytes; and empty boxes for them
/// (each unique, with no home: no cycle back to the pool).
struct Free<T> {
    /// Vectors of more than [`SMALL_VEC_BYTES`].
    vecs: Vec<Vec<T>>,
    /// Small vectors ([`SMALL_VEC_BYTES`] at most), as many as `vecs` at most: kept apart so
    /// that a few large vectors do not push out the small ones few-element batches travel in.
    small: Vec<Vec<T>>,
    bytes: usize,
    boxes: Vec<Arc<Owned<T>>>,
}

impl<T> Drop for VecPool<T> {
    fn drop(&mut self) {
        spare::release(self.lock().bytes);
    }
}

impl<T> VecPool<T> {
    /// Most vectors kept, large and small each.
    pub const MAX_VECS: usize = 8;
    /// Most bytes of capacity kept, all vectors together.
    pub const MAX_BYTES: usize = 4 << 20;

    pub fn new() -> Self {
        Self::with_limits(Self::MAX_VECS, Self::MAX_BYTES)
    }

    /// A pool that keeps at most `max_vecs` vectors of at most `max_bytes` bytes of capacity in
    /// all: for a writer whose batches are larger than a step's (a ring's feeder, whose
    /// batches are bounded by its connection's capacity).
    pub fn with_limits(max_vecs: usize, max_bytes: usize) -> Self {
        VecPool {
            free: std::sync::Mutex::new(Free {
                vecs: Vec::new(),
                small: Vec::new(),
                bytes: 0,
                boxes: Vec::new(),
            }),
            max_vecs,
            max_bytes,
        }
    }

    /// An empty vector for a step to append to: the large one returned last (with its
    /// capacity) if there is one, else the small one returned last, else a new one (no
    /// allocation until it grows).
    pub fn take(&self) -> Vec<T> {
        Self::pop_vec(&mut self.lock())
    }

    fn pop_vec(free: &mut Free<T>) -> Vec<T> {
        match free.vecs.pop().or_else(|| free.small.pop()) {
            Some(v) => Self::taken(free, v),
            None => Vec::new(),
        }
    }

    /// An empty vector with room for `len` elements and not much more, for a batch of `len`
    /// elements to travel in: a kept one if one fits, else a new one with room for `len`
    /// rounded up to a power of two (so that it fits the next batches of about that size). A
    /// small batch ([`SMALL_VEC_BYTES`] at most) takes any small vector with room for it; a
    /// larger one a vector of at most twice its elements' bytes, which bounds what a batch in
    /// flight holds.
    pub fn take_fitting(&self, len: usize) -> Vec<T> {
        let size = std::mem::size_of::<T>().max(1);
        let small = len.saturating_mul(size) <= SMALL_VEC_BYTES;
        let mut free = self.lock();
        let list = if small { &free.small } else { &free.vecs };
        let most = len.saturating_mul(2).max(1);
        let kept = list
            .iter()
            .rposition(|v| v.capacity() >= len && (small || v.capacity() <= most));
        match kept {
            Some(i) => {
                let v = if small {
                    free.small.swap_remove(i)
                } else {
                    free.vecs.swap_remove(i)
                };
                Self::taken(&mut free, v)
            }
            None => {
                drop(free);
                let rounded = len.checked_next_power_of_two().unwrap_or(len).max(1);
                let room = if small {
                    rounded.min(SMALL_VEC_BYTES / size).max(len)
                } else {
                    rounded
                };
                Vec::with_capacity(room)
            }
        }
    }

    /// Accounts for `v` leaving the pool.
    fn taken(free: &mut Free<T>, v: Vec<T>) -> Vec<T> {
        let bytes = Self::bytes(&v);
        free.bytes -= bytes;
        spare::release(bytes);
        v
    }

    /// Gives `items` back for reuse (cleared), or frees it if the pool has no room for it.
    pub fn put(&self, items: Vec<T>) {
        if let Some(items) = self.fits(items) {
            self.lock().keep(items, self.max_vecs, self.max_bytes);
        }
    }

    /// [`put`](VecPool::put), and keeps `boxed` (emptied, homeless, unique) for the next
    /// [`Batch::pooled`], up to as many boxes as vectors; one lock for both.
    fn put_with_box(&self, items: Vec<T>, boxed: Arc<Owned<T>>) {
        let items = self.fits(items);
        let mut free = self.lock();
        if let Some(items) = items {
            free.keep(items, self.max_vecs, self.max_bytes);
        }
        if free.boxes.len() < 2 * self.max_vecs {
            free.boxes.push(boxed);
        }
    }

    /// An empty box kept by [`put_with_box`](VecPool::put_with_box), if there is one.
    fn take_box(&self) -> Option<Arc<Owned<T>>> {
        self.lock().boxes.pop()
    }

    /// [`take`](VecPool::take) and [`take_box`](VecPool::take_box) under one lock.
    fn take_with_box(&self) -> (Vec<T>, Option<Arc<Owned<T>>>) {
        let mut free = self.lock();
        let boxed = free.boxes.pop();
        (Self::pop_vec(&mut free), boxed)
    }

    /// `items`, cleared, if the pool could keep it (it has a capacity, not too large).
    fn fits(&self, mut items: Vec<T>) -> Option<Vec<T>> {
        if items.capacity() == 0 || Self::bytes(&items) > self.max_bytes {
            return None;
        }
        items.clear();
        Some(items)
    }

    fn bytes(v: &Vec<T>) -> usize {
        v.capacity().saturating_mul(std::mem::size_of::<T>())
    }

    /// Vectors kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let free = self.lock();
        free.vecs.len() + free.small.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free<T>> {
        // A panic while holding the lock leaves a valid list (push and pop only).
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Free<T> {
    /// Keeps `items` if there is room, here and in the process's bound; else frees it. Small
    /// vectors and large ones are kept apart, up to `max_vecs` of each. With every slot
    /// taken, a larger vector takes the place of the smallest one kept: large vectors cost
    /// fresh pages to make again.
    fn keep(&mut self, items: Vec<T>, max_vecs: usize, max_bytes: usize) {
        let bytes = VecPool::bytes(&items);
        if bytes <= SMALL_VEC_BYTES {
            if self.small.len() < max_vecs && self.bytes + bytes <= max_bytes && spare::keep(bytes)
            {
                self.bytes += bytes;
                self.small.push(items);
            }
            return;
        }
        if self.vecs.len() >= max_vecs {
            let Some((i, smallest)) = self
                .vecs
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, v)| (i, VecPool::bytes(v)))
            else {
                return;
            };
            if smallest >= bytes {
                return;
            }
            drop(self.vecs.swap_remove(i));
            self.bytes -= smallest;
            spare::release(smallest);
        }
        if self.bytes + bytes <= max_bytes && spare::keep(bytes) {
            self.bytes += bytes;
            self.vecs.push(items);
        }
    }
}

/// What a writer does when a reader has `capacity` elements in flight and more arrive.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The writer waits (lossless; the default).
    #[default]
    Block,
    /// The oldest waiting elements are dropped, keeping at most `capacity` waiting at the
    /// writer (for sensors where the freshest reading matters most). Drops are counted.
    DropOldest,
    /// Elements that find no room are dropped. Drops are counted.
    DropNewest,
}

/// How a connection moves data. `Auto` (the default) picks from where the two agents run: the
/// same process → in-process messages; another process on this host → a shared-memory ring.
/// Forcing a transport is for tests and benchmarks: the same graph, every path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Chosen from placement.
    #[default]
    Auto,
    /// In-process messages (both agents must be in the same process).
    Local,
    /// A shared-memory ring, even between agents of the same process.
    SharedMemory,
    /// A TCP link over loopback (`127.0.0.1`, a free port), even between agents of the same
    /// process or host; without a deployment it runs without a secret. Between hosts a
    /// connection is a TCP link whatever it says.
    Tcp,
    /// Through a broker, NATS JetStream: the graph must name one ([`Graph::use_broker`], or
    /// `[broker]` in a deployment file). Works between agents of one process, of two
    /// processes, or of two hosts; the reader resumes after a restart where it stopped.
    ///
    /// [`Graph::use_broker`]: crate::Graph::use_broker
    Broker,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_budget_counts_what_is_kept_up_to_its_bound() {
        let budget = spare::Budget::new(100);
        assert!(budget.keep(60));
        assert!(!budget.keep(41), "over the bound: not counted");
        assert_eq!(budget.kept(), 60);
        assert!(budget.keep(40));
        budget.release(60);
        assert_eq!(budget.kept(), 40);
        assert!(budget.keep(60));
        assert_eq!(budget.kept(), 100);
    }

    /// A batch no one else holds gives its strings up without a clone (their text stays where
    /// it is); one another reader holds is cloned, and that reader still sees its elements.
    #[test]
    fn move_into_moves_what_no_one_else_holds_and_clones_the_rest() {
        let pool = Arc::new(VecPool::<String>::new());
        let items = vec![String::from("first"), String::from("second")];
        let texts: Vec<*const u8> = items.iter().map(|s| s.as_ptr()).collect();
        let mut alone = Batch::pooled(items, &pool);
        let mut out = Vec::new();
        alone.move_into(&mut out);
        assert!(alone.is_empty());
        assert_eq!(out, ["first", "second"]);
        assert_eq!(out.iter().map(|s| s.as_ptr()).collect::<Vec<_>>(), texts);

        let mut shared = Batch::pooled(vec![String::from("third")], &pool);
        let other = shared.split_front(1);
        let mut rest = other;
        let mut out = Vec::new();
        shared.move_into(&mut out);
        assert!(out.is_empty(), "the front went to the other batch");
        rest.move_into(&mut out);
        assert_eq!(out, ["third"]);
        assert_ne!(out[0].as_ptr(), shared_text(&shared));
    }

    fn shared_text(b: &Batch<String>) -> *const u8 {
        match &b.data {
            Shared::Vec(a) => a.items[0].as_ptr(),
            _ => std::ptr::null(),
        }
    }

    #[test]
    fn a_pooled_vector_comes_back_when_its_last_reader_drops_it() {
        let pool = Arc::new(VecPool::<u64>::new());
        let mut items = pool.take();
        items.extend(0..100u64);
        let (ptr, cap) = (items.as_ptr(), items.capacity());
        let mut a = Batch::pooled(items, &pool);
        let b = a.clone();
        let front = a.split_front(40);
        assert_eq!(front.as_slice(), (0..40).collect::<Vec<_>>());
        assert_eq!(a.as_slice(), (40..100).collect::<Vec<_>>());
        assert_eq!(b.len(), 100);
        drop((a, front));
        assert_eq!(pool.len(), 0, "a reader still holds the batch");
        drop(b);
        assert_eq!(pool.len(), 1);
        // The same allocation, empty, with its capacity: no copy, no new allocation.
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap));
    }

    #[test]
    fn a_pooled_batch_reuses_the_box_of_the_last_one_dropped() {
        let pool = Arc::new(VecPool::<u64>::new());
        let first = Batch::pooled(vec![1, 2, 3], &pool);
        let Shared::Vec(a) = &first.data else {
            panic!("a pooled batch shares a vector")
        };
        let boxed = Arc::as_ptr(a);
        let reader = first.clone();
        drop(first);
        assert_eq!(pool.lock().boxes.len(), 0, "a reader still holds it");
        drop(reader);
        assert_eq!(pool.lock().boxes.len(), 1);
        assert_eq!(pool.len(), 1, "and its vector");
        let again = Batch::pooled(pool.take(), &pool);
        let Shared::Vec(b) = &again.data else {
            panic!("a pooled batch shares a vector")
        };
        assert_eq!(Arc::as_ptr(b), boxed, "the same box, no allocation");
        assert!(again.is_empty());
        assert_eq!(pool.lock().boxes.len(), 0);
    }

    #[test]
    fn an_erased_batch_comes_back_as_its_own_type_only() {
        let pool = Arc::new(VecPool::<u64>::new());
        let mut batch = Batch::pooled(vec![1, 2, 3, 4], &pool);
        batch.advance(1);
        let erased = batch.into_any();
        assert!(
            matches!(erased, AnyBatch::Pooled { .. }),
            "no box of its own"
        );
        let Err(erased) = erased.downcast::<u32>() else {
            panic!("not a batch of u32")
        };
        let back = erased.downcast::<u64>().unwrap();
        assert_eq!(back.as_slice(), [2, 3, 4]);
        drop(back);
        assert_eq!(
            pool.len(),
            1,
            "the vector went home through the erased batch"
        );
        let shared = Batch::new(Arc::from([7u64, 8])).into_any();
        let Err(shared) = shared.downcast::<String>() else {
            panic!("not a batch of String")
        };
        assert_eq!(shared.downcast::<u64>().unwrap().as_slice(), [7, 8]);
    }

    #[test]
    fn a_small_unshared_batch_joins_a_later_one_in_place_and_nothing_else_does() {
        let pool = Arc::new(VecPool::<u64>::new());
        let mut first = Batch::pooled(vec![1, 2], &pool).into_any();
        let later = Batch::pooled(vec![3], &pool).into_any();
        assert!(first.absorb(&later));
        later.release();
        assert_eq!(pool.len(), 1, "the spent batch's vector went home");
        assert!(
            pool.take_box().is_some(),
            "and its box, released as a typed batch"
        );
        let Ok(first) = first.downcast::<u64>() else {
            panic!("a batch of u64")
        };
        assert_eq!(first.as_slice(), [1, 2, 3]);
        let most = JOINED_MAX_BYTES / 8;
        assert_eq!(
            first.vec_capacity(),
            Some(most),
            "grown once, to the most a joined batch holds"
        );

        // Shared with another reader, split, of another type, too large together, or not
        // plain data: no join.
        let mut shared = Batch::pooled(vec![1], &pool);
        let reader = shared.clone();
        assert!(!shared.join(&[2]));
        drop(reader);
        let mut split = Batch::pooled(vec![1, 2], &pool);
        let front = split.split_front(1);
        assert!(!split.join(&[3]));
        drop(front);
        let mut erased = Batch::pooled(vec![1u64], &pool).into_any();
        assert!(!erased.absorb(&Batch::pooled(vec![1u32], &Arc::new(VecPool::new())).into_any()));
        let mut nine = Batch::pooled(vec![0u64], &pool);
        assert!(!nine.join(&[0; 9]), "more than JOIN_MAX_BYTES");
        assert!(nine.join(&[0; 8]));
        let mut big = Batch::pooled(vec![0u64; most - 1], &pool);
        assert!(!big.join(&[1, 2]));
        assert!(big.join(&[1]));
        assert_eq!(big.len(), most);
        let strings = Arc::new(VecPool::<String>::new());
        let mut text = Batch::pooled(vec!["a".to_string()], &strings);
        assert!(!text.join(&["b".to_string()]));
        let mut decoded = Batch::new(Arc::from([1u64]));
        assert!(!decoded.join(&[2]), "an Arc<[T]> cannot grow");
        // A decoded batch can join a pooled one, though.
        let mut pooled = Batch::pooled(vec![1u64], &pool).into_any();
        assert!(pooled.absorb(&Batch::new(Arc::from([2u64])).into_any()));
        assert_eq!(pooled.downcast::<u64>().unwrap().as_slice(), [1, 2]);
    }

    #[test]
    fn a_full_pool_keeps_its_largest_vectors() {
        let pool = Arc::new(VecPool::<u64>::with_limits(2, 1 << 20));
        for cap in [1000, 2000] {
            pool.put(Vec::with_capacity(cap));
        }
        pool.put(Vec::with_capacity(10_000));
        pool.put(Vec::with_capacity(1000));
        let mut kept: Vec<usize> = pool.lock().vecs.iter().map(|v| v.capacity()).collect();
        kept.sort();
        assert_eq!(
            kept,
            [2000, 10_000],
            "the smallest gave way, a smaller one was not kept"
        );
        // Small vectors have places of their own: large ones do not push them out.
        pool.put(Vec::with_capacity(1));
        pool.put(Vec::with_capacity(4));
        assert_eq!(pool.len(), 4);
        assert_eq!(pool.take_fitting(3).capacity(), 4, "one with room for 3");
        assert_eq!(
            pool.take_fitting(3).capacity(),
            4,
            "the one left is too small: a new one, rounded up to a power of two"
        );
        assert_eq!(pool.len(), 3, "the small one stays");
        let most = SMALL_VEC_BYTES / 8;
        assert_eq!(
            pool.take_fitting(most - 1).capacity(),
            most,
            "within a small vector"
        );
        // A larger batch takes a kept vector of at most twice its elements, else a new one
        // rounded up to a power of two.
        assert_eq!(
            pool.take_fitting(4000).capacity(),
            4096,
            "10,000 is more than twice 4,000: a new one"
        );
        assert_eq!(pool.take_fitting(6000).capacity(), 10_000, "the kept one");
        pool.put(Vec::with_capacity(10_000));
        assert_eq!(
            pool.take().capacity(),
            10_000,
            "a step gets a large one first"
        );
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_bounded_vectors() {
        let pool = Arc::new(VecPool::<u64>::new());
        let batches: Vec<Batch<u64>> = (0..VecPool::<u64>::MAX_VECS + 3)
            .map(|i| Batch::pooled(vec![i as u64; 10], &pool))
            .collect();
        drop(batches);
        assert_eq!(pool.len(), VecPool::<u64>::MAX_VECS);
        // Vectors beyond the byte bound are freed, not kept: one alone too large, or one
        // that would take the pool over it. (A bound of 64 KiB here, not the default's 4 MiB:
        // the process's bound on spare buffers is shared with the tests running beside this
        // one.)
        const BOUND: usize = 64 << 10;
        let pool = Arc::new(VecPool::<u64>::with_limits(VecPool::<u64>::MAX_VECS, BOUND));
        drop(Batch::pooled(vec![0u64; BOUND / 8 + 1], &pool));
        assert_eq!(pool.len(), 0);
        let half = BOUND / 16;
        let batches: Vec<Batch<u64>> = (0..3)
            .map(|_| Batch::pooled(Vec::with_capacity(half), &pool))
            .collect();
        drop(batches);
        assert_eq!(pool.len(), 2);
        // A pool with limits of its own (a ring feeder's) keeps what a smaller one would free.
        let pool = Arc::new(VecPool::<u64>::with_limits(1, BOUND * 4));
        let big: Vec<Batch<u64>> = (0..2)
            .map(|_| Batch::pooled(vec![0u64; BOUND / 8 + 1], &pool))
            .collect();
        drop(big);
        assert_eq!(pool.len(), 1, "one vector kept, at most");
    }
}
