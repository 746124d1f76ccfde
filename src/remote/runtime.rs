//! The one tokio runtime of the process for remote operations, built on first use.
//!
//! Commands that never talk to the remote (a local `ensure` hit) never build it. Every
//! [`super::Remote`] shares it, so a restore, or a command that looks up many artifacts, runs
//! on two worker threads however many clients it makes. It lives until the process exits.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{EnterGuard, Runtime};

use super::error::RemoteError;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process's remote runtime, built now if it does not exist yet.
fn runtime() -> Result<&'static Runtime, RemoteError> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("warmcache-remote")
        .enable_all()
        .build()
        .map_err(|source| RemoteError::Runtime { source })?;
    if let Err(lost) = RUNTIME.set(built) {
        // Another thread built one at the same time; dropping a runtime may block (and panics in
        // an async context), shutting it down in the background never does.
        lost.shutdown_background();
    }
    RUNTIME.get().ok_or_else(|| RemoteError::Runtime {
        source: std::io::Error::other("the remote runtime vanished"),
    })
}

/// Drives `fut` to completion on the remote runtime.
pub(crate) fn block_on<F>(fut: F) -> Result<F::Output, RemoteError>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime()?;
    if tokio::runtime::Handle::try_current().is_ok() {
        // tokio panics on `block_on` inside an async context; a fresh thread has none.
        Ok(std::thread::scope(|scope| {
            match scope.spawn(|| runtime.block_on(fut)).join() {
                Ok(output) => output,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }))
    } else {
        Ok(runtime.block_on(fut))
    }
}

/// Enters the remote runtime, so that tasks spawned meanwhile run on it.
pub(crate) fn enter() -> Result<EnterGuard<'static>, RemoteError> {
    Ok(runtime()?.enter())
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_runtime_per_process() {
        let a = super::runtime().unwrap() as *const _;
        let b = std::thread::spawn(|| super::runtime().unwrap() as *const _ as usize)
            .join()
            .unwrap();
        assert_eq!(a as usize, b);
    }
}
