//! Crash safety: an import of a tree of thousands of files is killed with SIGKILL at random
//! moments, 50 times. After every kill the cache is consistent: `verify` finds nothing damaged or
//! dangling, no partial artifact is visible, every catalog entry names a present artifact, and
//! the next run sweeps the dead process's staging leftovers.

use std::time::Instant;

use crate::support::*;

const KILLS: usize = 50;

#[test]
fn sigkill_at_random_moments_leaves_a_consistent_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = make_tree(&tmp.path().join("tree"), 2000, 4000, 7);

    // Calibrate: how long does one whole import take here? (The first run also creates the
    // cache and warms the page cache, so time the second.)
    ok(warmcache(&root)
        .arg("import")
        .arg(&tree)
        .args(["--name", "calibration"]));
    std::fs::write(tree.join("d0/changing.txt"), "calibration").unwrap();
    let start = Instant::now();
    ok(warmcache(&root)
        .arg("import")
        .arg(&tree)
        .args(["--name", "calibration"]));
    let full = start.elapsed();
    let mut rng = Rng::new(42);
    let mut interrupted = 0;

    for i in 0..KILLS {
        // One of a few variants of the tree (one file changes), so kills also land in first
        // publishes and catalog writes, not only in copies that lose the rename; few variants keep
        // the number of artifacts (and the cost of each verify) small.
        std::fs::write(tree.join("d0/changing.txt"), format!("variant {}", rng.below(4))).unwrap();
        let mut child = warmcache(&root)
            .args(["-q", "import"])
            .arg(&tree)
            .args(["--name", &format!("entry{}", i % 5)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64(rng.below(1200) as f64 / 1000.0);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }

        // Every visible artifact is complete: a manifest and content that match.
        for id in artifact_ids(&root) {
            let dir = root.join("v1/objects").join(&id[..2]).join(&id);
            assert!(
                dir.join("manifest.json").is_file(),
                "kill {i}: artifact {id} has no manifest"
            );
            assert!(
                dir.join("content").exists(),
                "kill {i}: artifact {id} has no content"
            );
        }
        assert_consistent(&root, &format!("kill {i}"));
    }
    println!("{interrupted} of {KILLS} imports were killed before finishing (one import takes {full:?})");
    assert!(
        interrupted >= KILLS / 3,
        "too few imports were actually interrupted ({interrupted})"
    );

    // After all that, a normal import still works and is intact.
    let path = ok(warmcache(&root)
        .arg("import")
        .arg(&tree)
        .args(["--name", "final"]));
    assert_eq!(describe_tree(std::path::Path::new(&path)), describe_tree(&tree));
}
