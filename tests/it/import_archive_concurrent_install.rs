//! Problem 5 of docs/DESIGN.md, the half-extracted bundle: several processes install the same archive
//! at the same moment, each followed at once by a walk over every file. Every walk finds every
//! file (no ENOENT), all get the same artifact, and the archive is extracted once (a hook that
//! runs on each extraction runs once).

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn concurrent_first_install_is_complete_and_extracted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let tree = make_tree(&tmp.path().join("bundle"), 1500, 3000, 11);
    let archive = tmp.path().join("bundle.tar.zst");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -cf - . | zstd -q -o '{}'",
            tree.display(),
            archive.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let files = describe_tree(&tree)
        .values()
        .filter(|v| v.starts_with("file"))
        .count();
    let counter = tmp.path().join("extractions");

    // Each installer imports, then immediately walks the tree and reads every file.
    let script = r#"p=$("$WARMCACHE" --root "$ROOT" import "$ARCHIVE" --name bundle --hook 'echo x >> "$COUNTER"') || exit 10
n=$(find "$p" -type f | wc -l); [ "$n" -eq "$FILES" ] || { echo "walk found $n of $FILES files"; exit 11; }
find "$p" -type f -exec cat {} + > /dev/null || exit 12
echo "$p""#;
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .env("WARMCACHE", env!("CARGO_BIN_EXE_warmcache"))
                .env("ROOT", &root)
                .env("ARCHIVE", &archive)
                .env("COUNTER", &counter)
                .env("FILES", files.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut paths = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "installer failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        paths.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    paths.dedup();
    assert_eq!(paths.len(), 1, "all installers get the same artifact: {paths:?}");
    assert_eq!(
        describe_tree(std::path::Path::new(&paths[0])),
        describe_tree(&tree)
    );
    let extractions = std::fs::read_to_string(&counter).unwrap().lines().count();
    assert_eq!(extractions, 1, "the archive must be extracted once");
    assert_eq!(list(&root.join("v1/staging")), Vec::<String>::new());
}
