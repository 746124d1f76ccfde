//! `warmcache gc --remote` deletes nothing it cannot account for (docs/DESIGN.md, "Remote gc"):
//! a manifest of a newer format stops it (exit 1, nothing changed: that format may need objects
//! this version cannot see); a damaged manifest is kept, with every pack and archive under the
//! key; a URL that is not a snapshot key, or a pointer naming a missing manifest, stops it with
//! nothing written; an unreachable remote is an error (exit 1), not a warning; and local-only flags with
//! `--remote`, or remote-only flags without it, are usage errors (exit 2) that change nothing.

use std::path::Path;
use std::process::Output;

use bytes::Bytes;
use serde_json::json;
use warmcache::remote::{CondPut, Remote, RemoteUrl};

use crate::support::backend;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{age_object, objects, pointer, snapshot};
use crate::support::{json_exit, json_ok, make_tree, run, stderr, warmcache_s3};

const KEY: &str = "team/tree";

fn gc(server: &TestS3, root: &Path, extra: &[&str]) -> Output {
    let mut cmd = warmcache_s3(server, root);
    cmd.arg("gc").args(extra).arg("--json");
    run(&mut cmd)
}

fn put_old(server: &TestS3, relative: &str, bytes: &[u8]) {
    let remote = Remote::new(&RemoteUrl::parse(&server.url(KEY)).unwrap(), server.settings()).unwrap();
    let outcome = remote
        .put_if(&format!("{KEY}/{relative}"), Bytes::copy_from_slice(bytes), None)
        .unwrap();
    assert!(matches!(outcome, CondPut::Done(_)), "{relative}: {outcome:?}");
    age(server, relative);
}

/// Makes an object an hour old where the backend can (see `Kind::can_age_objects`). The gc
/// runs that must stop (a newer format, a missing manifest, not a snapshot key, unreachable,
/// usage errors) stop whatever the objects' age: old objects make those tests stricter (a gc
/// that went on could delete at once), young ones leave them meaningful (it would still write
/// gc.json or a report), so they run on every backend. The damaged-manifest test needs old
/// objects (a young snapshot is kept for its grace, never condemned) and runs only where they
/// can be made.
fn age(server: &TestS3, relative: &str) {
    if server.kind().can_age_objects() {
        age_object(server, &format!("{KEY}/{relative}"));
    }
}

/// Two real snapshots (the older one unreachable with `--keep 0`), everything written an hour
/// ago, and an orphan pack.
fn populated(server: &TestS3, tmp: &Path) {
    let tree = make_tree(&tmp.join("tree"), 10, 1024, 3);
    for version in 0..2 {
        std::fs::write(tree.join("version.txt"), format!("{version}")).unwrap();
        json_ok(&snapshot(server, &tmp.join("cache"), &tree, KEY, &["--force"]));
    }
    put_old(server, "packs/00000000000000cc.tar.zst", b"orphan");
    for key in objects(server).keys() {
        if let Some(relative) = key.strip_prefix(&format!("{KEY}/")) {
            age(server, relative);
        }
    }
}

#[test]
fn a_manifest_of_a_newer_format_stops_the_gc_and_nothing_changes() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    populated(&server, tmp.path());
    let digest = "d".repeat(64);
    put_old(
        &server,
        &format!("snapshots/{digest}.json"),
        json!({"version": 3, "digest": digest, "parent": "elsewhere"})
            .to_string()
            .as_bytes(),
    );
    let before = objects(&server);
    let url = server.url(KEY);
    let out = gc(
        &server,
        &tmp.path().join("cache"),
        &["--remote", &url, "--keep", "0", "--grace", "2s"],
    );
    let report = json_exit(&out, 1);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains(&format!("snapshots/{digest}.json")), "{error}");
    assert!(error.contains("upgrade warmcache"), "{error}");
    assert!(error.contains("nothing was collected"), "{error}");
    assert_eq!(objects(&server), before, "the remote changed");
}

