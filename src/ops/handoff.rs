//! The queue between a source's thread (or the program's [`InputSender`](crate::InputSender))
//! and the source's agent: elements, bounded in number, taken all at once.
//!
//! A channel of chunks would bound the number of *chunks*, and a source that hands over one
//! element at a time would then send one tiny batch per element: every batch costs a step, a
//! message and a wake-up downstream. Here the agent's step takes everything that waits (up to
//! its batch size) as one batch: the per-batch cost is paid once per burst, whatever the
//! writer's rhythm (adaptive batching).
//!
//! What waits is a queue of `Vec`s of up to a batch each (`limit / 4` elements): small
//! hand-overs and single elements are appended to the last one, a full batch waits as the `Vec`
//! it came in. A step whose buffer is empty takes the first `Vec` itself (swapped, not copied)
//! and appends the next ones while they fit; the writer gets back the agent's empty `Vec` with
//! its capacity. So a source that hands over whole batches has its elements moved, never
//! copied, on the way to its agent. Only a few elements (at most 4 KiB) in a mostly empty `Vec`
//! (pushed one at a time into room for a batch) are copied out instead, and the room stays
//! with the writer: the agent's batch is the size of its elements, and the same two or three
//! vectors go round. In steady state nothing is allocated per element or per hand-over.
//!
//! A hand-over larger than what a step takes is taken in parts, from the front, each part
//! moved once: its rest waits as the vector's iterator (`State::front`), never shifted to the
//! vector's start (which moved the whole rest at every step: quadratic in the hand-over); its
//! vector is freed once taken, not kept for the writer.
//!
//! The writer waits while `limit` elements or more wait (one hand-over may go past it, so a
//! hand-over larger than the limit still goes through): memory stays bounded by the limit plus
//! the largest hand-over. The limit, and with it the batch, may be lowered once the reader
//! knows its batch ([`HandoffRx::set_limit`]: a program's input, made before the run knows
//! its connections' credit).
//!
//! Elements that own heap memory (a `String`, a `Vec<u8>`: see `stream::heap`) are bounded
//! in bytes as well ([`HandoffRx::limit_bytes`]): the writer also waits while that many bytes
//! wait, counted as each hand-over comes in and as the agent takes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::stream::heap;

/// The most empty `Vec`s kept for the writer: one per batch that may wait.
const SPARES: usize = 4;

/// A chunk whose elements take at most this many bytes and fill less than half of it is
/// copied out rather than swapped (see the module docs).
const COPY_AT_MOST_BYTES: usize = 4 << 10;

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
    /// The rest of a hand-over a step took only part of: waits before `chunks`.
    front: Option<std::vec::IntoIter<T>>,
    /// What waits, in order, after `front`; no `Vec` in it is empty.
    chunks: VecDeque<Vec<T>>,
    /// Elements in `front` and `chunks`.
    waiting: usize,
    /// The writer waits while this many elements (at least 1) wait.
    limit: usize,
    /// The most elements gathered into one waiting `Vec` (a batch: a quarter of the limit).
    chunk: usize,
    /// For elements that own heap memory: what counts their bytes, the bytes waiting (each
    /// element's `size_of` and heap bytes), and the writer waits while this many wait.
    count: Option<heap::Counter<T>>,
    bytes: usize,
    byte_limit: usize,
    /// Empty `Vec`s the agent is done with (at most [`SPARES`]), for the writer's next
    /// hand-overs.
    spares: Vec<Vec<T>>,
    end: Option<Ending>,
    writer_gone: bool,
    reader_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    room: Condvar,
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

/// A handoff whose writer waits while `limit` (at least 1) elements wait; what waits is
/// gathered in `Vec`s of up to `limit / 4` elements (a batch).
pub(crate) fn handoff<T>(limit: usize) -> (HandoffTx<T>, HandoffRx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            front: None,
            chunks: VecDeque::new(),
            waiting: 0,
            limit: limit.max(1),
            chunk: (limit / 4).max(1),
            count: None,
            bytes: 0,
            byte_limit: usize::MAX,
            spares: Vec::new(),
            end: None,
            writer_gone: false,
            reader_gone: false,
        }),
        room: Condvar::new(),
    });
    (HandoffTx(Arc::clone(&shared)), HandoffRx(shared))
}

