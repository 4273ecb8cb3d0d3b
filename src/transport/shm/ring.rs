//! A single-producer single-consumer lock-free ring of variable-length frames.
//!
//! The ring is generic over its memory ([`RingMemory`]): the same code runs on a heap allocation
//! ([`HeapRing`], unit tests), under loom (model tests, `loom/tests/loom_ring.rs`) and in a POSIX
//! shared-memory mapping ([`Segment`](super::segment::Segment), real use). One [`Producer`] writes
//! frames, one [`Consumer`] reads them, in the same process or in two processes.
//!
//! # Layout
//!
//! A `#[repr(C)]` [`Header`] of six 64-byte cache lines, then `capacity` data bytes (a power of
//! two, from [`MIN_CAPACITY`] to [`MAX_CAPACITY`]). All header fields are atomics, native
//! endian:
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | `magic: u64` = `b"IOTSRING"` read as a little-endian u64 | creator, once, last |
//! | 8 | `version: u32` = [`VERSION`] | creator, once |
//! | 12 | `header_size: u32` = 384 | creator, once |
//! | 16 | `capacity: u64`, data bytes | creator, once |
//! | 24 | `producer: u64`, the producer's [`Holder`], 0 until a producer claims the ring | producer, on claim or take-over |
//! | 32 | `consumer: u64`, the consumer's [`Holder`], 0 until a consumer claims the ring | consumer, on claim or take-over |
//! | 40 | `closed: u32`, 0 open, 1 the producer ended the stream, 2 the producer's process failed (the stream is incomplete) | producer, once |
//! | 44 | `reader_failed: u32`, non-zero once the consumer's process failed and reads no more ([`fail_consumer`]: the producer's space waiter stops waiting) | consumer, once |
//! | 48 | `stashed: u64`, elements the producer's owner holds for the ring outside it (a drop policy's stash, waiting for room): lost if its process dies ([`Producer::note_stashed`]) | producer |
//! | 64 | `head: u64`, bytes published by the producer since the start | producer |
//! | 128 | `tail: u64`, bytes released by the consumer since the start | consumer |
//! | 192 | `data_seq: u32` (futex word), `data_waiting: u32` (consumer sleeps) | both |
//! | 256 | `space_seq: u32` (futex word), `space_waiting: u32` (producer sleeps) | both |
//! | 320 | `consumed: u64`, elements of the frames past `tail` that the consumer's reader has consumed | consumer |
//! | 384 | data: `capacity` bytes | producer (frames), consumer reads |
//!
//! `head` and `tail` are monotonic byte counters; a position's offset in the data area is
//! `position % capacity`. Both are always multiples of 8, `tail <= head` and
//! `head - tail <= capacity`.
//!
//! # Frames
//!
//! A frame is an 8-byte frame header — `len: u32`, then `flags: u32` (0, or 1 on the first
//! frame of a producer that took the role over, below) — and `len` payload bytes, padded to a
//! multiple of 8. Payloads therefore start 8-byte aligned in memory (the data
//! area is 64-byte aligned), so a batch of `u64` or `f64` can be viewed in place with bytemuck.
//! A frame never wraps: when it does not fit between its offset and the end of the data area,
//! the producer writes a **wrap marker** (`len == u32::MAX`) there, skips to offset 0 and writes
//! the frame there. The largest payload is [`max_frame_len`]`(capacity)` =
//! `capacity / 2 - 8` bytes, so a frame plus the padding a wrap may cost always fits in an empty
//! ring: a producer never waits for space that can never come. A larger frame is an error
//! ([`RingError::FrameTooLarge`]); the transport splits a larger element over several frames
//! (`transport::codec`, "Large elements").
//!
//! # Protocol
//!
//! - The producer writes any number of frames with [`Producer::try_write`], then makes them
//!   visible at once with [`Producer::publish`]: one `Release` store of `head`. The consumer
//!   reads `head` with `Acquire`, so the frame bytes written before are visible to it.
//! - The consumer reads frames with [`Consumer::try_read`], then hands their space back at once
//!   with [`Consumer::release`]: one `Release` store of `tail`, read by the producer with
//!   `Acquire`, so the producer overwrites nothing the consumer may still read. It may also
//!   release only part of what it read, up to the end of a frame
//!   ([`Consumer::release_to`] a [`Consumer::position`]): the frames after it stay reserved,
//!   and are read again by a consumer that takes the role over (below).
//! - Each side caches the other's counter and re-reads it only when the ring looks full (the
//!   producer) or empty (the consumer): on the fast path neither side touches the other's cache
//!   line.
//! - [`Producer::close`] publishes what is pending, then sets `closed` (`Release`): a consumer
//!   that sees `closed` (`Acquire`) sees the final `head`. [`Consumer::is_closed`] is true once the
//!   consumer has also read every frame: the end of the stream.
//!
//! # Elements consumed past the tail
//!
//! The ring itself counts bytes; what a frame holds is the transport's business. But a
//! consumer may release a frame only once its reader has consumed every element in it, and a
//! producer that bounds the elements in flight (written, not yet consumed: see
//! `transport::ShmSender`) must learn of consumption that ends inside a frame, or a reader
//! that needs more elements than a partly consumed frame leaves it would wait forever for a
//! writer that waits for that frame's release. So the consumer also stores `consumed`: how many
//! elements of the frames from `tail` on its reader has consumed ([`Consumer::release_consumed`]),
//! always **before** the `tail` it goes with (a release lowers it by the elements of the frames
//! it releases), and wakes a producer waiting for space when it changes. The producer reads
//! `tail` first, then `consumed` ([`Producer::released`]): what it sees is never more
//! consumption than there was for that `tail`, so it may overestimate what is in flight, never
//! underestimate it. `consumed` is a hint like the futex words: any value is harmless to the
//! ring (a wrong one only changes how much the producer's owner chooses to write).
//!
//! # Roles, and taking one over from a dead process
//!
//! A ring has one producer and one consumer at a time. Each attaches by recording itself, a
//! [`Holder`] (its pid and a stamp of when its process started, in one `u64`), in its role's
//! field with a compare-and-swap from 0 ([`Producer::new`], [`Consumer::new`]); a role already
//! held is [`RingError::RoleTaken`]. A restarted process takes a role over with
//! [`Producer::take_over`] / [`Consumer::take_over`]: if the recorded holder is one that the
//! caller's liveness test says is dead, a compare-and-swap from that holder to ours claims it
//! (two processes racing for it: one wins, the other gets `RoleTaken`); a live holder, or
//! ourselves, is never displaced. The start stamp is what makes "dead" mean dead once pids
//! wrap: a process that the kernel later gave the dead holder's pid (the restarted owner
//! itself, or any other) has another stamp, so it is not mistaken for the holder. The liveness
//! test is a parameter, so the ring makes no system call of its own (and runs unchanged under
//! loom). After the claim:
//!
//! - a consumer that takes over starts reading at the released `tail`: every frame the dead
//!   consumer read but did not release is delivered again, none is lost — which is why a
//!   reader releases a frame only once it is done with its contents;
//! - a producer that takes over continues at the published `head`: frames the dead producer
//!   wrote but did not publish are overwritten, the consumer never saw them. Its first frame is
//!   flagged ([`Payload::after_take_over`]), so that the consumer knows where the dead
//!   producer's frames end (something the dead one left half-sent, such as the first parts of
//!   a large element, ends there). A closed ring takes no new producer ([`RingError::Closed`]);
//! - the new owner clears its own "asleep" flag, which the dead one may have left set.
//!
//! The positions are read after the claim: only the role's owner moves them, so they are then
//! final.
//!
//! # Waiting without lost wake-ups
//!
//! [`Producer::wait_for_space`] first re-checks its condition [`SPIN_LIMIT`] times, and so does
//! [`Consumer::wait_for_data`] when its last wait was short (it then keeps checking a little
//! longer, [`AdaptiveSpin`]; in low-latency mode, for its window; after a long wait it checks
//! only once, in the handshake), then they sleep on a futex word with the classic event-count
//! handshake:
//!
//! ```text
//! waiter (consumer)                          waker (producer, in publish)
//! data_waiting = 1                           head = h            (Release)
//! fence(SeqCst)                              fence(SeqCst)
//! s = data_seq                  (Acquire)    if data_waiting != 0:
//! if data is there: done                         data_seq += 1   (Release)
//! FUTEX_WAIT(data_seq, s, timeout)               FUTEX_WAKE(data_seq)
//! ```
//!
//! The two `SeqCst` fences are ordered one way or the other. If the waker's fence comes first,
//! the waiter's re-check (after its fence) sees the new `head` and does not sleep. If the waiter's
//! fence comes first, the waker sees `data_waiting` and bumps `data_seq`; the waiter either read
//! `s` after the bump (then, through `Acquire`/`Release`, it also sees the new `head` and does not
//! sleep) or before it, and then `FUTEX_WAIT` either finds the word changed and returns at once, or
//! is already asleep when `FUTEX_WAKE` comes. The producer waits for space the same way on
//! `space_seq`/`space_waiting`, woken by [`Consumer::release`]. There is at most one wake-up per
//! `publish`/`release`/`close`, never one per frame, and none at all while the other side is not
//! sleeping. Waits are always timed: the caller loops, and between waits checks that the peer
//! is alive ([`Consumer::producer`], [`Producer::consumer`]).
//!
//! A consumer that holds frames read but not released must know when the producer runs out of
//! space (it may then have to release them, see `transport::held`): a producer about to sleep
//! for space, once its `space_waiting` flag is set and fenced, also wakes the consumer if that
//! sleeps (a "nudge" on `data_seq`), and [`Consumer::wait_for_data_or`] can count
//! `space_waiting != 0` as ready. Another thread of the consumer's process can nudge it the
//! same way ([`DataNudger`]) after changing a condition the consumer waits for. These are the
//! same handshake with another condition: the waker's state change, a `SeqCst` fence, then the
//! waiter's flag; the waiter's flag, a `SeqCst` fence, then the condition.
//!
//! # The peer is not trusted
//!
//! In shared memory the other side may be buggy, hostile or dead half-way through a write. Every
//! value read from the ring is validated before it is used, and a violation is
//! [`RingError::Corrupt`], naming the field and the values, never a panic, an out-of-bounds
//! access or undefined behaviour:
//!
//! - on attach ([`Producer::new`], [`Consumer::new`]): `magic`, `version`, `header_size`, and
//!   `capacity` (a power of two in range, equal to the memory's data size), `closed` in {0, 1, 2},
//!   `head` and `tail` multiples of 8, `tail <= head <= tail + capacity`, both below 2^62;
//! - `head`, read by the consumer: a multiple of 8, not behind the consumer's read position,
//!   never going backwards, at most `capacity` ahead of the tail the consumer released;
//! - `tail`, read by the producer: a multiple of 8, never going backwards, never beyond the
//!   `head` the producer published; and by the consumer, which alone writes it, whenever it
//!   releases or looks for data: still the position it released (a value written by anyone
//!   else would otherwise be overwritten unnoticed by its next release);
//! - a frame, read by the consumer: `len <= max_frame_len`, `flags` 0 or 1, the frame inside the data area and
//!   inside the published region; a wrap marker only where the frame after it (at offset 0,
//!   published) does not fit, and never twice in a row;
//! - `closed`: 0, 1 or 2. The futex words and waiting flags are only hints: any value is
//!   harmless. So is `reader_failed`: a false one ends only the writer's own stream, with an
//!   error naming its reader;
//!   and `stashed`: a wrong one only changes how many elements a restarted writer counts as
//!   lost with its predecessor, which the writer bounds by its connection's capacity.
//!
//! Each side keeps its own counters in private memory and never uses a value read back from the
//! ring (the consumer reads `tail` back only to compare it with its own), and reads a frame's
//! `len` once (an atomic load) before validating and using it.
//!
//! Payloads are never seen through a Rust reference (`&[u8]` / `&mut [u8]` promise bytes that
//! nobody else changes, which a peer can break): [`Consumer::try_read`] hands out a
//! [`Payload`] and [`Producer::try_write`] a [`PayloadMut`], which only copy bytes out or in
//! with raw copies. A reader copies each shared byte once into private memory and decodes
//! that, so a peer writing into a payload while it is read changes at most which bytes are
//! copied (every value of a byte is valid), never a value after it was validated. One limit
//! remains, as for any shared-memory transport: a peer that shrinks the shared-memory object
//! makes the next access fault (`SIGBUS`).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sync::{
    fence, note_woke, own_start_stamp, spin_hint, take_woke, yield_core, AtomicU32, AtomicU64,
    Ordering, Shadow, SLOW_STREAM_CHECKS, SPIN_LIMIT,
};

/// `b"IOTSRING"` as a little-endian u64: the first field of every ring.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"IOTSRING");

/// A waiting flag's value: the side sleeps (for data, or a producer for room).
pub(crate) const ASLEEP: u32 = 1;

/// A `space_waiting` value: the producer sleeps until the consumer's `tail` or `consumed`
/// moves ([`SpaceWaiter::wait_for_progress`]), not for room. A consumer watching for a
/// producer out of room ([`Consumer::producer_waits_for_space`]) does not count it.
pub(crate) const ASLEEP_FOR_PROGRESS: u32 = 2;

/// The layout version; an opener refuses any other. Version 2 added `consumed`; version 3
/// made the roles' pids [`Holder`]s (a pid and its process's start stamp); version 4 added
/// `reader_failed`; version 5 added `stashed`.
pub(crate) const VERSION: u32 = 5;

/// Which process holds a role of a ring: its pid and a stamp of when that process started,
/// packed into one `u64` (the pid in the low half), so that claiming a role stays one
/// compare-and-swap and a reader never sees a pid with another process's stamp.
///
/// A pid alone does not name a process for long: the kernel hands it out again once pids wrap
/// (after 32,768 on many small boards). Without the stamp, a process that received a dead
/// holder's pid would look like the holder, alive, and keep the role from its restarted owner
/// for as long as it ran (or the restarted owner, given its predecessor's pid, would take the
/// role for its own and refuse it). The stamp is 1 + the process's start time in clock ticks
/// since boot, modulo `u32::MAX`; 0 means not known (a `/proc` that cannot be read, the loom
/// models): the pid alone then decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder(pub(crate) u64);

impl Holder {
    /// The holder of pid `pid` whose process started at `started` (a stamp, 0 if not known).
    pub(crate) const fn new(pid: u32, started: u32) -> Holder {
        Holder(((started as u64) << 32) | pid as u64)
    }

    /// This process.
    pub(crate) fn this_process() -> Holder {
        Holder::new(std::process::id(), own_start_stamp())
    }

    /// The recorded value: `None` for 0 (nobody holds the role).
    fn from_raw(raw: u64) -> Option<Holder> {
        (raw != 0).then_some(Holder(raw))
    }

    /// The pid.
    pub(crate) fn pid(self) -> u32 {
        self.0 as u32
    }

