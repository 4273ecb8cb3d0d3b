//! The deterministic test harness: push input, run to quiescence, read output.
//!
//! [`Harness`] runs a [`Graph`] in the calling thread, with no actix and no other threads:
//! agents step in a fixed order, envelopes are delivered first in, first out, and `run` returns
//! when nothing is left to do. The agents, buffers, links, credits and end-of-stream handling are
//! exactly those of a threaded run (both executors share one host implementation), so a test
//! written with the harness checks the code that runs in production, just deterministically.
//!
//! ```
//! use iotstream::{Graph, Harness};
//!
//! let mut g = Graph::new("double");
//! let x = g.input::<u64>("x");
//! let y = g.map("double", &x, |v: &u64| 2 * v);
//! let out = g.collect("out", &y);
//!
//! let mut h = Harness::new(g).unwrap();
//! h.push(&x, [0, 1, 2]).unwrap();
//! h.run().unwrap();
//! assert_eq!(out.values(), [0, 2, 4]);
//! h.push(&x, [10, 20, 30]).unwrap();
//! h.run().unwrap();
//! assert_eq!(out.values(), [0, 2, 4, 20, 40, 60]);
//! h.finish().unwrap(); // close the inputs, drain, check everything ended
//! ```
//!
//! Sources in the graph ([`Graph::source_iter`], …) are called inline until exhausted; a periodic
//! source's period is ignored. A graph that never becomes quiescent makes `run` fail instead of
//! hanging: a source that emits more than [`Harness::set_max_source_elements`] elements (10
//! million unless set) in one `run` (an endless one), one that returns `Ok(true)` with nothing
//! appended 100 times in a row (it waits for outside input: a poller, which only a threaded run
//! can drive), or a loop that never stops emitting, after [`Harness::set_max_rounds`] rounds.
//!
//! An agent's failure (an error or a panic) ends the run as in a threaded one: what it
//! appended before reaches its readers, and every later call returns that first error.
//!
//! # Processing time
//!
//! The harness has its own clock for agents' timers
//! ([`Inputs::wake_at`](crate::Inputs::wake_at)): it starts at zero and moves only when the
//! test calls [`Harness::advance_clock`], which then runs every timer that came due. A test
//! of "after 30 s without input" therefore takes no time and never depends on the machine.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::graph::ExternalAny;
use crate::graph::{Graph, Part};
use crate::host::{Clock, Envelope, Host, Mailbox};
use crate::metrics::{Metrics, Registry, StreamCounters};
use crate::ops::handoff::{PutError, Wait};
use crate::ops::source::ExternalInput;
use crate::stream::{Element, PortId, Stream};

type Queue = Arc<Mutex<VecDeque<(usize, Envelope)>>>;

struct QueueMailbox {
    queue: Queue,
    target: usize,
}

impl Mailbox for QueueMailbox {
    fn post(&self, env: Envelope) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((self.target, env));
    }
}

/// Runs a graph deterministically in the calling thread. See the [module docs](self).
pub struct Harness {
    app: String,
    hosts: Vec<Host>,
    queue: Queue,
    registry: Registry,
    externals: HashMap<PortId, Box<dyn ExternalAny>>,
    /// The name of every stream of the graph, for errors about them.
    stream_names: HashMap<PortId, String>,
    max_rounds: u64,
    /// The streams of the graph's own sources (not the test's inputs), each with its source's
    /// host (an index in `hosts`) and name: what they emitted is bounded per `run` (see
    /// `set_max_source_elements`).
    source_streams: Vec<(usize, String, Arc<StreamCounters>)>,
    max_source_elements: u64,
    /// The agents' processing time, in nanoseconds.
    clock: Arc<AtomicU64>,
    /// The first failure of an agent (or of the runtime): every later call returns it, as a
    /// threaded run stops at its first failure (stepping on would step the failed agent
    /// again, on the input it failed on).
    failed: Option<Error>,
}

impl Harness {
    /// The default of [`Harness::set_max_source_elements`].
    pub const DEFAULT_MAX_SOURCE_ELEMENTS: u64 = 10_000_000;

