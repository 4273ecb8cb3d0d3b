//! `iotstream`: starts, supervises and stops iotstream applications as a deployment file says.
//! See `iotstream --help` and docs/deployment.md.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use iotstream::bench;
use iotstream::launcher::{self, AppCommand, DeploymentFile, GraphFormat, RunOptions};

/// Exit code of the launcher's own errors: a bad deployment file, an application that does
/// not describe itself, a bad command line (clap uses 2 as well).
const USAGE_ERROR: u8 = 2;

/// Exit code of an operating command (`list`, `stop`, `logs`, `restart`) that failed: no such
/// application or process, permission denied, the launcher refused.
const COMMAND_FAILED: u8 = 1;

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
iotstream list\n  \
iotstream logs quake_detector detector --follow\n  \
iotstream restart quake_detector trigger\n  \
iotstream stop quake_detector\n  \
iotstream clean\n  \
iotstream bench --json bench.json --plot bench.svg\n\n\
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
Ctrl-C, SIGTERM or SIGHUP (the terminal closed; not under nohup) drains the application: \
sources stop, data in flight is processed, sinks flush, every process exits 0. Processes still \
running after the drain timeout are killed and the exit is non-zero. A second signal stops \
everything at once (exit 128 + the signal).\n\n\
While it runs, `iotstream list`, `stop`, `logs` and `restart` reach it through a Unix socket in \
your runtime folder ($XDG_RUNTIME_DIR/iotstream, or /tmp/iotstream-UID), private to you. Every \
process reports its counters to the launcher every --metrics-interval.",
        after_help = "Examples:\n  \
iotstream run ./my_app\n  \
iotstream run ./my_app --deploy deploy.toml\n  \
iotstream run ./my_app --deploy deploy.toml -- --input /var/log/sensor.log\n  \
iotstream run ./my_app --deploy cluster.toml --host pi-kitchen\n  \
iotstream run ./my_app --metrics-interval 250ms --log-lines 5000"
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
        /// How often every process reports its counters to the launcher: `500ms`, `2s`, or
        /// `0` for never.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
        metrics_interval: Duration,
        /// How many output lines the launcher keeps per process for `iotstream logs`.
        #[arg(long, value_name = "N", default_value_t = launcher::board::DEFAULT_LOG_LINES)]
        log_lines: usize,
        /// Serve the metrics at this address (`127.0.0.1:9464`, or a port alone for 127.0.0.1):
        /// Prometheus text on /metrics,
        /// JSON on /api/metrics and /api/graph. An address that is not loopback needs a
        /// deployment secret; clients send the token `iotstream view-token` prints as
        /// `Authorization: Bearer <token>`.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Serve the live view's web page at this address (`127.0.0.1:9465`; the same
        /// endpoints as --metrics too): the graph with each connection's rate, backlog and
        /// drops, updated every second. Same address rule as --metrics.
        #[arg(long, value_name = "ADDR")]
        ui: Option<String>,
        /// Arguments for the application, after `--`.
        #[arg(last = true, value_name = "APP_ARGS")]
        args: Vec<OsString>,
    },
    /// List the iotstream applications running on this host (yours).
    #[command(
        long_about = "List the iotstream applications you run on this host: each one's name, run \
id, processes (running/total), hosts, up time and status. Only your own: they are found in your \
runtime folder ($XDG_RUNTIME_DIR/iotstream, or /tmp/iotstream-UID), which no other user can \
read. Sockets left by launchers that were killed are removed.",
        after_help = "Example:\n  iotstream list"
    )]
    List,
    /// Drain a running application gracefully (as Ctrl-C in its launcher would), or kill it.
    #[command(
        long_about = "Drain a running application gracefully, exactly as a Ctrl-C in its launcher \
would: sources stop, data in flight is processed, sinks flush, every process exits. Waits until \
the launcher has exited, printing what it said meanwhile. Exits 0 once it has (1 if the drain \
failed). With --now, every process is killed at once, as a second Ctrl-C would.",
        after_help = "Examples:\n  \
iotstream stop quake_detector\n  \
iotstream stop quake_detector --now\n  \
iotstream stop quake_detector --run 4242-18c3f2a9d"
    )]
    Stop {
        /// The application's name, as given to Graph::new (see `iotstream list`).
        app: String,
        /// Which run, when several runs of the application are running.
        #[arg(long, value_name = "ID")]
        run: Option<String>,
        /// Kill every process at once instead of draining.
        #[arg(long)]
        now: bool,
    },
    /// Print the last output lines of a running application's processes, and follow new ones.
    #[command(
        long_about = "Print the last output lines the launcher kept (run --log-lines, default \
1000 per process): of every process, interleaved in the order they came and prefixed with \
[process] as the launcher prints them (the launcher's own lines as [iotstream]), or of one \
process. With --follow, keep printing new lines until the application ends (or Ctrl-C). Lines \
a process wrote on standard error go to standard error.",
        after_help = "Examples:\n  \
iotstream logs quake_detector\n  \
iotstream logs quake_detector detector\n  \
iotstream logs quake_detector --follow"
    )]
    Logs {
        /// The application's name, as given to Graph::new.
        app: String,
        /// Only this process's lines.
        process: Option<String>,
        /// Keep printing new lines until the application ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Which run, when several runs of the application are running.
        #[arg(long, value_name = "ID")]
        run: Option<String>,
    },
    /// The live view of a running application in the terminal: connections, agents, processes.
    #[command(
        long_about = "The live view of a running application in the terminal, updated every \
second: each connection's rate, backlog (elements in flight / capacity), drops and the share of \
time its writer was blocked; each agent's busy share; each process's status, CPU, memory and \
restarts. Problems (a blocked writer, a full backlog, drops, a failed process) are coloured and \
listed. Keys: r sort by rate, b by backlog, n by name; up/down select a connection; q quits.",
        after_help = "Example:\n  iotstream top quake_detector"
    )]
    Top {
        /// The application's name, as given to Graph::new.
        app: String,
        /// Which run, when several runs of the application are running.
        #[arg(long, value_name = "ID")]
        run: Option<String>,
    },
    /// Kill one process of a running application and start it again.
    #[command(
        long_about = "Kill one process of a running application and start it again, as a restart \
after a failure: it resumes from the data waiting in its input rings, and its peers wait for it \
meanwhile. Done whatever its restart policy (\"never\" included), and not counted against \
max_restarts. Returns once the process runs again (it reported ready).",
        after_help = "Example:\n  iotstream restart quake_detector trigger"
    )]
    Restart {
        /// The application's name, as given to Graph::new.
        app: String,
        /// The process to restart.
        process: String,
        /// Which run, when several runs of the application are running.
        #[arg(long, value_name = "ID")]
        run: Option<String>,
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
    /// Print the bearer token the live view (--metrics, --ui) asks for off loopback.
    #[command(
        long_about = "Print the bearer token a launcher running this deployment asks for when it serves --metrics or --ui on an address that is not loopback: derived from the deployment's secret ([network] secret_file), never the secret itself, which proves the links' peers and is never sent. The token travels in clear over HTTP and only lets its bearer read the view. Clients send it as 'Authorization: Bearer <token>' (Prometheus: credentials_file), or the page as ?token=<token> in its address.",
        after_help = "Examples:
  iotstream view-token --deploy cluster.toml
  iotstream view-token --deploy cluster.toml > /etc/iotstream/view.token"
    )]
    ViewToken {
        /// The deployment file (TOML) whose [network] secret_file the token derives from.
        #[arg(long, short = 'd', value_name = "FILE")]
        deploy: PathBuf,
    },
    /// Measure what each way of running agents costs on this machine, against raw baselines.
    #[command(
        long_about = "Measure what each way of running agents costs on this machine, each figure \
beside a baseline measured in the same run.\n\n\
For every mode, element size and input pattern it runs source -> map -> sink for --duration \
(throughput: elements/s, bytes/s, CPU seconds of every process and thread) and a ping-pong pair \
for half as long (latency: half a round trip, p50/p99/p999; back to back, or paced at each \
--rate, a row per rate). Modes: thread (every agent on one \
thread), threads (each agent on a thread of its own), processes (the sink in a second process, \
over shared memory), tcp (map -> sink forced onto a TCP link on loopback), pool (one process, \
nothing placed: the worker pool, as a graph runs unless told otherwise), spin (as processes, \
the rings in low-latency mode: Connection::spin(Duration::MAX), the readers never sleep; asked for only, it keeps cores busy), \
broker (map -> sink through the NATS JetStream server --nats names). \
Patterns: batch (a \
Source handing over batches) and single (one InputSender::push per element). Baselines move the \
same bytes the same way: crossbeam channels (thread, threads), a raw shared-memory ring between \
two processes (processes, spin), a raw loopback TCP connection (tcp), a raw async-nats \
JetStream publisher and pull subscriber on the same server (broker, with --nats URL).\n\n\
The scaling mode runs shapes instead: a chain of --agents maps, one stream read by --readers \
sinks, a chain over --procs processes; it prints each point's time and how it grows.\n\n\
Every cell runs in a fresh process and checks that every element sent was delivered; a cell \
that fails (or runs --timeout past its duration) is a row with its error, and the command then \
exits 1, naming it; a flag value that cannot be used (a --json or --plot file that cannot be \
written, a --nats server that does not answer) exits 2 before anything runs. Ctrl-C (or \
SIGTERM) stops the bench: the cell running is ended and cleaned up after, the table shows \
the cells that ran, and the command exits 130 (143). The default run (5 modes x 2 sizes x 2 \
patterns, 0.5 s each, the short scaling points) takes about half a minute. See docs/benchmarks.md for how to read each ratio.",
        after_help = "Examples:\n  \
iotstream bench\n  \
iotstream bench --modes threads,processes --sizes 8,64,1024,65536 --duration 2 --json bench.json --plot bench.svg\n  \
iotstream bench --modes processes,spin --sizes 8 --patterns batch --rate 0,1000 --duration 4\n  \
iotstream bench --modes scaling --agents 1,10,100,1000,10000,100000 --readers 1,10,100,1000 --procs 1,2,4,8,16"
    )]
    Bench {
        /// Modes to measure, comma-separated: thread, threads, pool, processes, tcp, spin,
        /// broker (needs --nats), scaling.
        #[arg(long, value_name = "LIST", default_value = "thread,threads,pool,processes,tcp,scaling", value_parser = modes_arg)]
        modes: Modes,
        /// Element sizes in bytes, comma-separated, from 8, 64, 256, 1024, 4096, 65536.
        #[arg(long, value_name = "LIST", default_value = "8,1024", value_parser = sizes_arg, allow_negative_numbers = true)]
        sizes: Sizes,
        /// Input patterns, comma-separated: batch, single.
        #[arg(long, value_name = "LIST", default_value = "batch,single", value_parser = patterns_arg)]
        patterns: Patterns,
        /// Seconds each throughput run feeds (0.5, 2, 250ms); each latency run takes half.
        #[arg(long, value_name = "S", default_value = "0.5", value_parser = bench::parse_seconds, allow_negative_numbers = true)]
        duration: Duration,
        /// Pings per second of the latency runs, comma-separated, a row each (0: back to back;
        /// 1000: the next ping at the next millisecond tick, never before the pong is back).
        #[arg(long, value_name = "MSG/S", default_value = "0", value_parser = rates_arg, allow_negative_numbers = true)]
        rate: Rates,
        /// Also write the results as JSON to this file (`runs`, `scaling`, `settings`).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also draw throughput and latency per mode and size into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Scaling: lengths of the chain of maps, increasing (up to 100000).
        #[arg(long, value_name = "LIST", default_value = "1,10,100,1000", value_parser = agents_arg, allow_negative_numbers = true)]
        agents: Counts,
        /// Scaling: readers of one stream, increasing (up to 10000).
        #[arg(long, value_name = "LIST", default_value = "1,10,100", value_parser = readers_arg, allow_negative_numbers = true)]
        readers: Counts,
        /// Scaling: processes in a chain, increasing (up to 64).
        #[arg(long, value_name = "LIST", default_value = "1,2,4", value_parser = procs_arg, allow_negative_numbers = true)]
        procs: Counts,
        /// Seconds a cell may run past its duration before it is killed and reported failed.
        #[arg(long, value_name = "S", default_value = "60", value_parser = bench::parse_seconds, allow_negative_numbers = true)]
        timeout: Duration,
        /// A NATS server with JetStream (nats://host:4222): adds the broker mode (unless
        /// --modes is given), measured beside a raw async-nats publisher and subscriber on
        /// the same server.
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
    },
}

