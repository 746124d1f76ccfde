//! The remote is advisory: when the server is down, stalls mid-download, answers 500s or serves
//! altered bytes, `warmcache restore` warns, exits 0 (within its `--timeout` when it stalls) and
//! leaves DIR exactly as it was, with no staging left behind; `--strict` makes each case exit 1.
//! Problems with DIR itself are errors whatever the mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{assert_restore_leaves_dir_untouched, current_pack_key, restore, snapshot};
use crate::support::{json_ok, stderr};

const KEY: &str = "sandbox/site/node_modules";

struct Setup {
    server: TestS3,
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    /// An existing directory holding an older tree.
    dir: PathBuf,
    /// A directory that does not exist.
    missing: PathBuf,
}

fn setup() -> Setup {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 80, 8 * 1024, 11);
    // Far more than the 64 KiB a stalled response sends.
    std::fs::write(src.join("big.bin"), support::Rng::new(5).bytes(3 * 1024 * 1024)).unwrap();
    json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let work = tmp.path().join("work");
    let dir = support::make_tree(&work.join("node_modules"), 10, 1024, 77);
    let missing = work.join("absent");
    Setup {
        server,
        cache,
        dir,
        missing,
        _tmp: tmp,
    }
}

/// Restores `dir` in advisory and strict mode and checks both leave it untouched.
fn assert_untouched_both_ways(
    s: &Setup,
    dir: &Path,
    extra: &[&str],
    expect_in_stderr: &str,
) -> Vec<Duration> {
    assert_restore_leaves_dir_untouched(&s.server, &s.cache, dir, KEY, extra, &|| {}, expect_in_stderr)
}

#[test]
fn server_down() {
    let s = setup();
    s.server.set_down(true);
    assert_untouched_both_ways(&s, &s.dir, &[], "unreachable");
    assert_untouched_both_ways(&s, &s.missing, &[], "unreachable");
}

#[test]
fn server_stalls_mid_download_and_the_timeout_is_honoured() {
    let s = setup();
    s.server.set_stall(true);
    let timeout = Duration::from_secs(3);
    for elapsed in assert_untouched_both_ways(&s, &s.dir, &["--timeout", "3s"], "did not finish within 3s") {
        // Without the overall bound the stall timeout (20 s) or the request timeout (60 s)
        // would end it; the margin is for process start-up on a loaded machine.
        assert!(elapsed < timeout + Duration::from_secs(5), "took {elapsed:?}");
    }
}

#[test]
fn server_answers_500() {
    let s = setup();
    s.server.fail_next(1_000_000);
    assert_untouched_both_ways(&s, &s.dir, &[], "500");
    assert_untouched_both_ways(&s, &s.missing, &[], "500");
}

#[test]
fn altered_archive_bytes_are_detected_and_not_extracted() {
    let s = setup();
    let archive = current_pack_key(&s.server, KEY);
    let mut bytes = s.server.get_object(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    s.server.put_object(&archive, &bytes);
    assert_untouched_both_ways(&s, &s.dir, &[], "digest mismatch");
    assert_untouched_both_ways(&s, &s.missing, &[], "digest mismatch");
}

#[test]
fn bytes_corrupted_in_transit_are_detected() {
    let s = setup();
    s.server.set_corrupt(true);
    assert_untouched_both_ways(&s, &s.dir, &[], "pointer");
}

#[test]
fn problems_with_dir_itself_are_errors_even_when_advisory() {
    let s = setup();
    let parentless = s.missing.join("no/such/parent");
    let out = restore(&s.server, &s.cache, &parentless, KEY, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("parent directory does not exist"),
        "{}",
        stderr(&out)
    );

    let file = s.dir.join("d0/s0/f0.bin");
    let out = restore(&s.server, &s.cache, &file, KEY, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));

    let out = snapshot(&s.server, &s.cache, &s.missing, KEY, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}
