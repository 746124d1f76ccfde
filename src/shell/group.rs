//! The process-wide registry of running command groups, and how a group is ended.
//!
//! Every command runs as the leader of its own process group. While it runs, its group is in
//! [`REGISTRY`], so that a termination signal to warmcache ([`super::signals`]) can end every
//! running group. Once the registry has been marked interrupted, no new command starts: the mark
//! and the spawn are under one lock, so a command either is registered before the signal's
//! handler looks, or never starts.

use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long to wait for a group sent SIGKILL to be gone. Only a process stuck in the kernel
/// (uninterruptible sleep) takes more than a moment; after this we give up waiting, with a warning.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often a group's end is checked while waiting for it.
const POLL: Duration = Duration::from_millis(10);

/// The running groups and whether a termination signal arrived.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// The signal that asked warmcache to end, once one did.
    pub(super) interrupted: Option<i32>,
    /// Process group ids (the `sh` leaders' pids) of the commands running now.
    pub(super) groups: Vec<u32>,
}

pub(super) static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    interrupted: None,
    groups: Vec::new(),
});

/// The registry, also after a panic elsewhere poisoned its lock (it holds plain data).
pub(super) fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why [`spawn`] did not start the command.
pub(super) enum NotStarted {
    /// warmcache is ending on this signal; nothing new starts.
    Interrupted(i32),
    /// The OS refused.
    Failed(std::io::Error),
}

/// Starts `cmd` in a new process group that dies with this thread, and registers the group,
/// unless warmcache is already ending. On Linux the group's leader is a small supervisor forked
/// from warmcache (`supervisor`): it runs the command as its child, exits as the command did,
/// and kills the whole group if this thread dies, even by SIGKILL.
///
/// The parent-death signal is bound to the thread that forks, so the caller must be the thread
/// that waits for the command (as [`super::run`] is): it lives until the command ends.
pub(super) fn spawn(cmd: &mut Command) -> Result<Child, NotStarted> {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: the closure runs in the forked child before exec and makes only
            // async-signal-safe system calls; it allocates nothing (see `supervise`).
            unsafe {
                cmd.pre_exec(move || super::supervisor::supervise(parent));
            }
        }
    }
    let mut registry = registry();
    if let Some(signal) = registry.interrupted {
        return Err(NotStarted::Interrupted(signal));
    }
    let child = cmd.spawn().map_err(NotStarted::Failed)?;
    registry.groups.push(child.id());
    Ok(child)
}

/// Ends what is left of the group of a command whose leader has exited (or was killed): SIGKILL
/// to the group, wait until none of it runs, then forget it. Returns once nothing of the group
/// runs, so a lock released after this guards nothing still running.
pub(super) fn finish(pgid: u32) {
    kill(pgid, Signal::Kill);
    wait_gone(pgid, KILL_WAIT);
    registry().groups.retain(|&g| g != pgid);
}

/// Ends the group gracefully: SIGTERM, up to `grace` for it to end (returning early when
/// `ended` says it did), then SIGKILL.
pub(super) fn terminate(pgid: u32, grace: Duration, mut ended: impl FnMut(Duration) -> bool) {
    kill(pgid, Signal::Term);
    if !ended(grace) {
        kill(pgid, Signal::Kill);
    }
}

/// A signal for a group.
#[derive(Debug, Clone, Copy)]
pub(super) enum Signal {
    Term,
    Kill,
}

/// Signals the process group `pgid`; a group that is already gone is fine.
pub(super) fn kill(pgid: u32, signal: Signal) {
    #[cfg(unix)]
    {
        use rustix::process::{Pid, Signal as Sig, kill_process_group};
        let sig = match signal {
            Signal::Term => Sig::TERM,
            Signal::Kill => Sig::KILL,
        };
        if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, sig);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (pgid, signal);
    }
}

/// Waits up to `limit` until no process of group `pgid` runs; true if none does.
pub(super) fn wait_gone(pgid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !running(pgid) {
            return true;
        }
        if start.elapsed() >= limit {
            tracing::warn!("process group {pgid} is still running {limit:?} after SIGKILL");
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether any process of group `pgid` still runs. A zombie does not: it runs nothing and only
/// waits for its parent (or init) to collect its exit status.
pub(super) fn running(pgid: u32) -> bool {
    #[cfg(unix)]
    {
        use rustix::process::{Pid, test_kill_process_group};
        let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        if test_kill_process_group(pid) == Err(rustix::io::Errno::SRCH) {
            return false;
        }
        #[cfg(target_os = "linux")]
        {
            linux_running_members(pgid)
        }
        #[cfg(not(target_os = "linux"))]
        {
            true
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pgid;
        false
    }
}

/// Whether /proc lists a process of group `pgid` that is not a zombie.
#[cfg(target_os = "linux")]
fn linux_running_members(pgid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses, so parse from
        // the last `)`.
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        if pgrp == Some(pgid) && !matches!(state, "Z" | "X" | "x") {
            return true;
        }
    }
    false
}
