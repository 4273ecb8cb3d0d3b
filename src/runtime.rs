//! The threaded runtime: every agent an actix actor, placed on arbiters (threads).
//!
//! [`Graph::run`] runs an application to its end; [`Graph::start`] starts it and returns a
//! [`Running`] handle to push input, read counters while it runs, ask it to stop, and wait.
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
//!   [`Error::Stalled`](crate::Error::Stalled) naming the connection, instead of hanging.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use actix::{Actor, ActorContext, Addr, Arbiter, Context, Handler, Message, System};

use crate::error::Error;
use crate::graph::Graph;
use crate::host::{Driver, Envelope, Host, Mailbox};
use crate::metrics::{Metrics, Registry};
use crate::ops::source::{InputSender, SourceThreadCtx};
use crate::stream::{Element, PortId, Stream};

/// State shared by every actor of one run.
struct Shared {
    /// Envelopes posted and not yet handled, plus actors not yet started.
    in_flight: AtomicUsize,
    /// Source agents not yet finished.
    active_sources: AtomicUsize,
    /// Source agents not finished and blocked on credit: they cannot produce until a credit
    /// envelope arrives, so they do not keep the application from being quiescent.
    blocked_sources: AtomicUsize,
    /// Agents not yet finished.
    hosts_left: AtomicUsize,
    /// Set to stop sources (graceful) or after a failure.
    stop: Arc<AtomicBool>,
    error: Mutex<Option<Error>>,
    system: Mutex<Option<System>>,
    mailboxes: Mutex<Vec<Arc<dyn Mailbox>>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        tracing::error!("{e}");
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        drop(slot);
        self.stop.store(true, Ordering::SeqCst);
        self.stop_system();
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
        let left = self.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0
            && self.active_sources.load(Ordering::SeqCst)
                == self.blocked_sources.load(Ordering::SeqCst)
            && self.hosts_left.load(Ordering::SeqCst) > 0
        {
            // Quiescent with agents still open: nothing is in flight and no source can produce.
            // What is left is feedback loops (which this closes) or a stall (which the hosts
            // holding undeliverable data report when they receive this).
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
}

struct Msg(Envelope);

impl Message for Msg {
    type Result = ();
}

struct ActorMailbox {
    addr: Addr<AgentActor>,
    shared: Arc<Shared>,
}

impl Mailbox for ActorMailbox {
    fn post(&self, env: Envelope) {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        // do_send ignores the mailbox capacity; every data message is bounded by credit.
        self.addr.do_send(Msg(env));
    }
}

struct AgentActor {
    host: Host,
    shared: Arc<Shared>,
    finished: bool,
    /// This is a source counted in `Shared::blocked_sources`.
    counted_blocked: bool,
}

impl AgentActor {
    fn after(&mut self, result: Result<(), Error>, ctx: &mut Context<Self>) {
        if let Err(e) = result {
            self.shared.fail(e);
            ctx.stop();
            return;
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
    }
}

impl Actor for AgentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let r = self.host.run();
        self.after(r, ctx);
        self.shared.handled();
    }
}

impl Handler<Msg> for AgentActor {
    type Result = ();

    fn handle(&mut self, Msg(env): Msg, ctx: &mut Context<Self>) {
        let forced = matches!(env, Envelope::ForceClose);
        let r = self.host.accept(env).and_then(|()| {
            if forced && !self.host.is_done() {
                let stalled = self.host.stalled();
                if !stalled.is_empty() {
                    return Err(Error::Stalled {
                        detail: stalled.join("; "),
                    });
                }
            }
            self.host.run()
        });
        self.after(r, ctx);
        self.shared.handled();
    }
}

/// A running application. See the [module docs](self).
pub struct Running {
    app: String,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
    inputs: HashMap<PortId, Box<dyn Any + Send>>,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    /// Every counter, now.
    pub fn metrics(&self) -> Metrics {
        self.registry.snapshot()
    }

    /// The sender of an input stream made with [`Graph::input`]. Each input's sender can be taken
    /// once; inputs whose sender is never taken are closed by [`Running::join`].
    pub fn input<T: Element>(&mut self, stream: &Stream<T>) -> Result<InputSender<T>, Error> {
        self.inputs
            .remove(&stream.id)
            .and_then(|b| b.downcast::<InputSender<T>>().ok())
            .map(|b| *b)
            .ok_or_else(|| Error::Runtime {
                detail: format!(
                    "application '{}': stream #{}.{} is not an input made with Graph::input, or its sender was already taken",
                    self.app, stream.id.agent, stream.id.port
                ),
            })
    }

