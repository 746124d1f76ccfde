//! The one place-and-swap primitive: put a new version of a file or directory tree at DEST so
//! that every reader of DEST sees the old version or the new one, whole, and never a mix
//! (docs/DESIGN.md, problem 3, "Torn activation"). Activation ([`crate::activate`]) and snapshot
//! restore ([`crate::remote::snapshot`]) both go through it.
//!
//! The steps, each of which leaves DEST untouched when it fails:
//! 1. [`Stage::beside`]: sweep leftovers of dead processes beside DEST and pick a staging path
//!    next to DEST (same directory, hence same file system) under a hidden name that carries our
//!    PID: `.NAME.warmcache-stage-PID-TIME-N`. The caller builds the new version there.
//! 2. [`Stage::run_hook`]: hooks run on the staging copy (code signing, chmod, validation); one
//!    that removes it or changes its kind is refused.
//! 3. [`Stage::make_durable`]: fsync the staging copy.
//! 4. [`Stage::swap`]: an atomic exchange when DEST exists (the old version ends up under the
//!    staging name and is removed), a rename without replace when it does not; then the
//!    directory is fsynced and the old version removed. If that fsync fails the swap is undone,
//!    and if undoing fails too, the error says so.
//!
//! Where the platform has no atomic exchange, a file is renamed over DEST (still atomic) and a
//! directory falls back to two renames: the old tree is moved aside to
//! `.NAME.warmcache-prev-PID-TIME-N`, the new one renamed into place, and the old one moved back
//! if that fails. Between those two renames DEST is briefly missing, never partial; if the
//! process dies there, the next [`Stage::beside`] in that directory moves the old tree back.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{annotate, fsync_dir, remove_tree, sync_tree, unique_name};

/// Destination names longer than this are left out of staging names (which must stay under the
/// file system's name limit); such leftovers are still swept, but a moved-aside tree cannot be
/// moved back by name.
const MAX_LABEL: usize = 128;
const STAGE_MARK: &str = ".warmcache-stage-";
const PREV_MARK: &str = ".warmcache-prev-";

/// How the new version was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapMethod {
    /// The destination did not exist: renamed into place without replacing anything.
    Created,
    /// Atomically exchanged with the existing destination, which was then removed.
    Exchanged,
    /// Renamed over the existing destination (no exchange available; files and symlinks only).
    Renamed,
    /// No exchange available for a directory: old moved aside, new renamed in, old removed.
    TwoRenames,
}

/// What the staging copy is, for [`Stage::make_durable`] and [`Stage::run_hook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedKind {
    /// A regular file: fsynced.
    File,
    /// A directory tree: every file and directory fsynced.
    Tree,
    /// A symlink: its target is written with its directory entry, which the swap fsyncs.
    Symlink,
}

/// Why placing failed. Unless the message says otherwise, DEST is as it was.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// DEST does not name an entry in a directory (for example `/` or `..`).
    #[error("`{}` cannot be a destination: give a path that ends in a file or directory name", dest.display())]
    InvalidDest { dest: PathBuf },

    /// DEST's directory does not exist (or is not a directory).
    #[error("cannot place `{}`: the directory `{}` does not exist; create it first", dest.display(), parent.display())]
    NoParentDir { dest: PathBuf, parent: PathBuf },

    /// DEST or its directory cannot be inspected.
    #[error("cannot inspect the destination `{}`: {err}", dest.display())]
    Inspect { dest: PathBuf, err: io::Error },

    /// A hook removed the staging copy or changed its kind.
    #[error("the hook `{hook}` removed or replaced the staging copy `{}` for `{}`; hooks must modify it in place; `{}` was left unchanged", stage.display(), dest.display(), dest.display())]
    HookBrokeStage {
        hook: String,
        dest: PathBuf,
        stage: PathBuf,
    },

    /// The staging copy could not be made durable.
    #[error("failed to make the staging copy for `{}` durable: {err}; `{}` was left unchanged", dest.display(), dest.display())]
    Sync { dest: PathBuf, err: io::Error },

    /// The swap into place failed (or was undone); DEST is unchanged.
    #[error("failed to put the new version in place at `{}`: {err}; `{}` was left unchanged", dest.display(), dest.display())]
    Swap { dest: PathBuf, err: io::Error },

    /// The swap happened, making it durable failed, and undoing it failed too.
    #[error("`{}` was replaced, but making that durable failed: {err}; undoing the swap failed too: {undo}; after a crash the old version may reappear: place it again", dest.display())]
    NotDurable {
        dest: PathBuf,
        err: io::Error,
        undo: io::Error,
    },
}

