//! Shared artifacts: machines that share a bucket share what they built.
//!
//! DESIGN.md, "Remote is advisory": what comes from the remote is used only once verified, and a
//! remote that is down, slow or corrupt costs a warning and a local build, never a wrong artifact.
//!
//! # Remote layout (format 1), under the URL's prefix
//!
//! ```text
//! v1/artifacts/<id>.json                    artifact description (ArtifactDoc)
//! v1/artifacts/<id>/<archive-b3>.tar.zst    its content as a standard tar.zst
//! v1/entries/<name-b3>/<fingerprint>.json   fingerprint index (IndexDoc)
//! ```
//!
//! - A directory artifact's archive holds the tree at its root (`zstd -d | tar -x` gives the
//!   tree back); a single-file artifact's archive holds one regular file named `content`, whose
//!   mode carries the executable bit. The description says which kind it is.
//! - The archive is named by its own BLAKE3, not only by the artifact id: archive bytes differ
//!   between machines (modification times, zstd versions), and S3 multipart uploads have no
//!   create-only completion, so two pushers of one artifact under one fixed name could leave
//!   bytes that disagree with the description. Named by digest, identical bytes race harmlessly
//!   and different bytes never collide; the description (written create-only, atomically, after
//!   its archive) decides which archive is the artifact's.
//! - Entry names are hashed into keys because they may hold any character; the index object
//!   repeats the name, and a pull checks it. `<archive-b3>` and `<name-b3>` are the first 32 hex
//!   digits (128 bits) of BLAKE3 digests: plenty to never collide, and short enough that stores
//!   which keep keys in file names (255 bytes) accept them; the description holds the archive's
//!   full digest, which is what a download is verified against.
//! - Every write is create-only: nothing on the remote is ever overwritten. Objects are written
//!   archive, then description, then index, so a reader that finds an index finds the rest.
//!
//! A pull trusts nothing it downloads: the archive must hash to the digest in the description,
//! extraction is hostile-input-safe and bounded by the sizes the description declares, and the
//! extracted content must hash to the artifact id the index names
//! ([`crate::store::Store::publish_staged_as`]) before anything is published or recorded.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Remote, RemoteError, RemoteSettings, RemoteUrl};
use crate::archive::Format;
use crate::ids::{ArtifactId, EntryName, Fingerprint};
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

type Result<T, E = BadObject> = std::result::Result<T, E>;

/// A remote object that is not what warmcache wrote there (undecodable, another format, or
/// inconsistent with its key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{target}: {detail}; this remote object is unusable (warmcache never overwrites remote \
     objects: delete it on the remote to let a new push replace it)"
)]
pub struct BadObject {
    /// The object.
    pub target: String,
    /// What is wrong with it.
    pub detail: String,
}

/// A remote for shared artifacts, with the policy of the caller.
#[derive(Clone)]
pub struct Sharing {
    remote: Remote,
    url: RemoteUrl,
    /// Push what `ensure` builds locally (`--push`, or `remote.push = true`).
    pub push: bool,
    /// Make remote problems errors instead of warnings.
    pub strict: bool,
    warn: Arc<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharing")
            .field("url", &self.url.to_string())
            .field("push", &self.push)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

impl Sharing {
    /// Connects to the bucket of `url`; artifacts live under its key prefix. Pull only and
    /// advisory by default; degraded-mode warnings go to `tracing` until [`Self::on_warning`].
    pub fn new(url: RemoteUrl, settings: RemoteSettings) -> Result<Self, RemoteError> {
        let remote = Remote::new(&url, settings)?;
        Ok(Self {
            remote,
            url,
            push: false,
            strict: false,
            warn: Arc::new(|message| tracing::warn!("{message}")),
        })
    }

    /// Where degraded-mode warnings go (the command line prints them on stderr, always).
    pub fn on_warning(mut self, warn: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.warn = Arc::new(warn);
        self
    }

    /// The URL (bucket and prefix).
    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The transport.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    fn key(&self, relative: &str) -> String {
        self.url.join(&format!("{LAYOUT_DIR}/{relative}"))
    }

    /// `v1/artifacts/<id>.json`.
    pub fn artifact_key(&self, id: &ArtifactId) -> String {
        self.key(&format!("artifacts/{id}.json"))
    }

    /// `v1/artifacts/<id>/<archive-b3>.tar.zst`.
    pub fn archive_key(&self, id: &ArtifactId, archive_blake3: &str) -> String {
        let short = archive_blake3.get(..KEY_DIGITS).unwrap_or(archive_blake3);
        self.key(&format!("artifacts/{id}/{short}.tar.zst"))
    }

    /// `v1/entries/<name-b3>/<fingerprint>.json`.
    pub fn index_key(&self, name: &EntryName, fingerprint: &Fingerprint) -> String {
        let name_digest = blake3::hash(name.as_str().as_bytes()).to_hex();
        self.key(&format!(
            "entries/{}/{fingerprint}.json",
            &name_digest[..KEY_DIGITS]
        ))
    }

