//! `verify` exits 1 when it found (and quarantined) damage, 0 when everything is intact, and
//! names the damaged file inside the artifact (never an empty path).

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

#[test]
fn damage_found_is_exit_1_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f1"), b"intact").unwrap();
    ok(warmcache(&root).arg("import").arg(&tree).args(["--name", "a"]));
    let clean = json_exit(&run(warmcache(&root).args(["verify", "--json"])), 0);
    assert_eq!(clean["ok"], 1, "{clean}");

    let content = std::path::PathBuf::from(ok(warmcache(&root).args(["path", "a"])));
    let f1 = content.join("f1");
    std::fs::set_permissions(&f1, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&f1, b"broken").unwrap();
    let out = run(warmcache(&root).arg("verify"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(warning.contains("`f1`"), "names the damaged file: {warning}");
    assert!(!warning.contains("(: "), "no empty path: {warning}");
    // Repaired: the next verify finds nothing.
    json_exit(&run(warmcache(&root).args(["verify", "--json"])), 0);
}
