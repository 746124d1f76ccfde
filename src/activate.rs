//! Activation: placing a published artifact (a file or a directory tree in the cache) at a path
//! outside the cache, so that every reader of that path sees the old version or the new one,
//! whole, and never a mix (DESIGN.md, problem 3, "Torn activation").
//!
//! The steps, each of which leaves the destination untouched when it fails:
//! 1. sweep leftovers of crashed activations beside the destination;
//! 2. build a staging copy next to the destination (same directory, hence same file system) under
//!    a hidden name that carries our PID: `.NAME.warmcache-stage-PID-TIME-N`;
//! 3. run the hooks on the staging copy (code signing, chmod, validation);
//! 4. make the staging copy durable;
//! 5. swap it into place: an atomic exchange when the destination exists (the old version ends up
//!    under the staging name and is removed), a rename without replace when it does not;
//! 6. fsync the destination's directory, then remove the old version.
//!
//! Where the platform has no atomic exchange, a file is renamed over the destination (still
//! atomic) and a directory falls back to two renames: the old tree is moved aside to
//! `.NAME.warmcache-prev-PID-TIME-N`, the new one renamed into place, and the old one moved back
//! if that fails. Between those two renames the destination is briefly missing, never partial; if
//! the process dies there, the next activation into the directory moves the old tree back.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use fs_err as fs;

pub use crate::fs::LinkMode;
use crate::fs::{annotate, copy_file, fsync_dir, remove_tree, sync_tree, unique_name};
use crate::shell::Termination;

/// How to activate: the link mode and the hooks to run on the staging copy.
#[derive(Debug, Clone)]
pub struct ActivateOptions {
    /// How files are placed. `Auto` tries a reflink, then a hard link, then a copy; with hooks it
    /// never hard-links (a reflink is a private copy-on-write copy, so it is still allowed).
    pub link: LinkMode,
    /// Shell commands (run by `sh -c`) that may modify the staging copy before it goes live.
    pub hooks: Vec<String>,
}

impl Default for ActivateOptions {
    fn default() -> Self {
        Self {
            link: LinkMode::Auto,
            hooks: Vec::new(),
        }
    }
}

/// Whether an artifact is a single file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A regular file.
    File,
    /// A directory tree.
    Dir,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::File => "file",
            ArtifactKind::Dir => "directory",
        })
    }
}

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

/// The result of a successful [`activate`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Activation {
    /// Where the artifact now is.
    pub dest: PathBuf,
    /// The link mode actually used (never `Auto`).
    pub link: LinkMode,
    /// Whether a file or a directory was activated.
    pub kind: ArtifactKind,
    /// Whether something was at `dest` before (and has been replaced).
    pub replaced: bool,
    /// How the new version was put in place.
    pub swap: SwapMethod,
}

