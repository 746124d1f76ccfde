//! Renames that publish: never replacing a content-addressed name, swapping two paths
//! atomically, and replacing with the retries some platforms need.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::{annotate2, sys};

/// Renames `from` to `to` unless `to` already exists.
///
/// Returns `Ok(true)` when renamed and `Ok(false)` when `to` was already there, in which case
/// `from` is left in place for the caller to discard. For content-addressed names this is how two
/// writers of the same content race harmlessly: the loser keeps the winner's copy.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    match sys::rename_noreplace(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A directory rename onto a non-empty directory reports "not empty" on some systems.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(e) => Err(annotate2(e, "rename", from, to)),
    }
}

/// Atomically swaps two paths (files or directories), so that each name always refers to a whole
/// object. Fails with `ErrorKind::Unsupported` where the platform or file system cannot do it.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    sys::exchange(a, b).map_err(|e| annotate2(e, "exchange", a, b))
}

/// `std::fs::rename` with the retries Windows needs when another process briefly holds the file
/// (antivirus, indexers); elsewhere a single attempt.
pub fn rename_with_retry(from: &Path, to: &Path) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        match std::fs::rename(from, to) {
            Ok(()) => return Ok(()),
            Err(e) if cfg!(windows) && e.kind() == io::ErrorKind::PermissionDenied && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10 << attempt.min(5)));
            }
            Err(e) => return Err(annotate2(e, "rename", from, to)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_keeps_the_first_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, dst) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("dst"));
        std::fs::write(&a, b"first").unwrap();
        std::fs::write(&b, b"second").unwrap();
        assert!(rename_noreplace(&a, &dst).unwrap());
        assert!(!rename_noreplace(&b, &dst).unwrap());
        assert_eq!(std::fs::read(&dst).unwrap(), b"first");
        assert!(b.exists(), "the loser's copy stays for the caller to discard");
    }

    #[test]
    fn rename_noreplace_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, dst) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("dst"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("f"), d.to_string_lossy().as_bytes()).unwrap();
        }
        assert!(rename_noreplace(&a, &dst).unwrap());
        assert!(!rename_noreplace(&b, &dst).unwrap());
        assert_eq!(
            std::fs::read(dst.join("f")).unwrap(),
            a.to_string_lossy().as_bytes()
        );
    }

    #[test]
    fn exchange_swaps_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(&b, b"file").unwrap();
        exchange(&a, &b).unwrap();
        assert!(a.is_file());
        assert!(b.is_dir());
    }
}
