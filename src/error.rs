//! Errors: what went wrong, and where.
//!
//! Every error names the place it comes from: the agent (and, for graph mistakes, the port or
//! stream) so that a user reading one line knows where to look.

use std::fmt;

/// The error type an agent's step (or a source, or a sink callback) returns.
///
/// Any `std::error::Error + Send + Sync` converts into it with `?`, and so does a `String` or
/// `&str`, so agent code can return `Err("sensor offline".into())`.
pub type AgentError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why building or running an application failed.
///
/// Its `Debug` output is its message, as `Display` writes it, so that a
/// `fn main() -> Result<(), iotstream::Error>` that returns one prints a sentence
/// (`Error: agent 'detector' failed: …`), not a struct; `{:#?}` shows the variant and its
/// fields.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The graph is not well formed: every problem found is listed, one per line.
    Graph {
        /// The application's name.
        app: String,
        /// One message per problem, each naming the agent, port or stream at fault.
        problems: Vec<String>,
    },
    /// An agent's step returned an error.
    Agent {
        /// The agent's name.
        agent: String,
        /// The error's message.
        cause: String,
    },
    /// An agent's step panicked.
    Panic {
        /// The agent's name.
        agent: String,
        /// The panic's message.
        message: String,
    },
    /// The application stopped making progress while data was still waiting: a reader holds
    /// a full input it cannot consume (its connection's capacity is too small for what the
    /// agent needs), or a feedback loop filled its links.
    Stalled {
        /// What is stuck, naming the streams and agents.
        detail: String,
    },
    /// A process of the application failed or was killed.
    Process {
        /// The process's name.
        process: String,
        /// How it ended (exit status or signal) and what it last wrote to standard error.
        detail: String,
    },
    /// A deployment file is wrong, or does not fit the application's graph.
    Deployment {
        /// One line per problem: `file:line:column: message`.
        problems: Vec<String>,
    },
    /// The runtime itself failed (a thread could not start, a peer broke the protocol).
    Runtime {
        /// What failed.
        detail: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Graph { app, problems } => {
                write!(f, "application '{app}' is not well formed:")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            Error::Agent { agent, cause } => write!(f, "agent '{agent}' failed: {cause}"),
            Error::Panic { agent, message } => write!(f, "agent '{agent}' panicked: {message}"),
            Error::Stalled { detail } => write!(f, "application stalled: {detail}"),
            Error::Process { process, detail } => write!(f, "process '{process}' {detail}"),
            Error::Deployment { problems } => write!(f, "{}", problems.join("\n")),
            Error::Runtime { detail } => write!(f, "runtime error: {detail}"),
        }
    }
}

/// The readable message (as `Display`); with `{:#?}`, the variant and its fields.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        match self {
            Error::Graph { app, problems } => f
                .debug_struct("Graph")
                .field("app", app)
                .field("problems", problems)
                .finish(),
            Error::Agent { agent, cause } => f
                .debug_struct("Agent")
                .field("agent", agent)
                .field("cause", cause)
                .finish(),
            Error::Panic { agent, message } => f
                .debug_struct("Panic")
                .field("agent", agent)
                .field("message", message)
                .finish(),
            Error::Stalled { detail } => f.debug_struct("Stalled").field("detail", detail).finish(),
            Error::Process { process, detail } => f
                .debug_struct("Process")
                .field("process", process)
                .field("detail", detail)
                .finish(),
            Error::Deployment { problems } => f
                .debug_struct("Deployment")
                .field("problems", problems)
                .finish(),
            Error::Runtime { detail } => f.debug_struct("Runtime").field("detail", detail).finish(),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The name of the process this error is about, if it is about one.
    pub fn process(&self) -> Option<&str> {
        match self {
            Error::Process { process, .. } => Some(process),
            _ => None,
        }
    }

    /// The name of the agent this error is about, if it is about one.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Error::Agent { agent, .. } | Error::Panic { agent, .. } => Some(agent),
            _ => None,
        }
    }
}

/// Turns a panic payload into a readable message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn debug_is_the_readable_message_and_alternate_debug_the_fields() {
        let errors = [
            Error::Agent {
                agent: "detector".into(),
                cause: "sensor offline".into(),
            },
            Error::Graph {
                app: "quake".into(),
                problems: vec!["a".into(), "b".into()],
            },
            Error::Runtime { detail: "x".into() },
        ];
        for e in &errors {
            assert_eq!(format!("{e:?}"), format!("{e}"));
            // What `fn main() -> Result<(), Error>` prints.
            assert!(!format!("{e:?}").contains('{'), "{e:?}");
        }
        assert_eq!(
            format!("{:?}", errors[0]),
            "agent 'detector' failed: sensor offline"
        );
        assert_eq!(
            format!("{:#?}", errors[2]),
            "Runtime {\n    detail: \"x\",\n}"
        );
    }
}
