//! GC deletes rows first, holding no root lock, and moves directories to the trash afterwards in
//! short exclusive holds (docs/DESIGN.md, "Locks"). In between, an anonymous import of content
//! that is still published records its row again; the hold must see that row and keep the
//! directory, or the catalog names an artifact that is gone. Anonymous imports of a few dozen
//! contents race two `gc --max-size 0` loops while a checker, holding the root lock shared like
//! any operation (so it sees the state between two exclusive holds), reads every artifact row of
//! the catalog and looks for its directory.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::support::*;

/// Prints one line per artifact row whose directory is missing, then `rows=N`.
const CHECKER: &str = r#"
import fcntl, os, sqlite3, sys
base = sys.argv[1]
with open(os.path.join(base, "locks", "root.lock"), "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_SH)
    db = sqlite3.connect(os.path.join(base, "catalog.sqlite"), timeout=60)
    ids = [r[0] for r in db.execute("SELECT id FROM artifacts")]
    for id in ids:
        if not os.path.isdir(os.path.join(base, "objects", id[:2], id)):
            print("missing:", id)
    db.close()
print(f"rows={len(ids)}")
"#;

#[test]
fn rows_recorded_again_during_gc_keep_their_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let contents: Vec<_> = (0..40)
        .map(|i| {
            let file = tmp.path().join(format!("f{i}"));
            std::fs::write(&file, format!("content {i}\n")).unwrap();
            file
        })
        .collect();
    for file in &contents {
        ok(warmcache(&root).arg("import").arg(file));
    }

    let stop = AtomicBool::new(false);
    let removed = AtomicUsize::new(0);
    let missing = std::thread::scope(|s| {
        for n in 0..3 {
            let (root, contents, stop) = (&root, &contents, &stop);
            s.spawn(move || {
                let mut i = n * 13;
                while !stop.load(Ordering::Relaxed) {
                    ok(warmcache(root).arg("import").arg(&contents[i % contents.len()]));
                    i += 7;
                }
            });
        }
        for _ in 0..2 {
            let (root, stop, removed) = (&root, &stop, &removed);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let report = json_ok(&run(warmcache(root).args(["--json", "gc", "--max-size", "0"])));
                    removed.fetch_add(report["removed"].as_array().unwrap().len(), Ordering::Relaxed);
                }
            });
        }
        let mut missing = Vec::new();
        for _ in 0..150 {
            let out = run(Command::new("python3").args(["-c", CHECKER]).arg(root.join("v1")));
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success() && text.contains("rows="),
                "checker failed: {text} {}",
                stderr(&out)
            );
            missing.extend(
                text.lines()
                    .filter(|l| l.starts_with("missing:"))
                    .map(str::to_string),
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        missing
    });
    assert!(
        missing.is_empty(),
        "rows named artifacts gc had moved away: {missing:?}"
    );
    assert!(
        removed.load(Ordering::Relaxed) > 0,
        "nothing was collected, so the test proved nothing"
    );
    assert_consistent(&root, "after the race");
}
