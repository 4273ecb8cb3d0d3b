//! The queue between a source's thread (or the program's [`InputSender`](crate::InputSender))
//! and the source's agent: elements, bounded in number, taken all at once.
//!
//! A channel of chunks would bound the number of *chunks*, and a source that hands over one
//! element at a time would then send one tiny batch per element: every batch costs a step, a
//! message and a wake-up downstream. Here the agent's step takes everything that waits (up to
//! its batch size) as one batch: the per-batch cost is paid once per burst, whatever the
//! writer's rhythm (adaptive batching).
//!
//! What waits is a queue of `Vec`s of up to a batch each (`limit / 4` elements, or what the
//! agent's step takes, if at least 4 KiB: [`HandoffRx::set_bounds`]), then the one
//! being gathered (`State::open`): small hand-overs and single elements are appended to it, a
//! batch arriving when it is empty takes its place as the `Vec` it came in, and a full one is
//! sealed onto the queue. A step whose buffer is empty takes the first `Vec` itself (swapped,
//! not copied) and appends the next ones while they fit; the writer gets back the agent's
//! empty `Vec` with its capacity. So a source that hands over whole batches has its elements
//! moved, never copied, on the way to its agent, and so are single elements gathered into room
//! for a batch: the step's empty buffer, with its room, is where the next ones gather, so the
//! same two or three vectors go round. (Copying a few elements out instead, to leave the room
//! with the writer, held the lock while the copy pulled the elements' cache lines from the
//! writer's core, and the writer, pushing the next element, waited: one element per push ran
//! 1.2-1.5x slower in `iotstream bench`'s `thread` and `pool` cells.) Only a step whose buffer
//! has less room than the gathering `Vec` (its output's pool was empty) copies a few elements
//! out, so that the room stays where the next ones gather. Small hand-overs of a batch are
//! copied into the room the gathering `Vec` has, so the writer keeps its own buffer. In steady
//! state nothing is allocated per element or per hand-over.
//!
//! A source fed one element at a time pays for the handoff in cache lines moved between the
//! writer's core and the agent's, not in instructions: the lock, what a hand-over reads and
//! writes (the counts, the gathering `Vec`, whether the agent is awake) and nothing else share
//! one line (`Shared`), and the rest of the state is behind a pointer the writer follows only
//! to seal a batch. Whether the agent is awake lives there too ([`AwakeFlag`]): the hand-over
//! says whether to wake it, with no atomic of its own on another line. (`cargo bench --bench
//! single`, three alternated runs: one element per `fill` went from 0.82-0.88x a crossbeam
//! pipeline to 1.08-1.26x, one per `push` from 1.01-1.05x to 1.50-1.57x; docs/benchmarks-journal.md
//! has the figures, and those of a step swapping rather than copying a few elements.)
//!
//! A hand-over larger than what a step takes is taken in parts, from the front, each part
//! moved once: its rest waits as the vector's iterator (`Cold::front`), never shifted to the
//! vector's start (which moved the whole rest at every step: quadratic in the hand-over); its
//! vector is freed once taken, not kept for the writer.
//!
//! The writer waits while `limit` elements or more wait (one hand-over may go past it, so a
//! hand-over larger than the limit still goes through): memory stays bounded by the limit plus
//! the largest hand-over. The limit, and with it the batch, may be lowered once the reader
//! knows its batch ([`HandoffRx::set_bounds`]: a program's input, made before the run knows
//! its connections' credit).
//!
//! Elements that own heap memory (a `String`, a `Vec<u8>`: see `stream::heap`) are bounded
//! in bytes as well ([`HandoffRx::limit_bytes`]): the writer also waits while that many bytes
//! wait, counted as each hand-over comes in and as the agent takes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::host::AwakeFlag;
use crate::stream::heap;

/// The most empty `Vec`s kept for the writer: one per batch that may wait when the batch is a
/// quarter of the limit (with a smaller one, [`HandoffRx::set_bounds`], more may wait, and a
/// sealed batch beyond the spares allocates its vector: once per batch, never per element).
const SPARES: usize = 4;

/// A hand-over of at most this many bytes is copied into the room the gathering `Vec` has
/// rather than swapped in (the writer keeps its buffer), and a step whose buffer has less room
/// than the gathering `Vec` copies that many out rather than swapping (see the module docs).
const COPY_AT_MOST_BYTES: usize = 4 << 10;

/// How a stream fed through a handoff ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The writer is done: the stream ends after what it handed over.
    Done,
    /// The writer failed: the run stops with this, after what it handed over.
    Failed(String),
    /// The writer (a [`Source`](crate::Source)'s call) panicked, with this message: the run
    /// stops with [`Error::Panic`](crate::Error::Panic) naming the source, after what it
    /// handed over, as when a step panics.
    Panicked(String),
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

