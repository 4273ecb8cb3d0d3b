//! Event-time windows and keys: tumbling, sliding and session windows that buffer
//! out-of-order input until the watermark passes, per key if asked, with late data, corrections,
//! end-of-stream windows and a processing-time trigger for quiet inputs.
//!
//! Read the [`event`](crate::ops::event) guide first: it says what watermarks are and where
//! they come from ([`Graph::watermarks`]).
//!
//! # Which windows
//!
//! An [`EventWindow`] says which windows an element `(t, v)` belongs to:
//!
//! ```text
//!  tumbling(10):     [0,10)    [10,20)   [20,30)        each element in exactly one
//!                  |---------|---------|---------|
//!  sliding(10, 5):   [0,10)    [10,20)                  each element in size/step windows
//!                       [5,15)    [15,25)
//!                  |----+----|----+----|----+----|
//!  session(5):      3 4   7          19  21             gaps of 5 or more split sessions
//!                  [3,       12)    [19,   26)          (last element + gap)
//! ```
//!
//! Windows are half-open `[start, end)`; tumbling and sliding windows start at multiples of
//! their step from timestamp 0 (a step above the size leaves gaps: elements there belong to no
//! window and are ignored). A session starts at its first element and ends `gap` after its
//! last: two elements less than `gap` apart are in the same session, and an element that
//! arrives between two sessions may merge them.
//!
//! # When a window is emitted
//!
//! A window is emitted as a [`Window`] (or a [`KeyedWindow`]) once the input's watermark `W`
//! passes its end (`W ≥ end`: no element of it can follow), with [`Firing::OnTime`]. Windows
//! with no element are never emitted. An input that carries no watermarks
//! ([`Inputs::carries_watermarks`](crate::Inputs::carries_watermarks) is false: it does not
//! come from [`Graph::watermarks`]) is taken as ascending: its watermark is the highest
//! timestamp seen so far, advanced element by element.
//!
//! ```text
//!  tumbling(10) after watermarks(bounded(3)), allowed_lateness(5), one element a batch:
//!  element:    2   12    7   16    8
//!  watermark:  0    9    9   13   13
//!                        │    │    └ 8 < 13, but 13 < 10 + 5: [0,10) again, Late {2, 7, 8}
//!                        │    └ 13 ≥ 10: [0,10) OnTime {2, 7}
//!                        └ 7 < 9: beyond the bound, but [0,10) has not closed: kept
//! ```
//!
//! - **Late elements.** An element for a window already closed (more precisely: its first
//!   window's end plus the allowed lateness is at or below the watermark) is **late**: it is in
//!   no window (for sliding windows: in none of its windows, even those still open, so that
//!   each element is either in its windows or late), it is counted in the [`LateCounter`] and
//!   sent to the `late` stream (connect it or not).
//! - **Allowed lateness** ([`EventWindow::allowed_lateness`]`(l)`): a window is kept `l` time
//!   units after the watermark passed its end; an element for it in that time updates it and
//!   the window is emitted again, whole, with [`Firing::Late`]: a correction that supersedes
//!   what was emitted before for the same window (for sessions: for every earlier session of
//!   the key it overlaps). A session that the late element joins to one still open is such a
//!   correction too: it is emitted with `Late` when the watermark passes its end. A session
//!   is kept until the watermark passes its end plus the gap plus the allowed lateness (as
//!   long as an element that is not late can still touch it, so that such an element joins
//!   it); an element before the end of a session of its key already dropped is late, even if
//!   it touches a later session (joined to it, it would overlap the dropped one).
//! - **Timestamps near `u64::MAX`.** A window is `[start, start + size)`, its end exclusive:
//!   an element whose window (for sessions: its timestamp plus the gap) would end past
//!   `u64::MAX` fails the agent with an error naming its timestamp, rather than going into a
//!   window that cannot hold it.
//! - **End of stream** (or a drain): windows the watermark did not pass are emitted with
//!   [`Firing::Final`], or dropped with [`EventWindow::drop_partial`].
//! - **Sessions: the rule for reconciling.** Whatever its firing (`Late`, but also `Final` at
//!   end of stream or `Evicted`), an emitted session supersedes every session of its key
//!   emitted before that it overlaps: a late element joined them, and it holds their elements.
//!   A reader keeps, per key, the last emitted session of each overlapping group. Not across
//!   an eviction of the key, though (see Keys).
//! - **Quiet inputs** ([`EventWindow::fire_when_idle`]`(q)`): when no element came for `q` of
//!   processing time, the open windows are emitted with [`Firing::Early`] (once per quiet
//!   period): the alert of a log that went quiet comes now, not at the next line. The window is
//!   still emitted again when it closes.
//!
//! Windows emitted together come in order of end, then start (then key, see below). The
//! output carries watermarks: after the windows that end at or before `W`, the mark `W`, so
//! that event-time operators downstream work; take `end` as the output's timestamp (a
//! `map(|w| (w.end, w))` makes a `(t, value)` stream of it).
//!
//! # What the function sees
//!
//! `f` gets the window's elements sorted by timestamp. Elements with equal timestamps are
//! ordered by their postcard encoding (the bytes they cross a link as): a fixed total order, so
//! that `f` sees the same slice whatever order the elements arrived in. With the input within
//! its out-of-orderness bound, the output therefore never depends on arrival order or batch
//! boundaries.
//!
//! # Keys
//!
//! [`Graph::keyed_event_window`] keeps windows per key (a function of the element): each key
//! has its own windows and its own sessions, and every window is emitted with its key. Windows
//! of several keys emitted together come in order of end, start, then the key's postcard
//! encoding. The number of live keys (keys with buffered elements) is bounded by
//! [`EventWindow::max_keys`]: a new key beyond it evicts the key seen least recently; its open
//! windows are emitted at once with [`Firing::Evicted`] (or dropped, with `drop_partial`), and
//! the [`EvictionCounter`] counts it. Which key is evicted, and what its windows hold then,
//! depends on arrival order and on batches (a window the watermark would close on time may
//! still be open when a new key in the same batch evicts its key: the watermarks agent marks
//! a batch's progress after it): size the bound so that it is rare. Eviction forgets the
//! key's windows, the emitted ones kept for
//! the allowed lateness included: if the key comes again, its windows start afresh, so a
//! correction (`Late`) or a session that follows holds only what came after the eviction, and
//! reconciling it as superseding what was emitted before drops the elements before the
//! eviction. Size the bound above the keys whose windows are open or within their allowed
//! lateness. A key whose windows have all closed holds nothing and is not counted. [`Graph::keyed_map_with_state`] keeps a user state per key, with the same bound.
//!
//! # Memory
//!
//! An element is buffered until the watermark passes the end of the last window it belongs
//! to, plus the allowed lateness (for sessions: plus the gap too); then it is dropped from the
//! buffer. The buffer holds at most
//! [`EventWindow::max_buffered`] elements (all keys together): one more stops the application
//! with an error naming the operator and the bound, instead of growing without limit.
//!
//! # Compared with Flink
//!
//! | Flink | here |
//! |---|---|
//! | `TumblingEventTimeWindows.of(size)` | [`EventWindow::tumbling`] |
//! | `SlidingEventTimeWindows.of(size, slide)` | [`EventWindow::sliding`] |
//! | `EventTimeSessionWindows.withGap(gap)` | [`EventWindow::session`] |
//! | `allowedLateness(l)` | [`EventWindow::allowed_lateness`] |
//! | `sideOutputLateData(tag)` | the `late` stream |
//! | `keyBy(f)` | [`Graph::keyed_event_window`], [`Graph::keyed_map_with_state`] |
//! | `ProcessWindowFunction` | `f(&[(t, v)]) -> U` |
//! | a `ContinuousProcessingTimeTrigger` | [`EventWindow::fire_when_idle`] (once per quiet period) |
//! | state TTL / key limits | [`EventWindow::max_keys`] (least recently seen evicted) |

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::ops::merge::LateCounter;
use crate::stream::{Element, Input, Mark, Stream};

