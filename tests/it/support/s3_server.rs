//! The storage server of the remote tests: the backend `WARMCACHE_TEST_BACKEND` selects
//! ([`super::backend`]; by default `s3s` over `s3s-fs` in a temporary directory, in this
//! process), behind a loopback reverse proxy on 127.0.0.1 with an ephemeral port that injects
//! faults the tests switch on and off at runtime (on `gcs`, in front of the translating proxy of
//! [`super::gcs_proxy`], which is in front of fake-gcs-server). Clients (the library, child
//! `warmcache` processes) only ever see the fault proxy, so every fault test runs on every
//! backend:
//!
//! - down: the listening socket is closed and open connections are dropped (connection refused);
//! - stall: GET responses send their headers and a little of the body, then nothing;
//! - fail next N: the next N requests get `500 InternalError`;
//! - corrupt: GET bodies have bytes flipped (same length, different content);
//! - die after N bytes: once GET bodies have sent N bytes in all, the body being sent is cut
//!   off and every later request is dropped without an answer, as when a server dies.
//! - fail parts: every multipart part upload gets `500 InternalError` (the upload started, and
//!   fails midway).
//! - deny writes: every PUT, POST and DELETE gets `403 AccessDenied` (credentials that may read
//!   the bucket but not write it); [`TestS3::write_attempts`] counts the writes it saw.
//!
//! It counts the body bytes it received in PUTs and POSTs ([`TestS3::bytes_uploaded`]) and sent
//! in successful GETs ([`TestS3::bytes_downloaded`]), from their `Content-Length`, so tests can
//! say what moved on the server's side.
//!
//! Each test gets a fresh bucket ([`TestS3::bucket`]; on `s3s` always [`BUCKET`]). Tests look at
//! and alter what the server holds through [`TestS3::get_object`], [`TestS3::put_object`],
//! [`TestS3::delete_object`] and [`TestS3::list_objects`], which talk to the backend directly
//! (past the faults and the counters) with the library's own client.
//!
//! It sets no environment variables: tests pass [`TestS3::settings`] to the client, or
//! [`TestS3::env`] to a child process.
//!
//! s3s-fs 0.14 checks `If-None-Match: *` and `If-Match` on PutObject, but checks and writes
//! in separate steps, so two concurrent conditional puts can both pass the check. Real S3,
//! MinIO and R2 apply the precondition atomically; the in-process backend does the same by
//! running conditional PUTs one at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use object_store::ClientConfigKey;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s::stream::{ByteStream, DynByteStream};
use s3s::{Body, HttpError, StdError};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use warmcache::remote::{AzureOverrides, GcsOverrides, Remote, RemoteSettings, RemoteUrl, S3Overrides};

use super::backend::{self, Kind};
use super::gcs_proxy::{GcsProxy, NO_OAUTH_KEY};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "WARMCACHETESTKEY";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "warmcache-test-secret-key";
/// The bucket of the in-process backend. Tests name the bucket of the backend they run on with
/// [`TestS3::bucket`] or [`TestS3::url`].
pub const BUCKET: &str = "warmcache-test";
/// Bytes a stalled GET sends before it stops.
pub const STALL_AFTER: usize = 64 * 1024;

/// A running test server; stopped when dropped.
pub struct TestS3 {
    runtime: Option<Runtime>,
    addr: SocketAddr,
    kind: Kind,
    bucket: String,
    /// `http://127.0.0.1:PORT` of the backend itself (behind the proxy).
    upstream: String,
    client: Client<HttpConnector, Incoming>,
    faults: Arc<Faults>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The in-process backend's files (`s3s` only).
    root: Option<tempfile::TempDir>,
    /// The translating proxy between the fault proxy and fake-gcs-server (`gcs` only).
    _gcs_proxy: Option<GcsProxy>,
}

