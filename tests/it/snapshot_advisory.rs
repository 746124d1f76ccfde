//! `warmcache snapshot` is advisory too: with the server down or answering 500s it warns, exits
//! 0 and leaves the bucket as it was; `--strict` makes it exit 1.

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, snapshot};
use crate::support::{json_ok, stderr};

const KEY: &str = "ci/cache";

fn check(server: &TestS3, fault: impl Fn(&TestS3), expect_in_stderr: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let old = support::make_tree(&tmp.path().join("old"), 20, 4096, 1);
    json_ok(&snapshot(server, &cache, &old, KEY, &[]));
    let before = objects(server);
    let new = support::make_tree(&tmp.path().join("new"), 40, 4096, 2);

    fault(server);
    let out = snapshot(server, &cache, &new, KEY, &[]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "degraded", "{report}");
    assert!(stderr(&out).contains("warning:"), "{}", stderr(&out));
    assert!(stderr(&out).contains(expect_in_stderr), "{}", stderr(&out));

    let out = snapshot(server, &cache, &new, KEY, &["--strict"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(expect_in_stderr), "{}", stderr(&out));

    server.set_down(false);
    server.fail_next(0);
    assert_eq!(objects(server), before, "a failed snapshot changed the bucket");
}

#[test]
fn server_down() {
    check(&TestS3::start(), |s| s.set_down(true), "unreachable");
}

#[test]
fn server_answers_500() {
    check(&TestS3::start(), |s| s.fail_next(1_000_000), "500");
}