    /// The start stamp (0: not known).
    pub(crate) fn started(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The smallest data area, in bytes.
pub(crate) const MIN_CAPACITY: usize = 64;

/// The largest data area, in bytes (4 GiB: frame lengths are u32).
#[cfg(target_pointer_width = "64")]
pub(crate) const MAX_CAPACITY: usize = 1 << 32;

/// The largest data area, in bytes (1 GiB on a 32-bit target: a quarter of its address space).
#[cfg(not(target_pointer_width = "64"))]
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// Bytes before each payload: `len: u32` and a `flags: u32` word.
pub(crate) const FRAME_HEADER: usize = 8;

/// Frame flag: the first frame a producer wrote after it took the role over from a dead one
/// (see the module docs, "Roles").
const FLAG_TAKEN_OVER: u32 = 1;

/// The `len` of a wrap marker: the next frame is at offset 0.
pub(crate) const WRAP: u32 = u32::MAX;

/// Positions at or above this are refused on attach, so that no position arithmetic can
/// overflow for the life of the ring (2^62 bytes is decades of traffic at memory speed).
const MAX_POSITION: u64 = 1 << 62;

/// The largest payload a ring of `capacity` data bytes accepts: `capacity / 2 - 8`.
pub(crate) const fn max_frame_len(capacity: usize) -> usize {
    capacity / 2 - FRAME_HEADER
}

/// The bytes a frame with a payload of `len` bytes takes: header plus payload padded to 8.
const fn frame_size(len: usize) -> usize {
    FRAME_HEADER + len.div_ceil(8) * 8
}

/// Checks that `capacity` is a usable data-area size.
pub(crate) fn check_capacity(capacity: usize) -> Result<(), RingError> {
    if capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(RingError::Capacity { capacity })
    }
}

/// Why a ring operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RingError {
    /// A frame larger than the ring's largest frame.
    #[error("a frame of {len} bytes is larger than this ring's largest frame ({max} bytes)")]
    FrameTooLarge {
        /// The payload length asked for.
        len: usize,
        /// [`max_frame_len`] of the ring.
        max: usize,
    },
    /// The capacity is not a power of two between [`MIN_CAPACITY`] and [`MAX_CAPACITY`].
    #[error(
        "a ring's capacity must be a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} bytes, \
         not {capacity}"
    )]
    Capacity {
        /// The capacity asked for.
        capacity: usize,
    },
    /// The producer already closed the ring: nothing more can be written.
    #[error("the ring is closed: its producer ended the stream")]
    Closed,
    /// The producer's process failed and marked the ring ([`fail_producer`]): what it wrote is
    /// not the whole stream.
    #[error("the writing process (pid {pid}) failed: its stream ends incomplete")]
    WriterFailed {
        /// The pid recorded as the ring's producer.
        pid: u32,
    },
    /// The ring already has a producer (or a consumer), alive (or not known to be dead): a ring
    /// has one of each at a time.
    #[error("the ring's {role} is already process {pid}")]
    RoleTaken {
        /// `"producer"` or `"consumer"`.
        role: &'static str,
        /// The pid recorded by the side that claimed it.
        pid: u32,
    },
    /// [`Consumer::release_to`] was given a position outside what it may release: a bug of the
    /// caller, not of the peer.
    #[error(
        "cannot release the ring up to position {pos}: it must be a multiple of 8 from the \
         released tail {released} to the read position {read}"
    )]
    Release {
        /// The position asked for.
        pos: u64,
        /// The tail released so far.
        released: u64,
        /// The end of the frames read so far.
        read: u64,
    },
    /// Something read from the ring breaks the protocol (see the module documentation).
    #[error("corrupt ring: {what}")]
    Corrupt {
        /// The field at fault and the values seen.
        what: String,
    },
}

/// A [`RingError::Corrupt`] from a formatted description.
fn corrupt(what: fmt::Arguments<'_>) -> RingError {
    RingError::Corrupt {
        what: what.to_string(),
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The condition holds: data (or the end of the stream) for a consumer, room for a producer.
    Ready,
    /// The timeout elapsed first. Check the peer's liveness and wait again.
    TimedOut,
}

/// A value on a cache line of its own.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Line<T>(pub(crate) T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The header's first line: what the creator writes once, and the claims and `closed` flag.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Identity {
    /// [`MAGIC`], written last by the creator (`Release`).
    pub(crate) magic: AtomicU64,
    /// [`VERSION`].
    pub(crate) version: AtomicU32,
    /// `size_of::<Header>()`: where the data area starts.
    pub(crate) header_size: AtomicU32,
    /// Data bytes.
    pub(crate) capacity: AtomicU64,
    /// The producer's [`Holder`], 0 until claimed.
    pub(crate) producer: AtomicU64,
    /// The consumer's [`Holder`], 0 until claimed.
    pub(crate) consumer: AtomicU64,
    /// 1 once the producer has ended the stream.
    pub(crate) closed: AtomicU32,
    /// 1 once the consumer's process failed and will read no more (see [`fail_consumer`]).
    pub(crate) reader_failed: AtomicU32,
    /// Elements the producer's owner holds for this ring outside it (see
    /// [`Producer::note_stashed`]); a hint, like the futex words.
    pub(crate) stashed: AtomicU64,
}

/// A futex word and the flag saying somebody sleeps on it.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct WakeWord {
    /// Bumped by the waker before `FUTEX_WAKE`; the waiter sleeps while it is unchanged.
    pub(crate) seq: AtomicU32,
    /// Non-zero while the waiting side is (about to be) asleep: [`ASLEEP`], or, for a
    /// producer waiting for its reader's consumption rather than for room,
    /// [`ASLEEP_FOR_PROGRESS`].
    pub(crate) waiting: AtomicU32,
}

/// The ring's header; see the module documentation for the layout. Only atomics, so any bytes
/// are a valid `Header` and it can be shared with another process.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Header {
    /// Magic, version, sizes, holders, `closed`.
    pub(crate) id: Line<Identity>,
    /// Bytes published by the producer.
    pub(crate) head: Line<AtomicU64>,
    /// Bytes released by the consumer.
    pub(crate) tail: Line<AtomicU64>,
    /// The consumer sleeps here for data.
    pub(crate) data_wake: Line<WakeWord>,
    /// The producer sleeps here for space.
    pub(crate) space_wake: Line<WakeWord>,
    /// Elements of the frames from `tail` on that the consumer's reader has consumed (see the
    /// module docs, "Elements consumed past the tail").
    pub(crate) consumed: Line<AtomicU64>,
}

impl Header {
    /// A header of zeros (not yet a ring: the magic is missing).
    pub(crate) fn zeroed() -> Header {
        let wake = || WakeWord {
            seq: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
        };
        Header {
            id: Line(Identity {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                header_size: AtomicU32::new(0),
                capacity: AtomicU64::new(0),
                producer: AtomicU64::new(0),
                consumer: AtomicU64::new(0),
                closed: AtomicU32::new(0),
                reader_failed: AtomicU32::new(0),
                stashed: AtomicU64::new(0),
            }),
            head: Line(AtomicU64::new(0)),
            tail: Line(AtomicU64::new(0)),
            data_wake: Line(wake()),
            space_wake: Line(wake()),
            consumed: Line(AtomicU64::new(0)),
        }
    }

    /// Makes this header an empty ring of `capacity` data bytes (the creator does this once,
    /// before anyone attaches). The magic is stored last, with `Release`, so an opener that
    /// reads it with `Acquire` sees every other field.
    pub(crate) fn init(&self, capacity: usize) -> Result<(), RingError> {
        check_capacity(capacity)?;
        let id = &self.id;
        id.version.store(VERSION, Ordering::Relaxed);
        id.header_size
            .store(std::mem::size_of::<Header>() as u32, Ordering::Relaxed);
        id.capacity.store(capacity as u64, Ordering::Relaxed);
        id.producer.store(0, Ordering::Relaxed);
        id.consumer.store(0, Ordering::Relaxed);
        id.closed.store(0, Ordering::Relaxed);
        id.reader_failed.store(0, Ordering::Relaxed);
        id.stashed.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
        self.tail.store(0, Ordering::Relaxed);
        self.consumed.store(0, Ordering::Relaxed);
        for w in [&self.data_wake, &self.space_wake] {
            w.seq.store(0, Ordering::Relaxed);
            w.waiting.store(0, Ordering::Relaxed);
        }
        id.magic.store(MAGIC, Ordering::Release);
        Ok(())
    }

    /// Checks the creator's fields against a memory of `data_len` data bytes; returns the
    /// capacity.
    pub(crate) fn check(&self, data_len: usize) -> Result<usize, RingError> {
        let id = &self.id;
        let magic = id.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(corrupt(format_args!(
                "magic is {magic:#018x}, not an iotstream ring's {MAGIC:#018x} \
                 (not a ring, or not initialised yet)"
            )));
        }
        let version = id.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(corrupt(format_args!(
                "layout version is {version}, this program reads version {VERSION}"
            )));
        }
        let header_size = id.header_size.load(Ordering::Relaxed);
        if header_size as usize != std::mem::size_of::<Header>() {
            return Err(corrupt(format_args!(
                "header_size is {header_size}, expected {}",
                std::mem::size_of::<Header>()
            )));
        }
        let capacity = id.capacity.load(Ordering::Relaxed);
        if capacity != data_len as u64 || check_capacity(data_len).is_err() {
            return Err(corrupt(format_args!(
                "capacity is {capacity}, but the memory holds {data_len} data bytes \
                 (a power of two from {MIN_CAPACITY} to {MAX_CAPACITY})"
            )));
        }
        Ok(data_len)
    }
}

/// Memory a ring lives in: a header and a data area.
///
/// # Safety
///
/// An implementation guarantees, for as long as the value lives:
/// - [`header`](Self::header) is a [`Header`] that only rings use;
/// - [`data`](Self::data) points to [`data_len`](Self::data_len) bytes, 8-byte aligned, valid
///   for reads and writes, that nothing in this process touches except the [`Producer`] and
///   [`Consumer`] built on this memory (or on other memory sharing the same header, such as a
///   second mapping of the same shared-memory object);
/// - `data_len` never changes.
pub(crate) unsafe trait RingMemory {
    /// The ring's header.
    fn header(&self) -> &Header;
    /// The first data byte.
    fn data(&self) -> NonNull<u8>;
    /// Data bytes (the header's `capacity`, once validated).
    fn data_len(&self) -> usize;
    /// Model-checking state (nothing in a real build).
    fn shadow(&self) -> &Shadow;
}

// SAFETY: forwards to `T`, whose guarantees hold while the `Arc` keeps it alive.
unsafe impl<T: RingMemory + ?Sized> RingMemory for Arc<T> {
    fn header(&self) -> &Header {
        (**self).header()
    }
    fn data(&self) -> NonNull<u8> {
        (**self).data()
    }
    fn data_len(&self) -> usize {
        (**self).data_len()
    }
    fn shadow(&self) -> &Shadow {
        (**self).shadow()
    }
}

/// A ring on the heap, for tests and the model checker: share it with an `Arc`, build one
/// [`Producer`] and one [`Consumer`] on clones.
pub(crate) struct HeapRing {
    header: Header,
    /// `u64` cells: 8-byte alignment; `UnsafeCell`: written through a shared reference.
    data: Box<[std::cell::UnsafeCell<u64>]>,
    shadow: Shadow,
}

impl fmt::Debug for HeapRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapRing")
            .field("header", &self.header)
            .field("capacity", &self.data_len())
            .finish()
    }
}

// SAFETY: the header is atomics; the data cells are only accessed by the one producer and one
// consumer the ring allows, through the protocol, which orders every access to a byte (a frame
// is written before the `Release` store of `head` that the consumer `Acquire`s, and read before
// the `Release` store of `tail` that the producer `Acquire`s before writing there again).
unsafe impl Sync for HeapRing {}
// SAFETY: nothing in a `HeapRing` is tied to a thread (see `Sync`).
unsafe impl Send for HeapRing {}

impl HeapRing {
    /// An empty ring of `capacity` data bytes on the heap.
    pub(crate) fn new(capacity: usize) -> Result<Arc<HeapRing>, RingError> {
        check_capacity(capacity)?;
        let ring = HeapRing {
            header: Header::zeroed(),
            data: (0..capacity / 8)
                .map(|_| std::cell::UnsafeCell::new(0))
                .collect(),
            shadow: Shadow::new(capacity),
        };
        ring.header.init(capacity)?;
        Ok(Arc::new(ring))
    }

    /// Overwrites data bytes at `off`, as a misbehaving peer would (corruption tests).
    #[cfg(test)]
    pub(crate) fn poke(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.data_len(), "poke out of bounds");
        // SAFETY: in bounds (asserted); tests call this while neither side is inside a frame
        // access, on one thread.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.data().as_ptr().add(off),
                bytes.len(),
            )
        }
    }
}

// SAFETY: `header` and `data` live as long as the `HeapRing`; `data` is `data_len()` bytes of
// 8-aligned `UnsafeCell<u64>` cells, which may be written through a shared reference, and only
// the producer and consumer built on this ring touch them.
unsafe impl RingMemory for HeapRing {
    fn header(&self) -> &Header {
        &self.header
    }
    fn data(&self) -> NonNull<u8> {
        // A pointer derived from the whole slice of cells, so it may reach every byte.
        NonNull::new(self.data.as_ptr() as *mut u8).expect("a boxed slice is never null")
    }
    fn data_len(&self) -> usize {
        self.data.len() * 8
    }
    fn shadow(&self) -> &Shadow {
        &self.shadow
    }
}

/// A published frame's payload, read in place: bytes another process can write at any time.
///
/// No Rust reference to these bytes is ever created: a `&[u8]` promises that the bytes do not
/// change while it lives, which a buggy or hostile peer can break at will, and code that reads
/// such a slice twice (postcard validates a string's UTF-8, then serde copies it) can see two
/// different values. A `Payload` only copies bytes out, with raw copies
/// (`ptr::copy_nonoverlapping` from the ring's pointer into private memory), so each copy
/// reads each byte once and what is then decoded is private and stable. Read each byte once:
/// two copies of the same range may differ.
pub(crate) struct Payload<'a> {
    ptr: NonNull<u8>,
    len: usize,
    /// The frame is the first of a producer that took the role over from a dead one.
    taken_over: bool,
    _frame: std::marker::PhantomData<&'a ()>,
}

impl<'a> Payload<'a> {
    /// Payload bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The frame is the first one a producer wrote after it took the role over from a dead
    /// producer: every frame before it is the dead one's (see the module docs, "Roles").
    pub(crate) fn after_take_over(&self) -> bool {
        self.taken_over
    }

