//! Nothing outlives its command: SIGINT, SIGTERM or SIGHUP to warmcache while a builder, an
//! import hook or an activation hook runs ends the command's whole process group (its `sh` and
//! the `sleep` it started), removes the staging, releases the locks and exits 130, 143 or 129.
//! An `ensure` started right after builds exactly once, never while the old builder runs. After
//! `kill -9` of warmcache, the command's group dies too, and the next `ensure` works.
//!
//! Each command records its pid (`$$`) and its background child's in `pids`; the signal comes at
//! a random moment after the command started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The command under test: records its pid and its child's, then waits for the child.
const COMMAND: &str = "echo $$ >> \"$PIDS\"; sleep 30 & echo $! >> \"$PIDS\"; wait";
/// Generous bound for things that do happen, on a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    pids: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("in.txt"), "input").unwrap();
        Setup {
            root: dir.join("cache"),
            pids: dir.join("pids"),
            dir,
            _tmp: tmp,
        }
    }

    fn warmcache(&self) -> Command {
        let mut cmd = warmcache(&self.root);
        cmd.current_dir(&self.dir).env("PIDS", &self.pids);
        cmd
    }

    /// `ensure a` with `build` as its builder.
    fn ensure(&self, build: &str) -> Command {
        let mut cmd = self.warmcache();
        cmd.args(["ensure", "a", "--input", "in.txt", "--build", build]);
        cmd
    }

    /// Starts `cmd`, waits until its command recorded its pid, then waits a random moment more.
    fn start(&self, cmd: &mut Command) -> Child {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while self.recorded().is_empty() {
            assert!(start.elapsed() < LIMIT, "the command never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let delay = Rng::new(u64::from(seed)).below(600);
        println!("signal {delay} ms after the command started");
        std::thread::sleep(Duration::from_millis(delay));
        child
    }

    fn recorded(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// No process the command recorded runs any more (a zombie runs nothing).
    fn assert_all_dead(&self, when: &str) {
        let pids = self.recorded();
        assert!(!pids.is_empty(), "{when}: no pid recorded");
        for pid in pids {
            assert!(
                !running(pid),
                "{when}: process {pid} of the command's group survived"
            );
        }
    }

    fn assert_no_staging(&self, when: &str) {
        assert_eq!(
            list(&self.root.join("v1/staging")),
            Vec::<String>::new(),
            "{when}: staging left"
        );
    }

    /// An `ensure` started now builds exactly once, and not while any recorded process runs.
    fn assert_next_ensure_builds_once(&self, when: &str) {
        let builds = self.dir.join("builds");
        let build = format!(
            "for p in $(cat \"$PIDS\"); do s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); \
             if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo overlap-$p >> {b}; fi; done; \
             echo new >> {b}; cp in.txt \"$WARMCACHE_OUT\"",
            b = builds.display()
        );
        let path = ok(&mut self.ensure(&build));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "input", "{when}");
        assert_eq!(std::fs::read_to_string(&builds).unwrap(), "new\n", "{when}");
        assert_consistent(&self.root, when);
    }
}

/// Whether `pid` runs: present in /proc and not a zombie.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn send(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: plain kill(2) on a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

fn exit_code(mut child: Child) -> Option<i32> {
    child.wait().unwrap().code()
}

/// The builder that would produce the artifact if it were not stopped, and would say so.
fn builder(dir: &Path) -> String {
    format!(
        "{COMMAND}; echo old >> {}; cp in.txt \"$WARMCACHE_OUT\"",
        dir.join("builds").display()
    )
}

fn builder_stopped_by(signal: i32, code: i32) {
    let s = Setup::new();
    let child = s.start(&mut s.ensure(&builder(&s.dir)));
    send(&child, signal);
    assert_eq!(exit_code(child), Some(code), "exit code after signal {signal}");
    s.assert_all_dead("right after warmcache exited");
    s.assert_no_staging("right after warmcache exited");
    s.assert_next_ensure_builds_once("the next ensure");
}

#[test]
fn sigint_ends_the_builder_group_and_exits_130() {
    builder_stopped_by(libc::SIGINT, 130);
}

#[test]
fn sigterm_ends_the_builder_group_and_exits_143() {
    builder_stopped_by(libc::SIGTERM, 143);
}

#[test]
fn sighup_ends_the_builder_group_and_exits_129() {
    builder_stopped_by(libc::SIGHUP, 129);
}

fn import_hook_stopped_by(signal: i32, code: i32) {
    let s = Setup::new();
    let mut cmd = s.warmcache();
    cmd.args(["import", "in.txt", "--name", "imported", "--hook", COMMAND]);
    let child = s.start(&mut cmd);
    send(&child, signal);
    assert_eq!(exit_code(child), Some(code), "exit code after signal {signal}");
    s.assert_all_dead("right after warmcache exited");
    s.assert_no_staging("right after warmcache exited");
    // Nothing was imported; importing again works.
    let out = run(s.warmcache().args(["path", "imported"]));
    assert!(!out.status.success(), "the interrupted import was published");
    ok(s.warmcache().args(["import", "in.txt", "--name", "imported"]));
    assert_consistent(&s.root, "after the next import");
}

#[test]
fn sigint_ends_an_import_hook_group_and_exits_130() {
    import_hook_stopped_by(libc::SIGINT, 130);
}

#[test]
fn sigterm_ends_an_import_hook_group_and_exits_143() {
    import_hook_stopped_by(libc::SIGTERM, 143);
}

#[test]
fn sighup_ends_an_import_hook_group_and_exits_129() {
    import_hook_stopped_by(libc::SIGHUP, 129);
}

fn activate_hook_stopped_by(signal: i32, code: i32) {
    let s = Setup::new();
    ok(s.warmcache().args(["import", "in.txt", "--name", "a"]));
    let app = s.dir.join("app");
    std::fs::create_dir(&app).unwrap();
    let mut cmd = s.warmcache();
    cmd.args(["activate", "a"])
        .arg(app.join("current"))
        .args(["--hook", COMMAND]);
    let child = s.start(&mut cmd);
    send(&child, signal);
    assert_eq!(exit_code(child), Some(code), "exit code after signal {signal}");
    s.assert_all_dead("right after warmcache exited");
    // DEST was not placed, and nothing was left beside it.
    assert_eq!(list(&app), Vec::<String>::new(), "beside DEST");
    ok(s.warmcache().args(["activate", "a"]).arg(app.join("current")));
    assert_eq!(std::fs::read_to_string(app.join("current")).unwrap(), "input");
}

#[test]
fn sigint_ends_an_activate_hook_group_and_exits_130() {
    activate_hook_stopped_by(libc::SIGINT, 130);
}

#[test]
fn sigterm_ends_an_activate_hook_group_and_exits_143() {
    activate_hook_stopped_by(libc::SIGTERM, 143);
}

#[test]
fn sighup_ends_an_activate_hook_group_and_exits_129() {
    activate_hook_stopped_by(libc::SIGHUP, 129);
}

#[test]
fn sigkill_of_warmcache_takes_the_builder_group_with_it() {
    let s = Setup::new();
    let mut child = s.start(&mut s.ensure(&builder(&s.dir)));
    child.kill().unwrap(); // SIGKILL: no handler runs.
    child.wait().unwrap();
    // The kernel delivers the parent-death signal; give it a bounded moment.
    let start = Instant::now();
    while s.recorded().into_iter().any(running) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    s.assert_all_dead("10 s after warmcache was killed with SIGKILL");
    s.assert_next_ensure_builds_once("the next ensure");
}
