//! The manifest of an artifact: what its content is, entry by entry.
//!
//! An artifact's id is the BLAKE3 digest of its manifest's canonical bytes, so the id covers every
//! path, kind, executable bit, size, content digest and symlink target: two artifacts with the
//! same id are the same content, and a manifest that does not hash to its directory's name has
//! been tampered with.

use std::io;

use serde::{Deserialize, Serialize};

use crate::ids::ArtifactId;

/// The manifest format version. A manifest with another version cannot be decoded, which makes
/// its artifact a miss (never a wrong answer).
pub const MANIFEST_VERSION: u32 = 1;

/// Whether an artifact is a single file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A single regular file.
    File,
    /// A directory tree.
    Dir,
}

impl ArtifactKind {
    /// The lowercase name used in JSON and the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::File => "file",
            ArtifactKind::Dir => "dir",
        }
    }

    /// Parses the name written by [`ArtifactKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(ArtifactKind::File),
            "dir" => Some(ArtifactKind::Dir),
            _ => None,
        }
    }
}

/// The kind of one entry inside an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (stored verbatim, never followed).
    Symlink,
}

/// One entry of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The path relative to the content root, `/`-separated; empty for a single-file artifact.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Whether a file is executable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
    /// The size of a file in bytes (0 for other kinds).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// The BLAKE3 digest of a file's bytes (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The target of a symlink, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl ManifestEntry {
    /// A regular file with its content digest (hex).
    pub fn file(path: String, exec: bool, size: u64, digest: String) -> Self {
        Self {
            path,
            kind: EntryKind::File,
            exec,
            size,
            digest: Some(digest),
            target: None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The description of an artifact's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] when written.
    pub version: u32,
    /// File or tree.
    pub kind: ArtifactKind,
    /// Total bytes of all files.
    pub size: u64,
    /// Number of regular files.
    pub files: u64,
    /// Entries sorted by path (parents before children).
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Builds a manifest from entries, sorting them and adding up sizes.
    pub fn new(kind: ArtifactKind, mut entries: Vec<ManifestEntry>) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let (size, files) = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .fold((0, 0), |(size, files), e| (size + e.size, files + 1));
        Self {
            version: MANIFEST_VERSION,
            kind,
            size,
            files,
            entries,
        }
    }

    /// The canonical bytes: field order is fixed by the struct and entries are sorted, so equal
    /// content always gives equal bytes. An encoding failure is an error, never empty bytes
    /// that would hash to a wrong id.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(io::Error::other)
    }

    /// Decodes a manifest; `None` for anything undecodable or of another version.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes).ok()?;
        (manifest.version == MANIFEST_VERSION).then_some(manifest)
    }

    /// The artifact id: BLAKE3 of the canonical bytes.
    pub fn id(&self) -> io::Result<ArtifactId> {
        Ok(id_of_bytes(&self.to_bytes()?))
    }
}

/// The id that manifest bytes name.
pub fn id_of_bytes(bytes: &[u8]) -> ArtifactId {
    ArtifactId::from_hash(&blake3::hash(bytes))
}

/// Computes [`Manifest::id`] of a directory tree entry by entry, without holding the entries:
/// the canonical bytes are fed to BLAKE3 as they are produced. The totals come first in those
/// bytes, so they must be known up front ([`Self::new`]), and entries must arrive in the
/// manifest's order (sorted by path bytes); [`Self::finish`] fails if either promise was broken.
///
/// Why: a snapshot digests trees of any size with bounded memory (docs/DESIGN.md,
/// "Snapshots"), and the digest must stay the one the tree would get as an artifact.
pub struct ManifestHasher {
    hasher: blake3::Hasher,
    expected: (u64, u64),
    seen: (u64, u64),
    last: Option<String>,
    buf: Vec<u8>,
}

