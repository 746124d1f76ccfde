//! A restore downloads only the chunks it cannot find on this machine (docs/DESIGN.md,
//! "Restore"): over yesterday's tree, one changed file of 1,000 costs about the delta pack's
//! frame, the manifest and its segments; a file moved to another path is found by its digest
//! and costs no pack bytes at all; content the local store holds is taken from there; an
//! empty directory gets the whole pack. Bytes are counted by the S3 server.

use std::path::Path;

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, objects, restore, snapshot};
use crate::support::{describe_tree, json_ok, warmcache};

const KEY: &str = "ci/node_modules";

/// The size of an object under `KEY`.
fn size(server: &TestS3, key: &str) -> u64 {
    server.object_size(&format!("{KEY}/{key}")).unwrap()
}

/// What reading the current snapshot's lists costs at most: the pointer, the manifest and
/// every segment (the ranges of one pack are fetched together, with their gaps).
fn lookup_bytes(server: &TestS3) -> u64 {
    let manifest = current_manifest(server, KEY);
    let digest = manifest["digest"].as_str().unwrap().to_owned();
    let segments: u64 = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["range"][1].as_u64().unwrap() - s["range"][0].as_u64().unwrap())
        .sum();
    size(server, "pointer.json") + size(server, &format!("snapshots/{digest}.json")) + segments
}

/// Restores `dir` and returns the report with the bytes the server sent.
fn restore_counted(server: &TestS3, cache: &Path, dir: &Path) -> (serde_json::Value, u64) {
    let before = server.bytes_downloaded();
    let report = json_ok(&restore(server, cache, dir, KEY, &["--strict"]));
    (report, server.bytes_downloaded() - before)
}

#[test]
fn a_restore_over_yesterdays_tree_downloads_only_the_delta() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 1000, 16 * 1024, 41);
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let packs: Vec<String> = objects(&server)
        .into_keys()
        .filter(|k| k.contains("/packs/"))
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let full_pack = server.object_size(&packs[0]).unwrap();

    // A cold machine gets the whole pack (and nothing is seeded).
    let dir = tmp.path().join("dir");
    let (cold, cold_bytes) = restore_counted(&server, &cache, &dir);
    assert_eq!(cold["status"], "restored", "{cold}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    assert_eq!(cold["seeded_bytes"], 0, "{cold}");
    assert!(
        cold_bytes >= full_pack && cold_bytes <= full_pack + lookup_bytes(&server) + 4096,
        "a cold restore downloaded {cold_bytes} bytes for a pack of {full_pack}"
    );

    // Today: one file has new content; the snapshot uploads a small delta pack.
    let content = support::Rng::new(99).bytes(10_000);
    std::fs::write(src.join("d2/s1/f36.bin"), &content).unwrap();
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let delta_pack: u64 = objects(&server)
        .into_keys()
        .filter(|k| k.contains("/packs/") && *k != packs[0])
        .map(|k| server.object_size(&k).unwrap())
        .sum();
    assert!(
        delta_pack > 0 && delta_pack * 20 < full_pack,
        "{delta_pack} of {full_pack}"
    );

    // The machine holding yesterday's tree downloads about the delta.
    let (report, bytes) = restore_counted(&server, &cache, &dir);
    eprintln!(
        "one file of 1,000 changed: restore downloaded {bytes} bytes (delta pack {delta_pack}, \
         lists {}, full pack {full_pack})",
        lookup_bytes(&server)
    );
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    assert_eq!(report["fetched_chunks"], 1, "{report}");
    assert!(
        bytes <= 2 * delta_pack + lookup_bytes(&server) + 4096,
        "downloaded {bytes} bytes for a delta pack of {delta_pack} bytes"
    );
    assert!(bytes * 10 < full_pack, "{bytes} of {full_pack}");
    assert!(report["seeded_bytes"].as_u64().unwrap() > 0, "{report}");

    // A file moved to another path is found by its digest: no pack byte is fetched.
    std::fs::rename(src.join("d4/s0/f140.bin"), src.join("d0/moved.bin")).unwrap();
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let (moved, _) = restore_counted(&server, &cache, &dir);
    assert_eq!(moved["status"], "restored", "{moved}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    assert_eq!(moved["fetched_chunks"], 0, "{moved}");

    // And a directory that holds it already downloads no pack byte and changes nothing.
    let (unchanged, _) = restore_counted(&server, &cache, &dir);
    assert_eq!(unchanged["status"], "unchanged", "{unchanged}");
    assert_eq!(unchanged["fetched_chunks"], 0, "{unchanged}");
}

#[test]
fn content_the_local_store_holds_is_not_downloaded() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 300, 16 * 1024, 43);
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    // The same tree was imported into the cache once (a build output, say).
    let imported = support::ok(warmcache(&cache).arg("import").arg(&src).arg("--json"));
    assert!(imported.contains("artifact"), "{imported}");

    let dir = tmp.path().join("dir");
    let (report, bytes) = restore_counted(&server, &cache, &dir);
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    assert_eq!(report["fetched_chunks"], 0, "{report}");
    assert!(
        bytes <= lookup_bytes(&server) + 4096,
        "downloaded {bytes} bytes though the store holds every file"
    );
    // The store is only read.
    support::assert_consistent(&cache, "after a restore seeded from it");
}

#[test]
fn a_large_file_edited_in_the_middle_costs_a_few_chunks() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 20, 4 * 1024, 45);
    let mut big = support::Rng::new(46).bytes(12 << 20);
    std::fs::write(src.join("big.db"), &big).unwrap();
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let dir = tmp.path().join("dir");
    let (cold, _) = restore_counted(&server, &cache, &dir);
    assert_eq!(cold["status"], "restored", "{cold}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));

    // 1 KiB rewritten in the middle: the restore takes every other chunk from DIR's old copy.
    for b in &mut big[6 << 20..(6 << 20) + 1024] {
        *b ^= 0x5a;
    }
    std::fs::write(src.join("big.db"), &big).unwrap();
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let (report, bytes) = restore_counted(&server, &cache, &dir);
    eprintln!("1 KiB edited in a 12 MiB file: restore downloaded {bytes} bytes: {report}");
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    let fetched = report["fetched_chunks"].as_u64().unwrap();
    assert!((1..=4).contains(&fetched), "{report}");
    assert!(bytes < 2 << 20, "downloaded {bytes} bytes for a 1 KiB edit");
    assert!(report["seeded_bytes"].as_u64().unwrap() > 10 << 20, "{report}");
}