    /// Reports a degraded-mode warning.
    pub fn warn(&self, message: &str) {
        (self.warn)(message);
    }
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

/// What happened to the fingerprint index during a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IndexOutcome {
    /// This push created it.
    Created,
    /// It was already there (naming `artifact`, which differs from ours when another machine
    /// built the same inputs into different bytes); left as it was.
    Present {
        /// The artifact the existing index names (none when it vanished as it was read).
        artifact: Option<ArtifactId>,
    },
    /// Not written.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The remote.
    pub url: String,
    /// The entry.
    pub name: EntryName,
    /// The artifact pushed.
    pub artifact: ArtifactId,
    /// The fingerprint it was built from, if it was built.
    pub fingerprint: Option<Fingerprint>,
    /// Whether this push wrote the artifact's description (false: the remote had it).
    pub artifact_created: bool,
    /// Archive bytes uploaded (0 when the remote already had the artifact).
    pub uploaded_bytes: u64,
    /// The fingerprint index.
    pub index: IndexOutcome,
}

impl PushReport {
    /// Whether the push wrote nothing (the remote had everything).
    pub fn wrote_nothing(&self) -> bool {
        !self.artifact_created && self.uploaded_bytes == 0 && self.index != IndexOutcome::Created
    }
}

/// An artifact obtained from the remote and recorded as the entry's last good artifact.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    /// The remote.
    pub url: String,
    /// The entry.
    pub name: EntryName,
    /// The fingerprint it was built from.
    pub fingerprint: Fingerprint,
    /// The artifact id (verified).
    pub artifact: ArtifactId,
    /// Its content path.
    pub path: PathBuf,
    /// Archive bytes downloaded (0 when the artifact was already in the local store).
    pub downloaded_bytes: u64,
    /// Who pushed it.
    pub pushed_by: String,
    /// When (unix ms).
    pub pushed_at: i64,
}

/// The remote's part in one `ensure`, reported in its result (`"remote"` in JSON).
#[derive(Debug, Clone, Serialize)]
pub struct RemoteActivity {
    /// The remote.
    pub url: String,
    /// The artifact was downloaded from the remote (verified) instead of being built: the
    /// status is `built`, its source the remote.
    pub pulled: bool,
    /// What pushing the local build did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed: Option<PushReport>,
    /// Remote problems this call ran degraded through (each also printed as a warning).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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

/// An empty activity record for `sharing` (nothing done yet).
pub fn activity(sharing: &Sharing) -> RemoteActivity {
    RemoteActivity {
        url: sharing.url().to_string(),
        pulled: false,
        pushed: None,
        warnings: Vec::new(),
    }
}

/// Decodes an index object and checks that it is the one for `name` and `fingerprint`.
pub fn parse_index(
    bytes: &[u8],
    target: &str,
    name: &EntryName,
    fingerprint: &Fingerprint,
) -> Result<IndexDoc> {
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

/// Decodes an artifact description and checks that it describes `id`.
pub fn parse_artifact(bytes: &[u8], target: &str, id: &ArtifactId) -> Result<ArtifactDoc> {
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
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], target: &str) -> Result<T> {
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

/// The bytes of a document; an encoding failure is an error, never an empty object.
pub fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(io::Error::other)
}

/// How long a push or pull leases the artifact it reads: past any transfer's deadline.
pub fn lease_time(sharing: &Sharing) -> Duration {
    sharing.remote().settings().overall_timeout * 2 + Duration::from_secs(60)
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

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    /// The digest of what was written so far.
    pub hasher: blake3::Hasher,
    /// Bytes written so far.
    pub bytes: u64,
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

    fn sharing(url: &str) -> Sharing {
        Sharing::new(RemoteUrl::parse(url).unwrap(), RemoteSettings::default()).unwrap()
    }

    fn digest(s: &str) -> String {
        blake3::hash(s.as_bytes()).to_hex().to_string()
    }

    #[test]
    fn keys_live_under_the_prefix_and_hash_names() {
        let s = sharing("s3://bucket/team/cache");
        let id = ArtifactId::new(&digest("a")).unwrap();
        assert_eq!(s.artifact_key(&id), format!("team/cache/v1/artifacts/{id}.json"));
        let archive = digest("b");
        assert_eq!(
            s.archive_key(&id, &archive),
            format!("team/cache/v1/artifacts/{id}/{}.tar.zst", &archive[..32])
        );
        let fp = Fingerprint::new(&digest("f")).unwrap();
        let key = s.index_key(&EntryName::new("bundles/x@1").unwrap(), &fp);
        let name_digest = digest("bundles/x@1");
        assert_eq!(
            key,
            format!("team/cache/v1/entries/{}/{fp}.json", &name_digest[..32])
        );
        assert_eq!(
            sharing("s3://bucket").artifact_key(&id),
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
