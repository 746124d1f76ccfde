//! Recipes: how to build one named entry, from `[entry.NAME]` in `warmcache.toml` or from the
//! `ensure` command-line flags (both arrive as an [`EntryConfig`]), validated once so the rest of
//! the build can trust them.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::failure::{Backoff, FailureKind, FailurePolicy, StalePolicy};
use crate::ids::{EntryName, NameError};
use crate::units::{format_duration, serde_units};

/// What a builder produces at `$WARMCACHE_OUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// A regular file (the default).
    #[default]
    File,
    /// A directory tree.
    Dir,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::File => "file",
            OutputKind::Dir => "dir",
        }
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(OutputKind::File),
            "dir" | "directory" => Ok(OutputKind::Dir),
            other => Err(format!("unknown output kind `{other}`; use `file` or `dir`")),
        }
    }
}

/// One `[entry.NAME]` table; the fields mirror the `ensure` recipe flags. Unset fields take the
/// defaults documented on [`Recipe`] when the recipe is built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// Input globs relative to the config file's directory (`--input`).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Build command, run by `sh -c` (`--build`).
    pub build: Option<String>,
    /// `file` (default) or `dir` (`--output`).
    pub output: Option<OutputKind>,
    /// Validation command, run by `sh -c` with `$WARMCACHE_OUT` (`--validate`).
    pub validate: Option<String>,
    /// Extra key strings (`--key`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Environment variable names whose values join the fingerprint (`--env`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Per-command time limit, e.g. `"10m"` or seconds (`--timeout`).
    #[serde(default, deserialize_with = "serde_units::opt_duration")]
    pub timeout: Option<Duration>,
    /// Builder exit codes that mean the inputs cannot build.
    #[serde(default)]
    pub deterministic_exit_codes: Vec<i32>,
    /// Substrings of the builder's output that mark a failure transient.
    #[serde(default)]
    pub transient_patterns: Vec<String>,
    /// `transient` (default) or `deterministic`: what any other non-zero exit means.
    pub other_exit: Option<FailureKind>,
    /// First retry delay after a transient failure (default 30s).
    #[serde(default, deserialize_with = "serde_units::opt_duration")]
    pub backoff_initial: Option<Duration>,
    /// Longest retry delay (default 15m).
    #[serde(default, deserialize_with = "serde_units::opt_duration")]
    pub backoff_cap: Option<Duration>,
    /// `if-error` (default), `never` or `while-revalidate` (`--stale`, `--stale-while-revalidate`).
    pub stale: Option<StalePolicy>,
    /// Working directory of the commands, relative to the config file's directory.
    pub cwd: Option<PathBuf>,
}

/// A recipe that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error(
        "entry `{name}` has no build command; add `build = \"...\"` under `[entry.{name}]` in \
         warmcache.toml, or pass `--build CMD` (the command writes its output to $WARMCACHE_OUT)"
    )]
    MissingBuild { name: String },
    #[error("entry `{name}`: input glob `{glob}` {reason}")]
    InvalidInput {
        name: String,
        glob: String,
        reason: String,
    },
    #[error("entry `{name}`: environment variable name `{var}` is invalid: {reason}")]
    InvalidEnv {
        name: String,
        var: String,
        reason: &'static str,
    },
    #[error("entry `{name}`: {message}")]
    Invalid { name: String, message: String },
    #[error("no entry `{name}` in `{}`; the entries there are: {known}", path.display())]
    UnknownEntry {
        name: String,
        path: PathBuf,
        known: String,
    },
}

/// Everything needed to fingerprint, build and remember failures of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The entry name (`bundle`, `models/llama`).
    pub name: EntryName,
    /// Absolute directory that input globs are relative to (the config file's directory, or the
    /// working directory for command-line recipes).
    pub base_dir: PathBuf,
    /// Input globs, relative to `base_dir` (`*` stays within a path segment, `**` crosses them).
    pub inputs: Vec<String>,
    /// The build command, run by `sh -c`.
    pub build: String,
    pub output: OutputKind,
    /// Optional validation command, run by `sh -c` after a successful build.
    pub validate: Option<String>,
    /// Extra key strings (toolchain versions and the like).
    pub keys: Vec<String>,
    /// Names of environment variables whose values join the fingerprint.
    pub env: Vec<String>,
    /// Limit for each of the build and validation commands; None = no limit.
    pub timeout: Option<Duration>,
    /// Working directory of the commands, relative to `base_dir` (None = `base_dir`).
    pub cwd: Option<PathBuf>,
    pub failure_policy: FailurePolicy,
    pub backoff: Backoff,
    pub stale: StalePolicy,
}

