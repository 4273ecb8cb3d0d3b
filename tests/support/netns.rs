//! Several "hosts" on one machine for tests that cross hosts: Linux network namespaces joined by
//! veth pairs, or distinct loopback addresses where namespaces cannot be made.
//!
//! A test file includes this module with
//! `#[path = "support/netns.rs"] mod netns;` (tests/ has no shared `support` crate; other files
//! include what they share by `#[path]` the same way).
//!
//! # Using it
//!
//! ```ignore
//! let hosts = netns::Hosts::new(2);
//! let listener = hosts.in_host(1, || TcpListener::bind((hosts.addr(1), 0)).unwrap());
//! let port = listener.local_addr().unwrap().port();
//! let stream = hosts.in_host(0, || TcpStream::connect((hosts.addr(1), port)).unwrap());
//! let child = hosts.command(0, "some-program").arg("...").spawn().unwrap();
//! if hosts.cut(1) { /* host 1's link is down */ hosts.heal(1); }
//! // dropping `hosts` deletes every namespace it made
//! ```
//!
//! - [`Hosts::in_host`] runs a closure on a thread that has entered host `i`'s namespace. Sockets
//!   keep the namespace they were made in, so a listener or stream returned from the closure is
//!   used from any thread afterwards.
//! - [`Hosts::command`] builds a [`Command`] whose process runs in host `i`'s namespace.
//! - [`Hosts::cut`] and [`Hosts::heal`] set host `i`'s interface down and up; established TCP
//!   connections survive a cut (TCP retransmits after the heal).
//! - [`Hosts::kill_tcp`] kills the established connections on a port inside host `i` (`ss -K`).
//!
//! # Two flavors
//!
//! **Namespaces** (`isolated() == true`): needs root and `ip` (iproute2). Host `i` is the
//! namespace `iots-<pid>-<counter>-<i>` with `lo` up and one interface `veth0` holding
//! `10.<x>.<y>.<i+1>/24` (`x` from the pid, `y` from the counter). Two hosts share one veth pair;
//! three or more are each joined by a veth pair to a bridge in one more namespace,
//! `iots-<pid>-<counter>-br`. Nothing is created or changed in the test's own (root) namespace, and
//! the hosts have no route out of their namespaces, so only their own addresses are ever used.
//!
//! **Loopback** (`isolated() == false`): when namespaces cannot be made (not root, no `ip`, an
//! `ip` command failing) or `IOTSTREAM_TEST_NO_NETNS=1` is set, or by [`Hosts::loopback`], host `i`
//! is `127.0.<k>.<i+1>` in the test's own namespace and one line on stderr says so. Nothing is
//! isolated then: every host reaches every other host's address and shares one port space, a
//! connection from host `i` comes from 127.0.0.1 unless its socket binds host `i`'s address
//! first, and [`Hosts::cut`] cannot cut anything (it returns `false`).
//!
//! # Clean-up: what is guaranteed
//!
//! - Dropping [`Hosts`] deletes its namespaces (`ip netns del`; the veth pairs and the bridge go
//!   with them), also while a test unwinds from a panic. The kernel frees a namespace once nothing
//!   uses it any more: a process still running in it or a socket made in it keeps it alive, but
//!   its name is gone from `ip netns list` at once.
//! - A test process killed outright (SIGKILL) cannot clean up: [`Hosts::new`] first deletes every
//!   `iots-<pid>-*` namespace whose pid is no longer alive.
//! - A process started from [`Hosts::command`] gets SIGKILL when the *thread* that spawned it
//!   exits (`PR_SET_PDEATHSIG`), so also when the test process dies, however it dies. With the
//!   default test harness each test runs on its own thread, so such children end with their test
//!   at the latest. Consequence: a child spawned inside an [`Hosts::in_host`] closure dies when
//!   the closure returns; spawn children from the test's own thread.

// Each test file includes this module whole and uses only part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Setting this variable to `1` makes [`Hosts::new`] use loopback addresses, as when namespaces
/// cannot be made: the way to run the loopback flavor on a machine where namespaces work.
pub const NO_NETNS_ENV: &str = "IOTSTREAM_TEST_NO_NETNS";

/// Every namespace this module makes is named `iots-<pid>-...`; the sweep reads this prefix.
const NAME_PREFIX: &str = "iots-";

/// Where `ip netns` keeps its named namespaces (`/var/run/netns` is a link to it).
const NETNS_DIR: &str = "/run/netns";

