//! A failing background build (stale-while-revalidate) leaves nothing behind and is remembered
//! as any failed build is: its staging is gone, the failure is recorded with the builder's
//! output, and the next call still serves the last good artifact without building the same
//! failing inputs again (deterministic) or before the backoff allows (transient).

use std::process::Command;

use crate::stale_while_revalidate::{alive, background_pid, staging_left};
use crate::support::*;

/// A project whose `[entry.e]` builds `in.txt`, failing with `fail` when it holds "bad".
struct Failing {
    tmp: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Failing {
    fn new(fail: &str, policy: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        std::fs::write(tmp.path().join("in.txt"), "good").unwrap();
        let config = format!(
            "[entry.e]\ninputs = [\"in.txt\"]\nstale = \"while-revalidate\"\n{policy}\nbuild = '''\n\
             echo run >> runs\nif grep -q bad in.txt; then echo 'compiler: syntax error in in.txt'; {fail}; fi\n\
             cp in.txt \"$WARMCACHE_OUT\"\n'''\n"
        );
        std::fs::write(tmp.path().join("warmcache.toml"), config).unwrap();
        Self { tmp, root }
    }

    fn ensure(&self) -> Command {
        let mut cmd = warmcache(&self.root);
        cmd.current_dir(self.tmp.path()).args(["ensure", "e", "--json"]);
        cmd
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.tmp.path().join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Builds "good", then changes the input to "bad" and returns the stale result whose
    /// background build failed, once that build ended.
    fn fail_in_the_background(&self) -> serde_json::Value {
        let good = json_ok(&run(&mut self.ensure()));
        assert_eq!(good["status"], "built", "{good}");
        std::fs::write(self.tmp.path().join("in.txt"), "bad input").unwrap();
        let stale = json_ok(&run(&mut self.ensure()));
        assert_eq!(stale["status"], "stale", "{stale}");
        assert_eq!(stale["artifact"], good["artifact"]);
        let pid = background_pid(&stale);
        wait_until("the failing background build to end", || !alive(pid));
        assert_eq!(self.runs(), 2);
        assert!(
            staging_left(&self.root).is_empty(),
            "{:?}",
            staging_left(&self.root)
        );
        assert_eq!(artifact_ids(&self.root).len(), 1, "nothing was published");
        let log = std::fs::read_to_string(stale["revalidation_log"].as_str().unwrap()).unwrap();
        assert!(log.contains("compiler: syntax error"), "{log}");
        good
    }

    fn recorded_failure(&self) -> serde_json::Value {
        let status = json_ok(&run(warmcache(&self.root).args(["status", "e", "--json"])));
        let failure = status["entries"][0]["failure"].clone();
        assert!(
            failure["error_tail"]
                .as_str()
                .is_some_and(|t| t.contains("compiler: syntax error")),
            "the builder's output is kept with the failure: {status}"
        );
        failure
    }
}

#[test]
fn a_deterministic_background_failure_is_not_rebuilt_until_the_inputs_change() {
    let f = Failing::new("exit 3", "deterministic_exit_codes = [3]");
    let good = f.fail_in_the_background();
    assert_eq!(f.recorded_failure()["kind"], "deterministic");
    for _ in 0..3 {
        let stale = json_ok(&run(&mut f.ensure()));
        assert_eq!(stale["status"], "stale", "{stale}");
        assert_eq!(stale["artifact"], good["artifact"]);
        assert!(stale.get("revalidation").is_none(), "nothing started: {stale}");
        assert_eq!(stale["failure"]["kind"], "deterministic");
        assert!(
            stale["stale_reason"]
                .as_str()
                .unwrap()
                .contains("deterministically"),
            "{stale}"
        );
    }
    assert_eq!(f.runs(), 2, "the same failing inputs are not built again");

    // New inputs are built again, in the background.
    std::fs::write(f.tmp.path().join("in.txt"), "fixed").unwrap();
    let stale = json_ok(&run(&mut f.ensure()));
    let pid = background_pid(&stale);
    wait_until("the background build to end", || !alive(pid));
    let fresh = json_ok(&run(&mut f.ensure()));
    assert_eq!(fresh["status"], "hit", "{fresh}");
    assert_eq!(f.runs(), 3);
}

#[test]
fn a_transient_background_failure_waits_for_its_backoff() {
    let f = Failing::new("exit 1", "backoff_initial = \"1h\"");
    let good = f.fail_in_the_background();
    let failure = f.recorded_failure();
    assert_eq!(failure["kind"], "transient");
    assert!(failure["next_retry_at"].as_i64().is_some(), "{failure}");
    for _ in 0..3 {
        let stale = json_ok(&run(&mut f.ensure()));
        assert_eq!(stale["status"], "stale", "{stale}");
        assert_eq!(stale["artifact"], good["artifact"]);
        assert!(stale.get("revalidation").is_none(), "nothing started: {stale}");
        assert_eq!(stale["failure"]["kind"], "transient");
        assert!(
            stale["stale_reason"]
                .as_str()
                .unwrap()
                .contains("waiting to retry"),
            "{stale}"
        );
    }
    assert_eq!(f.runs(), 2, "no build before the backoff allows one");
}
