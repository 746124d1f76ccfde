//! Stale-while-revalidate on the command line: the detached `warmcache` that builds in the
//! background, how it is started and what it reports (docs/DESIGN.md, "Stale while revalidate").
//!
//! The library never starts processes on its own; when `ensure` answers
//! [`Revalidation::Due`], the command re-executes itself: the same executable, the same
//! arguments, working directory and environment (so the same recipe and fingerprint), with the
//! hidden flag [`FLAG`] first, in a session of its own (`setsid`). It is not a child that dies
//! with this process: the foreground `warmcache ensure` exits at once and the build goes on. Its
//! stdin and stdout are `/dev/null`; its stderr is the entry's revalidation log (beside the entry
//! lock), so a caller reading our pipes to their end (Node's `execFile`, a test harness) is never
//! held up by it. Its builder is supervised like any other: if the background `warmcache` is
//! killed, even with SIGKILL, the builder's whole process group goes with it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use warmcache::EntryName;
use warmcache::build::Recipe;
use warmcache::cache::{Cache, EnsureOptions, EnsureStatus, Revalidated};

use super::Output;

/// The hidden flag that makes `warmcache ensure` the background build.
pub(super) const FLAG: &str = "internal-background-build";

/// The log is truncated when a new background build starts and it has grown past this: it holds
/// the last few builds' reports, never an unbounded history.
const LOG_LIMIT: u64 = 256 * 1024;

/// A started background build.
pub(super) struct Started {
    pub pid: u32,
    pub log: PathBuf,
}

/// Starts the detached background build of `name` (see the module documentation).
pub(super) fn start(cache: &Cache, name: &EntryName) -> Result<Started> {
    let log_path = cache.revalidation_log(name);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    // The builder's output may hold secrets: readable by the cache's owner only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let log = options
        .open(&log_path)
        .with_context(|| format!("cannot open the background build's log `{}`", log_path.display()))?;
    if log.metadata().map(|m| m.len() > LOG_LIMIT).unwrap_or(false) {
        // Appending writes go to the new end; a concurrent writer loses nothing it needs.
        let _ = log.set_len(0);
    }
    let exe = std::env::current_exe().context("cannot find the warmcache executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg(format!("--{FLAG}"))
        .args(std::env::args_os().skip(1))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches only the forked child. A session of
        // its own: no controlling terminal, so neither a terminal's ^C or hangup nor a signal
        // to the caller's process group reaches the build it started.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command
        .spawn()
        .context("cannot start the background `warmcache ensure`")?;
    Ok(Started {
        pid: child.id(),
        log: log_path,
    })
}

/// The background build itself: [`Cache::revalidate`], reported on stderr (the log) with a
/// first line saying what runs, and the usual JSON on stdout (`/dev/null` when started by
/// [`start`]).
pub(super) fn run(cache: &Cache, out: &Output, recipe: &Recipe, options: &EnsureOptions) -> Result<bool> {
    let started = super::commands::format_time(warmcache::clock::now_ms());
    // One line per build, so a log holding several reads in order.
    let _ = writeln!(
        std::io::stderr(),
        "--- {started}: background build of `{}` (pid {})",
        recipe.name,
        std::process::id()
    );
    let (value, text, built) = match cache.revalidate(recipe, options)? {
        Revalidated::UnderWay => (
            json!({ "name": recipe.name, "status": "under-way" }),
            "another process holds the build lock of this entry; nothing done".to_string(),
            false,
        ),
        Revalidated::Done(ensured) => {
            let text = match ensured.status {
                EnsureStatus::Built => format!("built {}", ensured.path.display()),
                EnsureStatus::Hit => format!("already current: {}", ensured.path.display()),
                EnsureStatus::Stale => super::commands::stale_warning(&ensured),
            };
            (json!(ensured), text, ensured.status == EnsureStatus::Built)
        }
    };
    let _ = writeln!(std::io::stderr(), "{text}");
    out.result(&value, String::new);
    Ok(built)
}
