//! `warmcache gc --remote`: mark and sweep with a grace period (docs/DESIGN.md, "Remote gc").
//! What the pointer and the `--keep` newest snapshots need stays; the rest is first condemned in
//! `gc.json` and deleted only by a run at least `--grace` later, if still unreachable then; a dry
//! run changes nothing; an object younger than the grace is never touched; and a pack condemned
//! and then named again by a new snapshot is not deleted.
//!
//! Object ages are the server's `LastModified`, which the test server takes from the object's
//! file: the test makes objects old by moving their modification time back, not by waiting.
//! No emulator lets a client set `LastModified`, so these tests run on the in-process backend
//! only, and say so on the others.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use warmcache::remote::{CondPut, Remote, RemoteUrl};

use crate::support::backend;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{age_object, objects, pointer, restore, snapshot};
use crate::support::{describe_tree, json_ok, make_tree, run, warmcache_s3};

const KEY: &str = "site/node_modules";

/// Runs `warmcache gc --remote URL --json [extra]`.
fn gc(server: &TestS3, root: &Path, extra: &[&str]) -> Output {
    let mut cmd = warmcache_s3(server, root);
    cmd.arg("gc")
        .arg("--remote")
        .arg(server.url(KEY))
        .arg("--json")
        .args(extra);
    run(&mut cmd)
}

/// Moves the modification time (the server's `LastModified`) of every object under KEY one hour
/// back, as if it had been written long ago.
fn age_everything(server: &TestS3) {
    for key in objects(server).keys() {
        if key.starts_with(&format!("{KEY}/")) {
            age(server, key.strip_prefix(&format!("{KEY}/")).unwrap());
        }
    }
}

fn age(server: &TestS3, relative: &str) {
    age_object(server, &format!("{KEY}/{relative}"));
}

/// Keys (relative to KEY) of a report's list.
fn keys(report: &Value, field: &str) -> BTreeSet<String> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("no `{field}` in {report}"))
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Objects under KEY (relative keys), with their digests.
fn stored(server: &TestS3) -> std::collections::BTreeMap<String, String> {
    objects(server)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{KEY}/"))?.to_owned(), v)))
        .collect()
}

fn gc_state(server: &TestS3) -> Value {
    serde_json::from_slice(&std::fs::read(server.object_path(&format!("{KEY}/gc.json"))).unwrap()).unwrap()
}

