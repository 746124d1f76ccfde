//! `import`: publishing a file, a directory or an archive as an artifact.
//!
//! A directory or plain file is copied into staging and hashed in the same pass. An archive (zip,
//! tar, tar.gz, tar.zst, recognised by its magic bytes) is extracted into a private staging tree
//! by the hostile-input-safe [`crate::archive`] code. Permission rules (`--mode GLOB=MODE`) and
//! hooks (`--hook CMD`) then run on the staging tree, never on a published one, and the tree is
//! published only when complete and durable: whatever runs after `import` returns finds every
//! file.
//!
//! An archive is extracted once: its digest (with the import options) is remembered with the
//! artifact it became, and concurrent importers of the same archive serialize on a lock keyed by
//! that digest and re-check after taking it.

use std::path::{Path, PathBuf};

use super::{Cache, CacheError, Checked};
use crate::archive::{self, Format, Limits};
use crate::ids::{ArtifactId, EntryName};
use crate::lock::{self, Mode, OpGuard};
use crate::progress::Progress;
use crate::store::{ArtifactKind, Published, StoreError, content_path_in};

/// Errors of the import options and hooks.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A `--mode` rule that cannot be used.
    #[error("invalid permission rule `{rule}`: {reason}; write it as GLOB=MODE, e.g. 'bin/*=755'")]
    BadMode {
        /// The rule as given.
        rule: String,
        /// What is wrong.
        reason: String,
    },
    /// A hook failed on the staging tree; nothing was published.
    #[error(
        "the hook `{hook}` {termination} on the staging tree of `{source_path}`; nothing was published{}",
        tail(output)
    )]
    Hook {
        /// The hook command.
        hook: String,
        /// What was imported.
        source_path: PathBuf,
        /// How it ended.
        termination: crate::shell::Termination,
        /// The tail of its output.
        output: String,
    },
    /// A hook removed what it was given to post-process; nothing was published.
    #[error(
        "the hook `{hook}` removed the staging copy of `{source_path}` it was given \
         ($WARMCACHE_STAGING); nothing was published. A hook may change the copy, not remove it"
    )]
    HookRemoved {
        /// The hook command.
        hook: String,
        /// What was imported.
        source_path: PathBuf,
    },
    /// A file named like an archive whose content is no archive at all.
    #[error(
        "`{}` is named like a {named} archive but its content is {found}; nothing was imported: \
         fetch the real archive, or pass --raw to store the file as it is",
        path.display()
    )]
    NotAnArchive {
        /// The file.
        path: PathBuf,
        /// The format its name claims.
        named: Format,
        /// What its content looks like.
        found: String,
    },
}

fn tail(output: &str) -> String {
    let output = output.trim_end();
    if output.is_empty() {
        String::new()
    } else {
        format!("; its output ended with:\n{output}")
    }
}

/// One `--mode GLOB=MODE` rule: files whose relative path matches get `MODE`.
#[derive(Debug, Clone)]
pub struct ModeRule {
    rule: String,
    matcher: globset::GlobMatcher,
    mode: u32,
}

impl ModeRule {
    /// Parses `GLOB=MODE` (octal). Special bits (setuid, setgid, sticky) are refused: artifacts
    /// never carry them.
    pub fn parse(rule: &str) -> Result<Self, ImportError> {
        let bad = |reason: &str| ImportError::BadMode {
            rule: rule.to_string(),
            reason: reason.to_string(),
        };
        let (glob, mode) = rule.rsplit_once('=').ok_or_else(|| bad("there is no `=`"))?;
        if glob.is_empty() {
            return Err(bad("the glob is empty"));
        }
        let mode = u32::from_str_radix(mode, 8).map_err(|_| bad("the mode is not an octal number"))?;
        if mode & !0o777 != 0 {
            return Err(bad(
                "setuid, setgid and sticky bits are never applied to artifacts",
            ));
        }
        let matcher = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| bad(&e.kind().to_string()))?
            .compile_matcher();
        Ok(Self {
            rule: rule.to_string(),
            matcher,
            mode,
        })
    }
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Permission rules, later rules winning. Published artifacts are read-only, so a rule
    /// decides a file's executable bit.
    pub modes: Vec<ModeRule>,
    /// Commands run by `sh -c` on the staging tree before publication (`$WARMCACHE_STAGING`).
    pub hooks: Vec<String>,
    /// Store the file as it is, never extracting it, whatever its name or content.
    pub raw: bool,
    /// Limits on what an archive may expand to.
    pub limits: Limits,
}