/// The default bound on buffered elements ([`EventWindow::max_buffered`]).
pub const DEFAULT_MAX_BUFFERED: usize = 1_000_000;
/// The default bound on live keys ([`EventWindow::max_keys`]).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// The most windows one element may belong to: `size / step` (rounded up) of a sliding
/// [`EventWindow`]. Each is kept and emitted on its own, so more is refused when the
/// application is built (a window and a step in different units, say).
pub const MAX_WINDOWS_PER_ELEMENT: u64 = 100_000;

/// The shape of the windows of an [`EventWindow`].
///
/// ```
/// use iotstream::ops::event_window::{EventWindow, WindowKind};
/// assert_eq!(EventWindow::sliding(60, 10).kind(), WindowKind::Sliding { size: 60, step: 10 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// Back-to-back windows `[k·size, (k+1)·size)`.
    Tumbling {
        /// Length of each window.
        size: u64,
    },
    /// Windows `[k·step, k·step + size)`.
    Sliding {
        /// Length of each window.
        size: u64,
        /// Distance between the starts of consecutive windows.
        step: u64,
    },
    /// Elements less than `gap` apart, from the first to `gap` after the last.
    Session {
        /// The quiet time (in timestamp units) that ends a session.
        gap: u64,
    },
}

/// Which windows [`Graph::event_window`] and [`Graph::keyed_event_window`] compute, and how
/// (see the [module docs](self)).
///
/// ```
/// use std::time::Duration;
/// use iotstream::ops::event_window::EventWindow;
/// // 10 s windows (timestamps in ms), corrections for 5 s, an early result after 30 s of silence.
/// let w = EventWindow::tumbling(10_000)
///     .allowed_lateness(5_000)
///     .fire_when_idle(Duration::from_secs(30));
/// assert_eq!(w.lateness(), 5_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventWindow {
    kind: WindowKind,
    allowed_lateness: u64,
    drop_partial: bool,
    fire_when_idle: Option<Duration>,
    max_buffered: usize,
    max_keys: usize,
}

