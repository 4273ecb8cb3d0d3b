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

// The runtime does not use this module yet (the lead wires it into the graph and the process
// launcher): until then most items are unused outside the tests.
#![allow(dead_code)]

pub(crate) mod ring;
pub(crate) mod segment;
pub(crate) mod sync;
