//! What the hit check costs (docs/DESIGN.md, "Corruption is never served"): in-process
//! `Cache::path` hits on a single-file artifact (one `fstat`) and on a tree of `--files` files
//! (one `lstat` per entry), next to a full re-hash of the tree (what `verify` does, and what a
//! hit does once after the tree's identity changed). Prints one JSON object on stdout.
//!
//! ```text
//! cargo run --release --example bench_hit_check -- --files 1000 --reps 2000
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use warmcache::cache::ImportOptions;
use warmcache::progress::Progress;
use warmcache::{Cache, EntryName};

#[derive(Debug, Parser)]
struct Args {
    /// Files in the tree artifact.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 4096)]
    file_size: usize,
    /// Timed hits per artifact.
    #[arg(long, default_value_t = 2000)]
    reps: usize,
}

/// Median and p90 of durations in nanoseconds, as microseconds.
fn summary(mut ns: Vec<u128>) -> serde_json::Value {
    ns.sort_unstable();
    let pick = |q: f64| ns[((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1] as f64 / 1000.0;
    json!({ "n": ns.len(), "median_us": pick(0.5), "p90_us": pick(0.9) })
}

fn time_hits(cache: &Cache, name: &EntryName, reps: usize) -> Result<serde_json::Value> {
    cache.path(name, None)?;
    let mut ns = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        cache.path(name, None)?;
        ns.push(start.elapsed().as_nanos());
    }
    Ok(summary(ns))
}

fn make_tree(dir: &Path, files: usize, size: usize) -> Result<()> {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 32));
        std::fs::create_dir_all(&sub)?;
        let bytes: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(sub.join(format!("f{i}")), bytes)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let cache = Cache::open(&tmp.path().join("cache"))?;
    let (file, tree) = (tmp.path().join("one"), tmp.path().join("tree"));
    std::fs::write(&file, vec![7u8; args.file_size])?;
    make_tree(&tree, args.files, args.file_size)?;
    let (file_name, tree_name) = (EntryName::new("bench/file")?, EntryName::new("bench/tree")?);
    let opts = ImportOptions::default();
    cache.import(&file, Some(&file_name), &opts, &Progress::none())?;
    cache.import(&tree, Some(&tree_name), &opts, &Progress::none())?;

    let file_hits = time_hits(&cache, &file_name, args.reps).context("file hits")?;
    let tree_hits = time_hits(&cache, &tree_name, args.reps).context("tree hits")?;
    let start = Instant::now();
    let report = cache.verify(&Progress::none())?;
    let rehash_us = start.elapsed().as_micros();
    println!(
        "{}",
        json!({
            "files": args.files,
            "file_size": args.file_size,
            "hit_file_artifact": file_hits,
            "hit_tree_artifact": tree_hits,
            "rehash_everything_us": rehash_us,
            "verified_ok": report.ok,
        })
    );
    Ok(())
}