impl EventWindow {
    fn new(kind: WindowKind) -> Self {
        EventWindow {
            kind,
            allowed_lateness: 0,
            drop_partial: false,
            fire_when_idle: None,
            max_buffered: DEFAULT_MAX_BUFFERED,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    /// Back-to-back windows of `size` (at least 1), from timestamp 0.
    ///
    /// ```
    /// use iotstream::ops::event_window::{EventWindow, WindowKind};
    /// assert_eq!(EventWindow::tumbling(10).kind(), WindowKind::Tumbling { size: 10 });
    /// ```
    pub fn tumbling(size: u64) -> Self {
        Self::new(WindowKind::Tumbling { size })
    }

    /// Windows of `size` every `step` (both at least 1, `size / step` at most
    /// [`MAX_WINDOWS_PER_ELEMENT`]), from timestamp 0.
    ///
    /// ```
    /// use iotstream::ops::event_window::{EventWindow, WindowKind};
    /// assert_eq!(EventWindow::sliding(10, 5).kind(), WindowKind::Sliding { size: 10, step: 5 });
    /// ```
    pub fn sliding(size: u64, step: u64) -> Self {
        Self::new(WindowKind::Sliding { size, step })
    }

    /// Session windows closed by `gap` (at least 1) without an element.
    ///
    /// ```
    /// use iotstream::ops::event_window::{EventWindow, WindowKind};
    /// assert_eq!(EventWindow::session(30).kind(), WindowKind::Session { gap: 30 });
    /// ```
    pub fn session(gap: u64) -> Self {
        Self::new(WindowKind::Session { gap })
    }

    /// Keeps each window `lateness` time units after the watermark passed its end: an
    /// element for it in that time updates it, and it is emitted again as [`Firing::Late`].
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert_eq!(EventWindow::tumbling(10).allowed_lateness(3).lateness(), 3);
    /// ```
    pub fn allowed_lateness(self, lateness: u64) -> Self {
        EventWindow {
            allowed_lateness: lateness,
            ..self
        }
    }

    /// At end of stream, drops the windows the watermark did not pass (and an evicted key's
    /// open windows) instead of emitting them as [`Firing::Final`] ([`Firing::Evicted`]).
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert!(EventWindow::tumbling(10).drop_partial().drops_partial());
    /// ```
    pub fn drop_partial(self) -> Self {
        EventWindow {
            drop_partial: true,
            ..self
        }
    }

    /// Emits the open windows as [`Firing::Early`] when no element came for `quiet` of
    /// processing time (once per quiet period).
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::ops::event_window::EventWindow;
    /// let w = EventWindow::tumbling(10).fire_when_idle(Duration::from_secs(5));
    /// assert_eq!(w.idle_trigger(), Some(Duration::from_secs(5)));
    /// ```
    pub fn fire_when_idle(self, quiet: Duration) -> Self {
        EventWindow {
            fire_when_idle: Some(quiet),
            ..self
        }
    }

    /// At most `n` (at least 1) elements buffered (all keys together); one more is an error
    /// naming the operator. Default [`DEFAULT_MAX_BUFFERED`].
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert_eq!(EventWindow::tumbling(10).max_buffered(500).buffer_bound(), 500);
    /// ```
    pub fn max_buffered(self, n: usize) -> Self {
        EventWindow {
            max_buffered: n,
            ..self
        }
    }

    /// At most `n` (at least 1) live keys in [`Graph::keyed_event_window`]; a new key beyond
    /// that evicts the least recently seen one. Default [`DEFAULT_MAX_KEYS`].
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert_eq!(EventWindow::tumbling(10).max_keys(64).key_bound(), 64);
    /// ```
    pub fn max_keys(self, n: usize) -> Self {
        EventWindow {
            max_keys: n,
            ..self
        }
    }

    /// The shape of the windows.
    ///
    /// ```
    /// use iotstream::ops::event_window::{EventWindow, WindowKind};
    /// assert_eq!(EventWindow::session(3).kind(), WindowKind::Session { gap: 3 });
    /// ```
    pub fn kind(&self) -> WindowKind {
        self.kind
    }

    /// The allowed lateness.
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert_eq!(EventWindow::tumbling(10).lateness(), 0);
    /// ```
    pub fn lateness(&self) -> u64 {
        self.allowed_lateness
    }

    /// True if partial windows are dropped at end of stream.
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert!(!EventWindow::tumbling(10).drops_partial());
    /// ```
    pub fn drops_partial(&self) -> bool {
        self.drop_partial
    }

    /// The processing-time trigger, if any.
    ///
    /// ```
    /// use iotstream::ops::event_window::EventWindow;
    /// assert_eq!(EventWindow::tumbling(10).idle_trigger(), None);
    /// ```
    pub fn idle_trigger(&self) -> Option<Duration> {
        self.fire_when_idle
    }

    /// The bound on buffered elements.
    ///
    /// ```
    /// use iotstream::ops::event_window::{EventWindow, DEFAULT_MAX_BUFFERED};
    /// assert_eq!(EventWindow::tumbling(10).buffer_bound(), DEFAULT_MAX_BUFFERED);
    /// ```
    pub fn buffer_bound(&self) -> usize {
        self.max_buffered
    }

    /// The bound on live keys.
    ///
    /// ```
    /// use iotstream::ops::event_window::{EventWindow, DEFAULT_MAX_KEYS};
    /// assert_eq!(EventWindow::tumbling(10).key_bound(), DEFAULT_MAX_KEYS);
    /// ```
    pub fn key_bound(&self) -> usize {
        self.max_keys
    }

    /// What is wrong with the parameters, if anything.
    fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = Vec::new();
        match self.kind {
            WindowKind::Tumbling { size } | WindowKind::Sliding { size, .. } if size == 0 => {
                p.push("window size must be at least 1 (got 0)".into())
            }
            WindowKind::Session { gap: 0 } => {
                p.push("session gap must be at least 1 (got 0)".into())
            }
            _ => {}
        }
        if let WindowKind::Sliding { size, step } = self.kind {
            if step == 0 {
                p.push("window step must be at least 1 (got 0)".into());
            } else if size.div_ceil(step) > MAX_WINDOWS_PER_ELEMENT {
                // Each element would be stored in, and emitted with, that many windows: memory
                // that no element bound limits, and a step that never ends.
                p.push(format!(
                    "sliding({size}, {step}) puts each element in {} windows, more than \
                     {MAX_WINDOWS_PER_ELEMENT}: raise the step (are size and step in the same \
                     unit?), or use rolling / timed_window",
                    size.div_ceil(step)
                ));
            }
        }
        if self.max_keys == 0 {
            p.push("max_keys must be at least 1 (got 0)".into());
        }
        if self.max_buffered == 0 {
            // Every element would fail the run: say so before anything runs.
            p.push("max_buffered must be at least 1 (got 0)".into());
        }
        p
    }
}

/// Why a window was emitted.
///
/// ```
/// use iotstream::ops::event_window::Firing;
/// // Tumbling and sliding windows: corrections (to reconcile with what was emitted before)
/// // are the Late ones. Sessions: see `OnTime`.
/// let corrects = |f: Firing| f == Firing::Late;
/// assert!(corrects(Firing::Late) && !corrects(Firing::OnTime));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Firing {
    /// The watermark passed the window's end: the window is complete.
    ///
    /// **Sessions**: whatever its firing, an emitted session supersedes every session of its
    /// key emitted before that it overlaps (a late element may have joined them: the new one
    /// holds their elements). A `Final` or `Evicted` session can be such a correction too;
    /// only the watermark's corrections are marked [`Firing::Late`]. Not across an eviction of
    /// the key ([`EventWindow::max_keys`]): its windows then start afresh, and a later one
    /// holds only what came after the eviction.
    OnTime,
    /// A correction: a late element (within the allowed lateness) updated a window already
    /// emitted; this one supersedes it. For sessions, also a session that took in one already
    /// emitted (a late element bridged it to a session still open): it supersedes every
    /// earlier session of the key it overlaps, and is emitted when the watermark passes its end.
    Late,
    /// End of stream (or a drain) before the watermark passed the window's end: the window
    /// holds what came. A `Final` session supersedes the earlier sessions of its key that it
    /// overlaps, as any session does (see [`Firing::OnTime`]).
    Final,
    /// A preview: the input was quiet for the [`EventWindow::fire_when_idle`] time. The window
    /// is emitted again when it closes.
    Early,
    /// The key was evicted ([`EventWindow::max_keys`]) before the window closed: it holds what
    /// came. An `Evicted` session supersedes the earlier sessions of its key that it overlaps,
    /// as any session does (see [`Firing::OnTime`]).
    Evicted,
}

/// One window emitted by [`Graph::event_window`]: `[start, end)` and `f` of its elements.
///
/// ```
/// use iotstream::ops::event_window::{Firing, Window};
/// let w = Window { start: 0, end: 10, value: 3usize, firing: Firing::OnTime };
/// assert_eq!(w.end - w.start, 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window<U> {
    /// The window's first timestamp.
    pub start: u64,
    /// The window's end (excluded): its timestamp on the output.
    pub end: u64,
    /// What `f` returned for the window's elements.
    pub value: U,
    /// Why it was emitted.
    pub firing: Firing,
}

/// One window of one key, emitted by [`Graph::keyed_event_window`].
///
/// ```
/// use iotstream::ops::event_window::{Firing, KeyedWindow};
/// let w = KeyedWindow { key: "eu-1".to_string(), start: 0, end: 10, value: 2usize, firing: Firing::Final };
/// assert_eq!(w.key, "eu-1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyedWindow<K, U> {
    /// The key the window belongs to.
    pub key: K,
    /// The window's first timestamp.
    pub start: u64,
    /// The window's end (excluded): its timestamp on the output.
    pub end: u64,
    /// What `f` returned for the window's elements.
    pub value: U,
    /// Why it was emitted.
    pub firing: Firing,
}

/// How many keys a keyed operator evicted to stay within its bound on live keys.
///
/// A cheap handle (an `Arc` around an atomic counter): clone it freely and read it while the
/// application runs or after it ended.
///
/// ```
/// use iotstream::ops::event_window::EvictionCounter;
/// assert_eq!(EvictionCounter::default().get(), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct EvictionCounter(Arc<AtomicU64>);

