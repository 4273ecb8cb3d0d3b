//! Agents stepped by the thread that delivers their input: no mailbox hop, no extra wake-up.
//!
//! An actor whose every input comes from another process is woken, on a worker of the pool, by
//! the link's feeder thread: the writer's step wakes the feeder (the ring's futex, or the
//! socket), the feeder posts the batch to the agent's actix mailbox, which wakes the worker,
//! which steps. Two wake-ups (each a few to tens of microseconds on an idle core) between the
//! writer's step and the reader's. A [`DirectMailbox`] takes the second one out: whoever posts
//! to it runs the agent's step right there, on its own thread, the feeder included. So one
//! wake-up separates the two steps, as with a raw ring. The runtime gives one to every agent
//! fed only from other processes, to a source whose every output is a ring (its source
//! thread, or the program through an `InputSender`, steps it), and to a source and every stage
//! of a chain it alone feeds into rings or TCP links (its source thread steps them all, one
//! after the other, from the hand-over to the write into the ring or the link's queue: see
//! `runtime.rs` `stepped_directly`; a blocked TCP link posts when its reader acknowledges, as
//! a ring's watcher does when room comes back).
//!
//! Posts never wait for each other: a post queues its envelope, then tries to take the agent.
//! If another thread holds it (it is stepping), that thread takes the queued envelope in
//! before it lets go (it looks at the queue once more after letting go, so nothing is left
//! behind). The agent is still stepped by one thread at a time, and a burst that queued up while
//! it was busy is taken in at once and handled by one step, as on a worker (adaptive batching).
//! A step that posts to an agent it is nested in (credit going back up) only queues.
//!
//! One exception: a source's own thread is its chain's *driver* (it posts with
//! [`Mailbox::post_as_driver`]), and a driver waits for its turn. Otherwise a worker that
//! stepped a stage once (its first step, a timer) could keep it: the source's thread refills
//! and posts while the worker steps, finds the stage taken, leaves its batch queued, and the
//! worker, seeing it after its burst, steps again, for the whole stream (the chain then runs
//! on two threads handing each batch over, which is what the chain's direct stepping is there
//! to avoid; a test saw it in a third of its runs). So a post from a driver's thread to a
//! stage of its chain that another thread holds waits for that thread's burst, marked by
//! `driver_waits`, which tells the other thread to leave what waits to the driver, and its
//! host to stop between two steps (a source's agent steps again for as long as its thread
//! keeps up: `Host::run_yielding`). The driver steps at least once when it gets the agent:
//! the other thread may have taken its envelope in, and stopped with steps to go.
//!
//! A driver also waits for the rings its chain writes into: when a stage is blocked on a ring
//! (a connection that waits for room, `Policy::Block`, holds data for it: the reader is
//! behind; a connection that drops never holds its writer), the driver parks in that stage's
//! loop, holding it and the stages before it (its step is nested in theirs), until something
//! is posted to it (the ring's space watcher posts a credit when room comes back; the post
//! unparks the driver instead of stepping the stage), and steps it there. The
//! watcher would otherwise step the stage itself, and the chain would run on two threads
//! again, the watcher writing into the ring what the source's thread had just made beside it
//! on the other core (in a test, the watcher stepped 92–99 % of a stream in half the runs; the
//! `processes` 1 KiB cell of `iotstream bench` moved about 1.25× the elements with the driver
//! waiting). The source's thread then calls `fill` again only once the ring has room, as a
//! raw ring's producer waits before it makes the next elements. It stops waiting when the run
//! stops or fails (what is left is then the watcher's to step). Meanwhile what is posted to
//! the stages before it (a timer, a credit) waits in their queues until the driver returns
//! through them (while the source's thread was in `fill`, a worker could step them).
//!
//! No deadlock: a driver holds a prefix of its chain (the source's agent, then each stage its
//! step posts data to) and waits only for the stage after it, or for a ring's reader; the
//! threads it waits for never wait for a stage of its chain (their posts there only try,
//! another chain's driver's too; a ring's reader is in another process and reads nothing a
//! chain stage holds, each stage reading only the stage before it), and a post back up the
//! chain to a stage the driver itself holds (credit) only queues.
//!
//! The agent is installed before anything can post to it (so a source's thread, which starts
//! once every agent is set up, finds every stage of its chain there); its timers run on its
//! worker of the pool, which also queues its first step. A source's thread starts only once
//! every stage of its chain has made that first step, or found the stage taken
//! (`host::StartGate`, one per source): a first step that came after the source's first
//! batch could take it in and step it, and the stages after it, on the worker. (What is
//! posted to a stage during its first step is stepped by a later task on the worker, which
//! waits for no gate: a stage that posts at its first step may still hand a little of the
//! stream to its worker.) A task there steps the agent for one burst and leaves what waits
//! after it to another task, so the worker's other actors have their turns between them.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::Duration;

