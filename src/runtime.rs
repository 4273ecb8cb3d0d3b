//! The threaded runtime: every agent an actix actor, on a pool of worker threads.
//!
//! [`Graph::run`] runs an application to its end; [`Graph::start`] starts it and returns a
//! [`Running`] handle to push input, read counters while it runs, ask it to stop, and wait.
//!
//! # Threads
//!
//! Agents run on a pool of worker threads, one per core unless
//! [`Graph::worker_threads`](crate::Graph::worker_threads) says otherwise, each agent always on
//! the same worker: the number of threads does not grow with the agents. The stages of a chain
//! (each the only reader of the one before) share their first stage's worker, so a batch goes
//! from stage to stage in one core's cache; independent chains and the branches of a fan-out
//! spread over the workers. A step should therefore
//! not block; an agent that waits (on a device, a lock, a socket) belongs on a thread of its own,
//! [`Graph::place_on_thread`](crate::Graph::place_on_thread). Sources' work and the sinks that
//! write files or standard output have threads of their own anyway.
//!
//! An agent whose every input comes from another process (over a shared-memory ring or a TCP
//! link) is stepped by the thread that reads the link, as soon as it has read, instead of
//! being woken on its worker: one wake-up less between the writing process's step and the
//! reading one's. Likewise a source whose every output goes to another process over a ring
//! is stepped by the thread that hands it elements (its own, or the program's through an
//! [`InputSender`]): its step is mostly the write into the ring. In low-latency mode
//! ([`Connection::spin`](crate::Connection::spin)) the reading thread also checks the ring a
//! while before it sleeps.
//!
//! An agent busy in a step does not miss what arrives meanwhile: its next step takes all of it
//! at once (adaptive batching), so a stage that falls behind catches up with larger batches,
//! and a quiet stream's elements go through one by one without waiting.
//!
//! # How a run ends
//!
//! - **Normally**: every source ends, end of stream propagates through every agent, and
//!   `run` returns the final [`Metrics`].
//! - **On an error or panic** in any agent: the application stops and `run` returns that error,
//!   naming the agent.
//! - **Feedback loops** never see end of stream on their loop edge. When every source has ended
//!   and no message is in flight anywhere, the runtime closes the loop's inputs, and the loop
//!   drains and ends as if its inputs had closed.
//! - **Stalls**: if at that point a writer still holds data its reader will never take (a
//!   capacity too small for what the reader needs), the run fails with
//!   [`Error::Stalled`] naming the connection, instead of hanging. Across the processes of
//!   one host too: the starter (or the launcher) asks every process, while they may be quiet,
//!   whether its part is quiet but for the others, and declares the stall when all are, twice
//!   in a row, with nothing posted anywhere and no ring moved in between (see
//!   `docs/ARCHITECTURE.md`, "A stall across processes"). A slow application is never one,
//!   and neither is one that waits for an agent's timer ([`Inputs::wake_at`](crate::Inputs::wake_at)):
//!   while a timer that leads to a blocked connection's reader is armed, in this process or
//!   another, what is blocked may still move (a reader that takes its input in at a pace of
//!   its own, a ticker feeding a zip), and the stall is declared once no such timer is left.
//! - **On Ctrl-C, SIGTERM or SIGHUP** (or [`Running::stop`]): a graceful drain. Sources stop
//!   and end their streams, data in flight is processed, sinks see their end of stream (and
//!   flush in [`Agent::finish`](crate::Agent::finish)), and `run` returns the final counters,
//!   `Ok`: the program goes on and exits 0 as after a normal end. A second signal while the
//!   drain is on ends the process at once with status 128 + the signal (130 for Ctrl-C, 143 for
//!   SIGTERM, 129 for SIGHUP), as the `iotstream` launcher does. SIGHUP (a hang-up: the
//!   terminal closed, the SSH session dropped) is left alone if it was ignored when the run
//!   started (`nohup`). Once the run is over, the signals do what they did before it (by
//!   default, end the program). A program that handles signals itself turns this off with
//!   [`Graph::handle_signals`]`(false)`.
//!
//! # Several processes
//!
//! When agents are placed in several processes
//! ([`Graph::place_in_process`](crate::Graph::place_in_process)), `start` in the process the user
//! started (the *starter*) creates the shared-memory rings, starts one child per other process
//! (this same program, re-executed with a role), runs the agents of
//! [`MAIN_PROCESS`](crate::MAIN_PROCESS) itself, and supervises the children; `join` returns once
//! every process has ended, or with the first failure, naming the process. In a child, the same
//! `start` runs only that process's agents. Ctrl-C, SIGTERM or SIGHUP drains the application
//! gracefully (sources end their streams, data in flight is processed, in every process); a
//! second one kills the children, removes the rings and ends the starter at once. The drain is
//! bounded (`IOTSTREAM_DRAIN_TIMEOUT_MS`, default 10 s): child processes still running then
//! (stopped or hung) are killed and the run fails naming them; a drain a signal started that
//! the starter's own agents still hold up 2 s later (one process: at the bound) ends the
//! process with status 1, saying so. Each child is named
//! `iotstream <app>/<process>` in `ps` and `<app>/<process>` in `top`.

use std::any::Any;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, Arbiter, AsyncContext, Context, StreamHandler, System};

use crate::error::Error;
use nix::sys::signal::Signal;

mod direct;

use crate::graph::{Graph, Part, ReaderBounds, Remote, Resolved};
use crate::host::{join_waiting, Driver, Envelope, Host, Mailbox};
use crate::host::{SourceThreadCtx, StartGates};
use crate::launch::signals::{self, Again, OnSignal};
use crate::launch::{self, ChildProcess, Role, RunId, Segments};
use crate::metrics::{Metrics, Registry};
use crate::ops::source::InputSender;
use crate::stream::{Element, PortId, Stream};
use crate::transport::broker::{BrokerFeederSpec, BrokerSettings, BrokerWriterSpec};
use crate::transport::tcp::auth::Secret;
use crate::transport::tcp::tls::{TlsConfig, TlsFiles};
use crate::transport::tcp::{StopHook, TcpFeederSpec, TcpSettings, TcpWriterSpec};
use crate::transport::{self, FailureHook, FeederState, Linger, LinkSpec, RunContext};

/// How long past a linger's deadline the run's end still waits for the link to give up by
/// itself (and say why): link threads look at their deadline every 100 ms.
const LINGER_GRACE: Duration = Duration::from_secs(1);

/// State shared by every actor of one run.
struct Shared {
    /// Envelopes posted and not yet handled, plus actors not yet started.
    in_flight: AtomicUsize,
    /// Envelopes ever posted: a quiescence reading is valid only if this did not move.
    posted: std::sync::atomic::AtomicU64,
    /// Source agents not yet finished.
    active_sources: AtomicUsize,
    /// Source agents not finished and blocked on credit: they cannot produce until a credit
    /// envelope arrives, so they do not keep the application from being quiescent.
    blocked_sources: AtomicUsize,
    /// Agents not yet finished.
    hosts_left: AtomicUsize,
    /// Agents counted in `active_sources` because they wait on a ring (see
    /// `Tended::counted_ring_wait`): only another process can move them.
    ring_waits: AtomicUsize,
    /// Of those, agents that wait on a TCP link or a broker: no ring shows them move, so the
    /// part is never quiet for the stall check across processes (`quiet_across`).
    off_ring_waits: AtomicUsize,
    /// Agents not finished with a timer armed (`Inputs::wake_at`), by index: the step a timer
    /// brings may consume, emit or mark what frees a blocked writer (see
    /// [`timers_hold`](Self::timers_hold)).
    timers: Mutex<std::collections::BTreeSet<usize>>,
    /// Agents fed from another process or host that hold elements they have not consumed, by
    /// index: their timer's step may take them in and free that writer.
    remote_holders: Mutex<std::collections::BTreeSet<usize>>,
    /// A timer's step ran since the last description round: the next verdict asks for fresh
    /// descriptions first.
    timer_since_round: AtomicBool,
    /// The graph's links as this part sees them (set once the part is built).
    topology: std::sync::OnceLock<Topology>,
    /// Set to stop sources (graceful) or after a failure.
    stop: Arc<AtomicBool>,
    error: Mutex<Option<Error>>,
    /// Set by the first failure and never cleared (the run's end takes `error` out): the
    /// starter's drain bound starts on it.
    failed: AtomicBool,
    /// Before anything failed this part, a link found its peer process failed or dead (see
    /// [`RunContext::peer_failed`]): the failure that follows is that peer's consequence. Its
    /// pid.
    failed_by_peer: Mutex<Option<u32>>,
    system: Mutex<Option<System>>,
    /// `system` is gone (the actors are torn down): an atomic, so that link threads, which
    /// ask [`RunHandle::is_over`] at every batch, take no lock shared by the whole run.
    torn_down: AtomicBool,
    mailboxes: Mutex<Vec<Arc<dyn Mailbox>>>,
    /// Threads that feed local inputs from other processes (see [`RunHandle`]).
    feeders: Mutex<Vec<Arc<FeederState>>>,
    /// The agents blocked on credit, by agent index: their mailbox, and what they hold and
    /// cannot send as of the description round they last wrote (see `stall_round`). At
    /// quiescence, anything here is a stall.
    stalls: Mutex<std::collections::BTreeMap<usize, Stall>>,
    /// Descriptions of stalls are written when an agent becomes blocked, not at every message
    /// while it stays blocked (that cost grew with readers × messages under fan-out). Before a
    /// stall is reported, a new round asks every blocked agent to write its description again,
    /// so the report says what is blocked at the end.
    stall_round: AtomicU64,
    /// Run once, at the first failure, before anything stops (see [`RunHandle::on_failure`]).
    failure_hooks: Mutex<Vec<FailureHook>>,
    /// Links that may hold the exit after a normal end (see [`RunHandle::linger`]).
    lingers: Mutex<Vec<Arc<Linger>>>,
}

/// What a thread that feeds the application from outside (a shared-memory receiver) needs from
/// the run: it counts as a source until it ends, so the run is not taken as quiescent while the
/// other process may still send.
#[derive(Clone)]
pub(crate) struct RunHandle {
    shared: Arc<Shared>,
}

