//! Building entries: recipes (from `warmcache.toml` or flags), fingerprints, the builder process,
//! failure classification and backoff, and the pure decision table of the entry state machine
//! (DESIGN.md, "The entry state machine"). Persistence and locking are the caller's.

pub mod ensure;
pub mod failure;
pub mod fingerprint;
pub mod recipe;
pub mod runner;

pub use ensure::{EnsureError, EnsureOptions, EnsureStatus, Ensured, FailureReport, WaitPolicy};
pub use failure::{
    Backoff, BuildReason, Decision, FailureCause, FailureKind, FailurePolicy, FailureRecord, LastGood,
    StalePolicy, decide, random_jitter, record_failure,
};
pub use fingerprint::{Fingerprint, FingerprintError, StatCache, fingerprint};
pub use recipe::{OutputKind, Recipe, RecipeError};
pub use runner::{DEFAULT_TAIL_BYTES, RunFailure, RunOutcome, run};
