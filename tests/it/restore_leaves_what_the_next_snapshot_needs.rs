//! A restore keeps, for its directory and URL, what a snapshot keeps (docs/DESIGN.md,
//! "Restore"): the manifest segments it read, so the next restore onto the next version fetches
//! only the segments that changed, and each restored file's stat with its verified digest, so a
//! snapshot right after the restore (the CI flow: restore, build, snapshot) reads only the files
//! the build changed and fetches no segment. Bytes are counted by the S3 server.

use std::path::Path;

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, objects, restore, snapshot};
use crate::support::{describe_tree, json_ok};

const KEY: &str = "ci/node_modules";
/// The free-space reserve is not what these tests are about (and a shared test machine's disk
/// may be nearly full).
const RESTORE: &[&str] = &["--strict", "--min-free", "0"];

/// The size of an object under `KEY`.
fn size(server: &TestS3, key: &str) -> u64 {
    server.object_size(&format!("{KEY}/{key}")).unwrap()
}

/// The pointer and the current manifest's top object (its segments excluded).
fn top_bytes(server: &TestS3) -> u64 {
    let digest = current_manifest(server, KEY)["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    size(server, "pointer.json") + size(server, &format!("snapshots/{digest}.json"))
}

fn packs(server: &TestS3) -> Vec<String> {
    objects(server)
        .into_keys()
        .filter(|k| k.contains("/packs/"))
        .collect()
}

/// Runs `f` and returns its result with the bytes the server sent and received meanwhile.
fn counted<T>(server: &TestS3, f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (down, up) = (server.bytes_downloaded(), server.bytes_uploaded());
    let out = f();
    (
        out,
        server.bytes_downloaded() - down,
        server.bytes_uploaded() - up,
    )
}

/// Yesterday's tree snapshotted from `src` and restored into a fresh `dir`; then one file
/// changed in `src` and snapshotted again. Returns the delta pack's size.
fn yesterday_and_today(server: &TestS3, cache: &Path, src: &Path, dir: &Path) -> u64 {
    json_ok(&snapshot(server, cache, src, KEY, &["--strict"]));
    let first = packs(server);
    let cold = json_ok(&restore(server, cache, dir, KEY, RESTORE));
    assert_eq!(cold["status"], "restored", "{cold}");
    std::fs::write(src.join("d2/s1/f36.bin"), support::Rng::new(99).bytes(10_000)).unwrap();
    json_ok(&snapshot(server, cache, src, KEY, &["--strict"]));
    packs(server)
        .into_iter()
        .filter(|k| !first.contains(k))
        .map(|k| server.object_size(&k).unwrap())
        .sum()
}

#[test]
fn a_restore_onto_the_previous_version_downloads_within_twice_the_delta() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 1000, 16 * 1024, 41);
    let dir = tmp.path().join("dir");
    let delta_pack = yesterday_and_today(&server, &cache, &src, &dir);

    let (report, bytes, _) = counted(&server, || json_ok(&restore(&server, &cache, &dir, KEY, RESTORE)));
    // The delta: the changed file's frame and the changed segments (both in the delta pack),
    // the manifest and the pointer. Fetching every segment again costs far more than that.
    let delta = delta_pack + top_bytes(&server);
    eprintln!("one file of 1,000 changed: restore downloaded {bytes} bytes, the delta is {delta}: {report}");
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&dir), describe_tree(&src));
    assert_eq!(report["fetched_chunks"], 1, "{report}");
    assert!(
        bytes <= 2 * delta,
        "downloaded {bytes} bytes for a delta of {delta}"
    );
}

#[test]
fn a_snapshot_right_after_a_restore_reads_only_what_changed_and_fetches_no_segment() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 1000, 16 * 1024, 47);
    let dir = tmp.path().join("dir");
    yesterday_and_today(&server, &cache, &src, &dir);
    let restored = json_ok(&restore(&server, &cache, &dir, KEY, RESTORE));
    assert_eq!(restored["status"], "restored", "{restored}");

    // Nothing changed: nothing is uploaded.
    let (unchanged, _, up) = counted(&server, || {
        json_ok(&snapshot(&server, &cache, &dir, KEY, &["--strict"]))
    });
    assert_eq!(unchanged["status"], "unchanged", "{unchanged}");
    assert_eq!(up, 0, "{unchanged}");

    // The build changes one file: the snapshot reads that file only, and builds on the current
    // snapshot with the segments the restore kept.
    std::fs::write(dir.join("d3/s2/f37.bin"), support::Rng::new(7).bytes(5_000)).unwrap();
    let (report, down, _) = counted(&server, || {
        json_ok(&snapshot(&server, &cache, &dir, KEY, &["--strict"]))
    });
    eprintln!("snapshot after restore and one change: downloaded {down} bytes: {report}");
    assert_eq!(report["status"], "uploaded", "{report}");
    assert_eq!(report["files_read"], 1, "{report}");
    let lists = top_bytes(&server) * 2 + 4096;
    assert!(
        down <= lists,
        "downloaded {down} bytes: segments were fetched again"
    );
}