impl Recipe {
    /// Builds and validates the recipe of entry `name` from `entry`, whose relative paths are
    /// relative to `base_dir` (made absolute here). Command-line flags map one to one onto
    /// [`EntryConfig`] fields, so the CLI fills one in and calls this with the working directory.
    pub fn new(name: &str, entry: &EntryConfig, base_dir: &Path) -> Result<Recipe, RecipeError> {
        let entry_name = EntryName::new(name)?;
        let invalid = |message: String| RecipeError::Invalid {
            name: name.to_string(),
            message,
        };
        let build = match entry.build.as_deref().map(str::trim) {
            Some(cmd) if !cmd.is_empty() => entry.build.clone().unwrap_or_default(),
            _ => {
                return Err(RecipeError::MissingBuild {
                    name: name.to_string(),
                });
            }
        };
        let validate = entry.validate.clone().filter(|v| !v.trim().is_empty());
        for glob in &entry.inputs {
            validate_input(name, glob)?;
        }
        for var in &entry.env {
            validate_env_name(name, var)?;
        }
        if let Some(t) = entry.timeout
            && t.is_zero()
        {
            return Err(invalid(
                "timeout must be greater than zero; omit it for no limit, or write e.g. `10m`".into(),
            ));
        }
        for &code in &entry.deterministic_exit_codes {
            if !(1..=255).contains(&code) {
                return Err(invalid(format!(
                    "deterministic exit code {code} is not a failing exit code; use codes 1 to 255"
                )));
            }
        }
        let defaults = Backoff::default();
        let backoff = Backoff {
            initial: entry.backoff_initial.unwrap_or(defaults.initial),
            cap: entry
                .backoff_cap
                .unwrap_or(defaults.cap.max(entry.backoff_initial.unwrap_or_default())),
        };
        if backoff.initial.is_zero() {
            return Err(invalid(
                "backoff_initial must be greater than zero, e.g. `30s`".into(),
            ));
        }
        if backoff.cap < backoff.initial {
            return Err(invalid(format!(
                "backoff_cap ({}) is shorter than backoff_initial ({}); the cap must be at least the \
                 initial delay",
                format_duration(backoff.cap),
                format_duration(backoff.initial)
            )));
        }
        if entry.transient_patterns.iter().any(String::is_empty) {
            return Err(invalid(
                "an empty transient pattern would match every failure; remove it".into(),
            ));
        }
        // A relative cwd is relative to base_dir; joining keeps an absolute one as it is.
        let cwd = entry.cwd.clone();
        let base_dir = std::path::absolute(base_dir).map_err(|e| {
            invalid(format!(
                "cannot resolve base directory `{}`: {e}",
                base_dir.display()
            ))
        })?;
        let mut env = entry.env.clone();
        env.sort();
        env.dedup();
        Ok(Recipe {
            name: entry_name,
            base_dir,
            inputs: entry.inputs.clone(),
            build,
            output: entry.output.unwrap_or_default(),
            validate,
            keys: entry.keys.clone(),
            env,
            timeout: entry.timeout,
            cwd,
            failure_policy: FailurePolicy {
                deterministic_exit_codes: entry.deterministic_exit_codes.clone(),
                transient_patterns: entry.transient_patterns.clone(),
                other_exit: entry.other_exit.unwrap_or(FailureKind::Transient),
            },
            backoff,
            stale: entry.stale.unwrap_or_default(),
        })
    }

    /// The directory the build and validation commands run in.
    pub fn work_dir(&self) -> PathBuf {
        match &self.cwd {
            Some(cwd) => self.base_dir.join(cwd),
            None => self.base_dir.clone(),
        }
    }
}

