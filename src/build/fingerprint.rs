//! The current fingerprint of a recipe: BLAKE3 over its inputs and settings (docs/DESIGN.md, "The entry
//! state machine"), with a stat cache so unchanged files are not re-read.
//!
//! The digest covers, in a versioned encoding where every variable-length field is length-prefixed
//! (so no two different recipes can produce the same byte stream):
//! the output kind, the build and validation commands, the working directory, the key strings
//! (sorted), each named environment variable with its value (unset is distinct from empty), and
//! every matched input file: its path relative to the base directory, whether it is executable, and
//! its content digest, sorted by path.
//!
//! Inputs are globs relative to the recipe's base directory (`*` stays inside a path segment, `**`
//! crosses segments; a glob matching a directory takes everything under it). The walk starts at the
//! base and only descends into directories a glob could match in, so `src/**/*.rs` never lists
//! `target/`. Symlinks are never followed: a matched symlink contributes its target path, not the
//! content behind it (as in git), so nothing outside the base is ever read. Other special files
//! (FIFOs, sockets, devices) contribute their kind only and are never opened.
//!
//! The stat cache keeps, per input path, the size, mtime, ctime, inode and device with the content
//! digest. A file whose stat data is unchanged is not re-read, except when it is *racily clean*
//! (git's rule): its mtime is not older than the moment its cache entry was recorded, so a
//! second write in the same clock tick could have left the stat data unchanged. Because file
//! timestamps come from a coarse clock (one tick is up to ~10 ms on Linux, 1–2 s on FAT or HFS+),
//! "the same tick" is taken as a window of [`RACY_WINDOW`] before the recording time.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::ids::Fingerprint;
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use super::recipe::Recipe;
use crate::fs::annotate;

/// Version of the fingerprint encoding; bumping it changes every fingerprint (forcing rebuilds).
pub const FINGERPRINT_VERSION: u32 = 1;
/// Version of the serialized [`StatCache`]; a cache of another version is discarded, not trusted.
pub const STAT_CACHE_VERSION: u32 = 2;
/// Files modified within this window before their cache entry was recorded are re-hashed.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A fingerprint that could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("entry `{name}`: base directory `{}` is not a readable directory: {source}", path.display())]
    BaseDir {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("entry `{name}`: input glob `{glob}` is not a valid glob: {message}")]
    Glob {
        name: String,
        glob: String,
        message: String,
    },
    #[error("entry `{name}`: cannot fingerprint inputs: {source}")]
    Io { name: String, source: io::Error },
}

/// The result of [`fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprinted {
    /// The fingerprint: a BLAKE3 digest over the whole recipe.
    pub digest: Fingerprint,
    /// How many input files (and symlinks, special files) were matched.
    pub inputs: usize,
    /// Input globs that matched nothing (allowed; the CLI should warn).
    pub unmatched_globs: Vec<String>,
    /// Inputs that are FIFOs, sockets or devices (relative to the base, with their kind): only
    /// their kind counts, their content never (reading a FIFO could block forever), so a change
    /// of what flows through them does not change the fingerprint. The CLI warns.
    pub special_inputs: Vec<String>,
    /// How many files were actually read and hashed (the rest came from the stat cache).
    pub hashed: usize,
    /// Whether the stat cache changed and is worth persisting.
    pub cache_changed: bool,
    /// How many directories were listed (the walk skips those no glob can match in).
    pub dirs_walked: usize,
}

/// Per-path stat data and content digests from earlier fingerprints of one recipe, persisted with
/// the entry through [`StatCache::to_bytes`]/[`StatCache::from_bytes`] (versioned binary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatCache {
    version: u32,
    /// The paths (raw bytes, relative to the base), one after another in `entries`' order.
    keys: Vec<u8>,
    /// Sorted by path bytes, the order the walk visits inputs in, so that a fingerprint looks
    /// each input up by advancing a cursor rather than hashing its path (see [`Cursor`]).
    entries: Vec<Cached>,
}

/// One path's cached stat data: `key_len` bytes of [`StatCache::keys`] from `key_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cached {
    key_start: usize,
    key_len: usize,
    stat: StatEntry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatEntry {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    executable: bool,
    digest: [u8; 32],
    /// When this entry was recorded (unix ns): the start of the fingerprint that hashed the file.
    recorded_at_ns: i64,
}

