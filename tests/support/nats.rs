//! A NATS server with JetStream for tests: Debian's `nats-server`, started on a free loopback
//! port with a temporary store folder, always stopped (killed and waited for) when dropped.
//!
//! A test file includes it with `#[path = "support/nats.rs"] mod nats;`. A missing binary is a
//! failure with a clear message (`.ci/run` installs the `nats-server` package), never a skip.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server -js`; stopped when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its JetStream store folder (kept across [`NatsServer::restart`]).
    store: PathBuf,
    /// Where its output goes (for failure messages).
    log: PathBuf,
    /// A configuration file (`-c`), for what only a file says (authorization, TLS).
    config: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// The `nats-server` binary: on `PATH`, or Debian's `/usr/sbin/nats-server`.
pub fn binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    assert!(
        debian.is_file(),
        "nats-server is not installed: these tests need Debian's `nats-server` package \
         (apt-get install nats-server; .ci/run installs it)"
    );
    debian
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl NatsServer {
    /// Starts a server with JetStream on a free port of 127.0.0.1; waits until it accepts.
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// [`start`](Self::start), with `config` as the server's configuration file (for example
    /// `authorization { token: "…" }` or `tls { cert_file: "…", key_file: "…" }`; the port,
    /// address and JetStream store are still given on the command line, which wins).
    pub fn start_with(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let config = (!config.is_empty()).then(|| {
            let p = dir.path().join("nats.conf");
            std::fs::write(&p, config).expect("write the server's configuration");
            p
        });
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            store: dir.path().join("store"),
            log: dir.path().join("nats.log"),
            config,
            _dir: dir,
        };
        s.spawn();
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the server's log file");
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-p", &self.port.to_string(), "-a", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {} within 15 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM, then waits: a clean shutdown) and starts it again on the
    /// same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server, removes its JetStream store (as a server with a memory store, or a
    /// store under a /tmp that a reboot cleared) and starts it again on the same port.
    pub fn restart_without_store(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
        self.spawn();
    }

    /// Stops the server: SIGTERM and a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server stores a JetStream stream named `name` (in its store folder).
    pub fn has_stream(&self, name: &str) -> bool {
        let Ok(accounts) = std::fs::read_dir(self.store.join("jetstream")) else {
            return false;
        };
        accounts
            .flatten()
            .any(|a| a.path().join("streams").join(name).is_dir())
    }

    /// The JetStream streams the server stores (in its store folder, every account's).
    pub fn stream_names(&self) -> Vec<String> {
        let Ok(accounts) = std::fs::read_dir(self.store.join("jetstream")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = accounts
            .flatten()
            .filter_map(|a| std::fs::read_dir(a.path().join("streams")).ok())
            .flat_map(|streams| streams.flatten())
            .map(|s| s.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
