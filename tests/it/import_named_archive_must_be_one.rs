//! A file named like an archive (`.zip`, `.tar`, `.tar.gz`, `.tgz`, `.tar.zst`, `.tzst`) whose
//! content is not one is refused, naming the file and what its content looks like, and nothing
//! is published; `--raw` stores any file as it is; an empty tar is an empty tree.

use std::process::Command;

use crate::support::*;

#[test]
fn an_html_page_named_zip_is_refused_and_raw_stores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let page = tmp.path().join("bundle.zip");
    std::fs::write(
        &page,
        "<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
    )
    .unwrap();
    let out = run(warmcache(&root)
        .arg("import")
        .arg(&page)
        .args(["--name", "b", "--json"]));
    let err = json_exit(&out, 1);
    let message = err["error"].as_str().unwrap();
    for needle in ["bundle.zip", "zip archive", "HTML", "--raw"] {
        assert!(message.contains(needle), "`{needle}` missing from: {message}");
    }
    assert!(artifact_ids(&root).is_empty(), "nothing is published");

    for name in ["x.tar.gz", "x.tgz", "x.tar.zst", "x.tzst", "x.tar"] {
        let file = tmp.path().join(name);
        std::fs::write(&file, "just text\n").unwrap();
        let out = run(warmcache(&root).arg("import").arg(&file).arg("--json"));
        let err = json_exit(&out, 1);
        let message = err["error"].as_str().unwrap();
        assert!(message.contains(name) && message.contains("text"), "{message}");
    }

    let raw = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(&page)
        .args(["--raw", "--name", "b", "--json"])));
    assert_eq!(raw["kind"], "file", "{raw}");
    assert_eq!(
        std::fs::read(raw["path"].as_str().unwrap()).unwrap(),
        std::fs::read(&page).unwrap()
    );
}

#[test]
fn an_empty_tar_is_an_empty_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let zeros = tmp.path().join("zeros.tar");
    std::fs::write(&zeros, [0u8; 1024]).unwrap();
    let made = tmp.path().join("made.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&made)
            .args(["-T", "/dev/null"])
            .status()
            .unwrap()
            .success()
    );
    for tar in [&zeros, &made] {
        let imported = json_ok(&run(warmcache(&root).arg("import").arg(tar).arg("--json")));
        assert_eq!(imported["kind"], "dir", "{imported}");
        assert_eq!(imported["files"], 0, "{imported}");
        assert_eq!(imported["archive"], "tar", "{imported}");
        assert!(list(std::path::Path::new(imported["path"].as_str().unwrap())).is_empty());
    }
}
