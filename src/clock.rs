//! The time the cache decides by: failure backoff, leases and access times all read one clock,
//! so that a test (or an embedding program) can move time instead of sleeping through it.

use std::fmt::Debug;
use std::sync::Arc;

/// A source of the current time in unix milliseconds.
pub trait Clock: Debug + Send + Sync {
    /// Now, in unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// The system clock behind an `Arc`, the form [`crate::CacheOptions`] holds.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// The current system time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
