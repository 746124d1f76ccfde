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

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{CondPut, NoProgress, PutOutcome, Remote, RemoteError, RemoteSettings, RemoteUrl};
use crate::archive::{self, ArchiveError, Format, Limits};
use crate::cache::{Cache, CacheError};
use crate::catalog::now_ms;
use crate::progress::Progress;
use crate::store::{ArtifactKind, StoreError, content_path_in, is_artifact_id};

/// The version of the remote layout and of its JSON objects.
pub const SHARE_FORMAT: u32 = 1;
/// The layout's directory under the URL's prefix.
const LAYOUT_DIR: &str = "v1";
/// The name of the one entry in a single-file artifact's archive.
const SINGLE_FILE_ENTRY: &str = "content";
/// Hex digits of a digest used in an object key (see the module documentation).
const KEY_DIGITS: usize = 32;
/// zstd level of pushed archives: fast, and most of the gain.
const ZSTD_LEVEL: i32 = 3;

type Result<T, E = ShareError> = std::result::Result<T, E>;

/// Why sharing an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The remote could not be reached or refused the request (the message names the object).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A remote object is not what warmcache wrote there (undecodable, another format, or
    /// inconsistent with its key).
    #[error(
        "{target}: {detail}; this remote object is unusable (warmcache never overwrites remote \
         objects: delete it on the remote to let a new push replace it)"
    )]
    BadObject {
        /// The object.
        target: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The index names an artifact whose description is missing.
    #[error(
        "{target} names artifact {artifact}, but its description {missing} does not exist; push the \
         entry again from a machine that has it"
    )]
    MissingArtifact {
        /// The index object.
        target: String,
        /// The artifact it names.
        artifact: String,
        /// The description that should exist.
        missing: String,
    },
    /// The downloaded archive could not be extracted safely.
    #[error("the shared artifact {target} could not be extracted (nothing from it was kept): {error}")]
    Archive {
        /// The archive object.
        target: String,
        /// What went wrong (in the message, so that one line says it all).
        error: ArchiveError,
    },
    /// The downloaded content is not the artifact the index claims.
    #[error(
        "{target} claims artifact {expected}, but its content is artifact {actual}; refused, nothing \
         was published or recorded"
    )]
    WrongContent {
        /// The object that made the claim.
        target: String,
        /// The artifact id claimed.
        expected: String,
        /// The id the content hashes to.
        actual: String,
    },
    /// No remote is configured where one is required.
    #[error(
        "no remote is configured; give --remote s3://bucket/prefix, set WARMCACHE_REMOTE, or add \
         `[remote] url = \"s3://...\"` to warmcache.toml"
    )]
    NoRemote,
    /// A local cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Local staging for a transfer failed (the io error names the path).
    #[error("{op} for {target}: {error}")]
    Local {
        /// The remote object involved.
        target: String,
        /// What was being done.
        op: &'static str,
        /// The underlying error (in the message, so that one line says it all).
        error: io::Error,
    },
}

impl From<StoreError> for ShareError {
    fn from(e: StoreError) -> Self {
        ShareError::Cache(CacheError::Store(e))
    }
}