/// `--modes`: the modes, and whether `scaling` was named.
#[derive(Clone)]
struct Modes(Vec<bench::Mode>, bool);

fn modes_arg(text: &str) -> Result<Modes, String> {
    bench::parse_modes(text).map(|(m, s)| Modes(m, s))
}

/// `--sizes`.
#[derive(Clone)]
struct Sizes(Vec<usize>);

fn sizes_arg(text: &str) -> Result<Sizes, String> {
    bench::parse_sizes(text).map(Sizes)
}

/// `--patterns`.
#[derive(Clone)]
struct Patterns(Vec<bench::Pattern>);

fn patterns_arg(text: &str) -> Result<Patterns, String> {
    bench::parse_patterns(text).map(Patterns)
}

/// `--rate`.
#[derive(Clone)]
struct Rates(Vec<u32>);

fn rates_arg(text: &str) -> Result<Rates, String> {
    bench::parse_rates(text).map(Rates)
}

/// `--agents`, `--readers`, `--procs`.
#[derive(Clone)]
struct Counts(Vec<usize>);

fn agents_arg(text: &str) -> Result<Counts, String> {
    bench::parse_counts(text, 100_000).map(Counts)
}

fn readers_arg(text: &str) -> Result<Counts, String> {
    bench::parse_counts(text, 10_000).map(Counts)
}

