//! Post-processing runs on the staging copy before publication: a permission rule and a hook
//! shape what is published; a failing hook publishes nothing, leaves the entry's previous
//! artifact as it was, and leaves no staging behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;

#[test]
fn hooks_and_modes_act_on_staging_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = tmp.path().join("bundle");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::write(tree.join("README"), "v1").unwrap();

    let first = json_ok(&run(warmcache(&root).arg("import").arg(&tree).args([
        "--name",
        "bundle",
        "--mode",
        "bin/*=755",
        "--hook",
        "echo signed > \"$WARMCACHE_STAGING/SIGNATURE\"",
        "--json",
    ])));
    let published = Path::new(first["path"].as_str().unwrap());
    let mode = std::fs::metadata(published.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "the permission rule made the tool executable");
    assert_eq!(
        std::fs::read_to_string(published.join("SIGNATURE")).unwrap(),
        "signed\n"
    );
    assert!(
        !tree.join("SIGNATURE").exists(),
        "the hook ran on the source, not on staging"
    );
    assert!(ok(warmcache(&root).args(["verify"])).contains("0 damaged"));

    std::fs::write(tree.join("README"), "v2").unwrap();
    let out = run(warmcache(&root).arg("import").arg(&tree).args([
        "--name",
        "bundle",
        "--hook",
        "echo tampered >> \"$WARMCACHE_STAGING/README\"; echo 'signing failed' >&2; exit 3",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited with code 3") && stderr.contains("signing failed"),
        "{stderr}"
    );
    assert_eq!(
        artifact_ids(&root),
        vec![first["artifact"].as_str().unwrap().to_string()],
        "nothing new published"
    );
    assert_eq!(
        ok(warmcache(&root).args(["path", "bundle"])),
        first["path"].as_str().unwrap()
    );
    assert_eq!(std::fs::read_to_string(published.join("README")).unwrap(), "v1");
    assert_eq!(
        std::fs::read_to_string(tree.join("README")).unwrap(),
        "v2",
        "the source is untouched"
    );
    assert_eq!(
        list(&root.join("v1/staging")),
        Vec::<String>::new(),
        "no staging leftovers"
    );
}

#[test]
fn a_hook_that_removes_its_copy_is_named_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let out = run(warmcache(&root).arg("import").arg(&file).args([
        "--name",
        "f",
        "--hook",
        "rm -f \"$WARMCACHE_STAGING\"",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("removed the staging copy"), "{message}");
    assert!(
        !message.contains("/staging/"),
        "names the hook and source, not staging: {message}"
    );
    assert_eq!(artifact_ids(&root), Vec::<String>::new());
}
