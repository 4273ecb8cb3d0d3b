//! Counters for every stream, connection and agent, readable while the application runs.
//!
//! Each counter is a relaxed atomic updated once per batch (never per element) by the one thread
//! that owns it, so keeping them costs nothing measurable. [`Metrics`] is a snapshot: take one
//! from [`Running::metrics`](crate::Running::metrics) during a run, or from the value
//! [`Graph::run`](crate::Graph::run) returns at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::time::Duration;

use crate::stream::Policy;

#[derive(Default, Debug)]
pub(crate) struct StreamCounters {
    pub elements: AtomicU64,
    pub batches: AtomicU64,
    /// The last watermark sent, valid once `has_watermark` is set.
    watermark: AtomicU64,
    has_watermark: AtomicBool,
}

impl StreamCounters {
    /// Records `w` as the last watermark sent on the stream (by its one writer).
    pub fn set_watermark(&self, w: u64) {
        self.watermark.store(w, Relaxed);
        // Release: a reader that sees the flag sees a watermark stored with or after it.
        self.has_watermark.store(true, Ordering::Release);
    }

    /// The last watermark sent, if any.
    pub fn watermark(&self) -> Option<u64> {
        self.has_watermark
            .load(Ordering::Acquire)
            .then(|| self.watermark.load(Relaxed))
    }
}

#[derive(Default, Debug)]
pub(crate) struct LinkCounters {
    pub elements: AtomicU64,
    pub batches: AtomicU64,
    pub dropped: AtomicU64,
    /// Time the writer held data it could not send, in nanoseconds, for the waits that ended
    /// (see [`LinkCounters::blocked_now`] for the one going on).
    pub blocked_ns: AtomicU64,
    /// While the writer waits: [`mono_ns`] at the wait's start, plus one; 0 otherwise.
    pub blocked_since: AtomicU64,
    /// The most blocked time a snapshot said ([`LinkCounters::blocked_now`]).
    pub blocked_said: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// In-process links: the elements the reading agent consumed, stored by the reader's host
    /// after each step (its credit goes back in groups: see [`LinkCounters::local_backlog`]).
    /// The writer's byte bound for elements that own heap memory reads it too.
    pub consumed: AtomicU64,
    /// In-process links of elements that own heap memory: the writer waits for room under the
    /// byte bound. Set by the writer before it reads `consumed` once more, taken by the reader
    /// after it stored `consumed` (both sequentially consistent): either the writer sees the
    /// reader's progress, or the reader sees the flag and returns its credit at once, whatever
    /// its grouping, so that the writer wakes up.
    pub writer_waits_bytes: AtomicBool,
    /// An in-process link: its backlog (`in_flight`) is computed when read, not stored.
    pub local: AtomicBool,
    pub released_early: AtomicU64,
    /// TCP links: payload bytes sent (writer) or received (reader).
    pub bytes: AtomicU64,
    /// TCP links: connections re-established after a break.
    pub reconnects: AtomicU64,
    /// TCP links, writer side: bytes sent and not yet acknowledged, each frame counting its
    /// payload and 128 bytes (a gauge).
    pub unacked_bytes: AtomicU64,
}

#[derive(Default, Debug)]
pub(crate) struct AgentCounters {
    pub steps: AtomicU64,
    pub consumed: AtomicU64,
    /// Time spent in steps (and `finish`) that ended, in [`step_clock`] ticks (see
    /// [`AgentCounters::busy_now`] for the step going on).
    pub busy_ticks: AtomicU64,
    /// While a step runs: the [`step_clock`] reading at its start, plus one; 0 otherwise.
    pub step_since: AtomicU64,
    /// The most busy time a snapshot said, in nanoseconds ([`AgentCounters::busy_now`]): kept
    /// in nanoseconds, not ticks, since the ticks' rate is measured anew at each snapshot.
    pub busy_said: AtomicU64,
    /// Elements the agent found late ([`Inputs::count_late`](crate::Inputs::count_late)).
    pub late: AtomicU64,
    /// Elements a sink could not deliver to the outside world
    /// ([`Inputs::count_undelivered`](crate::Inputs::count_undelivered)).
    pub undelivered: AtomicU64,
}