use actix::ArbiterHandle;

use super::{Next, Shared, Tended};
use crate::host::{join_waiting, Envelope, Mailbox};

thread_local! {
    /// Set for good on a source's thread once it posts as its chain's driver
    /// ([`Mailbox::post_as_driver`]): the chain (its source agent) whose stages its posts wait
    /// for (see the module docs). Its posts to other agents only try.
    static DRIVER: Cell<Option<usize>> = const { Cell::new(None) };
    /// Its address tells this thread from the others ([`this_thread`]).
    static THREAD_TOKEN: u8 = const { 0 };
}

/// A number unique to the calling thread among the live threads, never 0.
fn this_thread() -> usize {
    THREAD_TOKEN.with(|t| t as *const u8 as usize)
}

/// What waits for the agent.
enum Item {
    /// An envelope, counted in `Shared::in_flight` until its step has run.
    Envelope(Envelope),
    /// The first step (counted in `Shared::in_flight` from the run's start).
    Start,
    /// The timer asked for at this time fired.
    Timer(Duration),
}

/// Where the agent is.
enum State {
    /// Not started yet: items wait.
    Waiting,
    /// Running: whoever holds the lock steps it.
    Running(Box<Agent>),
    /// Failed or torn down: items are dropped.
    Gone,
}

/// The agent and its executor's state.
struct Agent {
    tended: Tended,
    /// Where its timers (and its first step) run.
    worker: ArbiterHandle,
    /// The queue, swapped with the mailbox's to take a burst at once (keeps its allocation).
    burst: VecDeque<Item>,
    /// It failed: nothing more is taken in.
    stopped: bool,
}

/// The mailbox of an agent stepped by whoever posts to it. See the [module docs](self).
pub(super) struct DirectMailbox {
    shared: Arc<Shared>,
    /// The chain it is a stage of (its source agent's index, the source's own included),
    /// whose driver waits for its turn; `None` for an agent stepped by its feeders.
    chain: Option<usize>,
    /// Items posted and not yet taken in. Bounded as every mailbox is: data by the links'
    /// credit, the rest by what the run sends (one credit per batch, a wake-up, a close).
    queue: Mutex<VecDeque<Item>>,
    agent: Mutex<State>,
    /// The thread holding `agent` ([`this_thread`]) while it steps, 0 otherwise: tells a
    /// driver's post to a stage it is nested in (which only queues) from one to a stage
    /// another thread holds (which waits).
    holder: AtomicUsize,
    /// The chain's driver waits for `agent`: the thread holding it leaves what waits to the
    /// driver, and other threads do not take it.
    driver_waits: AtomicBool,
    /// The chain's driver, parked in this stage's drive loop until something is posted to it
    /// (see [`park_driver`](Self::park_driver)); `driver_parked` says so without the lock.
    parked: Mutex<Option<std::thread::Thread>>,
    driver_parked: AtomicBool,
    this: Weak<DirectMailbox>,
}

