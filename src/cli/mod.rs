//! The command line: argument definitions, human and JSON output, exit codes.
//!
//! Exit codes: 0 success (a stale-but-served artifact is success, with a warning), 1 failure,
//! 2 usage error (clap's own), 130/143/129 ended by SIGINT/SIGTERM/SIGHUP. With `--json`, exactly one JSON object is printed on stdout, also
//! for failures (`{"error": "...", "kind": "failure" | "usage"}`), each naming its schema document
//! (`"schema": "warmcache.<name>/<major>"`, `docs/json/`; docs/DESIGN.md, "JSON output").

mod commands;
mod context;
mod output;
mod progress;
mod remote_gc;
mod revalidate;
mod share;
mod snapshot;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use warmcache::EntryName;
use warmcache::activate::LinkMode;

use output::Output;
use share::{EnsureRemoteArgs, PullArgs, PushArgs};

/// warmcache: a crash-safe artifact cache for cold starts.
#[derive(Debug, Parser)]
#[command(name = "warmcache", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Internal: this process is the detached background build of a stale-while-revalidate
    /// `ensure`, started by another `warmcache ensure` with its own arguments after this flag
    /// (docs/DESIGN.md, "Stale while revalidate").
    #[arg(long = revalidate::FLAG, hide = true)]
    pub background_build: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The cache root (default: $WARMCACHE_ROOT, else the platform cache directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print one JSON object on stdout instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors and warnings on stderr; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never write to the remote: reads (restore, pull, ensure's remote hits) still work;
    /// snapshot and push say so and do nothing, ensure does not push, `gc --remote` is
    /// refused (also `[remote] read_only = true`, WARMCACHE_REMOTE_READ_ONLY=1).
    #[arg(
        long,
        global = true,
        env = "WARMCACHE_REMOTE_READ_ONLY",
        value_parser = parse_read_only,
        default_missing_value = "true",
        num_args = 0,
        default_value = "false"
    )]
    pub read_only: bool,
    /// How long to wait for a lock held by another process (e.g. 30s, 10m).
    #[arg(long, global = true, env = "WARMCACHE_LOCK_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Return an artifact built from the current inputs, building it on a miss; prints its path.
    Ensure(EnsureArgs),
    /// Publish a file or a directory as an immutable artifact; prints its path once durable.
    Import(ImportArgs),
    /// Print the path of an entry's last good artifact, without building.
    Path(PathArgs),
    /// List entries with their artifact, state, sizes and failures.
    Status(StatusArgs),
    /// Re-hash every artifact; quarantine damaged ones and clear references to missing ones.
    Verify,
    /// Free space: garbage, then least recently used artifacts down to the budgets.
    Gc(GcArgs),
    /// Atomically place an artifact (an entry NAME or an artifact id) at DEST outside the cache.
    Activate(ActivateArgs),
    /// Upload an entry's last good artifact (and the fingerprint it was built from) to the remote.
    Push(PushArgs),
    /// Download the artifact built elsewhere from the recipe's current inputs; never builds.
    Pull(PullArgs),
    /// Upload DIR as the current snapshot at --remote (a tar.zst; nothing if unchanged).
    Snapshot(snapshot::SnapshotArgs),
    /// Replace DIR atomically with the snapshot at --remote, or at the first --fallback key holding
    /// one (DIR untouched on any failure).
    Restore(snapshot::RestoreArgs),
    /// Hits, misses, builds, time saved and remote traffic, per entry and for the root.
    Stats(stats::StatsArgs),
}

/// `warmcache activate`.
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// An entry name or an artifact id.
    pub source: String,
    /// Where to place it (a file or directory path; its parent must exist).
    pub dest: PathBuf,
    /// A command run by `sh -c` on the staging copy before it replaces DEST (its path is in
    /// $WARMCACHE_STAGING), e.g. code signing; repeatable, run in order.
    #[arg(long = "hook", value_name = "CMD")]
    pub hooks: Vec<String>,
    /// How files are placed: auto (reflink, else copy: always a private, writable copy),
    /// reflink, copy, hardlink (DEST is read-only: its files are the cache's own, and writing
    /// to them damages the cache) or symlink (DEST points into the cache and keeps the artifact
    /// from garbage collection for as long as it does).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_link_mode)]
    pub link: LinkMode,
}

