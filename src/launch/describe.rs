//! How an application binary describes itself to the launcher.
//!
//! Started with `IOTSTREAM_DESCRIBE` set (see [`describe_request`](super::describe_request)),
//! a program builds its graph, applies the deployment it was given, writes a [`Described`] as
//! JSON to the named file and exits, without running anything. The launcher reads that file
//! (`launcher::describe`) to learn the graph it is about to run.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::graph::Graph;
use crate::info::GraphInfo;

/// What an application binary reports when asked to describe itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Described {
    /// The graph, as the deployment places it.
    Graph {
        info: GraphInfo,
        /// The graph's fingerprint, in hex: every process must build the same graph.
        fingerprint: String,
    },
    /// The deployment does not fit the graph, or the graph is not well formed.
    Error(DescribedError),
}

/// Why an application could not describe a runnable graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DescribedError {
    /// The deployment does not fit the graph: one line per problem.
    Deployment { problems: Vec<String> },
    /// The graph is not well formed.
    Graph { app: String, problems: Vec<String> },
    /// Anything else.
    Other { message: String },
}

/// Called by [`Graph::start`] in describe mode: writes the description (or `checked`'s error)
/// to `path` and ends the process.
pub(crate) fn write_description(graph: &Graph, checked: Result<(), Error>, path: &Path) -> ! {
    let described = match checked {
        Ok(()) => Described::Graph {
            info: graph.info(),
            fingerprint: format!("{:x}", graph.fingerprint()),
        },
        Err(Error::Deployment { problems }) => {
            Described::Error(DescribedError::Deployment { problems })
        }
        Err(Error::Graph { app, problems }) => {
            Described::Error(DescribedError::Graph { app, problems })
        }
        Err(e) => Described::Error(DescribedError::Other {
            message: e.to_string(),
        }),
    };
    let written = serde_json::to_vec(&described)
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(path, bytes).map_err(|e| e.to_string()));
    let _ = std::io::stdout().flush();
    match written {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!(
                "iotstream: cannot write the graph's description to {}: {e}",
                path.display()
            );
            std::process::exit(3)
        }
    }
}
