//! Termination signals: SIGINT, SIGTERM and SIGHUP end every running command's whole process
//! group before warmcache exits (docs/DESIGN.md, "Nothing outlives its command").
//!
//! [`install`] blocks the three signals in the calling thread (and so in every thread started
//! after it) and starts one watcher thread that takes them with `sigwait`: no code runs in a
//! signal handler, so the watcher may lock, allocate and log. On the first signal it marks the
//! registry interrupted (no command starts after that) and ends every running group: SIGTERM,
//! [`GRACE`] to end, then SIGKILL, waiting until nothing of it runs. The thread that ran the
//! command then sees [`super::Termination::Interrupted`] and unwinds normally: its staging is
//! removed and its locks are released by their drops, and the caller exits with
//! [`exit_code`]. A second signal skips the grace.
//!
//! When no command is running, there is nothing to wait for and no safe point to stop the work
//! in progress, so the watcher exits the process at once with the same code; the kernel releases
//! its locks and the next run sweeps its staging (docs/DESIGN.md, "Staging and lock files").

use std::time::Duration;

use super::group::{self, Signal};

/// Between SIGTERM and SIGKILL, how long a command's group gets to end after warmcache was asked
/// to stop.
pub const GRACE: Duration = Duration::from_secs(2);
/// After the groups are gone, how long the thread that ran them gets to clean up and return
/// before the watcher exits the process anyway.
const UNWIND_LIMIT: Duration = Duration::from_secs(60);

/// The signal that asked warmcache to end, if one did.
pub fn interrupted_by() -> Option<i32> {
    group::registry().interrupted
}

/// A signal's name for messages: `SIGINT`, `SIGTERM`, `SIGHUP`, else `signal N`.
pub fn name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        _ => format!("signal {signal}"),
    }
}

/// The conventional exit code for ending on `signal`: 128 + its number (130 for SIGINT, 143 for
/// SIGTERM, 129 for SIGHUP).
pub fn exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// Takes over SIGINT, SIGTERM and SIGHUP for the whole process (see the module documentation).
/// Call it first thing in `main`, before any other thread starts: threads started earlier would
/// still receive the signals with their default action. Commands started later get the default
/// signal mask back (the standard library resets it in the child).
pub fn install() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let set = termination_set()?;
        // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        std::thread::Builder::new()
            .name("warmcache-signals".into())
            .spawn(move || watch(set))?;
    }
    Ok(())
}

#[cfg(unix)]
fn termination_set() -> std::io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only adds valid signal numbers to it.
    unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            if libc::sigaddset(set.as_mut_ptr(), sig) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(set.assume_init())
    }
}

/// The watcher thread: waits for the first signal, ends the running groups, and makes sure the
/// process ends.
#[cfg(unix)]
fn watch(set: libc::sigset_t) {
    let Some(signal) = next_signal(&set, None) else {
        return;
    };
    let groups = {
        let mut registry = group::registry();
        registry.interrupted = Some(signal);
        registry.groups.clone()
    };
    if groups.is_empty() {
        leave(signal);
    }
    tracing::warn!(
        "received {}; stopping the running command with its process group",
        name(signal)
    );
    for &pgid in &groups {
        group::kill(pgid, Signal::Term);
    }
    // Another signal while the groups have their grace ends them at once.
    let deadline = std::time::Instant::now() + GRACE;
    let mut hurry = false;
    while !hurry && groups.iter().any(|&g| group::running(g)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        hurry = next_signal(&set, Some(left.min(Duration::from_millis(20)))).is_some();
    }
    for &pgid in &groups {
        group::kill(pgid, Signal::Kill);
    }
    for &pgid in &groups {
        group::wait_gone(pgid, GRACE * 5);
    }
    if hurry {
        leave(signal);
    }
    // The thread that ran the command now unwinds and the process exits with the signal's code;
    // if it does not within the limit (or a further signal comes), end the process anyway.
    let _ = next_signal(&set, Some(UNWIND_LIMIT));
    leave(signal);
}

/// Exits the process at once with the code for `signal`, without running destructors in other
/// threads: whatever they hold is released by the kernel.
#[cfg(unix)]
fn leave(signal: i32) -> ! {
    // SAFETY: _exit ends the process; nothing after it runs.
    unsafe { libc::_exit(i32::from(exit_code(signal))) }
}

/// Waits for one of `set`'s signals, for at most `limit` if given; None when the time ran out.
#[cfg(unix)]
fn next_signal(set: &libc::sigset_t, limit: Option<Duration>) -> Option<i32> {
    loop {
        match limit {
            None => {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and its signals are blocked in this thread.
                if unsafe { libc::sigwait(set, &mut sig) } == 0 {
                    return Some(sig);
                }
            }
            Some(limit) => return timed_signal(set, limit),
        }
    }
}

#[cfg(target_os = "linux")]
fn timed_signal(set: &libc::sigset_t, limit: Duration) -> Option<i32> {
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(limit.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(limit.subsec_nanos() as i32),
    };
    loop {
        // SAFETY: `set` and `timeout` are initialised; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            return Some(sig);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn timed_signal(set: &libc::sigset_t, limit: Duration) -> Option<i32> {
    // Without sigtimedwait, a further signal is only noticed after the wait.
    let _ = set;
    std::thread::sleep(limit);
    None
}