/// The result of an import.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    /// The entry name, when one was given.
    pub name: Option<EntryName>,
    /// The artifact id.
    pub artifact: ArtifactId,
    /// The content path (complete and durable).
    pub path: PathBuf,
    /// File or tree.
    pub kind: ArtifactKind,
    /// Bytes of content.
    pub size: u64,
    /// Number of files.
    pub files: u64,
    /// The archive format, when an archive was extracted.
    pub archive: Option<Format>,
    /// False when identical content was already stored (or the archive already extracted).
    pub created: bool,
}

impl Cache {
    /// Checks an import's arguments without touching the cache, so bad input changes nothing
    /// (not even creating a cache root).
    pub fn check_import(source: &Path) -> Result<(), CacheError> {
        match std::fs::metadata(source) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::SourceMissing {
                path: source.to_path_buf(),
            }
            .into()),
            Err(e) => Err(crate::fs::annotate(e, "inspect", source).into()),
        }
    }

    /// Publishes a file, a directory or an archive as an artifact, optionally under an entry
    /// name. Returns only once the artifact is complete and durable and the catalog names it.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&EntryName>,
        options: &ImportOptions,
        progress: &Progress,
    ) -> Result<Imported, CacheError> {
        Self::check_import(source)?;
        let format = if options.raw || !std::fs::metadata(source).is_ok_and(|m| m.is_file()) {
            None
        } else {
            archive_format(source)?
        };
        if let Some(format) = format {
            return self.import_archive(source, format, name, options, progress);
        }
        let op = self.operation()?;
        let published = if options.modes.is_empty() && options.hooks.is_empty() {
            // The common case: copy and hash in one pass.
            self.store().import_path(&op, source, progress)?
        } else {
            let staged = self.store().stage_copy(source, progress)?;
            finish_staging(&content_path_in(&staged), source, options)?;
            self.store().publish_staged(&op, staged, &Progress::none())?
        };
        self.record(&op, name, &published, None, "import")?;
        Ok(imported(name, published, None))
    }

    fn import_archive(
        &self,
        source: &Path,
        format: Format,
        name: Option<&EntryName>,
        options: &ImportOptions,
        progress: &Progress,
    ) -> Result<Imported, CacheError> {
        let key = source_key(source, options)?;
        let reuse = |cache: &Cache| -> Result<Option<Imported>, CacheError> {
            let op = cache.operation()?;
            let Some(id) = cache.catalog().source(&key)? else {
                return Ok(None);
            };
            let Some(row) = cache.catalog().artifact(&id)? else {
                return Ok(None);
            };
            // Reusing an extraction is a hit: checked like one, and a damaged copy is
            // quarantined and extracted again.
            match cache.check_artifact(&op, &id, row.identity.as_deref())? {
                Checked::Intact => {}
                Checked::Missing => return Ok(None),
                Checked::Damaged(q) => {
                    tracing::warn!("{}; extracting the archive again", q.warning());
                    return Ok(None);
                }
            }
            let published = Published {
                path: cache.store().content_path(&id),
                id,
                kind: row.kind,
                size: row.size,
                files: row.files,
                disk_usage: row.disk_usage,
                created: false,
                identity: None,
            };
            cache.record(&op, name, &published, None, "import")?;
            Ok(Some(imported(name, published, Some(format))))
        };
        if let Some(done) = reuse(self)? {
            return Ok(done);
        }
        // One extraction per archive: lock on its digest, then re-check.
        let lock_path = self.layout().source_lock(&key);
        let what = format!("another import of the archive `{}`", source.display());
        let _lock = lock::lock(&lock_path, Mode::Exclusive, self.options().lock_timeout, &what)?;
        if let Some(done) = reuse(self)? {
            return Ok(done);
        }
        let staged = self.store().stage("extract")?;
        let content = content_path_in(&staged);
        fs_err::create_dir(&content).map_err(|e| StoreError::writing(e, &content))?;
        archive::extract(
            source,
            format,
            &content,
            &options.limits,
            &|p: archive::Progress| progress.set(p.bytes, p.entries),
        )?;
        finish_staging(&content, source, options)?;
        let op = self.operation()?;
        self.publish_extracted(&op, staged, name, &key)
            .map(|p| imported(name, p, Some(format)))
    }

    /// Publishes an extracted archive and remembers which artifact the archive became.
    fn publish_extracted(
        &self,
        op: &OpGuard,
        staged: crate::fs::Staged,
        name: Option<&EntryName>,
        key: &str,
    ) -> Result<Published, CacheError> {
        let published = self.store().publish_staged(op, staged, &Progress::none())?;
        self.record(op, name, &published, None, "import")?;
        self.catalog().set_source(key, &published.id, self.now_ms())?;
        Ok(published)
    }
}