impl RunHandle {
    /// Registers a feeder; call `finished` when it has delivered its end of stream.
    pub fn feeder(&self, label: String) -> Arc<FeederState> {
        let state = Arc::new(FeederState::new(label));
        self.shared.active_sources.fetch_add(1, Ordering::SeqCst);
        self.shared
            .feeders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&state));
        state
    }

    /// Marks a feeder blocked (holding data without credit) or not. A feeder that becomes
    /// blocked may be the last thing the run was waiting for: it checks for quiescence.
    pub fn set_blocked(&self, feeder: &FeederState, blocked: bool) {
        if feeder.blocked.swap(blocked, Ordering::SeqCst) != blocked {
            if blocked {
                self.shared.blocked_sources.fetch_add(1, Ordering::SeqCst);
                self.shared.check_quiescent();
            } else {
                self.shared.blocked_sources.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// The feeder is done (its end of stream is posted, or it failed).
    pub fn finished(&self, feeder: &FeederState) {
        self.set_blocked(feeder, false);
        self.shared.active_sources.fetch_sub(1, Ordering::SeqCst);
        self.shared.check_quiescent();
    }

    /// Fails the run.
    pub fn fail(&self, e: Error) {
        self.shared.fail(e);
    }

    /// See [`RunContext::peer_failed`].
    pub fn peer_failed(&self, pid: u32) {
        let mut first = self
            .shared
            .failed_by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.shared.failed.load(Ordering::SeqCst) && first.is_none() {
            *first = Some(pid);
        }
    }

    /// Registers `hook`, run once when this process's part fails (an agent's error, a peer's
    /// death noticed, a stall, the starter's supervisor failing it), before the stop flag is
    /// set: a ring's writer marks the ring failed, so readers in other processes end at once
    /// with an error instead of waiting or taking a truncated stream for a complete one.
    pub fn on_failure(&self, hook: FailureHook) {
        self.shared
            .failure_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// Registers `linger`: after a normal end, the run's end waits until it is released or its
    /// deadline passed (see [`Shared::wait_lingers`]); after a failure it is not waited for.
    pub fn linger(&self, linger: Arc<Linger>) {
        self.shared
            .lingers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(linger);
    }

    /// True once the application was asked to stop (a graceful stop, a signal) or failed.
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// True once the run has failed or its actors are torn down: helper threads end. Two
    /// atomics (a feeder asks at every batch): `failed` is set with the first error, and
    /// `torn_down` when the actor system is dropped.
    pub fn is_over(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst) || self.shared.torn_down.load(Ordering::SeqCst)
    }
}

/// The run as its links see it (see [`transport::RunContext`]).
impl RunContext for RunHandle {
    fn feeder(&self, label: String) -> Arc<FeederState> {
        RunHandle::feeder(self, label)
    }
    fn set_blocked(&self, feeder: &FeederState, blocked: bool) {
        RunHandle::set_blocked(self, feeder, blocked)
    }
    fn finished(&self, feeder: &FeederState) {
        RunHandle::finished(self, feeder)
    }
    fn fail(&self, e: Error) {
        RunHandle::fail(self, e)
    }
    fn peer_failed(&self, pid: u32) {
        RunHandle::peer_failed(self, pid)
    }
    fn on_failure(&self, hook: FailureHook) {
        RunHandle::on_failure(self, hook)
    }
    fn stopping(&self) -> bool {
        RunHandle::stopping(self)
    }
    fn is_over(&self) -> bool {
        RunHandle::is_over(self)
    }
    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }
    fn peers_may_restart(&self) -> bool {
        launch::peers_may_restart()
    }
    fn restarted(&self) -> bool {
        launch::restarted()
    }
    fn linger(&self, linger: Arc<Linger>) {
        RunHandle::linger(self, linger)
    }
}

impl Shared {
    /// The state of a run of `agents` local agents, none started yet.
    fn new(agents: usize, stop: Arc<AtomicBool>, system: Option<System>) -> Shared {
        Shared {
            in_flight: AtomicUsize::new(agents),
            posted: std::sync::atomic::AtomicU64::new(0),
            active_sources: AtomicUsize::new(0),
            blocked_sources: AtomicUsize::new(0),
            hosts_left: AtomicUsize::new(agents),
            ring_waits: AtomicUsize::new(0),
            off_ring_waits: AtomicUsize::new(0),
            timers: Mutex::new(std::collections::BTreeSet::new()),
            remote_holders: Mutex::new(std::collections::BTreeSet::new()),
            timer_since_round: AtomicBool::new(false),
            topology: std::sync::OnceLock::new(),
            stop,
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
            failed_by_peer: Mutex::new(None),
            torn_down: AtomicBool::new(system.is_none()),
            system: Mutex::new(system),
            mailboxes: Mutex::new(Vec::new()),
            feeders: Mutex::new(Vec::new()),
            stalls: Mutex::new(std::collections::BTreeMap::new()),
            stall_round: AtomicU64::new(0),
            failure_hooks: Mutex::new(Vec::new()),
            lingers: Mutex::new(Vec::new()),
        }
    }

    fn fail(&self, e: Error) {
        tracing::error!("{e}");
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        self.failed.store(true, Ordering::SeqCst);
        let first = slot.is_none();
        if first {
            *slot = Some(e);
        }
        drop(slot);
        if first {
            // Before the stop flag: a source that sees it ends its stream, and the stream must
            // not end cleanly in another process.
            let hooks =
                std::mem::take(&mut *self.failure_hooks.lock().unwrap_or_else(|p| p.into_inner()));
            for hook in hooks {
                // One hook's panic (a defect) neither skips the others nor the stop below.
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)) {
                    tracing::error!(
                        "a failure hook panicked (the others ran): {}",
                        crate::error::panic_message(&*p)
                    );
                }
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        self.stop_system();
    }

    /// After a normal end (the actors are torn down, [`RunHandle::is_over`] holds): waits
    /// until every registered linger is released, so that a link can still give its peer the
    /// last word (a TCP reader acknowledging an end of stream its writer has not heard of).
    /// Each linger is bounded by its own deadline; after a drain (`drained`), by half the
    /// drain's bound too, so that the process ends within that bound. A failure meanwhile
    /// ends the wait: the run's end reports it.
    fn wait_lingers(&self, drained: bool) {
        const POLL: Duration = Duration::from_millis(20);
        let lingers = std::mem::take(&mut *self.lingers.lock().unwrap_or_else(|p| p.into_inner()));
        let cap = drained
            .then(|| Instant::now() + launch::drain_timeout().unwrap_or(launch::DRAIN_GRACE) / 2);
        let deadlines: Vec<Instant> = lingers.iter().map(|l| l.start(cap)).collect();
        let mut said = false;
        // Ends: every linger is released, or the run fails, or every deadline (and a grace for
        // the link to say why it gave up) has passed; each pass waits at most POLL.
        loop {
            if self.failed.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let held: Vec<&Arc<Linger>> = lingers
                .iter()
                .zip(&deadlines)
                .filter(|(l, d)| !l.released() && now < **d + LINGER_GRACE)
                .map(|(l, _)| l)
                .collect();
            if held.is_empty() {
                break;
            }
            if !said {
                said = true;
                tracing::info!(
                    "every agent has ended; waiting for {} to finish",
                    held.iter()
                        .map(|l| format!("connection {}", l.label))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            std::thread::sleep(POLL);
        }
        for l in lingers.iter().filter(|l| !l.released()) {
            tracing::warn!(
                "connection {}: its link did not finish by its deadline; the process ends anyway",
                l.label
            );
        }
    }

    fn stop_system(&self) {
        if let Some(sys) = self
            .system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            sys.stop();
        }
    }

    /// One envelope (or one actor start) fully handled.
    fn handled(&self) {
        self.handled_many(1);
    }

    /// `n` envelopes (or actor starts) handled.
    fn handled_many(&self, n: usize) {
        if n > 0 && self.in_flight.fetch_sub(n, Ordering::SeqCst) == n {
            self.check_quiescent();
        }
    }

    /// Called when nothing may be in flight: if the run is quiescent (nothing in flight, every
    /// unfinished source blocked) with agents still open, either something holds data it can
    /// never send (a stall: reported, nothing closed) or what is left is feedback loops (closed).
    ///
    /// The state is read between two reads of `posted`; if anything was posted in between, the
    /// reading is discarded: whoever posted will be handled, and its handler checks again. A
    /// feeder that blocks outside any handler checks too (see [`RunHandle::set_blocked`]).
    fn check_quiescent(&self) {
        let before = self.posted.load(Ordering::SeqCst);
        // A failed run is stopping: what it leaves blocked is no stall of its own.
        if self.failed.load(Ordering::SeqCst)
            || self.in_flight.load(Ordering::SeqCst) != 0
            || self.hosts_left.load(Ordering::SeqCst) == 0
            || self.active_sources.load(Ordering::SeqCst)
                != self.blocked_sources.load(Ordering::SeqCst)
        {
            return;
        }
        let round = self.stall_round.load(Ordering::SeqCst);
        let (mut stuck, wake) = {
            let stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
            // Round 0: no round was asked for yet, so every description is from whenever its
            // agent became blocked.
            let stale = round == 0 || stalls.values().any(|s| s.round != round);
            // A new round wakes every blocked agent, fresh or not: the round moves on, so a
            // description fresh now is stale after it. Waking only the stale ones left the
            // others a round behind, and the rounds chased each other for ever (a hang, no
            // stall reported).
            let wake: Vec<Arc<dyn Mailbox>> = if stale {
                stalls.values().map(|s| Arc::clone(&s.mailbox)).collect()
            } else {
                Vec::new()
            };
            let stuck: Vec<String> = stalls.values().flat_map(|s| s.what.clone()).collect();
            (stuck, wake)
        };
        stuck.extend(
            self.feeders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|f| f.blocked.load(Ordering::SeqCst))
                .map(|f| {
                    format!(
                        "{}: the reader takes no more of what arrived from the other process",
                        f.label
                    )
                }),
        );
        let still = self.posted.load(Ordering::SeqCst) == before
            && self.in_flight.load(Ordering::SeqCst) == 0
            && self.active_sources.load(Ordering::SeqCst)
                == self.blocked_sources.load(Ordering::SeqCst);
        if !still {
            return;
        }
        if !wake.is_empty() {
            // Blocked agents whose description may be out of date: a new round, and a wake-up
            // to each blocked agent (it does not step, but writes its description again, in
            // the new round). Their handlers check again once every description is fresh.
            self.stall_round.fetch_add(1, Ordering::SeqCst);
            for m in wake {
                m.post(Envelope::Wake);
            }
            return;
        }
        if !stuck.is_empty() {
            if self.timers_hold(Some(&[])) || self.refresh_after_timers() {
                // A timer to come may free what is blocked: its step looks again
                // (`Tended::book`); or the descriptions are asked for again.
                return;
            }
            // Anything blocked now stays blocked forever: a stall, reported before anything is
            // closed (closing would let blocked writers go on into closed readers).
            self.fail(Error::Stalled {
                detail: stuck.join("; "),
            });
            return;
        }
        // What is left is feedback loops: close their inputs; they drain and end.
        let boxes = self
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for m in boxes {
            m.post(Envelope::ForceClose);
        }
    }
}

/// Who can free whom, for [`Shared::timers_hold`]: the graph's links, by agent index.
pub(crate) struct Topology {
    /// The agents each agent reads from, wherever either runs: a tick may go through
    /// another process on its way to the reader it frees.
    upstream: Vec<Vec<usize>>,
    /// An agent of this part with an input fed from another process or host.
    remote_in: Vec<bool>,
}

impl Topology {
    /// The links of `graph`, `local` saying which agents are this part's.
    fn of(graph: &Graph, local: &[bool]) -> Topology {
        let n = graph.agents.len();
        let mut t = Topology {
            upstream: vec![Vec::new(); n],
            remote_in: vec![false; n],
        };
        for e in &graph.edges {
            let (from, to) = (e.from.agent as usize, e.to.agent as usize);
            t.upstream[to].push(from);
            if !(local[from] && local[to] && graph.resolve(e) == Resolved::Local) {
                t.remote_in[to] |= local[to];
            }
        }
        t
    }
}

impl Shared {
    /// The agents of this part (or its readers elsewhere) whose step may free a writer: the
    /// readers of the links its blocked agents hold data for, and its agents fed from
    /// elsewhere that hold elements they have not consumed (their writer may wait in another
    /// process or host). Only the first are named to the other processes
    /// ([`blocked_readers`](Self::blocked_readers)): a writer there that waits names its
    /// reader itself, and a holder whose writer does not wait frees nothing.
    fn frees(&self) -> Vec<usize> {
        let mut frees = self.blocked_readers();
        frees.extend(
            self.remote_holders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied(),
        );
        frees.sort_unstable();
        frees.dedup();
        frees
    }

    /// The readers, here or in another process, of the links this part's blocked agents hold
    /// data for, sorted, each once.
    fn blocked_readers(&self) -> Vec<usize> {
        let readers: std::collections::BTreeSet<usize> = self
            .stalls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|s| s.readers.iter().copied())
            .collect();
        readers.into_iter().collect()
    }

    /// Whether an armed timer may still free what is blocked, so that a quiescent part with
    /// something blocked is no stall yet (and is not quiet for the check across processes).
    ///
    /// Only a timer that can lead to a blocked writer's relief counts: one of an agent from
    /// which an agent that may free a writer can be reached along the graph's links (itself
    /// included), wherever the links run. Those agents are this part's
    /// ([`frees`](Self::frees)) and, across processes, what the other processes said of
    /// theirs (`elsewhere`, indices in the graph, others ignored; `None`: too many to list,
    /// then any armed timer holds). So a reader that takes its input in at its own timers, a
    /// ticker feeding a zip's other side (in this process or another, directly or through a
    /// third) or an idleness mark before a merge holds the verdict for as long as its timers
    /// come; a periodic report on another branch does not, and the stall is reported at once.
    fn timers_hold(&self, elsewhere: Option<&[usize]>) -> bool {
        let timers = self
            .timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if timers.is_empty() {
            return false;
        }
        let (Some(t), Some(elsewhere)) = (self.topology.get(), elsewhere) else {
            return true;
        };
        let n = t.upstream.len();
        let mut reached = vec![false; n];
        let mut next: Vec<usize> = self.frees();
        next.extend(elsewhere.iter().copied().filter(|&a| a < n));
        while let Some(a) = next.pop() {
            if !std::mem::replace(&mut reached[a], true) {
                next.extend(t.upstream[a].iter().copied().filter(|&u| !reached[u]));
            }
        }
        timers.iter().any(|&a| reached[a])
    }

    /// Asks for fresh descriptions before a verdict if a timer's step ran since the last
    /// round (it may have moved what a blocked agent holds without unblocking it): true if
    /// it did, the verdict then waits for the new round.
    fn refresh_after_timers(&self) -> bool {
        if !self.timer_since_round.swap(false, Ordering::SeqCst) {
            return false;
        }
        let wake: Vec<Arc<dyn Mailbox>> = self
            .stalls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| Arc::clone(&s.mailbox))
            .collect();
        if wake.is_empty() {
            return false;
        }
        self.stall_round.fetch_add(1, Ordering::SeqCst);
        for m in wake {
            m.post(Envelope::Wake);
        }
        true
    }
}

impl Shared {
    /// This process's part is quiet but for other processes of this host: nothing in flight,
    /// and every unfinished source blocked on credit, waiting on a ring's room, or a ring
    /// feeder that read everything its writer published ([`FeederState::waits_for_writer`]).
    /// Only a change in another process (a ring moving) can wake it: if every process is so,
    /// twice in a row with nothing moved anywhere, the application is stalled (the starter or
    /// launcher decides). `None` while anything here may still move (a running step, a source
    /// producing, a TCP or broker feeder, a failure) or while blocked agents' descriptions are
    /// out of date (a new round is asked for, as [`check_quiescent`](Self::check_quiescent)
    /// does: the wake-ups it posts make the next reading differ). A part with every agent
    /// finished is quiet, with nothing stuck.
    ///
    /// `elsewhere`: the agents of the other processes whose step may free a writer, as they
    /// said in the previous round ([`launch::Quiet::frees`]; `None`: too many to list, any
    /// may): a timer here that leads to one of them keeps this part from being quiet.
    ///
    /// The state is read between two reads of `posted`, which must agree.
    fn quiet_across(&self, elsewhere: Option<&[usize]>) -> Option<launch::Quiet> {
        let before = self.posted.load(Ordering::SeqCst);
        if self.failed.load(Ordering::SeqCst) {
            return None;
        }
        if self.hosts_left.load(Ordering::SeqCst) == 0 {
            return Some(launch::Quiet {
                posted: before,
                ..launch::Quiet::default()
            });
        }
        if self.in_flight.load(Ordering::SeqCst) != 0
            || self.off_ring_waits.load(Ordering::SeqCst) != 0
        {
            return None;
        }
        let (stuck, stale) = {
            let round = self.stall_round.load(Ordering::SeqCst);
            let stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
            let stale = round == 0 || stalls.values().any(|s| s.round != round);
            let stuck: Vec<String> = stalls.values().flat_map(|s| s.what.clone()).collect();
            (
                stuck,
                stale.then(|| {
                    stalls
                        .values()
                        .map(|s| Arc::clone(&s.mailbox))
                        .collect::<Vec<_>>()
                }),
            )
        };
        let (mut blocked_feeders, mut waiting_feeders) = (Vec::new(), 0usize);
        for f in self
            .feeders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if f.blocked.load(Ordering::SeqCst) {
                blocked_feeders.push(format!(
                    "{}: the reader takes no more of what arrived from the other process",
                    f.label
                ));
            } else if f.waits_for_writer() {
                waiting_feeders += 1;
            }
        }
        // Every unfinished source accounted for (a finished feeder is neither blocked nor
        // waiting: a mismatch either way is no reading).
        let accounted = self.blocked_sources.load(Ordering::SeqCst)
            + self.ring_waits.load(Ordering::SeqCst)
            + waiting_feeders;
        if self.active_sources.load(Ordering::SeqCst) != accounted
            || self.in_flight.load(Ordering::SeqCst) != 0
            || self.posted.load(Ordering::SeqCst) != before
        {
            return None;
        }
        if let Some(wake) = stale.filter(|w| !w.is_empty()) {
            // Descriptions written when each agent blocked: asked again, for the next reading.
            self.stall_round.fetch_add(1, Ordering::SeqCst);
            for m in wake {
                m.post(Envelope::Wake);
            }
            return None;
        }
        let mut stuck = stuck;
        stuck.extend(blocked_feeders);
        // Even with nothing blocked here: a timer here may free what is blocked in another
        // process (a reader with a pace of its own, the ring's writer elsewhere; a ticker
        // feeding a zip there). (No round after a timer's step here, as `check_quiescent`
        // asks for: a timer firing faster than two probes would keep every other answer
        // from being a reading.)
        if self.timers_hold(elsewhere) {
            return None;
        }
        Some(launch::Quiet {
            posted: before,
            frees: self.blocked_readers(),
            stuck,
        })
    }
}

/// An agent blocked on credit (see `Shared::stalls`).
struct Stall {
    mailbox: Arc<dyn Mailbox>,
    /// The description round it was written in.
    round: u64,
    /// What it holds and cannot send.
    what: Vec<String>,
    /// The readers of its links that hold data (agent indices in the graph).
    readers: Vec<usize>,
}

/// An actor's mailbox: envelopes wait in a queue of its own ([`Parcels`]), which the actor
/// reads as a stream, rather than each in an actix message: a post allocates nothing (actix
/// boxes every message), and the actor takes in everything waiting at once.
struct ActorMailbox {
    parcels: Arc<Parcels>,
    shared: Arc<Shared>,
    /// Keeps the actor's context running for as long as anyone can post to it (actix stops
    /// an actor none of whose addresses is left); nothing is sent through it.
    _alive: Addr<AgentActor>,
}

impl Mailbox for ActorMailbox {
    fn post(&self, env: Envelope) {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        self.shared.posted.fetch_add(1, Ordering::SeqCst);
        if self.parcels.post(env) == Posted::Joined {
            // Its elements travel in an envelope already counted.
            self.shared.handled();
        }
    }
}

/// What became of a posted envelope.
#[derive(Debug, PartialEq, Eq)]
enum Posted {
    /// Queued.
    Queued,
    /// A batch joined to one that waits for the same input, or a mark merged into the marks
    /// waiting for it (see [`join_waiting`]).
    Joined,
}

/// The envelopes posted to an actor and not yet taken in, and the waker of the actor's task.
///
/// Unbounded as actix's own mailbox is: every data envelope is bounded by its link's credit,
/// marks by their merging (at most two of an input between two of its batches, see
/// [`join_waiting`]), every other kind by what the run sends (one credit per delivered batch,
/// a few control envelopes). The queue's vector and its spare are reused: no allocation per
/// envelope.
#[derive(Default)]
struct Parcels {
    queue: Mutex<Queued>,
    waker: futures_util::task::AtomicWaker,
}

#[derive(Default)]
struct Queued {
    /// Waiting, oldest first.
    waiting: std::collections::VecDeque<Envelope>,
    /// An empty queue with its capacity, handed out with the next burst.
    spare: std::collections::VecDeque<Envelope>,
}

impl Parcels {
    /// The most envelopes a kept queue has room for (about 12 KiB).
    const KEEP: usize = 256;

    /// Queues `env`, or joins it to a batch that waits for the same input (no wake-up then:
    /// the actor has one coming).
    fn post(&self, env: Envelope) -> Posted {
        let mut q = self.lock();
        match join_waiting(q.waiting.iter_mut().rev(), env) {
            Ok(spent) => {
                drop(q);
                // Typed: its vector and box both go home.
                if let Some(spent) = spent {
                    spent.release();
                }
                Posted::Joined
            }
            Err(env) => {
                q.waiting.push_back(env);
                drop(q);
                self.waker.wake();
                Posted::Queued
            }
        }
    }

