//! Every remote feature on Azure Blob Storage, against a real Azurite the test starts on
//! loopback: `snapshot` → `restore` (multipart upload, ranged parallel download, a delta
//! snapshot), `push` → `pull` on another machine, create-only objects, and the conditional
//! pointer update under a race (exactly one of two concurrent writers wins, a stale version
//! loses), plus the classification of a missing object and of a wrong key (403).
//!
//! The emulator: `WARMCACHE_TEST_AZURITE` names the `azurite-blob` executable (npm package
//! `azurite`). Unset, these tests print that they were skipped and pass; set but broken (no such
//! file, the emulator does not start), they fail with a message that says so, so CI (which sets
//! it) never passes without having talked to Azurite.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use warmcache::remote::{
    AzureOverrides, CondPut, NoProgress, PutOutcome, Remote, RemoteError, RemoteSettings, RemoteUrl,
};

use crate::support;
use crate::support::machine::Machine;

/// Azurite's well-known development account and key (public, documented by Microsoft).
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "warmcache-test";

/// A running Azurite blob service, killed on drop.
struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// Starts Azurite from `WARMCACHE_TEST_AZURITE` and creates [`CONTAINER`]; `None` (after
    /// saying so) when the variable is unset.
    fn start(test: &str) -> Option<Self> {
        let Some(bin) = std::env::var_os("WARMCACHE_TEST_AZURITE") else {
            eprintln!("SKIPPED {test}: WARMCACHE_TEST_AZURITE (the azurite-blob executable) is not set");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("azurite.log")).unwrap();
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(dir.path().join("data"))
            .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("WARMCACHE_TEST_AZURITE={bin:?} is set but cannot be started: {e}; point it at azurite-blob")
            });
        let mut azurite = Self {
            child,
            port,
            _dir: dir,
        };
        // A bounded wait for the listener: Node takes a few seconds on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(azurite._dir.path().join("azurite.log")).unwrap_or_default();
            if let Ok(Some(status)) = azurite.child.try_wait() {
                panic!("WARMCACHE_TEST_AZURITE={bin:?} exited ({status}) instead of listening: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "WARMCACHE_TEST_AZURITE={bin:?} did not listen on port {port} within 90 s: {log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        azurite.create_container();
        Some(azurite)
    }

    /// The blob service URL, account included (Azurite's path-style addressing).
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The connection string a user would set as `AZURE_STORAGE_CONNECTION_STRING`.
    fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={};",
            self.endpoint()
        )
    }

    /// Client settings with explicit overrides (no process environment) and small parts.
    fn settings(&self, key: &str) -> RemoteSettings {
        RemoteSettings {
            request_timeout: Duration::from_secs(30),
            overall_timeout: Duration::from_secs(120),
            retries: 1,
            retry_backoff: Duration::from_millis(20),
            breaker_threshold: 1000,
            part_size: 5 * 1024 * 1024,
            azure: AzureOverrides {
                account: Some(ACCOUNT.to_owned()),
                endpoint: Some(self.endpoint()),
                access_key: Some(key.to_owned()),
                ..AzureOverrides::default()
            },
            ..RemoteSettings::default()
        }
    }

    /// `warmcache` on `root`, configured through the connection string only.
    fn warmcache(&self, root: &Path) -> Command {
        let mut cmd = support::warmcache(root);
        for (name, _) in std::env::vars_os() {
            if name
                .to_str()
                .is_some_and(|n| n.starts_with("AZURE_") || n.starts_with("AZURITE_"))
            {
                cmd.env_remove(name);
            }
        }
        cmd.env("AZURE_STORAGE_CONNECTION_STRING", self.connection_string());
        cmd
    }

    /// Creates [`CONTAINER`]: the one request warmcache never makes (a remote's container is
    /// the operator's to create), signed with the account key as Azure's Shared Key scheme
    /// requires.
    fn create_container(&self) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let version = "2021-08-06";
        let resource = format!("/{ACCOUNT}/{ACCOUNT}/{CONTAINER}");
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(ACCOUNT_KEY)
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{ACCOUNT}/{CONTAINER}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "creating the container failed: {response}"
        );
    }

    fn remote(&self) -> Remote {
        Remote::new(&url(""), self.settings(ACCOUNT_KEY)).unwrap()
    }
}

fn url(key: &str) -> RemoteUrl {
    RemoteUrl::parse(&format!("az://{CONTAINER}/{key}")).unwrap()
}

fn random_file(path: &Path, len: usize) {
    let mut rng = support::Rng::new(len as u64);
    std::fs::write(path, rng.bytes(len)).unwrap();
}

#[test]
fn snapshot_then_restore_round_trips_on_azure() {
    let Some(azurite) = Azurite::start("snapshot_then_restore_round_trips_on_azure") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (root, src, dest) = (
        tmp.path().join("cache"),
        tmp.path().join("src"),
        tmp.path().join("dest"),
    );
    support::make_tree(&src, 100, 16 * 1024, 3);
    // Larger than one 8 MiB part: a multipart upload and several ranged downloads.
    random_file(&src.join("big.bin"), 12 * 1024 * 1024);
    let remote = format!("az://{CONTAINER}/site-a/node_modules");

    let snap = |root: &PathBuf| {
        support::json_ok(&support::run(
            azurite
                .warmcache(root)
                .args(["snapshot"])
                .arg(&src)
                .args(["--remote", &remote, "--strict", "--json"]),
        ))
    };
    let report = snap(&root);
    assert_eq!(report["status"], "uploaded", "{report}");
    let restored = support::json_ok(&support::run(
        azurite
            .warmcache(&root)
            .args(["restore"])
            .arg(&dest)
            .args(["--remote", &remote, "--strict", "--json"]),
    ));
    assert_eq!(restored["status"], "restored", "{restored}");
    assert_eq!(support::describe_tree(&src), support::describe_tree(&dest));

    // A change goes up as a delta and comes back.
    std::fs::write(src.join("changed.txt"), "new").unwrap();
    let delta = snap(&root);
    assert_eq!(delta["status"], "uploaded", "{delta}");
    assert!(delta["uploaded_bytes"].as_u64().unwrap() < 1024 * 1024, "{delta}");
    let dest2 = tmp.path().join("dest2");
    support::json_ok(&support::run(
        azurite
            .warmcache(&tmp.path().join("other"))
            .args(["restore"])
            .arg(&dest2)
            .args(["--remote", &remote, "--strict", "--json"]),
    ));
    assert_eq!(support::describe_tree(&src), support::describe_tree(&dest2));
}

