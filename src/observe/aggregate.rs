//! Putting the processes' reports together: [`Aggregator`].
//!
//! Each process of a run reports a [`ProcessSample`] (its counters, CPU time, memory) every
//! interval; its supervisor says what it is doing ([`ProcessStatus`]) and when it was started
//! again. The aggregator turns these into one [`AppMetrics`]: one entry per process, agent,
//! stream and connection of the graph, counters over every incarnation of each process, and
//! rates over the last interval.
//!
//! # Which end of a connection says what
//!
//! A connection between two processes has counters in both ([`LinkEnds`]); the view takes
//! each number from the end that knows it:
//!
//! | field | from |
//! |---|---|
//! | `elements`, `batches`, `bytes` and `elements_per_s` | the reader's end: what its agent was handed (the writer's count includes what still waits in a ring or socket). The writer's end stands in while no report of the reader's end exists (a reader not started yet, or on a host not reached) |
//! | `in_flight`, `released_early` | the reader's end (what its process holds unconsumed; a ring's writer cannot see it), the writer's while the reader's is missing |
//! | `max_in_flight` | the larger of the two ends' (a ring's writer counts what it wrote and has not seen consumed, what still waits in the ring included, in the writes where it reads the reader's consumption again; the reader what it read and has not consumed) |
//! | `dropped`, `blocked_ns`, `unacked_bytes`, `dropped_per_s`, `blocked_share` | the writer's end: only the writer drops, waits, and keeps unacknowledged bytes |
//! | `reconnects` | the larger of the two ends' counts (each end counts the connections it saw re-established) |
//!
//! [`LinkView::ends`] says which ends the view was made from.
//!
//! A connection's counters never go back in the view [`Aggregator::tick`] makes: each shows
//! the most it has shown so far. Without that, `elements` would drop when the reader's first
//! report takes over from the writer's larger count (Prometheus would see a counter reset);
//! it stays at the writer's count until the reader's passes it. The same holds for
//! `batches`, `bytes`, `released_early`, `max_in_flight`, `dropped`, `blocked_ns` and
//! `reconnects`. ([`Aggregator::own_view`], what other launchers merge, gives the counts as
//! they are: each launcher keeps the most it has shown itself.)
//!
//! # Restarts
//!
//! A restarted process counts from 0 again. [`Aggregator::restarted`] folds what the ended
//! incarnation last reported into a base that later reports are added to, so counters never
//! go back (what it counted between its last report and its death is lost: at most one
//! interval). A sample with a new pid is folded the same way even without that call. The
//! pid of an incarnation folded in is retired: a report of it that comes later (the killed
//! process's last report, handed over after the restart) is ignored rather than counted
//! twice.
//! Gauges (in flight, resident memory, unacknowledged bytes) are not folded: a dead process
//! holds nothing.
//!
//! # Rates
//!
//! Rates and shares are taken between a process's last two samples, by the times the samples
//! carry ([`ProcessSample::time_ms`]), so they do not depend on when [`Aggregator::tick`]
//! runs relative to the reports. They are `None` before a process's second sample, once its
//! last sample is older than three intervals, and when it is not running (ended, failed,
//! restarting).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::info::GraphInfo;
use crate::metrics::{LinkEnds, LinkStats, Metrics};
use crate::observe::model::{
    AgentView, AppMetrics, LinkView, ProcessSample, ProcessStatus, ProcessView, StreamView,
};

/// Gathers the reports of an application's processes into one [`AppMetrics`]. See the
/// [module docs](self).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use iotstream::observe::{Aggregator, ProcessSample, ProcessStatus};
/// use iotstream::Graph;
///
/// let mut g = Graph::new("tiny");
/// let xs = g.source_iter("numbers", 0..1000u64);
/// g.for_each("print", &xs, |_: &u64| {});
/// let mut agg = Aggregator::new(g.info(), "1234-ab", Duration::from_secs(1));
/// agg.set_status("main", ProcessStatus::Running, std::process::id());
/// let metrics = g.run().unwrap();
/// agg.record("main", ProcessSample { pid: std::process::id(), metrics, ..Default::default() });
/// let view = agg.tick(SystemTime::now());
/// assert_eq!(view.streams[0].elements, 1000);
/// assert_eq!(view.links[0].elements, 1000);
/// assert_eq!(view.agents[1].consumed, 1000);
/// ```
#[derive(Debug)]
pub struct Aggregator {
    info: GraphInfo,
    run: String,
    interval: Duration,
    agent_index: HashMap<String, usize>,
    /// Every stream: its name and its writer's index.
    streams: Vec<(String, usize)>,
    stream_index: HashMap<String, usize>,
    processes: Vec<ProcState>,
    process_index: HashMap<String, usize>,
    /// The last view of each other host merged in ([`Aggregator::merge_remote`]), and whether
    /// that host is reached now ([`Aggregator::forget_remote`] says it is not).
    remote: BTreeMap<String, (AppMetrics, bool)>,
    /// Per other host, the last view of each run of its launcher seen, oldest first (at most
    /// [`REMOTE_RUNS_KEPT`]; older ones folded into the first): the other runs' counters are
    /// added to the current view, so that a host started again does not take its counters
    /// back to zero ([`Aggregator::merge_remote`]), and each run counts once, whatever order
    /// views come in.
    remote_runs: BTreeMap<String, Vec<(String, AppMetrics)>>,
    /// Per connection: the most each counter has shown (see the module docs).
    shown: Vec<LinkMax>,
    view: AppMetrics,
}

/// The most a connection's counters have shown in the view.
#[derive(Clone, Copy, Debug, Default)]
struct LinkMax {
    elements: u64,
    batches: u64,
    bytes: u64,
    released_early: u64,
    max_in_flight: u64,
    dropped: u64,
    blocked_ns: u64,
    reconnects: u64,
}

impl LinkMax {
    /// Raises each counter of `l` to the most shown, and the most shown to it.
    fn hold(&mut self, l: &mut LinkView) {
        for (most, now) in [
            (&mut self.elements, &mut l.elements),
            (&mut self.batches, &mut l.batches),
            (&mut self.bytes, &mut l.bytes),
            (&mut self.released_early, &mut l.released_early),
            (&mut self.max_in_flight, &mut l.max_in_flight),
            (&mut self.dropped, &mut l.dropped),
            (&mut self.blocked_ns, &mut l.blocked_ns),
            (&mut self.reconnects, &mut l.reconnects),
        ] {
            *most = (*most).max(*now);
            *now = *most;
        }
    }
}

/// How many retired pids a process remembers.
const RETIRED_PIDS: usize = 4;

/// What the aggregator knows of one process.
#[derive(Debug, Default)]
struct ProcState {
    name: String,
    host: String,
    pid: u32,
    status: ProcessStatus,
    /// When its current incarnation started (as `set_status` learned of it).
    since: Option<SystemTime>,
    restarts: u64,
    /// What ended incarnations counted.
    base: Totals,
    /// The current incarnation's last sample, and its pid.
    raw: Option<(u32, Totals)>,
    /// The pids of the last incarnations folded into `base` (at most [`RETIRED_PIDS`]):
    /// their reports no longer count.
    retired: Vec<u32>,
    /// Totals (base plus the current incarnation) at the last two samples, with their times
    /// (milliseconds since the Unix epoch).
    cur: Option<(u64, Totals)>,
    prev: Option<(u64, Totals)>,
}

