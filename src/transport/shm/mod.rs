//! Shared memory: a single-producer single-consumer ring of frames in a POSIX shared-memory
//! object, for connections between two processes on one host.
//!
//! - [`ring`]: the ring — layout, publication protocol, the futex wake-up handshake, and the
//!   validation of everything read from the peer. Generic over its memory: heap (tests), loom
//!   (model tests), shared memory (real use).
//! - [`segment`]: the shared-memory object — create, open and check, unlink, names, listing.
//! - [`sync`]: atomics and the futex, real or modelled by loom.
//!
//! ```text
//! process A                                   process B
//! Producer<Segment> --[ /dev/shm/iotstream.<app>.<run>.<edge> ]--> Consumer<Segment>
//!   try_write × n, publish                      try_read × n, release
//!   wait_for_space (futex)                      wait_for_data (futex)
//! ```
//!
//! Linux only (the futex system call, `/dev/shm`).
//!
//! # Tests
//!
//! - `ring.rs`: the ring on the heap — frames, wrap-around (thousands of laps with random
//!   sizes), full and empty, close, roles taken over from dead processes, partial release, the
//!   producer's nudge, a corruption test for every field read from the peer, and random garbage
//!   (an error or plain bytes, never a panic).
//! - `segment.rs`: names, create/open errors, and 10 M u64 through a 4 KiB segment between two
//!   threads and between two processes (`fork`). Every test object is unlinked by a guard, also
//!   when the test fails.
//! - `loom/tests/loom_ring.rs` (a crate of its own, beside the main one): loom models of the
//!   protocol, including the sleep/wake handshake on both sides:
//!   `cargo test --release --manifest-path loom/Cargo.toml`.

// Some items serve only the unit tests and the loom models (the heap-backed ring, the blocking
// producer wait, segment listing and unlinking by name); the runtime uses the rest.
#![allow(dead_code)]

pub(crate) mod ring;
pub(crate) mod segment;
pub(crate) mod sync;