    /// No payload bytes.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes `at..at + dst.len()` of the payload into `dst`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the payload (a bug of the caller, which knows [`len`](Self::len)).
    pub(crate) fn copy_to(&self, at: usize, dst: &mut [u8]) {
        assert!(
            at.checked_add(dst.len()).is_some_and(|end| end <= self.len),
            "bytes {at}..+{} of a payload of {}",
            dst.len(),
            self.len
        );
        // SAFETY: in bounds (asserted), `dst` is private memory that cannot overlap the ring.
        unsafe { self.copy_to_ptr(at, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `n` bytes from payload offset `at` to `dst`.
    ///
    /// # Safety
    ///
    /// `at + n <= self.len()`, and `dst` is valid for `n` byte writes and does not overlap the
    /// ring.
    pub(crate) unsafe fn copy_to_ptr(&self, at: usize, dst: *mut u8, n: usize) {
        debug_assert!(at + n <= self.len);
        // SAFETY: the caller's promise; the source range is inside the frame's payload, valid
        // for reads (`RingMemory`). A peer may write it concurrently: the copy then yields some
        // mix of old and new bytes, every one of which is a valid `u8`, and nothing is assumed
        // about them afterwards except through validation of the private copy.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), dst, n) }
    }

    /// Replaces the contents of `buf` with a copy of the payload (reusing its allocation).
    pub(crate) fn copy_into(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.reserve(self.len);
        // SAFETY: `buf` has room for `len` bytes (reserved), private; the bytes are initialised
        // by the copy before `set_len`.
        unsafe {
            self.copy_to_ptr(0, buf.as_mut_ptr(), self.len);
            buf.set_len(self.len);
        }
    }

    /// A private copy of the payload.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.copy_into(&mut v);
        v
    }

    /// A payload over private bytes (codec tests).
    #[cfg(test)]
    pub(crate) fn from_private(bytes: &'a [u8]) -> Payload<'a> {
        Payload {
            ptr: NonNull::from(bytes).cast(),
            len: bytes.len(),
            taken_over: false,
            _frame: std::marker::PhantomData,
        }
    }

    /// A payload over private bytes, flagged as a producer's first after a take-over (tests).
    #[cfg(test)]
    pub(crate) fn from_private_after_take_over(bytes: &'a [u8]) -> Payload<'a> {
        Payload {
            taken_over: true,
            ..Payload::from_private(bytes)
        }
    }

    /// Where the payload starts in memory (alignment checks in tests).
    #[cfg(test)]
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

/// The payload of a frame being written, in place: bytes of the ring that a misbehaving
/// consumer could write too, so, as for [`Payload`], no Rust reference to them is created;
/// the producer copies private bytes in with raw copies.
pub(crate) struct PayloadMut<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _frame: std::marker::PhantomData<&'a mut ()>,
}

impl<'a> PayloadMut<'a> {
    /// Payload bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// No payload bytes.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` to payload offset `at`.
    ///
    /// # Panics
    ///
    /// If `at + src.len()` exceeds the payload (a bug of the caller, which chose its length).
    pub(crate) fn write_at(&mut self, at: usize, src: &[u8]) {
        assert!(
            at.checked_add(src.len()).is_some_and(|end| end <= self.len),
            "bytes {at}..+{} of a payload of {}",
            src.len(),
            self.len
        );
        // SAFETY: in bounds (asserted) of the frame's payload, valid for writes (`RingMemory`)
        // and owned by the producer until published; `src` is private memory, so the ranges
        // do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(at), src.len()) }
    }

    /// Writes `make(0)`, …, `make(n - 1)` one after the other from payload offset `at`, each
    /// with an unaligned store of its own bytes (no reference into the payload is made, as for
    /// [`write_at`](Self::write_at)). For plain data, whose bytes are the element (a reader
    /// copies them out as its own).
    ///
    /// # Panics
    ///
    /// If the `n` elements do not fit between `at` and the payload's end (a bug of the
    /// caller), or if `make` does: the elements written before stay in the payload, which is
    /// published only once its frame is whole ([`Producer::try_write`] returns first).
    pub(crate) fn write_each<T>(&mut self, at: usize, n: usize, mut make: impl FnMut(usize) -> T) {
        let size = std::mem::size_of::<T>();
        assert!(
            n.checked_mul(size)
                .and_then(|bytes| bytes.checked_add(at))
                .is_some_and(|end| end <= self.len),
            "{n} elements of {size} bytes at {at} of a payload of {}",
            self.len
        );
        let base = self.ptr.as_ptr();
        for i in 0..n {
            let value = make(i);
            // SAFETY: `at + i * size + size <= len` (asserted), so the element's bytes are
            // inside the payload, which is valid for writes (`RingMemory`) and owned by the
            // producer until published; `write_unaligned` needs no alignment and makes no
            // reference.
            unsafe { std::ptr::write_unaligned(base.add(at + i * size).cast::<T>(), value) };
        }
    }

    /// Copies `src`, exactly the payload's length.
    pub(crate) fn copy_from_slice(&mut self, src: &[u8]) {
        assert_eq!(src.len(), self.len, "a payload of {} bytes", self.len);
        self.write_at(0, src);
    }

    /// A payload over private bytes (codec tests).
    #[cfg(test)]
    pub(crate) fn from_private(bytes: &'a mut [u8]) -> PayloadMut<'a> {
        PayloadMut {
            len: bytes.len(),
            ptr: NonNull::from(bytes).cast(),
            _frame: std::marker::PhantomData,
        }
    }

    /// Sets every payload byte to `byte`.
    pub(crate) fn fill(&mut self, byte: u8) {
        // SAFETY: the payload's `len` bytes, valid for writes and owned by the producer.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), byte, self.len) }
    }
}

/// A published frame found at a position: its payload, and the position after it.
struct FrameAt<'a> {
    payload: Payload<'a>,
    end: u64,
}

/// What both sides share: the memory and what was validated once on attach.
struct Ring<M: RingMemory> {
    mem: M,
    /// Data bytes, validated on attach; never re-read from the ring.
    cap: usize,
    /// The largest payload.
    max_len: usize,
}

impl<M: RingMemory> Ring<M> {
    /// Validates the header of `mem`, claims `role` in `holder_field` and returns the ring with
    /// the current `(head, tail)`, validated, and whether the role was taken over from a dead
    /// process. A producer cannot attach to a closed ring.
    ///
    /// The role is free if its holder is 0; with `alive`, it is also free if the holder
    /// recorded there is one that `alive` says is dead (a crashed process): it is then taken
    /// over with a compare-and-swap from that holder to ours, so of two processes taking it
    /// over at once only one succeeds.
    fn attach(
        mem: M,
        role: &'static str,
        holder_field: fn(&Header) -> &AtomicU64,
        alive: Option<&dyn Fn(Holder) -> bool>,
    ) -> Result<(Ring<M>, u64, u64, bool), RingError> {
        let header = mem.header();
        let cap = header.check(mem.data_len())?;
        let closed = header.id.closed.load(Ordering::Acquire);
        if closed > FAILED {
            return Err(corrupt(format_args!(
                "closed flag is {closed}, not 0, 1 or 2"
            )));
        }
        if role == "producer" && closed != 0 {
            return Err(RingError::Closed);
        }
        let me = Holder::this_process();
        let field = holder_field(header);
        let mut expected = 0;
        let taken_over = loop {
            match field.compare_exchange(expected, me.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break expected != 0,
                Err(other) => {
                    // The role is held (or was claimed since we looked): it may be taken over
                    // only from a process that is dead, and never from ourselves.
                    if let Some(holder) = Holder::from_raw(other) {
                        let dead = holder != me && alive.is_some_and(|alive| !alive(holder));
                        if !dead {
                            return Err(RingError::RoleTaken {
                                role,
                                pid: holder.pid(),
                            });
                        }
                    }
                    expected = other;
                }
            }
        };
        // The positions are read once the role is ours: a consumer that takes over starts at the
        // released `tail` and a producer at the published `head`, which only the role's owner
        // moves, so they are final (read before the claim, they could be stale if the previous
        // owner was still running then). What a dead producer wrote but did not publish is
        // overwritten; what a dead consumer read but did not release is read again.
        let head = header.head.load(Ordering::Acquire);
        let tail = header.tail.load(Ordering::Acquire);
        if head % 8 != 0 || tail % 8 != 0 {
            return Err(corrupt(format_args!(
                "head {head} or tail {tail} is not a multiple of 8"
            )));
        }
        if tail > head || head - tail > cap as u64 || head >= MAX_POSITION {
            return Err(corrupt(format_args!(
                "head {head} and tail {tail} are inconsistent (capacity {cap})"
            )));
        }
        if taken_over {
            // Our own "asleep" flag, possibly left set by the dead process: a hint only, but a
            // stale one would cost the peer a futex wake-up per batch.
            let own = if role == "producer" {
                &header.space_wake.waiting
            } else {
                &header.data_wake.waiting
            };
            own.store(0, Ordering::Relaxed);
        }
        let ring = Ring {
            mem,
            cap,
            max_len: max_frame_len(cap),
        };
        Ok((ring, head, tail, taken_over))
    }

    fn header(&self) -> &Header {
        self.mem.header()
    }

    /// The published frame at position `pos` (a frame's start, or a wrap marker before one;
    /// `pos < head`, both validated multiples of 8), every word of its header read once and
    /// checked: a wrap marker must be followed by a published frame that did not fit before
    /// it, flags 0 or 1, a length within the largest frame, the data area and `head`.
    ///
    /// The frames from the released `tail` to `head` are read by the consumer, and, after a
    /// take-over, counted by the producer ([`Producer::published_frames`]): nobody writes
    /// them (a well-behaved peer), so each side reads them through a [`Payload`] only.
    #[inline]
    fn frame_at(&self, mut pos: u64, head: u64) -> Result<FrameAt<'_>, RingError> {
        let ring = self;
        let cap = ring.cap;
        let mut off = ring.offset(pos);
        // SAFETY: `pos` is a multiple of 8 (validated positions plus multiple-of-8 frame sizes),
        // so `off` is a multiple of 8 and, `cap` being a multiple of 8, `off + 8 <= cap`. The
        // word is published (`pos < head`, both multiples of 8) and not released: only read.
        let mut len = unsafe { ring.read_frame_len(off) };
        if len == WRAP {
            let skip = cap - off;
            if head - pos < (skip + FRAME_HEADER) as u64 {
                return Err(corrupt(format_args!(
                    "wrap marker at offset {off} (position {pos}) is not followed by a \
                     published frame (head {head})"
                )));
            }
            pos += skip as u64;
            off = 0;
            // SAFETY: offset 0 is in bounds and aligned; position `pos` is published (checked
            // just above) and not released.
            len = unsafe { ring.read_frame_len(0) };
            if len == WRAP {
                return Err(corrupt(format_args!(
                    "two wrap markers in a row (offsets {} and 0)",
                    cap - skip
                )));
            }
            if (len as usize) <= ring.max_len && frame_size(len as usize) <= skip {
                return Err(corrupt(format_args!(
                    "wrap marker at offset {} although the next frame ({} bytes) fits there \
                     ({skip} bytes to the end)",
                    cap - skip,
                    frame_size(len as usize)
                )));
            }
        }
        // SAFETY: as for the `len` word just read at `off`.
        let flags = unsafe { ring.read_frame_flags(off) };
        if flags > FLAG_TAKEN_OVER {
            return Err(corrupt(format_args!(
                "frame flags {flags} at offset {off} (position {pos}) are not 0 or 1"
            )));
        }
        let len = len as usize;
        if len > ring.max_len {
            return Err(corrupt(format_args!(
                "frame length {len} at offset {off} exceeds the largest frame ({} bytes)",
                ring.max_len
            )));
        }
        let frame = frame_size(len);
        if off + frame > cap {
            return Err(corrupt(format_args!(
                "frame length {len} at offset {off} runs past the end of the data area \
                 ({cap} bytes)"
            )));
        }
        if head - pos < frame as u64 {
            return Err(corrupt(format_args!(
                "frame length {len} at position {pos} runs past the published head {head}"
            )));
        }
        ring.mem.shadow().track_read(off + FRAME_HEADER, len);
        // SAFETY: `off + 8 + len <= off + frame <= cap` (checked above), so the pointer and the
        // `len` bytes after it are inside the data area, valid for reads (`RingMemory`). The
        // range is published and not yet released, so a well-behaved producer does not write
        // it; a misbehaving one can, at any time. So no reference to it is made: `Payload`
        // only copies bytes out (raw copies into private memory), and what is decoded is the
        // private copy, each shared byte read once.
        let payload = Payload {
            ptr: unsafe {
                NonNull::new_unchecked(ring.mem.data().as_ptr().add(off + FRAME_HEADER))
            },
            len,
            taken_over: flags == FLAG_TAKEN_OVER,
            _frame: std::marker::PhantomData,
        };
        Ok(FrameAt {
            payload,
            end: pos + frame as u64,
        })
    }

    /// The data offset of position `pos`.
    fn offset(&self, pos: u64) -> usize {
        (pos % self.cap as u64) as usize
    }

    /// The 4-byte word at data offset `off` (half of a frame header), as a std atomic, so that
    /// the consumer reads a `len` once and a peer cannot change it between validation and use.
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 4 and `off + 4 <= self.cap` (a frame header is two such words,
    /// at a multiple of 8 and 4 bytes further).
    unsafe fn word(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        debug_assert!(
            off % 4 == 0 && off + 4 <= self.cap,
            "word at {off}, capacity {}",
            self.cap
        );
        // SAFETY: in bounds by the caller's promise; 4-aligned since the data area is 8-aligned
        // and `off` a multiple of 4; the memory lives as long as `self`. The word is only ever
        // accessed atomically while it is a frame header; payload copies that covered it in an
        // earlier lap are ordered before this access by the protocol (see `HeapRing`'s `Sync`).
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.mem.data().as_ptr().add(off).cast()) }
    }

    /// Writes the frame header at `off`: `len` and the `flags` word.
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 8, `off + 8 <= self.cap`, and the producer owns bytes
    /// `off..off + 8` (between its head and the consumer's tail plus capacity).
    unsafe fn write_frame_header(&self, off: usize, len: u32, flags: u32) {
        self.mem.shadow().track_write(off, FRAME_HEADER);
        // SAFETY: the caller's promise: both `off` and `off + 4` are multiples of 4 with 4 bytes
        // in bounds after them.
        unsafe {
            self.word(off)
                .store(len, std::sync::atomic::Ordering::Relaxed);
            self.word(off + 4)
                .store(flags, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reads the `len` word of the frame header at `off`.
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 8, `off + 8 <= self.cap`, and the consumer owns bytes
    /// `off..off + 8` (published, not yet released).
    unsafe fn read_frame_len(&self, off: usize) -> u32 {
        self.mem.shadow().track_read(off, FRAME_HEADER);
        // SAFETY: the caller's promise.
        unsafe { self.word(off) }.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the `flags` word of the frame header at `off`.
    ///
    /// # Safety
    ///
    /// As for [`read_frame_len`](Self::read_frame_len).
    unsafe fn read_frame_flags(&self, off: usize) -> u32 {
        // SAFETY: the caller's promise: `off + 4` is a multiple of 4 with 4 bytes in bounds.
        unsafe { self.word(off + 4) }.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wakes the other side if it sleeps on `wake`: the waker's half of the handshake (see the
    /// module documentation). Call after the `Release` store that made the condition true.
    fn notify(&self, wake: &WakeWord) {
        fence(Ordering::SeqCst);
        if wake.waiting.load(Ordering::Relaxed) != 0 {
            wake.seq.fetch_add(1, Ordering::Release);
            self.mem.shadow().futex_wake(&wake.seq);
            note_woke();
        }
    }

    /// Waits until `ready` holds or `timeout` elapses: what `awake` says (a few checks, a spin
    /// of at most `timeout`), then the waiter's half of the handshake on `wake`. With `nudge`, each time the waiter is about to sleep (its
    /// waiting flag set and fenced) it also wakes the other side if that sleeps on `nudge`: so
    /// a consumer can learn, without a lost wake-up, that the producer waits for space.
    fn wait(
        &self,
        wake: &WakeWord,
        asleep: u32,
        nudge: Option<&WakeWord>,
        timeout: Duration,
        awake: BeforeSleep,
        mut ready: impl FnMut(&Self) -> Result<bool, RingError>,
    ) -> Result<Wait, RingError> {
        if take_woke() {
            // This thread has woken the other side of a ring since its last wait, and Linux
            // often runs a thread woken that way on the waker's core. Spinning here would
            // keep it off that core until the spin ends (at 1,000 pings/s between two
            // processes, p50 7.5 µs against 5.3 with this yield: docs/benchmarks-journal.md, "Who
            // waits for whom"). So give the core up once, first.
            if ready(self)? {
                return Ok(Wait::Ready);
            }
            yield_core();
        }
        for _ in 0..awake.checks {
            if ready(self)? {
                return Ok(Wait::Ready);
            }
            spin_hint();
        }
        let start = Instant::now();
        if let Some(window) = awake.spin {
            // Low-latency mode: keep checking, looking at the clock now and then, and giving
            // the core up for a moment: the peer this thread has just woken (the reader of
            // what it wrote) may have been queued on this very core, and would otherwise wait
            // for the window to run out (at 1,000 pings/s on two cores p50 was ~215 µs).
            let window = window.min(timeout);
            'spin: loop {
                for _ in 0..64 {
                    if ready(self)? {
                        return Ok(Wait::Ready);
                    }
                    spin_hint();
                }
                if start.elapsed() >= window {
                    break 'spin;
                }
                yield_core();
            }
            if window >= timeout {
                return Ok(Wait::TimedOut);
            }
        }
        loop {
            wake.waiting.store(asleep, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(other) = nudge {
                self.notify(other);
            }
            let seq = wake.seq.load(Ordering::Acquire);
            let now_ready = ready(self);
            if !matches!(now_ready, Ok(false)) {
                wake.waiting.store(0, Ordering::Relaxed);
                return now_ready.map(|_| Wait::Ready);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                wake.waiting.store(0, Ordering::Relaxed);
                return Ok(Wait::TimedOut);
            }
            // Woken, timed out or interrupted: the loop re-checks in every case.
            let _ = self
                .mem
                .shadow()
                .futex_wait(&wake.seq, seq, timeout - elapsed);
        }
    }
}

/// What a wait does before it sleeps on the futex: `checks` checks of its condition (a
/// spin-loop hint between two), then, with a `spin` window, checks for up to that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BeforeSleep {
    checks: u32,
    spin: Option<Duration>,
}

impl BeforeSleep {
    /// The usual few microseconds of checks ([`SPIN_LIMIT`]), no spin: a producer's.
    const CHECKS: BeforeSleep = BeforeSleep {
        checks: SPIN_LIMIT,
        spin: None,
    };
}

/// The producer's private state (apart from the memory, so a wait can borrow both).
#[derive(Debug)]
struct ProducerState {
    /// End of the frames written so far (published or not).
    head: u64,
    /// The `head` last stored in the ring.
    published: u64,
    /// The consumer's `tail` last read (validated): space up to `tail + capacity` is free.
    tail: u64,
    /// `close` was called.
    closed: bool,
    /// This producer took the role over from a dead one and has written no frame yet: the
    /// next one is flagged [`FLAG_TAKEN_OVER`].
    flag_next: bool,
    /// The `stashed` last stored in the ring ([`Producer::note_stashed`]).
    stashed: u64,
    /// The `stashed` the ring held when this producer attached: what a dead predecessor's
    /// owner held outside the ring (see [`Producer::inherited_stash`]).
    inherited_stash: u64,
}

impl ProducerState {
    /// Where a frame of `len` payload bytes goes: `(bytes skipped by a wrap marker, frame
    /// size)`.
    fn placement<M: RingMemory>(&self, ring: &Ring<M>, len: usize) -> (usize, usize) {
        let frame = frame_size(len);
        let to_end = ring.cap - ring.offset(self.head);
        if frame <= to_end {
            (0, frame)
        } else {
            (to_end, frame)
        }
    }

    /// True if `need` more bytes fit, re-reading the consumer's tail if they do not fit with
    /// the cached one.
    fn fits<M: RingMemory>(&mut self, ring: &Ring<M>, need: usize) -> Result<bool, RingError> {
        let used = self.head - self.tail;
        if used + need as u64 <= ring.cap as u64 {
            return Ok(true);
        }
        self.refresh_tail(ring)?;
        Ok(self.head - self.tail + need as u64 <= ring.cap as u64)
    }

    /// Reads and validates the consumer's `tail`.
    fn refresh_tail<M: RingMemory>(&mut self, ring: &Ring<M>) -> Result<(), RingError> {
        let tail = ring.header().tail.load(Ordering::Acquire);
        if tail % 8 != 0 {
            return Err(corrupt(format_args!("tail {tail} is not a multiple of 8")));
        }
        if tail > self.published {
            return Err(corrupt(format_args!(
                "tail {tail} is beyond the published head {}",
                self.published
            )));
        }
        if tail < self.tail {
            return Err(corrupt(format_args!(
                "tail went backwards from {} to {tail}",
                self.tail
            )));
        }
        self.tail = tail;
        Ok(())
    }
}

/// The writing side of a ring.
pub(crate) struct Producer<M: RingMemory> {
    ring: Ring<M>,
    st: ProducerState,
}

impl<M: RingMemory> fmt::Debug for Producer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.cap)
            .field("state", &self.st)
            .finish()
    }
}

impl<M: RingMemory> Producer<M> {
    /// Attaches the producer to the ring in `mem`: validates the header and claims the producer
    /// role (this process, a [`Holder`], in `producer`), which must be free: a ring has one producer
    /// at a time (see [`take_over`](Self::take_over)), and none once closed
    /// ([`RingError::Closed`]).
    pub(crate) fn new(mem: M) -> Result<Producer<M>, RingError> {
        Self::attach(mem, None)
    }

    /// Like [`new`](Self::new), but the producer role may also be taken over from a process
    /// that `alive` says is dead (a crashed producer, restarted): the new producer continues at
    /// the published `head`; frames the dead one wrote but did not publish are overwritten.
    /// The liveness test is injected so that the ring itself makes no system call (it also runs
    /// under loom).
    pub(crate) fn take_over(
        mem: M,
        alive: impl Fn(Holder) -> bool,
    ) -> Result<Producer<M>, RingError> {
        Self::attach(mem, Some(&alive))
    }

    fn attach(mem: M, alive: Option<&dyn Fn(Holder) -> bool>) -> Result<Producer<M>, RingError> {
        let (ring, head, tail, taken_over) =
            Ring::attach(mem, "producer", |h| &h.id.producer, alive)?;
        // Read once and cleared: from now on the count is this producer's.
        let inherited_stash = ring.header().id.stashed.swap(0, Ordering::AcqRel);
        Ok(Producer {
            ring,
            st: ProducerState {
                head,
                published: head,
                tail,
                closed: false,
                flag_next: taken_over,
                stashed: 0,
                inherited_stash,
            },
        })
    }

    /// Records in the ring that this producer's owner holds `n` elements for it outside the
    /// ring (a drop policy's stash: elements its writer was told were taken, waiting for
    /// room), so that a producer taking the role over after this process died knows how many
    /// were lost with it ([`inherited_stash`](Self::inherited_stash)). Stores only changes.
    pub(crate) fn note_stashed(&mut self, n: u64) {
        if n != self.st.stashed {
            self.st.stashed = n;
            self.ring.header().id.stashed.store(n, Ordering::Relaxed);
        }
    }

    /// What the previous producer's owner last recorded with
    /// [`note_stashed`](Self::note_stashed) and never sent: elements lost when its process
    /// died (0 for a new ring, or after a producer that had sent its stash). Written by another
    /// process: a hint the caller bounds (by the connection's capacity).
    pub(crate) fn inherited_stash(&self) -> u64 {
        self.st.inherited_stash
    }

    /// Data bytes of the ring.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.cap
    }

    /// The end of the frames written so far, published or not: the position of the last
    /// frame's end right after [`try_write`](Self::try_write) wrote it.
    pub(crate) fn head(&self) -> u64 {
        self.st.head
    }

    /// The consumer's `tail`, re-read and validated, then its `consumed`: how many elements of
    /// the frames from that tail on its reader has consumed, as the consumer said at that tail
    /// or later (see the module docs, "Elements consumed past the tail"). `consumed` is a hint,
    /// not validated: the caller bounds it by what it wrote.
    pub(crate) fn released(&mut self) -> Result<(u64, u64), RingError> {
        self.st.refresh_tail(&self.ring)?;
        // Read after `tail` (`Acquire`): the consumer stores `consumed` before the `tail` it
        // goes with, so this is never the consumption of a later tail's frames.
        let consumed = self.ring.header().consumed.load(Ordering::Acquire);
        Ok((self.st.tail, consumed))
    }

    /// The largest payload [`try_write`](Self::try_write) accepts.
    pub(crate) fn max_frame_len(&self) -> usize {
        self.ring.max_len
    }

    /// Writes a frame of `len` payload bytes, filled by `fill`, if it fits now; `Ok(false)` if
    /// the ring has no room for it (wait with [`wait_for_space`](Self::wait_for_space)). The
    /// frame is invisible to the consumer until [`publish`](Self::publish). If `fill` panics,
    /// nothing is written. `fill` gets a [`PayloadMut`], not a `&mut [u8]`: the bytes are
    /// shared with another process.
    pub(crate) fn try_write(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut PayloadMut<'_>),
    ) -> Result<bool, RingError> {
        if self.st.closed {
            return Err(RingError::Closed);
        }
        if len > self.ring.max_len {
            return Err(RingError::FrameTooLarge {
                len,
                max: self.ring.max_len,
            });
        }
        let (skip, frame) = self.st.placement(&self.ring, len);
        if !self.st.fits(&self.ring, skip + frame)? {
            return Ok(false);
        }
        let mut off = self.ring.offset(self.st.head);
        if skip > 0 {
            // SAFETY: `off` is a multiple of 8 (positions are) and `skip = cap - off >= 8`, so
            // the marker's 8 bytes are inside the data area; they are free space (checked by
            // `fits`), owned by the producer until published.
            unsafe { self.ring.write_frame_header(off, WRAP, 0) };
            off = 0;
        }
        let flags = if self.st.flag_next {
            FLAG_TAKEN_OVER
        } else {
            0
        };
        // `len <= max_len < u32::MAX`, so the cast is exact and never a wrap marker.
        // SAFETY: `off + frame <= cap` (`placement` puts the frame where it fits before the
        // end), and bytes `off..off + frame` are free space owned by the producer (`fits`).
        unsafe { self.ring.write_frame_header(off, len as u32, flags) };
        self.ring.mem.shadow().track_write(off + FRAME_HEADER, len);
        // SAFETY: same range as above: `off + 8 + len <= off + frame <= cap`, so the pointer
        // stays inside the data area. No reference is made: a well-behaved consumer does not
        // touch these bytes until they are published, but a misbehaving one could, so the
        // payload is written only through raw copies (`PayloadMut`).
        let mut payload = PayloadMut {
            ptr: unsafe {
                NonNull::new_unchecked(self.ring.mem.data().as_ptr().add(off + FRAME_HEADER))
            },
            len,
            _frame: std::marker::PhantomData,
        };
        fill(&mut payload);
        self.st.head += (skip + frame) as u64;
        self.st.flag_next = false;
        Ok(true)
    }

    /// The largest payload [`try_write`](Self::try_write) writes now (at most
    /// [`max_frame_len`](Self::max_frame_len)), re-reading the consumer's tail: the frame goes
    /// before the end of the data area or, if that leaves more room, after a wrap marker at 0.
    /// `None` if not even an empty frame fits.
    pub(crate) fn room_now(&mut self) -> Result<Option<usize>, RingError> {
        if self.st.closed {
            return Err(RingError::Closed);
        }
        self.st.refresh_tail(&self.ring)?;
        let free = self.ring.cap - (self.st.head - self.st.tail) as usize;
        let to_end = self.ring.cap - self.ring.offset(self.st.head);
        let frame = to_end.min(free).max(free.saturating_sub(to_end));
        Ok(frame
            .checked_sub(FRAME_HEADER)
            .map(|len| len.min(self.ring.max_len)))
    }

    /// Makes every frame written since the last call visible to the consumer (one `Release`
    /// store), and wakes the consumer if it sleeps. Does nothing if nothing was written.
    pub(crate) fn publish(&mut self) {
        if self.st.head == self.st.published {
            return;
        }
        self.ring
            .header()
            .head
            .store(self.st.head, Ordering::Release);
        self.st.published = self.st.head;
        self.ring.notify(&self.ring.header().data_wake);
    }

    /// Calls `f` with the end position and the payload of every published frame not yet
    /// released, in order, from the `tail` read on attach to the published `head`: for a
    /// producer that took the role over, what its dead predecessor's frames hold. Call before
    /// writing. The frames are the consumer's to read and nobody's to write, so they are read
    /// as the consumer reads them, through a [`Payload`], every header word once and checked
    /// (a corrupt frame is [`RingError::Corrupt`]).
    pub(crate) fn published_frames(
        &self,
        mut f: impl FnMut(u64, Payload<'_>),
    ) -> Result<(), RingError> {
        debug_assert_eq!(self.st.head, self.st.published, "called after a write");
        let mut pos = self.st.tail;
        while pos < self.st.published {
            let at = self.ring.frame_at(pos, self.st.published)?;
            f(at.end, at.payload);
            pos = at.end;
        }
        Ok(())
    }

    /// Frames written and not yet published.
    #[cfg(test)]
    pub(crate) fn unpublished(&self) -> bool {
        self.st.head != self.st.published
    }

    /// Ends the stream: publishes pending frames, sets `closed`, wakes the consumer. Idempotent;
    /// later writes fail with [`RingError::Closed`].
    pub(crate) fn close(&mut self) {
        if self.st.closed {
            return;
        }
        if self.st.head != self.st.published {
            self.ring
                .header()
                .head
                .store(self.st.head, Ordering::Release);
            self.st.published = self.st.head;
        }
        // Not over a failure mark (set by another thread of this process, see
        // [`fail_producer`]): a failed writer never looks like a complete stream.
        let _ = self.ring.header().id.closed.compare_exchange(
            0,
            1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.st.closed = true;
        self.ring.notify(&self.ring.header().data_wake);
    }

    /// Waits until a frame of `len` payload bytes fits, or `timeout` elapses. Publish first:
    /// the consumer cannot free space for frames it cannot see.
    pub(crate) fn wait_for_space(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<Wait, RingError> {
        if self.st.closed {
            return Err(RingError::Closed);
        }
        if len > self.ring.max_len {
            return Err(RingError::FrameTooLarge {
                len,
                max: self.ring.max_len,
            });
        }
        let st = &mut self.st;
        let header = self.ring.header();
        self.ring.wait(
            &header.space_wake,
            ASLEEP,
            Some(&header.data_wake),
            timeout,
            BeforeSleep::CHECKS,
            |ring| {
                let (skip, frame) = st.placement(ring, len);
                st.fits(ring, skip + frame)
            },
        )
    }

    /// The consumer, once one has attached (for liveness checks).
    pub(crate) fn consumer(&self) -> Option<Holder> {
        Holder::from_raw(self.ring.header().id.consumer.load(Ordering::Relaxed))
    }
}

impl<M: RingMemory + Clone> Producer<M> {
    /// Wakes the thread of this process waiting in a [`SpaceWaiter`] of this ring, if it
    /// sleeps, so that it re-checks its `also` condition (the producer asks for something
    /// else). Call after making that condition true.
    pub(crate) fn wake_space_waiter(&self) {
        self.ring.notify(&self.ring.header().space_wake);
    }

    /// A handle with which another thread can wait for room in this ring while this producer
    /// stays with its owner (the writer's host never blocks; a watcher thread does).
    pub(crate) fn space_waiter(&self) -> SpaceWaiter<M> {
        SpaceWaiter {
            ring: Ring {
                mem: self.ring.mem.clone(),
                cap: self.ring.cap,
                max_len: self.ring.max_len,
            },
        }
    }

    /// The ring's memory (to mark it failed from another thread: [`fail_producer`]).
    pub(crate) fn memory(&self) -> &M {
        &self.ring.mem
    }

    /// The consumer position (`tail`) at which a frame of `len` payload bytes fits.
    pub(crate) fn tail_needed(&self, len: usize) -> u64 {
        let (skip, frame) = self.st.placement(&self.ring, len);
        (self.st.head + (skip + frame) as u64).saturating_sub(self.ring.cap as u64)
    }
}

/// Waits for the consumer of a ring to release space, on behalf of a producer owned by another
/// thread. Only one thread may wait for space in a ring at a time.
pub(crate) struct SpaceWaiter<M: RingMemory> {
    ring: Ring<M>,
}

impl<M: RingMemory> SpaceWaiter<M> {
    /// Waits until the consumer's `tail` reaches `at_least` (see [`Producer::tail_needed`]), or
    /// `also` returns true, or `timeout` elapses. Whatever makes `also` true must be followed by
    /// a [`Producer::wake_space_waiter`] (the same handshake as for the consumer's `tail`).
    pub(crate) fn wait_for_tail(
        &self,
        at_least: u64,
        timeout: Duration,
        mut also: impl FnMut() -> bool,
    ) -> Result<Wait, RingError> {
        let header = self.ring.header();
        self.ring.wait(
            &header.space_wake,
            ASLEEP,
            Some(&header.data_wake),
            timeout,
            BeforeSleep::CHECKS,
            |ring| {
                // Only a hint for the producer, which validates `tail` before it writes; a
                // misaligned one is reported here at once all the same.
                let tail = ring.header().tail.load(Ordering::Acquire);
                if tail % 8 != 0 {
                    return Err(corrupt(format_args!("tail {tail} is not a multiple of 8")));
                }
                Ok(tail >= at_least || also() || reader_failed(ring))
            },
        )
    }

    /// The consumer, once one has attached (for liveness checks).
    pub(crate) fn consumer(&self) -> Option<Holder> {
        Holder::from_raw(self.ring.header().id.consumer.load(Ordering::Relaxed))
    }

    /// Whether the consumer's process marked the ring as read by a failed part
    /// ([`fail_consumer`]): no room will come.
    pub(crate) fn reader_failed(&self) -> bool {
        reader_failed(&self.ring)
    }

    /// The consumer's `tail` as stored now, unvalidated: only compared with an earlier reading
    /// to tell whether the consumer moves (a progress report), never used as a position.
    pub(crate) fn tail_hint(&self) -> u64 {
        self.ring.header().tail.load(Ordering::Relaxed)
    }

    /// Waits until the consumer's `tail` or `consumed` is no longer `tail` and `consumed` (what
    /// [`Producer::released`] last said), or `timeout` elapses: its reader consumed something
    /// (or a new consumer took over), or `also` returns true (as for
    /// [`wait_for_tail`](Self::wait_for_tail)). The producer then counts again what is in
    /// flight.
    pub(crate) fn wait_for_progress(
        &self,
        tail: u64,
        consumed: u64,
        timeout: Duration,
        mut also: impl FnMut() -> bool,
    ) -> Result<Wait, RingError> {
        let header = self.ring.header();
        // No nudge: a consumer has nothing to do for a producer that waits for consumption.
        self.ring.wait(
            &header.space_wake,
            ASLEEP_FOR_PROGRESS,
            None,
            timeout,
            BeforeSleep::CHECKS,
            |ring| {
                // Hints: the producer validates `tail` when it counts again.
                let h = ring.header();
                Ok(h.tail.load(Ordering::Acquire) != tail
                    || h.consumed.load(Ordering::Acquire) != consumed
                    || also()
                    || reader_failed(ring))
            },
        )
    }
}

/// Wakes a consumer sleeping in [`Consumer::wait_for_data_or`] from another thread of its
/// process, so that it re-checks its `also` condition.
pub(crate) struct DataNudger<M: RingMemory> {
    ring: Ring<M>,
}

impl<M: RingMemory> DataNudger<M> {
    /// Wakes the consumer if it sleeps. Call after making its `also` condition true.
    pub(crate) fn nudge(&self) {
        self.ring.notify(&self.ring.header().data_wake);
    }

    /// The producer's `head` as it is now (unvalidated: only compared with a position).
    pub(crate) fn published(&self) -> u64 {
        self.ring.header().head.0.load(Ordering::Acquire)
    }
}

/// The consumer's private state (apart from the memory, so a wait can borrow both).
#[derive(Debug)]
struct ConsumerState {
    /// Start of the next frame to read.
    tail: u64,
    /// The `tail` last stored in the ring.
    released: u64,
    /// The producer's `head` last read (validated): frames up to here are readable.
    head: u64,
    /// The `consumed` last stored in the ring.
    consumed: u64,
}

impl ConsumerState {
    /// Checks that the ring's `tail` is still the one this consumer last stored. Only the
    /// consumer writes `tail`, so any other value was written by something else (a buggy or
    /// hostile process): left alone, the consumer's next release would silently overwrite it
    /// and the producer, which reads `tail` only when the ring looks full, might never see it.
    /// The line is the consumer's own, so the load costs no cache traffic.
    fn check_tail<M: RingMemory>(&self, ring: &Ring<M>) -> Result<(), RingError> {
        let tail = ring.header().tail.load(Ordering::Relaxed);
        if tail != self.released {
            return Err(corrupt(format_args!(
                "tail {tail} is not the position {} this consumer released: something else \
                 wrote it",
                self.released
            )));
        }
        Ok(())
    }

    /// Reads and validates the producer's `head` (and checks the consumer's own `tail`, see
    /// [`check_tail`](Self::check_tail)).
    fn refresh_head<M: RingMemory>(&mut self, ring: &Ring<M>) -> Result<(), RingError> {
        self.check_tail(ring)?;
        let head = ring.header().head.load(Ordering::Acquire);
        if head % 8 != 0 {
            return Err(corrupt(format_args!("head {head} is not a multiple of 8")));
        }
        if head < self.tail {
            return Err(corrupt(format_args!(
                "head {head} is behind the consumer's tail {}",
                self.tail
            )));
        }
        if head < self.head {
            return Err(corrupt(format_args!(
                "head went backwards from {} to {head}",
                self.head
            )));
        }
        if head - self.released > ring.cap as u64 {
            return Err(corrupt(format_args!(
                "head {head} is more than the capacity ({}) ahead of the released tail {}",
                ring.cap, self.released
            )));
        }
        self.head = head;
        Ok(())
    }

    /// True if a frame is readable or the stream is closed.
    fn data_ready<M: RingMemory>(&mut self, ring: &Ring<M>) -> Result<bool, RingError> {
        if self.tail != self.head {
            return Ok(true);
        }
        self.refresh_head(ring)?;
        Ok(self.tail != self.head || closed_flag(ring)?)
    }
}

/// The `closed` flag's value when the producer's process failed.
const FAILED: u32 = 2;

/// Reads and validates the `closed` flag: true once the producer closed the ring or failed.
fn closed_flag<M: RingMemory>(ring: &Ring<M>) -> Result<bool, RingError> {
    match ring.header().id.closed.load(Ordering::Acquire) {
        0 => Ok(false),
        1 | FAILED => Ok(true),
        other => Err(corrupt(format_args!(
            "closed flag is {other}, not 0, 1 or 2"
        ))),
    }
}

/// Marks the ring in `mem` as written by a failed process, unless its producer already ended
/// the stream, and wakes its consumer, which then fails with [`RingError::WriterFailed`]
/// instead of waiting for data that will never come or taking the stream for complete. Any
/// thread of the producer's process may call it, while the producer writes: the producer's own
/// later [`close`](Producer::close) leaves the mark.
pub(crate) fn fail_producer<M: RingMemory>(mem: &M) {
    let header = mem.header();
    let _ = header
        .id
        .closed
        .compare_exchange(0, FAILED, Ordering::AcqRel, Ordering::Acquire);
    // As `Ring::notify` does (this thread has the memory, not the producer's `Ring`).
    fence(Ordering::SeqCst);
    header.data_wake.seq.fetch_add(1, Ordering::Release);
    mem.shadow().futex_wake(&header.data_wake.seq);
}

/// Whether the ring's consumer marked it as read by a failed process ([`fail_consumer`]).
fn reader_failed<M: RingMemory>(ring: &Ring<M>) -> bool {
    ring.header().id.reader_failed.load(Ordering::Acquire) != 0
}

/// Marks the ring in `mem` as read by a failed process, which will read no more, and wakes its
/// producer's space waiter, which then fails naming the reader instead of waiting for room
/// that will never come (the reading process may live on: a starter that supervises its
/// children). Any thread of the consumer's process may call it.
pub(crate) fn fail_consumer<M: RingMemory>(mem: &M) {
    let header = mem.header();
    header.id.reader_failed.store(1, Ordering::Release);
    fence(Ordering::SeqCst);
    header.space_wake.seq.fetch_add(1, Ordering::Release);
    mem.shadow().futex_wake(&header.space_wake.seq);
}

/// The reading side of a ring.
pub(crate) struct Consumer<M: RingMemory> {
    ring: Ring<M>,
    st: ConsumerState,
    /// How long a wait for data checks before it sleeps ([`spin_for`](Self::spin_for)).
    spin: Option<Duration>,
    /// Blocking mode's short spin, sized from the last wait (when `spin` is `None`).
    adaptive: AdaptiveSpin,
    /// It took the role over from a dead consumer ([`took_over`](Self::took_over)).
    took_over: bool,
}

/// Blocking mode's spin before sleeping, sized from how long the last wait took: a
/// stream whose data came within [`MAX`](Self::MAX) of the reader starting to wait (a
/// request and its reply, messages back to back) is checked for up to twice that gap, at least
/// [`MIN`](Self::MIN), before the reader sleeps, so the next element finds it awake and the
/// writer makes no wake-up call; after a longer gap, or a wait that timed out, the next wait
/// sleeps at once, without the [`SPIN_LIMIT`] checks a producer makes (see
/// [`before_sleep`](Self::before_sleep)). A quiet stream thus costs one spin of at most `MAX` and then
/// nothing, and a stream paced slower than `MAX` per element (1,000 per second) spins never
/// (but for the credit wake-ups below); a fast one trades up
/// to a core's share of spinning for what a futex wake-up costs the reader in latency (10 to
/// 30 µs on a virtual machine whose other core sleeps) and the writer in a system call. A wait that ended for something other
/// than data (credit coming back from a reader on another thread) counts too, so such a
/// reader spins up to twice that wait once per batch even on a slow stream: a cost kept
/// because counting data alone measured slower at 1,000 pings/s (p50 19–21 µs against
/// 12–15 µs, docs/benchmarks-journal.md). [`Consumer::spin_for`] replaces it (low-latency mode).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct AdaptiveSpin {
    /// The next wait's window (zero: sleep after the usual checks).
    window: Duration,
}

impl AdaptiveSpin {
    /// The longest gap that keeps the reader spinning, and the longest window: about twice
    /// what a futex wake-up takes to reach a sleeping core on these machines. Zero under the
    /// model checker, whose waits must stay small.
    const MAX: Duration = if cfg!(iotstream_loom) {
        Duration::ZERO
    } else {
        Duration::from_micros(50)
    };
    /// The shortest window, once spinning: a gap of a microsecond should not make the next
    /// wait give up after two (scheduling jitter would then cost a wake-up each time).
    const MIN: Duration = Duration::from_micros(10);

    /// The window of the next wait, if any.
    fn window(self) -> Option<Duration> {
        (!self.window.is_zero()).then_some(self.window)
    }

    /// What a wait with this spin `window` does before it sleeps: [`SPIN_LIMIT`] checks for
    /// data, then the spin, with a window; nothing without one ([`SLOW_STREAM_CHECKS`]; the
    /// handshake still checks once before the sleep). The last gap was longer than [`MAX`](Self::MAX), so data is
    /// unlikely within the few microseconds of checks, and they would keep the core from
    /// the thread that most likely needs it: Linux often runs a woken thread on its waker's
    /// core, so a reader woken by a write, having written its reply, checked for 3 µs on
    /// the core that the thread waiting for that reply had given up to it (at 1,000 pings/s
    /// between two processes, p50 median of ten alternated runs 6.0 µs against 7.8 µs; with
    /// both cores busy with other work, 4.6–4.8 µs in four of four runs against 6.0 µs to
    /// 1 ms: docs/benchmarks-journal.md, "A reader on a slow stream sleeps at once").
    fn before_sleep(window: Option<Duration>) -> BeforeSleep {
        match window {
            Some(_) => BeforeSleep {
                checks: SPIN_LIMIT,
                spin: window,
            },
            None => BeforeSleep {
                checks: SLOW_STREAM_CHECKS,
                spin: None,
            },
        }
    }

    /// Records how the last wait ended and how long it took.
    fn waited(&mut self, outcome: Wait, took: Duration) {
        self.window = match outcome {
            Wait::Ready if took <= Self::MAX => (took * 2).max(Self::MIN).min(Self::MAX),
            _ => Duration::ZERO,
        };
    }
}

impl<M: RingMemory> fmt::Debug for Consumer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.cap)
            .field("state", &self.st)
            .finish()
    }
}

impl<M: RingMemory> Consumer<M> {
    /// The ring's memory (to mark it read by a failed process from another thread:
    /// [`fail_consumer`]).
    pub(crate) fn memory(&self) -> &M {
        &self.ring.mem
    }

