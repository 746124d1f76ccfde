//! Resolving paths that may not exist yet.

use std::path::{Path, PathBuf};

/// `path` made absolute with its deepest existing ancestor's symlinks resolved (the rest
/// appended as given), for asking whether a path that may not exist yet lies inside a directory.
pub fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(resolved) = std::fs::canonicalize(existing) {
            return rest
                .iter()
                .rev()
                .fold(resolved, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_under_a_symlink_resolves_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let resolved = resolve_existing_prefix(&tmp.path().join("link/new/file"));
        assert_eq!(resolved, real.canonicalize().unwrap().join("new/file"));
    }
}
