//! Failure memory: how a failed build is classified, when it may be retried, and the pure decision
//! table of the entry state machine (docs/DESIGN.md, "The entry state machine").
//!
//! Everything here is pure (no clock, no randomness, no I/O) so the state machine can be tested
//! row by row; callers pass `now` (unix milliseconds) and a jitter value from [`random_jitter`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{ArtifactId, Fingerprint};

pub use crate::shell::Termination;

/// Whether retrying a failed build with unchanged inputs can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The environment was at fault (network, disk, memory, a signal, a timeout): retry with
    /// backoff, the same inputs may build later.
    Transient,
    /// The inputs are at fault (validation failed, a listed exit code): retrying only thrashes, so
    /// wait until the fingerprint changes or the user asks with `--refresh`.
    Deterministic,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Deterministic => "deterministic",
        }
    }
}

/// Whether a stale last good artifact may be served while the current fingerprint is blocked by a
/// recorded failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StalePolicy {
    /// Serve the last good artifact, visibly marked stale (the default: a cold start that works
    /// with yesterday's bundle beats one that fails).
    #[default]
    IfError,
    /// Never serve an artifact built from other inputs; report the recorded error instead.
    Never,
    /// Stale-while-revalidate (the HTTP rule of RFC 5861, applied to builds): everything
    /// `IfError` does, and also when the inputs changed (or a transient failure's retry is due)
    /// and a last good artifact is present, serve it at once, marked stale, and build the
    /// current inputs in the background instead of making the caller wait (docs/DESIGN.md,
    /// "Stale while revalidate").
    WhileRevalidate,
}

impl StalePolicy {
    /// Whether a last good artifact built from other inputs may be served at all.
    pub fn serves_stale(self) -> bool {
        matches!(self, StalePolicy::IfError | StalePolicy::WhileRevalidate)
    }

    /// The policy's name as written in `warmcache.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StalePolicy::IfError => "if-error",
            StalePolicy::Never => "never",
            StalePolicy::WhileRevalidate => "while-revalidate",
        }
    }
}

impl std::str::FromStr for StalePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "if-error" => Ok(StalePolicy::IfError),
            "never" => Ok(StalePolicy::Never),
            "while-revalidate" => Ok(StalePolicy::WhileRevalidate),
            other => Err(format!(
                "unknown stale policy `{other}`; use `if-error`, `never` or `while-revalidate`"
            )),
        }
    }
}

/// Which step of a build failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Build,
    Validate,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Build => "build command",
            Step::Validate => "validation command",
        }
    }
}

/// Why a build failed: a step ended badly, or the builder succeeded without producing its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    Step {
        step: Step,
        termination: Termination,
    },
    /// The build command exited 0 but nothing (or the wrong kind of thing) is at `$WARMCACHE_OUT`.
    BadOutput {
        message: String,
    },
    /// The cache could not hold the build: its volume is full or read-only. The environment's
    /// doing, never the inputs', so always transient.
    NoRoom {
        message: String,
    },
}

impl FailureCause {
    /// The signal that stopped warmcache itself in the middle of this step, if that is why it
    /// failed: not the build's failure, so never recorded.
    pub fn interrupted(&self) -> Option<i32> {
        match self {
            FailureCause::Step {
                termination: Termination::Interrupted(signal),
                ..
            } => Some(*signal),
            _ => None,
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureCause::Step { step, termination } => write!(f, "{} {termination}", step.as_str()),
            FailureCause::BadOutput { message } | FailureCause::NoRoom { message } => f.write_str(message),
        }
    }
}

/// Messages in a builder's output that mean the machine ran out of disk or memory.
const RESOURCE_MESSAGES: [&str; 4] = [
    "No space left on device",
    "Cannot allocate memory",
    "Disk quota exceeded",
    "Out of memory",
];

/// EX_TEMPFAIL from sysexits.h: "temporary failure, try again later".
pub const EX_TEMPFAIL: i32 = 75;

