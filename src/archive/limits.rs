//! Limits that stop decompression bombs, and the shared counters that enforce them while
//! extraction streams (declared sizes can lie, so only bytes actually written count).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::LimitExceeded;
use crate::store::rule::Trust;

/// Bounds on what an extraction may produce.
///
/// The defaults are chosen so that a decompression bomb is stopped long before a disk fills:
/// - `max_total_bytes` (32 GiB) is well above the largest bundles a cold start restores (toolchains,
///   runtimes: a few GB) and still far below what a bomb claims (petabytes);
/// - `max_ratio` (100) with `ratio_grace_bytes` (256 MiB): real trees compress 2–10×; deflate
///   cannot exceed ~1030× and a bomb relies on that, so a bomb is stopped after 256 MiB, whatever
///   its claimed size, while any archive may expand to 256 MiB;
/// - `min_free_bytes` (default: the smaller of 512 MiB and 5% of the destination's volume, see
///   [`default_reserve`]): extraction stops before it would leave less than this free on the
///   destination's file system, so even an allowed archive never fills the disk and starves the
///   rest of the machine (zip's declared total is checked against it before anything is written).
///   Proportional so that a small volume (a 20 MB tmpfs) is not refused outright; settable with
///   `--min-free SIZE` and `[cache] min_free`;
/// - `max_entries` (1,000,000): a large `node_modules` has a few hundred thousand entries; a bomb
///   made of empty entries costs inodes and time, not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of file content an archive may expand to.
    pub max_total_bytes: u64,
    /// Most entries (files, directories, links) an archive may hold.
    pub max_entries: u64,
    /// Most times its own size an archive may expand to, once past `ratio_grace_bytes`.
    pub max_ratio: u64,
    /// Expanded bytes allowed whatever the ratio (small archives of very compressible data).
    pub ratio_grace_bytes: u64,
    /// Free space to leave on the destination's file system; `None` is [`default_reserve`] of
    /// the destination's volume, `Some(0)` turns the check off.
    pub min_free_bytes: Option<u64>,
    /// Whose archive this is: our own formats keep every symlink as written, an untrusted archive
    /// may hold only relative symlinks that stay inside (docs/DESIGN.md, "What one side writes, the other reads").
    pub trust: Trust,
}

/// The default free-space reserve: 5% of the volume, at most 512 MiB.
pub const RESERVE_PERCENT: u64 = 5;
/// The largest default free-space reserve.
pub const RESERVE_MAX: u64 = 512 << 20;

/// The default free-space reserve of a volume of `volume_bytes`: the smaller of
/// [`RESERVE_MAX`] and [`RESERVE_PERCENT`]% of the volume. A fixed 512 MiB would refuse a
/// 12-byte archive on a 20 MB volume; a share of the volume keeps the same protection on
/// large disks and stays usable on small ones.
pub fn default_reserve(volume_bytes: u64) -> u64 {
    (volume_bytes / 100)
        .saturating_mul(RESERVE_PERCENT)
        .min(RESERVE_MAX)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 32 << 30,
            max_entries: 1_000_000,
            max_ratio: 100,
            ratio_grace_bytes: 256 << 20,
            min_free_bytes: None,
            trust: Trust::Untrusted,
        }
    }
}

impl Limits {
    /// No limits at all (and the free-space check is off too); entries are still checked as
    /// for an untrusted archive.
    pub fn unlimited() -> Self {
        Self {
            max_total_bytes: u64::MAX,
            max_entries: u64::MAX,
            max_ratio: u64::MAX,
            ratio_grace_bytes: u64::MAX,
            min_free_bytes: Some(0),
            trust: Trust::Untrusted,
        }
    }
}

/// How far an extraction has got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Bytes of file content written so far.
    pub bytes: u64,
    /// Entries processed so far.
    pub entries: u64,
}

/// Report progress after this many more bytes ...
const REPORT_BYTES: u64 = 8 << 20;
/// ... or this many more entries.
const REPORT_ENTRIES: u64 = 500;

/// The running totals of one extraction, shared by its threads, checked against the limits on
/// every addition.
pub(crate) struct Budget<'a> {
    limits: &'a Limits,
    /// Expanded bytes allowed by the ratio limit.
    ratio_cap: u64,
    archive_bytes: u64,
    /// Space available at the destination when extraction started (`u64::MAX` if unknown).
    available: u64,
    /// The free space to keep at the destination.
    keep_free: u64,
    bytes: AtomicU64,
    entries: AtomicU64,
    reported_bytes: AtomicU64,
    reported_entries: AtomicU64,
    progress: &'a (dyn Fn(Progress) + Sync),
}

