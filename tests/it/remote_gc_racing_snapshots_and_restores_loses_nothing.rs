//! Restores and snapshots racing the remote gc never lose an object they need (docs/DESIGN.md,
//! "Remote gc"): for about 20 seconds, one process after another snapshots a changing tree,
//! two loops restore it, and two loops run `gc --remote --keep 0 --grace 8s`, each as real
//! processes. Every snapshot and every restore succeeds, the gc does delete (so the race was
//! real), and the final pointer restores to the last tree.
//!
//! The grace (8 s) is several times longer than one restore or snapshot of this tree takes on
//! a loaded two-core machine (about 2 s at worst); that is the condition the protocol needs. A
//! gc that deletes what is unreachable at once fails this test within seconds: a restore that
//! read the previous pointer finds its archive gone.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};
use crate::support::{describe_tree, make_tree, run, stderr, warmcache_s3};

const KEY: &str = "race/tree";
const RUN_FOR: Duration = Duration::from_secs(20);
const GIVE_UP: Duration = Duration::from_secs(120);
const GRACE: &str = "8s";

fn gc(server: &TestS3, root: &Path) -> Output {
    let mut cmd = warmcache_s3(server, root);
    cmd.args([
        "gc",
        "--remote",
        &server.url(KEY),
        "--keep",
        "0",
        "--grace",
        GRACE,
        "--json",
    ]);
    run(&mut cmd)
}

/// A failed command, described for the assertion message.
fn failure(what: &str, out: &Output) -> String {
    format!(
        "{what} exited {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

#[test]
fn snapshots_and_restores_racing_remote_gc_never_lose_a_referenced_object() {
    let server = Arc::new(TestS3::start());
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let tree = make_tree(&base.join("tree"), 200, 2 * 1024, 13);
    std::fs::write(tree.join("counter.txt"), "0").unwrap();
    // Incompressible, so each snapshot uploads a few MiB.
    std::fs::write(
        tree.join("big.bin"),
        crate::support::Rng::new(5).bytes(4 * 1024 * 1024),
    )
    .unwrap();
    let first = snapshot(&server, &base.join("cache-s"), &tree, KEY, &["--strict"]);
    assert!(first.status.success(), "{}", failure("first snapshot", &first));

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (restores, deleted, snapshots) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let slowest = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    // The writer: a new tree content each time, so each snapshot uploads a new archive.
    {
        let (server, stop, failures, snapshots) =
            (server.clone(), stop.clone(), failures.clone(), snapshots.clone());
        let (tree, root) = (tree.clone(), base.join("cache-s"));
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                std::fs::write(tree.join("counter.txt"), i.to_string()).unwrap();
                std::fs::write(tree.join(format!("added-{}.txt", i % 3)), format!("{i}")).unwrap();
                let out = snapshot(&server, &root, &tree, KEY, &["--force", "--strict"]);
                if out.status.success() {
                    snapshots.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.lock().unwrap().push(failure("snapshot", &out));
                }
            }
        }));
    }
    for r in 0..2 {
        let (server, stop, failures, restores, slowest) = (
            server.clone(),
            stop.clone(),
            failures.clone(),
            restores.clone(),
            slowest.clone(),
        );
        let (dir, root): (PathBuf, PathBuf) = (
            base.join(format!("restored-{r}")),
            base.join(format!("cache-r{r}")),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // A large sparse file in DIR (costless on disk) makes the restore spend a while
                // hashing DIR after it read the pointer: time for the pointer to move on and
                // for the gc to run, before the restore asks for what that pointer named.
                if dir.is_dir() {
                    let junk = std::fs::File::create(dir.join("junk.bin")).unwrap();
                    junk.set_len(256 * 1024 * 1024).unwrap();
                }
                let t = Instant::now();
                let out = restore(&server, &root, &dir, KEY, &["--strict"]);
                slowest.fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
                if out.status.success() {
                    restores.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.lock().unwrap().push(failure("restore", &out));
                }
            }
        }));
    }
    for g in 0..2 {
        let (server, stop, failures, deleted) =
            (server.clone(), stop.clone(), failures.clone(), deleted.clone());
        let root = base.join(format!("cache-g{g}"));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = gc(&server, &root);
                match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    Ok(report) if out.status.success() => {
                        let n = report["deleted"].as_array().map_or(0, |d| d.len());
                        deleted.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    _ => failures.lock().unwrap().push(failure("gc", &out)),
                }
            }
        }));
    }

    // At least RUN_FOR, and on until the gc has deleted something (a loaded machine runs the
    // loops slowly), within a generous bound.
    let started = Instant::now();
    while (started.elapsed() < RUN_FOR || deleted.load(Ordering::SeqCst) == 0)
        && started.elapsed() < GIVE_UP
        && failures.lock().unwrap().is_empty()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    eprintln!(
        "{:?}: {} snapshots, {} restores (the slowest {} ms), {} objects deleted",
        started.elapsed(),
        snapshots.load(Ordering::SeqCst),
        restores.load(Ordering::SeqCst),
        slowest.load(Ordering::SeqCst),
        deleted.load(Ordering::SeqCst)
    );
    assert!(
        failures.is_empty(),
        "{} failure(s), first: {}",
        failures.len(),
        failures[0]
    );
    assert!(restores.load(Ordering::SeqCst) > 0, "no restore ran");
    assert!(snapshots.load(Ordering::SeqCst) > 1, "no snapshot ran");
    // The race was real: old snapshots were deleted while the others ran.
    assert!(
        deleted.load(Ordering::SeqCst) > 0,
        "the gc deleted nothing in {GIVE_UP:?}"
    );

    // The tree as last snapshotted is what the pointer restores.
    let dir = base.join("final");
    let out = restore(&server, &base.join("cache-final"), &dir, KEY, &["--strict"]);
    assert!(out.status.success(), "{}", failure("final restore", &out));
    assert_eq!(describe_tree(&dir), describe_tree(&tree));
}
