//! Building the staging copy of an artifact: files placed by link mode (reflink, hard link or
//! copy, with `Auto` trying a reflink, then a copy), trees recreated around them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use fs_err as fs;

use super::{ActivateError, ExpectedDigests};
use crate::fs::{LinkMode, copy_file};

/// Places files into the staging copy with the requested link mode, falling back (for `Auto`)
/// from reflink to copy, and sticking with the first that works so a tree of thousands of files
/// does not retry a failing reflink for each. With expected digests, every file it copies is
/// hashed as it is copied and checked against them (docs/DESIGN.md, "Corruption is never
/// served").
pub(super) struct Linker<'a> {
    candidates: &'static [LinkMode],
    next: usize,
    expected: Option<&'a ExpectedDigests>,
    /// Files copied and found as expected.
    verified: usize,
}

/// A failure to place one file, with the mode that failed.
pub(super) struct LinkError {
    mode: LinkMode,
    explicit: bool,
    err: io::Error,
    unsupported: Option<PathBuf>,
    /// The file (relative to the artifact) whose bytes are not what the manifest says, and how.
    damaged: Option<(String, String)>,
}

impl LinkError {
    fn io(err: io::Error) -> Self {
        Self {
            mode: LinkMode::Copy,
            explicit: false,
            err,
            unsupported: None,
            damaged: None,
        }
    }

    pub(super) fn damaged(entry: String, problem: String) -> Self {
        Self {
            damaged: Some((entry, problem)),
            ..Self::io(io::Error::other("damaged"))
        }
    }

    pub(super) fn into_error(self, artifact: &Path, dest: &Path) -> ActivateError {
        if let Some((entry, problem)) = self.damaged {
            return ActivateError::Damaged {
                artifact: artifact.to_path_buf(),
                dest: dest.to_path_buf(),
                entry,
                problem,
            };
        }
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

impl<'a> Linker<'a> {
    pub(super) fn new(mode: LinkMode, expected: Option<&'a ExpectedDigests>) -> Self {
        let candidates: &'static [LinkMode] = match mode {
            // Never a hard link: DEST (and a hook's staging copy) must be private, so that a
            // chmod or an in-place write there cannot change an immutable artifact. A reflink is
            // a private copy-on-write copy.
            LinkMode::Auto => &[LinkMode::Reflink, LinkMode::Copy],
            LinkMode::Reflink => &[LinkMode::Reflink],
            LinkMode::Hardlink => &[LinkMode::Hardlink],
            // Symlink mode links the whole artifact and never gets here.
            LinkMode::Copy | LinkMode::Symlink => &[LinkMode::Copy],
        };
        Self {
            candidates,
            next: 0,
            expected,
            verified: 0,
        }
    }

    pub(super) fn used(&self) -> LinkMode {
        self.candidates[self.next]
    }

    /// After every file was placed: when they were all copied, every expected file must have
    /// been seen (a file missing from the artifact is damage too).
    pub(super) fn finish(&self) -> Result<(), LinkError> {
        match self.expected {
            Some(expected) if self.used() == LinkMode::Copy && self.verified != expected.len() => {
                Err(LinkError::damaged(
                    String::new(),
                    format!(
                        "it holds {} of the {} files its manifest lists",
                        self.verified,
                        expected.len()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Places the file `from` (at `rel`, `/`-separated, inside the artifact; empty for a
    /// single-file artifact) at `to`.
    pub(super) fn place(&mut self, from: &Path, to: &Path, rel: &str) -> Result<(), LinkError> {
        loop {
            let mode = self.candidates[self.next];
            let hash = self.expected.is_some();
            match place_file(from, to, mode, hash) {
                Ok(None) => return Ok(()),
                Ok(Some(digest)) => return self.check(rel, &digest),
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
                        damaged: None,
                    });
                }
            }
        }
    }

    /// Checks a copied file's digest against the expected one.
    fn check(&mut self, rel: &str, digest: &str) -> Result<(), LinkError> {
        let Some(expected) = self.expected else {
            return Ok(());
        };
        match expected.get(rel) {
            Some(want) if want == digest => {
                self.verified += 1;
                Ok(())
            }
            Some(want) => Err(LinkError::damaged(
                rel.to_string(),
                format!("its content hashes to {digest}, not to {want} as its manifest says"),
            )),
            None => Err(LinkError::damaged(
                rel.to_string(),
                "it is not a file in the artifact's manifest".to_string(),
            )),
        }
    }
}

/// Places one file; with `hash`, a copy also returns the BLAKE3 (hex) of the bytes it copied.
fn place_file(from: &Path, to: &Path, mode: LinkMode, hash: bool) -> io::Result<Option<String>> {
    match mode {
        LinkMode::Reflink => {
            crate::fs::reflink(from, to)?;
            // The clone carries the cache's read-only mode; DEST and hooks get a writable copy.
            // It is a private copy, so this does not touch the cache.
            let executable = crate::fs::is_executable(&fs::metadata(from)?);
            crate::fs::set_permissions(
                to,
                crate::fs::mode_permissions(if executable { 0o755 } else { 0o644 }),
            )?;
            Ok(None)
        }
        // Never chmod a hard link: it is the cached file itself.
        LinkMode::Hardlink => fs::hard_link(from, to).map(|()| None),
        LinkMode::Copy | LinkMode::Auto | LinkMode::Symlink if hash => copy_hashing(from, to).map(Some),
        LinkMode::Copy | LinkMode::Auto | LinkMode::Symlink => copy_file(from, to).map(|()| None),
    }
}

/// Copies `from` to the new file `to` (writable, keeping the executable bit) and returns the
/// BLAKE3 (hex) of the bytes copied: verification costs no extra read.
fn copy_hashing(from: &Path, to: &Path) -> io::Result<String> {
    let mut src = fs::File::open(from)?;
    let executable = crate::fs::is_executable(&src.metadata()?);
    let mut dst = fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    drop(dst);
    crate::fs::set_permissions(
        to,
        crate::fs::mode_permissions(if executable { 0o755 } else { 0o644 }),
    )?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Recreates the tree at `from` as the new directory `to`: directories created (writable, so
/// hooks can add files and the tree can later be removed), symlinks re-created with the same
/// target, files placed by `linker`.
pub(super) fn stage_tree(from: &Path, to: &Path, linker: &mut Linker<'_>) -> Result<(), LinkError> {
    fs::create_dir(to).map_err(LinkError::io)?;
    for (rel, file_type) in crate::fs::walk_sorted(from).map_err(LinkError::io)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if file_type.is_dir() {
            fs::create_dir(&dst).map_err(LinkError::io)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&src).map_err(LinkError::io)?;
            crate::fs::symlink(&target, &dst).map_err(LinkError::io)?;
        } else if file_type.is_file() {
            let key = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
            linker.place(&src, &dst, &key)?;
        } else {
            return Err(LinkError {
                unsupported: Some(src),
                ..LinkError::io(io::Error::other("unsupported file type"))
            });
        }
    }
    linker.finish()
}