    /// Attaches the consumer to the ring in `mem`: validates the header and claims the consumer
    /// role (this process, a [`Holder`], in `consumer`), which must be free: a ring has one consumer
    /// at a time (see [`take_over`](Self::take_over)).
    pub(crate) fn new(mem: M) -> Result<Consumer<M>, RingError> {
        Self::attach(mem, None)
    }

    /// Like [`new`](Self::new), but the consumer role may also be taken over from a process
    /// that `alive` says is dead (a crashed consumer, restarted): the new consumer starts at the
    /// released `tail`, so it reads again every frame the dead one had not released.
    pub(crate) fn take_over(
        mem: M,
        alive: impl Fn(Holder) -> bool,
    ) -> Result<Consumer<M>, RingError> {
        Self::attach(mem, Some(&alive))
    }

    fn attach(mem: M, alive: Option<&dyn Fn(Holder) -> bool>) -> Result<Consumer<M>, RingError> {
        let (ring, head, tail, took_over) =
            Ring::attach(mem, "consumer", |h| &h.id.consumer, alive)?;
        // A new consumer has consumed nothing past the tail: a dead one's count goes with it
        // (what it had consumed there is read and consumed again).
        ring.header().consumed.store(0, Ordering::Release);
        Ok(Consumer {
            ring,
            st: ConsumerState {
                tail,
                released: tail,
                head,
                consumed: 0,
            },
            spin: None,
            adaptive: AdaptiveSpin::default(),
            took_over,
        })
    }