    /// Gives back a burst's queue, emptied, for reuse, unless it grew past
    /// [`Parcels::KEEP`] (an idle agent keeps little, whatever bursts it saw).
    fn recycle(&self, burst: std::collections::VecDeque<Envelope>) {
        debug_assert!(burst.is_empty());
        if burst.capacity() > Self::KEEP {
            return;
        }
        let mut q = self.lock();
        if burst.capacity() > q.spare.capacity() {
            q.spare = burst;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // A panic while holding the lock leaves a valid queue (push, swap).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything posted to an actor since it last looked, oldest first.
struct Burst(std::collections::VecDeque<Envelope>);

/// The actor's side of its [`Parcels`]: one [`Burst`] whenever something waits; never ends.
struct ParcelStream(Arc<Parcels>);

impl futures_util::Stream for ParcelStream {
    type Item = Burst;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Burst>> {
        // Registered before the look: a post after it wakes the task again.
        self.0.waker.register(cx.waker());
        let mut q = self.0.lock();
        if q.waiting.is_empty() {
            return std::task::Poll::Pending;
        }
        let spare = std::mem::take(&mut q.spare);
        std::task::Poll::Ready(Some(Burst(std::mem::replace(&mut q.waiting, spare))))
    }
}

/// One agent's host and the run's bookkeeping around it, whichever executor drives it: an
/// actix actor on a worker ([`AgentActor`]) or the thread that delivers its input
/// ([`direct`]).
struct Tended {
    index: usize,
    host: Host,
    shared: Arc<Shared>,
    finished: bool,
    /// This is a source counted in `Shared::blocked_sources`.
    counted_blocked: bool,
    /// This agent has an entry in `Shared::stalls`.
    listed_stalled: bool,
    /// The description round of that entry.
    stall_written: u64,
    /// The readers that entry names (`Stall::readers`).
    readers_written: Vec<usize>,
    /// The readers of its blocked links now, to compare (kept for its allocation).
    readers_now: Vec<usize>,
    /// Its own mailbox (for `Shared::stalls`).
    mailbox: Arc<dyn Mailbox>,
    /// This agent waits on a shared-memory ring and is counted in `Shared::active_sources`:
    /// the run is not quiescent while another process may still make room.
    counted_ring_wait: bool,
    /// Of that wait, a link no ring shows (counted in `Shared::off_ring_waits`).
    counted_off_ring: bool,
    /// Listed in [`Shared::timers`].
    counted_timer: bool,
    /// The step to book was a timer's.
    timer_fired: bool,
    /// Listed in [`Shared::remote_holders`].
    counted_remote_hold: bool,
    /// The agent's timer last scheduled (see `Inputs::wake_at`).
    timer_set: Option<Duration>,
}

/// What the executor must do after [`Tended::after`].
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Go on.
    Continue,
    /// Call [`Tended::timer_fired`] with this time after this delay.
    Timer { delay: Duration, at: Duration },
    /// The agent failed (the run is failing): take nothing more in.
    Stop,
}

impl Tended {
    fn new(index: usize, host: Host, shared: Arc<Shared>, mailbox: Arc<dyn Mailbox>) -> Tended {
        Tended {
            index,
            host,
            shared,
            finished: false,
            counted_blocked: false,
            listed_stalled: false,
            stall_written: 0,
            readers_written: Vec::new(),
            readers_now: Vec::new(),
            mailbox,
            counted_ring_wait: false,
            counted_off_ring: false,
            counted_timer: false,
            timer_fired: false,
            counted_remote_hold: false,
            timer_set: None,
        }
    }

    /// Takes one envelope in; a forced close of an agent that still holds data it cannot send
    /// is a stall.
    fn accept(&mut self, env: Envelope) -> Result<(), Error> {
        let forced = matches!(env, Envelope::ForceClose);
        self.guarded(|host| {
            host.accept(env)?;
            if forced && !host.is_done() {
                let stalled = host.stalled();
                if !stalled.is_empty() {
                    return Err(Error::Stalled {
                        detail: stalled.join("; "),
                    });
                }
            }
            Ok(())
        })
    }

    /// Steps the agent if it has something to do.
    fn step(&mut self) -> Result<(), Error> {
        self.guarded(|host| host.run())
    }

    /// [`step`](Self::step), returning between two of the host's steps once `yield_now` is
    /// set ([`Host::run_yielding`]): the caller steps it again.
    fn step_yielding(&mut self, yield_now: &AtomicBool) -> Result<(), Error> {
        self.guarded(|host| host.run_yielding(yield_now))
    }

    /// The timer asked for at `at` fired: marks the agent for a step if it is still due.
    /// Returns whether it was.
    fn timer_due(&mut self, at: Duration) -> Result<bool, Error> {
        if self.timer_set == Some(at) {
            self.timer_set = None;
        }
        let due = self.guarded(|host| Ok(host.fire_timer_if_due()))?;
        self.timer_fired |= due;
        Ok(due)
    }

    /// The timer asked for at `at` fired: steps the agent if it is still due.
    fn timer_fired(&mut self, at: Duration) -> Result<(), Error> {
        if self.timer_due(at)? {
            self.step()
        } else {
            Ok(())
        }
    }

    /// Books what the last piece of work left: a failure, a timer to arm, a source blocked or
    /// not, a stall description, the agent's end. A panic in that bookkeeping (a defect of
    /// the runtime) fails the run, naming the agent, as one in its step would: it runs on
    /// whatever thread stepped the agent (a worker, a source's thread, a ring's feeder), which
    /// would otherwise die with the agent's end unbooked, and the run would wait for ever.
    fn after(&mut self, result: Result<(), Error>) -> Next {
        if let Err(e) = result {
            self.shared.fail(e);
            return Next::Stop;
        }
        let booked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.book()));
        booked.unwrap_or_else(|p| {
            self.shared.fail(self.runtime_panic(&*p));
            Next::Stop
        })
    }

    /// The failure of a panic in the runtime's own code while it tended this agent.
    fn runtime_panic(&self, payload: &(dyn std::any::Any + Send)) -> Error {
        Error::Panic {
            agent: self.host.name.to_string(),
            message: format!("in the runtime: {}", crate::error::panic_message(payload)),
        }
    }

    /// [`after`](Self::after) once the work succeeded.
    fn book(&mut self) -> Next {
        #[cfg(test)]
        tests::fault("book", &self.host.name);
        let mut next = Next::Continue;
        if let Some(at) = self.host.timer() {
            // Only a request earlier than the timer already armed arms another: one moved
            // later at every step (an idle timeout counted from the last element) is looked
            // at again when the armed one fires, instead of arming a timer per step.
            if self.timer_set.is_none_or(|set| at < set) && !self.host.is_done() {
                self.timer_set = Some(at);
                #[cfg(test)]
                tests::armed(&self.host.name);
                let delay = at.saturating_sub(self.host.clock.now());
                next = Next::Timer { delay, at };
            }
        }
        let ring_wait = self.host.waits_on_ring() && !self.host.is_done();
        if ring_wait != self.counted_ring_wait {
            self.counted_ring_wait = ring_wait;
            if ring_wait {
                self.shared.ring_waits.fetch_add(1, Ordering::SeqCst);
                self.shared.active_sources.fetch_add(1, Ordering::SeqCst);
            } else {
                self.shared.active_sources.fetch_sub(1, Ordering::SeqCst);
                self.shared.ring_waits.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let off_ring = ring_wait && self.host.waits_off_ring();
        if off_ring != self.counted_off_ring {
            self.counted_off_ring = off_ring;
            if off_ring {
                self.shared.off_ring_waits.fetch_add(1, Ordering::SeqCst);
            } else {
                self.shared.off_ring_waits.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let blocked_now = self.host.is_blocked() && !self.host.is_done();
        // Written when the agent becomes blocked, when a new round asks (see
        // `Shared::stall_round`), and when, still blocked, it comes to wait on other readers
        // (what it waits on decides which timers hold the verdict: `Shared::timers_hold`);
        // not at every message while it stays blocked on the same ones (a `format!` per
        // blocked link, under a lock the whole run shares).
        let round = self.shared.stall_round.load(Ordering::SeqCst);
        self.readers_now.clear();
        if blocked_now {
            self.host.blocked_readers_into(&mut self.readers_now);
        }
        if blocked_now
            && (!self.listed_stalled
                || self.stall_written != round
                || self.readers_now != self.readers_written)
        {
            let stall = Stall {
                mailbox: Arc::clone(&self.mailbox),
                round,
                what: self.host.stalled(),
                readers: self.readers_now.clone(),
            };
            let mut stalls = self.shared.stalls.lock().unwrap_or_else(|p| p.into_inner());
            stalls.insert(self.index, stall);
            self.stall_written = round;
            self.readers_written.clone_from(&self.readers_now);
            self.listed_stalled = true;
        } else if !blocked_now && self.listed_stalled {
            let mut stalls = self.shared.stalls.lock().unwrap_or_else(|p| p.into_inner());
            stalls.remove(&self.index);
            self.listed_stalled = false;
        }
        if self.host.is_source() {
            let blocked = self.host.is_blocked() && !self.host.is_done();
            if blocked != self.counted_blocked {
                self.counted_blocked = blocked;
                if blocked {
                    self.shared.blocked_sources.fetch_add(1, Ordering::SeqCst);
                } else {
                    self.shared.blocked_sources.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        if self.host.is_done() && !self.finished {
            self.finished = true;
            if self.host.is_source() {
                self.shared.active_sources.fetch_sub(1, Ordering::SeqCst);
            }
            if self.shared.hosts_left.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.shared.stop_system();
            }
        }
        // Timers and the stall check (see `Shared::timers_hold`).
        let fired = std::mem::take(&mut self.timer_fired);
        let timer = self.timer_set.is_some() && !self.host.is_done();
        let changed = timer != self.counted_timer;
        if changed {
            self.counted_timer = timer;
            let mut timers = self.shared.timers.lock().unwrap_or_else(|p| p.into_inner());
            if timer {
                timers.insert(self.index);
            } else {
                timers.remove(&self.index);
            }
        }
        if self
            .shared
            .topology
            .get()
            .is_some_and(|t| t.remote_in[self.index])
        {
            let holds = self.host.holds_input() && !self.host.is_done();
            if holds != self.counted_remote_hold {
                self.counted_remote_hold = holds;
                let mut holders = self
                    .shared
                    .remote_holders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if holds {
                    holders.insert(self.index);
                } else {
                    holders.remove(&self.index);
                }
            }
        }
        if fired {
            self.shared.timer_since_round.store(true, Ordering::SeqCst);
        }
        if fired || (changed && !timer) {
            // What is blocked now may be a stall; nothing else would look again (a timer's
            // step is no envelope in flight).
            self.shared.check_quiescent();
        }
        next
    }

    /// Runs host work, turning a panic anywhere in it (not only in the agent's step, which the
    /// host already catches: in a link, a transport, the runtime itself) into a failure of the
    /// run that names the agent, instead of a dead thread and a hang.
    fn guarded<R>(&mut self, work: impl FnOnce(&mut Host) -> Result<R, Error>) -> Result<R, Error> {
        let host = &mut self.host;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(host)))
            .unwrap_or_else(|p| Err(self.runtime_panic(&*p)))
    }
}

/// An agent as an actix actor on its worker (or named, or own) thread.
struct AgentActor {
    tended: Tended,
    /// Where its envelopes wait (see [`ActorMailbox`]); read as a stream once started.
    parcels: Arc<Parcels>,
    /// Envelopes taken in whose step has not run yet (see the `StreamHandler<Burst>` impl).
    accepted: usize,
}

impl AgentActor {
    fn after(&mut self, result: Result<(), Error>, ctx: &mut Context<Self>) {
        match self.tended.after(result) {
            Next::Continue => {}
            Next::Stop => ctx.stop(),
            Next::Timer { delay, at } => {
                ctx.run_later(delay, move |act, ctx| {
                    let r = act.tended.timer_fired(at);
                    act.after(r, ctx);
                });
            }
        }
    }
}

impl Actor for AgentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.add_stream(ParcelStream(Arc::clone(&self.parcels)));
        self.contained(ctx, |act, ctx| {
            let r = act.tended.step();
            act.after(r, ctx);
            act.tended.shared.handled();
        });
    }
}

/// Adaptive batching: every envelope that waits is taken in at once, then the host steps
/// once: data that queued up while this agent or its thread was busy goes as one step, one
/// batch out, one wake-up downstream per burst instead of per envelope, and no added latency
/// when the stream is quiet (the step runs as soon as the one envelope is in).
impl StreamHandler<Burst> for AgentActor {
    fn handle(&mut self, burst: Burst, ctx: &mut Context<Self>) {
        self.contained(ctx, |act, ctx| act.take_burst(burst, ctx));
    }

    /// Never called: the stream of parcels never ends (it is dropped with the actor).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl AgentActor {
    /// Runs `work`; a panic in it (the agent's own are caught in its host already: this is
    /// a defect of the runtime, in the quiescence check after a burst, say) fails the run
    /// naming the agent and stops the actor, where tokio would end the actor's task quietly:
    /// the run then waited for it for ever, or ended as if nothing had happened (a test saw
    /// a panic after the last burst reported as success).
    fn contained(
        &mut self,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut Self, &mut Context<Self>),
    ) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self, ctx)));
        if let Err(p) = done {
            self.tended.shared.fail(self.tended.runtime_panic(&*p));
            ctx.stop();
        }
    }

    /// Takes a burst of envelopes in, then steps once (see the `StreamHandler` impl).
    fn take_burst(&mut self, Burst(mut envs): Burst, ctx: &mut Context<Self>) {
        let mut failed = None;
        for env in envs.drain(..) {
            // Counted as handled only after the step that takes it in: until then the run is
            // not quiescent. After a protocol violation the rest is only counted.
            self.accepted += 1;
            if failed.is_none() {
                if let Err(e) = self.tended.accept(env) {
                    failed = Some(e);
                }
            }
        }
        self.parcels.recycle(envs);
        let r = match failed {
            Some(e) => Err(e),
            None => self.tended.step(),
        };
        self.after(r, ctx);
        self.settle_accepted();
    }

    /// Marks the envelopes taken in since the last step as handled.
    fn settle_accepted(&mut self) {
        #[cfg(test)]
        tests::fault("settle", &self.tended.host.name);
        self.tended
            .shared
            .handled_many(std::mem::take(&mut self.accepted));
    }
}

/// A running application. See the [module docs](self).
///
/// [`join`](Running::join) it to wait for its end and see how it ended. Dropping it without
/// `join` stops the run (as [`stop`](Running::stop)) and waits, within the drain's bound, for
/// it to end; its error, if any, is only logged.
#[must_use = "a run is stopped when its Running is dropped: join it to wait for its end"]
pub struct Running {
    app: String,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
    inputs: HashMap<PortId, Box<dyn Any + Send>>,
    /// The name of every stream of the graph, for errors about them.
    stream_names: HashMap<PortId, String>,
    /// The inputs ([`Graph::input`]) whose agent runs in another process than this one, with
    /// that process and this one's name: their sender is taken there, not here.
    elsewhere: HashMap<PortId, (String, String)>,
    thread: Option<JoinHandle<Result<(), Error>>>,
    /// The children, when this is the starter of a multi-process run.
    children: Option<Children>,
    /// What Ctrl-C and SIGTERM do to this run, for as long as it is on (see
    /// [`launch::signals`]); `None` if it does not handle them.
    _signals: Option<signals::Registration>,
    shared: Option<Arc<Shared>>,
    /// The live view this process serves itself ([`Graph::serve_metrics`]); stops when the
    /// run is joined (or the handle dropped).
    serving: Option<SelfServe>,
}

/// The starter's view of its children.
struct Children {
    list: Arc<Vec<ChildProcess>>,
    segments: Arc<Segments>,
    /// The first failure of a child, set by the supervisor thread.
    failure: Arc<Mutex<Option<Error>>>,
    supervisor: Option<JoinHandle<Vec<launch::Exit>>>,
    /// The thread that bounds the drain (see [`bound_drain`]).
    drain_bound: Option<JoinHandle<()>>,
    /// Which children the drain's bound killed, after a failure (then a note on that error).
    killed: Arc<Mutex<Option<String>>>,
    /// A drain was asked for (a signal, [`Running::stop`]): it is bounded from then on.
    draining: Arc<AtomicBool>,
    /// Each child's latest report of its counters, when the program serves its live view
    /// ([`Graph::serve_metrics`]): by process name.
    reports: ChildReports,
    /// The thread that looks for a stall across the processes (see [`watch_stalls`]).
    stall_watch: Option<JoinHandle<()>>,
}

/// A starter's stall probes: where to ask each child, and what each last answered (see
/// [`watch_stalls`]).
#[derive(Default)]
struct Probes {
    /// Each child's name and the starter's end of its control channel.
    asks: Mutex<Vec<(String, std::os::unix::net::UnixStream)>>,
    /// Each child's latest answer, by name: its round, and what it said (`None`: busy).
    answers: Mutex<HashMap<String, (u64, launch::QuietAnswer)>>,
    /// Notified at every answer.
    answered: std::sync::Condvar,
}

