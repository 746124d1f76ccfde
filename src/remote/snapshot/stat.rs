//! The snapshot's stat cache: what the last snapshot of a directory to a URL read of each file
//! (its stat and content digest), so the next one need not read files that did not change
//! (docs/DESIGN.md, "Snapshots"). Trusted exactly as the fingerprint's stat cache is
//! (docs/DESIGN.md, "Stat cache"): size, mtime, ctime, inode, device and executable bit must all
//! match, and an entry whose mtime is within [`RACY_WINDOW`] of its recording is not trusted.
//!
//! Encoding, little-endian, entries in manifest order:
//!
//! ```text
//! "wcsnap\0"  u32 version  u64 recorded_at_ns  u64 count
//! count × { u64 path_len, path, u64 size, i64 mtime_ns, i64 ctime_ns, u64 ino, u64 dev,
//!           u8 executable, [u8; 32] BLAKE3 }
//! [u8; 32] BLAKE3 of everything before it
//! ```
//!
//! Anything malformed makes the whole cache be ignored, which only costs reading the files. The
//! trailing digest matters: a digest damaged on disk would otherwise be trusted for a file, and
//! every later snapshot would fail as if the directory kept changing.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::archive::FileStat;
use crate::build::fingerprint::RACY_WINDOW;

const MAGIC: &[u8; 7] = b"wcsnap\0";
const VERSION: u32 = 2;
/// The smallest entry: an empty path and the fixed fields.
const MIN_ENTRY: usize = 8 + 8 * 5 + 1 + 32;

/// One file as the last snapshot read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatEntry {
    pub stat: FileStat,
    pub digest: [u8; 32],
}

/// The stat cache of one directory and URL.
#[derive(Debug, Default)]
pub struct StatCache {
    recorded_at_ns: i64,
    entries: HashMap<String, StatEntry>,
}