impl EvictionCounter {
    /// Keys evicted so far.
    ///
    /// ```
    /// use iotstream::ops::event_window::EvictionCounter;
    /// let c = EvictionCounter::default();
    /// assert_eq!(c.clone().get(), c.get());
    /// ```
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// What [`Graph::event_window`] returns.
///
/// ```
/// use iotstream::Graph;
/// use iotstream::ops::event_window::EventWindow;
/// let mut g = Graph::new("w");
/// let x = g.input::<(u64, u32)>("x");
/// let w = g.event_window("count", &x, EventWindow::tumbling(10), |e: &[(u64, u32)]| e.len());
/// let _windows = g.collect("windows", &w.windows);
/// let _late = g.collect("late", &w.late);
/// assert_eq!(w.late_count.get(), 0);
/// ```
pub struct EventWindows<V, U> {
    /// The windows, in the order they were emitted.
    pub windows: Stream<Window<U>>,
    /// The late elements (see the [module docs](self)); it carries no watermarks.
    pub late: Stream<(u64, V)>,
    /// How many elements were late.
    pub late_count: LateCounter,
}

/// What [`Graph::keyed_event_window`] returns.
///
/// ```
/// use iotstream::Graph;
/// use iotstream::ops::event_window::EventWindow;
/// let mut g = Graph::new("w");
/// let x = g.input::<(u64, (u8, u32))>("x");
/// let w = g.keyed_event_window("count", &x, |e: &(u64, (u8, u32))| e.1 .0,
///     EventWindow::tumbling(10), |e: &[(u64, (u8, u32))]| e.len());
/// let _windows = g.collect("windows", &w.windows);
/// assert_eq!(w.evicted.get(), 0);
/// ```
pub struct KeyedEventWindows<K, V, U> {
    /// The windows, each with its key, in the order they were emitted.
    pub windows: Stream<KeyedWindow<K, U>>,
    /// The late elements (see the [module docs](self)); it carries no watermarks.
    pub late: Stream<(u64, V)>,
    /// How many elements were late.
    pub late_count: LateCounter,
    /// How many keys were evicted.
    pub evicted: EvictionCounter,
}

/// What [`Graph::keyed_map_with_state`] returns.
///
/// ```
/// use iotstream::Graph;
/// let mut g = Graph::new("m");
/// let x = g.input::<(u8, u32)>("x");
/// let m = g.keyed_map_with_state("sum", &x, 100, |e: &(u8, u32)| e.0, |_k: &u8| 0u32,
///     |s: &mut u32, e: &(u8, u32)| { *s += e.1; Some(*s) });
/// let _out = g.collect("out", &m.out);
/// assert_eq!(m.evicted.get(), 0);
/// ```
pub struct KeyedMap<K, U> {
    /// `(key, f(state, element))` for every element `f` returned something for.
    pub out: Stream<(K, U)>,
    /// How many keys were evicted (their state dropped).
    pub evicted: EvictionCounter,
}

// ---------------------------------------------------------------------------------------------
// The engine: buffers, windows, keys; no agent, no streams.

/// A window to emit: its key, bounds, why, and its elements in order.
struct Fired<K, V> {
    key: K,
    start: u64,
    end: u64,
    firing: Firing,
    elems: Vec<(u64, V)>,
}

/// One key's buffered elements and sessions.
struct KeyState<K, V> {
    key: K,
    /// The key's postcard encoding: the order of keys in windows emitted together.
    key_bytes: Vec<u8>,
    /// Elements by (timestamp, arrival number).
    elems: BTreeMap<(u64, u64), V>,
    /// Sessions by start: (end, emitted). Disjoint, so ends increase with starts.
    sessions: BTreeMap<u64, (u64, bool)>,
    /// This key's entries of `Engine::pending`, as (end, start).
    pending: BTreeSet<(u64, u64)>,
    /// Pending sessions, as (end, start), that took in a session already emitted: when the
    /// watermark passes their end they are corrections ([`Firing::Late`]), not `OnTime`.
    corrects: BTreeSet<(u64, u64)>,
    /// When the front of the buffer may go: the entry of this key in `Engine::expiry`.
    expiry: Option<u64>,
    /// Sessions: the largest end of the sessions already dropped (0 if none). An element
    /// before it is late: its session could touch one that is gone, and the new session would
    /// overlap one already emitted without containing its elements.
    horizon: u64,
    /// When the key was last seen (its current touch in `Engine::lru`).
    seen: u64,
}

/// Encodes `v` for tie-breaking (empty if it cannot be encoded: arrival order then).
fn encoding<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Keys in the order they were last seen, kept lazily: every touch is queued, and a touch that
/// is no longer its key's last (or whose key is gone) is skipped when met. O(1) amortised per
/// touch, where ordered maps cost a removal and an insertion; the queue is compacted when it
/// holds more than twice the live keys, so it stays bounded.
#[derive(Default)]
struct Touches {
    queue: VecDeque<(u64, u64)>,
}

impl Touches {
    /// Queues that key `id` was seen at `seq`; `current(id, seq)` says whether a queued touch
    /// is still its key's last.
    fn touch(&mut self, id: u64, seq: u64, live: usize, current: impl Fn(u64, u64) -> bool) {
        self.queue.push_back((seq, id));
        if self.queue.len() > 2 * live + 64 {
            self.queue.retain(|&(seq, id)| current(id, seq));
        }
    }

    /// The least recently seen key, dropping stale touches in front of it.
    fn oldest(&mut self, current: impl Fn(u64, u64) -> bool) -> Option<u64> {
        while let Some(&(seq, id)) = self.queue.front() {
            if current(id, seq) {
                return Some(id);
            }
            self.queue.pop_front();
        }
        None
    }
}

struct Engine<K, V> {
    spec: EventWindow,
    /// The watermark: windows with `end <= wm` are closed. 0 = nothing closed (every end is at
    /// least 1).
    wm: u64,
    ids: HashMap<K, u64>,
    keys: HashMap<u64, KeyState<K, V>>,
    /// Windows not emitted yet: (end, start, key id).
    pending: BTreeSet<(u64, u64, u64)>,
    /// (time the front of a key's buffer may go, key id).
    expiry: BTreeSet<(u64, u64)>,
    /// Keys by last seen, least recent first.
    lru: Touches,
    next_id: u64,
    /// Arrival counter: element numbers and last-seen numbers.
    seq: u64,
    buffered: usize,
    evicted: EvictionCounter,
}

impl<K: Element + Eq + Hash, V: Element> Engine<K, V> {
    fn new(spec: EventWindow, evicted: EvictionCounter) -> Self {
        Engine {
            spec,
            wm: 0,
            ids: HashMap::new(),
            keys: HashMap::new(),
            pending: BTreeSet::new(),
            expiry: BTreeSet::new(),
            lru: Touches::default(),
            next_id: 0,
            seq: 0,
            buffered: 0,
            evicted,
        }
    }

