//! The queue between a source's thread (or the program's [`InputSender`](crate::InputSender))
//! and the source's agent: elements, bounded in number, taken all at once.
//!
//! A channel of chunks would bound the number of *chunks*, and a source that hands over one
//! element at a time would then send one tiny batch per element: every batch costs a step, a
//! message and a wake-up downstream. Here the writer appends to one waiting `Vec`, and the
//! agent's step takes everything that waits (up to its batch size) as one batch: the per-batch
//! cost is paid once per burst, whatever the writer's rhythm (adaptive batching). When the two
//! `Vec`s are swapped, the writer gets back the agent's empty one with its capacity: no
//! allocation per element or per hand-over in steady state.
//!
//! The writer waits while `limit` elements or more wait (one hand-over may go past it, so a
//! hand-over larger than the limit still goes through): memory stays bounded by the limit plus
//! the largest hand-over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How a stream fed through a handoff ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The writer is done: the stream ends after what it handed over.
    Done,
    /// The writer failed: the run stops with this, after what it handed over.
    Failed(String),
}

/// Why a hand-over did not happen.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutError {
    /// `limit` elements wait already (only without waiting).
    Full,
    /// The agent is gone (the run is over).
    ReaderGone,
}

/// How long a writer waits for room.
pub(crate) enum Wait<'a> {
    /// Not at all: [`PutError::Full`].
    Never,
    /// Until there is room or the reader is gone.
    Forever,
    /// Until there is room, or the flag is set: then the elements are appended anyway (a
    /// graceful stop delivers what the source produced before it, bounded by one hand-over).
    UntilStop(&'a AtomicBool),
}

struct State<T> {
    items: Vec<T>,
    end: Option<Ending>,
    writer_gone: bool,
    reader_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    room: Condvar,
    limit: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writing end.
pub(crate) struct HandoffTx<T>(Arc<Shared<T>>);

/// The reading end (the source's agent).
pub(crate) struct HandoffRx<T>(Arc<Shared<T>>);

/// A handoff whose writer waits while `limit` (at least 1) elements wait.
pub(crate) fn handoff<T>(limit: usize) -> (HandoffTx<T>, HandoffRx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: Vec::new(),
            end: None,
            writer_gone: false,
            reader_gone: false,
        }),
        room: Condvar::new(),
        limit: limit.max(1),
    });
    (HandoffTx(Arc::clone(&shared)), HandoffRx(shared))
}

impl<T> HandoffTx<T> {
    /// Appends `items` (leaving it empty, possibly with the capacity of a `Vec` the reader is
    /// done with), waiting for room as `wait` says.
    pub fn put(&self, items: &mut Vec<T>, wait: Wait<'_>) -> Result<(), PutError> {
        let mut state = self.room(wait)?;
        if state.items.is_empty() {
            std::mem::swap(&mut state.items, items);
        } else {
            state.items.append(items);
        }
        Ok(())
    }

    /// Appends one element (no allocation unless the waiting `Vec` grows); gives it back if
    /// it could not.
    pub fn put_one(&self, item: T, wait: Wait<'_>) -> Result<(), (PutError, T)> {
        match self.room(wait) {
            Ok(mut state) => {
                state.items.push(item);
                Ok(())
            }
            Err(e) => Err((e, item)),
        }
    }

