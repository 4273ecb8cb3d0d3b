//! Transports: how a batch of elements travels from the agent that writes a stream to an agent
//! that reads it, when the two are not in the same mailbox loop.
//!
//! - [`shm`]: between processes of one host, through a lock-free ring in POSIX shared memory.
//!
//! Agents never see their transport: the runtime picks one per connection from the placement
//! of the two agents.

pub(crate) mod shm;
