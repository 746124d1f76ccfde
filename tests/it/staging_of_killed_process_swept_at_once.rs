//! A process killed at any instant of reserving its staging leaves nothing that outlives it: the
//! owner's liveness is the kernel's lock, so the very next run sweeps it, however fresh it is.
//! (Before, a lock file still under its temporary `.pending-` name was left for ten minutes, and
//! `crash_kill_during_import` failed under load.)

use crate::support::*;

#[test]
fn an_unlocked_staging_lock_file_is_swept_by_the_next_run_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("in.txt");
    std::fs::write(&file, "x").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "a"]));
    let staging = root.join("v1/staging");
    // What a process killed between creating its lock file and locking (or renaming) it leaves:
    // the file as an older version named it, and as this one does, and a location beside it.
    std::fs::write(staging.join(".pending-import-4242-1a2b3c-0"), b"").unwrap();
    std::fs::write(staging.join("build-4242-1a2b3c-1.lock"), b"").unwrap();
    std::fs::create_dir(staging.join("build-4242-1a2b3c-1")).unwrap();
    std::fs::write(staging.join("build-4242-1a2b3c-1/partial"), b"p").unwrap();
    assert_consistent(&root, "right after the kill");
}
