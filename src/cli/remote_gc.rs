//! `warmcache gc --remote URL`: the remote gc of one snapshot key (docs/DESIGN.md, "Remote gc").
//!
//! Not advisory: collecting the remote is the command's whole job, so a remote failure is an
//! error (exit 1) that says what was and was not done; nothing is deleted after the first one.

use anyhow::Result;
use serde_json::json;
use warmcache::remote::RemoteUrl;
use warmcache::remote::snapshot::{self, RemoteGcOptions};
use warmcache::units::{format_duration, format_size};

use super::{Cli, GcArgs, Output};

/// `warmcache gc --remote URL [--keep N] [--max-age DUR] [--grace DUR] [--dry-run]`.
pub(super) fn run(cli: &Cli, out: &Output, url: &RemoteUrl, args: &GcArgs) -> Result<()> {
    let config = super::context::configured_remote()?;
    let settings = super::context::remote_settings(cli, config.as_ref());
    // Collecting deletes; a read-only machine must not (docs/DESIGN.md, "Read-only writers").
    // Refused before anything is read, even for --dry-run: its report is what a delete would do.
    if settings.read_only {
        anyhow::bail!(
            "cannot collect {url}: the remote is read-only here (--read-only, `[remote] read_only = \
             true` or WARMCACHE_REMOTE_READ_ONLY=1) and the remote gc deletes; run it from a machine \
             that may write the bucket, without the read-only setting"
        );
    }
    let grace = args.grace.unwrap_or(snapshot::DEFAULT_GRACE);
    // A grace shorter than a snapshot or restore may last lets the gc delete what one of them
    // still needs. Allowed (tests and quiet keys use short ones), never silently.
    if grace < settings.overall_timeout {
        out.warn(&format!(
            "--grace {} is shorter than the remote timeout ({}): a snapshot or restore running \
             longer than the grace may lose objects it needs; use a grace longer than the longest \
             snapshot or restore against {url}",
            format_duration(grace),
            format_duration(settings.overall_timeout)
        ));
    }
    let options = RemoteGcOptions {
        keep: args.keep.unwrap_or(1),
        max_age: args.max_age,
        grace,
        dry_run: args.dry_run,
        settings,
    };
    let report = snapshot::collect(url, &options)?;
    for warning in &report.warnings {
        out.warn(warning);
    }
    out.result(&json!(report), || {
        let (condemn, delete) = if report.dry_run {
            ("would condemn", "would delete")
        } else {
            ("condemned", "deleted")
        };
        let mut text = String::new();
        for o in &report.deleted {
            text.push_str(&format!("{delete} {} ({})\n", o.key, format_size(o.bytes)));
        }
        for o in &report.condemned {
            text.push_str(&format!("{condemn} {} ({})\n", o.key, format_size(o.bytes)));
        }
        let waiting_bytes: u64 = report.waiting.iter().map(|o| o.bytes).sum();
        text.push_str(&format!(
            "{url}: kept {} of {} snapshot(s); {delete} {} object(s), freed {}; {condemn} {}; {} \
             condemned within the grace ({}, {}); {} unreachable but younger than the grace",
            report.kept.len(),
            report.manifests,
            report.deleted.len(),
            format_size(report.freed_bytes),
            report.condemned.len(),
            report.waiting.len(),
            format_size(waiting_bytes),
            format_duration(grace),
            report.young
        ));
        text
    });
    Ok(())
}
