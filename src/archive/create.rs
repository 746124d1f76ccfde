//! Streaming creation of a standard tar.zst from a directory tree (readable by `zstd -d | tar -x`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::ArchiveError;
use crate::store::rule;

/// What [`create_tar_zst`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CreateReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file content read.
    pub bytes_in: u64,
    /// Bytes of compressed archive written.
    pub bytes_out: u64,
}

/// Streams `dir` as a tar.zst to `out`.
///
/// Entries come in sorted order (by name bytes, directory by directory, parents first) with paths
/// relative to `dir`: directories (empty ones included), regular files with mode 0755 or 0644 by
/// their executable bit, and symlinks as they are. Owners are not recorded (uid and gid 0, no
/// names); modification times are, so tools that compare them (Python's `.pyc` check) stay happy.
/// Anything the tree rule refuses (sockets, FIFOs, devices, names or targets that are not UTF-8;
/// docs/DESIGN.md, "What one side writes, the other reads") fails the whole archive, naming the entry: an
/// archive that silently lacks an entry would restore into a different tree. Memory is bounded by the
/// largest single directory listing, whatever the size of the tree. `level` is zstd's (1–22; 3 is
/// a good default).
pub fn create_tar_zst<W: Write>(dir: &Path, out: W, level: i32) -> Result<CreateReport, ArchiveError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Create { path, source }
    };
    let mut report = CreateReport::default();
    let counted = Counting { inner: out, bytes: 0 };
    let mut encoder = zstd::Encoder::new(counted, level).map_err(err(dir))?;
    encoder.include_checksum(true).map_err(err(dir))?;
    // Compression is the CPU-bound part of a snapshot: use zstd's worker threads (as `zstd -T0`
    // does); memory stays bounded by zstd's per-worker window.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u32;
    if workers > 1 {
        encoder.multithread(workers).map_err(err(dir))?;
    }
    let mut builder = tar::Builder::new(encoder);
    append_dir(&mut builder, dir, &mut PathBuf::new(), &mut report)?;
    let encoder = builder.into_inner().map_err(err(dir))?;
    let mut counted = encoder.finish().map_err(err(dir))?;
    counted.flush().map_err(err(dir))?;
    report.bytes_out = counted.bytes;
    Ok(report)
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &mut PathBuf,
    report: &mut CreateReport,
) -> Result<(), ArchiveError> {
    let dir = root.join(&*rel);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Create { path, source }
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in fs_err::read_dir(&dir).map_err(err(&dir))? {
        names.push(entry.map_err(err(&dir))?.file_name());
    }
    names.sort();
    for name in names {
        rel.push(&name);
        let path = root.join(&*rel);
        let meta = fs_err::symlink_metadata(&path).map_err(err(&path))?;
        let target = if meta.file_type().is_symlink() {
            Some(fs_err::read_link(&path).map_err(err(&path))?)
        } else {
            None
        };
        let kind = rule::entry_type(meta.file_type(), target.as_deref().map(Path::as_os_str));
        rule::check(rel, kind).map_err(|refused| ArchiveError::Refused {
            root: root.to_path_buf(),
            refused,
        })?;
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime(&meta));
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &*rel, io::empty())
                .map_err(err(&path))?;
            report.dirs += 1;
            append_dir(builder, root, rel, report)?;
        } else if meta.is_file() {
            // Open, then inspect the handle: the size we promise in the header is the opened file's.
            let file = File::open(&path)
                .map_err(|e| crate::fs::annotate(e, "open", &path))
                .map_err(err(&path))?;
            let meta = file.metadata().map_err(err(&path))?;
            let size = meta.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if crate::fs::is_executable(&meta) {
                0o755
            } else {
                0o644
            });
            header.set_size(size);
            let data = Exact {
                inner: file.take(size),
                left: size,
                path: &path,
            };
            builder
                .append_data(&mut header, &*rel, data)
                .map_err(err(&path))?;
            report.files += 1;
            report.bytes_in += size;
        } else if let Some(target) = target {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder
                .append_link(&mut header, &*rel, &target)
                .map_err(err(&path))?;
            report.symlinks += 1;
        }
        rel.pop();
    }
    Ok(())
}

fn mtime(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Yields exactly the size promised in the header, failing if the file shrank meanwhile (a short
/// entry would silently corrupt every entry after it).
struct Exact<'a, R> {
    inner: R,
    left: u64,
    path: &'a Path,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("`{}` shrank while it was being archived", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
