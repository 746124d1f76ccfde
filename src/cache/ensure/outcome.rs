//! What `ensure` is asked and what it answers: its options, its result and its errors, as the
//! library's users and the command line see them.

use std::path::PathBuf;
use std::time::Duration;

use crate::build::{FailureKind, FailureRecord, FingerprintError};
use crate::cache::CacheError;
use crate::cache::share::{RemoteActivity, ShareError, Sharing};
use crate::ids::{ArtifactId, EntryName, Fingerprint};

/// What to do when another process is building the entry right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitPolicy {
    /// Wait for it (up to the lock timeout) and reuse its result.
    #[default]
    Wait,
    /// Take the last good artifact at once, marked stale, if there is one (else wait).
    TakeStale,
}

/// Options of one `ensure` call.
#[derive(Debug, Clone, Default)]
pub struct EnsureOptions {
    /// Build now whatever the failure memory says.
    pub refresh: bool,
    /// Waiting for a concurrent build.
    pub wait: WaitPolicy,
    /// A remote for shared artifacts: fetch a verified artifact instead of building, and push
    /// local builds when its `push` is set.
    pub remote: Option<Sharing>,
    /// Hold the returned artifact against garbage collection for this long, taken under the
    /// same lock that resolved it.
    pub lease: Option<Duration>,
}

/// How the artifact was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnsureStatus {
    /// Built from the current inputs earlier; nothing was built.
    Hit,
    /// Built now.
    Built,
    /// The last good artifact, built from older inputs, served because building failed or is
    /// blocked by a recorded failure (or under way, with [`WaitPolicy::TakeStale`]), or, under
    /// the `while-revalidate` stale policy, while the current inputs are built in the background
    /// (see [`Ensured::revalidation`]).
    Stale,
}

/// Where the build of the current inputs stands when a stale artifact is served under the
/// `while-revalidate` stale policy (docs/DESIGN.md, "Stale while revalidate").
///
/// The library never starts a process or a thread on its own: `ensure` answers [`Due`](Self::Due)
/// and the caller runs [`Cache::revalidate`](crate::Cache::revalidate) where it sees fit (a
/// thread of a daemon, a detached process of a command line). The `warmcache` command starts a
/// detached `warmcache` for it and reports [`Started`](Self::Started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Revalidation {
    /// A build of the current inputs is due and nobody runs one: the caller should start
    /// [`Cache::revalidate`](crate::Cache::revalidate) in the background.
    Due,
    /// The caller started the background build (set by the caller, e.g. the command line).
    Started,
    /// Another process holds the entry's build lock (a build is under way): nothing to start.
    UnderWay,
}

impl Revalidation {
    /// What it means, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Revalidation::Due => "a build of the current inputs is due",
            Revalidation::Started => "the current inputs are being built in the background",
            Revalidation::UnderWay => "a build of the current inputs is already under way in another process",
        }
    }
}

/// What [`Cache::revalidate`](crate::Cache::revalidate) did.
#[derive(Debug, Clone)]
pub enum Revalidated {
    /// It ran the state machine under the entry lock: `Built` when it built (or pulled) the
    /// current inputs, `Hit` when someone else already had, `Stale` when the build failed (the
    /// failure is recorded, as for any build) or a recorded failure forbids building now.
    Done(Box<Ensured>),
    /// Another process holds the entry's build lock: nothing was done.
    UnderWay,
}

/// A recorded failure as reported to users.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailureReport {
    /// `transient` or `deterministic`.
    pub kind: FailureKind,
    /// What happened and the tail of the output.
    pub error: String,
    /// Consecutive failures with the current inputs.
    pub attempts: u32,
    /// When a retry is allowed (unix ms); none for deterministic failures.
    pub next_retry_at: Option<i64>,
}

impl From<&FailureRecord> for FailureReport {
    fn from(f: &FailureRecord) -> Self {
        let error = if f.error_tail.trim().is_empty() {
            f.exit.clone()
        } else {
            format!("{}\n{}", f.exit, f.error_tail.trim_end())
        };
        Self {
            kind: f.kind,
            error,
            attempts: f.attempts,
            next_retry_at: f.next_retry_at,
        }
    }
}

