//! What a snapshot key holds: the pointer, the snapshot manifests, the packs and the remote gc's
//! state (their format versions, keys and validation). The layout is described in
//! docs/DESIGN.md, "Snapshots", and in [`super`].

use serde::{Deserialize, Serialize};

use crate::archive::Format;
use crate::remote::RemoteUrl;
use crate::store::{EntryKind, ManifestEntry, ManifestHasher};

/// The format version of `pointer.json`.
pub const POINTER_VERSION: u32 = 1;
/// The format version of a whole-archive manifest ([`ArchiveManifest`]), still restored.
pub const ARCHIVE_MANIFEST_VERSION: u32 = 1;
/// The format version of `snapshots/<digest>.json` written now ([`PackedManifest`]).
pub const SNAPSHOT_MANIFEST_VERSION: u32 = 2;
/// The format version of `gc.json` ([`GcState`]).
pub const GC_STATE_VERSION: u32 = 1;

const POINTER: &str = "pointer.json";
pub(super) const SNAPSHOTS: &str = "snapshots";
pub(super) const PACKS: &str = "packs";
const GC_STATE: &str = "gc.json";

/// Files of at least this many bytes are split by content-defined chunking (FastCDC 2020), so
/// that a small edit moves a few chunks, not the file. Smaller files are one chunk.
pub const CHUNK_THRESHOLD: u64 = 1024 * 1024;
/// FastCDC's minimum chunk size.
pub const CHUNK_MIN: u32 = 16 * 1024;
/// FastCDC's average chunk size.
pub const CHUNK_AVG: u32 = 64 * 1024;
/// FastCDC's maximum chunk size. With [`CHUNK_MIN`] and [`CHUNK_AVG`] these are part of the
/// format: a restore re-chunks a seed file with the same parameters to find chunks it holds.
pub const CHUNK_MAX: u32 = 256 * 1024;
/// A pack's zstd frame is closed at the first chunk boundary after this many uncompressed
/// bytes, so a ranged GET of one chunk fetches at most about this much more than the chunk (the
/// frame is the unit of a ranged fetch). Independent frames compress worse the smaller they
/// are: on a 576 MB `node_modules` tar, one zstd -3 stream is 125.8 MB, 256 KiB frames 141.5 MB
/// (+12.5%), 1 MiB frames 134.3 MB (+6.8%), 4 MiB 127.4 MB (+1.3%); 1 MiB keeps a seeded
/// restore's over-fetch at about 1–2 MiB uncompressed per missing chunk (docs/DESIGN.md,
/// "Snapshots").
pub const FRAME_TARGET: u64 = 1024 * 1024;
/// The magic number of the zstd skippable frames that carry manifest segments at a pack's end
/// (`0x184D2A50`; `zstd -d` and every zstd decoder skip such frames).
pub const SEGMENT_FRAME_MAGIC: u32 = 0x184D_2A50;
/// At most this many entries go in one manifest segment.
pub const SEGMENT_MAX_ENTRIES: usize = 4096;
/// At least this many entries go in one manifest segment (unless it is the last).
pub const SEGMENT_MIN_ENTRIES: usize = 16;

/// `KEY/pointer.json`.
pub(super) fn pointer_key(url: &RemoteUrl) -> String {
    url.join(POINTER)
}

/// `KEY/snapshots/<digest>.json`.
pub(super) fn manifest_key(url: &RemoteUrl, digest: &str) -> String {
    url.join(&format!("{SNAPSHOTS}/{digest}.json"))
}

/// `KEY/packs/<token>.tar.zst`.
pub(super) fn pack_key(url: &RemoteUrl, token: &str) -> String {
    url.join(&format!("{PACKS}/{token}.tar.zst"))
}

/// `KEY/gc.json`.
pub(super) fn gc_state_key(url: &RemoteUrl) -> String {
    url.join(GC_STATE)
}