impl ShareError {
    /// Whether the problem is with this machine's cache rather than with the remote or what it
    /// holds. Local problems are real errors; remote ones are advisory unless `--strict`.
    pub fn is_local(&self) -> bool {
        match self {
            ShareError::Cache(_) | ShareError::Local { .. } | ShareError::NoRemote => true,
            // A local file problem during a transfer (staging) is local too.
            ShareError::Remote(RemoteError::Io { .. }) => true,
            _ => false,
        }
    }
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
    pub fn new(url: RemoteUrl, settings: RemoteSettings) -> Result<Self> {
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
    pub fn artifact_key(&self, id: &str) -> String {
        self.key(&format!("artifacts/{id}.json"))
    }

    /// `v1/artifacts/<id>/<archive-b3>.tar.zst`.
    pub fn archive_key(&self, id: &str, archive_blake3: &str) -> String {
        let short = archive_blake3.get(..KEY_DIGITS).unwrap_or(archive_blake3);
        self.key(&format!("artifacts/{id}/{short}.tar.zst"))
    }

    /// `v1/entries/<name-b3>/<fingerprint>.json`.
    pub fn index_key(&self, name: &str, fingerprint: &str) -> String {
        let name_digest = blake3::hash(name.as_bytes()).to_hex();
        self.key(&format!(
            "entries/{}/{fingerprint}.json",
            &name_digest[..KEY_DIGITS]
        ))
    }

    fn warn(&self, message: &str) {
        (self.warn)(message);
    }
}

/// The description of a shared artifact (`artifacts/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDoc {
    /// [`SHARE_FORMAT`].
    pub format: u32,
    /// The artifact id (BLAKE3 of its store manifest).
    pub id: String,
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
    pub name: String,
    /// The recipe fingerprint the artifact was built from.
    pub fingerprint: String,
    /// The artifact id.
    pub artifact: String,
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
        /// The artifact the existing index names.
        artifact: String,
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
    pub name: String,
    /// The artifact pushed.
    pub artifact: String,
    /// The fingerprint it was built from, if it was built.
    pub fingerprint: Option<String>,
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
    pub name: String,
    /// The fingerprint it was built from.
    pub fingerprint: String,
    /// The artifact id (verified).
    pub artifact: String,
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

/// Pushes the last good artifact of entry `name` and, when it was built (it has a fingerprint),
/// the index that lets `ensure` on other machines find it. An imported entry has no
/// fingerprint: only the artifact goes up, and the report says so.
pub fn push(cache: &Cache, name: &str, sharing: &Sharing) -> Result<PushReport> {
    crate::name::validate(name).map_err(CacheError::from)?;
    let (entry, _lease) = {
        let _op = cache.operation()?;
        let entry = cache
            .catalog()
            .entry(name)
            .map_err(CacheError::from)?
            .ok_or_else(|| CacheError::NoEntry {
                name: name.to_string(),
                root: cache.root().to_path_buf(),
            })?;
        let artifact = match &entry.artifact {
            Some(id) if cache.store().is_present(id) => id.clone(),
            _ => {
                return Err(CacheError::NoArtifact {
                    name: name.to_string(),
                }
                .into());
            }
        };
        // Held against garbage collection while the content is read, without holding the root
        // lock (and so collection) off for the length of an upload.
        let lease = cache.lease(&artifact, lease_time(sharing))?;
        (entry, lease)
    };
    let artifact = entry.artifact.clone().unwrap_or_default();
    push_artifact(cache, name, entry.fingerprint.as_deref(), &artifact, sharing)
}

/// Pushes a published artifact and its index. The caller keeps the artifact alive (an entry
/// naming it, or a lease).
fn push_artifact(
    cache: &Cache,
    name: &str,
    fingerprint: Option<&str>,
    artifact: &str,
    sharing: &Sharing,
) -> Result<PushReport> {
    let remote = sharing.remote();
    let mut report = PushReport {
        url: sharing.url().to_string(),
        name: name.to_string(),
        artifact: artifact.to_string(),
        fingerprint: fingerprint.map(str::to_string),
        artifact_created: false,
        uploaded_bytes: 0,
        index: IndexOutcome::Created,
    };

    let doc_key = sharing.artifact_key(artifact);
    if remote.head(&doc_key)?.is_none() {
        let (doc, archive) = write_archive(cache, artifact, &doc_key)?;
        let archive_key = sharing.archive_key(artifact, &doc.archive.blake3);
        if remote.put_file(&archive_key, archive.path(), &NoProgress)? == PutOutcome::Created {
            report.uploaded_bytes = doc.archive.size;
        }
        drop(archive);
        // Written only once its archive is complete; of two pushers, one description wins and
        // the other's archive is an unreferenced orphan.
        match remote.put_if(&doc_key, Bytes::from(to_json(&doc)), None)? {
            CondPut::Done(_) => report.artifact_created = true,
            CondPut::Conflict => {}
        }
    }

    let Some(fingerprint) = fingerprint else {
        report.index = IndexOutcome::Skipped {
            reason: format!(
                "entry `{name}` has no fingerprint (it was imported, not built by `ensure`), so only the \
                 artifact was pushed: other machines can fetch it by id, not find it by recipe"
            ),
        };
        return Ok(report);
    };
    let index_key = sharing.index_key(name, fingerprint);
    if let Some(bytes) = remote.get_bytes(&index_key)? {
        let existing = parse_index(&bytes, &remote.describe(&index_key), name, fingerprint)?;
        report.index = IndexOutcome::Present {
            artifact: existing.artifact,
        };
        return Ok(report);
    }
    let doc = IndexDoc {
        format: SHARE_FORMAT,
        name: name.to_string(),
        fingerprint: fingerprint.to_string(),
        artifact: artifact.to_string(),
        pushed_at: now_ms(),
        host: hostname(),
    };
    report.index = match remote.put_if(&index_key, Bytes::from(to_json(&doc)), None)? {
        CondPut::Done(_) => IndexOutcome::Created,
        CondPut::Conflict => match remote.get_bytes(&index_key)? {
            Some(bytes) => IndexOutcome::Present {
                artifact: parse_index(&bytes, &remote.describe(&index_key), name, fingerprint)?.artifact,
            },
            None => IndexOutcome::Present {
                artifact: String::new(),
            },
        },
    };
    Ok(report)
}

/// Writes the artifact's archive into a staging file, hashing it as it goes.
fn write_archive(cache: &Cache, artifact: &str, doc_key: &str) -> Result<(ArtifactDoc, crate::fs::Staged)> {
    let store = cache.store();
    let target = || doc_key.to_string();
    let (manifest, _) = store
        .read_manifest(artifact)
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "read the artifact's manifest",
            error,
        })?
        .ok_or_else(|| CacheError::NoArtifact {
            name: artifact.to_string(),
        })?;
    let staged = store
        .staging()
        .reserve("push")
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "reserve a staging file",
            error,
        })?;
    let file = fs_err::File::create(staged.path()).map_err(|error| ShareError::Local {
        target: target(),
        op: "create the archive",
        error,
    })?;
    let mut out = Hashing::new(file);
    let content = store.content_path(artifact);
    let written = match manifest.kind {
        ArtifactKind::Dir => archive::create_tar_zst(&content, &mut out, ZSTD_LEVEL)
            .map(drop)
            .map_err(|e| io::Error::other(e.to_string())),
        ArtifactKind::File => single_file_tar_zst(&content, &mut out),
    };
    written
        .and_then(|()| out.flush())
        .map_err(|error| ShareError::Local {
            target: target(),
            op: "write the archive",
            error,
        })?;
    let doc = ArtifactDoc {
        format: SHARE_FORMAT,
        id: artifact.to_string(),
        kind: manifest.kind,
        size: manifest.size,
        files: manifest.files,
        entries: manifest.entries.len() as u64,
        archive: ArchiveDoc {
            format: Format::TarZst,
            blake3: out.hasher.finalize().to_hex().to_string(),
            size: out.bytes,
        },
    };
    Ok((doc, staged))
}