/// The result of a successful [`Stage::swap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// How the new version was put in place.
    pub swap: SwapMethod,
    /// Whether something was at DEST before (and has been replaced).
    pub replaced: bool,
}

/// A staging path beside DEST for its next version. Whatever is at the staging path when the
/// stage is dropped (a half-built copy, or the old version after a swap) is removed.
#[derive(Debug)]
pub struct Stage {
    dest: PathBuf,
    parent: PathBuf,
    name: OsString,
    path: PathBuf,
}

impl Stage {
    /// Validates DEST (its directory must exist), sweeps leftovers of dead processes in that
    /// directory ([`sweep_leftovers`]) and picks a staging path beside DEST. Nothing is created.
    pub fn beside(dest: &Path) -> Result<Self, PlaceError> {
        let (parent, name) = split_dest(dest)?;
        // Absolute, once, here: the staging path and DEST are handed to hooks, which run in
        // DEST's directory, not the caller's (docs/DESIGN.md, "Post-processing before
        // publication").
        let parent = std::path::absolute(&parent).map_err(|e| PlaceError::Inspect {
            dest: dest.to_path_buf(),
            err: annotate(e, "make absolute", &parent),
        })?;
        sweep_leftovers(&parent);
        let path = hidden_path(&parent, &name, STAGE_MARK);
        Ok(Self {
            dest: dest.to_path_buf(),
            parent,
            name,
            path,
        })
    }

    /// Where to build the new version (an absolute path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// DEST.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// DEST as an absolute path (its directory made absolute, its name as given): what hooks
    /// are told.
    pub fn absolute_dest(&self) -> PathBuf {
        self.parent.join(&self.name)
    }

