//! `activate` never writes inside the cache root: a DEST there (directly, or through a symlink
//! into it) is refused and every artifact stays as it was.

use crate::support::*;

#[test]
fn dest_inside_the_root_is_refused_and_the_artifact_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f1"), b"original").unwrap();
    ok(warmcache(&root).arg("import").arg(&tree).args(["--name", "a"]));
    let file = tmp.path().join("other");
    std::fs::write(&file, b"replacement").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "b"]));
    let a = ok(warmcache(&root).args(["path", "a"]));

    let inside = std::path::Path::new(&a).join("f1");
    let out = run(warmcache(&root).args(["activate", "b"]).arg(&inside));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("inside the cache root"), "{}", stderr(&out));

    let link = tmp.path().join("into-cache");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let out = run(warmcache(&root).args(["activate", "b"]).arg(link.join("f1")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("inside the cache root"), "{}", stderr(&out));

    assert_eq!(std::fs::read(inside).unwrap(), b"original");
    let verify = json_ok(&run(warmcache(&root).args(["verify", "--json"])));
    assert_eq!(verify["damaged"], serde_json::json!([]), "{verify}");
}

#[test]
fn the_root_reached_through_a_bind_mount_is_refused_too() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let (precious, other) = (tmp.path().join("precious"), tmp.path().join("other"));
    std::fs::write(&precious, b"precious").unwrap();
    std::fs::write(&other, b"evil").unwrap();
    ok(warmcache(&root)
        .arg("import")
        .arg(&precious)
        .args(["--name", "precious"]));
    ok(warmcache(&root)
        .arg("import")
        .arg(&other)
        .args(["--name", "other"]));
    let path = ok(warmcache(&root).args(["path", "precious"]));
    let relative = std::path::Path::new(&path)
        .strip_prefix(&root)
        .unwrap()
        .to_path_buf();
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"tree").unwrap();
    ok(warmcache(&root).arg("import").arg(&tree).args(["--name", "tree"]));
    let tree_artifact = std::path::PathBuf::from(ok(warmcache(&root).args(["path", "tree"])))
        .parent()
        .unwrap()
        .to_path_buf();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = in_namespace(
        r#"mount --bind "$2" "$3" || exit 1
           "$1" --root "$2" activate other "$3/$4"; echo "artifact rc=$?"
           "$1" --root "$2" activate other "$3/v1/catalog.sqlite"; echo "catalog rc=$?"
           "$1" --root "$2" activate other "$3/v1/objects/new"; echo "objects rc=$?"
           umount "$3" && mount --bind "$5" "$3" || exit 1
           "$1" --root "$2" activate other "$3/manifest.json"; echo "artifact-dir rc=$?"
           umount "$3" && mount --bind "$5/content" "$3" || exit 1
           "$1" --root "$2" activate other "$3/new"; echo "content-dir rc=$?""#,
        &[
            std::path::Path::new(env!("CARGO_BIN_EXE_warmcache")),
            &root,
            &mnt,
            &relative,
            &tree_artifact,
        ],
    );
    for what in ["artifact", "catalog", "objects", "artifact-dir", "content-dir"] {
        assert!(out.contains(&format!("{what} rc=1")), "{what}:\n{out}");
    }
    assert_eq!(out.matches("inside the cache root").count(), 5, "{out}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    json_ok(&run(warmcache(&root).args(["status", "--json"])));
}