/// Looks for a stall whose halves are in different processes of this host (in one process,
/// [`Shared::check_quiescent`] finds it). While the starter's own part is quiet
/// ([`Shared::quiet_across`]), every [`launch::STALL_PROBE_EVERY`] it asks every running child
/// ([`launch::probe_line`]) whether its part is quiet too; a round in which all are, and no
/// ring moved while the answers came, is a reading. Each probe carries what the previous
/// round's answers said may free a writer ([`launch::Quiet::frees`]): a process with a timer
/// that leads to one of them is not quiet. Two equal readings in a row (no process posted
/// anything, no ring moved in between, the same agents that may free a writer) are a stall:
/// the run fails with [`Error::Stalled`], naming what every process holds stuck, and the
/// children are asked to stop. Ends when the run stops or fails, or every child has ended.
fn watch_stalls(
    probes: &Probes,
    list: &[ChildProcess],
    local: &Shared,
    gauges: &transport::RingGauges,
    failure: &Mutex<Option<Error>>,
) {
    let mut last: Option<launch::StallReading> = None;
    let mut round = 0u64;
    // What the last round's quiet answers said may free a writer, sent with the next probe.
    let mut frees: Vec<usize> = Vec::new();
    // The last round each child was asked.
    let mut asked_last: HashMap<String, u64> = HashMap::new();
    // Ends: the run stops or fails, or every child ended; each pass sleeps STALL_PROBE_EVERY
    // and waits at most STALL_ANSWER_WITHIN.
    loop {
        std::thread::sleep(launch::STALL_PROBE_EVERY);
        if local.stop.load(Ordering::SeqCst)
            || local.failed.load(Ordering::SeqCst)
            || failure.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            || list.iter().all(|c| !c.running())
        {
            return;
        }
        let listed = (frees.len() <= launch::MAX_PROBE_FREES).then_some(frees.as_slice());
        let Some(mine) = local.quiet_across(listed) else {
            last = None;
            continue;
        };
        // A child that did not answer the last probe it was asked (a stopped one) is asked
        // nothing more until it does: probes never pile up in a channel nobody reads.
        let owing = {
            let answers = probes.answers.lock().unwrap_or_else(|p| p.into_inner());
            asked_last.iter().any(|(name, r)| {
                list.iter().any(|c| &c.name == name && c.running())
                    && answers.get(name).is_none_or(|(answered, _)| answered < r)
            })
        };
        if owing {
            last = None;
            continue;
        }
        round += 1;
        let rings = gauges.positions();
        let asked: Vec<String> = {
            let asks = probes.asks.lock().unwrap_or_else(|p| p.into_inner());
            let line = launch::probe_line(round, &frees);
            asks.iter()
                .filter(|(name, _)| list.iter().any(|c| &c.name == name && c.running()))
                .filter(|(_, out)| (&mut &*out).write_all(line.as_bytes()).is_ok())
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in &asked {
            asked_last.insert(name.clone(), round);
        }
        let deadline = Instant::now() + launch::STALL_ANSWER_WITHIN;
        let mut answers = probes.answers.lock().unwrap_or_else(|p| p.into_inner());
        // Ends when every child asked answered this round, or at the deadline.
        while asked
            .iter()
            .any(|n| answers.get(n).is_none_or(|(r, _)| *r != round))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            answers = probes
                .answered
                .wait_timeout(answers, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut posted = std::collections::BTreeMap::new();
        posted.insert(launch::MAIN_PROCESS.to_string(), mine.posted);
        let mut stuck = mine.stuck.clone();
        let mut quiet = vec![&mine];
        let mut all_quiet = true;
        for name in &asked {
            match answers.get(name) {
                Some((r, Some(q))) if *r == round => {
                    posted.insert(name.clone(), q.posted);
                    stuck.extend(q.stuck.iter().cloned());
                    quiet.push(q);
                }
                _ => all_quiet = false,
            }
        }
        // Kept even from a round not all quiet: a timer that leads to one of them is busy
        // in the next.
        frees = launch::frees_of(quiet);
        drop(answers);
        // A child that ended meanwhile, or was never asked, is in neither reading: a child
        // that ends changes the set of processes asked, and with it the reading.
        if !all_quiet || gauges.positions() != rings {
            last = None;
            continue;
        }
        let reading = launch::StallReading {
            posted,
            rings,
            frees: frees.clone(),
        };
        if last.as_ref() != Some(&reading) || stuck.is_empty() {
            last = Some(reading);
            continue;
        }
        let mut seen = std::collections::BTreeSet::new();
        stuck.retain(|s| seen.insert(s.clone()));
        let error = Error::Stalled {
            detail: stuck.join("; "),
        };
        // Recorded as the cause before anything stops: the children that fail because of it
        // (their rings marked failed) are its consequences.
        {
            let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_some() {
                return;
            }
            *first = Some(error.clone());
        }
        local.fail(error);
        launch::signal_all(list, Signal::SIGTERM);
        return;
    }
}

/// The children's latest reports, by process name (see [`report_channel`]).
type ChildReports = Arc<Mutex<std::collections::BTreeMap<String, crate::observe::ProcessSample>>>;

/// Gives child `process`'s command a control channel on which it reports its counters every
/// `interval` (as a launcher's children do; the starter says `go` as soon as the child is
/// ready, and is no launcher: the child is not "supervised", nothing restarts). Returns the
/// starter's end, whose `hello` is written already.
fn report_channel(
    command: &mut launch::ChildCommand,
    interval: Option<Duration>,
) -> Result<std::os::unix::net::UnixStream, Error> {
    let broken = |e: std::io::Error| Error::Runtime {
        detail: format!("cannot make a control channel for a child process: {e}"),
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(broken)?;
    let nonce = launch::control_nonce();
    (&ours)
        .write_all(launch::hello_lines(&nonce).as_bytes())
        .map_err(broken)?;
    command.env.push((
        launch::ENV_CONTROL_FD.into(),
        launch::CONTROL_FD.to_string(),
    ));
    command.env.push((launch::ENV_CONTROL_NONCE.into(), nonce));
    // No interval: no reports (`0`), the channel serves the stall probes only.
    command.env.push((
        launch::ENV_METRICS_INTERVAL_MS.into(),
        interval.map_or(0, |i| i.as_millis().max(1)).to_string(),
    ));
    command.control = Some(theirs.into());
    Ok(ours)
}

/// Reads child `process`'s (pid `pid`) control channel until it closes: `ready` is answered
/// at once, with `go`, or `stop` if a drain was asked for while it started (`gate`: its
/// `ready` and `term_sent` flags, see [`launch::drain_at_ready`]), each `metrics <json>` is kept in `reports`, each answer to a stall probe
/// in `probes`. Nothing the child says is trusted: lines are bounded, and one not understood
/// is warned about once and skipped.
fn read_reports(
    channel: std::os::unix::net::UnixStream,
    process: &str,
    pid: u32,
    reports: &ChildReports,
    probes: &Probes,
    gate: &(Arc<AtomicBool>, Arc<AtomicBool>),
) {
    let mut writer = match channel.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut lines = std::io::BufReader::new(channel);
    let mut line = Vec::new();
    let mut warned = false;
    loop {
        match launch::read_line_bounded(&mut lines, &mut line, launch::MAX_METRICS_LINE) {
            Ok(launch::LineRead::Line) => {}
            Ok(launch::LineRead::TooLong) => continue,
            // A last line cut off mid-way (the child died writing it) is not a report.
            Ok(launch::LineRead::End | launch::LineRead::Unterminated) | Err(_) => return,
        }
        let text = String::from_utf8_lossy(&line);
        match text.trim() {
            "ready" => {
                let _ = writer.write_all(launch::drain_at_ready(&gate.0, &gate.1));
            }
            // The same program: the same protocol.
            t if launch::parse_protocol(t).is_some() => {}
            // Only a launcher drains other hosts; a starter's run has one host.
            "drain" => {}
            t => match launch::parse_quiet(t) {
                Some((round, said)) => {
                    probes
                        .answers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(process.to_string(), (round, said));
                    probes.answered.notify_all();
                }
                None => match t
                    .strip_prefix("metrics ")
                    .map(serde_json::from_str::<crate::observe::ProcessSample>)
                {
                    Some(Ok(mut sample)) => {
                        sample.pid = pid;
                        reports
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(process.to_string(), sample);
                    }
                    _ => {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(
                                "process '{process}' (pid {pid}) sent a control line that is not \
                             understood: skipped (warned once)"
                            );
                        }
                    }
                },
            },
        }
    }
}

impl Running {
    /// Every counter, now.
    pub fn metrics(&self) -> Metrics {
        self.registry.snapshot()
    }

    /// Where the live view is served, if the graph asked for it
    /// ([`Graph::serve_metrics`](crate::Graph::serve_metrics)): the port chosen, if 0 was
    /// asked for.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.serving.as_ref().map(|s| s.server.local_addr())
    }

    /// The sender of an input stream made with [`Graph::input`]. Each input's sender can be taken
    /// once; inputs whose sender is never taken are closed by [`Running::join`].
    ///
    /// In an application of several processes every process runs the program, but only the
    /// process that holds the input's agent (`main` unless it was placed elsewhere) can take its
    /// sender: elsewhere this fails with an error naming that process, which the program
    /// skips (see `tests/processes.rs`, `input_elsewhere`).
    pub fn input<T: Element>(&mut self, stream: &Stream<T>) -> Result<InputSender<T>, Error> {
        self.inputs
            .remove(&stream.id)
            .and_then(|b| b.downcast::<InputSender<T>>().ok())
            .map(|b| *b)
            .ok_or_else(|| {
                let what = match (
                    self.stream_names.get(&stream.id),
                    self.elsewhere.get(&stream.id),
                ) {
                    (Some(name), Some((there, here))) => format!(
                        "input '{name}' is fed in process '{there}', not in this process \
                         ('{here}'): every process runs the program, and only the one that \
                         holds the input's agent takes its sender (an error here is expected: \
                         skip the input in this process)"
                    ),
                    (Some(name), None) => format!(
                        "stream '{name}' is not an input made with Graph::input, or its sender \
                         was already taken"
                    ),
                    (None, _) => "the stream is not one of this application's".to_string(),
                };
                Error::Runtime {
                    detail: format!("application '{}': {what}", self.app),
                }
            })
    }

    fn fail_handle(&self) -> Option<Arc<Shared>> {
        self.shared.clone()
    }

    /// Asks every source to stop: each ends its stream after what it already emitted, and the
    /// application drains and ends normally. In a multi-process starter this also asks every
    /// child process to drain (as Ctrl-C does).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(children) = &self.children {
            children.draining.store(true, Ordering::SeqCst);
            launch::signal_all(&children.list, Signal::SIGTERM);
        }
    }

    /// Waits for the end of the run (of every process, in a multi-process starter); returns the
    /// final counters of this process, or the first failure (naming the process that failed).
    pub fn join(mut self) -> Result<Metrics, Error> {
        self.end()
    }

    /// What [`join`](Self::join) does: waits for the end, reaps the children, removes the
    /// rings. Once: it takes the runtime thread's handle.
    fn end(&mut self) -> Result<Metrics, Error> {
        self.inputs.clear(); // dropping untaken senders ends those inputs
        let thread = self.thread.take().expect("joined once");
        let mut result = thread.join().unwrap_or_else(|p| {
            Err(Error::Runtime {
                detail: format!(
                    "the runtime thread panicked: {}",
                    crate::error::panic_message(&*p)
                ),
            })
        });
        if let Some(mut children) = self.children.take() {
            // Whichever failed first is the cause: a child failure recorded before this process's
            // own part ended, or one that reached this part through a link (a ring marked by
            // its failed writer, a dead peer) before the child was reaped; else this process's
            // error (children stopped because of it fail after).
            let by_peer = self
                .shared
                .as_ref()
                .and_then(|s| *s.failed_by_peer.lock().unwrap_or_else(|p| p.into_inner()));
            let child_first = by_peer.is_some()
                || children
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some();
            if result.is_err() {
                // This process failed: ask the others to stop; the drain's bound (see
                // `bound_drain`) makes sure they do. Not the child whose failure reached this
                // part first: it is ending by itself, saying why (a SIGTERM could cut that
                // short); the drain's bound kills it if it hangs.
                let others: Vec<&ChildProcess> = children
                    .list
                    .iter()
                    .filter(|c| by_peer != Some(c.pid))
                    .collect();
                launch::signal_each(&others, Signal::SIGTERM);
            }
            let exits = children
                .supervisor
                .take()
                .and_then(|sup| sup.join().ok())
                .unwrap_or_default();
            if let Some(bound) = children.drain_bound.take() {
                let _ = bound.join();
            }
            if let Some(watch) = children.stall_watch.take() {
                let _ = watch.join();
            }
            let first_reaped = children
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            // The child whose failure reached this part through a link is the cause, even if
            // another child, failing because of this part's failure, was reaped before it.
            let failure = by_peer
                .and_then(|pid| exits.iter().find(|e| e.pid == pid && !e.success()))
                .map(launch::Exit::to_error)
                .or(first_reaped);
            children.segments.remove_all();
            if let Some(f) = failure {
                if child_first || result.is_ok() {
                    result = Err(f);
                }
            }
            // A note on whichever error was chosen as the cause.
            if let Some(note) = children
                .killed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                result = result.map_err(|e| with_note(e, &note));
            }
        }
        result.map(|()| self.registry.snapshot())
    }
}

/// Dropped without [`join`](Running::join) (by mistake, or by a panic that unwinds past it):
/// the run is stopped as [`stop`](Running::stop) does and drained, and ended as `join` ends it
/// (children reaped, rings removed), its error logged since nobody can see it. A run that has
/// not ended within the drain's bound (`IOTSTREAM_DRAIN_TIMEOUT_MS`, default 10 s: an agent
/// holding up the drain) is left to end by itself, with a warning: a drop does not wait on it
/// for ever.
impl Drop for Running {
    fn drop(&mut self) {
        let Some(thread) = &self.thread else {
            return; // joined
        };
        self.stop();
        let bound = launch::drain_timeout().unwrap_or(launch::DRAIN_GRACE);
        let deadline = std::time::Instant::now() + bound;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !thread.is_finished() {
            tracing::warn!(
                "application '{}': its Running handle was dropped without join; the run was \
                 stopped, but it has not ended {} ms later: left to end by itself",
                self.app,
                bound.as_millis()
            );
            return;
        }
        if let Err(e) = self.end() {
            tracing::error!(
                "application '{}': its Running handle was dropped without join; the run \
                 ended with: {e}",
                self.app
            );
        }
    }
}

type Ready = Result<(Arc<Registry>, HashMap<PortId, Box<dyn Any + Send>>), Error>;

impl Graph {
    /// Runs the application until it ends; returns its final counters or the first error. See
    /// [`runtime`](crate::runtime).
    ///
    /// `run` does not always return, so clean-up written after it does not always run:
    ///
    /// - Under the `iotstream` launcher, the program is first started only to describe its
    ///   graph (`iotstream run`, `graph` and `check` all do this): there `run` writes the
    ///   description and ends the process (see [`start`](Graph::start)).
    /// - A process can be killed: by the launcher (a restart, a drain that outlasts
    ///   `drain_timeout_ms`, its own end), or by a second Ctrl-C or SIGTERM.
    ///
    /// And `main` runs in every process of the application (each builds the same graph), and
    /// in that describe step, so what it does before `run` is done each time. So make what must
    /// not outlive the process something the system removes with it (an unnamed temporary
    /// file, such as `tempfile::tempfile()` makes, is read by the path
    /// `/proc/self/fd/N`), or create it in an agent that uses it, and remove it in that
    /// agent's [`finish`](crate::Agent::finish); never rely on code after `run` for clean-up
    /// that must happen.
    pub fn run(self) -> Result<Metrics, Error> {
        self.start()?.join()
    }

