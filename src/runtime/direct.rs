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
//! of a chain it alone feeds into rings (its source thread steps them all, one after the
//! other, from the hand-over to the write into the ring: see `runtime.rs` `stepped_directly`).
//!
//! Posts never wait for each other: a post queues its envelope, then tries to take the agent.
//! If another thread holds it (it is stepping), that thread takes the queued envelope in
//! before it lets go (it looks at the queue once more after letting go, so nothing is left
//! behind). The agent is still stepped by one thread at a time, and a burst that queued up while
//! it was busy is taken in at once and handled by one step, as on a worker (adaptive batching).
//! A step that posts to an agent it is nested in (credit going back up) only queues.
//!
//! The agent's timers run on its worker of the pool, which also gives it its first step; a
//! task there steps the agent for one burst and leaves what waits after it to another task,
//! so the worker's other actors have their turns between them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::Duration;

use actix::ArbiterHandle;

use super::{Next, Shared, Tended};
use crate::host::{join_waiting, Envelope, Mailbox};

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
    /// Items posted and not yet taken in. Bounded as every mailbox is: data by the links'
    /// credit, the rest by what the run sends (one credit per batch, a wake-up, a close).
    queue: Mutex<VecDeque<Item>>,
    agent: Mutex<State>,
    this: Weak<DirectMailbox>,
}

impl DirectMailbox {
    /// A mailbox whose agent is given later, by [`start`](Self::start).
    pub(super) fn new(shared: Arc<Shared>) -> Arc<DirectMailbox> {
        Arc::new_cyclic(|this| DirectMailbox {
            shared,
            queue: Mutex::new(VecDeque::new()),
            agent: Mutex::new(State::Waiting),
            this: this.clone(),
        })
    }

    /// Hands the agent over and runs its first step, with whatever was posted before, on this
    /// thread (its worker).
    pub(super) fn start(&self, tended: Tended, worker: ArbiterHandle) {
        *self.lock_agent() = State::Running(Box::new(Agent {
            tended,
            worker,
            burst: VecDeque::new(),
            stopped: false,
        }));
        self.push(Item::Start);
        self.drive_on_worker();
    }

    /// Drops the agent (and its host): the run is over. Waits for a step in progress.
    pub(super) fn tear_down(&self) {
        let gone = std::mem::replace(&mut *self.lock_agent(), State::Gone);
        drop(gone);
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn lock_agent(&self) -> std::sync::MutexGuard<'_, State> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Item) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(item);
    }

    /// Takes the agent if no other thread has it, and steps it until nothing waits.
    fn drive(&self) {
        self.drive_at_most(usize::MAX);
    }

    /// From a task on the agent's worker (its first step, a timer): one burst, then another
    /// task for whatever waits after it. Otherwise one task could keep the worker from its
    /// other actors for as long as a stream lasts: a chain stage's timer steps the stage, the
    /// stage's credit steps its source's agent (nested, on this thread), which takes the next
    /// batch from the source's thread and posts it to the stage, which this loop would step
    /// again.
    fn drive_on_worker(&self) {
        if let Some(worker) = self.drive_at_most(1) {
            let this = self.this.clone();
            worker.spawn(async move {
                if let Some(mailbox) = this.upgrade() {
                    mailbox.drive_on_worker();
                }
            });
        }
    }

    /// Takes the agent if no other thread has it, and steps it until nothing waits or it
    /// stepped `bursts` times. Returns the agent's worker if it stopped at that limit with
    /// something waiting (for the caller to look again later).
    fn drive_at_most(&self, bursts: usize) -> Option<ArbiterHandle> {
        let mut left = bursts;
        loop {
            let mut state = match self.agent.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // Another thread steps it and looks at the queue before and after it lets go.
                Err(TryLockError::WouldBlock) => return None,
            };
            let mut worker = None;
            match &mut *state {
                // `start` drives once it has put the agent in.
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
                    while left > 0 && self.step_burst(agent) {
                        left -= 1;
                    }
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
            // Something posted after the last look, whose poster found the agent taken.
            if self
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

    /// Takes in everything queued and steps once; false if nothing was queued.
    fn step_burst(&self, agent: &mut Agent) -> bool {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.is_empty() {
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
                    agent.tended.timer_due(at);
                }
            }
        }
        if !agent.stopped {
            if result.is_ok() {
                result = agent.tended.step();
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
                spent.release();
                // Its elements travel in an envelope already counted (and already driven).
                self.shared.handled();
            }
            Err(env) => {
                queue.push_back(Item::Envelope(env));
                drop(queue);
                self.drive();
            }
        }
    }
}
