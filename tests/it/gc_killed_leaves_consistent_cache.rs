//! A garbage collection killed with SIGKILL at random moments leaves a consistent cache: `verify`
//! is clean, every entry's artifact is present, and the next collection finishes the job (trash
//! emptied, budget met).

use std::time::Instant;

use crate::support::*;

#[test]
fn sigkill_during_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let kept = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(make_tree(&tmp.path().join("kept"), 50, 2000, 9))
        .args(["--name", "kept", "--json"])));
    let mut rng = Rng::new(5);
    let mut seed = 1000;
    let mut add_garbage = |n: usize| {
        for _ in 0..n {
            ok(warmcache(&root).arg("import").arg(make_tree(
                &tmp.path().join(format!("g{seed}")),
                60,
                2000,
                seed,
            )));
            seed += 1;
        }
    };
    add_garbage(30);
    // Calibrate on a copy of the work: how long does one collection of 30 artifacts take?
    let start = Instant::now();
    ok(warmcache(&root).args(["gc", "--max-size", "0", "--dry-run"]));
    let decide = start.elapsed();

    for i in 0..20 {
        add_garbage(5);
        let mut child = warmcache(&root)
            .args(["-q", "gc", "--max-size", "0"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(decide.mul_f64(rng.below(3000) as f64 / 1000.0));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_consistent(&root, &format!("kill {i}"));
        assert_eq!(
            ok(warmcache(&root).args(["path", "kept"])),
            kept["path"].as_str().unwrap()
        );
    }
    let report = json_ok(&run(warmcache(&root).args(["gc", "--max-size", "0", "--json"])));
    assert_eq!(report["protected"], 1, "{report}");
    assert_eq!(
        artifact_ids(&root),
        vec![kept["artifact"].as_str().unwrap().to_string()]
    );
    assert_eq!(list(&root.join("v1/trash")), Vec::<String>::new());
    assert_eq!(
        describe_tree(std::path::Path::new(kept["path"].as_str().unwrap())),
        describe_tree(&tmp.path().join("kept"))
    );
}