    /// Asks every source to stop: each ends its stream after what it already emitted, and the
    /// application drains and ends normally.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the end of the run; returns the final counters or the first error.
    pub fn join(mut self) -> Result<Metrics, Error> {
        self.inputs.clear(); // dropping untaken senders ends those inputs
        let thread = self.thread.take().expect("joined once");
        let result = thread.join().unwrap_or_else(|p| {
            Err(Error::Runtime {
                detail: format!(
                    "the runtime thread panicked: {}",
                    crate::error::panic_message(&*p)
                ),
            })
        });
        result.map(|()| self.registry.snapshot())
    }
}

type Ready = Result<(Arc<Registry>, HashMap<PortId, Box<dyn Any + Send>>), Error>;

impl Graph {
    /// Runs the application on threads until it ends; returns its final counters or the first
    /// error. See [`runtime`](crate::runtime).
    pub fn run(self) -> Result<Metrics, Error> {
        self.start()?.join()
    }

    /// Starts the application on threads and returns at once.
    pub fn start(self) -> Result<Running, Error> {
        self.validate()?;
        let app = self.name.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
        let thread = std::thread::Builder::new()
            .name(format!("iotstream {app}"))
            .spawn(move || coordinate(self, stop_thread, ready_tx))
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start the runtime thread: {e}"),
            })?;
        match ready_rx.recv() {
            Ok(Ok((registry, inputs))) => Ok(Running {
                app,
                registry,
                stop,
                inputs,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
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
}

/// The runtime thread: builds the actors, runs the actix system, tears everything down.
fn coordinate(
    mut graph: Graph,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Ready>,
) -> Result<(), Error> {
    let system = System::new();
    let n = graph.agents.len();
    let shared = Arc::new(Shared {
        in_flight: AtomicUsize::new(n),
        active_sources: AtomicUsize::new(0),
        blocked_sources: AtomicUsize::new(0),
        hosts_left: AtomicUsize::new(n),
        stop: Arc::clone(&stop),
        error: Mutex::new(None),
        system: Mutex::new(Some(System::current())),
        mailboxes: Mutex::new(Vec::new()),
    });
    // Addresses exist before the actors, so every link can be wired before any actor starts.
    let channels: Vec<_> = (0..n)
        .map(|_| actix::dev::channel::channel::<AgentActor>(16))
        .collect();
    let mut receivers = Vec::with_capacity(n);
    let mailboxes: Vec<Arc<dyn Mailbox>> = channels
        .into_iter()
        .map(|(tx, rx)| {
            receivers.push(rx);
            Arc::new(ActorMailbox {
                addr: Addr::new(tx),
                shared: Arc::clone(&shared),
            }) as Arc<dyn Mailbox>
        })
        .collect();
    *shared.mailboxes.lock().unwrap_or_else(|p| p.into_inner()) = mailboxes.clone();
    let threads: Vec<Option<String>> = graph.agents.iter().map(|a| a.thread.clone()).collect();
    let externals = std::mem::take(&mut graph.externals);
    let (hosts, registry) = match graph.instantiate(&mailboxes) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let registry = Arc::new(registry);

    let mut inputs = HashMap::new();
    for (id, ext) in externals {
        let wake = Arc::clone(&mailboxes[ext.agent()]);
        inputs.insert(id, ext.into_sender(wake));
    }

    let mut arbiters: HashMap<String, Arbiter> = HashMap::new();
    let mut result = Ok(());
    for (i, ((mut host, ctx), thread)) in hosts.into_iter().zip(receivers).zip(threads).enumerate()
    {
        let key = thread.unwrap_or_else(|| format!("agent #{i}"));
        let arbiter = arbiters.entry(key).or_insert_with(Arbiter::new);
        if host.is_source() {
            shared.active_sources.fetch_add(1, Ordering::SeqCst);
            if let Driver::Source(src) = &mut host.driver {
                let spawned = src.spawn(SourceThreadCtx {
                    name: host.name.to_string(),
                    wake: Arc::clone(&mailboxes[i]),
                    stop: Arc::clone(&stop),
                });
                if let Err(e) = spawned {
                    result = Err(e);
                    break;
                }
            }
        }
        let actor = AgentActor {
            host,
            shared: Arc::clone(&shared),
            finished: false,
            counted_blocked: false,
        };
        arbiter.spawn_fn(move || {
            Context::with_receiver(ctx).run(actor);
        });
    }
    if let Err(e) = result {
        stop.store(true, Ordering::SeqCst);
        let _ = ready.send(Err(e));
    } else if ready.send(Ok((Arc::clone(&registry), inputs))).is_err() {
        stop.store(true, Ordering::SeqCst);
    } else {
        system.run().map_err(|e| Error::Runtime {
            detail: format!("the actix system failed: {e}"),
        })?;
    }
    stop.store(true, Ordering::SeqCst);
    for (_, arbiter) in arbiters.drain() {
        arbiter.stop();
        arbiter.join().ok();
    }
    // Drop the mailboxes' addresses so nothing keeps the actors alive.
    shared
        .mailboxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    *shared.system.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
