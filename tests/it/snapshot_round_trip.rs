//! A real tree (nested files, executable bits, symlinks to a file and to a directory, empty
//! directories, a file big enough for a multipart upload and a ranged download) goes up with
//! `warmcache snapshot` and comes back identical with `warmcache restore`, into a missing
//! directory and over an existing one; the uploaded object is a standard tar.zst that
//! `zstd -d | tar -x` reads to the same tree.

use std::path::Path;
use std::process::Command;

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, restore, snapshot, staging_leftovers};

const KEY: &str = "team/site-a/node_modules";

fn real_tree(root: &Path) {
    support::make_tree(root, 300, 32 * 1024, 7);
    // Incompressible and larger than one 8 MiB part: multipart up, several ranges down.
    let mut rng = support::Rng::new(99);
    std::fs::write(root.join("d3/big.bin"), rng.bytes(12 * 1024 * 1024)).unwrap();
    std::fs::create_dir_all(root.join("empty/nested/deeper")).unwrap();
    std::fs::create_dir_all(root.join("d1/.bin")).unwrap();
    std::os::unix::fs::symlink("../d1", root.join("d2/to-dir")).unwrap();
    std::os::unix::fs::symlink("../d0/s0/f0.bin", root.join("d1/.bin/tool")).unwrap();
}

#[test]
fn snapshot_then_restore_reproduces_the_tree() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("src");
    real_tree(&src);
    let expected = support::describe_tree(&src);

    let report = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(report["status"], "uploaded", "{report}");
    assert!(
        report["uploaded_bytes"].as_u64().unwrap() > 12 * 1024 * 1024,
        "{report}"
    );
    assert_eq!(report["files"], 301, "{report}");
    assert_eq!(
        support::describe_tree(&src),
        expected,
        "snapshot changed the source tree"
    );

    // Into a directory that does not exist yet.
    let fresh = tmp.path().join("machine-b/node_modules");
    std::fs::create_dir_all(fresh.parent().unwrap()).unwrap();
    let report = json_ok(&restore(&server, &cache, &fresh, KEY, &[]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(support::describe_tree(&fresh), expected);
    assert!(staging_leftovers(fresh.parent().unwrap()).is_empty());

    // Over an existing, different tree: replaced whole, nothing of the old one left.
    let stale = tmp.path().join("machine-c/node_modules");
    support::make_tree(&stale, 20, 1024, 1234);
    std::fs::write(stale.join("only-in-old.txt"), "old").unwrap();
    let report = json_ok(&restore(&server, &cache, &stale, KEY, &[]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(support::describe_tree(&stale), expected);
    assert!(staging_leftovers(stale.parent().unwrap()).is_empty());
}

#[test]
fn the_uploaded_object_is_a_standard_tar_zst() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    real_tree(&src);
    json_ok(&snapshot(&server, &tmp.path().join("cache"), &src, KEY, &[]));

    // A first snapshot is one full pack.
    let manifest = current_manifest(&server, KEY);
    let packs = manifest["packs"].as_array().unwrap();
    assert_eq!(packs.len(), 1, "{manifest}");
    assert_eq!(packs[0]["full"], true, "{manifest}");
    let token = packs[0]["token"].as_str().unwrap();
    let bytes = server
        .get_object(&format!("{KEY}/packs/{token}.tar.zst"))
        .unwrap();
    let archive = tmp.path().join("pack.tar.zst");
    std::fs::write(&archive, &bytes).unwrap();
    assert_eq!(packs[0]["bytes"], bytes.len() as u64);
    assert_eq!(packs[0]["blake3"], blake3::hash(&bytes).to_hex().as_str());

    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("zstd -d -c \"$1\" | tar -x -C \"$2\"")
        .arg("sh")
        .arg(&archive)
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(support::describe_tree(&plain), support::describe_tree(&src));
}