    /// (size, step) of tumbling and sliding windows.
    fn grid(&self) -> Option<(u64, u64)> {
        match self.spec.kind {
            WindowKind::Tumbling { size } => Some((size.max(1), size.max(1))),
            WindowKind::Sliding { size, step } => Some((size.max(1), step.max(1))),
            WindowKind::Session { .. } => None,
        }
    }

    /// The starts of the first and last grid windows that contain `t`, if any does.
    fn grid_windows(size: u64, step: u64, t: u64) -> Option<(u64, u64)> {
        let k_last = t / step;
        let k_first = if t >= size { (t - size) / step + 1 } else { 0 };
        (k_first <= k_last).then(|| (k_first * step, k_last * step))
    }

    fn elems_of(state: &KeyState<K, V>, start: u64, end: u64) -> Vec<(u64, V)> {
        let mut out: Vec<(u64, V)> = state
            .elems
            .range((start, 0)..(end, 0))
            .map(|((t, _), v)| (*t, v.clone()))
            .collect();
        // Equal timestamps: by encoding, so that arrival order does not matter.
        let mut i = 0;
        while i < out.len() {
            let t = out[i].0;
            let j = i + out[i..].partition_point(|e| e.0 == t);
            if j - i > 1 {
                out[i..j].sort_by_cached_key(|e| encoding(&e.1));
            }
            i = j;
        }
        out
    }

    fn fired(&self, id: u64, start: u64, end: u64, firing: Firing) -> Fired<K, V> {
        let state = &self.keys[&id];
        Fired {
            key: state.key.clone(),
            start,
            end,
            firing,
            elems: Self::elems_of(state, start, end),
        }
    }

    /// Emits the given pending windows in order (end, start, key encoding).
    fn emit_sorted(&self, due: Vec<(u64, u64, u64)>, firing: Firing, out: &mut Vec<Fired<K, V>>) {
        self.emit_sorted_with(due, |_| firing, out);
    }

