//! `ensure`: the entry state machine (docs/DESIGN.md, "The entry state machine"), tying together
//! recipes, fingerprints, the builder, failure memory, the store and the catalog.
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
//!
//! Under the `while-revalidate` stale policy, a call whose inputs changed does not build at all
//! when it has a last good artifact to serve: it serves it as stale with a [`Revalidation`], and
//! the build runs in [`Cache::revalidate`], which the caller starts in the background
//! (docs/DESIGN.md, "Stale while revalidate").

use super::share::RemoteActivity;
use super::{Cache, CacheError};
use crate::build::{
    BuildReason, DEFAULT_TAIL_BYTES, Decision, FailureCause, FailureKind, FailureRecord, Fingerprinted,
    LastGood, Recipe, RunFailure, StalePolicy, StatCache, decide, fingerprint, random_jitter, record_failure,
    run,
};
use crate::catalog::EntryRow;
use crate::ids::{ArtifactId, EntryName, Fingerprint};
use crate::lock::{self, LockGuard, Mode, OpGuard};
use crate::progress::Progress;
use crate::shell::RunRecord;
use crate::store::{StoreError, content_path_in};

mod outcome;

use outcome::blocked_reason;
pub use outcome::{
    EnsureError, EnsureOptions, EnsureStatus, Ensured, FailureReport, Revalidated, Revalidation, WaitPolicy,
};

/// What the catalog says about an entry.
struct EntryState {
    /// The catalog row, kept so that a hit can record the access without reading it again.
    entry: Option<EntryRow>,
    last_good: Option<LastGood>,
    present: bool,
    failure: Option<FailureRecord>,
    /// The warning for a last good artifact found damaged (and quarantined) by this read.
    damaged: Option<String>,
}

impl EntryState {
    /// When the entry's artifact last changed (unix ms; 0 without an entry).
    fn updated_at(&self) -> i64 {
        self.entry.as_ref().map_or(0, |e| e.updated_at)
    }

    /// The last good artifact, when it is present and the recipe allows serving it stale.
    fn servable_stale(&self, policy: StalePolicy) -> Option<&LastGood> {
        self.last_good
            .as_ref()
            .filter(|_| self.present && policy.serves_stale())
    }
}

/// One `ensure` call: the recipe, its current fingerprint and what the caller asked for.
struct Call<'a> {
    cache: &'a Cache,
    recipe: &'a Recipe,
    options: &'a EnsureOptions,
    fp: Fingerprint,
    unmatched: Vec<String>,
    special: Vec<String>,
    started: i64,
    /// This call is the background build of a stale-while-revalidate entry ([`Cache::revalidate`]):
    /// it builds instead of serving stale and revalidating again.
    revalidating: bool,
    /// Warnings collected along the way, reported with the result.
    warnings: std::cell::RefCell<Vec<String>>,
}

/// The outcome of a step: the call's result, or go on.
enum Step<T> {
    Done(Box<Result<Ensured, EnsureError>>),
    Next(T),
}

