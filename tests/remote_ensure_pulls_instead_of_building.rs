//! Two machines share one bucket: machine A builds an entry and pushes it (`[remote] push =
//! true`); machine B, a second, empty cache root with its own checkout of the same inputs at
//! another path, runs `ensure` on the same recipe and gets the same artifact id, downloaded and
//! verified, without ever running the builder. For a single executable file and for a tree
//! (nested files, an executable, a symlink, an empty directory).

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::s3_server::{BUCKET, TestS3};

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

/// One machine: a cache root and a checkout of the project.
struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    project: PathBuf,
    counter: PathBuf,
}

impl Machine {
    /// `remote` is the `[remote]` table of its warmcache.toml (empty: none).
    fn new(remote: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("checkout");
        std::fs::create_dir_all(project.join("src")).unwrap();
        std::fs::write(project.join("warmcache.toml"), format!("{RECIPES}\n{remote}")).unwrap();
        std::fs::write(project.join("src/main.sh"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(project.join("src/data.txt"), "shared data\n").unwrap();
        Self {
            root: dir.path().join("cache"),
            counter: dir.path().join("builds.log"),
            project,
            _dir: dir,
        }
    }

    fn cmd(&self, server: &TestS3) -> Command {
        let mut cmd = common::warmcache(&self.root);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(server.env())
            .env("COUNTER_FILE", &self.counter)
            .current_dir(&self.project);
        cmd
    }

    fn builds(&self) -> usize {
        std::fs::read_to_string(&self.counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

fn url() -> String {
    format!("s3://{BUCKET}/team/cache")
}

fn share_and_fetch(name: &str, compare: impl Fn(&Path, &Path)) {
    let server = TestS3::start();
    let a = Machine::new(&format!("[remote]\nurl = \"{}\"\npush = true\n", url()));
    // B names the remote through the environment instead of its config file.
    let b = Machine::new("");

    let built = common::ok_json(a.cmd(&server).args(["ensure", name]));
    assert_eq!(built["status"], "built", "{built}");
    assert_eq!(built["remote"]["pulled"], false, "{built}");
    assert_eq!(built["remote"]["pushed"]["index"]["state"], "created", "{built}");
    assert_eq!(a.builds(), 1);

    let pulled = common::ok_json(
        b.cmd(&server)
            .env("WARMCACHE_REMOTE", url())
            .args(["ensure", name]),
    );
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
    let status = common::ok_json(b.cmd(&server).args(["status", name]));
    assert_eq!(status["entries"][0]["source"], "pull", "{status}");
    assert_eq!(status["entries"][0]["artifact"], built["artifact"]);
    let requests = server.requests();
    let hit = common::ok_json(
        b.cmd(&server)
            .env("WARMCACHE_REMOTE", url())
            .args(["ensure", name]),
    );
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
        let tree = common::describe_tree(b);
        assert_eq!(common::describe_tree(a), tree);
        assert!(tree["run.sh"].contains("exec=true"), "{tree:?}");
        assert_eq!(tree["link"], "link lib/nested/data.txt");
        assert_eq!(tree["empty"], "dir");
    });
}
