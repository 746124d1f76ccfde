//! The shared-artifact protocol: the key scheme, the JSON objects and their validation, the
//! format version, and the archive of a single-file artifact. A leaf: it knows the remote layout
//! and nothing of the local cache (see the layout in [`super`]).

use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::Format;
use crate::ids::{ArtifactId, EntryName, Fingerprint};
use crate::remote::RemoteUrl;
use crate::store::ArtifactKind;

/// The version of the remote layout and of its JSON objects.
pub const SHARE_FORMAT: u32 = 1;
/// The layout's directory under the URL's prefix.
const LAYOUT_DIR: &str = "v1";
/// The name of the one entry in a single-file artifact's archive.
pub const SINGLE_FILE_ENTRY: &str = "content";
/// Hex digits of a digest used in an object key (see the module documentation).
const KEY_DIGITS: usize = 32;
/// zstd level of pushed archives: fast, and most of the gain.
pub const ZSTD_LEVEL: i32 = 3;

/// A remote object that is not what warmcache wrote there (undecodable, another format, or
/// inconsistent with its key).
#[derive(Debug, thiserror::Error)]
#[error("{target}: {detail}")]
pub struct BadObject {
    /// The object.
    pub target: String,
    /// What is wrong with it.
    pub detail: String,
}

fn key(url: &RemoteUrl, relative: &str) -> String {
    url.join(&format!("{LAYOUT_DIR}/{relative}"))
}

/// `v1/artifacts/<id>.json` under `url`.
pub fn artifact_key(url: &RemoteUrl, id: &ArtifactId) -> String {
    key(url, &format!("artifacts/{id}.json"))
}

/// `v1/artifacts/<id>/<archive-b3>.tar.zst` under `url`.
pub fn archive_key(url: &RemoteUrl, id: &ArtifactId, archive_blake3: &str) -> String {
    let short = archive_blake3.get(..KEY_DIGITS).unwrap_or(archive_blake3);
    key(url, &format!("artifacts/{id}/{short}.tar.zst"))
}

/// `v1/entries/<name-b3>/<fingerprint>.json` under `url`.
pub fn index_key(url: &RemoteUrl, name: &EntryName, fingerprint: &Fingerprint) -> String {
    let name_digest = blake3::hash(name.as_str().as_bytes()).to_hex();
    key(
        url,
        &format!("entries/{}/{fingerprint}.json", &name_digest[..KEY_DIGITS]),
    )
}

/// The description of a shared artifact (`artifacts/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDoc {
    /// [`SHARE_FORMAT`].
    pub format: u32,
    /// The artifact id (BLAKE3 of its store manifest).
    pub id: ArtifactId,
    /// File or tree.
    pub kind: ArtifactKind,
    /// Total bytes of its files.
    pub size: u64,
    /// Number of regular files.
    pub files: u64,
    /// Manifest entries (files, directories, symlinks).
    pub entries: u64,
    /// The archive holding the content.
    pub archive: ArchiveDoc,
}