    /// Starts the application and returns at once.
    ///
    /// Under the `iotstream` launcher, the deployment it passes is applied first (placement,
    /// connection options); asked to describe itself, the program writes its graph's
    /// description for the launcher and exits here (see [`crate::launcher`]).
    pub fn start(mut self) -> Result<Running, Error> {
        let deployed = launch::deployment_from_env().and_then(|d| {
            if let Some(d) = d {
                let plan = d.plan(&self.info())?;
                self.apply_plan(&plan);
                self.network = Some((d.network.clone(), d.digest));
                if let Some(b) = &d.broker {
                    self.replace_broker(b.settings()?);
                }
            }
            Ok(())
        });
        if let Some(path) = launch::describe_request() {
            let checked = deployed.and_then(|()| self.validate());
            launch::describe::write_description(&self, checked, &path);
        }
        deployed?;
        self.validate()?;
        // Read by the rings' watcher threads, which cannot report a bad value: checked here.
        crate::transport::progress_warn_after().map_err(|detail| Error::Runtime { detail })?;
        match launch::role()? {
            Role::Starter => {
                // The live view the program serves itself: bound before anything starts, so
                // that an address that cannot be served fails the start with nothing to undo.
                let serving = match self.serve_metrics.take() {
                    Some((addr, options)) => Some(SelfServe::bind(&addr, options, self.info())?),
                    None => None,
                };
                let processes = self.processes();
                let shm = self
                    .edges
                    .iter()
                    .any(|e| self.resolve(e) != Resolved::Local);
                let used =
                    (0..self.agents.len()).any(|i| self.process_of(i) != launch::MAIN_PROCESS);
                let mut running = if !shm && !used {
                    // The drain's bound, for a run that takes signals (only a signal's drain
                    // is bounded here): read before anything starts, so that a malformed
                    // value fails with nothing to undo.
                    let drain = if self.handle_signals {
                        Some(launch::drain_timeout()?)
                    } else {
                        None
                    };
                    let mut running = start_part(self, None, None)?;
                    if let Some(drain) = drain {
                        // Ctrl-C, SIGTERM and SIGHUP drain it as they drain a launched
                        // application; a second one ends the process at once (128 + the
                        // signal).
                        let stop = Arc::clone(&running.stop);
                        let registered = signals::register(OnSignal {
                            terminal: true,
                            first: Box::new(move |sig| {
                                tracing::warn!(
                                    "signal {sig}: draining (send it again to stop at once)"
                                );
                                stop.store(true, Ordering::SeqCst);
                            }),
                            again: Again::Exit(Box::new(|| {})),
                            // A drain that outlasts IOTSTREAM_DRAIN_TIMEOUT_MS (a sink that
                            // cannot deliver, a broker that is down) ends the process.
                            bound: Some(signals::DrainBound {
                                bound: drain,
                                grace: Duration::ZERO,
                                draining: {
                                    let part = running.shared.clone();
                                    Arc::new(move || part.as_deref().is_some_and(still_draining))
                                },
                            }),
                        });
                        match registered {
                            Ok(r) => running._signals = Some(r),
                            Err(e) => {
                                running.stop();
                                let _ = running.join();
                                return Err(e);
                            }
                        }
                    }
                    running
                } else {
                    let reports = serving.as_ref().map(|s| s.interval);
                    start_starter(self, processes, reports)?
                };
                if let Some(serving) = serving {
                    if let Err(e) = serving.start(&mut running) {
                        running.stop();
                        let _ = running.join();
                        return Err(e);
                    }
                }
                Ok(running)
            }
            Role::Member {
                process,
                run,
                fingerprint,
            } => {
                // `ps -o comm` and `top` show `<app>/<process>` from now on.
                launch::name_this_process(&self.name, &process);
                if !self.processes().contains(&process) {
                    return Err(Error::Runtime {
                        detail: format!(
                            "this program was started as process '{process}' of application '{}', which has no such process",
                            self.name
                        ),
                    });
                }
                if self.fingerprint() != fingerprint {
                    let (other, hint) = if launch::supervised_by_launcher() {
                        (
                            "the one the launcher was described",
                            " (a process's own `env` in the deployment file must not change it)",
                        )
                    } else {
                        ("the starter's", "")
                    };
                    return Err(Error::Runtime {
                        detail: format!(
                            "process '{process}' of application '{}' built a different graph than {other} (agents, ports, placement or connections differ): the graph must be built the same way in every process{hint}",
                            self.name
                        ),
                    });
                }
                if launch::supervised_by_launcher() {
                    // Under the launcher, RUST_LOG works without code (if the program installed
                    // no subscriber of its own).
                    crate::logging::init_logging();
                }
                if let Some((addr, _)) = &self.serve_metrics {
                    tracing::debug!(
                        "process '{process}' does not serve the live view on {addr}: whoever \
                         started the processes (the starter, or the launcher's --metrics) does"
                    );
                }
                let stop = Arc::new(AtomicBool::new(false));
                // Always, whatever `handle_signals` says: a member's signals are its starter's
                // drain request, not the user's. SIGINT and SIGHUP (a terminal's Ctrl-C and
                // hang-up, to the whole process group) are swallowed, so that only the starter's
                // SIGTERM drains it.
                // Under the launcher a second SIGTERM (a service manager signalling the whole
                // group, say) changes nothing: the launcher decides when to kill.
                let first = {
                    let stop = Arc::clone(&stop);
                    move |sig: i32| {
                        tracing::warn!("signal {sig}: draining");
                        stop.store(true, Ordering::SeqCst);
                    }
                };
                let again = if launch::supervised_by_launcher() {
                    Again::Nothing
                } else {
                    Again::Exit(Box::new(|| {}))
                };
                let registration = signals::register(OnSignal {
                    terminal: false,
                    first: Box::new(first),
                    again,
                    // Its starter or launcher bounds the drain (and kills it).
                    bound: None,
                })?;
                let app = self.name.clone();
                let mut running = start_part(self, Some(process), Some((app, run, stop)))?;
                running._signals = Some(registration);
                Ok(running)
            }
        }
    }
}

/// The live view a program serves itself ([`Graph::serve_metrics`]): the server, and a
/// thread that reads this process's counters (and its children's liveness) every interval
/// into an [`Aggregator`](crate::observe::Aggregator).
struct SelfServe {
    server: crate::observe::Server,
    view: Arc<Mutex<crate::observe::Aggregator>>,
    interval: Duration,
    /// Dropping the sender ends the thread.
    ticker: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl SelfServe {
    /// Binds the server on `addr` (nothing counted yet: every process "starting").
    fn bind(
        addr: &str,
        options: crate::observe::ServeOptions,
        info: crate::info::GraphInfo,
    ) -> Result<SelfServe, Error> {
        let view = Arc::new(Mutex::new(crate::observe::Aggregator::new(
            info,
            "",
            options.interval,
        )));
        let source: Arc<dyn crate::observe::ViewSource> = view.clone();
        let server = crate::observe::Server::start(addr, options.token.as_deref(), source)?;
        Ok(SelfServe {
            server,
            view,
            interval: options.interval,
            ticker: None,
        })
    }

    /// Reads `running`'s counters now, then every interval, on a thread of its own; hands
    /// itself to `running`.
    fn start(mut self, running: &mut Running) -> Result<(), Error> {
        let registry = Arc::clone(&running.registry);
        let children = running.children.as_ref().map(|c| Arc::clone(&c.list));
        let reports = running.children.as_ref().map(|c| Arc::clone(&c.reports));
        let view = Arc::clone(&self.view);
        let interval = self.interval;
        let (stop, stopped) = mpsc::channel::<()>();
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_status(
                launch::MAIN_PROCESS,
                crate::observe::ProcessStatus::Running,
                std::process::id(),
            );
        let read = move || {
            let sample = crate::observe::sample_this_process(registry.snapshot());
            let mut agg = view.lock().unwrap_or_else(|p| p.into_inner());
            agg.record(launch::MAIN_PROCESS, sample);
            for c in children.iter().flat_map(|l| l.iter()) {
                use crate::observe::ProcessStatus;
                // Shown as running until its waiter reaped it and noted how it ended: a
                // process that just died is not "ended" before anyone knows whether it failed.
                let (status, pid) = if !c.reaped.load(Ordering::SeqCst) {
                    // Asked to drain (Ctrl-C, a stop, a failure elsewhere): draining.
                    if c.term_sent.load(Ordering::SeqCst) {
                        (ProcessStatus::Draining, c.pid)
                    } else {
                        (ProcessStatus::Running, c.pid)
                    }
                } else if c.failed.load(Ordering::SeqCst) {
                    (ProcessStatus::Failed, 0)
                } else {
                    (ProcessStatus::Ended, 0)
                };
                agg.set_status(&c.name, status, pid);
            }
            // The children's latest reports (each taken once: a report is recorded once).
            let latest = reports
                .as_ref()
                .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|p| p.into_inner())));
            for (process, sample) in latest.into_iter().flatten() {
                agg.record(&process, sample);
            }
            agg.tick(std::time::SystemTime::now());
        };
        // The first view is there before `start` returns.
        read();
        let thread = std::thread::Builder::new()
            .name("iotstream metrics".into())
            // Ends when the sender is dropped (or sends).
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    read();
                }
            })
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start the thread that reads the metrics: {e}"),
            })?;
        self.ticker = Some((stop, thread));
        running.serving = Some(self);
        Ok(())
    }
}

impl Drop for SelfServe {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            drop(stop);
            let _ = thread.join();
        }
        // Then `server` drops, which stops it.
    }
}

/// Whether a part whose drain started is still draining: agents not finished and no failure
/// (a failed run is ending on its own).
fn still_draining(part: &Shared) -> bool {
    part.hosts_left.load(Ordering::SeqCst) > 0 && !part.failed.load(Ordering::SeqCst)
}

/// How long after the drain's bound ([`launch::drain_timeout`]) a starter whose own agents
/// still drain ends the process (see `signals::OnSignal::bound`).
const STARTER_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The starter of a multi-process run: rings, children, its own part, supervision.
///
/// With `reports` (the program serves its live view), every child reports its counters every
/// `reports` on a control channel ([`report_channel`]).
fn start_starter(
    graph: Graph,
    processes: Vec<String>,
    reports: Option<Duration>,
) -> Result<Running, Error> {
    let drain = launch::drain_timeout()?;
    let run = RunId::new();
    let app = graph.name.clone();
    let swept = launch::sweep_stale(Some(&app));
    if !swept.removed.is_empty() {
        tracing::warn!(
            "an earlier run of '{app}' ended without cleaning up (its starter died): removed \
             what it left in shared memory ({}), and with it whatever its connections still \
             held",
            swept.removed.join(", ")
        );
    }
    for (name, why) in swept.unproven {
        tracing::warn!("left {name}: {why}");
    }
    let segments = Arc::new(Segments::new(&app, &run)?);
    create_segments(&graph, &run, &segments)?;
    let fingerprint = graph.fingerprint();
    // Each child reports its exit once: the channel never holds more than one per child.
    let (exit_tx, exit_rx) = mpsc::sync_channel(processes.len());
    let mut list = Vec::new();
    let child_reports: ChildReports = Arc::default();
    let probes = Arc::new(Probes::default());
    let stdin_process = graph.stdin_process().map(str::to_string);
    for p in processes.iter().filter(|p| *p != launch::MAIN_PROCESS) {
        let command = launch::ChildCommand::this_program(p).map(|c| {
            let mut c = c.role(&app, p, &run, fingerprint);
            c.stdin = stdin_process.as_deref() == Some(p.as_str());
            c
        });
        let exits = exit_tx.clone();
        let on_exit = move |exit| {
            let _ = exits.send(exit);
        };
        let spawned = command.and_then(|mut c| {
            // Every child has one: its counters (when the live view is served) and the
            // stall probes (see `watch_stalls`) go over it.
            let channel = report_channel(&mut c, reports)?;
            let asks = channel.try_clone().map_err(|e| Error::Runtime {
                detail: format!("cannot make a control channel for a child process: {e}"),
            })?;
            // Never a write that waits for ever on a child that does not read.
            let _ = asks.set_write_timeout(Some(launch::CONTROL_WRITE_TIMEOUT));
            let child = launch::spawn_child(p, c, on_exit)?;
            probes
                .asks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((p.clone(), asks));
            let (name, pid, reports) = (p.clone(), child.pid, Arc::clone(&child_reports));
            let probes = Arc::clone(&probes);
            // Ready once it says so (see `launch::drain_at_ready`).
            child.ready.store(false, Ordering::SeqCst);
            let gate = (Arc::clone(&child.ready), Arc::clone(&child.term_sent));
            // Fatal: without it the child would wait for its `go` for ever. The child is not
            // in `list` yet: it is killed here, as the others are below.
            let read = std::thread::Builder::new()
                .name(format!("iotstream reports {p}"))
                .spawn(move || read_reports(channel, &name, pid, &reports, &probes, &gate));
            if let Err(e) = read {
                launch::signal_all(std::slice::from_ref(&child), Signal::SIGKILL);
                return Err(Error::Runtime {
                    detail: format!("cannot start the thread that reads process '{p}': {e}"),
                });
            }
            Ok(child)
        });
        match spawned {
            Ok(c) => list.push(c),
            Err(e) => {
                launch::signal_all(&list, Signal::SIGKILL);
                segments.remove_all();
                return Err(e);
            }
        }
    }
    drop(exit_tx);
    let list = Arc::new(list);
    let stop = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let handle_signals = graph.handle_signals;
    // The starter's own part, once started: the drain's bound looks at it.
    let own_part: Arc<std::sync::OnceLock<Arc<Shared>>> = Arc::default();
    let registration = if handle_signals {
        let (first, second) = (Arc::clone(&list), Arc::clone(&list));
        let segs = Arc::clone(&segments);
        let (asked, stopping) = (Arc::clone(&draining), Arc::clone(&stop));
        signals::register(OnSignal {
            terminal: true,
            first: Box::new(move |sig| {
                tracing::warn!("signal {sig}: draining (send it again to stop at once)");
                asked.store(true, Ordering::SeqCst);
                stopping.store(true, Ordering::SeqCst);
                launch::signal_all(&first, Signal::SIGTERM)
            }),
            again: Again::Exit(Box::new(move || {
                launch::signal_all(&second, Signal::SIGKILL);
                segs.remove_all();
            })),
            // The supervisor kills the children still draining at `drain` and fails the run
            // naming them; this bounds the starter's own agents, a little later, so that the
            // supervisor's account comes first when they are not what holds the drain up.
            bound: Some(signals::DrainBound {
                bound: drain,
                grace: STARTER_DRAIN_GRACE,
                draining: {
                    let part = Arc::clone(&own_part);
                    Arc::new(move || part.get().is_none_or(|s| still_draining(s)))
                },
            }),
        })
        .map(Some)
    } else {
        Ok(None)
    };
    let registration = match registration {
        Ok(r) => r,
        Err(e) => {
            launch::signal_all(&list, Signal::SIGKILL);
            segments.remove_all();
            return Err(e);
        }
    };
    let mut running = match start_part(
        graph,
        Some(launch::MAIN_PROCESS.to_string()),
        Some((app, run, stop)),
    ) {
        Ok(r) => r,
        Err(e) => {
            launch::signal_all(&list, Signal::SIGKILL);
            segments.remove_all();
            return Err(e);
        }
    };
    if let Some(shared) = &running.shared {
        let _ = own_part.set(Arc::clone(shared));
    }
    let failure: Arc<Mutex<Option<Error>>> = Arc::default();
    let supervisor = {
        let list = Arc::clone(&list);
        let failure = Arc::clone(&failure);
        let fail_local = running.fail_handle();
        std::thread::Builder::new()
            .name("iotstream supervisor".into())
            .spawn(move || supervise(exit_rx, list, failure, fail_local))
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start the supervisor thread: {e}"),
            })?
    };
    let killed: Arc<Mutex<Option<String>>> = Arc::default();
    let drain_bound = {
        let list = Arc::clone(&list);
        let (failure, killed) = (Arc::clone(&failure), Arc::clone(&killed));
        let draining = Arc::clone(&draining);
        let fail_local = running.fail_handle();
        std::thread::Builder::new()
            .name("iotstream drain bound".into())
            .spawn(move || bound_drain(draining, drain, &list, &failure, &killed, fail_local))
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start the thread that bounds the drain: {e}"),
            })?
    };
    let stall_watch = match (
        running.fail_handle(),
        transport::RingGauges::open(&segments.names()),
    ) {
        (Some(local), Ok(gauges)) => {
            let (list, failure) = (Arc::clone(&list), Arc::clone(&failure));
            std::thread::Builder::new()
                .name("iotstream stall watch".into())
                .spawn(move || watch_stalls(&probes, &list, &local, &gauges, &failure))
                .map_err(|e| Error::Runtime {
                    detail: format!("cannot start the thread that watches for stalls: {e}"),
                })
                .map(Some)?
        }
        (_, Err(e)) => {
            tracing::warn!("a stall across processes will not be detected: {e}");
            None
        }
        (None, _) => None,
    };
    running.children = Some(Children {
        list,
        segments,
        failure,
        supervisor: Some(supervisor),
        drain_bound: Some(drain_bound),
        killed,
        draining,
        reports: child_reports,
        stall_watch,
    });
    running._signals = registration;
    Ok(running)
}

/// Watches the children until all have ended. At the first failure: records it, fails the
/// starter's own part, asks the other children to stop, and kills them after a grace period.
fn supervise(
    exits: mpsc::Receiver<launch::Exit>,
    list: Arc<Vec<ChildProcess>>,
    failure: Arc<Mutex<Option<Error>>>,
    fail_local: Option<Arc<Shared>>,
) -> Vec<launch::Exit> {
    let mut ended = Vec::new();
    while ended.len() < list.len() {
        let Ok(exit) = exits.recv() else { break };
        if !exit.success() {
            // After this process's own part failed by itself, a child's failure is not the
            // first: most likely its consequence (the rings it read or wrote were marked
            // failed). One that failed the part through a link still is.
            let failed_before = fail_local.as_ref().is_some_and(|s| {
                s.failed.load(Ordering::SeqCst)
                    && s.failed_by_peer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_none()
            });
            let first = {
                let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                let first = f.is_none() && !failed_before;
                if first {
                    *f = Some(exit.to_error());
                }
                first
            };
            if first {
                // Logged once, by the failing part (`Shared::fail`); the stop it sets starts
                // the drain's bound.
                if let Some(shared) = &fail_local {
                    shared.fail(exit.to_error());
                }
                launch::signal_all(&list, Signal::SIGTERM);
            }
        }
        ended.push(exit);
    }
    ended
}