const RECIPES: &str = r#"
[entry."bundles/app"]
inputs = ["src/*"]
output = "dir"
build = """
echo built >> "$COUNTER_FILE"
mkdir -p "$WARMCACHE_OUT"
cp src/app.txt "$WARMCACHE_OUT/app.txt"
"""
"#;

#[test]
fn push_then_pull_on_azure() {
    let Some(azurite) = Azurite::start("push_then_pull_on_azure") else {
        return;
    };
    let machine = || Machine::new(RECIPES, &[("src/app.txt", "hello")]);
    let (a, b) = (machine(), machine());
    let cmd = |m: &Machine| {
        let mut cmd = azurite.warmcache(&m.root);
        cmd.env("COUNTER_FILE", &m.counter).current_dir(&m.project);
        cmd
    };
    let remote = format!("az://{CONTAINER}/shared");
    let built = support::json_ok(&support::run(cmd(&a).args(["ensure", "bundles/app", "--json"])));
    let pushed = support::json_ok(&support::run(cmd(&a).args([
        "push",
        "bundles/app",
        "--remote",
        &remote,
        "--json",
    ])));
    assert_eq!(pushed["status"], "pushed", "{pushed}");
    assert_eq!(pushed["index"]["state"], "created", "{pushed}");
    let again = support::json_ok(&support::run(cmd(&a).args([
        "push",
        "bundles/app",
        "--remote",
        &remote,
        "--json",
    ])));
    assert_eq!(again["status"], "present", "{again}");
    assert_eq!(again["uploaded_bytes"], 0);

    let pulled = support::json_ok(&support::run(cmd(&b).args([
        "pull",
        "bundles/app",
        "--remote",
        &remote,
        "--json",
    ])));
    assert_eq!(pulled["status"], "pulled", "{pulled}");
    assert_eq!(pulled["artifact"], built["artifact"]);
    assert_eq!(b.builds(), 0);
    assert_eq!(
        support::describe_tree(Path::new(built["path"].as_str().unwrap())),
        support::describe_tree(Path::new(pulled["path"].as_str().unwrap()))
    );
}

#[test]
fn conditional_pointer_and_create_only_objects_hold_on_azure() {
    let Some(azurite) = Azurite::start("conditional_pointer_and_create_only_objects_hold_on_azure") else {
        return;
    };
    let remote = azurite.remote();
    assert_eq!(remote.describe("k"), format!("az://{CONTAINER}/k"));

    // Create-only: a second upload to the same key leaves the first untouched.
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    random_file(&first, 6 * 1024 * 1024 + 5);
    random_file(&second, 100);
    assert_eq!(
        remote.put_file("immutable", &first, &NoProgress).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        remote.put_file("immutable", &second, &NoProgress).unwrap(),
        PutOutcome::AlreadyExisted
    );
    let back = tmp.path().join("back");
    let report = remote.get_to_file("immutable", &back, None, &NoProgress).unwrap();
    assert!(report.parts > 1, "a ranged download: {report:?}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&first).unwrap());

    // The pointer: create once, then exactly one of two racing replacements wins each round.
    let CondPut::Done(mut version) = remote.put_if("pointer", Bytes::from_static(b"v0"), None).unwrap()
    else {
        panic!("creating an absent pointer must succeed");
    };
    assert_eq!(
        remote
            .put_if("pointer", Bytes::from_static(b"again"), None)
            .unwrap(),
        CondPut::Conflict
    );
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let (remote, barrier, version) = (remote.clone(), barrier.clone(), version.clone());
                std::thread::spawn(move || {
                    let body = Bytes::from(format!("round {round} writer {writer}"));
                    barrier.wait();
                    (
                        body.clone(),
                        remote.put_if("pointer", body, Some(&version)).unwrap(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, r)| matches!(r, CondPut::Done(_)))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (body, CondPut::Done(new_version)) = winners[0].clone() else {
            unreachable!()
        };
        assert_eq!(remote.get_versioned("pointer").unwrap().unwrap().0, body);
        assert_eq!(
            remote
                .put_if("pointer", Bytes::from_static(b"stale"), Some(&version))
                .unwrap(),
            CondPut::Conflict
        );
        version = new_version;
    }

    // Advisory failures are classified: a missing object, then a wrong key (403, not an outage).
    assert!(remote.head("missing").unwrap().is_none());
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let denied = Remote::new(&url(""), azurite.settings(&wrong)).unwrap();
    let err = denied.head("immutable").unwrap_err();
    assert!(matches!(err, RemoteError::Denied { .. }), "{err}");
    assert!(!err.is_outage(), "{err}");
    assert!(
        err.to_string().contains(&format!("az://{CONTAINER}/immutable")),
        "{err}"
    );
}
