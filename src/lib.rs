//! warmcache: a crash-safe artifact cache for cold starts.
//!
//! Open a [`Cache`] on a root directory and ask it for artifacts: [`Cache::ensure`] builds a
//! [`build::Recipe`] at most once and remembers failures, [`Cache::import`] publishes files,
//! trees and archives, [`Cache::activate`] places an artifact outside the cache atomically,
//! [`Cache::gc`] frees space without pulling anything from under a reader, and
//! [`remote::snapshot`] moves whole directories through S3-compatible storage.
//!
//! The design, its invariants and the on-disk and remote formats are in `docs/DESIGN.md`. The
//! modules mirror its parts: [`cache`] is the one orchestrator; everything below it is a leaf
//! that does not know it.

pub mod activate;
pub mod archive;
pub mod build;
pub mod cache;
pub(crate) mod catalog;
pub mod clock;
pub mod config;
pub(crate) mod fs;
pub mod ids;
pub(crate) mod layout;
pub(crate) mod lock;
pub(crate) mod parallel;
pub(crate) mod place;
pub mod progress;
pub(crate) mod random;
pub mod remote;
pub(crate) mod shell;
pub mod stats;
pub(crate) mod store;
pub mod units;

pub use cache::{
    Activated, Cache, CacheError, CacheOptions, EnsureError, EnsureOptions, EnsureStatus, Ensured, GcOptions,
    GcReport, ImportOptions, Imported, Lease, WaitPolicy,
};
pub use ids::{ArtifactId, EntryName, Fingerprint};
/// Termination signals end running builders and hooks with their process groups
/// (docs/DESIGN.md, "Nothing outlives its command").
pub use shell::signals;