/// The one interface of each host namespace (the veth end), same name in every namespace.
const HOST_DEVICE: &str = "veth0";

/// How often [`wait_lower_up`] reads a link's state, and how many times at most before it gives
/// up: 5 s in all, far beyond the few milliseconds a veth end takes to report its carrier.
const LINK_POLL_INTERVAL_MS: u64 = 10;
const LINK_POLL_COUNT_MAX: u32 = 500;

/// Distinguishes the [`Hosts`] of one test process (names and addresses).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `n` hosts (at least 2) for one test; dropping it removes everything it made. See the module
/// docs for the two flavors and what clean-up guarantees.
pub struct Hosts {
    flavor: Flavor,
}

/// How the hosts are made; private so a test sees one type whichever flavor it got.
enum Flavor {
    /// One network namespace per host.
    Netns(Netns),
    /// Addresses `127.0.k.(i+1)` in the test's own namespace.
    Loopback(Vec<Ipv4Addr>),
}

/// The namespaces of one [`Hosts`].
struct Netns {
    hosts: Vec<NsHost>,
    /// The namespace holding the bridge, when there are more than two hosts.
    bridge: Option<String>,
}

/// One host namespace.
struct NsHost {
    name: String,
    addr: Ipv4Addr,
    /// An open handle on the namespace, for `setns`; shared with the commands built for it.
    fd: Arc<OwnedFd>,
    /// The other end of this host's veth pair: (namespace, device).
    peer: (String, String),
}

impl Hosts {
    /// `n` hosts in network namespaces, or on loopback addresses (one line on stderr says why)
    /// when namespaces cannot be made or `IOTSTREAM_TEST_NO_NETNS=1`. First deletes the
    /// namespaces left by dead test processes.
    pub fn new(n: usize) -> Hosts {
        assert!(n >= 2, "Hosts::new needs at least 2 hosts, got {n}");
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        if std::env::var_os(NO_NETNS_ENV).is_some_and(|v| v == "1") {
            return Hosts::loopback_because(n, counter, &format!("{NO_NETNS_ENV}=1"));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Hosts::loopback_because(n, counter, "not root");
        }
        sweep_stale();
        match Netns::create(n, counter) {
            Ok(netns) => Hosts {
                flavor: Flavor::Netns(netns),
            },
            Err(why) => Hosts::loopback_because(n, counter, &why),
        }
    }

    /// `n` hosts on distinct loopback addresses `127.0.k.1..=127.0.k.n`, whatever the machine
    /// allows: the fallback flavor, forced.
    pub fn loopback(n: usize) -> Hosts {
        assert!(n >= 2, "Hosts::loopback needs at least 2 hosts, got {n}");
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        Hosts::loopback_raw(n, counter)
    }

    fn loopback_because(n: usize, counter: u32, why: &str) -> Hosts {
        let hosts = Hosts::loopback_raw(n, counter);
        let first = hosts.addr(0);
        let last = hosts.addr(n - 1);
        eprintln!(
            "netns: no network namespaces ({why}); hosts are {first}..={last} on this machine's \
             loopback, not isolated, links cannot be cut"
        );
        hosts
    }

    fn loopback_raw(n: usize, counter: u32) -> Hosts {
        assert!(n < 255, "at most 254 hosts, got {n}");
        let k = 1 + (std::process::id().wrapping_mul(31).wrapping_add(counter) % 254) as u8;
        let addrs = (0..n)
            .map(|i| Ipv4Addr::new(127, 0, k, i as u8 + 1))
            .collect();
        Hosts {
            flavor: Flavor::Loopback(addrs),
        }
    }

    /// True when the hosts are real network namespaces (isolated, links can be cut); false on
    /// the loopback flavor.
    pub fn isolated(&self) -> bool {
        matches!(self.flavor, Flavor::Netns(_))
    }

    /// The number of hosts.
    pub fn len(&self) -> usize {
        match &self.flavor {
            Flavor::Netns(netns) => netns.hosts.len(),
            Flavor::Loopback(addrs) => addrs.len(),
        }
    }

    /// Host `i`'s address: the one others reach it at, and the one it listens on.
    pub fn addr(&self, i: usize) -> IpAddr {
        self.check(i);
        match &self.flavor {
            Flavor::Netns(netns) => IpAddr::V4(netns.hosts[i].addr),
            Flavor::Loopback(addrs) => IpAddr::V4(addrs[i]),
        }
    }