/// A recipe's rules for classifying failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailurePolicy {
    /// Builder exit codes that mean "these inputs cannot build".
    pub deterministic_exit_codes: Vec<i32>,
    /// Substrings of the builder's output (plain, case-sensitive substring match, no regex) that
    /// mark a failure transient, e.g. `"Could not resolve host"`.
    pub transient_patterns: Vec<String>,
    /// What any other non-zero exit is (docs/DESIGN.md: transient by default).
    pub other_exit: FailureKind,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            deterministic_exit_codes: Vec::new(),
            transient_patterns: Vec::new(),
            other_exit: FailureKind::Transient,
        }
    }
}

impl FailurePolicy {
    /// Classifies a failure given the tail of the failing step's output.
    ///
    /// In order, first match wins:
    /// 1. could not spawn, killed by a signal, timed out → transient (the step never finished, so
    ///    its verdict, even a validation's, is unknown);
    /// 2. out of disk or memory (ENOSPC/ENOMEM/EDQUOT at spawn, or the messages in the output)
    ///    → transient;
    /// 3. output contains one of the recipe's transient patterns → transient;
    /// 4. the builder exited 0 without producing its output → deterministic;
    /// 5. the validation command exited non-zero → deterministic;
    /// 6. the build exit code is listed in `deterministic_exit_codes` → deterministic (a listed 75
    ///    counts as deterministic: the recipe said so explicitly);
    /// 7. exit 75 (EX_TEMPFAIL) → transient;
    /// 8. any other exit code → `other_exit`.
    ///
    /// Environmental evidence (2, 3) wins over exit codes because a disk-full compiler exits
    /// with the same code as a compile error.
    pub fn classify(&self, cause: &FailureCause, tail: &str) -> FailureKind {
        use FailureKind::{Deterministic, Transient};
        if let FailureCause::NoRoom { .. } = cause {
            return Transient;
        }
        if let FailureCause::Step { termination, .. } = cause {
            match termination {
                Termination::Signaled(_) | Termination::TimedOut(_) => return Transient,
                Termination::SpawnFailed { .. } => return Transient,
                // Never recorded (the cache stops instead), but not the command's fault.
                Termination::Interrupted(_) => return Transient,
                Termination::Exited(_) => {}
            }
        }
        if RESOURCE_MESSAGES.iter().any(|m| tail.contains(m)) {
            return Transient;
        }
        if self
            .transient_patterns
            .iter()
            .any(|p| !p.is_empty() && tail.contains(p.as_str()))
        {
            return Transient;
        }
        match cause {
            FailureCause::BadOutput { .. } => Deterministic,
            FailureCause::NoRoom { .. } => Transient,
            FailureCause::Step {
                step: Step::Validate, ..
            } => Deterministic,
            FailureCause::Step {
                step: Step::Build,
                termination: Termination::Exited(code),
            } => {
                if self.deterministic_exit_codes.contains(code) {
                    Deterministic
                } else if *code == EX_TEMPFAIL {
                    Transient
                } else {
                    self.other_exit
                }
            }
            // Handled above; kept total without a panic path.
            FailureCause::Step { .. } => Transient,
        }
    }
}

