//! A snapshot reads each file once, hashing it as it streams into the upload, so whatever happens
//! to the tree meanwhile, a published snapshot's manifest describes its archive exactly: a file
//! rewritten or removed during the snapshot either goes up consistently or the snapshot is
//! refused as "changed" with the bucket left as it was (a write seen landing while a file was
//! read refuses it too, as GNU tar warns "file changed as we read it"). And an upload that fails midway (the
//! archive streaming, the reading thread ahead of it) leaves the pointer and the bucket unchanged
//! and the command returns.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, pointer, restore, snapshot};
use crate::support::{json_ok, stderr};

const KEY: &str = "ci/changing";
const HOT: usize = 256 * 1024;

/// Rewrites `hot.bin` in place (same size, alternating content) and, when `blink`, creates and
/// removes `blink.bin`, as fast as it can, until `stop`.
fn churn(dir: &Path, blink: bool, stop: &AtomicBool) {
    let hot = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("hot.bin"))
        .unwrap();
    let patterns = [vec![b'a'; HOT], vec![b'b'; HOT]];
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        // Errors end the churn: they only happen once the test is over (its directory gone).
        if hot.write_all_at(&patterns[i % 2], 0).is_err() {
            return;
        }
        let blinking = dir.join("blink.bin");
        if blink && i % 2 == 0 {
            if std::fs::write(&blinking, b"now you see me").is_err() {
                return;
            }
        } else if blink {
            let _ = std::fs::remove_file(&blinking);
        }
        i += 1;
    }
}

/// Restores the snapshot at `key` into a new directory, then again into the same one: the
/// second finds the directory already holding the pointer's digest only if the archive's content
/// is exactly what the manifest's digest describes.
fn assert_archive_matches_digest(server: &TestS3, cache: &Path, dst: &Path, key: &str) {
    let first = json_ok(&restore(server, cache, dst, key, &[]));
    assert_eq!(first["status"], "restored", "{first}");
    let second = json_ok(&restore(server, cache, dst, key, &[]));
    assert_eq!(
        second["status"], "unchanged",
        "the restored tree is not the tree the snapshot's digest names: {second}"
    );
}

fn with_churn<T>(dir: &Path, blink: bool, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let (dir, stop) = (dir.to_path_buf(), stop.clone());
        std::thread::spawn(move || churn(&dir, blink, &stop))
    };
    let out = f();
    stop.store(true, Ordering::SeqCst);
    churner.join().unwrap();
    out
}

fn changing_tree(tmp: &Path) -> std::path::PathBuf {
    let src = support::make_tree(&tmp.join("src"), 300, 64 * 1024, 7);
    std::fs::write(src.join("hot.bin"), vec![b'a'; HOT]).unwrap();
    src
}

#[test]
fn a_file_rewritten_during_the_snapshot_goes_up_exactly_as_its_manifest_says() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = changing_tree(tmp.path());
    with_churn(&src, false, || {
        for run in 0..5 {
            let key = format!("{KEY}/{run}");
            let before = objects(&server);
            let out = snapshot(&server, &cache, &src, &key, &[]);
            // A rewrite seen landing while the file was read refuses the snapshot (its bytes
            // may be half old, half new); the bucket is then as it was.
            if !out.status.success() {
                let message = stderr(&out);
                assert!(message.contains("changed while it was being read"), "{message}");
                assert_eq!(objects(&server), before, "a refused snapshot altered the bucket");
                continue;
            }
            let report = json_ok(&out);
            assert_eq!(report["status"], "uploaded", "{report}");
            assert_eq!(pointer(&server, &key)["digest"], report["digest"]);
            assert_archive_matches_digest(&server, &cache, &tmp.path().join(format!("dst{run}")), &key);
        }
    });
}

#[test]
fn files_appearing_and_vanishing_during_the_snapshot_publish_a_consistent_snapshot_or_nothing() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = changing_tree(tmp.path());
    let outcomes = with_churn(&src, true, || {
        let mut outcomes = Vec::new();
        for run in 0..6 {
            let before = objects(&server);
            // Without blink.bin the tree is colder than with it: the warmth guard is not what
            // this test is about.
            let out = snapshot(&server, &cache, &src, KEY, &["--force"]);
            if out.status.success() {
                let report = json_ok(&out);
                assert!(
                    report["status"] == "uploaded" || report["status"] == "unchanged",
                    "{report}"
                );
                assert_eq!(pointer(&server, KEY)["digest"], report["digest"]);
                assert_archive_matches_digest(&server, &cache, &tmp.path().join(format!("dst{run}")), KEY);
                outcomes.push("published");
            } else {
                let message = stderr(&out);
                assert_eq!(out.status.code(), Some(1), "{message}");
                assert!(
                    message.contains("changed while it was being snapshotted")
                        || message.contains("changed while it was being read"),
                    "a change during the snapshot must be reported as such: {message}"
                );
                assert_eq!(
                    objects(&server),
                    before,
                    "a snapshot refused as changed altered the bucket"
                );
                outcomes.push("refused as changed");
            }
        }
        outcomes
    });
    eprintln!("outcomes: {outcomes:?}");

    // Quiet again: it goes up and comes back whole.
    let report = json_ok(&snapshot(&server, &cache, &src, KEY, &["--force"]));
    assert!(
        report["status"] == "uploaded" || report["status"] == "unchanged",
        "{report}"
    );
    let dst = tmp.path().join("quiet");
    json_ok(&restore(&server, &cache, &dst, KEY, &[]));
    assert_eq!(support::describe_tree(&dst), support::describe_tree(&src));
}

#[test]
fn an_upload_failing_midway_leaves_the_pointer_and_the_bucket_unchanged() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let old = support::make_tree(&tmp.path().join("old"), 10, 4096, 1);
    json_ok(&snapshot(&server, &cache, &old, KEY, &[]));
    let before = objects(&server);
    let pointer_before = pointer(&server, KEY);

    // Incompressible and larger than several parts (8 MiB by default): the multipart upload
    // starts, then every part fails while the tree is still being read and compressed.
    let new = support::make_tree(&tmp.path().join("new"), 40, 1024 * 1024, 2);
    std::fs::write(new.join("big.bin"), support::Rng::new(9).bytes(24 * 1024 * 1024)).unwrap();
    server.fail_part_uploads(true);
    let out = snapshot(&server, &cache, &new, KEY, &[]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "degraded", "{report}");
    assert!(stderr(&out).contains("warning:"), "{}", stderr(&out));
    let strict = snapshot(&server, &cache, &new, KEY, &["--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    assert_eq!(pointer(&server, KEY), pointer_before, "the pointer moved");
    assert_eq!(objects(&server), before, "a failed upload left an object behind");

    server.fail_part_uploads(false);
    let report = json_ok(&snapshot(&server, &cache, &new, KEY, &[]));
    assert_eq!(report["status"], "uploaded", "{report}");
    let dst = tmp.path().join("dst");
    json_ok(&restore(&server, &cache, &dst, KEY, &[]));
    assert_eq!(support::describe_tree(&dst), support::describe_tree(&new));
}
