//! A TCP link between two "hosts" run by the launcher, plain and with TLS, beside raw TCP.
//!
//! The same throughput app as `benches/modes.rs` (source → map → sink over `u64`), the source
//! and map in process `main` on host `a` (127.0.0.1), the sink in process `sink` on host `b`
//! (127.0.0.2): the map → sink connection is a TCP link between hosts. Each run starts one
//! `iotstream run` launcher per host (host `b` first), exactly as on two machines, and is timed
//! from the first start to the last exit: wall time, start-up included, nothing subtracted. The
//! variants, alternated round by round:
//!
//! - `raw tcp`: `benches/common/raw_tcp.rs` in a fresh process, writer to a reader on 127.0.0.2;
//! - `insecure`: `[network] insecure = true`, no secret, no TLS;
//! - `secret`: a shared secret (HMAC handshake), no TLS;
//! - `secret + TLS`: the secret and mutual TLS (certificates made once by `openssl` with the
//!   commands of `docs/security.md`; without `openssl` this row is skipped and says so);
//! - `insecure, 1 batch`: the insecure run with one batch of elements: what start-up, the
//!   handshake and the drain cost on their own.
//!
//! It prints a table (no criterion: each run takes seconds, and what is compared is whole runs)
//! with the median of each variant and the medians of the per-round ratios.
//!
//! ```text
//! cargo build --release --bin iotstream    # the launcher, next to this bench's binary
//! cargo bench --bench hosts                # HOSTS_N=elements (default 100 M), HOSTS_ROUNDS (5)
//! ```
//!
//! The launcher is found as `iotstream` in the directory above this binary's (`target/release/`
//! for `target/release/deps/hosts-…`): `env!("CARGO_BIN_EXE_…")` exists only for tests, and a
//! bench cannot build it itself while cargo holds the build lock. A missing launcher stops the
//! bench with the command to build it; one older than the crate's library gets a warning.
//!
//! The bench binary is also the application: the launcher starts it, and `IOTSTREAM_BENCH_APP`
//! (inherited) tells it which graph to build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, SourceOptions};

#[path = "common/raw_tcp.rs"]
mod raw_tcp;

const APP_VAR: &str = "IOTSTREAM_BENCH_APP";
const HOST_A: &str = "127.0.0.1";
const HOST_B: &str = "127.0.0.2";

/// source → map → sink over `n` u64, the sink in process "sink" (the deployment puts it on
/// host `b`).
fn split_app(n: u64) -> Result<(), iotstream::Error> {
    let mut g = Graph::new("hosts_bench");
    let s = g.source_iter("numbers", 0..n);
    let m = g.map("scale", &s, |v: &u64| v.wrapping_mul(7));
    let seen = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&seen);
    let input = g.add_agent("count", |p| {
        let input = p.input::<u64>("in");
        (Count { input, seen: count }, input)
    });
    g.connect(&m, &input);
    g.place_in_process("count", "sink");
    let in_sink = std::env::var("IOTSTREAM_PROCESS").as_deref() == Ok("sink");
    g.run()?;
    if in_sink && seen.load(Ordering::Relaxed) != n {
        return Err(iotstream::Error::Runtime {
            detail: format!(
                "the sink saw {} of {n} elements",
                seen.load(Ordering::Relaxed)
            ),
        });
    }
    Ok(())
}

/// The app's sink: counts what it consumes (what `sink_list` with a counter does).
struct Count {
    input: Input<u64>,
    seen: Arc<AtomicU64>,
}

impl Agent for Count {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len();
        if n > 0 {
            self.seen.fetch_add(n as u64, Ordering::Relaxed);
            i.consume(&self.input, n);
        }
        Ok(())
    }
}

/// The security of a launcher run.
#[derive(Clone, Copy, PartialEq)]
enum Security {
    Insecure,
    Secret,
    SecretTls,
}

impl Security {
    fn file(self) -> &'static str {
        match self {
            Security::Insecure => "deploy-insecure.toml",
            Security::Secret => "deploy-secret.toml",
            Security::SecretTls => "deploy-tls.toml",
        }
    }
    fn network(self) -> &'static str {
        match self {
            Security::Insecure => "insecure = true\n",
            Security::Secret => "secret_file = \"iotstream.secret\"\n",
            Security::SecretTls => {
                "secret_file = \"iotstream.secret\"\n\
                 tls_cert = \"host-cert.pem\"\ntls_key = \"host-key.pem\"\ntls_ca = \"ca.pem\"\n"
            }
        }
    }
}

/// Two directories, `a/` and `b/`, one per host, each with the same deployment files (so the
/// same digest) and that host's own secret copy, certificate and key; removed on drop.
struct Hosts {
    dir: tempfile::TempDir,
    tls: bool,
}