/// Whether a pack token is well formed: 16 lowercase hex digits ([`unique_token`]). Checked on
/// every manifest read, so a manifest can only name packs of its own key.
pub fn is_pack_token(token: &str) -> bool {
    token.len() == 16 && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a manifest segment ends after the entry at `path` (given that it already holds
/// `entries` entries). The cut depends on the path alone, so a file whose content changed
/// changes exactly one segment, and files added under one directory change only the segments
/// around them: every other segment is byte-identical to the previous snapshot's and is reused.
/// On average a segment holds 256 entries.
pub fn ends_segment(path: &str, entries: usize) -> bool {
    if entries >= SEGMENT_MAX_ENTRIES {
        return true;
    }
    entries >= SEGMENT_MIN_ENTRIES && blake3::hash(path.as_bytes()).as_bytes()[0] == 0
}

/// The current snapshot of a key: the small object at `KEY/pointer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// [`POINTER_VERSION`].
    pub version: u32,
    /// Content digest of the tree; its manifest is `snapshots/<digest>.json`.
    pub digest: String,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of file content in the tree.
    pub bytes: u64,
    /// When this pointer was written, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The machine that wrote it.
    pub host: String,
    /// Unique per write, so that A→B→A changes the object (and its ETag) every time.
    pub nonce: String,
}

/// What `KEY/snapshots/<digest>.json` said about one snapshot before packs: one tar.zst of the
/// whole tree. Still restored; never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveManifest {
    /// [`ARCHIVE_MANIFEST_VERSION`].
    pub version: u32,
    /// Content digest of the tree.
    pub digest: String,
    /// Regular files.
    pub files: u64,
    /// Directories (the root excluded).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// The archive's key relative to `KEY`: `snapshots/<digest>-<upload>.tar.zst`, or
    /// `snapshots/<upload>.tar.zst` when the digest was computed while the archive streamed.
    pub archive: String,
    /// Always `tar.zst`.
    pub archive_format: Format,
    /// The archive's size in bytes.
    pub archive_bytes: u64,
    /// BLAKE3 of the archive's bytes, lowercase hex; every restore checks it.
    pub archive_blake3: String,
    /// When it was uploaded, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The machine that uploaded it.
    pub host: String,
}

/// What `KEY/snapshots/<digest>.json` says about one snapshot (format 2): where the tree's
/// entries are listed (segments) and which packs hold their content.
///
/// Nothing here is trusted: the entries of all segments must hash to `digest`
/// ([`SegmentEntry::hasher_entry`], [`crate::store::ManifestHasher`]) before anything is
/// extracted, every chunk is checked against its digest as it is decoded, and every file
/// against its own digest once assembled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedManifest {
    /// [`SNAPSHOT_MANIFEST_VERSION`].
    pub version: u32,
    /// Content digest of the tree ([`crate::store::Manifest::id`]).
    pub digest: String,
    /// Regular files.
    pub files: u64,
    /// Directories (the root excluded).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Every pack a segment or a chunk of this snapshot is in.
    pub packs: Vec<PackRef>,
    /// The tree's entries, in manifest order, cut into segments ([`ends_segment`]).
    pub segments: Vec<SegmentRef>,
    /// When it was uploaded, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The machine that uploaded it.
    pub host: String,
}

/// One pack: `KEY/packs/<token>.tar.zst`.
///
/// A pack is a standard tar.zst made of independent zstd frames: `zstd -d | tar -x` reads it.
/// Its tar holds the files whose content it brought (at their paths, with the directories and
/// symlinks of the tree when it is `full`), and, in a delta pack, the new chunks of large files
/// that changed in part, as `.warmcache-chunks/<chunk digest>`. After the tar's end come
/// skippable frames ([`SEGMENT_FRAME_MAGIC`]), each holding one zstd-compressed manifest
/// segment, which tar and zstd ignore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// 16 lowercase hex digits; the object is `packs/<token>.tar.zst`.
    pub token: String,
    /// The object's size in bytes.
    pub bytes: u64,
    /// BLAKE3 of the whole object, lowercase hex (checked when a restore reads all of it).
    pub blake3: String,
    /// Whether the pack's tar is exactly this snapshot's tree (every entry, in manifest order,
    /// nothing else): a first snapshot or a compaction. A cold restore streams such a pack.
    pub full: bool,
}

/// Where one manifest segment is: the payload of a skippable frame of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// The token of the pack holding it.
    pub pack: String,
    /// Byte range of the segment's zstd frame (the skippable frame's payload) in the pack.
    pub range: [u64; 2],
    /// BLAKE3 of the decompressed segment, lowercase hex: a snapshot reuses a segment whose
    /// bytes it would write anyway.
    pub blake3: String,
    /// How many entries it holds.
    pub entries: u64,
}