impl Call<'_> {
    fn result(
        &self,
        status: EnsureStatus,
        artifact: &ArtifactId,
        state: &EntryState,
        failure: Option<&FailureRecord>,
        why: Option<String>,
    ) -> Ensured {
        Ensured {
            name: self.recipe.name.clone(),
            path: self.cache.store().content_path(artifact),
            artifact: artifact.clone(),
            status,
            fingerprint: self.fp.clone(),
            failure: failure.map(FailureReport::from),
            stale_reason: why,
            revalidation: None,
            updated_at: state.updated_at(),
            unmatched_globs: self.unmatched.clone(),
            special_inputs: self.special.clone(),
            lease_expires_at: None,
            remote: None,
            warnings: self.warnings.borrow().clone(),
        }
    }

    /// The entry's state (see [`Cache::entry_state`]), keeping the warning for a damaged artifact.
    fn state(&self, op: &OpGuard) -> Result<EntryState, CacheError> {
        let state = self.cache.entry_state(op, &self.recipe.name)?;
        if let Some(warning) = &state.damaged {
            self.warnings.borrow_mut().push(format!(
                "{warning}; `{}` is rebuilt like a miss",
                self.recipe.name
            ));
        }
        Ok(state)
    }

    /// The state machine's decision for the current fingerprint, now. The background build of a
    /// `while-revalidate` entry decides as `if-error` does: it is the build the others wait for.
    fn decide(&self, state: &EntryState, refresh: bool) -> Decision {
        let policy = match self.recipe.stale {
            StalePolicy::WhileRevalidate if self.revalidating => StalePolicy::IfError,
            policy => policy,
        };
        decide(
            &self.fp,
            state.last_good.as_ref(),
            state.present,
            state.failure.as_ref(),
            self.cache.now_ms(),
            refresh,
            policy,
        )
    }

    /// A decision that needs no build, as the call's result (with the lease asked for, taken
    /// under `op`); `None` means build.
    fn conclude(
        &self,
        op: &OpGuard,
        decision: Decision,
        state: &EntryState,
    ) -> Option<Result<Ensured, EnsureError>> {
        let served = match decision {
            Decision::Hit => {
                let good = state.last_good.as_ref()?;
                self.result(
                    EnsureStatus::Hit,
                    &good.artifact,
                    state,
                    state.failure.as_ref(),
                    None,
                )
            }
            Decision::Blocked {
                failure,
                stale: Some(good),
            } => self.result(
                EnsureStatus::Stale,
                &good.artifact,
                state,
                Some(&failure),
                Some(blocked_reason(&failure)),
            ),
            Decision::Blocked { failure, stale: None } => {
                return Some(Err(EnsureError::Blocked {
                    name: self.recipe.name.clone(),
                    now: self.cache.now_ms(),
                    failure: Box::new(failure),
                }));
            }
            // Under the entry lock (the re-check), the holder builds: revalidating is for the
            // first look only.
            Decision::Build(reason) | Decision::Revalidate { reason, .. } => {
                tracing::info!("`{}` needs a build ({reason:?})", self.recipe.name);
                return None;
            }
        };
        Some(self.serve(op, served))
    }

    /// Serves `stale` at once while the current inputs need a build for `reason`, under the
    /// `while-revalidate` policy: `Due` when nobody builds the entry (the caller starts
    /// [`Cache::revalidate`]), `UnderWay` when another process holds its build lock. `None` on a
    /// read-only cache, where no build can be recorded: the caller goes on to the build, which
    /// fails at once and serves stale as `if-error` does, instead of revalidating on every call.
    fn revalidate(
        &self,
        state: &EntryState,
        stale: &LastGood,
        reason: BuildReason,
    ) -> Result<Option<Ensured>, EnsureError> {
        if self.cache.read_only().is_some() {
            return Ok(None);
        }
        let lock_path = self.cache.layout().entry_lock(&self.recipe.name);
        // A try, never a wait, so taking it under the root lock cannot deadlock (docs/DESIGN.md,
        // "Lock order"); it is released at once: the background build takes it for itself.
        let free = lock::try_lock(&lock_path, Mode::Exclusive)
            .map_err(CacheError::from)?
            .is_some();
        let why = match reason {
            BuildReason::RetryDue => match state.failure.as_ref() {
                Some(f) => format!(
                    "the last build of the current inputs failed ({}) and its retry is due",
                    f.exit
                ),
                None => "a retry of the current inputs is due".to_string(),
            },
            _ => "its inputs changed since it was built".to_string(),
        };
        let failure = state.failure.as_ref().filter(|f| f.fingerprint == self.fp);
        let mut served = self.result(EnsureStatus::Stale, &stale.artifact, state, failure, Some(why));
        served.revalidation = Some(if free {
            Revalidation::Due
        } else {
            Revalidation::UnderWay
        });
        Ok(Some(served))
    }

    /// Hands out `ensured`, leasing it first when asked.
    fn serve(&self, op: &OpGuard, mut ensured: Ensured) -> Result<Ensured, EnsureError> {
        if let Some(duration) = self.options.lease {
            let lease = self.cache.lease_locked(op, &ensured.artifact, duration)?;
            ensured.lease_expires_at = Some(lease.expires_at());
            lease.keep();
        }
        Ok(ensured)
    }

    /// First look, without the entry lock: the common case is a hit.
    fn look(&self) -> Result<Step<()>, EnsureError> {
        let op = self.cache.operation()?;
        let state = self.state(&op)?;
        let decision = self.decide(&state, self.options.refresh);
        if let Decision::Revalidate { stale, reason } = &decision
            && let Some(served) = self.revalidate(&state, stale, *reason)?
        {
            return Ok(Step::Done(Box::new(self.serve(&op, served))));
        }
        if let (Decision::Hit, Some(entry)) = (&decision, &state.entry) {
            self.cache
                .catalog()
                .touch(entry, self.cache.now_ms())
                .map_err(CacheError::from)?;
        }
        Ok(match self.conclude(&op, decision, &state) {
            Some(done) => Step::Done(Box::new(done)),
            None => Step::Next(()),
        })
    }

    /// Takes the entry's build lock: one build at a time per entry. While another process
    /// builds, waits for it, or with [`WaitPolicy::TakeStale`] serves the last good artifact.
    fn lock_entry(&self) -> Result<Step<LockGuard>, EnsureError> {
        let lock_path = self.cache.layout().entry_lock(&self.recipe.name);
        if let Some(guard) = lock::try_lock(&lock_path, Mode::Exclusive).map_err(CacheError::from)? {
            self.cache.end_killed_build(&self.recipe.name)?;
            return Ok(Step::Next(guard));
        }
        if self.options.wait == WaitPolicy::TakeStale
            && let Some(stale) = self.stale_while_another_builds("is under way in another process")?
        {
            return Ok(Step::Done(Box::new(stale)));
        }
        let what = format!("the build of `{}` in another process", self.recipe.name);
        let timeout = self.cache.options().lock_timeout;
        match lock::lock(&lock_path, Mode::Exclusive, timeout, &what) {
            Ok(guard) => {
                self.cache.end_killed_build(&self.recipe.name)?;
                Ok(Step::Next(guard))
            }
            // Waited as long as allowed: the last good artifact beats an error.
            Err(e @ lock::LockError::Timeout { .. }) => {
                match self
                    .stale_while_another_builds("did not finish within the lock timeout in another process")?
                {
                    Some(stale) => Ok(Step::Done(Box::new(stale))),
                    None => Err(CacheError::from(e).into()),
                }
            }
            Err(e) => Err(CacheError::from(e).into()),
        }
    }

    /// The last good artifact as stale, when the recipe allows it, because a build of the
    /// current inputs `why` (another process holds the entry lock).
    fn stale_while_another_builds(
        &self,
        why: &str,
    ) -> Result<Option<Result<Ensured, EnsureError>>, EnsureError> {
        let op = self.cache.operation()?;
        let state = self.state(&op)?;
        let Some(good) = state.servable_stale(self.recipe.stale) else {
            return Ok(None);
        };
        let why = format!("a build from the current inputs {why}");
        let stale = self.result(
            EnsureStatus::Stale,
            &good.artifact,
            &state,
            state.failure.as_ref(),
            Some(why),
        );
        Ok(Some(self.serve(&op, stale)))
    }

    /// Lock, then re-check: whoever held the lock may have built or failed already.
    fn recheck(&self) -> Result<Step<EntryState>, EnsureError> {
        let op = self.cache.operation()?;
        let state = self.state(&op)?;
        // A refresh that waited for another process's build of the same inputs, finished after
        // this call began, reuses it instead of building twice.
        let fresh = state.last_good.as_ref().is_some_and(|g| g.fingerprint == self.fp)
            && state.present
            && state.updated_at() >= self.started;
        let decision = self.decide(&state, self.options.refresh && !fresh);
        Ok(match self.conclude(&op, decision, &state) {
            Some(done) => Step::Done(Box::new(done)),
            None => Step::Next(state),
        })
    }

    /// With a remote, a verified artifact from it replaces the build; not on `--refresh`, which
    /// asks for a build.
    fn pull(&self) -> Result<Step<Option<RemoteActivity>>, EnsureError> {
        let Some(sharing) = self.options.remote.as_ref() else {
            return Ok(Step::Next(None));
        };
        if self.options.refresh {
            return Ok(Step::Next(Some(sharing.activity())));
        }
        let (pulled, activity) = super::share::ensure_pull(self.cache, &self.recipe.name, &self.fp, sharing)
            .map_err(EnsureError::Remote)?;
        let Some(pulled) = pulled else {
            return Ok(Step::Next(Some(activity)));
        };
        let op = self.cache.operation()?;
        let state = self.state(&op)?;
        let built = Ensured {
            remote: Some(activity),
            ..self.result(EnsureStatus::Built, &pulled.artifact, &state, None, None)
        };
        Ok(Step::Done(Box::new(self.serve(&op, built))))
    }

    /// Runs the builder into private staging with the root lock *not* held (a long build must
    /// not hold off garbage collection), then publishes and records under the root lock, or
    /// records the failure.
    fn build(
        &self,
        state: EntryState,
        build_lock: LockGuard,
        remote: Option<RemoteActivity>,
    ) -> Result<Ensured, EnsureError> {
        let staged = match self.cache.store().stage("build") {
            Ok(staged) => staged,
            Err(e) => return self.failed(&state, self.no_room(e)?, ""),
        };
        let out = content_path_in(&staged);
        // Recorded beside the entry lock we hold, for the next holder if we are killed with our
        // supervisor (docs/DESIGN.md, "Nothing outlives its command").
        let record = RunRecord::new(self.cache.layout().entry_run_record(&self.recipe.name));
        let ran = std::time::Instant::now();
        let outcome = run(
            self.recipe,
            &out,
            staged.path(),
            DEFAULT_TAIL_BYTES,
            Some(&record),
        );
        let build_ms = u64::try_from(ran.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.cache
            .count(self.recipe.name.as_str(), |c| c.build_ms += build_ms);
        if let Some(failure) = outcome.failure {
            drop(staged);
            return self.failed(&state, failure, &outcome.tail);
        }
        // The output belongs to the fingerprint taken before the build only if the inputs did
        // not change while the builder read them; otherwise it may mix old and new inputs and
        // must not be recorded under either (docs/DESIGN.md, "Inputs that change during a
        // build"). A warm fingerprint costs one stat per input.
        if self.cache.fingerprint(self.recipe)?.digest != self.fp {
            drop(staged);
            return Err(EnsureError::InputsChanged {
                name: self.recipe.name.clone(),
            });
        }
        let op = self.cache.operation()?;
        let published = match self.cache.store().publish_staged(&op, staged, &Progress::none()) {
            Ok(published) => published,
            // An output the store cannot hold is the builder's doing, as deterministic as a
            // missing output: recorded as a failure of these inputs (no rebuild storm), the last
            // good artifact served stale (docs/DESIGN.md, "What a tree may hold"). The staging
            // directory is gone, so the message names the entry inside the output.
            Err(e) => {
                drop(op);
                let failure = match unstorable_output(&e) {
                    Some(message) => {
                        let cause = FailureCause::BadOutput { message };
                        RunFailure {
                            kind: self.recipe.failure_policy.classify(&cause, &outcome.tail),
                            cause,
                        }
                    }
                    None => self.no_room(e)?,
                };
                return self.failed(&state, failure, &outcome.tail);
            }
        };
        // The hits counted so far saved the previous build's duration: fold them before this
        // build's duration replaces it (docs/DESIGN.md, "Counting hits without writing").
        if let Err(e) = self.cache.fold_stats() {
            tracing::debug!("the counter journals were not folded: {e}");
        }
        self.cache
            .record(&op, Some(&self.recipe.name), &published, Some(&self.fp), "build")?;
        self.cache.count(self.recipe.name.as_str(), |c| c.builds_ok += 1);
        if let Err(e) = self.cache.catalog().set_build_ms(&self.recipe.name, build_ms) {
            tracing::warn!(
                "the build duration of `{}` was not recorded: {e}",
                self.recipe.name
            );
        }
        let state = self.state(&op)?;
        let built = self.serve(
            &op,
            self.result(EnsureStatus::Built, &published.id, &state, None, None),
        )?;
        drop(op);
        // Waiters need not wait for the upload.
        drop(build_lock);
        self.push(built, remote)
    }

    /// A store error that means the cache has no room for the build (a full or read-only
    /// volume) as a transient failure; any other store error as the error it is.
    fn no_room(&self, err: StoreError) -> Result<RunFailure, EnsureError> {
        match err {
            StoreError::DiskFull { .. } | StoreError::ReadOnly { .. } => Ok(RunFailure {
                kind: FailureKind::Transient,
                cause: FailureCause::NoRoom {
                    message: format!("the cache could not hold the build: {err}"),
                },
            }),
            err => Err(CacheError::from(err).into()),
        }
    }

    /// Records a failed build (best effort: on a full or read-only cache the record may not be
    /// writable, and that must not hide the failure itself) and serves the last good artifact as
    /// stale when there is one and the recipe allows it.
    fn failed(&self, state: &EntryState, failure: RunFailure, tail: &str) -> Result<Ensured, EnsureError> {
        self.cache.will_fold();
        if let Some(signal) = failure.cause.interrupted() {
            self.cache
                .count(self.recipe.name.as_str(), |c| c.builds_interrupted += 1);
            // Not a failure of these inputs: recording it would block or delay the next call.
            return Err(EnsureError::Interrupted {
                name: self.recipe.name.clone(),
                signal,
            });
        }
        let record = record_failure(
            state.failure.as_ref(),
            &self.fp,
            failure.kind,
            &failure.cause.to_string(),
            tail,
            self.cache.now_ms(),
            &self.recipe.backoff,
            random_jitter(),
        );
        self.cache
            .count(self.recipe.name.as_str(), |c| match record.kind {
                FailureKind::Transient => c.builds_failed_transient += 1,
                FailureKind::Deterministic => c.builds_failed_deterministic += 1,
            });
        let op = self.cache.operation()?;
        if let Err(e) = self.cache.catalog().record_failure(&self.recipe.name, &record) {
            tracing::warn!("the failure of `{}` could not be recorded: {e}", self.recipe.name);
        }
        match state.servable_stale(self.recipe.stale) {
            Some(good) => {
                let why = format!("building from the current inputs failed: {}", record.exit);
                let stale = self.result(
                    EnsureStatus::Stale,
                    &good.artifact,
                    state,
                    Some(&record),
                    Some(why),
                );
                self.serve(&op, stale)
            }
            None => Err(EnsureError::BuildFailed {
                name: self.recipe.name.clone(),
                now: self.cache.now_ms(),
                failure: Box::new(record),
            }),
        }
    }

    /// The steps of one call: look, lock, re-check, pull, build.
    fn run(&self) -> Result<Ensured, EnsureError> {
        if let Step::Done(done) = self.look()? {
            return *done;
        }
        let build_lock = match self.lock_entry()? {
            Step::Done(done) => return *done,
            Step::Next(guard) => guard,
        };
        self.run_locked(build_lock)
    }

    /// The background build of a `while-revalidate` entry: look, then the build lock if nobody
    /// holds it (never a wait: whoever holds it is building these inputs or will re-check), then
    /// re-check, pull, build as any call does.
    fn revalidate_in_this_thread(&self) -> Result<Revalidated, EnsureError> {
        if let Step::Done(done) = self.look()? {
            return (*done).map(|e| Revalidated::Done(Box::new(e)));
        }
        let lock_path = self.cache.layout().entry_lock(&self.recipe.name);
        let Some(build_lock) = lock::try_lock(&lock_path, Mode::Exclusive).map_err(CacheError::from)? else {
            return Ok(Revalidated::UnderWay);
        };
        self.cache.end_killed_build(&self.recipe.name)?;
        self.run_locked(build_lock)
            .map(|e| Revalidated::Done(Box::new(e)))
    }

    /// The steps under the entry's build lock: re-check, pull, build.
    fn run_locked(&self, build_lock: LockGuard) -> Result<Ensured, EnsureError> {
        let state = match self.recheck()? {
            Step::Done(done) => return *done,
            Step::Next(state) => state,
        };
        let remote = match self.pull()? {
            Step::Done(done) => return *done,
            Step::Next(remote) => remote,
        };
        self.build(state, build_lock, remote)
    }

    /// A success carries its warnings; an error must not swallow them.
    fn report_warnings_of<T>(&self, result: &Result<T, EnsureError>) {
        if result.is_err() {
            for warning in self.warnings.borrow().iter() {
                tracing::warn!("{warning}");
            }
        }
    }

    /// Pushes a fresh local build when the remote asks for it.
    fn push(&self, built: Ensured, remote: Option<RemoteActivity>) -> Result<Ensured, EnsureError> {
        let (Some(sharing), Some(mut activity)) = (self.options.remote.as_ref(), remote) else {
            return Ok(built);
        };
        if sharing.push {
            super::share::ensure_push(
                self.cache,
                &self.recipe.name,
                &self.fp,
                &built.artifact,
                sharing,
                &mut activity,
            )
            .map_err(EnsureError::Remote)?;
        }
        Ok(Ensured {
            remote: Some(activity),
            ..built
        })
    }
}

