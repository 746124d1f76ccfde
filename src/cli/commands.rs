//! One function per command: open the cache, call the library, report.

use anyhow::{Context, Result};
use serde_json::json;
use warmcache::cache::Cache;

use super::context::{config, open, recipe};
use super::progress::spinner;
use super::{ActivateArgs, Cli, EnsureArgs, GcArgs, ImportArgs, Output, PathArgs, StatusArgs};

/// A command's outcome that was printed in full but must exit 1 (for example `verify` that found
/// and quarantined damage): nothing more is printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Reported(pub String);

/// The default for how often a standing budget may trigger a background collection.
const DEFAULT_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// The standing size budget and collection interval: `WARMCACHE_MAX_SIZE` and
/// `WARMCACHE_GC_INTERVAL`, else `[cache]` of the nearest warmcache.toml.
fn standing_budget() -> Result<Option<(u64, std::time::Duration)>> {
    let config = config()?.and_then(|c| c.cache.clone());
    let max_size = match std::env::var("WARMCACHE_MAX_SIZE") {
        Ok(v) if !v.is_empty() => Some(warmcache::units::parse_size(&v).context("in WARMCACHE_MAX_SIZE")?),
        _ => config.as_ref().and_then(|c| c.max_size),
    };
    let interval = match std::env::var("WARMCACHE_GC_INTERVAL") {
        Ok(v) if !v.is_empty() => warmcache::units::parse_duration(&v).context("in WARMCACHE_GC_INTERVAL")?,
        _ => config.and_then(|c| c.gc_interval).unwrap_or(DEFAULT_GC_INTERVAL),
    };
    Ok(max_size.map(|max| (max, interval)))
}