#[test]
fn a_damaged_manifest_is_kept_with_every_pack_and_archive() {
    if backend::skip_without_aging("a_damaged_manifest_is_kept_with_every_pack_and_archive") {
        return;
    }
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    populated(&server, tmp.path());
    let digest = "e".repeat(64);
    put_old(
        &server,
        &format!("snapshots/{digest}.json"),
        b"{\"version\": 2, \"digest\": tru",
    );
    let url = server.url(KEY);
    let out = gc(
        &server,
        &tmp.path().join("cache"),
        &["--remote", &url, "--keep", "0", "--grace", "2s"],
    );
    let report = json_ok(&out);
    assert_eq!(report["kept"][&digest], "unreadable", "{report}");
    assert!(
        stderr(&out).contains(&format!("snapshots/{digest}.json")),
        "{}",
        stderr(&out)
    );
    // Only the older snapshot's manifest is condemned: no pack or archive, since the damaged
    // manifest might name any of them.
    let condemned: Vec<&str> = report["condemned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(condemned.len(), 1, "{report}");
    assert!(
        condemned[0].starts_with("snapshots/") && condemned[0].ends_with(".json"),
        "{report}"
    );
    assert!(!condemned[0].contains(&digest), "{report}");
}

#[test]
fn an_unreachable_remote_is_an_error() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    populated(&server, tmp.path());
    server.set_down(true);
    let url = server.url(KEY);
    let out = gc(&server, &tmp.path().join("cache"), &["--remote", &url]);
    let report = json_exit(&out, 1);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains(&server.url(KEY)), "{error}");
    server.set_down(false);
}

#[test]
fn local_flags_with_remote_and_remote_flags_without_it_are_usage_errors() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    populated(&server, tmp.path());
    let before = objects(&server);
    let root = tmp.path().join("cache");
    let url = server.url(KEY);
    for args in [
        vec!["--remote", url.as_str(), "--max-size", "1G"],
        vec!["--remote", url.as_str(), "--evict", "some/entry"],
        vec!["--keep", "2"],
        vec!["--grace", "2s"],
        vec!["--remote", url.as_str(), "--grace", "0s"],
    ] {
        let out = gc(&server, &root, &args);
        let report = json_exit(&out, 2);
        assert_eq!(report["kind"], "usage", "{args:?}: {report}");
    }
    assert_eq!(objects(&server), before, "a usage error changed the remote");

    // A standing local budget in the environment is not a --max-size given to a remote gc.
    let mut cmd = warmcache_s3(&server, &root);
    cmd.env("WARMCACHE_MAX_SIZE", "1G")
        .args(["gc", "--remote", &url, "--dry-run", "--json"]);
    json_ok(&run(&mut cmd));
}

#[test]
fn a_url_that_is_not_a_snapshot_key_is_refused_and_nothing_is_written() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    populated(&server, tmp.path());
    let before = objects(&server);
    // A parent prefix, a typo, and a key's own folders.
    for url in [
        server.url("team"),
        server.url("team/tre"),
        server.url(&format!("{KEY}/packs")),
        server.url(&format!("{KEY}/snapshots")),
    ] {
        let out = gc(
            &server,
            &tmp.path().join("cache"),
            &["--remote", &url, "--grace", "2s"],
        );
        let error = json_exit(&out, 1)["error"].as_str().unwrap().to_owned();
        assert!(error.contains("no snapshot key here"), "{url}: {error}");
        assert!(error.contains("nothing was changed"), "{url}: {error}");
        assert_eq!(objects(&server), before, "{url}: the remote changed");
    }
}

#[test]
fn a_pointer_to_a_missing_manifest_stops_the_gc_so_older_snapshots_survive() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    populated(&server, tmp.path());
    let pointer = pointer(&server, KEY);
    let digest = pointer["digest"].as_str().unwrap();
    server.delete_object(&format!("{KEY}/snapshots/{digest}.json"));
    let before = objects(&server);
    let url = server.url(KEY);
    for _ in 0..2 {
        let out = gc(
            &server,
            &tmp.path().join("cache"),
            &["--remote", &url, "--keep", "0", "--grace", "2s"],
        );
        let error = json_exit(&out, 1)["error"].as_str().unwrap().to_owned();
        assert!(error.contains("snapshot the tree again"), "{error}");
        assert_eq!(objects(&server), before, "the remote changed");
    }
}