    /// The state, locked, once there is room (or the stop says to append anyway).
    fn room(&self, wait: Wait<'_>) -> Result<MutexGuard<'_, State<T>>, PutError> {
        const POLL: Duration = Duration::from_millis(50);
        let mut state = self.0.lock();
        loop {
            if state.reader_gone {
                return Err(PutError::ReaderGone);
            }
            if state.items.len() < self.0.limit {
                return Ok(state);
            }
            match wait {
                Wait::Never => return Err(PutError::Full),
                Wait::Forever => {
                    state = self.0.room.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                Wait::UntilStop(stop) => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(state);
                    }
                    state = self
                        .0
                        .room
                        .wait_timeout(state, POLL)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Ends the stream after what was handed over.
    pub fn end(&self, ending: Ending) {
        let mut state = self.0.lock();
        if state.end.is_none() {
            state.end = Some(ending);
        }
    }
}

impl<T> Drop for HandoffTx<T> {
    fn drop(&mut self) {
        self.0.lock().writer_gone = true;
    }
}

/// What a step took.
pub(crate) struct Taken {
    /// Elements were appended to the step's buffer.
    pub got: bool,
    /// The stream ends after them (a writer gone without a word ends it too).
    pub end: Option<Ending>,
}

impl<T> HandoffRx<T> {
    /// Moves what waits into `out`, at most `max` elements in all (`out` may hold some).
    /// When nothing is left waiting and the stream has not ended, clears `awake` under the
    /// lock, so a writer that hands over afterwards sees it cleared and wakes the agent.
    pub fn take(&self, out: &mut Vec<T>, max: usize, awake: &AtomicBool) -> Taken {
        let mut state = self.0.lock();
        let was_full = state.items.len() >= self.0.limit;
        let room = max.saturating_sub(out.len()).max(1);
        let got = !state.items.is_empty();
        if state.items.len() <= room {
            if out.is_empty() {
                std::mem::swap(out, &mut state.items);
            } else {
                out.append(&mut state.items);
            }
        } else {
            out.extend(state.items.drain(..room));
        }
        if was_full && state.items.len() < self.0.limit {
            self.0.room.notify_all();
        }
        if !state.items.is_empty() {
            return Taken { got, end: None };
        }
        let end = state
            .end
            .take()
            .or_else(|| state.writer_gone.then_some(Ending::Done));
        if end.is_none() && !got {
            awake.store(false, Ordering::SeqCst);
        }
        Taken { got, end }
    }
}

impl<T> Drop for HandoffRx<T> {
    fn drop(&mut self) {
        self.0.lock().reader_gone = true;
        self.0.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_takes_every_waiting_hand_over_at_once_and_gives_its_vec_back() {
        let (tx, rx) = handoff::<u32>(100);
        let awake = AtomicBool::new(true);
        for v in 0..5 {
            tx.put(&mut vec![v], Wait::Never).unwrap();
        }
        let mut out = Vec::with_capacity(64);
        let taken = rx.take(&mut out, 4096, &awake);
        assert!(taken.got && taken.end.is_none());
        assert_eq!(out, [0, 1, 2, 3, 4]);
        // Nothing waits: the next look clears `awake`.
        let mut more = Vec::new();
        let taken = rx.take(&mut more, 4096, &awake);
        assert!(!taken.got && taken.end.is_none());
        assert!(!awake.load(Ordering::SeqCst));
        // The writer got the reader's empty Vec (with its capacity) at the first swap.
        let mut buf = vec![9];
        tx.put(&mut buf, Wait::Never).unwrap();
        assert!(buf.is_empty());
    }

    #[test]
    fn a_full_handoff_refuses_or_waits_and_a_stop_appends_anyway() {
        let (tx, rx) = handoff::<u32>(3);
        tx.put(&mut vec![1, 2, 3], Wait::Never).unwrap();
        assert_eq!(tx.put(&mut vec![4], Wait::Never), Err(PutError::Full));
        let stop = AtomicBool::new(true);
        tx.put(&mut vec![4], Wait::UntilStop(&stop)).unwrap();
        let awake = AtomicBool::new(true);
        let mut out = Vec::new();
        // At most `max` per step; the rest waits for the next one.
        rx.take(&mut out, 3, &awake);
        assert_eq!(out, [1, 2, 3]);
        let mut out = Vec::new();
        rx.take(&mut out, 3, &awake);
        assert_eq!(out, [4]);
    }

    #[test]
    fn a_waiting_writer_goes_on_when_the_reader_takes_and_fails_when_it_is_gone() {
        let (tx, rx) = handoff::<u32>(1);
        tx.put(&mut vec![1], Wait::Never).unwrap();
        let writer = std::thread::spawn(move || {
            let r = tx.put(&mut vec![2], Wait::Forever);
            (tx, r)
        });
        let awake = AtomicBool::new(true);
        let mut out = Vec::new();
        while out.is_empty() {
            rx.take(&mut out, 10, &awake);
        }
        let (tx, r) = writer.join().unwrap();
        r.unwrap();
        drop(rx);
        assert_eq!(
            tx.put(&mut vec![3], Wait::Forever),
            Err(PutError::ReaderGone)
        );
    }

    #[test]
    fn the_end_comes_after_the_data_and_a_vanished_writer_ends_the_stream() {
        let (tx, rx) = handoff::<u32>(10);
        tx.put(&mut vec![1, 2], Wait::Never).unwrap();
        tx.end(Ending::Failed("sensor unplugged".into()));
        let awake = AtomicBool::new(true);
        let mut out = Vec::new();
        let taken = rx.take(&mut out, 1, &awake);
        assert!(taken.got && taken.end.is_none(), "data first");
        let taken = rx.take(&mut out, 10, &awake);
        assert!(matches!(taken.end, Some(Ending::Failed(ref e)) if e == "sensor unplugged"));
        assert_eq!(out, [1, 2]);

        let (tx, rx) = handoff::<u32>(10);
        drop(tx);
        let taken = rx.take(&mut Vec::new(), 10, &awake);
        assert!(matches!(taken.end, Some(Ending::Done)));
    }
}