impl ProcState {
    /// Its incarnation `pid` was folded into `base`: later reports of it are ignored.
    fn retire(&mut self, pid: u32) {
        if pid == 0 || self.retired.contains(&pid) {
            return;
        }
        if self.retired.len() == RETIRED_PIDS {
            self.retired.remove(0);
        }
        self.retired.push(pid);
    }
}

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum End {
    Writer,
    Reader,
}

/// Counters of one process, by graph index.
#[derive(Clone, Debug, Default)]
struct Totals {
    cpu_ns: u64,
    rss_bytes: u64,
    agents: BTreeMap<usize, AgentCount>,
    streams: BTreeMap<usize, StreamCount>,
    links: BTreeMap<(usize, End), LinkCount>,
}

#[derive(Clone, Copy, Debug, Default)]
struct AgentCount {
    steps: u64,
    consumed: u64,
    busy_ns: u64,
    late: u64,
    undelivered: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamCount {
    elements: u64,
    batches: u64,
    watermark: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct LinkCount {
    elements: u64,
    batches: u64,
    dropped: u64,
    blocked_ns: u64,
    in_flight: u64,
    max_in_flight: u64,
    released_early: u64,
    bytes: u64,
    reconnects: u64,
    unacked_bytes: u64,
}

impl LinkCount {
    fn of(l: &LinkStats) -> LinkCount {
        LinkCount {
            elements: l.elements,
            batches: l.batches,
            dropped: l.dropped,
            blocked_ns: u64::try_from(l.blocked.as_nanos()).unwrap_or(u64::MAX),
            in_flight: l.in_flight,
            max_in_flight: l.max_in_flight,
            released_early: l.released_early,
            bytes: l.bytes,
            reconnects: l.reconnects,
            unacked_bytes: l.unacked_bytes,
        }
    }

    /// `self` (a base) plus a later incarnation's counts `n`; gauges from `n`.
    fn plus(&self, n: &LinkCount) -> LinkCount {
        LinkCount {
            elements: self.elements.saturating_add(n.elements),
            batches: self.batches.saturating_add(n.batches),
            dropped: self.dropped.saturating_add(n.dropped),
            blocked_ns: self.blocked_ns.saturating_add(n.blocked_ns),
            in_flight: n.in_flight,
            max_in_flight: self.max_in_flight.max(n.max_in_flight),
            released_early: self.released_early.saturating_add(n.released_early),
            bytes: self.bytes.saturating_add(n.bytes),
            reconnects: self.reconnects.saturating_add(n.reconnects),
            unacked_bytes: n.unacked_bytes,
        }
    }
}

impl Totals {
    /// `self` (a base) plus a later incarnation's totals `n`; gauges from `n`, a watermark
    /// from `n` if it has one.
    fn plus(&self, n: &Totals) -> Totals {
        let mut t = self.clone();
        t.cpu_ns = t.cpu_ns.saturating_add(n.cpu_ns);
        t.rss_bytes = n.rss_bytes;
        for (k, a) in &n.agents {
            let e = t.agents.entry(*k).or_default();
            e.steps = e.steps.saturating_add(a.steps);
            e.consumed = e.consumed.saturating_add(a.consumed);
            e.busy_ns = e.busy_ns.saturating_add(a.busy_ns);
            e.late = e.late.saturating_add(a.late);
            e.undelivered = e.undelivered.saturating_add(a.undelivered);
        }
        for (k, s) in &n.streams {
            let e = t.streams.entry(*k).or_default();
            e.elements = e.elements.saturating_add(s.elements);
            e.batches = e.batches.saturating_add(s.batches);
            e.watermark = s.watermark.or(e.watermark);
        }
        for (k, l) in &n.links {
            let e = t.links.entry(*k).or_default();
            *e = e.plus(l);
        }
        t
    }

    /// The same counts with every gauge at 0 (what a dead incarnation still holds).
    fn without_gauges(mut self) -> Totals {
        self.rss_bytes = 0;
        for l in self.links.values_mut() {
            l.in_flight = 0;
            l.unacked_bytes = 0;
        }
        self
    }
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Per second between two counter values `dt_s` apart; `None` if the counter went back.
fn per_s(cur: u64, prev: u64, dt_s: Option<f64>) -> Option<f64> {
    let dt = dt_s?;
    (cur >= prev).then(|| (cur - prev) as f64 / dt)
}

/// The share of `dt_s` that a nanosecond counter grew by, within 0..=1.
fn share(cur_ns: u64, prev_ns: u64, dt_s: Option<f64>) -> Option<f64> {
    per_s(cur_ns, prev_ns, dt_s).map(|ns_per_s| (ns_per_s / 1e9).clamp(0.0, 1.0))
}

impl Aggregator {
    /// An aggregator for the application `info` describes (as placed: every agent's process,
    /// every process's host, every connection's transport), run `run`, whose processes
    /// report every `interval`. Every process starts as [`ProcessStatus::Starting`] with no
    /// counters.
    pub fn new(info: GraphInfo, run: &str, interval: Duration) -> Aggregator {
        let agent_index = info
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        let streams: Vec<(String, usize)> = info
            .agents
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                a.outputs
                    .iter()
                    .map(move |p| (format!("{}.{}", a.name, p.name), i))
            })
            .collect();
        let stream_index = streams
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        let processes: Vec<ProcState> = info
            .processes
            .iter()
            .map(|p| ProcState {
                name: p.clone(),
                host: info
                    .host_of(p)
                    .map_or_else(|| crate::info::LOCAL_HOST.to_string(), |h| h.name.clone()),
                ..ProcState::default()
            })
            .collect();
        let process_index = processes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let mut agg = Aggregator {
            run: run.to_string(),
            interval,
            agent_index,
            streams,
            stream_index,
            processes,
            process_index,
            remote: BTreeMap::new(),
            remote_runs: BTreeMap::new(),
            shown: vec![LinkMax::default(); info.edges.len()],
            view: AppMetrics::default(),
            info,
        };
        agg.view = agg.build(SystemTime::now(), true);
        agg
    }

    /// The graph this aggregator was made for.
    pub fn graph(&self) -> &GraphInfo {
        &self.info
    }

    /// The reporting interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes process `process`'s report. Entries the graph does not know (an agent, stream or
    /// connection of another graph: a mismatched binary) are ignored, as is a report of an
    /// unknown process, and one of an incarnation already folded in (a retired pid: see the
    /// [module docs](self)). A sample whose `time_ms` is 0 is taken as made now.
    pub fn record(&mut self, process: &str, sample: ProcessSample) {
        let Some(&pi) = self.process_index.get(process) else {
            tracing::debug!("metrics of unknown process '{process}' ignored");
            return;
        };
        let time_ms = if sample.time_ms == 0 {
            epoch_ms(SystemTime::now())
        } else {
            sample.time_ms
        };
        if self.processes[pi].retired.contains(&sample.pid) {
            tracing::debug!(
                "a late report of process '{process}' (pid {}), already counted, ignored",
                sample.pid
            );
            return;
        }
        let raw = self.totals_of(&sample);
        let p = &mut self.processes[pi];
        if let Some((pid, old)) = p.raw.take() {
            if pid != sample.pid {
                // A new incarnation, whose restart was not announced: fold the old one.
                p.base = p.base.plus(&old).without_gauges();
                p.retire(pid);
            }
        }
        if p.pid == 0 {
            p.pid = sample.pid;
        }
        let totals = p.base.plus(&raw);
        p.raw = Some((sample.pid, raw));
        p.prev = p.cur.take();
        p.cur = Some((time_ms, totals));
    }

    /// Sets what process `process` is doing, and its pid (0: none). A new pid starts its up
    /// time. Unknown processes are ignored.
    pub fn set_status(&mut self, process: &str, status: ProcessStatus, pid: u32) {
        let Some(&pi) = self.process_index.get(process) else {
            return;
        };
        let p = &mut self.processes[pi];
        if pid != 0 && (pid != p.pid || p.since.is_none()) {
            p.since = Some(SystemTime::now());
        }
        // A new incarnation announced with a pid retired earlier (the system reused it).
        if pid != 0 && pid != p.pid {
            p.retired.retain(|&r| r != pid);
        }
        p.pid = pid;
        p.status = status;
    }

    /// Process `process` was started again after a failure: what its ended incarnation last
    /// reported is kept (folded into the totals later reports add to), and its restart count
    /// goes up by one.
    pub fn restarted(&mut self, process: &str) {
        let Some(&pi) = self.process_index.get(process) else {
            return;
        };
        let p = &mut self.processes[pi];
        if let Some((pid, old)) = p.raw.take() {
            p.base = p.base.plus(&old).without_gauges();
            p.retire(pid);
        }
        if let Some((time_ms, cur)) = p.cur.take() {
            p.cur = Some((time_ms, cur.without_gauges()));
        }
        p.restarts += 1;
    }

    /// Takes the view of another host's launcher (its own processes' part of the same
    /// application), to be shown for the processes of host `host`: their processes, agents,
    /// the streams they write, and their ends of connections (see [`LinkView::ends`]). It
    /// replaces the previous view of that host and takes effect at the next
    /// [`tick`](Self::tick). A host the graph does not name is ignored.
    ///
    /// A view of another run of that host's launcher (it was started again) adds to what the
    /// earlier runs counted: counters never go back during this run, as for a process of this
    /// host started again.
    pub fn merge_remote(&mut self, host: &str, view: AppMetrics) {
        if !self.info.hosts.iter().any(|h| h.name == host) {
            return;
        }
        let runs = self.remote_runs.entry(host.to_string()).or_default();
        match runs.iter_mut().find(|(run, _)| *run == view.run) {
            Some((_, last)) => *last = view.clone(),
            None => {
                runs.push((view.run.clone(), view.clone()));
                if runs.len() > REMOTE_RUNS_KEPT {
                    // The two oldest become one: what they counted stays, once.
                    let (_, second) = runs.remove(1);
                    carry_counters(&mut runs[0].1, &second);
                }
            }
        }
        let mut shown = view;
        for (run, other) in runs.iter() {
            if *run != shown.run {
                carry_counters(&mut shown, other);
            }
        }
        self.remote.insert(host.to_string(), (shown, true));
    }

    /// Host `host`'s launcher is not reached (now, or ever yet): its processes show as
    /// [`ProcessStatus::Unknown`] until a view of the host is merged again. Their counters
    /// stay at what the host's last view said (counters never go back), without rates or
    /// shares (nothing is known of the last interval).
    pub fn forget_remote(&mut self, host: &str) {
        if let Some((_, reached)) = self.remote.get_mut(host) {
            *reached = false;
        }
        for p in self.processes.iter_mut().filter(|p| p.host == host) {
            p.status = ProcessStatus::Unknown;
        }
    }

    /// Makes the view as of `now` (from the reports taken so far) and returns it. A
    /// connection's counters show at least what they showed at the last tick (see the
    /// [module docs](self)).
    pub fn tick(&mut self, now: SystemTime) -> &AppMetrics {
        let mut view = self.build(now, true);
        for (l, most) in view.links.iter_mut().zip(self.shown.iter_mut()) {
            most.hold(l);
        }
        self.view = view;
        &self.view
    }

    /// The view as of `now` of this aggregator's own reports only, no other host's view merged
    /// in (its processes on other hosts as it knows them itself: no counters): what a
    /// launcher tells the other hosts' launchers. Changes nothing.
    pub fn own_view(&self, now: SystemTime) -> AppMetrics {
        self.build(now, false)
    }

    /// The view the last [`tick`](Self::tick) made.
    pub fn view(&self) -> &AppMetrics {
        &self.view
    }

    fn totals_of(&self, sample: &ProcessSample) -> Totals {
        let Metrics {
            streams,
            links,
            agents,
        } = &sample.metrics;
        let mut t = Totals {
            cpu_ns: sample.cpu_ns,
            rss_bytes: sample.rss_bytes,
            ..Totals::default()
        };
        for a in agents {
            if let Some(&i) = self.agent_index.get(&a.name) {
                t.agents.insert(
                    i,
                    AgentCount {
                        steps: a.steps,
                        consumed: a.consumed,
                        busy_ns: u64::try_from(a.busy.as_nanos()).unwrap_or(u64::MAX),
                        late: a.late,
                        undelivered: a.undelivered,
                    },
                );
            }
        }
        for s in streams {
            if let Some(&i) = self.stream_index.get(&s.name) {
                t.streams.insert(
                    i,
                    StreamCount {
                        elements: s.elements,
                        batches: s.batches,
                        watermark: s.watermark,
                    },
                );
            }
        }
        for l in links {
            // The edge must be this graph's: same stream, same reader.
            let known = self.info.edges.get(l.edge).is_some_and(|e| {
                e.stream == l.stream && self.info.agents[e.to_agent].name == l.reader
            });
            if !known {
                continue;
            }
            let c = LinkCount::of(l);
            if l.ends.writer() {
                t.links.insert((l.edge, End::Writer), c);
            }
            if l.ends.reader() {
                t.links.insert((l.edge, End::Reader), c);
            }
        }
        t
    }

    /// The remote view that speaks for `process`, if its host's launcher sent one listing it,
    /// and whether that host is reached now.
    fn remote_for(&self, pi: usize) -> Option<(&AppMetrics, bool)> {
        let p = &self.processes[pi];
        self.remote
            .get(&p.host)
            .filter(|(v, _)| v.processes.iter().any(|q| q.process == p.name))
            .map(|(v, reached)| (v, *reached))
    }

    fn process_of_agent(&self, agent: usize) -> usize {
        self.process_index
            .get(&self.info.agents[agent].process)
            .copied()
            .unwrap_or(0)
    }

    /// The view as of `now`, with the other hosts' views merged in or not.
    fn build(&self, now: SystemTime, merged: bool) -> AppMetrics {
        let now_ms = epoch_ms(now);
        let stale_ms = u64::try_from(self.interval.as_millis().saturating_mul(3)).unwrap_or(0);
        // Per process: its current totals, previous totals and the seconds between them
        // (`None`: no rates), or the remote view that speaks for it.
        let spans: Vec<Span<'_>> = (0..self.processes.len())
            .map(|pi| {
                if let Some((view, reached)) = self.remote_for(pi).filter(|_| merged) {
                    return Span::Remote { view, reached };
                }
                let p = &self.processes[pi];
                let active = matches!(
                    p.status,
                    ProcessStatus::Starting | ProcessStatus::Running | ProcessStatus::Draining
                );
                let dt_s = match (&p.cur, &p.prev) {
                    (Some((t1, _)), Some((t0, _)))
                        if active && t1 > t0 && now_ms.saturating_sub(*t1) <= stale_ms =>
                    {
                        Some((t1 - t0) as f64 / 1e3)
                    }
                    _ => None,
                };
                Span::Local {
                    cur: p.cur.as_ref().map(|(_, t)| t),
                    prev: p.prev.as_ref().map(|(_, t)| t),
                    dt_s,
                }
            })
            .collect();

        let processes = self
            .processes
            .iter()
            .enumerate()
            .map(|(pi, p)| match &spans[pi] {
                Span::Remote { view, reached } => {
                    let mut q = view
                        .processes
                        .iter()
                        .find(|q| q.process == p.name)
                        .cloned()
                        .unwrap_or_default();
                    if !reached {
                        q.status = ProcessStatus::Unknown;
                        q.cpu_share = None;
                    }
                    q
                }
                Span::Local { cur, prev, dt_s } => {
                    let cpu = cur.map_or(0, |t| t.cpu_ns);
                    ProcessView {
                        process: p.name.clone(),
                        host: p.host.clone(),
                        pid: p.pid,
                        status: p.status,
                        up_s: p
                            .since
                            .filter(|_| p.pid != 0)
                            .and_then(|s| now.duration_since(s).ok())
                            .map_or(0.0, |d| d.as_secs_f64()),
                        cpu_s: cpu as f64 / 1e9,
                        cpu_share: prev
                            .and_then(|pr| per_s(cpu, pr.cpu_ns, *dt_s))
                            .map(|ns| ns / 1e9),
                        rss_bytes: cur.map_or(0, |t| t.rss_bytes),
                        restarts: p.restarts,
                    }
                }
            })
            .collect();

        let agents = self
            .info
            .agents
            .iter()
            .enumerate()
            .map(|(ai, a)| {
                let pi = self.process_of_agent(ai);
                let host = self.processes[pi].host.clone();
                match &spans[pi] {
                    Span::Remote { view, reached } => {
                        let mut v = view
                            .agents
                            .iter()
                            .find(|v| v.name == a.name)
                            .cloned()
                            .unwrap_or_else(|| AgentView {
                                name: a.name.clone(),
                                process: a.process.clone(),
                                host,
                                ..AgentView::default()
                            });
                        if !reached {
                            v.busy_share = None;
                        }
                        v
                    }
                    Span::Local { cur, prev, dt_s } => {
                        let c = cur.and_then(|t| t.agents.get(&ai)).copied();
                        let c = c.unwrap_or_default();
                        let p = prev.and_then(|t| t.agents.get(&ai)).copied();
                        AgentView {
                            name: a.name.clone(),
                            process: a.process.clone(),
                            host,
                            steps: c.steps,
                            consumed: c.consumed,
                            busy_ns: c.busy_ns,
                            late: c.late,
                            undelivered: c.undelivered,
                            busy_share: p.and_then(|p| share(c.busy_ns, p.busy_ns, *dt_s)),
                        }
                    }
                }
            })
            .collect();

        let streams = self
            .streams
            .iter()
            .enumerate()
            .map(|(si, (name, writer))| {
                let pi = self.process_of_agent(*writer);
                let blank = StreamView {
                    name: name.clone(),
                    writer: self.info.agents[*writer].name.clone(),
                    process: self.processes[pi].name.clone(),
                    host: self.processes[pi].host.clone(),
                    ..StreamView::default()
                };
                match &spans[pi] {
                    Span::Remote { view, reached } => {
                        let mut v = view
                            .streams
                            .iter()
                            .find(|v| &v.name == name)
                            .cloned()
                            .unwrap_or(blank);
                        if !reached {
                            v.elements_per_s = None;
                        }
                        v
                    }
                    Span::Local { cur, prev, dt_s } => {
                        let c = cur.and_then(|t| t.streams.get(&si)).copied();
                        let c = c.unwrap_or_default();
                        let p = prev.and_then(|t| t.streams.get(&si)).copied();
                        StreamView {
                            elements: c.elements,
                            batches: c.batches,
                            watermark: c.watermark,
                            elements_per_s: p.and_then(|p| per_s(c.elements, p.elements, *dt_s)),
                            ..blank
                        }
                    }
                }
            })
            .collect();

        let links = (0..self.info.edges.len())
            .map(|ei| {
                let e = &self.info.edges[ei];
                let half = |agent: usize, end: End| -> Option<LinkView> {
                    let pi = self.process_of_agent(agent);
                    match &spans[pi] {
                        Span::Remote { view, reached } => {
                            let mut l = view
                                .links
                                .iter()
                                .find(|l| l.edge == ei && l.stream == e.stream)
                                .filter(|l| {
                                    l.ends.is_some_and(|x| match end {
                                        End::Writer => x.writer(),
                                        End::Reader => x.reader(),
                                    })
                                })
                                .cloned()?;
                            if !reached {
                                l.elements_per_s = None;
                                l.dropped_per_s = None;
                                l.blocked_share = None;
                            }
                            Some(l)
                        }
                        Span::Local { cur, prev, dt_s } => {
                            let c = cur.and_then(|t| t.links.get(&(ei, end)))?;
                            let p = prev.and_then(|t| t.links.get(&(ei, end)));
                            Some(self.half_view(ei, c, p, *dt_s, end))
                        }
                    }
                };
                let writer = half(e.from_agent, End::Writer);
                let reader = half(e.to_agent, End::Reader);
                self.combine(ei, writer, reader)
            })
            .collect();

        AppMetrics {
            app: self.info.app.clone(),
            run: self.run.clone(),
            time_ms: now_ms,
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            processes,
            agents,
            streams,
            links,
        }
    }

    /// A connection's view with only its static fields filled.
    fn blank_link(&self, ei: usize) -> LinkView {
        let e = &self.info.edges[ei];
        let reader = &self.info.agents[e.to_agent];
        LinkView {
            edge: ei,
            stream: e.stream.clone(),
            reader: reader.name.clone(),
            input: reader
                .inputs
                .get(e.to_port)
                .map_or_else(String::new, |p| p.name.clone()),
            transport: e.transport.clone(),
            // What the backlog can reach: the credit both bounds allow on the transport
            // (`LinkStats::capacity`), not the element bound asked for (a graph described by
            // an older program has no credit: the element bound, then).
            capacity: if e.credit > 0 { e.credit } else { e.capacity } as u64,
            ..LinkView::default()
        }
    }

    /// One end's counters of connection `ei` as a view, rates against `p`.
    fn half_view(
        &self,
        ei: usize,
        c: &LinkCount,
        p: Option<&LinkCount>,
        dt_s: Option<f64>,
        end: End,
    ) -> LinkView {
        LinkView {
            ends: Some(match end {
                End::Writer => LinkEnds::Writer,
                End::Reader => LinkEnds::Reader,
            }),
            elements: c.elements,
            batches: c.batches,
            dropped: c.dropped,
            blocked_ns: c.blocked_ns,
            in_flight: c.in_flight,
            max_in_flight: c.max_in_flight,
            released_early: c.released_early,
            bytes: c.bytes,
            reconnects: c.reconnects,
            unacked_bytes: c.unacked_bytes,
            elements_per_s: p.and_then(|p| per_s(c.elements, p.elements, dt_s)),
            dropped_per_s: p.and_then(|p| per_s(c.dropped, p.dropped, dt_s)),
            blocked_share: p.and_then(|p| share(c.blocked_ns, p.blocked_ns, dt_s)),
            ..self.blank_link(ei)
        }
    }

    /// Connection `ei`'s view from its writer's and reader's ends (see the module docs for
    /// which end says what).
    fn combine(&self, ei: usize, writer: Option<LinkView>, reader: Option<LinkView>) -> LinkView {
        let ends = match (&writer, &reader) {
            (Some(_), Some(_)) => Some(LinkEnds::Both),
            (Some(_), None) => Some(LinkEnds::Writer),
            (None, Some(_)) => Some(LinkEnds::Reader),
            (None, None) => None,
        };
        let blank = LinkView {
            ends,
            ..self.blank_link(ei)
        };
        let delivery = reader.as_ref().or(writer.as_ref());
        LinkView {
            elements: delivery.map_or(0, |l| l.elements),
            batches: delivery.map_or(0, |l| l.batches),
            bytes: delivery.map_or(0, |l| l.bytes),
            elements_per_s: delivery.and_then(|l| l.elements_per_s),
            in_flight: delivery.map_or(0, |l| l.in_flight),
            max_in_flight: writer
                .as_ref()
                .map_or(0, |l| l.max_in_flight)
                .max(reader.as_ref().map_or(0, |l| l.max_in_flight)),
            released_early: delivery.map_or(0, |l| l.released_early),
            dropped: writer.as_ref().map_or(0, |l| l.dropped),
            blocked_ns: writer.as_ref().map_or(0, |l| l.blocked_ns),
            unacked_bytes: writer.as_ref().map_or(0, |l| l.unacked_bytes),
            dropped_per_s: writer.as_ref().and_then(|l| l.dropped_per_s),
            blocked_share: writer.as_ref().and_then(|l| l.blocked_share),
            reconnects: writer
                .as_ref()
                .map_or(0, |l| l.reconnects)
                .max(reader.as_ref().map_or(0, |l| l.reconnects)),
            ..blank
        }
    }
}

/// Where a process's part of the view comes from.
enum Span<'a> {
    /// This aggregator's own reports.
    Local {
        cur: Option<&'a Totals>,
        prev: Option<&'a Totals>,
        /// Seconds between the two reports, when rates may be given.
        dt_s: Option<f64>,
    },
    /// Another host's launcher's last view, and whether that host is reached now.
    Remote { view: &'a AppMetrics, reached: bool },
}

/// The live view served from an aggregator that its owner keeps up to date (records reports,
/// ticks every interval).
impl crate::observe::http::ViewSource for Mutex<Aggregator> {
    fn graph(&self) -> GraphInfo {
        self.lock().unwrap_or_else(|p| p.into_inner()).info.clone()
    }

