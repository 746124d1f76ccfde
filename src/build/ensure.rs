//! `ensure`: the entry state machine of DESIGN.md, tying together recipes, fingerprints, the
//! builder, failure memory, the store and the catalog.
//!
//! One call: fingerprint the recipe (unchanged files are not re-read), read the entry's
//! `last_good` and `failure`, and [`decide`]. A build takes the entry's lock, then re-reads and
//! decides again (another process may have built or failed meanwhile: builds run at most once),
//! builds into private staging with the root lock *not* held (a long build must not hold off
//! garbage collection), then publishes and records under the root lock.
//!
//! While another process builds the entry, the default is to wait for it (bounded by the lock
//! timeout) and reuse its result: a caller asking for the current inputs should get them, and
//! waiting costs only as long as the build that is already under way. A caller that prefers speed
//! (`--no-wait`, [`WaitPolicy::TakeStale`]) gets its last good artifact at once, marked stale.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::OptionalExtension;

use super::failure::{
    FailureKind, FailureRecord, LastGood, StalePolicy, decide, random_jitter, record_failure,
};
use super::fingerprint::{FingerprintError, StatCache, fingerprint};
use super::recipe::Recipe;
use super::runner::{DEFAULT_TAIL_BYTES, run};
use super::{Decision, FailureCause};
use crate::cache::{Cache, CacheError};
use crate::catalog::{CatalogError, now_ms};
use crate::lock::{self, Mode, entry_lock_path};
use crate::progress::Progress;
use crate::store::content_path_in;

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
    /// local builds when its `push` is set (see [`crate::remote::share`]).
    pub remote: Option<crate::remote::share::Sharing>,
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
    /// blocked by a recorded failure (or under way, with [`WaitPolicy::TakeStale`]).
    Stale,
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
    pub name: String,
    /// The artifact's content path.
    pub path: PathBuf,
    /// The artifact id.
    pub artifact: String,
    /// Hit, built or stale.
    pub status: EnsureStatus,
    /// The current fingerprint of the recipe.
    pub fingerprint: String,
    /// The failure recorded for the current inputs, if any (always present when stale because a
    /// build failed).
    pub failure: Option<FailureReport>,
    /// Why a stale artifact was served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// When the served artifact was recorded (unix ms).
    pub updated_at: i64,
    /// Input globs that matched nothing (worth a warning: a typo makes inputs invisible).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched_globs: Vec<String>,
    /// What the remote did, when one is configured and a build was needed: `pulled` means the
    /// status is `built` but the artifact came, verified, from the remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::remote::share::RemoteActivity>,
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
    #[error("building `{name}` failed ({} failure): {}{}", failure.kind.as_str(), failure.exit, retry_hint(failure))]
    BuildFailed {
        /// The entry.
        name: String,
        /// The recorded failure.
        failure: Box<FailureRecord>,
    },
    /// A remote problem, with `--strict` (otherwise remote problems are warnings).
    #[error("remote problem (--strict makes it an error): {0}")]
    Remote(crate::remote::share::ShareError),
    /// A recorded failure of the current inputs forbids building now.
    #[error(
        "`{name}` is not built: its last build from these inputs failed ({} failure, {} attempt(s)): {}{}",
        failure.kind.as_str(), failure.attempts, failure.exit, retry_hint(failure)
    )]
    Blocked {
        /// The entry.
        name: String,
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

fn retry_hint(failure: &FailureRecord) -> String {
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
            let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
            format!(
                "; it will be retried in {} (or now with --refresh)",
                crate::units::format_duration(wait)
            )
        }
        (FailureKind::Transient, None) => "; it will be retried on the next call".to_string(),
    };
    format!("{when}{tail}")
}

/// What the catalog says about an entry.
struct EntryState {
    /// The catalog row, kept so that a hit can record the access without reading it again.
    entry: Option<crate::catalog::EntryRow>,
    last_good: Option<LastGood>,
    present: bool,
    failure: Option<FailureRecord>,
}

impl EntryState {
    /// When the entry's artifact last changed (unix ms; 0 without an entry).
    fn updated_at(&self) -> i64 {
        self.entry.as_ref().map_or(0, |e| e.updated_at)
    }

    /// The state machine's decision for the current fingerprint, now.
    fn decide(&self, fp: &str, refresh: bool, stale: StalePolicy) -> Decision {
        decide(
            fp,
            self.last_good.as_ref(),
            self.present,
            self.failure.as_ref(),
            now_ms(),
            refresh,
            stale,
        )
    }
}

