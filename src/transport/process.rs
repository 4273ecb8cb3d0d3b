//! The liveness of a process on this host, read from the kernel: whether a peer of a ring is
//! still there, a zombie, or stopped. Used by both ends of a ring and by the supervisor.
//!
//! A pid names a process only until the process is gone: the kernel hands it out again once
//! pids wrap (at `/proc/sys/kernel/pid_max`, 32,768 on many small boards). Where a pid was
//! recorded for later (a ring's roles), its process's **start stamp** goes with it
//! ([`start_stamp`]), and [`alive_since`] counts a process with that pid but another stamp as
//! the recorded one's successor: the recorded process is dead.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// True if a process with this pid exists in this PID namespace and has not exited (a zombie,
/// exited but not yet reaped by its parent, counts as dead). It may belong to another user.
/// Only meaningful for processes of this namespace (a run's own processes): whether a run's
/// owner is alive is decided by its liveness lock instead.
pub(crate) fn pid_alive(pid: u32) -> bool {
    exists(pid) && !is_zombie(pid)
}

/// True if the process recorded as `pid` with start stamp `started` ([`start_stamp`], 0 if not
/// known) is alive: [`pid_alive`], and the process that has the pid now started when the
/// recorded one did. A process that `/proc` does not show (another PID namespace's `/proc`) is
/// judged by its pid alone, as is a record without a stamp.
pub(crate) fn alive_since(pid: u32, started: u32) -> bool {
    if !exists(pid) {
        return false;
    }
    match stat(pid) {
        Look::Read(now) => !now.is_zombie() && (started == 0 || now.started == started),
        // Exited between the two looks; or a `/proc` of another PID namespace, which has no
        // entry for a process that `kill` still finds: then the pid alone decides.
        Look::Gone => exists(pid),
        Look::Unreadable => true,
    }
}

/// The start stamp of process `pid`: 1 + its start time (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`) modulo `u32::MAX`, so never 0; `None` if it cannot be read.
pub(crate) fn start_stamp(pid: u32) -> Option<u32> {
    match stat(pid) {
        Look::Read(s) => Some(s.started),
        Look::Gone | Look::Unreadable => None,
    }
}

/// This process's [`start_stamp`], read once per process; 0 (not known) while `/proc` cannot
/// be read (a failed read is tried again next time, not kept). Kept with the pid it was read
/// for, so that a child forked without `exec` (which inherits this memory) reads its own.
/// Allocates nothing (a forked child of a threaded process may call it).
pub(crate) fn own_start_stamp() -> u32 {
    static OWN: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let known = OWN.load(Ordering::Relaxed);
    if known != 0 && known as u32 == pid {
        return (known >> 32) as u32;
    }
    let stamp = start_stamp(pid).unwrap_or(0);
    if stamp != 0 {
        OWN.store((u64::from(stamp) << 32) | u64::from(pid), Ordering::Relaxed);
    }
    stamp
}

/// Whether `kill(pid, 0)` finds a process (possibly a zombie, possibly another user's).
fn exists(pid: u32) -> bool {
    // Pid 0 and values beyond i32 would name a process group to kill(2), not a process.
    let raw = match i32::try_from(pid) {
        Ok(raw) if raw > 0 => raw,
        _ => return false,
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// What a look at `/proc/<pid>/stat` found.
enum Look {
    /// The line, parsed.
    Read(Stat),
    /// No such entry: the process has exited (and been reaped).
    Gone,
    /// The entry exists but could not be read or parsed.
    Unreadable,
}

/// What this module reads of `/proc/<pid>/stat`.
struct Stat {
    /// The state letter (field 3).
    state: u8,
    /// The start stamp (see [`start_stamp`]).
    started: u32,
}

impl Stat {
    /// State `Z`: exited, not yet reaped.
    fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }
}

/// Reads `/proc/<pid>/stat` into a buffer on the stack (the line is a few hundred bytes; the
/// command name at most 64): no allocation, so a forked child may call it.
fn stat(pid: u32) -> Look {
    use std::io::{ErrorKind, Read, Write};
    let mut path = [0u8; 32];
    let mut w = &mut path[..];
    if write!(w, "/proc/{pid}/stat").is_err() {
        return Look::Unreadable;
    }
    let left = w.len();
    let Ok(path) = std::str::from_utf8(&path[..path.len() - left]) else {
        return Look::Unreadable;
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Look::Gone,
        Err(_) => return Look::Unreadable,
    };
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // ESRCH: the process exited while its entry was open.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Look::Gone,
            Err(_) => return Look::Unreadable,
        }
    }
    parse_stat(&buf[..len]).map_or(Look::Unreadable, Look::Read)
}

