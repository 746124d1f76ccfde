//! Every `--json` object the CLI prints is what its schema document says (`docs/json/`,
//! docs/DESIGN.md, "JSON output"): every command in its main variants (hit, build, stale, failure,
//! usage error, remote unreachable, snapshot and restore against the in-process S3 server, the
//! remote gc) is run for real and each object validated against the document its `"schema"`
//! names; every document is met at least once; every command `warmcache --help` lists has a
//! document; and an object with a field no document describes is refused.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::s3_server::TestS3;
use crate::support::{self, run, schemas, warmcache, warmcache_s3};

/// The schema identities of the objects seen.
#[derive(Default)]
struct Seen(BTreeSet<String>);

impl Seen {
    /// Runs `cmd --json`, expects exit `code`, validates the object (in [`support::json_exit`]) and
    /// records its identity; `label` names the variant in failures.
    fn json(&mut self, label: &str, cmd: &mut Command, code: i32) -> serde_json::Value {
        let out: Output = run(cmd.arg("--json"));
        let value = std::panic::catch_unwind(|| support::json_exit(&out, code))
            .unwrap_or_else(|_| panic!("variant `{label}` failed (see above)"));
        self.0.insert(value["schema"].as_str().unwrap().to_owned());
        value
    }
}

/// A project directory whose build copies `src/a` to the output, and fails with exit 2 while a
/// file named `fail` exists.
fn project(dir: &Path) -> std::path::PathBuf {
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/a"), "one").unwrap();
    project
}

const BUILD: &str = r#"if [ -e fail ]; then echo boom >&2; exit 2; fi; cp src/a "$WARMCACHE_OUT""#;

fn ensure(root: &Path, project: &Path, name: &str) -> Command {
    let mut cmd = warmcache(root);
    cmd.current_dir(project)
        .args(["ensure", name, "--input", "src/*", "--build", BUILD]);
    cmd
}

#[test]
fn every_local_command_prints_what_its_schema_says() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = project(tmp.path());
    let mut seen = Seen::default();

    let built = seen.json("ensure built", &mut ensure(&root, &project, "app"), 0);
    assert_eq!(built["status"], "built");
    let hit = seen.json(
        "ensure hit with a lease",
        ensure(&root, &project, "app").args(["--lease", "1m"]),
        0,
    );
    assert_eq!(hit["status"], "hit");
    assert!(hit["lease_expires_at"].is_i64(), "{hit}");
    seen.json(
        "ensure with an unmatched glob",
        ensure(&root, &project, "globs").args(["--input", "nothing/*"]),
        0,
    );

    // Changed inputs that fail to build: the last good artifact, stale, with the failure.
    std::fs::write(project.join("src/a"), "two").unwrap();
    std::fs::write(project.join("fail"), "").unwrap();
    let stale = seen.json("ensure stale", &mut ensure(&root, &project, "app"), 0);
    assert_eq!(stale["status"], "stale");
    assert!(stale["failure"].is_object(), "{stale}");
    // No last good artifact: the error object with the failure record.
    let failed = seen.json("ensure failed", &mut ensure(&root, &project, "fresh"), 1);
    assert_eq!(
        (&failed["kind"], &failed["status"]),
        (&"failure".into(), &"failed".into())
    );
    std::fs::remove_file(project.join("fail")).unwrap();

    let imported = seen.json(
        "import a directory",
        warmcache(&root)
            .arg("import")
            .arg(project.join("src"))
            .args(["--name", "tree"]),
        0,
    );
    assert_eq!(imported["created"], true);
    let archive = tmp.path().join("a.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&project)
        .arg("src")
        .status()
        .unwrap();
    assert!(status.success());
    let extracted = seen.json(
        "import an archive",
        warmcache(&root).arg("import").arg(&archive),
        0,
    );
    assert_eq!(extracted["archive"], "tar");

    seen.json("path", warmcache(&root).args(["path", "tree"]), 0);
    seen.json(
        "path with a lease",
        warmcache(&root).args(["path", "tree", "--lease", "1m"]),
        0,
    );
    seen.json(
        "path of an unknown entry",
        warmcache(&root).args(["path", "nobody"]),
        1,
    );

    let status = seen.json("status", warmcache(&root).arg("status"), 0);
    assert!(status["entries"].as_array().unwrap().len() >= 3, "{status}");
    seen.json(
        "status of a failing entry",
        warmcache(&root).args(["status", "fresh"]),
        0,
    );

    seen.json("verify", warmcache(&root).arg("verify"), 0);

    let dest = tmp.path().join("dest");
    seen.json(
        "activate",
        warmcache(&root).arg("activate").arg("tree").arg(&dest),
        0,
    );
    seen.json(
        "activate again, replacing, as a symlink",
        warmcache(&root)
            .arg("activate")
            .arg("tree")
            .arg(&dest)
            .args(["--link", "symlink"]),
        0,
    );

    let dry = seen.json(
        "gc dry run over budget",
        warmcache(&root).args(["gc", "--dry-run", "--max-size", "0", "--evict", "globs"]),
        0,
    );
    assert!(!dry["removed"].as_array().unwrap().is_empty(), "{dry}");
    seen.json("gc", warmcache(&root).args(["gc", "--max-age", "30d"]), 0);
    let stats = seen.json("stats", warmcache(&root).arg("stats"), 0);
    assert!(stats.is_object(), "{stats}");

    // Usage errors: a missing argument, an unknown command, a bad value.
    for (label, args) in [
        ("usage: missing name", &["ensure"][..]),
        ("usage: unknown command", &["no-such-command"][..]),
        ("usage: bad size", &["gc", "--max-size", "lots"][..]),
    ] {
        let usage = seen.json(label, warmcache(&root).args(args), 2);
        assert_eq!(usage["kind"], "usage");
    }

    for name in [
        "activate", "ensure", "error", "gc", "import", "path", "stats", "status", "verify",
    ] {
        assert!(
            seen.0.contains(&format!("warmcache.{name}/1")),
            "{name} not met: {:?}",
            seen.0
        );
    }
}

