//! `warmcache stats` counts exactly what a scripted sequence of `ensure` calls did: hits,
//! misses, stale serves, successful builds and failed ones by kind, per entry and for the root
//! (docs/DESIGN.md, "Counting hits without writing"). Hits are counted in per-process journals
//! and folded by the next writer, so the numbers must match whatever folded them.

use std::path::Path;

use crate::support::*;

fn ensure(root: &Path, project: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = warmcache(root);
    cmd.current_dir(project).args([
        "ensure",
        name,
        "--input",
        "in.txt",
        "--build",
        "[ \"$(cat mode)\" = ok ] || exit 1; cat in.txt > \"$WARMCACHE_OUT\"",
        "--json",
    ]);
    cmd.args(extra);
    run(&mut cmd)
}

fn counts(value: &serde_json::Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = value
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !["name", "build_ms", "saved_ms"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    out.sort();
    out
}

fn expected(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = [
        "builds_failed_deterministic",
        "builds_failed_transient",
        "builds_interrupted",
        "builds_ok",
        "downloaded_bytes",
        "hits",
        "misses",
        "remote_errors",
        "stale_serves",
        "uploaded_bytes",
    ]
    .iter()
    .map(|k| {
        (
            k.to_string(),
            pairs.iter().find(|(p, _)| p == k).map_or(0, |(_, v)| *v),
        )
    })
    .collect();
    all.sort();
    all
}

#[test]
fn counts_match_the_sequence_of_hits_misses_failures_and_stale_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), "1").unwrap();
    std::fs::write(project.join("mode"), "ok").unwrap();

    assert_eq!(json_ok(&ensure(&root, &project, "e", &[]))["status"], "built");
    for _ in 0..3 {
        assert_eq!(json_ok(&ensure(&root, &project, "e", &[]))["status"], "hit");
    }
    // Reading the path is not an `ensure` call: not counted.
    ok(warmcache(&root).args(["path", "e"]));
    // Changed inputs, failing builder (exit 1: transient): served stale.
    std::fs::write(project.join("in.txt"), "2").unwrap();
    std::fs::write(project.join("mode"), "fail").unwrap();
    assert_eq!(json_ok(&ensure(&root, &project, "e", &[]))["status"], "stale");
    // Within the backoff: stale again, nothing built.
    assert_eq!(json_ok(&ensure(&root, &project, "e", &[]))["status"], "stale");
    // Another entry whose validation fails: deterministic, no last good, an error; then blocked.
    std::fs::write(project.join("mode"), "ok").unwrap();
    for _ in 0..2 {
        json_exit(&ensure(&root, &project, "d", &["--validate", "exit 1"]), 1);
    }

    let stats = json_ok(&run(warmcache(&root).args(["stats", "--json"])));
    let entries = stats["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{stats}");
    assert_eq!(entries[0]["name"], "d");
    assert_eq!(
        counts(&entries[0]),
        expected(&[("misses", 2), ("builds_failed_deterministic", 1)]),
        "{stats}"
    );
    assert_eq!(entries[1]["name"], "e");
    assert_eq!(
        counts(&entries[1]),
        expected(&[
            ("hits", 3),
            ("misses", 3),
            ("stale_serves", 2),
            ("builds_ok", 1),
            ("builds_failed_transient", 1),
        ]),
        "{stats}"
    );
    assert_eq!(
        counts(&stats["total"]),
        expected(&[
            ("hits", 3),
            ("misses", 5),
            ("stale_serves", 2),
            ("builds_ok", 1),
            ("builds_failed_transient", 1),
            ("builds_failed_deterministic", 1),
        ]),
        "{stats}"
    );
    // Asking again counts nothing twice; one entry's view keeps the root's total.
    let again = json_ok(&run(warmcache(&root).args(["stats", "e", "--json"])));
    assert_eq!(again["entries"].as_array().unwrap().len(), 1);
    assert_eq!(again["entries"][0], stats["entries"][1]);
    assert_eq!(again["total"], stats["total"]);
    // The human table names both entries and the total.
    let table = ok(warmcache(&root).arg("stats"));
    assert!(
        table.contains("(root total)") && table.contains("\nd ") && table.contains("\ne "),
        "{table}"
    );
}
