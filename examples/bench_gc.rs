//! Helpers for the `gc` section of `bench/bench.py`: fill a cache with many artifacts, and time
//! in-process cache hits (`Cache::path`) while another process collects garbage.
//!
//! ```text
//! bench_gc populate --root R --count 100000 --protected bench/protected [--method auto]
//! bench_gc hits --root R --name bench/protected --stop-file F [--max-seconds 600] [--pause-us 1000]
//! ```
//!
//! `populate` publishes artifacts through the library's real import path (`Cache::import`: copy,
//! hash, fsync, rename, fsync the directory, one catalog transaction each) while that is fast
//! enough for the requested count. With `--method auto` it times the first ones and, when the
//! projected total exceeds `--budget-seconds`, writes the rest directly in the store's on-disk
//! format (the same manifest, layout and catalog rows, made durable by one `syncfs` and one
//! catalog transaction) so that a 100,000-artifact cache takes seconds to make rather than an
//! hour of fsyncs. The JSON it prints says how many artifacts went each way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use warmcache::Cache;
use warmcache::EntryName;
use warmcache::cache::ImportOptions;
use warmcache::clock::now_ms;
use warmcache::progress::Progress;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    /// The real import path, switching to direct writes when it would take too long.
    Auto,
    /// Only the real import path.
    Publish,
    /// Only direct writes of the on-disk format.
    Direct,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Fill a cache with `count` single-file artifacts (no entry) and one protected entry.
    Populate {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        count: usize,
        /// The entry that protects one artifact (the one the hit loops read).
        #[arg(long)]
        protected: EntryName,
        /// Bytes per artifact.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, value_enum, default_value_t = Method::Auto)]
        method: Method,
        /// How many artifacts `auto` publishes through the real path before projecting.
        #[arg(long, default_value_t = 200)]
        probe: usize,
        /// `auto` keeps the real path when the projected total stays under this.
        #[arg(long, default_value_t = 120.0)]
        budget_seconds: f64,
    },
    /// Time `Cache::path(name)` in a loop until the stop file exists.
    Hits {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        name: EntryName,
        #[arg(long)]
        stop_file: PathBuf,
        /// Stop after this long even without the stop file.
        #[arg(long, default_value_t = 600.0)]
        max_seconds: f64,
        /// Pause between hits, so the loop samples instead of saturating a core.
        #[arg(long, default_value_t = 1000)]
        pause_us: u64,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Populate {
            root,
            count,
            protected,
            size,
            method,
            probe,
            budget_seconds,
        } => populate(&root, count, &protected, size, method, probe, budget_seconds),
        Cmd::Hits {
            root,
            name,
            stop_file,
            max_seconds,
            pause_us,
        } => hits(&root, &name, &stop_file, max_seconds, pause_us),
    }
}

/// The bytes of artifact `i`: unique, `size` long.
fn content(i: usize, size: usize) -> Vec<u8> {
    let mut bytes = format!("warmcache gc benchmark artifact {i}\n").into_bytes();
    let fill = bytes.len();
    bytes.resize(size.max(fill), b'.');
    bytes
}

fn populate(
    root: &Path,
    count: usize,
    protected: &EntryName,
    size: usize,
    method: Method,
    probe: usize,
    budget_seconds: f64,
) -> Result<()> {
    let started = Instant::now();
    let cache = Cache::open(root)?;
    let scratch = tempfile::tempdir_in(root).context("create a scratch directory in the root")?;
    let options = ImportOptions::default();
    let import = |path: &Path, bytes: &[u8], name: Option<&EntryName>| -> Result<()> {
        std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
        cache.import(path, name, &options, &Progress::none())?;
        std::fs::remove_file(path)?;
        Ok(())
    };

    let source = scratch.path().join("artifact");
    import(&source, b"the protected artifact\n", Some(protected))?;

    // The real path, for as long as it is affordable.
    let real_limit = match method {
        Method::Direct => 0,
        Method::Publish => count,
        Method::Auto => probe.min(count),
    };
    let real_start = Instant::now();
    for i in 0..real_limit {
        import(&source, &content(i, size), None)?;
    }
    let per_publish = real_start.elapsed().as_secs_f64() / real_limit.max(1) as f64;
    let mut published = real_limit;
    if method == Method::Auto && per_publish * count as f64 <= budget_seconds {
        for i in real_limit..count {
            import(&source, &content(i, size), None)?;
        }
        published = count;
    }
    drop(scratch);

    let direct_start = Instant::now();
    let direct = count - published;
    if direct > 0 {
        write_direct(&cache, published..count, size)?;
    }
    let out = json!({
        "count": count,
        "published_via_import": published,
        "written_directly": direct,
        "import_ms_each": per_publish * 1000.0,
        "projected_import_seconds": per_publish * count as f64,
        "direct_seconds": direct_start.elapsed().as_secs_f64(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{out}");
    Ok(())
}

/// Writes artifacts in the store's on-disk format without a per-artifact fsync
/// ([`Cache::bulk_publish_files`]), with access times spread so that least-recently-used order
/// means something.
fn write_direct(cache: &Cache, range: std::ops::Range<usize>, size: usize) -> Result<()> {
    let now = now_ms();
    let total = range.len() as i64;
    let files = range
        .enumerate()
        .map(|(n, i)| (content(i, size), now - (total - n as i64) * 1000));
    cache.bulk_publish_files(files)?;
    Ok(())
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn hits(root: &Path, name: &EntryName, stop_file: &Path, max_seconds: f64, pause_us: u64) -> Result<()> {
    let cache = Cache::open(root)?;
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    let pause = Duration::from_micros(pause_us);
    let (mut starts, mut lats, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    while !stop_file.exists() && Instant::now() < deadline {
        let at = unix_ns();
        let t = Instant::now();
        let result = cache.path(name, None);
        let lat = t.elapsed().as_nanos();
        match result {
            Ok(found) if found.path.is_file() => {
                starts.push(at);
                lats.push(lat);
            }
            Ok(found) => errors.push(format!("{} is not a file", found.path.display())),
            Err(e) => errors.push(e.to_string()),
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    if starts.is_empty() && errors.is_empty() {
        bail!(
            "no hit was timed: the stop file {} existed from the start",
            stop_file.display()
        );
    }
    println!(
        "{}",
        json!({ "start_ns": starts, "lat_ns": lats, "errors": errors })
    );
    Ok(())
}