impl Cache {
    /// Returns an artifact built from the recipe's current inputs, building it if needed, and
    /// following the entry state machine of DESIGN.md for recorded failures.
    pub fn ensure(&self, recipe: &Recipe, options: &EnsureOptions) -> Result<Ensured, EnsureError> {
        let call_started = now_ms();
        let fp = self.fingerprint(recipe)?;
        let unmatched = fp.unmatched_globs.clone();
        let fp = fp.digest;
        let result = |status,
                      artifact: &str,
                      state: &EntryState,
                      failure: Option<&FailureRecord>,
                      why: Option<String>| {
            Ensured {
                name: recipe.name.clone(),
                path: self.store().content_path(artifact),
                artifact: artifact.to_string(),
                status,
                fingerprint: fp.clone(),
                failure: failure.map(FailureReport::from),
                stale_reason: why,
                updated_at: state.updated_at(),
                unmatched_globs: unmatched.clone(),
                remote: None,
            }
        };

        // A decision that needs no build, as the call's result; `None` means build.
        let conclude = |decision: Decision, state: &EntryState| -> Option<Result<Ensured, EnsureError>> {
            match decision {
                Decision::Hit => {
                    let artifact = state
                        .last_good
                        .as_ref()
                        .map(|g| g.artifact.clone())
                        .unwrap_or_default();
                    Some(Ok(result(
                        EnsureStatus::Hit,
                        &artifact,
                        state,
                        state.failure.as_ref(),
                        None,
                    )))
                }
                Decision::Blocked {
                    failure,
                    stale: Some(good),
                } => Some(Ok(result(
                    EnsureStatus::Stale,
                    &good.artifact,
                    state,
                    Some(&failure),
                    Some(blocked_reason(&failure)),
                ))),
                Decision::Blocked { failure, stale: None } => Some(Err(EnsureError::Blocked {
                    name: recipe.name.clone(),
                    failure: Box::new(failure),
                })),
                Decision::Build(reason) => {
                    tracing::info!("`{}` needs a build ({reason:?})", recipe.name);
                    None
                }
            }
        };

        // First look, without the entry lock: the common case is a hit.
        {
            let _op = self.operation()?;
            let state = self.entry_state(&recipe.name)?;
            let decision = state.decide(&fp, options.refresh, recipe.stale);
            if let (Decision::Hit, Some(entry)) = (&decision, &state.entry) {
                self.catalog().touch(entry, now_ms()).map_err(CacheError::from)?;
            }
            if let Some(done) = conclude(decision, &state) {
                return done;
            }
        }

        // Build: one process at a time per entry.
        let lock_path = entry_lock_path(&self.layout().entry_locks_dir(), &recipe.name);
        let _build_lock = match lock::try_lock(&lock_path, Mode::Exclusive).map_err(CacheError::from)? {
            Some(guard) => guard,
            None => {
                if options.wait == WaitPolicy::TakeStale {
                    let _op = self.operation()?;
                    let state = self.entry_state(&recipe.name)?;
                    if let (Some(good), true, StalePolicy::IfError) =
                        (&state.last_good, state.present, recipe.stale)
                    {
                        let why =
                            "a build from the current inputs is under way in another process".to_string();
                        return Ok(result(
                            EnsureStatus::Stale,
                            &good.artifact,
                            &state,
                            state.failure.as_ref(),
                            Some(why),
                        ));
                    }
                }
                let what = format!("the build of `{}` in another process", recipe.name);
                lock::lock(&lock_path, Mode::Exclusive, self.options().lock_timeout, &what)
                    .map_err(CacheError::from)?
            }
        };

        // Lock, then re-check: whoever held the lock may have built or failed already.
        let state = {
            let _op = self.operation()?;
            let state = self.entry_state(&recipe.name)?;
            // A refresh that waited for another process's build of the same inputs, finished after
            // this call began, reuses it instead of building twice.
            let fresh = state.last_good.as_ref().is_some_and(|g| g.fingerprint == fp)
                && state.present
                && state.updated_at() >= call_started;
            let refresh_now = options.refresh && !fresh;
            let decision = state.decide(&fp, refresh_now, recipe.stale);
            if let Some(done) = conclude(decision, &state) {
                return done;
            }
            state
        };

        // With a remote, a verified artifact from it replaces the build (remote/share.rs); not
        // on --refresh, which asks for a build.
        let mut remote = options.remote.as_ref().map(crate::remote::share::activity);
        if let Some(sharing) = options.remote.as_ref().filter(|_| !options.refresh) {
            let (pulled, activity) = crate::remote::share::ensure_pull(self, &recipe.name, &fp, sharing)
                .map_err(EnsureError::Remote)?;
            if let Some(pulled) = pulled {
                let state = {
                    let _op = self.operation()?;
                    self.entry_state(&recipe.name)?
                };
                let built = result(EnsureStatus::Built, &pulled.artifact, &state, None, None);
                return Ok(Ensured {
                    remote: Some(activity),
                    ..built
                });
            }
            remote = Some(activity);
        }

        let staged = self.store().stage("build").map_err(CacheError::from)?;
        let out = content_path_in(&staged);
        let outcome = run(recipe, &out, staged.path(), DEFAULT_TAIL_BYTES);
        match outcome.failure {
            None => {
                let (published, state) = {
                    let _op = self.operation()?;
                    let published = self
                        .store()
                        .publish_staged(staged, &Progress::none())
                        .map_err(CacheError::from)?;
                    self.record(Some(&recipe.name), &published, Some(&fp), "build")?;
                    (published, self.entry_state(&recipe.name)?)
                };
                let built = result(EnsureStatus::Built, &published.id, &state, None, None);
                if let (Some(sharing), Some(activity)) = (options.remote.as_ref(), remote.as_mut())
                    && sharing.push
                {
                    // Waiters need not wait for the upload.
                    drop(_build_lock);
                    crate::remote::share::ensure_push(
                        self,
                        &recipe.name,
                        &fp,
                        &published.id,
                        sharing,
                        activity,
                    )
                    .map_err(EnsureError::Remote)?;
                }
                Ok(Ensured { remote, ..built })
            }
            Some(failure) => {
                drop(staged);
                let record = record_failure(
                    state.failure.as_ref(),
                    &fp,
                    failure.kind,
                    &describe(&failure.cause),
                    &outcome.tail,
                    now_ms(),
                    &recipe.backoff,
                    random_jitter(),
                );
                {
                    let _op = self.operation()?;
                    self.catalog()
                        .record_failure(&recipe.name, &record)
                        .map_err(CacheError::from)?;
                }
                match (&state.last_good, state.present, recipe.stale) {
                    (Some(good), true, StalePolicy::IfError) => Ok(result(
                        EnsureStatus::Stale,
                        &good.artifact,
                        &state,
                        Some(&record),
                        Some(format!(
                            "building from the current inputs failed: {}",
                            record.exit
                        )),
                    )),
                    _ => Err(EnsureError::BuildFailed {
                        name: recipe.name.clone(),
                        failure: Box::new(record),
                    }),
                }
            }
        }
    }

