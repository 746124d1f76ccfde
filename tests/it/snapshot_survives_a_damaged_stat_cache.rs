//! The snapshot's stat cache (under the cache root) vouches for a file's digest without reading
//! it, so damage to it must never be trusted: before, a flipped bit in a recorded digest made
//! every later snapshot fail with "changed while it was being snapshotted", blaming DIR. Now the
//! cache carries a BLAKE3 of itself, and any damaged byte makes the snapshot read every file.

use std::time::{Duration, SystemTime};

use crate::support::s3_server::TestS3;
use crate::support::snapshots::snapshot;
use crate::support::*;

#[test]
fn any_damaged_byte_of_the_stat_cache_is_ignored() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    for (name, content) in [
        ("a.js", "one"),
        ("b.js", "two two"),
        ("c.js", "three three three"),
    ] {
        std::fs::write(tree.join(name), content).unwrap();
        // Older than the racy window, so the cache is trusted for them.
        let file = std::fs::File::options()
            .write(true)
            .open(tree.join(name))
            .unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }
    let first = json_ok(&snapshot(&server, &root, &tree, "k", &[]));
    assert_eq!(first["status"], "uploaded", "{first}");

    let dir = root.join("v1/snapshot-stat");
    let cache = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .expect("no stat cache was written");
    let original = std::fs::read(&cache).unwrap();
    for at in 0..original.len() {
        let mut damaged = original.clone();
        damaged[at] ^= 0x01;
        std::fs::write(&cache, &damaged).unwrap();
        let out = snapshot(&server, &root, &tree, "k", &[]);
        assert!(
            out.status.success(),
            "byte {at} flipped: {}{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        );
        let report: serde_json::Value = crate::support::json_any(&out);
        assert_eq!(report["status"], "unchanged", "byte {at} flipped: {report}");
        std::fs::write(&cache, &original).unwrap();
    }
}