#[derive(Default)]
struct Faults {
    stall: AtomicBool,
    corrupt: AtomicBool,
    fail_next: AtomicUsize,
    /// GET body bytes after which the server dies (0: never).
    die_after: AtomicUsize,
    /// GET body bytes sent while `die_after` is set.
    sent: AtomicUsize,
    dead: AtomicBool,
    fail_parts: AtomicBool,
    deny_writes: AtomicBool,
    requests: AtomicUsize,
    /// Multipart part uploads received (failed or not).
    parts: AtomicUsize,
    /// PUT, POST and DELETE requests received (denied or not).
    writes: AtomicUsize,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
}

impl TestS3 {
    /// Starts the selected backend (see [`super::backend`]) with one empty bucket, and the
    /// fault-injecting proxy in front of it.
    pub fn start() -> Self {
        let kind = Kind::selected();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-s3")
            .enable_all()
            .build()
            .unwrap();
        let mut gcs_proxy = None;
        let (upstream, bucket, root) = match kind {
            Kind::S3s => {
                let root = tempfile::tempdir().unwrap();
                std::fs::create_dir(root.path().join(BUCKET)).unwrap();
                let upstream = runtime.block_on(serve_s3s(root.path()));
                (upstream, BUCKET.to_owned(), Some(root))
            }
            Kind::Moto => {
                let moto = backend::moto();
                let bucket = moto.fresh_bucket(backend::create_s3_bucket);
                (moto.endpoint.clone(), bucket, None)
            }
            Kind::Azurite => {
                let azurite = backend::azurite();
                let bucket = azurite.fresh_bucket(backend::create_azure_container);
                (azurite.endpoint.clone(), bucket, None)
            }
            // The emulator serves the XML API's reads only: the translating proxy in front of it
            // does the writes (see `gcs_proxy`). One per test, so the multipart uploads it
            // holds in memory end with the test.
            Kind::Gcs => {
                let gcs = backend::fake_gcs();
                let bucket = gcs.fresh_bucket(backend::create_gcs_bucket);
                let emulator = gcs.endpoint.trim_start_matches("http://").parse().unwrap();
                let proxy = GcsProxy::start(emulator);
                let upstream = proxy.base_url();
                gcs_proxy = Some(proxy);
                (upstream, bucket, None)
            }
        };
        let listener = runtime.block_on(bind("127.0.0.1:0".parse().unwrap()));
        let addr = listener.local_addr().unwrap();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        let server = Self {
            runtime: Some(runtime),
            addr,
            kind,
            bucket,
            upstream,
            client,
            faults: Arc::default(),
            accept: Mutex::new(None),
            connections: Arc::default(),
            root,
            _gcs_proxy: gcs_proxy,
        };
        server.serve(listener);
        server
    }

    /// The backend this server runs on.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// This test's bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `http://127.0.0.1:PORT` (the proxy).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `s3://BUCKET/key` (`az://CONTAINER/key` on Azurite, `gs://BUCKET/key` on GCS).
    pub fn url(&self, key: &str) -> String {
        format!("{}://{}/{key}", self.kind.scheme(), self.bucket)
    }

    /// Connection settings for this server (endpoint, region, static keys, plain HTTP).
    #[allow(dead_code)] // kept for tests that build their own S3 client
    pub fn overrides(&self) -> S3Overrides {
        overrides(self.endpoint())
    }

    /// Client settings with short timeouts and small parts, for fast tests (and the emulator's
    /// account on Azurite).
    pub fn settings(&self) -> RemoteSettings {
        settings(self.kind, &self.endpoint())
    }