impl<T> HandoffTx<T> {
    /// Appends `items` (leaving it empty, possibly with the capacity of a `Vec` the reader is
    /// done with), waiting for room as `wait` says.
    pub fn put(&self, items: &mut Vec<T>, wait: Wait<'_>) -> Result<(), PutError> {
        let mut state = self.room(wait)?;
        if items.is_empty() {
            return Ok(());
        }
        state.waiting += items.len();
        if let Some(count) = &state.count {
            let bytes = bytes_of(count, items);
            state.bytes += bytes;
        }
        let chunk = state.chunk;
        match state.chunks.back_mut() {
            // Small hand-overs gather into one batch.
            Some(last) if last.len() + items.len() <= chunk => last.append(items),
            // A batch waits as it came: moved, not copied.
            _ => {
                let spare = state.spares.pop().unwrap_or_default();
                state.chunks.push_back(std::mem::replace(items, spare));
            }
        }
        Ok(())
    }

    /// Appends one element (no allocation unless the waiting `Vec` grows); gives it back if
    /// it could not.
    pub fn put_one(&self, item: T, wait: Wait<'_>) -> Result<(), (PutError, T)> {
        match self.room(wait) {
            Ok(mut state) => {
                state.waiting += 1;
                if let Some(count) = &state.count {
                    let bytes = bytes_of(count, std::slice::from_ref(&item));
                    state.bytes += bytes;
                }
                let chunk = state.chunk;
                match state.chunks.back_mut() {
                    Some(last) if last.len() < chunk => last.push(item),
                    _ => {
                        let mut v = match state.spares.pop() {
                            Some(v) => v,
                            // Room for a batch at once, not a growth per few elements.
                            None => Vec::with_capacity(chunk),
                        };
                        v.push(item);
                        state.chunks.push_back(v);
                    }
                }
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
            if state.waiting < state.limit && state.bytes < state.byte_limit {
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
    /// The stream ends after them (a writer gone without a word ends it too).
    pub end: Option<Ending>,
    /// Nothing waits any more and the stream goes on: `awake` was cleared, so the writer's
    /// next hand-over wakes the agent (no need to look again before it).
    pub asleep: bool,
}

impl<T> HandoffRx<T> {
    /// Moves what waits into `out`, at most `max` elements in all (`out` may hold some).
    /// When nothing is left waiting and the stream has not ended, clears `awake` under the
    /// lock, so a writer that hands over afterwards sees it cleared and wakes the agent: the
    /// step that emptied the queue is the last until then (one step per burst, not a second
    /// one to find the queue empty).
    ///
    /// If `abandoned` is set then (the writer did not return after a stop: see
    /// `SourceEnder`), the stream ends here, and under the same lock the handoff refuses
    /// further hand-overs ([`PutError::ReaderGone`]): a writer's hand-over is either taken
    /// by this step or refused, never accepted and then dropped with the agent's end.
    pub fn take(
        &self,
        out: &mut Vec<T>,
        max: usize,
        awake: &AtomicBool,
        abandoned: &AtomicBool,
    ) -> Taken {
        let mut guard = self.0.lock();
        let state = &mut *guard;
        let was_full = state.waiting >= state.limit || state.bytes >= state.byte_limit;
        let before = out.len();
        let mut room = max.saturating_sub(out.len()).max(1);
        if let Some(rest) = &mut state.front {
            let n = rest.len().min(room);
            out.extend(rest.by_ref().take(n));
            state.waiting -= n;
            room -= n;
            if rest.len() == 0 {
                state.front = None;
            }
        }
        while room > 0 {
            let Some(front) = state.chunks.front() else {
                break;
            };
            let n = front.len();
            if n > room {
                // Only part of it fits: that part is moved out, the rest waits where it is.
                let mut rest = state.chunks.pop_front().expect("a front chunk").into_iter();
                out.extend(rest.by_ref().take(room));
                state.waiting -= room;
                state.front = Some(rest);
                break;
            }
            let mut taken = state.chunks.pop_front().expect("a front chunk");
            let few = n.saturating_mul(std::mem::size_of::<T>()) <= COPY_AT_MOST_BYTES;
            if out.is_empty() && !(few && n < taken.capacity() / 2) {
                std::mem::swap(out, &mut taken);
            } else {
                out.append(&mut taken);
            }
            // `taken` is empty now: the writer's next hand-over goes out in it.
            if taken.capacity() > 0 && state.spares.len() < SPARES {
                state.spares.push(taken);
            }
            state.waiting -= n;
            room -= n;
        }
        if let Some(count) = &state.count {
            let bytes = bytes_of(count, &out[before..]);
            state.bytes = state.bytes.saturating_sub(bytes);
        }
        if was_full && state.waiting < state.limit && state.bytes < state.byte_limit {
            self.0.room.notify_all();
        }
        let mut state = guard;
        if state.waiting > 0 {
            return Taken {
                end: None,
                asleep: false,
            };
        }
        let end = state
            .end
            .take()
            .or_else(|| state.writer_gone.then_some(Ending::Done));
        if end.is_some() {
            return Taken { end, asleep: false };
        }
        awake.store(false, Ordering::SeqCst);
        // Read after `awake` is cleared: an ender sets `abandoned`, then wakes the agent
        // unless it finds it awake; so either this sees the flag or a wake-up comes.
        if abandoned.load(Ordering::SeqCst) {
            state.reader_gone = true;
            self.0.room.notify_all();
            return Taken {
                end: Some(Ending::Done),
                asleep: false,
            };
        }
        Taken {
            end: None,
            asleep: true,
        }
    }
}

impl<T> HandoffRx<T> {
    /// Sets the limit (and with it the batch, a quarter of it) from now on, as
    /// [`handoff`] does: for a reader whose batch is known only after the handoff was made.
    /// What already waits keeps its vectors (a larger one is taken in parts).
    pub fn set_limit(&self, limit: usize) {
        let mut state = self.0.lock();
        state.limit = limit.max(1);
        state.chunk = (limit / 4).max(1);
        // A raised limit may make room for a waiting writer.
        self.0.room.notify_all();
    }

    /// Bounds what waits in bytes too, counted with `count` (elements that own heap memory:
    /// see the module docs), from now on.
    pub fn limit_bytes(&self, byte_limit: usize, count: heap::Counter<T>) {
        let mut state = self.0.lock();
        let waiting: usize = state
            .front
            .iter()
            .map(|rest| bytes_of(&count, rest.as_slice()))
            .chain(state.chunks.iter().map(|c| bytes_of(&count, c)))
            .sum();
        state.bytes = waiting;
        state.count = Some(count);
        state.byte_limit = byte_limit.max(1);
        self.0.room.notify_all();
    }
}

/// The bytes `items` count against a byte limit: each one's `size_of` and heap bytes.
pub(crate) fn bytes_of<T>(count: &heap::Counter<T>, items: &[T]) -> usize {
    items
        .iter()
        .map(|x| std::mem::size_of::<T>() + count(x))
        .sum()
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
        let taken = rx.take(&mut out, 4096, &awake, &AtomicBool::new(false));
        assert_eq!(out, [0, 1, 2, 3, 4]);
        // Nothing waits after it: that very step clears `awake` (the writer's next hand-over
        // wakes the agent), so no second step is needed to find the queue empty.
        assert!(taken.asleep && taken.end.is_none());
        assert!(!awake.load(Ordering::SeqCst));
        awake.store(true, Ordering::SeqCst);
        let mut more = Vec::new();
        let taken = rx.take(&mut more, 4096, &awake, &AtomicBool::new(false));
        assert!(more.is_empty() && taken.asleep && taken.end.is_none());
        assert!(!awake.load(Ordering::SeqCst));
        // The writer got the reader's empty Vec (with its capacity) at the first swap.
        let mut buf = vec![9];
        tx.put(&mut buf, Wait::Never).unwrap();
        assert!(buf.is_empty());
    }

    #[test]
    fn whole_batches_are_moved_to_the_agent_not_copied() {
        let (tx, rx) = handoff::<u64>(4 * 1000);
        let awake = AtomicBool::new(true);
        let mut ptrs = Vec::new();
        for b in 0..3u64 {
            let batch: Vec<u64> = (b * 1000..(b + 1) * 1000).collect();
            ptrs.push(batch.as_ptr());
            let mut batch = batch;
            tx.put(&mut batch, Wait::Never).unwrap();
            assert!(batch.is_empty());
        }
        // A step with an empty buffer takes the first batch's own Vec.
        for (i, &ptr) in ptrs.iter().enumerate().take(2) {
            let mut out = Vec::new();
            rx.take(&mut out, 1000, &awake, &AtomicBool::new(false));
            assert_eq!(out.as_ptr(), ptr);
            assert_eq!(
                out,
                (i as u64 * 1000..(i as u64 + 1) * 1000).collect::<Vec<_>>()
            );
        }
        // With room for more, the next batches are appended (gathered into one).
        tx.put(&mut (3000..3500).collect(), Wait::Never).unwrap();
        let mut out = Vec::new();
        rx.take(&mut out, 2000, &awake, &AtomicBool::new(false));
        assert_eq!(out, (2000..3500).collect::<Vec<_>>());
        // The agent's empty Vec went back to the writer: its next hand-over reuses it.
        let mut next = vec![7u64; 1000];
        tx.put(&mut next, Wait::Never).unwrap();
        assert!(next.is_empty() && next.capacity() > 0);
    }

    #[test]
    fn a_batch_larger_than_a_step_takes_is_split_in_order() {
        let (tx, rx) = handoff::<u32>(40);
        tx.put(&mut (0..25).collect(), Wait::Never).unwrap();
        tx.put_one(25, Wait::Never).unwrap();
        let awake = AtomicBool::new(true);
        let mut got = Vec::new();
        loop {
            let mut out = Vec::new();
            let taken = rx.take(&mut out, 10, &awake, &AtomicBool::new(false));
            assert!(out.len() <= 10);
            got.extend(out);
            if taken.asleep {
                break;
            }
        }
        assert_eq!(got, (0..26).collect::<Vec<_>>());
    }

    #[test]
    fn what_comes_after_a_hand_over_taken_in_parts_follows_its_rest() {
        let (tx, rx) = handoff::<u32>(400);
        let awake = AtomicBool::new(true);
        let take = |max| {
            let mut out = Vec::new();
            rx.take(&mut out, max, &awake, &AtomicBool::new(false));
            out
        };
        tx.put(&mut (0..250).collect(), Wait::Never).unwrap();
        assert_eq!(take(100), (0..100).collect::<Vec<_>>());
        tx.put_one(250, Wait::Never).unwrap();
        tx.put(&mut vec![251, 252], Wait::Never).unwrap();
        assert_eq!(take(100), (100..200).collect::<Vec<_>>());
        // The rest of the large one, then what came after it, in one step.
        assert_eq!(take(1000), (200..253).collect::<Vec<_>>());
    }

    #[test]
    fn a_new_limit_bounds_the_writer_from_then_on_and_a_raised_one_wakes_it() {
        let (tx, rx) = handoff::<u32>(4096);
        rx.set_limit(8);
        for v in 0..8 {
            tx.put_one(v, Wait::Never).unwrap();
        }
        assert_eq!(
            tx.put_one(8, Wait::Never).map_err(|(e, _)| e),
            Err(PutError::Full)
        );
        let writer = std::thread::spawn(move || {
            tx.put_one(8, Wait::Forever).map_err(|(e, _)| e)?;
            Ok::<_, PutError>(tx)
        });
        rx.set_limit(100);
        let tx = writer.join().unwrap().expect("the raised limit makes room");
        tx.put_one(9, Wait::Never).unwrap();
        let awake = AtomicBool::new(true);
        let mut out = Vec::new();
        rx.take(&mut out, 100, &awake, &AtomicBool::new(false));
        assert_eq!(out, (0..10).collect::<Vec<_>>());
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
        rx.take(&mut out, 3, &awake, &AtomicBool::new(false));
        assert_eq!(out, [1, 2, 3]);
        let mut out = Vec::new();
        rx.take(&mut out, 3, &awake, &AtomicBool::new(false));
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
            rx.take(&mut out, 10, &awake, &AtomicBool::new(false));
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
        let taken = rx.take(&mut out, 1, &awake, &AtomicBool::new(false));
        assert!(!taken.asleep && taken.end.is_none(), "data first");
        let taken = rx.take(&mut out, 10, &awake, &AtomicBool::new(false));
        assert!(matches!(taken.end, Some(Ending::Failed(ref e)) if e == "sensor unplugged"));
        assert_eq!(out, [1, 2]);

        let (tx, rx) = handoff::<u32>(10);
        drop(tx);
        let taken = rx.take(&mut Vec::new(), 10, &awake, &AtomicBool::new(false));
        assert!(matches!(taken.end, Some(Ending::Done)));
    }

    #[test]
    fn an_abandoned_stream_ends_at_the_step_that_empties_it_and_refuses_what_comes_after() {
        let (tx, rx) = handoff::<u32>(10);
        let awake = AtomicBool::new(true);
        let abandoned = AtomicBool::new(true);
        tx.put(&mut vec![1, 2], Wait::Never).unwrap();
        // What was handed over before the step is delivered with it, then the stream ends.
        let mut out = Vec::new();
        let taken = rx.take(&mut out, 10, &awake, &abandoned);
        assert_eq!(out, [1, 2]);
        assert!(matches!(taken.end, Some(Ending::Done)) && !taken.asleep);
        // A hand-over after that step is refused, not accepted and then dropped with the agent
        // (before, the agent read the flag after the lock and a put in between was lost).
        assert_eq!(tx.put(&mut vec![3], Wait::Never), Err(PutError::ReaderGone));
        assert!(matches!(
            tx.put_one(4, Wait::Forever),
            Err((PutError::ReaderGone, 4))
        ));
        drop(rx);
    }
}
