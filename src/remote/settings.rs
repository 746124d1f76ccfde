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
///
/// `gs://` URLs follow Google's conventions instead (`GOOGLE_APPLICATION_CREDENTIALS`,
/// `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT_KEY`, the gcloud application default
/// credentials file, then the metadata server), overridden by [`GcsOverrides`]; `az://` URLs
/// follow Azure's (`AZURE_STORAGE_CONNECTION_STRING`, `AZURE_STORAGE_ACCOUNT_NAME` with
/// `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_TOKEN`, a service principal, workload or
/// managed identity, `AZURE_STORAGE_USE_EMULATOR`), overridden by [`AzureOverrides`]. The
/// timeouts and retries below apply to all three.
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
    /// Connection settings that override the AWS environment (`s3://` URLs).
    pub s3: S3Overrides,
    /// Connection settings that override the Google environment (`gs://` URLs).
    pub gcs: GcsOverrides,
    /// Connection settings that override the Azure environment (`az://` URLs).
    pub azure: AzureOverrides,
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
            gcs: GcsOverrides::default(),
            azure: AzureOverrides::default(),
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

/// Explicit Google Cloud Storage settings; each `Some` wins over the corresponding `GOOGLE_*`
/// variable. Tests point them at an emulator without touching the process environment.
#[derive(Clone, Default)]
pub struct GcsOverrides {
    /// The JSON/XML API base URL, e.g. `http://127.0.0.1:4443` for an emulator (like
    /// `GOOGLE_BASE_URL`, or `gcs_base_url` in a service-account file).
    pub base_url: Option<String>,
    /// A service-account key, as JSON (like `GOOGLE_SERVICE_ACCOUNT_KEY`). For an emulator,
    /// `{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}`
    /// sends no token: object_store's emulator switch (`GOOGLE_SKIP_SIGNATURE` is not enough,
    /// object_store 0.14 still fetches a token for uploads with it).
    pub service_account_key: Option<String>,
    /// Allow plain HTTP (like `GOOGLE_ALLOW_HTTP`). `None`: allowed when the base URL is
    /// `http://`.
    pub allow_http: Option<bool>,
}

impl std::fmt::Debug for GcsOverrides {
    // Keeps secrets out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsOverrides")
            .field("base_url", &self.base_url)
            .field(
                "service_account_key",
                &self.service_account_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Explicit Azure Blob Storage settings; each `Some` wins over the environment
/// (`AZURE_STORAGE_CONNECTION_STRING`, then the `AZURE_*` variables).
#[derive(Clone, Default)]
pub struct AzureOverrides {
    /// A connection string (like `AZURE_STORAGE_CONNECTION_STRING`), e.g.
    /// `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=...;EndpointSuffix=core.windows.net`
    /// or `BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;AccountName=...;AccountKey=...`.
    pub connection_string: Option<String>,
    /// The storage account (like `AZURE_STORAGE_ACCOUNT_NAME`).
    pub account: Option<String>,
    /// The blob service URL including the account where the service expects it, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1` for Azurite (like `AZURE_STORAGE_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The account's shared key, base64 (like `AZURE_STORAGE_ACCOUNT_KEY`).
    pub access_key: Option<String>,
    /// A shared access signature, the query string without `?` (like `AZURE_STORAGE_SAS_TOKEN`).
    pub sas_token: Option<String>,
    /// Allow plain HTTP (like `AZURE_ALLOW_HTTP`). `None`: allowed when the endpoint is
    /// `http://`.
    pub allow_http: Option<bool>,
}

impl std::fmt::Debug for AzureOverrides {
    // Keeps secrets out of logs and error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("AzureOverrides")
            .field("connection_string", &redacted(&self.connection_string))
            .field("account", &self.account)
            .field("endpoint", &self.endpoint)
            .field("access_key", &redacted(&self.access_key))
            .field("sas_token", &redacted(&self.sas_token))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}
