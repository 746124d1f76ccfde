//! While another process builds an entry, `ensure` waits for it; when the wait reaches
//! `--lock-timeout`, it serves the last good artifact as stale (with the reason) instead of
//! failing, so a start is never blocked longer than the caller allowed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn the_last_good_artifact_beats_a_lock_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let input = tmp.path().join("in.txt");
    let started = tmp.path().join("started");
    std::fs::write(&input, "v1").unwrap();
    let build = format!(
        "touch '{}'; if grep -q v2 in.txt; then sleep 30; fi; cp in.txt \"$WARMCACHE_OUT\"",
        started.display()
    );
    let ensure = || {
        let mut cmd = warmcache(&root);
        cmd.current_dir(tmp.path())
            .args(["ensure", "e", "--input", "in.txt", "--build", &build]);
        cmd
    };
    let first = json_ok(&run(ensure().arg("--json")));
    assert_eq!(first["status"], "built");

    // A slow build of new inputs holds the entry lock.
    std::fs::write(&input, "v2").unwrap();
    std::fs::remove_file(&started).unwrap();
    let mut slow = ensure()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the slow build never started");
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = run(ensure().args(["--lock-timeout", "300ms", "--json"]));
    let stale = json_exit(&out, 0);
    assert_eq!(stale["status"], "stale", "{stale}");
    assert_eq!(stale["artifact"], first["artifact"]);
    assert!(
        stale["stale_reason"].as_str().unwrap().contains("lock timeout"),
        "{stale}"
    );
    assert!(stderr(&out).contains("serving a stale"), "{}", stderr(&out));

    // SIGTERM ends the slow build with its group (exit 143).
    unsafe { libc::kill(slow.id() as i32, libc::SIGTERM) };
    let status = slow.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
}
