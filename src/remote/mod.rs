//! The remote tier's transport: S3-compatible object storage, Google Cloud Storage and Azure Blob
//! Storage through `object_store`.
//!
//! docs/DESIGN.md, "Remote is advisory": with a remote configured and unreachable, slow or corrupt,
//! every command still does its local job within its timeout. This module supplies the pieces
//! that make that possible; snapshots, restores and artifact sharing are composed on top.
//!
//! - [`RemoteUrl`]: `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix` as a
//!   user types it.
//! - [`RemoteSettings`]: timeouts (connect, per request, stall, overall), retries, the outage
//!   breaker, part sizes; endpoint and credentials follow each cloud's environment conventions
//!   (`backends` builds the client).
//! - [`Remote`]: a synchronous client for one bucket, built without any I/O; the process's one
//!   tokio runtime is built on the first operation. Every operation is bounded in time (one
//!   mechanism: the overall timeout, capped by [`Remote::with_deadline`]) and
//!   returns a [`RemoteError`] that names the object and what happened. Downloads are ranged
//!   and parallel, bounded in memory, and verified against a BLAKE3 digest when one is given;
//!   uploads never overwrite; [`Remote::put_if`] is the compare-and-swap for pointer objects.
//! - The outage breaker: after [`RemoteSettings::breaker_threshold`] consecutive outage
//!   failures, calls fail fast with [`RemoteError::CoolingDown`] for the cool-down period.
//! - [`snapshot`]: directory snapshots (a tar.zst per tree, a pointer replaced by conditional
//!   put) and their atomic restore.

mod backends;
mod breaker;
mod client;
mod error;
mod list;
mod runtime;
mod settings;
pub mod share;
pub mod snapshot;
mod transfer;
mod upload;
mod url;

pub use client::{CondPut, GetReport, NoProgress, ObjectMeta, ObjectVersion, Progress, PutOutcome, Remote};
pub use error::RemoteError;
pub use settings::{AzureOverrides, GcsOverrides, RemoteSettings, S3Overrides};
pub use upload::RemoteWriter;
pub use url::{Provider, RemoteUrl, UrlError};
