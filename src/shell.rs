//! Running user-supplied commands with `sh -c`: builders, validations and hooks.
//!
//! One mechanism for all of them: a process group of its own (so a timeout or the end of the
//! command takes its children too), stdin from /dev/null, stdout and stderr interleaved into one
//! pipe of which only the last bytes are kept (a command that prints gigabytes cannot exhaust
//! memory), and a description of how it ended. Running groups are registered process-wide
//! (`group`), so that SIGINT, SIGTERM or SIGHUP to warmcache ends them before it exits
//! ([`signals`]), and on Linux the command's `sh` dies with warmcache even on SIGKILL
//! (docs/DESIGN.md, "Nothing outlives its command").

mod group;
pub mod runs;
pub mod signals;
#[cfg(target_os = "linux")]
mod supervisor;
mod tail;

use std::ffi::OsStr;
use std::io::{PipeReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::units::format_duration;
use group::NotStarted;
pub use runs::{RUN_VAR, RunRecord, RunRecordError};
use tail::Tail;

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
    /// warmcache itself was asked to end by this signal (SIGINT, SIGTERM, SIGHUP), and stopped
    /// the command with its process group (or did not start it). Says nothing about the command.
    Interrupted(i32),
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
            Termination::Interrupted(sig) => write!(
                f,
                "was stopped with its process group because warmcache received {}",
                signals::name(*sig)
            ),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL; out of memory?)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGPIPE => " (SIGPIPE)",
        _ => "",
    }
}

/// Runs `sh -c command` in `cwd` with `env` added to this process's environment, stdin from
/// /dev/null and stdout and stderr into one bounded tail, in its own process group. With a
/// `timeout`, the whole group gets SIGTERM, then SIGKILL after a grace period. Whatever the
/// command left running in its group is killed when it ends, and this returns only once nothing
/// of the group runs, so nothing outlives it. Returns how it ended (Ok for exit 0) and the tail
/// of its output.
///
/// With a `record` (held under the lock that serialises these runs), the command runs with a
/// fresh token in `WARMCACHE_RUN`, written in the record before it starts and removed once
/// nothing of it runs, so that if warmcache and its supervisor are both killed, the lock's next
/// holder can end what is left ([`RunRecord::end_leftovers`]; docs/DESIGN.md, "Nothing outlives
/// its command").
pub fn run(
    command: &str,
    cwd: &Path,
    env: &[(&str, &OsStr)],
    timeout: Option<Duration>,
    tail_bytes: usize,
    record: Option<&RunRecord>,
) -> (Result<(), Termination>, String) {
    let token = match record.map(RunRecord::start).transpose() {
        Ok(token) => token,
        Err(e) => {
            let termination = Termination::SpawnFailed {
                errno: None,
                message: e.to_string(),
            };
            return (Err(termination), String::new());
        }
    };
    let run_value = token.as_deref().map(runs::env_value);
    let mut env = env.to_vec();
    if let Some(value) = &run_value {
        env.push((RUN_VAR, value.as_os_str()));
    }
    let result = run_in_group(command, cwd, &env, timeout, tail_bytes, record);
    // Nothing of the command runs any more (or it never started): the record has served.
    if let Some(record) = record
        && let Err(e) = record.remove()
    {
        tracing::warn!("{e}; the next run under its lock will look for leftovers of this one");
    }
    result
}

fn run_in_group(
    command: &str,
    cwd: &Path,
    env: &[(&str, &OsStr)],
    timeout: Option<Duration>,
    tail_bytes: usize,
    record: Option<&RunRecord>,
) -> (Result<(), Termination>, String) {
    let (mut cmd, reader) = match prepare(command, cwd, env) {
        Ok(prepared) => prepared,
        Err(e) => return (Err(spawn_failed(e)), String::new()),
    };
    let spawned = group::spawn(&mut cmd);
    // The Command holds our copies of the pipe's write end; the reader sees EOF only once they
    // are closed.
    drop(cmd);
    let child = match spawned {
        Ok(child) => child,
        Err(NotStarted::Interrupted(signal)) => {
            return (Err(Termination::Interrupted(signal)), String::new());
        }
        Err(NotStarted::Failed(e)) => {
            let termination = Termination::SpawnFailed {
                errno: e.raw_os_error(),
                message: format!("`sh -c` in `{}`: {e}", cwd.display()),
            };
            return (Err(termination), String::new());
        }
    };
    let pgid = child.id();
    if let Some(record) = record {
        record.started(pgid);
    }
    let capture = Capture::start(reader, tail_bytes);
    let (status, timed_out) = wait(child, timeout);
    // Whatever the command left behind in its group goes with it.
    group::finish(pgid);
    let text = capture.finish();
    (conclude(status, timed_out), text)
}

fn spawn_failed(e: std::io::Error) -> Termination {
    Termination::SpawnFailed {
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

/// The `sh -c` command with its environment, and the read end of the one pipe that takes both
/// its stdout and its stderr (keeping their interleaving, with one reader).
fn prepare(command: &str, cwd: &Path, env: &[(&str, &OsStr)]) -> std::io::Result<(Command, PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let writer2 = writer.try_clone()?;
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
    Ok((cmd, reader))
}

/// A thread reading the command's output into a bounded tail.
struct Capture {
    tail: Arc<Mutex<Tail>>,
    done: mpsc::Receiver<()>,
}

impl Capture {
    fn start(mut reader: PipeReader, tail_bytes: usize) -> Self {
        let tail = Arc::new(Mutex::new(Tail::new(tail_bytes)));
        let (done_tx, done) = mpsc::channel::<()>();
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
            let _ = done_tx.send(());
        });
        Self { tail, done }
    }

    /// The output's tail, once the pipe closed or after [`PIPE_GRACE`].
    fn finish(self) -> String {
        let _ = self.done.recv_timeout(PIPE_GRACE);
        match self.tail.lock() {
            Ok(t) => t.render(),
            Err(poisoned) => poisoned.into_inner().render(),
        }
    }
}

/// Waits for the command's `sh` to exit; after `timeout`, ends its group (SIGTERM, a grace,
/// SIGKILL). Returns its exit status (None if it was lost) and the timeout if it struck.
fn wait(
    mut child: Child,
    timeout: Option<Duration>,
) -> (Option<std::io::Result<ExitStatus>>, Option<Duration>) {
    let pgid = child.id();
    let (exit_tx, exit_rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let Some(limit) = timeout else {
        return (exit_rx.recv().ok(), None);
    };
    if let Ok(status) = exit_rx.recv_timeout(limit) {
        return (Some(status), None);
    }
    let mut status = None;
    group::terminate(pgid, TERM_GRACE, |grace| {
        status = exit_rx.recv_timeout(grace).ok();
        status.is_some()
    });
    if status.is_none() {
        status = exit_rx.recv().ok();
    }
    (status, Some(limit))
}

/// How the command ended, from its exit status, a timeout, or warmcache's own interruption
/// (which explains a killed command better than its signal does).
fn conclude(
    status: Option<std::io::Result<ExitStatus>>,
    timed_out: Option<Duration>,
) -> Result<(), Termination> {
    if let Some(signal) = signals::interrupted_by() {
        return Err(Termination::Interrupted(signal));
    }
    if let Some(limit) = timed_out {
        return Err(Termination::TimedOut(limit));
    }
    match status {
        Some(Ok(status)) => exit_result(status),
        Some(Err(e)) => Err(spawn_failed(e)),
        None => Err(Termination::SpawnFailed {
            errno: None,
            message: "lost track of the process".into(),
        }),
    }
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
