//! A standing size budget (`WARMCACHE_MAX_SIZE`) makes commands that write start a collection
//! in the background, at most once per interval, until the cache fits.

use std::time::{Duration, Instant};

use crate::support::*;

fn total_artifact_bytes(root: &std::path::Path) -> u64 {
    artifact_ids(root)
        .iter()
        .map(|id| {
            std::fs::metadata(root.join("v1/objects").join(&id[..2]).join(id).join("content"))
                .unwrap()
                .len()
        })
        .sum()
}

#[test]
fn writes_trigger_background_collection_down_to_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    for i in 0..4 {
        let f = tmp.path().join(format!("f{i}"));
        std::fs::write(&f, Rng::new(i).bytes(1 << 20)).unwrap();
        ok(warmcache(&root)
            .env("WARMCACHE_MAX_SIZE", "1.5M")
            .env("WARMCACHE_GC_INTERVAL", "0s")
            .arg("import")
            .arg(&f));
    }
    // The last import saw four artifacts over a 1.5 MiB budget and started a collection.
    let deadline = Instant::now() + Duration::from_secs(20);
    while total_artifact_bytes(&root) > 3 << 19 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        total_artifact_bytes(&root) <= 3 << 19,
        "the background collection did not meet the budget"
    );
}

#[test]
fn no_collection_without_a_budget_or_within_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    for i in 0..3 {
        let f = tmp.path().join(format!("f{i}"));
        std::fs::write(&f, Rng::new(i).bytes(1 << 20)).unwrap();
        ok(warmcache(&root).arg("import").arg(&f));
    }
    // Mark a collection as just run: with a one-hour interval nothing starts.
    let db = rusqlite::Connection::open(root.join("v1/catalog.sqlite")).unwrap();
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_gc_at', ?1)",
        [warmcache::clock::now_ms().to_string()],
    )
    .unwrap();
    drop(db);
    let f = tmp.path().join("f9");
    std::fs::write(&f, b"small").unwrap();
    ok(warmcache(&root)
        .env("WARMCACHE_MAX_SIZE", "1M")
        .env("WARMCACHE_GC_INTERVAL", "1h")
        .arg("import")
        .arg(&f));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        artifact_ids(&root).len(),
        4,
        "no collection may run within the interval"
    );
}
