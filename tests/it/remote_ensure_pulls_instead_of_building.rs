//! Two machines share one bucket: machine A builds an entry and pushes it (`[remote] push =
//! true`); machine B, a second, empty cache root with its own checkout of the same inputs at
//! another path, runs `ensure` on the same recipe and gets the same artifact id, downloaded and
//! verified, without ever running the builder. For a single executable file and for a tree
//! (nested files, an executable, a symlink, an empty directory).

use crate::support;
use crate::support::machine::Machine;

use std::path::{Path, PathBuf};

use crate::support::s3_server::TestS3;

const RECIPES: &str = r#"
[entry.tool]
inputs = ["src/*"]
build = "echo built >> \"$COUNTER_FILE\"; cat src/main.sh > \"$WARMCACHE_OUT\"; chmod +x \"$WARMCACHE_OUT\""

[entry."deps/tree"]
inputs = ["src/*"]
output = "dir"
build = """
echo built >> "$COUNTER_FILE"
mkdir -p "$WARMCACHE_OUT/lib/nested" "$WARMCACHE_OUT/empty"
cp src/data.txt "$WARMCACHE_OUT/lib/nested/data.txt"
cp src/main.sh "$WARMCACHE_OUT/run.sh" && chmod +x "$WARMCACHE_OUT/run.sh"
ln -s lib/nested/data.txt "$WARMCACHE_OUT/link"
"""
"#;

fn url(server: &TestS3) -> String {
    server.url("team/cache")
}

fn share_and_fetch(name: &str, compare: impl Fn(&Path, &Path)) {
    let server = TestS3::start();
    let a = machine(&format!("[remote]\nurl = \"{}\"\npush = true\n", url(&server)));
    // B names the remote through the environment instead of its config file.
    let b = machine("");

    let built = support::json_ok(&support::run(a.cmd(&server).args(["ensure", name, "--json"])));
    assert_eq!(built["status"], "built", "{built}");
    assert_eq!(built["remote"]["pulled"], false, "{built}");
    assert_eq!(built["remote"]["pushed"]["index"]["state"], "created", "{built}");
    assert_eq!(a.builds(), 1);

    let pulled = support::json_ok(&support::run(
        b.cmd(&server)
            .env("WARMCACHE_REMOTE", url(&server))
            .args(["ensure", name, "--json"]),
    ));
    assert_eq!(b.builds(), 0, "machine B ran the builder: {pulled}");
    assert_eq!(pulled["status"], "built", "{pulled}");
    assert_eq!(pulled["remote"]["pulled"], true, "{pulled}");
    assert_eq!(pulled["artifact"], built["artifact"]);
    assert_eq!(pulled["fingerprint"], built["fingerprint"]);
    let path_a = PathBuf::from(built["path"].as_str().unwrap());
    let path_b = PathBuf::from(pulled["path"].as_str().unwrap());
    assert!(path_b.starts_with(&b.root), "{}", path_b.display());
    compare(&path_a, &path_b);

    // Recorded as B's last good artifact for these inputs, with its source: the next call is a
    // local hit that touches neither the builder nor the remote.
    let status = support::json_ok(&support::run(b.cmd(&server).args(["status", name, "--json"])));
    assert_eq!(status["entries"][0]["source"], "pull", "{status}");
    assert_eq!(status["entries"][0]["artifact"], built["artifact"]);
    let requests = server.requests();
    let hit = support::json_ok(&support::run(
        b.cmd(&server)
            .env("WARMCACHE_REMOTE", url(&server))
            .args(["ensure", name, "--json"]),
    ));
    assert_eq!(hit["status"], "hit", "{hit}");
    assert_eq!(server.requests(), requests, "a local hit contacted the remote");
    assert_eq!(b.builds(), 0);
}

#[test]
fn single_executable_file_is_pulled_not_built() {
    share_and_fetch("tool", |a, b| {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        let meta = std::fs::metadata(b).unwrap();
        assert!(meta.is_file());
        assert!(meta.permissions().mode() & 0o111 != 0, "executable bit lost");
    });
}

#[test]
fn directory_tree_is_pulled_not_built() {
    share_and_fetch("deps/tree", |a, b| {
        let tree = support::describe_tree(b);
        assert_eq!(support::describe_tree(a), tree);
        assert!(tree["run.sh"].contains("exec=true"), "{tree:?}");
        assert_eq!(tree["link"], "link lib/nested/data.txt");
        assert_eq!(tree["empty"], "dir");
    });
}

/// A machine whose warmcache.toml has the recipes and `remote` (a `[remote]` table, or empty).
fn machine(remote: &str) -> Machine {
    Machine::new(
        &format!("{RECIPES}\n{remote}"),
        &[
            ("src/main.sh", "#!/bin/sh\necho hello\n"),
            ("src/data.txt", "shared data\n"),
        ],
    )
}
