//! Read-only writers (docs/DESIGN.md, "Read-only writers"): with `--read-only`,
//! `WARMCACHE_REMOTE_READ_ONLY=1` or `[remote] read_only = true`, nothing is ever written to
//! the remote (the server sees no PUT, POST or DELETE): `snapshot` and `push` say so with
//! `"status": "read_only"` and exit 0 (1 with `--strict`), `ensure --push` builds and pushes
//! nothing, `gc --remote` is refused with a clear error; reads (`restore`) still work.

use std::process::Command;

use crate::support::machine::{APP_CONFIG, Machine};
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{objects, snapshot};
use crate::support::{self, json_exit, json_ok, stderr};

const KEY: &str = "ci/node_modules";

/// How a machine is made read-only.
#[derive(Clone, Copy, Debug)]
enum Way {
    Flag,
    Env,
    Config,
}

fn read_only(cmd: &mut Command, way: Way) -> &mut Command {
    match way {
        Way::Flag => cmd.arg("--read-only"),
        Way::Env => cmd.env("WARMCACHE_REMOTE_READ_ONLY", "1"),
        Way::Config => cmd,
    }
}

fn check(way: Way) {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let writer_root = tmp.path().join("writer");
    let tree = support::make_tree(&tmp.path().join("tree"), 30, 4096, 1);
    json_ok(&snapshot(&server, &writer_root, &tree, KEY, &[]));
    let snapshotted = support::describe_tree(&tree);

    let config = match way {
        Way::Config => format!(
            "{APP_CONFIG}\n[remote]\nurl = \"{}\"\nread_only = true\n",
            server.url("shared")
        ),
        _ => APP_CONFIG.to_owned(),
    };
    let machine = Machine::new(&config, &[("src/app.txt", "v1")]);
    let before = objects(&server);
    let writes = server.write_attempts();
    let url = server.url(KEY);

    // snapshot of a changed tree: advisory, says so, writes nothing.
    support::make_tree(&tree.join("more"), 5, 1024, 2);
    let mut cmd = machine.cmd(&server);
    let out = support::run(
        read_only(&mut cmd, way)
            .args(["snapshot"])
            .arg(&tree)
            .args(["--remote", &url, "--json"]),
    );
    let report = json_ok(&out);
    assert_eq!(report["status"], "read_only", "{report}");
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    let mut cmd = machine.cmd(&server);
    let out = support::run(
        read_only(&mut cmd, way)
            .args(["snapshot"])
            .arg(&tree)
            .args(["--remote", &url, "--strict"]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));

    // ensure --push builds, and pushes nothing, without a warning.
    let shared = server.url("shared");
    let mut cmd = machine.cmd(&server);
    let out = support::run(
        read_only(&mut cmd, way).args(["ensure", "app", "--push", "--remote", &shared, "--json"]),
    );
    json_ok(&out);
    assert_eq!(machine.builds(), 1);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // push: advisory, says so.
    let mut cmd = machine.cmd(&server);
    let out = support::run(read_only(&mut cmd, way).args(["push", "app", "--remote", &shared, "--json"]));
    let report = json_ok(&out);
    assert_eq!(report["status"], "read_only", "{report}");
    let mut cmd = machine.cmd(&server);
    let out = support::run(read_only(&mut cmd, way).args(["push", "app", "--remote", &shared, "--strict"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Writes refused by the setting are not counted as remote errors.
    let stats = json_ok(&support::run(
        machine.cmd(&server).args(["stats", "app", "--json"]),
    ));
    assert_eq!(stats["total"]["remote_errors"], 0, "{stats}");

    // gc --remote: refused, naming the setting.
    let mut cmd = machine.cmd(&server);
    let out = support::run(read_only(&mut cmd, way).args(["gc", "--remote", &url, "--json"]));
    let report = json_exit(&out, 1);
    assert!(
        report["error"].as_str().unwrap().contains("read-only"),
        "{report}"
    );

    assert_eq!(
        server.write_attempts(),
        writes,
        "a read-only machine sent a write ({way:?})"
    );
    assert_eq!(
        objects(&server),
        before,
        "a read-only machine changed the bucket ({way:?})"
    );

    // Reads still work.
    let restored = tmp.path().join("restored");
    let mut cmd = machine.cmd(&server);
    let out = support::run(
        read_only(&mut cmd, way)
            .args(["restore"])
            .arg(&restored)
            .args(["--remote", &url, "--json"]),
    );
    assert_eq!(json_ok(&out)["status"], "restored");
    assert_eq!(server.write_attempts(), writes);
    assert_eq!(support::describe_tree(&restored), snapshotted);

    // A push makes no request at all, so a remote that is down changes nothing to what it says.
    server.set_down(true);
    let mut cmd = machine.cmd(&server);
    let out = support::run(read_only(&mut cmd, way).args(["push", "app", "--remote", &shared, "--json"]));
    assert_eq!(json_ok(&out)["status"], "read_only", "{}", stderr(&out));
}

#[test]
fn with_the_flag() {
    check(Way::Flag);
}

#[test]
fn with_the_environment() {
    check(Way::Env);
}

#[test]
fn with_the_config_file() {
    check(Way::Config);
}

/// A value of WARMCACHE_REMOTE_READ_ONLY that is neither yes nor no is a usage error that names
/// the variable (not only the flag the user never passed), and nothing runs.
#[test]
fn a_bad_environment_value_names_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let out = support::run(
        support::warmcache(&tmp.path().join("cache"))
            .env("WARMCACHE_REMOTE_READ_ONLY", "maybe")
            .args(["status", "--json"]),
    );
    let report = json_exit(&out, 2);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("WARMCACHE_REMOTE_READ_ONLY") && error.contains("maybe"),
        "{report}"
    );
    assert!(
        !tmp.path().join("cache").exists(),
        "a refused command created the cache"
    );
}
