//! Builds run at most once at a time, even after `kill -9` of warmcache AND of the supervisor
//! that leads the builder's process group (`pkill -9 warmcache` takes both: they are the same
//! binary). The builder's background child then survives under PID 1 with the entry lock free;
//! the next `ensure` of the entry must end it (it carries the dead run's token) before its own
//! builder starts, and build exactly once.
//!
//! To kill both "at once" without racing warmcache's own reaction, warmcache is stopped first (a
//! stopped process runs no code, so it cannot act on its child's death), then the supervisor is
//! killed, then warmcache. (Stopping the supervisor instead would not do: when warmcache died, the
//! kernel would send SIGHUP to the builder's group, newly orphaned with a stopped member.)

use std::path::PathBuf;
use std::process::{Child, Stdio};

use crate::support::*;

/// Records the builder's `sh` pid and its background child's, then waits for the child.
const OLD_BUILDER: &str = "echo $$ >> \"$PIDS\"; sleep 300 & echo $! >> \"$PIDS\"; wait; \
                           echo old >> builds; cp in.txt \"$WARMCACHE_OUT\"";

/// Notes every recorded process that still runs (a zombie does not) as an overlap, then builds.
const NEW_BUILDER: &str = "for p in $(cat \"$PIDS\"); do s=$(cut -d' ' -f3 /proc/$p/stat \
                           2>/dev/null); if [ -n \"$s\" ] && [ \"$s\" != Z ]; then \
                           echo overlap-$p >> builds; fi; done; echo new >> builds; \
                           cp in.txt \"$WARMCACHE_OUT\"";

/// `pid`'s state letter and parent, from /proc; None once it is gone.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit(')').next()?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` runs: present in /proc and not a zombie.
fn running(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) on a process this test started (or its descendant).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

fn recorded(pids: &PathBuf) -> Vec<i32> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn next_ensure_ends_the_orphaned_builder_before_building_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let root = dir.join("cache");
    let pids = dir.join("pids");
    std::fs::write(dir.join("in.txt"), "input").unwrap();
    let ensure = |build: &str| {
        let mut cmd = warmcache(&root);
        cmd.current_dir(&dir)
            .env("PIDS", &pids)
            .args(["ensure", "a", "--input", "in.txt", "--build", build]);
        cmd
    };

    let mut first: Child = ensure(OLD_BUILDER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the builder recording its pids", || recorded(&pids).len() >= 2);
    let (sh, sleeper) = (recorded(&pids)[0], recorded(&pids)[1]);
    let warmcache_pid = i32::try_from(first.id()).unwrap();
    // The supervisor is the builder's `sh`'s parent, and warmcache's child.
    let supervisor = stat(sh).expect("the builder's sh runs").1;
    assert_eq!(
        stat(supervisor).map(|(_, ppid)| ppid),
        Some(warmcache_pid),
        "the builder's parent is not warmcache's child"
    );

    // warmcache is stopped while the supervisor is killed, so that it cannot react to its
    // child's death either (as when both get SIGKILL at once), then it is killed too.
    signal(warmcache_pid, libc::SIGSTOP);
    wait_until("warmcache stopping", || {
        stat(warmcache_pid).is_some_and(|(state, _)| state == 'T')
    });
    signal(supervisor, libc::SIGKILL);
    wait_until("the supervisor dying", || !running(supervisor));
    // The `sh` dies with the supervisor (its parent-death signal); the sleep it started does
    // not: this is the orphan the next ensure must end.
    wait_until("the builder's sh dying", || !running(sh));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        running(sleeper),
        "the precondition failed: the builder's child did not survive"
    );

    let path = ok(&mut ensure(NEW_BUILDER));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "input");
    assert_eq!(
        std::fs::read_to_string(dir.join("builds")).unwrap(),
        "new\n",
        "the new builder must run exactly once, after every process of the old one ended"
    );
    for pid in recorded(&pids) {
        assert!(!running(pid), "process {pid} of the killed build still runs");
    }
    assert_consistent(&root, "after the second ensure");

    // The record served its purpose: a hit and another build find nothing left to end.
    let again = run(&mut ensure(NEW_BUILDER));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(dir.join("builds")).unwrap(), "new\n");
}