/// For commands that wrote: when a standing budget is set, exceeded, and no collection ran
/// within the interval, start `warmcache gc` as a detached background process, so this command
/// returns at once and never waits for a scan. Problems here only warn.
fn collect_in_background(cache: &Cache, out: &Output) {
    let start = || -> Result<bool> {
        let Some((max_size, interval)) = standing_budget()? else {
            return Ok(false);
        };
        if !cache.gc_due(max_size, interval)? {
            return Ok(false);
        }
        let exe = std::env::current_exe().context("cannot find the warmcache executable")?;
        std::process::Command::new(exe)
            .arg("--root")
            .arg(cache.root())
            .args(["-q", "gc", "--max-size", &max_size.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start a background `warmcache gc`")?;
        Ok(true)
    };
    match start() {
        Ok(true) => tracing::info!("the cache is over its size budget; collecting in the background"),
        Ok(false) => {}
        Err(e) => out.warn(&format!("automatic garbage collection skipped: {e:#}")),
    }
}

pub(super) fn ensure(cli: &Cli, out: &Output, args: &EnsureArgs) -> Result<()> {
    let mut recipe = recipe(&args.name, &args.recipe)?;
    if args.stale_while_revalidate {
        recipe.stale = warmcache::build::StalePolicy::WhileRevalidate;
    }
    let cache = open(cli)?;
    let options = warmcache::cache::EnsureOptions {
        refresh: args.refresh,
        wait: if args.no_wait {
            warmcache::cache::WaitPolicy::TakeStale
        } else {
            warmcache::cache::WaitPolicy::Wait
        },
        remote: super::share::ensure_sharing(cli, out, &args.share)?,
        // A lease belongs to the caller that uses the path, never to the background build.
        lease: args.lease.filter(|_| !cli.background_build),
    };
    if cli.background_build {
        if super::revalidate::run(&cache, out, &recipe, &options)? {
            collect_in_background(&cache, out);
        }
        return Ok(());
    }
    let mut ensured = cache.ensure(&recipe, &options)?;
    // Under `while-revalidate`, the build of the changed inputs runs in a detached process.
    let mut started = None;
    if ensured.revalidation == Some(warmcache::cache::Revalidation::Due) {
        match super::revalidate::start(&cache, &ensured.name) {
            Ok(s) => {
                ensured.revalidation = Some(warmcache::cache::Revalidation::Started);
                started = Some(s);
            }
            Err(e) => out.warn(&format!(
                "the background build of `{}` could not be started ({e:#}); the next call tries again",
                ensured.name
            )),
        }
    }
    for warning in &ensured.warnings {
        out.warn(warning);
    }
    for glob in &ensured.unmatched_globs {
        out.warn(&format!(
            "input glob `{glob}` of `{}` matched no files",
            ensured.name
        ));
    }
    for input in &ensured.special_inputs {
        out.warn(&format!(
            "input `{input}` of `{}` is not a regular file, directory or symlink: only its kind is \
             fingerprinted, never its content, so changes to what it delivers do not trigger a rebuild",
            ensured.name
        ));
    }
    if ensured.status == warmcache::cache::EnsureStatus::Stale {
        let mut warning = stale_warning(&ensured);
        if let Some(s) = &started {
            warning.push_str(&format!(
                "\n  background build: pid {}, report in {}",
                s.pid,
                s.log.display()
            ));
        }
        out.warn(&warning);
    }
    let mut value = json!(ensured);
    if let (Some(s), Some(obj)) = (&started, value.as_object_mut()) {
        obj.insert("revalidation_pid".into(), json!(s.pid));
        obj.insert("revalidation_log".into(), json!(s.log));
    }
    out.result(&value, || ensured.path.display().to_string());
    if ensured.status == warmcache::cache::EnsureStatus::Built {
        collect_in_background(&cache, out);
    }
    Ok(())
}

/// The warning printed whenever a stale artifact is served: its age, why, the last error and the
/// next retry.
pub(super) fn stale_warning(e: &warmcache::cache::Ensured) -> String {
    let age = std::time::Duration::from_millis((warmcache::clock::now_ms() - e.updated_at).max(0) as u64);
    let mut text = format!(
        "serving a stale `{}` (built {} ago from older inputs): {}",
        e.name,
        warmcache::units::format_duration(age),
        e.stale_reason
            .as_deref()
            .unwrap_or("the current inputs could not be built")
    );
    if let Some(revalidation) = e.revalidation {
        text.push_str("; ");
        text.push_str(revalidation.describe());
    }
    if let Some(f) = &e.failure {
        let retry = match f.next_retry_at {
            Some(at) => format!(
                "next retry in {}",
                warmcache::units::format_duration(std::time::Duration::from_millis(
                    (at - warmcache::clock::now_ms()).max(0) as u64
                ))
            ),
            None => "no retry until the inputs change (or --refresh)".to_string(),
        };
        text.push_str(&format!(
            "\n  last error ({}, attempt {}): {}\n  {retry}",
            f.kind.as_str(),
            f.attempts,
            f.error.replace('\n', "\n    ")
        ));
    }
    text
}

pub(super) fn import(cli: &Cli, out: &Output, args: &ImportArgs) -> Result<()> {
    Cache::check_import(&args.source)?;
    let cache = open(cli)?;
    let mut limits = warmcache::archive::Limits::default();
    if let Some(max) = args.max_expanded {
        limits.max_total_bytes = max;
    }
    if let Some(max) = args.max_entries {
        limits.max_entries = max;
    }
    if let Some(max) = args.max_ratio {
        limits.max_ratio = max;
    }
    limits.min_free_bytes = super::context::min_free(args.min_free)?;
    let options = warmcache::cache::ImportOptions {
        modes: args.modes.clone(),
        hooks: args.hooks.clone(),
        raw: args.raw,
        limits,
    };
    let (progress, bar) = spinner(out, "importing");
    let imported = cache
        .import(&args.source, args.name.as_ref(), &options, &progress)
        .with_context(|| format!("could not import `{}`", args.source.display()))?;
    drop(bar);
    out.result(&json!(imported), || imported.path.display().to_string());
    collect_in_background(&cache, out);
    Ok(())
}

pub(super) fn path(cli: &Cli, out: &Output, args: &PathArgs) -> Result<()> {
    let cache = open(cli)?;
    let found = cache.path(&args.name, args.lease)?;
    out.result(&json!(found), || found.path.display().to_string());
    Ok(())
}

pub(super) fn status(cli: &Cli, out: &Output, args: &StatusArgs) -> Result<()> {
    let cache = open(cli)?;
    let entries = cache.status(args.name.as_ref())?;
    out.result(&json!({ "root": cache.root(), "entries": entries }), || {
        if entries.is_empty() {
            return format!("no entries in {}", cache.root().display());
        }
        let mut text = String::new();
        for e in &entries {
            let state = match (&e.entry.artifact, e.present, &e.failure) {
                (_, _, Some(f)) => format!("failing ({}, {} attempt(s))", f.kind.as_str(), f.attempts),
                (Some(_), true, None) => "ok".to_string(),
                (Some(_), false, None) => "missing".to_string(),
                (None, _, None) => "empty".to_string(),
            };
            let artifact = e.entry.artifact.as_ref().map_or("-", |a| &a.as_str()[..12]);
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
                let last_line = f
                    .error_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                text.push_str(&format!(
                    "    last error: {} {last_line}\n    next retry: {retry}\n",
                    f.exit
                ));
            }
        }
        text.trim_end().to_string()
    });
    Ok(())
}

pub(super) fn verify(cli: &Cli, out: &Output) -> Result<()> {
    let cache = open(cli)?;
    let (progress, bar) = spinner(out, "verifying");
    let report = cache.verify(&progress)?;
    drop(bar);
    for d in &report.damaged {
        let problems = d
            .problems
            .iter()
            .map(|p| match p.path.as_str() {
                "" => p.problem.clone(),
                path => format!("`{path}`: {}", p.problem),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let fate = match &d.quarantined_to {
            Some(to) => format!("moved to {}", to.display()),
            None => "left in place: the cache is read-only".to_string(),
        };
        out.warn(&format!(
            "artifact {} is damaged ({problems}); {fate}",
            d.artifact
        ));
    }
    for name in &report.dangling {
        out.warn(&format!(
            "entry `{name}` named an artifact that is gone; it is now a miss"
        ));
    }
    out.result(&json!(report), || {
        format!(
            "checked {} artifact(s): {} ok, {} damaged, {} dangling entr(ies), {} unreferenced",
            report.checked,
            report.ok,
            report.damaged.len(),
            report.dangling.len(),
            report.unreferenced
        )
    });
    if report.found_problems() {
        return Err(Reported("verify found damage".into()).into());
    }
    Ok(())
}

pub(super) fn activate(cli: &Cli, out: &Output, args: &ActivateArgs) -> Result<()> {
    let cache = open(cli)?;
    let options = warmcache::activate::ActivateOptions {
        link: args.link,
        hooks: args.hooks.clone(),
    };
    let activated = cache.activate(&args.source, &args.dest, &options)?;
    out.result(&json!(activated), || {
        activated.activation.dest.display().to_string()
    });
    Ok(())
}

pub(super) fn gc(cli: &Cli, out: &Output, args: &GcArgs) -> Result<()> {
    if let Some(url) = &args.remote {
        return super::remote_gc::run(cli, out, url, args);
    }
    let cache = super::context::open_for_gc(cli)?;
    let options = warmcache::cache::GcOptions {
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
                "{verb} {} ({}, {}, last used {})\n",
                r.artifact,
                indicatif::HumanBytes(r.disk_usage),
                r.reason.as_str(),
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
pub(super) fn format_time(ms: i64) -> String {
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
