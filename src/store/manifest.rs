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
    fn other_versions_do_not_decode() {
        let mut m = Manifest::new(ArtifactKind::File, vec![file("", "1")]);
        assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()), Some(m.clone()));
        m.version = 2;
        assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()), None);
        assert_eq!(Manifest::from_bytes(b"{not json"), None);
    }
}
