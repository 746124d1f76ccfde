//! The remote is advisory for `ensure`: when it is down, answers 500s, stalls mid-download,
//! serves an archive whose bytes were altered, or has an index that claims an artifact its
//! content is not, `ensure` warns in one line naming the remote, builds locally, exits 0 and
//! publishes nothing that came from the remote; a failed lookup is not recorded as a build
//! failure. With `--strict` the same problems are errors (exit 1) and nothing is built.

use crate::support;
use crate::support::machine::Machine;

use std::process::Output;

use crate::support::s3_server::TestS3;
use warmcache::remote::RemoteUrl;
use warmcache::remote::share::Sharing;

/// Random content: a local build never reproduces the pushed artifact, so an artifact id in B's
/// store tells where it came from.
const RECIPES: &str = r#"
[entry.blob]
inputs = ["src/*"]
build = "echo built >> \"$COUNTER_FILE\"; head -c 200000 /dev/urandom > \"$WARMCACHE_OUT\""

[entry.other]
inputs = ["src/*"]
build = "echo other >> \"$COUNTER_FILE\"; head -c 1000 /dev/urandom > \"$WARMCACHE_OUT\""
"#;

const PREFIX: &str = "team";

/// Machine A builds `blob` and pushes it; returns its `ensure` JSON.
fn push_blob(server: &TestS3, a: &Machine) -> serde_json::Value {
    let built = support::json_ok(&support::run(
        a.cmd(server).args(["ensure", "blob", "--push", "--json"]),
    ));
    assert_eq!(built["remote"]["pushed"]["index"]["state"], "created", "{built}");
    built
}

/// The key of the pushed archive of artifact `id`.
fn archive_key(server: &TestS3, id: &str) -> String {
    let keys: Vec<String> = server
        .list_objects(&format!("{PREFIX}/v1/artifacts/{id}"))
        .into_keys()
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

/// Runs B's `ensure blob` first with `--strict` (must fail, build nothing, record nothing), then
/// without (must warn once, build locally, exit 0). Returns the JSON of the second run.
fn check_degraded(
    server: &TestS3,
    b: &Machine,
    pushed: &serde_json::Value,
    expect: &str,
) -> serde_json::Value {
    let strict: Output = support::run(b.cmd(server).args(["ensure", "blob", "--strict"]));
    let stderr = support::stderr(&strict);
    assert_eq!(strict.status.code(), Some(1), "--strict did not fail: {stderr}");
    assert!(stderr.contains("remote problem"), "{stderr}");
    assert!(stderr.contains(expect), "{stderr}");
    assert_eq!(b.builds(), 0, "--strict built after a remote problem");
    // The failed lookup is not a build failure: nothing recorded for the entry.
    let status = support::json_ok(&support::run(b.cmd(server).args(["status", "--json"])));
    assert_eq!(status["entries"], serde_json::json!([]), "{status}");

    let out = support::run(b.cmd(server).args(["ensure", "blob", "--json"]));
    let stderr = support::stderr(&out);
    assert!(out.status.success(), "ensure failed: {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: remote "))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&server.url(PREFIX)), "{stderr}");
    assert!(warnings[0].contains("building `blob` locally"), "{stderr}");
    assert!(warnings[0].contains(expect), "{stderr}");
    let ensured: serde_json::Value = crate::support::json_any(&out);
    assert_eq!(ensured["status"], "built", "{ensured}");
    assert_eq!(ensured["remote"]["pulled"], false, "{ensured}");
    assert_eq!(ensured["failure"], serde_json::Value::Null, "{ensured}");
    assert_eq!(b.builds(), 1);
    // Nothing from the remote was published.
    let pushed_id = pushed["artifact"].as_str().unwrap();
    let ids = support::artifact_ids(&b.root);
    assert!(!ids.iter().any(|id| id == pushed_id), "{ids:?}");
    assert_eq!(ids, vec![ensured["artifact"].as_str().unwrap().to_string()]);
    ensured
}

#[test]
fn remote_down_builds_locally() {
    let server = TestS3::start();
    let (a, b) = (machine(&server), machine(&server));
    let pushed = push_blob(&server, &a);
    server.set_down(true);
    check_degraded(&server, &b, &pushed, "unreachable");

    // Pushing to a down remote after a local build: a warning, the local build kept.
    let out = support::run(a.cmd(&server).args(["ensure", "other", "--push"]));
    let stderr = support::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`other` was built locally but not pushed"),
        "{stderr}"
    );
    assert!(support::ok(a.cmd(&server).args(["path", "other"])).contains("/objects/"));
}

#[test]
fn remote_answering_500_builds_locally() {
    let server = TestS3::start();
    let (a, b) = (machine(&server), machine(&server));
    let pushed = push_blob(&server, &a);
    server.fail_next(usize::MAX / 2);
    check_degraded(&server, &b, &pushed, "HTTP 500");
}

