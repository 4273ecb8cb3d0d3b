//! The mailbox: where a host receives, whatever sends.
//!
//! Every transport delivers to a host through the same two things, defined here so that no
//! transport needs to know the host, and none needs to know the others:
//!
//! - an [`Envelope`] is one message to a host: a batch, a mark or an end of stream for one of its
//!   inputs, credit returned by one of its readers, a wake-up;
//! - a [`Mailbox`] is where envelopes go. A host hands its own mailbox down to a link as a value
//!   (`Arc<dyn Mailbox>`); a ring's feeder hands back its own as the place the reader returns
//!   credit to. [`join_waiting`] lets a mailbox's queue join a small batch to the one of the same
//!   input still waiting (adaptive batching on the reader's side).
//!
//! What a transport needs from the run of its process (to count as a source while it feeds, to
//! fail the run, to know whether a dead peer may come back, to hold the process's exit until its
//! peer heard the last word) is a [`RunContext`], also handed down as a value by the runtime.
//!
//! This is the bottom of the transport layer: it imports nothing of it. The writer's end of a
//! connection, one handle over the transports, is [`LinkTx`](super::link::LinkTx), above them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::stream::{AnyBatch, Mark};
// ---------------------------------------------------------------------------------------------
// What a link needs from its run

/// What the run of this process does for its links, handed down by the runtime: feeders (the
/// threads that feed a local input from another process) count as sources until they end, and
/// any link may fail the run.
pub(crate) trait RunContext: Send + Sync {
    /// Registers a feeder; call [`finished`](RunContext::finished) when it has delivered its
    /// end of stream (or failed).
    fn feeder(&self, label: String) -> Arc<FeederState>;
    /// Marks a feeder blocked (holding data without credit) or not. A feeder that becomes
    /// blocked may be the last thing the run was waiting for.
    fn set_blocked(&self, feeder: &FeederState, blocked: bool);
    /// The feeder is done.
    fn finished(&self, feeder: &FeederState);
    /// Fails the run.
    fn fail(&self, e: Error);
    /// A link found its peer process `pid` failed or dead, and is about to fail the run for
    /// it: if nothing failed this part before, that peer's failure is the run's cause, and
    /// this part's error its consequence (the starter names the process, once it has reaped
    /// it).
    fn peer_failed(&self, _pid: u32) {}
    /// Registers `hook`, run once when this process's part fails, before anything stops.
    fn on_failure(&self, hook: FailureHook);
    /// The application was asked to stop, or failed.
    fn stopping(&self) -> bool;
    /// This process's part has failed (not merely asked to stop).
    fn failed(&self) -> bool;
    /// The application was asked to stop gracefully (Ctrl-C, `stop`, another host) and this
    /// part has not failed: its streams end and drain.
    fn draining(&self) -> bool {
        self.stopping() && !self.failed()
    }
    /// The run has failed or is torn down: helper threads end.
    fn is_over(&self) -> bool;
    /// A dead peer process may come back: a launcher supervises this process and may still
    /// restart a crashed one. Waits on that peer then go on instead of failing.
    fn peers_may_restart(&self) -> bool;
    /// This process was started again after an earlier one of its name (a launcher restarted
    /// it): a writer on another host may still reconnect to resume the stream it had been
    /// sending to the earlier one, although none has connected to this one yet.
    fn restarted(&self) -> bool;
    /// Registers `linger`: after a normal end (not a failure), this process does not exit
    /// until the link [released](Linger::release) it or its deadline passed (see [`Linger`]).
    /// Register before the run can end: from the link's start, say.
    fn linger(&self, linger: Arc<Linger>);
}

/// A run's context, as links hold it.
pub(crate) type Run = Arc<dyn RunContext>;

/// Runs the body of a link's own thread (a feeder, a ring's space watcher, a socket's reader
/// or writer). Such a thread may step agents too (a post to a directly stepped agent runs its
/// step there). A panic in it is a defect of the link or of the runtime; caught here, it fails
/// the run naming the connection and the thread, where the thread would otherwise die alone,
/// and the agents it serves, and the run, would wait for ever.
pub(crate) fn link_thread(run: &Run, label: &str, thread: &str, body: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        run.fail(Error::Runtime {
            detail: format!(
                "connection {label}: its {thread} thread panicked: {}",
                crate::error::panic_message(&*p)
            ),
        });
    }
}