    /// Whether this consumer took the role over from a dead one (and starts where that one
    /// released the ring), rather than being the ring's first: only then may the first frames
    /// be the rest of something it never saw the start of.
    pub(crate) fn took_over(&self) -> bool {
        self.took_over
    }

    /// Data bytes of the ring.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.cap
    }

    /// Reads the next published frame: `Ok(Some(f(payload)))`, or `Ok(None)` if there is none
    /// now. Its space stays reserved until [`release`](Self::release). `f` gets a [`Payload`],
    /// not a `&[u8]`: it copies the bytes it needs into private memory, reading each once, and
    /// decodes only those.
    pub(crate) fn try_read<R>(
        &mut self,
        f: impl FnOnce(Payload<'_>) -> R,
    ) -> Result<Option<R>, RingError> {
        if self.st.tail == self.st.head {
            self.st.refresh_head(&self.ring)?;
            if self.st.tail == self.st.head {
                return Ok(None);
            }
        }
        let at = self.ring.frame_at(self.st.tail, self.st.head)?;
        let r = f(at.payload);
        self.st.tail = at.end;
        Ok(Some(r))
    }

    /// Hands the space of every frame read since the last call back to the producer (one
    /// `Release` store), and wakes the producer if it sleeps. Does nothing if nothing was read.
    /// A `tail` that something else overwrote is [`RingError::Corrupt`] (and nothing is
    /// released).
    pub(crate) fn release(&mut self) -> Result<(), RingError> {
        self.release_up_to(self.st.tail)
    }

    /// Hands back the space of the frames read up to position `pos` only: the frames after it
    /// stay reserved (a consumer that takes the role over reads them again). `pos` must be a
    /// [`position`](Self::position) this consumer reached, not before what it already released
    /// (equal does nothing); anything else is [`RingError::Release`] and releases nothing. A
    /// `tail` that something else overwrote is [`RingError::Corrupt`].
    pub(crate) fn release_to(&mut self, pos: u64) -> Result<(), RingError> {
        if pos % 8 != 0 || pos < self.st.released || pos > self.st.tail {
            return Err(RingError::Release {
                pos,
                released: self.st.released,
                read: self.st.tail,
            });
        }
        self.release_up_to(pos)
    }

    /// Says that the reader has consumed `consumed` elements of the frames from the tail on
    /// (see the module docs, "Elements consumed past the tail"), as they stand once the ring
    /// is released up to `pos`, if given (checked as [`release_to`](Self::release_to) checks
    /// it); then releases up to `pos`. `consumed` is stored first, and a producer that waits
    /// for space is woken once, if either changed.
    pub(crate) fn release_consumed(
        &mut self,
        consumed: u64,
        pos: Option<u64>,
    ) -> Result<(), RingError> {
        self.st.check_tail(&self.ring)?;
        let pos = pos.unwrap_or(self.st.released);
        if pos % 8 != 0 || pos < self.st.released || pos > self.st.tail {
            return Err(RingError::Release {
                pos,
                released: self.st.released,
                read: self.st.tail,
            });
        }
        let header = self.ring.header();
        let mut changed = false;
        if consumed != self.st.consumed {
            header.consumed.store(consumed, Ordering::Release);
            self.st.consumed = consumed;
            changed = true;
        }
        if pos != self.st.released {
            header.tail.store(pos, Ordering::Release);
            self.st.released = pos;
            changed = true;
        }
        if changed {
            self.ring.notify(&header.space_wake);
        }
        Ok(())
    }

    fn release_up_to(&mut self, pos: u64) -> Result<(), RingError> {
        self.st.check_tail(&self.ring)?;
        if pos == self.st.released {
            return Ok(());
        }
        self.ring.header().tail.store(pos, Ordering::Release);
        self.st.released = pos;
        self.ring.notify(&self.ring.header().space_wake);
        Ok(())
    }

    /// The read position: the end of the last frame [`try_read`](Self::try_read) returned (or
    /// of its wrap marker), where the next frame starts. A valid argument of
    /// [`release_to`](Self::release_to).
    pub(crate) fn position(&self) -> u64 {
        self.st.tail
    }

    /// The position released so far (the ring's `tail`, as this consumer last stored it).
    pub(crate) fn released(&self) -> u64 {
        self.st.released
    }

    /// True if the producer is (about to be) asleep waiting for space. A hint: it can be stale
    /// by the time it is used, and a dead producer may have left it set.
    pub(crate) fn producer_waits_for_space(&self) -> bool {
        // Not a producer waiting for consumption (`ASLEEP_FOR_PROGRESS`): it has room.
        self.ring
            .header()
            .space_wake
            .waiting
            .load(Ordering::Relaxed)
            == ASLEEP
    }

    /// True at the end of the stream: the producer closed the ring and every frame has been
    /// read.
    ///
    /// A ring marked by a failed producer ([`fail_producer`]) is [`RingError::WriterFailed`] at
    /// once, even with frames unread: the stream is incomplete, and the reader ends promptly.
    pub(crate) fn is_closed(&mut self) -> Result<bool, RingError> {
        if !closed_flag(&self.ring)? {
            return Ok(false);
        }
        self.writer_failed()?;
        // `closed` was read with `Acquire` after the producer's last `head` store: this sees it.
        self.st.refresh_head(&self.ring)?;
        Ok(self.st.tail == self.st.head)
    }

    /// Low-latency mode: waits for data check the ring for up to `window` before they sleep
    /// (`Duration::MAX`: always, up to each wait's timeout), instead of the blocking mode's
    /// spin sized from the last wait ([`AdaptiveSpin`]).
    pub(crate) fn spin_for(&mut self, window: Duration) {
        self.spin = Some(window);
    }

    /// Waits until a frame is readable or the stream is closed ([`Wait::Ready`]), or `timeout`
    /// elapses. Release first: a producer waiting for space would otherwise wait for us.
    pub(crate) fn wait_for_data(&mut self, timeout: Duration) -> Result<Wait, RingError> {
        self.wait_for_data_or(timeout, false, || false)
    }

    /// Like [`wait_for_data`](Self::wait_for_data), but also ready when `also` returns true, or,
    /// with `watch_producer`, when the producer waits for space
    /// ([`producer_waits_for_space`](Self::producer_waits_for_space)). Whatever makes `also`
    /// true must be followed by a [`DataNudger::nudge`], and a producer nudges before it sleeps
    /// for space: then neither is missed (the same handshake as for data).
    pub(crate) fn wait_for_data_or(
        &mut self,
        timeout: Duration,
        watch_producer: bool,
        mut also: impl FnMut() -> bool,
    ) -> Result<Wait, RingError> {
        let st = &mut self.st;
        let started = Instant::now();
        let awake = AdaptiveSpin::before_sleep(self.spin.or(self.adaptive.window()));
        let wait = self.ring.wait(
            &self.ring.header().data_wake,
            ASLEEP,
            None,
            timeout,
            awake,
            |ring| {
                Ok(st.data_ready(ring)?
                    || also()
                    || (watch_producer
                        && ring.header().space_wake.waiting.load(Ordering::Relaxed) == ASLEEP))
            },
        )?;
        self.adaptive.waited(wait, started.elapsed());
        Ok(wait)
    }

    /// [`RingError::WriterFailed`] if the producer's process marked the ring as failed.
    pub(crate) fn writer_failed(&self) -> Result<(), RingError> {
        if self.ring.header().id.closed.load(Ordering::Acquire) == FAILED {
            let raw = self.ring.header().id.producer.load(Ordering::Relaxed);
            let pid = Holder::from_raw(raw).map_or(0, Holder::pid);
            return Err(RingError::WriterFailed { pid });
        }
        Ok(())
    }

    /// The producer, once one has attached (for liveness checks).
    pub(crate) fn producer(&self) -> Option<Holder> {
        Holder::from_raw(self.ring.header().id.producer.load(Ordering::Relaxed))
    }
}

impl<M: RingMemory + Clone> Consumer<M> {
    /// A handle with which another thread wakes this consumer from
    /// [`wait_for_data_or`](Self::wait_for_data_or).
    pub(crate) fn nudger(&self) -> DataNudger<M> {
        DataNudger {
            ring: Ring {
                mem: self.ring.mem.clone(),
                cap: self.ring.cap,
                max_len: self.ring.max_len,
            },
        }
    }
}

#[cfg(all(test, not(iotstream_loom)))]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;