impl Cache {
    /// Called by the holder of `name`'s build lock as soon as it takes it: ends what a build
    /// whose holder was killed together with its supervisor left running (its record is still
    /// beside the lock), so a build never runs alongside the processes of an earlier one. Costs
    /// one failed `open` when there is no record, which is always unless such a kill happened.
    pub(super) fn end_killed_build(&self, name: &EntryName) -> Result<(), CacheError> {
        let record = RunRecord::new(self.layout().entry_run_record(name));
        let ended = record.end_leftovers()?;
        if ended > 0 {
            tracing::warn!(
                "ended {ended} process(es) of an earlier build of `{name}` that outlived the \
                 warmcache process running it (killed together with its supervisor)"
            );
        }
        Ok(())
    }

    /// Returns an artifact built from the recipe's current inputs, building it if needed, and
    /// following the entry state machine for recorded failures (docs/DESIGN.md).
    ///
    /// Under the `while-revalidate` stale policy, when the inputs changed (or a transient
    /// failure's retry is due) and the last good artifact is present, it is returned at once as
    /// stale with [`Ensured::revalidation`] set, and nothing is built: on
    /// [`Revalidation::Due`], run [`Cache::revalidate`] in the background.
    pub fn ensure(&self, recipe: &Recipe, options: &EnsureOptions) -> Result<Ensured, EnsureError> {
        let mut attempt = 0;
        loop {
            let call = self.call(recipe, options, false)?;
            let result = call.run();
            // Inputs edited while the builder ran: build once more from what they are now; a
            // second change in a row is reported (the inputs are being written right now).
            if matches!(result, Err(EnsureError::InputsChanged { .. })) && attempt == 0 {
                attempt += 1;
                continue;
            }
            call.report_warnings_of(&result);
            self.count_ensure(&recipe.name, &result);
            return result;
        }
    }

