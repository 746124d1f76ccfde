//! `path --lease` resolves the path and takes the lease in one step under the operation lock, so
//! a collection running at the same time can never remove what it just printed (before, the lease
//! was written after the lock was released: a few calls in a few hundred printed removed paths).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;

#[test]
fn every_leased_path_exists_while_reimports_and_gc_race() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let stop = Arc::new(AtomicBool::new(false));
    let src = tmp.path().join("x");
    std::fs::write(&src, b"0").unwrap();
    ok(warmcache(&root).arg("import").arg(&src).args(["--name", "x"]));

    // Two threads keep giving `x` new content (the old artifact loses its entry), two keep
    // collecting everything unprotected, and four ask for leased paths.
    let background: Vec<_> = (0..4)
        .map(|n| {
            let (root, stop, dir) = (root.clone(), stop.clone(), tmp.path().to_path_buf());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if n < 2 {
                        let file = dir.join(format!("v{n}-{}", i % 4));
                        std::fs::write(&file, format!("{n} {i}")).unwrap();
                        ok(warmcache(&root).arg("import").arg(&file).args(["--name", "x"]));
                    } else {
                        // Two collectors take turns on the gc lock.
                        ok(warmcache(&root).args(["gc", "--max-size", "0"]));
                    }
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut missing = Vec::new();
                for _ in 0..300 {
                    let out = run(warmcache(&root).args(["path", "x", "--lease", "60s"]));
                    // A miss would not be this bug (and cannot happen here: x always has one).
                    if out.status.success() {
                        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        if std::fs::symlink_metadata(&path).is_err() {
                            missing.push(path);
                        }
                    }
                }
                missing
            })
        })
        .collect();
    let missing: Vec<String> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for thread in background {
        thread.join().unwrap();
    }
    assert!(missing.is_empty(), "leased paths already collected: {missing:?}");
}
