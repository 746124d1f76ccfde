//! A restore onto a stale tree takes each unchanged file by a hard link from DIR's file at the
//! same path rather than writing it again (docs/DESIGN.md, "Restore"): the restored file is the
//! old inode, so no byte is written and none is freed when the old tree is removed. A file whose
//! executable bit changed is written anew; and a restore that fails after linking leaves DIR as
//! it was (the links it added are removed with the stage).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{assert_restore_leaves_dir_untouched, current_manifest, restore, snapshot};
use crate::support::{describe_tree, json_ok};

const KEY: &str = "ci/node_modules";
/// The free-space reserve is not what this test is about.
const RESTORE: &[&str] = &["--min-free", "0"];

fn meta(dir: &Path, rel: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(dir.join(rel)).unwrap()
}

#[test]
fn unchanged_files_keep_their_inode_and_a_failed_restore_leaves_dir_as_it_was() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 200, 8 * 1024, 53);
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));
    let dir = tmp.path().join("dir");
    let cold = json_ok(&restore(&server, &cache, &dir, KEY, RESTORE));
    assert_eq!(cold["status"], "restored", "{cold}");
    let (kept, changed, chmodded) = ("d0/s0/f0.bin", "d2/s1/f36.bin", "d1/s1/f1.bin");
    let old_ino = meta(&dir, kept).ino();
    let old_changed = meta(&dir, changed).ino();
    let old_chmodded = meta(&dir, chmodded).ino();

    // Today: one file has new content, another only became executable.
    std::fs::write(src.join(changed), support::Rng::new(9).bytes(3000)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join(chmodded), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    json_ok(&snapshot(&server, &cache, &src, KEY, &["--strict"]));

    // A byte of the delta pack's data altered: the restore links the unchanged files into its
    // stage, then fails on the download, and DIR is as it was, each file with one name again.
    let manifest = current_manifest(&server, KEY);
    let token = manifest["packs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["full"] == false)
        .expect("a delta pack")["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its data frames come first, then its segments.
    let data_end = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pack"] == token.as_str())
        .map(|s| s["range"][0].as_u64().unwrap())
        .min()
        .expect("a segment in the delta pack");
    let pack_key = format!("{KEY}/packs/{token}.tar.zst");
    let original = server.get_object(&pack_key).unwrap();
    let mut altered = original.clone();
    altered[data_end as usize / 2] ^= 0x01;
    let arm = || server.put_object(&pack_key, &altered);
    assert_restore_leaves_dir_untouched(&server, &cache, &dir, KEY, RESTORE, &arm, "packs/");
    assert_eq!(meta(&dir, kept).ino(), old_ino);
    assert_eq!(
        meta(&dir, kept).nlink(),
        1,
        "the link into the stage was removed with it"
    );

    server.put_object(&pack_key, &original);
    let report = json_ok(&restore(&server, &cache, &dir, KEY, RESTORE));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    assert_eq!(
        meta(&dir, kept).ino(),
        old_ino,
        "an unchanged file is linked, not written"
    );
    assert_eq!(meta(&dir, kept).nlink(), 1, "the old tree's name is gone");
    assert_ne!(meta(&dir, changed).ino(), old_changed);
    assert_ne!(
        meta(&dir, chmodded).ino(),
        old_chmodded,
        "a file whose executable bit changed is not linked (its old inode would change too)"
    );
    assert!(meta(&dir, chmodded).mode() & 0o111 != 0);
}
