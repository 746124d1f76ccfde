//! Atomic writes, and reads where a missing file is a miss rather than an error.

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::path::Path;

use super::annotate;
use super::durable::fsync_dir;

/// Writes `contents` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename over `path`, fsync the directory. Readers see the old or the new bytes, never a
/// mix. The file gets the mode of any new file (0666 less the umask), not a temporary file's
/// private 0600: other users' tools read these files (a metrics collector, a backup's
/// CACHEDIR.TAG check). The temporary name starts with a dot and ends in `.tmp`, so a collector
/// that reads `*.prom` files never sees it.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.suffix(".tmp");
    // `open` applies the umask to the mode asked for.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(parent)
        .map_err(|e| annotate(e, "create a temporary file in", parent))?;
    tmp.write_all(contents)
        .map_err(|e| annotate(e, "write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| annotate(e, "fsync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| annotate(e.error, "rename into place", path))?;
    fsync_dir(parent)
}

/// Opens an existing file for reading and returns it with the metadata of the opened handle.
///
/// `Ok(None)` means it does not exist (a cache miss). The metadata comes from the handle, not the
/// path, so a concurrent rename or deletion cannot make the two disagree.
pub fn open_existing(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata().map_err(|e| annotate(e, "inspect", path))?;
            Ok(Some((file, meta)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(annotate(e, "open", path)),
    }
}

/// Reads a whole (small) file, treating "not found" as `None`.
pub fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(annotate(e, "read", path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_existing_reports_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(open_existing(&tmp.path().join("missing")).unwrap().is_none());
    }
}
