//! One rule for what a tree may hold (docs/DESIGN.md, "What a tree may hold"): whatever
//! `snapshot` uploads, `restore` restores, and whatever `push` uploads, `pull` fetches, symlinks
//! kept exactly as written (an absolute `ln -s /usr/bin/env`, a link out of the tree); and what
//! neither side can hold is refused by `snapshot` before the pointer moves, naming the file.

use std::path::Path;
use std::process::Command;

use crate::support::machine::Machine;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, restore, snapshot};
use crate::support::*;

fn link(target: &str, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[test]
fn snapshot_of_absolute_and_outside_symlinks_restores_the_same_links() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let dir = tmp.path().join("d");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/tool"), "tool").unwrap();
    link("/usr/bin/env", &dir.join("envlink"));
    link("../../outside", &dir.join("bin/up"));
    let made = snapshot(&server, &root, &dir, "venv", &["--strict"]);
    let made = json_ok(&made);
    assert_eq!(made["status"], "uploaded", "{made}");

    let restored_dir = tmp.path().join("restored");
    let out = restore(&server, &root, &restored_dir, "venv", &["--strict"]);
    let report = json_ok(&out);
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(
        std::fs::read_link(restored_dir.join("envlink")).unwrap(),
        Path::new("/usr/bin/env")
    );
    assert_eq!(
        std::fs::read_link(restored_dir.join("bin/up")).unwrap(),
        Path::new("../../outside")
    );
    assert_eq!(describe_tree(&restored_dir), describe_tree(&dir));
}

#[test]
fn push_and_pull_keep_an_absolute_symlink() {
    const RECIPE: &str = r#"
[entry."venv"]
inputs = ["src/*"]
output = "dir"
build = """
echo built >> "$COUNTER_FILE"
mkdir -p "$WARMCACHE_OUT/bin"
cp src/app.txt "$WARMCACHE_OUT/app.txt"
ln -s /usr/bin/env "$WARMCACHE_OUT/bin/python"
"""
"#;
    let server = TestS3::start();
    let a = Machine::new(RECIPE, &[("src/app.txt", "v1\n")]);
    let b = Machine::new(RECIPE, &[("src/app.txt", "v1\n")]);
    let url = server.url("shared");
    let built = json_ok(&run(a.cmd(&server).args(["ensure", "venv", "--json"])));
    assert_eq!(built["status"], "built", "{built}");
    let pushed = json_ok(&run(a
        .cmd(&server)
        .args(["push", "venv", "--remote", &url, "--strict", "--json"])));
    assert_eq!(pushed["status"], "pushed", "{pushed}");

    let pulled = json_ok(&run(b
        .cmd(&server)
        .args(["pull", "venv", "--remote", &url, "--strict", "--json"])));
    assert_eq!(pulled["status"], "pulled", "{pulled}");
    assert_eq!(b.builds(), 0, "a pull never builds");
    let path = Path::new(pulled["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_link(path.join("bin/python")).unwrap(),
        Path::new("/usr/bin/env")
    );
    assert_eq!(pulled["artifact"], built["artifact"]);
}

#[test]
fn snapshot_refuses_what_no_tree_may_hold_naming_it_and_the_pointer_stays() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let dir = tmp.path().join("d");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(dir.join("f"), "v1").unwrap();
    link("/usr/bin/env", &dir.join("envlink"));
    json_ok(&snapshot(&server, &root, &dir, "k", &["--strict"]));
    let before = objects(&server);

    std::fs::write(dir.join("f"), "v2, and a FIFO next to it").unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("run/pipe"))
            .status()
            .unwrap()
            .success()
    );
    let out = snapshot(&server, &root, &dir, "k", &["--strict"]);
    let err = json_exit(&out, 1);
    let message = err["error"].as_str().unwrap_or_default().to_owned() + &stderr(&out);
    assert!(
        message.contains("`run/pipe` is a FIFO") && message.contains("a tree can hold only"),
        "{message}"
    );
    assert_eq!(objects(&server), before, "nothing remote may change");
}
