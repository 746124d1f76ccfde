//! A→B→A with the remote gc in between (docs/DESIGN.md, "Remote gc"): once the gc condemned
//! snapshot A's manifest, a snapshot of tree A again must not just point at that manifest, since
//! a gc run that read the pointer before the snapshot moved it may delete the manifest at any
//! moment once its grace is over. The snapshot writes the manifest afresh (a new object, which
//! the gc does not delete on the old condemnation), naming no condemned pack.
//!
//! It makes objects old (their `LastModified`), which only the in-process backend can: it runs
//! there only, and says so on the others.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::backend;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{pointer, restore, snapshot};
use crate::support::{describe_tree, json_ok, make_tree, run, warmcache_s3};

const KEY: &str = "ci/aba";

fn gc(server: &TestS3, root: &Path) -> Output {
    let mut cmd = warmcache_s3(server, root);
    cmd.args(["gc", "--remote"])
        .arg(server.url(KEY))
        .args(["--json", "--keep", "0", "--grace", "1s"]);
    run(&mut cmd)
}

/// Moves every object under KEY an hour back, as if written long ago.
fn age_everything(server: &TestS3) {
    let then = std::time::SystemTime::now() - Duration::from_secs(3600);
    for dir in ["snapshots", "packs"] {
        let Ok(entries) = std::fs::read_dir(server.object_path(&format!("{KEY}/{dir}"))) else {
            continue;
        };
        for entry in entries {
            let file = std::fs::File::options()
                .write(true)
                .open(entry.unwrap().path())
                .unwrap();
            file.set_modified(then).unwrap();
        }
    }
}

#[test]
fn a_condemned_manifest_is_written_afresh_when_its_tree_comes_back() {
    if backend::skip_without_aging("a_condemned_manifest_is_written_afresh_when_its_tree_comes_back") {
        return;
    }
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = make_tree(&tmp.path().join("src"), 120, 8 * 1024, 47);
    let tree_a = describe_tree(&src);
    let a = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let digest_a = a["digest"].as_str().unwrap().to_owned();
    let manifest_a = format!("snapshots/{digest_a}.json");

    // Tree B: one file changed.
    let changed = src.join("d1/s1/f1.bin");
    let original = std::fs::read(&changed).unwrap();
    std::fs::write(&changed, b"tree B").unwrap();
    let b = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(b["status"], "uploaded", "{b}");
    let pointer_b = std::fs::read(server.object_path(&format!("{KEY}/pointer.json"))).unwrap();

    // The gc condemns A's manifest (kept by nothing), and its grace passes.
    age_everything(&server);
    let report = json_ok(&gc(&server, &tmp.path().join("gc")));
    let condemned: Vec<&str> = report["condemned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert!(condemned.contains(&manifest_a.as_str()), "{report}");
    std::thread::sleep(Duration::from_millis(1500));

    // Tree A again.
    std::fs::write(&changed, &original).unwrap();
    let again = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(again["status"], "uploaded", "{again}");
    assert_eq!(again["digest"], digest_a.as_str(), "{again}");
    assert_eq!(pointer(&server, KEY)["digest"], digest_a.as_str());

    // A gc run that read the pointer before the snapshot moved it (it still names B) deletes
    // what was condemned more than a grace ago and not written since.
    let pointer_path = server.object_path(&format!("{KEY}/pointer.json"));
    let pointer_a = std::fs::read(&pointer_path).unwrap();
    std::fs::write(&pointer_path, &pointer_b).unwrap();
    let racing = json_ok(&gc(&server, &tmp.path().join("gc")));
    std::fs::write(&pointer_path, &pointer_a).unwrap();
    let deleted: Vec<&str> = racing["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert!(
        !deleted.contains(&manifest_a.as_str()),
        "the republished manifest was deleted: {racing}"
    );

    // A's snapshot restores, and still does after a further gc run.
    let restored = tmp.path().join("restored");
    let report = json_ok(&restore(&server, &tmp.path().join("cache2"), &restored, KEY, &[]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&restored), tree_a);
    std::thread::sleep(Duration::from_millis(1500));
    json_ok(&gc(&server, &tmp.path().join("gc")));
    let restored = tmp.path().join("restored2");
    let report = json_ok(&restore(&server, &tmp.path().join("cache3"), &restored, KEY, &[]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(describe_tree(&restored), tree_a);
}