fn procs_arg(text: &str) -> Result<Counts, String> {
    bench::parse_counts(text, 64).map(Counts)
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
    // A process `iotstream bench` started to run one cell (or one of that cell's processes):
    // its role is in the environment, not on the command line.
    if let Some(code) = bench::cell_from_env() {
        return code;
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            app,
            deploy,
            host,
            metrics_interval,
            log_lines,
            metrics,
            ui,
            args,
        } => {
            // The launcher's own components (the live view's servers) report through tracing:
            // warnings and errors on standard error (RUST_LOG changes the level).
            iotstream::init_logging();
            let deployment = match deploy.as_deref().map(DeploymentFile::load).transpose() {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            let app = AppCommand { program: app, args };
            let options = RunOptions {
                host,
                metrics_interval,
                log_lines,
                metrics,
                ui,
            };
            match launcher::run(&app, deployment.as_ref(), &options) {
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
        Cmd::List => list(),
        Cmd::Stop { app, run, now } => stop(&app, run.as_deref(), now),
        Cmd::Logs {
            app,
            process,
            follow,
            run,
        } => logs(&app, process.as_deref(), follow, run.as_deref()),
        Cmd::Restart { app, process, run } => restart(&app, &process, run.as_deref()),
        Cmd::Top { app, run } => top(&app, run.as_deref()),
        Cmd::Bench {
            modes,
            sizes,
            patterns,
            duration,
            rate,
            json,
            plot,
            agents,
            readers,
            procs,
            timeout,
            nats,
        } => {
            let mut modes = modes;
            let asked = std::env::args().any(|a| a == "--modes" || a.starts_with("--modes="));
            if nats.is_some() && !asked && !modes.0.contains(&bench::Mode::Broker) {
                modes.0.push(bench::Mode::Broker);
            }
            if modes.0.contains(&bench::Mode::Broker) && nats.is_none() {
                eprintln!("iotstream bench: error: the broker mode needs a NATS server: --nats nats://host:4222");
                return ExitCode::from(2);
            }
            // What can be checked before anything runs is: a typo costs nothing then.
            let mut unusable = Vec::new();
            if let Some(path) = &json {
                unusable.extend(bench::check_output("--json", path).err());
            }
            if let Some(path) = &plot {
                unusable.extend(bench::check_output("--plot", path).err());
                if !path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
                {
                    unusable.push(format!(
                        "--plot {}: the plot is drawn as SVG: name a file ending in .svg",
                        path.display()
                    ));
                }
                if modes.0.is_empty() {
                    unusable.push(
                        "--plot draws the throughput and latency runs, and --modes names none \
                         (the scaling points are in the table and in --json)"
                            .to_string(),
                    );
                }
            }
            if let Some(url) = nats
                .as_deref()
                .filter(|_| modes.0.contains(&bench::Mode::Broker))
            {
                unusable.extend(bench::check_nats(url).err());
            }
            if !unusable.is_empty() {
                for problem in unusable {
                    eprintln!("iotstream bench: error: {problem}");
                }
                return ExitCode::from(USAGE_ERROR);
            }
            let options = bench::Options {
                modes: modes.0,
                scaling: modes.1,
                sizes: sizes.0,
                patterns: patterns.0,
                duration,
                rates: rate.0,
                agents: agents.0,
                readers: readers.0,
                processes: procs.0,
                timeout,
                nats,
            };
            run_bench(&options, json.as_deref(), plot.as_deref())
        }
        Cmd::ViewToken { deploy } => {
            match DeploymentFile::load(&deploy).and_then(|d| launcher::view_token(&d)) {
                Ok(token) => {
                    println!("{token}");
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

/// `500ms`, `2s`, `1.5s`, `0`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if t == "0" {
        (t, 1.0)
    } else {
        return Err(format!(
            "'{text}' is not a duration: write it as 500ms, 2s or 0 (never)"
        ));
    };
    match number.trim().parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        Ok(v) if v.is_finite() && (0.001..=86_400.0).contains(&(v * scale)) => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!(
            "'{text}' is not a duration from 1ms to a day: write it as 500ms, 2s or 0 (never)"
        )),
    }
}

fn list() -> ExitCode {
    let listing = match launcher::socket::list() {
        Ok(l) => l,
        Err(e) => return command_failed(&e),
    };
    for removed in &listing.removed {
        eprintln!(
            "iotstream: removed {}: its launcher is gone",
            removed.display()
        );
    }
    for problem in &listing.problems {
        eprintln!("iotstream: warning: {problem}");
    }
    if listing.apps.is_empty() && listing.silent.is_empty() {
        println!("no iotstream application is running");
    }
    if !listing.apps.is_empty() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        print!("{}", launcher::socket::render_list(&listing.apps, now_ms));
    }
    // Running, but not answering (stopped by SIGSTOP, say): listed, not taken for gone.
    for s in &listing.silent {
        let pid = s.pid.map_or(String::new(), |p| format!(" (pid {p})"));
        println!(
            "{}: its launcher{pid} runs but does not answer on {}: {}",
            s.app,
            s.socket.display(),
            s.why
        );
    }
    ExitCode::SUCCESS
}

fn stop(app: &str, run: Option<&str>, now: bool) -> ExitCode {
    let found = match launcher::socket::find(app, run) {
        Ok(f) => f,
        Err(e) => return command_failed(&e),
    };
    let what = format!("'{}' (run {})", found.status.app, found.status.run);
    let stopped = found.stop(now, |line| println!("{}", line.prefixed()));
    match stopped {
        Ok(s) => match s.exit_code {
            Some(0) => {
                println!("{what} stopped: its launcher exited with code 0");
                ExitCode::SUCCESS
            }
            Some(code) if now => {
                println!("{what} killed: its launcher exited with code {code}");
                ExitCode::SUCCESS
            }
            Some(code) => {
                eprintln!(
                    "iotstream: error: {what} stopped, but not cleanly: its launcher exited with code {code} (its lines above say why)"
                );
                ExitCode::from(COMMAND_FAILED)
            }
            None => {
                println!("{what} stopped: its launcher has exited");
                ExitCode::SUCCESS
            }
        },
        Err(e) => command_failed(&e),
    }
}

fn logs(app: &str, process: Option<&str>, follow: bool, run: Option<&str>) -> ExitCode {
    let found = match launcher::socket::find(app, run) {
        Ok(f) => f,
        Err(e) => return command_failed(&e),
    };
    let printed = found.logs(process, follow, |line| {
        // A reader that went away (`| head`) ends the command quietly.
        let text = line.prefixed();
        let written = if line.stderr {
            writeln!(std::io::stderr().lock(), "{text}")
        } else {
            writeln!(std::io::stdout().lock(), "{text}")
        };
        if written.is_err() {
            std::process::exit(0);
        }
    });
    match printed {
        Ok(Some(end)) => {
            eprintln!("iotstream: {end}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => command_failed(&e),
    }
}

fn restart(app: &str, process: &str, run: Option<&str>) -> ExitCode {
    let found = match launcher::socket::find(app, run) {
        Ok(f) => f,
        Err(e) => return command_failed(&e),
    };
    // Refused before anything is said to be restarting (the launcher checks it again).
    if let Err(e) = found.check_process(process) {
        return command_failed(&e);
    }
    println!(
        "restarting process '{process}' of '{app}' (run {})…",
        found.status.run
    );
    match found.restart(process) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => command_failed(&e),
    }
}

fn top(app: &str, run: Option<&str>) -> ExitCode {
    let found = match launcher::socket::find(app, run) {
        Ok(f) => f,
        Err(e) => return command_failed(&e),
    };
    let graph = match found.graph() {
        Ok(g) => g,
        Err(e) => return command_failed(&e),
    };
    let interval = match found.status.interval_ms {
        0 => std::time::Duration::from_secs(1),
        ms => std::time::Duration::from_millis(ms),
    };
    let fetch = || {
        found
            .view()
            .map(|view| (graph.clone(), view))
            .map_err(|e| e.to_string())
    };
    match launcher::top::run_top(fetch, interval) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn run_bench(
    options: &bench::Options,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> ExitCode {
    let report = bench::run(options, &mut bench::Bar::new());
    let mut text = bench::render_table(&report);
    if !report.runs.is_empty() && !report.scaling.is_empty() {
        text.push('\n');
    }
    text.push_str(&bench::render_scaling(&report));
    // A reader that went away (`| head`) does not stop the files from being written.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if let Some(signal) = report.interrupted {
        // What ran is shown; files are not written over with a part of the run.
        eprintln!(
            "iotstream bench: interrupted by {}: the table shows the cells that ran{}",
            bench::signal_name(signal),
            if json.is_some() || plot.is_some() {
                "; --json and --plot not written"
            } else {
                ""
            }
        );
        return ExitCode::from(128 + signal.clamp(0, 127) as u8);
    }
    let mut code = ExitCode::SUCCESS;
    if let Some(path) = json {
        match bench::write_json(path, &report) {
            Ok(()) => eprintln!("results written to {}", path.display()),
            Err(e) => {
                eprintln!("iotstream bench: error: --json: {e}");
                code = ExitCode::from(COMMAND_FAILED);
            }
        }
    }
    if let Some(path) = plot {
        match bench::write_plot(path, &report) {
            Ok(()) => eprintln!("plot drawn in {}", path.display()),
            Err(e) => {
                eprintln!("iotstream bench: error: --plot: {e}");
                code = ExitCode::from(COMMAND_FAILED);
            }
        }
    }
    for failure in report.failures() {
        eprintln!("iotstream bench: error: {failure}");
        code = ExitCode::from(COMMAND_FAILED);
    }
    code
}

fn command_failed(e: &launcher::OpError) -> ExitCode {
    eprintln!("iotstream: error: {e}");
    ExitCode::from(COMMAND_FAILED)
}

fn fail(e: &iotstream::Error) -> ExitCode {
    match e {
        iotstream::Error::Deployment { .. } => eprintln!("{e}"),
        _ => eprintln!("iotstream: error: {e}"),
    }
    ExitCode::from(USAGE_ERROR)
}

#[cfg(test)]
mod tests {
    use super::parse_interval;
    use std::time::Duration;

    #[test]
    fn intervals_read_as_documented() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "fast", "-1s", "0.1ms", "2d", "90000s", "NaNs"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