fn validate_input(name: &str, glob: &str) -> Result<(), RecipeError> {
    match input_glob_problem(glob) {
        Some(reason) => Err(RecipeError::InvalidInput {
            name: name.to_string(),
            glob: glob.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks one input glob by the rule every recipe follows (for the command line, which reports
/// a bad `--input` as a usage error).
pub fn check_input_glob(glob: &str) -> Result<(), String> {
    match input_glob_problem(glob) {
        Some(reason) => Err(format!("input glob `{glob}` {reason}")),
        None => Ok(()),
    }
}

/// What is wrong with an input glob, if anything.
fn input_glob_problem(glob: &str) -> Option<String> {
    if glob.trim().is_empty() {
        return Some("is empty".into());
    }
    let path = Path::new(glob);
    if path.is_absolute() {
        return Some("is absolute; inputs are relative to the directory of warmcache.toml (or the working directory for --input)".into());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Some("contains `..`; inputs must stay inside the recipe's directory (move warmcache.toml up, or give the entry its own `cwd`)".into());
    }
    if let Err(e) = globset::GlobBuilder::new(glob).literal_separator(true).build() {
        return Some(format!("is not a valid glob: {}", e.kind()));
    }
    None
}

fn validate_env_name(name: &str, var: &str) -> Result<(), RecipeError> {
    let reason = if var.is_empty() {
        "it is empty"
    } else if var.contains('=') {
        "it contains `=`; give the variable's name only, its value is read from the environment"
    } else if var.contains('\0') {
        "it contains a NUL byte"
    } else if var.chars().any(char::is_whitespace) {
        "it contains white space, which no shell variable name holds"
    } else {
        return Ok(());
    };
    Err(RecipeError::InvalidEnv {
        name: name.to_string(),
        var: var.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(build: &str) -> EntryConfig {
        EntryConfig {
            build: Some(build.into()),
            ..EntryConfig::default()
        }
    }

    #[test]
    fn missing_build_names_the_entry_and_the_fix() {
        for build in [None, Some("  ".to_string())] {
            let e = EntryConfig {
                build,
                ..EntryConfig::default()
            };
            let err = Recipe::new("ext/foo", &e, Path::new("/tmp"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("entry `ext/foo` has no build command"), "{err}");
            assert!(
                err.contains("[entry.ext/foo]") && err.contains("--build"),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_follow_the_design() {
        let r = Recipe::new("a", &entry("make"), Path::new("/base")).unwrap();
        assert_eq!(r.output, OutputKind::File);
        assert_eq!(r.backoff, Backoff::default());
        assert_eq!(r.stale, StalePolicy::IfError);
        assert_eq!(r.failure_policy.other_exit, FailureKind::Transient);
        assert_eq!(r.timeout, None);
        assert_eq!(r.work_dir(), PathBuf::from("/base"));
        let rel = Recipe::new("a", &entry("make"), Path::new("rel")).unwrap();
        assert!(rel.base_dir.is_absolute());
    }

    #[test]
    fn a_large_initial_backoff_raises_the_default_cap() {
        let e = EntryConfig {
            backoff_initial: Some(Duration::from_secs(3600)),
            ..entry("make")
        };
        let r = Recipe::new("a", &e, Path::new("/b")).unwrap();
        assert_eq!(r.backoff.cap, Duration::from_secs(3600));
    }

    #[test]
    fn bad_fields_are_refused() {
        let cases: Vec<(EntryConfig, &str)> = vec![
            (
                EntryConfig {
                    inputs: vec!["/etc/passwd".into()],
                    ..entry("x")
                },
                "absolute",
            ),
            (
                EntryConfig {
                    inputs: vec!["../x/*.rs".into()],
                    ..entry("x")
                },
                "`..`",
            ),
            (
                EntryConfig {
                    inputs: vec!["src/[".into()],
                    ..entry("x")
                },
                "not a valid glob",
            ),
            (
                EntryConfig {
                    env: vec!["A=1".into()],
                    ..entry("x")
                },
                "`=`",
            ),
            (
                EntryConfig {
                    timeout: Some(Duration::ZERO),
                    ..entry("x")
                },
                "timeout",
            ),
            (
                EntryConfig {
                    deterministic_exit_codes: vec![0],
                    ..entry("x")
                },
                "exit code 0",
            ),
            (
                EntryConfig {
                    backoff_initial: Some(Duration::from_secs(60)),
                    backoff_cap: Some(Duration::from_secs(30)),
                    ..entry("x")
                },
                "backoff_cap (30s) is shorter than backoff_initial (1m)",
            ),
            (
                EntryConfig {
                    transient_patterns: vec![String::new()],
                    ..entry("x")
                },
                "empty transient pattern",
            ),
        ];
        for (e, why) in cases {
            let err = Recipe::new("e", &e, Path::new("/b")).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
            assert!(err.contains("entry `e`"), "{err}");
        }
    }
}
