//! A fallback restore seeds the exact key's next snapshot (docs/DESIGN.md, "Fallback keys"):
//! after `restore DIR --remote EXACT --fallback MAIN` brought MAIN's tree, `snapshot DIR
//! --remote EXACT` reads no unchanged file (the restore left the stat cache of DIR and EXACT)
//! and uploads only what changed: MAIN's packs are copied into EXACT on the server (no byte of
//! them passes through the client, as the server's upload counter shows), then a delta goes on
//! top. EXACT is self-contained: with MAIN's objects gone, EXACT still restores.

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};
use crate::support::{describe_tree, json_ok, stderr};

/// Bytes of file content in the tree, for the comparisons below.
fn tree_bytes(report: &serde_json::Value) -> u64 {
    report["bytes"].as_u64().unwrap()
}

#[test]
fn an_unchanged_tree_uploads_no_pack() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let main = support::make_tree(&tmp.path().join("main"), 60, 64 * 1024, 1);
    let first = json_ok(&snapshot(&server, &tmp.path().join("ci"), &main, "main/nm", &[]));
    let size = tree_bytes(&first);

    let root = tmp.path().join("branch-machine");
    let dir = tmp.path().join("dir");
    let main_url = server.url("main/nm");
    let restored = json_ok(&restore(
        &server,
        &root,
        &dir,
        "branch/nm",
        &["--fallback", &main_url],
    ));
    assert_eq!(restored["exact"], false, "{restored}");

    let uploaded = server.bytes_uploaded();
    let report = json_ok(&snapshot(&server, &root, &dir, "branch/nm", &[]));
    let sent = server.bytes_uploaded() - uploaded;
    eprintln!("unchanged tree of {size} bytes: {sent} bytes uploaded to the exact key");
    assert_eq!(report["status"], "uploaded", "{report}");
    assert_eq!(report["seeded_from"], main_url.as_str(), "{report}");
    assert_eq!(
        report["files_read"], 0,
        "unchanged files were read again: {report}"
    );
    assert_eq!(report["uploaded_bytes"], 0, "{report}");
    // The manifest and the pointer: a few KiB, against a tree of about 2 MB.
    assert!(
        sent < size / 20,
        "{sent} bytes uploaded for an unchanged tree of {size}"
    );

    // Self-contained: MAIN's objects gone, EXACT restores on another machine.
    let main_objects = server.list_objects("main");
    assert!(!main_objects.is_empty());
    for key in main_objects.keys() {
        server.delete_object(key);
    }
    assert_eq!(server.list_objects("main").len(), 0);
    let elsewhere = tmp.path().join("elsewhere");
    let again = json_ok(&restore(
        &server,
        &tmp.path().join("third"),
        &elsewhere,
        "branch/nm",
        &[],
    ));
    assert_eq!(again["exact"], true, "{again}");
    assert_eq!(describe_tree(&elsewhere), describe_tree(&main));
}

#[test]
fn a_changed_tree_uploads_a_delta_on_the_copied_packs() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let main = support::make_tree(&tmp.path().join("main"), 60, 64 * 1024, 1);
    let first = json_ok(&snapshot(&server, &tmp.path().join("ci"), &main, "main/nm", &[]));
    let size = tree_bytes(&first);

    let root = tmp.path().join("branch-machine");
    let dir = tmp.path().join("dir");
    let main_url = server.url("main/nm");
    json_ok(&restore(
        &server,
        &root,
        &dir,
        "branch/nm",
        &["--fallback", &main_url],
    ));
    std::fs::write(dir.join("changed.bin"), support::Rng::new(9).bytes(10_000)).unwrap();

    let uploaded = server.bytes_uploaded();
    let report = json_ok(&snapshot(&server, &root, &dir, "branch/nm", &[]));
    let sent = server.bytes_uploaded() - uploaded;
    eprintln!("10 kB change to a tree of {size} bytes: {sent} bytes uploaded to the exact key");
    assert_eq!(report["status"], "uploaded", "{report}");
    assert_eq!(report["full"], false, "{report}");
    assert_eq!(report["files_read"], 1, "{report}");
    assert!(
        sent < size / 10,
        "{sent} bytes uploaded for a 10 kB change to a tree of {size}"
    );

    let elsewhere = tmp.path().join("elsewhere");
    json_ok(&restore(
        &server,
        &tmp.path().join("third"),
        &elsewhere,
        "branch/nm",
        &[],
    ));
    assert_eq!(describe_tree(&elsewhere), describe_tree(&dir));
}

/// The seed's first write is a server-side copy: credentials that may not write make it the one
/// refused write of the process, reported as such ("access denied", `"status": "read_only"`),
/// and the exact key is left empty.
#[test]
fn a_denied_seed_copy_is_a_read_only_snapshot() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let main = support::make_tree(&tmp.path().join("main"), 20, 4096, 1);
    json_ok(&snapshot(&server, &tmp.path().join("ci"), &main, "main/nm", &[]));
    let root = tmp.path().join("branch-machine");
    let dir = tmp.path().join("dir");
    let main_url = server.url("main/nm");
    json_ok(&restore(
        &server,
        &root,
        &dir,
        "branch/nm",
        &["--fallback", &main_url],
    ));

    server.deny_writes(true);
    let writes = server.write_attempts();
    let out = snapshot(&server, &root, &dir, "branch/nm", &[]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "read_only", "{report}");
    assert_eq!(
        server.write_attempts() - writes,
        1,
        "one refused copy, then nothing more"
    );
    let err = stderr(&out);
    assert!(err.contains("copy refused (access denied)"), "{err}");
    assert_eq!(server.list_objects("branch"), Default::default());
}
