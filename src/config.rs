//! `warmcache.toml`: recipes (`[entry.NAME]`), the remote and the cache budget, found upwards from
//! the working directory like `Cargo.toml`.
//!
//! ```toml
//! [entry.bundle]
//! inputs = ["src/**/*.ts", "import_map.json"]
//! build = "deno bundle src/main.ts \"$WARMCACHE_OUT\""
//! keys = ["deno 2.1"]
//! timeout = "5m"
//!
//! [entry."models/llama"]          # names with `/` are quoted TOML keys
//! build = "./fetch-model.sh"
//! output = "dir"
//! stale = "never"
//!
//! [remote]
//! url = "s3://bucket/prefix"
//! push = true
//! # read_only = true             # never write the remote (forks, laptops)
//! # fallback = ["s3://bucket/main/node_modules"]   # restore's keys after its own
//!
//! [cache]
//! max_size = "10GiB"
//! min_free = "1GiB"               # free space kept while extracting archives
//! ```
//!
//! Unknown keys are errors (a misspelt `timout` must not silently mean "no timeout").

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::build::EntryConfig;
use crate::build::{Recipe, RecipeError};
use crate::ids::EntryName;
use crate::units::serde_units;

/// The configuration file's name.
pub const CONFIG_FILE: &str = "warmcache.toml";

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read `{}`: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    InvalidEntry { path: PathBuf, source: RecipeError },
}

/// A parsed `warmcache.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this came from (empty when parsed from a string).
    #[serde(skip)]
    pub path: PathBuf,
    /// The file's directory: the base of relative input globs and `cwd`.
    #[serde(skip)]
    pub dir: PathBuf,
    /// `[entry.NAME]` tables.
    #[serde(default, rename = "entry")]
    pub entries: BTreeMap<String, EntryConfig>,
    pub remote: Option<RemoteConfig>,
    pub cache: Option<CacheConfig>,
}

/// `[remote]`: shared artifacts and snapshots in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// e.g. `s3://bucket/prefix`.
    pub url: String,
    /// Upload what is built locally (default false: pull only).
    #[serde(default)]
    pub push: bool,
    /// Bound on each remote operation.
    #[serde(default, deserialize_with = "serde_units::opt_duration")]
    pub timeout: Option<Duration>,
    /// Never write to the remote (docs/DESIGN.md, "Read-only writers"): for machines that may
    /// read the shared cache but must not write it (forks' pull requests, laptops).
    #[serde(default)]
    pub read_only: bool,
    /// Snapshot keys `restore` tries, in order, when its key holds no snapshot yet
    /// (docs/DESIGN.md, "Fallback keys"), e.g. `["s3://bucket/main/node_modules"]`. Used when
    /// `restore` is given no `--fallback`.
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// `[cache]`: the local cache's budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Size budget for garbage collection, e.g. `"10GiB"`.
    #[serde(default, deserialize_with = "serde_units::opt_size")]
    pub max_size: Option<u64>,
    /// Artifacts unused for longer than this may be collected.
    #[serde(default, deserialize_with = "serde_units::opt_duration")]
    pub max_age: Option<Duration>,
    /// How often automatic garbage collection may run.
    #[serde(default, deserialize_with = "serde_units::opt_duration")]
    pub gc_interval: Option<Duration>,
    /// Free space that archive import, `restore` and `pull` keep on the destination's volume
    /// while extracting, e.g. `"1GiB"` (`"0"` turns the check off). Default: the smaller of
    /// 512 MiB and 5% of the volume ([`crate::archive::default_reserve`]).
    #[serde(default, deserialize_with = "serde_units::opt_size")]
    pub min_free: Option<u64>,
}

/// The nearest `warmcache.toml` in `start` or its ancestors (a relative `start` is taken from the
/// working directory). A directory named `warmcache.toml` is skipped.
pub fn find_config(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    start
        .ancestors()
        .map(|dir| dir.join(CONFIG_FILE))
        .find(|candidate| candidate.is_file())
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `path` names it in errors and its directory is the base.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim_end().to_string(),
            }
        })?;
        for name in config.entries.keys() {
            EntryName::new(name).map_err(|source| ConfigError::InvalidEntry {
                path: path.to_path_buf(),
                source: source.into(),
            })?;
        }
        config.path = path.to_path_buf();
        config.dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(config)
    }
}

