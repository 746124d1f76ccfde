//! `gc` meets the size budget when nothing is protected, removes least recently used first, and
//! never removes an entry's artifact or a leased one; `--dry-run` removes nothing; `--evict`
//! releases an entry.

use std::path::Path;

use crate::support::*;

fn write(dir: &Path, name: &str, len: usize, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, Rng::new(seed).bytes(len)).unwrap();
    path
}

#[test]
fn budget_is_met_least_recently_used_first() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let mut ids = Vec::new();
    for i in 0..5 {
        let f = write(tmp.path(), &format!("f{i}"), 1 << 20, i);
        ids.push(
            json_ok(&run(warmcache(&root).arg("import").arg(&f).arg("--json")))["artifact"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let report = json_ok(&run(warmcache(&root).args([
        "gc",
        "--max-size",
        "2.5M",
        "--json",
    ])));
    assert_eq!(report["budget_met"], true, "{report}");
    assert!(report["size_after"].as_u64().unwrap() <= 2_621_440, "{report}");
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["artifact"].as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        ids[..3].iter().map(String::as_str).collect::<Vec<_>>(),
        "oldest first"
    );
    assert_eq!(artifact_ids(&root).len(), 2);
    assert_eq!(
        list(&root.join("v1/trash")),
        Vec::<String>::new(),
        "trash emptied"
    );
    let verify = json_ok(&run(warmcache(&root).args(["verify", "--json"])));
    assert_eq!(
        verify["damaged"].as_array().unwrap().len() + verify["dangling"].as_array().unwrap().len(),
        0
    );
}

#[test]
fn protected_artifacts_survive_and_dry_run_removes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    for i in 0..3 {
        ok(warmcache(&root)
            .arg("import")
            .arg(write(tmp.path(), &format!("anon{i}"), 100_000, i)));
    }
    let current = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(write(tmp.path(), "cur", 100_000, 10))
        .args(["--name", "cur", "--json"])));
    let leased = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(write(tmp.path(), "old", 100_000, 11))
        .args(["--name", "lib", "--json"])));
    ok(warmcache(&root).args(["path", "lib", "--lease", "10m"]));
    // The entry moves on; the old artifact is now protected only by the lease.
    let newer = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(write(tmp.path(), "new", 100_000, 12))
        .args(["--name", "lib", "--json"])));
    assert_eq!(artifact_ids(&root).len(), 6);

    let dry = json_ok(&run(warmcache(&root).args([
        "gc",
        "--max-size",
        "0",
        "--dry-run",
        "--json",
    ])));
    assert_eq!(dry["removed"].as_array().unwrap().len(), 3, "{dry}");
    assert_eq!(artifact_ids(&root).len(), 6, "a dry run removes nothing");

    let out = run(warmcache(&root).args(["--json", "gc", "--max-size", "0"]));
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("protected"),
        "over-budget warning expected"
    );
    let report: serde_json::Value = crate::support::json_any(&out);
    assert_eq!(report["removed"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(report["protected"], 3);
    assert_eq!(report["budget_met"], false);
    let left = artifact_ids(&root);
    for kept in [&current, &leased, &newer] {
        assert!(
            left.contains(&kept["artifact"].as_str().unwrap().to_string()),
            "{kept} was collected"
        );
        assert!(Path::new(kept["path"].as_str().unwrap()).exists());
    }

    // Evicting an entry releases its artifact.
    let evicted = json_ok(&run(warmcache(&root).args([
        "gc",
        "--max-size",
        "0",
        "--evict",
        "cur",
        "--json",
    ])));
    assert_eq!(
        evicted["removed"][0]["artifact"], current["artifact"],
        "{evicted}"
    );
    let out = run(warmcache(&root).args(["gc", "--evict", "no-such-entry"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such entry"));
}

#[test]
fn gc_never_follows_a_symlink_out_of_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let outside = tmp.path().join("precious");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("data"), b"keep me").unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("data"), tree.join("link-to-file")).unwrap();
    ok(warmcache(&root).arg("import").arg(&tree));
    let report = json_ok(&run(warmcache(&root).args(["gc", "--max-size", "0", "--json"])));
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(std::fs::read(outside.join("data")).unwrap(), b"keep me");
}
