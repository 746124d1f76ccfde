//! Counting never fails a hit: on a full volume (the journal cannot grow) and on a read-only one
//! (it cannot even be created) hits exit 0 with their path and no warning, and `stats` still
//! reports what the catalog and the journals hold (docs/DESIGN.md, "Counting hits without
//! writing").

use std::path::Path;

use crate::support::in_namespace;

const SCRIPT: &str = r#"
    mount -t tmpfs -o size=4m tmpfs "$2" || exit 1
    B="$1"; M="$2"; P="$3"
    run() { name="$1"; shift; "$B" --root "$M/cache" "$@"; echo "$name rc=$?" >&2; }
    hit() { n="$1"; (cd "$P" && run "$n" ensure tool --input in.txt --build 'cat in.txt > "$WARMCACHE_OUT"'); }
    hit build
    hit hit-1
    run stats-1 stats --json
    hit hit-2
    head -c 8000000 /dev/zero > "$M/fill" 2>/dev/null
    hit full-hit
    mount -o remount,ro "$M" || exit 1
    hit ro-hit
    run ro-stats stats --json
"#;

#[test]
fn hits_succeed_and_stats_read_on_a_full_or_read_only_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), b"x\n").unwrap();
    let out = in_namespace(
        SCRIPT,
        &[Path::new(env!("CARGO_BIN_EXE_warmcache")), &mnt, &project],
    );
    for name in [
        "build", "hit-1", "stats-1", "hit-2", "full-hit", "ro-hit", "ro-stats",
    ] {
        assert!(out.contains(&format!("{name} rc=0")), "{name}:\n{out}");
    }
    // (A full disk has its own warning, that the stat cache was not saved: not about counting.)
    let lower = out.to_lowercase();
    assert!(
        !lower.contains("journal") && !lower.contains("count") && !lower.contains("panic"),
        "counting said nothing:\n{out}"
    );
    // Three or more paths printed by the hits after the build.
    let mount = mnt.to_string_lossy();
    let paths = out.lines().filter(|l| l.starts_with(&*mount)).count();
    assert_eq!(paths, 5, "every ensure printed its path:\n{out}");
    // The read-only `stats` sees the folded hit and the one still in a journal (hit-2, written
    // before the disk filled); the full and read-only hits could not be written anywhere.
    let last = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON:\n{out}"));
    let stats: serde_json::Value = serde_json::from_str(last).unwrap();
    let hits = stats["total"]["hits"].as_u64().unwrap();
    assert!((2..=3).contains(&hits), "{stats}");
    assert_eq!(stats["total"]["misses"], 1, "{stats}");
}