/// One line of a manifest segment (JSON Lines, zstd-compressed): one entry of the tree, in
/// manifest order: the entry exactly as the tree digest sees it (its fields at the top level of
/// the line), and where a file's content is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Path, kind, executable bit, size, digest and symlink target.
    #[serde(flatten)]
    pub entry: ManifestEntry,
    /// A file's content, in order: the chunks add up to its size (none for an empty file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

impl SegmentEntry {
    /// An entry without content locations (a directory, a symlink, or a file whose chunks are
    /// added next).
    pub fn new(entry: ManifestEntry) -> Self {
        Self {
            entry,
            chunks: Vec::new(),
        }
    }

    /// The entry as the tree digest sees it (no chunk locations).
    pub fn hasher_entry(&self) -> &ManifestEntry {
        &self.entry
    }
}

/// Reads of the entry's own fields (`path`, `kind`, `size`, ...), which most code wants.
impl std::ops::Deref for SegmentEntry {
    type Target = ManifestEntry;

    fn deref(&self) -> &ManifestEntry {
        &self.entry
    }
}

/// Where one chunk of a file's content is: bytes `at..at + len` of the decompressed zstd frame
/// at `frame` in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The token of the pack holding it.
    pub pack: String,
    /// Byte range of the zstd frame in the pack.
    pub frame: [u64; 2],
    /// Offset of the chunk in the decompressed frame.
    pub at: u64,
    /// The chunk's length.
    pub len: u64,
    /// BLAKE3 of the chunk (hex); absent when the chunk is the whole file (the file's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// Either manifest format a snapshot key may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyManifest {
    /// Format 1: one tar.zst of the whole tree.
    Archive(ArchiveManifest),
    /// Format 2: packs and segments.
    Packed(PackedManifest),
}

/// What the remote gc has condemned (`KEY/gc.json`): objects no snapshot kept reached when it
/// last looked, and since when. A later gc deletes them only when they are still unreachable
/// and were condemned at least the grace period before; a snapshot never reuses a chunk of a
/// condemned pack (docs/DESIGN.md, "Remote gc").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcState {
    /// [`GC_STATE_VERSION`].
    pub version: u32,
    /// Keys relative to `KEY` (`packs/<token>.tar.zst`, `snapshots/<digest>.json`, an old
    /// `snapshots/….tar.zst`) and when they were condemned, milliseconds since the Unix epoch.
    pub condemned: std::collections::BTreeMap<String, i64>,
}

/// Why a pointer could not be used.
#[derive(Debug)]
pub(super) enum Unreadable {
    Newer(u32),
    Garbage(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Newer(v) => write!(
                f,
                "the pointer has format version {v}, newer than this warmcache understands \
                 ({POINTER_VERSION}); upgrade warmcache"
            ),
            Unreadable::Garbage(reason) => write!(f, "unreadable pointer: {reason}"),
        }
    }
}

pub(super) fn parse_pointer(bytes: &[u8]) -> std::result::Result<Pointer, Unreadable> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let version = serde_json::from_slice::<Versioned>(bytes)
        .map_err(|e| Unreadable::Garbage(e.to_string()))?
        .version;
    if version > POINTER_VERSION {
        return Err(Unreadable::Newer(version));
    }
    let pointer: Pointer = serde_json::from_slice(bytes).map_err(|e| Unreadable::Garbage(e.to_string()))?;
    if pointer.version != POINTER_VERSION || crate::ids::ArtifactId::new(&pointer.digest).is_err() {
        return Err(Unreadable::Garbage(format!(
            "version {} with digest `{}`",
            pointer.version, pointer.digest
        )));
    }
    Ok(pointer)
}