impl DirectMailbox {
    /// A mailbox whose agent is given later, by [`install`](Self::install), a stage of
    /// `chain` if given.
    pub(super) fn new(shared: Arc<Shared>, chain: Option<usize>) -> Arc<DirectMailbox> {
        Arc::new_cyclic(|this| DirectMailbox {
            shared,
            chain,
            queue: Mutex::new(VecDeque::new()),
            agent: Mutex::new(State::Waiting),
            holder: AtomicUsize::new(0),
            driver_waits: AtomicBool::new(false),
            parked: Mutex::new(None),
            driver_parked: AtomicBool::new(false),
            this: this.clone(),
        })
    }

    /// Hands the agent over, to be stepped by whoever posts to it from now on, its timers
    /// and first step on `worker`.
    pub(super) fn install(&self, tended: Tended, worker: ArbiterHandle) {
        *self.lock_agent() = State::Running(Box::new(Agent {
            tended,
            worker,
            burst: VecDeque::new(),
            stopped: false,
        }));
    }

    /// The chain it is a stage of (its source agent's index, the source's own agent
    /// included), stepped by the source's thread as its driver; `None` if it is none.
    pub(super) fn chain(&self) -> Option<usize> {
        self.chain
    }

    /// Runs the agent's first step, with whatever was posted before, on this thread (its
    /// worker), unless another thread steps it: then that one does.
    pub(super) fn first_step(&self) {
        self.push(Item::Start);
        self.drive_on_worker();
    }

    /// Drops the agent (and its host): the run is over. Waits for a step in progress.
    pub(super) fn tear_down(&self) {
        let gone = std::mem::replace(&mut *self.lock_agent(), State::Gone);
        drop(gone);
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn lock_agent(&self) -> MutexGuard<'_, State> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Item) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(item);
    }

    /// Takes the agent if no other thread has it (on the chain's driver: waits for it unless
    /// this thread has it), and steps it until nothing waits.
    fn drive(&self) {
        let driver = self.chain.is_some() && DRIVER.with(Cell::get) == self.chain;
        self.drive_at_most(usize::MAX, driver);
    }

    /// The agent, if this thread may take it now: not if another thread has it, unless
    /// `wait` (a driver), and then only if that thread is not this one; not for other
    /// threads while the driver waits for it. With whether this thread waited for it.
    fn take_agent(&self, wait: bool) -> Option<(MutexGuard<'_, State>, bool)> {
        if !wait && self.driver_waits.load(Ordering::SeqCst) {
            return None;
        }
        match self.agent.try_lock() {
            Ok(guard) => Some((guard, false)),
            Err(TryLockError::Poisoned(p)) => Some((p.into_inner(), false)),
            // Another thread steps it and looks at the queue before and after it lets go.
            Err(TryLockError::WouldBlock) if !wait => None,
            // This thread steps it: a post back up the chain, taken in by the step it is
            // nested in.
            Err(TryLockError::WouldBlock)
                if self.holder.load(Ordering::SeqCst) == this_thread() =>
            {
                None
            }
            Err(TryLockError::WouldBlock) => {
                self.driver_waits.store(true, Ordering::SeqCst);
                let guard = self.lock_agent();
                self.driver_waits.store(false, Ordering::SeqCst);
                Some((guard, true))
            }
        }
    }

    /// From a task on the agent's worker (its first step, a timer): one burst, then another
    /// task for whatever waits after it. Otherwise one task could keep the worker from its
    /// other actors for as long as a stream lasts: a chain stage's timer steps the stage, the
    /// stage's credit steps its source's agent (nested, on this thread), which takes the next
    /// batch from the source's thread and posts it to the stage, which this loop would step
    /// again.
    fn drive_on_worker(&self) {
        if self.unpark_driver() {
            return;
        }
        if let Some(worker) = self.drive_at_most(1, false) {
            let this = self.this.clone();
            worker.spawn(async move {
                if let Some(mailbox) = this.upgrade() {
                    mailbox.drive_on_worker();
                }
            });
        }
    }

