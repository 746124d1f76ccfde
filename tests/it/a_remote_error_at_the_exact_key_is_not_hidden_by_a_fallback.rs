//! Fallback keys (docs/DESIGN.md, "Fallback keys"): only "no snapshot yet" at a key moves on
//! to the next. A remote error at the exact key (here a damaged pointer; an outage or a
//! timeout likewise) ends the search: the restore reports that key's error (a warning and
//! `"status": "degraded"`, exit 1 with `--strict`) and leaves DIR untouched, rather than
//! quietly restoring an older fallback over a broken key nobody would then repair.

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};
use crate::support::{describe_tree, json_ok, stderr};

#[test]
fn a_damaged_exact_key_is_reported_and_dir_is_untouched() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let writer = tmp.path().join("writer");
    let main = support::make_tree(&tmp.path().join("main"), 20, 4096, 1);
    let branch = support::make_tree(&tmp.path().join("branch"), 25, 4096, 2);
    json_ok(&snapshot(&server, &writer, &main, "main/nm", &[]));
    json_ok(&snapshot(&server, &writer, &branch, "branch/nm", &[]));
    server.put_object("branch/nm/pointer.json", b"{ damaged");

    let root = tmp.path().join("cache");
    let dir = support::make_tree(&tmp.path().join("dir"), 3, 100, 3);
    let before = describe_tree(&dir);
    let main_url = server.url("main/nm");
    let out = restore(&server, &root, &dir, "branch/nm", &["--fallback", &main_url]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "degraded", "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("branch/nm/pointer.json"),
        "{report}"
    );
    assert!(stderr(&out).contains("branch/nm"), "{}", stderr(&out));
    assert_eq!(
        describe_tree(&dir),
        before,
        "a fallback was restored over a broken exact key"
    );

    let out = restore(
        &server,
        &root,
        &dir,
        "branch/nm",
        &["--fallback", &main_url, "--strict"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(describe_tree(&dir), before);
}

/// A damaged fallback stops the search too, and the repair the warning names is that key's: the
/// exact key holds nothing, and a `snapshot --force` there would only hide the fallback.
#[test]
fn a_damaged_fallback_is_the_key_the_warning_says_to_repair() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let main = support::make_tree(&tmp.path().join("main"), 20, 4096, 1);
    json_ok(&snapshot(
        &server,
        &tmp.path().join("writer"),
        &main,
        "main/nm",
        &[],
    ));
    server.put_object("main/nm/pointer.json", b"{ damaged");

    let dir = tmp.path().join("dir");
    let main_url = server.url("main/nm");
    let out = restore(
        &server,
        &tmp.path().join("cache"),
        &dir,
        "branch/nm",
        &["--fallback", &main_url],
    );
    let report = json_ok(&out);
    assert_eq!(report["status"], "degraded", "{report}");
    assert!(!dir.exists());
    let warning = stderr(&out);
    assert!(
        warning.contains(&format!("the snapshot at {main_url} is damaged"))
            && warning.contains(&format!("--remote {main_url} --force")),
        "{warning}"
    );
    assert!(
        !warning.contains(&format!("--remote {} --force", server.url("branch/nm"))),
        "{warning}"
    );
}
