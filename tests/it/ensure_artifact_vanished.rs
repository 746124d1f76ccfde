//! The artifact vanishing behind the catalog's back (deleted by hand) is a miss that rebuilds,
//! not an error; and a hit builds nothing.

use crate::support::*;

#[test]
fn deleted_artifact_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let counter = tmp.path().join("runs");
    std::fs::write(tmp.path().join("in.txt"), "input").unwrap();
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(tmp.path()).env("COUNTER", &counter).args([
            "ensure",
            "models/m",
            "--input",
            "in.txt",
            "--output",
            "dir",
            "--build",
            "echo run >> \"$COUNTER\"; mkdir -p \"$WARMCACHE_OUT/bin\"; cp in.txt \"$WARMCACHE_OUT/bin/model\"",
        ]);
        cmd
    };
    let runs = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let first = json_ok(&run(ensure().arg("--json")));
    assert_eq!(first["status"], "built");
    let hit = json_ok(&run(ensure().arg("--json")));
    assert_eq!(hit["status"], "hit");
    assert_eq!(runs(), 1);

    let content = std::path::Path::new(first["path"].as_str().unwrap());
    crate::support::force_remove(content.parent().unwrap());
    let rebuilt = json_ok(&run(ensure().arg("--json")));
    assert_eq!(rebuilt["status"], "built", "{rebuilt}");
    assert_eq!(runs(), 2);
    assert_eq!(
        std::fs::read_to_string(content.join("bin/model")).unwrap(),
        "input"
    );
    assert_eq!(
        ok(warmcache(&root).args(["path", "models/m"])),
        first["path"].as_str().unwrap()
    );
}