    fn metrics(&self) -> AppMetrics {
        self.lock().unwrap_or_else(|p| p.into_inner()).view.clone()
    }
}

/// The runs of another host's launcher whose last views [`Aggregator::merge_remote`] keeps
/// apart; older ones are folded together.
const REMOTE_RUNS_KEPT: usize = 8;

/// Adds the counters of `base` (what earlier runs of a host's launcher counted) to those of the
/// same processes, agents, streams and connection ends in `view`; gauges (memory, backlog,
/// status) and rates stay `view`'s. The processes of a new run count one restart more.
fn carry_counters(view: &mut AppMetrics, base: &AppMetrics) {
    // Indexed by name: a graph of many agents is matched in one pass, not one search each.
    let processes: HashMap<&str, &ProcessView> = base
        .processes
        .iter()
        .map(|b| (b.process.as_str(), b))
        .collect();
    for p in &mut view.processes {
        if let Some(b) = processes.get(p.process.as_str()) {
            p.cpu_s += b.cpu_s;
            p.restarts += b.restarts + 1;
        }
    }
    let agents: HashMap<&str, &AgentView> =
        base.agents.iter().map(|b| (b.name.as_str(), b)).collect();
    for a in &mut view.agents {
        if let Some(b) = agents.get(a.name.as_str()) {
            a.steps += b.steps;
            a.consumed += b.consumed;
            a.busy_ns += b.busy_ns;
            a.late += b.late;
            a.undelivered += b.undelivered;
        }
    }
    let streams: HashMap<&str, &StreamView> =
        base.streams.iter().map(|b| (b.name.as_str(), b)).collect();
    for st in &mut view.streams {
        if let Some(b) = streams.get(st.name.as_str()) {
            st.elements += b.elements;
            st.batches += b.batches;
            st.watermark = st.watermark.max(b.watermark);
        }
    }
    // A connection has at most two ends here (writer, reader).
    let mut links: HashMap<(usize, &str), Vec<&LinkView>> = HashMap::new();
    for b in &base.links {
        links
            .entry((b.edge, b.stream.as_str()))
            .or_default()
            .push(b);
    }
    for l in &mut view.links {
        let same = links
            .get(&(l.edge, l.stream.as_str()))
            .and_then(|ends| ends.iter().find(|b| b.ends == l.ends));
        if let Some(b) = same {
            l.elements += b.elements;
            l.batches += b.batches;
            l.dropped += b.dropped;
            l.blocked_ns += b.blocked_ns;
            l.bytes += b.bytes;
            l.reconnects += b.reconnects;
            l.released_early += b.released_early;
            l.max_in_flight = l.max_in_flight.max(b.max_in_flight);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AgentStats, StreamStats};
    use crate::stream::Policy;
    use crate::Graph;

    /// numbers (main) → double (main) → print (printer): edge 0 in process, edge 1 a ring.
    fn info() -> GraphInfo {
        let mut g = Graph::new("tiny");
        let xs = g.source_iter("numbers", 0..10u64);
        let doubled = g.map("double", &xs, |x: &u64| x * 2);
        g.for_each("print", &doubled, |_: &u64| {});
        g.place_in_process("print", "printer");
        g.info()
    }

    fn agg() -> Aggregator {
        Aggregator::new(info(), "1-x", Duration::from_secs(1))
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn link(edge: usize, ends: LinkEnds, stream: &str, reader: &str) -> LinkStats {
        LinkStats {
            edge,
            ends,
            stream: stream.into(),
            reader: reader.into(),
            input: "in".into(),
            policy: Policy::Block,
            capacity: 1024,
            elements: 0,
            batches: 0,
            dropped: 0,
            blocked: Duration::ZERO,
            in_flight: 0,
            max_in_flight: 0,
            released_early: 0,
            bytes: 0,
            reconnects: 0,
            unacked_bytes: 0,
        }
    }

    fn agent(name: &str, steps: u64, busy_ms: u64) -> AgentStats {
        AgentStats {
            name: name.into(),
            steps,
            consumed: steps * 10,
            busy: Duration::from_millis(busy_ms),
            late: 0,
            undelivered: 0,
        }
    }

    /// The main process's report: `n` elements through `numbers` and `double`; the ring's
    /// writer end sent `n`, dropped `dropped`, was blocked `blocked_ms`.
    fn main_sample(time_ms: u64, pid: u32, n: u64, blocked_ms: u64) -> ProcessSample {
        let mut edge0 = link(0, LinkEnds::Both, "numbers.out", "double");
        edge0.elements = n;
        edge0.in_flight = 7;
        let mut edge1 = link(1, LinkEnds::Writer, "double.out", "print");
        edge1.elements = n;
        edge1.batches = n / 10;
        edge1.dropped = 3;
        edge1.blocked = Duration::from_millis(blocked_ms);
        edge1.bytes = 999;
        edge1.reconnects = 1;
        ProcessSample {
            pid,
            time_ms,
            cpu_ns: n * 1_000_000,
            rss_bytes: 5 << 20,
            metrics: Metrics {
                streams: vec![
                    StreamStats {
                        name: "numbers.out".into(),
                        writer: "numbers".into(),
                        elements: n,
                        batches: n / 10,
                        watermark: None,
                    },
                    StreamStats {
                        name: "double.out".into(),
                        writer: "double".into(),
                        elements: n,
                        batches: n / 10,
                        watermark: Some(n),
                    },
                ],
                links: vec![edge0, edge1],
                agents: vec![agent("numbers", n / 10, 10), agent("double", n / 10, n)],
            },
        }
    }

    /// The printer process's report: its reader end of the ring had `n` delivered, holds
    /// `in_flight`.
    fn printer_sample(time_ms: u64, pid: u32, n: u64, in_flight: u64) -> ProcessSample {
        let mut edge1 = link(1, LinkEnds::Reader, "double.out", "print");
        edge1.elements = n;
        edge1.batches = n / 20;
        edge1.in_flight = in_flight;
        edge1.max_in_flight = in_flight;
        edge1.bytes = 900;
        edge1.reconnects = 2;
        ProcessSample {
            pid,
            time_ms,
            cpu_ns: 1_000_000,
            rss_bytes: 1 << 20,
            metrics: Metrics {
                streams: vec![],
                links: vec![edge1],
                agents: vec![agent("print", n / 20, 5)],
            },
        }
    }

    #[test]
    fn a_view_before_any_report_lists_the_whole_graph_with_zeros() {
        let mut a = agg();
        let v = a.tick(at(1_000)).clone();
        assert_eq!(v.app, "tiny");
        assert_eq!(v.run, "1-x");
        assert_eq!(v.interval_ms, 1000);
        assert_eq!(v.time_ms, 1000);
        let procs: Vec<_> = v.processes.iter().map(|p| p.process.as_str()).collect();
        assert_eq!(procs, ["main", "printer"]);
        assert!(v
            .processes
            .iter()
            .all(|p| p.status == ProcessStatus::Starting));
        let agents: Vec<_> = v.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(agents, ["numbers", "double", "print"]);
        assert_eq!(v.agents[2].process, "printer");
        let streams: Vec<_> = v.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(streams, ["numbers.out", "double.out"]);
        assert_eq!(v.links.len(), 2);
        assert_eq!(v.links[1].transport, "shared-memory");
        assert_eq!(v.links[1].input, "in");
        assert_eq!(v.links[1].ends, None);
        assert_eq!(v.links[1].elements, 0);
        assert_eq!(v.links[1].elements_per_s, None);
    }

    #[test]
    fn the_two_ends_of_a_connection_are_put_together_each_counter_from_its_end() {
        let mut a = agg();
        a.record("main", main_sample(1_000, 10, 100, 250));
        // Only the writer has reported: its counts stand in.
        let v = a.own_view(at(1_000));
        assert_eq!(v.links[1].ends, Some(LinkEnds::Writer));
        assert_eq!(v.links[1].elements, 100);
        assert_eq!(v.links[1].dropped, 3);
        a.record("printer", printer_sample(1_000, 11, 80, 20));
        let v = a.tick(at(1_000)).clone();
        let l = &v.links[1];
        assert_eq!(l.ends, Some(LinkEnds::Both));
        // Delivery: the reader's.
        assert_eq!((l.elements, l.batches, l.bytes), (80, 4, 900));
        assert_eq!((l.in_flight, l.max_in_flight), (20, 20));
        // Drops, waits: the writer's.
        assert_eq!(l.dropped, 3);
        assert_eq!(l.blocked_ns, 250_000_000);
        // Re-established connections: the larger count.
        assert_eq!(l.reconnects, 2);
        // The in-process connection: one report, both ends.
        assert_eq!(v.links[0].ends, Some(LinkEnds::Both));
        assert_eq!((v.links[0].elements, v.links[0].in_flight), (100, 7));
        // Agents and streams from their own process.
        assert_eq!(v.agents[1].steps, 10);
        assert_eq!(v.agents[2].steps, 4);
        assert_eq!(v.streams[1].watermark, Some(100));
        assert_eq!(v.streams[0].watermark, None);
    }

    #[test]
    fn rates_come_from_the_last_two_samples_of_a_process() {
        let mut a = agg();
        a.set_status("main", ProcessStatus::Running, 10);
        a.set_status("printer", ProcessStatus::Running, 11);
        a.record("main", main_sample(10_000, 10, 1_000, 100));
        a.record("printer", printer_sample(10_000, 11, 800, 0));
        let v = a.tick(at(10_500)).clone();
        assert_eq!(v.streams[0].elements_per_s, None, "one sample: no rate yet");
        assert_eq!(v.processes[0].cpu_share, None);
        // Two seconds later: 4 000 more elements, 1.5 s more blocked.
        a.record("main", main_sample(12_000, 10, 5_000, 1_600));
        a.record("printer", printer_sample(12_000, 11, 4_800, 0));
        // A tick at any time within three intervals gives the same rates.
        let v = a.tick(at(14_000)).clone();
        assert_eq!(v.streams[0].elements_per_s, Some(2_000.0));
        assert_eq!(
            v.links[1].elements_per_s,
            Some(2_000.0),
            "the reader's rate"
        );
        assert_eq!(v.links[1].blocked_share, Some(0.75));
        assert_eq!(v.links[1].dropped_per_s, Some(0.0));
        // `double` was busy `n` ms: 4 000 ms more over 2 s is more than all of it.
        assert_eq!(v.agents[1].busy_share, Some(1.0));
        assert_eq!(v.agents[0].busy_share, Some(0.0));
        // 4 000 ms of CPU over 2 s: two cores.
        assert_eq!(v.processes[0].cpu_share, Some(2.0));
        assert_eq!(v.processes[0].cpu_s, 5.0);
        // Once the last sample is older than three intervals, no rates.
        let v = a.tick(at(15_001)).clone();
        assert_eq!(v.streams[0].elements_per_s, None);
        assert_eq!(v.streams[0].elements, 5_000, "counters stay");
        // Nor for a process that ended.
        a.set_status("main", ProcessStatus::Ended, 0);
        let v = a.tick(at(12_000)).clone();
        assert_eq!(v.streams[0].elements_per_s, None);
        assert_eq!(v.processes[0].pid, 0);
    }

    #[test]
    fn a_restart_keeps_what_the_ended_incarnation_counted() {
        let mut a = agg();
        a.set_status("printer", ProcessStatus::Running, 11);
        a.record("printer", printer_sample(1_000, 11, 800, 30));
        a.record("printer", printer_sample(2_000, 11, 1_000, 30));
        a.set_status("printer", ProcessStatus::Restarting, 0);
        a.restarted("printer");
        let v = a.tick(at(2_100)).clone();
        assert_eq!(v.processes[1].restarts, 1);
        assert_eq!(v.processes[1].status, ProcessStatus::Restarting);
        assert_eq!(v.links[1].elements, 1_000, "nothing goes back");
        assert_eq!(v.links[1].in_flight, 0, "a dead process holds nothing");
        assert_eq!(v.processes[1].rss_bytes, 0);
        assert_eq!(v.links[1].elements_per_s, None);
        // The new incarnation counts from 0 again.
        a.set_status("printer", ProcessStatus::Running, 12);
        a.record("printer", printer_sample(3_000, 12, 200, 5));
        let v = a.tick(at(3_000)).clone();
        let l = &v.links[1];
        assert_eq!(l.elements, 1_200);
        assert_eq!(l.batches, 50 + 10);
        assert_eq!(l.in_flight, 5);
        assert_eq!(l.max_in_flight, 30, "the most ever, over incarnations");
        assert_eq!(l.reconnects, 4);
        assert_eq!(v.agents[2].steps, 50 + 10);
        assert_eq!(v.processes[1].cpu_s, 0.002);
        assert_eq!(v.processes[1].pid, 12);
        // Rates across the restart: 200 more than the dead one's last, over 1 s.
        assert_eq!(l.elements_per_s, Some(200.0));
        // A new pid without `restarted` is folded too, and not counted as a restart.
        a.record("printer", printer_sample(4_000, 13, 100, 0));
        let v = a.tick(at(4_000)).clone();
        assert_eq!(v.links[1].elements, 1_300);
        assert_eq!(v.processes[1].restarts, 1);
    }

    #[test]
    fn a_connections_counters_never_go_back_when_the_reader_takes_over() {
        let mut a = agg();
        // The writer's end reports first: 100 elements, 10 batches, 999 bytes.
        a.record("main", main_sample(1_000, 10, 100, 0));
        let v = a.tick(at(1_000)).clone();
        assert_eq!(v.links[1].ends, Some(LinkEnds::Writer));
        assert_eq!(
            (v.links[1].elements, v.links[1].batches, v.links[1].bytes),
            (100, 10, 999)
        );
        // The reader's end, behind it (80 elements, 4 batches, 900 bytes), takes over: the
        // view stays at what it showed rather than going back (a counter reset).
        a.record("printer", printer_sample(1_000, 11, 80, 20));
        let v = a.tick(at(1_000)).clone();
        let l = &v.links[1];
        assert_eq!(l.ends, Some(LinkEnds::Both));
        assert_eq!((l.elements, l.batches, l.bytes), (100, 10, 999));
        assert_eq!(l.in_flight, 20, "a gauge is the reader's as it is");
        // Once the reader's counts pass it, they show.
        a.record("main", main_sample(2_000, 10, 400, 0));
        a.record("printer", printer_sample(2_000, 11, 300, 0));
        let v = a.tick(at(2_000)).clone();
        assert_eq!((v.links[1].elements, v.links[1].batches), (300, 15));
        assert_eq!(v.links[1].elements_per_s, Some(220.0), "the reader's rate");
        // At every tick, no link counter is below the one before.
        let mut last = v.links.clone();
        a.record("printer", printer_sample(3_000, 11, 310, 0));
        for t in [3_000, 4_000] {
            let v = a.tick(at(t)).clone();
            for (now, before) in v.links.iter().zip(&last) {
                assert!(now.elements >= before.elements, "{now:?} {before:?}");
                assert!(now.batches >= before.batches);
                assert!(now.bytes >= before.bytes);
                assert!(now.reconnects >= before.reconnects);
                assert!(now.dropped >= before.dropped);
            }
            last = v.links.clone();
        }
        // What other launchers merge is the counts as they are.
        a.record("printer", printer_sample(5_000, 11, 320, 0));
        let own = a.own_view(at(5_000));
        assert_eq!(own.links[1].bytes, 900);
    }

    #[test]
    fn a_late_report_of_a_killed_incarnation_is_not_counted_twice() {
        let mut a = agg();
        a.set_status("printer", ProcessStatus::Running, 11);
        a.record("printer", printer_sample(1_000, 11, 800, 0));
        // Killed and restarted: its last report (800) is folded in.
        a.set_status("printer", ProcessStatus::Restarting, 0);
        a.restarted("printer");
        // Its control channel hands over one more report after that: ignored.
        a.record("printer", printer_sample(1_500, 11, 900, 0));
        let v = a.tick(at(1_600)).clone();
        assert_eq!(v.links[1].elements, 800);
        assert_eq!(v.agents[2].steps, 40);
        // The new incarnation counts on top of the folded one, once.
        a.set_status("printer", ProcessStatus::Running, 12);
        a.record("printer", printer_sample(2_000, 12, 200, 0));
        let v = a.tick(at(2_000)).clone();
        assert_eq!(v.links[1].elements, 1_000);
        assert_eq!(v.agents[2].steps, 40 + 10);
        assert_eq!(v.processes[1].restarts, 1);
        // A late report of the old pid still changes nothing, now or later.
        a.record("printer", printer_sample(2_100, 11, 950, 0));
        a.record("printer", printer_sample(3_000, 12, 300, 0));
        let v = a.tick(at(3_000)).clone();
        assert_eq!(v.links[1].elements, 1_100);
        assert_eq!(v.processes[1].pid, 12);
        // An incarnation folded without `restarted` (a new pid reported) is retired too.
        a.record("printer", printer_sample(4_000, 13, 50, 0));
        a.record("printer", printer_sample(4_100, 12, 310, 0));
        let v = a.tick(at(4_100)).clone();
        assert_eq!(v.links[1].elements, 1_150);
        // A pid the system hands out again to a new incarnation counts again.
        a.set_status("printer", ProcessStatus::Running, 11);
        a.record("printer", printer_sample(5_000, 11, 5, 0));
        let v = a.tick(at(5_000)).clone();
        assert_eq!(v.links[1].elements, 1_155);
    }

    #[test]
    fn reports_of_unknown_parts_are_ignored() {
        let mut a = agg();
        a.record("nowhere", main_sample(1_000, 1, 5, 0));
        let mut s = main_sample(1_000, 10, 100, 0);
        // An edge index of another graph, and one that names another stream.
        s.metrics.links[0].edge = 99;
        s.metrics.links[1].edge = 0;
        s.metrics.agents[0].name = "ghost".into();
        a.record("main", s);
        let v = a.tick(at(1_000)).clone();
        assert_eq!(v.links[0].ends, None);
        assert_eq!(v.links[1].ends, None);
        assert_eq!(v.agents[0].steps, 0);
        assert_eq!(v.agents[1].steps, 10);
    }

    /// Hosts "a" (process main) and "b" (process printer).
    fn two_hosts() -> Vec<crate::info::HostInfo> {
        let host = |name: &str, address: &str, process: &str| crate::info::HostInfo {
            name: name.into(),
            address: address.into(),
            port: 7000,
            observe_port: None,
            processes: vec![process.into()],
        };
        vec![
            host("a", "10.0.0.1", "main"),
            host("b", "10.0.0.2", "printer"),
        ]
    }

    #[test]
    fn another_hosts_view_speaks_for_its_processes_and_its_ends() {
        // The same graph, "printer" on host "b".
        let mut i = info();
        i.hosts = two_hosts();
        i.edges[1].transport = "tcp".into();
        let mut here = Aggregator::new(i.clone(), "1-x", Duration::from_secs(1));
        let mut there = Aggregator::new(i, "1-x", Duration::from_secs(1));
        here.record("main", main_sample(1_000, 10, 100, 0));
        there.set_status("printer", ProcessStatus::Running, 77);
        there.record("printer", printer_sample(1_000, 77, 60, 9));
        let remote = there.tick(at(1_000)).clone();
        assert_eq!(remote.links[1].ends, Some(LinkEnds::Reader));
        here.merge_remote("b", remote.clone());
        here.merge_remote("nowhere", AppMetrics::default());
        let own = here.own_view(at(1_000));
        assert_eq!(
            own.links[1].ends,
            Some(LinkEnds::Writer),
            "nothing of b's is its own"
        );
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.processes[1].pid, 77);
        assert_eq!(v.processes[1].host, "b");
        assert_eq!(v.processes[1].status, ProcessStatus::Running);
        assert_eq!(v.agents[2].steps, 3);
        let l = &v.links[1];
        assert_eq!(l.ends, Some(LinkEnds::Both));
        assert_eq!((l.elements, l.in_flight, l.dropped), (60, 9, 3));
        assert_eq!(l.transport, "tcp");
        // The remote view's own processes only: main stays this aggregator's.
        assert_eq!(v.processes[0].cpu_s, 0.1);
        // A host no longer reached: its processes are unknown, their counters what was last
        // heard (never going back), without rates.
        here.forget_remote("b");
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.processes[1].status, ProcessStatus::Unknown);
        assert_eq!(v.agents[2].steps, 3);
        assert_eq!(v.agents[2].busy_share, None);
        assert_eq!(v.links[1].ends, Some(LinkEnds::Both));
        assert_eq!(v.links[1].elements, 60, "the reader's last count stays");
        assert_eq!(v.links[1].elements_per_s, None);
        // Reached again.
        here.merge_remote("b", remote);
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.processes[1].status, ProcessStatus::Running);
    }

