//! `iotstream`: starts, supervises and stops iotstream applications as a deployment file says.
//! See `iotstream --help` and docs/deployment.md.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use iotstream::launcher::{self, AppCommand, DeploymentFile, GraphFormat, RunOptions};

/// Exit code of the launcher's own errors: a bad deployment file, an application that does
/// not describe itself, a bad command line (clap uses 2 as well).
const USAGE_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "iotstream",
    version,
    about = "Start, supervise and stop iotstream applications: where agents run is configuration, not code.",
    long_about = "Start, supervise and stop iotstream applications.\n\n\
An iotstream application is a Rust binary that builds a Graph of agents and calls Graph::run. \
Run directly, it runs its agents as placed in its code. Run through `iotstream run`, the same \
binary runs as a deployment file places it: agents moved to other processes, connections \
resized, processes pinned to CPUs and restarted when they fail. No recompiling.\n\n\
The launcher asks the binary for its graph (it starts it with IOTSTREAM_DESCRIBE set: the \
binary writes its graph and exits before running anything), so it never guesses.",
    after_help = "Examples:\n  \
iotstream graph target/release/examples/quake_detector\n  \
iotstream check deploy.toml --app target/release/examples/quake_detector\n  \
iotstream run target/release/examples/quake_detector --deploy deploy.toml -- --minutes 5\n  \
iotstream clean\n\n\
The deployment file format, supervision and restart semantics: docs/deployment.md.\n\
Logs: each process's lines are prefixed with [process]; set RUST_LOG (e.g. RUST_LOG=debug) for \
the applications' tracing output."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an application as the deployment file says, and supervise it until it ends.
    #[command(
        long_about = "Run an application as the deployment file says (as declared in its code \
without one), and supervise it until it ends.\n\n\
Every process of this host is started and reports ready before any data flows. A process that \
fails is restarted if its restart policy says so (restart = \"on-failure\"); it resumes from the \
data waiting in its input rings. Otherwise the application stops and `iotstream run` exits with \
that process's status (128 + N for a signal N).\n\n\
Ctrl-C or SIGTERM drains the application: sources stop, data in flight is processed, sinks \
flush, every process exits 0. Processes still running after the drain timeout are killed and \
the exit is non-zero. A second Ctrl-C stops everything at once.",
        after_help = "Examples:\n  \
iotstream run ./my_app\n  \
iotstream run ./my_app --deploy deploy.toml\n  \
iotstream run ./my_app --deploy deploy.toml -- --input /var/log/sensor.log\n  \
iotstream run ./my_app --deploy cluster.toml --host pi-kitchen"
    )]
    Run {
        /// The application binary (a path, or a name found in PATH).
        app: PathBuf,
        /// The deployment file (TOML). Without one, the application runs as its code places it.
        #[arg(long, short = 'd', value_name = "FILE")]
        deploy: Option<PathBuf>,
        /// The deployment's host this launcher runs (default: the host named `local`, or the
        /// only host).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Arguments for the application, after `--`.
        #[arg(last = true, value_name = "APP_ARGS")]
        args: Vec<OsString>,
    },
    /// Print an application's resolved graph: agents, streams, processes, hosts, transports.
    #[command(after_help = "Examples:\n  \
iotstream graph ./my_app\n  \
iotstream graph ./my_app --deploy deploy.toml --format json\n  \
iotstream graph ./my_app --format dot | dot -Tsvg > graph.svg")]
    Graph {
        /// The application binary.
        app: PathBuf,
        /// Show the graph as this deployment file places it.
        #[arg(long, short = 'd', value_name = "FILE")]
        deploy: Option<PathBuf>,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Arguments for the application (some applications build their graph from them).
        #[arg(last = true, value_name = "APP_ARGS")]
        args: Vec<OsString>,
    },
    /// Check a deployment file against an application's graph, without running anything.
    #[command(
        long_about = "Check a deployment file against an application's graph, without running \
anything. Every problem is reported at once, as FILE:LINE:COLUMN: message, naming the agent, \
process, host or stream at fault. Exits 0 if the file is good, 2 if not.",
        after_help = "Example:\n  iotstream check deploy.toml --app ./my_app"
    )]
    Check {
        /// The deployment file (TOML).
        file: PathBuf,
        /// The application binary.
        #[arg(long, value_name = "APP")]
        app: PathBuf,
        /// The deployment's host this machine is, whose processes' CPUs are checked (default:
        /// the host named `local`, or the only host; with several hosts and none of them
        /// `local`, CPUs are not checked without it).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Arguments for the application.
        #[arg(last = true, value_name = "APP_ARGS")]
        args: Vec<OsString>,
    },
    /// Remove shared-memory rings left behind by iotstream applications whose owner died.
    #[command(
        long_about = "Remove the shared-memory rings (/dev/shm/iotstream.*) of iotstream \
applications whose owner process (the launcher or starter that created them) is provably dead \
(the run's liveness lock, /dev/shm/iotstream.*.lock, is free), and print each one removed. \
Rings of running applications are never touched, even from another PID namespace; rings \
without a liveness lock (from an older iotstream) are left and listed. Runs clean up after \
themselves; this is for what a SIGKILL or a power cut left behind."
    )]
    Clean,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// For programs: the graph as JSON.
    Json,
    /// Graphviz dot: hosts and processes as clusters.
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            app,
            deploy,
            host,
            args,
        } => {
            let deployment = match deploy.as_deref().map(DeploymentFile::load).transpose() {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            let app = AppCommand { program: app, args };
            match launcher::run(&app, deployment.as_ref(), &RunOptions { host }) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => fail(&e),
            }
        }
        Cmd::Graph {
            app,
            deploy,
            format,
            args,
        } => {
            let deployment = match deploy.as_deref().map(DeploymentFile::load).transpose() {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            let app = AppCommand { program: app, args };
            match launcher::describe(&app, deployment.as_ref()) {
                Ok((info, _)) => {
                    let format = match format {
                        Format::Text => GraphFormat::Text,
                        Format::Json => GraphFormat::Json,
                        Format::Dot => GraphFormat::Dot,
                    };
                    print!("{}", launcher::render(&info, format));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Check {
            file,
            app,
            host,
            args,
        } => {
            let deployment = match DeploymentFile::load(&file) {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            let app = AppCommand { program: app, args };
            match launcher::check(&app, &deployment, host.as_deref()) {
                Ok(info) => {
                    println!("{}: good: {}", deployment.name, launcher::summary(&info));
                    if deployment.deployment.network.insecure
                        && info.edges.iter().any(|e| e.transport == "tcp")
                    {
                        println!(
                            "warning: links between hosts run without authentication \
                             (insecure = true in [network]); see docs/security.md"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Cmd::Clean => {
            let cleaned = launcher::clean();
            if cleaned.removed.is_empty() {
                println!(
                    "nothing to remove: no shared-memory ring of a dead iotstream application"
                );
            }
            for name in &cleaned.removed {
                println!("removed /dev/shm{name}");
            }
            for (name, why) in &cleaned.left {
                println!("left /dev/shm{name}: {why}");
            }
            ExitCode::SUCCESS
        }
    }
}

fn fail(e: &iotstream::Error) -> ExitCode {
    match e {
        iotstream::Error::Deployment { .. } => eprintln!("{e}"),
        _ => eprintln!("iotstream: error: {e}"),
    }
    ExitCode::from(USAGE_ERROR)
}
