//! `restore` replaces DIR wholesale, so a DIR inside the cache root (the root itself, its store,
//! an artifact) is refused before anything is contacted or changed, as `activate` refuses such a
//! destination. Before, `restore ROOT` replaced the whole cache and `restore $(warmcache path X)`
//! an immutable artifact. A DIR that holds the root is refused too, by `restore` and `snapshot`.

use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};
use crate::support::*;

#[test]
fn a_restore_into_the_cache_is_refused_and_changes_nothing() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("tool.txt");
    std::fs::write(&file, "the artifact").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "tool"]));
    let artifact = String::from_utf8(run(warmcache(&root).args(["path", "tool"])).stdout).unwrap();
    let artifact = std::path::PathBuf::from(artifact.trim());
    let tree = make_tree(&tmp.path().join("tree"), 5, 100, 1);
    let uploaded = json_ok(&snapshot(&server, &root, &tree, "k", &[]));
    assert_eq!(uploaded["status"], "uploaded", "{uploaded}");

    for dir in [
        root.clone(),
        root.join("v1"),
        root.join("v1/objects"),
        artifact.parent().unwrap().to_path_buf(),
        artifact.clone(),
    ] {
        let out = restore(&server, &root, &dir, "k", &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "restore into {} was not refused",
            dir.display()
        );
        let message = stderr(&out);
        assert!(message.contains("inside the cache root"), "{message}");
        assert_eq!(std::fs::read_to_string(&artifact).unwrap(), "the artifact");
        assert_consistent(&root, &format!("after a restore into {}", dir.display()));
    }
    // Outside the cache, the same snapshot restores.
    let restored = json_ok(&restore(&server, &root, &tmp.path().join("elsewhere"), "k", &[]));
    assert_eq!(restored["status"], "restored", "{restored}");
}

/// A directory that holds the cache root (a home directory holding `~/.cache/warmcache`): a
/// restore would swap the live cache for the snapshot's old copy, and a snapshot would upload
/// the cache while it changes. Both are refused, and the cache keeps what was imported.
#[test]
fn a_directory_holding_the_cache_is_refused_by_restore_and_snapshot() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let root = home.join(".cache/warmcache");
    std::fs::create_dir_all(&root).unwrap();
    let file = tmp.path().join("tool.txt");
    std::fs::write(&file, "the artifact").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "tool"]));
    let tree = make_tree(&tmp.path().join("tree"), 5, 100, 1);
    json_ok(&snapshot(&server, &root, &tree, "k", &[]));
    std::os::unix::fs::symlink(&home, tmp.path().join("home-link")).unwrap();

    for dir in [home.clone(), home.join(".cache"), tmp.path().join("home-link")] {
        let out = restore(&server, &root, &dir, "k", &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "restore into {} was not refused",
            dir.display()
        );
        assert!(stderr(&out).contains("holds the cache root"), "{}", stderr(&out));
        let out = snapshot(&server, &root, &dir, "other", &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "snapshot of {} was not refused",
            dir.display()
        );
        assert!(stderr(&out).contains("holds the cache root"), "{}", stderr(&out));
        ok(warmcache(&root).args(["path", "tool"]));
        assert_consistent(&root, &format!("after {}", dir.display()));
    }
}