/// What every hand-over and every take reads or writes, kept in the cache line of the lock
/// itself (see [`Shared`]): a single element handed over moves this line and the element's
/// own between the writer's core and the reader's, nothing else.
struct State<T> {
    /// The agent is awake: a wake-up is on its way or its step runs (see
    /// [`AwakeFlag`]). Cleared by the step that leaves nothing waiting.
    awake: bool,
    writer_gone: bool,
    reader_gone: bool,
    /// Bytes are counted too ([`HandoffRx::limit_bytes`]): `Cold::bytes` bounds the writer.
    counts_bytes: bool,
    /// The most elements gathered into one waiting `Vec` (a batch, at least 1): a quarter
    /// of `limit` ([`chunk_of`]) unless the reader said what its step takes
    /// ([`HandoffRx::set_bounds`]). A `u32` keeps the state within the lock's cache line.
    chunk: u32,
    /// Elements in `Cold::front`, `Cold::chunks` and `open`.
    waiting: usize,
    /// The writer waits while this many elements (at least 1) wait.
    limit: usize,
    /// The batch being gathered, after everything in `Cold`: small hand-overs and single
    /// elements are appended here; a step takes it last.
    open: Vec<T>,
    cold: Box<Cold<T>>,
}

/// The rest of the state: touched by the writer only when a batch is sealed, bytes are
/// counted, or the stream ends.
struct Cold<T> {
    /// The rest of a hand-over a step took only part of: waits before `chunks`.
    front: Option<std::vec::IntoIter<T>>,
    /// What waits, in order, after `front` and before `State::open`; no `Vec` in it is empty.
    chunks: VecDeque<Vec<T>>,
    /// For elements that own heap memory: what counts their bytes, the bytes waiting (each
    /// element's `size_of` and heap bytes), and the writer waits while this many wait.
    count: Option<heap::Counter<T>>,
    bytes: usize,
    byte_limit: usize,
    /// Empty `Vec`s the agent is done with (at most [`SPARES`]), for the writer's next
    /// batches.
    spares: Vec<Vec<T>>,
    end: Option<Ending>,
}

/// The lock and its state take one cache line of their own (64 bytes: the state is 56), the
/// condition variable the next one; the `Arc`'s counts sit in the line before.
#[repr(C, align(64))]
struct Shared<T> {
    state: Mutex<State<T>>,
    room: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> State<T> {
    /// The writer must wait: `limit` elements (or `byte_limit` bytes) wait.
    fn full(&self) -> bool {
        self.waiting >= self.limit || (self.counts_bytes && self.cold.bytes >= self.cold.byte_limit)
    }

    /// Moves the batch being gathered to the end of `chunks`; a spare (or nothing) is
    /// gathered into next.
    fn seal(&mut self) {
        let cold = &mut *self.cold;
        let next = cold.spares.pop().unwrap_or_default();
        cold.chunks
            .push_back(std::mem::replace(&mut self.open, next));
    }

    /// Marks the agent awake; true if it was asleep.
    fn rouse(&mut self) -> bool {
        !std::mem::replace(&mut self.awake, true)
    }
}

/// The most elements gathered into one waiting `Vec` by default: a quarter of the limit.
fn chunk_of(limit: usize) -> u32 {
    u32::try_from(limit / 4).unwrap_or(u32::MAX).max(1)
}

// The state a hand-over touches stays within the cache line of its lock (see `State`).
const _: () = assert!(std::mem::size_of::<Mutex<State<u64>>>() <= 64);

/// The capacity a gathering `Vec` is given at once: room for a batch (not a growth per few
/// elements), within 4 MiB.
fn gather_capacity<T>(chunk: usize) -> usize {
    chunk
        .min((4 << 20) / std::mem::size_of::<T>().max(1))
        .max(1)
}

/// At most [`COPY_AT_MOST_BYTES`]: copied rather than swapped.
fn few<T>(n: usize) -> bool {
    n.saturating_mul(std::mem::size_of::<T>()) <= COPY_AT_MOST_BYTES
}

/// The writing end.
pub(crate) struct HandoffTx<T>(Arc<Shared<T>>);

/// The reading end (the source's agent).
pub(crate) struct HandoffRx<T>(Arc<Shared<T>>);

/// A handoff whose writer waits while `limit` (at least 1) elements wait; what waits is
/// gathered in `Vec`s of up to `limit / 4` elements (a batch). The agent starts awake (its
/// host steps it when it starts).
pub(crate) fn handoff<T>(limit: usize) -> (HandoffTx<T>, HandoffRx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            awake: true,
            writer_gone: false,
            reader_gone: false,
            counts_bytes: false,
            chunk: chunk_of(limit),
            waiting: 0,
            limit: limit.max(1),
            open: Vec::new(),
            cold: Box::new(Cold {
                front: None,
                chunks: VecDeque::new(),
                count: None,
                bytes: 0,
                byte_limit: usize::MAX,
                spares: Vec::new(),
                end: None,
            }),
        }),
        room: Condvar::new(),
    });
    (HandoffTx(Arc::clone(&shared)), HandoffRx(shared))
}

impl<T: Send + 'static> AwakeFlag for Shared<T> {
    fn rouse(&self) -> bool {
        self.lock().rouse()
    }
}