    /// As [`emit_sorted`](Self::emit_sorted), each window with `firing(window)`.
    fn emit_sorted_with(
        &self,
        mut due: Vec<(u64, u64, u64)>,
        firing: impl Fn(&(u64, u64, u64)) -> Firing,
        out: &mut Vec<Fired<K, V>>,
    ) {
        due.sort_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| self.keys[&a.2].key_bytes.cmp(&self.keys[&b.2].key_bytes))
        });
        out.extend(due.into_iter().map(|w| {
            let f = firing(&w);
            let (e, s, id) = w;
            self.fired(id, s, e, f)
        }));
    }

    fn set_expiry(&mut self, id: u64, at: Option<u64>) {
        let state = self.keys.get_mut(&id).expect("a live key");
        if state.expiry == at {
            return;
        }
        if let Some(old) = state.expiry {
            self.expiry.remove(&(old, id));
        }
        if let Some(new) = at {
            self.expiry.insert((new, id));
        }
        state.expiry = at;
    }

    /// The gap of session windows (1 for the others, which do not use it).
    fn session_gap(&self) -> u64 {
        match self.spec.kind {
            WindowKind::Session { gap } => gap.max(1),
            _ => 1,
        }
    }

    /// When the front of a key's buffer may go.
    fn front_expiry(&self, state: &KeyState<K, V>) -> Option<u64> {
        let l = self.spec.allowed_lateness;
        match self.grid() {
            Some((size, step)) => {
                let (&(t, _), _) = state.elems.first_key_value()?;
                let (_, last) = Self::grid_windows(size, step, t).expect("stored: in a window");
                Some(last.saturating_add(size).saturating_add(l))
            }
            None => {
                let (_, &(end, _)) = state.sessions.first_key_value()?;
                Some(end.saturating_add(self.session_gap()).saturating_add(l))
            }
        }
    }

    /// Moves the watermark to `w`: emits the windows it closes, then drops what no window
    /// needs any more.
    fn advance(&mut self, w: u64, out: &mut Vec<Fired<K, V>>) {
        if w <= self.wm {
            return;
        }
        self.wm = w;
        let mut due = Vec::new();
        while let Some(&first) = self.pending.first() {
            if first.0 > w {
                break;
            }
            self.pending.pop_first();
            due.push(first);
        }
        let mut corrections = BTreeSet::new();
        for &(end, start, id) in &due {
            let state = self
                .keys
                .get_mut(&id)
                .expect("a pending window's key is live");
            state.pending.remove(&(end, start));
            if state.corrects.remove(&(end, start)) {
                corrections.insert((end, start, id));
            }
            if let Some(s) = state.sessions.get_mut(&start) {
                s.1 = true;
            }
        }
        self.emit_sorted_with(
            due,
            |w| {
                if corrections.contains(w) {
                    Firing::Late
                } else {
                    Firing::OnTime
                }
            },
            out,
        );
        while let Some(&(at, id)) = self.expiry.first() {
            if at > w {
                break;
            }
            self.expire(id);
        }
    }

    /// Drops the front of `id`'s buffer that no window needs at the watermark.
    fn expire(&mut self, id: u64) {
        let l = self.spec.allowed_lateness;
        let w = self.wm;
        let grid = self.grid();
        let gap = self.session_gap();
        let state = self.keys.get_mut(&id).expect("a live key");
        let before = state.elems.len();
        match grid {
            Some((size, step)) => {
                while let Some((&(t, _), _)) = state.elems.first_key_value() {
                    let (_, last) = Self::grid_windows(size, step, t).expect("in a window");
                    if last.saturating_add(size).saturating_add(l) > w {
                        break;
                    }
                    state.elems.pop_first();
                }
            }
            None => {
                // A session stays while an element that can still be accepted (`t + gap + l >
                // w`) could touch it (`t < end`), so that such an element merges with it
                // instead of forming a session that overlaps it.
                while let Some((&start, &(end, emitted))) = state.sessions.first_key_value() {
                    if end.saturating_add(gap).saturating_add(l) > w {
                        break;
                    }
                    debug_assert!(emitted, "a session is emitted before it expires");
                    state.sessions.remove(&start);
                    state.horizon = state.horizon.max(end);
                    while state
                        .elems
                        .first_key_value()
                        .is_some_and(|((t, _), _)| *t < end)
                    {
                        state.elems.pop_first();
                    }
                }
            }
        }
        self.buffered -= before - state.elems.len();
        let at = self.front_expiry(&self.keys[&id]);
        self.set_expiry(id, at);
        if at.is_none() {
            self.remove_key(id);
        }
    }

    /// Forgets a key (its pending windows must be gone already).
    fn remove_key(&mut self, id: u64) {
        if let Some(state) = self.keys.remove(&id) {
            debug_assert!(state.pending.is_empty(), "a key leaves with no open window");
            if let Some(at) = state.expiry {
                self.expiry.remove(&(at, id));
            }
            self.ids.remove(&state.key);
            self.buffered -= state.elems.len();
        }
    }

    /// Evicts the least recently seen key: emits (or drops) its open windows.
    fn evict(&mut self, out: &mut Vec<Fired<K, V>>) {
        let keys = &self.keys;
        let Some(id) = self
            .lru
            .oldest(|id, seen| keys.get(&id).is_some_and(|k| k.seen == seen))
        else {
            return;
        };
        let state = self.keys.get_mut(&id).expect("a live key");
        let mine: Vec<_> = std::mem::take(&mut state.pending)
            .into_iter()
            .map(|(e, s)| (e, s, id))
            .collect();
        for p in &mine {
            self.pending.remove(p);
        }
        if !self.spec.drop_partial {
            self.emit_sorted(mine, Firing::Evicted, out);
        }
        self.remove_key(id);
        self.evicted.add(1);
    }

    /// The id of `key`'s state, made (evicting another if needed) if it has none.
    fn key_id(&mut self, key: K, out: &mut Vec<Fired<K, V>>) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        if let Some(&id) = self.ids.get(&key) {
            let state = self.keys.get_mut(&id).expect("a live key");
            state.seen = seq;
            self.touch(id, seq);
            return id;
        }
        while self.keys.len() >= self.spec.max_keys.max(1) {
            self.evict(out);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(key.clone(), id);
        self.keys.insert(
            id,
            KeyState {
                key_bytes: encoding(&key),
                key,
                elems: BTreeMap::new(),
                sessions: BTreeMap::new(),
                pending: BTreeSet::new(),
                corrects: BTreeSet::new(),
                expiry: None,
                horizon: 0,
                seen: seq,
            },
        );
        self.touch(id, seq);
        id
    }

    /// Records that key `id` was seen at `seq`.
    fn touch(&mut self, id: u64, seq: u64) {
        let keys = &self.keys;
        self.lru.touch(id, seq, keys.len(), |id, seen| {
            keys.get(&id).is_some_and(|k| k.seen == seen)
        });
    }

    /// Takes one element. Returns it back if it is late; corrections (and windows of an
    /// evicted key) go to `out`.
    fn element(
        &mut self,
        key: K,
        t: u64,
        v: V,
        out: &mut Vec<Fired<K, V>>,
    ) -> Result<Option<(u64, V)>, String> {
        let l = self.spec.allowed_lateness;
        let w = self.wm;
        match self.spec.kind {
            WindowKind::Session { gap } => {
                let gap = gap.max(1);
                let Some(t_end) = t.checked_add(gap) else {
                    return Err(past_the_last_timestamp(t, t, gap));
                };
                // Sessions overlapping [t, t + gap): contiguous, found from the right.
                let overlapping: Vec<(u64, u64, bool)> = match self.ids.get(&key) {
                    Some(id) => self.keys[id]
                        .sessions
                        .range(..t_end)
                        .rev()
                        .take_while(|(_, (end, _))| *end > t)
                        .map(|(&s, &(e, emitted))| (s, e, emitted))
                        .collect(),
                    None => Vec::new(),
                };
                // Before the end of a session already dropped: late, even if it touches a
                // session still kept (it would bridge to the one that is gone).
                let below = self
                    .ids
                    .get(&key)
                    .is_some_and(|id| t < self.keys[id].horizon);
                if below || (overlapping.is_empty() && t_end.saturating_add(l) <= w) {
                    return Ok(Some((t, v)));
                }
                let id = self.key_id(key, out);
                self.store(id, t, v)?;
                let mut start = t;
                let mut end = t_end;
                let state = self.keys.get_mut(&id).expect("a live key");
                // Whether the merged session replaces one already emitted (directly, or
                // through a pending session that had replaced one).
                let mut replaces_emitted = false;
                for &(s, e, emitted) in &overlapping {
                    start = start.min(s);
                    end = end.max(e);
                    state.sessions.remove(&s);
                    replaces_emitted |= emitted | state.corrects.remove(&(e, s));
                    if !emitted {
                        self.pending.remove(&(e, s, id));
                        state.pending.remove(&(e, s));
                    }
                }
                let open = end > w;
                state.sessions.insert(start, (end, !open));
                if open {
                    state.pending.insert((end, start));
                    self.pending.insert((end, start, id));
                    if replaces_emitted {
                        // Emitted when the watermark passes its end, as the correction it is.
                        state.corrects.insert((end, start));
                    }
                } else {
                    out.push(self.fired(id, start, end, Firing::Late));
                }
                let at = self.front_expiry(&self.keys[&id]);
                self.set_expiry(id, at);
            }
            WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } => {
                let (size, step) = self.grid().expect("a grid window");
                let Some((first, last)) = Self::grid_windows(size, step, t) else {
                    return Ok(None); // between sampling windows: in none
                };
                // A window's end is exclusive: one that would end past `u64::MAX` cannot be
                // told (a saturated end would leave `t` out of its own window).
                if last.checked_add(size).is_none() {
                    return Err(past_the_last_timestamp(t, last, size));
                }
                if first.saturating_add(size).saturating_add(l) <= w {
                    return Ok(Some((t, v)));
                }
                let id = self.key_id(key, out);
                self.store(id, t, v)?;
                let mut start = first;
                loop {
                    let end = start.saturating_add(size);
                    if end > w {
                        self.pending.insert((end, start, id));
                        self.keys
                            .get_mut(&id)
                            .expect("a live key")
                            .pending
                            .insert((end, start));
                    } else {
                        out.push(self.fired(id, start, end, Firing::Late));
                    }
                    if start >= last {
                        break;
                    }
                    start += step;
                }
                let at = self.front_expiry(&self.keys[&id]);
                self.set_expiry(id, at);
            }
        }
        Ok(None)
    }

    fn store(&mut self, id: u64, t: u64, v: V) -> Result<(), String> {
        if self.buffered >= self.spec.max_buffered {
            return Err(format!(
                "more than {} elements buffered (max_buffered): raise the bound, or shorten the windows, the allowed lateness or the input's out-of-orderness",
                self.spec.max_buffered
            ));
        }
        self.seq += 1;
        let state = self.keys.get_mut(&id).expect("a live key");
        state.elems.insert((t, self.seq), v);
        self.buffered += 1;
        Ok(())
    }

    /// Every window not emitted yet, with `firing` (they stay pending).
    fn open_windows(&self, firing: Firing, out: &mut Vec<Fired<K, V>>) {
        let due: Vec<_> = self.pending.iter().copied().collect();
        self.emit_sorted(due, firing, out);
    }
}

/// The error of an element whose window (or session) would end past `u64::MAX`.
fn past_the_last_timestamp(t: u64, start: u64, size: u64) -> String {
    format!(
        "the element at timestamp {t} falls in a window [{start}, {start} + {size}) that ends \
         past u64::MAX, the last end a window can have: timestamps must stay at least a \
         window (a session's gap) below u64::MAX"
    )
}