/// Bounds a starter's drain. Once a drain is asked for (`draining`: Ctrl-C, SIGTERM,
/// [`Running::stop`]) or the run has failed (a child's failure fails the starter's part too),
/// the children have `drain` to end (not when the starter's own part merely ended: children
/// may still be processing what it sent); those still running then (a
/// hung process: stopped by SIGSTOP, say, which no SIGTERM moves) are killed with SIGKILL, the
/// starter's own part is failed (it may wait on them), and the run fails naming them: as the
/// launcher does with `drain_timeout_ms`. After an earlier failure, the names are a note on it
/// instead. Ends when every child has ended.
fn bound_drain(
    draining: Arc<AtomicBool>,
    drain: Duration,
    list: &[ChildProcess],
    failure: &Mutex<Option<Error>>,
    killed: &Mutex<Option<String>>,
    fail_local: Option<Arc<Shared>>,
) {
    const POLL: Duration = Duration::from_millis(20);
    let all_ended = || list.iter().all(|c| !c.running());
    // Not `Shared::error`: the starter's part takes it out when its own run ends, which may
    // be before this thread looks.
    let failed = || {
        fail_local
            .as_ref()
            .is_some_and(|s| s.failed.load(Ordering::SeqCst))
            || failure.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    };
    while !draining.load(Ordering::SeqCst) && !failed() {
        if all_ended() {
            return;
        }
        std::thread::sleep(POLL);
    }
    let deadline = Instant::now() + drain;
    while Instant::now() < deadline {
        if all_ended() {
            return;
        }
        std::thread::sleep(POLL);
    }
    let stragglers: Vec<&ChildProcess> = list.iter().filter(|c| c.running()).collect();
    if stragglers.is_empty() {
        return;
    }
    let names: Vec<String> = stragglers
        .iter()
        .map(|c| {
            let how = if launch::is_stopped(c.pid) {
                " (stopped)"
            } else {
                ""
            };
            format!("'{}'{how} (pid {})", c.name, c.pid)
        })
        .collect();
    let ms = drain.as_millis();
    // Decided and recorded before the kill: the supervisor then hears of the killed children
    // as consequences, not as the cause.
    let error = {
        let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = first.is_some()
            || fail_local
                .as_ref()
                .is_some_and(|s| s.failed.load(Ordering::SeqCst));
        if earlier {
            let note = format!(
                "killed after the {ms} ms grace (SIGKILL): {}",
                names.join(", ")
            );
            tracing::error!("{note}");
            *killed.lock().unwrap_or_else(|p| p.into_inner()) = Some(note);
            None
        } else {
            let error = Error::Runtime {
                detail: format!(
                    "the drain did not end within {ms} ms ({}): killed {}",
                    launch::ENV_DRAIN_TIMEOUT_MS,
                    names.join(", ")
                ),
            };
            *first = Some(error.clone());
            Some(error)
        }
    };
    for c in &stragglers {
        // Re-checked right before the kill: a child reaped since the check above (it ended
        // meanwhile) may have left its pid to another process, which must never be signalled.
        if !c.reaped.load(Ordering::SeqCst) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid as i32), Signal::SIGKILL);
        }
    }
    if let (Some(error), Some(shared)) = (error, &fail_local) {
        shared.fail(error);
    }
}

/// `e` with `note` added to what it says (how the run's end went after it).
fn with_note(e: Error, note: &str) -> Error {
    match e {
        Error::Process { process, detail } => Error::Process {
            process,
            detail: format!("{detail}; {note}"),
        },
        Error::Runtime { detail } => Error::Runtime {
            detail: format!("{detail}; {note}"),
        },
        Error::Agent { agent, cause } => Error::Agent {
            agent,
            cause: format!("{cause}; {note}"),
        },
        Error::Panic { agent, message } => Error::Panic {
            agent,
            message: format!("{message}; {note}"),
        },
        Error::Stalled { detail } => Error::Stalled {
            detail: format!("{detail}; {note}"),
        },
        other => other,
    }
}

/// Starts the agents of `process` (every agent if `None`) on actix arbiters.
fn start_part(
    graph: Graph,
    process: Option<String>,
    shm: Option<(String, RunId, Arc<AtomicBool>)>,
) -> Result<Running, Error> {
    let app = graph.name.clone();
    let stream_names = graph.output_names();
    let elsewhere: HashMap<PortId, (String, String)> = match &process {
        Some(here) => graph
            .externals
            .iter()
            .filter_map(|(id, e)| {
                let there = graph.process_of(e.agent());
                (there != here).then(|| (*id, (there.to_string(), here.clone())))
            })
            .collect(),
        None => HashMap::new(),
    };
    let stop = shm
        .as_ref()
        .map(|(_, _, stop)| Arc::clone(stop))
        .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
    let stop_thread = Arc::clone(&stop);
    let (ready_tx, ready_rx) = mpsc::channel::<(Ready, Arc<Shared>)>();
    let thread = std::thread::Builder::new()
        .name(format!("iotstream {app}"))
        .spawn(move || {
            let run = shm.map(|(app, run, _)| (app, run));
            coordinate(graph, process, run, stop_thread, ready_tx)
        })
        .map_err(|e| Error::Runtime {
            detail: format!("cannot start the runtime thread: {e}"),
        })?;
    match ready_rx.recv() {
        Ok((Ok((registry, inputs)), shared)) => Ok(Running {
            app,
            registry,
            stop,
            inputs,
            stream_names,
            elsewhere,
            thread: Some(thread),
            children: None,
            _signals: None,
            shared: Some(shared),
            serving: None,
        }),
        Ok((Err(e), _)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(thread
            .join()
            .map_err(|p| Error::Runtime {
                detail: format!(
                    "the runtime thread panicked: {}",
                    crate::error::panic_message(&*p)
                ),
            })?
            .err()
            .unwrap_or_else(|| Error::Runtime {
                detail: "the runtime thread ended before starting".into(),
            })),
    }
}

/// Ends the streams of sources still inside [`Source::fill`](crate::Source::fill)
/// [`SOURCE_STOP_GRACE`](crate::host::SOURCE_STOP_GRACE) after a stop (blocked reading a terminal or a
/// quiet pipe, say), so that a drain never waits for input that may never come. The stop flag
/// is set from signal handlers, control channels and [`Running::stop`], so it is polled; the
/// thread ends with the run.
fn end_sources_after_stop(
    stop: Arc<AtomicBool>,
    run_over: Arc<AtomicBool>,
    enders: Vec<crate::host::SourceEnder>,
) -> Result<(), Error> {
    const POLL: Duration = Duration::from_millis(50);
    std::thread::Builder::new()
        .name("iotstream source stop".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if run_over.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(POLL);
            }
            let deadline = Instant::now() + crate::host::SOURCE_STOP_GRACE;
            while Instant::now() < deadline {
                if run_over.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(POLL);
            }
            for ender in &enders {
                ender.end();
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Runtime {
            detail: format!("cannot start the thread that ends sources after a stop: {e}"),
        })
}

/// The thread an agent runs on (see [`Graph::place_on_thread`] and [`Graph::worker_threads`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ThreadKey {
    /// Placed by name: shared with the agents placed on the same name.
    Named(String),
    /// A thread of its own (an agent that does I/O), by agent index.
    Own(usize),
    /// A worker of the pool.
    Worker(usize),
}

/// The most stages a source's thread steps in a chain ([`stepped_directly`]). Each stage's
/// step runs inside the one before it (its output's post steps the next stage), about 2.4 KiB
/// of stack each: a longer chain is stepped by its worker, as any other.
const MAX_CHAIN_STAGES: usize = 16;

/// Per agent: whether it is stepped by whoever posts to it (see [`direct`]), not placed on a
/// thread. Agents placed on a thread never are; the others are if
/// - every input of it is connected, and connected to another process (a shared-memory ring,
///   a TCP link or a broker's): the links' feeders (for TCP, also the connection's reading
///   thread; for a broker, its feeder thread, not the broker's runtime) step it;
/// - or it is a source whose every output goes to another process over a ring: its own
///   thread (or the program, through an [`InputSender`]) steps it as it hands elements over
///   (the step is mostly the write into the ring; a wake-up of a worker would cost more);
///   a source with a thread of its own also when its outputs are TCP links;
/// - or it is a source with a thread of its own (a [`Source`](crate::Source), not the
///   program's `Graph::input`), or a stage of a chain such a source alone feeds, where the
///   chain's last stage writes only into rings or TCP links (`source → map → filter ⇒
///   ring`; each stage the only reader of the one before, and reading nothing else; at most
///   [`MAX_CHAIN_STAGES`] stages): the source's thread steps the whole chain, from its
///   hand-over to the write into the ring, as a raw ring's producer makes and writes each
///   element on one thread (on two cores this moved 1.7–2.4× the elements of a worker
///   stepping the chain beside the source's thread, `docs/benchmarks-journal.md`).
///
/// Linear in agents and connections: each agent is in at most one chain.
fn stepped_directly(graph: &Graph) -> Vec<Stepped> {
    use crate::graph::Edge;
    let total = graph.agents.len();
    let mut ins: Vec<Vec<&Edge>> = vec![Vec::new(); total];
    let mut outs: Vec<Vec<&Edge>> = vec![Vec::new(); total];
    for e in &graph.edges {
        outs[e.from.agent as usize].push(e);
        ins[e.to.agent as usize].push(e);
    }
    // Placed by the runtime: not on a named thread, not on a thread of its own.
    let free = |i: usize| graph.agents[i].thread.is_none() && !graph.agents[i].own_thread;
    let local = |e: &Edge| graph.resolve(e) == Resolved::Local;
    // Connected, and only to rings (other processes on this host), or also to TCP links
    // (other hosts) when `tcp`: transports whose writer waits for its peer, and is posted to
    // when room comes back. Only a source's thread drives a chain into TCP links: it hands
    // over batches, where a program's `InputSender` pushes one element at a time, each of
    // which would then be a frame of its own and a wake-up of the link's I/O thread (a
    // worker stepping the input gathers them).
    let into_peers = |i: usize, tcp: bool| {
        !outs[i].is_empty()
            && outs[i].iter().all(|e| match graph.resolve(e) {
                Resolved::SharedMemory => true,
                Resolved::Tcp => tcp,
                Resolved::Local | Resolved::Broker => false,
            })
    };
    // The stage that continues a chain after `i`: `i` has one connection, in-process, to an
    // agent placed by the runtime that reads nothing else.
    let chain_next = |i: usize| {
        let [edge] = outs[i].as_slice() else {
            return None;
        };
        let next = edge.to.agent as usize;
        let alone = ins[next].len() == 1 && graph.agents[next].inputs.len() == 1;
        (local(edge) && alone && free(next)).then_some(next)
    };
    let mut direct = vec![Stepped::AsActor; total];
    for i in (0..total).filter(|&i| free(i)) {
        let agent = &graph.agents[i];
        if let Some(Driver::Source(source)) = &agent.driver {
            if into_peers(i, source.has_thread()) {
                direct[i] = Stepped::InChainOf(i);
            } else if source.has_thread() {
                // The chain it alone feeds, if that ends in rings or TCP links. Each stage's
                // only input is the stage before: no agent is in two chains, or twice in one.
                let mut chain = vec![i];
                while let Some(next) = chain_next(chain[chain.len() - 1]) {
                    if chain.len() > MAX_CHAIN_STAGES {
                        break;
                    }
                    chain.push(next);
                    if into_peers(next, true) {
                        chain
                            .iter()
                            .for_each(|&k| direct[k] = Stepped::InChainOf(i));
                        break;
                    }
                }
            }
            continue;
        }
        let mut fed = vec![false; agent.inputs.len()];
        for e in &ins[i] {
            if local(e) {
                fed.clear();
                break;
            }
            if let Some(f) = fed.get_mut(e.to.port as usize) {
                *f = true;
            }
        }
        if !fed.is_empty() && fed.iter().all(|f| *f) {
            direct[i] = Stepped::ByPoster;
        }
    }
    direct
}

/// How an agent is stepped ([`stepped_directly`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stepped {
    /// As an actor, by its worker of the pool or its thread.
    AsActor,
    /// By whoever posts to it: the feeders of its links from other processes.
    ByPoster,
    /// By whoever posts to it, mostly the thread of this source agent, its chain's driver
    /// (`direct`): the source itself, or a stage of the chain it alone feeds into rings.
    InChainOf(usize),
}

impl Stepped {
    /// Not as an actor: its mailbox is a [`direct::DirectMailbox`].
    fn directly(self) -> bool {
        self != Stepped::AsActor
    }
}

