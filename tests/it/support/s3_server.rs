//! A real S3 server inside the test process: `s3s` over `s3s-fs` (a temporary directory), on
//! 127.0.0.1 with an ephemeral port and static test credentials, behind a thin HTTP layer that
//! injects faults the tests switch on and off at runtime:
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
//! It sets no environment variables: tests pass [`TestS3::settings`] to the client, or
//! [`TestS3::env`] to a child process.
//!
//! s3s-fs 0.14 checks `If-None-Match: *` and `If-Match` on PutObject, but checks and writes
//! in separate steps, so two concurrent conditional puts can both pass the check. Real S3,
//! MinIO and R2 apply the precondition atomically; this layer makes the test server do the
//! same by running conditional PUTs one at a time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::stream::{ByteStream, DynByteStream};
use s3s::{Body, HttpError, StdError};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use warmcache::remote::{RemoteSettings, S3Overrides};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "WARMCACHETESTKEY";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "warmcache-test-secret-key";
/// The bucket created at start.
pub const BUCKET: &str = "warmcache-test";
/// Bytes a stalled GET sends before it stops.
pub const STALL_AFTER: usize = 64 * 1024;

/// A running test server; stopped when dropped.
pub struct TestS3 {
    runtime: Option<Runtime>,
    addr: SocketAddr,
    service: S3Service,
    faults: Arc<Faults>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    root: tempfile::TempDir,
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
    /// PUT, POST and DELETE requests received (denied or not).
    writes: AtomicUsize,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    conditional_puts: tokio::sync::Mutex<()>,
}

impl TestS3 {
    /// Starts a server with one empty bucket, [`BUCKET`].
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-s3")
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(bind("127.0.0.1:0".parse().unwrap()));
        let addr = listener.local_addr().unwrap();
        let server = Self {
            runtime: Some(runtime),
            addr,
            service,
            faults: Arc::default(),
            accept: Mutex::new(None),
            connections: Arc::default(),
            root,
        };
        server.serve(listener);
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `s3://BUCKET/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// Connection settings for this server (endpoint, region, static keys, plain HTTP).
    pub fn overrides(&self) -> S3Overrides {
        S3Overrides {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".to_owned()),
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key: Some(SECRET_KEY.to_owned()),
            session_token: None,
            allow_http: Some(true),
        }
    }

    /// Client settings with short timeouts and small parts, for fast tests.
    pub fn settings(&self) -> RemoteSettings {
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
            s3: self.overrides(),
            ..RemoteSettings::default()
        }
    }

    /// The same connection settings as AWS environment variables, for a child process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// Where s3s-fs keeps the object `key` on disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
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

    /// Answers every multipart part upload (`PUT ...?partNumber=N`) with `500 InternalError`.
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
        let service = self.service.clone();
        let faults = self.faults.clone();
        let connections = self.connections.clone();
        let task = self.rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                let faults = faults.clone();
                let handler = service_fn(move |req| handle(req, service.clone(), faults.clone()));
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

/// Listens on `addr`, allowing the port to be reused right after [`TestS3::set_down`].
async fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

async fn handle(
    req: Request<Incoming>,
    service: S3Service,
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
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                    <Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let mut response = Response::new(Body::from(body.to_owned()));
        *response.status_mut() = StatusCode::FORBIDDEN;
        return Ok(response);
    }
    let part_upload = req.method() == Method::PUT
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("partNumber=")));
    if (part_upload && faults.fail_parts.load(Ordering::SeqCst))
        || faults
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                    <Error><Code>InternalError</Code><Message>injected fault</Message></Error>";
        let mut response = Response::new(Body::from(body.to_owned()));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(response);
    }
    let method = req.method().clone();
    if method == Method::PUT || method == Method::POST {
        faults
            .uploaded
            .fetch_add(content_length(req.headers()), Ordering::SeqCst);
    }
    let conditional = method == Method::PUT
        && (req.headers().contains_key("if-match") || req.headers().contains_key("if-none-match"));
    let req = req.map(Body::from);
    let response = if conditional {
        let _one_at_a_time = faults.conditional_puts.lock().await;
        service.call(req).await?
    } else {
        service.call(req).await?
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
