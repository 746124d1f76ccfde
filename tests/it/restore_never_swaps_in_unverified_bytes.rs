//! `warmcache restore` extracts the archive while it downloads, before its digest is known
//! (docs/DESIGN.md, "Restore"); it still never swaps in anything unverified. A byte altered in
//! the middle of a large archive on the server, and a server that dies halfway through the
//! download, both leave DIR exactly as it was (existing or absent) with no staging beside it,
//! in advisory and in strict mode; a later restore from a healthy server succeeds.

use std::path::{Path, PathBuf};

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{
    assert_restore_leaves_dir_untouched, current_pack_key, restore, snapshot, staging_leftovers,
};

const KEY: &str = "ci/large/node_modules";

struct Setup {
    server: TestS3,
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    src: PathBuf,
    /// An existing directory holding an older tree.
    dir: PathBuf,
    /// A directory that does not exist.
    missing: PathBuf,
    /// The archive's key on the server, and its size.
    archive: String,
    archive_bytes: usize,
}

/// A snapshot whose archive spans many download parts (restore fetches at most 2 MiB a
/// part), of a tree with many files, so extraction is well under way when the middle of the
/// archive arrives.
fn setup() -> Setup {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 600, 16 * 1024, 3);
    let mut rng = support::Rng::new(9);
    for i in 0..10 {
        std::fs::write(src.join(format!("big{i}.bin")), rng.bytes(2 * 1024 * 1024)).unwrap();
    }
    json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let archive = current_pack_key(&server, KEY);
    let archive_bytes = server.object_size(&archive).unwrap() as usize;
    assert!(archive_bytes > 16 << 20, "the archive must span many parts");
    let work = tmp.path().join("work");
    let dir = support::make_tree(&work.join("node_modules"), 10, 1024, 77);
    let missing = work.join("absent");
    Setup {
        server,
        cache,
        src,
        dir,
        missing,
        archive,
        archive_bytes,
        _tmp: tmp,
    }
}

/// Restores `dir` in advisory and in strict mode, with `arm` run before each; checks both
/// fail, say `expect_in_stderr`, and leave DIR and its directory as they were.
fn assert_untouched(s: &Setup, dir: &Path, arm: &dyn Fn(), expect_in_stderr: &str) {
    assert_restore_leaves_dir_untouched(&s.server, &s.cache, dir, KEY, &[], arm, expect_in_stderr);
}

/// A healthy server again: the restore goes through and DIR is the snapshot's tree.
fn assert_restores(s: &Setup, dir: &Path) {
    let report = json_ok(&restore(&s.server, &s.cache, dir, KEY, &["--strict"]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(support::describe_tree(dir), support::describe_tree(&s.src));
    assert!(staging_leftovers(dir.parent().unwrap()).is_empty());
}

#[test]
fn a_byte_altered_in_the_middle_of_a_large_archive_is_caught_and_nothing_is_swapped_in() {
    let s = setup();
    let original = s.server.get_object(&s.archive).unwrap();
    let mut altered = original.clone();
    altered[s.archive_bytes / 2] ^= 0x40;
    s.server.put_object(&s.archive, &altered);
    let nothing = || {};
    assert_untouched(&s, &s.dir, &nothing, "digest mismatch");
    assert_untouched(&s, &s.missing, &nothing, "digest mismatch");

    s.server.put_object(&s.archive, &original);
    assert_restores(&s, &s.dir);
}

#[test]
fn a_server_that_dies_mid_download_leaves_dir_untouched_and_no_stage() {
    let s = setup();
    let die_halfway = || s.server.die_after(s.archive_bytes / 2);
    assert_untouched(&s, &s.dir, &die_halfway, "download failed");
    assert_untouched(&s, &s.missing, &die_halfway, "download failed");

    s.server.die_after(0);
    assert_restores(&s, &s.missing);
}