    type HeapProducer = Producer<Arc<HeapRing>>;
    type HeapConsumer = Consumer<Arc<HeapRing>>;

    fn pair(capacity: usize) -> (Arc<HeapRing>, HeapProducer, HeapConsumer) {
        let ring = HeapRing::new(capacity).unwrap();
        let p = Producer::new(Arc::clone(&ring)).unwrap();
        let c = Consumer::new(Arc::clone(&ring)).unwrap();
        (ring, p, c)
    }

    fn write(p: &mut HeapProducer, bytes: &[u8]) -> bool {
        p.try_write(bytes.len(), |b| b.copy_from_slice(bytes))
            .unwrap()
    }

    fn read(c: &mut HeapConsumer) -> Option<Vec<u8>> {
        c.try_read(|b| b.to_vec()).unwrap()
    }

    /// Asserts a `Corrupt` error whose description contains `needle`.
    #[track_caller]
    fn assert_corrupt<T: fmt::Debug>(r: Result<T, RingError>, needle: &str) {
        match r {
            Err(RingError::Corrupt { what }) => {
                assert!(what.contains(needle), "{what:?} does not name {needle:?}")
            }
            other => panic!("expected a corrupt ring naming {needle:?}, got {other:?}"),
        }
    }

    fn set_len(ring: &HeapRing, off: usize, len: u32) {
        ring.poke(off, &len.to_ne_bytes());
    }

    /// Moves both sides to position `pos` (a multiple of 16) through frames of 8 bytes.
    fn advance(p: &mut HeapProducer, c: &mut HeapConsumer, pos: u64) {
        while p.st.head < pos {
            assert!(write(p, &[0; 8]));
            p.publish();
            assert!(read(c).is_some());
            c.release().unwrap();
        }
        assert_eq!(p.st.head, pos);
    }

    #[test]
    fn frames_are_invisible_until_published_then_read_in_order() {
        let (_ring, mut p, mut c) = pair(256);
        assert!(write(&mut p, b"hello"));
        assert!(write(&mut p, b""));
        assert!(write(&mut p, &[7; 100]));
        assert_eq!(read(&mut c), None, "nothing is visible before publish");
        p.publish();
        assert_eq!(read(&mut c).as_deref(), Some(&b"hello"[..]));
        assert_eq!(read(&mut c).as_deref(), Some(&b""[..]));
        assert_eq!(read(&mut c).as_deref(), Some(&[7; 100][..]));
        assert_eq!(read(&mut c), None);
        c.release().unwrap();
        assert_eq!(p.ring.header().tail.load(Ordering::Relaxed), 16 + 8 + 112);
    }

    #[test]
    fn payloads_are_8_byte_aligned() {
        let (_ring, mut p, mut c) = pair(256);
        for len in [1, 3, 8, 13, 16] {
            assert!(write(&mut p, &vec![1; len]));
        }
        p.publish();
        while let Some(addr) = c.try_read(|b| b.as_ptr() as usize).unwrap() {
            assert_eq!(addr % 8, 0);
        }
    }

    #[test]
    fn wraps_around_thousands_of_times_with_random_frame_sizes() {
        let capacity = 256;
        let (_ring, mut p, mut c) = pair(capacity);
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut in_flight: VecDeque<Vec<u8>> = VecDeque::new();
        let mut frames = 0u64;
        let mut markers = 0u64;
        while p.st.head < 3000 * capacity as u64 {
            // Write a random number of frames of random sizes, until the ring refuses one.
            for _ in 0..rng.random_range(1..8) {
                let len = rng.random_range(0..=p.max_frame_len());
                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let before = p.st.head;
                if !write(&mut p, &bytes) {
                    break;
                }
                if p.st.head - before > frame_size(len) as u64 {
                    markers += 1;
                }
                in_flight.push_back(bytes);
            }
            p.publish();
            // Read a random number of them, then release.
            for _ in 0..rng.random_range(0..8) {
                match read(&mut c) {
                    Some(got) => {
                        assert_eq!(Some(got), in_flight.pop_front(), "frame {frames}");
                        frames += 1;
                    }
                    None => {
                        assert!(in_flight.is_empty());
                        break;
                    }
                }
            }
            c.release().unwrap();
        }
        while let Some(got) = read(&mut c) {
            assert_eq!(Some(got), in_flight.pop_front());
        }
        assert!(in_flight.is_empty());
        assert!(markers > 1000, "only {markers} wrap markers");
    }

    #[test]
    fn full_ring_refuses_until_released_and_empty_ring_reads_nothing() {
        let (_ring, mut p, mut c) = pair(64);
        assert_eq!(read(&mut c), None);
        // Four frames of 8 payload bytes (16 bytes each) fill 64 bytes.
        for i in 0..4u8 {
            assert!(write(&mut p, &[i; 8]), "frame {i}");
        }
        assert!(!write(&mut p, &[9; 8]), "the ring is full");
        assert!(
            !write(&mut p, &[]),
            "even an empty frame needs its 8-byte header"
        );
        p.publish();
        assert!(!write(&mut p, &[9; 8]), "still full: nothing released");
        assert_eq!(read(&mut c), Some(vec![0; 8]));
        assert!(!write(&mut p, &[9; 8]), "read but not released");
        c.release().unwrap();
        assert!(write(&mut p, &[4; 8]));
        p.publish();
        for i in 1..5u8 {
            assert_eq!(read(&mut c), Some(vec![i; 8]));
        }
        assert_eq!(read(&mut c), None);
    }

    #[test]
    fn frame_larger_than_half_the_ring_is_an_error() {
        let (_ring, mut p, _c) = pair(128);
        assert_eq!(p.max_frame_len(), 56);
        assert_eq!(
            p.try_write(57, |_| unreachable!()),
            Err(RingError::FrameTooLarge { len: 57, max: 56 })
        );
        assert_eq!(
            p.wait_for_space(1000, Duration::ZERO),
            Err(RingError::FrameTooLarge { len: 1000, max: 56 })
        );
        assert!(write(&mut p, &[1; 56]));
    }

    #[test]
    fn a_largest_frame_fits_in_an_empty_ring_at_every_offset() {
        let (_ring, mut p, mut c) = pair(128);
        for start in (0..256).step_by(8) {
            let (_r, mut p2, mut c2) = pair(128);
            // Reach `start` with 8-byte steps (empty frames), leaving the ring empty.
            while p2.st.head < start {
                assert!(write(&mut p2, &[]));
                p2.publish();
                assert!(read(&mut c2).is_some());
                c2.release().unwrap();
            }
            assert!(
                write(&mut p2, &[3; 56]),
                "largest frame at position {start}"
            );
            p2.publish();
            assert_eq!(read(&mut c2), Some(vec![3; 56]));
        }
        assert!(write(&mut p, &[3; 56]));
        p.publish();
        assert!(read(&mut c).is_some());
    }

