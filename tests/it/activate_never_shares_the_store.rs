//! `activate --link auto` never shares an inode with the store (a reflink, else a copy), so a
//! chmod or an in-place write to DEST cannot change an artifact; and a `--link symlink`
//! activation is a gc root: it keeps its artifact alive for as long as DEST points at it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::{artifact_ids, json_ok, ok, run, warmcache};

fn import_tree(root: &Path, src: &Path, tag: &str) -> String {
    std::fs::create_dir_all(src).unwrap();
    std::fs::write(src.join("f1"), tag).unwrap();
    std::fs::write(src.join("f2"), format!("{tag}-2")).unwrap();
    let out = json_ok(&run(warmcache(root)
        .arg("import")
        .arg(src)
        .args(["--name", "A", "--json"])));
    out["artifact"].as_str().unwrap().to_string()
}

#[test]
fn writing_to_an_auto_activation_never_changes_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    import_tree(&root, &tmp.path().join("src"), "one");
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    let app = tmp.path().join("d/app");
    let activated = json_ok(&run(warmcache(&root)
        .args(["activate", "A"])
        .arg(&app)
        .arg("--json")));
    assert_ne!(activated["activation"]["link"], "hardlink", "{activated}");

    let stored = PathBuf::from(ok(warmcache(&root).args(["path", "A"])));
    let f1 = app.join("f1");
    assert_ne!(
        std::fs::metadata(&f1).unwrap().ino(),
        std::fs::metadata(stored.join("f1")).unwrap().ino()
    );
    std::fs::set_permissions(&f1, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&f1, b"edited in place").unwrap();

    let verify = json_ok(&run(warmcache(&root).args(["verify", "--json"])));
    assert_eq!(verify["damaged"].as_array().unwrap().len(), 0, "{verify}");
    assert_eq!(verify["dangling"].as_array().unwrap().len(), 0, "{verify}");
    let stored = PathBuf::from(ok(warmcache(&root).args(["path", "A"])));
    assert_eq!(std::fs::read(stored.join("f1")).unwrap(), b"one");
    assert_eq!(
        std::fs::metadata(stored.join("f1")).unwrap().permissions().mode() & 0o777,
        0o444
    );
}

#[test]
fn a_symlink_activation_keeps_its_artifact_from_gc_until_it_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let first = import_tree(&root, &tmp.path().join("src1"), "one");
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    let link = tmp.path().join("d/link");
    ok(warmcache(&root)
        .args(["activate", "A"])
        .arg(&link)
        .args(["--link", "symlink"]));
    // The entry moves on: only the symlink still needs the first artifact.
    let second = import_tree(&root, &tmp.path().join("src2"), "two");
    assert_ne!(first, second);

    let gc = json_ok(&run(warmcache(&root).args(["gc", "--max-size", "0", "--json"])));
    assert_eq!(gc["removed"].as_array().unwrap().len(), 0, "{gc}");
    assert_eq!(artifact_ids(&root), {
        let mut ids = vec![first.clone(), second.clone()];
        ids.sort();
        ids
    });
    assert_eq!(std::fs::read(link.join("f1")).unwrap(), b"one");

    std::fs::remove_file(&link).unwrap();
    let gc = json_ok(&run(warmcache(&root).args(["gc", "--max-size", "0", "--json"])));
    let removed: Vec<&str> = gc["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["artifact"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![first.as_str()], "{gc}");
    assert_eq!(artifact_ids(&root), vec![second]);
}
