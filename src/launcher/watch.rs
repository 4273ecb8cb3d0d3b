//! The launcher's live view: the processes' reports on the [`Board`] turned into one
//! [`AppMetrics`] every interval, served over HTTP (`--metrics`, `--ui`), to `iotstream top`
//! (the control socket's `view` request), and to the other hosts' launchers.
//!
//! ```text
//!  Board (samples, statuses) ──► Watch thread, every interval ──► Aggregator::tick
//!  other hosts' launchers ──(observe::peers::fetch)──┘                 │
//!                                                                      ▼
//!                                   Board::set_view ◄── the view ──► HTTP /metrics /api/* /
//!                                   (control socket `view`)          observation port (peers)
//! ```
//!
//! With several hosts and a secret, each launcher listens on its host's observation port
//! ([`HostInfo::observation_port`](crate::info::HostInfo::observation_port)) for the others
//! (requests proved with the deployment's secret, see [`crate::observe::peers`]), and asks
//! every other host's launcher for its view each interval (at most every
//! [`PEER_PERIOD_MIN`], at least every [`PEER_PERIOD_MAX`]), on a thread per host so that a
//! host that does not answer delays nothing: its processes show as `unknown` (with what was
//! last heard of them) until it answers again. What goes wrong on this channel is said on the
//! launcher's standard error and in its log (`iotstream logs APP`), once per cause.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::observe::http::{listen_address, Server, ViewSource};
use crate::observe::peers::{self, PeerServer};
use crate::observe::{Aggregator, AppMetrics};
use crate::transport::tcp::auth::Secret;

use super::board::Board;

/// What the launcher serves, and to whom.
#[derive(Default)]
pub(crate) struct WatchOptions {
    /// `--metrics ADDR`: Prometheus text and the JSON endpoints.
    pub metrics: Option<String>,
    /// `--ui ADDR`: the web page (and the same endpoints).
    pub ui: Option<String>,
    /// The bearer token an address that is not loopback requires (derived from the
    /// deployment's secret: `launcher::view_token`).
    pub token: Option<String>,
    /// The other hosts' observation addresses, and the secret that proves requests; where this
    /// launcher's own observation port listens.
    pub peers: Option<Peers>,
}

/// The launchers of the other hosts.
pub(crate) struct Peers {
    pub secret: Secret,
    /// This host's name, and where this launcher answers the others.
    pub host: String,
    pub listen: SocketAddr,
    /// Each other host: its name, address and observation port.
    pub others: Vec<(String, String, u16)>,
}

/// The shortest time between two requests to another host's launcher, whatever the
/// reporting interval (`--metrics-interval` may be 1 ms): each request is a connection.
pub const PEER_PERIOD_MIN: Duration = Duration::from_millis(250);

/// The longest: how soon a host's launcher that stopped answering shows as `unknown` (and
/// one that answers again as known) when the reporting interval is long.
pub const PEER_PERIOD_MAX: Duration = Duration::from_secs(5);

/// The running live view; stops when dropped.
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    servers: Vec<Server>,
    /// Each of `--metrics` and `--ui` that was given, and the index in `servers` of the
    /// server that serves it (one serves both when they name the same address).
    served: Vec<(&'static str, usize)>,
    _peer_server: Option<PeerServer>,
}

impl ViewSource for Board {
    fn graph(&self) -> crate::info::GraphInfo {
        Board::graph(self).clone()
    }
    fn metrics(&self) -> AppMetrics {
        self.view()
    }
}