impl LinkCounters {
    /// Sets the elements in flight now (and the most ever): called per batch or credit.
    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Relaxed);
        self.max_in_flight.fetch_max(n, Relaxed);
    }

    /// An in-process link's backlog, sent and not consumed, at most `bound` (the capacity, or
    /// what the writer has sent and not had credited back). Computed when the counters are
    /// read, from `elements` (counted by the writer before it posts) and `consumed` (stored by
    /// the reader after each step), so that a pipeline that consumed everything shows 0, not
    /// the up to a quarter of the capacity its credit holds back; and by the writer after each
    /// send, for the most in flight.
    pub fn local_backlog(&self, bound: u64) -> u64 {
        // `consumed` first: `elements` counts the elements before they are posted, so read
        // after it, it is never behind it.
        let consumed = self.consumed.load(Ordering::Acquire);
        let sent = self.elements.load(Ordering::Acquire);
        sent.saturating_sub(consumed).min(bound)
    }

    /// The writer starts waiting with data it cannot send; returns the start, for
    /// [`unblocked`](Self::unblocked).
    pub fn blocked(&self) -> u64 {
        let now = mono_ns();
        self.blocked_since.store(now.saturating_add(1), Relaxed);
        now
    }

    /// The wait that started at `since` ([`blocked`](Self::blocked)) is over.
    pub fn unblocked(&self, since: u64) {
        // Cleared before the time is added: a snapshot that sees the time added sees it
        // cleared, and never counts the wait twice (see `ongoing`).
        self.blocked_since.store(0, Release);
        self.blocked_ns
            .fetch_add(mono_ns().saturating_sub(since), Release);
    }

    /// The writer's blocked time so far, in nanoseconds, the wait going on included (a writer
    /// that has waited for a minute shows that minute now, not once it is over), and never
    /// less than an earlier call said.
    pub fn blocked_now(&self) -> u64 {
        let ns = ongoing(&self.blocked_ns, &self.blocked_since, mono_ns());
        self.blocked_said.fetch_max(ns, Relaxed).max(ns)
    }
}

impl AgentCounters {
    /// A step (or `finish`) starts: returns the [`step_clock`] reading to pass to
    /// [`note_busy`](Self::note_busy) when it ends.
    #[inline]
    pub fn step_started(&self) -> u64 {
        let now = step_clock::now();
        self.step_since.store(now.saturating_add(1), Relaxed);
        now
    }

    /// Adds the time since `started` ([`step_started`](Self::step_started)) to the busy time:
    /// called once per step.
    #[inline]
    pub fn note_busy(&self, started: u64) {
        // Cleared first, as in `LinkCounters::unblocked`.
        self.step_since.store(0, Release);
        self.busy_ticks
            .fetch_add(step_clock::now().saturating_sub(started), Release);
    }

    /// The busy time so far, in nanoseconds at the rate `to_ns` measured, the step going on
    /// included (an agent in a step of a minute shows busy through that minute), and never
    /// less than an earlier call said.
    pub fn busy_now(&self, to_ns: step_clock::ToNanos) -> u64 {
        let ticks = ongoing(&self.busy_ticks, &self.step_since, step_clock::now());
        let ns = to_ns.nanos(ticks);
        self.busy_said.fetch_max(ns, Relaxed).max(ns)
    }
}

/// A time counter with the span going on: `done` (spans that ended), plus `now - (since - 1)`
/// if `since` is set (not 0). The caller raises it to the most it said before (and stores it
/// there), in the unit it reports.
///
/// The writer clears `since` (`Release`) before it adds the span to `done` (`Release`); this
/// reads `done` before `since` (`Acquire` both). So if `done` includes a span, `since` is seen
/// cleared (or set anew, for a later span): a span is never counted twice, and the sum is never
/// more than the truth. It may be less (`done` read just before a span was added, `since` just
/// after it was cleared): the most said so far keeps what is reported from going back, which a
/// Prometheus counter must never do.
fn ongoing(done: &AtomicU64, since: &AtomicU64, now: u64) -> u64 {
    let ended = done.load(Ordering::Acquire);
    let since = since.load(Ordering::Acquire);
    match since {
        0 => ended,
        s => ended.saturating_add(now.saturating_sub(s - 1)),
    }
}

/// Nanoseconds on the monotonic clock since the process first asked: when a writer's wait
/// started ([`LinkCounters::blocked`]).
pub(crate) fn mono_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX)
}