/// Why an activation failed. In every case the destination is as it was before the call and no
/// staging copy is left beside it (except where a message says otherwise).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The artifact cannot be read.
    #[error("cannot read the artifact `{}` to activate it at `{}`: {err}; check that it is still in the cache (`warmcache verify`)", artifact.display(), dest.display())]
    Artifact {
        artifact: PathBuf,
        dest: PathBuf,
        err: io::Error,
    },

    /// The artifact, or an entry in it, is not a file, directory or symlink.
    #[error("cannot activate `{}` at `{}`: `{}` is not a regular file, directory or symlink", artifact.display(), dest.display(), entry.display())]
    UnsupportedEntry {
        artifact: PathBuf,
        dest: PathBuf,
        entry: PathBuf,
    },

    /// The destination does not name an entry in a directory (for example `/` or `..`).
    #[error("`{}` cannot be an activation destination: give a path that ends in a file or directory name", dest.display())]
    InvalidDest { dest: PathBuf },

    /// The destination's directory does not exist.
    #[error("cannot activate at `{}`: the directory `{}` does not exist; create it first", dest.display(), parent.display())]
    NoParentDir { dest: PathBuf, parent: PathBuf },

    /// The destination (or its directory) cannot be inspected.
    #[error("cannot inspect the activation destination `{}`: {err}", dest.display())]
    Dest { dest: PathBuf, err: io::Error },

    /// The destination and the artifact contain one another.
    #[error("refusing to activate `{}` at `{}`: one contains the other; choose a destination outside the cache", artifact.display(), dest.display())]
    Overlap { artifact: PathBuf, dest: PathBuf },

    /// The destination exists and is not the same kind of thing as the artifact.
    #[error("refusing to replace the {existing} `{}` with the {new} `{}`: remove `{}` first or choose another destination", dest.display(), artifact.display(), dest.display())]
    KindMismatch {
        dest: PathBuf,
        existing: &'static str,
        artifact: PathBuf,
        new: ArtifactKind,
    },

    /// Hooks were given with a link mode through which they would modify the cache.
    #[error("cannot run hooks for `{}` with --link {}: a hook that modifies the staging copy would modify the cached artifact through the link; use --link copy, reflink or auto", dest.display(), mode.as_str())]
    HooksNeedPrivateCopy { dest: PathBuf, mode: LinkMode },

    /// The destination is inside the cache root, whose artifacts are immutable.
    #[error(
        "cannot activate at `{}`: it is inside the cache root `{}`, whose artifacts never change; \
         choose a destination outside the cache",
        dest.display(),
        root.display()
    )]
    InsideCache { dest: PathBuf, root: PathBuf },

    /// An explicitly requested link mode failed (reflink or hard link not supported here).
    #[error("cannot {} `{}` into the staging copy for `{}`: {err}; the file system may not support it (or the destination is on another file system): use --link auto or --link copy", mode.as_str(), artifact.display(), dest.display())]
    LinkUnsupported {
        mode: LinkMode,
        artifact: PathBuf,
        dest: PathBuf,
        err: io::Error,
    },

    /// Building the staging copy failed (a copy error, a full disk).
    #[error("failed to build the staging copy for `{}` from `{}`: {err}; `{}` was left unchanged", dest.display(), artifact.display(), dest.display())]
    Stage {
        dest: PathBuf,
        artifact: PathBuf,
        err: io::Error,
    },

    /// A hook could not be started.
    #[error("could not run the hook `{hook}` for `{}`: {err}; `{}` was left unchanged", dest.display(), dest.display())]
    HookSpawn {
        hook: String,
        dest: PathBuf,
        err: io::Error,
    },

    /// A hook exited unsuccessfully.
    #[error("the hook `{hook}` failed ({status}) on the staging copy of `{}`; `{}` was left unchanged and the staging copy removed; fix the hook and activate again{}", dest.display(), dest.display(), output_tail(output))]
    HookFailed {
        hook: String,
        dest: PathBuf,
        status: String,
        output: String,
    },

    /// A hook removed the staging copy or changed its kind.
    #[error("the hook `{hook}` removed or replaced the staging copy `{}` for `{}`; hooks must modify it in place; `{}` was left unchanged", staging.display(), dest.display(), dest.display())]
    HookBrokeStaging {
        hook: String,
        dest: PathBuf,
        staging: PathBuf,
    },

    /// The staging copy could not be made durable.
    #[error("failed to make the staging copy for `{}` durable: {err}; `{}` was left unchanged", dest.display(), dest.display())]
    Sync { dest: PathBuf, err: io::Error },

    /// The swap into place failed; the destination is unchanged.
    #[error("failed to put the new version in place at `{}`: {err}; `{}` was left unchanged", dest.display(), dest.display())]
    Swap { dest: PathBuf, err: io::Error },

    /// The swap happened, but making it durable failed and it could not be undone.
    #[error("`{}` was replaced, but making that durable failed: {err}; after a crash the old version may reappear: activate again", dest.display())]
    NotDurable { dest: PathBuf, err: io::Error },
}

fn output_tail(output: &str) -> String {
    let trimmed = output.trim_end();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("; its output ended with:\n{trimmed}")
    }
}

/// How much of a hook's output (stdout and stderr together) is kept for the error message.
const HOOK_OUTPUT_TAIL: usize = 8 * 1024;
/// Destination names longer than this are left out of staging names (which must stay under the
/// file system's name limit); such leftovers are still swept, but a moved-aside tree cannot be
/// moved back by name.
const MAX_LABEL: usize = 128;
const STAGE_MARK: &str = ".warmcache-stage-";
const PREV_MARK: &str = ".warmcache-prev-";