/// What a link does when this process's part of the run fails.
pub(crate) type FailureHook = Box<dyn Fn() + Send + Sync>;

/// What the run knows of a feeder.
pub(crate) struct FeederState {
    /// The connection, for messages.
    pub label: String,
    /// It holds data the local reader has no credit for.
    pub blocked: AtomicBool,
    /// A ring feeder's read position when it last found nothing to read, holding nothing
    /// undelivered ([`NOT_IDLE`] before and after): see [`waits_for_writer`](Self::waits_for_writer).
    pub idle_at: AtomicU64,
    /// A ring feeder's view of what its writer published (the ring's `head`), set once.
    pub published: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

/// [`FeederState::idle_at`] of a feeder that is not waiting for its writer.
pub(crate) const NOT_IDLE: u64 = u64::MAX;

impl FeederState {
    /// The state of a feeder of `label`, neither blocked nor idle.
    pub fn new(label: String) -> FeederState {
        FeederState {
            label,
            blocked: AtomicBool::new(false),
            idle_at: AtomicU64::new(NOT_IDLE),
            published: std::sync::OnceLock::new(),
        }
    }

    /// True if this is a ring feeder that read everything its writer published, holds nothing
    /// it has not delivered, and waits for the writer: it found nothing more to read at the
    /// position where the ring's `head` still is (positions only grow: had anything been
    /// published since, the head would have moved past it). A TCP or broker feeder, which
    /// cannot see its writer, never says so.
    pub fn waits_for_writer(&self) -> bool {
        let at = self.idle_at.load(Ordering::SeqCst);
        at != NOT_IDLE && self.published.get().is_some_and(|head| head() == at)
    }
}

/// A link's hold on the exit of its process after the run ended normally.
///
/// A TCP reader whose agents consumed the whole stream may still owe its writer, on another
/// host, the acknowledgement of the end of stream (the connection broke just before it went
/// out). Its process must not exit before the writer reconnected and heard it, or the writer
/// fails for a stream that was in fact consumed. The link registers a `Linger` with its run
/// ([`RunContext::linger`]) and releases it once it has nothing left to say; the run, after a
/// normal end, waits for every registered linger.
///
/// # Guarantees
///
/// - Bounded: once the run has ended, a linger holds the exit at most `limit` (less after a
///   drain: the runtime may bring the deadline nearer, see [`start`](Linger::start)); the
///   link gives up by then, saying why.
/// - A failed run does not wait on lingers at all.
pub(crate) struct Linger {
    /// The connection, for messages.
    pub label: String,
    /// How long after the run's end it may hold the exit.
    limit: Duration,
    /// The link has nothing left to say: the process may exit.
    released: AtomicBool,
    /// Set when the run's end is first seen (by the runtime or the link).
    deadline: Mutex<Option<Instant>>,
}

impl Linger {
    /// A linger for connection `label`, holding the exit at most `limit` after the run's end.
    pub(crate) fn new(label: String, limit: Duration) -> Arc<Self> {
        Arc::new(Linger {
            label,
            limit,
            released: AtomicBool::new(false),
            deadline: Mutex::new(None),
        })
    }

    /// The run has ended: fixes the deadline (`limit` from now) if nobody did yet, brings it
    /// down to `cap` if that is earlier, and returns it. Both the runtime and the link call
    /// it; whichever sees the end first fixes it, so both wait for the same instant.
    pub(crate) fn start(&self, cap: Option<Instant>) -> Instant {
        let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = d.unwrap_or_else(|| Instant::now() + self.limit);
        if let Some(cap) = cap {
            at = at.min(cap);
        }
        *d = Some(at);
        at
    }

    /// How long after the run's end it may hold the exit.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// The deadline, once [`start`](Linger::start) fixed it.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link has nothing left to say (or gave up): the process may exit.
    pub(crate) fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    /// Whether [`release`](Linger::release) was called.
    pub(crate) fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }
}

/// Releases a [`Linger`] when dropped: whatever way the thread that holds it ends.
pub(crate) struct LingerGuard(pub Arc<Linger>);

impl Drop for LingerGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

// ---------------------------------------------------------------------------------------------
// Envelopes and mailboxes

