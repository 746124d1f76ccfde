//! Shared artifacts: machines that share a bucket share what they built.
//!
//! docs/DESIGN.md, "Remote is advisory": what comes from the remote is used only once verified, and a
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
//!
//! # Modules
//!
//! - [`protocol`]: the key scheme, the JSON objects, their validation and format version, the
//!   single-file archive: what a remote holds, independent of any local cache.
//! - This module: [`Sharing`] (where the remote is, the caller's policy, and the client, built
//!   on first use) and the reports.
//!
//! Pushing from and pulling into a local cache is the cache's own work (`crate::cache`), built on
//! these pieces.

pub mod protocol;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;

pub use protocol::{ArchiveDoc, ArtifactDoc, BadObject, IndexDoc, SHARE_FORMAT};

use crate::ids::{ArtifactId, EntryName, Fingerprint};
use crate::remote::{Remote, RemoteError, RemoteSettings, RemoteUrl};

/// A remote for shared artifacts, with the policy of the caller.
///
/// Making one costs nothing: the client ([`Remote`]) is built the first time an operation needs
/// it, once (clones share it), so a command that never reaches the remote (a local `ensure` hit)
/// never builds a client or the runtime it runs on.
#[derive(Clone)]
pub struct Sharing {
    url: RemoteUrl,
    settings: RemoteSettings,
    remote: Arc<OnceLock<Remote>>,
    /// Push what `ensure` builds locally (`--push`, or `remote.push = true`).
    pub push: bool,
    /// Make remote problems errors instead of warnings.
    pub strict: bool,
    /// Free space a pull keeps on the cache's volume while extracting (`--min-free`,
    /// `[cache] min_free`); `None` is the proportional default ([`crate::archive::default_reserve`]).
    pub min_free: Option<u64>,
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
    /// The remote at `url` (artifacts live under its key prefix), connected on first use. Pull
    /// only and advisory by default; degraded-mode warnings go to `tracing` until
    /// [`Self::on_warning`].
    pub fn new(url: RemoteUrl, settings: RemoteSettings) -> Self {
        Self {
            url,
            settings,
            remote: Arc::new(OnceLock::new()),
            push: false,
            strict: false,
            min_free: None,
            warn: Arc::new(|message| tracing::warn!("{message}")),
        }
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

    /// The transfer settings.
    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The transport, built on the first call. A configuration the client cannot be built from
    /// is an error of this call (and of the next: nothing failed is kept).
    pub fn remote(&self) -> Result<&Remote, RemoteError> {
        if let Some(remote) = self.remote.get() {
            return Ok(remote);
        }
        let built = Remote::new(&self.url, self.settings.clone())?;
        Ok(self.remote.get_or_init(|| built))
    }

    /// `v1/artifacts/<id>.json`.
    pub fn artifact_key(&self, id: &ArtifactId) -> String {
        protocol::artifact_key(&self.url, id)
    }

    /// `v1/artifacts/<id>/<archive-b3>.tar.zst`.
    pub fn archive_key(&self, id: &ArtifactId, archive_blake3: &str) -> String {
        protocol::archive_key(&self.url, id, archive_blake3)
    }

    /// `v1/entries/<name-b3>/<fingerprint>.json`.
    pub fn index_key(&self, name: &EntryName, fingerprint: &Fingerprint) -> String {
        protocol::index_key(&self.url, name, fingerprint)
    }

    /// Whether the client was built (a call needed the remote).
    pub fn is_connected(&self) -> bool {
        self.remote.get().is_some()
    }

    /// Reports a degraded-mode warning.
    pub(crate) fn warn(&self, message: &str) {
        (self.warn)(message);
    }

    /// How long a push or pull leases the artifact it reads: past any transfer's deadline.
    pub(crate) fn lease_time(&self) -> Duration {
        self.settings.overall_timeout * 2 + Duration::from_secs(60)
    }

    /// An empty activity record for this remote (nothing done yet).
    pub fn activity(&self) -> RemoteActivity {
        RemoteActivity {
            url: self.url.to_string(),
            pulled: false,
            pushed: None,
            warnings: Vec::new(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn making_a_sharing_builds_no_client_until_asked() {
        let sharing = Sharing::new(
            RemoteUrl::parse("s3://bucket/p").unwrap(),
            RemoteSettings::default(),
        );
        let clone = sharing.clone();
        assert!(sharing.remote.get().is_none());
        let first = sharing.remote().unwrap() as *const Remote;
        assert_eq!(
            first,
            clone.remote().unwrap() as *const Remote,
            "built once, shared by clones"
        );
    }
}