/// Exponential backoff for transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// 30 s doubling to 15 min (docs/DESIGN.md, "The entry state machine").
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(30),
            cap: Duration::from_secs(15 * 60),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempts + 1`, after `attempts` consecutive failures
    /// (0 is treated as 1).
    ///
    /// The nominal delay is `initial * 2^(attempts-1)`, capped at `cap`. Jitter (`jitter` in
    /// [0, 1), from [`random_jitter`]) shortens it by up to a quarter: the result lies in
    /// (0.75 × nominal, nominal]. Shortening rather than lengthening keeps the delay within `cap`,
    /// and a quarter is enough to spread machines that failed together (same outage) apart.
    pub fn next_delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exponent = attempts.max(1) - 1;
        let factor = 2u32.saturating_pow(exponent.min(31));
        let nominal = self.initial.saturating_mul(factor).min(self.cap);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        nominal.mul_f64(1.0 - jitter / 4.0).min(self.cap)
    }
}

/// A jitter value in [0, 1) for [`Backoff::next_delay`] (decorrelates processes that failed
/// together; not for cryptography).
pub fn random_jitter() -> f64 {
    let word = u64::from_le_bytes(crate::random::bytes::<8>());
    // 53 random bits → a double in [0, 1).
    (word >> 11) as f64 / (1u64 << 53) as f64
}

/// The recorded failure of an entry (one per entry; the `failure` record of docs/DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The fingerprint the failing build was for.
    pub fingerprint: Fingerprint,
    pub kind: FailureKind,
    /// The last bytes of the failing step's output.
    pub error_tail: String,
    /// What happened, e.g. "build command exited with code 2".
    pub exit: String,
    /// Consecutive failures with this fingerprint.
    pub attempts: u32,
    /// Unix milliseconds.
    pub first_failed_at: i64,
    /// Unix milliseconds.
    pub last_failed_at: i64,
    /// Unix milliseconds; None for deterministic failures, which wait for new inputs instead.
    pub next_retry_at: Option<i64>,
}

/// Records a failed build of `fingerprint` at `now`, continuing `prev` when it was for the same
/// fingerprint (attempts + 1, the first failure time kept) and starting afresh otherwise.
#[allow(clippy::too_many_arguments)] // each is a distinct fact of the failure; a struct adds nothing
pub fn record_failure(
    prev: Option<&FailureRecord>,
    fingerprint: &Fingerprint,
    kind: FailureKind,
    exit: &str,
    tail: &str,
    now: i64,
    backoff: &Backoff,
    jitter: f64,
) -> FailureRecord {
    let continued = prev.filter(|p| &p.fingerprint == fingerprint);
    let attempts = continued.map_or(1, |p| p.attempts.saturating_add(1));
    let next_retry_at = match kind {
        FailureKind::Deterministic => None,
        FailureKind::Transient => {
            let delay = backoff.next_delay(attempts, jitter);
            Some(now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)))
        }
    };
    FailureRecord {
        fingerprint: fingerprint.clone(),
        kind,
        error_tail: tail.to_string(),
        exit: exit.to_string(),
        attempts,
        first_failed_at: continued.map_or(now, |p| p.first_failed_at),
        last_failed_at: now,
        next_retry_at,
    }
}

/// The last successful build of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    /// The artifact id in the store.
    pub artifact: ArtifactId,
    /// The fingerprint it was built from.
    pub fingerprint: Fingerprint,
}

/// Why `ensure` must build (for logs, `-v` and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildReason {
    /// Never built and never failed.
    NoRecord,
    /// The last good artifact was built from other inputs.
    InputsChanged,
    /// The last good artifact of these inputs is gone from the store.
    ArtifactMissing,
    /// A transient failure of these inputs is due for a retry.
    RetryDue,
    /// The caller asked with `--refresh`.
    Refresh,
}

/// What `ensure` does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The last good artifact is built from the current inputs and present: return it.
    Hit,
    /// Run the builder.
    Build(BuildReason),
    /// A recorded failure of the current inputs forbids building now. Serve `stale` (the last good
    /// artifact, present, built from other inputs) if there is one, else report `failure`.
    Blocked {
        failure: FailureRecord,
        stale: Option<LastGood>,
    },
    /// A build is due (for `reason`: the inputs changed, or a transient failure's retry is due)
    /// and the stale policy is `while-revalidate` with `stale` (the last good artifact, present,
    /// built from other inputs) to serve meanwhile: serve it now and build in the background.
    Revalidate { stale: LastGood, reason: BuildReason },
}

/// The entry state machine's table (docs/DESIGN.md, "The entry state machine"), for the current fingerprint `current_fp`.
///
/// `artifact_present` is whether `last_good`'s artifact could be opened. `now` is unix
/// milliseconds. `refresh` forces a build whatever is recorded (a hit included: the user asked),
/// in the foreground whatever the stale policy: the caller asked to wait for it.
pub fn decide(
    current_fp: &Fingerprint,
    last_good: Option<&LastGood>,
    artifact_present: bool,
    failure: Option<&FailureRecord>,
    now: i64,
    refresh: bool,
    stale_policy: StalePolicy,
) -> Decision {
    if refresh {
        return Decision::Build(BuildReason::Refresh);
    }
    if let Some(good) = last_good
        && &good.fingerprint == current_fp
        && artifact_present
    {
        return Decision::Hit;
    }
    if let Some(failure) = failure.filter(|f| &f.fingerprint == current_fp) {
        let blocked = match failure.kind {
            FailureKind::Deterministic => true,
            // A transient record without a retry time cannot come from record_failure; treat it as
            // due rather than pinning the entry forever (problem 2 of docs/DESIGN.md).
            FailureKind::Transient => failure.next_retry_at.is_some_and(|at| now < at),
        };
        if blocked {
            let stale = last_good
                .filter(|_| artifact_present && stale_policy.serves_stale())
                .cloned();
            return Decision::Blocked {
                failure: failure.clone(),
                stale,
            };
        }
        return revalidate_or_build(
            BuildReason::RetryDue,
            current_fp,
            last_good,
            artifact_present,
            stale_policy,
        );
    }
    match last_good {
        None => Decision::Build(BuildReason::NoRecord),
        Some(good) if &good.fingerprint != current_fp => revalidate_or_build(
            BuildReason::InputsChanged,
            current_fp,
            last_good,
            artifact_present,
            stale_policy,
        ),
        Some(_) => Decision::Build(BuildReason::ArtifactMissing),
    }
}

/// A build for `reason`, or, under `while-revalidate` with a present last good artifact of other
/// inputs to serve meanwhile, a revalidation. Without one (never built, or its artifact gone) the
/// caller has nothing to run but a fresh build, so it builds in the foreground.
fn revalidate_or_build(
    reason: BuildReason,
    current_fp: &Fingerprint,
    last_good: Option<&LastGood>,
    artifact_present: bool,
    stale_policy: StalePolicy,
) -> Decision {
    match last_good {
        Some(good)
            if stale_policy == StalePolicy::WhileRevalidate
                && artifact_present
                && &good.fingerprint != current_fp =>
        {
            Decision::Revalidate {
                stale: good.clone(),
                reason,
            }
        }
        _ => Decision::Build(reason),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static F: LazyLock<Fingerprint> = LazyLock::new(|| Fingerprint::from_hash(&blake3::hash(b"current")));
    static OLD: LazyLock<Fingerprint> = LazyLock::new(|| Fingerprint::from_hash(&blake3::hash(b"old")));
    const NOW: i64 = 1_000_000;

    fn good(fp: &Fingerprint) -> LastGood {
        LastGood {
            artifact: ArtifactId::from_hash(&blake3::hash(fp.as_str().as_bytes())),
            fingerprint: fp.clone(),
        }
    }

    fn failure(fp: &Fingerprint, kind: FailureKind, next_retry_at: Option<i64>) -> FailureRecord {
        FailureRecord {
            fingerprint: fp.clone(),
            kind,
            error_tail: "boom".into(),
            exit: "build command exited with code 1".into(),
            attempts: 1,
            first_failed_at: NOW - 10,
            last_failed_at: NOW - 10,
            next_retry_at,
        }
    }

    fn exited(code: i32) -> FailureCause {
        FailureCause::Step {
            step: Step::Build,
            termination: Termination::Exited(code),
        }
    }

    // Row 1: last_good built from F, artifact present → hit.
    #[test]
    fn row_hit() {
        let g = good(&F);
        assert_eq!(
            decide(&F, Some(&g), true, None, NOW, false, StalePolicy::IfError),
            Decision::Hit
        );
        // A failure of older inputs does not matter once F built.
        let old = failure(&OLD, FailureKind::Deterministic, None);
        assert_eq!(
            decide(&F, Some(&g), true, Some(&old), NOW, false, StalePolicy::IfError),
            Decision::Hit
        );
    }

    // Row 2: deterministic failure for F → blocked, stale if allowed, until F changes or refresh.
    #[test]
    fn row_deterministic_failure_blocks_and_serves_stale() {
        let g = good(&OLD);
        let f = failure(&F, FailureKind::Deterministic, None);
        let far_future = NOW + 365 * 86_400_000;
        let d = decide(
            &F,
            Some(&g),
            true,
            Some(&f),
            far_future,
            false,
            StalePolicy::IfError,
        );
        assert_eq!(
            d,
            Decision::Blocked {
                failure: f.clone(),
                stale: Some(g.clone())
            }
        );
        let d = decide(&F, Some(&g), true, Some(&f), NOW, false, StalePolicy::Never);
        assert_eq!(
            d,
            Decision::Blocked {
                failure: f.clone(),
                stale: None
            }
        );
        // Stale needs the artifact to be there.
        let d = decide(&F, Some(&g), false, Some(&f), NOW, false, StalePolicy::IfError);
        assert_eq!(
            d,
            Decision::Blocked {
                failure: f.clone(),
                stale: None
            }
        );
        // F changes → build.
        assert_eq!(
            decide(
                &Fingerprint::from_hash(&blake3::hash(b"newer")),
                Some(&g),
                true,
                Some(&f),
                NOW,
                false,
                StalePolicy::IfError
            ),
            Decision::Build(BuildReason::InputsChanged)
        );
        // --refresh → build.
        assert_eq!(
            decide(&F, Some(&g), true, Some(&f), NOW, true, StalePolicy::IfError),
            Decision::Build(BuildReason::Refresh)
        );
    }

    // Row 3: transient failure for F before next_retry_at → blocked (stale or error).
    #[test]
    fn row_transient_failure_before_retry_blocks() {
        let g = good(&OLD);
        let f = failure(&F, FailureKind::Transient, Some(NOW + 1));
        assert_eq!(
            decide(&F, Some(&g), true, Some(&f), NOW, false, StalePolicy::IfError),
            Decision::Blocked {
                failure: f.clone(),
                stale: Some(g.clone())
            }
        );
        assert_eq!(
            decide(&F, None, false, Some(&f), NOW, false, StalePolicy::IfError),
            Decision::Blocked {
                failure: f.clone(),
                stale: None
            }
        );
    }

    // Row 4: transient failure for F, retry due → build.
    #[test]
    fn row_transient_failure_retry_due_builds() {
        let g = good(&OLD);
        let f = failure(&F, FailureKind::Transient, Some(NOW));
        assert_eq!(
            decide(&F, Some(&g), true, Some(&f), NOW, false, StalePolicy::IfError),
            Decision::Build(BuildReason::RetryDue)
        );
        let no_time = failure(&F, FailureKind::Transient, None);
        assert_eq!(
            decide(&F, None, false, Some(&no_time), NOW, false, StalePolicy::IfError),
            Decision::Build(BuildReason::RetryDue)
        );
    }

    // Row 5: anything else → build.
    #[test]
    fn row_anything_else_builds() {
        assert_eq!(
            decide(&F, None, false, None, NOW, false, StalePolicy::IfError),
            Decision::Build(BuildReason::NoRecord)
        );
        let old = good(&OLD);
        assert_eq!(
            decide(&F, Some(&old), true, None, NOW, false, StalePolicy::IfError),
            Decision::Build(BuildReason::InputsChanged)
        );
        let g = good(&F);
        assert_eq!(
            decide(&F, Some(&g), false, None, NOW, false, StalePolicy::IfError),
            Decision::Build(BuildReason::ArtifactMissing)
        );
        // A failure recorded for other inputs does not block the current ones.
        let f = failure(&OLD, FailureKind::Deterministic, None);
        assert_eq!(
            decide(&F, Some(&old), true, Some(&f), NOW, false, StalePolicy::IfError),
            Decision::Build(BuildReason::InputsChanged)
        );
    }

    #[test]
    fn while_revalidate_serves_stale_and_builds_in_the_background() {
        let swr = StalePolicy::WhileRevalidate;
        let old = good(&OLD);
        let revalidate = |reason| Decision::Revalidate {
            stale: old.clone(),
            reason,
        };
        // Inputs changed, last good present: revalidate.
        assert_eq!(
            decide(&F, Some(&old), true, None, NOW, false, swr),
            revalidate(BuildReason::InputsChanged)
        );
        // A transient failure of F whose retry is due: revalidate too.
        let due = failure(&F, FailureKind::Transient, Some(NOW));
        assert_eq!(
            decide(&F, Some(&old), true, Some(&due), NOW, false, swr),
            revalidate(BuildReason::RetryDue)
        );
        // Failure memory still blocks, serving stale as `if-error` does.
        for f in [
            failure(&F, FailureKind::Transient, Some(NOW + 1)),
            failure(&F, FailureKind::Deterministic, None),
        ] {
            assert_eq!(
                decide(&F, Some(&old), true, Some(&f), NOW, false, swr),
                Decision::Blocked {
                    failure: f.clone(),
                    stale: Some(old.clone())
                }
            );
        }
        // Nothing to serve meanwhile: a foreground build, as under `if-error`.
        assert_eq!(
            decide(&F, None, false, None, NOW, false, swr),
            Decision::Build(BuildReason::NoRecord)
        );
        assert_eq!(
            decide(&F, Some(&old), false, None, NOW, false, swr),
            Decision::Build(BuildReason::InputsChanged)
        );
        let g = good(&F);
        assert_eq!(
            decide(&F, Some(&g), false, None, NOW, false, swr),
            Decision::Build(BuildReason::ArtifactMissing)
        );
        // A hit is a hit; --refresh builds in the foreground.
        assert_eq!(decide(&F, Some(&g), true, None, NOW, false, swr), Decision::Hit);
        assert_eq!(
            decide(&F, Some(&old), true, None, NOW, true, swr),
            Decision::Build(BuildReason::Refresh)
        );
        for policy in ["if-error", "never", "while-revalidate"] {
            assert_eq!(policy.parse::<StalePolicy>().unwrap().as_str(), policy);
        }
        assert!(
            "sometimes"
                .parse::<StalePolicy>()
                .unwrap_err()
                .contains("while-revalidate")
        );
    }

    #[test]
    fn refresh_rebuilds_even_a_hit() {
        let g = good(&F);
        assert_eq!(
            decide(&F, Some(&g), true, None, NOW, true, StalePolicy::IfError),
            Decision::Build(BuildReason::Refresh)
        );
    }

    #[test]
    fn classification_follows_the_design_table() {
        use FailureKind::{Deterministic, Transient};
        let policy = FailurePolicy {
            deterministic_exit_codes: vec![2, 75],
            transient_patterns: vec!["Could not resolve host".into()],
            other_exit: Transient,
        };
        let step = |step, termination| FailureCause::Step { step, termination };
        let c = |cause: &FailureCause, tail: &str| policy.classify(cause, tail);
        assert_eq!(c(&step(Step::Build, Termination::Signaled(9)), ""), Transient);
        assert_eq!(
            c(
                &step(Step::Build, Termination::TimedOut(Duration::from_secs(1))),
                ""
            ),
            Transient
        );
        let spawn = Termination::SpawnFailed {
            errno: Some(libc::ENOENT),
            message: "no sh".into(),
        };
        assert_eq!(c(&step(Step::Build, spawn), ""), Transient);
        assert_eq!(c(&exited(1), "write: No space left on device"), Transient);
        assert_eq!(c(&exited(2), "fatal: Cannot allocate memory"), Transient);
        assert_eq!(c(&exited(1), "curl: (6) Could not resolve host: x"), Transient);
        assert_eq!(c(&exited(2), "error[E0425]"), Deterministic);
        assert_eq!(
            c(&exited(1), "error"),
            Transient,
            "other exits default to transient"
        );
        assert_eq!(
            c(&step(Step::Validate, Termination::Exited(1)), "bad"),
            Deterministic
        );
        assert_eq!(
            c(
                &step(Step::Validate, Termination::TimedOut(Duration::from_secs(1))),
                ""
            ),
            Transient
        );
        assert_eq!(
            c(
                &FailureCause::BadOutput {
                    message: "none".into()
                },
                ""
            ),
            Deterministic
        );
        // The listed 75 is deterministic; unlisted 75 is EX_TEMPFAIL.
        assert_eq!(c(&exited(75), ""), Deterministic);
        let default = FailurePolicy::default();
        assert_eq!(default.classify(&exited(75), ""), Transient);
        let strict = FailurePolicy {
            other_exit: Deterministic,
            ..FailurePolicy::default()
        };
        assert_eq!(strict.classify(&exited(1), ""), Deterministic);
        assert_eq!(strict.classify(&exited(EX_TEMPFAIL), ""), Transient);
        assert_eq!(strict.classify(&exited(1), "No space left on device"), Transient);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_only_shortens() {
        let b = Backoff::default();
        assert_eq!(b.next_delay(0, 0.0), Duration::from_secs(30));
        assert_eq!(b.next_delay(1, 0.0), Duration::from_secs(30));
        assert_eq!(b.next_delay(2, 0.0), Duration::from_secs(60));
        assert_eq!(b.next_delay(3, 0.0), Duration::from_secs(120));
        assert_eq!(b.next_delay(5, 0.0), Duration::from_secs(480));
        assert_eq!(b.next_delay(6, 0.0), Duration::from_secs(900));
        assert_eq!(b.next_delay(u32::MAX, 0.0), Duration::from_secs(900));
        for attempts in 0..70 {
            for jitter in [0.0, 0.3, 0.999_999, 1.0, -1.0, f64::NAN] {
                let d = b.next_delay(attempts, jitter);
                assert!(d <= b.cap, "{attempts} {jitter}: {d:?}");
                assert!(
                    d >= b.next_delay(attempts, 0.0).mul_f64(0.75),
                    "{attempts} {jitter}"
                );
            }
        }
        assert_eq!(b.next_delay(1, 0.5), Duration::from_millis(26_250));
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn record_failure_counts_attempts_per_fingerprint() {
        let b = Backoff::default();
        let t = FailureKind::Transient;
        let first = record_failure(None, &F, t, "exit 1", "tail1", NOW, &b, 0.0);
        assert_eq!(first.attempts, 1);
        assert_eq!(first.first_failed_at, NOW);
        assert_eq!(first.next_retry_at, Some(NOW + 30_000));
        let second = record_failure(Some(&first), &F, t, "exit 1", "tail2", NOW + 40_000, &b, 0.0);
        assert_eq!(second.attempts, 2);
        assert_eq!(second.first_failed_at, NOW);
        assert_eq!(second.last_failed_at, NOW + 40_000);
        assert_eq!(second.next_retry_at, Some(NOW + 40_000 + 60_000));
        assert_eq!(second.error_tail, "tail2");
        // New inputs start over.
        let new = Fingerprint::from_hash(&blake3::hash(b"new"));
        let other = record_failure(Some(&second), &new, t, "exit 1", "t", NOW + 50_000, &b, 0.0);
        assert_eq!(other.attempts, 1);
        assert_eq!(other.first_failed_at, NOW + 50_000);
        assert_eq!(other.next_retry_at, Some(NOW + 50_000 + 30_000));
        // Deterministic failures wait for new inputs, not for a time.
        let det = record_failure(
            Some(&other),
            &new,
            FailureKind::Deterministic,
            "v",
            "t",
            NOW,
            &b,
            0.0,
        );
        assert_eq!(det.attempts, 2);
        assert_eq!(det.next_retry_at, None);
        // The record round-trips through serde for the catalog.
        let json = serde_json::to_string(&det).unwrap();
        assert_eq!(serde_json::from_str::<FailureRecord>(&json).unwrap(), det);
        assert!(json.contains("\"kind\":\"deterministic\""), "{json}");
    }

    #[test]
    fn causes_describe_themselves() {
        assert_eq!(exited(3).to_string(), "build command exited with code 3");
        let killed = FailureCause::Step {
            step: Step::Build,
            termination: Termination::Signaled(9),
        };
        assert!(killed.to_string().contains("signal 9 (SIGKILL"), "{killed}");
        let timeout = FailureCause::Step {
            step: Step::Validate,
            termination: Termination::TimedOut(Duration::from_secs(30)),
        };
        assert!(
            timeout
                .to_string()
                .contains("validation command timed out after 30s")
        );
    }
}
