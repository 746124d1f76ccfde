//! warmcache: a crash-safe artifact cache for cold starts.
//!
//! See `DESIGN.md` in the project's shared folder for the invariants. The modules mirror its parts:
//! [`fs`] primitives, the content-addressed [`store`], the [`catalog`], [`lock`]s, [`activate`],
//! garbage collection ([`gc`]) and the command line ([`cli`]); [`cache`] ties one root together.

pub mod activate;
pub mod archive;
pub mod build;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod fs;
pub mod gc;
pub mod import;
pub mod layout;
pub mod lock;
pub mod name;
pub mod parallel;
pub mod place;
pub mod progress;
pub mod remote;
pub mod shell;
pub mod store;
pub mod units;

pub use cache::{Cache, CacheError, CacheOptions};