    /// Host b's launcher started again (a new run of its part, counting from zero): its
    /// counters add to what the run before counted, never going back (found by an audit:
    /// steps 1140 → 0 in the other host's view). A view of the same run replaces the last.
    #[test]
    fn another_hosts_counters_never_go_back_when_its_launcher_starts_again() {
        let mut i = info();
        i.hosts = two_hosts();
        i.edges[1].transport = "tcp".into();
        let mut here = Aggregator::new(i.clone(), "1-x", Duration::from_secs(1));
        let view_of = |run: &str, elements: u64| {
            let mut there = Aggregator::new(i.clone(), run, Duration::from_secs(1));
            there.set_status("printer", ProcessStatus::Running, 77);
            there.record("printer", printer_sample(1_000, 77, elements, 0));
            there.tick(at(1_000)).clone()
        };
        here.merge_remote("b", view_of("2-y", 60));
        here.merge_remote("b", view_of("2-y", 70));
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.links[1].elements, 70, "the same run: its latest count");
        assert_eq!(v.agents[2].steps, 3);
        here.merge_remote("b", view_of("3-z", 40));
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.links[1].elements, 110, "a new run adds to the last");
        assert_eq!(v.agents[2].steps, 3 + 2);
        assert_eq!(v.processes[1].restarts, 1);
        here.merge_remote("b", view_of("4-w", 1));
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.links[1].elements, 111, "and each one after");
        assert_eq!(v.processes[1].restarts, 2);
        // Views of earlier runs again (a late answer): each run still counts once.
        for _ in 0..3 {
            here.merge_remote("b", view_of("2-y", 70));
            here.merge_remote("b", view_of("4-w", 1));
        }
        let v = here.tick(at(1_000)).clone();
        assert_eq!(
            v.links[1].elements, 111,
            "each run once, whatever the order"
        );
        // Many runs: the oldest are folded, nothing counted twice or lost.
        for k in 0..20 {
            here.merge_remote("b", view_of(&format!("{}-r", 10 + k), 2));
        }
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.links[1].elements, 111 + 40);
    }

    #[test]
    fn a_host_never_reached_is_unknown_with_its_writers_count_standing_in() {
        let mut i = info();
        i.hosts = two_hosts();
        let mut here = Aggregator::new(i, "1-x", Duration::from_secs(1));
        here.set_status("main", ProcessStatus::Running, 10);
        here.record("main", main_sample(1_000, 10, 100, 0));
        here.forget_remote("b");
        let v = here.tick(at(1_000)).clone();
        assert_eq!(v.processes[1].status, ProcessStatus::Unknown);
        assert_eq!(v.processes[0].status, ProcessStatus::Running);
        assert_eq!(v.links[1].ends, Some(LinkEnds::Writer));
        assert_eq!(v.links[1].elements, 100, "the writer's count stands in");
    }

    #[test]
    fn the_view_round_trips_through_json() {
        let mut a = agg();
        a.record("main", main_sample(1_000, 10, 100, 0));
        let v = a.tick(at(1_000)).clone();
        let json = serde_json::to_string(&v).unwrap();
        let back: AppMetrics = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }
}