impl Watch {
    /// Starts the view of `board`'s application; the servers named in `options` are bound
    /// before this returns (an address that cannot be served is an error naming it).
    pub fn start(board: Arc<Board>, options: WatchOptions) -> Result<Watch, Error> {
        let status = board.status(false);
        let interval = match status.interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(ms),
        };
        let aggregator = Arc::new(Mutex::new(Aggregator::new(
            board.graph().clone(),
            &status.run,
            interval,
        )));
        let mut servers = Vec::new();
        let source: Arc<dyn ViewSource> = Arc::clone(&board) as Arc<dyn ViewSource>;
        // Where each server listens, as resolved: `9465`, `127.0.0.1:9465` and (where it
        // resolves there) `localhost:9465` are one address, served once.
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut served = Vec::new();
        for (flag, addr) in [("--metrics", &options.metrics), ("--ui", &options.ui)] {
            let Some(addr) = addr else { continue };
            // An address that does not resolve is not compared: `serve` says what is wrong.
            let resolved = listen_address(addr).ok();
            if let Some(i) = resolved.and_then(|r| addrs.iter().position(|a| *a == r)) {
                served.push((flag, i)); // one server serves both
                continue;
            }
            let server = serve(flag, addr, options.token.as_deref(), Arc::clone(&source))?;
            served.push((flag, servers.len()));
            addrs.push(resolved.unwrap_or_else(|| server.local_addr()));
            servers.push(server);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut peer_server = None;
        let mut remotes: Vec<Remote> = Vec::new();
        if let Some(p) = options.peers {
            let own = Arc::clone(&board);
            let view: peers::ViewFn = Arc::new(move || own.local_view());
            let logs = Arc::clone(&board);
            let report: peers::ReportFn = Arc::new(move |line: &str| super::note(&logs, line));
            let known = peers::KnownAddresses::default();
            let server = PeerServer::start(p.listen, p.secret.clone(), view, report, known.clone());
            peer_server = Some(server.map_err(|e| Error::Runtime {
                detail: format!(
                    "host '{}': cannot listen for the other hosts' launchers on its observation \
                     port, {} ('observe_port' in [hosts.{}], by default 'port' - 1; see \
                     docs/deployment.md, \"The observation port\"): {e}",
                    p.host, p.listen, p.host
                ),
            })?);
            let period = interval.clamp(PEER_PERIOD_MIN, PEER_PERIOD_MAX);
            for (host, address, port) in p.others {
                remotes.push(Remote::start(
                    host,
                    (address, port),
                    p.secret.clone(),
                    period,
                    Arc::clone(&board),
                    Arc::clone(&stop),
                    known.clone(),
                )?);
            }
        }
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("iotstream live view".into())
                .spawn(move || watch(&board, &aggregator, &remotes, interval, &stop))
                .map_err(|e| Error::Runtime {
                    detail: format!("cannot start the live view's thread: {e}"),
                })?
        };
        Ok(Watch {
            stop,
            thread: Some(thread),
            servers,
            served,
            _peer_server: peer_server,
        })
    }

    /// Where each of `--metrics` and `--ui` that was given is served, in that order: the
    /// flag and the address its server listens on (the same for both when one server serves
    /// both).
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.served
            .iter()
            .map(|&(flag, i)| (flag, self.servers[i].local_addr()))
            .collect()
    }
}

/// Starts the server `flag` (`--metrics` or `--ui`) asks for on `addr`. Its errors name the
/// flag and the address once; an address that is not loopback without a token is refused
/// with what a launcher's user can do about it (the token derives from the deployment's
/// secret). On a loopback address no token is asked for.
fn serve(
    flag: &str,
    addr: &str,
    token: Option<&str>,
    source: Arc<dyn ViewSource>,
) -> Result<Server, Error> {
    let off_loopback = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .filter(|a| !a.ip().is_loopback());
    if let (Some(resolved), None) = (off_loopback, token) {
        return Err(Error::Runtime {
            detail: format!(
                "{flag} '{addr}': {} is not a loopback address, so anyone who can reach it \
                 could read the application's metrics: there a bearer token is required, \
                 derived from the deployment's secret (name its file in the deployment's \
                 [network] secret_file, see docs/security.md; clients then send \
                 'Authorization: Bearer <token>', the token `iotstream view-token --deploy \
                 FILE` prints), or listen on 127.0.0.1",
                resolved.ip()
            ),
        });
    }
    // On loopback anyone on the machine may read (as documented): no token asked there, even
    // when the deployment has a secret.
    let token = off_loopback.and(token);
    Server::start(addr, token, source).map_err(|e| Error::Runtime {
        detail: match e {
            Error::Runtime { detail } => format!("{flag}: {detail}"),
            other => format!("{flag}: {other}"),
        },
    })
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the watch thread remembers of a process between two looks at the board.
#[derive(Default, Clone)]
struct Seen {
    restarts: u64,
    sample_ms: u64,
}

/// Every interval (with other hosts, at least every [`PEER_PERIOD_MAX`], so that a host lost
/// shows soon whatever the interval): the board's samples and statuses into the aggregator,
/// this host's own part published for the others, their latest views merged, one tick, the
/// view published on the board.
fn watch(
    board: &Board,
    aggregator: &Mutex<Aggregator>,
    remotes: &[Remote],
    interval: Duration,
    stop: &AtomicBool,
) {
    let period = match remotes.is_empty() {
        true => interval,
        false => interval.min(PEER_PERIOD_MAX),
    };
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        {
            let mut agg = aggregator.lock().unwrap_or_else(|p| p.into_inner());
            let status = board.status(true);
            seen.resize(status.processes.len(), Seen::default());
            for (p, seen) in status.processes.iter().zip(seen.iter_mut()) {
                // A restart first: the ended incarnation's last report is folded into the
                // totals before the new one's first report counts.
                for _ in seen.restarts..p.restarts {
                    agg.restarted(&p.process);
                }
                seen.restarts = p.restarts;
                agg.set_status(&p.process, p.status, p.pid);
                if let Some(sample) = &p.sample {
                    if p.sample_ms != seen.sample_ms {
                        seen.sample_ms = p.sample_ms;
                        agg.record(&p.process, sample.clone());
                    }
                }
            }
            let now = SystemTime::now();
            // What this host knows itself (no other host's view in it): what the others ask for.
            let mut local = agg.own_view(now);
            keep_host(&mut local, &status.host);
            board.set_local_view(local);
            for r in remotes {
                match r.latest() {
                    Some(view) => agg.merge_remote(&r.host, view),
                    None => agg.forget_remote(&r.host),
                }
            }
            board.set_view(agg.tick(now).clone());
        }
        // Ends at once when stopped, else after the period.
        let mut left = period;
        while !left.is_zero() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let step = left.min(Duration::from_millis(50));
            std::thread::sleep(step);
            left -= step;
        }
    }
}