/// `warmcache gc`: the local cache, or with `--remote` a snapshot key in object storage (and
/// then only that: the two take different flags).
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Collect least recently used artifacts until the cache takes at most this much disk
    /// (e.g. 10GiB, 500M; default: $WARMCACHE_MAX_SIZE if set). Local only.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "WARMCACHE_MAX_SIZE")]
    pub max_size: Option<u64>,
    /// Local: collect artifacts not used for longer than this (e.g. 30d, 12h). With --remote:
    /// also keep every snapshot created less than this long ago.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Forget this entry first, so its artifact can be collected (repeatable). Local only.
    #[arg(long, value_name = "NAME", value_parser = NameParser)]
    pub evict: Vec<EntryName>,
    /// Collect the snapshot key at this URL (e.g. s3://bucket/site-a/node_modules) instead of
    /// the local cache: delete the snapshots, packs and archives that neither the pointer nor a
    /// kept snapshot needs, in two runs at least --grace apart.
    // Not `conflicts_with` --max-size: clap counts $WARMCACHE_MAX_SIZE as given, and a standing
    // local budget in the environment must not stop a remote gc ([`remote_gc_conflict`]).
    #[arg(long, value_name = "URL", conflicts_with = "evict", value_parser = share::parse_url)]
    pub remote: Option<warmcache::remote::RemoteUrl>,
    /// With --remote: snapshots kept besides the current one, newest first (default 1).
    #[arg(long, value_name = "N", requires = "remote")]
    pub keep: Option<usize>,
    /// With --remote: an object is deleted only once it was written and then condemned at least
    /// this long ago (default 1h). Must exceed the longest snapshot or restore against the key.
    #[arg(long, value_name = "DUR", value_parser = parse_grace, requires = "remote")]
    pub grace: Option<Duration>,
}

/// The recipe flags, shared by `ensure` and `pull`: they override the fields of `[entry.NAME]` in
/// the nearest `warmcache.toml`.
#[derive(Debug, Args)]
pub struct RecipeArgs {
    /// An input file glob, relative to the recipe's directory (repeatable).
    #[arg(long = "input", value_name = "GLOB", value_parser = parse_input_glob)]
    pub inputs: Vec<String>,
    /// The build command, run by `sh -c`; it writes its output to $WARMCACHE_OUT.
    #[arg(long, value_name = "CMD")]
    pub build: Option<String>,
    /// What the build writes at $WARMCACHE_OUT: `file` (default) or `dir`.
    #[arg(long, value_name = "KIND")]
    pub output: Option<warmcache::build::OutputKind>,
    /// A validation command run on the output ($WARMCACHE_OUT); failing it is deterministic.
    #[arg(long, value_name = "CMD")]
    pub validate: Option<String>,
    /// An extra key string that joins the fingerprint, e.g. a toolchain version (repeatable).
    #[arg(long = "key", value_name = "STR")]
    pub keys: Vec<String>,
    /// An environment variable whose value joins the fingerprint (repeatable).
    #[arg(long = "env", value_name = "VAR")]
    pub env: Vec<String>,
    /// Time limit for the build and for the validation (e.g. 10m).
    #[arg(long, value_name = "DUR", value_parser = parse_time_limit)]
    pub timeout: Option<Duration>,
    /// Serve the last good artifact when building fails (`if-error`, the default), or not
    /// (`never`), or also at once while the changed inputs build in the background
    /// (`while-revalidate`).
    #[arg(long, value_name = "POLICY", value_parser = parse_stale)]
    pub stale: Option<warmcache::build::StalePolicy>,
}

/// `warmcache ensure`. Recipe flags override the fields of `[entry.NAME]` in the nearest
/// `warmcache.toml`; without such an entry they are the whole recipe, relative to the working
/// directory.
#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// The entry name (e.g. `bundles/ext`).
    #[arg(value_parser = NameParser)]
    pub name: EntryName,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Build now, whatever the failure memory says.
    #[arg(long)]
    pub refresh: bool,
    /// If another process is building this entry, take the last good artifact (marked stale)
    /// instead of waiting for that build.
    #[arg(long)]
    pub no_wait: bool,
    /// Hold the artifact against garbage collection for this long after returning.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub lease: Option<Duration>,
    /// When the inputs changed and a last good artifact exists, return it at once (marked stale)
    /// and build the current inputs in a detached background process; the same as
    /// `--stale while-revalidate`.
    #[arg(long, conflicts_with = "stale")]
    pub stale_while_revalidate: bool,
    #[command(flatten)]
    pub share: EnsureRemoteArgs,
}

