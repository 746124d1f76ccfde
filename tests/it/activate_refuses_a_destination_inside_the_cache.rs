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