impl<T> HandoffTx<T> {
    /// Appends `items` (leaving it empty, possibly with the capacity of a `Vec` the reader is
    /// done with), waiting for room as `wait` says. True if the agent was asleep: the caller
    /// wakes it ([`Waker::woken`](crate::host::Waker::woken)); the agent counts as awake from
    /// here on.
    pub fn put(&self, items: &mut Vec<T>, wait: Wait<'_>) -> Result<bool, PutError> {
        let mut guard = self.room(wait)?;
        let state = &mut *guard;
        let n = items.len();
        if n == 0 {
            return Ok(false);
        }
        // Counted first: a user's counter that panics leaves the state as it was.
        if state.counts_bytes {
            let cold = &mut *state.cold;
            if let Some(count) = &cold.count {
                cold.bytes += bytes_of(count, items);
            }
        }
        state.waiting += n;
        if !state.open.is_empty() && state.open.len() + n > state.chunk as usize {
            state.seal();
        }
        // A batch waits as it came: moved, not copied; a few elements are copied into the
        // room the gathering `Vec` has (the writer keeps its own).
        if state.open.is_empty() && (!few::<T>(n) || state.open.capacity() < n) {
            std::mem::swap(&mut state.open, items);
        } else {
            state.open.append(items);
        }
        Ok(state.rouse())
    }

    /// Appends one element (no allocation unless the gathering `Vec` grows); gives it back if
    /// it could not. True if the agent was asleep, as for [`put`](Self::put).
    pub fn put_one(&self, item: T, wait: Wait<'_>) -> Result<bool, (PutError, T)> {
        let mut guard = match self.room(wait) {
            Ok(guard) => guard,
            Err(e) => return Err((e, item)),
        };
        let state = &mut *guard;
        if state.counts_bytes {
            let cold = &mut *state.cold;
            if let Some(count) = &cold.count {
                cold.bytes += bytes_of(count, std::slice::from_ref(&item));
            }
        }
        state.waiting += 1;
        let chunk = state.chunk as usize;
        if state.open.len() >= chunk {
            state.seal();
        }
        if state.open.capacity() == 0 {
            state.open.reserve(gather_capacity::<T>(chunk));
        }
        state.open.push(item);
        Ok(state.rouse())
    }

