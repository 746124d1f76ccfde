//! `warmcache snapshot` and `warmcache restore`: directory snapshots in object storage.
//!
//! Advisory by default (docs/DESIGN.md, "Remote is advisory"): when the remote is unreachable, slow or
//! serves bad data, the command says so loudly on stderr and exits 0, having changed nothing
//! (restore leaves DIR as it was; snapshot leaves the pointer as it was). `--strict` makes those
//! exit 1. Problems with DIR itself are errors either way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{Cli, Output};
use warmcache::remote::snapshot::{
    self, Phase, RestoreOptions, RestoreStatus, SnapshotOptions, SnapshotProgress, SnapshotStatus,
};
use warmcache::remote::{RemoteSettings, RemoteUrl};
use warmcache::units::format_size;

/// `warmcache snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The directory to upload (e.g. node_modules).
    pub dir: PathBuf,
    /// Where the snapshot lives, e.g. s3://bucket/site-a/node_modules (default:
    /// $WARMCACHE_REMOTE, else `[remote] url` of the nearest warmcache.toml).
    #[arg(long, env = "WARMCACHE_REMOTE", value_name = "URL", value_parser = super::share::parse_url)]
    pub remote: Option<RemoteUrl>,
    /// Replace the remote snapshot whatever it holds: even if it holds more files and bytes
    /// than DIR, and with a full pack that shares nothing with earlier snapshots (replaces a
    /// damaged one), even if DIR is unchanged.
    #[arg(long)]
    pub force: bool,
    /// Exit 1 when the snapshot could not be made current (remote errors, refusal, conflict)
    /// instead of warning and exiting 0.
    #[arg(long)]
    pub strict: bool,
}

/// `warmcache restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The directory to replace with the snapshot (created if missing; its parent must exist).
    pub dir: PathBuf,
    /// Where the snapshot lives (default: $WARMCACHE_REMOTE, else `[remote] url` of the nearest
    /// warmcache.toml).
    #[arg(long, env = "WARMCACHE_REMOTE", value_name = "URL", value_parser = super::share::parse_url)]
    pub remote: Option<RemoteUrl>,
    /// A key to restore from when the ones before it hold no snapshot yet, e.g. the main
    /// branch's (repeatable, tried in order; replaces `[remote] fallback`, which applies only
    /// to the `[remote] url` key of the same file). A remote error at a key stops the search.
    #[arg(long = "fallback", value_name = "URL", value_parser = super::share::parse_url)]
    pub fallbacks: Vec<RemoteUrl>,
    /// Give up after this long, leaving DIR untouched (default: `[remote] timeout`, else 5m).
    #[arg(long, value_name = "DUR", value_parser = super::parse_time_limit)]
    pub timeout: Option<Duration>,
    /// Exit 1 when DIR could not be restored (remote errors, timeout, no snapshot yet) instead
    /// of warning and exiting 0.
    #[arg(long)]
    pub strict: bool,
    /// Free space to keep on DIR's volume while extracting (default: `[cache] min_free`, else
    /// the smaller of 512MiB and 5% of the volume; 0 turns it off).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub min_free: Option<u64>,
}

/// The URL from the flag or environment, else from `warmcache.toml`, with the transfer settings,
/// the configured timeout, and the configured fallback keys: `[remote] fallback` applies only
/// when the key is `[remote] url` of the same file, however it was given (docs/DESIGN.md,
/// "Fallback keys"), since they were written for that key; another key restored with them would
/// put another tree in DIR.
fn remote_url(
    cli: &Cli,
    flag: Option<&RemoteUrl>,
) -> Result<(RemoteUrl, RemoteSettings, Option<Duration>, Vec<RemoteUrl>)> {
    let remote = super::context::configured_remote()?;
    let url = match (flag, &remote) {
        (Some(url), _) => url.clone(),
        (None, Some(remote)) => RemoteUrl::parse(&remote.url).context("`[remote] url` in warmcache.toml")?,
        (None, None) => anyhow::bail!(
            "no remote given: pass --remote s3://bucket/prefix/KEY, set WARMCACHE_REMOTE, or add \
             `[remote] url = \"s3://...\"` to a warmcache.toml"
        ),
    };
    let mut fallbacks = Vec::new();
    // The file's fallbacks were written for its own key, whether the file names it or
    // --remote/WARMCACHE_REMOTE names it again.
    if let Some(remote) = &remote
        && RemoteUrl::parse(&remote.url).is_ok_and(|own| own == url)
    {
        for fallback in &remote.fallback {
            fallbacks.push(
                RemoteUrl::parse(fallback)
                    .with_context(|| format!("`[remote] fallback` entry `{fallback}` in warmcache.toml"))?,
            );
        }
    }
    let settings = super::context::remote_settings(cli, remote.as_ref());
    Ok((url, settings, remote.and_then(|r| r.timeout), fallbacks))
}