/// The archive of a shared artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveDoc {
    /// Always `tar.zst`.
    pub format: Format,
    /// BLAKE3 of the archive's bytes (also its object name).
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A fingerprint index object (`entries/<blake3(name)>/<fingerprint>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDoc {
    /// [`SHARE_FORMAT`].
    pub format: u32,
    /// The entry name.
    pub name: EntryName,
    /// The recipe fingerprint the artifact was built from.
    pub fingerprint: Fingerprint,
    /// The artifact id.
    pub artifact: ArtifactId,
    /// When it was pushed (unix ms).
    pub pushed_at: i64,
    /// The host that pushed it.
    pub host: String,
}

/// Decodes and checks an index object: it must be for `name` and `fingerprint` and name an
/// artifact id.
pub fn parse_index(
    bytes: &[u8],
    target: &str,
    name: &EntryName,
    fingerprint: &Fingerprint,
) -> Result<IndexDoc, BadObject> {
    let bad = |detail: String| BadObject {
        target: target.to_string(),
        detail,
    };
    let doc: IndexDoc = decode(bytes, target)?;
    if &doc.name != name || &doc.fingerprint != fingerprint {
        return Err(bad(format!(
            "the index is for entry `{}` fingerprint {}, not `{name}` {fingerprint}",
            doc.name, doc.fingerprint
        )));
    }
    Ok(doc)
}

/// Decodes and checks an artifact description: it must describe `id` and name a tar.zst by its
/// BLAKE3.
pub fn parse_artifact(bytes: &[u8], target: &str, id: &ArtifactId) -> Result<ArtifactDoc, BadObject> {
    let bad = |detail: String| BadObject {
        target: target.to_string(),
        detail,
    };
    let doc: ArtifactDoc = decode(bytes, target)?;
    if &doc.id != id {
        return Err(bad(format!("it describes artifact {}, not {id}", doc.id)));
    }
    if doc.archive.format != Format::TarZst || ArtifactId::new(&doc.archive.blake3).is_err() {
        return Err(bad(
            "its archive is not a tar.zst named by a BLAKE3 digest".to_string()
        ));
    }
    Ok(doc)
}

/// Decodes a JSON object of this layout, checking its format version first so that a newer
/// warmcache's objects get a clear message rather than a field error.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], target: &str) -> Result<T, BadObject> {
    #[derive(Deserialize)]
    struct Versioned {
        format: u32,
    }
    let bad = |detail: String| BadObject {
        target: target.to_string(),
        detail,
    };
    let version: Versioned =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a warmcache object ({e})")))?;
    if version.format != SHARE_FORMAT {
        return Err(bad(format!(
            "format {} is not supported (this warmcache reads format {SHARE_FORMAT}; upgrade it)",
            version.format
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| bad(format!("undecodable ({e})")))
}

/// Pretty JSON of a layout object; an encoding failure is an error, never an empty object.
pub fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(io::Error::other)
}

/// This machine's name, for the index (who pushed what); best effort.
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            if let Ok(name) = std::str::from_utf8(&buf[..len])
                && !name.is_empty()
            {
                return name.to_string();
            }
        }
    }
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A tar.zst holding one regular file named [`SINGLE_FILE_ENTRY`], with mode 0755 or 0644 by
/// its executable bit. (The archive module archives directories; a single-file artifact is not
/// one, and staging a directory around it would mean copying or linking store content.)
pub fn single_file_tar_zst(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let file = fs_err::File::open(path)?;
    let meta = file.metadata()?;
    let mut encoder = zstd::Encoder::new(out, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(if crate::fs::is_executable(&meta) {
        0o755
    } else {
        0o644
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(meta.len());
    // The store's content never changes, so the size in the header stays true.
    builder.append_data(&mut header, SINGLE_FILE_ENTRY, io::Read::take(file, meta.len()))?;
    builder.into_inner()?.finish()?;
    Ok(())
}

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W> Hashing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        }
    }

    /// The BLAKE3 (lowercase hex) and the count of the bytes written so far.
    pub fn digest(&self) -> (String, u64) {
        (self.hasher.finalize().to_hex().to_string(), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{self, Limits};

    fn digest(s: &str) -> String {
        blake3::hash(s.as_bytes()).to_hex().to_string()
    }

    #[test]
    fn keys_live_under_the_prefix_and_hash_names() {
        let s = RemoteUrl::parse("s3://bucket/team/cache").unwrap();
        let id = ArtifactId::new(&digest("a")).unwrap();
        assert_eq!(
            artifact_key(&s, &id),
            format!("team/cache/v1/artifacts/{id}.json")
        );
        let archive = digest("b");
        assert_eq!(
            archive_key(&s, &id, &archive),
            format!("team/cache/v1/artifacts/{id}/{}.tar.zst", &archive[..32])
        );
        let fp = Fingerprint::new(&digest("f")).unwrap();
        let key = index_key(&s, &EntryName::new("bundles/x@1").unwrap(), &fp);
        let name_digest = digest("bundles/x@1");
        assert_eq!(
            key,
            format!("team/cache/v1/entries/{}/{fp}.json", &name_digest[..32])
        );
        assert_eq!(
            artifact_key(&RemoteUrl::parse("s3://bucket").unwrap(), &id),
            format!("v1/artifacts/{id}.json")
        );
    }

    #[test]
    fn documents_check_version_name_and_ids() {
        let fp = Fingerprint::new(&digest("f")).unwrap();
        let a = EntryName::new("a").unwrap();
        let doc = IndexDoc {
            format: SHARE_FORMAT,
            name: a.clone(),
            fingerprint: fp.clone(),
            artifact: ArtifactId::new(&digest("0")).unwrap(),
            pushed_at: 1,
            host: "h".into(),
        };
        let bytes = to_json(&doc).unwrap();
        assert_eq!(parse_index(&bytes, "t", &a, &fp).unwrap(), doc);
        let b = EntryName::new("b").unwrap();
        let err = parse_index(&bytes, "t", &b, &fp).unwrap_err().to_string();
        assert!(err.contains("not `b`"), "{err}");
        let newer = to_json(&IndexDoc {
            format: 2,
            ..doc.clone()
        })
        .unwrap();
        let err = parse_index(&newer, "t", &a, &fp).unwrap_err().to_string();
        assert!(err.contains("format 2 is not supported"), "{err}");
        let text = String::from_utf8(bytes).unwrap();
        let bad_id = text.replace(doc.artifact.as_str(), "../../x");
        assert!(parse_index(bad_id.as_bytes(), "t", &a, &fp).is_err());
        assert!(parse_index(b"{nope", "t", &a, &fp).is_err());
    }

    #[test]
    fn single_file_archive_round_trips_kind_and_exec_bit() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        for exec in [false, true] {
            let src = tmp.path().join(format!("src-{exec}"));
            std::fs::write(&src, b"#!/bin/sh\necho hi\n").unwrap();
            let mode = if exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode)).unwrap();
            let archive_path = tmp.path().join(format!("a-{exec}.tar.zst"));
            let mut out = std::fs::File::create(&archive_path).unwrap();
            single_file_tar_zst(&src, &mut out).unwrap();
            drop(out);
            let dest = tmp.path().join(format!("x-{exec}"));
            std::fs::create_dir(&dest).unwrap();
            let report =
                archive::extract(&archive_path, Format::TarZst, &dest, &Limits::default(), &|_| {}).unwrap();
            assert_eq!((report.files, report.dirs, report.symlinks), (1, 0, 0));
            let meta = std::fs::metadata(dest.join(SINGLE_FILE_ENTRY)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o111 != 0, exec);
            assert_eq!(
                std::fs::read(dest.join(SINGLE_FILE_ENTRY)).unwrap(),
                std::fs::read(&src).unwrap()
            );
        }
    }
}
