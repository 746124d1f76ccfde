//! Building the staging copy of an artifact: files placed by link mode (reflink, hard link or
//! copy, with `Auto` falling back in that order), trees recreated around them.

use std::io;
use std::path::{Path, PathBuf};

use fs_err as fs;

use super::ActivateError;
use crate::fs::{LinkMode, copy_file};

/// Places files into the staging copy with the requested link mode, falling back (for `Auto`)
/// from reflink to hard link to copy, and sticking with the first that works so a tree of
/// thousands of files does not retry a failing reflink for each.
pub(super) struct Linker {
    candidates: &'static [LinkMode],
    next: usize,
}

/// A failure to place one file, with the mode that failed.
pub(super) struct LinkError {
    mode: LinkMode,
    explicit: bool,
    err: io::Error,
    unsupported: Option<PathBuf>,
}

impl LinkError {
    fn io(err: io::Error) -> Self {
        Self {
            mode: LinkMode::Copy,
            explicit: false,
            err,
            unsupported: None,
        }
    }

    pub(super) fn into_error(self, artifact: &Path, dest: &Path) -> ActivateError {
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
    pub(super) fn new(mode: LinkMode, has_hooks: bool) -> Self {
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

    pub(super) fn used(&self) -> LinkMode {
        self.candidates[self.next]
    }

    pub(super) fn place(&mut self, from: &Path, to: &Path) -> Result<(), LinkError> {
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
                    return Err(LinkError {
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
pub(super) fn stage_tree(from: &Path, to: &Path, linker: &mut Linker) -> Result<(), LinkError> {
    fs::create_dir(to).map_err(LinkError::io)?;
    for (rel, file_type) in crate::fs::walk_sorted(from).map_err(LinkError::io)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if file_type.is_dir() {
            fs::create_dir(&dst).map_err(LinkError::io)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&src).map_err(LinkError::io)?;
            crate::fs::symlink(&target, &dst).map_err(LinkError::io)?;
        } else if file_type.is_file() {
            linker.place(&src, &dst)?;
        } else {
            return Err(LinkError {
                unsupported: Some(src),
                ..LinkError::io(io::Error::other("unsupported file type"))
            });
        }
    }
    Ok(())
}
