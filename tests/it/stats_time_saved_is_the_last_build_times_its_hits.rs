//! Time saved is the entry's last build's duration times each hit it served
//! (docs/DESIGN.md, "Counting hits without writing"): hits counted before a rebuild are worth the
//! build they avoided, not the new one, even when no fold ran between them and the rebuild.

use std::path::Path;

use crate::support::*;

fn ensure(root: &Path, project: &Path) -> serde_json::Value {
    let mut cmd = warmcache(root);
    cmd.current_dir(project).args([
        "ensure",
        "e",
        "--input",
        "in.txt",
        "--build",
        "sleep \"$(cat in.txt)\"; cat in.txt > \"$WARMCACHE_OUT\"",
        "--json",
    ]);
    json_ok(&run(&mut cmd))
}

fn stats(root: &Path) -> serde_json::Value {
    json_ok(&run(warmcache(root).args(["stats", "--json"])))["total"].clone()
}

#[test]
fn hits_save_the_duration_of_the_build_they_avoided() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), "0.1").unwrap();
    assert_eq!(ensure(&root, &project)["status"], "built");
    let first = stats(&root)["build_ms"].as_u64().unwrap();
    assert!(first >= 100, "the builder slept 100 ms: {first}");
    for _ in 0..2 {
        assert_eq!(ensure(&root, &project)["status"], "hit");
    }
    // A slower rebuild, with the two hits still in their journals.
    std::fs::write(project.join("in.txt"), "0.6").unwrap();
    assert_eq!(ensure(&root, &project)["status"], "built");
    for _ in 0..3 {
        assert_eq!(ensure(&root, &project)["status"], "hit");
    }
    let total = stats(&root);
    let both = total["build_ms"].as_u64().unwrap();
    let second = both - first;
    assert!(second >= 600, "the builder slept 600 ms: {second}");
    assert_eq!(total["hits"], 5);
    assert_eq!(
        total["saved_ms"].as_u64().unwrap(),
        2 * first + 3 * second,
        "2 hits of the {first} ms build and 3 of the {second} ms one: {total}"
    );
}
