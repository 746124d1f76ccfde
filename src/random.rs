//! Unpredictable bytes, for tokens that must not collide between processes and for backoff
//! jitter. Hand-written because two callers need 16 bytes, which is no reason for a crate: the
//! kernel's `getrandom` where there is one, else BLAKE3 of what differs between two calls (the
//! time, the process, a counter), which decorrelates processes but is not for cryptography.

use std::sync::atomic::{AtomicU64, Ordering};

/// `N` (at most 32) unpredictable bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrandom writes at most `out.len()` bytes into the buffer.
        let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), out.len(), 0) };
        if usize::try_from(n) == Ok(out.len()) {
            return out;
        }
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = hasher.finalize();
    let len = N.min(32);
    out[..len].copy_from_slice(&digest.as_bytes()[..len]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_calls_differ() {
        assert_ne!(super::bytes::<16>(), super::bytes::<16>());
    }
}
