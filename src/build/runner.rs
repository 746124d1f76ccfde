//! Running a recipe's builder and validation: `sh -c` in its own process group, output captured
//! into a bounded tail, a timeout that kills the whole group, and a check of the output's kind.
//!
//! The caller chooses `out_path` inside a private staging location; nothing here publishes.
//! The commands see:
//! - `WARMCACHE_OUT`: where to write the output (a file or a directory, per the recipe);
//! - `WARMCACHE_NAME`: the entry name;
//! - `WARMCACHE_TMP`: a private scratch directory (the staging directory), removed with it;
//! - `WARMCACHE_RUN`: when run under the entry's build lock, the run's token (after any inherited
//!   ones), by which a build orphaned by a killed warmcache is found and ended (`shell::runs`);
//! - the rest of this process's environment; stdin is /dev/null; the working directory is the
//!   recipe's [`Recipe::work_dir`].
//!
//! When a command ends, whatever it left running in its process group is killed: a background
//! process still writing into the output after publication would break immutability.

use std::path::Path;
use std::time::{Duration, Instant};

use super::failure::{FailureCause, FailureKind, Step, Termination};
use super::recipe::{OutputKind, Recipe};
use crate::shell::{self, RunRecord};

pub use crate::shell::DEFAULT_TAIL_BYTES;

/// How a build went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// None when the build (and validation, if any) succeeded and the output has the right kind.
    pub failure: Option<RunFailure>,
    /// The last bytes of the output (stdout and stderr interleaved) of the last command run: the
    /// validation command's if it ran, else the build command's. Invalid UTF-8 is replaced.
    pub tail: String,
    /// Wall time of the build and validation together.
    pub elapsed: Duration,
}

/// A failed build, classified by the recipe's failure policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    pub kind: FailureKind,
    pub cause: FailureCause,
}

impl RunOutcome {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs `recipe`'s build command with `$WARMCACHE_OUT` = `out_path`, checks the output, then runs
/// the validation command if there is one. Each command gets the recipe's full timeout.
/// `staging_dir` is offered to the commands as `$WARMCACHE_TMP`. Never fails: every problem,
/// including being unable to start `sh`, is a classified [`RunFailure`].
///
/// With a `record` (the caller holds the entry's build lock), both commands run recorded in it,
/// so that the lock's next holder can end them if warmcache and its supervisor are killed
/// (docs/DESIGN.md, "Nothing outlives its command").
pub fn run(
    recipe: &Recipe,
    out_path: &Path,
    staging_dir: &Path,
    tail_bytes: usize,
    record: Option<&RunRecord>,
) -> RunOutcome {
    let start = Instant::now();
    // The commands run in the recipe's directory, so what they are handed must not depend on
    // ours (the cache's staging paths already are absolute; a library caller's may not be).
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (out_path, staging_dir) = (&absolute(out_path), &absolute(staging_dir));
    let finish = |cause: Option<FailureCause>, tail: String| {
        let failure = cause.map(|cause| RunFailure {
            kind: recipe.failure_policy.classify(&cause, &tail),
            cause,
        });
        RunOutcome {
            failure,
            tail,
            elapsed: start.elapsed(),
        }
    };

    let (result, tail) = run_command(recipe, &recipe.build, out_path, staging_dir, tail_bytes, record);
    if let Err(termination) = result {
        let cause = FailureCause::Step {
            step: Step::Build,
            termination,
        };
        return finish(Some(cause), tail);
    }
    if let Err(message) = check_output(out_path, recipe.output) {
        return finish(Some(FailureCause::BadOutput { message }), tail);
    }
    let Some(validate) = &recipe.validate else {
        return finish(None, tail);
    };
    let (result, tail) = run_command(recipe, validate, out_path, staging_dir, tail_bytes, record);
    match result {
        Ok(()) => finish(None, tail),
        Err(termination) => finish(
            Some(FailureCause::Step {
                step: Step::Validate,
                termination,
            }),
            tail,
        ),
    }
}

/// Checks that the builder left the right kind of thing at `out_path` (symlinks are refused: the
/// artifact would depend on what they point to).
fn check_output(out_path: &Path, kind: OutputKind) -> Result<(), String> {
    let wanted = match kind {
        OutputKind::File => "a file",
        OutputKind::Dir => "a directory",
    };
    let meta = match std::fs::symlink_metadata(out_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Not the path itself: it is a staging path, gone by the time anyone reads this.
            return Err(format!(
                "the build command succeeded but wrote nothing at $WARMCACHE_OUT; it must create \
                 {wanted} there"
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot inspect the build output at `{}`: {e}",
                out_path.display()
            ));
        }
    };
    let found = if meta.is_file() {
        OutputKind::File
    } else if meta.is_dir() {
        OutputKind::Dir
    } else {
        return Err(if meta.file_type().is_symlink() {
            format!(
                "the build command made $WARMCACHE_OUT itself a symlink, but the output must be \
                 {wanted} (write the content itself, not a link to it; symlinks are kept only \
                 inside a directory output)"
            )
        } else {
            format!(
                "the build command left a {} at $WARMCACHE_OUT, but the output must be {wanted}",
                crate::store::rule::other_kind(meta.file_type())
            )
        });
    };
    if found != kind {
        return Err(format!(
            "the build command wrote a {} at $WARMCACHE_OUT, but the recipe's output kind is \
             `{}`; set `output = \"{}\"` (or `--output {}`) if that is what it builds",
            if found == OutputKind::Dir {
                "directory"
            } else {
                "file"
            },
            kind.as_str(),
            found.as_str(),
            found.as_str(),
        ));
    }
    Ok(())
}