    /// The names of every namespace these hosts made (hosts in order, then the bridge's if
    /// any); empty on the loopback flavor.
    pub fn names(&self) -> Vec<String> {
        match &self.flavor {
            Flavor::Netns(netns) => netns
                .hosts
                .iter()
                .map(|h| h.name.clone())
                .chain(netns.bridge.clone())
                .collect(),
            Flavor::Loopback(_) => Vec::new(),
        }
    }

    /// A command running `program` in host `i`'s namespace (on the loopback flavor, where the
    /// test runs). The process gets SIGKILL when the thread that spawns it exits (see the
    /// module docs).
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        self.check(i);
        let ns_fd = match &self.flavor {
            Flavor::Netns(netns) => Some(Arc::clone(&netns.hosts[i].fd)),
            Flavor::Loopback(_) => None,
        };
        let parent = std::process::id();
        let mut command = Command::new(program);
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe system calls (setns, prctl, getppid); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = &ns_fd {
                    if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl: then no signal would ever come.
                if libc::getppid() as u32 != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `f` in host `i`'s namespace (on a thread of its own that entered it) and returns
    /// its result; a panic in `f` goes on in the caller. On the loopback flavor `f` runs on the
    /// calling thread.
    pub fn in_host<R: Send>(&self, i: usize, f: impl FnOnce() -> R + Send) -> R {
        self.check(i);
        let fd = match &self.flavor {
            Flavor::Netns(netns) => &netns.hosts[i].fd,
            Flavor::Loopback(_) => return f(),
        };
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-host-{i}"))
                .spawn_scoped(scope, move || {
                    // Only this thread moves; it ends with `f`, so no other code runs here.
                    nix::sched::setns(fd.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns into host {i}'s namespace: {e}"));
                    f()
                })
                .expect("spawn a thread for in_host");
            thread
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// Sets host `i`'s link down: packets to and from it are dropped until [`Hosts::heal`], and
    /// its established connections stay open. Returns false, doing nothing, on the loopback
    /// flavor, where no link can be cut; a test that needs the cut checks it.
    #[must_use = "false means nothing was cut (loopback flavor)"]
    pub fn cut(&self, i: usize) -> bool {
        self.check(i);
        let Flavor::Netns(netns) = &self.flavor else {
            return false;
        };
        let host = &netns.hosts[i];
        ip(&["-n", &host.name, "link", "set", HOST_DEVICE, "down"])
            .unwrap_or_else(|e| panic!("cut host {i}: {e}"));
        true
    }

    /// Sets host `i`'s link up again and waits until both ends of its veth pair carry traffic.
    /// Returns false, doing nothing, on the loopback flavor.
    #[must_use = "false means there was no link to heal (loopback flavor)"]
    pub fn heal(&self, i: usize) -> bool {
        self.check(i);
        let Flavor::Netns(netns) = &self.flavor else {
            return false;
        };
        let host = &netns.hosts[i];
        ip(&["-n", &host.name, "link", "set", HOST_DEVICE, "up"])
            .and_then(|()| host.wait_up())
            .unwrap_or_else(|e| panic!("heal host {i}: {e}"));
        true
    }

    /// Kills (`ss -K`) the established TCP connections in host `i` whose local or remote port is
    /// `port`, and returns how many: the local socket fails with `ECONNABORTED`, the peer gets a
    /// reset when the link carries it. On the loopback flavor this acts on the test's own
    /// namespace (needs root). Zero killed may also mean a kernel without
    /// `CONFIG_INET_DIAG_DESTROY`; a test expecting a kill checks the count.
    pub fn kill_tcp(&self, i: usize, port: u16) -> Result<usize, String> {
        let filter = format!("( sport = :{port} or dport = :{port} )");
        let out = self
            .command(i, "ss")
            .args(["-K", "-H", "-t", "state", "established", &filter])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("`ss -K` in host {i}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`ss -K` in host {i}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let killed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count();
        Ok(killed)
    }

    fn check(&self, i: usize) {
        assert!(i < self.len(), "host {i} of {}", self.len());
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let Flavor::Netns(netns) = &self.flavor else {
            return;
        };
        // Never panic here: Drop also runs while a failed test unwinds.
        let names = netns.hosts.iter().map(|h| &h.name).chain(&netns.bridge);
        for name in names {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("netns: could not delete namespace {name}: {e}");
            }
        }
    }
}

impl Netns {
    /// Makes `n` host namespaces joined by veth pairs; on any failure deletes what it made and
    /// says what failed.
    fn create(n: usize, counter: u32) -> Result<Netns, String> {
        assert!(n < 255, "at most 254 hosts, got {n}");
        let pid = std::process::id();
        let base = format!("{NAME_PREFIX}{pid}-{counter}");
        let mut made = Made(Vec::new());
        for i in 0..n {
            let name = format!("{base}-{i}");
            ip(&["netns", "add", &name])?;
            made.0.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let names = made.0.clone();
        let bridge = if n == 2 {
            ip(&[
                "-n",
                &names[0],
                "link",
                "add",
                HOST_DEVICE,
                "type",
                "veth",
                "peer",
                "name",
                HOST_DEVICE,
                "netns",
                &names[1],
            ])?;
            None
        } else {
            let bridge = format!("{base}-br");
            ip(&["netns", "add", &bridge])?;
            made.0.push(bridge.clone());
            ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
            for (i, name) in names.iter().enumerate() {
                let port = format!("p{i}");
                ip(&[
                    "-n",
                    name,
                    "link",
                    "add",
                    HOST_DEVICE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &bridge,
                ])?;
                ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            }
            Some(bridge)
        };
        let (x, y) = ((pid & 0xff) as u8, (counter & 0xff) as u8);
        let mut hosts = Vec::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            let addr = Ipv4Addr::new(10, x, y, i as u8 + 1);
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                HOST_DEVICE,
            ])?;
            ip(&["-n", name, "link", "set", HOST_DEVICE, "up"])?;
            let fd = File::open(format!("{NETNS_DIR}/{name}"))
                .map_err(|e| format!("open {NETNS_DIR}/{name}: {e}"))?;
            let peer = match &bridge {
                None => (names[1 - i].clone(), HOST_DEVICE.to_string()),
                Some(bridge) => (bridge.clone(), format!("p{i}")),
            };
            hosts.push(NsHost {
                name: name.clone(),
                addr,
                fd: Arc::new(fd.into()),
                peer,
            });
        }
        for host in &hosts {
            host.wait_up()?;
        }
        made.0.clear(); // from here on, Hosts' Drop deletes them
        Ok(Netns { hosts, bridge })
    }
}

impl NsHost {
    /// Waits until both ends of this host's veth pair report a carrier (`LOWER_UP`): before
    /// that, packets may be dropped.
    fn wait_up(&self) -> Result<(), String> {
        wait_lower_up(&self.name, HOST_DEVICE)?;
        wait_lower_up(&self.peer.0, &self.peer.1)
    }
}

/// Namespaces made so far by [`Netns::create`], deleted if it returns early.
struct Made(Vec<String>);

impl Drop for Made {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("netns: could not delete namespace {name}: {e}");
            }
        }
    }
}