/// `view` with only what runs on `host` (and the connections that one of its processes holds
/// an end of): what this launcher tells the others.
fn keep_host(view: &mut AppMetrics, host: &str) {
    view.processes.retain(|p| p.host == host);
    view.agents.retain(|a| a.host == host);
    view.streams.retain(|s| s.host == host);
    view.links.retain(|l| l.ends.is_some());
}

/// Another host's launcher, asked for its view every period by a thread of its own. The
/// thread is not waited for when the view stops: it sees the stop within 50 ms, or when its
/// exchange in progress ends (within the exchange's bounds, see [`crate::observe::peers`]).
struct Remote {
    host: String,
    latest: Arc<Mutex<Option<AppMetrics>>>,
    _thread: JoinHandle<()>,
}

impl Remote {
    fn start(
        host: String,
        (address, port): (String, u16),
        secret: Secret,
        period: Duration,
        board: Arc<Board>,
        stop: Arc<AtomicBool>,
        known: peers::KnownAddresses,
    ) -> Result<Remote, Error> {
        let latest: Arc<Mutex<Option<AppMetrics>>> = Arc::default();
        let thread = {
            let (latest, name) = (Arc::clone(&latest), host.clone());
            let host = host.clone();
            std::thread::Builder::new()
                .name(format!("iotstream view of {host}"))
                .spawn(move || {
                    let addr = format!("{address}:{port}");
                    // What went wrong last: said once per cause, not every period.
                    let mut said = None::<String>;
                    // Ends when the view stops (looked at every 50 ms at most).
                    while !stop.load(Ordering::SeqCst) {
                        let got = (address.as_str(), port)
                            .to_socket_addrs()
                            .map_err(|e| format!("cannot resolve {address}: {e}"))
                            .and_then(|mut a| {
                                a.next()
                                    .ok_or_else(|| format!("{address} resolves to nothing"))
                            })
                            // Its launcher's requests to this one come from there (most
                            // likely): not held to one address's share.
                            .inspect(|a| known.learn(a.ip()))
                            .and_then(|a| peers::fetch(a, &secret))
                            .and_then(|view| match view.app == board.graph().app {
                                true => Ok(view),
                                // Another deployment with the same secret on that port.
                                false => Err(format!(
                                    "it runs application '{}', not '{}'",
                                    view.app,
                                    board.graph().app
                                )),
                            });
                        match got {
                            Ok(view) => {
                                if said.take().is_some() {
                                    super::note(
                                        &board,
                                        &format!(
                                            "host '{host}' ({addr}): its launcher answers again"
                                        ),
                                    );
                                }
                                *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
                            }
                            Err(e) => {
                                if said.as_deref() != Some(e.as_str()) {
                                    super::note(
                                        &board,
                                        &format!(
                                            "warning: host '{host}' ({addr}): its launcher's view \
                                             cannot be had, its processes show as unknown: {e}"
                                        ),
                                    );
                                    said = Some(e);
                                }
                                *latest.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            }
                        }
                        let mut left = period;
                        while !left.is_zero() && !stop.load(Ordering::SeqCst) {
                            let step = left.min(Duration::from_millis(50));
                            std::thread::sleep(step);
                            left -= step;
                        }
                    }
                })
                .map_err(|e| Error::Runtime {
                    detail: format!("cannot start the thread that asks host '{name}': {e}"),
                })?
        };
        Ok(Remote {
            host,
            latest,
            _thread: thread,
        })
    }

