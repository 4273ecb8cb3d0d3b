//! Logging: iotstream reports through [`tracing`]; this installs a subscriber that prints it.
//!
//! Call [`init_logging`] first thing in `main` to see the runtime's messages (a drain starting,
//! a stall, a ring's peer dying) and your agents' own `tracing` events on standard error,
//! filtered by the `RUST_LOG` environment variable (`RUST_LOG=debug`,
//! `RUST_LOG=iotstream=info,my_app=debug`; default `warn`). Under the `iotstream` launcher a
//! process that installed no subscriber gets this one, so `RUST_LOG` works there without code,
//! and each line arrives prefixed with its process's name.
//!
//! ```
//! iotstream::init_logging();
//! tracing::info!("starting");
//! ```

/// Installs a `tracing` subscriber writing to standard error, filtered by `RUST_LOG` (default
/// `warn`). Does nothing if a subscriber is already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
