//! Builds run at most once at a time per entry across processes: sixteen processes `ensure` the
//! same missing entry with a slow builder; the builder runs once and all sixteen get the same
//! artifact.

use std::process::Stdio;

use crate::support::*;

#[test]
fn sixteen_processes_one_build() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let counter = tmp.path().join("runs");
    let children: Vec<_> = (0..16)
        .map(|_| {
            warmcache(&root)
                .current_dir(tmp.path())
                .env("COUNTER", &counter)
                .args(["--json", "ensure", "drivers/pg", "--key", "abi=x86_64", "--build"])
                .arg("echo run >> \"$COUNTER\"; sleep 1; echo native-binary > \"$WARMCACHE_OUT\"")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut artifacts = Vec::new();
    let mut built = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = crate::support::json_any(&out);
        if v["status"] == "built" {
            built += 1;
        } else {
            assert_eq!(v["status"], "hit", "{v}");
        }
        artifacts.push(v["artifact"].as_str().unwrap().to_string());
    }
    let runs = std::fs::read_to_string(&counter).unwrap().lines().count();
    assert_eq!(runs, 1, "the builder must run exactly once");
    assert_eq!(built, 1);
    artifacts.dedup();
    assert_eq!(artifacts.len(), 1, "all sixteen get the same artifact");
}