    /// Counts one `ensure` call's outcome: a hit, or a miss (and a stale serve). A hit writes
    /// only to this process's counter journal (docs/DESIGN.md, "Counting hits without writing").
    fn count_ensure(&self, name: &EntryName, result: &Result<Ensured, EnsureError>) {
        let status = result.as_ref().ok().map(|e| e.status);
        self.count(name.as_str(), |c| match status {
            Some(EnsureStatus::Hit) => c.hits += 1,
            Some(EnsureStatus::Stale) => {
                c.misses += 1;
                c.stale_serves += 1;
            }
            Some(EnsureStatus::Built) | None => c.misses += 1,
        });
    }

    /// The build behind a stale-while-revalidate result ([`Revalidation::Due`]), meant to run
    /// in the background (a thread, or a detached process as the `warmcache` command does): it
    /// takes the entry's build lock if nobody holds it (it never waits: a holder is building
    /// or will re-check), re-checks, then pulls or builds as [`Cache::ensure`] would, and records
    /// a failure as any build does (failure memory and backoff apply to the next call). Returns
    /// [`Revalidated::UnderWay`] without doing anything when another process holds the lock.
    ///
    /// The builder runs in the calling thread, under the same supervision as any build
    /// (docs/DESIGN.md, "Nothing outlives its command"): the thread must live until it returns.
    pub fn revalidate(&self, recipe: &Recipe, options: &EnsureOptions) -> Result<Revalidated, EnsureError> {
        let call = self.call(recipe, options, true)?;
        let result = call.revalidate_in_this_thread();
        call.report_warnings_of(&result);
        result
    }

