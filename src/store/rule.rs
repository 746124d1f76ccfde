//! The one rule for what a tree may hold (docs/DESIGN.md, "What one side writes, the other reads").
//!
//! Every path that turns a tree into an artifact or an archive, or an archive back into a tree,
//! asks this module about each entry: directory import and build outputs (through the store's
//! tree walk), snapshot and push (before anything remote changes), restore and pull (while
//! extracting), and `import` of an archive. So whatever one side writes, the other side accepts,
//! and whatever the other side would refuse is refused up front, naming the file.
//!
//! The rule:
//! - an entry is a regular file, a directory or a symlink (no FIFOs, sockets or devices);
//! - its path, relative to the top of the tree, is valid UTF-8 (manifests record paths as text);
//! - a symlink is data: its target is kept exactly as written, relative or absolute, and must be
//!   non-empty UTF-8 of at most 4095 bytes (Linux's `PATH_MAX` less the NUL). It is never
//!   followed while a tree is written.
//!
//! Archives from elsewhere ([`Trust::Untrusted`], `warmcache import x.tar`) get stricter checks on
//! top, in [`crate::archive`]: names and targets without Windows forms, targets relative and
//! resolving inside the tree. Our own formats ([`Trust::Own`]: snapshot/restore, push/pull) get
//! exactly this rule, so anything uploaded round-trips on the same platform.

use std::ffi::OsStr;
use std::path::Path;

/// Longest symlink target a tree may hold (Linux's `PATH_MAX` less the NUL).
pub const MAX_LINK_TARGET: usize = 4095;

/// Whose archive is being extracted, which decides how much beyond [`check`] is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Written by warmcache itself (a snapshot, a pushed artifact), verified against a digest:
    /// exactly the tree rule, so absolute symlinks and symlinks leaving the tree are kept.
    Own,
    /// From anywhere (`warmcache import x.tar`): additionally no symlink may be absolute or
    /// resolve outside the tree, and names may not use Windows forms.
    Untrusted,
}

/// What an entry is, as far as the rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType<'a> {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink with this target (as written, never resolved).
    Symlink(&'a OsStr),
    /// Anything else: a FIFO, socket or device file (named for messages).
    Other(&'static str),
}

/// Why an entry cannot be in a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not a file, directory or symlink.
    #[error("is a {0}; a tree can hold only regular files, directories and symlinks")]
    Kind(&'static str),
    /// The path is not valid UTF-8.
    #[error("has a name that is not valid UTF-8; a tree's paths are recorded as text: rename it")]
    NonUtf8Name,
    /// The symlink target is not valid UTF-8.
    #[error("is a symlink whose target is not valid UTF-8; a tree's symlink targets are recorded as text")]
    NonUtf8Target,
    /// The symlink target is empty, too long or holds a NUL byte.
    #[error("is a symlink whose target is empty, longer than {MAX_LINK_TARGET} bytes or holds a NUL byte")]
    BadTarget,
}

/// An entry a tree cannot hold: its path relative to the top of the tree, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}` {problem}")]
pub struct Refused {
    /// The entry's path relative to the top of the tree (lossy when not UTF-8).
    pub path: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// Checks one entry of a tree: `rel` is its path relative to the top of the tree. Returns the
/// path as the `/`-separated text a manifest records.
pub fn check(rel: &Path, entry: EntryType<'_>) -> Result<String, Refused> {
    let refuse = |problem| Refused {
        path: rel.to_string_lossy().into_owned(),
        problem,
    };
    let Some(text) = rel.to_str() else {
        return Err(refuse(Problem::NonUtf8Name));
    };
    match entry {
        EntryType::File | EntryType::Dir => {}
        EntryType::Other(kind) => return Err(refuse(Problem::Kind(kind))),
        EntryType::Symlink(target) => check_target(target).map_err(refuse)?,
    }
    Ok(if std::path::MAIN_SEPARATOR == '/' {
        text.to_string()
    } else {
        text.replace(std::path::MAIN_SEPARATOR, "/")
    })
}

/// Checks every entry a manifest lists (a published artifact about to be pushed: anything the
/// store holds passed [`check`] when it was published, but the manifest on disk is what the
/// archive will carry).
pub fn check_manifest(manifest: &super::Manifest) -> Result<(), Refused> {
    use super::EntryKind;
    for entry in &manifest.entries {
        let target = entry.target.as_deref().map(OsStr::new);
        let kind = match entry.kind {
            EntryKind::File => EntryType::File,
            EntryKind::Dir => EntryType::Dir,
            EntryKind::Symlink => EntryType::Symlink(target.unwrap_or_default()),
        };
        check(Path::new(&entry.path), kind)?;
    }
    Ok(())
}

/// Checks a symlink target alone (see [`check`]).
pub fn check_target(target: &OsStr) -> Result<(), Problem> {
    let Some(text) = target.to_str() else {
        return Err(Problem::NonUtf8Target);
    };
    if text.is_empty() || text.len() > MAX_LINK_TARGET || text.contains('\0') {
        return Err(Problem::BadTarget);
    }
    Ok(())
}

/// The rule's name for a file type that is not a file, directory or symlink.
pub fn other_kind(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_socket() {
            return "socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "device file";
        }
    }
    let _ = file_type;
    "special file"
}

/// The rule's view of a file type (with the symlink's target for a symlink).
pub fn entry_type(file_type: std::fs::FileType, target: Option<&OsStr>) -> EntryType<'_> {
    if file_type.is_dir() {
        EntryType::Dir
    } else if file_type.is_file() {
        EntryType::File
    } else if file_type.is_symlink() {
        EntryType::Symlink(target.unwrap_or_default())
    } else {
        EntryType::Other(other_kind(file_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_dirs_and_any_symlink_pass_special_files_and_bad_names_do_not() {
        assert_eq!(check(Path::new("a/b"), EntryType::File).unwrap(), "a/b");
        assert!(check(Path::new("d"), EntryType::Dir).is_ok());
        for target in ["/usr/bin/env", "../../outside", "a\\b", "C:x"] {
            assert!(
                check(Path::new("l"), EntryType::Symlink(OsStr::new(target))).is_ok(),
                "{target}"
            );
        }
        let err = check(Path::new("sub/fifo"), EntryType::Other("FIFO")).unwrap_err();
        assert_eq!(err.path, "sub/fifo");
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        assert_eq!(
            check(Path::new("l"), EntryType::Symlink(OsStr::new("")))
                .unwrap_err()
                .problem,
            Problem::BadTarget
        );
        let long = "x".repeat(MAX_LINK_TARGET + 1);
        assert!(check(Path::new("l"), EntryType::Symlink(OsStr::new(&long))).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = OsStr::from_bytes(b"bad\xff");
            assert_eq!(
                check(Path::new(bad), EntryType::File).unwrap_err().problem,
                Problem::NonUtf8Name
            );
            assert_eq!(
                check(Path::new("l"), EntryType::Symlink(bad))
                    .unwrap_err()
                    .problem,
                Problem::NonUtf8Target
            );
        }
    }
}