// ---------------------------------------------------------------------------------------------
// The agent

/// Makes an output element of a window.
type Make<K, U, O> = fn(K, u64, u64, U, Firing) -> O;

struct EventWindowAgent<K, V, U, O, KF, F> {
    name: String,
    input: Input<(u64, V)>,
    out: Stream<O>,
    late_out: Stream<(u64, V)>,
    late: LateCounter,
    engine: Engine<K, V>,
    key_fn: KF,
    f: F,
    make: Make<K, U, O>,
    /// When the last element came (processing time), and whether the quiet period since
    /// has fired its early windows.
    last_input: Duration,
    early_done: bool,
    fired: Vec<Fired<K, V>>,
}

impl<K, V, U, O, KF, F> EventWindowAgent<K, V, U, O, KF, F>
where
    K: Element + Eq + Hash,
    V: Element,
    U: Element,
    O: Element,
    KF: Fn(&(u64, V)) -> K + Send + 'static,
    F: FnMut(&[(u64, V)]) -> U + Send + 'static,
{
    fn emit(&mut self, outputs: &mut Outputs<'_>) {
        let out = outputs.vec(&self.out);
        for w in self.fired.drain(..) {
            let value = (self.f)(&w.elems);
            out.push((self.make)(w.key, w.start, w.end, value, w.firing));
        }
    }

    /// Takes one element in; returns 1 if it was late, else 0.
    fn take(
        &mut self,
        e: &(u64, V),
        ascending: bool,
        outputs: &mut Outputs<'_>,
    ) -> Result<u64, AgentError> {
        if ascending && e.0 > self.engine.wm {
            self.engine.advance(e.0, &mut self.fired);
        }
        let key = (self.key_fn)(e);
        let late = self
            .engine
            .element(key, e.0, e.1.clone(), &mut self.fired)
            .map_err(|m| format!("event window '{}': {m}", self.name))?;
        self.emit(outputs);
        if let Some(l) = late {
            self.late.add(1);
            outputs.push(&self.late_out, l);
            return Ok(1);
        }
        Ok(0)
    }
}

