//! Problem 2 of docs/DESIGN.md, the pinned transient failure: a builder that fails transiently (no
//! network, simulated) with no last good artifact. While the retry is not due, fresh processes do
//! not run it; once the condition clears and the retry is due, the next `ensure` from a fresh
//! process builds and succeeds, with no restart or manual step.

use std::time::Duration;

use crate::support::*;

#[test]
fn transient_failure_is_retried_once_due_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let counter = tmp.path().join("runs");
    let offline = tmp.path().join("offline");
    std::fs::write(&offline, "").unwrap();
    std::fs::write(project.join("types.d.ts"), "declare const x: number").unwrap();
    std::fs::write(
        project.join("warmcache.toml"),
        r#"
[entry."types/bundle"]
inputs = ["types.d.ts"]
build = "echo run >> \"$COUNTER\"; if [ -e \"$OFFLINE\" ]; then echo 'fetch failed: network unreachable' >&2; exit 75; fi; cp types.d.ts \"$WARMCACHE_OUT\""
backoff_initial = "2s"
backoff_cap = "4s"
"#,
    )
    .unwrap();
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&project)
            .env("COUNTER", &counter)
            .env("OFFLINE", &offline)
            .args(["ensure", "types/bundle"]);
        cmd
    };
    let runs = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    let out = run(ensure().arg("--json"));
    assert_eq!(out.status.code(), Some(1), "no artifact to serve: a failure");
    let failed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["failure"]["kind"], "transient", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("network unreachable"),
        "{failed}"
    );
    let retry_at = failed["failure"]["next_retry_at"].as_i64().unwrap();
    assert_eq!(runs(), 1);

    // Before the retry is due: the recorded error, no build.
    let out = run(&mut ensure());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("network unreachable"));
    assert_eq!(runs(), 1, "not retried before next_retry_at");

    // The network comes back; once the retry is due, a fresh process builds and succeeds.
    std::fs::remove_file(&offline).unwrap();
    let now = warmcache::clock::now_ms();
    std::thread::sleep(Duration::from_millis((retry_at - now).max(0) as u64 + 50));
    let built = json_ok(&run(ensure().arg("--json")));
    assert_eq!(built["status"], "built");
    assert!(built["failure"].is_null(), "success clears the failure: {built}");
    assert_eq!(runs(), 2);
    let hit = json_ok(&run(ensure().arg("--json")));
    assert_eq!(hit["status"], "hit");
    assert_eq!(runs(), 2);
}

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
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