    /// DEST's directory, absolute.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// DEST's file name.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// Runs one hook (`run`, given the staging path) and checks that the staging copy is still
    /// there and still of `kind` afterwards: hooks modify it in place.
    pub fn run_hook<E: From<PlaceError>>(
        &self,
        hook: &str,
        kind: StagedKind,
        run: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(), E> {
        run(&self.path)?;
        let intact = std::fs::symlink_metadata(&self.path).is_ok_and(|m| match kind {
            StagedKind::File => m.is_file(),
            StagedKind::Tree => m.is_dir(),
            StagedKind::Symlink => m.file_type().is_symlink(),
        });
        if intact {
            Ok(())
        } else {
            Err(PlaceError::HookBrokeStage {
                hook: hook.to_owned(),
                dest: self.dest.clone(),
                stage: self.path.clone(),
            }
            .into())
        }
    }

    /// Makes the staging copy durable, so the swap never publishes something a crash can undo.
    pub fn make_durable(&self, kind: StagedKind) -> Result<(), PlaceError> {
        let sync_err = |err| PlaceError::Sync {
            dest: self.dest.clone(),
            err,
        };
        match kind {
            StagedKind::Symlink => Ok(()),
            StagedKind::File => {
                let file =
                    std::fs::File::open(&self.path).map_err(|e| sync_err(annotate(e, "open", &self.path)))?;
                file.sync_all()
                    .map_err(|e| sync_err(annotate(e, "fsync", &self.path)))
            }
            StagedKind::Tree => sync_tree(&self.path).map_err(sync_err),
        }
    }

    /// Swaps the staging copy into place at DEST, fsyncs DEST's directory (undoing the swap if
    /// that fails) and removes the old version. On an error DEST is unchanged, except for
    /// [`PlaceError::NotDurable`].
    pub fn swap(self) -> Result<Placed, PlaceError> {
        let prev = hidden_path(&self.parent, &self.name, PREV_MARK);
        let swap = put_in_place(&self.path, &self.dest, &prev).map_err(|err| PlaceError::Swap {
            dest: self.dest.clone(),
            err,
        })?;
        if let Err(err) = fsync_dir(&self.parent) {
            return Err(undo_swap(swap, &self.path, &self.dest, &prev, err));
        }
        // What is left under the staging name (the old version after an exchange) or beside it
        // (the old tree after two renames) is garbage now; if removal fails, the next sweep in
        // this directory removes it. Dropping `self` removes the staging name.
        if swap == SwapMethod::TwoRenames
            && let Err(e) = remove_tree(&prev)
        {
            tracing::warn!(
                "could not remove the previous version of `{}`: {e}",
                self.dest.display()
            );
        }
        Ok(Placed {
            swap,
            replaced: swap != SwapMethod::Created,
        })
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        remove_quietly(&self.path);
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = remove_tree(path) {
        tracing::warn!("could not remove the staging leftover `{}`: {e}", path.display());
    }
}

/// Splits DEST into its directory (which must exist) and its file name.
fn split_dest(dest: &Path) -> Result<(PathBuf, OsString), PlaceError> {
    let name = match dest.components().next_back() {
        Some(std::path::Component::Normal(name)) => name.to_owned(),
        _ => {
            return Err(PlaceError::InvalidDest {
                dest: dest.to_path_buf(),
            });
        }
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => Ok((parent, name)),
        Ok(_) => Err(PlaceError::NoParentDir {
            dest: dest.to_path_buf(),
            parent,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PlaceError::NoParentDir {
            dest: dest.to_path_buf(),
            parent,
        }),
        Err(e) => Err(PlaceError::Inspect {
            dest: dest.to_path_buf(),
            err: annotate(e, "inspect", &parent),
        }),
    }
}

/// `.LABEL.warmcache-stage-PID-TIME-N` (or `-prev-`) in `parent`, where LABEL is `name` unless it
/// is too long to fit.
fn hidden_path(parent: &Path, name: &OsStr, mark: &str) -> PathBuf {
    let mut file_name = OsString::from(".");
    if name.len() <= MAX_LABEL {
        file_name.push(name);
    }
    file_name.push(mark);
    file_name.push(unique_name(""));
    parent.join(file_name)
}

/// Swaps the staged version into place at `dest` and says how. `prev` is the name used to move a
/// directory aside where no exchange is available.
fn put_in_place(staged: &Path, dest: &Path, prev: &Path) -> io::Result<SwapMethod> {
    // Another process may create or remove `dest` between our look and our move; a few rounds
    // settle it, and every round is atomic on its own.
    for _ in 0..4 {
        let current = match std::fs::symlink_metadata(dest) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if crate::fs::rename_noreplace(staged, dest)? {
                    return Ok(SwapMethod::Created);
                }
                continue;
            }
            Err(e) => return Err(annotate(e, "inspect", dest)),
        };
        match crate::fs::exchange(staged, dest) {
            Ok(()) => return Ok(SwapMethod::Exchanged),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let staged_is_dir = std::fs::symlink_metadata(staged).is_ok_and(|m| m.is_dir());
                if current.is_dir() || staged_is_dir {
                    two_rename_swap(staged, dest, prev)?;
                    return Ok(SwapMethod::TwoRenames);
                }
                crate::fs::rename_with_retry(staged, dest)?;
                return Ok(SwapMethod::Renamed);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "`{}` kept appearing and disappearing while it was being replaced",
        dest.display()
    )))
}

/// The swap for directories where the platform has no atomic exchange: move `dest` aside to
/// `prev`, rename `staged` to `dest`; if the second step fails, move `prev` back, and say so in
/// the error if that fails too. `dest` is missing (never partial) between the two renames; a
/// crash there is repaired by [`sweep_leftovers`].
fn two_rename_swap(staged: &Path, dest: &Path, prev: &Path) -> io::Result<()> {
    crate::fs::rename_with_retry(dest, prev)?;
    let err = match crate::fs::rename_noreplace(staged, dest) {
        Ok(true) => return Ok(()),
        Err(e) => e,
        Ok(false) => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "`{}` was recreated by someone else during the swap",
                dest.display()
            ),
        ),
    };
    match crate::fs::rename_noreplace(prev, dest) {
        Ok(true) => Err(err),
        Ok(false) => Err(io::Error::new(
            err.kind(),
            format!(
                "{err}; the previous version was kept at `{}` because `{}` is taken",
                prev.display(),
                dest.display()
            ),
        )),
        Err(undo) => Err(io::Error::new(
            err.kind(),
            format!(
                "{err}; moving the previous version back from `{}` failed too: {undo}",
                prev.display()
            ),
        )),
    }
}