/// Places `artifact` (a read-only published file or directory tree inside the cache) at `dest`,
/// atomically: readers of `dest` see the previous version or the new one, whole.
///
/// The staging copy is built next to `dest`, the hooks in `opts` run on it (with
/// `WARMCACHE_STAGING`, `WARMCACHE_DEST` and `WARMCACHE_SOURCE` set, in `dest`'s directory), it is
/// made durable, then swapped into place. On any failure `dest` is left as it was and the staging
/// copy is removed. Leftovers of crashed activations in `dest`'s directory are swept first.
pub fn activate(artifact: &Path, dest: &Path, opts: &ActivateOptions) -> Result<Activation, ActivateError> {
    let has_hooks = !opts.hooks.is_empty();
    if has_hooks && matches!(opts.link, LinkMode::Hardlink | LinkMode::Symlink) {
        return Err(ActivateError::HooksNeedPrivateCopy {
            dest: dest.to_path_buf(),
            mode: opts.link,
        });
    }
    let artifact_err = |err| ActivateError::Artifact {
        artifact: artifact.to_path_buf(),
        dest: dest.to_path_buf(),
        err,
    };
    let meta = fs::metadata(artifact).map_err(artifact_err)?;
    let kind = if meta.is_dir() {
        ArtifactKind::Dir
    } else if meta.is_file() {
        ArtifactKind::File
    } else {
        return Err(ActivateError::UnsupportedEntry {
            artifact: artifact.to_path_buf(),
            dest: dest.to_path_buf(),
            entry: artifact.to_path_buf(),
        });
    };

    let (parent, name) = split_dest(dest)?;
    let existing = existing_kind(dest)?;
    match existing {
        Existing::Missing => {}
        Existing::Present(found) if found == kind => {}
        // A dangling symlink stands for nothing in particular; replacing it is what a user wants.
        Existing::Dangling => {}
        Existing::Present(found) => {
            return Err(ActivateError::KindMismatch {
                dest: dest.to_path_buf(),
                existing: if found == ArtifactKind::Dir {
                    "directory"
                } else {
                    "file"
                },
                artifact: artifact.to_path_buf(),
                new: kind,
            });
        }
        Existing::Special => {
            return Err(ActivateError::KindMismatch {
                dest: dest.to_path_buf(),
                existing: "special file",
                artifact: artifact.to_path_buf(),
                new: kind,
            });
        }
    }
    check_no_overlap(artifact, dest, &parent, name)?;

    sweep_leftovers(&parent);

    let mut staging = StagingGuard::new(&parent, name, STAGE_MARK);
    let link = if opts.link == LinkMode::Symlink {
        // An absolute target: the link must not depend on where `dest` is.
        let target = std::path::absolute(artifact).map_err(artifact_err)?;
        crate::fs::symlink(&target, staging.path()).map_err(|err| ActivateError::Stage {
            dest: dest.to_path_buf(),
            artifact: artifact.to_path_buf(),
            err,
        })?;
        LinkMode::Symlink
    } else {
        let mut linker = Linker::new(opts.link, has_hooks);
        match kind {
            ArtifactKind::File => linker.place(artifact, staging.path()),
            ArtifactKind::Dir => stage_tree(artifact, staging.path(), &mut linker),
        }
        .map_err(|e| e.into_error(artifact, dest))?;
        linker.used()
    };

    for hook in &opts.hooks {
        run_hook(hook, staging.path(), dest, artifact, &parent)?;
        let still_there = std::fs::symlink_metadata(staging.path()).is_ok_and(|m| match kind {
            ArtifactKind::File => m.is_file(),
            ArtifactKind::Dir => m.is_dir(),
        });
        if !still_there {
            return Err(ActivateError::HookBrokeStaging {
                hook: hook.clone(),
                dest: dest.to_path_buf(),
                staging: staging.path().to_path_buf(),
            });
        }
    }

    let sync_err = |err| ActivateError::Sync {
        dest: dest.to_path_buf(),
        err,
    };
    match (link, kind) {
        // A symlink's target is written with its directory entry; the directory fsync covers it.
        (LinkMode::Symlink, _) => {}
        (_, ArtifactKind::File) => {
            let file = std::fs::File::open(staging.path())
                .map_err(|e| sync_err(annotate(e, "open", staging.path())))?;
            file.sync_all()
                .map_err(|e| sync_err(annotate(e, "fsync", staging.path())))?;
        }
        (_, ArtifactKind::Dir) => sync_tree(staging.path()).map_err(sync_err)?,
    }

    let prev = staging_path(&parent, name, PREV_MARK);
    let swap = put_in_place(staging.path(), dest, &prev).map_err(|err| ActivateError::Swap {
        dest: dest.to_path_buf(),
        err,
    })?;

    if let Err(err) = fsync_dir(&parent) {
        return Err(undo_swap(swap, staging.path(), dest, &prev, err));
    }
    // What is left under the staging name (the old version after an exchange) or beside it (the
    // old tree after two renames) is garbage now; if removal fails the next activation sweeps it.
    staging.remove_now();
    if swap == SwapMethod::TwoRenames
        && let Err(e) = remove_tree(&prev)
    {
        tracing::warn!(
            "could not remove the previous version of `{}`: {e}",
            dest.display()
        );
    }
    Ok(Activation {
        dest: dest.to_path_buf(),
        link,
        kind,
        replaced: !matches!(existing, Existing::Missing),
        swap,
    })
}

/// Undoes a swap whose durability could not be established, so `dest` is as before.
fn undo_swap(swap: SwapMethod, staging: &Path, dest: &Path, prev: &Path, err: io::Error) -> ActivateError {
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
            ActivateError::Swap {
                dest: dest.to_path_buf(),
                err,
            }
        }
        Err(undo) => {
            tracing::warn!("could not undo the activation of `{}`: {undo}", dest.display());
            ActivateError::NotDurable {
                dest: dest.to_path_buf(),
                err,
            }
        }
    }
}