/// The clock that times agents' steps ([`AgentCounters::note_busy`]), read twice per step, so
/// it must be cheap.
///
/// On x86_64 with an invariant time-stamp counter (constant rate, never stopped: CPUID leaf
/// `0x8000_0007`, EDX bit 8) a reading is the counter itself (`rdtsc`: 9 ns here and not
/// serializing, where the OS clock's `clock_gettime`, which fences, took 27 ns in a loop and
/// about a quarter of a one-element step, ~50 ns a reading, inside one). Ticks become
/// nanoseconds only when counters are read ([`converter`](step_clock::converter)), at the
/// counter's rate measured since the process's first reading. Elsewhere a reading is the
/// monotonic clock, in nanoseconds since the first.
pub(crate) mod step_clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    /// The process's first reading: the monotonic clock and the counter then, and whether the
    /// counter is used.
    struct Origin {
        at: Instant,
        ticks: u64,
        counter: bool,
    }

    static ORIGIN: OnceLock<Origin> = OnceLock::new();

    fn origin() -> &'static Origin {
        ORIGIN.get_or_init(|| {
            let counter = invariant_counter();
            let (at, ticks) = if counter {
                paired()
            } else {
                (Instant::now(), 0)
            };
            Origin { at, ticks, counter }
        })
    }

    /// The monotonic clock and the counter, read together: the counter between two clock
    /// readings at most 20 µs apart (the closest of a few tries: a thread preempted in between
    /// would skew the counter's measured rate), and the clock's midpoint.
    fn paired() -> (Instant, u64) {
        let mut best: Option<(std::time::Duration, Instant, u64)> = None;
        for _ in 0..8 {
            let before = Instant::now();
            let ticks = read_counter();
            let gap = before.elapsed();
            if best.is_none_or(|(g, _, _)| gap < g) {
                best = Some((gap, before + gap / 2, ticks));
            }
            if gap <= std::time::Duration::from_micros(20) {
                break;
            }
        }
        let (_, at, ticks) = best.expect("eight tries");
        (at, ticks)
    }

    /// A reading, in ticks.
    #[inline]
    pub(crate) fn now() -> u64 {
        let o = origin();
        if o.counter {
            read_counter()
        } else {
            u64::try_from(o.at.elapsed().as_nanos()).unwrap_or(u64::MAX)
        }
    }

    /// Turns tick counts into nanoseconds, at the counter's rate measured once, when it is
    /// made ([`converter`]): one for a whole snapshot of counters.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct ToNanos {
        /// Nanoseconds and ticks since the origin (1 and 1 on the monotonic clock).
        ns: u128,
        ticks: u128,
    }

    impl ToNanos {
        /// `ticks` (a difference of readings) in nanoseconds.
        pub(crate) fn nanos(self, ticks: u64) -> u64 {
            if self.ticks == 0 {
                return 0;
            }
            u64::try_from(u128::from(ticks) * self.ns / self.ticks).unwrap_or(u64::MAX)
        }
    }

    /// The rate of ticks now.
    pub(crate) fn converter() -> ToNanos {
        let o = origin();
        if !o.counter {
            return ToNanos { ns: 1, ticks: 1 };
        }
        let (at, now) = paired();
        ToNanos {
            ns: at.saturating_duration_since(o.at).as_nanos(),
            ticks: u128::from(now.saturating_sub(o.ticks)),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn invariant_counter() -> bool {
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn invariant_counter() -> bool {
        false
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn read_counter() -> u64 {
        // SAFETY: `rdtsc` exists on every x86_64 CPU; it reads a register and touches no
        // memory.
        unsafe { std::arch::x86_64::_rdtsc() }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn read_counter() -> u64 {
        0
    }

    #[cfg(test)]
    mod tests {
        use std::time::{Duration, Instant};

        #[test]
        fn ticks_become_the_nanoseconds_they_took() {
            // Each reading of the step clock between two of the monotonic clock: the ticks
            // it counts, in ns, lie between the inner and the outer interval (a preemption
            // between two readings widens them), within 5 % for the rate's measurement.
            let (i0, start, i1) = (Instant::now(), super::now(), Instant::now());
            while i1.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
            let (e0, end, e1) = (Instant::now(), super::now(), Instant::now());
            let measured = super::converter().nanos(end - start) as f64;
            let (inner, outer) = ((e0 - i1).as_nanos() as f64, (e1 - i0).as_nanos() as f64);
            assert!(
                measured >= inner * 0.95 && measured <= outer * 1.05,
                "{measured} ns measured for between {inner} and {outer} ns"
            );
        }
    }
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Where every counter of one application lives; shared by the hosts that update them.
#[derive(Default, Debug)]
pub(crate) struct Registry {
    pub streams: Vec<(String, String, Arc<StreamCounters>)>,
    pub links: Vec<LinkEntry>,
    pub agents: Vec<(String, Arc<AgentCounters>)>,
}

#[derive(Debug)]
pub(crate) struct LinkEntry {
    /// The connection's index in the graph's edges.
    pub edge: usize,
    /// Which ends of the connection this process holds.
    pub ends: LinkEnds,
    pub stream: String,
    pub reader: String,
    pub input: String,
    pub policy: Policy,
    pub capacity: usize,
    pub counters: Arc<LinkCounters>,
}

impl Registry {
    pub fn snapshot(&self) -> Metrics {
        let busy = step_clock::converter();
        Metrics {
            streams: self
                .streams
                .iter()
                .map(|(name, writer, c)| StreamStats {
                    name: name.clone(),
                    writer: writer.clone(),
                    elements: c.elements.load(Relaxed),
                    batches: c.batches.load(Relaxed),
                    watermark: c.watermark(),
                })
                .collect(),
            links: self
                .links
                .iter()
                .map(|l| LinkStats {
                    edge: l.edge,
                    ends: l.ends,
                    stream: l.stream.clone(),
                    reader: l.reader.clone(),
                    input: l.input.clone(),
                    policy: l.policy,
                    capacity: l.capacity,
                    elements: l.counters.elements.load(Relaxed),
                    batches: l.counters.batches.load(Relaxed),
                    dropped: l.counters.dropped.load(Relaxed),
                    blocked: Duration::from_nanos(l.counters.blocked_now()),
                    in_flight: if l.counters.local.load(Relaxed) {
                        l.counters.local_backlog(l.capacity as u64)
                    } else {
                        l.counters.in_flight.load(Relaxed)
                    },
                    max_in_flight: l.counters.max_in_flight.load(Relaxed),
                    released_early: l.counters.released_early.load(Relaxed),
                    bytes: l.counters.bytes.load(Relaxed),
                    reconnects: l.counters.reconnects.load(Relaxed),
                    unacked_bytes: l.counters.unacked_bytes.load(Relaxed),
                })
                .collect(),
            agents: self
                .agents
                .iter()
                .map(|(name, c)| AgentStats {
                    name: name.clone(),
                    steps: c.steps.load(Relaxed),
                    consumed: c.consumed.load(Relaxed),
                    busy: Duration::from_nanos(c.busy_now(busy)),
                    late: c.late.load(Relaxed),
                    undelivered: c.undelivered.load(Relaxed),
                })
                .collect(),
        }
    }
}

/// A snapshot of every counter of an application.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// One entry per stream (agent output).
    pub streams: Vec<StreamStats>,
    /// One entry per connection (stream → reader input).
    pub links: Vec<LinkStats>,
    /// One entry per agent.
    pub agents: Vec<AgentStats>,
}

impl Metrics {
    /// The stream named `name` (`"agent.port"`, e.g. `"double.out"`), if there is one.
    pub fn stream(&self, name: &str) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.name == name)
    }
    /// The connection from stream `stream` to agent `reader`, if there is one.
    pub fn link(&self, stream: &str, reader: &str) -> Option<&LinkStats> {
        self.links
            .iter()
            .find(|l| l.stream == stream && l.reader == reader)
    }
    /// The agent named `name`, if there is one.
    pub fn agent(&self, name: &str) -> Option<&AgentStats> {
        self.agents.iter().find(|a| a.name == name)
    }
    /// Elements dropped by drop policies, over every connection.
    pub fn total_dropped(&self) -> u64 {
        self.links.iter().map(|l| l.dropped).sum()
    }
}

/// Counters of one stream.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamStats {
    /// `"agent.port"`.
    pub name: String,
    /// The agent that owns (writes) the stream.
    pub writer: String,
    /// Elements appended.
    pub elements: u64,
    /// Batches appended (one per step that appended anything).
    pub batches: u64,
    /// The last watermark sent on the stream (event time, see
    /// [`ops::event`](crate::ops::event)); `None` before the first one and on streams that
    /// carry none.
    #[serde(default)]
    pub watermark: Option<u64>,
}

/// Which ends of a connection a process holds, and so which of a [`LinkStats`]'s counters
/// it updates.
///
/// A connection between two processes (a shared-memory ring, a TCP link) has one set of
/// counters in each: the writer's process counts what its agent sent (`elements`, `batches`,
/// `dropped`, `blocked`; on a ring also `max_in_flight`, as it counts what it wrote and has
/// not seen consumed, when it reads the reader's consumption again; over TCP also `bytes` sent, `reconnects`, `unacked_bytes`), the
/// reader's process what its agent was handed (`elements`, `batches`, `in_flight`,
/// `max_in_flight`, `released_early`; over TCP also `bytes` received, `reconnects`). Put the
/// two together by [`LinkStats::edge`] (the live view does: see
/// [`observe`](crate::observe)). A connection within one process has one set, both ends'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkEnds {
    /// The writing agent's end only: the reader is in another process.
    Writer,
    /// The reading agent's end only: the writer is in another process.
    Reader,
    /// Both ends: writer and reader run in this process.
    #[default]
    Both,
}

