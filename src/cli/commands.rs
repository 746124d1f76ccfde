//! One function per command: open the cache, call the library, report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::progress::spinner;
use super::{ActivateArgs, Cli, Command, GcArgs, ImportArgs, Output, PathArgs, StatusArgs};
use crate::cache::{Cache, CacheOptions, DEFAULT_LOCK_TIMEOUT};

/// Runs the command.
pub fn dispatch(cli: &Cli, out: &Output) -> Result<()> {
    match &cli.command {
        Command::Import(args) => import(cli, out, args),
        Command::Path(args) => path(cli, out, args),
        Command::Status(args) => status(cli, out, args),
        Command::Verify => verify(cli, out),
        Command::Gc(args) => gc(cli, out, args),
        Command::Activate(args) => activate(cli, out, args),
    }
}

/// The root from `--root`/`WARMCACHE_ROOT`, else the platform cache directory.
fn root(cli: &Cli) -> Result<PathBuf> {
    if let Some(root) = &cli.global.root {
        return Ok(root.clone());
    }
    let base = dirs::cache_dir().context(
        "no platform cache directory is known for this user; give one with --root DIR or WARMCACHE_ROOT",
    )?;
    Ok(base.join("warmcache"))
}

fn open(cli: &Cli) -> Result<Cache> {
    let root = root(cli)?;
    let options = CacheOptions {
        lock_timeout: cli.global.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT),
    };
    Ok(Cache::open_with(&root, options)?)
}

fn import(cli: &Cli, out: &Output, args: &ImportArgs) -> Result<()> {
    Cache::check_import(&args.source, args.name.as_deref())?;
    let cache = open(cli)?;
    let (progress, bar) = spinner(out, "importing");
    let imported = cache
        .import(&args.source, args.name.as_deref(), &progress)
        .with_context(|| format!("could not import `{}`", args.source.display()))?;
    drop(bar);
    out.result(&json!(imported), || imported.path.display().to_string());
    Ok(())
}

fn path(cli: &Cli, out: &Output, args: &PathArgs) -> Result<()> {
    let cache = open(cli)?;
    let (entry, path) = cache.path(&args.name)?;
    let lease_expires_at = match (args.lease, &entry.artifact) {
        (Some(duration), Some(artifact)) => {
            let lease = cache.lease(artifact, duration)?;
            let expires = lease.expires_at();
            lease.keep();
            Some(expires)
        }
        _ => None,
    };
    out.result(
        &json!({ "name": entry.name, "path": path, "artifact": entry.artifact, "lease_expires_at": lease_expires_at }),
        || path.display().to_string(),
    );
    Ok(())
}

fn status(cli: &Cli, out: &Output, args: &StatusArgs) -> Result<()> {
    let cache = open(cli)?;
    let entries = cache.status(args.name.as_deref())?;
    out.result(&json!({ "root": cache.root(), "entries": entries }), || {
        if entries.is_empty() {
            return format!("no entries in {}", cache.root().display());
        }
        let mut text = String::new();
        for e in &entries {
            let state = match (&e.entry.artifact, e.present, &e.failure) {
                (_, _, Some(f)) => format!("failing ({}, {} attempt(s))", f.kind, f.attempts),
                (Some(_), true, None) => "ok".to_string(),
                (Some(_), false, None) => "missing".to_string(),
                (None, _, None) => "empty".to_string(),
            };
            let artifact = e
                .entry
                .artifact
                .as_deref()
                .map(|a| &a[..12.min(a.len())])
                .unwrap_or("-");
            let (kind, size) = e
                .artifact_info
                .as_ref()
                .map(|a| (a.kind.as_str(), indicatif::HumanBytes(a.size).to_string()))
                .unwrap_or(("-", "-".to_string()));
            text.push_str(&format!(
                "{}  {state}  artifact {artifact}  {kind}  {size}  updated {}\n",
                e.entry.name,
                format_time(e.entry.updated_at)
            ));
            if let Some(f) = &e.failure {
                let retry = f
                    .next_retry_at
                    .map(format_time)
                    .unwrap_or_else(|| "when the inputs change".into());
                let last_line = f.error.lines().last().unwrap_or("");
                text.push_str(&format!("    last error: {last_line}\n    next retry: {retry}\n"));
            }
        }
        text.trim_end().to_string()
    });
    Ok(())
}

fn verify(cli: &Cli, out: &Output) -> Result<()> {
    let cache = open(cli)?;
    let (progress, bar) = spinner(out, "verifying");
    let report = cache.verify(&progress)?;
    drop(bar);
    for d in &report.damaged {
        out.warn(&format!(
            "artifact {} is damaged ({}); moved to {}",
            d.artifact,
            d.problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.problem))
                .collect::<Vec<_>>()
                .join(", "),
            d.quarantined_to.display()
        ));
    }
    for name in &report.dangling {
        out.warn(&format!(
            "entry `{name}` named an artifact that is gone; it is now a miss"
        ));
    }
    out.result(&json!(report), || {
        format!(
            "checked {} artifact(s): {} ok, {} damaged (quarantined), {} dangling entr(ies) cleared, {} unreferenced",
            report.checked,
            report.ok,
            report.damaged.len(),
            report.dangling.len(),
            report.unreferenced
        )
    });
    Ok(())
}

fn activate(cli: &Cli, out: &Output, args: &ActivateArgs) -> Result<()> {
    let cache = open(cli)?;
    let (artifact, source) = cache.resolve(&args.source)?;
    // Hold the artifact against garbage collection while it is copied out.
    let _lease = cache.lease(&artifact, std::time::Duration::from_secs(3600))?;
    let options = crate::activate::ActivateOptions {
        link: args.link,
        hooks: args.hooks.clone(),
    };
    let activation = crate::activate::activate(&source, &args.dest, &options)?;
    out.result(
        &json!({ "artifact": artifact, "source": source, "activation": activation }),
        || activation.dest.display().to_string(),
    );
    Ok(())
}

fn gc(cli: &Cli, out: &Output, args: &GcArgs) -> Result<()> {
    let cache = open(cli)?;
    let options = crate::gc::GcOptions {
        max_size: args.max_size,
        max_age: args.max_age,
        dry_run: args.dry_run,
        evict: args.evict.clone(),
    };
    let report = cache.gc(&options)?;
    if !report.budget_met {
        out.warn(&format!(
            "the cache still takes {} after collection, over the budget: the rest is protected by entries or \
             leases (release entries with `warmcache gc --evict NAME`)",
            indicatif::HumanBytes(report.size_after)
        ));
    }
    out.result(&json!(report), || {
        let verb = if report.dry_run { "would remove" } else { "removed" };
        let mut text = String::new();
        for r in &report.removed {
            text.push_str(&format!(
                "{verb} {} ({}, {:?}, last used {})\n",
                r.artifact,
                indicatif::HumanBytes(r.disk_usage),
                r.reason,
                format_time(r.accessed_at)
            ));
        }
        text.push_str(&format!(
            "{verb} {} artifact(s), freed {}; cache now {} ({} protected)",
            report.removed.len(),
            indicatif::HumanBytes(report.freed),
            indicatif::HumanBytes(report.size_after),
            report.protected
        ));
        text
    });
    Ok(())
}

/// A unix-ms timestamp as UTC `YYYY-MM-DD HH:MM:SS`.
fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm): no date crate needed for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::format_time(1_795_000_000_000), "2026-11-18 11:06:40Z");
    }
}