impl StatCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            version: STAT_CACHE_VERSION,
            keys: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Number of cached paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        &self.keys[e.key_start..e.key_start + e.key_len]
    }

    /// A cache of this one's first `n` entries.
    fn prefix(&self, n: usize) -> Self {
        let keys_end = self.entries[..n].last().map_or(0, |e| e.key_start + e.key_len);
        Self {
            version: self.version,
            keys: self.keys[..keys_end].to_vec(),
            entries: self.entries[..n].to_vec(),
        }
    }

    /// Appends `key` (which must sort after every key already held).
    fn push(&mut self, key: &[u8], stat: StatEntry) {
        self.entries.push(Cached {
            key_start: self.keys.len(),
            key_len: key.len(),
            stat,
        });
        self.keys.extend_from_slice(key);
    }

    /// Serialized form, for storing with the entry: a small versioned binary encoding, because
    /// a command-line `ensure` decodes it on every call (JSON for 10,000 paths took
    /// milliseconds; this takes microseconds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.keys.len() + self.entries.len() * 97);
        out.extend_from_slice(STAT_CACHE_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (i, c) in self.entries.iter().enumerate() {
            let e = &c.stat;
            out.extend_from_slice(&(c.key_len as u64).to_le_bytes());
            out.extend_from_slice(self.key(i));
            for n in [
                e.size,
                e.mtime_ns as u64,
                e.ctime_ns as u64,
                e.ino,
                e.dev,
                e.recorded_at_ns as u64,
            ] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.push(u8::from(e.executable));
            out.extend_from_slice(&e.digest);
        }
        out
    }

    /// Reads a serialized cache. A corrupt cache, one of another version or one whose paths are
    /// not in order is discarded (an empty cache only costs re-hashing, a wrong one could hide a
    /// change).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self::decode(bytes)
            .filter(|c| c.version == STAT_CACHE_VERSION)
            .unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(STAT_CACHE_MAGIC.len())? != STAT_CACHE_MAGIC {
            return None;
        }
        let version = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let count = r.u64()?;
        // Each entry takes at least 89 bytes: a count larger than that is corrupt.
        if count > (bytes.len() / 89) as u64 {
            return None;
        }
        let mut cache = Self {
            version,
            keys: Vec::with_capacity(bytes.len() - count as usize * 89),
            entries: Vec::with_capacity(count as usize),
        };
        for i in 0..count as usize {
            let len = usize::try_from(r.u64()?).ok()?;
            let key = r.take(len)?;
            if i > 0 && cache.key(i - 1) >= key {
                return None;
            }
            let (size, mtime, ctime, ino, dev, recorded) =
                (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let executable = r.take(1)?[0] != 0;
            let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
            let stat = StatEntry {
                size,
                mtime_ns: mtime as i64,
                ctime_ns: ctime as i64,
                ino,
                dev,
                executable,
                digest,
                recorded_at_ns: recorded as i64,
            };
            cache.push(key, stat);
        }
        r.0.is_empty().then_some(cache)
    }
}

/// Looks up paths in a [`StatCache`] in ascending order, each lookup moving past the keys
/// before it: the whole walk costs one pass over the cache, with no hashing.
struct Cursor {
    next: usize,
}

impl Cursor {
    /// The entry for `key` and its index in the cache.
    fn find(&mut self, cache: &StatCache, key: &[u8]) -> Option<(usize, StatEntry)> {
        while self.next < cache.entries.len() && cache.key(self.next) < key {
            self.next += 1;
        }
        if self.next < cache.entries.len() && cache.key(self.next) == key {
            self.next += 1;
            return Some((self.next - 1, cache.entries[self.next - 1].stat));
        }
        None
    }
}

const STAT_CACHE_MAGIC: &[u8] = b"wcstat\0";

/// A cursor over the bytes of a serialized stat cache.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What kind of thing a matched input is, and what it contributes.
enum InputContent {
    /// A regular file: its stat data, executable bit and content digest (also the next stat
    /// cache's entry for it).
    File(StatEntry),
    Symlink {
        target: OsString,
    },
    /// A FIFO, socket or device: its kind (named for the warning) counts, never its content.
    Other(&'static str),
}

/// One input glob, split for pruning the walk.
struct GlobSpec {
    /// Leading path segments without glob syntax (`src` for `src/**/*.rs`).
    literal: Vec<String>,
    /// Segments after the literal ones, or None when a `**` makes the depth unbounded.
    rest_depth: Option<usize>,
    /// The glob is `LITERAL/**`: it matches everything under its literal prefix.
    takes_all_under: bool,
}

impl GlobSpec {
    fn new(glob: &str) -> Self {
        let segments: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
        let is_literal = |s: &str| !s.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let literal: Vec<String> = segments
            .iter()
            .take_while(|s| is_literal(s))
            .map(|s| s.to_string())
            .collect();
        let rest = &segments[literal.len()..];
        let rest_depth = if rest.iter().any(|s| s.contains("**")) {
            None
        } else {
            Some(rest.len())
        };
        Self {
            takes_all_under: !literal.is_empty() && rest == ["**"],
            literal,
            rest_depth,
        }
    }

    /// Whether every path under directory `dir` (segments relative to the base) matches.
    fn takes_all_under(&self, dir: &[String]) -> bool {
        self.takes_all_under
            && dir.len() >= self.literal.len()
            && dir[..self.literal.len()] == self.literal[..]
    }

    /// Whether something under directory `dir` (segments relative to the base) could match.
    fn could_match_under(&self, dir: &[String]) -> bool {
        if dir.len() <= self.literal.len() {
            return dir[..] == self.literal[..dir.len()];
        }
        dir[..self.literal.len()] == self.literal[..]
            && self
                .rest_depth
                .is_none_or(|depth| dir.len() - self.literal.len() < depth)
    }
}

struct Walk<'a> {
    set: GlobSet,
    specs: Vec<GlobSpec>,
    matched_globs: Vec<bool>,
    /// How many globs have matched nothing so far.
    unmatched: usize,
    hits: Vec<usize>,
    cache: &'a StatCache,
    cursor: Cursor,
    now_ns: i64,
    hashed: usize,
    dirs_walked: usize,
    /// The encoding of the inputs so far, in path order (see [`encode`]), and their count.
    encoded: Vec<u8>,
    count: usize,
    /// Special inputs so far, with their kind.
    special: Vec<String>,
    /// How many of the inputs so far are files.
    files: usize,
    /// The next stat cache, once it differs from the current one: until then, every file input
    /// so far was the current cache's next entry, unchanged, and nothing is copied.
    next: Option<StatCache>,
    /// Matched entries not yet stated, in path order (see [`Walk::flush`]), and their paths.
    pending: Vec<Pending>,
    rels: Vec<u8>,
    /// How many directories the pending entries come from (each keeps its directory open).
    pending_dirs: usize,
}

