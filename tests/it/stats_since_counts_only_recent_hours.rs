//! `stats --since DUR` counts only the hourly buckets from DUR ago (rounded down to the hour);
//! hourly rows older than the retention (31 days) are merged into the totals, which stay exact,
//! and a window longer than the retention is refused with what to ask instead (docs/DESIGN.md,
//! "Counting hits without writing").

use std::path::Path;

use crate::support::*;

const HOUR: i64 = 3_600_000;

/// A journal as a finished process leaves it, with hits `hours_ago` hours back.
fn journal(root: &Path, name: &str, lines: &[(i64, u64)]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let this_hour = now / HOUR * HOUR;
    let text: String = lines
        .iter()
        .map(|(hours_ago, hits)| {
            format!(
                "{{\"hour\":{},\"entry\":\"e\",\"hits\":{hits}}}\n",
                this_hour - hours_ago * HOUR
            )
        })
        .collect();
    let dir = root.join("v1/stats");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

fn hits(root: &Path, since: Option<&str>) -> u64 {
    let mut cmd = warmcache(root);
    cmd.args(["stats", "--json"]);
    if let Some(since) = since {
        cmd.args(["--since", since]);
    }
    json_ok(&run(&mut cmd))["total"]["hits"].as_u64().unwrap()
}

#[test]
fn since_counts_recent_buckets_and_old_ones_stay_in_the_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    ok(warmcache(&root).arg("status"));
    // Now, 3 hours ago, 2 days ago, 40 days ago (beyond the retention).
    journal(
        &root,
        "1-0000000000000001.journal",
        &[(0, 1), (3, 10), (48, 100), (40 * 24, 1000)],
    );
    assert_eq!(hits(&root, None), 1111);
    assert_eq!(hits(&root, Some("30m")), 1, "this hour only");
    assert_eq!(hits(&root, Some("1h")), 1, "the hour before has nothing");
    assert_eq!(hits(&root, Some("4h")), 11);
    assert_eq!(hits(&root, Some("3d")), 111);
    assert_eq!(
        hits(&root, Some("31d")),
        111,
        "the 40-day-old hits are only in the totals"
    );
    // Before folding, the same answers from the journals (a second one, not folded yet).
    journal(&root, "1-0000000000000002.journal", &[(3, 10)]);
    assert_eq!(hits(&root, Some("4h")), 21);
    assert_eq!(hits(&root, None), 1121);
    let out = run(warmcache(&root).args(["stats", "--since", "32d"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("31 days") && err.contains("at most 31d"), "{err}");
}
