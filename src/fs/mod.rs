//! File-system primitives that every publish, activation and collection is built from.
//!
//! The rules they encode (see docs/DESIGN.md, "Invariants"):
//! - publishing is stage → write → fsync → rename → fsync the parent directory;
//! - a content-addressed name is never replaced: [`rename_noreplace`] reports "someone else won";
//! - readers open first and inspect the handle ([`open_existing`]), so a vanished file is a miss;
//! - staging lives on the same file system as its destination, and leftovers from a crashed
//!   process are found by their released lock and swept ([`StagingArea::sweep`]).
//!
//! One concept per submodule: `durable` (fsync of files, directories and trees), `rename`
//! (no-replace, exchange, retries), `atomic` (atomic writes, reads where missing is a miss),
//! `perms` (permissions, read-only trees and their removal), `link` (link modes), `staging`
//! (private staging locations and their sweep), `walk` (sorted walks, disk usage) and `sys` (the
//! platform calls behind no-replace renames, exchange and reflinks). Every public name is
//! re-exported here, so callers write `crate::fs::X`.
//!
//! Errors are `io::Error`s whose message names the operation and the path(s) (through `fs-err`
//! or [`annotate`]) and whose [`io::ErrorKind`] is kept, so callers can still tell "already
//! exists" or "disk full" apart.

use std::io;
use std::path::Path;

mod atomic;
mod durable;
mod link;
mod path;
mod perms;
mod rename;
mod staging;
mod sys;
mod walk;

pub use atomic::{open_existing, read_if_exists, write_atomic};
pub use durable::{create_dir_all_durable, fsync_dir, fsync_parent, sync_tree, sync_tree_each};
pub use link::{LinkMode, copy_file, reflink, symlink};
pub use path::resolve_existing_prefix;
#[cfg(test)]
pub use perms::make_tree_read_only;
pub use perms::{
    is_executable, make_tree_writable, mode_permissions, published_file_permissions, remove_tree,
    set_permissions,
};
pub use rename::{exchange, rename_noreplace, rename_with_retry};
pub use staging::{Staged, StagingArea, SweepReport, unique_name};
pub use walk::{disk_usage, walk_sorted};

/// Whether two files' metadata are of the same file (device and inode), e.g. an open handle's
/// and its path's, to tell a file still at its path from one removed or replaced since it was
/// opened.
#[cfg(unix)]
pub fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// See the Unix version.
#[cfg(not(unix))]
pub fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    // Without inode numbers, trust the name; a file open elsewhere cannot be removed there.
    true
}

/// Wraps an `io::Error` with the operation and path, keeping its kind.
pub fn annotate(err: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("failed to {op} `{}`: {err}", path.display()))
}

/// Like [`annotate`], for operations with a source and a destination.
pub fn annotate2(err: io::Error, op: &str, from: &Path, to: &Path) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("failed to {op} `{}` to `{}`: {err}", from.display(), to.display()),
    )
}