/// The format to extract `source` as: from its content ([`archive::detect`]), except that a
/// file named like an archive must be one (a name that says `.zip` on an HTML error page is
/// refused rather than stored as a file; `--raw` stores it as it is), and a `.tar` of zero
/// blocks only is an empty tar, so an empty tree.
fn archive_format(source: &Path) -> Result<Option<Format>, CacheError> {
    let detected = archive::detect(source)?;
    let Some(named) = archive::format_from_name(source) else {
        return Ok(detected);
    };
    if detected.is_some() {
        // Named like one archive, really another: the content decides.
        return Ok(detected);
    }
    if named == Format::Tar
        && archive::is_empty_tar(source).map_err(|e| crate::fs::annotate(e, "read", source))?
    {
        return Ok(Some(Format::Tar));
    }
    Err(ImportError::NotAnArchive {
        path: source.to_path_buf(),
        named,
        found: archive::describe_content(source),
    }
    .into())
}

fn imported(name: Option<&EntryName>, p: Published, archive: Option<Format>) -> Imported {
    Imported {
        name: name.cloned(),
        artifact: p.id,
        path: p.path,
        kind: p.kind,
        size: p.size,
        files: p.files,
        archive,
        created: p.created,
    }
}

/// What identifies an archive import: the archive's bytes and every option that changes the
/// result.
fn source_key(source: &Path, options: &ImportOptions) -> Result<String, CacheError> {
    let file = fs_err::File::open(source)?;
    let (_, digest) = crate::store::hash_file(file.file(), source)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"warmcache archive import v1\0");
    hasher.update(digest.as_bytes());
    for rule in &options.modes {
        hasher.update(b"\0mode\0").update(rule.rule.as_bytes());
    }
    for hook in &options.hooks {
        hasher.update(b"\0hook\0").update(hook.as_bytes());
    }
    Ok(format!("archive:{}", hasher.finalize().to_hex()))
}

/// Applies the permission rules, then runs the hooks, on a staging tree or file.
fn finish_staging(content: &Path, source: &Path, options: &ImportOptions) -> Result<(), CacheError> {
    if !options.modes.is_empty() {
        apply_modes(content, &options.modes)?;
    }
    for hook in &options.hooks {
        let env = [
            ("WARMCACHE_STAGING", content.as_os_str()),
            ("WARMCACHE_SOURCE", source.as_os_str()),
        ];
        let cwd = if content.is_dir() {
            content
        } else {
            content.parent().unwrap_or(content)
        };
        let (result, output) =
            crate::shell::run(hook, cwd, &env, None, crate::shell::DEFAULT_TAIL_BYTES, None);
        if let Err(termination) = result {
            return Err(ImportError::Hook {
                hook: hook.clone(),
                source_path: source.to_path_buf(),
                termination,
                output,
            }
            .into());
        }
        // Named here, by the hook and the source: later, only a staging path would be named.
        if std::fs::symlink_metadata(content).is_err() {
            return Err(ImportError::HookRemoved {
                hook: hook.clone(),
                source_path: source.to_path_buf(),
            }
            .into());
        }
    }
    Ok(())
}

fn apply_modes(content: &Path, rules: &[ModeRule]) -> Result<(), CacheError> {
    let meta = fs_err::symlink_metadata(content)?;
    let files: Vec<(PathBuf, PathBuf)> = if meta.is_file() {
        // A single file matches by its own name.
        vec![(
            PathBuf::from(content.file_name().unwrap_or_default()),
            content.to_path_buf(),
        )]
    } else {
        crate::fs::walk_sorted(content)?
            .into_iter()
            .filter(|(_, t)| t.is_file())
            .map(|(rel, _)| (content.join(&rel), rel))
            .map(|(abs, rel)| (rel, abs))
            .collect()
    };
    for (rel, abs) in files {
        if let Some(rule) = rules.iter().rev().find(|r| r.matcher.is_match(&rel)) {
            crate::fs::set_permissions(&abs, crate::fs::mode_permissions(rule.mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ModeRule;

    #[test]
    fn mode_rules_parse_and_refuse_special_bits() {
        let rule = ModeRule::parse("bin/*=755").unwrap();
        assert_eq!(rule.mode, 0o755);
        assert!(rule.matcher.is_match("bin/tool"));
        assert!(!rule.matcher.is_match("bin/sub/tool"));
        for bad in ["bin/*", "=755", "x=9", "x=4755", "x=rwx"] {
            assert!(ModeRule::parse(bad).is_err(), "{bad}");
        }
    }
}