/// The manifest of snapshot `digest` and what it names: its archive (format 1, as `snapshot`
/// writes before packs) or its packs (format 2).
fn snapshot_objects(server: &TestS3, digest: &str) -> BTreeSet<String> {
    let manifest = format!("snapshots/{digest}.json");
    let body: Value =
        serde_json::from_slice(&std::fs::read(server.object_path(&format!("{KEY}/{manifest}"))).unwrap())
            .unwrap();
    let mut out = BTreeSet::from([manifest]);
    match body["version"].as_u64() {
        Some(1) => {
            out.insert(body["archive"].as_str().unwrap().to_owned());
        }
        _ => out.extend(
            body["packs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("packs/{}.tar.zst", p["token"].as_str().unwrap())),
        ),
    }
    out
}

#[test]
fn keeps_the_pointer_and_the_newest_and_deletes_the_rest_a_grace_after_condemning_them() {
    if backend::skip_without_aging(
        "keeps_the_pointer_and_the_newest_and_deletes_the_rest_a_grace_after_condemning_them",
    ) {
        return;
    }
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = make_tree(&tmp.path().join("tree"), 30, 4096, 7);
    let mut digests = Vec::new();
    for version in 0..4 {
        std::fs::write(tree.join("version.txt"), format!("version {version}")).unwrap();
        let report = json_ok(&snapshot(&server, &root, &tree, KEY, &["--force"]));
        assert_eq!(report["status"], "uploaded", "{report}");
        digests.push(report["digest"].as_str().unwrap().to_owned());
    }
    let last_tree = describe_tree(&tree);
    age_everything(&server);
    let kept: BTreeSet<String> = digests[2..]
        .iter()
        .flat_map(|d| snapshot_objects(&server, d))
        .collect();
    // What only the two oldest snapshots need (with packs, newer snapshots may share some).
    let old: BTreeSet<String> = digests[..2]
        .iter()
        .flat_map(|d| snapshot_objects(&server, d))
        .filter(|k| !kept.contains(k))
        .collect();
    let before = stored(&server);

    // A dry run reports what it would condemn, and changes nothing (not even gc.json).
    let dry = json_ok(&gc(
        &server,
        &root,
        &["--keep", "1", "--grace", "2s", "--dry-run"],
    ));
    assert_eq!(keys(&dry, "condemned"), old, "{dry}");
    assert!(keys(&dry, "deleted").is_empty(), "{dry}");
    assert_eq!(stored(&server), before, "a dry run changed the remote");

    // First run: the two oldest snapshots are condemned, nothing is deleted.
    let first = json_ok(&gc(&server, &root, &["--keep", "1", "--grace", "2s"]));
    assert_eq!(keys(&first, "condemned"), old, "{first}");
    assert!(keys(&first, "deleted").is_empty(), "{first}");
    assert_eq!(first["kept"][&digests[3]], "pointer", "{first}");
    assert_eq!(first["kept"][&digests[2]], "keep", "{first}");
    let state = gc_state(&server);
    let condemned: BTreeSet<String> = state["condemned"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(condemned, old, "{state}");
    for key in before.keys() {
        assert!(
            server.object_path(&format!("{KEY}/{key}")).exists(),
            "{key} deleted on condemnation"
        );
    }

    // At once again: still within the grace, nothing is deleted.
    let second = json_ok(&gc(&server, &root, &["--keep", "1", "--grace", "2s"]));
    assert!(keys(&second, "deleted").is_empty(), "{second}");
    assert_eq!(keys(&second, "waiting"), old, "{second}");

    // Once the grace has passed since the condemnation: a dry run says what would go and changes
    // nothing; the real run deletes exactly the condemned objects.
    let latest = state["condemned"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .max()
        .unwrap();
    wait_until_ms(latest + 2_500);
    let before_sweep = stored(&server);
    let old_bytes: u64 = old.iter().map(|k| object_size(&server, k)).sum();
    let dry = json_ok(&gc(
        &server,
        &root,
        &["--keep", "1", "--grace", "2s", "--dry-run"],
    ));
    assert_eq!(keys(&dry, "deleted"), old, "{dry}");
    assert_eq!(stored(&server), before_sweep, "a dry run changed the remote");
    let third = json_ok(&gc(&server, &root, &["--keep", "1", "--grace", "2s"]));
    assert_eq!(keys(&third, "deleted"), old, "{third}");
    assert_eq!(third["freed_bytes"], old_bytes, "{third}");
    let after: BTreeSet<String> = stored(&server).keys().cloned().collect();
    let expected: BTreeSet<String> = kept
        .iter()
        .cloned()
        .chain(["pointer.json".to_owned(), "gc.json".to_owned()])
        .collect();
    assert_eq!(after, expected);
    assert!(gc_state(&server)["condemned"].as_object().unwrap().is_empty());

    // The current snapshot still restores.
    let dir = tmp.path().join("restored");
    let report = json_ok(&restore(&server, &tmp.path().join("cache2"), &dir, KEY, &[]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&dir), last_tree);
}

fn object_size(server: &TestS3, key: &str) -> u64 {
    std::fs::metadata(server.object_path(&format!("{KEY}/{key}")))
        .unwrap()
        .len()
}

/// Sleeps until the wall clock reaches `ms` (unix milliseconds).
fn wait_until_ms(ms: i64) {
    let now = warmcache::clock::now_ms();
    if ms > now {
        std::thread::sleep(Duration::from_millis((ms - now) as u64));
    }
}

#[test]
fn an_object_younger_than_the_grace_is_never_touched() {
    if backend::skip_without_aging("an_object_younger_than_the_grace_is_never_touched") {
        return;
    }
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = make_tree(&tmp.path().join("tree"), 20, 4096, 8);
    for version in 0..3 {
        std::fs::write(tree.join("version.txt"), format!("version {version}")).unwrap();
        json_ok(&snapshot(&server, &root, &tree, KEY, &["--force"]));
    }
    // An orphan pack written long ago is condemned; everything else was written just now: the
    // two older snapshots, and a pack no manifest names yet (a snapshot uploading right now).
    let remote = client(&server);
    put(&remote, "packs/00000000000000aa.tar.zst", b"old orphan");
    age(&server, "packs/00000000000000aa.tar.zst");
    put(&remote, "packs/00000000000000bb.tar.zst", b"being published");
    let before = stored(&server);

    for _ in 0..2 {
        let report = json_ok(&gc(&server, &root, &["--keep", "0"]));
        assert!(keys(&report, "deleted").is_empty(), "{report}");
        let condemned = keys(&report, "condemned");
        assert!(
            condemned.is_empty()
                || condemned == BTreeSet::from(["packs/00000000000000aa.tar.zst".to_owned()]),
            "{report}"
        );
        // The older snapshots are kept for their youth, and so is what they name; the pack no
        // manifest names is left alone for its own.
        let reasons: Vec<&str> = report["kept"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(reasons.iter().filter(|r| **r == "grace").count(), 2, "{report}");
        assert_eq!(report["young"], 1, "{report}");
    }
    let mut after = stored(&server);
    after.remove("gc.json");
    assert_eq!(after, before);
    let state = gc_state(&server);
    let condemned: Vec<&String> = state["condemned"].as_object().unwrap().keys().collect();
    assert_eq!(condemned, ["packs/00000000000000aa.tar.zst"], "{state}");
}

fn client(server: &TestS3) -> Remote {
    Remote::new(&RemoteUrl::parse(&server.url(KEY)).unwrap(), server.settings()).unwrap()
}

fn put(remote: &Remote, relative: &str, bytes: &[u8]) {
    let key = format!("{KEY}/{relative}");
    let current = remote.get_versioned(&key).unwrap().map(|(_, v)| v);
    let outcome = remote
        .put_if(&key, Bytes::copy_from_slice(bytes), current.as_ref())
        .unwrap();
    assert!(matches!(outcome, CondPut::Done(_)), "{relative}: {outcome:?}");
}

/// A format-2 manifest of a made-up tree `digest` whose content is in `packs`.
fn packed_manifest(digest: &str, packs: &[&str], created_at_ms: i64) -> Vec<u8> {
    let packs: Vec<Value> = packs
        .iter()
        .map(|t| json!({"token": t, "bytes": 4, "blake3": "0".repeat(64), "full": false}))
        .collect();
    let segments =
        vec![json!({"pack": packs[0]["token"], "range": [0, 4], "blake3": "0".repeat(64), "entries": 1})];
    serde_json::to_vec(&json!({
        "version": 2, "digest": digest, "files": 1, "dirs": 0, "symlinks": 0, "bytes": 1,
        "packs": packs, "segments": segments, "created_at_ms": created_at_ms, "host": "test",
    }))
    .unwrap()
}

fn point_at(remote: &Remote, digest: &str) {
    let body = json!({"version": 1, "digest": digest, "files": 1, "bytes": 1,
        "created_at_ms": warmcache::clock::now_ms(), "host": "test", "nonce": digest});
    put(remote, "pointer.json", body.to_string().as_bytes());
}

#[test]
fn a_pack_condemned_and_then_referenced_again_is_not_deleted() {
    if backend::skip_without_aging("a_pack_condemned_and_then_referenced_again_is_not_deleted") {
        return;
    }
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let remote = client(&server);
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let (p, q) = ("00000000000000a1", "00000000000000b2");
    let now = warmcache::clock::now_ms();
    put(&remote, &format!("packs/{p}.tar.zst"), b"pack");
    put(&remote, &format!("packs/{q}.tar.zst"), b"pack");
    put(
        &remote,
        &format!("snapshots/{a}.json"),
        &packed_manifest(&a, &[p], now - 2000),
    );
    put(
        &remote,
        &format!("snapshots/{b}.json"),
        &packed_manifest(&b, &[q], now - 1000),
    );
    point_at(&remote, &b);
    age_everything(&server);

    // Snapshot A is neither current nor kept: it and its pack are condemned.
    let first = json_ok(&gc(&server, &root, &["--keep", "0", "--grace", "2s"]));
    let pack_p = format!("packs/{p}.tar.zst");
    assert_eq!(
        keys(&first, "condemned"),
        BTreeSet::from([format!("snapshots/{a}.json"), pack_p.clone()]),
        "{first}"
    );

    // A new snapshot C reuses pack P (as a delta snapshot does with chunks it already has) and
    // becomes current. Its manifest is made old too, so only the pointer keeps it.
    put(
        &remote,
        &format!("snapshots/{c}.json"),
        &packed_manifest(&c, &[p, q], now),
    );
    point_at(&remote, &c);
    age_everything(&server);
    let state = gc_state(&server);
    let latest = state["condemned"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .max()
        .unwrap();
    wait_until_ms(latest + 2_500);

    let second = json_ok(&gc(&server, &root, &["--keep", "0", "--grace", "2s"]));
    assert_eq!(
        keys(&second, "deleted"),
        BTreeSet::from([format!("snapshots/{a}.json")]),
        "{second}"
    );
    let reprieved: Vec<&str> = second["reprieved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(reprieved, [pack_p.as_str()], "{second}");
    assert!(
        server.object_path(&format!("{KEY}/{pack_p}")).exists(),
        "a referenced pack was deleted"
    );
    assert!(
        !gc_state(&server)["condemned"]
            .as_object()
            .unwrap()
            .contains_key(&pack_p),
        "the pack is still condemned"
    );
    // Snapshot B is no longer current: condemned now, deleted a grace later.
    assert_eq!(
        keys(&second, "condemned"),
        BTreeSet::from([format!("snapshots/{b}.json")]),
        "{second}"
    );
    assert_eq!(pointer(&server, KEY)["digest"], c);
}