    #[test]
    fn a_panicking_fill_writes_nothing() {
        let (_ring, mut p, mut c) = pair(64);
        advance(&mut p, &mut c, 48); // the next 24-byte payload needs a wrap marker
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.try_write(24, |_| panic!("encoder failed"))
        }));
        assert!(r.is_err());
        assert_eq!(p.st.head, 48);
        assert!(write(&mut p, &[5; 8]));
        p.publish();
        assert_eq!(read(&mut c), Some(vec![5; 8]));
    }

    #[test]
    fn close_is_seen_after_draining() {
        let (_ring, mut p, mut c) = pair(128);
        assert!(!c.is_closed().unwrap());
        assert!(write(&mut p, b"last words"));
        p.close();
        assert!(!c.is_closed().unwrap(), "a frame is still unread");
        assert_eq!(c.wait_for_data(Duration::ZERO), Ok(Wait::Ready));
        assert_eq!(read(&mut c).as_deref(), Some(&b"last words"[..]));
        assert!(c.is_closed().unwrap());
        assert_eq!(read(&mut c), None);
        assert_eq!(
            c.wait_for_data(Duration::from_secs(3600)),
            Ok(Wait::Ready),
            "a closed ring never makes its consumer wait"
        );
        assert_eq!(p.try_write(1, |_| ()), Err(RingError::Closed));
        assert_eq!(p.wait_for_space(1, Duration::ZERO), Err(RingError::Closed));
        p.close(); // idempotent
    }

    #[test]
    fn each_role_is_claimed_once_and_a_closed_ring_takes_no_producer() {
        let (ring, mut p, _c) = pair(64);
        let me = std::process::id();
        assert_eq!(p.consumer(), Some(Holder::this_process()));
        assert_eq!(
            Producer::new(Arc::clone(&ring)).unwrap_err(),
            RingError::RoleTaken {
                role: "producer",
                pid: me
            }
        );
        assert_eq!(
            Consumer::new(Arc::clone(&ring)).unwrap_err(),
            RingError::RoleTaken {
                role: "consumer",
                pid: me
            }
        );
        p.close();
        assert_eq!(Producer::new(ring).unwrap_err(), RingError::Closed);
    }

    /// Whether a consumer waiting `wait` for data that does not come went to sleep (its
    /// waiting flag set) during that wait: sampled from this thread until the wait returns.
    fn slept_while_waiting(spin: Option<Duration>, wait: Duration) -> bool {
        let (ring, _p, mut c) = pair(64);
        if let Some(window) = spin {
            c.spin_for(window);
        }
        slept_in(&ring, &mut c, wait)
    }

    /// Whether `c` (a consumer of `ring`) waiting `wait` for data that does not come went to
    /// sleep during that wait.
    fn slept_in(ring: &HeapRing, c: &mut HeapConsumer, wait: Duration) -> bool {
        std::thread::scope(|s| {
            let waiter = s.spawn(move || c.wait_for_data(wait));
            let mut slept = false;
            while !waiter.is_finished() {
                slept |= ring.header().data_wake.waiting.load(Ordering::Relaxed) != 0;
                std::hint::spin_loop();
            }
            assert_eq!(waiter.join().unwrap(), Ok(Wait::TimedOut));
            slept
        })
    }

    /// Publishes a frame to `c`'s ring while `c` waits for it on another thread, once `c`'s
    /// waiting flag says it sleeps (or is about to).
    fn publish_to_a_sleeper(ring: &HeapRing, p: &mut HeapProducer, c: &mut HeapConsumer) {
        std::thread::scope(|s| {
            let reader = s.spawn(|| c.wait_for_data(Duration::from_secs(10)));
            while ring.header().data_wake.waiting.load(Ordering::Relaxed) == 0 {
                std::hint::spin_loop();
            }
            assert!(write(p, b"12345678"));
            p.publish();
            assert_eq!(reader.join().unwrap(), Ok(Wait::Ready));
        });
        assert!(read(c).is_some());
        c.release().unwrap();
    }

    #[test]
    fn a_thread_that_woke_a_sleeper_gives_its_core_up_at_its_next_wait() {
        let (ring, mut p, mut c) = pair(64);
        let _ = take_woke();
        publish_to_a_sleeper(&ring, &mut p, &mut c);
        assert!(
            take_woke(),
            "waking a sleeping reader is noted on the waking thread"
        );
        assert!(!take_woke(), "and taken once");
        // Publishing to a reader that does not sleep wakes nobody: nothing noted.
        assert!(write(&mut p, b"abcdefgh"));
        p.publish();
        assert!(!take_woke());
        assert!(read(&mut c).is_some());
        c.release().unwrap();
        // The next wait of the waking thread, on any ring, takes the note (and yields).
        publish_to_a_sleeper(&ring, &mut p, &mut c);
        let (_other, mut p2, mut c2) = pair(64);
        assert!(write(&mut p2, b"ready..."));
        p2.publish();
        assert_eq!(c2.wait_for_data(Duration::from_secs(1)), Ok(Wait::Ready));
        assert!(!take_woke(), "the wait took the note");
    }

    #[test]
    fn blocking_mode_spins_after_a_short_wait_and_sleeps_at_once_after_a_long_one() {
        let micros = Duration::from_micros;
        let mut a = AdaptiveSpin::default();
        assert_eq!(a.window(), None, "a new reader sleeps at once");
        for (outcome, took, window) in [
            (Wait::Ready, micros(0), Some(AdaptiveSpin::MIN)),
            (Wait::Ready, micros(3), Some(AdaptiveSpin::MIN)),
            (Wait::Ready, micros(20), Some(micros(40))),
            (Wait::Ready, micros(40), Some(AdaptiveSpin::MAX)),
            (Wait::Ready, AdaptiveSpin::MAX, Some(AdaptiveSpin::MAX)),
            (Wait::Ready, micros(51), None),
            (Wait::Ready, micros(5), Some(AdaptiveSpin::MIN)),
            (Wait::TimedOut, micros(5), None),
            (Wait::Ready, Duration::from_millis(1), None),
        ] {
            a.waited(outcome, took);
            assert_eq!(a.window(), window, "after {outcome:?} in {took:?}");
        }

        // The consumer keeps it: data found at once makes the next wait spin; a wait that
        // timed out makes the next one sleep at once.
        let (_ring, mut p, mut c) = pair(64);
        assert!(armed_by_data(&mut p, &mut c));
        assert_eq!(
            c.wait_for_data(Duration::from_millis(1)),
            Ok(Wait::TimedOut)
        );
        assert_eq!(c.adaptive.window(), None);
        // Low-latency mode's window replaces it.
        c.spin_for(Duration::from_millis(1));
        assert!(write(&mut p, &[2; 8]));
        p.publish();
        assert_eq!(c.wait_for_data(Duration::from_secs(3600)), Ok(Wait::Ready));
        assert_eq!(read(&mut c).as_deref(), Some(&[2; 8][..]));
    }

    /// How many times `c` checks for data in a wait of `wait` for data that does not come.
    fn checks_in(c: &mut HeapConsumer, wait: Duration) -> u32 {
        let mut checks = 0;
        let waited = c.wait_for_data_or(wait, false, || {
            checks += 1;
            false
        });
        assert_eq!(waited, Ok(Wait::TimedOut));
        checks
    }

    #[test]
    fn a_reader_on_a_slow_stream_sleeps_without_checking_first() {
        let _ = take_woke();
        let (_ring, mut p, mut c) = pair(64);
        // New, or after a wait that timed out: one check before it sleeps and one when its
        // sleep ends (a few more if woken for nothing), not the SPIN_LIMIT checks a producer
        // makes: they would keep the core from the thread that woke it.
        let wait = Duration::from_millis(5);
        let first = checks_in(&mut c, wait);
        assert!(
            first < SPIN_LIMIT,
            "{first} checks before a new reader slept"
        );
        let again = checks_in(&mut c, wait);
        assert!(
            again < SPIN_LIMIT,
            "{again} checks after a wait that timed out"
        );
        // Data found at once: the next wait checks, then spins, then sleeps.
        assert!(armed_by_data(&mut p, &mut c));
        let armed = checks_in(&mut c, wait);
        assert!(armed >= SPIN_LIMIT, "only {armed} checks on a fast stream");
    }

    /// Writes, waits and reads frames until a wait that found data at once arms the spin
    /// (a wait preempted for longer than the window would not): whether one did, in 100.
    fn armed_by_data(p: &mut HeapProducer, c: &mut HeapConsumer) -> bool {
        (0..100).any(|_| {
            assert!(write(p, &[1; 8]));
            p.publish();
            assert_eq!(c.wait_for_data(Duration::from_secs(3600)), Ok(Wait::Ready));
            assert_eq!(read(c).as_deref(), Some(&[1; 8][..]));
            c.release().unwrap();
            c.adaptive.window().is_some()
        })
    }

    #[test]
    fn a_quiet_stream_costs_one_short_spin_then_sleeps() {
        // Spinning after a quick wait, a reader still goes to sleep once the window is over.
        let (ring, mut p, mut c) = pair(64);
        assert!(armed_by_data(&mut p, &mut c));
        assert!(
            slept_in(&ring, &mut c, Duration::from_millis(200)),
            "the reader spun through its whole wait"
        );
    }

    #[test]
    fn a_consumer_that_spins_always_never_sleeps_and_one_that_does_not_sleeps() {
        // Spinning always: the wait checks until its timeout and never sets its flag.
        assert!(!slept_while_waiting(
            Some(Duration::MAX),
            Duration::from_millis(200)
        ));
        // The default: asleep on the futex at once.
        assert!(slept_while_waiting(None, Duration::from_millis(200)));
        // A window shorter than the wait: checks, then sleeps.
        assert!(slept_while_waiting(
            Some(Duration::from_millis(1)),
            Duration::from_millis(200)
        ));
    }

    #[test]
    fn waits_return_ready_at_once_or_time_out() {
        let (_ring, mut p, mut c) = pair(64);
        assert_eq!(
            c.wait_for_data(Duration::from_millis(1)),
            Ok(Wait::TimedOut)
        );
        assert_eq!(c.ring.header().data_wake.waiting.load(Ordering::Relaxed), 0);
        assert!(write(&mut p, &[1; 24]));
        assert!(write(&mut p, &[2; 24]));
        assert_eq!(
            c.wait_for_data(Duration::from_millis(1)),
            Ok(Wait::TimedOut),
            "written but not published"
        );
        p.publish();
        assert_eq!(c.wait_for_data(Duration::from_secs(3600)), Ok(Wait::Ready));
        assert_eq!(
            p.wait_for_space(24, Duration::from_millis(1)),
            Ok(Wait::TimedOut)
        );
        assert_eq!(
            p.ring.header().space_wake.waiting.load(Ordering::Relaxed),
            0
        );
        assert_eq!(read(&mut c), Some(vec![1; 24]));
        c.release().unwrap();
        assert_eq!(
            p.wait_for_space(24, Duration::from_secs(3600)),
            Ok(Wait::Ready)
        );
    }

    /// Sets a flag when dropped, even by a panic: tells the other thread to stop waiting.
    struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn sleeping_sides_are_woken_across_threads() {
        // A tiny ring and random frame sizes: both sides keep running into a full or empty ring
        // and go to sleep on the futex. (That no wake-up is ever lost is proven by the loom
        // models; here a lost one would only cost a timed-out wait, so nothing is asserted
        // about time.) Each side stops waiting if the other thread has ended, even by a panic.
        let (_ring, mut p, mut c) = pair(64);
        const FRAMES: u32 = 20_000;
        let timeout = Duration::from_millis(100);
        let producer_done = std::sync::atomic::AtomicBool::new(false);
        let consumer_done = std::sync::atomic::AtomicBool::new(false);
        let done =
            |flag: &std::sync::atomic::AtomicBool| flag.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _done = SetOnDrop(&producer_done);
                let mut rng = StdRng::seed_from_u64(7);
                for i in 0..FRAMES {
                    let len = rng.random_range(4..=24);
                    while !p
                        .try_write(len, |b| b.write_at(0, &i.to_le_bytes()))
                        .unwrap()
                    {
                        p.publish();
                        while p.wait_for_space(len, timeout).unwrap() == Wait::TimedOut {
                            assert!(!done(&consumer_done), "the consumer stopped");
                        }
                    }
                    if rng.random_range(0..4) == 0 {
                        p.publish();
                    }
                }
                p.close();
            });
            let _done = SetOnDrop(&consumer_done);
            let mut next = 0u32;
            loop {
                while let Some(i) = c
                    .try_read(|b| {
                        let mut word = [0; 4];
                        b.copy_to(0, &mut word);
                        u32::from_le_bytes(word)
                    })
                    .unwrap()
                {
                    assert_eq!(i, next);
                    next += 1;
                }
                c.release().unwrap();
                if c.is_closed().unwrap() {
                    break;
                }
                if c.wait_for_data(timeout).unwrap() == Wait::TimedOut && done(&producer_done) {
                    assert_eq!(
                        c.wait_for_data(Duration::ZERO),
                        Ok(Wait::Ready),
                        "the producer stopped"
                    );
                }
            }
            assert_eq!(next, FRAMES);
        });
    }

    // ---- roles taken over from dead processes, partial release ----

    /// The pid of a process that surely ended: `true`, spawned and reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn alive(holder: Holder) -> bool {
        crate::transport::holder_alive(holder)
    }

    /// What a role's field holds for `pid` recorded without a start stamp.
    fn by_pid(pid: u32) -> u64 {
        Holder::new(pid, 0).0
    }

    /// Kills and reaps a child process when dropped, also when the test fails.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_role_held_under_a_pid_that_now_names_another_process_is_taken_over() {
        // Pids wrap: the process recorded as the consumer died, and the kernel has since given
        // its pid to another process, alive (a child of this test). What tells them apart is
        // the start stamp recorded with the pid.
        let (ring, mut p, c) = pair(256);
        assert!(write(&mut p, &[7; 8]));
        p.publish();
        drop(c);
        let other = Reaped(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let pid = other.0.id();
        let stamp = crate::transport::process::start_stamp(pid).expect("the child's /proc entry");
        // A start that is neither the child's nor this process's.
        let own = crate::transport::process::own_start_stamp();
        let another_start = (1..=3).find(|s| *s != stamp && *s != own).unwrap();
        let field = &ring.header().id.consumer;

        // The process that has the pid now is the one recorded: alive, never displaced.
        field.store(Holder::new(pid, stamp).0, Ordering::Relaxed);
        assert_eq!(
            Consumer::take_over(Arc::clone(&ring), alive).unwrap_err(),
            RingError::RoleTaken {
                role: "consumer",
                pid
            }
        );
        // Recorded with another start: that process is dead, its pid reused.
        field.store(Holder::new(pid, another_start).0, Ordering::Relaxed);
        let mut c = Consumer::take_over(Arc::clone(&ring), alive)
            .expect("a reused pid does not keep the role from a restarted consumer");
        assert_eq!(p.consumer(), Some(Holder::this_process()));
        assert_eq!(
            read(&mut c),
            Some(vec![7; 8]),
            "the unreleased frame is read again"
        );
        drop(c);

        // The restarted owner itself was given its dead predecessor's pid: the role is
        // recorded under this very pid, with another start. Before the stamp, that read as
        // "held by ourselves" and was refused, naming our own pid.
        let me = Holder::this_process();
        field.store(Holder::new(me.pid(), another_start).0, Ordering::Relaxed);
        let mut c = Consumer::take_over(Arc::clone(&ring), alive)
            .expect("a process given its predecessor's pid takes its role over");
        assert_eq!(read(&mut c), Some(vec![7; 8]));
        // The producer's role, likewise.
        drop(p);
        ring.header()
            .id
            .producer
            .store(Holder::new(pid, another_start).0, Ordering::Relaxed);
        let mut p = Producer::take_over(Arc::clone(&ring), alive).unwrap();
        assert_eq!(c.producer(), Some(me));
        assert!(write(&mut p, &[8; 8]));
        p.close();
        assert_eq!(read(&mut c), Some(vec![8; 8]));
    }

    #[test]
    fn a_dead_consumers_role_is_taken_over_and_its_unreleased_frames_are_read_again() {
        let (ring, mut p, mut c) = pair(256);
        for i in 0..5u8 {
            assert!(write(&mut p, &[i; 8]));
        }
        p.publish();
        // The consumer reads three frames but is done with only the first, then dies.
        assert_eq!(read(&mut c), Some(vec![0; 8]));
        let after_first = c.position();
        assert_eq!(read(&mut c), Some(vec![1; 8]));
        assert_eq!(read(&mut c), Some(vec![2; 8]));
        c.release_to(after_first).unwrap();
        drop(c);
        let dead = dead_pid();
        let field = &ring.header().id.consumer;
        field.store(by_pid(dead), Ordering::Relaxed);
        ring.header().data_wake.waiting.store(1, Ordering::Relaxed);

        // A live holder (init, or ourselves) is never displaced.
        for holder in [Holder::new(1, 0), Holder::this_process()] {
            field.store(holder.0, Ordering::Relaxed);
            assert_eq!(
                Consumer::take_over(Arc::clone(&ring), alive).unwrap_err(),
                RingError::RoleTaken {
                    role: "consumer",
                    pid: holder.pid()
                }
            );
        }
        field.store(by_pid(dead), Ordering::Relaxed);
        assert_eq!(
            Consumer::new(Arc::clone(&ring)).unwrap_err(),
            RingError::RoleTaken {
                role: "consumer",
                pid: dead
            },
            "new never takes a role over"
        );

        let mut c = Consumer::take_over(Arc::clone(&ring), alive).unwrap();
        assert_eq!(field.load(Ordering::Relaxed), Holder::this_process().0);
        assert_eq!(p.consumer(), Some(Holder::this_process()));
        assert_eq!(
            ring.header().data_wake.waiting.load(Ordering::Relaxed),
            0,
            "the dead consumer's stale asleep flag is cleared"
        );
        assert_eq!(c.released(), after_first);
        let mut got = Vec::new();
        while let Some(f) = read(&mut c) {
            got.push(f[0]);
        }
        assert_eq!(got, [1, 2, 3, 4], "exactly the frames not released");
        c.release().unwrap();
        assert!(write(&mut p, &[9; 8]));
        p.close();
        assert_eq!(read(&mut c), Some(vec![9; 8]));
        assert!(c.is_closed().unwrap());
    }

    #[test]
    fn a_dead_producers_role_is_taken_over_at_the_published_head() {
        let (ring, mut p, mut c) = pair(256);
        assert!(write(&mut p, &[1; 8]));
        assert!(write(&mut p, &[2; 8]));
        p.publish();
        assert!(write(&mut p, &[3; 8])); // written, never published: lost with the producer
        let published = p.st.published;
        drop(p);
        let field = &ring.header().id.producer;
        field.store(by_pid(1), Ordering::Relaxed);
        assert_eq!(
            Producer::take_over(Arc::clone(&ring), alive).unwrap_err(),
            RingError::RoleTaken {
                role: "producer",
                pid: 1
            }
        );
        field.store(by_pid(dead_pid()), Ordering::Relaxed);
        let mut p = Producer::take_over(Arc::clone(&ring), alive).unwrap();
        assert_eq!(c.producer(), Some(Holder::this_process()));
        assert_eq!(p.st.head, published);
        assert!(write(&mut p, &[4; 16]));
        p.publish();
        let mut got = Vec::new();
        while let Some(f) = read(&mut c) {
            got.push(f);
        }
        assert_eq!(got, [vec![1; 8], vec![2; 8], vec![4; 16]]);
        // A closed ring takes no producer, not even one taking over from a dead one.
        p.close();
        drop(p);
        field.store(by_pid(dead_pid()), Ordering::Relaxed);
        assert_eq!(
            Producer::take_over(ring, alive).unwrap_err(),
            RingError::Closed
        );
    }

    #[test]
    fn a_producer_taking_over_flags_its_first_frame_only() {
        let (ring, mut p, mut c) = pair(256);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        drop(p);
        ring.header()
            .id
            .producer
            .store(by_pid(dead_pid()), Ordering::Relaxed);
        let mut p = Producer::take_over(Arc::clone(&ring), alive).unwrap();
        // A fill that panics writes nothing: the flag waits for the first frame written.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.try_write(8, |_| panic!("the fill fails")).unwrap()
        }));
        assert!(panicked.is_err());
        for i in 2..5 {
            assert!(write(&mut p, &[i; 8]));
        }
        p.publish();
        let mut flags = Vec::new();
        while let Some(f) = c.try_read(|b| b.after_take_over()).unwrap() {
            flags.push(f);
        }
        assert_eq!(flags, [false, true, false, false]);
        // A producer that claims a free role took nothing over: no flag.
        let (_ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        assert_eq!(c.try_read(|b| b.after_take_over()).unwrap(), Some(false));
    }

    #[test]
    fn corrupt_frame_flags() {
        let (ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        ring.poke(4, &2u32.to_ne_bytes());
        assert_corrupt(
            c.try_read(|_| ()),
            "frame flags 2 at offset 0 (position 0) are not 0 or 1",
        );
    }

    #[test]
    fn release_to_accepts_only_read_positions_not_yet_released() {
        let (ring, mut p, mut c) = pair(128);
        for i in 0..3u8 {
            assert!(write(&mut p, &[i; 8]));
        }
        p.publish();
        assert!(read(&mut c).is_some());
        let first = c.position();
        assert!(read(&mut c).is_some());
        let second = c.position();
        assert_eq!((first, second), (16, 32));
        let refused = |pos| RingError::Release {
            pos,
            released: 0,
            read: 32,
        };
        assert_eq!(c.release_to(12), Err(refused(12)), "not a multiple of 8");
        assert_eq!(c.release_to(40), Err(refused(40)), "beyond what was read");
        assert_eq!(ring.header().tail.load(Ordering::Relaxed), 0);
        c.release_to(0).unwrap(); // nothing
        c.release_to(first).unwrap();
        assert_eq!(ring.header().tail.load(Ordering::Relaxed), first);
        assert_eq!(c.released(), first);
        assert_eq!(
            c.release_to(8),
            Err(RingError::Release {
                pos: 8,
                released: 16,
                read: 32
            }),
            "before what was released"
        );
        c.release_to(first).unwrap(); // again: nothing
        c.release().unwrap();
        assert_eq!(ring.header().tail.load(Ordering::Relaxed), second);
        // The third frame was never read: it is still readable, and still reserved.
        assert_eq!(read(&mut c), Some(vec![2; 8]));
        assert_eq!(ring.header().tail.load(Ordering::Relaxed), second);
    }

    #[test]
    fn a_producer_waiting_for_space_wakes_a_consumer_watching_for_it() {
        // The consumer holds every frame (read, not released) and sleeps; the producer runs
        // out of space and goes to sleep: its nudge must wake the consumer, which then releases.
        // (That no nudge is ever lost is proven by the loom models; the long timeouts here only
        // keep a bug from hanging the test.)
        let (_ring, mut p, mut c) = pair(64);
        for i in 0..4u8 {
            assert!(write(&mut p, &[i; 8]));
        }
        p.publish();
        while read(&mut c).is_some() {}
        assert!(!c.producer_waits_for_space());
        let guard = Duration::from_secs(60);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(p.wait_for_space(8, guard), Ok(Wait::Ready));
                assert!(write(&mut p, &[9; 8]));
                p.publish();
            });
            assert_eq!(c.wait_for_data_or(guard, true, || false), Ok(Wait::Ready));
            assert!(c.producer_waits_for_space());
            c.release().unwrap();
        });
        assert_eq!(read(&mut c), Some(vec![9; 8]));
    }

    #[test]
    fn a_nudge_from_another_thread_wakes_a_consumer_waiting_for_its_condition() {
        let (_ring, _p, mut c) = pair(64);
        let nudger = c.nudger();
        let flag = std::sync::atomic::AtomicBool::new(false);
        let guard = Duration::from_secs(60);
        std::thread::scope(|s| {
            s.spawn(|| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                nudger.nudge();
            });
            assert_eq!(
                c.wait_for_data_or(guard, false, || flag
                    .load(std::sync::atomic::Ordering::SeqCst)),
                Ok(Wait::Ready)
            );
        });
        assert_eq!(
            c.wait_for_data_or(Duration::from_millis(1), true, || false),
            Ok(Wait::TimedOut),
            "no data, and the producer does not wait for space"
        );
    }

    // ---- corruption: every value read from the ring is checked ----

    #[test]
    fn corrupt_header_fields_are_refused_on_attach() {
        type Poke = fn(&Header);
        let cases: [(Poke, &str); 8] = [
            (
                |h| h.id.magic.store(0xdead_beef, Ordering::Relaxed),
                "magic",
            ),
            (|h| h.id.version.store(99, Ordering::Relaxed), "version"),
            (
                |h| h.id.header_size.store(64, Ordering::Relaxed),
                "header_size",
            ),
            (
                |h| h.id.capacity.store(1 << 20, Ordering::Relaxed),
                "capacity",
            ),
            (
                |h| h.id.closed.store(7, Ordering::Relaxed),
                "closed flag is 7",
            ),
            (|h| h.head.store(12, Ordering::Relaxed), "multiple of 8"),
            (
                |h| {
                    h.head.store(8, Ordering::Relaxed);
                    h.tail.store(16, Ordering::Relaxed)
                },
                "head 8 and tail 16",
            ),
            (
                |h| h.head.store(64 + 8, Ordering::Relaxed),
                "head 72 and tail 0",
            ),
        ];
        for (poke, needle) in cases {
            let ring = HeapRing::new(64).unwrap();
            poke(ring.header());
            assert_corrupt(Producer::new(Arc::clone(&ring)), needle);
            assert_corrupt(Consumer::new(Arc::clone(&ring)), needle);
        }
    }

    #[test]
    fn corrupt_head_behind_tail() {
        let (ring, mut p, mut c) = pair(128);
        advance(&mut p, &mut c, 32);
        ring.header().head.store(16, Ordering::Relaxed);
        assert_corrupt(
            c.try_read(|_| ()),
            "head 16 is behind the consumer's tail 32",
        );
        assert_corrupt(c.wait_for_data(Duration::from_secs(3600)), "head 16");
    }

    #[test]
    fn corrupt_head_more_than_capacity_ahead() {
        let (ring, _p, mut c) = pair(128);
        ring.header().head.store(136, Ordering::Relaxed);
        assert_corrupt(
            c.try_read(|_| ()),
            "head 136 is more than the capacity (128) ahead of the released tail 0",
        );
    }

    #[test]
    fn corrupt_head_misaligned_or_going_backwards() {
        let (ring, mut p, mut c) = pair(128);
        ring.header().head.store(20, Ordering::Relaxed);
        assert_corrupt(c.try_read(|_| ()), "head 20 is not a multiple of 8");
        ring.header().head.store(0, Ordering::Relaxed);
        assert!(write(&mut p, &[1; 8]));
        assert!(write(&mut p, &[2; 8]));
        p.close();
        assert!(read(&mut c).is_some());
        ring.header().head.store(24, Ordering::Relaxed);
        assert_corrupt(c.is_closed(), "head went backwards from 32 to 24");
    }

    #[test]
    fn corrupt_tail_beyond_head_backwards_or_misaligned() {
        let (ring, mut p, mut c) = pair(64);
        for _ in 0..4 {
            assert!(write(&mut p, &[0; 8]));
        }
        p.publish();
        ring.header().tail.store(72, Ordering::Relaxed);
        assert_corrupt(
            p.try_write(8, |_| ()),
            "tail 72 is beyond the published head 64",
        );
        ring.header().tail.store(12, Ordering::Relaxed);
        assert_corrupt(p.try_write(8, |_| ()), "tail 12 is not a multiple of 8");
        ring.header().tail.store(0, Ordering::Relaxed); // (the consumer checks it too, below)
        assert!(read(&mut c).is_some());
        c.release().unwrap();
        assert!(write(&mut p, &[0; 8]), "tail 16 read and cached");
        p.publish();
        ring.header().tail.store(8, Ordering::Relaxed);
        assert_corrupt(
            p.wait_for_space(8, Duration::from_secs(3600)),
            "tail went backwards from 16 to 8",
        );
    }

    #[test]
    fn a_tail_written_by_anyone_but_the_consumer_is_corrupt_for_the_consumer_at_once() {
        // The producer reads `tail` only when the ring looks full, and the consumer's next
        // release would overwrite a bad value: the consumer, which alone writes `tail`, checks
        // it whenever it looks for data or releases.
        let (ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        assert!(read(&mut c).is_some());
        ring.header()
            .tail
            .store(0x7ffe_0199_4237_13ff, Ordering::Relaxed);
        assert_corrupt(
            c.try_read(|_| ()),
            "tail 9222810844653884415 is not the position 0 this consumer released",
        );
        assert_corrupt(c.release(), "tail 9222810844653884415");
        assert_corrupt(c.wait_for_data(Duration::from_secs(3600)), "tail");
        ring.header().tail.store(0, Ordering::Relaxed);
        c.release().unwrap();
        ring.header().tail.store(8, Ordering::Relaxed);
        assert_corrupt(
            c.release_to(16),
            "tail 8 is not the position 16 this consumer released",
        );
        // The producer's watcher, waiting for space, refuses a misaligned one too.
        ring.header().tail.store(12, Ordering::Relaxed);
        assert_corrupt(
            p.space_waiter()
                .wait_for_tail(1000, Duration::from_secs(3600), || false),
            "tail 12 is not a multiple of 8",
        );
    }

    #[test]
    fn corrupt_frame_len_beyond_published_head() {
        let (ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        set_len(&ring, 0, 40);
        assert_corrupt(
            c.try_read(|_| ()),
            "frame length 40 at position 0 runs past the published head 16",
        );
    }

    #[test]
    fn corrupt_frame_len_beyond_data_area() {
        let (ring, mut p, mut c) = pair(128);
        advance(&mut p, &mut c, 96);
        assert!(write(&mut p, &[1; 24])); // offset 96..128
        assert!(write(&mut p, &[2; 24])); // offset 0..32
        p.publish();
        set_len(&ring, 96, 40);
        assert_corrupt(
            c.try_read(|_| ()),
            "frame length 40 at offset 96 runs past the end of the data area (128 bytes)",
        );
    }

    #[test]
    fn corrupt_frame_len_above_the_largest_frame() {
        let (ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        set_len(&ring, 0, 1 << 30);
        assert_corrupt(
            c.try_read(|_| ()),
            "frame length 1073741824 at offset 0 exceeds the largest frame (56 bytes)",
        );
    }

    #[test]
    fn corrupt_wrap_marker_where_the_frame_fits() {
        let (ring, mut p, mut c) = pair(128);
        advance(&mut p, &mut c, 96);
        for i in 0..3 {
            assert!(write(&mut p, &[i; 8])); // offsets 96, 112, 0
        }
        p.publish();
        set_len(&ring, 96, WRAP);
        assert_corrupt(
            c.try_read(|_| ()),
            "wrap marker at offset 96 although the next frame (16 bytes) fits there",
        );
        set_len(&ring, 0, WRAP);
        assert_corrupt(
            c.try_read(|_| ()),
            "two wrap markers in a row (offsets 96 and 0)",
        );
    }

    #[test]
    fn corrupt_wrap_marker_without_a_frame_after_it() {
        let (ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        set_len(&ring, 0, WRAP);
        assert_corrupt(
            c.try_read(|_| ()),
            "wrap marker at offset 0 (position 0) is not followed by a published frame (head 16)",
        );
    }

    #[test]
    fn corrupt_closed_flag() {
        let (ring, _p, mut c) = pair(64);
        ring.header().id.closed.store(3, Ordering::Relaxed);
        assert_corrupt(c.is_closed(), "closed flag is 3");
        assert_corrupt(
            c.wait_for_data(Duration::from_secs(3600)),
            "closed flag is 3",
        );
    }

    /// A producer's space waiter, asleep for room that a failed reader will never make, wakes
    /// when the reader marks the ring ([`fail_consumer`]) and says so, also on later waits.
    #[test]
    fn a_failed_consumer_wakes_the_producers_space_waiter() {
        let (ring, mut p, _c) = pair(128);
        while write(&mut p, &[1; 8]) {}
        p.publish();
        let waiter = p.space_waiter();
        assert!(!waiter.reader_failed());
        let marker = std::thread::spawn({
            let ring = Arc::clone(&ring);
            move || {
                std::thread::sleep(Duration::from_millis(50));
                fail_consumer(&ring);
            }
        });
        let woke = waiter.wait_for_tail(1 << 20, Duration::from_secs(3600), || false);
        marker.join().unwrap();
        assert_eq!(woke, Ok(Wait::Ready));
        assert!(waiter.reader_failed());
        assert_eq!(
            waiter.wait_for_progress(0, 0, Duration::from_secs(3600), || false),
            Ok(Wait::Ready)
        );
    }

    #[test]
    fn a_failed_producer_is_an_error_for_the_consumer_never_an_end_of_stream() {
        let (ring, mut p, mut c) = pair(128);
        assert!(write(&mut p, &[1; 8]));
        p.publish();
        fail_producer(&ring);
        // The producer's own close afterwards (its host ending) does not hide the failure.
        p.close();
        let failed = RingError::WriterFailed {
            pid: std::process::id(),
        };
        assert_eq!(
            c.is_closed(),
            Err(failed.clone()),
            "even with a frame unread"
        );
        assert_eq!(
            c.wait_for_data(Duration::from_secs(3600)),
            Ok(Wait::Ready),
            "a waiting consumer is not kept waiting"
        );
        assert_eq!(c.writer_failed(), Err(failed));
        assert_eq!(
            Producer::take_over(Arc::clone(&ring), |_| false).unwrap_err(),
            RingError::Closed,
            "no producer takes a failed ring over"
        );
        // A stream that ended cleanly stays so: the mark is not set over it.
        let (ring, mut p, mut c) = pair(64);
        p.close();
        fail_producer(&ring);
        assert_eq!(c.is_closed(), Ok(true));
    }

    #[test]
    fn random_garbage_is_an_error_or_plain_bytes_never_a_panic() {
        let mut rng = StdRng::seed_from_u64(0xbad);
        let mut corrupt_seen = 0;
        for _ in 0..3000 {
            let (ring, mut p, mut c) = pair(128);
            for _ in 0..rng.random_range(0..12) {
                let len = rng.random_range(0..=56);
                let _ = p.try_write(len, |b| b.fill(0xaa));
                if rng.random() {
                    p.publish();
                }
                if rng.random() {
                    let _ = c.try_read(|_| ());
                    let _ = c.release();
                }
            }
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..5) {
                    0 => ring
                        .header()
                        .head
                        .store(rng.random_range(0..400), Ordering::Relaxed),
                    1 => ring
                        .header()
                        .tail
                        .store(rng.random_range(0..400), Ordering::Relaxed),
                    2 => ring
                        .header()
                        .id
                        .closed
                        .store(rng.random_range(0..3), Ordering::Relaxed),
                    3 => set_len(&ring, rng.random_range(0..16) * 8, rng.random_range(0..130)),
                    _ => set_len(&ring, rng.random_range(0..16) * 8, WRAP),
                }
            }
            let mut results = Vec::new();
            for _ in 0..20 {
                results.push(c.try_read(|b| assert!(b.len() <= 56)).map(|_| ()));
                results.push(c.release());
                results.push(c.is_closed().map(|_| ()));
                results.push(c.wait_for_data(Duration::ZERO).map(|_| ()));
                results.push(p.try_write(rng.random_range(0..=56), |_| ()).map(|_| ()));
                p.publish();
                results.push(p.wait_for_space(8, Duration::ZERO).map(|_| ()));
            }
            for r in results {
                match r {
                    // A closed flag of 2 is a failed producer's mark, a valid value.
                    Ok(()) | Err(RingError::Closed) | Err(RingError::WriterFailed { .. }) => {}
                    Err(RingError::Corrupt { .. }) => corrupt_seen += 1,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
        assert!(
            corrupt_seen > 1000,
            "only {corrupt_seen} corruptions detected"
        );
    }
}
