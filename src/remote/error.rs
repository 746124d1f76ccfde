//! What can go wrong talking to object storage, in words a user can act on.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};

use super::url::UrlError;

/// An error from the remote tier. Every message names the object (`s3://bucket/key`) and the
/// operation. [`RemoteError::is_outage`] tells an unavailable remote (which callers treat as
/// "run cold, warn loudly") from a problem with the request or the data.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote URL could not be parsed.
    #[error(transparent)]
    Url(#[from] UrlError),

    /// An object key that object storage would not round-trip.
    #[error("invalid object key `{key}`: {reason}; use `/`-separated segments without `.`, `..` or `//`")]
    BadKey { key: String, reason: String },

    /// The client could not be built from the settings and the cloud's environment; `hint`
    /// names the variables to check for that cloud.
    #[error("cannot configure the object store client for {target}: {detail}; {hint}")]
    Config {
        target: String,
        detail: String,
        hint: &'static str,
    },

    /// The runtime that drives the transfers could not be started.
    #[error("cannot start the remote transfer runtime: {source}")]
    Runtime { source: io::Error },

    /// No object at that key.
    #[error("{target}: no such object")]
    NotFound { target: String },

    /// Could not connect, or the connection broke.
    #[error("{target}: {op} failed: endpoint unreachable: {detail}")]
    Unreachable {
        target: String,
        op: &'static str,
        detail: String,
    },

    /// A request or the whole operation took longer than its timeout.
    #[error("{target}: {op} timed out: {detail}")]
    TimedOut {
        target: String,
        op: &'static str,
        detail: String,
    },

    /// A download stopped receiving bytes.
    #[error(
        "{target}: download stalled: no bytes for {after:?} ({received} of {total} bytes received); \
         raise the stall timeout if the link is this slow"
    )]
    Stalled {
        target: String,
        after: Duration,
        received: u64,
        total: u64,
    },

    /// The server answered with an HTTP error status.
    #[error("{target}: {op} failed: HTTP {status}: {detail}")]
    Status {
        target: String,
        op: &'static str,
        status: u16,
        detail: String,
    },

    /// Credentials missing, wrong or not allowed to do this.
    #[error("{target}: {op} refused: access denied or bad credentials: {detail}")]
    Denied {
        target: String,
        op: &'static str,
        detail: String,
    },

    /// The store does not support an operation we need (e.g. conditional put disabled).
    #[error("{target}: {op} is not supported by this store: {detail}")]
    Unsupported {
        target: String,
        op: &'static str,
        detail: String,
    },

    /// The downloaded bytes do not have the expected digest; they were discarded.
    #[error(
        "{target}: content digest mismatch: expected blake3 {expected}, got {actual}; the download \
         was discarded"
    )]
    DigestMismatch {
        target: String,
        expected: String,
        actual: String,
    },

    /// Fewer (or more) bytes arrived than the object's size.
    #[error("{target}: truncated download: expected {expected} bytes, received {received}")]
    Truncated {
        target: String,
        expected: u64,
        received: u64,
    },

    /// The object is not the size its description (a snapshot manifest) gives: it was replaced
    /// or damaged. Nothing was downloaded.
    #[error(
        "{target}: the object is {actual} bytes, but {expected} were expected (replaced or damaged \
         since it was described); nothing was downloaded"
    )]
    SizeMismatch {
        target: String,
        expected: u64,
        actual: u64,
    },

    /// [`super::Remote::get_bytes`] was asked for an object too large to hold in memory.
    #[error("{target}: object is {size} bytes, larger than the {limit}-byte limit for small objects")]
    TooLarge { target: String, size: u64, limit: u64 },

    /// The outage breaker is open: recent calls failed, so this one was not attempted.
    #[error(
        "{target}: not contacting the remote for another {}s after {failures} consecutive failures \
         (last: {last_error})",
        .remaining.as_secs_f64().ceil()
    )]
    CoolingDown {
        target: String,
        remaining: Duration,
        failures: u32,
        last_error: String,
    },

    /// A local file could not be read or written (the io error names the path).
    #[error("{target}: {op} failed: {source}")]
    Io {
        target: String,
        op: &'static str,
        source: io::Error,
    },

    /// A write that was not made: the remote is read-only for this process, because it was
    /// configured so ([`super::RemoteSettings::read_only`]) or because an earlier write to the
    /// bucket was refused for lack of permission (docs/DESIGN.md, "Read-only writers").
    #[error("{target}: {op} not done: {reason}")]
    ReadOnly {
        target: String,
        op: &'static str,
        reason: String,
    },

    /// Anything else the store reported.
    #[error("{target}: {op} failed: {detail}")]
    Other {
        target: String,
        op: &'static str,
        detail: String,
    },
}

impl RemoteError {
    /// Whether this error means the remote is unavailable (unreachable, timed out, stalled,
    /// throttled, 5xx, or cooling down after such failures). These count towards the breaker.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::TimedOut { .. }
            | Self::Stalled { .. }
            | Self::CoolingDown { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether a write was not made because the remote is read-only for this process.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Self::ReadOnly { .. })
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Translates an `object_store` error for `target` during `op`.
    pub(crate) fn from_store(err: object_store::Error, target: &str, op: &'static str) -> Self {
        let target = target.to_owned();
        let detail = err.to_string();
        match &err {
            object_store::Error::NotFound { .. } => return Self::NotFound { target },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                return Self::Denied { target, op, detail };
            }
            object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
                return Self::Unsupported { target, op, detail };
            }
            _ => {}
        }
        if let Some(kind) = http_error_kind(&err) {
            return match kind {
                HttpErrorKind::Timeout => Self::TimedOut { target, op, detail },
                HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Interrupted => {
                    Self::Unreachable { target, op, detail }
                }
                _ => Self::Other { target, op, detail },
            };
        }
        match status_in(&detail) {
            Some(status) => Self::Status {
                target,
                op,
                status,
                detail,
            },
            None => Self::Other { target, op, detail },
        }
    }
}

/// The transport failure kind, if the error chain holds one.
fn http_error_kind(err: &(dyn StdError + 'static)) -> Option<HttpErrorKind> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Some(http.kind());
        }
        current = e.source();
    }
    None
}

/// The HTTP status in an `object_store` error message.
///
/// object_store 0.14 keeps the status of a failed request in a crate-private type
/// (`RetryError::status`), so the only public trace of it is its message,
/// "... status code: 503 Service Unavailable: ...". Parsing that is brittle, so a miss only
/// loses precision: the error is then reported as `Other` with the full message.
fn status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_status_in_object_store_messages() {
        let message = "Generic S3 error: Error performing GET http://x/b/k in 1ms, after 2 retries - \
                       Server returned non-2xx status code: 503 Service Unavailable: <Error/>";
        assert_eq!(status_in(message), Some(503));
        assert_eq!(status_in("no status here"), None);
    }

    #[test]
    fn outage_classification() {
        let status = |status| RemoteError::Status {
            target: "s3://b/k".into(),
            op: "download",
            status,
            detail: String::new(),
        };
        assert!(status(500).is_outage());
        assert!(status(429).is_outage());
        assert!(!status(400).is_outage());
        assert!(
            !RemoteError::NotFound {
                target: "s3://b/k".into()
            }
            .is_outage()
        );
    }
}