/// The result of `ensure`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ensured {
    /// The entry name.
    pub name: EntryName,
    /// The artifact's content path.
    pub path: PathBuf,
    /// The artifact id.
    pub artifact: ArtifactId,
    /// Hit, built or stale.
    pub status: EnsureStatus,
    /// The current fingerprint of the recipe.
    pub fingerprint: Fingerprint,
    /// The failure recorded for the current inputs, if any (always present when stale because a
    /// build failed).
    pub failure: Option<FailureReport>,
    /// Why a stale artifact was served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// Under the `while-revalidate` stale policy, where the build of the current inputs stands
    /// while this stale artifact is served; none otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revalidation: Option<Revalidation>,
    /// When the served artifact was recorded (unix ms).
    pub updated_at: i64,
    /// When the lease asked for with [`EnsureOptions::lease`] ends (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    /// Input globs that matched nothing (worth a warning: a typo makes inputs invisible).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched_globs: Vec<String>,
    /// Inputs that are FIFOs, sockets or devices: only their kind is fingerprinted, never what
    /// flows through them (worth a warning: such an input is almost always a mistake).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub special_inputs: Vec<String>,
    /// What the remote did, when one is configured and a build was needed: `pulled` means the
    /// status is `built` but the artifact came, verified, from the remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteActivity>,
    /// Problems found on the way that did not stop the call, such as a damaged artifact that was
    /// quarantined and rebuilt (docs/DESIGN.md, "Corruption is never served").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Why `ensure` could not return an artifact.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    /// The inputs could not be fingerprinted.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// A cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The build failed now and there is no last good artifact to serve (or the stale policy is
    /// `never`).
    #[error("building `{name}` failed ({} failure): {}{}", failure.kind.as_str(), failure.exit, retry_hint(failure, *now))]
    BuildFailed {
        /// The entry.
        name: EntryName,
        /// When it was decided (unix ms), for the retry hint.
        now: i64,
        /// The recorded failure.
        failure: Box<FailureRecord>,
    },
    /// A remote problem, with `--strict` (otherwise remote problems are warnings).
    #[error("remote problem (--strict makes it an error): {0}")]
    Remote(ShareError),
    /// warmcache was asked to end (SIGINT, SIGTERM, SIGHUP) while building; the builder was
    /// stopped with its process group and nothing was recorded.
    #[error(
        "`{name}` was not built: warmcache received {} and stopped the builder with its process \
         group; nothing was recorded, the next call builds",
        crate::signals::name(*signal)
    )]
    Interrupted {
        /// The entry.
        name: EntryName,
        /// The signal warmcache received.
        signal: i32,
    },
    /// The inputs changed while the builder ran (twice in a row for `ensure`, which builds once
    /// more): its output may mix old and new inputs, so it was discarded and nothing recorded.
    #[error(
        "`{name}` was not built: its inputs changed while the build ran, so the output may mix old \
         and new inputs and was discarded; nothing was recorded. Run it again once the inputs are \
         written"
    )]
    InputsChanged {
        /// The entry.
        name: EntryName,
    },
    /// A recorded failure of the current inputs forbids building now.
    #[error(
        "`{name}` is not built: its last build from these inputs failed ({} failure, {} attempt(s)): {}{}",
        failure.kind.as_str(), failure.attempts, failure.exit, retry_hint(failure, *now)
    )]
    Blocked {
        /// The entry.
        name: EntryName,
        /// When it was decided (unix ms), for the retry hint.
        now: i64,
        /// The recorded failure.
        failure: Box<FailureRecord>,
    },
}

impl EnsureError {
    /// The failure record behind a build error, for JSON output.
    pub fn failure(&self) -> Option<&FailureRecord> {
        match self {
            EnsureError::BuildFailed { failure, .. } | EnsureError::Blocked { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

fn retry_hint(failure: &FailureRecord, now: i64) -> String {
    let tail = failure.error_tail.trim_end();
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- output (tail) ---\n{tail}")
    };
    let when = match (failure.kind, failure.next_retry_at) {
        (FailureKind::Deterministic, _) => {
            "; it will not be retried until its inputs change (or with --refresh)".to_string()
        }
        (FailureKind::Transient, Some(at)) => {
            let wait = Duration::from_millis((at - now).max(0) as u64);
            format!(
                "; it will be retried in {} (or now with --refresh)",
                crate::units::format_duration(wait)
            )
        }
        (FailureKind::Transient, None) => "; it will be retried on the next call".to_string(),
    };
    format!("{when}{tail}")
}

/// Why a stale artifact is served while a recorded failure blocks the build.
pub(super) fn blocked_reason(failure: &FailureRecord) -> String {
    match failure.kind {
        FailureKind::Deterministic => {
            format!(
                "the current inputs failed to build deterministically ({}); not retried until they change",
                failure.exit
            )
        }
        FailureKind::Transient => format!(
            "the current inputs failed to build ({}); waiting to retry",
            failure.exit
        ),
    }
}
