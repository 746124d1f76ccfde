//! Run records: what lets the next holder of a lock end the processes of a run whose holder was
//! killed so hard that nothing of it could (docs/DESIGN.md, "Nothing outlives its command").
//!
//! The supervisor kills a command's group when warmcache dies, but if the supervisor is killed
//! too (`pkill -9 warmcache` takes both: it is the same binary), the command's processes live on
//! under PID 1 while the lock that serialised the run is free. So a command run under a lock gets
//! a random token in its environment (`WARMCACHE_RUN`, inherited by everything it starts), and
//! the token is written in a small record file beside the lock before the command starts, and
//! removed once nothing of the command runs. The next holder of the lock that finds a record
//! knows its writer is gone (it would still hold the lock), and ends every process whose
//! environment carries the token, before it runs anything itself.
//!
//! Processes are found by the token in `/proc/<pid>/environ`, never by process group alone: a
//! group id may have been reused by an unrelated process, a token cannot. Each is opened as a
//! pidfd, checked again through it, then signalled through it, so a pid reused between the scan
//! and the signal is never hit. Linux only; elsewhere the record is kept but nothing is scanned.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that carries the run tokens of a command: the tokens of the runs it
/// is nested in (a builder that runs warmcache), then its own, separated by `:`.
pub const RUN_VAR: &str = "WARMCACHE_RUN";

/// How long to wait for the processes of a dead run to be gone after SIGKILL. Only a process
/// stuck in the kernel takes more than a moment.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often they are looked for again while waiting.
const POLL: Duration = Duration::from_millis(10);

/// Why a run record could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RunRecordError {
    /// The record could not be read, written or removed.
    #[error("cannot {op} the run record `{path}`: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The record file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Processes of a dead run would not die.
    #[error(
        "processes {pids:?}, left running by a warmcache process that was killed (run record \
         `{path}`), still run {waited:?} after SIGKILL; nothing new starts while they run. End \
         them (their environment holds {RUN_VAR}=...{token}), then retry"
    )]
    Survivors {
        /// The record file.
        path: PathBuf,
        /// The processes still running.
        pids: Vec<u32>,
        /// The dead run's token.
        token: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// The record of the runs serialised by one lock. Use it only while holding that lock: then no
/// other live process can be running what it records.
#[derive(Debug, Clone)]
pub struct RunRecord {
    path: PathBuf,
}

impl RunRecord {
    /// The record kept in the file `path` (beside the lock it belongs to).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The record file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends what a dead holder of the lock left running: when a record is there, SIGKILLs every
    /// process that carries its token and waits (bounded) until none runs, then removes the
    /// record. Returns how many processes it ended. Without a record (the common case) this is
    /// one failed `open`.
    pub fn end_leftovers(&self) -> Result<usize, RunRecordError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(self.io("read", source)),
        };
        // A record without a whole token line was torn before its command could start (the token
        // is written before the spawn): nothing to end.
        let token = text.lines().next().unwrap_or("").trim();
        let ended = if valid_token(token) {
            end_all(&self.path, token)?
        } else {
            0
        };
        // Every process of the run is gone: a record that cannot be removed now (a read-only
        // or full volume) names nothing alive, and the next holder will find it again.
        if let Err(e) = self.remove() {
            tracing::warn!("{e}");
        }
        Ok(ended)
    }

    /// Writes a new record for a run about to start, and returns its token.
    pub(super) fn start(&self) -> Result<String, RunRecordError> {
        let token = new_token();
        if let Err(e) = std::fs::write(&self.path, format!("{token}\n")) {
            // A torn record (a full disk) would only be found and removed later: remove it now.
            let _ = std::fs::remove_file(&self.path);
            return Err(self.io("write", e));
        }
        Ok(token)
    }

    /// Adds the started command's process group to the record (for people reading it).
    pub(super) fn started(&self, pgid: u32) {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(format!("pgid {pgid}\n").as_bytes()));
        if let Err(e) = appended {
            tracing::debug!("cannot note the process group in `{}`: {e}", self.path.display());
        }
    }

    /// Removes the record once nothing of its run runs.
    pub(super) fn remove(&self) -> Result<(), RunRecordError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(self.io("remove", source)),
        }
    }

    fn io(&self, op: &'static str, source: io::Error) -> RunRecordError {
        RunRecordError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }
}

