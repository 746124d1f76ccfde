//! Activation: placing a published artifact (a file or a directory tree in the cache) at a path
//! outside the cache, so that every reader of that path sees the old version or the new one,
//! whole, and never a mix (docs/DESIGN.md, problem 3, "Torn activation").
//!
//! This module decides what to build (the link mode, the kind checks) and builds the staging copy
//! (`link`); the staging, hooks, durability, swap and sweeping of crashed leftovers are the
//! place-and-swap primitive of [`crate::place`].

mod link;

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use fs_err as fs;

pub use crate::fs::LinkMode;
use crate::fs::annotate;
pub use crate::place::SwapMethod;
use crate::place::{PlaceError, Stage, StagedKind};
use crate::shell::Termination;
use link::{Linker, stage_tree};

/// How to activate: the link mode and the hooks to run on the staging copy.
#[derive(Debug, Clone)]
pub struct ActivateOptions {
    /// How files are placed. `Auto` tries a reflink, then a copy: DEST never shares an inode with
    /// the cache, so writing to it cannot damage the cache. `Hardlink` only when asked (DEST is
    /// then read-only).
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

/// What an artifact's files must hash to, by path inside it (`/`-separated; empty for a
/// single-file artifact), from its manifest: an activation that copies checks every file as it
/// copies it, so damaged bytes never reach DEST (docs/DESIGN.md, "Corruption is never served").
#[derive(Debug, Clone, Default)]
pub struct ExpectedDigests {
    files: std::collections::HashMap<String, String>,
}

impl ExpectedDigests {
    /// From `(path, BLAKE3 hex)` pairs, one per regular file of the artifact.
    pub fn new(files: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            files: files.into_iter().collect(),
        }
    }

