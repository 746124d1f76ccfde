//! One simulated machine for the remote tests: a cache root and a checkout of its own, all
//! machines of a test sharing one in-process S3 server.

use std::path::PathBuf;
use std::process::Command;

use super::s3_server::TestS3;
use super::warmcache_s3;

/// A `warmcache.toml` with one recipe, `app`, whose builder copies `src/app.txt` to the output
/// and appends to the machine's counter file (so [`Machine::builds`] counts its runs).
pub const APP_CONFIG: &str = r#"
[entry.app]
inputs = ["src/*"]
build = """
echo built >> "$COUNTER_FILE"
cp src/app.txt "$WARMCACHE_OUT"
"""
"#;

/// One simulated machine for the remote tests: its own cache root and checkout (with a
/// `warmcache.toml`), and a counter file that the recipes' builders append to.
pub struct Machine {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub project: PathBuf,
    pub counter: PathBuf,
}

impl Machine {
    /// A machine whose checkout holds `config` as warmcache.toml and `files` (relative path,
    /// content).
    pub fn new(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("checkout");
        std::fs::create_dir_all(project.join("src")).unwrap();
        std::fs::write(project.join("warmcache.toml"), config).unwrap();
        for (path, content) in files {
            std::fs::write(project.join(path), content).unwrap();
        }
        Self {
            root: dir.path().join("cache"),
            counter: dir.path().join("builds.log"),
            project,
            _dir: dir,
        }
    }

    /// A `warmcache` command run in the checkout, talking to `server` (see [`warmcache_s3`]),
    /// with the builders' counter file in `COUNTER_FILE`.
    pub fn cmd(&self, server: &TestS3) -> Command {
        let mut cmd = warmcache_s3(server, &self.root);
        cmd.env("COUNTER_FILE", &self.counter).current_dir(&self.project);
        cmd
    }

    /// How many times a builder ran on this machine.
    pub fn builds(&self) -> usize {
        std::fs::read_to_string(&self.counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}