fn split_dest(dest: &Path) -> Result<(PathBuf, &OsStr), ActivateError> {
    let name = match dest.components().next_back() {
        Some(std::path::Component::Normal(name)) => name,
        _ => {
            return Err(ActivateError::InvalidDest {
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
        Ok(_) => Err(ActivateError::NoParentDir {
            dest: dest.to_path_buf(),
            parent,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ActivateError::NoParentDir {
            dest: dest.to_path_buf(),
            parent,
        }),
        Err(e) => Err(ActivateError::Dest {
            dest: dest.to_path_buf(),
            err: annotate(e, "inspect", &parent),
        }),
    }
}

/// What is at the destination now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Missing,
    /// A file or directory, or a symlink to one.
    Present(ArtifactKind),
    /// A symlink to nothing.
    Dangling,
    /// A FIFO, socket or device.
    Special,
}

fn existing_kind(dest: &Path) -> Result<Existing, ActivateError> {
    let inspect_err = |err| ActivateError::Dest {
        dest: dest.to_path_buf(),
        err,
    };
    let meta = match std::fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(inspect_err(annotate(e, "inspect", dest))),
    };
    let meta = if meta.file_type().is_symlink() {
        match std::fs::metadata(dest) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Dangling),
            Err(e) => return Err(inspect_err(annotate(e, "follow the symlink", dest))),
        }
    } else {
        meta
    };
    Ok(if meta.is_dir() {
        Existing::Present(ArtifactKind::Dir)
    } else if meta.is_file() {
        Existing::Present(ArtifactKind::File)
    } else {
        Existing::Special
    })
}

/// Refuses a destination that is, or lies inside or above, the artifact: the swap would otherwise
/// move or delete part of the cache.
fn check_no_overlap(artifact: &Path, dest: &Path, parent: &Path, name: &OsStr) -> Result<(), ActivateError> {
    let (Ok(artifact_real), Ok(parent_real)) =
        (std::fs::canonicalize(artifact), std::fs::canonicalize(parent))
    else {
        // Both were inspected a moment ago; if they vanished, the steps that follow say so.
        return Ok(());
    };
    let dest_real = parent_real.join(name);
    if artifact_real.starts_with(&dest_real) || dest_real.starts_with(&artifact_real) {
        return Err(ActivateError::Overlap {
            artifact: artifact.to_path_buf(),
            dest: dest.to_path_buf(),
        });
    }
    Ok(())
}

/// `.LABEL.warmcache-stage-PID-TIME-N` (or `-prev-`) in `parent`, where LABEL is `name` unless it
/// is too long to fit.
fn staging_path(parent: &Path, name: &OsStr, mark: &str) -> PathBuf {
    let mut file_name = OsString::from(".");
    if name.len() <= MAX_LABEL {
        file_name.push(name);
    }
    file_name.push(mark);
    file_name.push(unique_name(""));
    parent.join(file_name)
}

/// A staging location that is removed when dropped, so every early return cleans up.
struct StagingGuard {
    path: PathBuf,
}

