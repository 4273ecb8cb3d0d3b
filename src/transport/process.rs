//! The liveness of a process on this host, read from the kernel: whether a peer of a ring is
//! still there, a zombie, or stopped. Used by both ends of a ring and by the supervisor.

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// True if a process with this pid exists in this PID namespace and has not exited (a zombie,
/// exited but not yet reaped by its parent, counts as dead). It may belong to another user.
/// Only meaningful for processes of this namespace (a run's own processes): whether a run's
/// owner is alive is decided by its liveness lock instead.
pub(crate) fn pid_alive(pid: u32) -> bool {
    // Pid 0 and values beyond i32 would name a process group to kill(2), not a process.
    let raw = match i32::try_from(pid) {
        Ok(raw) if raw > 0 => raw,
        _ => return false,
    };
    let exists = match kill(Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    exists && !is_zombie(pid)
}

/// True if `pid` is a zombie (exited, not yet reaped by its waiter thread). A pid without a
/// readable `/proc` entry is not known to be one (a `/proc` of another PID namespace, say).
pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// True if `pid` is stopped (SIGSTOP, SIGTSTP, a debugger): alive, but it makes no progress.
pub(crate) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')').next().is_some_and(|rest| {
                let rest = rest.trim_start();
                rest.starts_with('T') || rest.starts_with('t')
            })
        })
        .unwrap_or(false)
}