    /// The state, locked, once there is room (or the stop says to append anyway).
    fn room(&self, wait: Wait<'_>) -> Result<MutexGuard<'_, State<T>>, PutError> {
        const POLL: Duration = Duration::from_millis(50);
        let mut state = self.0.lock();
        loop {
            if state.reader_gone {
                return Err(PutError::ReaderGone);
            }
            if !state.full() {
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
        state.cold.end.get_or_insert(ending);
    }

    /// The agent's awake flag, for its [`Waker`](crate::host::Waker).
    pub fn awake_flag(&self) -> Arc<dyn AwakeFlag>
    where
        T: Send + 'static,
    {
        Arc::clone(&self.0) as Arc<dyn AwakeFlag>
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
    /// Nothing waits any more and the stream goes on: the agent was marked asleep, so the
    /// writer's next hand-over wakes it (no need to look again before it).
    pub asleep: bool,
}

/// Moves the elements of `chunk` (all of them: they fit) to `out`. The emptied `Vec` stays in
/// `chunk`: `out`'s own empty one when `out` was empty and `chunk` was swapped into it, else
/// `chunk`'s with its capacity. A few elements are swapped out only into as much room as they
/// were gathered in (see the module docs): a step with less (its output's pool was empty)
/// copies them, and the writer keeps its room rather than gathering the next ones into a
/// vector too small for them.
fn move_all<T>(out: &mut Vec<T>, chunk: &mut Vec<T>) {
    if out.is_empty() && (!few::<T>(chunk.len()) || out.capacity() >= chunk.capacity()) {
        std::mem::swap(out, chunk);
    } else {
        out.append(chunk);
    }
}

impl<T> HandoffRx<T> {
    /// Moves what waits into `out`, at most `max` elements in all (`out` may hold some).
    /// When nothing is left waiting and the stream has not ended, marks the agent asleep
    /// under the lock, so a writer that hands over afterwards finds it asleep and wakes it:
    /// the step that emptied the queue is the last until then (one step per burst, not a
    /// second one to find the queue empty).
    ///
    /// If `abandoned` is set then (the writer did not return after a stop: see
    /// `SourceEnder`), the stream ends here, and under the same lock the handoff refuses
    /// further hand-overs ([`PutError::ReaderGone`]): a writer's hand-over is either taken
    /// by this step or refused, never accepted and then dropped with the agent's end.
    pub fn take(&self, out: &mut Vec<T>, max: usize, abandoned: &AtomicBool) -> Taken {
        let mut guard = self.0.lock();
        let state = &mut *guard;
        let was_full = state.full();
        let before = out.len();
        let mut room = max.saturating_sub(out.len()).max(1);
        let cold = &mut *state.cold;
        if let Some(rest) = &mut cold.front {
            let n = rest.len().min(room);
            out.extend(rest.by_ref().take(n));
            state.waiting -= n;
            room -= n;
            if rest.len() == 0 {
                cold.front = None;
            }
        }
        while room > 0 {
            let Some(front) = cold.chunks.front_mut() else {
                break;
            };
            let n = front.len();
            if n > room {
                // Only part of it fits: that part is moved out, the rest waits where it is.
                let mut rest = cold.chunks.pop_front().expect("a front chunk").into_iter();
                out.extend(rest.by_ref().take(room));
                state.waiting -= room;
                cold.front = Some(rest);
                room = 0;
                break;
            }
            move_all(out, front);
            let emptied = cold.chunks.pop_front().expect("a front chunk");
            // The writer's next batch is gathered in it.
            if emptied.capacity() > 0 && cold.spares.len() < SPARES {
                cold.spares.push(emptied);
            }
            state.waiting -= n;
            room -= n;
        }
        let n = state.open.len();
        if room > 0 && n > 0 {
            if n > room {
                let next = cold.spares.pop().unwrap_or_default();
                let mut rest = std::mem::replace(&mut state.open, next).into_iter();
                out.extend(rest.by_ref().take(room));
                state.waiting -= room;
                cold.front = Some(rest);
            } else {
                // The gathering `Vec` keeps its room (or gets `out`'s): the writer's next
                // elements go into it, no `Vec` changes hands through `spares`.
                move_all(out, &mut state.open);
                state.waiting -= n;
            }
        }
        if let Some(count) = &cold.count {
            let bytes = bytes_of(count, &out[before..]);
            cold.bytes = cold.bytes.saturating_sub(bytes);
        }
        if was_full && !state.full() {
            self.0.room.notify_all();
        }
        if state.waiting > 0 {
            return Taken {
                end: None,
                asleep: false,
            };
        }
        let end = state
            .cold
            .end
            .take()
            .or_else(|| state.writer_gone.then_some(Ending::Done));
        if end.is_some() {
            return Taken { end, asleep: false };
        }
        state.awake = false;
        // Read with the lock held: an ender sets `abandoned`, then marks the agent awake
        // under this lock and wakes it if it was asleep; so either this sees the flag or a
        // wake-up comes.
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

    /// The agent's awake flag, for the [`Waker`](crate::host::Waker) of whoever wakes it
    /// other than the writer (a `SourceEnder`).
    pub fn awake_flag(&self) -> Arc<dyn AwakeFlag>
    where
        T: Send + 'static,
    {
        Arc::clone(&self.0) as Arc<dyn AwakeFlag>
    }
}

impl<T> HandoffRx<T> {
    /// Sets, from now on, the limit (the writer waits while that many elements wait) and the
    /// batch what waits is gathered in: for a reader whose batch is known only after the
    /// handoff was made. The batch is the most a step takes, so that a step takes a whole
    /// waiting `Vec` (swapped, not copied) rather than part of a larger one (a 1 KiB source
    /// of batches of 256 behind a limit of 2,048 ran 6x slower so); it is kept within a
    /// quarter of the limit (what [`handoff`] starts with; `usize::MAX` asks for that) and
    /// never below what [`COPY_AT_MOST_BYTES`] hold (batches of one element would each be a
    /// `Vec` of its own). What already waits keeps its vectors (a larger one is taken in
    /// parts).
    pub fn set_bounds(&self, limit: usize, batch: usize) {
        let few = (COPY_AT_MOST_BYTES / std::mem::size_of::<T>().max(1)).max(1);
        let batch = u32::try_from(batch.max(few)).unwrap_or(u32::MAX);
        let mut state = self.0.lock();
        state.limit = limit.max(1);
        state.chunk = batch.min(chunk_of(limit));
        // A raised limit may make room for a waiting writer.
        self.0.room.notify_all();
    }

    /// Bounds what waits in bytes too, counted with `count` (elements that own heap memory:
    /// see the module docs), from now on.
    pub fn limit_bytes(&self, byte_limit: usize, count: heap::Counter<T>) {
        let mut guard = self.0.lock();
        let state = &mut *guard;
        let cold = &mut *state.cold;
        let waiting: usize = cold
            .front
            .iter()
            .map(|rest| bytes_of(&count, rest.as_slice()))
            .chain(cold.chunks.iter().map(|c| bytes_of(&count, c)))
            .chain(std::iter::once(bytes_of(&count, &state.open)))
            .sum();
        cold.bytes = waiting;
        cold.count = Some(count);
        cold.byte_limit = byte_limit.max(1);
        state.counts_bytes = true;
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
        // The agent starts awake (its host steps it when it starts): no wake-up is asked for.
        for v in 0..5 {
            assert!(!tx.put(&mut vec![v], Wait::Never).unwrap());
        }
        let mut out = Vec::with_capacity(64);
        let taken = rx.take(&mut out, 4096, &AtomicBool::new(false));
        assert_eq!(out, [0, 1, 2, 3, 4]);
        // Nothing waits after it: that very step marks the agent asleep (the writer's next
        // hand-over wakes it), so no second step is needed to find the queue empty.
        assert!(taken.asleep && taken.end.is_none());
        // Another waker (an ender) finds it asleep, and the agent is awake from then on.
        assert!(tx.awake_flag().rouse());
        assert!(!rx.awake_flag().rouse());
        let mut more = Vec::new();
        let taken = rx.take(&mut more, 4096, &AtomicBool::new(false));
        assert!(more.is_empty() && taken.asleep && taken.end.is_none());
        // The writer's next hand-over finds it asleep and says so, once.
        let mut buf = vec![9];
        assert!(tx.put(&mut buf, Wait::Never).unwrap());
        assert!(buf.is_empty());
        assert!(!tx.put_one(10, Wait::Never).unwrap());
        let mut out = Vec::new();
        let taken = rx.take(&mut out, 4096, &AtomicBool::new(false));
        assert_eq!(out, [9, 10]);
        assert!(taken.asleep);
        assert!(tx.put_one(11, Wait::Never).unwrap());
    }

    #[test]
    fn a_hand_over_reads_and_writes_one_cache_line_besides_its_elements() {
        // The lock and `State` in one line, starting one: what the layout is for.
        assert_eq!(std::mem::align_of::<Shared<u64>>(), 64);
        assert!(std::mem::size_of::<Mutex<State<u64>>>() <= 64);
        assert!(std::mem::size_of::<Mutex<State<[u8; 1024]>>>() <= 64);
    }

    #[test]
    fn single_elements_gather_in_room_for_a_batch_and_a_step_takes_them_without_a_copy() {
        let (tx, rx) = handoff::<u64>(4 * 64);
        let abandoned = AtomicBool::new(false);
        // Elements pushed one at a time, taken after each, and after bursts: each step's
        // buffer is swapped with the vector they were gathered in (nothing is copied while
        // the writer may be waiting for the lock), and the step's empty buffer, with its
        // room, is where the next ones gather. In steady state two vectors go round.
        let mut next = 0;
        let mut got = Vec::new();
        let mut out: Vec<u64> = Vec::with_capacity(64);
        let mut seen = std::collections::HashSet::new();
        for burst in [1, 1, 3, 1, 17, 64, 2, 5] {
            for _ in 0..burst {
                tx.put_one(next, Wait::Never).unwrap();
                next += 1;
            }
            let gathered = rx.0.lock().open.as_ptr();
            let mine = out.as_ptr();
            rx.take(&mut out, 4096, &abandoned);
            assert_eq!(out.as_ptr(), gathered, "after a burst of {burst}: swapped");
            assert_eq!(
                rx.0.lock().open.as_ptr(),
                mine,
                "the step's room gathers next"
            );
            seen.insert(out.as_ptr());
            got.append(&mut out);
        }
        assert_eq!(got, (0..next).collect::<Vec<_>>());
        assert!(seen.len() <= 3, "{} vectors went round", seen.len());
        // The writer's small hand-overs are copied into the room there is: it keeps its buffer.
        tx.put_one(999, Wait::Never).unwrap();
        let mut buf = Vec::with_capacity(16);
        buf.push(1000);
        let mine = buf.as_ptr();
        tx.put(&mut buf, Wait::Never).unwrap();
        assert!(buf.is_empty() && buf.as_ptr() == mine);
        rx.take(&mut out, 4096, &abandoned);
        assert_eq!(out, [999, 1000]);
    }

    /// A step whose buffer has no room (its output's pool was empty) copies a few gathered
    /// elements out rather than swapping them: the gathering vector keeps its room, so a
    /// writer that hands over small batches keeps its own buffer (they are copied into that
    /// room) instead of losing it at every hand-over.
    #[test]
    fn a_writer_reusing_its_buffer_keeps_it_when_the_steps_buffer_has_no_room() {
        let (tx, rx) = handoff::<u64>(4 * 64);
        let abandoned = AtomicBool::new(false);
        let mut buf: Vec<u64> = Vec::with_capacity(16);
        let (mut changed, mut got) = (0, Vec::new());
        for round in 0..50u64 {
            buf.extend([round * 3, round * 3 + 1, round * 3 + 2]);
            let mine = buf.as_ptr();
            tx.put(&mut buf, Wait::Never).unwrap();
            if buf.capacity() == 0 {
                buf.reserve(16);
            }
            if round > 2 && buf.as_ptr() != mine {
                changed += 1;
            }
            let mut out = Vec::new();
            rx.take(&mut out, 4096, &abandoned);
            got.extend(out);
        }
        assert_eq!(got, (0..150).collect::<Vec<_>>());
        assert_eq!(changed, 0, "the writer lost its buffer {changed} times");
    }

    #[test]
    fn whole_batches_are_moved_to_the_agent_not_copied() {
        let (tx, rx) = handoff::<u64>(4 * 1000);
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
            rx.take(&mut out, 1000, &AtomicBool::new(false));
            assert_eq!(out.as_ptr(), ptr);
            assert_eq!(
                out,
                (i as u64 * 1000..(i as u64 + 1) * 1000).collect::<Vec<_>>()
            );
        }
        // With room for more, the next batches are appended (gathered into one).
        tx.put(&mut (3000..3500).collect(), Wait::Never).unwrap();
        let mut out = Vec::new();
        rx.take(&mut out, 2000, &AtomicBool::new(false));
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
        let mut got = Vec::new();
        loop {
            let mut out = Vec::new();
            let taken = rx.take(&mut out, 10, &AtomicBool::new(false));
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
        let take = |max| {
            let mut out = Vec::new();
            rx.take(&mut out, max, &AtomicBool::new(false));
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

    /// Behind a limit of more than four of its batches (a source of small batches), what a
    /// step takes waits as the vectors it was handed over in, and each step takes one whole
    /// (swapped, no copy), rather than halves of vectors gathered from two.
    #[test]
    fn a_small_batch_keeps_each_hand_over_whole_for_the_step() {
        type Kib = [u64; 128];
        let (tx, rx) = handoff::<Kib>(2048);
        rx.set_bounds(2048, 256);
        let ab = AtomicBool::new(false);
        let batch = |first: u64| -> Vec<Kib> { (first..first + 256).map(|i| [i; 128]).collect() };
        let (mut a, mut b) = (batch(0), batch(256));
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        tx.put(&mut a, Wait::Never).unwrap();
        tx.put(&mut b, Wait::Never).unwrap();
        for (want_ptr, first) in [(pa, 0u64), (pb, 256)] {
            let mut out = Vec::new();
            rx.take(&mut out, 256, &ab);
            assert_eq!(out.len(), 256);
            assert_eq!(out[0][0], first);
            assert_eq!(out.as_ptr(), want_ptr, "the hand-over's own vector");
        }
        // Never below a few kilobytes' worth, nor above a quarter of the limit.
        rx.set_bounds(2048, 1);
        assert_eq!(rx.0.lock().chunk, 4);
        rx.set_bounds(2048, usize::MAX);
        assert_eq!(rx.0.lock().chunk, 512);
        let (_tx, small) = handoff::<u64>(1 << 16);
        small.set_bounds(1 << 16, 1);
        assert_eq!(small.0.lock().chunk as usize, COPY_AT_MOST_BYTES / 8);
    }

    #[test]
    fn a_new_limit_bounds_the_writer_from_then_on_and_a_raised_one_wakes_it() {
        let (tx, rx) = handoff::<u32>(4096);
        rx.set_bounds(8, usize::MAX);
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
        rx.set_bounds(100, usize::MAX);
        let tx = writer.join().unwrap().expect("the raised limit makes room");
        tx.put_one(9, Wait::Never).unwrap();
        let mut out = Vec::new();
        rx.take(&mut out, 100, &AtomicBool::new(false));
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_handoff_refuses_or_waits_and_a_stop_appends_anyway() {
        let (tx, rx) = handoff::<u32>(3);
        tx.put(&mut vec![1, 2, 3], Wait::Never).unwrap();
        assert_eq!(tx.put(&mut vec![4], Wait::Never), Err(PutError::Full));
        let stop = AtomicBool::new(true);
        tx.put(&mut vec![4], Wait::UntilStop(&stop)).unwrap();
        let mut out = Vec::new();
        // At most `max` per step; the rest waits for the next one.
        rx.take(&mut out, 3, &AtomicBool::new(false));
        assert_eq!(out, [1, 2, 3]);
        let mut out = Vec::new();
        rx.take(&mut out, 3, &AtomicBool::new(false));
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
        let mut out = Vec::new();
        while out.is_empty() {
            rx.take(&mut out, 10, &AtomicBool::new(false));
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
        let mut out = Vec::new();
        let taken = rx.take(&mut out, 1, &AtomicBool::new(false));
        assert!(!taken.asleep && taken.end.is_none(), "data first");
        let taken = rx.take(&mut out, 10, &AtomicBool::new(false));
        assert!(matches!(taken.end, Some(Ending::Failed(ref e)) if e == "sensor unplugged"));
        assert_eq!(out, [1, 2]);

        let (tx, rx) = handoff::<u32>(10);
        drop(tx);
        let taken = rx.take(&mut Vec::new(), 10, &AtomicBool::new(false));
        assert!(matches!(taken.end, Some(Ending::Done)));
    }

    #[test]
    fn an_abandoned_stream_ends_at_the_step_that_empties_it_and_refuses_what_comes_after() {
        let (tx, rx) = handoff::<u32>(10);
        let abandoned = AtomicBool::new(true);
        tx.put(&mut vec![1, 2], Wait::Never).unwrap();
        // What was handed over before the step is delivered with it, then the stream ends.
        let mut out = Vec::new();
        let taken = rx.take(&mut out, 10, &abandoned);
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

    /// xorshift64: the random tests' sequence, the same at every run.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// What waits is what the model holds, in its order, counted and bounded as it says.
    fn check_invariants(rx: &HandoffRx<String>, model: &VecDeque<String>, counting: bool) {
        let st = rx.0.lock();
        assert_eq!(st.waiting, model.len(), "waiting count");
        let mut actual: Vec<String> = Vec::new();
        if let Some(f) = &st.cold.front {
            assert!(f.len() > 0, "empty front kept");
            actual.extend(f.as_slice().iter().cloned());
        }
        for c in &st.cold.chunks {
            assert!(!c.is_empty(), "empty chunk");
            actual.extend(c.iter().cloned());
        }
        actual.extend(st.open.iter().cloned());
        assert_eq!(
            actual,
            model.iter().cloned().collect::<Vec<_>>(),
            "contents/order"
        );
        if counting {
            let want: usize = model
                .iter()
                .map(|s| std::mem::size_of::<String>() + s.capacity())
                .sum();
            assert_eq!(st.cold.bytes, want, "byte accounting");
        }
        assert!(st.cold.spares.len() <= SPARES);
    }

    /// Hand-overs of every size (one element, a few, a batch, none), takes of every size
    /// (with elements already in `out`), raised and lowered limits, with and without a byte
    /// bound, against a `VecDeque`: the same elements in the same order, the same refusals,
    /// the same wake-ups asked for, exact byte counts.
    #[test]
    fn a_random_mix_of_hand_overs_takes_and_limits_matches_a_queue_model() {
        for seed0 in 1..400u64 {
            let mut seed = seed0.wrapping_mul(0x9E3779B97F4A7C15) | 1;
            let lim0 = (rng(&mut seed) % 64 + 1) as usize;
            let (tx, rx) = handoff::<String>(lim0);
            let mut limit = lim0;
            let counting = rng(&mut seed) % 2 == 0;
            let mut byte_limit = usize::MAX;
            if counting {
                byte_limit = (rng(&mut seed) % 3000 + 1) as usize;
                rx.limit_bytes(byte_limit, Arc::new(|s: &String| s.capacity()));
            }
            let mut model: VecDeque<String> = VecDeque::new();
            let mut next = 0u64;
            let mut awake = true;
            let ab = AtomicBool::new(false);
            let mk = |next: &mut u64, seed: &mut u64| {
                let pad = (rng(seed) % 40) as usize;
                let mut s = format!("{next}{}", "x".repeat(pad));
                s.shrink_to_fit();
                assert_eq!(s.capacity(), s.clone().capacity());
                *next += 1;
                s
            };
            for _ in 0..300 {
                let bytes: usize = model
                    .iter()
                    .map(|s| std::mem::size_of::<String>() + s.capacity())
                    .sum();
                let full = model.len() >= limit || (counting && bytes >= byte_limit);
                match rng(&mut seed) % 10 {
                    0..=2 => {
                        let k = match rng(&mut seed) % 4 {
                            0 => 0,
                            1 => (rng(&mut seed) % 3) as usize,
                            2 => (rng(&mut seed) % 20) as usize,
                            _ => (rng(&mut seed) % 200) as usize,
                        };
                        let mut v: Vec<String> =
                            Vec::with_capacity((rng(&mut seed) % 300) as usize);
                        for _ in 0..k {
                            v.push(mk(&mut next, &mut seed));
                        }
                        let copy = v.clone();
                        let stopped = AtomicBool::new(true);
                        let wait = if rng(&mut seed) % 3 == 0 {
                            Wait::UntilStop(&stopped)
                        } else {
                            Wait::Never
                        };
                        let forced = matches!(wait, Wait::UntilStop(_));
                        match tx.put(&mut v, wait) {
                            Ok(asleep) => {
                                assert!(!full || forced);
                                assert!(v.is_empty());
                                if k > 0 {
                                    assert_eq!(asleep, !awake, "asleep report");
                                    awake = true;
                                } else {
                                    assert!(!asleep);
                                }
                                model.extend(copy);
                            }
                            Err(e) => {
                                assert_eq!(e, PutError::Full);
                                assert!(full && !forced);
                                next -= k as u64;
                            }
                        }
                    }
                    3..=5 => {
                        let s = mk(&mut next, &mut seed);
                        match tx.put_one(s.clone(), Wait::Never) {
                            Ok(asleep) => {
                                assert!(!full);
                                assert_eq!(asleep, !awake);
                                awake = true;
                                model.push_back(s);
                            }
                            Err((e, back)) => {
                                assert_eq!(e, PutError::Full);
                                assert!(full);
                                assert_eq!(back, s);
                                next -= 1;
                            }
                        }
                    }
                    6..=8 => {
                        let pre = (rng(&mut seed) % 3) as usize;
                        let mut out: Vec<String> = (0..pre).map(|i| format!("pre{i}")).collect();
                        let max = (rng(&mut seed) % 80) as usize;
                        let taken = rx.take(&mut out, max, &ab);
                        let room = max.saturating_sub(pre).max(1);
                        let got = &out[pre..];
                        assert!(got.len() <= room);
                        let want: Vec<String> = model.drain(..room.min(model.len())).collect();
                        assert_eq!(got, &want[..], "seed {seed0}");
                        assert!(taken.end.is_none());
                        assert_eq!(taken.asleep, model.is_empty());
                        if taken.asleep {
                            awake = false;
                        }
                    }
                    _ => {
                        limit = (rng(&mut seed) % 64 + 1) as usize;
                        rx.set_bounds(limit, usize::MAX);
                        if rng(&mut seed) % 2 == 0 {
                            // What `set_bounds` sets, below its floor of 4 KiB (170 of these
                            // elements, more than a quarter of any limit here): batches smaller
                            // than a quarter of the limit.
                            let batch = (rng(&mut seed) % 20 + 1) as u32;
                            let mut st = rx.0.lock();
                            st.chunk = batch.min(chunk_of(limit));
                        }
                    }
                }
                check_invariants(&rx, &model, counting);
                assert_eq!(rx.0.lock().awake, awake);
            }
        }
    }

    /// A writer thread and a reader playing the host (it sleeps when told it may, until the
    /// writer says a hand-over found it asleep): every element arrives, in order, and every
    /// wake-up asked for is needed (none lost, none extra).
    #[test]
    fn a_writer_and_a_reader_on_two_threads_lose_no_element_and_no_wake_up() {
        use std::sync::mpsc;
        for round in 0..12u64 {
            let (tx, rx) = handoff::<String>(((round % 9) + 1) as usize * 4);
            if round % 2 == 0 {
                rx.limit_bytes(2000, Arc::new(|s: &String| s.capacity()));
            }
            let (wake_tx, wake_rx) = mpsc::channel::<()>();
            const N: u64 = 20_000;
            let writer = std::thread::spawn(move || {
                let mut seed = round * 7919 + 13;
                let mut next = 0u64;
                let mut buf: Vec<String> = Vec::new();
                while next < N {
                    let asleep = if rng(&mut seed) % 2 == 0 {
                        let r = tx
                            .put_one(next.to_string(), Wait::Forever)
                            .map_err(|_| ())
                            .unwrap();
                        next += 1;
                        r
                    } else {
                        let k = (rng(&mut seed) % 50).min(N - next);
                        for _ in 0..k {
                            buf.push(next.to_string());
                            next += 1;
                        }
                        let r = tx.put(&mut buf, Wait::Forever).unwrap();
                        assert!(buf.is_empty());
                        r
                    };
                    if asleep {
                        wake_tx.send(()).unwrap();
                    }
                }
                tx.end(Ending::Done);
                if tx.awake_flag().rouse() {
                    wake_tx.send(()).unwrap();
                }
            });
            let ab = AtomicBool::new(false);
            let mut expect = 0u64;
            let mut seed = round + 99;
            loop {
                let mut out = Vec::new();
                let max = (rng(&mut seed) % 70 + 1) as usize;
                if rng(&mut seed) % 1000 == 0 {
                    rx.set_bounds((rng(&mut seed) % 40 + 1) as usize, usize::MAX);
                }
                let taken = rx.take(&mut out, max, &ab);
                // A take with elements waiting takes at least one (else this loop would spin).
                assert!(!out.is_empty() || taken.asleep || taken.end.is_some());
                assert!(out.len() <= max);
                for s in out {
                    assert_eq!(s, expect.to_string());
                    expect += 1;
                }
                if taken.end.is_some() {
                    break;
                }
                if taken.asleep {
                    wake_rx
                        .recv_timeout(Duration::from_secs(10))
                        .expect("lost wake-up: agent asleep, nobody woke it");
                }
            }
            assert_eq!(expect, N);
            writer.join().unwrap();
            let st = rx.0.lock();
            assert_eq!(st.waiting, 0);
            if round % 2 == 0 {
                assert_eq!(st.cold.bytes, 0);
            }
            assert!(wake_rx.try_recv().is_err(), "spurious extra wake");
        }
    }

    /// A writer, an ender abandoning the stream at varied moments, and the reader: the reader
    /// gets exactly what the writer was told was accepted, and the stream ends.
    #[test]
    fn an_abandoned_stream_delivers_exactly_what_was_accepted_whatever_the_timing() {
        use std::sync::mpsc;
        for round in 0..60u64 {
            let (tx, rx) = handoff::<u64>(((round % 5) + 1) as usize * 4);
            let (wake_tx, wake_rx) = mpsc::channel::<()>();
            let abandoned = Arc::new(AtomicBool::new(false));
            let ender_flag = rx.awake_flag();
            let wt = wake_tx.clone();
            let writer = std::thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut next = 0u64;
                loop {
                    let r = if next % 3 == 0 {
                        let mut v = vec![next, next + 1];
                        tx.put(&mut v, Wait::Forever).map(|a| (a, 2))
                    } else {
                        tx.put_one(next, Wait::Forever)
                            .map(|a| (a, 1))
                            .map_err(|(e, _)| e)
                    };
                    match r {
                        Ok((asleep, k)) => {
                            for i in 0..k {
                                accepted.push(next + i);
                            }
                            next += k;
                            if asleep {
                                wt.send(()).unwrap();
                            }
                        }
                        Err(e) => {
                            assert_eq!(e, PutError::ReaderGone);
                            return accepted;
                        }
                    }
                    if next % 97 == 0 {
                        std::thread::yield_now();
                    }
                }
            });
            let ab2 = Arc::clone(&abandoned);
            let wt2 = wake_tx.clone();
            let ender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(200 + round * 15));
                ab2.store(true, Ordering::SeqCst);
                if ender_flag.rouse() {
                    wt2.send(()).unwrap();
                }
            });
            drop(wake_tx);
            let mut got = Vec::new();
            loop {
                let mut out = Vec::new();
                let taken = rx.take(&mut out, 7, &abandoned);
                // A take with elements waiting takes at least one (else this loop would spin).
                assert!(!out.is_empty() || taken.asleep || taken.end.is_some());
                got.extend(out);
                if let Some(e) = taken.end {
                    assert!(matches!(e, Ending::Done));
                    break;
                }
                if taken.asleep {
                    wake_rx
                        .recv_timeout(Duration::from_secs(10))
                        .expect("lost wake-up");
                }
            }
            ender.join().unwrap();
            // The writer may be blocked in Forever: the end set reader_gone and notified.
            let accepted = writer.join().unwrap();
            assert_eq!(
                got, accepted,
                "accepted elements lost or reordered (round {round})"
            );
            drop(rx);
        }
    }
}