    fn entry_state(&self, name: &str) -> Result<EntryState, CacheError> {
        let catalog = self.catalog();
        let entry = catalog.entry(name)?;
        let failure = catalog.failure(name)?;
        drop(catalog);
        let last_good = entry.as_ref().and_then(|e| match (&e.artifact, &e.fingerprint) {
            (Some(artifact), Some(fingerprint)) => Some(LastGood {
                artifact: artifact.clone(),
                fingerprint: fingerprint.clone(),
            }),
            _ => None,
        });
        let present = last_good
            .as_ref()
            .is_some_and(|g| self.store().is_present(&g.artifact));
        Ok(EntryState {
            entry,
            last_good,
            present,
            failure,
        })
    }

    /// Fingerprints a recipe, keeping its stat cache in memory for this `Cache` (a daemon pays only
    /// for what changed) and in the catalog (a fresh process does too).
    fn fingerprint(&self, recipe: &Recipe) -> Result<super::Fingerprint, EnsureError> {
        let mut caches = self.stat_caches();
        let cache = match caches.get_mut(&recipe.name) {
            Some(cache) => cache,
            None => {
                let loaded = self.load_stat_cache(&recipe.name)?;
                caches.entry(recipe.name.clone()).or_insert(loaded)
            }
        };
        let fp = fingerprint(recipe, cache)?;
        if fp.cache_changed {
            let bytes = cache.to_bytes();
            drop(caches);
            self.save_stat_cache(&recipe.name, &bytes)?;
        }
        Ok(fp)
    }

    fn load_stat_cache(&self, name: &str) -> Result<StatCache, CacheError> {
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        let bytes: Option<Vec<u8>> = catalog
            .connection()
            .query_row("SELECT data FROM stat_caches WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|source| CatalogError::Sql {
                path,
                op: "read a stat cache",
                source,
            })?;
        // An undecodable stat cache only costs re-hashing.
        Ok(bytes.map(|b| StatCache::from_bytes(&b)).unwrap_or_default())
    }

    fn save_stat_cache(&self, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        catalog
            .connection()
            .execute(
                "INSERT OR REPLACE INTO stat_caches (name, data) VALUES (?1, ?2)",
                rusqlite::params![name, bytes],
            )
            .map_err(|source| CatalogError::Sql {
                path,
                op: "write a stat cache",
                source,
            })?;
        Ok(())
    }
}

fn blocked_reason(failure: &FailureRecord) -> String {
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

fn describe(cause: &FailureCause) -> String {
    cause.to_string()
}