#[test]
fn every_remote_command_prints_what_its_schema_says() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let project = project(tmp.path());
    let shared = server.url("shared");
    let mut seen = Seen::default();
    let s3 = |root: &Path| warmcache_s3(&server, root);

    // ensure --push: the remote's part in the result.
    let mut cmd = s3(&root_a);
    cmd.current_dir(&project).args([
        "ensure", "app", "--input", "src/*", "--build", BUILD, "--remote", &shared, "--push",
    ]);
    let pushed = seen.json("ensure --push", &mut cmd, 0);
    assert!(pushed["remote"]["pushed"].is_object(), "{pushed}");

    let present = seen.json(
        "push, already there",
        s3(&root_a).args(["push", "app", "--remote", &shared]),
        0,
    );
    assert_eq!(present["status"], "present");
    seen.json(
        "import to push",
        s3(&root_a)
            .arg("import")
            .arg(project.join("src"))
            .args(["--name", "tree"]),
        0,
    );
    let first = seen.json("push", s3(&root_a).args(["push", "tree", "--remote", &shared]), 0);
    assert_eq!(first["status"], "pushed");

    let pull = |root: &Path, extra: &[&str]| {
        let mut cmd = s3(root);
        cmd.current_dir(&project)
            .args([
                "pull", "app", "--input", "src/*", "--build", BUILD, "--remote", &shared,
            ])
            .args(extra);
        cmd
    };
    let pulled = seen.json("pull", &mut pull(&root_b, &[]), 0);
    assert_eq!(pulled["status"], "pulled");
    let miss = seen.json("pull miss", &mut pull(&root_b, &["--key", "other"]), 0);
    assert_eq!(miss["status"], "miss");
    seen.json(
        "pull miss --strict",
        &mut pull(&root_b, &["--key", "other", "--strict"]),
        1,
    );

    // Snapshots: uploaded, unchanged, refused by the warmth guard; restores.
    let tree = support::make_tree(&tmp.path().join("tree"), 20, 4096, 1);
    let small = support::make_tree(&tmp.path().join("small"), 2, 64, 2);
    let key = server.url("snap");
    let snap = |root: &Path, dir: &Path, extra: &[&str]| {
        let mut cmd = s3(root);
        cmd.arg("snapshot").arg(dir).args(["--remote", &key]).args(extra);
        cmd
    };
    let restore = |root: &Path, dir: &Path, key: &str, extra: &[&str]| {
        let mut cmd = s3(root);
        cmd.arg("restore").arg(dir).args(["--remote", key]).args(extra);
        cmd
    };
    assert_eq!(
        seen.json("snapshot", &mut snap(&root_a, &tree, &[]), 0)["status"],
        "uploaded"
    );
    assert_eq!(
        seen.json("snapshot unchanged", &mut snap(&root_a, &tree, &[]), 0)["status"],
        "unchanged"
    );
    assert_eq!(
        seen.json("snapshot refused", &mut snap(&root_a, &small, &[]), 0)["status"],
        "refused"
    );
    let target = tmp.path().join("restored");
    assert_eq!(
        seen.json("restore", &mut restore(&root_b, &target, &key, &[]), 0)["status"],
        "restored"
    );
    assert_eq!(
        seen.json("restore unchanged", &mut restore(&root_b, &target, &key, &[]), 0)["status"],
        "unchanged"
    );
    let none = server.url("nothing-yet");
    assert_eq!(
        seen.json(
            "restore, no snapshot",
            &mut restore(&root_b, &target, &none, &[]),
            0
        )["status"],
        "no-snapshot"
    );
    seen.json(
        "restore, no snapshot, --strict",
        &mut restore(&root_b, &target, &none, &["--strict"]),
        1,
    );
    // A branch's first restore from main's key, and the snapshot it seeds (docs/DESIGN.md,
    // "Fallback keys"); a read-only machine's snapshot and push ("Read-only writers").
    let branch = server.url("branch");
    let branch_dir = tmp.path().join("branch-tree");
    let fell_back = seen.json(
        "restore from a fallback",
        &mut restore(&root_b, &branch_dir, &branch, &["--fallback", &key]),
        0,
    );
    assert_eq!(fell_back["exact"], false, "{fell_back}");
    let seeded = seen.json(
        "snapshot seeded from a fallback",
        s3(&root_b)
            .arg("snapshot")
            .arg(&branch_dir)
            .args(["--remote", &branch]),
        0,
    );
    assert!(seeded["seeded_from"].is_string(), "{seeded}");
    assert_eq!(
        seen.json(
            "snapshot, read-only",
            snap(&root_a, &tree, &[]).arg("--read-only"),
            0
        )["status"],
        "read_only"
    );
    assert_eq!(
        seen.json(
            "push, read-only",
            s3(&root_a).args([
                "push",
                "tree",
                "--remote",
                &server.url("elsewhere"),
                "--read-only"
            ]),
            0
        )["status"],
        "read_only"
    );
    assert_eq!(
        seen.json("snapshot --force", &mut snap(&root_a, &small, &["--force"]), 0)["status"],
        "uploaded"
    );

    let gc = |extra: &[&str]| {
        let mut cmd = s3(&root_a);
        cmd.args(["gc", "--remote", &key, "--grace", "1s"]).args(extra);
        cmd
    };
    seen.json("gc --remote --dry-run", &mut gc(&["--dry-run"]), 0);
    let collected = seen.json("gc --remote", &mut gc(&["--keep", "0"]), 0);
    assert!(collected["kept"].is_object(), "{collected}");
    seen.json(
        "gc --remote with --max-size: usage",
        &mut gc(&["--max-size", "1G"]),
        2,
    );

    // The remote unreachable: advisory results, and errors with --strict.
    server.set_down(true);
    for (label, mut cmd, code) in [
        ("snapshot, remote down", snap(&root_a, &tree, &[]), 0),
        ("restore, remote down", restore(&root_b, &target, &key, &[]), 0),
        (
            "restore, remote down, --strict",
            restore(&root_b, &target, &key, &["--strict"]),
            1,
        ),
        (
            "push, remote down",
            {
                let mut c = s3(&root_a);
                c.args(["push", "tree", "--remote", &shared]);
                c
            },
            0,
        ),
        ("pull, remote down", pull(&tmp.path().join("c"), &[]), 0),
        ("gc --remote, remote down", gc(&[]), 1),
    ] {
        let value = seen.json(label, &mut cmd, code);
        if code == 0 {
            assert_eq!(value["status"], "degraded", "{label}: {value}");
        }
    }
    let mut cmd = s3(&root_a);
    cmd.current_dir(&project).args([
        "ensure", "other", "--input", "src/*", "--build", BUILD, "--remote", &shared, "--push",
    ]);
    let degraded = seen.json("ensure --push, remote down", &mut cmd, 0);
    assert!(degraded["remote"]["warnings"].is_array(), "{degraded}");

    for name in [
        "ensure", "error", "gc", "import", "pull", "push", "restore", "snapshot",
    ] {
        assert!(
            seen.0.contains(&format!("warmcache.{name}/1")),
            "{name} not met: {:?}",
            seen.0
        );
    }
}

