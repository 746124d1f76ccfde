//! Streaming, hostile-input-safe extraction of zip, tar, tar.gz and tar.zst archives, and streaming
//! tar.zst creation.
//!
//! Extraction writes into a private, empty staging directory and trusts nothing in the archive:
//! every entry name is normalized and checked ([`entry_path`]), every entry is recorded in a model
//! of the tree being built ([`tree`]) so duplicates, writes through symlinks and escaping links are
//! refused, and every byte written is counted against [`Limits`] as it streams. Each file is created
//! with `create_new` under the staging directory, and symlinks are created last, after all of them
//! have been checked against the complete tree, so nothing can be written outside it.
//!
//! The format comes from the magic bytes ([`detect`]), never from the file name.

mod create;
mod detect;
mod entry_path;
mod error;
mod limits;
mod tar;
mod tree;
mod writer;
mod zip;

use std::fmt;
use std::io::Read;
use std::path::Path;

pub use crate::store::rule::Trust;
pub use create::{
    ArchivedTree, ChunkedTree, CreateReport, FileStat, Known, TreeItem, TreeListing, TreeTotals,
    archive_tree, create_tar_zst, digest_tree, digest_tree_with, list_tree, read_chunked, scan_tree,
};
pub use detect::{describe_content, detect, format_from_name, is_empty_tar};
pub use error::{ArchiveError, LimitExceeded, UnsafeEntry};
pub(crate) use limits::space;
pub use limits::{Limits, Progress, RESERVE_MAX, RESERVE_PERCENT, default_reserve};
pub(crate) use tar::{create_dir, fill};
pub(crate) use writer::create_file;

/// An archive format, as recognized from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// An uncompressed tar stream (ustar, GNU or pax).
    Tar,
    /// A gzip-compressed tar stream.
    TarGz,
    /// A zstd-compressed tar stream.
    TarZst,
    /// A zip archive (stored or deflated entries).
    Zip,
}

impl Format {
    /// The conventional name, used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::TarGz => "tar.gz",
            Format::TarZst => "tar.zst",
            Format::Zip => "zip",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an extraction produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExtractReport {
    /// Regular files written (hard links included).
    pub files: u64,
    /// Directories created, explicit or implied by an entry's path.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Extracts `archive`, of the given `format`, into `dest`, an existing empty private staging
/// directory.
///
/// Regular files get mode 0755 when the archive gave them any executable bit and 0644 otherwise,
/// directories 0755; owners and special bits are never applied. Hostile or malformed input is
/// refused with an [`ArchiveError`] naming the entry and the problem; whatever was written so far
/// stays under `dest`, which the caller discards. This does not fsync (the caller makes the
/// finished tree durable with one [`crate::fs::sync_tree`]) and does not publish.
///
/// `progress` is called periodically (every few megabytes or hundreds of entries, and once at the
/// end), possibly from several threads.
pub fn extract(
    archive: &Path,
    format: Format,
    dest: &Path,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ExtractReport, ArchiveError> {
    match format {
        Format::Zip => zip::extract(archive, dest, limits, progress),
        Format::Tar | Format::TarGz | Format::TarZst => tar::extract(archive, format, dest, limits, progress),
    }
}

/// Extracts a tar stream that arrives through `stream` (already decompressed: the caller runs the
/// decompressor, so it can overlap it with a download and time it) into `dest`, an existing empty
/// private staging directory, with every protection of [`extract`]. `source` names the stream in
/// messages (a URL, a file), `format` is what it was before decompression and `compressed_bytes`
/// its size then (for [`Limits::max_ratio`]).
///
/// The stream is read to its end, after the end-of-archive marker too, so a reader that only
/// ends once its bytes are verified (a download checked against a digest) makes this fail, or
/// wait, until they are.
pub fn extract_tar_stream(
    stream: impl Read,
    source: &Path,
    format: Format,
    compressed_bytes: u64,
    dest: &Path,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ExtractReport, ArchiveError> {
    let reader = Box::new(std::io::BufReader::with_capacity(256 << 10, stream));
    tar::extract_from(reader, source, format, compressed_bytes, dest, limits, progress)
}
