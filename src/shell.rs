//! Running user-supplied commands with `sh -c`: builders, validations and hooks.
//!
//! One mechanism for all of them: a process group of its own (so a timeout or the end of the
//! command takes its children too), stdin from /dev/null, stdout and stderr interleaved into one
//! pipe of which only the last bytes are kept (a command that prints gigabytes cannot exhaust
//! memory), and a description of how it ended.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::units::format_duration;

/// Default size of the captured output tail.
pub const DEFAULT_TAIL_BYTES: usize = 64 * 1024;

/// After a timeout, how long the group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// After a command ends, how long to wait for its output pipe to close. Only a process that left
/// the group (setsid) and kept the pipe open can make this wait; its output is then abandoned.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// How a builder or validation process ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// Exited with a non-zero code.
    Exited(i32),
    /// Killed by a signal it did not choose (OOM killer, someone's `kill`).
    Signaled(i32),
    /// Ran longer than the recipe's timeout and was killed with its process group.
    TimedOut(Duration),
    /// Could not be started at all; `errno` is the OS error if there was one.
    SpawnFailed { errno: Option<i32>, message: String },
}

impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Termination::Exited(code) => write!(f, "exited with code {code}"),
            Termination::Signaled(sig) => write!(f, "was killed by signal {sig}{}", signal_name(*sig)),
            Termination::TimedOut(t) => write!(
                f,
                "timed out after {} and was killed with its process group",
                format_duration(*t)
            ),
            Termination::SpawnFailed { message, .. } => write!(f, "could not be started: {message}"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL; out of memory?)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGPIPE => " (SIGPIPE)",
        _ => "",
    }
}

/// Keeps the last `cap` bytes written to it.
struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap.min(DEFAULT_TAIL_BYTES)),
            cap,
            dropped: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(self.cap)..];
        self.dropped += (data.len() - keep.len()) as u64;
        self.buf.extend(keep);
        let excess = self.buf.len().saturating_sub(self.cap);
        if excess > 0 {
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn render(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let text = String::from_utf8_lossy(&bytes);
        if self.dropped > 0 {
            format!(
                "[... {} earlier bytes of output omitted ...]\n{text}",
                self.dropped
            )
        } else {
            text.into_owned()
        }
    }
}

/// Runs `sh -c command` in `cwd` with `env` added to this process's environment, stdin from
/// /dev/null and stdout and stderr into one bounded tail, in its own process group. With a
/// `timeout`, the whole group gets SIGTERM, then SIGKILL after a grace period. Whatever the
/// command left running in its group is killed when it ends, so nothing outlives it. Returns how
/// it ended (Ok for exit 0) and the tail of its output.
pub fn run(
    command: &str,
    cwd: &Path,
    env: &[(&str, &OsStr)],
    timeout: Option<Duration>,
    tail_bytes: usize,
) -> (Result<(), Termination>, String) {
    let spawn_failed = |e: std::io::Error| Termination::SpawnFailed {
        errno: e.raw_os_error(),
        message: e.to_string(),
    };
    // One pipe for stdout and stderr keeps their interleaving and needs one reader.
    let (mut reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => return (Err(spawn_failed(e)), String::new()),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return (Err(spawn_failed(e)), String::new()),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2);
    for (key, value) in env {
        cmd.env(key, value);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let spawned = cmd.spawn();
    // The Command holds our copies of the pipe's write end; the reader sees EOF only once they
    // are closed.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let termination = Termination::SpawnFailed {
                errno: e.raw_os_error(),
                message: format!("`sh -c` in `{}`: {e}", cwd.display()),
            };
            return (Err(termination), String::new());
        }
    };
    let pid = child.id();

    let tail = Arc::new(Mutex::new(Tail::new(tail_bytes)));
    let (read_done_tx, read_done_rx) = mpsc::channel::<()>();
    let reader_tail = Arc::clone(&tail);
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if let Ok(mut t) = reader_tail.lock() {
                        t.push(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = read_done_tx.send(());
    });
    let (exit_tx, exit_rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });

    let mut timed_out = None;
    let status = match timeout {
        None => exit_rx.recv().ok(),
        Some(limit) => match exit_rx.recv_timeout(limit) {
            Ok(status) => Some(status),
            Err(_) => {
                timed_out = Some(limit);
                kill_group(pid, Signal::Term);
                match exit_rx.recv_timeout(TERM_GRACE) {
                    Ok(status) => Some(status),
                    Err(_) => {
                        kill_group(pid, Signal::Kill);
                        exit_rx.recv().ok()
                    }
                }
            }
        },
    };
    // Whatever the command left behind in its group goes with it.
    kill_group(pid, Signal::Kill);
    let _ = read_done_rx.recv_timeout(PIPE_GRACE);
    let text = match tail.lock() {
        Ok(t) => t.render(),
        Err(poisoned) => poisoned.into_inner().render(),
    };

    let result = if let Some(limit) = timed_out {
        Err(Termination::TimedOut(limit))
    } else {
        match status {
            Some(Ok(status)) => exit_result(status),
            Some(Err(e)) => Err(spawn_failed(e)),
            None => Err(Termination::SpawnFailed {
                errno: None,
                message: "lost track of the process".into(),
            }),
        }
    };
    (result, text)
}

fn exit_result(status: ExitStatus) -> Result<(), Termination> {
    if status.success() {
        return Ok(());
    }
    if let Some(code) = status.code() {
        return Err(Termination::Exited(code));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Err(Termination::Signaled(sig));
        }
    }
    Err(Termination::Exited(-1))
}

enum Signal {
    Term,
    Kill,
}

/// Signals the process group led by `pid` (the command's `sh`); a group that is already gone is
/// fine.
fn kill_group(pid: u32, signal: Signal) {
    #[cfg(unix)]
    {
        use rustix::process::{Pid, Signal as Sig, kill_process_group};
        let sig = match signal {
            Signal::Term => Sig::TERM,
            Signal::Kill => Sig::KILL,
        };
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, sig);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_buffer_is_bounded() {
        let mut t = Tail::new(8);
        t.push(b"0123");
        t.push(b"456789");
        assert_eq!(
            t.render(),
            "[... 2 earlier bytes of output omitted ...]\n23456789"
        );
        t.push(b"abcdefghijkl");
        assert_eq!(
            t.render(),
            "[... 14 earlier bytes of output omitted ...]\nefghijkl"
        );
        assert!(t.buf.len() <= 8);
        let mut none = Tail::new(0);
        none.push(b"abc");
        assert_eq!(none.render(), "[... 3 earlier bytes of output omitted ...]\n");
    }
}
