//! Extraction of tar, tar.gz and tar.zst streams.
//!
//! The header loop is written here rather than taken from the `tar` crate's `Entries`: that
//! iterator reads GNU long-name and pax extension records into memory whatever their declared size
//! (a 10 KB tar.zst can declare a 30 GB pax header) and treats a stream that simply stops at a
//! header boundary as a complete archive. Field parsing (octal and base-256 numbers, the ustar
//! prefix, pax records) still comes from the crate.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::entry_path::{display, normalize};
use super::limits::Budget;
use super::tree::{Kind, Tree};
use super::writer::{self, Body, FileJob, Pool};
use super::{ArchiveError, ExtractReport, Format, Limits, Progress, UnsafeEntry};

const BLOCK: usize = 512;
/// Largest GNU long-name or pax extension record accepted (real ones are a few hundred bytes).
const MAX_EXTENSION: u64 = 1 << 20;

pub(crate) fn extract(
    archive: &Path,
    format: Format,
    dest: &Path,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ExtractReport, ArchiveError> {
    let open_err = |source| ArchiveError::Open {
        archive: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(open_err)?;
    let archive_bytes = file.metadata().map_err(open_err)?.len();
    let reader: Box<dyn Read> = match format {
        Format::Tar => Box::new(BufReader::with_capacity(writer::CHUNK, file)),
        Format::TarGz => Box::new(MultiGzDecoder::new(BufReader::with_capacity(writer::CHUNK, file))),
        Format::TarZst => Box::new(zstd::Decoder::new(file).map_err(open_err)?),
        Format::Zip => unreachable!("zip archives are extracted by the zip module"),
    };
    extract_from(reader, archive, format, archive_bytes, dest, limits, progress)
}

/// Extracts the tar stream `reader` yields (already decompressed) into `dest`. `archive` names
/// the source in messages, `format` is what it was before decompression and `archive_bytes` its
/// size then (for the ratio limit).
pub(crate) fn extract_from(
    reader: Box<dyn Read + '_>,
    archive: &Path,
    format: Format,
    archive_bytes: u64,
    dest: &Path,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ExtractReport, ArchiveError> {
    let budget = Budget::new(limits, archive_bytes, dest, progress);
    let threads = crate::parallel::threads().clamp(2, 4);
    let mut extraction = Extraction {
        archive,
        format,
        dest,
        budget: &budget,
        tree: Tree::new(limits.trust),
        trust: limits.trust,
        report: ExtractReport::default(),
        entry: String::from("(first header)"),
        skipped: 0,
    };
    std::thread::scope(|scope| {
        let pool = Pool::start(scope, threads, dest, archive);
        let read = extraction.read_all(reader, &pool);
        let written = pool.finish();
        read.and(written)
    })?;
    extraction.create_links()?;
    extraction.report.bytes = budget.bytes();
    budget.report();
    Ok(extraction.report)
}

struct Extraction<'a> {
    archive: &'a Path,
    format: Format,
    dest: &'a Path,
    budget: &'a Budget<'a>,
    tree: Tree,
    trust: crate::store::rule::Trust,
    report: ExtractReport,
    /// The entry being read, for messages.
    entry: String,
    /// Bytes decompressed but not extracted (padding records, data of non-file entries): they cost
    /// time like any other, so they count against the limits too.
    skipped: u64,
}

/// GNU and pax extension records that apply to the next entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Extensions {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

impl<'a> Extraction<'a> {
    fn read_all(&mut self, mut r: Box<dyn Read + '_>, pool: &Pool<'_>) -> Result<(), ArchiveError> {
        let mut block = [0u8; BLOCK];
        let mut ext = Extensions::default();
        let mut first = true;
        loop {
            let n = fill(&mut r, &mut block).map_err(|e| self.stream_error(e, first))?;
            if n < BLOCK {
                if first {
                    return Err(self.not_an_archive(if n == 0 { "the file is empty" } else { "too short" }));
                }
                return Err(self.corrupt("the stream ends before the end-of-archive marker (truncated)"));
            }
            // The end-of-archive marker (an empty archive is nothing else).
            if block.iter().all(|&b| b == 0) {
                if !ext.is_empty() {
                    return Err(self.corrupt("an extension header is not followed by an entry"));
                }
                break;
            }
            let header = tar::Header::from_byte_slice(&block);
            if !checksum_ok(header) {
                if first {
                    return Err(self.not_an_archive("the first header's checksum is wrong"));
                }
                return Err(self.corrupt("a header's checksum is wrong"));
            }
            first = false;
            let size = header
                .entry_size()
                .map_err(|e| self.corrupt(&format!("unreadable entry size: {e}")))?;
            match header.entry_type().as_byte() {
                b'L' => {
                    ext.long_name = Some(self.read_extension(&mut r, size)?);
                    continue;
                }
                b'K' => {
                    ext.long_link = Some(self.read_extension(&mut r, size)?);
                    continue;
                }
                b'x' => {
                    ext.pax = Some(self.read_extension(&mut r, size)?);
                    continue;
                }
                // Global pax records (git archive writes one with the commit id) and volume
                // labels describe no entry.
                b'g' | b'V' => {
                    self.read_extension(&mut r, size)?;
                    continue;
                }
                _ => {}
            }
            let ext = std::mem::take(&mut ext);
            self.entry(header, size, ext, &mut r, pool)?;
        }
        self.drain(&mut r)
    }

    fn entry(
        &mut self,
        header: &tar::Header,
        size: u64,
        ext: Extensions,
        r: &mut impl Read,
        pool: &Pool<'_>,
    ) -> Result<(), ArchiveError> {
        let mut name: Cow<'_, [u8]> = match &ext.long_name {
            Some(long) => Cow::Borrowed(trim_nul(long)),
            None => header.path_bytes(),
        };
        let mut link: Option<Cow<'_, [u8]>> = match &ext.long_link {
            Some(long) => Some(Cow::Borrowed(trim_nul(long))),
            None => header.link_name_bytes(),
        };
        let mut size = size;
        if let Some(pax) = &ext.pax {
            for record in tar::PaxExtensions::new(pax) {
                let record = record.map_err(|e| self.corrupt(&format!("unreadable pax record: {e}")))?;
                match record.key_bytes() {
                    b"path" => name = Cow::Borrowed(record.value_bytes()),
                    b"linkpath" => link = Some(Cow::Borrowed(record.value_bytes())),
                    b"size" => {
                        size = record
                            .value()
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| self.corrupt("unreadable pax size record"))?;
                    }
                    key if key.starts_with(b"GNU.sparse") => {
                        self.entry = display(&name);
                        return Err(self.unsupported("a GNU sparse file (pax format)"));
                    }
                    _ => {}
                }
            }
        }
        self.entry = display(&name);
        self.budget.add_entry().map_err(|limit| self.limit(limit))?;
        let type_byte = header.entry_type().as_byte();
        let path = normalize(&name, self.trust).map_err(|p| self.unsafe_entry(p))?;
        match type_byte {
            b'0' | b'\0' | b'7' if !(type_byte == b'\0' && path.trailing_slash) => {
                let added = self
                    .tree
                    .add(&path.rel, Kind::File)
                    .map_err(|p| self.unsafe_entry(p))?;
                self.create_dirs(&added.new_dirs)?;
                let mode = header.mode().unwrap_or(0o644);
                let job = FileJob {
                    rel: path.rel,
                    entry: self.entry.clone(),
                    executable: mode & 0o111 != 0,
                    mtime: header.mtime().ok(),
                    body: Body::Whole(Vec::new()),
                };
                self.copy_file(r, size, job, pool)?;
                self.report.files += 1;
                return self.skip_padding(r, size);
            }
            b'5' | b'D' | b'\0' => {
                let added = self
                    .tree
                    .add(&path.rel, Kind::Dir)
                    .map_err(|p| self.unsafe_entry(p))?;
                self.create_dirs(&added.new_dirs)?;
                if !added.exists {
                    self.create_dirs(std::slice::from_ref(&path.rel))?;
                }
            }
            b'2' => {
                let raw = link.unwrap_or_default();
                let target = self.tree.link_target(&raw).map_err(|p| self.unsafe_entry(p))?;
                let added = self
                    .tree
                    .add(&path.rel, Kind::Symlink)
                    .map_err(|p| self.unsafe_entry(p))?;
                self.create_dirs(&added.new_dirs)?;
                self.tree.add_link(path.rel, target, self.entry.clone());
                self.report.symlinks += 1;
            }
            b'1' => {
                let raw = link.unwrap_or_default();
                let shown = display(&raw);
                let target = normalize(&raw, self.trust).map_err(|p| {
                    self.unsafe_entry(match p {
                        UnsafeEntry::ParentComponent
                        | UnsafeEntry::AbsolutePath
                        | UnsafeEntry::WindowsPath => UnsafeEntry::HardlinkOutside {
                            target: shown.clone(),
                        },
                        other => other,
                    })
                })?;
                if !self.tree.is_file(&target.rel) {
                    return Err(self.unsafe_entry(UnsafeEntry::HardlinkNotFile { target: shown }));
                }
                let added = self
                    .tree
                    .add(&path.rel, Kind::File)
                    .map_err(|p| self.unsafe_entry(p))?;
                self.create_dirs(&added.new_dirs)?;
                // The target may still be in a worker's queue.
                pool.wait_idle()?;
                let (from, to) = (self.dest.join(&target.rel), self.dest.join(&path.rel));
                std::fs::hard_link(&from, &to)
                    .map_err(|e| self.write_error(crate::fs::annotate2(e, "hard-link", &from, &to)))?;
                self.report.files += 1;
            }
            b'3' => {
                return Err(self.unsafe_entry(UnsafeEntry::Special {
                    kind: "character device",
                }));
            }
            b'4' => return Err(self.unsafe_entry(UnsafeEntry::Special { kind: "block device" })),
            b'6' => return Err(self.unsafe_entry(UnsafeEntry::Special { kind: "FIFO" })),
            b'S' => return Err(self.unsupported("a GNU sparse file")),
            b'M' => return Err(self.unsupported("a multi-volume continuation")),
            other => return Err(self.unsupported(&format!("the unknown entry type {:?}", other as char))),
        }
        // Directories and links carry no data, but a hostile header may declare some.
        self.skip(r, padded(size))
    }

    /// Streams a regular file's `size` bytes to the writer pool, counting them against the limits
    /// before they are written.
    fn copy_file(
        &mut self,
        r: &mut impl Read,
        size: u64,
        mut job: FileJob,
        pool: &Pool<'_>,
    ) -> Result<(), ArchiveError> {
        self.budget
            .add_bytes(size.min(writer::CHUNK as u64))
            .map_err(|l| self.limit(l))?;
        if size <= writer::CHUNK as u64 {
            let mut data = vec![0; size as usize];
            let n = fill(r, &mut data).map_err(|e| self.stream_error(e, false))?;
            if n as u64 != size {
                return Err(self.short(size, n as u64));
            }
            job.body = Body::Whole(data);
            return pool.submit(job);
        }
        let (tx, rx) = writer::stream();
        job.body = Body::Stream(rx);
        pool.submit(job)?;
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(writer::CHUNK as u64);
            if done > 0 {
                self.budget.add_bytes(want).map_err(|l| self.limit(l))?;
            }
            let mut chunk = vec![0; want as usize];
            let n = fill(r, &mut chunk).map_err(|e| self.stream_error(e, false))?;
            done += n as u64;
            if n as u64 != want {
                return Err(self.short(size, done));
            }
            if tx.send(chunk).is_err() {
                // The worker gave up on this file; its error says why.
                pool.check()?;
                return Err(self.write_error(io::Error::other("the writer stopped")));
            }
            if pool.failed() {
                pool.check()?;
            }
        }
        Ok(())
    }

    fn read_extension(&mut self, r: &mut impl Read, size: u64) -> Result<Vec<u8>, ArchiveError> {
        if size > MAX_EXTENSION {
            return Err(self.unsupported(&format!("an extension header of {size} bytes (over 1 MiB)")));
        }
        let mut data = vec![0; size as usize];
        let n = fill(r, &mut data).map_err(|e| self.stream_error(e, false))?;
        if n as u64 != size {
            return Err(self.short(size, n as u64));
        }
        self.skip_padding(r, size)?;
        Ok(data)
    }

    fn skip_padding(&mut self, r: &mut impl Read, size: u64) -> Result<(), ArchiveError> {
        self.skip(r, padded(size) - size)
    }

    fn skip(&mut self, r: &mut impl Read, n: u64) -> Result<(), ArchiveError> {
        if n == 0 {
            return Ok(());
        }
        self.skipped += n;
        self.budget
            .check_total(self.budget.bytes().saturating_add(self.skipped))
            .map_err(|l| self.limit(l))?;
        let copied = io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| self.stream_error(e, false))?;
        if copied != n {
            return Err(self.corrupt("the stream ends inside an entry (truncated)"));
        }
        Ok(())
    }

    /// Reads what follows the end-of-archive marker (zero padding), so a compressed stream's own
    /// checksum and end are verified, while counting it against the limits.
    fn drain(&mut self, r: &mut impl Read) -> Result<(), ArchiveError> {
        self.entry = String::from("(end of archive)");
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream_error(e, false)),
            };
            self.skipped += n as u64;
            self.budget
                .check_total(self.budget.bytes().saturating_add(self.skipped))
                .map_err(|l| self.limit(l))?;
        }
    }

    fn create_dirs(&mut self, dirs: &[std::path::PathBuf]) -> Result<(), ArchiveError> {
        for dir in dirs {
            create_dir(&self.dest.join(dir)).map_err(|e| self.write_error(e))?;
            self.report.dirs += 1;
        }
        Ok(())
    }

    fn create_links(&mut self) -> Result<(), ArchiveError> {
        let links = self
            .tree
            .check_links()
            .map_err(|(entry, problem)| ArchiveError::Unsafe {
                archive: self.archive.to_path_buf(),
                entry,
                problem,
            })?;
        for link in links {
            let path = self.dest.join(&link.path);
            crate::fs::symlink(Path::new(&link.target), &path).map_err(|source| ArchiveError::Write {
                archive: self.archive.to_path_buf(),
                dest: self.dest.to_path_buf(),
                entry: link.entry.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn stream_error(&self, e: io::Error, first: bool) -> ArchiveError {
        // A stream that starts right but stops early is truncated even before its first header
        // comes out (a decompressor may need a whole block first).
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return self.corrupt(&format!("the stream ends too early (truncated): {e}"));
        }
        if first {
            return self.not_an_archive(&format!("cannot decompress it: {e}"));
        }
        self.corrupt(&format!("cannot read the {} stream: {e}", self.format))
    }

    fn short(&self, declared: u64, read: u64) -> ArchiveError {
        self.corrupt(&format!(
            "it declares {declared} bytes but the stream ends after {read} (truncated)"
        ))
    }

    fn not_an_archive(&self, detail: &str) -> ArchiveError {
        ArchiveError::NotAnArchive {
            archive: self.archive.to_path_buf(),
            format: self.format,
            detail: detail.to_string(),
        }
    }

    fn corrupt(&self, detail: &str) -> ArchiveError {
        ArchiveError::Corrupt {
            archive: self.archive.to_path_buf(),
            entry: self.entry.clone(),
            detail: detail.to_string(),
        }
    }

    fn unsafe_entry(&self, problem: UnsafeEntry) -> ArchiveError {
        ArchiveError::Unsafe {
            archive: self.archive.to_path_buf(),
            entry: self.entry.clone(),
            problem,
        }
    }

    fn unsupported(&self, what: &str) -> ArchiveError {
        ArchiveError::Unsupported {
            archive: self.archive.to_path_buf(),
            entry: self.entry.clone(),
            what: what.to_string(),
        }
    }

    fn limit(&self, limit: super::LimitExceeded) -> ArchiveError {
        ArchiveError::Limit {
            archive: self.archive.to_path_buf(),
            entry: self.entry.clone(),
            limit,
        }
    }

    fn write_error(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Write {
            archive: self.archive.to_path_buf(),
            dest: self.dest.to_path_buf(),
            entry: self.entry.clone(),
            source,
        }
    }
}

/// Creates one directory (its parent exists) with mode 0755 whatever the umask.
pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    std::fs::create_dir(path).map_err(|e| crate::fs::annotate(e, "create directory", path))?;
    crate::fs::set_permissions(path, crate::fs::mode_permissions(0o755))
}

/// Whether a header's stored checksum matches its bytes (the checksum field counted as spaces).
pub(crate) fn checksum_ok(header: &tar::Header) -> bool {
    let bytes = header.as_bytes();
    let sum: u32 = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * 32;
    header.cksum().is_ok_and(|stored| stored == sum)
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

fn trim_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
pub(crate) fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