impl Config {
    /// The recipe of entry `name` in this file.
    pub fn recipe(&self, name: &str) -> Result<Recipe, RecipeError> {
        match self.entries.get(name) {
            Some(entry) => Recipe::new(name, entry, &self.dir),
            None => Err(RecipeError::UnknownEntry {
                name: name.to_string(),
                path: self.path.clone(),
                known: if self.entries.is_empty() {
                    "(none)".to_string()
                } else {
                    self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{FailureKind, OutputKind, StalePolicy};

    const FULL: &str = r#"
[entry.bundle]
inputs = ["src/**/*.ts", "import_map.json"]
build = "bundle > \"$WARMCACHE_OUT\""
output = "file"
validate = "test -s \"$WARMCACHE_OUT\""
keys = ["deno 2.1"]
env = ["NODE_ENV"]
timeout = "5m"
deterministic_exit_codes = [2]
transient_patterns = ["Could not resolve host"]
other_exit = "deterministic"
backoff_initial = "10s"
backoff_cap = 600
stale = "never"
cwd = "sub"

[entry."models/llama"]
build = "fetch"
output = "dir"

[remote]
url = "s3://bucket/prefix"
push = true
timeout = "20s"

[cache]
max_size = "10GiB"
gc_interval = "1d"
"#;

    #[test]
    fn every_field_parses() {
        let c = Config::parse(FULL, Path::new("/proj/warmcache.toml")).unwrap();
        assert_eq!(c.dir, PathBuf::from("/proj"));
        let b = &c.entries["bundle"];
        assert_eq!(b.inputs, ["src/**/*.ts", "import_map.json"]);
        assert_eq!(b.output, Some(OutputKind::File));
        assert_eq!(b.env, ["NODE_ENV"]);
        assert_eq!(b.timeout, Some(Duration::from_secs(300)));
        assert_eq!(b.deterministic_exit_codes, [2]);
        assert_eq!(b.other_exit, Some(FailureKind::Deterministic));
        assert_eq!(b.backoff_initial, Some(Duration::from_secs(10)));
        assert_eq!(b.backoff_cap, Some(Duration::from_secs(600)));
        assert_eq!(b.stale, Some(StalePolicy::Never));
        assert_eq!(b.cwd, Some(PathBuf::from("sub")));
        assert_eq!(c.entries["models/llama"].output, Some(OutputKind::Dir));
        let remote = c.remote.as_ref().unwrap();
        assert!(remote.push);
        assert_eq!(remote.timeout, Some(Duration::from_secs(20)));
        let cache = c.cache.as_ref().unwrap();
        assert_eq!(cache.max_size, Some(10 << 30));
        assert_eq!(cache.gc_interval, Some(Duration::from_secs(86_400)));
        let recipe = c.recipe("bundle").unwrap();
        assert_eq!(recipe.work_dir(), PathBuf::from("/proj/sub"));
        let err = c.recipe("nope").unwrap_err().to_string();
        assert!(
            err.contains("no entry `nope`") && err.contains("bundle, models/llama"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let text = "[entry.a]\nbuild = \"x\"\ntimout = \"5s\"\n";
        let err = Config::parse(text, Path::new("/p/warmcache.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/p/warmcache.toml:3:1: "), "{err}");
        assert!(err.contains("unknown field `timout`"), "{err}");
        let err = Config::parse("[cache]\nmax = 1\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("w.toml:2:"), "{err}");
        assert!(err.contains("`max`"), "{err}");
        let err = Config::parse("[remotes]\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`remotes`"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::parse("[entry.a]\ntimeout = \"5 parsecs\"\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:2:") && err.contains("e.g. `500ms`"),
            "{err}"
        );
        let err = Config::parse("[entry.a]\nstale = \"sometimes\"\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("if-error") && err.contains("never"), "{err}");
        let err = Config::parse("[entry.\"../x\"]\nbuild = \"b\"\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("w.toml: invalid entry name"), "{err}");
    }

    #[test]
    fn found_upwards_from_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_config(&deep), None.or_else(|| find_config(tmp.path())));
        std::fs::write(tmp.path().join("a/warmcache.toml"), "").unwrap();
        assert_eq!(find_config(&deep), Some(tmp.path().join("a/warmcache.toml")));
        // A directory of that name is not a config file.
        std::fs::create_dir(tmp.path().join("a/b/warmcache.toml")).unwrap();
        assert_eq!(find_config(&deep), Some(tmp.path().join("a/warmcache.toml")));
        std::fs::write(deep.join("warmcache.toml"), "[entry.x]\nbuild = \"b\"\n").unwrap();
        let found = find_config(&deep).unwrap();
        assert_eq!(found, deep.join("warmcache.toml"));
        let c = Config::load(&found).unwrap();
        assert_eq!(c.dir, deep);
        assert!(c.entries.contains_key("x"));
        let err = Config::load(&tmp.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
