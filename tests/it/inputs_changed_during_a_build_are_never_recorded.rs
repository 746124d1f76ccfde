//! An output is recorded under the fingerprint of its inputs only if they did not change while
//! the builder ran (docs/DESIGN.md, "Inputs that change during a build"). Before, the output of a
//! builder that read edited inputs was recorded under the fingerprint taken before the build, so
//! when the inputs went back to that state `ensure` answered `hit` with content built from other
//! inputs.

use crate::support::*;

#[test]
fn an_output_built_from_edited_inputs_is_not_served_for_the_old_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let input = project.join("in.txt");
    std::fs::write(&input, "v2").unwrap();
    // The builder says it started, waits for the test to edit the input, then reads it. The wait
    // is bounded and ends if the project is removed, so a failing test leaves nothing behind.
    let build = r#"echo x >> started; i=0; while [ ! -e go ] && [ -d . ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; cat in.txt > "$WARMCACHE_OUT""#;
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&project)
            .args(["ensure", "e", "--input", "in.txt", "--build", build, "--json"]);
        cmd
    };
    let child = ensure()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the builder to start", || project.join("started").exists());
    // Edited while the builder runs: what it reads is not what was fingerprinted.
    std::fs::write(&input, "v3, longer").unwrap();
    std::fs::write(project.join("go"), "").unwrap();
    let built = json_ok(&child.wait_with_output().unwrap());
    assert_eq!(built["status"], "built");
    let path = built["path"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "v3, longer");

    // Back to the inputs the first build was fingerprinted with: their output is `v2`.
    std::fs::write(&input, "v2").unwrap();
    let back = json_ok(&run(&mut ensure()));
    let path = back["path"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        "v2",
        "served content built from other inputs as {}",
        back["status"]
    );
}

/// A builder that edits its own inputs changes them during every build: the output is discarded
/// twice (the first build and the one more `ensure` allows), the call fails saying why, and
/// nothing is recorded or left in staging.
#[test]
fn inputs_that_keep_changing_are_reported_and_nothing_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), "v").unwrap();
    let out = run(warmcache(&root).current_dir(&project).args([
        "ensure",
        "e",
        "--input",
        "in.txt",
        "--build",
        r#"echo more >> in.txt; echo x >> builds; cat in.txt > "$WARMCACHE_OUT""#,
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("inputs changed while the build ran"),
        "{}",
        stderr(&out)
    );
    let builds = std::fs::read_to_string(project.join("builds")).unwrap();
    assert_eq!(builds.lines().count(), 2, "one build, then one more: {builds}");
    let status = json_ok(&run(warmcache(&root).args(["status", "--json"])));
    for entry in status["entries"].as_array().unwrap() {
        assert!(
            entry["artifact"].is_null(),
            "an output of changing inputs was recorded: {entry}"
        );
        assert!(
            entry["failure"].is_null(),
            "changing inputs are no failure: {entry}"
        );
    }
    assert_eq!(list(&root.join("v1/staging")), Vec::<String>::new());
}
