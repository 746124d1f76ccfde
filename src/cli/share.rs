//! `warmcache push` and `warmcache pull`, and the remote flags of `ensure`: shared artifacts
//! through object storage ([`warmcache::remote::share`]).
//!
//! The remote comes from `--remote URL`, else `WARMCACHE_REMOTE`, else `[remote] url` of the
//! nearest `warmcache.toml`. Remote problems are warnings (exit 0, the local job done) unless
//! `--strict`; problems with the local cache are always errors.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use super::context::{configured_remote, open, recipe, remote_settings};
use super::{Cli, Output};
use warmcache::EntryName;
use warmcache::cache::{IndexOutcome, ShareError, Sharing, degraded as degraded_message};
use warmcache::remote::RemoteUrl;

/// Where the remote is and how strictly to treat its problems.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The remote for shared artifacts, e.g. s3://bucket/prefix, gs://bucket/prefix or
    /// az://container/prefix (default: $WARMCACHE_REMOTE, else `[remote] url` in warmcache.toml).
    /// Endpoint and credentials follow each cloud's variables (README, "Remote storage").
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub remote: Option<RemoteUrl>,
    /// Make remote problems (unreachable, timed out, corrupt or unverifiable data) errors with exit
    /// code 1, instead of warnings.
    #[arg(long)]
    pub strict: bool,
}

/// The remote flags of `ensure`.
#[derive(Debug, Args)]
pub struct EnsureRemoteArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Push what is built locally to the remote (also `[remote] push = true`; off by default:
    /// let only trusted writers such as CI push).
    #[arg(long)]
    pub push: bool,
}

/// `warmcache push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The entry whose last good artifact to push.
    #[arg(value_parser = super::NameParser)]
    pub name: EntryName,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `warmcache pull`: the recipe (from `[entry.NAME]` of warmcache.toml, and these flags, as for
/// `ensure`) gives the fingerprint to fetch; nothing is ever built.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The entry name.
    #[arg(value_parser = super::NameParser)]
    pub name: EntryName,
    #[command(flatten)]
    pub recipe: super::RecipeArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Free space to keep on the cache's volume while extracting (default: `[cache] min_free`,
    /// else the smaller of 512MiB and 5% of the volume; 0 turns it off).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub min_free: Option<u64>,
}

pub(super) fn parse_url(s: &str) -> Result<RemoteUrl, String> {
    RemoteUrl::parse(s).map_err(|e| e.to_string())
}

/// The remote for `ensure`, or `None` when none is configured. A remote that is configured but
/// unusable (a malformed URL in the environment or the config file) is a warning, and `ensure`
/// runs locally, unless `--strict`.
pub(super) fn ensure_sharing(cli: &Cli, out: &Output, args: &EnsureRemoteArgs) -> Result<Option<Sharing>> {
    sharing(cli, out, &args.remote, args.push, false)
}

/// Resolves the remote; `required` makes its absence an error.
fn sharing(
    cli: &Cli,
    out: &Output,
    args: &RemoteArgs,
    push_flag: bool,
    required: bool,
) -> Result<Option<Sharing>> {
    let config = configured_remote()?;
    let env = std::env::var("WARMCACHE_REMOTE")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let parsed = match (&args.remote, env, &config) {
        (Some(url), _, _) => Ok(url.clone()),
        (None, Some(env), _) => RemoteUrl::parse(env.trim()).context("WARMCACHE_REMOTE"),
        (None, None, Some(config)) => {
            RemoteUrl::parse(&config.url).context("`[remote] url` in warmcache.toml")
        }
        (None, None, None) if required => return Err(ShareError::NoRemote.into()),
        (None, None, None) => return Ok(None),
    };
    let settings = remote_settings(cli, config.as_ref());
    let read_only = settings.read_only;
    // No client is built here: the remote is contacted (and its client built) only when a
    // command needs it, never on a local `ensure` hit.
    match parsed {
        Ok(url) => {
            let warn = out.clone();
            let mut sharing = Sharing::new(url, settings).on_warning(move |message| warn.warn(message));
            // A read-only machine never pushes what it builds: skipped without a word, as
            // asked (docs/DESIGN.md, "Read-only writers").
            sharing.push = !read_only && (push_flag || config.as_ref().is_some_and(|c| c.push));
            sharing.strict = args.strict;
            sharing.min_free = super::context::min_free(None)?;
            Ok(Some(sharing))
        }
        Err(e) if required || args.strict => Err(e),
        Err(e) => {
            out.warn(&format!("ignoring the remote, running locally: {e:#}"));
            Ok(None)
        }
    }
}

