//! Snapshotting an unchanged tree uploads nothing (no object is written, the pointer keeps its
//! bytes), restoring into a directory that already holds the snapshot downloads nothing, and the
//! warmth guard refuses to replace a snapshot with a colder tree (fewer files AND fewer bytes)
//! unless `--force`, while a tree that merely changed goes up without it.

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, pointer, restore, snapshot};
use crate::support::{json_ok, stderr};

const KEY: &str = "ci/deps";

#[test]
fn unchanged_tree_uploads_nothing_and_restore_downloads_nothing() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 120, 16 * 1024, 3);

    let first = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(first["status"], "uploaded", "{first}");
    let before = objects(&server);
    assert_eq!(before.len(), 3, "pointer, manifest, archive: {before:?}");

    let again = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(again["status"], "unchanged", "{again}");
    assert_eq!(again["uploaded_bytes"], 0);
    assert_eq!(
        objects(&server),
        before,
        "an unchanged snapshot wrote to the bucket"
    );

    // A restore into a directory that already holds the snapshot fetches no file content
    // (only the manifest's segments, to compare DIR with).
    let report = json_ok(&restore(&server, &cache, &src, KEY, &[]));
    assert_eq!(report["status"], "unchanged", "{report}");
    assert_eq!(report["fetched_chunks"], 0, "{report}");
    assert_eq!(report["seeded_bytes"], 0, "{report}");
}

#[test]
fn a_colder_tree_is_refused_unless_forced() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let warm = support::make_tree(&tmp.path().join("warm"), 200, 16 * 1024, 5);
    let warm_report = json_ok(&snapshot(&server, &cache, &warm, KEY, &[]));
    let warm_pointer = pointer(&server, KEY);
    let before = objects(&server);

    // A cold start: the same tree, half installed.
    let cold = support::make_tree(&tmp.path().join("cold"), 90, 16 * 1024, 5);
    let out = snapshot(&server, &cache, &cold, KEY, &[]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "refused", "{report}");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(objects(&server), before, "a refused snapshot wrote to the bucket");

    let strict = snapshot(&server, &cache, &cold, KEY, &["--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    assert_eq!(objects(&server), before);

    let forced = json_ok(&snapshot(&server, &cache, &cold, KEY, &["--force"]));
    assert_eq!(forced["status"], "uploaded", "{forced}");
    assert_eq!(pointer(&server, KEY)["digest"], forced["digest"]);

    // Back to the warm tree (more files and bytes: no guard). Its archive is still in the
    // bucket, so nothing is uploaded, yet the pointer is rewritten (A→B→A).
    let back = json_ok(&snapshot(&server, &cache, &warm, KEY, &[]));
    assert_eq!(back["status"], "uploaded", "{back}");
    assert_eq!(back["uploaded_bytes"], 0, "{back}");
    let now = pointer(&server, KEY);
    assert_eq!(now["digest"], warm_report["digest"]);
    assert_ne!(now["nonce"], warm_pointer["nonce"]);
}

#[test]
fn a_changed_tree_that_is_not_colder_goes_up_without_force() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let tree = support::make_tree(&tmp.path().join("tree"), 100, 16 * 1024, 9);
    json_ok(&snapshot(&server, &cache, &tree, KEY, &[]));

    // One package swapped for a bigger one: fewer files, more bytes.
    std::fs::remove_file(tree.join("d1/s1/f1.bin")).unwrap();
    std::fs::remove_file(tree.join("d2/s2/f2.bin")).unwrap();
    std::fs::write(tree.join("d3/new.bin"), support::Rng::new(1).bytes(64 * 1024)).unwrap();
    let report = json_ok(&snapshot(&server, &cache, &tree, KEY, &[]));
    assert_eq!(report["status"], "uploaded", "{report}");
    assert_eq!(pointer(&server, KEY)["digest"], report["digest"]);
}