    fn latest(&self) -> Option<AppMetrics> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::GraphInfo;

    fn board() -> Arc<Board> {
        let info = GraphInfo {
            app: "demo".into(),
            default_capacity: 1,
            agents: Vec::new(),
            edges: Vec::new(),
            processes: vec!["main".into()],
            hosts: Vec::new(),
        };
        Arc::new(Board::new(
            info,
            "1-a".into(),
            "local".into(),
            &["main".to_string()],
            Duration::from_secs(1),
            10,
        ))
    }

    fn options(metrics: Option<&str>, ui: Option<&str>) -> WatchOptions {
        WatchOptions {
            metrics: metrics.map(String::from),
            ui: ui.map(String::from),
            ..WatchOptions::default()
        }
    }

    #[test]
    fn each_flag_given_is_said_served_even_when_one_server_serves_both() {
        let watch = Watch::start(board(), options(Some("127.0.0.1:0"), Some("127.0.0.1:0")))
            .expect("served");
        let addrs = watch.addrs();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_eq!((addrs[0].0, addrs[1].0), ("--metrics", "--ui"));
        assert_eq!(addrs[0].1, addrs[1].1, "one server for the same address");

        let port = free_port();
        let ui = format!("127.0.0.1:{port}");
        let watch = Watch::start(board(), options(Some("127.0.0.1:0"), Some(&ui))).expect("served");
        let addrs = watch.addrs();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_ne!(addrs[0].1, addrs[1].1, "two addresses, two servers");

        let watch = Watch::start(board(), options(None, Some("127.0.0.1:0"))).expect("served");
        let addrs = watch.addrs();
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].0, "--ui");
    }

    /// A port nothing listens on now (on 127.0.0.1).
    fn free_port() -> u16 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("its address").port()
    }

    #[test]
    fn one_address_spelt_two_ways_is_served_once() {
        // A port alone is that port on 127.0.0.1: the same address as written in full.
        let port = free_port();
        let (alone, full) = (port.to_string(), format!("127.0.0.1:{port}"));
        let watch = Watch::start(board(), options(Some(&full), Some(&alone)))
            .expect("served by one server");
        let addrs = watch.addrs();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_eq!(addrs[0].1, addrs[1].1, "one server for the same address");
        assert_eq!(addrs[0].1.to_string(), full);
        drop(watch);

        // A name: one server when it names the same address (localhost is 127.0.0.1 on most
        // machines), two when not (localhost first as ::1); never "address already in use".
        let port = free_port();
        let (name, full) = (format!("localhost:{port}"), format!("127.0.0.1:{port}"));
        let watch = Watch::start(board(), options(Some(&full), Some(&name))).expect("served");
        let addrs = watch.addrs();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        let same = name.to_socket_addrs().ok().and_then(|mut a| a.next()) == Some(addrs[0].1);
        assert_eq!(addrs[0].1 == addrs[1].1, same, "{name}: {addrs:?}");
        drop(watch);

        // 0.0.0.0 (every interface) is not 127.0.0.1: two servers.
        let mut o = options(Some("127.0.0.1:0"), Some("0.0.0.0:0"));
        o.token = Some("a-view-token".into());
        let watch = Watch::start(board(), o).expect("served");
        let addrs = watch.addrs();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_ne!(addrs[0].1, addrs[1].1, "two addresses, two servers");
        assert!(addrs[1].1.ip().is_unspecified(), "{addrs:?}");
    }

    #[test]
    fn an_address_off_loopback_without_the_secret_is_refused_saying_how_to_give_it() {
        for (flag, o) in [
            ("--metrics", options(Some("0.0.0.0:0"), None)),
            ("--ui", options(None, Some("0.0.0.0:0"))),
        ] {
            let e = Watch::start(board(), o).err().expect("refused").to_string();
            assert!(
                e.starts_with(&format!("runtime error: {flag} '0.0.0.0:0': ")),
                "{e}"
            );
            assert_eq!(e.matches("runtime error").count(), 1, "{e}");
            assert!(e.contains("[network] secret_file"), "{e}");
        }
        // With a token, the same address is served.
        let mut o = options(Some("0.0.0.0:0"), None);
        o.token = Some("a-view-token".into());
        assert_eq!(Watch::start(board(), o).expect("served").addrs().len(), 1);
    }

    #[test]
    fn other_server_errors_name_the_flag_once() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = Watch::start(board(), options(None, Some(&addr)))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "runtime error: --ui: cannot serve the live view on '{addr}'"
            )),
            "{e}"
        );
        assert_eq!(e.matches("runtime error").count(), 1, "{e}");
    }
}