/// The thread of every agent: its named thread, a thread of its own, or a worker of the pool.
///
/// Workers go by chains. An agent that is the only reader of the only agent it reads (a link
/// in a chain: `source → map → filter → sink`) runs on that agent's worker: a batch then
/// passes from stage to stage in one core's cache, with no other thread to wake (on two cores
/// the same chain ran 2.3× faster on one worker than with its stages alternating between two;
/// `benches/timely.rs`). Any other agent (a source, a reader of a fan-out, a merge or join of
/// several agents, an agent fed from another process) starts on the next worker in turn, so
/// independent chains and the branches of a fan-out spread over the cores. A stage heavy
/// enough to want a core of its own is placed with [`Graph::place_on_thread`].
fn place_on_workers(graph: &Graph, local: &[bool], workers: usize) -> Vec<ThreadKey> {
    let total = graph.agents.len();
    let on_pool = |i: usize| {
        let a = &graph.agents[i];
        local[i] && a.thread.is_none() && !a.own_thread
    };
    // Per agent: the one agent it reads (`None` when it reads none or several, or when a link
    // from it is not in-process), and whether it has several readers.
    #[derive(Clone, Copy)]
    enum Writer {
        None,
        One(usize),
        Several,
    }
    let mut writer = vec![Writer::None; total];
    let mut reader: Vec<Option<usize>> = vec![None; total];
    let mut several_readers = vec![false; total];
    for e in &graph.edges {
        let (from, to) = (e.from.agent as usize, e.to.agent as usize);
        writer[to] = match writer[to] {
            _ if graph.resolve(e) != Resolved::Local => Writer::Several,
            Writer::None => Writer::One(from),
            Writer::One(w) if w == from => Writer::One(from),
            _ => Writer::Several,
        };
        match reader[from] {
            None => reader[from] = Some(to),
            Some(r) if r != to => several_readers[from] = true,
            Some(_) => {}
        }
    }
    let mut next_worker = 0;
    let mut threads: Vec<ThreadKey> = Vec::with_capacity(total);
    for (i, a) in graph.agents.iter().enumerate() {
        let key = match (&a.thread, a.own_thread) {
            (Some(name), _) => ThreadKey::Named(name.clone()),
            (None, true) => ThreadKey::Own(i),
            (None, false) => {
                // The worker of the writer this agent continues the chain of, if any (a
                // writer added before it: a loop's later writer starts a chain of its own).
                let chained = match writer[i] {
                    Writer::One(w) if w < i && on_pool(w) && !several_readers[w] => {
                        match &threads[w] {
                            ThreadKey::Worker(k) => Some(*k),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                chained.map_or_else(
                    || {
                        let k = next_worker % workers;
                        if local[i] {
                            next_worker += 1;
                        }
                        ThreadKey::Worker(k)
                    },
                    ThreadKey::Worker,
                )
            }
        };
        threads.push(key);
    }
    threads
}

/// Worker threads when the graph does not say: one per core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts the arbiter (a thread with an event loop) for `key`, where `agent` is its first
/// agent. Actix panics when it cannot (no thread, or no file descriptor for the event loop
/// left): that becomes an error naming what ran out.
fn start_arbiter(key: &ThreadKey, agent: &str) -> Result<Arbiter, Error> {
    let what = match key {
        ThreadKey::Named(name) => format!("thread '{name}'"),
        ThreadKey::Own(_) => format!("the thread of agent '{agent}'"),
        ThreadKey::Worker(k) => format!("worker thread {k}"),
    };
    // The panic hook (process-wide, not ours to swap) still prints actix's message once.
    std::panic::catch_unwind(Arbiter::new).map_err(|p| Error::Runtime {
        detail: format!(
            "cannot start {what} (for agent '{agent}'): {} (out of threads or open files? see `ulimit -u` and `ulimit -n`, or run fewer threads: Graph::worker_threads, fewer place_on_thread names)",
            crate::error::panic_message(&*p)
        ),
    })
}

/// The runtime thread: builds the actors of this process's part, runs the actix system, tears
/// everything down.
fn coordinate(
    mut graph: Graph,
    process: Option<String>,
    run: Option<(String, RunId)>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<(Ready, Arc<Shared>)>,
) -> Result<(), Error> {
    let system = System::new();
    let total = graph.agents.len();
    let local: Vec<bool> = (0..total)
        .map(|i| process.as_deref().is_none_or(|p| graph.process_of(i) == p))
        .collect();
    let n = local.iter().filter(|l| **l).count();
    let shared = Arc::new(Shared::new(n, Arc::clone(&stop), Some(System::current())));
    let _ = shared.topology.set(Topology::of(&graph, &local));
    // Agents fed only by rings are stepped by the feeders; sources writing into rings, and
    // the chains sources feed into rings, by the sources' own threads (see `direct`).
    let stepped: Vec<Stepped> = stepped_directly(&graph)
        .into_iter()
        .zip(&local)
        .map(|(stepped, &local)| if local { stepped } else { Stepped::AsActor })
        .collect();
    let stepped_by_poster: Vec<bool> = stepped.iter().map(|s| s.directly()).collect();
    let mut direct: Vec<Option<Arc<direct::DirectMailbox>>> = vec![None; total];
    // Addresses exist before the actors, so every link can be wired before any actor starts.
    let mut receivers: Vec<Option<_>> = Vec::with_capacity(total);
    let mailboxes: Vec<Option<Arc<dyn Mailbox>>> = local
        .iter()
        .enumerate()
        .map(|(i, &is_local)| {
            if !is_local {
                receivers.push(None);
                return None;
            }
            if stepped_by_poster[i] {
                receivers.push(None);
                let chain = match stepped[i] {
                    Stepped::InChainOf(source) => Some(source),
                    Stepped::ByPoster | Stepped::AsActor => None,
                };
                let mailbox = direct::DirectMailbox::new(Arc::clone(&shared), chain);
                direct[i] = Some(Arc::clone(&mailbox));
                return Some(mailbox as Arc<dyn Mailbox>);
            }
            let (tx, rx) = actix::dev::channel::channel::<AgentActor>(16);
            let parcels = Arc::new(Parcels::default());
            receivers.push(Some((rx, Arc::clone(&parcels))));
            Some(Arc::new(ActorMailbox {
                parcels,
                shared: Arc::clone(&shared),
                _alive: Addr::new(tx),
            }) as Arc<dyn Mailbox>)
        })
        .collect();
    *shared.mailboxes.lock().unwrap_or_else(|p| p.into_inner()) =
        mailboxes.iter().flatten().cloned().collect();
    // Where each agent runs: its named thread, a thread of its own, or a worker of the pool.
    let workers = graph
        .workers_in(process.as_deref().unwrap_or(launch::MAIN_PROCESS))
        .unwrap_or_else(default_workers);
    let threads = place_on_workers(&graph, &local, workers);
    let externals = std::mem::take(&mut graph.externals);
    let tcp = match graph.network.take() {
        Some((network, digest))
            if graph
                .edges
                .iter()
                .any(|e| graph.resolve(e) == Resolved::Tcp) =>
        {
            match TcpContext::load(&network, digest, Arc::clone(&stop)) {
                Ok(t) => t,
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    let _ = ready.send((Err(e), Arc::clone(&shared)));
                    return Ok(());
                }
            }
        }
        // TCP links forced within one host, without a deployment: loopback, no secret.
        _ => TcpContext::loopback(Arc::clone(&stop)),
    };
    let broker = graph.broker.clone().map(Arc::new);
    let wiring = run.map(|(app, run)| ProcessLinks {
        broker,
        app,
        run,
        handle: Arc::new(RunHandle {
            shared: Arc::clone(&shared),
        }),
        stopped: launch::is_stopped,
        tcp,
    });
    let part = Part {
        process: process.as_deref(),
        wiring: wiring.as_ref().map(|w| w as &dyn crate::graph::Wiring),
    };
    let (hosts, registry) = match graph.instantiate(&mailboxes, &part) {
        Ok(x) => x,
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            let _ = ready.send((Err(e), Arc::clone(&shared)));
            return Ok(());
        }
    };
    let registry = Arc::new(registry);
    // Under the launcher: report ready, and let data flow only when every process is; then
    // report the counters every interval until the run is over.
    let reporter = match launch::take_control().and_then(|c| {
        c.map_or(Ok(false), |c| {
            let part = Arc::clone(&shared);
            let quiet: launch::QuietProbe = Box::new(move |elsewhere| part.quiet_across(elsewhere));
            c.ready_then_wait_go(Arc::clone(&stop), quiet)
                .map(|()| true)
        })
    }) {
        Ok(supervised) => supervised
            .then(|| launch::MetricsReporter::start(Arc::clone(&registry)))
            .flatten(),
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            let _ = ready.send((Err(e), Arc::clone(&shared)));
            return Ok(());
        }
    };

    let mut inputs = HashMap::new();
    for (id, ext) in externals {
        if let Some(wake) = &mailboxes[ext.agent()] {
            let name = graph.output_name(id);
            inputs.insert(id, ext.into_sender(Arc::clone(wake), name));
        }
    }

    let mut arbiters: HashMap<ThreadKey, Arbiter> = HashMap::new();
    let mut result = Ok(());
    let mut enders = Vec::new();
    // A source's thread starts once every agent is set up (below: `end_setup`) and every
    // stage of its chain has made its first step, so a thread that steps the chain it feeds
    // finds every stage there, and steps its first batch itself. Whatever happens, the gates
    // open when this drops.
    let mut gates = StartGates::default();
    for (i, mut host) in hosts {
        let key = threads[i].clone();
        let arbiter = match arbiters.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match start_arbiter(e.key(), &host.name) {
                    Ok(arbiter) => e.insert(arbiter),
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                }
            }
        };
        if host.is_source() {
            shared.active_sources.fetch_add(1, Ordering::SeqCst);
            let wake = Arc::clone(mailboxes[i].as_ref().expect("a local agent has a mailbox"));
            if let Driver::Source(src) = &mut host.driver {
                let spawned = src.spawn(SourceThreadCtx {
                    name: host.name.to_string(),
                    wake,
                    stop: Arc::clone(&stop),
                    gate: gates.of(i),
                    stepped_by_poster: stepped_by_poster[i],
                });
                match spawned {
                    Ok(ender) => enders.extend(ender),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        let mailbox = Arc::clone(mailboxes[i].as_ref().expect("a local agent has a mailbox"));
        if let Some(direct) = &direct[i] {
            // There now, for whoever posts to it; its first step on its worker.
            direct.install(
                Tended::new(i, host, Arc::clone(&shared), mailbox),
                arbiter.handle(),
            );
            // A stage of a source's chain holds that source's thread back until its first
            // step has run (or its worker dropped it unrun): the source's first batch is then
            // the driver's to step, not taken in by that first step on the worker.
            let hold = direct.chain().map(|source| gates.of(source).hold());
            let direct = Arc::clone(direct);
            arbiter.spawn_fn(move || {
                direct.first_step();
                drop(hold);
            });
            continue;
        }
        let (rx, parcels) = receivers[i].take().expect("a local agent has a mailbox");
        let actor = AgentActor {
            tended: Tended::new(i, host, Arc::clone(&shared), mailbox),
            parcels,
            accepted: 0,
        };
        arbiter.spawn_fn(move || {
            Context::with_receiver(rx).run(actor);
        });
    }
    gates.end_setup();
    let run_over = Arc::new(AtomicBool::new(false));
    if result.is_ok() && !enders.is_empty() {
        result = end_sources_after_stop(Arc::clone(&stop), Arc::clone(&run_over), enders);
    }
    let ran = if let Err(e) = result {
        stop.store(true, Ordering::SeqCst);
        let _ = ready.send((Err(e), Arc::clone(&shared)));
        Ok(())
    } else if ready
        .send((Ok((Arc::clone(&registry), inputs)), Arc::clone(&shared)))
        .is_err()
    {
        stop.store(true, Ordering::SeqCst);
        Ok(())
    } else if n > 0 {
        system.run()
    } else {
        Ok(())
    };
    // A first step that never ran (the run failed before its worker started) holds no
    // source's thread back.
    gates.open_for_good();
    // Read before the stop flag is set below: whether this run ended by a drain.
    let drained = stop.load(Ordering::SeqCst);
    // Before the stop flag: the poller must not take the end of the run for a stop.
    run_over.store(true, Ordering::SeqCst);
    // The last report: the counters as the run ended.
    drop(reporter);
    ran.map_err(|e| Error::Runtime {
        detail: format!("the actix system failed: {e}"),
    })?;
    stop.store(true, Ordering::SeqCst);
    for (_, arbiter) in arbiters.drain() {
        arbiter.stop();
        arbiter.join().ok();
    }
    // As the arbiters dropped their actors: the hosts stepped by feeders go now too.
    for mailbox in direct.iter().flatten() {
        mailbox.tear_down();
    }
    // Drop the mailboxes' addresses so nothing keeps the actors alive.
    shared
        .mailboxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    *shared.system.lock().unwrap_or_else(|p| p.into_inner()) = None;
    shared.torn_down.store(true, Ordering::SeqCst);
    // The run is over for every link thread now; after a normal end, links that still owe
    // their peer the last word may hold the exit a little (bounded).
    if !shared.failed.load(Ordering::SeqCst) {
        shared.wait_lingers(drained);
    }
    let error = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
// ---------------------------------------------------------------------------------------------
// Shared-memory wiring

/// Creates the ring of every shared-memory connection of `graph` (the starter does this before
/// any process starts); each name is recorded in `segments`, which removes them.
fn create_segments(graph: &Graph, run: &RunId, segments: &Segments) -> Result<(), Error> {
    let rings: Vec<(usize, usize)> = graph
        .edges
        .iter()
        .enumerate()
        .filter_map(|(edge, e)| graph.ring_bytes(e).map(|bytes| (edge, bytes)))
        .collect();
    let all_rings = transport::rings_total(rings.iter().map(|&(_, bytes)| bytes));
    for (edge, bytes) in rings {
        let name = transport::ring_name(&graph.name, &run.to_string(), edge)?;
        let connection = graph.edge_name(&graph.edges[edge]);
        transport::create_ring(&name, bytes, &connection, all_rings)?;
        segments.add(name);
    }
    Ok(())
}

/// Opens this process's ends of the connections that leave it: shared-memory rings to other
/// processes of this host, TCP links to other hosts.
struct ProcessLinks {
    app: String,
    run: RunId,
    handle: transport::Run,
    stopped: fn(u32) -> bool,
    /// What the TCP links of this process share.
    tcp: TcpContext,
    /// The broker that broker links cross, if the graph names one.
    broker: Option<Arc<BrokerSettings>>,
}

impl ProcessLinks {
    /// The broker's settings, or an error naming the connection.
    fn broker(&self, label: &str) -> Result<Arc<BrokerSettings>, Error> {
        self.broker.clone().ok_or_else(|| Error::Runtime {
            detail: format!("connection {label} goes through a broker, but none is named"),
        })
    }
}

/// What every TCP link of a process shares.
struct TcpContext {
    settings: Arc<TcpSettings>,
    /// The deployment file's digest: both ends of a link must run the same file.
    digest: [u8; 32],
    /// Called when a link hears that another host is stopping the application.
    on_peer_stop: StopHook,
}

impl TcpContext {
    /// Loads the secret and TLS files `network` names (errors name the file), and makes a
    /// link's "another host stops" into a drain of this process, and of its launcher's others.
    fn load(
        network: &crate::deploy::NetworkSettings,
        digest: [u8; 32],
        stop: Arc<AtomicBool>,
    ) -> Result<TcpContext, Error> {
        let problem = |message: String| Error::Deployment {
            problems: vec![message],
        };
        let secret = match &network.secret_file {
            Some(path) => {
                Some(Arc::new(Secret::from_file(path).map_err(|e| {
                    problem(format!("[network] secret_file: {e}"))
                })?))
            }
            None => None,
        };
        let tls = match &network.tls {
            Some(t) => Some(
                TlsConfig::load(&TlsFiles {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    ca: t.ca.clone(),
                })
                .map_err(|e| problem(format!("[network] TLS: {e}")))?,
            ),
            None => None,
        };
        let settings = TcpSettings {
            secret,
            tls,
            connect_wait: network.connect_wait,
            heartbeat: network.heartbeat,
            peer_timeout: network.peer_timeout,
            reconnect_limit: network.reconnect_limit,
            unacked_bytes: network.unacked_bytes,
            ..TcpSettings::default()
        };
        let on_peer_stop: StopHook = Arc::new(move |host: String| {
            if !stop.swap(true, Ordering::SeqCst) {
                tracing::warn!("host '{host}' is stopping the application: draining");
            }
            launch::ask_launcher_to_drain();
        });
        Ok(TcpContext {
            settings: Arc::new(settings),
            digest,
            on_peer_stop,
        })
    }
}

impl TcpContext {
    /// For links forced to TCP on one host without a deployment: default timings, no secret.
    fn loopback(stop: Arc<AtomicBool>) -> TcpContext {
        TcpContext {
            settings: Arc::new(TcpSettings::default()),
            digest: [0; 32],
            on_peer_stop: Arc::new(move |_| stop.store(true, Ordering::SeqCst)),
        }
    }
}

impl crate::graph::Wiring for ProcessLinks {
    fn writer(
        &self,
        edge: usize,
        decl: &crate::agent::PortDecl,
        out: &mut dyn crate::port::OutSlot,
        spec: LinkSpec,
        wake: Arc<dyn Mailbox>,
        (output, _link): (u32, u32),
        remote: &Remote<'_>,
    ) -> Result<(), Error> {
        match remote {
            Remote::Ring { process, .. } => {
                let name = transport::ring_name(&self.app, &self.run.to_string(), edge)?;
                out.add_shm_link(&name, spec, wake, output, self.handle.clone(), process)
            }
            Remote::Tcp { host, at } => {
                let tcp = &self.tcp;
                let writer = TcpWriterSpec {
                    id: (decl.link_identity)(&self.app, tcp.digest, edge as u32, &spec.label),
                    peer_host: host.to_string(),
                    connect_to: at.clone(),
                    settings: Arc::clone(&tcp.settings),
                    counters: Arc::clone(&spec.counters),
                    on_peer_stop: Arc::clone(&tcp.on_peer_stop),
                };
                out.add_tcp_link(spec, writer, wake, output, self.handle.clone())
            }
            Remote::Broker { names } => {
                let writer = BrokerWriterSpec {
                    names: names.clone(),
                    settings: self.broker(&spec.label)?,
                    counters: Arc::clone(&spec.counters),
                    policy: spec.policy,
                    label: spec.label.clone(),
                };
                out.add_broker_link(spec, writer, wake, output, self.handle.clone())
            }
        }
    }

    fn reader(
        &self,
        edge: usize,
        decl: &crate::agent::PortDecl,
        target: Arc<dyn Mailbox>,
        input: u32,
        bounds: ReaderBounds,
        counters: Arc<crate::metrics::LinkCounters>,
        count_traffic: bool,
        label: String,
        remote: &Remote<'_>,
    ) -> Result<Arc<dyn Mailbox>, Error> {
        let capacity = bounds.elements;
        match remote {
            Remote::Ring { process, spin } => {
                let segment = transport::ring_name(&self.app, &self.run.to_string(), edge)?;
                (decl.make_feeder)(transport::FeederSpec {
                    segment,
                    target,
                    input,
                    capacity,
                    counters,
                    count_traffic,
                    label,
                    peer: process.to_string(),
                    run: self.handle.clone(),
                    stopped: self.stopped,
                    spin: *spin,
                })
            }
            Remote::Tcp { host, at } => {
                let tcp = &self.tcp;
                (decl.make_tcp_feeder)(TcpFeederSpec {
                    id: (decl.link_identity)(&self.app, tcp.digest, edge as u32, &label),
                    peer_host: host.to_string(),
                    listen: at.clone(),
                    settings: Arc::clone(&tcp.settings),
                    target,
                    input,
                    capacity,
                    counters,
                    count_traffic,
                    label,
                    run: self.handle.clone(),
                    on_peer_stop: Arc::clone(&tcp.on_peer_stop),
                })
            }
            Remote::Broker { names } => (decl.make_broker_feeder)(BrokerFeederSpec {
                names: names.clone(),
                settings: self.broker(&label)?,
                target,
                input,
                capacity,
                capacity_bytes: bounds.bytes,
                need: bounds.need,
                counters,
                count_traffic,
                label,
                run: self.handle.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use crate::ops::event::Watermarks;
    use crate::Graph;

    /// Timers armed on the arbiter, by agent name.
    static ARMED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

    pub(super) fn armed(agent: &str) {
        let mut m = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        *m.get_or_insert_with(HashMap::new)
            .entry(agent.to_string())
            .or_default() += 1;
    }

    fn armed_count(agent: &str) -> u64 {
        let m = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        m.as_ref().and_then(|m| m.get(agent).copied()).unwrap_or(0)
    }

    /// A panic to inject in the runtime's own code, at a named site, for one agent (by name:
    /// tests run in parallel, each with agents of its own).
    static FAULTS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());
    /// Set once `FAULTS` holds one: until then [`fault`] takes no lock (it runs at every step
    /// of every test's agents).
    static ANY_FAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Asks for a panic at `site` for `agent`.
    fn inject_fault(site: &'static str, agent: &str) {
        FAULTS.lock().unwrap().push((site, agent.to_string()));
        ANY_FAULT.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Panics if a test asked for a fault at `site` for `agent`.
    pub(super) fn fault(site: &str, agent: &str) {
        if !ANY_FAULT.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
        if faults.iter().any(|(s, a)| *s == site && a == agent) {
            drop(faults);
            panic!("injected fault at {site}");
        }
    }

    /// Runs `g` to its end on another thread; `None` if it has not ended after a minute (a
    /// hang guard, not a timing assertion).
    fn run_to_end(g: Graph) -> Option<Result<crate::Metrics, crate::Error>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(g.start().and_then(|running| running.join()));
        });
        rx.recv_timeout(Duration::from_secs(60)).ok()
    }

    /// Runs source → `agent` (a map) → sink with a fault injected at `site` for the map, and
    /// asserts that the run fails with the map's panic "in the runtime" at that site.
    fn assert_a_fault_fails_the_run(site: &'static str, agent: &str) {
        inject_fault(site, agent);
        let mut g = Graph::new(&format!("fault_in_{site}"));
        let s = g.source_iter("s", 0..1000u64);
        let m = g.map(agent, &s, |v: &u64| v + 1);
        g.for_each("out", &m, |_: &u64| {});
        match run_to_end(g).expect("the run ends") {
            Err(crate::Error::Panic {
                agent: failed,
                message,
            }) => {
                assert_eq!(failed, agent);
                assert!(
                    message.contains("in the runtime")
                        && message.contains(&format!("injected fault at {site}")),
                    "{message}"
                );
            }
            other => panic!("expected the agent's panic, got {other:?}"),
        }
    }

    /// A defect of the runtime that panics while it books a step (on the worker that stepped
    /// the agent) fails the run, naming the agent, instead of killing the worker's task with
    /// the agent's end unbooked and leaving the run to wait for ever.
    #[test]
    fn a_panic_in_the_runtime_after_a_step_fails_the_run_naming_the_agent() {
        assert_a_fault_fails_the_run("book", "booked_badly");
    }

    /// The same after the bookkeeping, as an actor settles the envelopes of its burst: the
    /// actor stops and the run fails, where tokio ended the actor's task quietly before (and
    /// the run reported success).
    #[test]
    fn a_panic_in_the_runtime_as_an_actor_settles_its_burst_fails_the_run() {
        assert_a_fault_fails_the_run("settle", "settled_badly");
    }

    /// A failure hook that panics (a defect) neither keeps the others from running nor the
    /// run from stopping; the failure is the one reported.
    #[test]
    fn a_panicking_failure_hook_leaves_the_other_hooks_and_the_stop_to_run() {
        use super::Shared;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let stop = Arc::new(AtomicBool::new(false));
        let shared = Shared::new(1, Arc::clone(&stop), None);
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        {
            let mut hooks = shared.failure_hooks.lock().unwrap();
            hooks.push(Box::new(|| panic!("a hook's defect")));
            hooks.push(Box::new(move || r.store(true, Ordering::SeqCst)));
        }
        shared.fail(crate::Error::Runtime {
            detail: "the first failure".into(),
        });
        assert!(ran.load(Ordering::SeqCst), "the second hook ran");
        assert!(stop.load(Ordering::SeqCst), "the run stops");
        let err = shared.error.lock().unwrap().take();
        assert!(
            matches!(err, Some(crate::Error::Runtime { ref detail }) if detail == "the first failure"),
            "{err:?}"
        );
    }

    /// Counts the wake-ups posted to it.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl crate::host::Mailbox for Wakes {
        fn post(&self, env: crate::host::Envelope) {
            assert!(
                matches!(env, crate::host::Envelope::Wake),
                "only wake-ups expected"
            );
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Two agents blocked on each other, one of them described a round later than the other
    /// (it became blocked after the last round began): the new round must wake both, or the
    /// one not woken is a round behind at the next reading, the next round wakes only it, and
    /// the rounds chase each other for ever while the stall is never reported (the hang of
    /// tests/lifecycle.rs `merges_that_block_each_other_are_reported_as_a_stall`).
    #[test]
    fn a_new_stall_round_wakes_every_blocked_agent_and_the_next_reading_reports_the_stall() {
        use super::{Shared, Stall};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let shared = Shared::new(2, Arc::new(AtomicBool::new(false)), None);
        shared.in_flight.store(0, Ordering::SeqCst);
        shared.stall_round.store(4, Ordering::SeqCst);
        let boxes = [Arc::new(Wakes::default()), Arc::new(Wakes::default())];
        let describe = |rounds: [u64; 2]| {
            let mut stalls = shared.stalls.lock().unwrap();
            for (i, (mailbox, round)) in boxes.iter().zip(rounds).enumerate() {
                stalls.insert(
                    i,
                    Stall {
                        mailbox: Arc::clone(mailbox) as Arc<dyn crate::host::Mailbox>,
                        round,
                        what: vec![format!("agent {i} -> agent {}", 1 - i)],
                        readers: vec![1 - i],
                    },
                );
            }
        };
        describe([3, 4]);
        shared.check_quiescent();
        let woken: Vec<usize> = boxes.iter().map(|b| b.0.load(Ordering::SeqCst)).collect();
        assert_eq!(
            woken,
            [1, 1],
            "every blocked agent is woken for the new round"
        );
        assert_eq!(shared.stall_round.load(Ordering::SeqCst), 5);
        assert!(shared.error.lock().unwrap().is_none(), "not reported yet");

        // Each woken agent writes its description in the new round, then the last handler
        // looks again: every description is fresh, so the stall is reported.
        describe([5, 5]);
        shared.check_quiescent();
        let err = shared.error.lock().unwrap().take();
        assert!(
            matches!(err, Some(crate::Error::Stalled { ref detail }) if detail.contains("agent 0 -> agent 1")),
            "{err:?}"
        );
    }

    #[test]
    fn a_timer_moved_later_at_every_step_is_armed_once() {
        // An idle timeout counts from the last element: every step with data moves the timer
        // later. Each step arming its own timer would pile up (steps per second x timeout)
        // timers on the arbiter. The wait below is a hang guard, not a timing assertion.
        let mut g = Graph::new("timer_arming");
        let x = g.input::<(u64, u32)>("x");
        let quiet = Duration::from_secs(3600);
        let timed = g.watermarks(
            "timer_arming_probe",
            &x,
            Watermarks::ascending().idle_after(quiet),
        );
        let out = g.collect("out", &timed);
        let mut running = g.start().unwrap();
        let tx = running.input(&x).unwrap();
        for i in 0..20u64 {
            tx.send(vec![(i, 0)]).unwrap();
            let guard = Instant::now();
            while out.values().len() <= i as usize {
                assert!(
                    guard.elapsed() < Duration::from_secs(20),
                    "element {i} never came"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        tx.close();
        running.join().unwrap();
        assert_eq!(out.values().len(), 20);
        assert_eq!(armed_count("timer_arming_probe"), 1);
    }

    /// Passes its input on.
    struct Pass {
        input: crate::Input<u64>,
        out: crate::Stream<u64>,
    }

    impl crate::Agent for Pass {
        fn step(
            &mut self,
            inputs: &mut crate::Inputs<'_>,
            outputs: &mut crate::Outputs<'_>,
        ) -> Result<(), crate::AgentError> {
            outputs.extend(&self.out, inputs.slice(&self.input).iter().copied());
            inputs.consume_all(&self.input);
            Ok(())
        }
    }

    /// A pass-through agent `name` reading `from` over `conn`.
    fn pass(
        g: &mut Graph,
        name: &str,
        from: &crate::Stream<u64>,
        conn: crate::Connection,
    ) -> crate::Stream<u64> {
        let (input, out) = g.add_agent(name, |p| {
            let input = p.input::<u64>("in");
            let out = p.output::<u64>("out");
            (Pass { input, out }, (input, out))
        });
        g.connect_with(from, &input, conn);
        out
    }

    #[test]
    fn agents_fed_only_from_other_processes_and_sources_writing_only_rings_are_stepped_by_their_posters(
    ) {
        use crate::Connection;
        let mut g = Graph::new("stepping");
        let plain = Connection::new();
        let spin = Connection::new().spin(Duration::from_micros(50));
        let a = g.source_iter("a", 0..10u64);
        let b = g.source_iter("b", 0..10u64);
        let c = g.source_iter("c", 0..10u64);
        let far3 = pass(&mut g, "far3", &c, plain);
        g.for_each("sink_far3", &far3, |_: &u64| {});
        let far = pass(&mut g, "far", &a, spin);
        let far2 = pass(&mut g, "far2", &b, plain);
        let near = pass(&mut g, "near", &b, plain);
        let pinned = pass(&mut g, "pinned", &b, plain);
        let tcp = Connection::new().transport(crate::Transport::Tcp);
        let over_tcp = pass(&mut g, "over_tcp", &b, tcp);
        g.for_each("sink_over_tcp", &over_tcp, |_: &u64| {});
        // Two inputs: one over a ring (from `near`), one local (from `far`).
        let (x, y) = g.add_agent("mixed", |p| {
            let x = p.input::<u64>("x");
            let y = p.input::<u64>("y");
            let out = p.output::<u64>("out");
            (Pass { input: x, out }, (x, y))
        });
        g.connect(&near, &x);
        g.connect(&far, &y);
        g.for_each("sink_far2", &far2, |_: &u64| {});
        g.for_each("sink_pinned", &pinned, |_: &u64| {});
        for agent in ["far", "far2", "far3", "sink_far3", "pinned", "mixed"] {
            g.place_in_process(agent, "p1");
        }
        g.place_on_thread("pinned", "own");
        let stepped = super::stepped_directly(&g);
        let direct: Vec<(String, bool)> = (0..g.agents.len())
            .map(|i| (g.agents[i].name.clone(), stepped[i].directly()))
            .filter(|(name, _)| !name.starts_with("sink"))
            .collect();
        // `a` feeds `far` over a spinning ring, `c` feeds `far3` over a ring; `b` feeds `near`
        // locally; `far`, `far2` and `far3` read one ring each, `over_tcp` a TCP link;
        // `pinned` is placed on a thread; `mixed` has a local input.
        let expect = |name: &str| ["a", "c", "far", "far2", "far3", "over_tcp"].contains(&name);
        for (name, is) in &direct {
            assert_eq!(*is, expect(name), "agent {name}: stepped directly {is}");
        }
        assert_eq!(direct.len(), 10, "{direct:?}");
    }

    #[test]
    fn a_chain_from_a_source_thread_into_rings_is_stepped_by_that_thread_and_nothing_else_is() {
        use crate::Connection;
        let plain = Connection::new();
        let mut g = Graph::new("chains");
        // s → m1 → m2 ⇒ far: the source's thread steps s, m1 and m2.
        let s = g.source_iter("s", 0..10u64);
        let m1 = pass(&mut g, "m1", &s, plain);
        let m2 = pass(&mut g, "m2", &m1, plain);
        let far = pass(&mut g, "far", &m2, plain);
        g.for_each("sink_far", &far, |_: &u64| {});
        // t → n1 → (n2 ⇒ far_n, and a local reader): n1 has two readers, no chain.
        let t = g.source_iter("t", 0..10u64);
        let n1 = pass(&mut g, "n1", &t, plain);
        let n2 = pass(&mut g, "n2", &n1, plain);
        g.for_each("sink_n1", &n1, |_: &u64| {});
        let far_n = pass(&mut g, "far_n", &n2, plain);
        g.for_each("sink_far_n", &far_n, |_: &u64| {});
        // The program's input → k1 ⇒ far_k: the program's pushes do not step a chain.
        let input = g.input::<u64>("input");
        let k1 = pass(&mut g, "k1", &input, plain);
        let far_k = pass(&mut g, "far_k", &k1, plain);
        g.for_each("sink_far_k", &far_k, |_: &u64| {});
        // u → pinned ⇒ far_u: a stage placed on a thread stays there, its source too.
        let u = g.source_iter("u", 0..10u64);
        let pinned = pass(&mut g, "pinned", &u, plain);
        let far_u = pass(&mut g, "far_u", &pinned, plain);
        g.for_each("sink_far_u", &far_u, |_: &u64| {});
        // v → w → local sink: no ring at the end, no chain.
        let v = g.source_iter("v", 0..10u64);
        let w = pass(&mut g, "w", &v, plain);
        g.for_each("sink_w", &w, |_: &u64| {});
        // x → y ⇒ far_y and y → local z: y writes into a ring and locally, no chain.
        let x = g.source_iter("x", 0..10u64);
        let y = pass(&mut g, "y", &x, plain);
        let far_y = pass(&mut g, "far_y", &y, plain);
        let z = pass(&mut g, "z", &y, plain);
        g.for_each("sink_far_y", &far_y, |_: &u64| {});
        g.for_each("sink_z", &z, |_: &u64| {});
        // q → r ⇒ a TCP link: the source's thread steps that chain too.
        let tcp = Connection::new().transport(crate::Transport::Tcp);
        let q = g.source_iter("q", 0..10u64);
        let r = pass(&mut g, "r", &q, plain);
        let far_r = pass(&mut g, "far_r", &r, tcp);
        g.for_each("sink_far_r", &far_r, |_: &u64| {});
        // The program's input ⇒ a TCP link: a worker gathers its pushes (each would be a
        // frame of its own), where into a ring the pushing thread steps it.
        let pushed = g.input::<u64>("pushed");
        let far_p = pass(&mut g, "far_p", &pushed, tcp);
        g.for_each("sink_far_p", &far_p, |_: &u64| {});
        for agent in ["far", "far_n", "far_k", "far_u", "far_y"] {
            g.place_in_process(agent, "p1");
        }
        for agent in [
            "sink_far",
            "sink_far_n",
            "sink_far_k",
            "sink_far_u",
            "sink_far_y",
        ] {
            g.place_in_process(agent, "p1");
        }
        g.place_on_thread("pinned", "own");
        let stepped = super::stepped_directly(&g);
        let direct: Vec<&str> = (0..g.agents.len())
            .filter(|&i| stepped[i].directly())
            .map(|i| &*g.agents[i].name)
            .filter(|name| !name.starts_with("far") && !name.starts_with("sink"))
            .collect();
        assert_eq!(direct, ["s", "m1", "m2", "q", "r"]);
        // Each stage knows its chain (whose driver, the source's thread, waits for it), and an
        // agent fed by a ring is stepped by its feeders, in no chain.
        let index = |name: &str| g.agents.iter().position(|a| &*a.name == name).unwrap();
        for stage in ["s", "m1", "m2"] {
            assert_eq!(
                stepped[index(stage)],
                super::Stepped::InChainOf(index("s")),
                "{stage}"
            );
        }
        assert_eq!(stepped[index("far")], super::Stepped::ByPoster);
        assert_eq!(stepped[index("r")], super::Stepped::InChainOf(index("q")));
        assert_eq!(stepped[index("far_r")], super::Stepped::ByPoster);

        // The longest chain a source's thread steps, and one stage more.
        for stages in [super::MAX_CHAIN_STAGES, super::MAX_CHAIN_STAGES + 1] {
            let mut g = Graph::new("chains");
            let mut s = g.source_iter("s", 0..10u64);
            for k in 0..stages {
                s = pass(&mut g, &format!("m{k}"), &s, plain);
            }
            pass(&mut g, "far", &s, plain);
            g.place_in_process("far", "p1");
            let stepped = super::stepped_directly(&g);
            let direct = (0..g.agents.len())
                .filter(|&i| stepped[i].directly() && &*g.agents[i].name != "far");
            let want = if stages <= super::MAX_CHAIN_STAGES {
                stages + 1
            } else {
                0
            };
            assert_eq!(direct.count(), want, "a chain of {stages} stages");
        }
    }

    #[test]
    fn a_chain_stays_on_one_worker_and_branches_independent_chains_and_merges_spread() {
        let mut g = Graph::new("placement");
        // A chain: source → m1 → m2 → sink.
        let s = g.source_iter("s", 0..10u64);
        let m1 = g.map("m1", &s, |v: &u64| *v);
        let m2 = g.map("m2", &m1, |v: &u64| *v);
        g.for_each("sink", &m2, |_: &u64| {});
        // Another chain, with a fan-out to two readers, then a merge of both branches.
        let t = g.source_iter("t", 0..10u64);
        let b1 = g.map("b1", &t, |v: &u64| *v);
        let b2 = g.map("b2", &t, |v: &u64| *v);
        let both = g.blend("both", &[b1, b2]);
        let after = g.map("after", &both, |v: &u64| *v);
        // A stage pinned to a thread, and its only reader.
        let pinned = g.map("pinned", &after, |v: &u64| *v);
        g.place_on_thread("pinned", "own");
        g.for_each("end", &pinned, |_: &u64| {});
        let local = vec![true; g.agents.len()];
        let threads = super::place_on_workers(&g, &local, 2);
        let on = |name: &str| {
            let i = g.agents.iter().position(|a| a.name == name).expect(name);
            threads[i].clone()
        };
        let w = super::ThreadKey::Worker;
        // The chain follows its source; the next chain starts on the next worker.
        for name in ["s", "m1", "m2", "sink"] {
            assert_eq!(on(name), w(0), "{name}");
        }
        assert_eq!(on("t"), w(1));
        // A fan-out's readers each start on the next worker in turn, as does a merge of two.
        assert_eq!(on("b1"), w(0));
        assert_eq!(on("b2"), w(1));
        assert_eq!(on("both"), w(0));
        assert_eq!(
            on("after"),
            w(0),
            "the only reader of the merge continues its chain"
        );
        assert_eq!(on("pinned"), super::ThreadKey::Named("own".into()));
        assert_eq!(
            on("end"),
            w(1),
            "the reader of a pinned agent is not chained to it"
        );
    }
}
