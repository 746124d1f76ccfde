//! A minimal work-sharing loop over a slice, for copying and hashing the files of a tree and for
//! stating the inputs of a fingerprint.
//!
//! Written by hand because it is twenty lines on `std::thread::scope`: a thread-pool crate would
//! add a dependency (and global state) for the one loop this crate needs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Below this many items the threads cost more than they save.
const SERIAL_BELOW: usize = 16;

/// How many threads to use: the processors this process may run on, at most 8. Asked once per
/// process, because asking reads the cgroup's CPU quota from files.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    })
}

/// Applies `f` to every item on up to [`threads`] threads (the caller's among them) and returns
/// the results in item order. Stops handing out work after the first error and returns it.
///
/// Items are claimed a few at a time, so that cheap items (a `stat` each) do not make the
/// threads fight over the counter, while a few large ones (a file to copy) still spread.
pub fn map<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    // The length first: asking for the thread count reads files, and a warm fingerprint maps
    // over no items at all.
    if items.len() < SERIAL_BELOW || threads() == 1 {
        return items.iter().map(&f).collect();
    }
    let threads = threads();
    let step = (items.len() / (threads * 16)).clamp(1, 64);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || {
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let first = next.fetch_add(step, Ordering::Relaxed);
            if first >= items.len() {
                break;
            }
            for (i, item) in items.iter().enumerate().skip(first).take(step) {
                match f(item) {
                    Ok(r) => done.push((i, r)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
        Ok(done)
    };
    let chunks: Vec<Result<Vec<(usize, R)>, E>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mine = work();
        std::iter::once(mine)
            .chain(
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            )
            .collect()
    });
    let mut all = Vec::with_capacity(items.len());
    for chunk in chunks {
        all.extend(chunk?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_reports_errors() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = super::map(&items, |x| Ok::<_, ()>(x * 2)).unwrap();
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let err = super::map(&items, |x| if *x == 500 { Err("boom") } else { Ok(*x) });
        assert_eq!(err, Err("boom"));
    }
}