/// Undoes a swap whose durability could not be established, so `dest` is as before; the error
/// says whether that worked.
fn undo_swap(swap: SwapMethod, staging: &Path, dest: &Path, prev: &Path, err: io::Error) -> PlaceError {
    let undone = match swap {
        SwapMethod::Exchanged => crate::fs::exchange(staging, dest),
        SwapMethod::Created => std::fs::rename(dest, staging).map_err(|e| annotate(e, "rename", dest)),
        SwapMethod::TwoRenames => std::fs::rename(dest, staging)
            .and_then(|()| std::fs::rename(prev, dest))
            .map_err(|e| annotate(e, "rename", dest)),
        // The old file is gone: nothing to go back to.
        SwapMethod::Renamed => Err(io::Error::other("the old version was already replaced")),
    };
    match undone {
        Ok(()) => {
            let _ = fsync_dir(dest.parent().unwrap_or(Path::new(".")));
            PlaceError::Swap {
                dest: dest.to_path_buf(),
                err,
            }
        }
        Err(undo) => PlaceError::NotDurable {
            dest: dest.to_path_buf(),
            err,
            undo,
        },
    }
}

/// A staging name parsed back: what it was for and which process made it.
#[derive(Debug, PartialEq, Eq)]
struct Leftover {
    /// The destination's file name, when it fitted into the staging name.
    label: Option<OsString>,
    /// `true` for a moved-aside previous version (`-prev-`), `false` for a staging copy.
    prev: bool,
    pid: u32,
}

fn parse_leftover(name: &OsStr) -> Option<Leftover> {
    let bytes = name.as_encoded_bytes();
    let rest = bytes.strip_prefix(b".")?;
    let find = |mark: &str| {
        rest.windows(mark.len())
            .rposition(|w| w == mark.as_bytes())
            .map(|at| (at, at + mark.len()))
    };
    let (at, after, prev) = match (find(STAGE_MARK), find(PREV_MARK)) {
        (Some((at, after)), _) => (at, after, false),
        (None, Some((at, after))) => (at, after, true),
        (None, None) => return None,
    };
    let tail = &rest[after..];
    let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || tail.get(digits) != Some(&b'-') {
        return None;
    }
    let pid = std::str::from_utf8(&tail[..digits]).ok()?.parse().ok()?;
    let label = &rest[..at];
    Some(Leftover {
        label: if label.is_empty() {
            None
        } else {
            os_string_from(label)
        },
        prev,
        pid,
    })
}

/// Rebuilds a name from bytes that were split at ASCII characters of an `OsStr`.
fn os_string_from(bytes: &[u8]) -> Option<OsString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Some(OsStr::from_bytes(bytes).to_owned())
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes).ok().map(OsString::from)
    }
}

/// Whether process `pid` is known to be gone. Our own PID (another thread's stage) and PIDs we
/// cannot check count as alive: a leftover is only ever removed when its owner is surely dead.
fn process_is_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
            return false;
        };
        rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Removes the staging copies of dead processes in `parent` and moves back any previous version
/// a dead process had moved aside (when nothing has taken its place since). Best effort: a
/// failure here is logged and never fails the caller.
pub fn sweep_leftovers(parent: &Path) {
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(
                "could not look for staging leftovers in `{}`: {e}",
                parent.display()
            );
            return;
        }
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(leftover) = parse_leftover(&file_name) else {
            continue;
        };
        if !process_is_gone(leftover.pid) {
            continue;
        }
        let path = entry.path();
        if leftover.prev
            && let Some(label) = &leftover.label
            && restore_moved_aside(parent, &path, label)
        {
            continue;
        }
        match remove_tree(&path) {
            Ok(()) => tracing::info!("removed `{}`, left by a crashed process", path.display()),
            Err(e) => tracing::warn!("could not remove staging leftover `{}`: {e}", path.display()),
        }
    }
}