impl LinkEnds {
    /// This process holds the writer's end.
    pub fn writer(self) -> bool {
        matches!(self, LinkEnds::Writer | LinkEnds::Both)
    }

    /// This process holds the reader's end.
    pub fn reader(self) -> bool {
        matches!(self, LinkEnds::Reader | LinkEnds::Both)
    }
}

/// Counters of one connection from a stream to a reader's input.
///
/// In a process that holds only one end of the connection ([`LinkStats::ends`]), the counters
/// of the other end stay 0: see [`LinkEnds`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkStats {
    /// The connection's index in the graph's connections
    /// ([`GraphInfo::edges`](crate::info::GraphInfo::edges), in the order `connect` was
    /// called): the same in every process, so the reports of a connection's two ends can be
    /// put together.
    #[serde(default)]
    pub edge: usize,
    /// Which ends of the connection this process holds.
    #[serde(default)]
    pub ends: LinkEnds,
    /// The stream read, `"agent.port"`.
    pub stream: String,
    /// The reading agent.
    pub reader: String,
    /// The reader's input port name.
    pub input: String,
    /// The back-pressure policy.
    pub policy: Policy,
    /// Elements that may be in flight (sent, not yet consumed by the reader), on every
    /// transport.
    pub capacity: usize,
    /// Elements delivered: sent by the writer (counted by the writer's end), or handed to the
    /// reading agent (by the reader's end, where the writer is in another process).
    pub elements: u64,
    /// Batches delivered, counted as `elements` is.
    pub batches: u64,
    /// Elements dropped by the policy (always 0 under `Block`).
    pub dropped: u64,
    /// Total time the writer held data it could not send on this connection.
    pub blocked: Duration,
    /// Elements in flight now, counted by the reader's end: sent and not yet consumed by the
    /// reader (within one process); read from the ring by the reading process and not yet
    /// consumed (waiting in its feeder or handed to the agent; what still waits in the ring is
    /// not counted); over TCP, handed to the reading agent and not yet consumed.
    pub in_flight: u64,
    /// The most elements that were ever in flight at once (never above `capacity`, except for
    /// elements a ring's reader released early, and right after a ring's writing process
    /// restarted, see `docs/ARCHITECTURE.md`). On a
    /// shared-memory ring both ends count it: the writer's end what it wrote and had not seen
    /// consumed (including what waited in the ring), the reader's end as `in_flight`. Over
    /// TCP only the reader's end counts it.
    pub max_in_flight: u64,
    /// Shared-memory connections: elements whose ring space the reading process released
    /// before its agent had consumed them, because the writer was out of space while the
    /// reading agent waited for more than the ring holds (it saw every element delivered and
    /// left them unconsumed, as a count window larger than what fits). A crash of the reading
    /// process may lose these, not only re-deliver them. Always 0 on in-process connections
    /// and for readers that consume what they are given, however slowly.
    pub released_early: u64,
    /// TCP connections: payload bytes (encoded batches, without framing) sent by the writer or
    /// received by the reader, whichever side this process is; resent batches count again.
    /// Always 0 on in-process and shared-memory connections.
    pub bytes: u64,
    /// TCP connections: how many times the connection was established again after a break
    /// (a cut, a peer silent too long, a restarted peer). Always 0 on other connections.
    pub reconnects: u64,
    /// TCP connections, writer side: bytes sent and not yet acknowledged by the reader (which
    /// acknowledges what its agent consumed), now, each frame counting its payload and 128
    /// bytes for itself. Bounded by the deployment's
    /// `unacked_bytes` plus one frame: that bound is the link's back-pressure. Always 0 on the
    /// reader's side and on other connections.
    pub unacked_bytes: u64,
}

/// Counters of one agent.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentStats {
    /// The agent's name.
    pub name: String,
    /// How many times its step ran.
    pub steps: u64,
    /// Elements it consumed, over all inputs.
    pub consumed: u64,
    /// Time spent in its steps (and in [`Agent::finish`](crate::Agent::finish)), measured
    /// once per step.
    #[serde(default)]
    pub busy: Duration,
    /// Elements it found late (event time) and dropped or routed aside, as the agent counted
    /// them with [`Inputs::count_late`](crate::Inputs::count_late).
    #[serde(default)]
    pub late: u64,
    /// Elements a sink could not deliver to the outside world (a web hook that kept failing,
    /// say) and gave up on, as the agent counted them with
    /// [`Inputs::count_undelivered`](crate::Inputs::count_undelivered).
    #[serde(default)]
    pub undelivered: u64,
}
