//! Self-tests of the multi-host test harness (`tests/support/netns.rs`): hosts reach each other
//! from threads and from child processes, a cut link stops new connections and a healed one lets
//! them through again (an open connection survives both), hosts are isolated from each other and
//! from the test's own namespace, a connection killed in one host fails on both ends, and nothing is left behind, not after a panic either, nor by a
//! test process that died.
//!
//! Each scenario runs on the namespace flavor when this machine allows it (root, `ip`), and the
//! scenarios that make sense there also on the forced loopback flavor. A test that needs
//! namespaces and cannot have them says so on stderr and checks the loopback behaviour instead.

#[path = "support/netns.rs"]
mod netns;

use netns::Hosts;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set in a re-executed test binary: connect to this address, send [`GREETING`], exit.
const CHILD_CONNECT_ENV: &str = "IOTS_NETNS_TEST_CONNECT";
/// Set in a re-executed test binary: build `Hosts::new(2)` and check it is the loopback flavor.
const CHILD_EXPECT_LOOPBACK_ENV: &str = "IOTS_NETNS_TEST_EXPECT_LOOPBACK";
const GREETING: &[u8] = b"hello across hosts";
/// Long enough for any connection that can succeed on one machine; a test only waits this long
/// when something is already wrong.
const PATIENCE: Duration = Duration::from_secs(10);
/// Used only where a connect must fail: how long a failing connect attempt is allowed to take.
const CUT_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Both flavors: the namespaces when they can be made, and the loopback flavor forced.
fn flavors(n: usize) -> Vec<(&'static str, Hosts)> {
    vec![("default", Hosts::new(n)), ("loopback", Hosts::loopback(n))]
}

/// A listener on host `i`'s address, any port, made inside host `i`.
fn listen(hosts: &Hosts, i: usize) -> (TcpListener, SocketAddr) {
    let listener = hosts.in_host(i, || TcpListener::bind((hosts.addr(i), 0)).expect("bind"));
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Connects from host `i` to `to`, waiting at most `timeout`.
fn connect_from(
    hosts: &Hosts,
    i: usize,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    hosts.in_host(i, || TcpStream::connect_timeout(&to, timeout))
}

/// Accepts one connection, reads [`GREETING`] from it, and returns the peer's address.
fn accept_greeting(listener: &TcpListener) -> IpAddr {
    let (mut stream, peer) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut buf = vec![0; GREETING.len()];
    stream.read_exact(&mut buf).expect("read greeting");
    assert_eq!(buf, GREETING);
    peer.ip()
}

/// The address a connection from host `i` arrives from: host `i`'s own on namespaces; on the
/// loopback flavor the kernel picks 127.0.0.1 for a socket that did not bind its source.
fn seen_from(hosts: &Hosts, i: usize) -> IpAddr {
    if hosts.isolated() {
        hosts.addr(i)
    } else {
        [127, 0, 0, 1].into()
    }
}

/// This test binary, re-executed to run only the test `name` (which sees its role in the
/// environment).
fn this_test(hosts: Option<(&Hosts, usize)>, name: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = match hosts {
        Some((hosts, i)) => hosts.command(i, exe),
        None => Command::new(exe),
    };
    command.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    command
}

/// The names `ip netns list` shows.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(out.status.success(), "ip netns list: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn a_listener_in_one_host_accepts_a_connection_from_another() {
    for (label, hosts) in flavors(2) {
        let (listener, addr) = listen(&hosts, 1);
        let mut stream = connect_from(&hosts, 0, addr, PATIENCE).expect(label);
        stream.write_all(GREETING).expect(label);
        // The listener sees host 0's address: the connection left from host 0.
        assert_eq!(accept_greeting(&listener), seen_from(&hosts, 0), "{label}");
    }
}

#[test]
fn a_child_process_started_in_a_host_connects_from_it() {
    if let Ok(to) = std::env::var(CHILD_CONNECT_ENV) {
        let to: SocketAddr = to.parse().expect("address to connect to");
        let mut stream = TcpStream::connect_timeout(&to, PATIENCE).expect("child connects");
        stream.write_all(GREETING).expect("child writes");
        return;
    }
    for (label, hosts) in flavors(2) {
        let (listener, addr) = listen(&hosts, 1);
        let status = this_test(
            Some((&hosts, 0)),
            "a_child_process_started_in_a_host_connects_from_it",
        )
        .env(CHILD_CONNECT_ENV, addr.to_string())
        .stdout(Stdio::null())
        .status()
        .expect(label);
        assert!(status.success(), "{label}: child {status}");
        // The child is done; its connection waits, complete, in the listener's queue.
        assert_eq!(accept_greeting(&listener), seen_from(&hosts, 0), "{label}");
    }
}