/// Puts a previous version that a dead process moved aside back at `parent/label`, when nothing
/// took its place since. Returns whether `aside` was dealt with (moved back, or left after an
/// error that was logged).
fn restore_moved_aside(parent: &Path, aside: &Path, label: &OsStr) -> bool {
    let dest = parent.join(label);
    if !matches!(std::fs::symlink_metadata(&dest), Err(e) if e.kind() == io::ErrorKind::NotFound) {
        return false;
    }
    match crate::fs::rename_noreplace(aside, &dest) {
        Ok(true) => {
            tracing::warn!(
                "restored `{}`, which a crashed process had moved aside",
                dest.display()
            );
            let _ = fsync_dir(parent);
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!("could not restore `{}`: {e}", dest.display());
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn two_rename_swap_replaces_and_rolls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path();
        let (staged, dest, prev) = (app.join(".new"), app.join("d"), app.join(".prev"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("v"), b"old").unwrap();
        // Second step fails (nothing staged): the old tree goes back.
        let err = two_rename_swap(&staged, &dest, &prev).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(std::fs::read(dest.join("v")).unwrap(), b"old");
        assert!(!prev.exists());
        // Success: new in place, old aside for the caller to remove.
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("v"), b"new").unwrap();
        two_rename_swap(&staged, &dest, &prev).unwrap();
        assert_eq!(std::fs::read(dest.join("v")).unwrap(), b"new");
        assert_eq!(std::fs::read(prev.join("v")).unwrap(), b"old");
    }

    #[test]
    fn a_failed_rollback_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path();
        let dest = app.join("d");
        std::fs::create_dir(&dest).unwrap();
        // The staging name's directory is gone, so moving the new version back out fails.
        let staging = app.join("gone/.d.stage");
        let err = undo_swap(
            SwapMethod::TwoRenames,
            &staging,
            &dest,
            &app.join(".prev"),
            io::Error::other("fsync failed"),
        );
        let message = err.to_string();
        assert!(matches!(err, PlaceError::NotDurable { .. }), "{err:?}");
        assert!(
            message.contains("fsync failed") && message.contains("undoing the swap failed too"),
            "{message}"
        );
    }

    #[test]
    fn a_stage_swaps_in_and_removes_the_old_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tree");
        for (round, tag) in ["a", "b"].iter().enumerate() {
            let stage = Stage::beside(&dest).unwrap();
            std::fs::create_dir(stage.path()).unwrap();
            std::fs::write(stage.path().join("v"), tag).unwrap();
            stage.make_durable(StagedKind::Tree).unwrap();
            let placed = stage.swap().unwrap();
            assert_eq!(placed.replaced, round == 1);
            assert_eq!(std::fs::read(dest.join("v")).unwrap(), tag.as_bytes());
            assert_eq!(entries(tmp.path()), vec!["tree"]);
        }
    }

    #[test]
    fn a_dropped_stage_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tree");
        let stage = Stage::beside(&dest).unwrap();
        std::fs::create_dir(stage.path()).unwrap();
        std::fs::write(stage.path().join("x"), b"x").unwrap();
        assert_eq!(entries(tmp.path()).len(), 1);
        drop(stage);
        assert!(entries(tmp.path()).is_empty());
    }

    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn staging_names_parse_back() {
        let path = hidden_path(Path::new("/x"), OsStr::new("my.tool"), STAGE_MARK);
        let parsed = parse_leftover(path.file_name().unwrap()).unwrap();
        assert_eq!(
            parsed,
            Leftover {
                label: Some("my.tool".into()),
                prev: false,
                pid: std::process::id()
            }
        );
        let long = "n".repeat(MAX_LABEL + 1);
        let path = hidden_path(Path::new("/x"), OsStr::new(&long), PREV_MARK);
        let parsed = parse_leftover(path.file_name().unwrap()).unwrap();
        assert_eq!((parsed.label, parsed.prev), (None, true));
        assert_eq!(parse_leftover(OsStr::new(".tool.warmcache-stage-x-1")), None);
        assert_eq!(parse_leftover(OsStr::new("tool")), None);
    }

    #[test]
    fn sweep_restores_a_tree_moved_aside_by_a_crashed_process() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path();
        let pid = dead_pid();
        let aside = app.join(format!(".bundle{PREV_MARK}{pid}-abc-0"));
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("v"), b"old").unwrap();
        let stale = app.join(format!(".bundle{STAGE_MARK}{pid}-abc-1"));
        std::fs::create_dir(&stale).unwrap();
        sweep_leftovers(app);
        assert_eq!(std::fs::read(app.join("bundle/v")).unwrap(), b"old");
        assert_eq!(entries(app), vec!["bundle"]);
    }
}