impl<'a> Budget<'a> {
    pub(crate) fn new(
        limits: &'a Limits,
        archive_bytes: u64,
        dest: &Path,
        progress: &'a (dyn Fn(Progress) + Sync),
    ) -> Self {
        let ratio_cap = archive_bytes
            .saturating_mul(limits.max_ratio)
            .max(limits.ratio_grace_bytes);
        let (available, keep_free) = match limits.min_free_bytes {
            Some(0) => (u64::MAX, 0),
            Some(keep) => (space(dest).0, keep),
            None => {
                let (available, volume) = space(dest);
                (available, default_reserve(volume))
            }
        };
        Self {
            limits,
            ratio_cap,
            archive_bytes,
            available,
            keep_free,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            reported_bytes: AtomicU64::new(0),
            reported_entries: AtomicU64::new(0),
            progress,
        }
    }

    /// Checks a total of expanded bytes against every byte limit.
    pub(crate) fn check_total(&self, total: u64) -> Result<(), LimitExceeded> {
        if total > self.limits.max_total_bytes {
            return Err(LimitExceeded::TotalBytes {
                max: self.limits.max_total_bytes,
            });
        }
        if total > self.ratio_cap {
            return Err(LimitExceeded::Ratio {
                max: self.limits.max_ratio,
                archive_bytes: self.archive_bytes,
            });
        }
        if self.available != u64::MAX && total.saturating_add(self.keep_free) > self.available {
            return Err(LimitExceeded::FreeSpace {
                available: self.available,
                keep_free: self.keep_free,
            });
        }
        Ok(())
    }

    /// Counts `n` more expanded bytes (before they are written) and checks the limits.
    pub(crate) fn add_bytes(&self, n: u64) -> Result<(), LimitExceeded> {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        self.check_total(total)?;
        if total.saturating_sub(self.reported_bytes.load(Ordering::Relaxed)) >= REPORT_BYTES {
            self.report();
        }
        Ok(())
    }

    /// Counts one more entry and checks the limit.
    pub(crate) fn add_entry(&self) -> Result<(), LimitExceeded> {
        let entries = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if entries > self.limits.max_entries {
            return Err(LimitExceeded::Entries {
                max: self.limits.max_entries,
            });
        }
        if entries.saturating_sub(self.reported_entries.load(Ordering::Relaxed)) >= REPORT_ENTRIES {
            self.report();
        }
        Ok(())
    }

    /// Checks a declared entry count up front (zip knows it before extracting anything).
    pub(crate) fn check_entries(&self, entries: u64) -> Result<(), LimitExceeded> {
        if entries > self.limits.max_entries {
            return Err(LimitExceeded::Entries {
                max: self.limits.max_entries,
            });
        }
        Ok(())
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Calls the progress callback with the current totals.
    pub(crate) fn report(&self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let entries = self.entries.load(Ordering::Relaxed);
        self.reported_bytes.store(bytes, Ordering::Relaxed);
        self.reported_entries.store(entries, Ordering::Relaxed);
        (self.progress)(Progress { bytes, entries });
    }
}

/// Bytes available to an unprivileged writer on the file system holding `path`, and the size of
/// that file system; `u64::MAX` for both when the platform cannot tell (then only the other
/// limits apply).
pub(crate) fn space(path: &Path) -> (u64, u64) {
    #[cfg(unix)]
    {
        match rustix::fs::statvfs(path) {
            Ok(st) => (
                st.f_bavail.saturating_mul(st.f_frsize),
                st.f_blocks.saturating_mul(st.f_frsize),
            ),
            Err(_) => (u64::MAX, u64::MAX),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        (u64::MAX, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_applies_only_past_the_grace_amount() {
        let limits = Limits {
            max_ratio: 10,
            ratio_grace_bytes: 1000,
            min_free_bytes: Some(0),
            ..Limits::default()
        };
        let progress = |_: Progress| {};
        let budget = Budget::new(&limits, 50, Path::new("/"), &progress);
        assert!(budget.check_total(1000).is_ok(), "within the grace amount");
        assert!(matches!(
            budget.check_total(1001),
            Err(LimitExceeded::Ratio { .. })
        ));
        let big = Budget::new(&limits, 500, Path::new("/"), &progress);
        assert!(big.check_total(5000).is_ok());
        assert!(big.check_total(5001).is_err());
    }

    #[test]
    fn bytes_are_counted_as_they_stream() {
        let limits = Limits {
            max_total_bytes: 100,
            min_free_bytes: Some(0),
            ..Limits::default()
        };
        let progress = |_: Progress| {};
        let budget = Budget::new(&limits, 1 << 30, Path::new("/"), &progress);
        budget.add_bytes(60).unwrap();
        budget.add_bytes(40).unwrap();
        assert_eq!(budget.add_bytes(1), Err(LimitExceeded::TotalBytes { max: 100 }));
    }

    #[test]
    fn the_default_reserve_is_proportional_up_to_512_mib() {
        assert_eq!(default_reserve(20_000_000), 1_000_000);
        assert_eq!(default_reserve(1 << 40), RESERVE_MAX);
        assert_eq!(default_reserve(0), 0);
    }
}