#[test]
fn stalled_download_builds_locally_within_the_timeout() {
    let server = TestS3::start();
    let (a, b) = (machine(&server), machine(&server));
    let pushed = push_blob(&server, &a);
    // Small objects (index, description) get through; the archive stops after 64 KiB.
    assert!(pushed["remote"]["pushed"]["uploaded_bytes"].as_u64().unwrap() > 100_000);
    server.set_stall(true);
    // The 3 s budget of the whole download runs out as the transfer stalls.
    check_degraded(&server, &b, &pushed, "timed out");
}

#[test]
fn archive_with_a_flipped_byte_is_detected_and_never_published() {
    let server = TestS3::start();
    let (a, b) = (machine(&server), machine(&server));
    let pushed = push_blob(&server, &a);
    let archive = archive_key(&server, pushed["artifact"].as_str().unwrap());
    let mut bytes = server.get_object(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    server.put_object(&archive, &bytes);
    check_degraded(&server, &b, &pushed, "content digest mismatch");
}

#[test]
fn archive_replaced_by_other_bytes_of_the_same_content_is_refused() {
    // A valid tar.zst of exactly the right content, but not the bytes the description names:
    // only the archive's digest can tell, and it must be checked.
    let server = TestS3::start();
    let (a, b) = (machine(&server), machine(&server));
    let pushed = push_blob(&server, &a);
    let archive = archive_key(&server, pushed["artifact"].as_str().unwrap());
    let original = server.get_object(&archive).unwrap();
    let tar = zstd::decode_all(&original[..]).unwrap();
    let recompressed = zstd::encode_all(&tar[..], 19).unwrap();
    assert_ne!(recompressed, original);
    server.put_object(&archive, &recompressed);
    check_degraded(&server, &b, &pushed, "content digest mismatch");
}

#[test]
fn index_claiming_another_artifact_than_its_content_is_refused() {
    let server = TestS3::start();
    let (a, b) = (machine(&server), machine(&server));
    // A builds `blob` without pushing it, and pushes `other`.
    let blob = support::json_ok(&support::run(a.cmd(&server).args(["ensure", "blob", "--json"])));
    let other = support::json_ok(&support::run(
        a.cmd(&server).args(["ensure", "other", "--push", "--json"]),
    ));
    let (blob_id, other_id) = (
        &warmcache::ArtifactId::new(blob["artifact"].as_str().unwrap()).unwrap(),
        &warmcache::ArtifactId::new(other["artifact"].as_str().unwrap()).unwrap(),
    );
    let fingerprint = &warmcache::Fingerprint::new(blob["fingerprint"].as_str().unwrap()).unwrap();

    // A lying writer: `blob`'s index and description claim artifact `blob_id`, but the archive
    // they point to (whose digest they state correctly) holds `other`'s content.
    let sharing = Sharing::new(RemoteUrl::parse(&server.url(PREFIX)).unwrap(), server.settings());
    let remote = sharing.remote().unwrap();
    let other_doc = remote
        .get_bytes(&sharing.artifact_key(other_id))
        .unwrap()
        .unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&other_doc).unwrap();
    let archive_digest = doc["archive"]["blake3"].as_str().unwrap().to_string();
    doc["id"] = blob_id.as_str().into();
    let scratch = tempfile::tempdir().unwrap();
    let archive = scratch.path().join("archive");
    remote
        .get_to_file(
            &sharing.archive_key(other_id, &archive_digest),
            &archive,
            None,
            &warmcache::remote::NoProgress,
        )
        .unwrap();
    remote
        .put_file(
            &sharing.archive_key(blob_id, &archive_digest),
            &archive,
            &warmcache::remote::NoProgress,
        )
        .unwrap();
    let put = |key: String, value: serde_json::Value| {
        let bytes = bytes::Bytes::from(serde_json::to_vec(&value).unwrap());
        assert!(matches!(
            remote.put_if(&key, bytes, None).unwrap(),
            warmcache::remote::CondPut::Done(_)
        ));
    };
    put(sharing.artifact_key(blob_id), doc);
    put(
        sharing.index_key(&warmcache::EntryName::new("blob").unwrap(), fingerprint),
        serde_json::json!({
            "format": 1, "name": "blob", "fingerprint": fingerprint.as_str(), "artifact": blob_id.as_str(),
            "pushed_at": 0, "host": "liar",
        }),
    );

    let ensured = check_degraded(&server, &b, &blob, "claims artifact");
    assert_ne!(ensured["artifact"], other["artifact"]);
    assert!(
        !support::artifact_ids(&b.root)
            .iter()
            .any(|id| id == other_id.as_str())
    );
}

/// A machine with the recipes and a remote whose short timeout keeps the stalled case quick.
fn machine(server: &TestS3) -> Machine {
    let config = format!(
        "{RECIPES}\n[remote]\nurl = \"{}\"\ntimeout = \"3s\"\n",
        server.url(PREFIX)
    );
    Machine::new(&config, &[("src/input.txt", "inputs\n")])
}