impl<K, V, U, O, KF, F> Agent for EventWindowAgent<K, V, U, O, KF, F>
where
    K: Element + Eq + Hash,
    V: Element,
    U: Element,
    O: Element,
    KF: Fn(&(u64, V)) -> K + Send + 'static,
    F: FnMut(&[(u64, V)]) -> U + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let now = inputs.processing_time();
        let ascending = !inputs.carries_watermarks(&self.input);
        let data = inputs.slice(&self.input);
        if !data.is_empty() {
            self.last_input = now;
            self.early_done = false;
        }
        let marks: Vec<(usize, Mark)> = inputs.marks(&self.input).collect();
        let mut at = 0;
        let mut late = 0;
        for (k, mark) in marks {
            for e in &data[at..k] {
                late += self.take(e, ascending, outputs)?;
            }
            at = k;
            match mark {
                Mark::Watermark(w) => {
                    self.engine.advance(w, &mut self.fired);
                    self.emit(outputs);
                    outputs.mark(&self.out, Mark::Watermark(self.engine.wm));
                }
                Mark::Idle => outputs.mark(&self.out, Mark::Idle),
            }
        }
        for e in &data[at..] {
            late += self.take(e, ascending, outputs)?;
        }
        inputs.consume_all(&self.input);
        inputs.count_late(late);
        if ascending && self.engine.wm > 0 {
            outputs.mark(&self.out, Mark::Watermark(self.engine.wm));
        }
        if let Some(quiet) = self.engine.spec.fire_when_idle {
            if !self.early_done && !self.engine.pending.is_empty() {
                let due = self.last_input.saturating_add(quiet);
                if now >= due {
                    self.engine.open_windows(Firing::Early, &mut self.fired);
                    self.emit(outputs);
                    self.early_done = true;
                } else {
                    inputs.wake_at(due);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        if !self.engine.spec.drop_partial {
            self.engine.open_windows(Firing::Final, &mut self.fired);
            self.emit(outputs);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// keyed_map_with_state

struct KeyedMapAgent<T, K, S, U, KF, I, F> {
    input: Input<T>,
    out: Stream<(K, U)>,
    max_keys: usize,
    states: HashMap<K, (S, u64)>,
    lru: BTreeMap<u64, K>,
    seq: u64,
    evicted: EvictionCounter,
    key_fn: KF,
    init: I,
    f: F,
}

impl<T, K, S, U, KF, I, F> Agent for KeyedMapAgent<T, K, S, U, KF, I, F>
where
    T: Element,
    K: Element + Eq + Hash,
    S: Send + 'static,
    U: Element,
    KF: Fn(&T) -> K + Send + 'static,
    I: Fn(&K) -> S + Send + 'static,
    F: FnMut(&mut S, &T) -> Option<U> + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let data = inputs.slice(&self.input);
        let out = outputs.vec(&self.out);
        for e in data {
            let key = (self.key_fn)(e);
            self.seq += 1;
            let seq = self.seq;
            if let Some((_, seen)) = self.states.get_mut(&key) {
                self.lru.remove(seen);
                *seen = seq;
            } else {
                while self.states.len() >= self.max_keys.max(1) {
                    let Some((_, old)) = self.lru.pop_first() else {
                        break;
                    };
                    self.states.remove(&old);
                    self.evicted.add(1);
                }
                self.states.insert(key.clone(), ((self.init)(&key), seq));
            }
            self.lru.insert(seq, key.clone());
            let state = &mut self.states.get_mut(&key).expect("just made").0;
            if let Some(u) = (self.f)(state, e) {
                out.push((key, u));
            }
        }
        inputs.consume_all(&self.input);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Graph methods

impl Graph {
    #[allow(clippy::type_complexity)]
    fn event_window_agent<K, V, U, O, KF, F>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        spec: EventWindow,
        key_fn: KF,
        f: F,
        make: Make<K, U, O>,
    ) -> (Stream<O>, Stream<(u64, V)>, LateCounter, EvictionCounter)
    where
        K: Element + Eq + Hash,
        V: Element,
        U: Element,
        O: Element,
        KF: Fn(&(u64, V)) -> K + Send + 'static,
        F: FnMut(&[(u64, V)]) -> U + Send + 'static,
    {
        let late = LateCounter::default();
        let evicted = EvictionCounter::default();
        let (input, out, late_out) = self.add_agent(name, |p| {
            p.manages_watermarks();
            let input = p.input::<(u64, V)>("in");
            let out = p.output::<O>("windows");
            let late_out = p.output::<(u64, V)>("late");
            let agent = EventWindowAgent {
                name: name.to_string(),
                input,
                out,
                late_out,
                late: late.clone(),
                engine: Engine::new(spec, evicted.clone()),
                key_fn,
                f,
                make,
                last_input: Duration::ZERO,
                early_done: false,
                fired: Vec::new(),
            };
            (agent, (input, out, late_out))
        });
        self.connect(stream, &input);
        for p in spec.problems() {
            self.problem(format!("agent '{name}': {p}"));
        }
        (out, late_out, late, evicted)
    }

    /// Event-time windows of `stream`: `f` of the elements of each window, emitted when the
    /// watermark passes its end, with late elements counted and routed (see the
    /// [module docs](self) for windows, lateness, end of stream and quiet inputs).
    ///
    /// ```
    /// use iotstream::{Graph, Harness};
    /// use iotstream::ops::event::Watermarks;
    /// use iotstream::ops::event_window::{EventWindow, Firing, Window};
    ///
    /// // 5xx responses per 10 s; log lines up to 3 s out of order.
    /// let mut g = Graph::new("errors");
    /// let log = g.input::<(u64, u16)>("log");
    /// let timed = g.watermarks("timed", &log, Watermarks::bounded(3));
    /// let w = g.event_window("per_10s", &timed, EventWindow::tumbling(10), |e: &[(u64, u16)]| {
    ///     e.iter().filter(|(_, status)| *status >= 500).count()
    /// });
    /// let windows = g.collect("windows", &w.windows);
    /// let late = g.collect("late", &w.late);
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&log, [(1, 200), (4, 503), (2, 500), (12, 200), (9, 502), (15, 200)]).unwrap();
    /// h.push(&log, [(3, 500)]).unwrap(); // 12 units behind: [0, 10) was emitted at watermark 12
    /// h.finish().unwrap();
    /// assert_eq!(windows.values(), [
    ///     Window { start: 0, end: 10, value: 3, firing: Firing::OnTime },
    ///     Window { start: 10, end: 20, value: 0, firing: Firing::Final },
    /// ]);
    /// assert_eq!(late.values(), [(3, 500)]);
    /// assert_eq!(w.late_count.get(), 1);
    /// ```
    pub fn event_window<V, U, F>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        spec: EventWindow,
        f: F,
    ) -> EventWindows<V, U>
    where
        V: Element,
        U: Element,
        F: FnMut(&[(u64, V)]) -> U + Send + 'static,
    {
        let make: Make<(), U, Window<U>> = |_, start, end, value, firing| Window {
            start,
            end,
            value,
            firing,
        };
        let (windows, late, late_count, _) =
            self.event_window_agent(name, stream, spec, |_: &(u64, V)| (), f, make);
        EventWindows {
            windows,
            late,
            late_count,
        }
    }

    /// Event-time windows per key: as [`event_window`](Self::event_window), with each key's
    /// own windows (and sessions), every window emitted with its key, and at most
    /// [`EventWindow::max_keys`] live keys (see the [module docs](self#keys)).
    ///
    /// ```
    /// use iotstream::{Graph, Harness};
    /// use iotstream::ops::event_window::{EventWindow, Firing, KeyedWindow};
    ///
    /// // Requests per virtual host per 10 s (ascending timestamps: no watermarks needed).
    /// let mut g = Graph::new("hosts");
    /// let log = g.input::<(u64, String)>("log");
    /// let w = g.keyed_event_window("per_host", &log, |e: &(u64, String)| e.1.clone(),
    ///     EventWindow::tumbling(10), |e: &[(u64, String)]| e.len());
    /// let windows = g.collect("windows", &w.windows);
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&log, [(1, "b".to_string()), (2, "a".into()), (5, "b".into()), (11, "a".into())]).unwrap();
    /// h.finish().unwrap();
    /// let k = |key: &str, start, value, firing| KeyedWindow { key: key.to_string(), start, end: start + 10, value, firing };
    /// assert_eq!(windows.values(), [
    ///     k("a", 0, 1, Firing::OnTime), k("b", 0, 2, Firing::OnTime), k("a", 10, 1, Firing::Final),
    /// ]);
    /// ```
    pub fn keyed_event_window<K, V, U, KF, F>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        key_fn: KF,
        spec: EventWindow,
        f: F,
    ) -> KeyedEventWindows<K, V, U>
    where
        K: Element + Eq + Hash,
        V: Element,
        U: Element,
        KF: Fn(&(u64, V)) -> K + Send + 'static,
        F: FnMut(&[(u64, V)]) -> U + Send + 'static,
    {
        let make: Make<K, U, KeyedWindow<K, U>> = |key, start, end, value, firing| KeyedWindow {
            key,
            start,
            end,
            value,
            firing,
        };
        let (windows, late, late_count, evicted) =
            self.event_window_agent(name, stream, spec, key_fn, f, make);
        KeyedEventWindows {
            windows,
            late,
            late_count,
            evicted,
        }
    }

    /// A stateful map per key: `f(state of the element's key, element)`, emitted as `(key,
    /// value)` when it returns `Some`. A key's state starts as `init(key)`. At most `max_keys`
    /// (at least 1) states are kept: a new key beyond that evicts the least recently seen key's
    /// state (counted in [`KeyedMap::evicted`]); if that key comes back, it starts afresh.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Per sensor: each reading's change from the one before.
    /// let mut g = Graph::new("deltas");
    /// let x = g.source_iter("x", [('a', 10), ('b', 5), ('a', 13), ('b', 4)]);
    /// let d = g.keyed_map_with_state("delta", &x, 1_000, |e: &(char, i32)| e.0,
    ///     |_: &char| None::<i32>,
    ///     |last: &mut Option<i32>, e: &(char, i32)| {
    ///         let delta = last.map(|l| e.1 - l);
    ///         *last = Some(e.1);
    ///         delta
    ///     });
    /// let out = g.collect("out", &d.out);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [('a', 3), ('b', -1)]);
    /// ```
    pub fn keyed_map_with_state<T, K, S, U, KF, I, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        max_keys: usize,
        key_fn: KF,
        init: I,
        f: F,
    ) -> KeyedMap<K, U>
    where
        T: Element,
        K: Element + Eq + Hash,
        S: Send + 'static,
        U: Element,
        KF: Fn(&T) -> K + Send + 'static,
        I: Fn(&K) -> S + Send + 'static,
        F: FnMut(&mut S, &T) -> Option<U> + Send + 'static,
    {
        let evicted = EvictionCounter::default();
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<(K, U)>("out");
            let agent = KeyedMapAgent {
                input,
                out,
                max_keys,
                states: HashMap::new(),
                lru: BTreeMap::new(),
                seq: 0,
                evicted: evicted.clone(),
                key_fn,
                init,
                f,
            };
            (agent, (input, out))
        });
        self.connect(stream, &input);
        if max_keys == 0 {
            self.problem(format!(
                "agent '{name}': max_keys must be at least 1 (got 0)"
            ));
        }
        KeyedMap { out, evicted }
    }
}