    /// Where a background build of `name` started by the `warmcache` command reports (its
    /// stderr: what it built, or why it failed), beside the entry's build lock. A library user
    /// running [`Cache::revalidate`] reports as it likes.
    pub fn revalidation_log(&self, name: &EntryName) -> std::path::PathBuf {
        self.layout().entry_revalidation_log(name)
    }

    /// One call of `recipe`: its fingerprint now, and what was asked.
    fn call<'a>(
        &'a self,
        recipe: &'a Recipe,
        options: &'a EnsureOptions,
        revalidating: bool,
    ) -> Result<Call<'a>, EnsureError> {
        let started = self.now_ms();
        let fingerprinted = self.fingerprint(recipe)?;
        Ok(Call {
            cache: self,
            recipe,
            options,
            fp: fingerprinted.digest,
            unmatched: fingerprinted.unmatched_globs,
            special: fingerprinted.special_inputs,
            started,
            revalidating,
            warnings: std::cell::RefCell::new(Vec::new()),
        })
    }

    /// What the catalog says about `name`, with its last good artifact checked before anything
    /// serves it (docs/DESIGN.md, "Corruption is never served"): the stat identity recorded with
    /// its artifact row, read in the same query as the entry, against one `fstat` (a file) or an
    /// `lstat` per entry (a tree). A damaged one is quarantined here, under `op`, and is a miss.
    fn entry_state(&self, op: &OpGuard, name: &EntryName) -> Result<EntryState, CacheError> {
        let catalog = self.catalog();
        let (entry, identity) = match catalog.entry_with_identity(name)? {
            Some((entry, identity)) => (Some(entry), identity),
            None => (None, None),
        };
        let failure = catalog.failure(name)?;
        drop(catalog);
        let last_good = entry.as_ref().and_then(|e| match (&e.artifact, &e.fingerprint) {
            (Some(artifact), Some(fingerprint)) => Some(LastGood {
                artifact: artifact.clone(),
                fingerprint: fingerprint.clone(),
            }),
            _ => None,
        });
        let (present, damaged) = match &last_good {
            None => (false, None),
            Some(good) => match self.check_artifact(op, &good.artifact, identity.as_deref())? {
                super::Checked::Intact => (true, None),
                super::Checked::Missing => (false, None),
                super::Checked::Damaged(q) => (false, Some(q.warning())),
            },
        };
        Ok(EntryState {
            entry,
            last_good,
            present,
            failure,
            damaged,
        })
    }

    /// Fingerprints a recipe, keeping its stat cache in memory for this `Cache` (a daemon pays only
    /// for what changed) and in the catalog (a fresh process does too). This is the first step of
    /// [`Cache::ensure`], public so that a caller can learn the current fingerprint without the
    /// rest.
    pub fn fingerprint(&self, recipe: &Recipe) -> Result<Fingerprinted, EnsureError> {
        let mut caches = self.stat_caches();
        let cache = match caches.get_mut(&recipe.name) {
            Some(cache) => cache,
            None => {
                // An undecodable stat cache only costs re-hashing.
                let saved = self
                    .catalog()
                    .stat_cache(&recipe.name)
                    .map_err(CacheError::from)?;
                let loaded = saved.map(|b| StatCache::from_bytes(&b)).unwrap_or_default();
                caches.entry(recipe.name.clone()).or_insert(loaded)
            }
        };
        let fp = fingerprint(recipe, cache)?;
        if fp.cache_changed {
            let bytes = cache.to_bytes();
            drop(caches);
            // Only saves re-hashing next time: a full disk must not fail the call.
            if let Err(e) = self.catalog().set_stat_cache(&recipe.name, &bytes) {
                tracing::warn!("the stat cache of `{}` was not saved: {e}", recipe.name);
            }
        }
        Ok(fp)
    }
}

/// The message for a build output the store refuses to hold (an entry the tree rule refuses, or
/// a top that is not a file or directory), naming the path relative to `$WARMCACHE_OUT`; `None`
/// for any other publishing error (the cache's own problem, not the builder's).
fn unstorable_output(err: &StoreError) -> Option<String> {
    match err {
        StoreError::Refused { refused, .. } => Some(format!(
            "the build command succeeded but its output cannot be stored: it holds `{}` (relative to \
             $WARMCACHE_OUT), which {}; the builder must not leave it in the output",
            refused.path, refused.problem
        )),
        StoreError::Unsupported { kind, .. } => Some(format!(
            "the build command succeeded but left a {kind} at $WARMCACHE_OUT; the output must be a \
             regular file or a directory"
        )),
        _ => None,
    }
}
