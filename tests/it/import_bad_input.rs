//! Bad input gets a clear error that names the thing and the fix, exit code 1 (2 for a bad
//! argument such as an invalid name), and leaves nothing
//! half-written visible: missing and unreadable sources, bad names, special files, a read-only
//! root, a full disk, a corrupt catalog row or file, an artifact deleted behind the catalog's back.

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn fails_with(cmd: &mut Command, needles: &[&str]) -> String {
    exits_with(1, cmd, needles)
}

fn exits_with(code: i32, cmd: &mut Command, needles: &[&str]) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code} from {cmd:?}; stderr: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr of {cmd:?} should mention {needle:?}: {stderr}"
        );
    }
    stderr
}

fn assert_nothing_published(root: &Path) {
    assert_eq!(
        artifact_ids(root),
        Vec::<String>::new(),
        "no artifact may be published"
    );
    assert_eq!(
        list(&root.join("v1/staging")),
        Vec::<String>::new(),
        "no staging leftovers"
    );
}

#[test]
fn missing_source_and_bad_names_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let missing = tmp.path().join("no-such-dir");
    fails_with(
        warmcache(&root).arg("import").arg(&missing),
        &["no-such-dir", "does not exist"],
    );
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    for bad in ["../x", "/abs", "a\\b", "a\nb", "tab\there", ""] {
        exits_with(
            2,
            warmcache(&root).arg("import").arg(&file).args(["--name", bad]),
            &["invalid entry name"],
        );
    }
    assert!(!root.exists(), "bad input must not even create the cache root");
}

#[test]
fn unreadable_source_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    // Reading /proc/self/mem at offset 0 fails with EIO even for root: a real unreadable file.
    fails_with(
        warmcache(&root).args(["import", "/proc/self/mem", "--name", "mem"]),
        &["/proc/self/mem"],
    );
    assert_nothing_published(&root);
    let status = json_ok(&run(warmcache(&root).args(["status", "--json"])));
    assert_eq!(status["entries"].as_array().unwrap().len(), 0);
}

#[test]
fn special_files_in_a_tree_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = make_tree(&tmp.path().join("tree"), 40, 100, 1);
    let fifo = tree.join("d3/pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    fails_with(warmcache(&root).arg("import").arg(&tree), &["FIFO", "d3/pipe"]);
    assert_nothing_published(&root);
}

#[test]
fn read_only_root_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let out = in_namespace(
        r#"mount -t tmpfs -o ro tmpfs "$2" || exit 1
           "$1" --root "$2/cache" import "$3" --name f; echo "rc=$?""#,
        &[Path::new(env!("CARGO_BIN_EXE_warmcache")), &mnt, &file],
    );
    assert!(out.contains("rc=1"), "{out}");
    assert!(
        out.contains("Read-only file system") && out.contains("--root"),
        "{out}"
    );
}

#[test]
fn full_disk_is_a_clear_error_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let big = tmp.path().join("big");
    std::fs::write(&big, Rng::new(1).bytes(12 << 20)).unwrap();
    let small = tmp.path().join("small");
    std::fs::write(&small, b"small").unwrap();
    let out = in_namespace(
        r#"mount -t tmpfs -o size=4m tmpfs "$2" || exit 1
           "$1" --root "$2/cache" import "$3" --name big; echo "rc=$?"
           echo "staging=$(ls -A "$2/cache/v1/staging" | wc -l)"
           echo "objects=$(find "$2/cache/v1/objects" -mindepth 2 | wc -l)"
           "$1" --root "$2/cache" import "$4" --name small >/dev/null && echo small-ok"#,
        &[Path::new(env!("CARGO_BIN_EXE_warmcache")), &mnt, &big, &small],
    );
    assert!(out.contains("rc=1"), "{out}");
    assert!(
        out.contains("no space left") && out.contains("warmcache gc"),
        "{out}"
    );
    assert!(
        out.contains("staging=0"),
        "staging leftovers after a full disk: {out}"
    );
    assert!(
        out.contains("objects=0"),
        "something was published after a full disk: {out}"
    );
    assert!(
        out.contains("small-ok"),
        "the cache must keep working after a full disk: {out}"
    );
}

#[test]
fn corrupt_catalog_rows_and_vanished_artifacts_are_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("f");
    std::fs::write(&file, b"content").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "a"]));
    let b_path = ok(warmcache(&root)
        .arg("import")
        .arg(tmp.path().join("f"))
        .args(["--name", "b"]));

    // A row with an artifact id that is not an id.
    let db = rusqlite::Connection::open(root.join("v1/catalog.sqlite")).unwrap();
    db.execute("UPDATE entries SET artifact = 'garbage' WHERE name = 'a'", [])
        .unwrap();
    drop(db);
    fails_with(warmcache(&root).args(["path", "a"]), &["`a` has no artifact"]);
    ok(warmcache(&root).arg("status"));

    // The artifact deleted by hand behind the catalog's back: verify reports it, path misses.
    let object = Path::new(&b_path).parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&object).unwrap();
    fails_with(warmcache(&root).args(["path", "b"]), &["`b` has no artifact"]);
    let verify = json_exit(&run(warmcache(&root).args(["verify", "--json"])), 1);
    assert_eq!(verify["dangling"], serde_json::json!(["b"]), "{verify}");
    fails_with(warmcache(&root).args(["path", "b"]), &["`b` has no artifact"]);
    fails_with(
        warmcache(&root).args(["path", "nope"]),
        &["no entry named `nope`", "warmcache import"],
    );
}

#[test]
fn a_catalog_that_is_not_a_database_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    ok(warmcache(&root).arg("status"));
    std::fs::write(root.join("v1/catalog.sqlite"), vec![0x55u8; 8192]).unwrap();
    let _ = std::fs::remove_file(root.join("v1/catalog.sqlite-wal"));
    let _ = std::fs::remove_file(root.join("v1/catalog.sqlite-shm"));
    fails_with(
        warmcache(&root).arg("status"),
        &["catalog.sqlite", "move it aside"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(warmcache(tmp.path()).arg("no-such-command"));
    assert_eq!(out.status.code(), Some(2));
    let out = run(warmcache(tmp.path()).arg("import"));
    assert_eq!(out.status.code(), Some(2));
}
