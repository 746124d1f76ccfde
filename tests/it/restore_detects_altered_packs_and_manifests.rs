//! A restore trusts nothing it reads from the remote (docs/DESIGN.md, "Snapshots", "Trust"): a
//! byte of a pack altered on the server, a manifest segment that points a file at another
//! file's bytes, or one that changes an entry (its executable bit) while staying well formed,
//! is detected before anything is swapped in, and DIR (existing or missing) is left exactly as
//! it was, with no stage beside it.

use std::path::Path;

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{assert_restore_leaves_dir_untouched, current_manifest, pointer, snapshot};

const KEY: &str = "ci/node_modules";

/// A tree with two files of the same size and different bytes, and some others.
fn tree(root: &Path) -> std::path::PathBuf {
    let src = support::make_tree(root, 60, 8 * 1024, 71);
    std::fs::write(src.join("a.bin"), support::Rng::new(1).bytes(5000)).unwrap();
    std::fs::write(src.join("b.bin"), support::Rng::new(2).bytes(5000)).unwrap();
    src
}

/// Rewrites the manifest segment holding `path` with `edit` applied to its entry, as a remote
/// that wanted to mislead would: the new segment is appended to its pack and the manifest
/// updated to match (segment range and BLAKE3, pack size and BLAKE3), so every check of the
/// objects' own integrity passes and only the restore's checks of what they say remain.
fn rewrite_entry(server: &TestS3, path: &str, edit: &dyn Fn(&mut serde_json::Value, &[serde_json::Value])) {
    let digest = pointer(server, KEY)["digest"].as_str().unwrap().to_owned();
    let mut manifest = current_manifest(server, KEY);
    let segments = manifest["segments"].as_array().unwrap().clone();
    for (i, segment) in segments.iter().enumerate() {
        let token = segment["pack"].as_str().unwrap();
        let pack_key = format!("{KEY}/packs/{token}.tar.zst");
        let mut pack = server.get_object(&pack_key).unwrap();
        let range = (
            segment["range"][0].as_u64().unwrap() as usize,
            segment["range"][1].as_u64().unwrap() as usize,
        );
        let lines = zstd::decode_all(&pack[range.0..range.1]).unwrap();
        let mut entries: Vec<serde_json::Value> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let Some(at) = entries.iter().position(|e| e["path"] == path) else {
            continue;
        };
        let others = entries.clone();
        edit(&mut entries[at], &others);
        let mut new_lines = Vec::new();
        for entry in &entries {
            new_lines.extend_from_slice(entry.to_string().as_bytes());
            new_lines.push(b'\n');
        }
        let frame = zstd::bulk::compress(&new_lines, 3).unwrap();
        let start = pack.len() as u64;
        pack.extend_from_slice(&frame);
        server.put_object(&pack_key, &pack);
        manifest["segments"][i]["range"] = serde_json::json!([start, pack.len() as u64]);
        manifest["segments"][i]["blake3"] = blake3::hash(&new_lines).to_hex().to_string().into();
        for p in manifest["packs"].as_array_mut().unwrap() {
            if p["token"] == token {
                p["bytes"] = (pack.len() as u64).into();
                p["blake3"] = blake3::hash(&pack).to_hex().to_string().into();
            }
        }
        let manifest_key = format!("{KEY}/snapshots/{digest}.json");
        server.put_object(&manifest_key, manifest.to_string().as_bytes());
        return;
    }
    panic!("no segment lists `{path}`");
}

/// Both a missing DIR and an existing (stale) one are left untouched by a restore from the
/// altered snapshot.
fn assert_detected(server: &TestS3, cache: &Path, tmp: &Path, expect_in_stderr: &str) {
    let missing = tmp.join("missing");
    assert_restore_leaves_dir_untouched(server, cache, &missing, KEY, &[], &|| {}, expect_in_stderr);
    let stale = support::make_tree(&tmp.join("stale"), 30, 8 * 1024, 72);
    assert_restore_leaves_dir_untouched(server, cache, &stale, KEY, &[], &|| {}, expect_in_stderr);
}

#[test]
fn a_pack_byte_altered_on_the_server_is_detected() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tree(&tmp.path().join("src"));
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let manifest = current_manifest(&server, KEY);
    let token = manifest["packs"][0]["token"].as_str().unwrap().to_owned();
    let pack_key = format!("{KEY}/packs/{token}.tar.zst");
    let mut pack = server.get_object(&pack_key).unwrap();
    // In the middle of the tar's frames (the segments come after them).
    let first_segment = manifest["segments"][0]["range"][0].as_u64().unwrap() as usize;
    pack[first_segment / 2] ^= 0x01;
    server.put_object(&pack_key, &pack);
    assert_detected(&server, &cache, tmp.path(), "packs/");
}

#[test]
fn a_segment_pointing_a_file_at_other_bytes_is_detected() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tree(&tmp.path().join("src"));
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    // `a.bin`'s content is said to be where `b.bin`'s is (same size, other bytes).
    rewrite_entry(&server, "a.bin", &|entry, others| {
        let b = others.iter().find(|e| e["path"] == "b.bin").unwrap();
        entry["chunks"] = b["chunks"].clone();
    });
    assert_detected(&server, &cache, tmp.path(), "do not match their digest");
}

#[test]
fn a_segment_that_changes_an_entry_is_detected() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tree(&tmp.path().join("src"));
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    // Well formed, every byte where it says, but not the tree the pointer names.
    rewrite_entry(&server, "a.bin", &|entry, _| {
        entry["exec"] = true.into();
    });
    assert_detected(&server, &cache, tmp.path(), "the segments describe tree");
}