/// The commands `warmcache --help` lists (not `help`).
fn commands() -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let help = support::ok(warmcache(tmp.path()).arg("--help"));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_has_a_schema_document() {
    let commands = commands();
    assert!(commands.len() >= 11, "{commands:?}");
    let documents = schemas::documents();
    for command in commands.iter().map(String::as_str).chain(["error"]) {
        assert!(
            documents.contains_key(command),
            "`warmcache {command}` has no schema document {}/{command}.schema.json (docs/DESIGN.md, \"JSON output\")",
            schemas::dir().display()
        );
    }
    for name in documents.keys() {
        assert!(
            name == "error" || commands.contains(name),
            "docs/json/{name}.schema.json describes no command"
        );
    }
}

#[test]
fn an_undocumented_field_or_a_wrong_type_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let src = tmp.path().join("file");
    std::fs::write(&src, "x").unwrap();
    let imported = support::json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(&src)
        .args(["--name", "f", "--json"])));
    let found = support::json_ok(&run(warmcache(&root).args(["path", "f", "--json"])));
    let usage = support::json_exit(&run(warmcache(&root).args(["--json", "ensure"])), 2);
    for value in [imported, found, usage] {
        let mut extra = value.clone();
        extra["undocumented"] = serde_json::json!(1);
        assert!(
            !schemas::problems(&extra).is_empty(),
            "a new field passed: {extra}"
        );
        let mut retyped = value.clone();
        retyped["error"] = serde_json::json!(7);
        retyped["path"] = serde_json::json!(7);
        assert!(
            !schemas::problems(&retyped).is_empty(),
            "a retyped field passed: {retyped}"
        );
        let mut unnamed = value.clone();
        unnamed.as_object_mut().unwrap().remove("schema");
        assert!(
            !schemas::problems(&unnamed).is_empty(),
            "an object without identity passed"
        );
        let mut other_major = value;
        let id = other_major["schema"].as_str().unwrap().replace("/1", "/2");
        other_major["schema"] = id.into();
        assert!(
            !schemas::problems(&other_major).is_empty(),
            "another major version passed"
        );
    }
}
