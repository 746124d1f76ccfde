//! Helpers for the snapshot and restore tests: the real `warmcache snapshot` and `restore`
//! pointed at the in-process S3 server, and a look at what the server holds on disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use super::s3_server::TestS3;
use super::{describe_tree, json_ok, list, run, stderr, warmcache_s3};

/// Runs `warmcache snapshot DIR --remote URL --json [extra]`.
pub fn snapshot(server: &TestS3, root: &Path, dir: &Path, key: &str, extra: &[&str]) -> Output {
    directory_command("snapshot", server, root, dir, key, extra)
}

/// Runs `warmcache restore DIR --remote URL --json [extra]`.
pub fn restore(server: &TestS3, root: &Path, dir: &Path, key: &str, extra: &[&str]) -> Output {
    directory_command("restore", server, root, dir, key, extra)
}

fn directory_command(
    verb: &str,
    server: &TestS3,
    root: &Path,
    dir: &Path,
    key: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = warmcache_s3(server, root);
    cmd.arg(verb)
        .arg(dir)
        .arg("--remote")
        .arg(server.url(key))
        .arg("--json")
        .args(extra);
    run(&mut cmd)
}

/// Every object in the test bucket, with a digest of its bytes.
pub fn objects(server: &TestS3) -> BTreeMap<String, String> {
    server
        .list_objects("")
        .into_keys()
        .filter_map(|key| {
            // Deleted between the listing and the read: not in the bucket any more.
            let bytes = server.get_object(&key)?;
            Some((key, blake3::hash(&bytes).to_hex().to_string()))
        })
        .collect()
}

/// The pointer object under `key`, parsed.
pub fn pointer(server: &TestS3, key: &str) -> serde_json::Value {
    let bytes = server
        .get_object(&format!("{key}/pointer.json"))
        .expect("pointer object");
    serde_json::from_slice(&bytes).unwrap()
}

/// The snapshot manifest the pointer under `key` names, parsed.
pub fn current_manifest(server: &TestS3, key: &str) -> serde_json::Value {
    let digest = pointer(server, key)["digest"].as_str().unwrap().to_owned();
    let bytes = server
        .get_object(&format!("{key}/snapshots/{digest}.json"))
        .expect("manifest");
    serde_json::from_slice(&bytes).unwrap()
}

/// The object key of the first pack the current snapshot under `key` names (a first
/// snapshot's only, full, pack: the whole tree as a tar.zst).
pub fn current_pack_key(server: &TestS3, key: &str) -> String {
    let manifest = current_manifest(server, key);
    let token = manifest["packs"][0]["token"].as_str().expect("a pack").to_owned();
    format!("{key}/packs/{token}.tar.zst")
}

/// The file holding [`current_pack_key`] on the in-process backend (see
/// [`TestS3::object_path`]); tests that run on every backend use the key. Kept for tests written
/// before the backends (none of the suite's own uses it any more).
#[allow(dead_code)]
pub fn current_pack(server: &TestS3, key: &str) -> std::path::PathBuf {
    server.object_path(&current_pack_key(server, key))
}

/// Entries of `dir` whose names mark them as restore staging (the stage and scratch space beside
/// DIR, a tree moved aside, or the staging area of older versions).
pub fn staging_leftovers(dir: &Path) -> Vec<String> {
    list(dir)
        .into_iter()
        .filter(|name| name.contains("warmcache-stag") || name.contains("warmcache-prev"))
        .collect()
}

/// Restores `dir` from `key` in advisory and then in strict mode (with `extra` arguments, and
/// `arm` run before each, to set a fault up again), and checks that both fail as they should:
/// advisory warns and reports `degraded` with exit 0, strict errs with exit 1, both say
/// `expect_in_stderr`, and DIR (existing or absent) and its directory are left exactly as they
/// were, with no stage beside it. Returns how long each restore took.
pub fn assert_restore_leaves_dir_untouched(
    server: &TestS3,
    root: &Path,
    dir: &Path,
    key: &str,
    extra: &[&str],
    arm: &dyn Fn(),
    expect_in_stderr: &str,
) -> Vec<Duration> {
    let before = dir.exists().then(|| describe_tree(dir));
    let mut elapsed = Vec::new();
    for strict in [false, true] {
        arm();
        let mut args = extra.to_vec();
        if strict {
            args.push("--strict");
        }
        let started = Instant::now();
        let out = restore(server, root, dir, key, &args);
        elapsed.push(started.elapsed());
        let err = stderr(&out);
        if strict {
            assert_eq!(out.status.code(), Some(1), "--strict must fail: {err}");
            assert!(err.contains("error:"), "{err}");
        } else {
            let report = json_ok(&out);
            assert_eq!(report["status"], "degraded", "{report}");
            assert!(err.contains("warning:"), "{err}");
        }
        assert!(
            err.to_lowercase().contains(expect_in_stderr),
            "expected `{expect_in_stderr}` in: {err}"
        );
        assert_eq!(dir.exists().then(|| describe_tree(dir)), before, "DIR changed");
        assert_eq!(
            staging_leftovers(dir.parent().unwrap()),
            Vec::<String>::new(),
            "the stage must be removed"
        );
    }
    elapsed
}

/// Makes the object at `key` an hour old on the server (its `LastModified`), as if written long
/// before: past any grace a test gives the remote gc. Only the in-process backend can (see
/// [`super::backend::Kind::can_age_objects`]); the tests that need it check first.
pub fn age_object(server: &TestS3, key: &str) {
    let file = std::fs::File::options()
        .write(true)
        .open(server.object_path(key))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
}
