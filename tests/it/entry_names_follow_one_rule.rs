//! One rule for entry names, the same for every command: a name `ensure` or `import` refuses,
//! `path`, `status`, `push` and `gc --evict` refuse too, as a usage error (exit 2), with the same
//! message; look-alikes (white space, zero-width and direction-changing characters, a decomposed
//! accent) are refused; a long invalid name is cut in the message.

use crate::support::*;

const BAD: &[&str] = &["a b", "a\u{200b}b", "a\u{202e}b", "cafe\u{301}", "../x", ""];

#[test]
fn every_command_refuses_the_same_names_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    for bad in BAD {
        let commands: Vec<Vec<std::ffi::OsString>> = vec![
            vec![
                "ensure".into(),
                (*bad).into(),
                "--build".into(),
                "echo x > \"$WARMCACHE_OUT\"".into(),
            ],
            vec![
                "import".into(),
                file.clone().into(),
                "--name".into(),
                (*bad).into(),
            ],
            vec!["path".into(), (*bad).into()],
            vec!["status".into(), (*bad).into()],
            vec!["gc".into(), "--evict".into(), (*bad).into()],
            vec!["push".into(), (*bad).into(), "--remote".into(), "s3://b/p".into()],
        ];
        let mut messages = Vec::new();
        for args in commands {
            let out = run(warmcache(&root).args(&args));
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            let line = stderr(&out)
                .lines()
                .find(|l| l.contains("invalid entry name"))
                .unwrap_or_else(|| panic!("{args:?}: {}", stderr(&out)))
                .to_string();
            messages.push(line.split("invalid entry name").nth(1).unwrap().to_string());
        }
        messages.dedup();
        assert_eq!(messages.len(), 1, "one message for {bad:?}: {messages:?}");
    }
    assert!(
        !root.exists(),
        "a refused name changes nothing, not even the root"
    );

    // The composed form is a valid, distinct name.
    ok(warmcache(&root)
        .arg("import")
        .arg(&file)
        .args(["--name", "caf\u{e9}"]));
    ok(warmcache(&root).args(["path", "caf\u{e9}"]));

    let long = format!("{} x", "n".repeat(4000));
    let out = run(warmcache(&root).args(["path", &long]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).len() < 1000,
        "a long name is cut: {}",
        stderr(&out).len()
    );
}
