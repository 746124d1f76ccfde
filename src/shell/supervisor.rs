//! The leader of a command's process group on Linux: what makes the whole group die with
//! warmcache, even when warmcache is killed with SIGKILL and no code of it runs.
//!
//! The kernel's parent-death signal (`PR_SET_PDEATHSIG`) reaches only the direct child, and is
//! cleared for the children it forks, so setting it on `sh` would leave everything `sh` started
//! running. Instead, the child that warmcache forks stays behind as a supervisor: it asks for a
//! parent-death signal for itself, forks once more, and the grandchild execs `sh -c`. The
//! supervisor then waits: when warmcache (the thread that forked it) dies, it SIGKILLs its own
//! process group, which is the command's; when the command ends, it exits the same way (the same
//! code, or the same signal), so warmcache sees the command's own status.
//!
//! Everything here runs between fork and exec in a copy of a multi-threaded process, so it makes
//! only raw, async-signal-safe system calls and allocates nothing. The second fork is a raw
//! `clone` without the C library's fork handlers, which could wait forever on a lock that another
//! thread held at the first fork.

use std::io;

/// The signal the supervisor gets when warmcache dies. Blocked, so it waits in `sigwaitinfo`.
const PARENT_DIED: libc::c_int = libc::SIGUSR1;

/// Runs in the child forked by `Command::spawn`, before exec. Returns (in the grandchild, which
/// then execs `sh`) or never returns (in the supervisor).
pub(super) fn supervise(warmcache: u32) -> io::Result<()> {
    // SAFETY: sigset functions on a local set; sigprocmask with valid pointers.
    let (waited, previous) = unsafe {
        let mut waited: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut waited);
        for sig in [
            PARENT_DIED,
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
        ] {
            libc::sigaddset(&mut waited, sig);
        }
        let mut previous: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut previous) != 0 {
            return Err(io::Error::last_os_error());
        }
        (waited, previous)
    };
    die_with_parent(PARENT_DIED, warmcache)?;
    // SAFETY: getpid cannot fail.
    let supervisor = unsafe { libc::getpid() } as u32;
    // SAFETY: a raw clone with only SIGCHLD as its flags is a fork without the C library's fork
    // handlers; the child continues on a copy of this stack.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The command: dies with the supervisor, and gets the signal mask it would have had.
        die_with_parent(libc::SIGKILL, supervisor)?;
        // SAFETY: restoring the mask saved above.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    close_inherited_descriptors();
    wait_for(pid as libc::pid_t, &waited)
}

/// Asks for `signal` when the parent dies, and fails if it already did (then no signal comes).
fn die_with_parent(signal: libc::c_int, parent: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(io::Error::other(
            "the parent exited while the command was starting",
        ));
    }
    Ok(())
}

/// The supervisor never execs, so it must close what it inherited: among those is the standard
/// library's close-on-exec pipe, on which `spawn` waits for the exec. Standard input, output and
/// error stay (they are the command's too).
fn close_inherited_descriptors() {
    // SAFETY: close_range and close on descriptors this process owns and never uses again.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0) != 0 {
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(65_536) as libc::c_int
            } else {
                1024
            };
            for fd in 3..max {
                libc::close(fd);
            }
        }
    }
}

/// Waits for the command `pid` to end and exits as it did, or kills the whole group when
/// warmcache died. Termination signals sent to the group reached the command too; the
/// supervisor waits for the command's answer to them.
fn wait_for(pid: libc::pid_t, waited: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: a blocked, initialised set; no siginfo asked for.
        let signal = unsafe { libc::sigwaitinfo(waited, std::ptr::null_mut()) };
        if signal == PARENT_DIED {
            // SAFETY: SIGKILL to our own process group (ourselves included), then exit.
            unsafe {
                libc::kill(0, libc::SIGKILL);
                libc::_exit(137);
            }
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid on our own child.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid || reaped < 0 {
            exit_like(status, reaped < 0);
        }
    }
}

/// Exits with the command's exit code, or dies of the signal that killed it (without a core
/// dump of the supervisor).
fn exit_like(status: libc::c_int, lost: bool) -> ! {
    // SAFETY: exit, signal disposition, mask and rlimit calls on this process only.
    unsafe {
        if lost {
            libc::_exit(127);
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let signal = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal);
    }
}