/// A matched directory entry waiting to be stated (and hashed if it changed).
struct Pending {
    /// The path relative to the base: a range of [`Walk::rels`].
    rel: std::ops::Range<usize>,
    entry: std::fs::DirEntry,
    file_type: std::fs::FileType,
    /// What the stat cache holds for this path, and where.
    cached: Option<(usize, StatEntry)>,
}

/// Pending entries are stated in batches of at most this many...
const BATCH_ENTRIES: usize = 4096;
/// ...from at most this many directories, each of which stays open until its batch is done.
const BATCH_DIRS: usize = 128;

/// Computes the current fingerprint of `recipe`, reading environment variables from this process
/// and using (and updating) `cache` so that unchanged files are not re-read.
pub fn fingerprint(recipe: &Recipe, cache: &mut StatCache) -> Result<Fingerprinted, FingerprintError> {
    if cache.version != STAT_CACHE_VERSION {
        *cache = StatCache::new();
    }
    let name = recipe.name.as_str();
    let io_err = |source| FingerprintError::Io {
        name: name.to_string(),
        source,
    };
    let base_meta = std::fs::metadata(&recipe.base_dir).and_then(|m| {
        if m.is_dir() {
            Ok(m)
        } else {
            Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))
        }
    });
    if let Err(source) = base_meta {
        return Err(FingerprintError::BaseDir {
            name: name.to_string(),
            path: recipe.base_dir.clone(),
            source,
        });
    }

    let mut builder = GlobSetBuilder::new();
    let mut specs = Vec::with_capacity(recipe.inputs.len());
    for glob in &recipe.inputs {
        let normalized = glob.strip_prefix("./").unwrap_or(glob);
        let compiled = GlobBuilder::new(normalized)
            .literal_separator(true)
            .build()
            .map_err(|e| FingerprintError::Glob {
                name: name.to_string(),
                glob: glob.clone(),
                message: e.kind().to_string(),
            })?;
        builder.add(compiled);
        specs.push(GlobSpec::new(normalized));
    }
    let set = builder.build().map_err(|e| FingerprintError::Glob {
        name: name.to_string(),
        glob: recipe.inputs.join(", "),
        message: e.to_string(),
    })?;

    let now_ns = unix_ns(SystemTime::now());
    let mut walk = Walk {
        set,
        matched_globs: vec![false; specs.len()],
        unmatched: specs.len(),
        specs,
        hits: Vec::new(),
        cache: &*cache,
        cursor: Cursor { next: 0 },
        now_ns,
        hashed: 0,
        dirs_walked: 0,
        // Last time's count is the likely count: no growing (and copying) on the way.
        encoded: Vec::with_capacity(cache.len() * 96),
        count: 0,
        special: Vec::new(),
        files: 0,
        next: None,
        pending: Vec::with_capacity(cache.len().min(BATCH_ENTRIES)),
        rels: Vec::new(),
        pending_dirs: 0,
    };
    if !recipe.inputs.is_empty() {
        let mut segments = Vec::new();
        walk.dir(&recipe.base_dir, &mut PathBuf::new(), &mut segments, false)
            .map_err(io_err)?;
        walk.flush().map_err(io_err)?;
    }
    // The next stat cache holds exactly the current file inputs (paths no longer inputs are
    // forgotten, so it does not grow without bound); made only when something changed.
    if walk.next.is_none() && walk.files != cache.len() {
        walk.next = Some(cache.prefix(walk.files));
    }
    let digest = encode(recipe, walk.count, &walk.encoded);
    let (inputs, hashed, dirs_walked) = (walk.count, walk.hashed, walk.dirs_walked);
    let (special_inputs, matched_globs, next) = (walk.special, walk.matched_globs, walk.next);
    let cache_changed = next.is_some();
    if let Some(next) = next {
        *cache = next;
    }
    let unmatched_globs = recipe
        .inputs
        .iter()
        .zip(&matched_globs)
        .filter(|(_, matched)| !**matched)
        .map(|(glob, _)| glob.clone())
        .collect();
    Ok(Fingerprinted {
        digest,
        inputs,
        unmatched_globs,
        special_inputs,
        hashed,
        cache_changed,
        dirs_walked,
    })
}

