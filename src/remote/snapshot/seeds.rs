//! Seeds of a restore (docs/DESIGN.md, "Restore"): content this machine already holds, found by
//! digest, so that only the rest is downloaded. DIR's current content is the first seed (a
//! stale tree holds most of the new one); the local store's artifacts are the second.
//!
//! Everything here is read-only and advisory: a file that cannot be read is simply not a seed,
//! and a seed is checked again against its digest when it is linked or copied, so a seed that
//! changed in between only costs a download.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::format::{CHUNK_THRESHOLD, SegmentEntry};
use crate::archive::FileStat;
use crate::store::EntryKind;

/// Where a run of bytes with a known digest is on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seed {
    /// The file holding it.
    pub path: PathBuf,
    /// Where the bytes start in that file.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// What a restore found on this machine, by digest (of whole files and of the chunks of large
/// files).
#[derive(Debug, Default)]
pub(super) struct Seeds {
    by_digest: HashMap<String, Seed>,
    /// DIR already holds exactly the snapshot's tree: every entry, nothing else.
    pub unchanged: bool,
}

impl Seeds {
    /// Where content with this digest is, if anywhere.
    pub fn get(&self, digest: &str) -> Option<&Seed> {
        self.by_digest.get(digest)
    }

    fn add(&mut self, digest: String, seed: Seed) {
        self.by_digest.entry(digest).or_insert(seed);
    }

    /// Hashes DIR's files that can serve the snapshot `entries`, on several threads: each file
    /// at an entry's path with the entry's size, and each other file whose size some entry has
    /// (a file moved to another path). Large files are also cut into chunks exactly as a
    /// snapshot cuts them, so a file that changed in part still gives its unchanged chunks. Sets
    /// [`Self::unchanged`] when DIR holds exactly the entries (no download, no swap).
    ///
    /// `known` gives the digest of a file without reading it (the stat cache the last snapshot
    /// or restore of DIR to this URL left, trusted by its own rules): a small file it vouches
    /// for at an entry's path is not read here (it is checked again if it is linked or copied).
    pub fn scan_dir(
        dir: &Path,
        entries: &[SegmentEntry],
        known: &(dyn Fn(&str, &FileStat) -> Option<String> + Sync),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Self {
        let by_path: HashMap<&str, &SegmentEntry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let sizes: HashSet<u64> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && e.size > 0)
            .map(|e| e.size)
            .collect();
        let mut matched = 0usize;
        let mut extra = false;
        // Files to hash: path, size, and the entry at that path when it is a file of that size
        // and executable bit (then the same digest makes the file one of the tree's).
        let mut candidates: Vec<(PathBuf, u64, Option<&SegmentEntry>, Option<String>)> = Vec::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((path, rel)) = stack.pop() {
            let Ok(listing) = std::fs::read_dir(&path) else {
                extra = true;
                continue;
            };
            for item in listing {
                let Ok(item) = item else {
                    extra = true;
                    continue;
                };
                let Ok(file_type) = item.file_type() else {
                    extra = true;
                    continue;
                };
                let name = item.file_name();
                let Some(name) = name.to_str() else {
                    extra = true;
                    continue;
                };
                let child_rel = if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                let child = item.path();
                let entry = by_path.get(child_rel.as_str()).copied();
                if file_type.is_dir() {
                    match entry {
                        Some(e) if e.kind == EntryKind::Dir => matched += 1,
                        _ => extra = true,
                    }
                    stack.push((child, child_rel));
                } else if file_type.is_symlink() {
                    let same = entry.is_some_and(|e| {
                        e.kind == EntryKind::Symlink
                            && std::fs::read_link(&child)
                                .ok()
                                .is_some_and(|t| t.to_str() == e.target.as_deref())
                    });
                    if same {
                        matched += 1;
                    } else {
                        extra = true;
                    }
                } else if file_type.is_file() {
                    let Ok(meta) = item.metadata() else {
                        extra = true;
                        continue;
                    };
                    let len = meta.len();
                    let exec = crate::fs::is_executable(&meta);
                    let at_path =
                        entry.filter(|e| e.kind == EntryKind::File && e.size == len && e.exec == exec);
                    if at_path.is_none() {
                        extra = true;
                    }
                    // Large files are read anyway: their chunks may serve other entries.
                    let vouched = at_path
                        .filter(|_| len < CHUNK_THRESHOLD)
                        .and_then(|_| known(&child_rel, &FileStat::of(&meta)));
                    if at_path.is_some() || sizes.contains(&len) {
                        candidates.push((child, len, at_path, vouched));
                    }
                } else {
                    extra = true;
                }
            }
        }
        let hashed = AtomicU64::new(0);
        let hashes = crate::parallel::map(&candidates, |(path, len, _, vouched)| {
            if let Some(digest) = vouched {
                return Ok(Some((digest.clone(), Vec::new())));
            }
            let found = hash_file(path, *len);
            progress(hashed.fetch_add(*len, Ordering::Relaxed) + len);
            Ok::<_, std::convert::Infallible>(found)
        });
        let hashes = match hashes {
            Ok(hashes) => hashes,
            Err(never) => match never {},
        };
        let mut seeds = Seeds::default();
        for ((path, len, at_path, _), found) in candidates.into_iter().zip(hashes) {
            let Some((digest, chunks)) = found else {
                extra = true;
                continue;
            };
            match at_path {
                Some(e) if e.digest.as_deref() == Some(digest.as_str()) => matched += 1,
                Some(_) => extra = true,
                None => {}
            }
            for (chunk, offset, chunk_len) in chunks {
                let seed = Seed {
                    path: path.clone(),
                    offset,
                    len: chunk_len,
                };
                seeds.add(chunk, seed);
            }
            seeds.add(digest, Seed { path, offset: 0, len });
        }
        seeds.unchanged = !extra && matched == entries.len();
        seeds
    }

