//! Fallback keys (docs/DESIGN.md, "Fallback keys"): `restore DIR --remote EXACT --fallback A
//! --fallback B` restores the first key, in order, that holds a snapshot, and says which one
//! and whether it was the exact one (`"matched"`, `"exact"` in `--json`; the human line names the
//! fallback). Keys without a snapshot are passed over; none holding one is "no snapshot"
//! (exit 1 with `--strict`). `[remote] fallback` of warmcache.toml applies to its own `[remote]
//! url` key only, and `--fallback` replaces it.

use crate::support::machine::Machine;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};
use crate::support::{self, describe_tree, json_exit, json_ok, stderr};

#[test]
fn the_first_key_holding_a_snapshot_wins_and_the_output_says_which() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let writer = tmp.path().join("writer");
    let main = support::make_tree(&tmp.path().join("main"), 20, 4096, 1);
    let other = support::make_tree(&tmp.path().join("other"), 25, 4096, 2);
    json_ok(&snapshot(&server, &writer, &main, "main/nm", &[]));
    json_ok(&snapshot(&server, &writer, &other, "other/nm", &[]));
    let (empty, main_url, other_url) = (
        server.url("empty/nm"),
        server.url("main/nm"),
        server.url("other/nm"),
    );

    let root = tmp.path().join("cache");
    let dir = tmp.path().join("dir");
    let fallbacks = [
        "--fallback",
        &empty,
        "--fallback",
        &main_url,
        "--fallback",
        &other_url,
    ];
    let report = json_ok(&restore(&server, &root, &dir, "branch/nm", &fallbacks));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(report["matched"], main_url.as_str(), "{report}");
    assert_eq!(report["exact"], false, "{report}");
    assert_eq!(report["url"], server.url("branch/nm").as_str(), "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&main));

    // The exact key wins when it holds one.
    let dir2 = tmp.path().join("dir2");
    let report = json_ok(&restore(
        &server,
        &root,
        &dir2,
        "other/nm",
        &["--fallback", &main_url],
    ));
    assert_eq!(report["matched"], other_url.as_str(), "{report}");
    assert_eq!(report["exact"], true, "{report}");
    assert_eq!(describe_tree(&dir2), describe_tree(&other));

    // Human output names the fallback.
    let dir3 = tmp.path().join("dir3");
    let mut cmd = support::warmcache_s3(&server, &root);
    cmd.arg("restore")
        .arg(&dir3)
        .args(["--remote", &server.url("branch/nm"), "--fallback", &main_url]);
    let human = support::ok(&mut cmd);
    assert!(human.contains(&main_url) && human.contains("fallback"), "{human}");

    // No key holds one.
    let dir4 = tmp.path().join("dir4");
    let report = json_ok(&restore(
        &server,
        &root,
        &dir4,
        "branch/nm",
        &["--fallback", &empty],
    ));
    assert_eq!(report["status"], "no-snapshot", "{report}");
    assert_eq!(report["matched"], serde_json::Value::Null, "{report}");
    let out = restore(
        &server,
        &root,
        &dir4,
        "branch/nm",
        &["--fallback", &empty, "--strict"],
    );
    let report = json_exit(&out, 1);
    assert!(report["error"].as_str().unwrap().contains("empty/nm"), "{report}");
    assert!(!dir4.exists());
}

#[test]
fn the_config_files_fallbacks_apply_to_its_own_key() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let main = support::make_tree(&tmp.path().join("main"), 20, 4096, 1);
    let other = support::make_tree(&tmp.path().join("other"), 25, 4096, 2);
    json_ok(&snapshot(&server, &tmp.path().join("w"), &main, "main/nm", &[]));
    json_ok(&snapshot(&server, &tmp.path().join("w"), &other, "other/nm", &[]));
    let config = format!(
        "[remote]\nurl = \"{}\"\nfallback = [\"{}\", \"{}\"]\n",
        server.url("branch/nm"),
        server.url("empty/nm"),
        server.url("main/nm"),
    );
    let machine = Machine::new(&config, &[]);

    let dir = tmp.path().join("dir");
    let out = support::run(machine.cmd(&server).arg("restore").arg(&dir).arg("--json"));
    let report = json_ok(&out);
    assert_eq!(report["matched"], server.url("main/nm").as_str(), "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&main));

    // --fallback replaces the file's list.
    let dir2 = tmp.path().join("dir2");
    let out = support::run(machine.cmd(&server).arg("restore").arg(&dir2).args([
        "--fallback",
        &server.url("other/nm"),
        "--json",
    ]));
    assert_eq!(json_ok(&out)["matched"], server.url("other/nm").as_str());
    assert_eq!(describe_tree(&dir2), describe_tree(&other));

    // Another key (--remote) does not get the file's fallbacks, written for its own key.
    let dir3 = tmp.path().join("dir3");
    let out = support::run(machine.cmd(&server).arg("restore").arg(&dir3).args([
        "--remote",
        &server.url("elsewhere/target"),
        "--json",
    ]));
    assert_eq!(json_ok(&out)["status"], "no-snapshot", "{}", stderr(&out));
    assert!(!dir3.exists());

    // The file's own key named again by --remote is still that key: its fallbacks apply.
    let dir4 = tmp.path().join("dir4");
    let out = support::run(machine.cmd(&server).arg("restore").arg(&dir4).args([
        "--remote",
        &server.url("branch/nm"),
        "--json",
    ]));
    assert_eq!(json_ok(&out)["matched"], server.url("main/nm").as_str());
}

/// A key at the bucket's root (`s3://bucket`) with no snapshot is "no snapshot yet" like any
/// other key, so the fallback is tried (it was a "the key is empty" error).
#[test]
fn an_empty_key_at_the_buckets_root_falls_through() {
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
    let root_url = format!("{}://{}", server.kind().scheme(), server.bucket());
    let dir = tmp.path().join("dir");
    let mut cmd = support::warmcache_s3(&server, &tmp.path().join("cache"));
    cmd.arg("restore").arg(&dir).args([
        "--remote",
        &root_url,
        "--fallback",
        &server.url("main/nm"),
        "--json",
    ]);
    let report = json_ok(&support::run(&mut cmd));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(report["matched"], server.url("main/nm").as_str(), "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&main));
}
