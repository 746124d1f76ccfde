//! Every pack is a standard tar.zst (docs/DESIGN.md, "Snapshots"): the first snapshot's pack
//! extracts with the system's `zstd -dc | tar -x` to exactly the tree (the manifest segments
//! after the tar are skippable frames, which zstd ignores), and a delta pack extracts to just the
//! files it brings, which laid over the first rebuild the new tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, snapshot};

const KEY: &str = "team/site-b/node_modules";

/// Extracts a pack with the system's tools into `into`: `zstd -dc PACK | tar -x`.
fn extract(pack: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; zstd -dc \"$1\" | tar -x -C \"$2\"",
            "extract",
        ])
        .arg(pack)
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zstd -dc | tar -x: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every pack under KEY, copied into files in `into` (named by their keys' last part).
fn pack_paths(server: &TestS3, into: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(into).unwrap();
    objects(server)
        .into_keys()
        .filter(|k| k.starts_with(&format!("{KEY}/packs/")))
        .map(|k| {
            let path = into.join(k.rsplit('/').next().unwrap());
            std::fs::write(&path, server.get_object(&k).unwrap()).unwrap();
            path
        })
        .collect()
}

#[test]
fn packs_extract_with_zstd_and_tar() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 200, 24 * 1024, 3);
    // A large file (chunked), a long path, a symlink to a directory, an empty file.
    std::fs::write(src.join("d1/large.bin"), support::Rng::new(8).bytes(3 << 20)).unwrap();
    let deep = src.join("a-directory-with-a-long-name/another-directory-with-a-long-name/and-one-more-level");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(
        deep.join("a-file-whose-path-is-longer-than-one-hundred-bytes.txt"),
        b"long",
    )
    .unwrap();
    std::os::unix::fs::symlink("d1", src.join("to-d1")).unwrap();
    std::fs::write(src.join("d2/empty.txt"), b"").unwrap();

    let first = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(first["full"], true, "{first}");
    let full = pack_paths(&server, &tmp.path().join("packs"));
    assert_eq!(full.len(), 1);
    let out = tmp.path().join("from-full");
    extract(&full[0], &out);
    assert_eq!(support::describe_tree(&out), support::describe_tree(&src));

    // A changed file, a new file, and an edit in the middle of the large one.
    std::fs::write(src.join("d3/s3/f3.bin"), b"changed content").unwrap();
    std::fs::write(src.join("d4/new.txt"), b"a new file").unwrap();
    let mut large = std::fs::read(src.join("d1/large.bin")).unwrap();
    large[1 << 20..(1 << 20) + 100].fill(7);
    std::fs::write(src.join("d1/large.bin"), &large).unwrap();
    let second = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(second["full"], false, "{second}");
    let delta: Vec<PathBuf> = pack_paths(&server, &tmp.path().join("packs"))
        .into_iter()
        .filter(|p| *p != full[0])
        .collect();
    assert_eq!(delta.len(), 1);
    let only = tmp.path().join("from-delta");
    extract(&delta[0], &only);
    let brought = support::describe_tree(&only);
    let wanted = support::describe_tree(&src);
    for path in ["d3/s3/f3.bin", "d4/new.txt"] {
        assert_eq!(brought.get(path), wanted.get(path), "{path}: {brought:?}");
    }
    // The large file's new chunks are pieces for `warmcache restore` to reassemble.
    assert!(!brought.contains_key("d1/large.bin"), "{brought:?}");
    let pieces: Vec<_> = brought
        .keys()
        .filter(|k| k.starts_with(".warmcache-chunks/"))
        .collect();
    assert!(!pieces.is_empty() && pieces.len() <= 3, "{pieces:?}");
    let files: Vec<_> = brought
        .iter()
        .filter(|(k, v)| !k.starts_with(".warmcache-chunks") && !v.starts_with("dir"))
        .collect();
    assert_eq!(
        files.len(),
        2,
        "the delta brings the changed and the new file only: {files:?}"
    );

    // Laid over the full pack, the delta gives every file but the chunked one as it is now.
    extract(&delta[0], &out);
    let mut rebuilt = support::describe_tree(&out);
    rebuilt.retain(|k, _| !k.starts_with(".warmcache-chunks") && k != "d1/large.bin");
    let mut expected = wanted.clone();
    expected.retain(|k, _| k != "d1/large.bin");
    assert_eq!(rebuilt, expected);
}
