//! A pack damaged on the server is detected by every restore (DIR untouched), but a snapshot of
//! the same tree is `unchanged` and a delta builds on the damaged pack, so before, the key never
//! recovered. The restore now says how to repair it, and `snapshot --force` writes a full pack
//! that shares nothing with the damaged one, even for an unchanged tree.

use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_pack_key, restore, snapshot};
use crate::support::*;

#[test]
fn force_replaces_a_damaged_pack_and_the_key_restores_again() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = make_tree(&tmp.path().join("tree"), 40, 4096, 7);
    json_ok(&snapshot(&server, &root, &tree, "k", &[]));
    let damaged = current_pack_key(&server, "k");
    let mut bytes = server.get_object(&damaged).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0xff;
    server.put_object(&damaged, &bytes);

    let into = tmp.path().join("restored");
    let out = restore(&server, &tmp.path().join("cold"), &into, "k", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--force"),
        "no repair hint: {}",
        stderr(&out)
    );
    assert!(!into.exists(), "a damaged snapshot was restored");

    let plain = json_ok(&snapshot(&server, &root, &tree, "k", &[]));
    assert_eq!(plain["status"], "unchanged", "{plain}");
    let forced = json_ok(&snapshot(&server, &root, &tree, "k", &["--force"]));
    assert_eq!(forced["status"], "uploaded", "{forced}");
    assert_eq!(forced["full"], true, "{forced}");
    assert_ne!(
        current_pack_key(&server, "k"),
        damaged,
        "the damaged pack is still named"
    );

    let restored = json_ok(&restore(&server, &tmp.path().join("cold2"), &into, "k", &[]));
    assert_eq!(restored["status"], "restored", "{restored}");
    assert_eq!(describe_tree(&into), describe_tree(&tree));
}
