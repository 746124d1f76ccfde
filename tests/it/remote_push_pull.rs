//! `warmcache push` and `warmcache pull` by hand: a push uploads an entry's artifact and its
//! fingerprint index, and a second push uploads nothing; a pull on another machine fetches the
//! artifact for the recipe's current fingerprint without building; a pull of a fingerprint the
//! remote does not have is a clear miss (exit 0 with a warning, exit 1 with `--strict`) that
//! records nothing; an imported entry (no fingerprint) pushes its artifact only, and says so.

use crate::support;
use crate::support::machine::Machine;

use std::path::{Path, PathBuf};

use crate::support::s3_server::TestS3;

const RECIPES: &str = r#"
[entry."bundles/app"]
inputs = ["src/*"]
output = "dir"
build = """
echo built >> "$COUNTER_FILE"
mkdir -p "$WARMCACHE_OUT/bin"
cp src/app.txt "$WARMCACHE_OUT/app.txt"
printf '#!/bin/sh\n' > "$WARMCACHE_OUT/bin/run" && chmod +x "$WARMCACHE_OUT/bin/run"
"""
"#;

const URL_PREFIX: &str = "shared";

fn url(server: &TestS3) -> String {
    server.url(URL_PREFIX)
}

/// Every object the server holds under the prefix, with its size and modification time.
fn remote_objects(server: &TestS3) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = server
        .admin()
        .list(URL_PREFIX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size, o.last_modified))
        .collect();
    out.sort();
    out
}

#[test]
fn push_then_pull_on_another_machine_and_push_again_uploads_nothing() {
    let server = TestS3::start();
    let (a, b) = (machine(), machine());
    let built = support::json_ok(&support::run(a.cmd(&server).args([
        "ensure",
        "bundles/app",
        "--json",
    ])));
    assert!(
        built.get("remote").is_none(),
        "no remote configured, yet: {built}"
    );

    let pushed = support::json_ok(&support::run(a.cmd(&server).args([
        "push",
        "bundles/app",
        "--remote",
        &url(&server),
        "--json",
    ])));
    assert_eq!(pushed["status"], "pushed", "{pushed}");
    assert_eq!(pushed["artifact"], built["artifact"]);
    assert_eq!(pushed["fingerprint"], built["fingerprint"]);
    assert_eq!(pushed["artifact_created"], true);
    assert!(pushed["uploaded_bytes"].as_u64().unwrap() > 0, "{pushed}");
    assert_eq!(pushed["index"]["state"], "created");
    let objects = remote_objects(&server);
    // Description, archive, index.
    assert_eq!(objects.len(), 3, "{objects:?}");

    let again = support::json_ok(&support::run(a.cmd(&server).args([
        "push",
        "bundles/app",
        "--remote",
        &url(&server),
        "--json",
    ])));
    assert_eq!(again["status"], "present", "{again}");
    assert_eq!(again["uploaded_bytes"], 0);
    assert_eq!(again["artifact_created"], false);
    assert_eq!(again["index"]["state"], "present");
    assert_eq!(again["index"]["artifact"], built["artifact"]);
    assert_eq!(
        remote_objects(&server),
        objects,
        "the second push changed the remote"
    );
    let human = support::ok(
        a.cmd(&server)
            .args(["push", "bundles/app", "--remote", &url(&server)]),
    );
    assert!(human.contains("nothing uploaded"), "{human}");

    // Machine B pulls by hand (the remote from the environment this time); nothing is built.
    let pulled = support::json_ok(&support::run(
        b.cmd(&server)
            .env("WARMCACHE_REMOTE", url(&server))
            .args(["pull", "bundles/app", "--json"]),
    ));
    assert_eq!(pulled["status"], "pulled", "{pulled}");
    assert_eq!(pulled["artifact"], built["artifact"]);
    assert!(pulled["downloaded_bytes"].as_u64().unwrap() > 0);
    assert_eq!(b.builds(), 0);
    let path_b = PathBuf::from(pulled["path"].as_str().unwrap());
    assert!(path_b.starts_with(&b.root));
    assert_eq!(
        support::describe_tree(Path::new(built["path"].as_str().unwrap())),
        support::describe_tree(&path_b)
    );
    // Recorded: `path` answers and `ensure` is a hit.
    assert_eq!(
        support::ok(b.cmd(&server).args(["path", "bundles/app"])),
        path_b.display().to_string()
    );
    let hit = support::json_ok(&support::run(b.cmd(&server).args([
        "ensure",
        "bundles/app",
        "--json",
    ])));
    assert_eq!(hit["status"], "hit", "{hit}");
    assert_eq!(b.builds(), 0);

    // Pulling what the store already holds downloads nothing.
    let again = support::json_ok(&support::run(b.cmd(&server).args([
        "pull",
        "bundles/app",
        "--remote",
        &url(&server),
        "--json",
    ])));
    assert_eq!(again["status"], "pulled");
    assert_eq!(again["downloaded_bytes"], 0);
    assert_eq!(a.builds(), 1);
}

#[test]
fn pull_of_an_unknown_fingerprint_is_a_clear_miss() {
    let server = TestS3::start();
    let (a, b) = (machine(), machine());
    support::ok(
        a.cmd(&server)
            .args(["ensure", "bundles/app", "--push", "--remote", &url(&server)]),
    );
    // B's inputs differ from what A pushed: another fingerprint.
    std::fs::write(b.project.join("src/app.txt"), "version 2\n").unwrap();

    let out = support::run(
        b.cmd(&server)
            .args(["pull", "bundles/app", "--remote", &url(&server), "--json"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let miss: serde_json::Value = crate::support::json_any(&out);
    assert_eq!(miss["status"], "miss", "{miss}");
    assert!(
        stderr.contains("no shared artifact for `bundles/app` with fingerprint"),
        "{stderr}"
    );
    assert!(stderr.contains(&url(&server)), "{stderr}");

    let strict =
        support::run(
            b.cmd(&server)
                .args(["pull", "bundles/app", "--remote", &url(&server), "--strict"]),
        );
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("no shared artifact"));

    // Nothing recorded, nothing built, nothing stored.
    let path = support::run(b.cmd(&server).args(["path", "bundles/app"]));
    assert!(!path.status.success());
    assert_eq!(b.builds(), 0);
    assert!(support::artifact_ids(&b.root).is_empty());
}

#[test]
fn imported_entry_pushes_its_artifact_only_and_says_so() {
    let server = TestS3::start();
    let a = machine();
    let file = a.project.join("src/app.txt");
    support::ok(
        a.cmd(&server)
            .args(["import"])
            .arg(&file)
            .args(["--name", "plain"]),
    );
    let out = support::run(
        a.cmd(&server)
            .args(["push", "plain", "--remote", &url(&server), "--json"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let pushed: serde_json::Value = crate::support::json_any(&out);
    assert_eq!(pushed["status"], "pushed");
    assert_eq!(pushed["index"]["state"], "skipped", "{pushed}");
    assert!(stderr.contains("has no fingerprint"), "{stderr}");
    let objects = remote_objects(&server);
    assert_eq!(objects.len(), 2, "description and archive only: {objects:?}");

    // Without any remote configured, push is an error that says how to configure one.
    let out = support::run(a.cmd(&server).args(["push", "plain"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARMCACHE_REMOTE"));
}

/// A machine with the recipes and no remote configured (commands take `--remote`).
fn machine() -> Machine {
    Machine::new(RECIPES, &[("src/app.txt", "version 1\n")])
}