/// Reads `snapshots/<digest>.json` in either format, for the snapshot `digest` (the pointer's,
/// or the one a snapshot is about to write). The names it holds are checked here, so every key
/// it leads to is one of this snapshot key's own objects; the content is checked later, as it
/// is read ([`TreeCheck`], chunk digests).
pub(super) fn parse_manifest(bytes: &[u8], digest: &str) -> std::result::Result<AnyManifest, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let version = serde_json::from_slice::<Versioned>(bytes)
        .map_err(|e| format!("unreadable snapshot manifest: {e}"))?
        .version;
    let manifest = match version {
        ARCHIVE_MANIFEST_VERSION => AnyManifest::Archive(
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot manifest: {e}"))?,
        ),
        SNAPSHOT_MANIFEST_VERSION => AnyManifest::Packed(
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot manifest: {e}"))?,
        ),
        other => {
            return Err(format!(
                "snapshot manifest format version {other} is not one this warmcache reads \
                 ({ARCHIVE_MANIFEST_VERSION} or {SNAPSHOT_MANIFEST_VERSION}); upgrade warmcache"
            ));
        }
    };
    let described = match &manifest {
        AnyManifest::Archive(m) => &m.digest,
        AnyManifest::Packed(m) => &m.digest,
    };
    if described != digest {
        return Err(format!(
            "the manifest describes snapshot {described}, not {digest} as the pointer says"
        ));
    }
    match &manifest {
        AnyManifest::Archive(m) => check_archive_name(m)?,
        AnyManifest::Packed(m) => check_pack_names(m)?,
    }
    Ok(manifest)
}

fn check_archive_name(manifest: &ArchiveManifest) -> std::result::Result<(), String> {
    // The archive must be one of this key's snapshots, not any object of the bucket. Its name
    // starts with the digest when the tree was hashed before the upload began, and is a token
    // alone when the digest was computed while the archive streamed (S3 fixes the key first);
    // the archive's BLAKE3 in this manifest is what ties it to the tree.
    let name = manifest.archive.strip_prefix(&format!("{SNAPSHOTS}/"));
    let valid_name = name.is_some_and(|n| {
        n.len() > ".tar.zst".len() && n.ends_with(".tar.zst") && !n.contains('/') && !n.starts_with('.')
    });
    if !valid_name || manifest.archive_format != Format::TarZst {
        return Err(format!(
            "the manifest names an unexpected archive `{}` ({})",
            manifest.archive, manifest.archive_format
        ));
    }
    Ok(())
}

fn check_pack_names(manifest: &PackedManifest) -> std::result::Result<(), String> {
    for pack in &manifest.packs {
        if !is_pack_token(&pack.token) {
            return Err(format!("the manifest names an unexpected pack `{}`", pack.token));
        }
    }
    for segment in &manifest.segments {
        if manifest.pack(&segment.pack).is_none() {
            return Err(format!(
                "a manifest segment is in pack `{}`, which the manifest does not list",
                segment.pack
            ));
        }
        if segment.range[0] >= segment.range[1] {
            return Err(format!(
                "a manifest segment has an empty range {:?}",
                segment.range
            ));
        }
    }
    Ok(())
}

impl PackedManifest {
    /// The listed pack with this token.
    pub fn pack(&self, token: &str) -> Option<&PackRef> {
        self.packs.iter().find(|p| p.token == token)
    }
}

/// Checks, entry by entry, that the segments of a [`PackedManifest`] describe the tree its
/// digest names: every chunk in a listed pack, chunks adding up to each file's size, and the
/// entries hashing to the digest. Only then may anything be extracted.
pub struct TreeCheck<'a> {
    manifest: &'a PackedManifest,
    hasher: ManifestHasher,
    counts: (u64, u64),
}

impl<'a> TreeCheck<'a> {
    /// Starts checking the entries of `manifest`.
    pub fn new(manifest: &'a PackedManifest) -> std::result::Result<Self, String> {
        let hasher = ManifestHasher::new(manifest.files, manifest.bytes)
            .map_err(|e| format!("cannot start the tree digest: {e}"))?;
        Ok(Self {
            manifest,
            hasher,
            counts: (0, 0),
        })
    }

