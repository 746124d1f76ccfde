//! Errors of the archive module. Each names the archive, the entry, what is wrong and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::Format;

/// Why an archive could not be extracted or created.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive file could not be opened or read.
    #[error("cannot read archive `{}`: {source}", archive.display())]
    Open {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not an archive of the expected format.
    #[error(
        "`{}` is not a valid {format} archive: {detail}; check that the file is complete and really is a {format} archive",
        archive.display()
    )]
    NotAnArchive {
        archive: PathBuf,
        format: Format,
        detail: String,
    },
    /// The archive is truncated or damaged (bad checksum, size mismatch, broken compression).
    #[error(
        "`{}` is truncated or corrupt at entry `{entry}`: {detail}; download or create the archive again",
        archive.display()
    )]
    Corrupt {
        archive: PathBuf,
        entry: String,
        detail: String,
    },
    /// An entry would be unsafe to extract.
    #[error(
        "refusing to extract `{}`: entry `{entry}` {problem}; the archive is unsafe or malformed, so nothing \
         from it is kept: ask its producer for a clean one",
        archive.display()
    )]
    Unsafe {
        archive: PathBuf,
        entry: String,
        problem: UnsafeEntry,
    },
    /// Extraction would exceed a configured limit (a decompression bomb, or simply too big).
    #[error("refusing to extract `{}`: at entry `{entry}`, {limit}", archive.display())]
    Limit {
        archive: PathBuf,
        entry: String,
        limit: LimitExceeded,
    },
    /// The archive uses a feature this extractor does not support.
    #[error(
        "cannot extract `{}`: entry `{entry}` uses {what}, which is not supported; re-create the archive without it",
        archive.display()
    )]
    Unsupported {
        archive: PathBuf,
        entry: String,
        what: String,
    },
    /// Writing an entry into the destination failed (disk full, permissions, ...).
    #[error("failed to extract entry `{entry}` of `{}` into `{}`: {source}", archive.display(), dest.display())]
    Write {
        archive: PathBuf,
        dest: PathBuf,
        entry: String,
        #[source]
        source: io::Error,
    },
    /// A tree to archive holds something no tree may hold (docs/DESIGN.md, "What a tree may
    /// hold"); nothing was archived.
    #[error("cannot archive `{}`: {refused}; remove it from the tree", root.display())]
    Refused {
        root: PathBuf,
        refused: crate::store::rule::Refused,
    },
    /// Creating an archive failed; `path` is the file or directory being archived, or the output.
    #[error("failed to archive `{}`: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// The unsafe-entry problem, when that is what this error is.
    pub fn unsafe_entry(&self) -> Option<&UnsafeEntry> {
        match self {
            ArchiveError::Unsafe { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// What makes an entry unsafe to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsafeEntry {
    /// A `..` component anywhere in the path.
    ParentComponent,
    /// A path starting at the file system root.
    AbsolutePath,
    /// A Windows drive prefix (`C:`) or a backslash, which Windows treats as a separator.
    WindowsPath,
    /// A NUL byte, which would truncate the name.
    NulByte,
    /// An empty name (or only `.` components) for something other than a directory.
    EmptyName,
    /// The path goes through a symlink created by an earlier entry.
    ThroughSymlink { link: String },
    /// A symlink with an absolute target.
    SymlinkAbsolute { target: String },
    /// A symlink whose target, resolved within the extracted tree, leaves it.
    SymlinkEscapes { target: String },
    /// A symlink whose resolution loops or nests deeper than the kernel would follow.
    SymlinkLoop { target: String },
    /// A symlink target that is empty, too long or contains NUL.
    SymlinkInvalid { target: String },
    /// A hard link to a path outside the extracted tree.
    HardlinkOutside { target: String },
    /// A hard link to something that is not an earlier regular file of the archive.
    HardlinkNotFile { target: String },
    /// A device file, FIFO or socket.
    Special { kind: &'static str },
    /// Two entries of a zip's central directory have exactly the same name.
    DuplicateName,
    /// The same normalized path appears twice (also as a file and then a directory).
    Duplicate { path: String, earlier: &'static str },
    /// Something no tree may hold (docs/DESIGN.md, "What one side writes, the other reads"): a name or symlink
    /// target that is not UTF-8, an empty or overlong target.
    NotInTree(crate::store::rule::Problem),
}

impl fmt::Display for UnsafeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsafeEntry::ParentComponent => f.write_str("has a `..` component (path traversal)"),
            UnsafeEntry::AbsolutePath => f.write_str("is an absolute path"),
            UnsafeEntry::WindowsPath => f.write_str("has a Windows drive prefix or a backslash in its path"),
            UnsafeEntry::NulByte => f.write_str("has a NUL byte in its path"),
            UnsafeEntry::EmptyName => f.write_str("has an empty name"),
            UnsafeEntry::ThroughSymlink { link } => write!(
                f,
                "lies under `{link}`, a symlink made by an earlier entry (writing through a symlink)"
            ),
            UnsafeEntry::SymlinkAbsolute { target } => {
                write!(f, "is a symlink with the absolute target `{target}`")
            }
            UnsafeEntry::SymlinkEscapes { target } => write!(
                f,
                "is a symlink to `{target}`, which points outside the extracted tree (symlink escape)"
            ),
            UnsafeEntry::SymlinkLoop { target } => {
                write!(
                    f,
                    "is a symlink to `{target}`, whose resolution loops or nests too deep"
                )
            }
            UnsafeEntry::SymlinkInvalid { target } => {
                write!(
                    f,
                    "is a symlink with an invalid (empty, overlong or NUL-holding) target `{target}`"
                )
            }
            UnsafeEntry::HardlinkOutside { target } => write!(
                f,
                "is a hard link to `{target}`, which is outside the extracted tree (hardlink escape)"
            ),
            UnsafeEntry::HardlinkNotFile { target } => write!(
                f,
                "is a hard link to `{target}`, which is not an earlier regular file of the archive"
            ),
            UnsafeEntry::Special { kind } => {
                write!(
                    f,
                    "is a {kind}, which an extracted tree must not contain (special file)"
                )
            }
            UnsafeEntry::DuplicateName => {
                f.write_str("shares its name with another entry of the archive (duplicate entry)")
            }
            UnsafeEntry::NotInTree(problem) => write!(f, "{problem}"),
            UnsafeEntry::Duplicate { path, earlier } => write!(
                f,
                "repeats the path `{path}`, which an earlier entry already made a {earlier} (duplicate entry)"
            ),
        }
    }
}

/// Which limit an extraction ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// More expanded bytes than `Limits::max_total_bytes`.
    TotalBytes { max: u64 },
    /// More entries than `Limits::max_entries`.
    Entries { max: u64 },
    /// Expanded more than `Limits::max_ratio` times the archive's size (past the grace amount).
    Ratio { max: u64, archive_bytes: u64 },
    /// Expanding further would leave less than `Limits::min_free_bytes` free at the destination.
    FreeSpace { available: u64, keep_free: u64 },
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitExceeded::TotalBytes { max } => write!(
                f,
                "the archive expands past the limit of {max} bytes (a decompression bomb?); if it is \
                 trusted, raise the limit (`import --max-expanded SIZE`, `Limits::max_total_bytes`)"
            ),
            LimitExceeded::Entries { max } => write!(
                f,
                "the archive has more than {max} entries; if it is trusted, raise the limit \
                 (`import --max-entries N`, `Limits::max_entries`)"
            ),
            LimitExceeded::Ratio { max, archive_bytes } => write!(
                f,
                "the archive ({archive_bytes} bytes) expands more than {max} times its size (a \
                 decompression bomb?); if it is trusted, raise the limit (`import --max-ratio N`, \
                 `Limits::max_ratio`)"
            ),
            LimitExceeded::FreeSpace { available, keep_free } => write!(
                f,
                "the expanded archive does not fit in the {} free at the destination while keeping \
                 the reserve of {} free; free some space, or change the reserve with `--min-free SIZE` \
                 or `[cache] min_free` in warmcache.toml (0 turns it off)",
                crate::units::format_size(*available),
                crate::units::format_size(*keep_free),
            ),
        }
    }
}
