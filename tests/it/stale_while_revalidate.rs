//! Stale-while-revalidate: after an input change, `ensure` serves the last good artifact at once
//! (status `stale`, saying why) and builds the current inputs in a detached background process;
//! a later call gets the fresh artifact. The builder here waits for a gate file, so "at once"
//! is proved by the order of events (the call returned while the build could not have finished),
//! never by a time.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A project with one input and a builder that counts its runs, then waits for `go`.
pub(crate) struct Gated {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Gated {
    /// The pid of the builder that started last (each run appends its pid to `runs`).
    fn last_builder(&self) -> u64 {
        let runs = std::fs::read_to_string(self.path("runs")).unwrap();
        runs.lines().last().unwrap().trim().parse().unwrap()
    }

    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        std::fs::write(tmp.path().join("in.txt"), "version one").unwrap();
        Self { tmp, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn write_input(&self, text: &str) {
        std::fs::write(self.path("in.txt"), text).unwrap();
    }

    pub fn open_gate(&self) {
        std::fs::write(self.path("go"), "").unwrap();
    }

    pub fn close_gate(&self) {
        let _ = std::fs::remove_file(self.path("go"));
    }

    /// How many times the builder started.
    pub fn runs(&self) -> usize {
        std::fs::read_to_string(self.path("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// `ensure e` with the gated builder and `extra` arguments (the flag, `--json`).
    pub fn ensure(&self, extra: &[&str]) -> Command {
        let mut cmd = warmcache(&self.root);
        cmd.current_dir(self.tmp.path()).args([
            "ensure",
            "e",
            "--input",
            "in.txt",
            "--build",
            // Gone with the project when a failing test drops it: never waits forever.
            "echo $$ >> runs; while [ ! -e go ]; do [ -e in.txt ] || exit 1; sleep 0.02; done; \
             cp in.txt \"$WARMCACHE_OUT\"",
        ]);
        cmd.args(extra);
        cmd
    }

    /// Builds the first version in the foreground, and closes the gate.
    pub fn first_build(&self) -> serde_json::Value {
        self.open_gate();
        let built = json_ok(&run(&mut self.ensure(&["--stale-while-revalidate", "--json"])));
        assert_eq!(built["status"], "built", "{built}");
        self.close_gate();
        built
    }
}

/// Whether process `pid` runs (a zombie does not).
pub(crate) fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')').next().unwrap_or("").split_whitespace().next(),
            Some("Z" | "X" | "x")
        ),
        Err(_) => false,
    }
}

/// The pid of the background build a stale result started.
pub(crate) fn background_pid(stale: &serde_json::Value) -> u64 {
    assert_eq!(stale["revalidation"], "started", "{stale}");
    stale["revalidation_pid"].as_u64().unwrap()
}

fn content(v: &serde_json::Value) -> String {
    std::fs::read_to_string(v["path"].as_str().unwrap()).unwrap()
}

/// Staging locations left in the cache (none once every build ended).
pub(crate) fn staging_left(root: &Path) -> Vec<String> {
    list(&root.join("v1/staging"))
}

#[test]
fn a_changed_input_is_served_stale_at_once_and_built_in_the_background() {
    let g = Gated::new();
    let first = g.first_build();
    assert_eq!(g.runs(), 1);

    g.write_input("version two, longer");
    let out = run(&mut g.ensure(&["--stale-while-revalidate", "--json"]));
    let stale = json_ok(&out);
    // Returned while the gate is closed: the new build cannot have finished.
    assert_eq!(stale["status"], "stale", "{stale}");
    assert_eq!(stale["artifact"], first["artifact"]);
    assert_eq!(content(&stale), "version one");
    assert_ne!(stale["fingerprint"], first["fingerprint"]);
    assert!(
        stale["stale_reason"].as_str().unwrap().contains("inputs changed"),
        "{stale}"
    );
    let pid = background_pid(&stale);
    let log = stale["revalidation_log"].as_str().unwrap().to_string();
    let err = stderr(&out);
    assert!(
        err.contains("serving a stale `e`") && err.contains("built in the background"),
        "{err}"
    );
    // The build runs in the background, after the caller is gone.
    wait_until("the background builder to start", || g.runs() == 2);
    assert!(
        alive(pid),
        "the background warmcache ended before its build could"
    );

    g.open_gate();
    wait_until("the background build to end", || !alive(pid));
    let fresh = json_ok(&run(&mut g.ensure(&["--stale-while-revalidate", "--json"])));
    assert_eq!(fresh["status"], "hit", "{fresh}");
    assert_eq!(content(&fresh), "version two, longer");
    assert_eq!(fresh["fingerprint"], stale["fingerprint"]);
    assert_eq!(g.runs(), 2, "the hit built nothing");
    assert!(staging_left(&g.root).is_empty(), "{:?}", staging_left(&g.root));
    let report = std::fs::read_to_string(log).unwrap();
    assert!(
        report.contains("background build of `e`") && report.contains("built "),
        "{report}"
    );

    // The recipe field does the same as the flag.
    std::fs::write(
        g.path("warmcache.toml"),
        "[entry.e]\nstale = \"while-revalidate\"\n",
    )
    .unwrap();
    g.close_gate();
    g.write_input("version three");
    let stale = json_ok(&run(&mut g.ensure(&["--json"])));
    assert_eq!(stale["status"], "stale", "{stale}");
    assert_eq!(content(&stale), "version two, longer");
    let pid = background_pid(&stale);
    g.open_gate();
    wait_until("the background build to end", || !alive(pid));
    let fresh = json_ok(&run(&mut g.ensure(&["--json"])));
    assert_eq!(fresh["status"], "hit", "{fresh}");
    assert_eq!(content(&fresh), "version three");
}

#[test]
fn concurrent_stale_calls_start_at_most_one_build() {
    let g = Gated::new();
    g.first_build();
    g.write_input("version two, longer");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            g.ensure(&["--stale-while-revalidate", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<serde_json::Value> = calls
        .into_iter()
        .map(|c| json_ok(&c.wait_with_output().unwrap()))
        .collect();
    let mut pids = Vec::new();
    for r in &results {
        assert_eq!(r["status"], "stale", "{r}");
        assert_eq!(content(r), "version one");
        match r["revalidation"].as_str() {
            Some("started") => pids.push(r["revalidation_pid"].as_u64().unwrap()),
            Some("under-way") => {}
            other => panic!("unexpected revalidation {other:?}: {r}"),
        }
    }
    assert!(!pids.is_empty(), "no call started the build: {results:?}");
    wait_until("the background builder to start", || g.runs() >= 2);
    // While it runs, more calls start nothing.
    let again = json_ok(&run(&mut g.ensure(&["--stale-while-revalidate", "--json"])));
    assert_eq!(again["revalidation"], "under-way", "{again}");

    g.open_gate();
    wait_until("every background warmcache to end", || {
        pids.iter().all(|&p| !alive(p))
    });
    assert_eq!(
        g.runs(),
        2,
        "one foreground build, then exactly one background build"
    );
    let fresh = json_ok(&run(&mut g.ensure(&["--stale-while-revalidate", "--json"])));
    assert_eq!(fresh["status"], "hit", "{fresh}");
    assert_eq!(content(&fresh), "version two, longer");
}

#[test]
fn without_a_last_good_artifact_the_build_runs_in_the_foreground() {
    let g = Gated::new();
    g.open_gate();
    let out = run(&mut g.ensure(&["--stale-while-revalidate", "--json"]));
    let built = json_ok(&out);
    assert_eq!(built["status"], "built", "{built}");
    assert!(built.get("revalidation").is_none(), "{built}");
    assert_eq!(content(&built), "version one");
    assert_eq!(g.runs(), 1);
    assert!(!stderr(&out).contains("stale"), "{}", stderr(&out));
}

#[test]
fn the_background_build_survives_the_caller_and_its_process_group() {
    use std::os::unix::process::CommandExt;
    let g = Gated::new();
    g.first_build();
    g.write_input("version two, longer");
    // The caller in a process group of its own, killed whole once it returned, as a supervisor
    // or a shell job control would.
    let mut call = g.ensure(&["--stale-while-revalidate", "--json"]);
    call.process_group(0);
    let child = call
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let group = child.id() as i32;
    let stale = json_ok(&child.wait_with_output().unwrap());
    let pid = background_pid(&stale);
    wait_until("the background builder to start", || g.runs() == 2);
    // SAFETY: a signal to the process group the test created.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    // Had the background build been in that group, it would die (maybe after a check here could
    // see it), and the call below would find the inputs unbuilt: stale again, not a hit.

    g.open_gate();
    wait_until("the background build to end", || !alive(pid));
    let fresh = json_ok(&run(&mut g.ensure(&["--stale-while-revalidate", "--json"])));
    assert_eq!(fresh["status"], "hit", "{fresh}");
    assert_eq!(content(&fresh), "version two, longer");
}

#[test]
fn killing_the_background_warmcache_ends_its_builder_and_records_nothing() {
    let g = Gated::new();
    g.first_build();
    g.write_input("version two, longer");
    let stale = json_ok(&run(&mut g.ensure(&["--stale-while-revalidate", "--json"])));
    let pid = background_pid(&stale);
    wait_until("the background builder to start", || g.runs() == 2);
    let builder = g.last_builder();
    assert!(alive(builder));
    // SAFETY: a signal to the background warmcache this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_until("the background warmcache to end", || !alive(pid));
    wait_until("its builder to end with it", || !alive(builder));
    assert!(staging_left(&g.root).is_empty(), "{:?}", staging_left(&g.root));
    let status = json_ok(&run(warmcache(&g.root).args(["status", "e", "--json"])));
    assert!(
        status["entries"][0]["failure"].is_null(),
        "an interrupted build is no failure of the inputs: {status}"
    );

    // The next call starts a new background build, and SIGKILL (no cleanup code runs) still
    // takes the builder down, through its supervisor.
    let stale = json_ok(&run(&mut g.ensure(&["--stale-while-revalidate", "--json"])));
    let pid = background_pid(&stale);
    wait_until("the second background builder to start", || g.runs() == 3);
    let builder = g.last_builder();
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until("the builder to end with the killed warmcache", || !alive(builder));
}