/// Polls the device's flags until it reports `LOWER_UP`, at most [`LINK_POLL_COUNT_MAX`] times.
fn wait_lower_up(ns: &str, device: &str) -> Result<(), String> {
    for _ in 0..LINK_POLL_COUNT_MAX {
        let out = ip_output(&["-n", ns, "-o", "link", "show", "dev", device])?;
        if out.contains("LOWER_UP") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(LINK_POLL_INTERVAL_MS));
    }
    Err(format!(
        "{device} in {ns} has no carrier after {} ms",
        LINK_POLL_INTERVAL_MS * u64::from(LINK_POLL_COUNT_MAX)
    ))
}

/// Deletes the namespaces named `iots-<pid>-...` whose pid is no longer alive: what a test
/// killed by SIGKILL left. A pid reused by another process keeps its namespaces until it ends,
/// which is harmless. Errors are ignored: a concurrent sweep may delete the same namespace.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = stale_pid(name) else { continue };
        if pid != own && !pid_alive(pid) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The pid in a name `iots-<pid>-<rest>`, if the name has that form.
fn stale_pid(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix(NAME_PREFIX)?.split_once('-')?;
    if rest.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this pid exists (EPERM means it does, owned by someone else).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

/// Runs `ip ARGS`; an error names the command and carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    ip_output(args).map(drop)
}

/// Runs `ip ARGS` and returns its stdout; an error names the command and carries its stderr.
fn ip_output(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`ip {}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}`: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