    /// The same connection settings as environment variables, for a child process: the AWS
    /// ones (an Azure connection string on Azurite).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        if self.kind == Kind::Azurite {
            let connection = format!(
                "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
                backend::AZURITE_ACCOUNT,
                backend::AZURITE_KEY,
                azurite_endpoint(&self.endpoint())
            );
            return vec![("AZURE_STORAGE_CONNECTION_STRING", connection)];
        }
        if self.kind == Kind::Gcs {
            return vec![
                ("GOOGLE_BASE_URL", self.endpoint()),
                // Not GOOGLE_SKIP_SIGNATURE: with it the client still asks the cloud metadata
                // server (a link-local address) for a token; this key sends none.
                ("GOOGLE_SERVICE_ACCOUNT_KEY", NO_OAUTH_KEY.to_owned()),
                ("GOOGLE_ALLOW_HTTP", "true".to_owned()),
            ];
        }
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// Where s3s-fs keeps the object `key` on disk. Only the in-process backend has files:
    /// tests that run on every backend use [`TestS3::get_object`] and its siblings.
    pub fn object_path(&self, key: &str) -> PathBuf {
        let Some(root) = &self.root else {
            panic!(
                "object_path: the {} backend keeps no files; use get_object/put_object/list_objects",
                self.kind.name()
            )
        };
        root.path().join(BUCKET).join(key)
    }

    /// The library's client for this test's bucket, talking to the backend directly: past the
    /// faults and the counters, so a test's look at the server changes nothing it measures.
    pub fn admin(&self) -> Remote {
        let url = RemoteUrl::parse(&format!("{}://{}", self.kind.scheme(), self.bucket)).unwrap();
        let mut settings = settings(self.kind, &self.upstream);
        settings.retries = 5;
        settings.max_small_object = u64::MAX;
        Remote::new(&url, settings).unwrap()
    }

    /// `object_store`'s client for this test's bucket, talking to the backend directly (as
    /// [`TestS3::admin`]), for what the library's client does not do by design: list a whole
    /// bucket, overwrite an object.
    fn store(&self) -> Box<dyn ObjectStore> {
        if self.kind == Kind::Azurite {
            let store = MicrosoftAzureBuilder::new()
                .with_account(backend::AZURITE_ACCOUNT)
                .with_access_key(backend::AZURITE_KEY)
                .with_container_name(&self.bucket)
                .with_endpoint(azurite_endpoint(&self.upstream))
                .with_allow_http(true)
                .build()
                .unwrap();
            return Box::new(store);
        }
        if self.kind == Kind::Gcs {
            let store = GoogleCloudStorageBuilder::new()
                .with_bucket_name(&self.bucket)
                .with_base_url(&self.upstream)
                .with_service_account_key(NO_OAUTH_KEY)
                .with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true")
                .build()
                .unwrap();
            return Box::new(store);
        }
        let store = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.upstream)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .unwrap();
        Box::new(store)
    }

    /// The bytes of object `key`, if it exists.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let bytes = self
            .admin()
            .get_bytes(key)
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        bytes.map(|b| b.to_vec())
    }

    /// Writes object `key` (replacing it, if it exists).
    pub fn put_object(&self, key: &str, bytes: &[u8]) {
        let store = self.store();
        let payload = PutPayload::from(bytes.to_vec());
        self.rt()
            .block_on(store.put(&ObjectPath::from(key), payload))
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// Deletes object `key` (nothing if it does not exist).
    pub fn delete_object(&self, key: &str) {
        self.admin()
            .delete(key)
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    /// Every object whose key starts with `prefix/` (the whole bucket for `""`), with its size.
    pub fn list_objects(&self, prefix: &str) -> BTreeMap<String, u64> {
        let store = self.store();
        let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let objects: Vec<_> = self
            .rt()
            .block_on(store.list(prefix.as_ref()).try_collect())
            .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"));
        objects
            .into_iter()
            .map(|o| (o.location.to_string(), o.size))
            .collect()
    }

    /// The size of object `key`, if it exists.
    pub fn object_size(&self, key: &str) -> Option<u64> {
        let meta = self
            .admin()
            .head(key)
            .unwrap_or_else(|e| panic!("head {key}: {e}"));
        meta.map(|m| m.size)
    }

    /// Multipart part uploads received so far, in each protocol's form (see
    /// [`TestS3::fail_part_uploads`]), including failed ones.
    pub fn part_uploads(&self) -> usize {
        self.faults.parts.load(Ordering::SeqCst)
    }

    /// Requests received so far (including injected failures).
    pub fn requests(&self) -> usize {
        self.faults.requests.load(Ordering::SeqCst)
    }
    /// Closes the port and drops open connections (`true`), or listens again (`false`).
    pub fn set_down(&self, down: bool) {
        let mut accept = self.accept.lock().unwrap();
        if down {
            let mut handles: Vec<JoinHandle<()>> = accept.take().into_iter().collect();
            handles.append(&mut self.connections.lock().unwrap());
            for handle in &handles {
                handle.abort();
            }
            // Wait until the tasks are gone, so their sockets are closed when this returns.
            self.rt().block_on(async {
                for handle in handles {
                    let _ = handle.await;
                }
            });
        } else if accept.is_none() {
            drop(accept);
            let listener = self.rt().block_on(bind(self.addr));
            self.serve(listener);
        }
    }

    /// Makes GET bodies stop after [`STALL_AFTER`] bytes (headers are sent normally).
    pub fn set_stall(&self, on: bool) {
        self.faults.stall.store(on, Ordering::SeqCst);
    }

    /// Answers the next `n` requests with `500 InternalError`.
    pub fn fail_next(&self, n: usize) {
        self.faults.fail_next.store(n, Ordering::SeqCst);
    }

    /// Makes the server die once GET bodies have sent `bytes` bytes in all: the body being
    /// sent stops there (the connection is cut) and every later request is dropped unanswered.
    pub fn die_after(&self, bytes: usize) {
        self.faults.sent.store(0, Ordering::SeqCst);
        self.faults.dead.store(false, Ordering::SeqCst);
        self.faults.die_after.store(bytes, Ordering::SeqCst);
    }

    /// Answers every multipart part upload with `500 InternalError`: S3's and GCS's XML
    /// `PUT ...?partNumber=N`, Azure's `PUT ...?comp=block`.
    pub fn fail_part_uploads(&self, on: bool) {
        self.faults.fail_parts.store(on, Ordering::SeqCst);
    }

    /// Answers every PUT, POST and DELETE with `403 AccessDenied` and an S3 XML error body, as
    /// S3 does for credentials without `s3:PutObject`/`s3:DeleteObject`; reads still work.
    pub fn deny_writes(&self, on: bool) {
        self.faults.deny_writes.store(on, Ordering::SeqCst);
    }

    /// PUT, POST and DELETE requests received so far, denied or not (uploads, parts, pointer
    /// updates, copies, deletes).
    pub fn write_attempts(&self) -> usize {
        self.faults.writes.load(Ordering::SeqCst)
    }

    /// Body bytes received in PUT and POST requests so far (uploads, parts, small objects).
    pub fn bytes_uploaded(&self) -> u64 {
        self.faults.uploaded.load(Ordering::SeqCst)
    }

    /// Body bytes announced by successful GET responses so far (whole and ranged downloads).
    pub fn bytes_downloaded(&self) -> u64 {
        self.faults.downloaded.load(Ordering::SeqCst)
    }

    /// Flips bytes in GET bodies.
    pub fn set_corrupt(&self, on: bool) {
        self.faults.corrupt.store(on, Ordering::SeqCst);
    }

    fn rt(&self) -> &Runtime {
        self.runtime.as_ref().unwrap()
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let client = self.client.clone();
        let faults = self.faults.clone();
        let connections = self.connections.clone();
        let task = self.rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let client = client.clone();
                let faults = faults.clone();
                let handler =
                    service_fn(move |req| handle(req, upstream.clone(), client.clone(), faults.clone()));
                let connection = tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
                let mut connections = connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(connection);
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Stalled connections never finish by themselves.
            runtime.shutdown_background();
        }
    }
}

