//! A validation failure is deterministic: it is not retried while the inputs are unchanged (the
//! builder count stays the same), and it is rebuilt as soon as an input changes.

use crate::support::*;

#[test]
fn validation_failure_waits_for_new_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    let counter = tmp.path().join("runs");
    std::fs::write(project.join("src/plugin.txt"), "corrupt").unwrap();
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&project).env("COUNTER", &counter).args([
            "ensure",
            "plugins/p",
            "--input",
            "src/**",
            "--build",
            "echo run >> \"$COUNTER\"; cp src/plugin.txt \"$WARMCACHE_OUT\"",
            "--validate",
            "grep -q MANIFEST-OK \"$WARMCACHE_OUT\" || { echo 'validation: plugin manifest invalid'; exit 1; }",
        ]);
        cmd
    };
    let runs = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    let out = run(ensure().arg("--json"));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = crate::support::json_any(&out);
    assert_eq!(v["failure"]["kind"], "deterministic", "{v}");
    assert!(v["failure"]["next_retry_at"].is_null());
    assert_eq!(runs(), 1);
    for _ in 0..5 {
        let out = run(&mut ensure());
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("until its inputs change"), "{stderr}");
    }
    assert_eq!(
        runs(),
        1,
        "a deterministic failure must not be retried with unchanged inputs"
    );
    // Nothing was published from the failed build.
    assert_eq!(artifact_ids(&root), Vec::<String>::new());

    std::fs::write(project.join("src/plugin.txt"), "MANIFEST-OK").unwrap();
    let built = json_ok(&run(ensure().arg("--json")));
    assert_eq!(built["status"], "built");
    assert_eq!(runs(), 2);
}

#[test]
fn listed_exit_codes_are_deterministic_and_others_transient() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("warmcache.toml"),
        "[entry.a]\nbuild = \"exit 3\"\ndeterministic_exit_codes = [3]\n\n[entry.b]\nbuild = \"exit 4\"\ndeterministic_exit_codes = [3]\n\n[entry.c]\nbuild = \"echo 'ETIMEDOUT talking to registry'; exit 1\"\nother_exit = \"deterministic\"\ntransient_patterns = [\"ETIMEDOUT\"]\n\n[entry.d]\nbuild = \"sleep 30\"\ntimeout = \"300ms\"\n",
    )
    .unwrap();
    for (name, kind) in [
        ("a", "deterministic"),
        ("b", "transient"),
        ("c", "transient"),
        ("d", "transient"),
    ] {
        let out = run(warmcache(&root)
            .current_dir(&project)
            .args(["--json", "ensure", name]));
        assert_eq!(out.status.code(), Some(1));
        let v: serde_json::Value = crate::support::json_any(&out);
        assert_eq!(v["failure"]["kind"], kind, "entry {name}: {v}");
    }
}