impl ManifestHasher {
    /// Starts the digest of a directory tree of `files` regular files holding `size` bytes.
    pub fn new(files: u64, size: u64) -> io::Result<Self> {
        let head = Manifest {
            version: MANIFEST_VERSION,
            kind: ArtifactKind::Dir,
            size,
            files,
            entries: Vec::new(),
        };
        let mut bytes = head.to_bytes()?;
        // The canonical bytes of the empty manifest end with `[]}`; entries go between.
        if !bytes.ends_with(b"[]}") {
            return Err(io::Error::other("unexpected canonical manifest encoding"));
        }
        bytes.truncate(bytes.len() - 2);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&bytes);
        Ok(Self {
            hasher,
            expected: (files, size),
            seen: (0, 0),
            last: None,
            buf: Vec::with_capacity(256),
        })
    }

    /// Adds the next entry (in path order).
    pub fn push(&mut self, entry: &ManifestEntry) -> io::Result<()> {
        if let Some(last) = &self.last
            && last.as_bytes() >= entry.path.as_bytes()
        {
            return Err(io::Error::other(format!(
                "manifest entries out of order: `{}` after `{last}`",
                entry.path
            )));
        }
        self.buf.clear();
        if self.last.is_some() {
            self.buf.push(b',');
        }
        serde_json::to_writer(&mut self.buf, entry).map_err(io::Error::other)?;
        self.hasher.update(&self.buf);
        if entry.kind == EntryKind::File {
            self.seen.0 += 1;
            self.seen.1 += entry.size;
        }
        match &mut self.last {
            Some(last) => {
                last.clear();
                last.push_str(&entry.path);
            }
            None => self.last = Some(entry.path.clone()),
        }
        Ok(())
    }

    /// The id, or `None` when the entries did not add up to the totals given to [`Self::new`].
    pub fn finish(mut self) -> Option<ArtifactId> {
        if self.seen != self.expected {
            return None;
        }
        self.hasher.update(b"]}");
        Some(ArtifactId::from_hash(&self.hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, digest: &str) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            kind: EntryKind::File,
            exec: false,
            size: 3,
            digest: Some(digest.into()),
            target: None,
        }
    }

    #[test]
    fn id_is_independent_of_entry_order_and_covers_every_field() {
        let a = Manifest::new(ArtifactKind::Dir, vec![file("b", "1"), file("a", "2")]);
        let b = Manifest::new(ArtifactKind::Dir, vec![file("a", "2"), file("b", "1")]);
        assert_eq!(a.id().unwrap(), b.id().unwrap());
        let mut c = b.clone();
        c.entries[0].exec = true;
        assert_ne!(a.id().unwrap(), c.id().unwrap());
    }

    #[test]
    fn streaming_digest_equals_manifest_id() {
        let entries = vec![
            ManifestEntry {
                path: "a".into(),
                kind: EntryKind::Dir,
                exec: false,
                size: 0,
                digest: None,
                target: None,
            },
            file("a.b", "1"),
            file("a/x", "2"),
            ManifestEntry {
                path: "l".into(),
                kind: EntryKind::Symlink,
                exec: false,
                size: 0,
                digest: None,
                target: Some("/etc/\"q\"".into()),
            },
        ];
        let manifest = Manifest::new(ArtifactKind::Dir, entries.clone());
        let mut hasher = ManifestHasher::new(manifest.files, manifest.size).unwrap();
        for e in &manifest.entries {
            hasher.push(e).unwrap();
        }
        assert_eq!(hasher.finish(), Some(manifest.id().unwrap()));
        let empty = Manifest::new(ArtifactKind::Dir, Vec::new());
        assert_eq!(
            ManifestHasher::new(0, 0).unwrap().finish(),
            Some(empty.id().unwrap())
        );
        let mut wrong = ManifestHasher::new(5, 0).unwrap();
        wrong.push(&entries[1]).unwrap();
        assert_eq!(wrong.finish(), None, "totals must match");
        let mut unordered = ManifestHasher::new(2, 6).unwrap();
        unordered.push(&entries[2]).unwrap();
        assert!(unordered.push(&entries[1]).is_err());
    }

    #[test]
    fn other_versions_do_not_decode() {
        let mut m = Manifest::new(ArtifactKind::File, vec![file("", "1")]);
        assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()), Some(m.clone()));
        m.version = 2;
        assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()), None);
        assert_eq!(Manifest::from_bytes(b"{not json"), None);
    }
}