/// `warmcache import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file, directory or archive (zip, tar, tar.gz, tar.zst; recognised by content) to import.
    pub source: PathBuf,
    /// The entry name to record it under (e.g. `plugins/foo`).
    #[arg(long, value_parser = NameParser)]
    pub name: Option<EntryName>,
    /// A permission rule GLOB=MODE applied to matching files before publication (e.g.
    /// 'bin/*=755'); repeatable, later rules win. Artifacts are read-only, so this sets the
    /// executable bit.
    #[arg(long = "mode", value_name = "GLOB=MODE", value_parser = parse_mode_rule)]
    pub modes: Vec<warmcache::cache::ModeRule>,
    /// A command run by `sh -c` on the staging tree before publication ($WARMCACHE_STAGING);
    /// repeatable, run in order. If one fails, nothing is published.
    #[arg(long = "hook", value_name = "CMD")]
    pub hooks: Vec<String>,
    /// Store the file as it is, never extracting it, whatever its name or content (a file named
    /// like an archive, e.g. `.zip`, must otherwise be one).
    #[arg(long)]
    pub raw: bool,
    /// Refuse archives that expand to more than this (default 32GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_expanded: Option<u64>,
    /// Refuse archives with more entries than this (default 1000000).
    #[arg(long, value_name = "N")]
    pub max_entries: Option<u64>,
    /// Refuse archives that expand more than N times their size, past the first 256 MiB
    /// (default 100).
    #[arg(long, value_name = "N")]
    pub max_ratio: Option<u64>,
    /// Free space to keep on the cache's volume while extracting an archive (default:
    /// `[cache] min_free`, else the smaller of 512MiB and 5% of the volume; 0 turns it off).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub min_free: Option<u64>,
}

/// `warmcache path`.
#[derive(Debug, Args)]
pub struct PathArgs {
    /// The entry name.
    #[arg(value_parser = NameParser)]
    pub name: EntryName,
    /// Hold the artifact against garbage collection for this long (e.g. 10m), for callers that
    /// read the path after this command exits.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub lease: Option<Duration>,
}

/// `warmcache status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show only this entry.
    #[arg(value_parser = NameParser)]
    pub name: Option<EntryName>,
}

/// Parses an entry name with the library's one rule, reporting only the rule's own message
/// (which quotes the name escaped and cut): clap's default would repeat the raw value, however
/// long or invisible.
#[derive(Debug, Clone, Copy)]
struct NameParser;

impl clap::builder::TypedValueParser for NameParser {
    type Value = EntryName;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<EntryName, clap::Error> {
        use clap::error::ErrorKind;
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidUtf8, "entry names must be valid UTF-8\n").with_cmd(cmd)
        })?;
        EntryName::new(text)
            .map_err(|e| clap::Error::raw(ErrorKind::ValueValidation, format!("{e}\n")).with_cmd(cmd))
    }
}

fn parse_mode_rule(s: &str) -> Result<warmcache::cache::ModeRule, String> {
    warmcache::cache::ModeRule::parse(s).map_err(|e| e.to_string())
}

fn parse_stale(s: &str) -> Result<warmcache::build::StalePolicy, String> {
    s.parse()
}

fn parse_link_mode(s: &str) -> Result<LinkMode, String> {
    [
        LinkMode::Auto,
        LinkMode::Reflink,
        LinkMode::Hardlink,
        LinkMode::Copy,
        LinkMode::Symlink,
    ]
    .into_iter()
    .find(|m| m.as_str() == s)
    .ok_or_else(|| format!("unknown link mode `{s}`; use auto, reflink, hardlink, copy or symlink"))
}

/// An input glob checked by the recipe's own rule, so a bad one is a usage error.
fn parse_input_glob(s: &str) -> Result<String, String> {
    warmcache::build::check_input_glob(s).map(|()| s.to_string())
}

/// `--read-only`'s value, mostly from WARMCACHE_REMOTE_READ_ONLY: clap's own yes/no parser
/// names only the flag when it refuses a value, which leaves a user who set the variable looking
/// for a flag they never passed.
fn parse_read_only(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "WARMCACHE_REMOTE_READ_ONLY=`{s}` is not yes or no: use 1, true, yes or on to make the \
             remote read-only, 0, false, no or off (or unset the variable) not to"
        )),
    }
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    warmcache::units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    warmcache::units::parse_duration(s).map_err(|e| e.to_string())
}

/// A time limit: a duration greater than zero (omit the flag for no limit).
pub(super) fn parse_time_limit(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("a time limit must be greater than zero; omit it for no limit".into()),
        d => Ok(d),
    }
}

/// The remote gc's grace period: at least a second (docs/DESIGN.md, "Remote gc"); shorter
/// ones are warned about when the command runs.
fn parse_grace(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_secs(1) => Err(
            "a grace under 1s protects nothing a snapshot or restore is doing; give at least the \
             longest snapshot or restore (default 1h)"
                .into(),
        ),
        d => Ok(d),
    }
}

