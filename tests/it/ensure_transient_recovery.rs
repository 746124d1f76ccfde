//! Problem 2 of docs/DESIGN.md, the pinned transient failure, from the command line: the retry
//! delay of a transient failure grows between attempts and persists across processes. (Recovery
//! once the retry is due is proven without waiting on the real clock in
//! `transient_failure_recovers_when_the_clock_says_so`.)

use crate::support::*;

#[test]
fn backoff_grows_between_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("warmcache.toml"),
        "[entry.flaky]\nbuild = \"exit 75\"\nbackoff_initial = \"1s\"\nbackoff_cap = \"1h\"\n",
    )
    .unwrap();
    let mut delays = Vec::new();
    for _ in 0..3 {
        let out =
            run(warmcache(&root)
                .current_dir(&project)
                .args(["--json", "ensure", "flaky", "--refresh"]));
        let v: serde_json::Value = crate::support::json_any(&out);
        let f = &v["failure"];
        delays.push(f["next_retry_at"].as_i64().unwrap() - warmcache::clock::now_ms());
        assert_eq!(f["attempts"].as_u64().unwrap() as usize, delays.len());
    }
    // 1 s, 2 s, 4 s nominal, each shortened by at most a quarter by jitter.
    assert!(
        delays[0] <= 1000 && delays[1] > 1000 && delays[2] > 2000,
        "{delays:?}"
    );
}