impl StagingGuard {
    fn new(parent: &Path, name: &OsStr, mark: &str) -> Self {
        Self {
            path: staging_path(parent, name, mark),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove_now(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(
                "could not remove the staging leftover `{}`: {e}",
                self.path.display()
            );
        }
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        self.remove_now();
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

/// Whether process `pid` is known to be gone. Our own PID (another thread's activation) and PIDs
/// we cannot check count as alive: a leftover is only ever removed when its owner is surely dead.
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

/// Removes the staging copies of dead activations in `parent` and moves back any previous version
/// a dead activation had moved aside (when nothing has taken its place since). Best effort: a
/// failure here is logged and never fails the activation.
fn sweep_leftovers(parent: &Path) {
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(
                "could not look for activation leftovers in `{}`: {e}",
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
        // A previous version moved aside, and nothing took its place since: put it back.
        if leftover.prev
            && let Some(label) = &leftover.label
            && let dest = parent.join(label)
            && matches!(std::fs::symlink_metadata(&dest), Err(e) if e.kind() == io::ErrorKind::NotFound)
        {
            match crate::fs::rename_noreplace(&path, &dest) {
                Ok(true) => {
                    tracing::warn!(
                        "restored `{}`, which a crashed activation had moved aside",
                        dest.display()
                    );
                    let _ = fsync_dir(parent);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("could not restore `{}`: {e}", dest.display());
                    continue;
                }
            }
        }
        match remove_tree(&path) {
            Ok(()) => tracing::info!("removed `{}`, left by a crashed activation", path.display()),
            Err(e) => tracing::warn!("could not remove activation leftover `{}`: {e}", path.display()),
        }
    }
}

/// Places files into the staging copy with the requested link mode, falling back (for `Auto`)
/// from reflink to hard link to copy, and sticking with the first that works so a tree of
/// thousands of files does not retry a failing reflink for each.
struct Linker {
    candidates: &'static [LinkMode],
    next: usize,
}

/// A failure to place one file, with the mode that failed.
struct PlaceError {
    mode: LinkMode,
    explicit: bool,
    err: io::Error,
    unsupported: Option<PathBuf>,
}

impl PlaceError {
    fn io(err: io::Error) -> Self {
        Self {
            mode: LinkMode::Copy,
            explicit: false,
            err,
            unsupported: None,
        }
    }

    fn into_error(self, artifact: &Path, dest: &Path) -> ActivateError {
        if let Some(entry) = self.unsupported {
            return ActivateError::UnsupportedEntry {
                artifact: artifact.to_path_buf(),
                dest: dest.to_path_buf(),
                entry,
            };
        }
        if self.explicit && matches!(self.mode, LinkMode::Reflink | LinkMode::Hardlink) {
            ActivateError::LinkUnsupported {
                mode: self.mode,
                artifact: artifact.to_path_buf(),
                dest: dest.to_path_buf(),
                err: self.err,
            }
        } else {
            ActivateError::Stage {
                dest: dest.to_path_buf(),
                artifact: artifact.to_path_buf(),
                err: self.err,
            }
        }
    }
}

impl Linker {
    fn new(mode: LinkMode, has_hooks: bool) -> Self {
        let candidates: &'static [LinkMode] = match mode {
            // A reflink is a private copy-on-write copy: a hook's writes never reach the cache.
            LinkMode::Auto if has_hooks => &[LinkMode::Reflink, LinkMode::Copy],
            LinkMode::Auto => &[LinkMode::Reflink, LinkMode::Hardlink, LinkMode::Copy],
            LinkMode::Reflink => &[LinkMode::Reflink],
            LinkMode::Hardlink => &[LinkMode::Hardlink],
            // Symlink mode links the whole artifact and never gets here.
            LinkMode::Copy | LinkMode::Symlink => &[LinkMode::Copy],
        };
        Self { candidates, next: 0 }
    }

    fn used(&self) -> LinkMode {
        self.candidates[self.next]
    }

    fn place(&mut self, from: &Path, to: &Path) -> Result<(), PlaceError> {
        loop {
            let mode = self.candidates[self.next];
            match place_file(from, to, mode) {
                Ok(()) => return Ok(()),
                Err(err) if self.next + 1 < self.candidates.len() => {
                    tracing::debug!("{} unavailable, falling back: {err}", mode.as_str());
                    // A failed attempt may leave a partial file; the next mode needs the name.
                    let _ = std::fs::remove_file(to);
                    self.next += 1;
                }
                Err(err) => {
                    return Err(PlaceError {
                        mode,
                        explicit: self.candidates.len() == 1,
                        err,
                        unsupported: None,
                    });
                }
            }
        }
    }
}

fn place_file(from: &Path, to: &Path, mode: LinkMode) -> io::Result<()> {
    match mode {
        LinkMode::Reflink => {
            crate::fs::reflink(from, to)?;
            // The clone carries the cache's read-only mode; hooks need to write it. It is a private
            // copy, so this does not touch the cache.
            let executable = crate::fs::is_executable(&fs::metadata(from)?);
            crate::fs::set_permissions(
                to,
                crate::fs::mode_permissions(if executable { 0o755 } else { 0o644 }),
            )
        }
        // Never chmod a hard link: it is the cached file itself.
        LinkMode::Hardlink => fs::hard_link(from, to),
        LinkMode::Copy | LinkMode::Auto | LinkMode::Symlink => copy_file(from, to),
    }
}

/// Recreates the tree at `from` as the new directory `to`: directories created (writable, so
/// hooks can add files and the tree can later be removed), symlinks re-created with the same
/// target, files placed by `linker`.
fn stage_tree(from: &Path, to: &Path, linker: &mut Linker) -> Result<(), PlaceError> {
    fs::create_dir(to).map_err(PlaceError::io)?;
    for (rel, file_type) in crate::fs::walk_sorted(from).map_err(PlaceError::io)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if file_type.is_dir() {
            fs::create_dir(&dst).map_err(PlaceError::io)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&src).map_err(PlaceError::io)?;
            crate::fs::symlink(&target, &dst).map_err(PlaceError::io)?;
        } else if file_type.is_file() {
            linker.place(&src, &dst)?;
        } else {
            return Err(PlaceError {
                unsupported: Some(src),
                ..PlaceError::io(io::Error::other("unsupported file type"))
            });
        }
    }
    Ok(())
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
/// `prev`, rename `staged` to `dest`; if the second step fails, move `prev` back. `dest` is missing
/// (never partial) between the two renames; a crash there is repaired by [`sweep_leftovers`].
fn two_rename_swap(staged: &Path, dest: &Path, prev: &Path) -> io::Result<()> {
    crate::fs::rename_with_retry(dest, prev)?;
    match crate::fs::rename_noreplace(staged, dest) {
        Ok(true) => Ok(()),
        outcome => {
            let err = match outcome {
                Err(e) => e,
                _ => io::Error::new(
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
    }
}

/// Runs one hook on the staging copy, keeping the tail of its output for the error message.
fn run_hook(
    hook: &str,
    staging: &Path,
    dest: &Path,
    artifact: &Path,
    cwd: &Path,
) -> Result<(), ActivateError> {
    let env = [
        ("WARMCACHE_STAGING", staging.as_os_str()),
        ("WARMCACHE_DEST", dest.as_os_str()),
        ("WARMCACHE_SOURCE", artifact.as_os_str()),
    ];
    let (result, output) = crate::shell::run(hook, cwd, &env, None, HOOK_OUTPUT_TAIL);
    match result {
        Ok(()) => {
            tracing::debug!("hook `{hook}` succeeded: {output}");
            Ok(())
        }
        Err(Termination::SpawnFailed { message, .. }) => Err(ActivateError::HookSpawn {
            hook: hook.to_string(),
            dest: dest.to_path_buf(),
            err: io::Error::other(message),
        }),
        Err(termination) => Err(ActivateError::HookFailed {
            hook: hook.to_string(),
            dest: dest.to_path_buf(),
            status: termination.to_string(),
            output,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    /// A temp "cache" with a published (read-only) file and tree, and a temp "app" directory.
    struct Fixture {
        _tmp: tempfile::TempDir,
        cache: PathBuf,
        app: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let cache = tmp.path().join("cache");
            let app = tmp.path().join("app");
            std::fs::create_dir_all(&cache).unwrap();
            std::fs::create_dir_all(&app).unwrap();
            Self {
                _tmp: tmp,
                cache,
                app,
            }
        }

        fn file(&self, name: &str, bytes: &[u8], executable: bool) -> PathBuf {
            let path = self.cache.join(name);
            std::fs::write(&path, bytes).unwrap();
            crate::fs::set_permissions(&path, crate::fs::published_file_permissions(executable)).unwrap();
            path
        }

        /// A tree with a nested dir, an executable, a relative symlink; `tag` varies the content.
        fn tree(&self, name: &str, tag: &str) -> PathBuf {
            let root = self.cache.join(name);
            std::fs::create_dir_all(root.join("bin")).unwrap();
            std::fs::create_dir_all(root.join("lib/v1")).unwrap();
            std::fs::write(root.join("bin/tool"), format!("#!/bin/sh\necho {tag}\n")).unwrap();
            std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(root.join("lib/v1/data"), tag).unwrap();
            std::os::unix::fs::symlink("v1", root.join("lib/current")).unwrap();
            std::fs::write(root.join(format!("only-{tag}")), tag).unwrap();
            crate::fs::make_tree_read_only(&root).unwrap();
            root
        }

        fn app_entries(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.app)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn opts(link: LinkMode) -> ActivateOptions {
        ActivateOptions {
            link,
            hooks: Vec::new(),
        }
    }

    fn reflink_supported(dir: &Path) -> bool {
        let (a, b) = (dir.join(".probe-a"), dir.join(".probe-b"));
        std::fs::write(&a, b"probe").unwrap();
        let ok = crate::fs::reflink(&a, &b).is_ok();
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        ok
    }

    #[test]
    fn copy_mode_makes_a_private_writable_copy_keeping_the_executable_bit() {
        let fx = Fixture::new();
        let src = fx.file("tool", b"binary", true);
        let dest = fx.app.join("tool");
        let act = activate(&src, &dest, &opts(LinkMode::Copy)).unwrap();
        assert_eq!(
            (act.link, act.kind, act.replaced, act.swap),
            (LinkMode::Copy, ArtifactKind::File, false, SwapMethod::Created)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary");
        let (sm, dm) = (
            std::fs::metadata(&src).unwrap(),
            std::fs::metadata(&dest).unwrap(),
        );
        assert_ne!(sm.ino(), dm.ino());
        assert_eq!(dm.mode() & 0o777, 0o755);
        assert_eq!(fx.app_entries(), vec!["tool"]);
    }

    #[test]
    fn hardlink_mode_shares_the_cached_inode() {
        let fx = Fixture::new();
        let src = fx.file("tool", b"binary", false);
        let dest = fx.app.join("tool");
        let act = activate(&src, &dest, &opts(LinkMode::Hardlink)).unwrap();
        assert_eq!(act.link, LinkMode::Hardlink);
        assert_eq!(
            std::fs::metadata(&src).unwrap().ino(),
            std::fs::metadata(&dest).unwrap().ino()
        );
        // Replacing it again exchanges and removes the old link, leaving the cache file alone.
        let src2 = fx.file("tool2", b"binary2", false);
        let act = activate(&src2, &dest, &opts(LinkMode::Hardlink)).unwrap();
        assert_eq!((act.replaced, act.swap), (true, SwapMethod::Exchanged));
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary2");
        assert_eq!(std::fs::read(&src).unwrap(), b"binary");
        assert_eq!(std::fs::metadata(&src).unwrap().nlink(), 1);
        assert_eq!(fx.app_entries(), vec!["tool"]);
    }

    #[test]
    fn reflink_mode_works_or_fails_clearly_and_auto_falls_back() {
        let fx = Fixture::new();
        let src = fx.file("tool", b"binary", false);
        let dest = fx.app.join("tool");
        if reflink_supported(&fx.app) {
            let act = activate(&src, &dest, &opts(LinkMode::Reflink)).unwrap();
            assert_eq!(act.link, LinkMode::Reflink);
            assert_ne!(
                std::fs::metadata(&src).unwrap().ino(),
                std::fs::metadata(&dest).unwrap().ino()
            );
        } else {
            let err = activate(&src, &dest, &opts(LinkMode::Reflink)).unwrap_err();
            assert!(
                matches!(
                    err,
                    ActivateError::LinkUnsupported {
                        mode: LinkMode::Reflink,
                        ..
                    }
                ),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("reflink") && msg.contains("--link auto"), "{msg}");
            assert!(
                fx.app_entries().is_empty(),
                "nothing left behind: {:?}",
                fx.app_entries()
            );
            let act = activate(&src, &dest, &opts(LinkMode::Auto)).unwrap();
            assert_eq!(
                act.link,
                LinkMode::Hardlink,
                "same file system: auto falls back to a hard link"
            );
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary");
    }

    #[test]
    fn auto_with_hooks_never_hardlinks() {
        let fx = Fixture::new();
        let src = fx.file("tool", b"binary", false);
        let dest = fx.app.join("tool");
        let o = ActivateOptions {
            link: LinkMode::Auto,
            hooks: vec!["true".into()],
        };
        let act = activate(&src, &dest, &o).unwrap();
        assert!(
            matches!(act.link, LinkMode::Copy | LinkMode::Reflink),
            "{:?}",
            act.link
        );
        assert_ne!(
            std::fs::metadata(&src).unwrap().ino(),
            std::fs::metadata(&dest).unwrap().ino()
        );
    }

    #[test]
    fn symlink_mode_swaps_the_link_atomically() {
        let fx = Fixture::new();
        let (a, b) = (fx.tree("a", "a"), fx.tree("b", "b"));
        let dest = fx.app.join("current");
        let act = activate(&a, &dest, &opts(LinkMode::Symlink)).unwrap();
        assert_eq!((act.link, act.kind), (LinkMode::Symlink, ArtifactKind::Dir));
        assert_eq!(
            std::fs::read_link(&dest).unwrap(),
            std::path::absolute(&a).unwrap()
        );
        let act = activate(&b, &dest, &opts(LinkMode::Symlink)).unwrap();
        assert!(act.replaced);
        assert_eq!(
            std::fs::read_link(&dest).unwrap(),
            std::path::absolute(&b).unwrap()
        );
        assert_eq!(std::fs::read(dest.join("lib/v1/data")).unwrap(), b"b");
        assert_eq!(fx.app_entries(), vec!["current"]);
    }

    #[test]
    fn symlink_or_hardlink_with_hooks_is_refused() {
        let fx = Fixture::new();
        let src = fx.file("tool", b"binary", false);
        for mode in [LinkMode::Hardlink, LinkMode::Symlink] {
            let o = ActivateOptions {
                link: mode,
                hooks: vec!["true".into()],
            };
            let err = activate(&src, &fx.app.join("tool"), &o).unwrap_err();
            assert!(
                matches!(err, ActivateError::HooksNeedPrivateCopy { .. }),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("would modify the cached artifact"),
                "{err}"
            );
        }
        assert!(fx.app_entries().is_empty());
    }

    #[test]
    fn a_directory_is_replaced_by_exchange() {
        let fx = Fixture::new();
        let (a, b) = (fx.tree("a", "a"), fx.tree("b", "b"));
        let dest = fx.app.join("bundle");
        let first = activate(&a, &dest, &opts(LinkMode::Copy)).unwrap();
        assert_eq!((first.kind, first.swap), (ArtifactKind::Dir, SwapMethod::Created));
        // A reader holding a file of the old tree open keeps reading the old version whole.
        let mut held = std::fs::File::open(dest.join("lib/v1/data")).unwrap();
        let old_ino = std::fs::metadata(&dest).unwrap().ino();

        let second = activate(&b, &dest, &opts(LinkMode::Copy)).unwrap();
        assert_eq!((second.swap, second.replaced), (SwapMethod::Exchanged, true));
        assert_ne!(std::fs::metadata(&dest).unwrap().ino(), old_ino);
        assert!(dest.join("only-b").exists() && !dest.join("only-a").exists());
        assert_eq!(
            std::fs::read_link(dest.join("lib/current")).unwrap(),
            Path::new("v1")
        );
        assert_eq!(std::fs::read(dest.join("lib/current/data")).unwrap(), b"b");
        let tool = std::fs::metadata(dest.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o777, 0o755);
        let mut old = String::new();
        held.read_to_string(&mut old).unwrap();
        assert_eq!(old, "a");
        assert_eq!(fx.app_entries(), vec!["bundle"], "the old tree was removed");
        // The cache is untouched.
        assert_eq!(std::fs::read(a.join("lib/v1/data")).unwrap(), b"a");
    }

    #[test]
    fn kind_mismatch_is_refused_and_changes_nothing() {
        let fx = Fixture::new();
        let file = fx.file("tool", b"binary", false);
        let tree = fx.tree("t", "t");
        let dir_dest = fx.app.join("d");
        std::fs::create_dir(&dir_dest).unwrap();
        std::fs::write(dir_dest.join("keep"), b"keep").unwrap();
        let err = activate(&file, &dir_dest, &opts(LinkMode::Copy)).unwrap_err();
        assert!(matches!(err, ActivateError::KindMismatch { .. }), "{err:?}");
        assert!(
            err.to_string().contains("refusing to replace the directory"),
            "{err}"
        );
        assert_eq!(std::fs::read(dir_dest.join("keep")).unwrap(), b"keep");

        let file_dest = fx.app.join("f");
        std::fs::write(&file_dest, b"mine").unwrap();
        let err = activate(&tree, &file_dest, &opts(LinkMode::Copy)).unwrap_err();
        assert!(err.to_string().contains("refusing to replace the file"), "{err}");
        assert_eq!(std::fs::read(&file_dest).unwrap(), b"mine");
        assert_eq!(fx.app_entries(), vec!["d", "f"]);
    }

    #[test]
    fn a_destination_overlapping_the_artifact_is_refused() {
        let fx = Fixture::new();
        let tree = fx.tree("t", "t");
        let err = activate(&tree, &fx.cache, &opts(LinkMode::Copy)).unwrap_err();
        assert!(matches!(err, ActivateError::Overlap { .. }), "{err:?}");
        assert_eq!(std::fs::read(tree.join("only-t")).unwrap(), b"t");
    }

    #[test]
    fn a_missing_parent_directory_is_a_clear_error() {
        let fx = Fixture::new();
        let src = fx.file("tool", b"binary", false);
        let err = activate(&src, &fx.app.join("no/such/tool"), &opts(LinkMode::Copy)).unwrap_err();
        assert!(
            err.to_string().contains("does not exist; create it first"),
            "{err}"
        );
    }

    #[test]
    fn two_rename_swap_replaces_and_rolls_back() {
        let fx = Fixture::new();
        let (staged, dest, prev) = (fx.app.join(".new"), fx.app.join("d"), fx.app.join(".prev"));
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

    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn staging_names_parse_back() {
        let path = staging_path(Path::new("/x"), OsStr::new("my.tool"), STAGE_MARK);
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
        let path = staging_path(Path::new("/x"), OsStr::new(&long), PREV_MARK);
        let parsed = parse_leftover(path.file_name().unwrap()).unwrap();
        assert_eq!((parsed.label, parsed.prev), (None, true));
        assert_eq!(parse_leftover(OsStr::new(".tool.warmcache-stage-x-1")), None);
        assert_eq!(parse_leftover(OsStr::new("tool")), None);
    }

    #[test]
    fn sweep_restores_a_tree_moved_aside_by_a_crashed_activation() {
        let fx = Fixture::new();
        let pid = dead_pid();
        let aside = fx.app.join(format!(".bundle{PREV_MARK}{pid}-abc-0"));
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("v"), b"old").unwrap();
        let stale = fx.app.join(format!(".bundle{STAGE_MARK}{pid}-abc-1"));
        std::fs::create_dir(&stale).unwrap();
        sweep_leftovers(&fx.app);
        assert_eq!(std::fs::read(fx.app.join("bundle/v")).unwrap(), b"old");
        assert_eq!(fx.app_entries(), vec!["bundle"]);
    }
}
