//! A build output the store cannot hold (a FIFO, a non-UTF-8 name in `$WARMCACHE_OUT`) is a
//! deterministic failure of those inputs, not a rebuild storm: the last good artifact is served
//! stale with the warning, the failure is recorded and shown by `status`, the message names the
//! offending path inside the output (never a staging path), and the builder is not run again
//! until the inputs change.

use crate::support::*;

const BUILD: &str = r#"echo run >> "$COUNTER"; mkdir -p "$WARMCACHE_OUT/sub"; cp in.txt "$WARMCACHE_OUT/";
if grep -q fifo in.txt; then mkfifo "$WARMCACHE_OUT/sub/pipe"; fi
if grep -q badname in.txt; then touch "$WARMCACHE_OUT/sub/$(printf 'bad\377')"; fi"#;

fn unstorable_output_is_a_remembered_deterministic_failure(change: &str, named: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let counter = tmp.path().join("runs");
    std::fs::write(project.join("in.txt"), "v1\n").unwrap();
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&project).env("COUNTER", &counter).args([
            "ensure", "out", "--input", "in.txt", "--output", "dir", "--build", BUILD,
        ]);
        cmd
    };
    let runs = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let good = json_ok(&run(ensure().arg("--json")));
    assert_eq!(good["status"], "built", "{good}");

    std::fs::write(project.join("in.txt"), format!("v2 {change}\n")).unwrap();
    let out = run(ensure().arg("--json"));
    let stale = json_ok(&out);
    assert_eq!(stale["status"], "stale", "{stale}");
    assert_eq!(
        stale["artifact"], good["artifact"],
        "the last good artifact is served"
    );
    assert!(stderr(&out).contains("serving a stale"), "{}", stderr(&out));
    let failure = &stale["failure"];
    assert_eq!(failure["kind"], "deterministic", "{stale}");
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.contains(named),
        "the message names the path in the output: {error}"
    );
    assert!(!error.contains("staging"), "no staging path: {error}");
    assert_eq!(runs(), 2);

    let again = json_ok(&run(ensure().arg("--json")));
    assert_eq!(again["status"], "stale", "{again}");
    assert_eq!(
        runs(),
        2,
        "a deterministic failure is not rebuilt until the inputs change"
    );
    let status = ok(warmcache(&root).args(["status", "out"]));
    assert!(status.contains("failing (deterministic"), "{status}");

    std::fs::write(project.join("in.txt"), "v3\n").unwrap();
    let fixed = json_ok(&run(ensure().arg("--json")));
    assert_eq!(fixed["status"], "built", "{fixed}");
    assert_eq!(runs(), 3);
}

#[test]
fn a_fifo_in_the_output_is_a_deterministic_failure_served_stale() {
    unstorable_output_is_a_remembered_deterministic_failure(
        "fifo",
        "`sub/pipe` (relative to $WARMCACHE_OUT), which is a FIFO",
    );
}

#[test]
fn a_non_utf8_name_in_the_output_is_a_deterministic_failure_served_stale() {
    unstorable_output_is_a_remembered_deterministic_failure("badname", "not valid UTF-8");
}