/// The value of [`RUN_VAR`] for a command with `token`: the inherited value, if any, then
/// `token`, so a nested run's processes still carry the tokens of the runs around it.
pub(super) fn env_value(token: &str) -> std::ffi::OsString {
    let mut value = std::env::var_os(RUN_VAR).unwrap_or_default();
    if !value.is_empty() {
        value.push(":");
    }
    value.push(token);
    value
}

/// 32 hex digits from the OS's random source.
fn new_token() -> String {
    hex(&crate::random::bytes::<16>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Only a token we could have written is looked for: an empty or odd one could match strangers.
fn valid_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SIGKILLs every process carrying `token` until none runs; returns how many were found.
#[cfg(target_os = "linux")]
fn end_all(path: &Path, token: &str) -> Result<usize, RunRecordError> {
    let start = Instant::now();
    let mut ended = std::collections::BTreeSet::new();
    loop {
        let carriers = carriers(token);
        if carriers.is_empty() {
            return Ok(ended.len());
        }
        if start.elapsed() >= KILL_WAIT {
            return Err(RunRecordError::Survivors {
                path: path.to_path_buf(),
                pids: carriers,
                token: token.to_string(),
                waited: KILL_WAIT,
            });
        }
        for &pid in &carriers {
            if kill_carrier(pid, token) {
                ended.insert(pid);
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(not(target_os = "linux"))]
fn end_all(_path: &Path, _token: &str) -> Result<usize, RunRecordError> {
    // Without /proc there is no way to find the processes by their environment; see
    // docs/DESIGN.md, "Known limits".
    let _ = (KILL_WAIT, POLL, Instant::now());
    Ok(0)
}

/// The running (not zombie) processes, other than this one, whose environment carries `token`.
#[cfg(target_os = "linux")]
fn carriers(token: &str) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != me && carries(pid, token) && !zombie(pid) {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid`'s environment holds `token` in [`RUN_VAR`]. Another user's process
/// cannot be read, and is not ours.
#[cfg(target_os = "linux")]
fn carries(pid: u32, token: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let prefix = format!("{RUN_VAR}=");
    environ.split(|&b| b == 0).any(|var| {
        var.strip_prefix(prefix.as_bytes())
            .is_some_and(|value| value.split(|&b| b == b':').any(|t| t == token.as_bytes()))
    })
}

/// A zombie runs nothing; it only waits to be reaped.
#[cfg(target_os = "linux")]
fn zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next();
            matches!(state, Some("Z" | "X" | "x"))
        }
        Err(_) => true,
    }
}

/// SIGKILLs `pid` if it still carries `token`, through a pidfd opened before the check, so a pid
/// reused by an unrelated process between the scan and the signal is never hit. Where pidfds are
/// missing (Linux before 5.3), checks and kills by pid, which leaves that window.
#[cfg(target_os = "linux")]
fn kill_carrier(pid: u32, token: &str) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: pidfd_open with a pid and no flags returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return false; // gone already
        }
        // SAFETY: kill(2) on a pid just checked to carry the token.
        return carries(pid, token) && unsafe { libc::kill(raw, libc::SIGKILL) } == 0;
    }
    let Ok(fd) = libc::c_int::try_from(fd) else {
        return false;
    };
    // SAFETY: `fd` is the descriptor pidfd_open just returned; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // The pidfd names this very process from now on: if the pid was reused before it was
    // opened, the new process does not carry the token and is left alone.
    if !carries(pid, token) {
        return false;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal on a valid pidfd, no siginfo, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_valid() {
        let (a, b) = (new_token(), new_token());
        assert!(valid_token(&a) && valid_token(&b));
        assert_ne!(a, b);
        assert!(!valid_token(""));
        assert!(!valid_token("abc"));
    }

    #[test]
    fn a_missing_or_torn_record_ends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let record = RunRecord::new(dir.path().join("x.lock.run"));
        assert_eq!(record.end_leftovers().unwrap(), 0);
        std::fs::write(record.path(), "").unwrap();
        assert_eq!(record.end_leftovers().unwrap(), 0);
        assert!(!record.path().exists());
    }
}