impl Walk<'_> {
    /// Walks directory `abs` (= base/`rel`); `included` means a glob matched an ancestor.
    ///
    /// Entries are visited in the order of their paths' bytes (a directory sorts as its name
    /// followed by `/`, which is how every path under it begins), so the inputs come out sorted
    /// without sorting thousands of long paths afterwards.
    fn dir(
        &mut self,
        abs: &Path,
        rel: &mut PathBuf,
        segments: &mut Vec<String>,
        included: bool,
    ) -> io::Result<()> {
        let listing = match std::fs::read_dir(abs) {
            Ok(listing) => listing,
            // Vanished between being listed and being read: it is simply not there any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !segments.is_empty() => return Ok(()),
            Err(e) => return Err(annotate(e, "read directory", abs)),
        };
        self.dirs_walked += 1;
        let mut entries = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| annotate(e, "read directory", abs))?;
            let file_type = entry
                .file_type()
                .map_err(|e| annotate(e, "inspect", &entry.path()))?;
            entries.push((entry.file_name(), file_type, entry));
        }
        entries.sort_unstable_by(|(a, a_type, _), (b, b_type, _)| {
            path_order((a, a_type.is_dir()), (b, b_type.is_dir()))
        });
        // Under a `DIR/**` glob every path matches: once each glob is known to match something,
        // there is nothing left to learn from matching each path.
        let covered = self.specs.iter().any(|s| s.takes_all_under(segments));
        let mut counted = false;
        for (file_name, file_type, entry) in entries {
            rel.push(&file_name);
            let matched = included || (covered && self.unmatched == 0) || self.matches(rel);
            if file_type.is_dir() {
                segments.push(file_name.to_string_lossy().into_owned());
                if matched || self.specs.iter().any(|s| s.could_match_under(segments)) {
                    self.dir(&entry.path(), rel, segments, matched)?;
                }
                segments.pop();
            } else if matched {
                if !counted {
                    counted = true;
                    self.pending_dirs += 1;
                }
                let start = self.rels.len();
                self.rels.extend_from_slice(rel.as_os_str().as_encoded_bytes());
                let cached = match file_type.is_file() {
                    true => self.cursor.find(self.cache, &self.rels[start..]),
                    false => None,
                };
                self.pending.push(Pending {
                    rel: start..self.rels.len(),
                    entry,
                    file_type,
                    cached,
                });
                if self.pending.len() >= BATCH_ENTRIES || self.pending_dirs >= BATCH_DIRS {
                    self.flush()?;
                    counted = false;
                }
            }
            rel.pop();
        }
        Ok(())
    }

    /// States the pending entries, then reads and hashes those the stat cache cannot vouch for
    /// on several threads, and records them all in path order.
    ///
    /// Stating stays on one thread: measured, a second one made a warm fingerprint slower (the
    /// kernel's lookups in one directory contend), while hashing spreads well.
    fn flush(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_dirs = 0;
        let looked = pending.iter().map(look).collect::<io::Result<Vec<_>>>()?;
        let changed: Vec<&Pending> = pending
            .iter()
            .zip(&looked)
            .filter(|(_, looked)| matches!(looked, Some(Looked::Changed)))
            .map(|(p, _)| p)
            .collect();
        let now_ns = self.now_ns;
        let hashed = crate::parallel::map(&changed, |p| hash_file(&p.entry.path(), now_ns))?;
        drop(changed);
        let mut hashed = hashed.into_iter();
        let rels = std::mem::take(&mut self.rels);
        for (p, looked) in pending.iter().zip(looked) {
            let (content, rehashed) = match looked {
                None => continue,
                Some(Looked::Known(content)) => (content, false),
                Some(Looked::Changed) => match hashed.next().flatten() {
                    Some(stat) => (InputContent::File(stat), true),
                    None => continue,
                },
            };
            self.record(&rels[p.rel.clone()], content, p.cached.map(|(i, _)| i), rehashed);
        }
        self.rels = rels;
        self.rels.clear();
        Ok(())
    }

    /// Adds one input, in path order: to the encoding, and to the next stat cache once that
    /// differs from the current one (`cached_at` is where the current one holds this path).
    fn record(&mut self, rel: &[u8], content: InputContent, cached_at: Option<usize>, rehashed: bool) {
        encode_input(&mut self.encoded, rel, &content);
        self.count += 1;
        match content {
            InputContent::File(stat) => {
                self.hashed += usize::from(rehashed);
                let in_step = !rehashed && cached_at == Some(self.files);
                if self.next.is_none() && !in_step {
                    self.next = Some(self.cache.prefix(self.files));
                }
                if let Some(next) = &mut self.next {
                    next.push(rel, stat);
                }
                self.files += 1;
            }
            InputContent::Other(kind) => {
                self.special
                    .push(format!("{} ({kind})", String::from_utf8_lossy(rel)));
            }
            InputContent::Symlink { .. } => {}
        }
    }

    fn matches(&mut self, rel: &Path) -> bool {
        self.set
            .matches_candidate_into(&Candidate::new(rel), &mut self.hits);
        for &i in &self.hits {
            if !self.matched_globs[i] {
                self.matched_globs[i] = true;
                self.unmatched -= 1;
            }
        }
        !self.hits.is_empty()
    }
}

/// What looking at one matched entry found.
enum Looked {
    /// Its content: a symlink's target, a special file's kind, or a file whose stat data the
    /// stat cache vouches for.
    Known(InputContent),
    /// A file to read and hash.
    Changed,
}

