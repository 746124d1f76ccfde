//! Extraction of zip archives.
//!
//! Zip has a central directory, so every entry is checked (names, kinds, duplicates, symlink
//! targets, declared sizes against the limits) before any file content is written; then several
//! threads decompress and write files at once, each reading the archive through its own
//! positioned-read handle. Bytes actually produced are counted against the limits as they stream,
//! and each file's CRC-32 and size are verified.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use zip::ZipArchive;
use zip::result::ZipError;

use super::entry_path::{display, normalize};
use super::limits::Budget;
use super::tar::create_dir;
use super::tree::{Kind, Tree};
use super::writer::create_file;
use super::{ArchiveError, ExtractReport, Format, LimitExceeded, Limits, Progress, UnsafeEntry};

/// Longest symlink target read from an entry's data.
const MAX_LINK_TARGET: u64 = 4095;

const S_IFMT: u32 = 0o170_000;

/// A regular file to extract: its index in the central directory and where it goes.
struct Job {
    index: usize,
    rel: PathBuf,
    entry: String,
    executable: bool,
    declared: u64,
}

pub(crate) fn extract(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ExtractReport, ArchiveError> {
    let open_err = |source| ArchiveError::Open {
        archive: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    let budget = Budget::new(limits, len, dest, progress);
    let ctx = Ctx { archive, dest };
    let mut zip = ZipArchive::new(SharedFile {
        file: Arc::new(file),
        pos: 0,
        len,
    })
    .map_err(|e| ArchiveError::NotAnArchive {
        archive: archive.to_path_buf(),
        format: Format::Zip,
        detail: e.to_string(),
    })?;
    if zip.has_duplicate_names() {
        return Err(ctx.unsafe_entry("(a name stored twice)", UnsafeEntry::DuplicateName));
    }
    budget
        .check_entries(zip.len() as u64)
        .map_err(|l| ctx.limit("(whole archive)", l))?;

    // Pass 1: check every entry and build the directory skeleton.
    let mut report = ExtractReport::default();
    let mut tree = Tree::new(limits.trust);
    let mut jobs = Vec::new();
    let mut declared_total = 0u64;
    for index in 0..zip.len() {
        let meta = zip.metadata();
        let entry = meta
            .entry(index)
            .map_err(|e| ctx.zip_error("(central directory)", e))?;
        let name = display(entry.name_raw());
        if entry.encrypted() {
            return Err(ctx.unsupported(&name, "encryption"));
        }
        let path = normalize(entry.name_raw(), limits.trust).map_err(|p| ctx.unsafe_entry(&name, p))?;
        let mode = entry.unix_mode().unwrap_or(0);
        let kind = match mode & S_IFMT {
            0o120_000 => Kind::Symlink,
            0o020_000 => {
                return Err(ctx.unsafe_entry(
                    &name,
                    UnsafeEntry::Special {
                        kind: "character device",
                    },
                ));
            }
            0o060_000 => return Err(ctx.unsafe_entry(&name, UnsafeEntry::Special { kind: "block device" })),
            0o010_000 => return Err(ctx.unsafe_entry(&name, UnsafeEntry::Special { kind: "FIFO" })),
            0o140_000 => return Err(ctx.unsafe_entry(&name, UnsafeEntry::Special { kind: "socket" })),
            0o040_000 => Kind::Dir,
            _ if path.trailing_slash => Kind::Dir,
            _ => Kind::File,
        };
        let declared = entry.size();
        drop(meta);
        let added = tree
            .add(&path.rel, kind)
            .map_err(|p| ctx.unsafe_entry(&name, p))?;
        for dir in &added.new_dirs {
            create_dir(&dest.join(dir)).map_err(|e| ctx.write(&name, e))?;
            report.dirs += 1;
        }
        match kind {
            Kind::Dir => {
                budget.add_entry().map_err(|l| ctx.limit(&name, l))?;
                if !added.exists {
                    create_dir(&dest.join(&path.rel)).map_err(|e| ctx.write(&name, e))?;
                    report.dirs += 1;
                }
            }
            Kind::File => {
                declared_total = declared_total.saturating_add(declared);
                jobs.push(Job {
                    index,
                    rel: path.rel,
                    entry: name,
                    executable: mode & 0o111 != 0,
                    declared,
                });
            }
            Kind::Symlink => {
                if declared > MAX_LINK_TARGET {
                    let target = format!("({declared} bytes)");
                    return Err(ctx.unsafe_entry(&name, UnsafeEntry::SymlinkInvalid { target }));
                }
                let mut target = Vec::new();
                let mut zf = zip.by_index(index).map_err(|e| ctx.zip_error(&name, e))?;
                (&mut zf)
                    .take(MAX_LINK_TARGET + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| ctx.read_error(&name, e))?;
                drop(zf);
                let checked = tree
                    .link_target(&target)
                    .map_err(|p| ctx.unsafe_entry(&name, p))?;
                budget.add_entry().map_err(|l| ctx.limit(&name, l))?;
                tree.add_link(path.rel, checked, name);
                report.symlinks += 1;
            }
        }
    }
    // Declared sizes can lie (so bytes are counted again as they stream), but honest ones let a
    // too-big archive fail before anything is written.
    budget
        .check_total(declared_total)
        .map_err(|l| ctx.limit("(declared sizes of all entries)", l))?;
    let links = tree
        .check_links()
        .map_err(|(entry, p)| ctx.unsafe_entry(&entry, p))?;

    // Pass 2: decompress and write the files on several threads.
    let threads = crate::parallel::threads().clamp(2, 8);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<ArchiveError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let mut zip = zip.clone();
            let (jobs, next, stop, first_error, budget, ctx) =
                (&jobs, &next, &stop, &first_error, &budget, &ctx);
            scope.spawn(move || {
                let mut buf = vec![0u8; 128 << 10];
                while !stop.load(Ordering::Relaxed) {
                    let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if let Err(e) = extract_file(&mut zip, job, ctx, budget, stop, &mut buf) {
                        stop.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(err) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err);
    }
    report.files = jobs.len() as u64;

    // Pass 3: symlinks last, so no file was ever written through one.
    for link in links {
        crate::fs::symlink(Path::new(&link.target), &dest.join(&link.path))
            .map_err(|e| ctx.write(&link.entry, e))?;
    }
    report.bytes = budget.bytes();
    budget.report();
    Ok(report)
}

fn extract_file(
    zip: &mut ZipArchive<SharedFile>,
    job: &Job,
    ctx: &Ctx<'_>,
    budget: &Budget<'_>,
    stop: &AtomicBool,
    buf: &mut [u8],
) -> Result<(), ArchiveError> {
    let mut zf = zip
        .by_index(job.index)
        .map_err(|e| ctx.zip_error(&job.entry, e))?;
    let path = ctx.dest.join(&job.rel);
    let mut out = create_file(&path, job.executable).map_err(|e| ctx.write(&job.entry, e))?;
    let mut read = 0u64;
    loop {
        let n = match zf.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ctx.read_error(&job.entry, e)),
        };
        read += n as u64;
        budget.add_bytes(n as u64).map_err(|l| ctx.limit(&job.entry, l))?;
        out.write_all(&buf[..n])
            .map_err(|e| ctx.write(&job.entry, crate::fs::annotate(e, "write", &path)))?;
        if stop.load(Ordering::Relaxed) {
            // Another file failed; the whole extraction is being abandoned.
            return Ok(());
        }
    }
    if read != job.declared {
        return Err(ctx.corrupt(
            &job.entry,
            &format!(
                "it declares {} bytes but holds {read} (size mismatch)",
                job.declared
            ),
        ));
    }
    budget.add_entry().map_err(|l| ctx.limit(&job.entry, l))?;
    Ok(())
}

struct Ctx<'a> {
    archive: &'a Path,
    dest: &'a Path,
}

impl Ctx<'_> {
    fn unsafe_entry(&self, entry: &str, problem: UnsafeEntry) -> ArchiveError {
        ArchiveError::Unsafe {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            problem,
        }
    }

    fn limit(&self, entry: &str, limit: LimitExceeded) -> ArchiveError {
        ArchiveError::Limit {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            limit,
        }
    }

    fn unsupported(&self, entry: &str, what: &str) -> ArchiveError {
        ArchiveError::Unsupported {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            what: what.to_string(),
        }
    }

    fn corrupt(&self, entry: &str, detail: &str) -> ArchiveError {
        ArchiveError::Corrupt {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            detail: detail.to_string(),
        }
    }

    fn write(&self, entry: &str, source: io::Error) -> ArchiveError {
        ArchiveError::Write {
            archive: self.archive.to_path_buf(),
            dest: self.dest.to_path_buf(),
            entry: entry.to_string(),
            source,
        }
    }

    fn read_error(&self, entry: &str, e: io::Error) -> ArchiveError {
        let text = e.to_string();
        let detail = if text.contains("checksum") {
            format!("its data does not match its CRC-32 ({text})")
        } else if text.contains("declared") {
            format!("it holds more bytes than its declared size ({text})")
        } else {
            format!("cannot decompress it: {text}")
        };
        self.corrupt(entry, &detail)
    }

    fn zip_error(&self, entry: &str, e: ZipError) -> ArchiveError {
        match e {
            ZipError::UnsupportedArchive(what) => self.unsupported(entry, what),
            ZipError::Io(e) => self.read_error(entry, e),
            other => self.corrupt(entry, &other.to_string()),
        }
    }
}

/// A read-only view of the archive with its own position, reading with `pread` so that several
/// threads can read one open file at once without sharing a cursor.
#[derive(Debug, Clone)]
struct SharedFile {
    file: Arc<File>,
    pos: u64,
    len: u64,
}

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(&*self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}