    fn get(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    fn len(&self) -> usize {
        self.files.len()
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

    /// A file of the artifact is not what its manifest says (found while copying it).
    #[error("refusing to activate `{}` at `{}`: the artifact is damaged: {}{problem}; `{}` was left unchanged", artifact.display(), dest.display(), if entry.is_empty() { String::new() } else { format!("`{entry}`: ") }, dest.display())]
    Damaged {
        artifact: PathBuf,
        dest: PathBuf,
        /// The file inside the artifact (empty for the artifact itself).
        entry: String,
        problem: String,
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
    #[error("`{}` was replaced, but making that durable failed: {err}; undoing the swap failed too: {undo}; after a crash the old version may reappear: activate again", dest.display())]
    NotDurable {
        dest: PathBuf,
        err: io::Error,
        undo: io::Error,
    },
}

impl From<PlaceError> for ActivateError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::InvalidDest { dest } => ActivateError::InvalidDest { dest },
            PlaceError::NoParentDir { dest, parent } => ActivateError::NoParentDir { dest, parent },
            PlaceError::Inspect { dest, err } => ActivateError::Dest { dest, err },
            PlaceError::HookBrokeStage { hook, dest, stage } => ActivateError::HookBrokeStaging {
                hook,
                dest,
                staging: stage,
            },
            PlaceError::Sync { dest, err } => ActivateError::Sync { dest, err },
            PlaceError::Swap { dest, err } => ActivateError::Swap { dest, err },
            PlaceError::NotDurable { dest, err, undo } => ActivateError::NotDurable { dest, err, undo },
        }
    }
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

/// Places `artifact` (a read-only published file or directory tree inside the cache) at `dest`,
/// atomically: readers of `dest` see the previous version or the new one, whole.
///
/// The staging copy is built next to `dest`, the hooks in `opts` run on it (with
/// `WARMCACHE_STAGING`, `WARMCACHE_DEST` and `WARMCACHE_SOURCE` set, in `dest`'s directory), it is
/// made durable, then swapped into place. On any failure `dest` is left as it was and the staging
/// copy is removed. Leftovers of crashed activations in `dest`'s directory are swept first.
pub fn activate(artifact: &Path, dest: &Path, opts: &ActivateOptions) -> Result<Activation, ActivateError> {
    activate_verified(artifact, dest, opts, None)
}

/// [`activate`], checking every file it copies against `expected` while copying it (reflinks,
/// hard links and symlinks read no bytes and are not checked): a mismatch is
/// [`ActivateError::Damaged`], with DEST left as it was.
pub fn activate_verified(
    artifact: &Path,
    dest: &Path,
    opts: &ActivateOptions,
    expected: Option<&ExpectedDigests>,
) -> Result<Activation, ActivateError> {
    // Absolute, once, at the boundary: hooks get it as `$WARMCACHE_SOURCE` and run elsewhere.
    let artifact = &std::path::absolute(artifact).map_err(|err| ActivateError::Artifact {
        artifact: artifact.to_path_buf(),
        dest: dest.to_path_buf(),
        err,
    })?;
    let has_hooks = !opts.hooks.is_empty();
    if has_hooks && matches!(opts.link, LinkMode::Hardlink | LinkMode::Symlink) {
        return Err(ActivateError::HooksNeedPrivateCopy {
            dest: dest.to_path_buf(),
            mode: opts.link,
        });
    }
    let kind = artifact_kind(artifact, dest)?;
    let stage = Stage::beside(dest)?;
    let existing = existing_kind(dest)?;
    check_replaceable(existing, kind, artifact, dest)?;
    check_no_overlap(artifact, dest, stage.parent(), stage.name())?;

    let link = build_staging(&stage, artifact, kind, opts, expected)?;
    let staged_kind = match kind {
        ArtifactKind::File => StagedKind::File,
        ArtifactKind::Dir => StagedKind::Tree,
    };
    for hook in &opts.hooks {
        stage.run_hook(hook, staged_kind, |staging| {
            run_hook(
                hook,
                staging,
                dest,
                &stage.absolute_dest(),
                artifact,
                stage.parent(),
            )
        })?;
    }
    stage.make_durable(if link == LinkMode::Symlink {
        StagedKind::Symlink
    } else {
        staged_kind
    })?;
    let placed = stage.swap()?;
    Ok(Activation {
        dest: dest.to_path_buf(),
        link,
        kind,
        replaced: !matches!(existing, Existing::Missing),
        swap: placed.swap,
    })
}

/// Whether the artifact is a file or a tree (anything else cannot be activated).
fn artifact_kind(artifact: &Path, dest: &Path) -> Result<ArtifactKind, ActivateError> {
    let meta = fs::metadata(artifact).map_err(|err| ActivateError::Artifact {
        artifact: artifact.to_path_buf(),
        dest: dest.to_path_buf(),
        err,
    })?;
    if meta.is_dir() {
        Ok(ArtifactKind::Dir)
    } else if meta.is_file() {
        Ok(ArtifactKind::File)
    } else {
        Err(ActivateError::UnsupportedEntry {
            artifact: artifact.to_path_buf(),
            dest: dest.to_path_buf(),
            entry: artifact.to_path_buf(),
        })
    }
}

/// Refuses to replace something of another kind than the artifact.
fn check_replaceable(
    existing: Existing,
    kind: ArtifactKind,
    artifact: &Path,
    dest: &Path,
) -> Result<(), ActivateError> {
    let found = match existing {
        Existing::Missing => return Ok(()),
        Existing::Present(found) if found == kind => return Ok(()),
        // A dangling symlink stands for nothing in particular; replacing it is what a user wants.
        Existing::Dangling => return Ok(()),
        Existing::Present(ArtifactKind::Dir) => "directory",
        Existing::Present(ArtifactKind::File) => "file",
        Existing::Special => "special file",
    };
    Err(ActivateError::KindMismatch {
        dest: dest.to_path_buf(),
        existing: found,
        artifact: artifact.to_path_buf(),
        new: kind,
    })
}

/// Builds the staging copy at the stage's path; returns the link mode actually used.
fn build_staging(
    stage: &Stage,
    artifact: &Path,
    kind: ArtifactKind,
    opts: &ActivateOptions,
    expected: Option<&ExpectedDigests>,
) -> Result<LinkMode, ActivateError> {
    let dest = stage.dest();
    if opts.link == LinkMode::Symlink {
        // An absolute target: the link must not depend on where `dest` is.
        let target = std::path::absolute(artifact).map_err(|err| ActivateError::Artifact {
            artifact: artifact.to_path_buf(),
            dest: dest.to_path_buf(),
            err,
        })?;
        crate::fs::symlink(&target, stage.path()).map_err(|err| ActivateError::Stage {
            dest: dest.to_path_buf(),
            artifact: artifact.to_path_buf(),
            err,
        })?;
        return Ok(LinkMode::Symlink);
    }
    let mut linker = Linker::new(opts.link, expected);
    match kind {
        ArtifactKind::File => linker
            .place(artifact, stage.path(), "")
            .and_then(|()| linker.finish()),
        ArtifactKind::Dir => stage_tree(artifact, stage.path(), &mut linker),
    }
    .map_err(|e| e.into_error(artifact, dest))?;
    Ok(linker.used())
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

/// Runs one hook on the staging copy, keeping the tail of its output for the error message.
/// `dest` is as the caller gave it (for messages); `absolute_dest` is what the hook is told.
fn run_hook(
    hook: &str,
    staging: &Path,
    dest: &Path,
    absolute_dest: &Path,
    artifact: &Path,
    cwd: &Path,
) -> Result<(), ActivateError> {
    let env = [
        ("WARMCACHE_STAGING", staging.as_os_str()),
        ("WARMCACHE_DEST", absolute_dest.as_os_str()),
        ("WARMCACHE_SOURCE", artifact.as_os_str()),
    ];
    let (result, output) = crate::shell::run(hook, cwd, &env, None, HOOK_OUTPUT_TAIL, None);
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
                LinkMode::Copy,
                "auto falls back to a copy, never a hard link"
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
    fn a_copy_is_checked_against_its_digests_and_a_mismatch_leaves_dest_untouched() {
        let fx = Fixture::new();
        let (a, b) = (fx.tree("a", "a"), fx.tree("b", "b"));
        let dest = fx.app.join("bundle");
        activate(&a, &dest, &opts(LinkMode::Copy)).unwrap();
        let files: Vec<(String, String)> = crate::fs::walk_sorted(&b)
            .unwrap()
            .into_iter()
            .filter(|(_, kind)| kind.is_file())
            .map(|(rel, _)| {
                let digest = blake3::hash(&std::fs::read(b.join(&rel)).unwrap());
                (rel.to_string_lossy().into_owned(), digest.to_hex().to_string())
            })
            .collect();
        let mut wrong = files.clone();
        wrong[0].1 = "0".repeat(64);
        let mut extra = files.clone();
        extra.push(("gone".into(), "0".repeat(64)));
        for expected in [wrong, extra] {
            let expected = ExpectedDigests::new(expected);
            let err = activate_verified(&b, &dest, &opts(LinkMode::Copy), Some(&expected)).unwrap_err();
            assert!(matches!(err, ActivateError::Damaged { .. }), "{err:?}");
            assert!(err.to_string().contains("was left unchanged"), "{err}");
            assert_eq!(std::fs::read(dest.join("lib/v1/data")).unwrap(), b"a");
            assert_eq!(fx.app_entries(), vec!["bundle"]);
        }
        let expected = ExpectedDigests::new(files);
        activate_verified(&b, &dest, &opts(LinkMode::Copy), Some(&expected)).unwrap();
        assert_eq!(std::fs::read(dest.join("lib/v1/data")).unwrap(), b"b");
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
}