/// Looks at one matched entry without reading any file; `None` when it vanished since it was
/// listed.
fn look(p: &Pending) -> io::Result<Option<Looked>> {
    let content = if p.file_type.is_symlink() {
        let path = p.entry.path();
        match std::fs::read_link(&path) {
            Ok(target) => InputContent::Symlink {
                target: target.into_os_string(),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(annotate(e, "read symlink", &path)),
        }
    } else if p.file_type.is_file() {
        // Stat relative to the open directory (fstatat), without following links.
        let meta = match p.entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(annotate(e, "stat", &p.entry.path())),
        };
        match p.cached {
            Some((_, cached)) if cached.matches(&meta) && !cached.is_racy() => InputContent::File(cached),
            _ => return Ok(Some(Looked::Changed)),
        }
    } else {
        InputContent::Other(crate::store::rule::other_kind(p.file_type))
    };
    Ok(Some(Looked::Known(content)))
}

/// Opens, stats the handle, then hashes: the recorded stat data is that of the bytes read.
/// None when the file vanished since it was listed.
fn hash_file(path: &Path, now_ns: i64) -> io::Result<Option<StatEntry>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(annotate(e, "open input", path)),
    };
    let meta = file.metadata().map_err(|e| annotate(e, "stat", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(&mut file)
        .map_err(|e| annotate(e, "read input", path))?;
    let stat = StatData::of(&meta);
    Ok(Some(StatEntry {
        size: stat.size,
        mtime_ns: stat.mtime_ns,
        ctime_ns: stat.ctime_ns,
        ino: stat.ino,
        dev: stat.dev,
        executable: crate::fs::is_executable(&meta),
        digest: *hasher.finalize().as_bytes(),
        recorded_at_ns: now_ns,
    }))
}

impl StatEntry {
    fn matches(&self, meta: &Metadata) -> bool {
        let stat = StatData::of(meta);
        self.size == stat.size
            && self.mtime_ns == stat.mtime_ns
            && self.ctime_ns == stat.ctime_ns
            && self.ino == stat.ino
            && self.dev == stat.dev
            && self.executable == crate::fs::is_executable(meta)
    }

    /// Git's racy-clean rule, widened to the file-system clock's granularity. As in git, mtime
    /// alone decides: a same-tick rewrite moves mtime and ctime together, and anything that moves
    /// ctime alone (chmod, rename into place) also changes a compared stat field.
    fn is_racy(&self) -> bool {
        let window = RACY_WINDOW.as_nanos() as i64;
        self.mtime_ns >= self.recorded_at_ns.saturating_sub(window)
    }
}

struct StatData {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl StatData {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &Metadata) -> Self {
        // No ctime or inode: size and mtime only (still guarded by the racy-clean rule).
        Self {
            size: meta.len(),
            mtime_ns: meta.modified().map(unix_ns).unwrap_or(i64::MAX),
            ctime_ns: 0,
            ino: 0,
            dev: 0,
        }
    }
}

fn unix_ns(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// The order of two sibling entries' paths: by name bytes, a directory's name followed by `/`
/// (every path under it begins so).
fn path_order((a, a_dir): (&std::ffi::OsStr, bool), (b, b_dir): (&std::ffi::OsStr, bool)) -> Ordering {
    let (a, b) = (a.as_encoded_bytes(), b.as_encoded_bytes());
    let common = a.len().min(b.len());
    a[..common].cmp(&b[..common]).then_with(|| {
        // One name is a prefix of the other: what follows it is `/` for a directory, else the
        // end of the path.
        let after = |name: &[u8], dir: bool| name.get(common).copied().or(dir.then_some(b'/'));
        after(a, a_dir).cmp(&after(b, b_dir))
    })
}

/// The versioned, length-prefixed encoding of everything the fingerprint covers, hashed.
fn encode(recipe: &Recipe, count: usize, inputs: &[u8]) -> Fingerprint {
    // Written into one buffer and hashed at once: BLAKE3 hashes a long input many chunks at a
    // time, while thousands of small updates (a length, a tag, a path) each pay its setup.
    struct Enc(Vec<u8>);
    impl Enc {
        fn update(&mut self, b: &[u8]) {
            self.0.extend_from_slice(b);
        }
        fn bytes(&mut self, b: &[u8]) {
            self.update(&(b.len() as u64).to_le_bytes());
            self.update(b);
        }
        fn count(&mut self, n: usize) {
            self.update(&(n as u64).to_le_bytes());
        }
        fn tag(&mut self, t: u8) {
            self.update(&[t]);
        }
    }
    let mut e = Enc(Vec::with_capacity(256));
    e.bytes(b"warmcache-fingerprint");
    e.update(&FINGERPRINT_VERSION.to_le_bytes());
    e.bytes(recipe.output.as_str().as_bytes());
    e.bytes(recipe.build.as_bytes());
    match &recipe.validate {
        None => e.tag(0),
        Some(v) => {
            e.tag(1);
            e.bytes(v.as_bytes());
        }
    }
    match &recipe.cwd {
        None => e.tag(0),
        Some(cwd) => {
            e.tag(1);
            e.bytes(cwd.as_os_str().as_encoded_bytes());
        }
    }
    let mut keys: Vec<&String> = recipe.keys.iter().collect();
    keys.sort();
    keys.dedup();
    e.count(keys.len());
    for key in keys {
        e.bytes(key.as_bytes());
    }
    let mut env: Vec<&String> = recipe.env.iter().collect();
    env.sort();
    env.dedup();
    e.count(env.len());
    for var in env {
        e.bytes(var.as_bytes());
        match std::env::var_os(var) {
            None => e.tag(0),
            Some(value) => {
                e.tag(1);
                e.bytes(value.as_encoded_bytes());
            }
        }
    }
    e.count(count);
    // The inputs' part was encoded during the walk (see [`encode_input`]).
    let mut hasher = blake3::Hasher::new();
    hasher.update(&e.0).update(inputs);
    Fingerprint::from_hash(&hasher.finalize())
}

/// Appends one input to the fingerprint's encoding: its path, then a tag with its content.
fn encode_input(out: &mut Vec<u8>, rel: &[u8], content: &InputContent) {
    let mut bytes = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    };
    bytes(rel);
    match content {
        InputContent::File(stat) => {
            out.push(if stat.executable { b'x' } else { b'f' });
            out.extend_from_slice(&stat.digest);
        }
        InputContent::Symlink { target } => {
            out.push(b'l');
            out.extend_from_slice(&(target.len() as u64).to_le_bytes());
            out.extend_from_slice(target.as_encoded_bytes());
        }
        InputContent::Other(_) => out.push(b'o'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::EntryConfig;

    fn recipe(base: &Path, inputs: &[&str]) -> Recipe {
        let entry = EntryConfig {
            build: Some("make".into()),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            ..EntryConfig::default()
        };
        Recipe::new("test", &entry, base).unwrap()
    }

    fn write(base: &Path, rel: &str, content: &str) {
        let path = base.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
    }

    /// Moves a file's mtime into the past so the racy-clean rule does not apply to it.
    fn age(base: &Path, rel: &str) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(base.join(rel))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    fn fp(r: &Recipe, cache: &mut StatCache) -> Fingerprinted {
        fingerprint(r, cache).unwrap()
    }

    #[test]
    fn content_changes_change_the_fingerprint_and_nothing_else_does() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        write(base, "src/a.rs", "fn a() {}");
        write(base, "src/sub/b.rs", "fn b() {}");
        write(base, "README", "not an input");
        let r = recipe(base, &["src/**/*.rs"]);
        let mut cache = StatCache::new();
        let first = fp(&r, &mut cache);
        assert_eq!(first.inputs, 2);
        assert_eq!(first.hashed, 2);
        assert!(first.unmatched_globs.is_empty());
        // Same inputs, fresh cache: same digest.
        assert_eq!(fp(&r, &mut StatCache::new()).digest, first.digest);
        write(base, "README", "changed, but not an input");
        assert_eq!(fp(&r, &mut cache).digest, first.digest);
        write(base, "src/sub/b.rs", "fn b() { 1 }");
        let changed = fp(&r, &mut cache);
        assert_ne!(changed.digest, first.digest);
        write(base, "src/sub/b.rs", "fn b() {}");
        assert_eq!(fp(&r, &mut cache).digest, first.digest);
        // A new file, a removed file, a renamed file: all change it.
        write(base, "src/c.rs", "");
        let added = fp(&r, &mut cache).digest;
        assert_ne!(added, first.digest);
        std::fs::rename(base.join("src/c.rs"), base.join("src/d.rs")).unwrap();
        assert_ne!(fp(&r, &mut cache).digest, added);
        std::fs::remove_file(base.join("src/d.rs")).unwrap();
        assert_eq!(fp(&r, &mut cache).digest, first.digest);
        assert_eq!(cache.len(), 2, "removed paths are forgotten");
    }

    #[test]
    fn every_recipe_field_is_covered() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "in.txt", "x");
        let base = Recipe {
            validate: Some("check".into()),
            keys: vec!["k".into()],
            cwd: Some("c".into()),
            ..recipe(tmp.path(), &["in.txt"])
        };
        let digest = |r: &Recipe| fp(r, &mut StatCache::new()).digest;
        let d0 = digest(&base);
        let with = |f: &dyn Fn(&mut Recipe)| {
            let mut r = base.clone();
            f(&mut r);
            r
        };
        let variants: Vec<(&str, Recipe)> = vec![
            ("build", with(&|r| r.build = "make2".into())),
            ("validate", with(&|r| r.validate = Some("check2".into()))),
            ("no validate", with(&|r| r.validate = None)),
            ("empty validate", with(&|r| r.validate = Some(String::new()))),
            ("keys", with(&|r| r.keys = vec!["k2".into()])),
            ("no keys", with(&|r| r.keys.clear())),
            (
                "output",
                with(&|r| r.output = super::super::recipe::OutputKind::Dir),
            ),
            ("cwd", with(&|r| r.cwd = Some("d".into()))),
            ("no cwd", with(&|r| r.cwd = None)),
            ("inputs", with(&|r| r.inputs.clear())),
        ];
        for (what, r) in &variants {
            assert_ne!(digest(r), d0, "{what} must change the fingerprint");
        }
        // Length prefixes: moving a boundary between two keys changes the digest.
        let ab = with(&|r| r.keys = vec!["ab".into(), "c".into()]);
        let a_bc = with(&|r| r.keys = vec!["a".into(), "bc".into()]);
        assert_ne!(digest(&ab), digest(&a_bc));
        // Key order does not matter.
        let ca = with(&|r| r.keys = vec!["c".into(), "ab".into()]);
        assert_eq!(digest(&ab), digest(&ca));
        // Executable bit.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path().join("in.txt"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            assert_ne!(
                digest(&base),
                d0,
                "the executable bit must change the fingerprint"
            );
        }
    }

    #[test]
    fn env_unset_is_distinct_from_empty() {
        let tmp = tempfile::tempdir().unwrap();
        // A variable name unique to this test, so parallel tests do not race on it.
        let var = "WARMCACHE_TEST_FP_ENV_7F3A";
        let r = Recipe {
            env: vec![var.into()],
            ..recipe(tmp.path(), &[])
        };
        let digest = || fp(&r, &mut StatCache::new()).digest;
        // SAFETY: no other test touches this variable.
        unsafe { std::env::remove_var(var) };
        let unset = digest();
        unsafe { std::env::set_var(var, "") };
        let empty = digest();
        unsafe { std::env::set_var(var, "1") };
        let one = digest();
        unsafe { std::env::remove_var(var) };
        assert_ne!(unset, empty);
        assert_ne!(empty, one);
        assert_ne!(unset, one);
        assert_eq!(digest(), unset);
    }

    #[test]
    fn unmatched_globs_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.txt", "a");
        let r = recipe(tmp.path(), &["a.txt", "missing/**", "*.nope"]);
        let f = fp(&r, &mut StatCache::new());
        assert_eq!(f.inputs, 1);
        assert_eq!(f.unmatched_globs, ["missing/**", "*.nope"]);
    }

    #[test]
    fn globs_have_shell_semantics_and_directories_include_their_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        for rel in [
            "top.rs",
            "src/a.rs",
            "src/deep/b.rs",
            "vendor/x/y.c",
            "vendor/z.h",
            ".hidden/h.rs",
        ] {
            write(base, rel, rel);
        }
        let count = |globs: &[&str]| fp(&recipe(base, globs), &mut StatCache::new()).inputs;
        assert_eq!(count(&["*.rs"]), 1, "`*` does not cross `/`");
        assert_eq!(count(&["src/*.rs"]), 1);
        assert_eq!(count(&["src/**/*.rs"]), 2);
        assert_eq!(count(&["**/*.rs"]), 4, "hidden directories are not skipped");
        assert_eq!(count(&["vendor"]), 2, "a matched directory brings its whole tree");
        assert_eq!(count(&["./top.rs"]), 1);
        assert_eq!(
            count(&["src/deep/b.rs", "src/**"]),
            2,
            "overlapping globs count a file once"
        );
    }

    #[test]
    fn the_walk_is_pruned_by_the_literal_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        write(base, "src/a.rs", "a");
        write(base, "src/one/two/b.rs", "b");
        write(base, "target/debug/deps/x.rs", "x");
        let walked = |globs: &[&str]| {
            let f = fp(&recipe(base, globs), &mut StatCache::new());
            (f.inputs, f.dirs_walked)
        };
        // base and src/ only: `*.rs` cannot match deeper than src/.
        assert_eq!(walked(&["src/*.rs"]), (1, 2));
        // base, src, src/one, src/one/two; never target/.
        assert_eq!(walked(&["src/**/*.rs"]), (2, 4));
        assert_eq!(walked(&["src/one/two/b.rs"]), (1, 4));
        assert_eq!(walked(&["*.toml"]), (0, 1));
        // Unbounded from the base: everything is listed, nothing is skipped.
        assert_eq!(walked(&["**/*.rs"]), (3, 7));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // A directory a glob reaches into but that cannot be read is an error, not a skip.
            let locked = base.join("target/debug");
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
            let readable = std::fs::read_dir(&locked).is_ok(); // root reads anyway
            let result = fingerprint(&recipe(base, &["**/*.rs"]), &mut StatCache::new());
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
            if !readable {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.contains("target/debug") && err.contains("entry `test`"),
                    "{err}"
                );
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_hashed_as_links_and_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret/s.rs", "outside");
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        write(base, "src/a.rs", "a");
        std::os::unix::fs::symlink(outside.path().join("secret"), base.join("src/escape")).unwrap();
        std::os::unix::fs::symlink("a.rs", base.join("src/link.rs")).unwrap();
        let r = recipe(base, &["src/**"]);
        let mut cache = StatCache::new();
        let f = fp(&r, &mut cache);
        // a.rs, the link to the outside directory (as a link), link.rs (as a link).
        assert_eq!(f.inputs, 3);
        assert_eq!(f.hashed, 1, "nothing behind a symlink is read");
        write(outside.path(), "secret/s.rs", "changed outside");
        assert_eq!(fp(&r, &mut cache).digest, f.digest);
        std::fs::remove_file(base.join("src/link.rs")).unwrap();
        std::os::unix::fs::symlink("other.rs", base.join("src/link.rs")).unwrap();
        assert_ne!(
            fp(&r, &mut cache).digest,
            f.digest,
            "a link's target path is covered"
        );
    }

    #[test]
    fn unchanged_files_are_not_rehashed_and_changed_ones_are() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        write(base, "a", "aaaa");
        write(base, "b", "bbbb");
        age(base, "a");
        age(base, "b");
        let r = recipe(base, &["*"]);
        let mut cache = StatCache::new();
        let first = fp(&r, &mut cache);
        assert_eq!((first.hashed, first.cache_changed), (2, true));
        let second = fp(&r, &mut cache);
        assert_eq!((second.hashed, second.cache_changed), (0, false));
        assert_eq!(second.digest, first.digest);
        write(base, "a", "AAAA");
        age(base, "a");
        let third = fp(&r, &mut cache);
        assert_eq!(third.hashed, 1);
        assert_ne!(third.digest, first.digest);
        // The cache survives serialization.
        let mut restored = StatCache::from_bytes(&cache.to_bytes());
        assert_eq!(restored, cache);
        assert_eq!(fp(&r, &mut restored).hashed, 0);
        // A cache of another version, or garbage, is discarded, not trusted.
        let mut other_version = cache.to_bytes();
        other_version[STAT_CACHE_MAGIC.len()] ^= 0xff;
        assert!(StatCache::from_bytes(&other_version).is_empty());
        let bytes = cache.to_bytes();
        assert!(
            StatCache::from_bytes(&bytes[..bytes.len() - 1]).is_empty(),
            "truncated"
        );
        assert!(StatCache::from_bytes(b"garbage").is_empty());
        // Paths out of order would make the cursor miss entries: such a cache is discarded.
        // The keys "a" and "b" are one byte each, after the header (magic, version, count) and
        // each entry's length; an entry is 90 bytes with a one-byte key.
        let first_key = STAT_CACHE_MAGIC.len() + 4 + 8 + 8;
        let second_key = first_key + 90;
        assert_eq!((bytes[first_key], bytes[second_key]), (b'a', b'b'));
        let mut swapped = bytes.clone();
        swapped.swap(first_key, second_key);
        assert!(StatCache::from_bytes(&swapped).is_empty(), "out of order");
    }

    /// A write in the same clock tick as the cache entry can leave every stat field unchanged; such
    /// a racily clean file must be re-hashed. Simulated by copying the new stat data into the cache
    /// entry, which is what a same-tick, same-size rewrite in place looks like.
    #[test]
    fn racily_clean_files_are_rehashed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        write(base, "f", "v1");
        let r = recipe(base, &["f"]);
        let mut cache = StatCache::new();
        let v1 = fp(&r, &mut cache);
        write(base, "f", "v2");
        let meta = std::fs::symlink_metadata(base.join("f")).unwrap();
        let forge = |cache: &mut StatCache, recorded_at_ns: i64| {
            let e = &mut cache.entries[0].stat;
            let stat = StatData::of(&meta);
            (e.size, e.mtime_ns, e.ctime_ns, e.ino, e.dev) =
                (stat.size, stat.mtime_ns, stat.ctime_ns, stat.ino, stat.dev);
            e.recorded_at_ns = recorded_at_ns;
            e.digest
        };
        // Recorded in the same tick as the write: racy, so re-hashed and the change is seen.
        let mut racy = cache.clone();
        let mtime = StatData::of(&meta).mtime_ns;
        forge(&mut racy, mtime);
        let seen = fp(&r, &mut racy);
        assert_eq!(seen.hashed, 1);
        assert_ne!(seen.digest, v1.digest);
        // The control: recorded well after the write, the stat cache is trusted (and here, fooled),
        // which proves the rehash above came from the racy rule and not from a stat mismatch.
        let mut trusted = cache.clone();
        forge(&mut trusted, mtime + 10 * RACY_WINDOW.as_nanos() as i64);
        let fooled = fp(&r, &mut trusted);
        assert_eq!(fooled.hashed, 0);
        assert_eq!(fooled.digest, v1.digest);
    }

    /// Prints the in-process cost of a fingerprint with 1,000 unchanged inputs (goal: < 1 ms).
    #[test]
    fn thousand_unchanged_inputs_cost() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        for i in 0..1000 {
            let rel = format!("src/m{}/f{i}.txt", i % 20);
            write(base, &rel, &format!("file {i}"));
            age(base, &rel);
        }
        write(base, "target/big/ignored", "x");
        let r = recipe(base, &["src/**/*.txt"]);
        let mut cache = StatCache::new();
        let start = std::time::Instant::now();
        let cold = fp(&r, &mut cache);
        let cold_time = start.elapsed();
        assert_eq!((cold.inputs, cold.hashed), (1000, 1000));
        let rounds = 20;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let warm = fp(&r, &mut cache);
            assert_eq!(warm.hashed, 0);
            assert_eq!(warm.digest, cold.digest);
        }
        let warm_time = start.elapsed() / rounds;
        // The floor: listing the directories and stat-ing every file, nothing else.
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            for dir in std::fs::read_dir(base.join("src")).unwrap() {
                for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                    std::hint::black_box(file.unwrap().metadata().unwrap());
                }
            }
        }
        let floor = start.elapsed() / rounds;
        let bytes = cache.to_bytes().len();
        eprintln!(
            "fingerprint, 1000 inputs: cold {cold_time:?}, warm {warm_time:?} per call \
             (readdir+stat alone: {floor:?}); stat cache {bytes} bytes serialized"
        );
    }
}