/// Parses a `/proc/<pid>/stat` line, as bytes: the command name (field 2, in parentheses) may
/// hold any bytes but NUL and `/`, spaces and parentheses among them, so the fields are counted
/// from the last `)`: state is field 3, the start time field 22.
fn parse_stat(line: &[u8]) -> Option<Stat> {
    let after_name = line.iter().rposition(|&b| b == b')')? + 1;
    let rest = std::str::from_utf8(&line[after_name..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let start_ticks: u64 = fields.nth(18)?.parse().ok()?;
    Some(Stat {
        state: state.bytes().next()?,
        started: (start_ticks % u64::from(u32::MAX)) as u32 + 1,
    })
}

/// True if `pid` is a zombie (exited, not yet reaped by its waiter thread). A pid without a
/// readable `/proc` entry is not known to be one (a `/proc` of another PID namespace, say).
pub(crate) fn is_zombie(pid: u32) -> bool {
    matches!(stat(pid), Look::Read(s) if s.is_zombie())
}

/// True if `pid` is stopped (SIGSTOP, SIGTSTP, a debugger): alive, but it makes no progress.
pub(crate) fn is_stopped(pid: u32) -> bool {
    matches!(stat(pid), Look::Read(s) if matches!(s.state, b'T' | b't'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis of its own, as `(sd-pam)` or a
        // hostile `a) Z 1 (`: the fields are counted from the last `)`.
        let fields_after = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 19 20";
        let line = format!("77 (a) Z 1 (b) {fields_after}");
        let s = parse_stat(line.as_bytes()).unwrap();
        assert!(!s.is_zombie());
        assert_eq!(s.started, 4243);
        let zombie =
            parse_stat(b"9 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 7 1").unwrap();
        assert!(zombie.is_zombie());
        assert_eq!(zombie.started, 8);
        // A name that is not UTF-8 (cut inside a character, or set with prctl) is read too.
        let mut odd = b"5 (caf\xc3".to_vec();
        odd.extend_from_slice(b") T 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99 1");
        let odd = parse_stat(&odd).unwrap();
        assert_eq!((odd.state, odd.started), (b'T', 100));
        // Truncated or garbled lines are not known, never a stamp of 0.
        assert!(parse_stat(b"9 (x) S 1 2").is_none());
        assert!(parse_stat(b"9 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 no").is_none());
        assert!(parse_stat(b"no parenthesis").is_none());
        let wraps = format!(
            "1 (w) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 {}",
            u32::MAX
        );
        assert_eq!(parse_stat(wraps.as_bytes()).unwrap().started, 1);
    }

    #[test]
    fn a_process_is_alive_since_its_own_start_and_not_since_another() {
        let me = std::process::id();
        let stamp = own_start_stamp();
        assert_ne!(
            stamp, 0,
            "this host's /proc gives this process a start stamp"
        );
        assert_eq!(start_stamp(me), Some(stamp));
        assert!(alive_since(me, stamp));
        assert!(
            alive_since(me, 0),
            "a record without a stamp goes by the pid"
        );
        // The same pid, recorded for a process that started at another time: a process the
        // kernel gave the pid since, so the recorded one is dead.
        assert!(!alive_since(me, stamp.wrapping_add(1).max(1)));
        // A pid nobody has.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!alive_since(gone, 0));
        assert!(!pid_alive(gone));
    }
}
