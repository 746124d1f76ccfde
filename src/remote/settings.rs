//! Timeouts, retries, transfer sizes and connection overrides for a [`super::Remote`].

use std::time::Duration;

/// How a [`super::Remote`] talks to object storage, and how long it may take.
///
/// The endpoint, region and credentials follow the AWS conventions: `AWS_ENDPOINT_URL` (or
/// `AWS_ENDPOINT_URL_S3`), `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
/// `AWS_ROLE_ARN`), the container chains (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`,
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, as used by
/// ECS and EKS pod identity) and finally the instance metadata service. The fields of
/// [`S3Overrides`] win over the environment; tests use them to avoid touching global state.
///
/// Requests use path-style addressing (`{endpoint}/{bucket}/{key}`), which MinIO, Garage, Ceph,
/// R2 and s3s all accept; `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true` switches to virtual hosts. Plain
/// `http://` endpoints are allowed when the endpoint says so (or `AWS_ALLOW_HTTP=true`).
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Time allowed to open a TCP (and TLS) connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for one HTTP request, from connecting to the end of its body, so it must
    /// allow for one part ([`Self::part_size`]) at the slowest rate you accept. Default 60 s.
    pub request_timeout: Duration,
    /// A download that receives no bytes for this long is abandoned as stalled. Default 20 s.
    pub stall_timeout: Duration,
    /// Time allowed for one whole operation (a head, a download, an upload), retries
    /// included. Default 5 min.
    pub overall_timeout: Duration,
    /// Retries of a failed request (connection errors, timeouts, 5xx), with exponential
    /// backoff and jitter. Default 3.
    pub retries: usize,
    /// First retry delay; it doubles on each retry up to 5 s. Default 100 ms.
    pub retry_backoff: Duration,
    /// Consecutive outage failures (unreachable, timed out, stalled, 5xx) after which this
    /// process stops trying the remote for [`Self::breaker_cooldown`]. Default 3.
    pub breaker_threshold: u32,
    /// How long the breaker stays open. Default 60 s.
    pub breaker_cooldown: Duration,
    /// Size of a ranged download part and of an upload part (at least 5 MiB for S3 multipart).
    /// Default 8 MiB.
    pub part_size: usize,
    /// Parts in flight at once, per transfer. Memory use is about
    /// `(parallelism + 1) * part_size`. Default 4.
    pub parallelism: usize,
    /// Largest object [`super::Remote::get_bytes`] accepts. Default 16 MiB.
    pub max_small_object: u64,
    /// Connection settings that override the AWS environment.
    pub s3: S3Overrides,
    /// Never write to the remote (docs/DESIGN.md, "Read-only writers"): every write operation
    /// of the client (uploads, pointer updates, copies, deletes) fails with
    /// [`super::RemoteError::ReadOnly`] before any request is made; reads work as usual.
    /// Default false.
    pub read_only: bool,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(20),
            overall_timeout: Duration::from_secs(300),
            retries: 3,
            retry_backoff: Duration::from_millis(100),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(60),
            part_size: 8 * 1024 * 1024,
            parallelism: 4,
            max_small_object: 16 * 1024 * 1024,
            s3: S3Overrides::default(),
            read_only: false,
        }
    }
}

/// Explicit connection settings; each `Some` wins over the corresponding `AWS_*` variable.
#[derive(Clone, Default)]
pub struct S3Overrides {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` (like `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region (like `AWS_REGION`); object_store's default is `us-east-1`.
    pub region: Option<String>,
    /// Static access key id (like `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Static secret key (like `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials (like `AWS_SESSION_TOKEN`).
    pub session_token: Option<String>,
    /// Allow plain HTTP (like `AWS_ALLOW_HTTP`). `None`: allowed when the endpoint is `http://`.
    pub allow_http: Option<bool>,
}

impl std::fmt::Debug for S3Overrides {
    // Keeps secrets out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Overrides")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}