/// `warmcache snapshot DIR`.
pub fn run_snapshot(cli: &Cli, out: &Output, args: &SnapshotArgs) -> Result<()> {
    let root = super::context::root(cli).ok();
    if let Some(root) = &root
        && warmcache::cache::Cache::root_within(root, &args.dir)
    {
        anyhow::bail!(
            "cannot snapshot `{}`: it holds the cache root `{}`, which would go up with it while \
             it changes; snapshot a directory without it, or move the cache (--root or \
             WARMCACHE_ROOT)",
            args.dir.display(),
            root.display()
        );
    }
    let (url, settings, _, _) = remote_url(cli, args.remote.as_ref())?;
    let options = SnapshotOptions {
        force: args.force,
        strict: args.strict,
        settings,
        // The stat cache lives under the cache root; without one, every file is read.
        cache_root: root,
        ..SnapshotOptions::default()
    };
    let bars = Bars::new(out, "snapshot");
    let result = snapshot::snapshot(&args.dir, &url, &options, bars.clone());
    bars.clear();
    let report = match result {
        Ok(report) => report,
        Err(e) if e.is_read_only() => {
            // docs/DESIGN.md, "Read-only writers": advisory (exit 0) unless --strict.
            let message = format!("snapshot of `{}` not uploaded: {e}", args.dir.display());
            if args.strict {
                anyhow::bail!(message);
            }
            out.warn(&message);
            out.result(
                &json!({ "status": "read_only", "dir": args.dir, "url": url.to_string(), "warning": message }),
                || format!("read-only: not uploaded to {url}"),
            );
            return Ok(());
        }
        Err(e) if e.is_local() || args.strict => return Err(e.into()),
        Err(e) => {
            out.warn(&format!(
                "snapshot of `{}` not uploaded, the remote is unavailable or unusable; the remote \
                 was left as it was: {e}",
                args.dir.display()
            ));
            out.result(
                &json!({ "status": "degraded", "dir": args.dir, "url": url.to_string(), "error": e.to_string() }),
                || format!("not uploaded (remote unavailable): {}", args.dir.display()),
            );
            return Ok(());
        }
    };
    let dir = args.dir.display();
    let remote_counts = report
        .remote
        .as_ref()
        .map(|p| format!("{} files, {}", p.files, format_size(p.bytes)))
        .unwrap_or_default();
    match report.status {
        SnapshotStatus::Refused => out.warn(&format!(
            "not replacing the snapshot at {url}: it holds {remote_counts} and `{dir}` only {} files, {}, \
             so it looks cold or incomplete; pass --force to replace it anyway",
            report.files,
            format_size(report.bytes)
        )),
        SnapshotStatus::Conflict => out.warn(&format!(
            "another snapshot was published at {url} while this one was uploading ({}); it was kept, \
             and `{dir}` is not the current snapshot; run again to replace it",
            report
                .remote
                .as_ref()
                .map(|p| format!("{remote_counts} from {}", p.host))
                .unwrap_or_else(|| "unknown".to_owned())
        )),
        SnapshotStatus::Uploaded | SnapshotStatus::Unchanged => {}
    }
    out.result(&json!(report), || match report.status {
        SnapshotStatus::Uploaded if report.uploaded_bytes > 0 => format!(
            "uploaded {} in one {} pack ({} new chunks, {} reused; {} files, {}) to {url}",
            format_size(report.uploaded_bytes),
            if report.compacted {
                "compacted full"
            } else if report.full {
                "full"
            } else {
                "delta"
            },
            report.new_chunks,
            report.reused_chunks,
            report.files,
            format_size(report.bytes)
        ),
        SnapshotStatus::Uploaded => {
            format!("published {url}: the same tree was already uploaded, nothing sent")
        }
        SnapshotStatus::Unchanged => format!("unchanged: {url} already holds `{dir}`, nothing uploaded"),
        SnapshotStatus::Refused => format!("refused: remote holds more ({remote_counts}); nothing uploaded"),
        SnapshotStatus::Conflict => {
            "conflict: another snapshot won; the pointer was left as it was".to_owned()
        }
    });
    Ok(())
}