/// `warmcache push NAME`.
pub(super) fn push(cli: &Cli, out: &Output, args: &PushArgs) -> Result<()> {
    let Some(sharing) = sharing(cli, out, &args.remote, false, true)? else {
        return Err(ShareError::NoRemote.into());
    };
    let cache = open(cli)?;
    let report = match cache.push(&args.name, &sharing) {
        Ok(report) => report,
        Err(ShareError::Remote(e)) if e.is_read_only() => {
            return read_only(
                out,
                &sharing,
                &e,
                args.remote.strict,
                &format!("`{}` was not pushed", args.name),
            );
        }
        Err(e) if e.is_local() || args.remote.strict => {
            return Err(e).with_context(|| format!("could not push `{}`", args.name));
        }
        Err(e) => return degraded(out, &sharing, &e, &format!("`{}` was not pushed", args.name)),
    };
    match &report.index {
        IndexOutcome::Skipped { reason } => out.warn(reason),
        IndexOutcome::Present { artifact } if artifact.as_ref() != Some(&report.artifact) => {
            out.warn(&format!(
                "the remote already maps this fingerprint of `{}` to artifact {} (built elsewhere from \
                 the same inputs into different bytes); left as it is",
                report.name,
                artifact.as_ref().map_or("(unreadable)", |a| a.as_str())
            ))
        }
        _ => {}
    }
    let status = if report.wrote_nothing() {
        "present"
    } else {
        "pushed"
    };
    let mut value = json!(report);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("status".into(), json!(status));
    }
    out.result(&value, || {
        let short = &report.artifact.as_str()[..12];
        if report.wrote_nothing() {
            format!(
                "{} already has `{}` (artifact {short}): nothing uploaded",
                report.url, report.name
            )
        } else {
            format!(
                "pushed `{}` (artifact {short}, {} uploaded) to {}",
                report.name,
                indicatif::HumanBytes(report.uploaded_bytes),
                report.url
            )
        }
    });
    Ok(())
}

/// `warmcache pull NAME`.
pub(super) fn pull(cli: &Cli, out: &Output, args: &PullArgs) -> Result<()> {
    let recipe = recipe(&args.name, &args.recipe)?;
    let Some(mut sharing) = sharing(cli, out, &args.remote, false, true)? else {
        return Err(ShareError::NoRemote.into());
    };
    sharing.min_free = super::context::min_free(args.min_free)?;
    let cache = open(cli)?;
    match cache.pull(&recipe, &sharing) {
        Ok((_, Some(pulled))) => {
            let mut value = json!(pulled);
            if let Some(obj) = value.as_object_mut() {
                obj.insert("status".into(), json!("pulled"));
            }
            out.result(&value, || pulled.path.display().to_string());
            Ok(())
        }
        Ok((fingerprint, None)) => {
            let message = format!(
                "no shared artifact for `{}` with fingerprint {fingerprint} at {}: nothing pulled (push it from a \
                 machine that built it)",
                recipe.name,
                sharing.url()
            );
            if args.remote.strict {
                bail!(message);
            }
            out.warn(&message);
            out.result(
                &json!({ "status": "miss", "name": recipe.name, "fingerprint": fingerprint, "url": sharing.url().to_string() }),
                String::new,
            );
            Ok(())
        }
        Err(e) if e.is_local() || args.remote.strict => {
            Err(e).with_context(|| format!("could not pull `{}`", recipe.name))
        }
        Err(e) => degraded(out, &sharing, &e, "nothing pulled"),
    }
}

/// Reports a push that wrote nothing because the remote is read-only (configured, or the
/// credentials may not write): a warning and `"status": "read_only"` with exit 0, or an error
/// (exit 1) with `--strict` (docs/DESIGN.md, "Read-only writers").
pub(super) fn read_only(
    out: &Output,
    sharing: &Sharing,
    err: &warmcache::remote::RemoteError,
    strict: bool,
    what: &str,
) -> Result<()> {
    let message = format!("{what} to {}: {err}", sharing.url());
    if strict {
        bail!(message);
    }
    out.warn(&message);
    out.result(
        &json!({ "status": "read_only", "url": sharing.url().to_string(), "warning": message }),
        || format!("read-only: not pushed to {}", sharing.url()),
    );
    Ok(())
}

/// Reports a remote problem that did not fail the command: a warning, and `"status":
/// "degraded"` in JSON.
fn degraded(out: &Output, sharing: &Sharing, err: &ShareError, fallback: &str) -> Result<()> {
    let message = degraded_message(sharing, err, fallback);
    out.warn(&message);
    out.result(
        &json!({ "status": "degraded", "url": sharing.url().to_string(), "warning": message }),
        String::new,
    );
    Ok(())
}
