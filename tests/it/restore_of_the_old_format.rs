//! A snapshot in format 1 (one tar.zst of the whole tree, named by a version-1 manifest), as
//! warmcache wrote them before packs, still restores (docs/DESIGN.md, "Snapshots"), and a
//! directory that already holds it is left alone. The old objects are written directly, with
//! the `tar` and `zstd` crates, as the old writer made them.

use std::path::Path;

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, restore, snapshot};
use crate::support::{describe_tree, json_ok, walk_sorted};

const KEY: &str = "old/node_modules";

/// Writes `src` as a format-1 snapshot under `KEY`: the archive, its manifest, the pointer.
/// The tree's digest and counts come from a snapshot of today's format, whose objects are
/// then replaced.
fn write_old_snapshot(server: &TestS3, cache: &Path, src: &Path) -> String {
    json_ok(&snapshot(server, cache, src, KEY, &["--strict"]));
    let current = current_manifest(server, KEY);
    let digest = current["digest"].as_str().unwrap().to_owned();
    for pack in server.list_objects(&format!("{KEY}/packs")).into_keys() {
        server.delete_object(&pack);
    }

    let mut builder = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).unwrap());
    builder.follow_symlinks(false);
    for (rel, _) in walk_sorted(src) {
        builder.append_path_with_name(src.join(&rel), &rel).unwrap();
    }
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let archive_name = format!("snapshots/{digest}-0123456789abcdef.tar.zst");
    let put = |key: &str, bytes: &[u8]| {
        server.put_object(&format!("{KEY}/{key}"), bytes);
    };
    put(&archive_name, &archive);
    let manifest = serde_json::json!({
        "version": 1,
        "digest": digest,
        "files": current["files"],
        "dirs": current["dirs"],
        "symlinks": current["symlinks"],
        "bytes": current["bytes"],
        "archive": archive_name,
        "archive_format": "tar-zst",
        "archive_bytes": archive.len(),
        "archive_blake3": blake3::hash(&archive).to_hex().to_string(),
        "created_at_ms": 0,
        "host": "old-machine",
    });
    put(
        &format!("snapshots/{digest}.json"),
        manifest.to_string().as_bytes(),
    );
    let pointer = serde_json::json!({
        "version": 1,
        "digest": digest,
        "files": current["files"],
        "bytes": current["bytes"],
        "created_at_ms": 0,
        "host": "old-machine",
        "nonce": "n1",
    });
    put("pointer.json", pointer.to_string().as_bytes());
    digest
}

#[test]
fn a_format_1_snapshot_still_restores() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 150, 8 * 1024, 61);
    let digest = write_old_snapshot(&server, &cache, &src);

    // Into a missing directory, and over a stale one.
    let fresh = tmp.path().join("fresh");
    let stale = support::make_tree(&tmp.path().join("stale"), 40, 8 * 1024, 62);
    for dir in [&fresh, &stale] {
        let report = json_ok(&restore(&server, &cache, dir, KEY, &["--strict"]));
        assert_eq!(report["status"], "restored", "{report}");
        assert_eq!(report["digest"], digest.as_str(), "{report}");
        assert!(report["downloaded_bytes"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(describe_tree(dir), describe_tree(&src));
    }

    let again = json_ok(&restore(&server, &cache, &fresh, KEY, &["--strict"]));
    assert_eq!(again["status"], "unchanged", "{again}");
    assert_eq!(describe_tree(&fresh), describe_tree(&src));
}
