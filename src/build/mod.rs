//! Building entries, as pure parts: recipes (from `warmcache.toml` or flags), fingerprints, the
//! builder process, failure classification and backoff, and the decision table of the entry
//! state machine (docs/DESIGN.md, "The entry state machine"). Nothing here locks, writes the
//! catalog or knows the cache: [`crate::cache`] composes these into `ensure`.

pub mod failure;
pub mod fingerprint;
pub mod recipe;
pub mod runner;

pub use failure::{
    Backoff, BuildReason, Decision, FailureCause, FailureKind, FailurePolicy, FailureRecord, LastGood,
    StalePolicy, decide, random_jitter, record_failure,
};
pub use fingerprint::{FingerprintError, Fingerprinted, StatCache, fingerprint};
pub use recipe::{EntryConfig, OutputKind, Recipe, RecipeError, check_input_glob};
pub use runner::{DEFAULT_TAIL_BYTES, RunFailure, RunOutcome, run};