/// Parses the command line, runs it and returns the process exit code. A usage error exits 2;
/// with `--json` it is also reported as one JSON object on stdout, like every other error. Ending
/// on SIGINT, SIGTERM or SIGHUP exits 128 + the signal's number (130, 143, 129).
pub fn run() -> ExitCode {
    // First, before any thread starts: SIGINT, SIGTERM and SIGHUP end running builders and
    // hooks with their process groups (docs/DESIGN.md, "Nothing outlives its command").
    let signals = warmcache::signals::install();
    let (cli, command) = match Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)))
    {
        Ok((cli, matches)) => match remote_gc_conflict(&matches) {
            Some(err) => return usage_error(err),
            // The command's name on the command line is its `--json` schema's name (output.rs).
            None => (cli, matches.subcommand_name().unwrap_or_default().to_owned()),
        },
        Err(err) => return usage_error(err),
    };
    if cli.background_build && !matches!(cli.command, Command::Ensure(_)) {
        return usage_error(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!("--{} is internal to `warmcache ensure`", revalidate::FLAG),
        ));
    }
    let out = Output::new(cli.global.json, cli.global.quiet, cli.global.verbose, &command);
    out.init_logging();
    if let Err(e) = signals {
        tracing::warn!("cannot take over termination signals; a builder may outlive warmcache: {e}");
    }
    let code = finish(dispatch(&cli, &out), &out);
    // Ending on a signal says so in the exit code, whatever the command made of it.
    match warmcache::signals::interrupted_by() {
        Some(signal) => ExitCode::from(warmcache::signals::exit_code(signal)),
        None => code,
    }
}

/// Reports the command's result and returns its exit code.
fn finish(result: anyhow::Result<()>, out: &Output) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The result was printed in full; the exit code says it was not clean.
        Err(err) if err.is::<commands::Reported>() => ExitCode::from(1),
        Err(err) => {
            // A build failure carries its failure record into the JSON error object.
            let failure = err
                .downcast_ref::<warmcache::cache::EnsureError>()
                .and_then(|e| e.failure())
                .map(warmcache::cache::FailureReport::from);
            out.error(
                &err,
                failure.map(|f| serde_json::json!({ "status": "failed", "failure": f })),
            );
            ExitCode::from(1)
        }
    }
}

/// `gc --remote` with `--max-size` on the command line (from $WARMCACHE_MAX_SIZE it is the
/// local budget, ignored by a remote gc).
fn remote_gc_conflict(matches: &clap::ArgMatches) -> Option<clap::Error> {
    let gc = matches.subcommand_matches("gc")?;
    let from_command_line = |id: &str| gc.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    (gc.contains_id("remote") && from_command_line("remote") && from_command_line("max_size")).then(|| {
        Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "the argument '--remote <URL>' cannot be used with '--max-size <SIZE>': a remote gc keeps \
             snapshots by number (--keep) and age (--max-age), not by size",
        )
    })
}

/// Runs the command.
fn dispatch(cli: &Cli, out: &Output) -> anyhow::Result<()> {
    match &cli.command {
        Command::Ensure(args) => commands::ensure(cli, out, args),
        Command::Import(args) => commands::import(cli, out, args),
        Command::Path(args) => commands::path(cli, out, args),
        Command::Status(args) => commands::status(cli, out, args),
        Command::Verify => commands::verify(cli, out),
        Command::Gc(args) => commands::gc(cli, out, args),
        Command::Activate(args) => commands::activate(cli, out, args),
        Command::Push(args) => share::push(cli, out, args),
        Command::Pull(args) => share::pull(cli, out, args),
        Command::Snapshot(args) => snapshot::run_snapshot(cli, out, args),
        Command::Restore(args) => snapshot::run_restore(cli, out, args),
        Command::Stats(args) => stats::stats(cli, out, args),
    }
}

/// Reports a usage error: clap's own text (and exit 2; help and version exit 0), plus one JSON
/// object on stdout when `--json` is among the arguments, so a caller parsing JSON always gets
/// one.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().any(|a| a == "--json") {
        // Clap's message up to its usage line, on one line: "the following required arguments
        // were not provided: <NAME>" must keep the part after its colon.
        let rendered = err.render().to_string();
        let message = rendered
            .lines()
            .take_while(|line| !line.trim().is_empty() && !line.starts_with("Usage:"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        println!("{}", output::usage_error_json(message));
    }
    let _ = err.print();
    ExitCode::from(2)
}
