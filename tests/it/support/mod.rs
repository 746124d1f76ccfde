//! Helpers shared by the integration tests: run the real binary, make real trees, compare them,
//! look inside a cache root. The remote tests' helpers are in the submodules: an in-process S3
//! server ([`s3_server`]), simulated machines sharing it ([`machine`]) and the snapshot and
//! restore commands pointed at it ([`snapshots`]).

pub mod backend;
pub mod gcs_proxy;
pub mod machine;
pub mod s3_server;
pub mod schemas;
pub mod snapshots;

use s3_server::TestS3;

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

/// `warmcache` on `root`, talking to `server` through the environment variables only (the AWS
/// ones, an Azure connection string on Azurite): any ambient `AWS_*`, `AZURE_*` or `GOOGLE_*` of
/// the test's own environment is removed first.
pub fn warmcache_s3(server: &TestS3, root: &Path) -> Command {
    let mut cmd = warmcache(root);
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if ["AWS_", "AZURE_", "AZURITE_", "GOOGLE_"]
            .iter()
            .any(|p| name_str.starts_with(p))
        {
            cmd.env_remove(name);
        }
    }
    cmd.envs(server.env());
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

/// The JSON object a successful (exit 0) command printed; for a command not yet run, pass
/// `&run(cmd.arg("--json"))`.
pub fn json_ok(out: &Output) -> serde_json::Value {
    json_exit(out, 0)
}

/// The one JSON object a command printed, checking it exited with `code` and that the object is
/// valid against the schema document it names ([`schemas::check`]).
pub fn json_exit(out: &Output, code: i32) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    schemas::check(&value);
    value
}

/// The one JSON object a command printed, whatever its exit code, checked against the schema
/// document it names ([`schemas::check`]).
pub fn json_any(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    schemas::check(&value);
    value
}

/// What a command wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    let verify = json_ok(&run(warmcache(root).args(["verify", "--json"])));
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
    let status = json_ok(&run(warmcache(root).args(["status", "--json"])));
    for entry in status["entries"].as_array().unwrap() {
        if !entry["artifact"].is_null() {
            assert_eq!(
                entry["present"], true,
                "{when}: catalog names a missing artifact: {entry}"
            );
        }
    }
}

/// A tree's entries relative to `root`, without following symlinks, sorted by name with parents
/// before children: the order warmcache writes archives in.
pub fn walk_sorted(root: &Path) -> Vec<(PathBuf, std::fs::FileType)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::FileType)>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.file_type().unwrap())
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            let child = rel.join(name);
            out.push((child.clone(), kind));
            if kind.is_dir() {
                walk(root, &child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Removes a tree the cache made read-only (as a user deleting it by hand would).
pub fn force_remove(path: &Path) {
    let status = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chmod -R u+w {}", path.display());
    std::fs::remove_dir_all(path).unwrap();
}

/// Runs a shell script in a private user and mount namespace, where it may mount a tmpfs.
pub fn in_namespace(script: &str, args: &[&Path]) -> String {
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", script, "sh"])
        .args(args)
        .output()
        .expect("unshare (util-linux) must be installed");
    assert!(
        out.status.success(),
        "namespace script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Waits (bounded, generously: two minutes) until `done` holds, for a process or file the test
/// started to get somewhere; never a timing assertion.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
