//! Transports: how a connection moves batches, behind the one private link interface.
//!
//! In-process links live in `host.rs` (envelopes to the reader's mailbox). Shared-memory
//! connections are wired here: [`create_segments`] (the starter makes every ring before any
//! process starts) and [`ShmTransport`] (each process opens the ends of the rings it uses).

use std::sync::Arc;

use crate::error::Error;
use crate::graph::{Graph, LinkSpec, Policy, ShmWiring};
use crate::host::{Mailbox, OutSlot};
use crate::launch::{RunId, Segments};
use crate::metrics::LinkCounters;
use crate::runtime::RunHandle;

pub(crate) mod shm;

/// Creates the shared-memory ring of every shared-memory connection of `graph`.
pub(crate) fn create_segments(
    graph: &Graph,
    run: &RunId,
    segments: &Segments,
) -> Result<(), Error> {
    let _ = (graph, run, segments);
    let needs = graph
        .edges
        .iter()
        .any(|e| graph.resolve(e) == crate::graph::Resolved::SharedMemory);
    if needs {
        return Err(Error::Runtime {
            detail: "shared-memory connections are not available yet".into(),
        });
    }
    Ok(())
}

/// Opens the ends of shared-memory connections in one process.
pub(crate) struct ShmTransport {
    app: String,
    run: RunId,
    handle: RunHandle,
}

impl ShmTransport {
    pub fn new(app: String, run: RunId, handle: RunHandle) -> Self {
        ShmTransport { app, run, handle }
    }
}

impl ShmWiring for ShmTransport {
    fn writer(
        &self,
        edge: usize,
        _out: &mut dyn OutSlot,
        _spec: LinkSpec,
        _wake: Arc<dyn Mailbox>,
        _output: u32,
        _link: u32,
    ) -> Result<(), Error> {
        let _ = (&self.app, &self.run, &self.handle);
        Err(Error::Runtime {
            detail: format!("edge {edge}: shared-memory connections are not available yet"),
        })
    }

    fn reader(
        &self,
        edge: usize,
        _decl: &crate::agent::PortDecl,
        _target: Arc<dyn Mailbox>,
        _input: u32,
        _capacity: usize,
        _policy: Policy,
        _counters: Arc<LinkCounters>,
        _label: String,
    ) -> Result<Arc<dyn Mailbox>, Error> {
        Err(Error::Runtime {
            detail: format!("edge {edge}: shared-memory connections are not available yet"),
        })
    }
}