/// S3 connection settings for `endpoint` (region, static keys, plain HTTP).
fn overrides(endpoint: String) -> S3Overrides {
    S3Overrides {
        endpoint: Some(endpoint),
        region: Some("us-east-1".to_owned()),
        access_key_id: Some(ACCESS_KEY.to_owned()),
        secret_access_key: Some(SECRET_KEY.to_owned()),
        session_token: None,
        allow_http: Some(true),
    }
}

/// Azurite's blob service URL for the server at `endpoint`: the account is in the path.
fn azurite_endpoint(endpoint: &str) -> String {
    format!("{endpoint}/{}", backend::AZURITE_ACCOUNT)
}

/// Client settings for a `kind` server at `endpoint`, with short timeouts and small parts, for
/// fast tests. The defaults fill in whatever settings later versions add.
#[allow(clippy::needless_update)]
fn settings(kind: Kind, endpoint: &str) -> RemoteSettings {
    let azure = match kind {
        Kind::Azurite => AzureOverrides {
            account: Some(backend::AZURITE_ACCOUNT.to_owned()),
            endpoint: Some(azurite_endpoint(endpoint)),
            access_key: Some(backend::AZURITE_KEY.to_owned()),
            allow_http: Some(true),
            ..AzureOverrides::default()
        },
        Kind::S3s | Kind::Moto | Kind::Gcs => AzureOverrides::default(),
    };
    let gcs = match kind {
        Kind::Gcs => GcsOverrides {
            base_url: Some(endpoint.to_owned()),
            service_account_key: Some(NO_OAUTH_KEY.to_owned()),
            allow_http: Some(true),
            ..GcsOverrides::default()
        },
        Kind::S3s | Kind::Moto | Kind::Azurite => GcsOverrides::default(),
    };
    RemoteSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
        stall_timeout: Duration::from_secs(2),
        overall_timeout: Duration::from_secs(60),
        retries: 2,
        retry_backoff: Duration::from_millis(20),
        breaker_threshold: 1000,
        breaker_cooldown: Duration::from_secs(60),
        part_size: 5 * 1024 * 1024,
        parallelism: 4,
        max_small_object: 1024 * 1024,
        s3: overrides(endpoint.to_owned()),
        azure,
        gcs,
        ..RemoteSettings::default()
    }
}

