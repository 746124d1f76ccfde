//! warmcache: a crash-safe artifact cache for cold starts.
//!
//! See `DESIGN.md` in the project's shared folder for the invariants. The modules mirror its parts.

pub mod cache;
pub mod catalog;
pub mod fs;
pub mod gc;
pub mod layout;
pub mod lock;
pub mod name;
pub mod parallel;
pub mod progress;
pub mod store;

pub use cache::{Cache, CacheError, CacheOptions};
pub mod cli;
pub mod units;
