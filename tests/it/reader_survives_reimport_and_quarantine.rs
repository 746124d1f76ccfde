//! A reader holding an open artifact keeps reading correct bytes while the same content is
//! re-imported and while `verify` moves the artifact to quarantine; afterwards the entry is a
//! clean miss, never a crash.

use std::io::Read;
use std::path::Path;

use crate::support::*;

#[test]
fn open_reader_keeps_correct_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let source = tmp.path().join("big.bin");
    let bytes = Rng::new(3).bytes(48 << 20);
    std::fs::write(&source, &bytes).unwrap();
    let expected = blake3::hash(&bytes);

    let imported = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(&source)
        .args(["--name", "big", "--json"])));
    let path = Path::new(imported["path"].as_str().unwrap()).to_path_buf();
    let artifact = imported["artifact"].as_str().unwrap().to_string();

    let mut reader = std::fs::File::open(&path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read_some = |reader: &mut std::fs::File, chunks: usize| {
        for _ in 0..chunks {
            let n = reader.read(&mut buf).unwrap();
            hasher.update(&buf[..n]);
        }
    };
    read_some(&mut reader, 16);

    // The same content imported again by another process: nothing changes under the reader.
    let again = json_ok(&run(warmcache(&root).arg("import").arg(&source).args([
        "--name",
        "big-again",
        "--json",
    ])));
    assert_eq!(again["artifact"].as_str(), Some(artifact.as_str()));
    assert_eq!(again["created"], false);
    read_some(&mut reader, 16);

    // Damage the artifact's manifest so that verify quarantines the whole artifact.
    let manifest = root
        .join("v1/objects")
        .join(&artifact[..2])
        .join(&artifact)
        .join("manifest.json");
    std::fs::write(&manifest, b"{\"version\": 1, \"tampered\": true}").unwrap();
    let verify = json_exit(&run(warmcache(&root).args(["verify", "--json"])), 1);
    assert_eq!(verify["damaged"].as_array().unwrap().len(), 1, "{verify}");
    assert!(!path.exists(), "the damaged artifact must be out of objects/");

    // The reader finishes with exactly the original bytes.
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    assert_eq!(hasher.finalize(), expected);

    // The entry is now a miss with a clear message, not a crash; status still works.
    let out = run(warmcache(&root).args(["path", "big"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no artifact"), "{stderr}");
    ok(warmcache(&root).arg("status"));

    // And importing it again publishes a fresh, intact copy.
    let fresh = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(&source)
        .args(["--name", "big", "--json"])));
    assert_eq!(fresh["created"], true);
    assert_eq!(
        blake3::hash(&std::fs::read(fresh["path"].as_str().unwrap()).unwrap()),
        expected
    );
}
