//! Helpers shared by the black-box tests: run the real binary, make real trees, compare them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `warmcache` command on the given root, with a clean environment for the cache variables.
pub fn warmcache(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmcache"));
    cmd.arg("--root").arg(root);
    cmd.env_remove("WARMCACHE_ROOT")
        .env_remove("WARMCACHE_REMOTE")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs a command and returns its output, panicking with its stderr if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("failed to start warmcache")
}

/// Runs and expects success; returns stdout as a trimmed string.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs with `--json` and expects success; returns the parsed object.
pub fn ok_json(cmd: &mut Command) -> serde_json::Value {
    let text = ok(cmd.arg("--json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A small deterministic pseudo-random generator (xorshift), so trees are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes a tree of `files` files (nested directories, some executable, an in-tree symlink and an
/// empty directory) whose content depends on `seed`. Returns its root.
pub fn make_tree(root: &Path, files: usize, max_file: usize, seed: u64) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut rng = Rng::new(seed);
    std::fs::create_dir_all(root).unwrap();
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 17)).join(format!("s{}", i % 5));
        std::fs::create_dir_all(&dir).unwrap();
        let len = rng.below(max_file as u64) as usize;
        let path = dir.join(format!("f{i}.bin"));
        std::fs::write(&path, rng.bytes(len)).unwrap();
        if i % 7 == 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("d0/s0/f0.bin", root.join("link")).unwrap();
    root.to_path_buf()
}

/// What a tree is, entry by entry: kind, executable bit, content digest or symlink target.
pub fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            let key = rel.to_string_lossy().to_string();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(root.join(&rel)).unwrap();
                out.insert(key, format!("link {}", target.display()));
            } else if meta.is_dir() {
                out.insert(key, "dir".into());
                stack.push(rel);
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                let digest = blake3::hash(&std::fs::read(root.join(&rel)).unwrap());
                out.insert(key, format!("file exec={exec} {digest}"));
            }
        }
    }
    out
}

/// Names in a directory (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
            names.sort();
            names
        }
        Err(_) => Vec::new(),
    }
}

/// The published artifact ids under a root.
pub fn artifact_ids(root: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for shard in list(&root.join("v1/objects")) {
        ids.extend(list(&root.join("v1/objects").join(shard)));
    }
    ids.sort();
    ids
}

/// The cache is consistent: `verify` finds nothing damaged or dangling, no staging leftovers
/// remain after that run, and every entry that names an artifact has it present. `when` labels
/// failures.
pub fn assert_consistent(root: &Path, when: &str) {
    let verify = ok_json(warmcache(root).arg("verify"));
    assert_eq!(verify["damaged"].as_array().unwrap().len(), 0, "{when}: {verify}");
    assert_eq!(
        verify["dangling"].as_array().unwrap().len(),
        0,
        "{when}: {verify}"
    );
    // The verify run above opened the cache and swept dead processes' staging.
    assert_eq!(
        list(&root.join("v1/staging")),
        Vec::<String>::new(),
        "{when}: staging not swept"
    );
    let status = ok_json(warmcache(root).arg("status"));
    for entry in status["entries"].as_array().unwrap() {
        if !entry["artifact"].is_null() {
            assert_eq!(
                entry["present"], true,
                "{when}: catalog names a missing artifact: {entry}"
            );
        }
    }
}

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

    /// A `warmcache` command run in the checkout with only the given AWS variables (ambient
    /// `AWS_*` cleared) and the builders' counter file in `COUNTER_FILE`.
    pub fn cmd<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &self,
        aws_env: impl IntoIterator<Item = (K, V)>,
    ) -> Command {
        let mut cmd = warmcache(&self.root);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(aws_env)
            .env("COUNTER_FILE", &self.counter)
            .current_dir(&self.project);
        cmd
    }

    /// How many times a builder ran on this machine.
    pub fn builds(&self) -> usize {
        std::fs::read_to_string(&self.counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}