/// A tar.zst holding one regular file named [`SINGLE_FILE_ENTRY`], with mode 0755 or 0644 by
/// its executable bit. (The archive module archives directories; a single-file artifact is not
/// one, and staging a directory around it would mean copying or linking store content.)
fn single_file_tar_zst(path: &Path, out: &mut impl Write) -> io::Result<()> {
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

/// Looks up `fingerprint` of entry `name` on the remote; on a hit, downloads the artifact,
/// verifies it (archive digest, safe bounded extraction, artifact id), publishes it and records
/// it as the entry's last good artifact with source `pull`. `Ok(None)` is a miss: the remote has
/// nothing for this fingerprint.
///
/// Callers that want at most one fetch at a time per entry hold its entry lock (`ensure` does).
pub fn pull(cache: &Cache, name: &str, fingerprint: &str, sharing: &Sharing) -> Result<Option<Pulled>> {
    crate::name::validate(name).map_err(CacheError::from)?;
    let remote = sharing.remote();
    let index_key = sharing.index_key(name, fingerprint);
    let index_target = remote.describe(&index_key);
    let Some(bytes) = remote.get_bytes(&index_key)? else {
        return Ok(None);
    };
    let index = parse_index(&bytes, &index_target, name, fingerprint)?;
    let artifact = index.artifact.clone();
    let pulled = |path, downloaded_bytes| Pulled {
        url: sharing.url().to_string(),
        name: name.to_string(),
        fingerprint: fingerprint.to_string(),
        artifact: artifact.clone(),
        path,
        downloaded_bytes,
        pushed_by: index.host.clone(),
        pushed_at: index.pushed_at,
    };

    // Already in the local store (imported, or built by another entry): verified when it was
    // published, so only the entry needs recording.
    {
        let _op = cache.operation()?;
        if cache.store().is_present(&artifact)
            && let Some(published) = present_artifact(cache, &artifact)?
        {
            cache.record(Some(name), &published, Some(fingerprint), "pull")?;
            return Ok(Some(pulled(published.path, 0)));
        }
    }

    let doc_key = sharing.artifact_key(&artifact);
    let doc_target = remote.describe(&doc_key);
    let Some(bytes) = remote.get_bytes(&doc_key)? else {
        return Err(ShareError::MissingArtifact {
            target: index_target,
            artifact,
            missing: doc_target,
        });
    };
    let doc = parse_artifact(&bytes, &doc_target, &artifact)?;
    let archive_key = sharing.archive_key(&artifact, &doc.archive.blake3);
    let archive_target = remote.describe(&archive_key);
    let local = |op| {
        let target = archive_target.clone();
        move |error| ShareError::Local { target, op, error }
    };

    let store = cache.store();
    let download = store
        .staging()
        .reserve("pull-archive")
        .map_err(local("reserve a staging file"))?;
    let got = remote.get_to_file(
        &archive_key,
        download.path(),
        Some(&doc.archive.blake3),
        &NoProgress,
    )?;
    if got.bytes != doc.archive.size {
        return Err(ShareError::BadObject {
            target: archive_target,
            detail: format!(
                "the archive is {} bytes, its description says {}",
                got.bytes, doc.archive.size
            ),
        });
    }

    let staged = store.stage("pull").map_err(ShareError::from)?;
    let content = content_path_in(&staged);
    // Bounded by what the description declares (plus tar's padding, which counts too): anything
    // larger cannot be this artifact.
    let padding = doc
        .entries
        .saturating_add(2)
        .saturating_mul(1024)
        .saturating_add(1 << 20);
    let limits = Limits {
        max_total_bytes: doc.size.saturating_add(padding),
        max_entries: doc.entries.saturating_add(1),
        max_ratio: u64::MAX,
        ratio_grace_bytes: u64::MAX,
        ..Limits::default()
    };
    let extract = |dest: &Path| {
        fs_err::create_dir(dest).map_err(local("create the extraction directory"))?;
        archive::extract(download.path(), Format::TarZst, dest, &limits, &|_| {}).map_err(|error| {
            ShareError::Archive {
                target: archive_target.clone(),
                error,
            }
        })
    };
    match doc.kind {
        ArtifactKind::Dir => {
            extract(&content)?;
        }
        ArtifactKind::File => {
            let unpack = staged.path().join("unpack");
            let report = extract(&unpack)?;
            let file = unpack.join(SINGLE_FILE_ENTRY);
            let is_file = std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
            if !is_file || report.files != 1 || report.dirs != 0 || report.symlinks != 0 {
                return Err(ShareError::BadObject {
                    target: archive_target,
                    detail: format!(
                        "a single-file artifact's archive must hold exactly one regular file named \
                         `{SINGLE_FILE_ENTRY}`"
                    ),
                });
            }
            fs_err::rename(&file, &content).map_err(local("move the extracted file"))?;
            fs_err::remove_dir(&unpack).map_err(local("remove the extraction directory"))?;
        }
    }
    drop(download);

    let _op = cache.operation()?;
    let published = match store.publish_staged_as(staged, &artifact, &Progress::none()) {
        Ok(published) => published,
        Err(StoreError::IdMismatch { expected, actual, .. }) => {
            return Err(ShareError::WrongContent {
                target: index_target,
                expected,
                actual,
            });
        }
        Err(e) => return Err(e.into()),
    };
    cache.record(Some(name), &published, Some(fingerprint), "pull")?;
    Ok(Some(pulled(published.path, got.bytes)))
}

/// The `Published` description of an artifact already in the store, from its manifest.
fn present_artifact(cache: &Cache, id: &str) -> Result<Option<crate::store::Published>> {
    let store = cache.store();
    let manifest = store.read_manifest(id).map_err(|error| ShareError::Local {
        target: id.to_string(),
        op: "read a local manifest",
        error,
    })?;
    let Some((manifest, _)) = manifest else {
        return Ok(None);
    };
    let path = store.content_path(id);
    let disk_usage = crate::fs::disk_usage(&path).unwrap_or(manifest.size);
    Ok(Some(crate::store::Published {
        id: id.to_string(),
        path,
        kind: manifest.kind,
        size: manifest.size,
        files: manifest.files,
        disk_usage,
        created: false,
    }))
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

/// `ensure`'s remote lookup, with the entry lock held and a build decided: a verified artifact
/// from the remote, or `None` to build locally. Remote problems are warnings (the returned
/// activity lists them) unless `sharing.strict`; problems with the local cache are errors.
pub fn ensure_pull(
    cache: &Cache,
    name: &str,
    fingerprint: &str,
    sharing: &Sharing,
) -> Result<(Option<Pulled>, RemoteActivity)> {
    let mut activity = activity(sharing);
    match pull(cache, name, fingerprint, sharing) {
        Ok(Some(pulled)) => {
            activity.pulled = true;
            Ok((Some(pulled), activity))
        }
        Ok(None) => Ok((None, activity)),
        Err(e) if e.is_local() || sharing.strict => Err(e),
        Err(e) => {
            let message = degraded(sharing, &e, &format!("building `{name}` locally"));
            sharing.warn(&message);
            activity.warnings.push(message);
            Ok((None, activity))
        }
    }
}

/// `ensure`'s push after a successful local build (when pushing is on): remote problems are
/// warnings unless `sharing.strict`. The artifact is the entry's last good one, so it stays
/// alive while it is read.
pub fn ensure_push(
    cache: &Cache,
    name: &str,
    fingerprint: &str,
    artifact: &str,
    sharing: &Sharing,
    activity: &mut RemoteActivity,
) -> Result<()> {
    let _lease = {
        let _op = cache.operation()?;
        if !cache.store().is_present(artifact) {
            // Replaced and collected already (another process rebuilt the entry meanwhile):
            // nothing left to push, and nothing wrong with the remote.
            return Ok(());
        }
        cache.lease(artifact, lease_time(sharing))?
    };
    match push_artifact(cache, name, Some(fingerprint), artifact, sharing) {
        Ok(report) => {
            activity.pushed = Some(report);
            Ok(())
        }
        Err(e) if e.is_local() || sharing.strict => Err(e),
        Err(e) => {
            let message = degraded(sharing, &e, &format!("`{name}` was built locally but not pushed"));
            sharing.warn(&message);
            activity.warnings.push(message);
            Ok(())
        }
    }
}

/// One line naming the remote, what happened and what was done instead.
pub fn degraded(sharing: &Sharing, err: &ShareError, fallback: &str) -> String {
    let what = match err {
        ShareError::Remote(e) if e.is_outage() => "unavailable",
        ShareError::Remote(_) => "request failed",
        _ => "unusable data",
    };
    let detail = err.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "remote {} {what}, {fallback} (ran degraded; --strict makes this an error): {detail}",
        sharing.url()
    )
}

fn parse_index(bytes: &[u8], target: &str, name: &str, fingerprint: &str) -> Result<IndexDoc> {
    let bad = |detail: String| ShareError::BadObject {
        target: target.to_string(),
        detail,
    };
    let doc: IndexDoc = decode(bytes, target)?;
    if doc.name != name || doc.fingerprint != fingerprint {
        return Err(bad(format!(
            "the index is for entry `{}` fingerprint {}, not `{name}` {fingerprint}",
            doc.name, doc.fingerprint
        )));
    }
    if !is_artifact_id(&doc.artifact) {
        return Err(bad(format!("`{}` is not an artifact id", doc.artifact)));
    }
    Ok(doc)
}

fn parse_artifact(bytes: &[u8], target: &str, id: &str) -> Result<ArtifactDoc> {
    let bad = |detail: String| ShareError::BadObject {
        target: target.to_string(),
        detail,
    };
    let doc: ArtifactDoc = decode(bytes, target)?;
    if doc.id != id {
        return Err(bad(format!("it describes artifact {}, not {id}", doc.id)));
    }
    if doc.archive.format != Format::TarZst || !is_artifact_id(&doc.archive.blake3) {
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
    let bad = |detail: String| ShareError::BadObject {
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

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain strings and numbers always serialize.
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

fn lease_time(sharing: &Sharing) -> Duration {
    sharing.remote().settings().overall_timeout * 2 + Duration::from_secs(60)
}

/// This machine's name, for the index (who pushed what); best effort.
fn hostname() -> String {
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
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
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

    fn sharing(url: &str) -> Sharing {
        Sharing::new(RemoteUrl::parse(url).unwrap(), RemoteSettings::default()).unwrap()
    }

    #[test]
    fn keys_live_under_the_prefix_and_hash_names() {
        let s = sharing("s3://bucket/team/cache");
        let id = "a".repeat(64);
        assert_eq!(s.artifact_key(&id), format!("team/cache/v1/artifacts/{id}.json"));
        assert_eq!(
            s.archive_key(&id, &"b".repeat(64)),
            format!("team/cache/v1/artifacts/{id}/{}.tar.zst", "b".repeat(32))
        );
        let key = s.index_key("bundles/../x y", &"f".repeat(64));
        let digest = blake3::hash(b"bundles/../x y").to_hex();
        assert_eq!(
            key,
            format!("team/cache/v1/entries/{}/{}.json", &digest[..32], "f".repeat(64))
        );
        assert_eq!(
            sharing("s3://bucket").artifact_key(&id),
            format!("v1/artifacts/{id}.json")
        );
    }

    #[test]
    fn documents_check_version_name_and_ids() {
        let fp = "f".repeat(64);
        let doc = IndexDoc {
            format: SHARE_FORMAT,
            name: "a".into(),
            fingerprint: fp.clone(),
            artifact: "0".repeat(64),
            pushed_at: 1,
            host: "h".into(),
        };
        let bytes = to_json(&doc);
        assert_eq!(parse_index(&bytes, "t", "a", &fp).unwrap(), doc);
        let err = parse_index(&bytes, "t", "b", &fp).unwrap_err().to_string();
        assert!(err.contains("not `b`"), "{err}");
        let newer = to_json(&IndexDoc {
            format: 2,
            ..doc.clone()
        });
        let err = parse_index(&newer, "t", "a", &fp).unwrap_err().to_string();
        assert!(err.contains("format 2 is not supported"), "{err}");
        let bad_id = to_json(&IndexDoc {
            artifact: "../../x".into(),
            ..doc
        });
        assert!(parse_index(&bad_id, "t", "a", &fp).is_err());
        assert!(parse_index(b"{nope", "t", "a", &fp).is_err());
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
