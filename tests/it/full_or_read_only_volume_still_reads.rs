//! A cache on a full or read-only volume: reading commands (`path`, `status`, `verify`) keep
//! working, `ensure` with changed inputs serves the last good artifact as stale, `gc` frees space
//! on the full disk (even with no WAL index left by an earlier process), `gc` on a read-only one
//! says why it cannot, and no message advises moving an intact catalog aside.

use std::path::Path;

use crate::support::in_namespace;

/// Fills a 4 MB tmpfs holding a cache with two entries, then runs each command and prints
/// `NAME rc=N` markers (and the commands' own output) for the assertions.
const SCRIPT: &str = r#"
    mount -t tmpfs -o size=4m tmpfs "$2" || exit 1
    B="$1"; M="$2"; F="$3"; BIG="$4"; P="$5"
    run() { name="$1"; shift; "$B" --root "$M/cache" "$@"; echo "$name rc=$?" >&2; }
    build() { n="$1"; shift; (cd "$P" && run "$n" ensure tool --input in.txt --build 'cat in.txt > "$WARMCACHE_OUT"' "$@"); }
    run import-small import "$F" --name small >/dev/null
    run import-big import "$BIG" --name big >/dev/null
    build build-tool >/dev/null
    # What an older warmcache (or another SQLite client) leaves after a clean close: no WAL index.
    rm -f "$M/cache/v1/catalog.sqlite-wal" "$M/cache/v1/catalog.sqlite-shm"
    head -c 8000000 /dev/zero > "$M/fill" 2>/dev/null
    echo changed > "$P/in.txt"
    build full-ensure-stale
    run full-path path small
    run full-status status
    run full-verify verify
    run full-import import "$F" --name another
    run full-gc gc --evict big --max-size 0
    run after-gc-import import "$F" --name another
    mount -o remount,ro "$M" || exit 1
    build ro-ensure-stale
    build ro-ensure-lease --lease 5m
    run ro-path path small
    run ro-status status --json
    run ro-verify verify
    run ro-gc gc
    run ro-gc-dry gc --dry-run
    run ro-import import "$F" --name third
"#;

#[test]
fn reading_commands_work_and_gc_frees_space_or_says_why_not() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let small = tmp.path().join("small");
    std::fs::write(&small, b"small\n").unwrap();
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![7u8; 1 << 20]).unwrap();
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), b"original\n").unwrap();
    let out = in_namespace(
        SCRIPT,
        &[
            Path::new(env!("CARGO_BIN_EXE_warmcache")),
            &mnt,
            &small,
            &big,
            &project,
        ],
    );
    let rc = |name: &str| {
        let marker = format!("{name} rc=");
        let at = out
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
        out[at + marker.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    for (name, expected) in [
        ("import-small", "0"),
        ("import-big", "0"),
        ("build-tool", "0"),
        ("full-ensure-stale", "0"),
        ("ro-ensure-stale", "0"),
        ("ro-ensure-lease", "0"),
        ("full-path", "0"),
        ("full-status", "0"),
        ("full-verify", "0"),
        ("full-import", "1"),
        ("full-gc", "0"),
        ("after-gc-import", "0"),
        ("ro-path", "0"),
        ("ro-status", "0"),
        ("ro-verify", "0"),
        ("ro-gc", "1"),
        ("ro-gc-dry", "0"),
        ("ro-import", "1"),
    ] {
        assert_eq!(rc(name), expected, "{name}:\n{out}");
    }
    assert!(
        out.contains("no space left"),
        "the full import names the cause:\n{out}"
    );
    assert!(
        out.contains("can only be read"),
        "gc on a read-only cache says why it cannot:\n{out}"
    );
    assert!(
        !out.contains("move it aside"),
        "an intact catalog must never be called damaged:\n{out}"
    );
    assert!(
        out.contains("\"name\":\"another\""),
        "status read the catalog:\n{out}"
    );
}
