//! Hits from many processes at once are all counted, while other processes fold the journals
//! (docs/DESIGN.md, "Counting hits without writing"): each process appends to its own journal,
//! which holds its lock while it may still write, so a folder never removes a journal that can
//! still grow, and folds a live one only up to its last whole line. A long-lived library user
//! (a daemon) batches its hits in memory and writes them once a second and when dropped.

use std::path::Path;

use crate::support::*;

const WORKERS: usize = 6;
const HITS_EACH: usize = 15;

fn ensure(root: &Path, project: &Path) -> serde_json::Value {
    let mut cmd = warmcache(root);
    cmd.current_dir(project).args([
        "ensure",
        "e",
        "--input",
        "in.txt",
        "--build",
        "cat in.txt > \"$WARMCACHE_OUT\"",
        "--json",
    ]);
    json_ok(&run(&mut cmd))
}

#[test]
fn concurrent_hits_are_all_counted_while_others_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), "x").unwrap();
    assert_eq!(ensure(&root, &project)["status"], "built");
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut daemon_hits = 0u64;
    std::thread::scope(|s| {
        // A daemon: one `Cache`, hits for a few seconds (several batches), then dropped.
        let daemon = s.spawn(|| {
            let entry = warmcache::build::EntryConfig {
                inputs: vec!["in.txt".into()],
                build: Some("cat in.txt > \"$WARMCACHE_OUT\"".into()),
                ..warmcache::build::EntryConfig::default()
            };
            let recipe = warmcache::build::Recipe::new("e", &entry, &project).unwrap();
            let cache = warmcache::Cache::open(&root).unwrap();
            let start = std::time::Instant::now();
            let mut hits = 0;
            while start.elapsed() < std::time::Duration::from_millis(3500) {
                let got = cache
                    .ensure(&recipe, &warmcache::EnsureOptions::default())
                    .unwrap();
                assert_eq!(got.status, warmcache::EnsureStatus::Hit);
                hits += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            hits
        });
        let hitters: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..HITS_EACH {
                        assert_eq!(ensure(&root, &project)["status"], "hit");
                    }
                })
            })
            .collect();
        // Folders running all along, racing each other: `stats`, and imports (which fold when
        // they finish).
        for folder in 0..2 {
            let (root, done) = (&root, &done);
            let file = tmp.path().join(format!("f{folder}.txt"));
            s.spawn(move || {
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    json_ok(&run(warmcache(root).args(["stats", "--json"])));
                    std::fs::write(&file, format!("{folder} {i}")).unwrap();
                    ok(warmcache(root)
                        .arg("import")
                        .arg(&file)
                        .args(["--name", &format!("other{folder}")]));
                    i += 1;
                }
            });
        }
        for h in hitters {
            h.join().unwrap();
        }
        daemon_hits = daemon.join().unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let stats = json_ok(&run(warmcache(&root).args(["stats", "e", "--json"])));
    assert_eq!(
        stats["entries"][0]["hits"].as_u64().unwrap(),
        (WORKERS * HITS_EACH) as u64 + daemon_hits,
        "{stats}"
    );
    assert_eq!(stats["entries"][0]["misses"], 1, "{stats}");
}