    /// Checks and instantiates `graph`. Fails with every wiring problem at once.
    pub fn new(mut graph: Graph) -> Result<Harness, Error> {
        let queue: Queue = Arc::default();
        let mailboxes: Vec<Option<Arc<dyn Mailbox>>> = (0..graph.agents.len())
            .map(|target| {
                Some(Arc::new(QueueMailbox {
                    queue: Arc::clone(&queue),
                    target,
                }) as Arc<dyn Mailbox>)
            })
            .collect();
        let (hosts, registry) = graph.instantiate(&mailboxes, &Part::whole())?;
        let fed_by_the_test: Vec<String> = graph
            .externals
            .keys()
            .map(|id| graph.agents[id.agent as usize].name.clone())
            .collect();
        let source_streams = hosts
            .iter()
            .enumerate()
            .filter(|(_, (_, h))| h.is_source() && !fed_by_the_test.iter().any(|n| **n == *h.name))
            .flat_map(|(i, (_, h))| {
                registry
                    .streams
                    .iter()
                    .filter(|(_, agent, _)| **agent == *h.name)
                    .map(move |(_, agent, c)| (i, agent.clone(), Arc::clone(c)))
            })
            .collect();
        let clock: Arc<AtomicU64> = Arc::default();
        let hosts = hosts
            .into_iter()
            .map(|(_, mut h)| {
                h.clock = Clock::Manual(Arc::clone(&clock));
                h
            })
            .collect();
        Ok(Harness {
            app: graph.name.clone(),
            hosts,
            queue,
            registry,
            externals: std::mem::take(&mut graph.externals),
            stream_names: graph.output_names(),
            max_rounds: 10_000_000,
            source_streams,
            max_source_elements: Harness::DEFAULT_MAX_SOURCE_ELEMENTS,
            clock,
            failed: None,
        })
    }

    /// The agents' processing time (see the [module docs](self#processing-time)).
    pub fn clock(&self) -> Duration {
        Duration::from_nanos(self.clock.load(Ordering::SeqCst))
    }

