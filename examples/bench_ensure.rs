//! In-process cache-hit latency of `Cache::ensure`, for the `ensure` section of `bench/bench.py`.
//!
//! Opens the cache, makes sure the entry is built (the first call may build), then times many
//! hits in a row, the way a long-running loader calling the library would see them. Alongside, it
//! times what a loader without a cache pays on every start: fingerprinting every input from
//! scratch (an empty stat cache, so every file is read and hashed), and, for the breakdown of a
//! hit, `Cache::open` and a fingerprint with a warm stat cache. Prints one JSON object on stdout.
//!
//! ```text
//! cargo run --release --example bench_ensure -- --root R --base DIR --name bench/x \
//!     --input 'src/**' --build 'printf x > "$WARMCACHE_OUT"' --reps 1000
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use warmcache::Cache;
use warmcache::build::{Recipe, StatCache, fingerprint};
use warmcache::cache::{EnsureOptions, EnsureStatus};
use warmcache::config::EntryConfig;

#[derive(Debug, Parser)]
struct Args {
    /// The cache root.
    #[arg(long)]
    root: PathBuf,
    /// The recipe's base directory (input globs are relative to it).
    #[arg(long)]
    base: PathBuf,
    /// The entry name.
    #[arg(long)]
    name: String,
    /// Input globs (repeatable).
    #[arg(long = "input")]
    inputs: Vec<String>,
    /// The build command.
    #[arg(long)]
    build: String,
    /// How many timed hits.
    #[arg(long, default_value_t = 1000)]
    reps: usize,
    /// How many cold fingerprints (each reads every input).
    #[arg(long, default_value_t = 10)]
    cold_reps: usize,
}

/// Median, p90, p99, min and max of durations in nanoseconds, as microseconds.
fn summary(mut ns: Vec<u128>) -> serde_json::Value {
    ns.sort_unstable();
    let pick = |q: f64| {
        let i = ((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1000.0
    };
    json!({
        "n": ns.len(),
        "median_us": pick(0.5),
        "p90_us": pick(0.9),
        "p99_us": pick(0.99),
        "min_us": ns[0] as f64 / 1000.0,
        "max_us": ns[ns.len() - 1] as f64 / 1000.0,
    })
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(u128, T)> {
    let start = Instant::now();
    let value = f()?;
    Ok((start.elapsed().as_nanos(), value))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.reps == 0 || args.cold_reps == 0 {
        bail!("--reps and --cold-reps must be at least 1");
    }
    let entry = EntryConfig {
        inputs: args.inputs.clone(),
        build: Some(args.build.clone()),
        ..EntryConfig::default()
    };
    let recipe = Recipe::new(&args.name, &entry, &args.base)?;

    // Opening: what a fresh process pays once before its first hit.
    let mut open_ns = Vec::new();
    for _ in 0..10 {
        let (ns, cache) = timed(|| Ok(Cache::open(&args.root)?))?;
        drop(cache);
        open_ns.push(ns);
    }
    let cache = Cache::open(&args.root).context("open the cache")?;
    let options = EnsureOptions::default();

    let (first_ns, first) = timed(|| Ok(cache.ensure(&recipe, &options)?))?;
    // The first call of a process loads the entry's stat cache from the catalog (it is a hit
    // when the entry was built before, as bench.py does with the CLI); the loop below measures
    // the steady state of a long-running process.
    let (second_ns, second) = timed(|| Ok(cache.ensure(&recipe, &options)?))?;
    if second.status != EnsureStatus::Hit {
        bail!("expected a hit after the first ensure, got {:?}", second.status);
    }
    let mut hit_ns = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let (ns, ensured) = timed(|| Ok(cache.ensure(&recipe, &options)?))?;
        if ensured.status != EnsureStatus::Hit {
            bail!("expected a hit, got {:?}", ensured.status);
        }
        hit_ns.push(ns);
    }

    // What a loader without a cache pays on every start: every input read and hashed.
    let mut cold_ns = Vec::new();
    let mut inputs = 0;
    for _ in 0..args.cold_reps {
        let mut empty = StatCache::new();
        let (ns, fp) = timed(|| Ok(fingerprint(&recipe, &mut empty)?))?;
        if fp.hashed != fp.inputs {
            bail!("a cold fingerprint hashed {} of {} inputs", fp.hashed, fp.inputs);
        }
        inputs = fp.inputs;
        cold_ns.push(ns);
    }

    // The fingerprint part of a hit: walk and stat, no reading.
    let mut warm = StatCache::new();
    fingerprint(&recipe, &mut warm)?;
    let mut warm_ns = Vec::new();
    let mut rehashed = 0;
    for _ in 0..args.reps.min(200) {
        let (ns, fp) = timed(|| Ok(fingerprint(&recipe, &mut warm)?))?;
        rehashed = rehashed.max(fp.hashed);
        warm_ns.push(ns);
    }

    // What a fresh CLI process does for a hit, step by step, repeated: the parts that `--version`
    // does not pay. Each repetition starts from nothing in memory (a new `Cache`), as a process
    // does; the page cache is warm, as it is for back-to-back CLI calls.
    let mut fresh: [Vec<u128>; 5] = Default::default();
    for _ in 0..args.reps.min(300) {
        let (ns, filter) = timed(|| Ok(tracing_subscriber::EnvFilter::new("warmcache=warn")))?;
        drop(filter);
        fresh[0].push(ns);
        let (ns, cache) = timed(|| Ok(Cache::open(&args.root)?))?;
        fresh[1].push(ns);
        let (ns, _) = timed(|| Ok(cache.fingerprint(&recipe)?))?;
        fresh[2].push(ns);
        let (ns, ensured) = timed(|| Ok(cache.ensure(&recipe, &options)?))?;
        if ensured.status != EnsureStatus::Hit {
            bail!("expected a hit, got {:?}", ensured.status);
        }
        fresh[3].push(ns);
        let (ns, ()) = timed(|| {
            drop(cache);
            Ok(())
        })?;
        fresh[4].push(ns);
    }
    let [logging, open, first_fingerprint, hit_after, close] = fresh.map(summary);

    let out = json!({
        "fresh_process": {
            "logging_filter": logging,
            "open": open,
            "first_fingerprint": first_fingerprint,
            "hit_after_first_fingerprint": hit_after,
            "close": close,
        },
        "inputs": inputs,
        "first_status": first.status,
        "first_ms": first_ns as f64 / 1e6,
        "second_ms": second_ns as f64 / 1e6,
        "open": summary(open_ns),
        "hit": summary(hit_ns),
        "fingerprint_cold": summary(cold_ns),
        "fingerprint_warm": summary(warm_ns),
        // Files re-read by a warm fingerprint (racily clean ones); 0 when inputs are old enough.
        "fingerprint_warm_rehashed": rehashed,
    });
    println!("{out}");
    Ok(())
}
