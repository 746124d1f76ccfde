//! Every path handed to a builder or a hook is absolute, whatever the caller's working directory
//! and however DEST or `--root` were written: hooks run in DEST's directory and builders in the
//! recipe's, so a relative path would name something else there (for an activation hook, a path
//! inside the live old tree).

use std::path::Path;
use std::process::Command;

use crate::support::{list, ok, warmcache};

/// Fails (exit 1) unless each named variable holds an absolute path.
fn require_absolute(vars: &[&str]) -> String {
    vars.iter()
        .map(|v| format!("case \"${v}\" in /*) ;; *) echo \"{v} is relative: ${v}\" >&2; exit 1;; esac; "))
        .collect()
}

/// `warmcache` with a relative `--root`, run from `cwd`.
fn relative_root(cwd: &Path) -> Command {
    let mut cmd = warmcache(Path::new("cache"));
    cmd.current_dir(cwd);
    cmd
}

#[test]
fn an_activation_hook_with_a_relative_dest_signs_the_new_version_not_the_live_one() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let src = work.join("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/code"), b"code").unwrap();
    std::fs::create_dir(work.join("app")).unwrap();
    ok(relative_root(work).args(["import", "src", "--name", "A"]));
    ok(relative_root(work).args(["activate", "A", "app/app"]));
    let live = work.join("app/app");
    assert_eq!(list(&live), vec!["lib"]);

    // The hook also proves the live tree is untouched while it runs (before the swap).
    let hook = format!(
        "{}test ! -e \"$WARMCACHE_DEST/sig\" && test -z \"$(ls -A \"$WARMCACHE_DEST\" | grep -v '^lib$')\" \
         && echo S > \"$WARMCACHE_STAGING/sig\"",
        require_absolute(&["WARMCACHE_STAGING", "WARMCACHE_DEST", "WARMCACHE_SOURCE"])
    );
    ok(relative_root(work).args(["activate", "A", "app/app", "--hook", &hook]));
    assert_eq!(
        std::fs::read(live.join("sig")).unwrap(),
        b"S\n",
        "the new version is signed"
    );
    assert_eq!(list(&live), vec!["lib", "sig"]);
    assert_eq!(
        list(&work.join("app")),
        vec!["app"],
        "no staging left beside DEST"
    );
    assert_eq!(std::fs::read(live.join("lib/code")).unwrap(), b"code");
}

#[test]
fn import_hooks_and_builders_get_absolute_paths_under_a_relative_root() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    std::fs::write(work.join("in.txt"), b"in").unwrap();
    let hook = require_absolute(&["WARMCACHE_STAGING"]);
    ok(relative_root(work).args(["import", "in.txt", "--name", "I", "--hook", &hook]));

    let build = format!(
        "{}cp in.txt \"$WARMCACHE_OUT\"",
        require_absolute(&["WARMCACHE_OUT", "WARMCACHE_TMP"])
    );
    let path = ok(relative_root(work).args([
        "ensure",
        "E",
        "--input",
        "in.txt",
        "--build",
        &build,
        "--validate",
        &build,
    ]));
    assert_eq!(std::fs::read(path).unwrap(), b"in");
}