/// Listens on `addr`, allowing the port to be reused right after [`TestS3::set_down`].
async fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

/// Serves `s3s` over the files in `root` on a loopback port of its own (the backend behind the
/// proxy), running conditional PUTs one at a time (see the module's doc); returns its endpoint.
async fn serve_s3s(root: &std::path::Path) -> String {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let conditional_puts = Arc::new(tokio::sync::Mutex::new(()));
    let listener = bind("127.0.0.1:0".parse().unwrap()).await;
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Ends with the runtime, when the TestS3 is dropped.
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            let conditional_puts = conditional_puts.clone();
            let handler = service_fn(move |req: Request<Incoming>| {
                let service = service.clone();
                let conditional_puts = conditional_puts.clone();
                async move {
                    let conditional = req.method() == Method::PUT
                        && (req.headers().contains_key("if-match")
                            || req.headers().contains_key("if-none-match"));
                    let req = req.map(Body::from);
                    if conditional {
                        let _one_at_a_time = conditional_puts.lock().await;
                        service.call(req).await
                    } else {
                        service.call(req).await
                    }
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    endpoint
}

/// Whether `req` uploads one part of a multipart upload: S3's and GCS's XML API
/// `PUT ...?partNumber=N`, Azure's `PUT ...?comp=block` (a block of a block list).
fn is_part_upload<B>(req: &Request<B>) -> bool {
    req.method() == Method::PUT
        && req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.starts_with("partNumber=") || kv == "comp=block")
        })
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
}