/// A message to a host. Data and end-of-stream travel in order on the same path, so an end of
/// stream never overtakes data.
pub(crate) enum Envelope {
    /// A batch (a `Batch<T>`, its type erased) for input `input`.
    Data { input: u32, batch: AnyBatch },
    /// A [`Mark`] for input `input`, after the data sent before it.
    Mark { input: u32, mark: Mark },
    /// The writer of input `input` closed its stream; nothing follows.
    Eos { input: u32 },
    /// The reader of link `link` of output `output` consumed `n` elements.
    Credit { output: u32, link: u32, n: usize },
    /// A source of this host has data (or has ended).
    Wake,
    /// The application is quiescent with this host's inputs still open (a feedback loop):
    /// treat every input as closed.
    ForceClose,
}

/// How many waiting envelopes [`join_waiting`] looks back through, newest first, for a batch
/// of the same input.
const JOIN_LOOKBACK: usize = 8;

/// Joins `env`, if it is a batch, to the last batch for the same input still waiting in a
/// mailbox's queue (`newest_first`), when nothing for that input waits between them (no mark,
/// no end of stream) and the two can join ([`AnyBatch::absorb`]: small plain data, that batch
/// unshared); or merges `env`, if it is a mark, into the marks for its input waiting last
/// ([`merge_mark`]). Returns the spent batch (`None` for a merged mark), for the caller to
/// [`release`](AnyBatch::release) once it let go of its queue's lock (its vector and box go
/// back to its writer's pool); or `env` back, to queue.
///
/// This is adaptive batching on the reader's side of a mailbox: while a reader's thread is
/// busy or asleep, the one-element batches of a fast writer join into a few batches, one
/// delivery each, instead of one envelope (and, beyond its writer's pool, one allocation) per
/// element. Order is kept: elements only join elements of the same input that were sent
/// before them, with nothing of that input between; the host takes in every waiting envelope
/// before it steps, so envelopes of other inputs between are not overtaken in any way a step
/// could see. Nothing waits longer: the reader takes whatever waits when it wakes.
///
/// It is also what bounds the marks waiting for a reader: a mark takes no credit, so a writer
/// whose steps send watermarks and no data (a filter passing nothing, a window between
/// firings), or whose data a full `DropNewest` link drops, would otherwise queue one envelope
/// per step for a reader that is stuck, for as long as it is.
pub(crate) fn join_waiting<'a>(
    newest_first: impl Iterator<Item = &'a mut Envelope>,
    env: Envelope,
) -> Result<Option<AnyBatch>, Envelope> {
    let (input, batch) = match env {
        Envelope::Data { input, batch } => (input, batch),
        Envelope::Mark { input, mark } => {
            return if merge_mark(newest_first, input, mark) {
                Ok(None)
            } else {
                Err(Envelope::Mark { input, mark })
            };
        }
        other => return Err(other),
    };
    for waiting in newest_first.take(JOIN_LOOKBACK) {
        match waiting {
            Envelope::Data { input: i, batch: b } if *i == input => {
                return if b.absorb(&batch) {
                    Ok(Some(batch))
                } else {
                    Err(Envelope::Data { input, batch })
                };
            }
            Envelope::Mark { input: i, .. } | Envelope::Eos { input: i } if *i == input => break,
            Envelope::ForceClose => break,
            _ => {}
        }
    }
    Err(Envelope::Data { input, batch })
}

/// Merges `mark` for `input` into the marks for that input waiting last in a mailbox's queue
/// (`newest_first`, within [`JOIN_LOOKBACK`]) with no data or end of that input after them,
/// as the input itself merges the marks it holds (`InSlot::push_mark`): idleness after
/// idleness says nothing new, a watermark replaces the watermark before it and ends an
/// idleness, idleness after a watermark is kept beside it. So at most two marks of an input
/// wait between two of its batches (a watermark, then idleness), whatever a writer sends, and
/// what the host takes in is what it would have made of the marks one by one (its inputs
/// keep the highest watermark passed: a watermark written twice says nothing more). True if
/// merged (nothing to queue); false if `mark` must be queued.
fn merge_mark<'a>(
    newest_first: impl Iterator<Item = &'a mut Envelope>,
    input: u32,
    mark: Mark,
) -> bool {
    // The last two marks of the input, newest first, with nothing else of it between.
    let (mut last, mut before): (Option<&mut Mark>, Option<&mut Mark>) = (None, None);
    for waiting in newest_first.take(JOIN_LOOKBACK) {
        match waiting {
            Envelope::Mark { input: i, mark: m } if *i == input => {
                if last.is_none() {
                    last = Some(m);
                } else {
                    before = Some(m);
                    break;
                }
            }
            Envelope::Data { input: i, .. } | Envelope::Eos { input: i } if *i == input => break,
            Envelope::ForceClose => break,
            _ => {}
        }
    }
    let Some(last) = last else {
        return false;
    };
    match (mark, *last, before) {
        // Idleness after idleness.
        (Mark::Idle, Mark::Idle, _) => true,
        // Watermark a, watermark b, idleness: watermark b, idleness.
        (Mark::Idle, Mark::Watermark(_), Some(b @ Mark::Watermark(_))) => {
            *b = *last;
            *last = Mark::Idle;
            true
        }
        // Idleness after a watermark is kept beside it.
        (Mark::Idle, Mark::Watermark(_), _) => false,
        // A watermark replaces the one before.
        (Mark::Watermark(_), Mark::Watermark(_), _) => {
            *last = mark;
            true
        }
        // Watermark a, idleness, watermark b: watermark b (written twice), the idleness ended.
        (Mark::Watermark(_), Mark::Idle, Some(b @ Mark::Watermark(_))) => {
            *b = mark;
            *last = mark;
            true
        }
        // A watermark ends the idleness before it.
        (Mark::Watermark(_), Mark::Idle, _) => {
            *last = mark;
            true
        }
    }
}