    /// Moves the agents' processing time forward by `by`, then runs (see [`run`](Self::run))
    /// with every timer that came due.
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::{Graph, Harness};
    /// use iotstream::ops::event::Watermarks;
    ///
    /// let mut g = Graph::new("quiet");
    /// let x = g.input::<(u64, f64)>("x");
    /// // Idle after 5 s of processing time without an element.
    /// let timed = g.watermarks("timed", &x, Watermarks::ascending().idle_after(Duration::from_secs(5)));
    /// let out = g.collect("out", &timed);
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&x, [(1, 0.5)]).unwrap();
    /// h.advance_clock(Duration::from_secs(6)).unwrap();
    /// assert_eq!(h.clock(), Duration::from_secs(6));
    /// assert_eq!(h.metrics().stream("timed.out").unwrap().elements, 1);
    /// h.finish().unwrap();
    /// assert_eq!(out.values(), [(1, 0.5)]);
    /// ```
    pub fn advance_clock(&mut self, by: Duration) -> Result<(), Error> {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.clock
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            })
            .expect("the update always succeeds");
        self.run()
    }

    /// How many rounds `run` may take before it reports that the graph never settles.
    pub fn set_max_rounds(&mut self, rounds: u64) -> &mut Self {
        self.max_rounds = rounds;
        self
    }

    /// How many elements each of the graph's own sources ([`Graph::source_iter`],
    /// [`Graph::source_fn`], …; not the test's [`Graph::input`]s) may emit in one
    /// [`run`](Self::run) and still be going before `run` fails, naming the source: a source that never ends (a
    /// `source_fn` without a count, whose period the harness ignores) would otherwise keep
    /// `run` busy until memory runs out. Default [`Harness::DEFAULT_MAX_SOURCE_ELEMENTS`]; raise it for
    /// a finite source larger than that.
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::{Graph, Harness};
    /// let mut g = Graph::new("ticks");
    /// let t = g.source_fn("tick", Duration::from_millis(100), None, || 1u64);
    /// g.for_each("drop", &t, |_: &u64| {});
    /// let mut h = Harness::new(g).unwrap();
    /// h.set_max_source_elements(1_000);
    /// let err = h.run().unwrap_err().to_string();
    /// assert!(err.contains("source 'tick' emitted"), "{err}");
    /// ```
    pub fn set_max_source_elements(&mut self, elements: u64) -> &mut Self {
        self.max_source_elements = elements;
        self
    }

    /// The first of the graph's sources still going that emitted more than its bound since
    /// `start` (what each had emitted when `run` began), as the error `run` returns.
    fn endless_source(&self, start: &[u64]) -> Option<Error> {
        let (name, emitted) = self
            .source_streams
            .iter()
            .zip(start)
            .filter(|((host, _, _), _)| !self.hosts[*host].is_done())
            .map(|((_, name, c), s)| (name, c.elements.load(Ordering::Relaxed) - s))
            .find(|&(_, n)| n > self.max_source_elements)?;
        Some(Error::Stalled {
            detail: format!(
                "harness of '{}': source '{name}' emitted {emitted} elements in one run and has \
                 not ended: a source that never ends (a source_fn without a count: the harness \
                 ignores periods) never lets the harness settle; give it a count, or raise the \
                 bound with Harness::set_max_source_elements (now {})",
                self.app, self.max_source_elements
            ),
        })
    }

    fn external<T: Element>(&self, stream: &Stream<T>) -> Result<&ExternalInput<T>, Error> {
        self.externals
            .get(&stream.id)
            .and_then(|e| e.as_any().downcast_ref::<ExternalInput<T>>())
            .ok_or_else(|| {
                let what = match self.stream_names.get(&stream.id) {
                    Some(name) => format!(
                        "stream '{name}' is not an input made with Graph::input, or it was closed"
                    ),
                    None => "the stream is not one of this application's".to_string(),
                };
                Error::Runtime {
                    detail: format!("harness of '{}': {what}", self.app),
                }
            })
    }

    /// Appends `items` to an input stream made with [`Graph::input`]. Nothing runs until
    /// [`Harness::run`] (unless the input holds as much as it may, in which case the graph
    /// runs until it has room); what was pushed until then travels as one batch, as it would
    /// in a threaded run whose input's agent was busy. If the graph, run until nothing is left
    /// to do, still takes no more of the input (a zip fed one side only, beyond its
    /// connection's capacity), the push fails with [`Error::Stalled`] naming the connections
    /// that hold up.
    pub fn push<T: Element>(
        &mut self,
        stream: &Stream<T>,
        items: impl IntoIterator<Item = T>,
    ) -> Result<(), Error> {
        self.still_running()?;
        let mut items = items.into_iter();
        // One element goes in without a Vec of its own.
        let mut batch: Vec<T> = Vec::new();
        let mut one = None;
        match (items.next(), items.next()) {
            (Some(a), None) => one = Some(a),
            (Some(a), Some(b)) => {
                batch.extend([a, b]);
                batch.extend(items);
            }
            (None, _) => {}
        }
        // Ends: a push that finds no room runs the graph until nothing is left to do; still no
        // room then is a stall (the graph will never take more), not another run.
        let mut ran = false;
        loop {
            let ext = self.external(stream)?;
            let agent = ext.agent;
            let put = match one.take() {
                Some(item) => ext
                    .tx
                    .put_one(item, Wait::Never)
                    .map_err(|(e, t)| (e, Some(t))),
                None => ext.tx.put(&mut batch, Wait::Never).map_err(|e| (e, None)),
            };
            match put {
                Ok(_) => {
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back((agent, Envelope::Wake));
                    return Ok(());
                }
                Err((PutError::Full, item)) => {
                    if ran {
                        let held: Vec<String> =
                            self.hosts.iter().flat_map(|h| h.stalled()).collect();
                        return Err(Error::Stalled {
                            detail: format!(
                                "harness of '{}': input '{}' holds as much as it may, and the \
                                 graph, run until nothing is left to do, takes no more of it{}{}",
                                self.app,
                                self.hosts[agent].name,
                                if held.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", held.join("; "))
                                },
                                self.timers_to_come()
                            ),
                        });
                    }
                    one = item;
                    self.run()?;
                    ran = true;
                }
                Err((PutError::ReaderGone, _)) => {
                    unreachable!("the source agent holds the reading end")
                }
            }
        }
    }

    /// The agents' timers still to come, as a hint after a stall's message: in the harness
    /// time moves only by [`advance_clock`](Self::advance_clock), and a timer's step may take
    /// in what the graph holds now.
    fn timers_to_come(&self) -> String {
        let now = self.clock();
        let timers: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| !h.is_done())
            .filter_map(|h| {
                h.timer()
                    .map(|at| format!("'{}' at {:?}", h.name, at.saturating_sub(now)))
            })
            .collect();
        if timers.is_empty() {
            String::new()
        } else {
            format!(
                "; agents wait for their timers ({}, from now): Harness::advance_clock runs them",
                timers.join(", ")
            )
        }
    }

    /// Ends an input stream made with [`Graph::input`].
    pub fn close<T: Element>(&mut self, stream: &Stream<T>) -> Result<(), Error> {
        self.still_running()?;
        let agent = self.external(stream)?.agent;
        // Dropping the sender ends the stream once queued chunks are taken.
        self.externals.remove(&stream.id);
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((agent, Envelope::Wake));
        Ok(())
    }

    /// Runs until nothing is left to do: every envelope delivered, every agent with input
    /// stepped, every source exhausted (or waiting for input from the test).
    ///
    /// Once an agent has failed (an error or a panic), this and every later call (`push`,
    /// `close`, `advance_clock`, `finish`) return that first error: the run is over, as a
    /// threaded run is.
    pub fn run(&mut self) -> Result<(), Error> {
        self.still_running()?;
        let result = self.run_rounds(None);
        if let Err(e) = &result {
            if matches!(
                e,
                Error::Agent { .. } | Error::Panic { .. } | Error::Runtime { .. }
            ) {
                // What the failed agent appended before it failed reaches its readers, as in a
                // threaded run; it is not stepped again, nor is any source.
                let failed = e.agent().map(str::to_string);
                let _ = self.run_rounds(Some(failed.as_deref().unwrap_or_default()));
                self.failed = Some(e.clone());
            }
        }
        result
    }

    /// The first failure, if an agent has failed.
    fn still_running(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Rounds until nothing is left to do. `settling` after a failure (of the agent it names):
    /// neither that agent nor the sources step.
    fn run_rounds(&mut self, settling: Option<&str>) -> Result<(), Error> {
        let start: Vec<u64> = self
            .source_streams
            .iter()
            .map(|(_, _, c)| c.elements.load(Ordering::Relaxed))
            .collect();
        for _ in 0..self.max_rounds {
            if let Some(endless) = self.endless_source(&start) {
                return Err(endless);
            }
            let delivered = self.deliver()?;
            let mut stepped = false;
            for h in &mut self.hosts {
                h.fire_timer_if_due();
            }
            for h in &mut self.hosts {
                let held = settling.is_some_and(|failed| h.is_source() || *h.name == *failed);
                if h.ready() && !held {
                    stepped = true;
                    h.run()?;
                }
            }
            if !delivered && !stepped {
                return Ok(());
            }
        }
        Err(Error::Stalled {
            detail: format!(
                "harness of '{}': still busy after {} rounds (an endless source, or a feedback loop that never stops emitting?)",
                self.app, self.max_rounds
            ),
        })
    }

    fn deliver(&mut self) -> Result<bool, Error> {
        let batch: Vec<_> = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let any = !batch.is_empty();
        for (target, env) in batch {
            self.hosts[target].accept(env)?;
        }
        Ok(any)
    }

    /// Closes every input, runs to the end, and checks that every agent finished. Agents still
    /// open then are in feedback loops, or after one: the inputs a loop feeds are closed (the
    /// loop has gone quiet), and the agents after it end by end of stream. Data
    /// that can never be delivered is an [`Error::Stalled`] naming the connection.
    pub fn finish(&mut self) -> Result<(), Error> {
        self.still_running()?;
        let open: Vec<_> = self.externals.drain().map(|(_, e)| e).collect();
        drop(open);
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_source() {
                self.queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((i, Envelope::Wake));
            }
        }
        self.run()?;
        self.check_stalled()?;
        if !self.is_finished() {
            for i in 0..self.hosts.len() {
                if !self.hosts[i].is_done() {
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back((i, Envelope::ForceClose));
                }
            }
            self.run()?;
            self.check_stalled()?;
        }
        if let Some(h) = self.hosts.iter().find(|h| !h.is_done()) {
            return Err(Error::Stalled {
                detail: format!("agent '{}' did not finish", h.name),
            });
        }
        Ok(())
    }

    fn check_stalled(&self) -> Result<(), Error> {
        let lines: Vec<String> = self.hosts.iter().flat_map(|h| h.stalled()).collect();
        if lines.is_empty() {
            Ok(())
        } else {
            Err(Error::Stalled {
                detail: lines.join("; "),
            })
        }
    }

    /// True once every agent has closed its outputs.
    pub fn is_finished(&self) -> bool {
        self.hosts.iter().all(Host::is_done)
    }

    /// Every counter of the application.
    pub fn metrics(&self) -> Metrics {
        self.registry.snapshot()
    }
}
