//! With `--json`, a usage error still prints exactly one JSON object on stdout and exits 2; an
//! invalid value (a duration of zero, an unknown size suffix, a bad name) is a usage error.

use crate::support::*;

#[test]
fn usage_errors_are_one_json_object_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    for args in [
        vec!["--json", "gc", "--max-size", "10Q"],
        vec!["--json", "import"],
        vec!["--json", "no-such-command"],
        vec!["--json", "ensure", "x", "--build", "true", "--timeout", "0"],
        vec![
            "--json",
            "restore",
            "d",
            "--remote",
            "s3://bucket/k",
            "--timeout",
            "0",
        ],
        vec!["--json", "path", "a b"],
        vec!["--json", "ensure", "x", "--build", "true", "--input", "../x"],
        vec!["--json", "ensure", "x", "--build", "true", "--input", "["],
    ] {
        let out = run(warmcache(&root).args(&args));
        let value = json_exit(&out, 2);
        assert_eq!(value["kind"], "usage", "{args:?}: {value}");
        assert!(value["error"].as_str().is_some_and(|e| !e.is_empty()), "{value}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim().lines().count(),
            1,
            "exactly one object"
        );
    }
    let missing = json_exit(&run(warmcache(&root).args(["--json", "import"])), 2);
    assert!(
        missing["error"].as_str().unwrap().contains("<SOURCE>"),
        "names the missing argument: {missing}"
    );
    assert!(!root.exists(), "a usage error changes nothing");
}
