//! Problem 1 of docs/DESIGN.md, the rebuild storm: a built entry whose inputs change so that the
//! rebuild fails. Ten further `ensure` calls from fresh processes run the builder zero times
//! before the retry is due, and each returns the last good artifact, visibly marked stale.

use crate::support::*;

#[test]
fn failed_rebuild_is_remembered_not_repeated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let counter = tmp.path().join("builder-runs");
    std::fs::write(project.join("main.js"), "console.log('v1')").unwrap();
    std::fs::write(
        project.join("warmcache.toml"),
        r#"
[entry."bundles/ext"]
inputs = ["*.js"]
build = "echo run >> \"$COUNTER\"; if grep -q import-map main.js; then echo 'error: missing import map' >&2; exit 1; fi; cat main.js > \"$WARMCACHE_OUT\""
"#,
    )
    .unwrap();
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&project)
            .env("COUNTER", &counter)
            .args(["ensure", "bundles/ext"]);
        cmd
    };
    let runs = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    let built = json_ok(&run(ensure().arg("--json")));
    assert_eq!(built["status"], "built");
    assert_eq!(runs(), 1);
    let good_path = built["path"].as_str().unwrap().to_string();

    // The inputs change so that the rebuild fails: one build attempt, then the stale artifact.
    std::fs::write(project.join("main.js"), "import x from 'import-map:x'").unwrap();
    let out = run(ensure().arg("--json"));
    assert!(
        out.status.success(),
        "stale-but-served is success: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = crate::support::json_any(&out);
    assert_eq!(first["status"], "stale");
    assert_eq!(first["path"].as_str().unwrap(), good_path);
    assert_eq!(first["failure"]["kind"], "transient");
    assert!(
        first["failure"]["error"]
            .as_str()
            .unwrap()
            .contains("missing import map"),
        "{first}"
    );
    assert!(first["failure"]["next_retry_at"].as_i64().is_some());
    assert_eq!(runs(), 2);

    // Ten more cold starts: no builder, the same stale artifact, a warning every time.
    for i in 0..10 {
        let out = run(&mut ensure());
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), good_path, "call {i}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("stale"),
            "call {i}: stale must never be silent: {stderr}"
        );
        assert!(
            stderr.contains("missing import map"),
            "call {i}: the warning names the error: {stderr}"
        );
        assert!(
            stderr.contains("retry"),
            "call {i}: the warning names the next retry: {stderr}"
        );
    }
    assert_eq!(
        runs(),
        2,
        "the failing builder must not run again before its retry is due"
    );
    // The last good artifact itself was never touched.
    assert_eq!(std::fs::read_to_string(&good_path).unwrap(), "console.log('v1')");

    // status shows the failure and when it will be retried.
    let status = ok(warmcache(&root).args(["status", "bundles/ext"]));
    assert!(
        status.contains("missing import map") && status.contains("next retry"),
        "{status}"
    );

    // --refresh forces a build now regardless of failure memory.
    let out = run(ensure().arg("--refresh"));
    assert!(out.status.success());
    assert_eq!(runs(), 3);
}