    /// Takes the agent as [`take_agent`](Self::take_agent) says (waiting, the first time, if
    /// `wait`), and steps it until nothing waits or it stepped `bursts` times. Returns the
    /// agent's worker if it stopped at that limit with something waiting (for the caller to
    /// look again later).
    fn drive_at_most(&self, bursts: usize, wait: bool) -> Option<ArbiterHandle> {
        let mut left = bursts;
        let driver = wait;
        let mut wait = wait;
        loop {
            let (mut state, waited) = self.take_agent(wait)?;
            // Once: what is posted after this thread lets go is its poster's to step.
            wait = false;
            let mut worker = None;
            match &mut *state {
                // Not installed yet: the first step after it takes whatever waits.
                State::Waiting => return None,
                State::Gone => {
                    let dropped =
                        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
                    let counted = dropped
                        .iter()
                        .filter(|i| !matches!(i, Item::Timer(_)))
                        .count();
                    drop(state);
                    drop(dropped);
                    // May post again (a close after quiescence): the loop looks again.
                    self.shared.handled_many(counted);
                    if self
                        .queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty()
                    {
                        return None;
                    }
                    continue;
                }
                State::Running(agent) => {
                    self.holder.store(this_thread(), Ordering::SeqCst);
                    // The thread it waited for may have taken this thread's post in, and left
                    // its host with steps to go (`Host::run_yielding`): one step at least.
                    if waited {
                        self.step_burst(agent, true);
                        left = left.saturating_sub(1);
                    }
                    // A waiting driver takes what waits after this burst.
                    while left > 0
                        && !self.driver_waits.load(Ordering::SeqCst)
                        && self.step_burst(agent, false)
                    {
                        left -= 1;
                    }
                    if driver {
                        self.drive_while_ring_waits(agent);
                    }
                    self.holder.store(0, Ordering::SeqCst);
                    if left == 0 {
                        worker = Some(agent.worker.clone());
                    }
                    if agent.stopped {
                        // Failed: the run stops; what comes later is dropped (as an actor's
                        // mailbox does once the actor stopped).
                        *state = State::Gone;
                    }
                }
            }
            drop(state);
            // Something posted after the last look, whose poster found the agent taken (and
            // did not wait for it: a waiting driver takes it).
            if self.driver_waits.load(Ordering::SeqCst)
                || self
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
            {
                return None;
            }
            if worker.is_some() {
                return worker;
            }
        }
    }

    /// On the chain's driver: while the stage is blocked on a ring (a connection that waits
    /// for room, `Policy::Block`, holds data for it), parks until
    /// something is posted to the stage (the ring's watcher posts when room appears) and steps
    /// it, so that the chain stays on the driver's thread instead of being stepped by the
    /// watcher (see the module docs). Leaves when the run stops, fails or is torn down.
    fn drive_while_ring_waits(&self, agent: &mut Agent) {
        // Blocked (a `Block` connection holds data), not merely holding some: a connection
        // that drops keeps a stash on purpose, and its source must go on, not wait.
        while !agent.stopped
            && agent.tended.host.waits_on_ring()
            && agent.tended.host.is_blocked()
            && !agent.tended.host.is_done()
            && !self.shared.stop.load(Ordering::SeqCst)
            && !self.shared.failed.load(Ordering::SeqCst)
            && !self.shared.torn_down.load(Ordering::SeqCst)
        {
            self.park_driver();
            self.step_burst(agent, false);
        }
    }

    /// Parks this thread (the chain's driver) until something is queued, at most a slice
    /// (then the caller looks at the run again). A post that finds `driver_parked` set after
    /// queueing unparks it; one that queued before finds the queue not empty here.
    fn park_driver(&self) {
        const SLICE: Duration = Duration::from_millis(20);
        *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
        self.driver_parked.store(true, Ordering::SeqCst);
        let empty = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if empty {
            std::thread::park_timeout(SLICE);
        }
        self.driver_parked.store(false, Ordering::SeqCst);
    }