impl Hosts {
    fn a(&self) -> PathBuf {
        self.dir.path().join("a")
    }
    fn b(&self) -> PathBuf {
        self.dir.path().join("b")
    }

    fn new(port: u16) -> Hosts {
        let dir = tempfile::Builder::new()
            .prefix("iotstream-hosts-bench")
            .tempdir()
            .expect("a temporary directory");
        let hosts = Hosts { tls: false, dir };
        let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let secret = format!("{}\n", hex(&secret));
        for dir in [hosts.a(), hosts.b()] {
            std::fs::create_dir(&dir).expect("a host directory");
            write_private(&dir.join("iotstream.secret"), secret.as_bytes());
            for sec in [Security::Insecure, Security::Secret, Security::SecretTls] {
                let toml = format!(
                    "# hosts bench: source and map on a, the sink on b\n\
                     [hosts.a]\naddress = \"{HOST_A}\"\nport = {port}\n\n\
                     [hosts.b]\naddress = \"{HOST_B}\"\nport = {port}\n\n\
                     [network]\nreconnect_limit_ms = 5000\n{}\n\
                     [processes.main]\nhost = \"a\"\n\n[processes.sink]\nhost = \"b\"\n",
                    sec.network()
                );
                std::fs::write(dir.join(sec.file()), toml).expect("a deployment file");
            }
        }
        let tls = match make_certificates(hosts.dir.path(), &[hosts.a(), hosts.b()]) {
            Ok(()) => true,
            Err(e) => {
                println!("TLS rows skipped: {e}");
                false
            }
        };
        Hosts { tls, ..hosts }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).expect("a private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Runs `openssl` with `args` (split at spaces) in `dir`; an error names the command and what
/// it printed.
fn openssl(dir: &Path, args: &str) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl could not be run ({e}): is it installed?"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A CA in `root` and, in each host directory (a then b), `ca.pem` and that host's
/// `host-cert.pem` / `host-key.pem` for its address: the commands of docs/security.md.
fn make_certificates(root: &Path, host_dirs: &[PathBuf]) -> Result<(), String> {
    openssl(
        root,
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
         -subj /CN=bench-CA -keyout ca-key.pem -out ca.pem \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    )?;
    for (dir, addr) in host_dirs.iter().zip([HOST_A, HOST_B]) {
        let ext = format!(
            "subjectAltName = IP:{addr}\nbasicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth, clientAuth\n"
        );
        std::fs::write(root.join("host.ext"), ext).map_err(|e| e.to_string())?;
        openssl(
            root,
            &format!(
                "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={addr} \
                 -keyout host-key.pem -out host.csr"
            ),
        )?;
        openssl(
            root,
            "x509 -req -in host.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
             -extfile host.ext -out host-cert.pem",
        )?;
        let key = std::fs::read(root.join("host-key.pem")).map_err(|e| e.to_string())?;
        write_private(&dir.join("host-key.pem"), &key);
        for f in ["host-cert.pem", "ca.pem"] {
            std::fs::copy(root.join(f), dir.join(f)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A base port with `port` and `port + 1` free on host b's address (the map → sink link is
/// connection 1 of the graph and listens on base + 1), and `port - 1` free on both hosts'
/// addresses (with a secret, each launcher answers the other's on its observation port).
fn free_base_port() -> u16 {
    let free = |host: &str, port: u16| std::net::TcpListener::bind((host, port)).is_ok();
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind((HOST_B, 0)).expect("bind 127.0.0.2");
        let port = probe.local_addr().expect("an address").port();
        drop(probe);
        if (2..65000).contains(&port)
            && (0..3).all(|i| free(HOST_B, port + i))
            && free(HOST_A, port - 1)
            && free(HOST_B, port - 1)
        {
            return port;
        }
    }
    panic!("no three consecutive free ports on {HOST_B} with the one below free on both hosts");
}

/// The launcher next to this binary's directory (`target/release/iotstream`).
fn launcher() -> PathBuf {
    let exe = std::env::current_exe().expect("this binary's path");
    let release = exe.parent().and_then(Path::parent).expect("target/release");
    let l = release.join("iotstream");
    if !l.exists() {
        eprintln!(
            "{} is missing: build the launcher first with\n  \
             cargo build --release --bin iotstream\n(with the same CARGO_TARGET_DIR)",
            l.display()
        );
        std::process::exit(2);
    }
    // The launcher is stale if the library was built after it (this binary links the newest).
    let age = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_lib = std::fs::read_dir(release.join("deps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libiotstream-") && name.ends_with(".rlib")
        })
        .filter_map(|e| age(&e.path()))
        .max();
    if age(&l) < newest_lib {
        println!(
            "warning: {} is older than the crate's library; rebuild it with \
             `cargo build --release --bin iotstream`",
            l.display()
        );
    }
    l
}

/// One launcher pair run of `n` elements; its wall time in seconds, start to last exit.
fn launcher_run(launcher: &Path, hosts: &Hosts, sec: Security, n: u64) -> f64 {
    let app = std::env::current_exe().expect("this binary's path");
    let start = |host: &str, dir: PathBuf| {
        Command::new(launcher)
            .arg("run")
            .arg(&app)
            .arg("--deploy")
            .arg(dir.join(sec.file()))
            .args(["--host", host])
            .env(APP_VAR, format!("split:{n}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a launcher")
    };
    let t = Instant::now();
    let b = start("b", hosts.b());
    let a = start("a", hosts.a());
    let (a, b) = (
        a.wait_with_output().expect("launcher a"),
        b.wait_with_output().expect("launcher b"),
    );
    let secs = t.elapsed().as_secs_f64();
    if !a.status.success() || !b.status.success() {
        panic!(
            "a launcher failed: host a {}, host b {}\n--- host a:\n{}\n--- host b:\n{}",
            a.status,
            b.status,
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
    }
    secs
}

/// The raw baseline in a fresh process; its wall time in seconds.
fn raw_run(n: u64) -> f64 {
    let t = Instant::now();
    let out = Command::new(std::env::current_exe().expect("this binary's path"))
        .env(APP_VAR, format!("raw:{n}"))
        .output()
        .expect("run the raw baseline");
    assert!(
        out.status.success(),
        "raw baseline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(app) = std::env::var(APP_VAR) {
        let (kind, arg) = app.split_once(':').unwrap_or((app.as_str(), "0"));
        let n: u64 = arg.parse().unwrap_or(0);
        let r = match kind {
            "split" => split_app(n),
            "raw" => {
                raw_tcp::raw_tcp_run(n, SourceOptions::default().max_batch, HOST_B);
                Ok(())
            }
            other => panic!("unknown bench application {other}"),
        };
        if let Err(e) = r {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }

    let n = env_or("HOSTS_N", 100_000_000);
    let rounds = env_or("HOSTS_ROUNDS", 5).max(1) as usize;
    let one_batch = SourceOptions::default().max_batch as u64;
    let launcher = launcher();
    let hosts = Hosts::new(free_base_port());

    // Rows: name, security (None: raw), elements.
    let mut rows: Vec<(&str, Option<Security>, u64)> = vec![
        ("raw tcp", None, n),
        ("insecure", Some(Security::Insecure), n),
        ("secret", Some(Security::Secret), n),
    ];
    if hosts.tls {
        rows.push(("secret + TLS", Some(Security::SecretTls), n));
    }
    rows.push(("insecure, 1 batch", Some(Security::Insecure), one_batch));

    println!(
        "hosts: {n} u64 from host a ({HOST_A}) to host b ({HOST_B}), {rounds} rounds, \
         variants alternated; wall time start to last exit, nothing subtracted"
    );
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for round in 0..rounds {
        for (i, (name, sec, elements)) in rows.iter().enumerate() {
            let s = match sec {
                None => raw_run(*elements),
                Some(sec) => launcher_run(&launcher, &hosts, *sec, *elements),
            };
            println!("  round {}: {name:<18} {s:>7.3} s", round + 1);
            secs[i].push(s);
        }
    }

    println!("\n| variant | elements | wall time, median (min–max) | M elements/s (median) |");
    println!("|---|---|---|---|");
    for ((name, _, elements), s) in rows.iter().zip(&secs) {
        let (lo, hi) = s
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        println!(
            "| {name} | {elements} | {:.3} s ({lo:.3}–{hi:.3}) | {:.1} |",
            median(s),
            *elements as f64 / median(s) / 1e6
        );
    }
    // Ratios of throughput (elements/s), per round, then the median.
    let ratio = |x: usize, y: usize| -> Vec<f64> {
        secs[y]
            .iter()
            .zip(&secs[x])
            .map(|(sy, sx)| sy / sx)
            .collect()
    };
    let row = |name: &str| rows.iter().position(|r| r.0 == name);
    println!("\nthroughput ratios, median of the per-round ratios (min–max):");
    let show = |label: &str, x: Option<usize>, y: Option<usize>| {
        if let (Some(x), Some(y)) = (x, y) {
            let r = ratio(x, y);
            let (lo, hi) = r
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            println!("  {label:<24} {:.2} ({lo:.2}–{hi:.2})", median(&r));
        }
    };
    show("insecure / raw tcp", row("insecure"), row("raw tcp"));
    show("secret / insecure", row("secret"), row("insecure"));
    show(
        "secret + TLS / insecure",
        row("secret + TLS"),
        row("insecure"),
    );
    show(
        "secret + TLS / raw tcp",
        row("secret + TLS"),
        row("raw tcp"),
    );
}