/// Runs one command of the recipe with the build environment; returns how it ended (Ok for
/// exit 0) and its output tail.
fn run_command(
    recipe: &Recipe,
    command: &str,
    out_path: &Path,
    staging_dir: &Path,
    tail_bytes: usize,
    record: Option<&RunRecord>,
) -> (Result<(), Termination>, String) {
    let env = [
        ("WARMCACHE_OUT", out_path.as_os_str()),
        ("WARMCACHE_NAME", std::ffi::OsStr::new(recipe.name.as_str())),
        ("WARMCACHE_TMP", staging_dir.as_os_str()),
    ];
    shell::run(
        command,
        &recipe.work_dir(),
        &env,
        recipe.timeout,
        tail_bytes,
        record,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::EntryConfig;

    fn recipe(base: &Path, entry: EntryConfig) -> Recipe {
        Recipe::new("t/entry", &entry, base).unwrap()
    }

    fn build(cmd: &str) -> EntryConfig {
        EntryConfig {
            build: Some(cmd.into()),
            ..EntryConfig::default()
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("staging")).unwrap();
            std::fs::create_dir(dir.path().join("base")).unwrap();
            Self { dir }
        }
        fn base(&self) -> std::path::PathBuf {
            self.dir.path().join("base")
        }
        fn out(&self) -> std::path::PathBuf {
            self.dir.path().join("staging/out")
        }
        fn run(&self, entry: EntryConfig) -> RunOutcome {
            let r = recipe(&self.base(), entry);
            run(
                &r,
                &self.out(),
                &self.dir.path().join("staging"),
                DEFAULT_TAIL_BYTES,
                None,
            )
        }
    }

    #[test]
    fn a_successful_build_sees_its_environment() {
        let s = Setup::new();
        let o = s.run(build(
            "test \"$PWD\" = \"$(pwd -P)\" && read x || echo stdin-is-empty; \
             printf '%s|%s|%s' \"$WARMCACHE_NAME\" \"$(pwd)\" \"$WARMCACHE_TMP\" > \"$WARMCACHE_OUT\"; \
             echo to-stdout; echo to-stderr >&2",
        ));
        assert!(o.succeeded(), "{o:?}");
        let written = std::fs::read_to_string(s.out()).unwrap();
        let expected = format!(
            "t/entry|{}|{}",
            s.base().display(),
            s.dir.path().join("staging").display()
        );
        assert_eq!(written, expected);
        assert!(
            o.tail.contains("stdin-is-empty\nto-stdout\nto-stderr\n"),
            "{:?}",
            o.tail
        );
    }

    #[test]
    fn failing_builds_are_classified() {
        let s = Setup::new();
        let o = s.run(build("echo compiling; exit 3"));
        let f = o.failure.unwrap();
        assert_eq!(f.cause.to_string(), "build command exited with code 3");
        assert_eq!(f.kind, FailureKind::Transient);
        assert_eq!(o.tail, "compiling\n");
        let o = s.run(EntryConfig {
            deterministic_exit_codes: vec![3],
            ..build("exit 3")
        });
        assert_eq!(o.failure.unwrap().kind, FailureKind::Deterministic);
        let o = s.run(build("echo 'write: No space left on device' >&2; exit 1"));
        assert_eq!(o.failure.unwrap().kind, FailureKind::Transient);
        let o = s.run(build("exit 75"));
        assert_eq!(o.failure.unwrap().kind, FailureKind::Transient);
        let o = s.run(build("kill -9 $$"));
        let f = o.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Transient);
        assert!(f.cause.to_string().contains("signal 9"), "{}", f.cause);
    }

    #[test]
    fn missing_or_wrong_output_is_deterministic() {
        let s = Setup::new();
        let o = s.run(build("true"));
        let f = o.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Deterministic);
        assert!(
            f.cause.to_string().contains("wrote nothing at $WARMCACHE_OUT"),
            "{}",
            f.cause
        );
        let o = s.run(build("mkdir \"$WARMCACHE_OUT\""));
        let f = o.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Deterministic);
        assert!(f.cause.to_string().contains("output = \"dir\""), "{}", f.cause);
        std::fs::remove_dir(s.out()).unwrap();
        let o = s.run(EntryConfig {
            output: Some(OutputKind::Dir),
            ..build("mkdir \"$WARMCACHE_OUT\" && touch \"$WARMCACHE_OUT/x\"")
        });
        assert!(o.succeeded(), "{o:?}");
        std::fs::remove_dir_all(s.out()).unwrap();
        let o = s.run(build("ln -s /etc/hostname \"$WARMCACHE_OUT\""));
        assert!(o.failure.unwrap().cause.to_string().contains("a symlink"));
    }

    #[test]
    fn validation_failure_is_deterministic_and_its_output_is_kept() {
        let s = Setup::new();
        let o = s.run(EntryConfig {
            validate: Some("echo \"checking $WARMCACHE_OUT\"; grep -q good \"$WARMCACHE_OUT\"".into()),
            ..build("echo bad > \"$WARMCACHE_OUT\"")
        });
        let f = o.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Deterministic);
        assert_eq!(f.cause.to_string(), "validation command exited with code 1");
        assert_eq!(o.tail, format!("checking {}\n", s.out().display()));
        std::fs::remove_file(s.out()).unwrap();
        let o = s.run(EntryConfig {
            validate: Some("grep -q good \"$WARMCACHE_OUT\"".into()),
            ..build("echo good > \"$WARMCACHE_OUT\"")
        });
        assert!(o.succeeded(), "{o:?}");
    }

    #[test]
    fn a_missing_working_directory_is_a_spawn_failure() {
        let s = Setup::new();
        let o = s.run(EntryConfig {
            cwd: Some("does/not/exist".into()),
            ..build("true")
        });
        let f = o.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Transient);
        assert!(
            f.cause
                .to_string()
                .starts_with("build command could not be started"),
            "{}",
            f.cause
        );
        assert!(f.cause.to_string().contains("does/not/exist"), "{}", f.cause);
    }

    /// Peak resident memory of this process, from /proc (Linux).
    fn peak_rss_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    #[test]
    fn a_builder_printing_hundreds_of_megabytes_keeps_only_the_tail() {
        let s = Setup::new();
        let before = peak_rss_bytes();
        let o = s.run(build(
            "yes | head -c 200M; echo THE-END; echo x > \"$WARMCACHE_OUT\"",
        ));
        assert!(o.succeeded(), "{:?}", o.failure);
        assert!(o.tail.len() <= DEFAULT_TAIL_BYTES + 100, "{}", o.tail.len());
        assert!(o.tail.ends_with("y\nTHE-END\n"));
        assert!(o.tail.starts_with("[... 209"), "{}", &o.tail[..60]);
        if let (Some(before), Some(after)) = (before, peak_rss_bytes()) {
            let grew = after.saturating_sub(before);
            eprintln!("peak RSS grew by {} KiB while capturing 200 MiB", grew / 1024);
            assert!(grew < 64 << 20, "capturing output grew memory by {grew} bytes");
        }
    }

    /// Fails unless `pid` is gone soon. The kill is synchronous, reaping by init is not: this
    /// gives it a moment (not a timing bound), and kills it itself before failing.
    fn assert_dies(pid: i32, what: &str) {
        for _ in 0..100 {
            if !alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
        panic!("{what} (pid {pid}) is still running");
    }

    fn alive(pid: i32) -> bool {
        // A zombie waiting for init to reap it is as good as gone.
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

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let s = Setup::new();
        let pid_file = s.dir.path().join("grandchild.pid");
        let o = s.run(EntryConfig {
            timeout: Some(Duration::from_millis(500)),
            ..build(&format!(
                "sh -c 'sleep 300 & echo $! > {}; wait' ; echo never",
                pid_file.display()
            ))
        });
        let f = o.failure.unwrap();
        assert_eq!(f.kind, FailureKind::Transient);
        assert!(matches!(
            f.cause,
            FailureCause::Step {
                step: Step::Build,
                termination: Termination::TimedOut(_)
            }
        ));
        let grandchild: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_dies(grandchild, "the grandchild, after the timeout");
    }

    #[test]
    fn background_leftovers_of_a_successful_build_are_killed() {
        let s = Setup::new();
        let pid_file = s.dir.path().join("bg.pid");
        let o = s.run(build(&format!(
            "sleep 300 > /dev/null 2>&1 & echo $! > {}; echo x > \"$WARMCACHE_OUT\"",
            pid_file.display()
        )));
        assert!(o.succeeded(), "{o:?}");
        let bg: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_dies(bg, "the background process, after its build");
    }
}
