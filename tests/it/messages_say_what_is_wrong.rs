//! Messages say precisely what is wrong: a top that is a symlink is not called something "only
//! files, directories and symlinks" may be, and a FIFO given as an input is warned about, not
//! silently fingerprinted by its kind alone.

use std::process::Command;

use crate::support::*;

#[test]
fn a_symlink_at_the_top_of_an_import_says_the_top_must_be_a_file_or_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    let out = run(warmcache(&root).arg("import").arg(&dir).args([
        "--hook",
        r#"cd / && rm -rf "$WARMCACHE_STAGING" && ln -s /usr "$WARMCACHE_STAGING""#,
        "--json",
    ]));
    let err = json_exit(&out, 1);
    let message = err["error"].as_str().unwrap();
    assert!(message.contains("is a symlink"), "{message}");
    assert!(
        message.contains("the top of an artifact must be a regular file or a directory"),
        "{message}"
    );
    assert!(
        !message.contains("can hold only regular files, directories and symlinks"),
        "{message}"
    );

    let project = tmp.path().join("p");
    std::fs::create_dir(&project).unwrap();
    let out = run(warmcache(&root).current_dir(&project).args([
        "ensure",
        "l",
        "--output",
        "dir",
        "--build",
        r#"ln -s /usr "$WARMCACHE_OUT""#,
        "--json",
    ]));
    let err = json_exit(&out, 1);
    let message = err["error"].as_str().unwrap();
    assert!(message.contains("$WARMCACHE_OUT itself a symlink"), "{message}");
    assert!(!message.contains("staging"), "no staging path: {message}");
}

#[test]
fn a_fifo_given_as_an_input_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("p");
    std::fs::create_dir(&project).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(project.join("pipe"))
            .status()
            .unwrap()
            .success()
    );
    let out = run(warmcache(&root).current_dir(&project).args([
        "ensure",
        "f",
        "--input",
        "pipe",
        "--build",
        r#"echo x > "$WARMCACHE_OUT""#,
        "--json",
    ]));
    let built = json_ok(&out);
    assert_eq!(built["special_inputs"][0], "pipe (FIFO)", "{built}");
    let warning = stderr(&out);
    assert!(
        warning.contains("input `pipe (FIFO)`") && warning.contains("only its kind"),
        "{warning}"
    );
}

/// A malformed remote URL is a usage error (exit 2) for every command that takes one, from the
/// flag or the environment, naming the URL; nothing is contacted or changed.
#[test]
fn a_malformed_remote_url_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_str().unwrap();
    for args in [
        vec!["snapshot", dir, "--remote", "ftp://bucket/key"],
        vec!["restore", dir, "--remote", "ftp://bucket/key"],
        vec!["gc", "--remote", "ftp://bucket/key"],
        vec!["push", "tool", "--remote", "ftp://bucket/key"],
    ] {
        let out = run(warmcache(&root).args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("ftp://bucket/key"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = run(warmcache(&root)
        .args(["snapshot", dir])
        .env("WARMCACHE_REMOTE", "s3://"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!root.exists(), "the cache root was created");
}