impl StatCache {
    /// Reads the cache at `path`; missing or malformed is an empty cache.
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => Self::decode(&bytes).unwrap_or_else(|| {
                tracing::debug!("ignoring the malformed snapshot stat cache {}", path.display());
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// The digest of the file at `rel` (hex) when its stat is the one recorded and the record
    /// is not racy.
    pub fn digest(&self, rel: &str, stat: &FileStat) -> Option<String> {
        let entry = self.entries.get(rel)?;
        let racy = entry.stat.mtime_ns >= self.recorded_at_ns.saturating_sub(RACY_WINDOW.as_nanos() as i64);
        (entry.stat == *stat && !racy).then(|| blake3::Hash::from_bytes(entry.digest).to_hex().to_string())
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (bytes, trailer) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(bytes).as_bytes() != trailer {
            return None;
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC || r.u32()? != VERSION {
            return None;
        }
        let recorded_at_ns = r.u64()? as i64;
        let count = r.u64()?;
        if count > (bytes.len() / MIN_ENTRY) as u64 {
            return None;
        }
        let mut entries = HashMap::with_capacity(count as usize);
        for _ in 0..count {
            let len = usize::try_from(r.u64()?).ok()?;
            let path = std::str::from_utf8(r.take(len)?).ok()?.to_owned();
            let stat = FileStat {
                size: r.u64()?,
                mtime_ns: r.u64()? as i64,
                ctime_ns: r.u64()? as i64,
                ino: r.u64()?,
                dev: r.u64()?,
                exec: r.take(1)?[0] != 0,
            };
            let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
            entries.insert(path, StatEntry { stat, digest });
        }
        (r.at == bytes.len()).then_some(Self {
            recorded_at_ns,
            entries,
        })
    }
}

/// Writes what a snapshot read, as it reads it, to temporary files beside the stat cache at
/// `path` (the stat cache, and the segment cache): nothing of it is held in memory, whatever the
/// tree's size. [`Self::finish`] puts both in place once the snapshot is published. Best effort:
/// a failure to write only costs the next snapshot reading every file (a warning says so).
pub struct LocalWriter {
    files: Option<Files>,
    count: u64,
}

struct Files {
    path: std::path::PathBuf,
    stats: std::io::BufWriter<tempfile::NamedTempFile>,
    segments: std::io::BufWriter<tempfile::NamedTempFile>,
}

/// Where the header's `recorded_at_ns` and `count` are, filled in by [`LocalWriter::finish`].
const HEADER: u64 = MAGIC.len() as u64 + 4;

impl LocalWriter {
    /// Starts writing the caches for the stat cache at `path` (`None`: no cache, nothing written).
    pub fn new(path: Option<&Path>) -> Self {
        let files = path.and_then(|path| {
            let opened = (|| -> std::io::Result<Files> {
                let dir = path.parent().unwrap_or(Path::new("."));
                crate::fs::create_dir_all_durable(dir)?;
                let mut stats = std::io::BufWriter::new(tempfile::NamedTempFile::new_in(dir)?);
                stats.write_all(MAGIC)?;
                stats.write_all(&VERSION.to_le_bytes())?;
                stats.write_all(&[0; 16])?;
                let segments = std::io::BufWriter::new(tempfile::NamedTempFile::new_in(dir)?);
                Ok(Files {
                    path: path.to_path_buf(),
                    stats,
                    segments,
                })
            })();
            opened.map_err(|e| warn(path, &e)).ok()
        });
        Self { files, count: 0 }
    }

    /// Records the next file (in manifest order).
    pub fn push(&mut self, path: &str, e: &StatEntry) {
        let Some(files) = &mut self.files else { return };
        let mut record = Vec::with_capacity(path.len() + MIN_ENTRY);
        record.extend_from_slice(&(path.len() as u64).to_le_bytes());
        record.extend_from_slice(path.as_bytes());
        for n in [
            e.stat.size,
            e.stat.mtime_ns as u64,
            e.stat.ctime_ns as u64,
            e.stat.ino,
            e.stat.dev,
        ] {
            record.extend_from_slice(&n.to_le_bytes());
        }
        record.push(u8::from(e.stat.exec));
        record.extend_from_slice(&e.digest);
        if let Err(err) = files.stats.write_all(&record) {
            warn(&files.path, &err);
            self.files = None;
            return;
        }
        self.count += 1;
    }

    /// Records a segment of the snapshot (compressed), whose lines hash to `blake3` (hex).
    pub fn segment(&mut self, blake3: &str, payload: &[u8]) {
        let Some(files) = &mut self.files else { return };
        let Ok(len) = u32::try_from(payload.len()) else {
            return;
        };
        if blake3.len() != 64 {
            return;
        }
        let written = files
            .segments
            .write_all(blake3.as_bytes())
            .and_then(|()| files.segments.write_all(&len.to_le_bytes()))
            .and_then(|()| files.segments.write_all(payload));
        if let Err(err) = written {
            warn(&files.path, &err);
            self.files = None;
        }
    }

    /// Puts both caches in place, recorded at `recorded_at_ns`: the moment before the first
    /// file was read, so a file written during the snapshot is racy next time.
    pub fn finish(self, recorded_at_ns: i64) {
        use std::io::{Seek, SeekFrom};
        let Some(files) = self.files else { return };
        let count = self.count;
        let path = files.path.clone();
        let done = (|| -> std::io::Result<()> {
            let mut stats = files.stats.into_inner().map_err(|e| e.into_error())?;
            stats.seek(SeekFrom::Start(HEADER))?;
            stats.write_all(&(recorded_at_ns as u64).to_le_bytes())?;
            stats.write_all(&count.to_le_bytes())?;
            stats.flush()?;
            let digest = blake3::hash(&std::fs::read(stats.path())?);
            stats.seek(SeekFrom::End(0))?;
            stats.write_all(digest.as_bytes())?;
            let segments = files.segments.into_inner().map_err(|e| e.into_error())?;
            segments.persist(SegmentCache::path(&path)).map_err(|e| e.error)?;
            stats.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = done {
            warn(&path, &e);
        }
    }
}

fn warn(path: &Path, e: &std::io::Error) {
    tracing::warn!(
        "could not write the snapshot stat cache {}: {e}; the next snapshot reads every file",
        path.display()
    );
}

/// The manifest segments of the last snapshot of a directory to a URL, compressed as in the
/// pack (`<stat cache>.segments`: records of a 64-hex BLAKE3 of the lines, a u32 length and the
/// payload), so the next snapshot does not fetch them. Each is checked against the BLAKE3 the
/// manifest gives before use, like a fetched one; a malformed file is ignored.
#[derive(Debug, Default)]
pub struct SegmentCache {
    payloads: HashMap<String, Vec<u8>>,
}

impl SegmentCache {
    /// Where the segment cache of the stat cache at `stat_path` is.
    pub fn path(stat_path: &Path) -> std::path::PathBuf {
        stat_path.with_extension("segments")
    }

    /// Reads the segment cache beside the stat cache at `stat_path`.
    pub fn load(stat_path: &Path) -> Self {
        let Ok(bytes) = std::fs::read(Self::path(stat_path)) else {
            return Self::default();
        };
        let mut r = Reader { bytes: &bytes, at: 0 };
        let mut payloads = HashMap::new();
        while r.at < bytes.len() {
            let record = (|| {
                let hash = std::str::from_utf8(r.take(64)?).ok()?.to_owned();
                let len = r.u32()? as usize;
                Some((hash, r.take(len)?.to_vec()))
            })();
            match record {
                Some((hash, payload)) => payloads.insert(hash, payload),
                None => return Self::default(),
            };
        }
        Self { payloads }
    }

    /// The payload of the segment whose lines hash to `blake3` (hex), if kept.
    pub fn get(&self, blake3: &str) -> Option<&[u8]> {
        self.payloads.get(blake3).map(Vec::as_slice)
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime_ns: i64) -> FileStat {
        FileStat {
            size: 3,
            mtime_ns,
            ctime_ns: mtime_ns,
            ino: 7,
            dev: 1,
            exec: false,
        }
    }

    #[test]
    fn round_trips_and_refuses_racy_or_changed_entries() {
        let now = 100 * 1_000_000_000;
        let old = StatEntry {
            stat: stat(now - 10 * 1_000_000_000),
            digest: [1; 32],
        };
        let racy = StatEntry {
            stat: stat(now - 1_000_000_000),
            digest: [2; 32],
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cache/x");
        let mut writer = LocalWriter::new(Some(&path));
        writer.push("a", &old);
        writer.push("b", &racy);
        writer.segment(&"a".repeat(64), b"payload");
        writer.finish(now);
        let bytes = std::fs::read(&path).unwrap();
        let segments = SegmentCache::load(&path);
        assert_eq!(segments.get(&"a".repeat(64)), Some(&b"payload"[..]));
        let cache = StatCache::decode(&bytes).unwrap();
        assert_eq!(
            cache.digest("a", &old.stat),
            Some(blake3::Hash::from_bytes([1; 32]).to_hex().to_string())
        );
        assert_eq!(cache.digest("b", &racy.stat), None, "racily clean");
        let mut moved = old.stat;
        moved.ctime_ns += 1;
        assert_eq!(cache.digest("a", &moved), None);
        assert!(StatCache::decode(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StatCache::decode(&longer).is_none());
        // Any flipped bit (a damaged digest above all) makes the whole cache be ignored.
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                StatCache::decode(&damaged).is_none(),
                "byte {at} flipped was trusted"
            );
        }
    }
}

/// What a restore from a fallback key left for the exact key's next snapshot
/// (`<stat cache>.seed`, JSON): the key and the snapshot it restored, whose packs that snapshot
/// copies into the exact key on the server and builds on (docs/DESIGN.md, "Fallback keys").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seed {
    /// The note's format ([`SEED_VERSION`]); a note of another version is no note.
    pub version: u32,
    /// The fallback key restored from, e.g. `s3://bucket/main/node_modules`.
    pub url: String,
    /// The content digest of the snapshot restored.
    pub digest: String,
}

/// The format of the [`Seed`] note.
pub const SEED_VERSION: u32 = 1;

impl Seed {
    /// The note of a restore of the snapshot `digest` from the fallback key `url`.
    pub fn new(url: String, digest: String) -> Self {
        Self {
            version: SEED_VERSION,
            url,
            digest,
        }
    }

    /// Where the note of the stat cache at `stat_path` is.
    pub fn path(stat_path: &Path) -> std::path::PathBuf {
        stat_path.with_extension("seed")
    }

    /// The note beside the stat cache at `stat_path`; missing, malformed or of another version
    /// is none.
    pub fn load(stat_path: &Path) -> Option<Self> {
        let bytes = std::fs::read(Self::path(stat_path)).ok()?;
        serde_json::from_slice::<Self>(&bytes)
            .ok()
            .filter(|seed| seed.version == SEED_VERSION)
    }

    /// Records `seed` beside the stat cache at `stat_path` (`None` removes the note: DIR now
    /// holds the exact key's own snapshot). Best effort: a failure only costs the next snapshot
    /// a full upload.
    pub fn record(stat_path: &Path, seed: Option<&Self>) {
        let path = Self::path(stat_path);
        let result = match seed {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(seed) => path
                .parent()
                .map_or(Ok(()), crate::fs::create_dir_all_durable)
                .and_then(|()| crate::fs::write_atomic(&path, &serde_json::to_vec(seed).unwrap_or_default())),
        };
        if let Err(e) = result {
            tracing::warn!(
                "could not record the fallback restore in {}: {e}; the next snapshot to the exact key \
                 uploads the whole tree",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;

    #[test]
    fn a_note_of_another_version_is_no_note() {
        let dir = tempfile::tempdir().unwrap();
        let stat_path = dir.path().join("k.stat");
        let seed = Seed::new("s3://b/main/nm".into(), "d".repeat(64));
        Seed::record(&stat_path, Some(&seed));
        assert_eq!(Seed::load(&stat_path), Some(seed));
        let newer = r#"{"version": 2, "url": "s3://b/main/nm", "digest": "x"}"#;
        std::fs::write(Seed::path(&stat_path), newer).unwrap();
        assert_eq!(Seed::load(&stat_path), None);
        std::fs::write(
            Seed::path(&stat_path),
            r#"{"url": "s3://b/main/nm", "digest": "x"}"#,
        )
        .unwrap();
        assert_eq!(Seed::load(&stat_path), None, "a note without a version");
        Seed::record(&stat_path, None);
        assert!(!Seed::path(&stat_path).exists());
    }
}