    /// After queueing: if the chain's driver is parked in this agent's loop (see
    /// [`park_driver`](Self::park_driver)), wakes it to step what was queued, and says so.
    fn unpark_driver(&self) -> bool {
        if !self.driver_parked.load(Ordering::SeqCst) {
            return false;
        }
        match &*self.parked.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(driver) => {
                driver.unpark();
                true
            }
            None => false,
        }
    }

    /// Takes in everything queued and steps once; false if nothing was queued, unless
    /// `anyway` (then it steps all the same). A panic anywhere in it (the agent's own are
    /// caught in its host already: this is a defect of the runtime) fails the run naming the
    /// agent, and stops it, instead of unwinding through the thread that posted (a ring's
    /// feeder, a source's thread), which would die with the agent's burst unaccounted for.
    fn step_burst(&self, agent: &mut Agent, anyway: bool) -> bool {
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.step_burst_unguarded(agent, anyway)
        }));
        stepped.unwrap_or_else(|p| {
            agent.stopped = true;
            self.shared.fail(agent.tended.runtime_panic(&*p));
            false
        })
    }

    /// [`step_burst`](Self::step_burst) without the guard.
    fn step_burst_unguarded(&self, agent: &mut Agent, anyway: bool) -> bool {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.is_empty() && !anyway {
                return false;
            }
            std::mem::swap(&mut *queue, &mut agent.burst);
        }
        let mut counted = 0;
        let mut result = Ok(());
        for item in agent.burst.drain(..) {
            match item {
                Item::Envelope(env) => {
                    counted += 1;
                    if result.is_ok() && !agent.stopped {
                        result = agent.tended.accept(env);
                    }
                }
                Item::Start => counted += 1,
                Item::Timer(at) => {
                    if let Err(e) = agent.tended.timer_due(at) {
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
            }
        }
        if !agent.stopped {
            if result.is_ok() {
                // A source's agent would step for as long as its thread keeps up: a waiting
                // driver stops it between two steps, and goes on from there.
                result = agent.tended.step_yielding(&self.driver_waits);
            }
            self.after(agent, result);
        }
        // Counted as handled only after the step that takes it in: until then the run is not
        // quiescent.
        self.shared.handled_many(counted);
        true
    }

    /// Books the step's outcome; arms a timer on the agent's worker.
    fn after(&self, agent: &mut Agent, result: Result<(), crate::error::Error>) {
        match agent.tended.after(result) {
            Next::Continue => {}
            Next::Stop => agent.stopped = true,
            Next::Timer { delay, at } => {
                let this = self.this.clone();
                agent.worker.spawn(async move {
                    actix_rt::time::sleep(delay).await;
                    if let Some(mailbox) = this.upgrade() {
                        mailbox.push(Item::Timer(at));
                        mailbox.drive_on_worker();
                    }
                });
            }
        }
    }
}

impl Mailbox for DirectMailbox {
    fn post_as_driver(&self, env: Envelope) {
        DRIVER.with(|d| d.set(self.chain));
        self.post(env);
    }

    fn post(&self, env: Envelope) {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        self.shared.posted.fetch_add(1, Ordering::SeqCst);
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = queue.iter_mut().rev().filter_map(|item| match item {
            Item::Envelope(e) => Some(e),
            Item::Start | Item::Timer(_) => None,
        });
        match join_waiting(waiting, env) {
            Ok(spent) => {
                drop(queue);
                // Typed: its vector and box both go home.
                if let Some(spent) = spent {
                    spent.release();
                }
                // Its elements travel in an envelope already counted (and already driven).
                self.shared.handled();
            }
            Err(env) => {
                queue.push_back(Item::Envelope(env));
                drop(queue);
                if !self.unpark_driver() {
                    self.drive();
                }
            }
        }
    }
}
