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

/// A run of elements shared by every reader of one batch: a slice of an `Arc<[T]>`.
///
/// A step's appends to one output become one batch; each reader gets a clone of the `Arc` (no
/// per-reader copy). Splitting a batch (when a link has credit for only part of it) only narrows
/// the range.
pub(crate) struct Batch<T> {
    data: Arc<[T]>,
    range: Range<usize>,
}

impl<T> Batch<T> {
    pub fn new(data: Arc<[T]>) -> Self {
        let range = 0..data.len();
        Batch { data, range }
    }
    /// Elements `range` of `data`.
    pub fn part(data: Arc<[T]>, range: Range<usize>) -> Self {
        debug_assert!(range.end <= data.len());
        Batch { data, range }
    }
    pub fn len(&self) -> usize {
        self.range.len()
    }
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
    pub fn as_slice(&self) -> &[T] {
        &self.data[self.range.clone()]
    }
    /// Takes the first `n` elements off the front as a batch of their own.
    pub fn split_front(&mut self, n: usize) -> Batch<T> {
        debug_assert!(n <= self.len());
        let mid = self.range.start + n;
        let front = Batch {
            data: Arc::clone(&self.data),
            range: self.range.start..mid,
        };
        self.range.start = mid;
        front
    }
    /// Drops the first `n` elements.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.range.start += n;
    }
}

impl<T> Clone for Batch<T> {
    fn clone(&self) -> Self {
        Batch {
            data: Arc::clone(&self.data),
            range: self.range.clone(),
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
}