/// Where a host posts envelopes for another host.
pub(crate) trait Mailbox: Send + Sync {
    fn post(&self, env: Envelope);

    /// Posts from the thread that drives the agent: a source's own thread, which steps its
    /// agent and the chain that agent alone feeds (the runtime's direct mailboxes). Such a
    /// mailbox steps the agent on this thread, waiting for its turn if another thread is
    /// stepping it, and so does every mailbox of the chain this thread posts to from then on;
    /// other mailboxes post.
    fn post_as_driver(&self, env: Envelope) {
        self.post(env);
    }

    /// On a durable credit route (a ring's feeder): the reading agent's last step saw every
    /// element received on the input and left `unconsumed` of them; it waits for more. Posted
    /// after that step's credit, and only if nothing arrived since the step. Other mailboxes
    /// ignore it.
    fn reader_waits(&self, _unconsumed: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Batch;
    use std::collections::VecDeque;

    fn data(input: u32, items: &[u64]) -> Envelope {
        let pool = Arc::new(crate::stream::VecPool::new());
        Envelope::Data {
            input,
            batch: Batch::pooled(items.to_vec(), &pool).into_any(),
        }
    }

    /// The elements of a data envelope.
    fn elements(env: Envelope) -> Vec<u64> {
        let Envelope::Data { batch, .. } = env else {
            panic!("not data")
        };
        batch.downcast::<u64>().unwrap().as_slice().to_vec()
    }

    /// Posts `env` to the queue `q` as a mailbox does: true if it joined (or merged into) an
    /// envelope waiting there, false if it was queued.
    fn post(q: &mut VecDeque<Envelope>, env: Envelope) -> bool {
        match join_waiting(q.iter_mut().rev(), env) {
            Ok(_) => true,
            Err(env) => {
                q.push_back(env);
                false
            }
        }
    }

    /// What a queue holds, an entry each: `0:[1, 2]`, `0:w5`, `0:idle`, `1:eos`, ...
    fn shown(q: VecDeque<Envelope>) -> Vec<String> {
        q.into_iter()
            .map(|e| match e {
                Envelope::Data { input, .. } => format!("{input}:{:?}", elements(e)),
                Envelope::Mark {
                    input,
                    mark: Mark::Watermark(w),
                } => format!("{input}:w{w}"),
                Envelope::Mark {
                    input,
                    mark: Mark::Idle,
                } => format!("{input}:idle"),
                Envelope::Eos { input } => format!("{input}:eos"),
                Envelope::Credit { .. } => "credit".into(),
                Envelope::ForceClose => "close".into(),
                Envelope::Wake => "wake".into(),
            })
            .collect()
    }

    /// Marks take no credit: a writer that sends a watermark at every step and no data (a
    /// filter passing nothing, a window between firings, or everything dropped by a full
    /// `DropNewest` link) queued one envelope per step for a stuck reader, without bound (an
    /// audit saw 96 MiB after 1.5 M steps). The marks of an input now merge as its host would
    /// merge them, never across its data or its end, nor across a forced close.
    #[test]
    fn marks_merge_as_the_input_would_and_never_past_its_data() {
        let mut q: VecDeque<Envelope> = VecDeque::new();
        let w = |input, w| Envelope::Mark {
            input,
            mark: Mark::Watermark(w),
        };
        let idle = |input| Envelope::Mark {
            input,
            mark: Mark::Idle,
        };
        // A million steps of a writer that sends only marks, another input's marks between:
        // two envelopes each at most, whatever the sequence.
        for i in 0..1_000_000u64 {
            post(&mut q, w(0, i));
            if i % 3 == 0 {
                post(&mut q, idle(0));
            }
            if i % 5 == 0 {
                post(&mut q, idle(1));
                post(&mut q, w(1, i));
            }
            assert!(
                q.len() <= 4,
                "{} envelopes waiting after {i} steps",
                q.len()
            );
        }
        assert_eq!(
            shown(std::mem::take(&mut q)),
            ["0:w999999", "0:idle", "1:w999995", "1:w999995"]
        );

        // The rules, one by one.
        assert!(!post(&mut q, idle(0)), "nothing to merge with");
        assert!(post(&mut q, idle(0)), "idleness after idleness");
        assert!(post(&mut q, w(0, 3)), "a watermark ends the idleness");
        assert!(!post(&mut q, idle(0)), "idleness kept beside a watermark");
        assert!(post(&mut q, w(0, 4)), "watermark, idleness, watermark");
        assert_eq!(shown(std::mem::take(&mut q)), ["0:w4", "0:w4"]);
        post(&mut q, w(0, 1));
        post(&mut q, idle(0));
        assert!(post(&mut q, w(0, 2)));
        assert!(post(&mut q, idle(0)), "watermark, watermark, idleness");
        assert_eq!(shown(std::mem::take(&mut q)), ["0:w2", "0:idle"]);

        // Never past the input's data or end, nor a forced close; past other inputs.
        post(&mut q, w(0, 1));
        post(&mut q, data(0, &[7]));
        assert!(!post(&mut q, w(0, 2)), "not past its data");
        post(&mut q, data(1, &[8]));
        post(&mut q, w(1, 9));
        assert!(post(&mut q, w(0, 3)), "past another input's data and mark");
        post(&mut q, Envelope::ForceClose);
        assert!(!post(&mut q, w(0, 4)), "not past a forced close");
        post(&mut q, Envelope::Eos { input: 1 });
        assert!(!post(&mut q, w(1, 10)), "not past its end");
        assert_eq!(
            shown(q),
            ["0:w1", "0:[7]", "0:w3", "1:[8]", "1:w9", "close", "0:w4", "1:eos", "1:w10"]
        );
    }

    #[test]
    fn a_batch_joins_the_last_one_waiting_for_its_input_and_never_passes_a_mark() {
        let mut q: VecDeque<Envelope> = VecDeque::new();
        assert!(!post(&mut q, data(0, &[1])), "nothing to join");
        assert!(!post(&mut q, data(1, &[10])), "another input");
        assert!(!post(
            &mut q,
            Envelope::Credit {
                output: 0,
                link: 0,
                n: 5
            }
        ));
        assert!(
            post(&mut q, data(0, &[2, 3])),
            "past the other input and the credit"
        );
        assert!(post(&mut q, data(1, &[11])));
        assert!(!post(
            &mut q,
            Envelope::Mark {
                input: 0,
                mark: Mark::Watermark(3)
            }
        ));
        assert!(!post(&mut q, data(0, &[4])), "not past its input's mark");
        assert!(post(&mut q, data(0, &[5])));
        assert!(!post(&mut q, Envelope::Eos { input: 0 }));
        assert!(post(&mut q, data(1, &[12])), "past another input's end");
        assert!(!post(&mut q, Envelope::ForceClose));
        assert!(!post(&mut q, data(1, &[13])), "not past a forced close");
        let kinds: Vec<String> = q
            .drain(..)
            .map(|e| match e {
                Envelope::Data { input, .. } => format!("{input}:{:?}", elements(e)),
                Envelope::Mark { input, .. } => format!("{input}:mark"),
                Envelope::Eos { input } => format!("{input}:eos"),
                Envelope::Credit { .. } => "credit".into(),
                Envelope::ForceClose => "close".into(),
                Envelope::Wake => "wake".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "0:[1, 2, 3]",
                "1:[10, 11, 12]",
                "credit",
                "0:mark",
                "0:[4, 5]",
                "0:eos",
                "close",
                "1:[13]"
            ]
        );
    }
}
