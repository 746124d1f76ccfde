//! What every command needs before it calls the library: the cache root and an open cache,
//! the nearest `warmcache.toml` (read once), a recipe from it and the flags, and the remote's
//! settings.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use warmcache::EntryName;
use warmcache::cache::{Cache, CacheOptions, DEFAULT_LOCK_TIMEOUT};
use warmcache::config::Config;
use warmcache::remote::RemoteSettings;

use super::{Cli, RecipeArgs};

/// The root from `--root`/`WARMCACHE_ROOT`, else the platform cache directory.
pub(super) fn root(cli: &Cli) -> Result<PathBuf> {
    if let Some(root) = &cli.global.root {
        return Ok(root.clone());
    }
    // An empty WARMCACHE_ROOT is unset, as shells mean it when they export `VAR=`.
    if let Some(root) = std::env::var_os("WARMCACHE_ROOT").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    let base = dirs::cache_dir().context(
        "no platform cache directory is known for this user; give one with --root DIR or WARMCACHE_ROOT",
    )?;
    Ok(base.join("warmcache"))
}

/// The nearest `warmcache.toml` (upwards from the working directory), read at most once per
/// command and only by the commands that need it.
pub(super) fn config() -> Result<Option<&'static Config>> {
    static CONFIG: OnceLock<Result<Option<Config>, String>> = OnceLock::new();
    let loaded = CONFIG.get_or_init(|| {
        let cwd = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
        warmcache::config::find_config(&cwd)
            .map(|path| Config::load(&path))
            .transpose()
            .map_err(|e| e.to_string())
    });
    match loaded {
        Ok(config) => Ok(config.as_ref()),
        Err(message) => Err(anyhow::anyhow!("{message}")),
    }
}

pub(super) fn open(cli: &Cli) -> Result<Cache> {
    open_by(cli, Cache::open_with)
}

/// The cache for `gc`, which may use the space set aside for it on a full disk.
pub(super) fn open_for_gc(cli: &Cli) -> Result<Cache> {
    open_by(cli, Cache::open_for_gc)
}

fn open_by(
    cli: &Cli,
    opener: fn(&std::path::Path, CacheOptions) -> Result<Cache, warmcache::CacheError>,
) -> Result<Cache> {
    let root = root(cli)?;
    let options = CacheOptions {
        lock_timeout: cli.global.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT),
        ..CacheOptions::default()
    };
    opener(&root, options).map_err(|e| match e {
        warmcache::CacheError::Root { .. } => {
            anyhow::anyhow!("{e}; choose a writable directory with --root DIR or WARMCACHE_ROOT")
        }
        e => e.into(),
    })
}

/// The recipe for `ensure`: `[entry.NAME]` of the nearest `warmcache.toml`, with the flags
/// overriding its fields; or the flags alone, relative to the working directory.
pub(super) fn recipe(name: &EntryName, args: &RecipeArgs) -> Result<warmcache::build::Recipe> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let config = config()?;
    let (mut entry, base) = match config.and_then(|c| c.entries.get(name.as_str()).map(|e| (e, c))) {
        Some((entry, config)) => (entry.clone(), config.dir.clone()),
        None => (warmcache::config::EntryConfig::default(), cwd.clone()),
    };
    if !args.inputs.is_empty() {
        entry.inputs = args.inputs.clone();
    }
    if !args.keys.is_empty() {
        entry.keys = args.keys.clone();
    }
    if !args.env.is_empty() {
        entry.env = args.env.clone();
    }
    entry.build = args.build.clone().or(entry.build);
    entry.output = args.output.or(entry.output);
    entry.validate = args.validate.clone().or(entry.validate);
    entry.timeout = args.timeout.or(entry.timeout);
    entry.stale = args.stale.or(entry.stale);
    match warmcache::build::Recipe::new(name.as_str(), &entry, &base) {
        Ok(recipe) => Ok(recipe),
        Err(warmcache::build::RecipeError::MissingBuild { name }) if config.is_none() => {
            Err(anyhow::anyhow!(
                "entry `{name}` has no recipe: no warmcache.toml was found upwards from `{}` and no --build \
             was given; add `[entry.\"{name}\"]` with `build = \"...\"` to a warmcache.toml, or pass --build CMD",
                cwd.display()
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// The `[remote]` table of the nearest `warmcache.toml`, if any.
pub(super) fn configured_remote() -> Result<Option<warmcache::config::RemoteConfig>> {
    Ok(config()?.and_then(|c| c.remote.clone()))
}

/// Transfer settings, with `[remote] timeout` bounding the whole operation and each of its steps,
/// and read-only when `--read-only`, WARMCACHE_REMOTE_READ_ONLY or `[remote] read_only` says so
/// (the client then refuses every write: docs/DESIGN.md, "Read-only writers").
pub(super) fn remote_settings(cli: &Cli, config: Option<&warmcache::config::RemoteConfig>) -> RemoteSettings {
    let mut settings = RemoteSettings {
        read_only: cli.global.read_only || config.is_some_and(|c| c.read_only),
        ..RemoteSettings::default()
    };
    if let Some(timeout) = config.and_then(|c| c.timeout) {
        settings.overall_timeout = timeout;
        settings.request_timeout = settings.request_timeout.min(timeout);
        settings.stall_timeout = settings.stall_timeout.min(timeout);
        settings.connect_timeout = settings.connect_timeout.min(timeout);
    }
    settings
}

/// The free-space reserve of extraction (import of an archive, `restore`, `pull`): `--min-free`,
/// else `[cache] min_free` of the nearest warmcache.toml, else `None` (the proportional default).
pub(super) fn min_free(flag: Option<u64>) -> Result<Option<u64>> {
    if flag.is_some() {
        return Ok(flag);
    }
    Ok(config()?.and_then(|c| c.cache.as_ref()).and_then(|c| c.min_free))
}
