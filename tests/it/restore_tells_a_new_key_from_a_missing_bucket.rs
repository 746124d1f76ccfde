//! A restore from a key with no snapshot yet is a normal first run ("no snapshot yet", exit 0,
//! even the strict mode says only that). S3 answers a GET in a bucket that does not exist with
//! the same 404, so before, a misspelt bucket looked like a first run forever; now it is a
//! remote error naming the bucket (a warning, or exit 1 with `--strict`), and DIR is untouched.

use crate::support::s3_server::TestS3;
use crate::support::*;

fn restore(
    server: &TestS3,
    root: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
    strict: bool,
) -> std::process::Output {
    let mut cmd = warmcache_s3(server, root);
    cmd.arg("restore").arg(dir).args(["--remote", url, "--json"]);
    if strict {
        cmd.arg("--strict");
    }
    run(&mut cmd)
}

#[test]
fn a_missing_bucket_is_reported_not_taken_for_a_new_key() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let dir = make_tree(&tmp.path().join("dir"), 3, 10, 1);
    let before = describe_tree(&dir);

    let fresh = json_ok(&restore(&server, &root, &dir, &server.url("new/key"), false));
    assert_eq!(fresh["status"], "no-snapshot", "{fresh}");

    let url = "s3://no-such-bucket-here/key";
    let out = restore(&server, &root, &dir, url, false);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-bucket-here"), "{}", stderr(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("no-snapshot"),
        "taken for a new key"
    );

    let strict = restore(&server, &root, &dir, url, true);
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    assert!(
        !stderr(&strict).contains("no snapshot yet"),
        "{}",
        stderr(&strict)
    );
    assert_eq!(describe_tree(&dir), before, "DIR changed");
}