#[test]
fn a_command_runs_in_its_hosts_namespace() {
    let hosts = Hosts::new(2);
    if !hosts.isolated() {
        eprintln!("netns unavailable: the loopback flavor has no namespace to check");
        return;
    }
    let out = hosts
        .command(1, "ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("inet {}/24", hosts.addr(1))),
        "{text}"
    );
    assert!(
        !text.contains(&format!("inet {}/", hosts.addr(0))),
        "{text}"
    );
}

#[test]
fn a_cut_link_refuses_new_connections_until_healed_and_an_open_one_survives() {
    let hosts = Hosts::new(2);
    let (listener, addr) = listen(&hosts, 1);
    let mut open = connect_from(&hosts, 0, addr, PATIENCE).expect("connect before the cut");
    let (mut accepted, _) = listener.accept().expect("accept before the cut");

    if !hosts.cut(1) {
        eprintln!("netns unavailable: loopback flavor, no link to cut");
        assert!(!hosts.heal(1));
        return;
    }
    // Written during the cut: stays in host 0's send buffer, TCP retransmits after the heal.
    open.write_all(GREETING).expect("write during the cut");
    let during = connect_from(&hosts, 0, addr, CUT_CONNECT_TIMEOUT);
    assert!(during.is_err(), "connected across a cut link: {during:?}");

    assert!(hosts.heal(1));
    let mut after = connect_from(&hosts, 0, addr, PATIENCE).expect("connect after the heal");
    after.write_all(GREETING).expect("write after the heal");
    assert_eq!(accept_greeting(&listener), seen_from(&hosts, 0));

    accepted
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut buf = vec![0; GREETING.len()];
    accepted
        .read_exact(&mut buf)
        .expect("bytes written during the cut arrive after the heal");
    assert_eq!(buf, GREETING);
}

#[test]
fn a_killed_connection_fails_on_both_ends() {
    let hosts = Hosts::new(2);
    if !hosts.isolated() {
        eprintln!("netns unavailable: killing sockets in the test's own namespace is not checked");
        return;
    }
    let (listener, addr) = listen(&hosts, 1);
    let mut client = connect_from(&hosts, 0, addr, PATIENCE).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    // One connection killed; the listener (not established) is left alone.
    assert_eq!(hosts.kill_tcp(1, addr.port()), Ok(1));

    server
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let err = server
        .read(&mut [0; 1])
        .expect_err("read on a killed socket");
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted);
    // The reset reached host 0.
    client
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let err = client
        .read(&mut [0; 1])
        .expect_err("read after the peer's reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    // The listener still accepts.
    let mut again = connect_from(&hosts, 0, addr, PATIENCE).expect("connect again");
    again.write_all(GREETING).expect("write");
    assert_eq!(accept_greeting(&listener), hosts.addr(0));
}

#[test]
fn three_hosts_share_a_bridge_and_one_cut_isolates_one_host() {
    let hosts = Hosts::new(3);
    let (listener, addr) = listen(&hosts, 2);
    for from in 0..2 {
        let mut stream = connect_from(&hosts, from, addr, PATIENCE).expect("connect to host 2");
        stream.write_all(GREETING).expect("write");
        assert_eq!(accept_greeting(&listener), seen_from(&hosts, from));
    }
    if !hosts.cut(0) {
        eprintln!("netns unavailable: loopback flavor, no link to cut");
        return;
    }
    assert!(connect_from(&hosts, 0, addr, CUT_CONNECT_TIMEOUT).is_err());
    // Host 1's link is untouched.
    connect_from(&hosts, 1, addr, PATIENCE).expect("host 1 still reaches host 2");
    assert!(hosts.heal(0));
    connect_from(&hosts, 0, addr, PATIENCE).expect("host 0 reaches host 2 after the heal");
}