    /// Adds the next entry (in manifest order).
    pub fn push(&mut self, entry: &SegmentEntry) -> std::result::Result<(), String> {
        let mut total = 0u64;
        for chunk in &entry.chunks {
            if self.manifest.pack(&chunk.pack).is_none() {
                return Err(format!(
                    "`{}` has a chunk in pack `{}`, which the manifest does not list",
                    entry.path, chunk.pack
                ));
            }
            if chunk.frame[0] >= chunk.frame[1] || chunk.blake3.is_none() && entry.chunks.len() != 1 {
                return Err(format!("`{}` has a malformed chunk", entry.path));
            }
            total = total.saturating_add(chunk.len);
        }
        let wants_chunks = entry.kind == EntryKind::File;
        if (wants_chunks && total != entry.size) || (!wants_chunks && !entry.chunks.is_empty()) {
            return Err(format!(
                "the chunks of `{}` hold {total} bytes, not its {} bytes",
                entry.path, entry.size
            ));
        }
        match entry.kind {
            EntryKind::Dir => self.counts.0 += 1,
            EntryKind::Symlink => self.counts.1 += 1,
            EntryKind::File => {}
        }
        self.hasher.push(entry.hasher_entry()).map_err(|e| e.to_string())
    }

    /// Whether the entries hash to the manifest's digest and match its counts.
    pub fn finish(self) -> std::result::Result<(), String> {
        let (dirs, symlinks) = self.counts;
        if (dirs, symlinks) != (self.manifest.dirs, self.manifest.symlinks) {
            return Err(format!(
                "the segments list {dirs} directories and {symlinks} symlinks, the manifest says {} and {}",
                self.manifest.dirs, self.manifest.symlinks
            ));
        }
        match self.hasher.finish() {
            Some(id) if id.as_str() == self.manifest.digest => Ok(()),
            Some(id) => Err(format!(
                "the segments describe tree {id}, not {} as the manifest says",
                self.manifest.digest
            )),
            None => Err(format!(
                "the segments do not add up to the manifest's {} files and {} bytes",
                self.manifest.files, self.manifest.bytes
            )),
        }
    }
}

pub(super) fn describe_pointer(pointer: Option<&Pointer>) -> String {
    match pointer {
        Some(p) => format!(
            "snapshot {} of {} files, {} bytes, from {}",
            p.digest, p.files, p.bytes, p.host
        ),
        None => "the pointer is now missing or unreadable".to_owned(),
    }
}

/// This machine's name, for pointers and manifests (informational only).
pub(super) fn host_name() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// 16 hex digits unique to this call: process, time, a counter and the host, hashed.
pub(super) fn unique_token() -> String {
    let seed = format!("{}|{}", crate::fs::unique_name(""), host_name());
    blake3::hash(seed.as_bytes()).to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(files: u64, bytes: u64) -> Pointer {
        Pointer {
            version: POINTER_VERSION,
            digest: "a".repeat(64),
            files,
            bytes,
            created_at_ms: 0,
            host: "h".into(),
            nonce: "n".into(),
        }
    }

    #[test]
    fn pointers_are_versioned() {
        let p = pointer(1, 2);
        let bytes = serde_json::to_vec(&p).unwrap();
        assert_eq!(parse_pointer(&bytes).unwrap(), p);
        let mut newer = serde_json::to_value(&p).unwrap();
        newer["version"] = 2.into();
        assert!(matches!(
            parse_pointer(newer.to_string().as_bytes()),
            Err(Unreadable::Newer(2))
        ));
        assert!(matches!(parse_pointer(b"{}"), Err(Unreadable::Garbage(_))));
    }

    #[test]
    fn manifests_must_name_an_archive_of_their_own_snapshot() {
        let p = pointer(1, 2);
        let manifest = ArchiveManifest {
            version: ARCHIVE_MANIFEST_VERSION,
            digest: p.digest.clone(),
            files: 1,
            dirs: 0,
            symlinks: 0,
            bytes: 2,
            archive: format!("snapshots/{}-0123.tar.zst", p.digest),
            archive_format: Format::TarZst,
            archive_bytes: 10,
            archive_blake3: "b".repeat(64),
            created_at_ms: 0,
            host: "h".into(),
        };
        let ok = serde_json::to_vec(&manifest).unwrap();
        assert!(parse_manifest(&ok, &p.digest).is_ok());
        for archive in [
            "other/key.tar.zst",
            "snapshots/../../x.tar.zst",
            "snapshots/x/y.tar.zst",
        ] {
            let mut bad = manifest.clone();
            bad.archive = archive.into();
            let err = parse_manifest(&serde_json::to_vec(&bad).unwrap(), &p.digest).unwrap_err();
            assert!(err.contains("unexpected archive"), "{err}");
        }
        assert!(parse_manifest(&ok, &"c".repeat(64)).unwrap_err().contains("not"));
    }
}
