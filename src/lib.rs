//! warmcache: a crash-safe artifact cache for cold starts.
//!
//! See `DESIGN.md` in the project's shared folder for the invariants. The modules mirror its parts.

pub mod archive;
pub mod fs;
