//! A cache hit only reads (docs/DESIGN.md, "A hit only reads"): it writes nothing to the catalog
//! (access times are coarse) and leaves staging alone (the leftovers of dead processes are swept
//! by the next operation that stages something, or by `verify` and `gc`), so that the hot path
//! of every start is a walk of the inputs and a few reads.

use std::path::Path;

use crate::support::*;

/// Size and modification time of each catalog file, to see whether anything wrote to them.
fn catalog_state(root: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    ["catalog.sqlite", "catalog.sqlite-wal"]
        .iter()
        .filter_map(|name| {
            let meta = std::fs::metadata(root.join("v1").join(name)).ok()?;
            Some((name.to_string(), meta.len(), meta.modified().ok()?))
        })
        .collect()
}

#[test]
fn a_hit_writes_nothing_and_leaves_staging_to_the_next_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    // Written an hour ago: a file written in the last moments is racily clean and re-read (and
    // its stat cache entry rewritten) until its clock tick has surely passed.
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..50 {
        let path = project.join(format!("src/f{i}.txt"));
        std::fs::write(&path, format!("{i}")).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(an_hour_ago).unwrap();
    }
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&project).args([
            "ensure",
            "e",
            "--input",
            "src/**",
            "--build",
            "cat src/* > \"$WARMCACHE_OUT\"",
            "--json",
        ]);
        json_ok(&run(&mut cmd))
    };
    assert_eq!(ensure()["status"], "built");
    // What a process killed while staging leaves behind: a location and its unlocked lock file.
    let staging = root.join("v1/staging");
    std::fs::create_dir(staging.join("build-4242-1a2b3c-1")).unwrap();
    std::fs::write(staging.join("build-4242-1a2b3c-1/partial"), b"p").unwrap();
    std::fs::write(staging.join("build-4242-1a2b3c-1.lock"), b"").unwrap();
    let before = catalog_state(&root);
    // Modification times have a coarse tick: let one pass, so a write would show.
    std::thread::sleep(std::time::Duration::from_millis(50));
    for _ in 0..3 {
        assert_eq!(ensure()["status"], "hit");
        ok(warmcache(&root).args(["path", "e"]));
    }
    assert_eq!(catalog_state(&root), before, "a hit wrote to the catalog");
    assert_eq!(
        list(&staging).len(),
        2,
        "a hit swept staging, which only a writer needs"
    );
    // The next operation that stages something sweeps what the dead process left.
    let file = tmp.path().join("in.txt");
    std::fs::write(&file, "x").unwrap();
    ok(warmcache(&root)
        .arg("import")
        .arg(&file)
        .args(["--name", "other"]));
    assert_eq!(
        list(&staging),
        Vec::<String>::new(),
        "the next writer did not sweep"
    );
}