    /// Adds the files of the local store's artifacts whose digest is in `wanted` (digest →
    /// size), reading only the artifacts' manifests (the store's content is verified when it is
    /// published and every seed is checked again as it is copied). Nothing in the root is
    /// created or changed; a root that cannot be read adds nothing.
    pub fn scan_store(&mut self, root: &Path, wanted: &HashMap<String, u64>) {
        if wanted.is_empty() {
            return;
        }
        let layout = crate::layout::Layout::new(root);
        let Ok(found) = crate::store::published_files(&layout, &|digest, size| {
            wanted.get(digest).is_some_and(|want| *want == size)
        }) else {
            return;
        };
        for (digest, path, size) in found {
            self.add(
                digest,
                Seed {
                    path,
                    offset: 0,
                    len: size,
                },
            );
        }
    }
}

/// A file's digest and, when it is large, its chunks (digest, offset, length) cut as a snapshot
/// cuts them.
type Hashed = (String, Vec<(String, u64, u64)>);

/// Hashes one file of `len` bytes; `None` when it cannot be read as it was listed (it changed,
/// or vanished): then it is not a seed.
fn hash_file(path: &Path, len: u64) -> Option<Hashed> {
    let file = File::open(path).ok()?;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let read = if len < CHUNK_THRESHOLD {
        let mut bytes = Vec::with_capacity(len as usize);
        (&file).take(len + 1).read_to_end(&mut bytes).ok()?;
        whole.update(&bytes);
        bytes.len() as u64
    } else {
        let mut read = 0u64;
        for chunk in super::pack::chunks(&file) {
            let chunk = chunk.ok()?;
            whole.update(&chunk.data);
            chunks.push((
                blake3::hash(&chunk.data).to_hex().to_string(),
                chunk.offset,
                chunk.length as u64,
            ));
            read += chunk.length as u64;
        }
        read
    };
    (read == len).then(|| (whole.finalize().to_hex().to_string(), chunks))
}

/// Reads `seed`'s bytes; an error when the file is gone or shorter than the seed.
pub(super) fn read_seed(seed: &Seed) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(&seed.path).map_err(|e| crate::fs::annotate(e, "open", &seed.path))?;
    file.seek(SeekFrom::Start(seed.offset))
        .map_err(|e| crate::fs::annotate(e, "seek in", &seed.path))?;
    let len = usize::try_from(seed.len).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(len);
    (&mut file)
        .take(seed.len)
        .read_to_end(&mut bytes)
        .map_err(|e| crate::fs::annotate(e, "read", &seed.path))?;
    if bytes.len() != len {
        return Err(io::Error::other(format!(
            "`{}` is shorter than it was when it was hashed",
            seed.path.display()
        )));
    }
    Ok(bytes)
}
