//! `warmcache stats`: the counters that prove the cache works, as a table, one JSON object, or
//! the node_exporter textfile-collector format (docs/DESIGN.md, "Counting hits without writing").

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use warmcache::EntryName;
use warmcache::cache::StatsReport;
use warmcache::stats::Counts;

use super::context::open;
use super::{Cli, NameParser, Output, parse_duration};

/// `warmcache stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show only this entry (the total stays the whole root's).
    #[arg(value_parser = NameParser)]
    pub name: Option<EntryName>,
    /// Count only the last DUR (e.g. 1h, 7d), rounded down to the hour; at most 31d.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Write the counters in node_exporter's textfile-collector format to FILE (replaced
    /// atomically: a temporary file beside it, then a rename), or to stdout without FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub prometheus: Option<PathBuf>,
}

pub(super) fn stats(cli: &Cli, out: &Output, args: &StatsArgs) -> Result<()> {
    let to_stdout = args.prometheus.as_deref() == Some(Path::new("-"));
    if to_stdout && cli.global.json {
        anyhow::bail!(
            "--prometheus without FILE prints the metrics on stdout, which --json also needs; give \
             --prometheus a FILE to write, or leave out --json"
        );
    }
    let cache = open(cli)?;
    let report = cache.stats(args.name.as_ref(), args.since)?;
    if let Some(name) = &args.name
        && report.entries.is_empty()
    {
        out.warn(&format!(
            "nothing counted for `{name}` in the cache at `{}`",
            report.root.display()
        ));
    }
    match args.prometheus.as_deref() {
        Some(_) if to_stdout => print!("{}", prometheus(&report, args.name.is_none())),
        Some(path) => {
            let text = prometheus(&report, args.name.is_none());
            warmcache::stats::write_metrics(path, &text)
                .with_context(|| format!("could not write the metrics to `{}`", path.display()))?;
            let metrics = text.lines().filter(|l| !l.starts_with('#')).count();
            out.result(&json!({ "prometheus": path, "samples": metrics }), || {
                format!("wrote {metrics} sample(s) to {}", path.display())
            });
        }
        None => out.result(&json!(report), || table(&report)),
    }
    Ok(())
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics: one counter family per figure, a sample per entry labelled `root` and `entry`
/// (`entry=""` for what belongs to no entry), so `sum by (root)` is the root's total.
pub(super) fn prometheus(report: &StatsReport, all_entries: bool) -> String {
    type Get = fn(&Counts) -> String;
    /// A metric family: name, help, the extra label's key, and its samples (the extra label's
    /// value and how to read the number).
    type Family = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Vec<(Option<&'static str>, Get)>,
    );
    let families: [Family; 8] = [
        (
            "warmcache_hits_total",
            "ensure calls served the artifact of the current inputs without building.",
            None,
            vec![(None, |c| c.hits.to_string())],
        ),
        (
            "warmcache_misses_total",
            "ensure calls that found no artifact of the current inputs.",
            None,
            vec![(None, |c| c.misses.to_string())],
        ),
        (
            "warmcache_stale_serves_total",
            "Misses served the last good artifact as stale.",
            None,
            vec![(None, |c| c.stale_serves.to_string())],
        ),
        (
            "warmcache_builds_total",
            "Builder runs, by result (ok, or the failure's kind).",
            Some("result"),
            vec![
                (Some("ok"), |c| c.builds_ok.to_string()),
                (Some("transient"), |c| c.builds_failed_transient.to_string()),
                (Some("deterministic"), |c| {
                    c.builds_failed_deterministic.to_string()
                }),
                (Some("interrupted"), |c| c.builds_interrupted.to_string()),
            ],
        ),
        (
            "warmcache_builder_seconds_total",
            "Time the builder ran.",
            None,
            vec![(None, |c| seconds(c.build_ms))],
        ),
        (
            "warmcache_builder_saved_seconds_total",
            "Building avoided: each hit counts the entry's last build duration.",
            None,
            vec![(None, |c| seconds(c.saved_ms))],
        ),
        (
            "warmcache_remote_bytes_total",
            "Bytes transferred with a remote, by direction.",
            Some("direction"),
            vec![
                (Some("downloaded"), |c| c.downloaded_bytes.to_string()),
                (Some("uploaded"), |c| c.uploaded_bytes.to_string()),
            ],
        ),
        (
            "warmcache_remote_errors_total",
            "Remote operations that failed.",
            None,
            vec![(None, |c| c.remote_errors.to_string())],
        ),
    ];
    let root = label(&report.root.to_string_lossy());
    let mut rows: Vec<(&str, &Counts)> = report
        .entries
        .iter()
        .map(|e| (e.name.as_str(), &e.counts))
        .collect();
    // What belongs to no entry: the total less the entries (only when all entries are listed).
    let mut rest = report.total;
    for (_, c) in &rows {
        let mut v = rest.values();
        for (a, b) in v.iter_mut().zip(c.values()) {
            *a = a.saturating_sub(b);
        }
        rest = Counts::from_values(v);
    }
    if all_entries && !rest.is_empty() {
        rows.push(("", &rest));
    }
    let mut text = String::new();
    for (name, help, extra, samples) in families {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (entry, counts) in &rows {
            for (value_label, get) in &samples {
                let extra = match (extra, value_label) {
                    (Some(key), Some(value)) => format!(",{key}=\"{value}\""),
                    _ => String::new(),
                };
                text.push_str(&format!(
                    "{name}{{root=\"{root}\",entry=\"{}\"{extra}}} {}\n",
                    label(entry),
                    get(counts)
                ));
            }
        }
    }
    text
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The human table: one line per entry, then the root's total.
fn table(report: &StatsReport) -> String {
    let window = match report.since {
        Some(ms) => format!("since {}", super::commands::format_time(ms)),
        None => "all time".to_string(),
    };
    let mut text = format!("{} ({window})\n", report.root.display());
    let header = [
        "ENTRY",
        "HITS",
        "MISSES",
        "STALE",
        "BUILDS",
        "FAILED",
        "BUILDER",
        "SAVED",
        "DOWN",
        "UP",
        "REMOTE-ERR",
    ];
    let mut rows = vec![header.map(str::to_string).to_vec()];
    let row = |name: &str, c: &Counts| {
        vec![
            name.to_string(),
            c.hits.to_string(),
            c.misses.to_string(),
            c.stale_serves.to_string(),
            c.builds_ok.to_string(),
            format!(
                "{}t/{}d/{}i",
                c.builds_failed_transient, c.builds_failed_deterministic, c.builds_interrupted
            ),
            format!("{}s", seconds(c.build_ms)),
            format!("{}s", seconds(c.saved_ms)),
            warmcache::units::format_size(c.downloaded_bytes),
            warmcache::units::format_size(c.uploaded_bytes),
            c.remote_errors.to_string(),
        ]
    };
    for e in &report.entries {
        rows.push(row(&e.name, &e.counts));
    }
    rows.push(row("(root total)", &report.total));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text.trim_end().to_string()
}
