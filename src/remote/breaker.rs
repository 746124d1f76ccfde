//! The outage breaker: after repeated outage failures, stop paying a timeout on every call.
//!
//! One breaker exists per endpoint and bucket per process (a process-wide registry), so every
//! [`super::Remote`] built for the same place shares it: a CLI command that looks up many
//! artifacts pays for an outage a few times, not once per artifact. It also remembers a write
//! refused for lack of permission, so the process carries on read-only after one such refusal
//! (docs/DESIGN.md, "Read-only writers").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Shared failure count and open-until time for one endpoint and bucket.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    last_error: String,
    /// Why writes to this place are refused for the rest of the process (a write was denied).
    writes_denied: Option<String>,
}

/// Why a call was refused: the breaker is open.
#[derive(Debug, Clone)]
pub(crate) struct Open {
    pub remaining: Duration,
    pub failures: u32,
    pub last_error: String,
}

impl Breaker {
    /// The process-wide breaker for `key` (endpoint and bucket).
    pub(crate) fn for_key(key: &str) -> Arc<Breaker> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Breaker>>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(Default::default);
        let mut map = registry.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.to_owned()).or_default().clone()
    }

    /// Refuses the call while the breaker is open. Once the cool-down has passed, calls go
    /// through again ("half-open"); the first outage failure reopens it at once, because the
    /// failure count is only reset by a success.
    pub(crate) fn check(&self) -> Result<(), Open> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.open_until {
            Some(until) => {
                let now = Instant::now();
                if until > now {
                    Err(Open {
                        remaining: until - now,
                        failures: state.consecutive_failures,
                        last_error: state.last_error.clone(),
                    })
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// The server answered (any status that is not an outage): the remote is up.
    pub(crate) fn record_success(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.consecutive_failures = 0;
        state.open_until = None;
    }

    /// A write was refused for lack of permission: no more writes are attempted here by this
    /// process. `true` the first time, so the caller reports it once.
    pub(crate) fn deny_writes(&self, detail: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let first = state.writes_denied.is_none();
        if first {
            state.writes_denied = Some(detail.to_owned());
        }
        first
    }

    /// Why writes are refused here, when an earlier one was denied.
    pub(crate) fn writes_denied(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.writes_denied.clone()
    }

    /// An outage failure; opens the breaker for `cooldown` once `threshold` are consecutive.
    pub(crate) fn record_failure(&self, threshold: u32, cooldown: Duration, error: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.last_error = error.to_owned();
        if threshold > 0 && state.consecutive_failures >= threshold {
            state.open_until = Some(Instant::now() + cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_success() {
        let breaker = Breaker::default();
        let long = Duration::from_secs(3600);
        breaker.record_failure(2, long, "first");
        assert!(breaker.check().is_ok());
        breaker.record_failure(2, long, "second");
        let open = breaker.check().unwrap_err();
        assert_eq!(open.failures, 2);
        assert_eq!(open.last_error, "second");
        breaker.record_success();
        assert!(breaker.check().is_ok());
    }

    #[test]
    fn half_open_after_cooldown_and_reopens_on_next_failure() {
        let breaker = Breaker::default();
        breaker.record_failure(1, Duration::ZERO, "down");
        assert!(breaker.check().is_ok(), "a zero cool-down has already passed");
        breaker.record_failure(1, Duration::from_secs(3600), "still down");
        assert!(breaker.check().is_err());
    }

    #[test]
    fn registry_shares_one_breaker_per_key() {
        let a = Breaker::for_key("test-registry|bucket");
        let b = Breaker::for_key("test-registry|bucket");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &Breaker::for_key("test-registry|other")));
    }
}
