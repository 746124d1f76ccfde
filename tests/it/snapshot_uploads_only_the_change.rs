//! A snapshot uploads only what the current snapshot does not hold (docs/DESIGN.md,
//! "Snapshots"): one file changed in a 1,000-file tree goes up as one small pack (the file and
//! one manifest segment, every other segment reused, copies of one content included), and the
//! other files are not even read again (the stat cache); a 1 KiB edit in the middle of a 50 MiB
//! file moves a few content-defined chunks, not the file. Bytes are counted by the S3 server.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, objects, snapshot};

const KEY: &str = "ci/node_modules";

/// The packs under `KEY`.
fn packs(server: &TestS3) -> Vec<String> {
    objects(server)
        .into_keys()
        .filter(|k| k.starts_with(&format!("{KEY}/packs/")))
        .collect()
}

/// Dates every file of `root` an hour back, as a tree installed a while ago: files written
/// within the last seconds are "racily clean" and always read again.
fn age(root: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    for (path, kind) in support::walk_sorted(root) {
        if kind.is_file() {
            let file = std::fs::File::options()
                .write(true)
                .open(root.join(path))
                .unwrap();
            file.set_modified(past).unwrap();
        }
    }
}

#[test]
fn one_changed_file_uploads_one_small_pack() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 1000, 16 * 1024, 11);
    // Copies of one content in many places, as the LICENSE files of a node_modules: each
    // segment holding one must come out the same next time, to be reused.
    for d in 0..17 {
        std::fs::write(src.join(format!("d{d}/LICENSE")), "MIT License\n".repeat(40)).unwrap();
    }
    age(&src);

    let first = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(first["status"], "uploaded", "{first}");
    assert_eq!(first["full"], true, "{first}");
    let full_bytes = server.bytes_uploaded();
    assert_eq!(packs(&server).len(), 1);

    // One file gets new content (and a new size, as an upgrade does).
    let changed = src.join("d5/s0/f5.bin");
    let content = support::Rng::new(77).bytes(10_000);
    std::fs::write(&changed, &content).unwrap();
    let before = server.bytes_uploaded();
    let second = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let uploaded = server.bytes_uploaded() - before;
    eprintln!("one file of 1,000 changed: {uploaded} bytes uploaded, the full snapshot {full_bytes}");
    assert_eq!(second["status"], "uploaded", "{second}");
    assert_eq!(second["full"], false, "{second}");
    assert_eq!(packs(&server).len(), 2, "exactly one new pack");
    assert_eq!(second["new_chunks"], 1, "{second}");
    assert_eq!(second["new_segments"], 1, "{second}");
    assert!(second["reused_segments"].as_u64().unwrap() >= 2, "{second}");
    assert_eq!(
        second["files_read"], 1,
        "unchanged files were read again: {second}"
    );
    assert_eq!(second["files_trusted"], 1016, "{second}");
    // The file (incompressible), one segment of a few hundred entries, the manifest and the
    // pointer: a small fraction of the tree.
    assert!(
        uploaded < content.len() as u64 + 96 * 1024,
        "uploaded {uploaded} bytes for a {}-byte change (the full snapshot: {full_bytes})",
        content.len()
    );
    assert!(uploaded * 20 < full_bytes, "{uploaded} of {full_bytes}");
    // The new manifest names both packs: the old one for everything else.
    let manifest = current_manifest(&server, KEY);
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["packs"].as_array().unwrap().len(), 2, "{manifest}");
}

#[test]
fn a_small_edit_in_a_large_file_moves_a_few_chunks() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("db/readme.txt"), b"a database").unwrap();
    let mut data = support::Rng::new(5).bytes(50 << 20);
    std::fs::write(src.join("db/app.sqlite"), &data).unwrap();

    let first = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(first["status"], "uploaded", "{first}");
    assert!(first["uploaded_bytes"].as_u64().unwrap() > 50 << 20, "{first}");

    // 1 KiB rewritten in the middle; the size stays.
    let middle = data.len() / 2;
    data[middle..middle + 1024].copy_from_slice(&support::Rng::new(6).bytes(1024));
    std::fs::write(src.join("db/app.sqlite"), &data).unwrap();
    let before = server.bytes_uploaded();
    let second = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let uploaded = server.bytes_uploaded() - before;
    assert_eq!(second["status"], "uploaded", "{second}");
    eprintln!("1 KiB edited in a 50 MiB file: {uploaded} bytes uploaded: {second}");
    let new_chunks = second["new_chunks"].as_u64().unwrap();
    assert!((1..=3).contains(&new_chunks), "{second}");
    assert!(second["reused_chunks"].as_u64().unwrap() > 300, "{second}");
    assert!(uploaded < 1 << 20, "uploaded {uploaded} bytes for a 1 KiB edit");
}