async fn handle(
    req: Request<Incoming>,
    upstream: String,
    client: Client<HttpConnector, Incoming>,
    faults: Arc<Faults>,
) -> Result<Response<Body>, HttpError> {
    faults.requests.fetch_add(1, Ordering::SeqCst);
    if faults.dead.load(Ordering::SeqCst) {
        // hyper closes the connection without an answer.
        return Err(HttpError::new("injected fault: the server died".into()));
    }
    let write = [Method::PUT, Method::POST, Method::DELETE].contains(req.method());
    if write {
        faults.writes.fetch_add(1, Ordering::SeqCst);
    }
    if write && faults.deny_writes.load(Ordering::SeqCst) {
        // Every client maps a 403 to "permission denied" by its status, whatever the body.
        return Ok(error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied",
        ));
    }
    let part_upload = is_part_upload(&req);
    if part_upload {
        faults.parts.fetch_add(1, Ordering::SeqCst);
    }
    if (part_upload && faults.fail_parts.load(Ordering::SeqCst))
        || faults
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return Ok(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "injected fault",
        ));
    }
    let method = req.method().clone();
    if method == Method::PUT || method == Method::POST {
        faults
            .uploaded
            .fetch_add(content_length(req.headers()), Ordering::SeqCst);
    }
    // Forwarded as it came, Host header included: signatures cover it, and the backend answers
    // as if it were the proxy.
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &e.to_string(),
            ));
        }
    };
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Body::from),
        Err(e) => {
            let message = format!("test proxy: backend {upstream} failed: {e}");
            return Ok(error_response(StatusCode::BAD_GATEWAY, "InternalError", &message));
        }
    };
    if method != Method::GET || !response.status().is_success() {
        return Ok(response);
    }
    faults
        .downloaded
        .fetch_add(content_length(response.headers()), Ordering::SeqCst);
    let fault = if faults.die_after.load(Ordering::SeqCst) > 0 {
        Fault::Die {
            faults: faults.clone(),
        }
    } else if faults.stall.load(Ordering::SeqCst) {
        Fault::Stall { left: STALL_AFTER }
    } else if faults.corrupt.load(Ordering::SeqCst) {
        Fault::Corrupt
    } else {
        return Ok(response);
    };
    Ok(response.map(|body| {
        let stream: DynByteStream = Box::pin(Faulty {
            inner: Box::pin(body),
            fault,
        });
        Body::from(stream)
    }))
}

fn content_length(headers: &hyper::HeaderMap) -> u64 {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

enum Fault {
    Stall { left: usize },
    Corrupt,
    Die { faults: Arc<Faults> },
}

/// A GET body with a fault applied.
struct Faulty {
    inner: Pin<Box<Body>>,
    fault: Fault,
}

impl Stream for Faulty {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Fault::Stall { left: 0 } = self.fault {
            // Never woken: the body just stops, as a hung server's would.
            return Poll::Pending;
        }
        if let Fault::Die { faults } = &self.fault
            && faults.dead.load(Ordering::SeqCst)
        {
            // An error ends the response early: hyper cuts the connection.
            return Poll::Ready(Some(Err("injected fault: the server died".into())));
        }
        let chunk = match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        let chunk = match &mut self.fault {
            Fault::Stall { left } => {
                let n = chunk.len().min(*left);
                *left -= n;
                chunk.slice(..n)
            }
            Fault::Die { faults } => {
                let limit = faults.die_after.load(Ordering::SeqCst);
                let before = faults.sent.fetch_add(chunk.len(), Ordering::SeqCst);
                if before + chunk.len() >= limit {
                    faults.dead.store(true, Ordering::SeqCst);
                    chunk.slice(..limit.saturating_sub(before).min(chunk.len()))
                } else {
                    chunk
                }
            }
            Fault::Corrupt => {
                let mut flipped = BytesMut::from(&chunk[..]);
                if let Some(first) = flipped.first_mut() {
                    *first ^= 0xff;
                }
                flipped.freeze()
            }
        };
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl ByteStream for Faulty {}