/// Refuses to restore into the cache root (the root itself, its store, an artifact) or into a
/// directory holding it: restore replaces DIR wholesale, and the cache's artifacts never change. Checked before anything else,
/// so nothing is contacted or changed; the cache is not opened (restore needs none). Returns the
/// root, whose store a restore may read content from.
fn refuse_inside_cache(cli: &Cli, dir: &std::path::Path) -> Result<PathBuf> {
    let root = super::context::root(cli)?;
    if warmcache::cache::Cache::root_holds(&root, dir) {
        anyhow::bail!(
            "cannot restore into `{}`: it is inside the cache root `{}`, whose artifacts never \
             change; choose a directory outside the cache",
            dir.display(),
            root.display()
        );
    }
    if warmcache::cache::Cache::root_within(&root, dir) {
        anyhow::bail!(
            "cannot restore into `{}`: it holds the cache root `{}`, which the restore would \
             replace with the snapshot's copy; choose a directory without it, or move the cache \
             (--root or WARMCACHE_ROOT)",
            dir.display(),
            root.display()
        );
    }
    Ok(root)
}

/// `warmcache restore DIR`.
pub fn run_restore(cli: &Cli, out: &Output, args: &RestoreArgs) -> Result<()> {
    let root = refuse_inside_cache(cli, &args.dir)?;
    let (url, settings, timeout, configured) = remote_url(cli, args.remote.as_ref())?;
    let mut fallbacks: Vec<RemoteUrl> = Vec::new();
    let given = if args.fallbacks.is_empty() {
        configured
    } else {
        args.fallbacks.clone()
    };
    for fallback in given {
        // The exact key is tried first anyway; a key listed twice is tried once.
        if fallback != url && !fallbacks.contains(&fallback) {
            fallbacks.push(fallback);
        }
    }
    let options = RestoreOptions {
        timeout: args.timeout.or(timeout),
        strict: args.strict,
        settings,
        fallbacks,
        min_free: super::context::min_free(args.min_free)?,
        // The store's files may supply content a restore would otherwise download; read only.
        store_root: Some(root),
    };
    let bars = Bars::new(out, "restore");
    let result = snapshot::restore(&args.dir, &url, &options, bars.clone());
    bars.clear();
    let dir = args.dir.display();
    let report = match result {
        Ok(report) => report,
        Err(e) if e.is_local() || args.strict => return Err(e.into()),
        Err(e) => {
            out.warn(&format!(
                "`{dir}` not restored, running cold (it was left untouched): {e}"
            ));
            if e.is_damage() {
                let key = e.fallback_key().map_or_else(|| url.to_string(), str::to_owned);
                out.warn(&format!(
                    "the snapshot at {key} is damaged; replace it from a good copy of the tree with \
                     `warmcache snapshot DIR --remote {key} --force` (a full pack that shares \
                     nothing with the damaged one)"
                ));
            }
            out.result(
                &json!({ "status": "degraded", "dir": args.dir, "url": url.to_string(), "error": e.to_string() }),
                || format!("not restored (left untouched): {dir}"),
            );
            return Ok(());
        }
    };
    let keys = std::iter::once(url.to_string())
        .chain(options.fallbacks.iter().map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(", ");
    if report.status == RestoreStatus::NoSnapshot {
        out.warn(&format!("no snapshot at {keys} yet; `{dir}` was left as it was"));
    }
    let matched = report.matched.clone().unwrap_or_default();
    let from = match report.exact {
        true => matched,
        false => format!("{matched} (fallback: {url} holds no snapshot yet)"),
    };
    out.result(&json!(report), || match report.status {
        RestoreStatus::Restored => format!(
            "restored `{dir}` from {from}: {} files, {} (downloaded {})",
            report.files,
            format_size(report.bytes),
            format_size(report.downloaded_bytes)
        ),
        RestoreStatus::Unchanged => {
            format!("unchanged: `{dir}` already holds the snapshot of {from}, nothing downloaded")
        }
        RestoreStatus::NoSnapshot => format!("no snapshot at {keys}; nothing restored"),
    });
    Ok(())
}

/// Progress bars on stderr: bytes, rate and time left when the total is known.
#[derive(Clone)]
struct Bars {
    bar: Option<ProgressBar>,
    label: &'static str,
}

impl Bars {
    fn new(out: &Output, label: &'static str) -> Arc<Self> {
        let bar = out.progress_enabled().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Arc::new(Self { bar, label })
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl SnapshotProgress for Bars {
    fn phase(&self, phase: Phase, total: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let template = match total {
            Some(_) => "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left",
            None => "{spinner} {prefix} {msg} {bytes} {binary_bytes_per_sec} [{elapsed}]",
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(self.label);
        bar.set_message(phase.as_str());
        bar.reset();
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
    }

    fn position(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }
}
