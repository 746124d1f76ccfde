//! Credentials that may read the bucket but not write it (every write answered `403
//! AccessDenied`, as S3 does without `s3:PutObject` and Azure without a data-writer role): the
//! first refused write is reported once, naming the bucket and the fix for the backend's own
//! permission model, and the process carries on read-only: `snapshot` says
//! `"status": "read_only"` and exits 0 (1 with `--strict`), having provoked exactly one 403;
//! `ensure --push` builds and skips its push with that one warning, even with `--strict`;
//! every later write of the process, through any client of that bucket, is not attempted.

use bytes::Bytes;
use warmcache::remote::{Remote, RemoteUrl};

use crate::support;
use crate::support::backend::Kind;
use crate::support::machine::{APP_CONFIG, Machine};
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, restore, snapshot};
use crate::support::{json_ok, stderr};

const KEY: &str = "ci/node_modules";

/// The permission the write-denied message names for the backend the test runs on.
fn write_permission(server: &TestS3) -> &'static str {
    match server.kind() {
        Kind::S3s | Kind::Moto => "s3:PutObject",
        Kind::Azurite => "Storage Blob Data Contributor",
        Kind::Gcs => "roles/storage.objectUser",
    }
}

#[test]
fn snapshot_reports_it_once_and_writes_nothing() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = support::make_tree(&tmp.path().join("tree"), 30, 4096, 1);
    json_ok(&snapshot(&server, &root, &tree, KEY, &[]));
    let before = objects(&server);

    server.deny_writes(true);
    support::make_tree(&tree.join("more"), 5, 1024, 2);
    let writes = server.write_attempts();
    let out = snapshot(&server, &root, &tree, KEY, &[]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "read_only", "{report}");
    assert_eq!(
        server.write_attempts() - writes,
        1,
        "one 403 per process, no more"
    );
    let err = stderr(&out);
    assert_eq!(
        err.matches("access denied").count(),
        2,
        "one warning, one status line: {err}"
    );
    assert!(err.contains(&format!("bucket `{}`", server.bucket())), "{err}");
    assert!(
        err.contains(write_permission(&server)) && err.contains("read_only"),
        "{err}"
    );
    assert_eq!(
        err.matches(write_permission(&server)).count(),
        1,
        "the fix is told once: {err}"
    );

    let writes = server.write_attempts();
    let out = snapshot(&server, &root, &tree, KEY, &["--strict"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(server.write_attempts() - writes, 1);
    assert_eq!(objects(&server), before, "denied writes changed the bucket");

    // Reads still work with such credentials.
    let restored = tmp.path().join("restored");
    assert_eq!(
        json_ok(&restore(&server, &root, &restored, KEY, &[]))["status"],
        "restored"
    );
}

#[test]
fn ensure_builds_and_skips_its_push_with_one_warning() {
    let server = TestS3::start();
    server.deny_writes(true);
    let machine = Machine::new(APP_CONFIG, &[("src/app.txt", "v1")]);
    let url = server.url("shared");
    for strict in [false, true] {
        let writes = server.write_attempts();
        let mut cmd = machine.cmd(&server);
        cmd.args(["ensure", "app", "--push", "--remote", &url, "--json", "--refresh"]);
        if strict {
            cmd.arg("--strict");
        }
        let out = support::run(&mut cmd);
        json_ok(&out);
        assert_eq!(
            server.write_attempts() - writes,
            1,
            "one 403 per process, no more"
        );
        let err = stderr(&out);
        assert_eq!(err.matches("access denied").count(), 1, "reported once: {err}");
        assert!(!err.contains("warning:"), "a second report: {err}");
        assert!(
            err.contains("access denied") && err.contains(write_permission(&server)),
            "{err}"
        );
    }
    assert_eq!(machine.builds(), 2);
}

#[test]
fn no_write_is_attempted_after_the_first_refusal() {
    let server = TestS3::start();
    server.deny_writes(true);
    let url = RemoteUrl::parse(&server.url("denied")).unwrap();
    let first = Remote::new(&url, server.settings()).unwrap();
    let err = first.put_stream("denied/a", &b"one"[..]).unwrap_err();
    assert!(err.is_read_only(), "{err}");
    assert_eq!(server.write_attempts(), 1);

    // Another client of the same bucket in this process: refused without a request.
    let second = Remote::new(&url, server.settings()).unwrap();
    assert!(second.is_read_only());
    let err = second
        .put_if("denied/b", Bytes::from_static(b"two"), None)
        .unwrap_err();
    assert!(err.is_read_only(), "{err}");
    assert!(err.to_string().contains(write_permission(&server)), "{err}");
    assert!(second.delete("denied/a").unwrap_err().is_read_only());
    assert_eq!(
        server.write_attempts(),
        1,
        "a write was attempted after the refusal"
    );
    // Reads are not affected.
    assert!(second.head("denied/a").unwrap().is_none());
}
