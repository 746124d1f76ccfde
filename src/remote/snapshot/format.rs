//! What a snapshot key holds: the pointer and the snapshot manifests (their format versions,
//! keys and validation). The layout is described in [`super`].

use serde::{Deserialize, Serialize};

use crate::archive::Format;
use crate::remote::RemoteUrl;

/// The format version of `pointer.json`.
pub const POINTER_VERSION: u32 = 1;
/// The format version of `snapshots/<digest>.json`.
pub const SNAPSHOT_MANIFEST_VERSION: u32 = 1;

const POINTER: &str = "pointer.json";
pub(super) const SNAPSHOTS: &str = "snapshots";

/// `KEY/pointer.json`.
pub(super) fn pointer_key(url: &RemoteUrl) -> String {
    url.join(POINTER)
}

/// `KEY/snapshots/<digest>.json`.
pub(super) fn manifest_key(url: &RemoteUrl, digest: &str) -> String {
    url.join(&format!("{SNAPSHOTS}/{digest}.json"))
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

/// What `KEY/snapshots/<digest>.json` says about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// [`SNAPSHOT_MANIFEST_VERSION`].
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

pub(super) fn parse_manifest(
    bytes: &[u8],
    pointer: &Pointer,
) -> std::result::Result<SnapshotManifest, String> {
    let manifest: SnapshotManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot manifest: {e}"))?;
    if manifest.version != SNAPSHOT_MANIFEST_VERSION {
        return Err(format!(
            "snapshot manifest format version {} is not the one this warmcache reads ({SNAPSHOT_MANIFEST_VERSION})",
            manifest.version
        ));
    }
    if manifest.digest != pointer.digest {
        return Err(format!(
            "the manifest describes snapshot {}, not {} as the pointer says",
            manifest.digest, pointer.digest
        ));
    }
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
    Ok(manifest)
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
        let manifest = SnapshotManifest {
            version: SNAPSHOT_MANIFEST_VERSION,
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
        assert!(parse_manifest(&ok, &p).is_ok());
        for archive in [
            "other/key.tar.zst",
            "snapshots/../../x.tar.zst",
            "snapshots/x/y.tar.zst",
        ] {
            let mut bad = manifest.clone();
            bad.archive = archive.into();
            let err = parse_manifest(&serde_json::to_vec(&bad).unwrap(), &p).unwrap_err();
            assert!(err.contains("unexpected archive"), "{err}");
        }
        let mut other = p.clone();
        other.digest = "c".repeat(64);
        assert!(parse_manifest(&ok, &other).unwrap_err().contains("not"));
    }
}
