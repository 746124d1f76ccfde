//! Folding the counter journals into the catalog survives `kill -9` at any moment: nothing is
//! lost and nothing counted twice (docs/DESIGN.md, "Counting hits without writing"). The lines
//! and how far each journal is folded go into the catalog in one transaction; a journal is
//! removed only after that commit, and a later fold forgets the offset of a removed one.

use std::path::Path;
use std::process::{Child, Stdio};

use crate::support::*;

const JOURNALS: u64 = 1500;
const LINES: u64 = 20;

/// Journals of finished processes (nobody holds their lock), as hits leave them: one JSON line
/// per entry and hour. Two hours apart, so the buckets are checked too. Returns the first name,
/// which a fold removes first (it goes in name order).
fn write_journals(root: &Path, batch: u64) -> String {
    let dir = root.join("v1/stats");
    std::fs::create_dir_all(&dir).unwrap();
    let hour = 3_600_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let this_hour = now / hour * hour;
    for j in 0..JOURNALS {
        let mut text = String::new();
        for i in 0..LINES {
            let at = if i % 2 == 0 {
                this_hour
            } else {
                this_hour - 2 * hour
            };
            text.push_str(&format!(
                "{{\"hour\":{at},\"entry\":\"e{}\",\"hits\":1,\"misses\":{}}}\n",
                i % 7,
                i % 3
            ));
        }
        std::fs::write(dir.join(name(batch, j)), text).unwrap();
    }
    name(batch, 0)
}

fn name(batch: u64, j: u64) -> String {
    format!("{}-{j:016x}.journal", 100_000 + batch)
}

fn totals(root: &Path, since: Option<&str>) -> (u64, u64) {
    let mut cmd = warmcache(root);
    cmd.args(["stats", "--json"]);
    if let Some(since) = since {
        cmd.args(["--since", since]);
    }
    let stats = json_ok(&run(&mut cmd));
    (
        stats["total"]["hits"].as_u64().unwrap(),
        stats["total"]["misses"].as_u64().unwrap(),
    )
}

fn fold(root: &Path) -> Child {
    warmcache(root)
        .args(["stats", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn killed_folds_lose_nothing_and_count_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    ok(warmcache(&root).arg("status"));
    let dir = root.join("v1/stats");
    let mut batches = 0;
    let mut rng = Rng::new(14);
    // Kills at spread-out moments: while reading, inside the transaction, during the commit, while
    // removing journals. A fold that completes is fine too.
    write_journals(&root, batches);
    batches += 1;
    for round in 0..10 {
        let mut child = fold(&root);
        std::thread::sleep(std::time::Duration::from_millis(rng.below(40) + round * 10));
        let _ = child.kill();
        child.wait().unwrap();
    }
    // Kills right after the commit, as soon as the first journal is removed: the others are
    // folded (their offsets committed) but still there, and must not count again.
    let mut mid_removal = 0;
    for _ in 0..3 {
        let first = dir.join(write_journals(&root, batches));
        batches += 1;
        let mut child = fold(&root);
        loop {
            if !first.exists() {
                let _ = child.kill();
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
        }
        child.wait().unwrap();
        let left = std::fs::read_dir(&dir).unwrap().count() as u64;
        if left > JOURNALS / 10 && left < JOURNALS {
            mid_removal += 1;
        }
    }
    assert!(mid_removal > 0, "no fold was killed while removing journals");
    let hits = batches * JOURNALS * LINES;
    let misses = batches * JOURNALS * (0..LINES).map(|i| i % 3).sum::<u64>();
    let recent_misses = batches * JOURNALS * (0..LINES).step_by(2).map(|i| i % 3).sum::<u64>();
    assert_eq!(
        totals(&root, None),
        (hits, misses),
        "{mid_removal} kill(s) mid-removal"
    );
    assert_eq!(
        totals(&root, None),
        (hits, misses),
        "a second look changed the counts"
    );
    assert_eq!(
        totals(&root, Some("1h")),
        (hits / 2, recent_misses),
        "the hourly buckets"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "journals folded in full by a finished fold are removed"
    );
}
