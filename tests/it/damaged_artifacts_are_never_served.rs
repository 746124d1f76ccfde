//! A damaged artifact is never served. Every hit (`ensure`, `path`, `activate`) first compares
//! the artifact's stat identity (size, mode, inode and ctime of every entry, recorded at publish)
//! with the content; a change is re-hashed, and damage is quarantined and becomes a miss:
//! `ensure` rebuilds with a warning, `path` and `activate` refuse and say what to do, DEST is
//! left untouched. A change that is not damage (a hard link added) is re-hashed and still a hit.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::{describe_tree, json_exit, json_ok, list, ok, run, stderr, warmcache};

/// Makes a stored (read-only) file writable, as a user with a deliberate chmod (or root) could.
fn writable(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
}

/// Flips one byte in place: same size, same mode afterwards; only ctime tells.
fn flip_byte(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    writable(path);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0x20;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&bytes[..1]).unwrap();
    drop(file);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn truncate(path: &Path) {
    writable(path);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
}

fn quarantined(root: &Path) -> Vec<String> {
    list(&root.join("v1/quarantine"))
}

struct Built {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
}

impl Built {
    /// A cache with entry `E` built from `in.txt` by a builder that counts its runs.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (root, work) = (tmp.path().join("cache"), tmp.path().join("work"));
        std::fs::create_dir(&work).unwrap();
        std::fs::write(work.join("in.txt"), b"the good bytes").unwrap();
        let built = Self {
            _tmp: tmp,
            root,
            work,
        };
        assert_eq!(built.ensure()["status"], "built");
        assert_eq!(built.ensure()["status"], "hit");
        built
    }

    fn ensure_cmd(&self) -> std::process::Command {
        let mut cmd = warmcache(&self.root);
        cmd.current_dir(&self.work).args([
            "ensure",
            "E",
            "--json",
            "--input",
            "in.txt",
            "--build",
            "echo run >> runs; cp in.txt \"$WARMCACHE_OUT\"",
        ]);
        cmd
    }

    fn ensure(&self) -> serde_json::Value {
        json_ok(&run(&mut self.ensure_cmd()))
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.work.join("runs"))
            .unwrap()
            .lines()
            .count()
    }

    fn content(&self) -> PathBuf {
        PathBuf::from(ok(warmcache(&self.root).args(["path", "E"])))
    }

    /// Damages the stored file with `damage`, then: `ensure` rebuilds (no hit) with a warning
    /// on stderr and in JSON and quarantines the damaged copy; damaged again, `path` refuses.
    fn damage_is_rebuilt_and_refused(&self, damage: fn(&Path)) {
        let runs = self.runs();
        damage(&self.content());
        let out = run(&mut self.ensure_cmd());
        let result = json_ok(&out);
        assert_eq!(result["status"], "built", "{result}");
        assert_eq!(self.runs(), runs + 1, "the builder ran again");
        let warnings = result["warnings"].to_string();
        assert!(warnings.contains("is damaged"), "{result}");
        assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));
        assert_eq!(quarantined(&self.root).len(), 1);
        assert_eq!(std::fs::read(self.content()).unwrap(), b"the good bytes");
        assert_eq!(self.ensure()["status"], "hit");

        damage(&self.content());
        let out = run(warmcache(&self.root).args(["path", "E", "--json"]));
        let error = json_exit(&out, 1).to_string();
        assert!(
            error.contains("is damaged") && error.contains("warmcache ensure E"),
            "{error}"
        );
        assert_eq!(quarantined(&self.root).len(), 2);
        assert_eq!(self.ensure()["status"], "built");
        assert_eq!(std::fs::read(self.content()).unwrap(), b"the good bytes");
    }
}

#[test]
fn a_flipped_byte_in_a_file_artifact_is_rebuilt_not_a_hit_and_path_refuses_it() {
    Built::new().damage_is_rebuilt_and_refused(flip_byte);
}

#[test]
fn a_truncated_file_artifact_is_rebuilt_not_a_hit_and_path_refuses_it() {
    Built::new().damage_is_rebuilt_and_refused(truncate);
}

#[test]
fn a_hard_link_changes_the_identity_but_an_intact_artifact_stays_a_hit() {
    let built = Built::new();
    let dest = built.work.join("linked");
    ok(warmcache(&built.root)
        .args(["activate", "E"])
        .arg(&dest)
        .args(["--link", "hardlink"]));
    // The new link changed the stored file's ctime: re-hashed once, intact, still a hit.
    assert_eq!(built.ensure()["status"], "hit");
    assert_eq!(built.ensure()["status"], "hit");
    assert_eq!(built.runs(), 1);
    assert!(quarantined(&built.root).is_empty());
}

/// A directory artifact `T` imported from a small tree, activated once at `app/t`.
fn imported_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/a.txt"), b"aaaa").unwrap();
    std::fs::write(src.join("b.txt"), b"bbbb").unwrap();
    std::fs::create_dir(tmp.path().join("app")).unwrap();
    ok(warmcache(&root).arg("import").arg(&src).args(["--name", "T"]));
    let dest = tmp.path().join("app/t");
    ok(warmcache(&root).args(["activate", "T"]).arg(&dest));
    (tmp, root, dest)
}

#[test]
fn a_flipped_byte_inside_a_tree_is_caught_by_the_hit_check() {
    let (_tmp, root, _dest) = imported_tree();
    let content = PathBuf::from(ok(warmcache(&root).args(["path", "T"])));
    flip_byte(&content.join("lib/a.txt"));
    let out = run(warmcache(&root).args(["path", "T"]));
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("is damaged") && message.contains("lib/a.txt"),
        "{message}"
    );
    assert_eq!(quarantined(&root).len(), 1);
}

#[test]
fn activating_a_damaged_artifact_refuses_quarantines_and_leaves_dest_untouched() {
    let (_tmp, root, dest) = imported_tree();
    let before = describe_tree(&dest);
    let content = PathBuf::from(ok(warmcache(&root).args(["path", "T"])));
    flip_byte(&content.join("b.txt"));
    let out = run(warmcache(&root)
        .args(["activate", "T"])
        .arg(&dest)
        .args(["--link", "copy"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("is damaged") && message.contains("was left unchanged"),
        "{message}"
    );
    assert_eq!(describe_tree(&dest), before, "DEST untouched");
    assert_eq!(list(dest.parent().unwrap()), vec!["t"], "no staging left");
    assert_eq!(quarantined(&root).len(), 1);
    let verify = json_ok(&run(warmcache(&root).args(["verify", "--json"])));
    assert_eq!(verify["damaged"].as_array().unwrap().len(), 0, "{verify}");
}