#[test]
fn hosts_are_isolated_from_each_other_and_from_the_tests_namespace() {
    for (label, hosts) in flavors(2) {
        // Host 1 listens on its own loopback.
        let listener = hosts.in_host(1, || TcpListener::bind(("127.0.0.1", 0)).expect(label));
        let port = listener.local_addr().expect(label).port();
        let from_host0 = connect_from(&hosts, 0, ([127, 0, 0, 1], port).into(), PATIENCE);
        // Host 1's address does not exist in the test's namespace (bind sends no packet).
        let bound_here = TcpListener::bind((hosts.addr(1), 0));
        if hosts.isolated() {
            let err = from_host0.expect_err("host 0 reached host 1's loopback");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{label}");
            let err = bound_here.expect_err("host 1's address exists outside host 1");
            assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{label}");
        } else {
            // The loopback flavor isolates nothing, as documented.
            from_host0.expect(label);
            bound_here.expect(label);
        }
    }
}

#[test]
fn dropping_hosts_removes_their_namespaces_even_after_a_panic() {
    let hosts = Hosts::new(3);
    let names = hosts.names();
    if !hosts.isolated() {
        eprintln!("netns unavailable: loopback flavor makes no namespace");
        assert!(names.is_empty());
        return;
    }
    assert_eq!(names.len(), 4, "three hosts and a bridge: {names:?}");
    let listed = netns_list();
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "{names:?} not all in {listed:?}"
    );
    drop(hosts);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} left in {listed:?}"
    );

    let (send, receive) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let hosts = Hosts::new(2);
        send.send(hosts.names()).expect("send names");
        panic!("a test body fails while its hosts exist");
    });
    assert!(result.is_err());
    let names = receive.recv().expect("names from the panicking body");
    assert_eq!(names.len(), 2);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} left in {listed:?}"
    );
}

#[test]
fn namespaces_left_by_a_dead_test_process_are_swept() {
    // A pid that is surely dead: a child that already exited and was reaped.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead_pid = child.id();
    child.wait().expect("wait true");
    let stale = format!("iots-{dead_pid}-0-0");
    let made = Command::new("ip").args(["netns", "add", &stale]).output();
    if !made.is_ok_and(|out| out.status.success()) {
        eprintln!("netns unavailable: cannot make a namespace to sweep");
        return;
    }
    // Removes the stale namespace if the sweep does not, so this test leaves nothing either way.
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    // No check that it is listed now: a concurrent test's sweep may already have deleted it.
    let _guard = Guard(stale.clone());

    let hosts = Hosts::new(2);
    assert!(hosts.isolated());
    assert!(!netns_list().contains(&stale), "{stale} not swept");
}

#[test]
fn a_child_dies_when_the_thread_that_spawned_it_ends() {
    for (label, hosts) in flavors(2) {
        let mut child = std::thread::scope(|scope| {
            scope
                .spawn(|| hosts.command(1, "sleep").arg("60").spawn().expect(label))
                .join()
                .expect(label)
        });
        let status = child.wait().expect(label);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{label}: {status}");
    }
}

#[test]
fn the_environment_variable_forces_the_loopback_flavor_and_says_so() {
    const NAME: &str = "the_environment_variable_forces_the_loopback_flavor_and_says_so";
    if std::env::var_os(CHILD_EXPECT_LOOPBACK_ENV).is_some() {
        let hosts = Hosts::new(2);
        assert!(!hosts.isolated());
        assert!(hosts.names().is_empty());
        for i in 0..2 {
            let IpAddr::V4(addr) = hosts.addr(i) else {
                panic!("IPv4 expected")
            };
            assert!(addr.is_loopback(), "{addr}");
        }
        assert_ne!(hosts.addr(0), hosts.addr(1));
        assert!(!hosts.cut(0));
        return;
    }
    let out = this_test(None, NAME)
        .env(netns::NO_NETNS_ENV, "1")
        .env(CHILD_EXPECT_LOOPBACK_ENV, "1")
        .output()
        .expect("re-run this test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let said = stderr
        .lines()
        .filter(|l| l.starts_with("netns: no network namespaces"))
        .count();
    assert_eq!(said, 1, "one line says the hosts are on loopback: {stderr}");
    assert!(
        stderr.contains(&format!("({}=1)", netns::NO_NETNS_ENV)),
        "{stderr}"
    );
}
