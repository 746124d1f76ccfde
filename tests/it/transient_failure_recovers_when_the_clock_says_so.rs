//! Problem 2 of docs/DESIGN.md, the pinned transient failure, and lease expiry, decided by an
//! injected clock instead of sleeps: a builder that fails transiently (no network, simulated) is
//! not rerun by a fresh `Cache` before its retry is due, and once the condition clears and the
//! clock passes the retry time, the next `ensure` builds and succeeds with no restart or manual
//! step; a lease protects its artifact from `gc` until the clock passes its end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use warmcache::build::{EntryConfig, Recipe};
use warmcache::cache::{EnsureError, GcOptions, ImportOptions};
use warmcache::clock::Clock;
use warmcache::progress::Progress;
use warmcache::{Cache, CacheOptions, EnsureOptions, EnsureStatus};

/// A clock the test moves by hand.
#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

/// A fresh `Cache` on `root` (as a new process would open it) reading `clock`.
fn open(root: &Path, clock: &Arc<ManualClock>) -> Cache {
    let options = CacheOptions {
        clock: clock.clone(),
        ..CacheOptions::default()
    };
    Cache::open_with(root, options).unwrap()
}

fn runs(counter: &Path) -> usize {
    std::fs::read_to_string(counter).map_or(0, |s| s.lines().count())
}

#[test]
fn transient_failure_is_retried_once_due_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let (counter, offline) = (tmp.path().join("runs"), tmp.path().join("offline"));
    std::fs::write(&offline, "").unwrap();
    std::fs::write(tmp.path().join("types.d.ts"), "declare const x: number").unwrap();
    let entry = EntryConfig {
        inputs: vec!["types.d.ts".into()],
        build: Some(format!(
            "echo run >> '{}'; if [ -e '{}' ]; then echo 'fetch failed: network unreachable' >&2; \
             exit 75; fi; cp types.d.ts \"$WARMCACHE_OUT\"",
            counter.display(),
            offline.display()
        )),
        backoff_initial: Some(Duration::from_secs(30)),
        backoff_cap: Some(Duration::from_secs(60)),
        ..EntryConfig::default()
    };
    let recipe = Recipe::new("types/bundle", &entry, tmp.path()).unwrap();
    let clock = Arc::new(ManualClock(AtomicI64::new(warmcache::clock::now_ms())));
    let ensure = || open(&root, &clock).ensure(&recipe, &EnsureOptions::default());

    let failed = ensure().unwrap_err();
    let EnsureError::BuildFailed { failure, .. } = &failed else {
        panic!("no artifact to serve: a failure, not {failed}");
    };
    assert_eq!(failure.kind.as_str(), "transient");
    assert!(failure.error_tail.contains("network unreachable"), "{failed}");
    let wait = failure.next_retry_at.unwrap() - clock.now_ms();
    assert!(wait > 0, "a retry time in the future");
    assert_eq!(runs(&counter), 1);

    // A millisecond before the retry is due: the recorded error, no build.
    clock.advance(Duration::from_millis(wait as u64 - 1));
    assert!(matches!(ensure(), Err(EnsureError::Blocked { .. })));
    assert_eq!(runs(&counter), 1, "not retried before next_retry_at");

    // The network comes back; once the retry is due, a fresh cache builds and succeeds.
    std::fs::remove_file(&offline).unwrap();
    clock.advance(Duration::from_millis(1));
    let built = ensure().unwrap();
    assert_eq!(built.status, EnsureStatus::Built);
    assert!(built.failure.is_none(), "success clears the failure");
    assert_eq!(runs(&counter), 2);
    assert_eq!(ensure().unwrap().status, EnsureStatus::Hit);
    assert_eq!(runs(&counter), 2);
}

#[test]
fn a_lease_protects_until_the_clock_passes_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("f");
    std::fs::write(&file, b"leased").unwrap();
    let clock = Arc::new(ManualClock(AtomicI64::new(warmcache::clock::now_ms())));
    let cache = open(&root, &clock);
    let imported = cache
        .import(&file, None, &ImportOptions::default(), &Progress::none())
        .unwrap();
    cache
        .lease(&imported.artifact, Duration::from_secs(600))
        .unwrap()
        .keep();
    let collect = || {
        let options = GcOptions {
            max_size: Some(0),
            ..GcOptions::default()
        };
        open(&root, &clock).gc(&options).unwrap()
    };

    clock.advance(Duration::from_secs(599));
    assert!(collect().removed.is_empty(), "leased for ten minutes");
    assert!(imported.path.exists());
    clock.advance(Duration::from_secs(2));
    let report = collect();
    assert_eq!(report.removed.len(), 1, "the lease has ended");
    assert!(!imported.path.exists());
}
