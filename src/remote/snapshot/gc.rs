//! [`collect`]: the remote gc of one snapshot key, by mark and sweep with a grace period
//! (docs/DESIGN.md, "Remote gc").
//!
//! Mark: the manifests kept (the pointer's, the `keep` newest others, those younger than
//! `max_age`, and any written less than `grace` ago) and every object they name are reachable.
//! Sweep, in two runs at least `grace` apart: an unreachable object is first condemned (recorded
//! in `KEY/gc.json` with the time), and only a later run deletes it, if it was condemned at
//! least `grace` before that run started and is still unreachable. Objects younger than
//! `grace` are never touched, so a snapshot uploading its pack right now (its manifest not yet
//! written) loses nothing, and a restore that read the previous pointer finishes before what
//! it reads can go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::format::{
    AnyManifest, GC_STATE_VERSION, GcState, PACKS, SNAPSHOTS, Unreadable, gc_state_key, is_pack_token,
    manifest_key, parse_manifest, parse_pointer, pointer_key,
};
use super::{Result, SnapshotError};
use crate::remote::{CondPut, ObjectMeta, ObjectVersion, Remote, RemoteSettings, RemoteUrl};

/// At most this many objects are listed under `snapshots/` or `packs/`. A key holding more is
/// refused rather than collected from a partial listing (a manifest not listed could name a
/// pack that would then look unreachable).
const LIST_MAX: usize = 200_000;
/// Times a run merges its changes into `gc.json` anew when another gc replaced it meanwhile,
/// and times it starts over when that was not enough.
const ATTEMPTS: usize = 10;

/// How [`collect`] runs.
#[derive(Debug, Clone)]
pub struct RemoteGcOptions {
    /// Manifests kept besides the pointer's, newest first by `created_at_ms` (`--keep`).
    pub keep: usize,
    /// Also keep every manifest created less than this long ago (`--max-age`).
    pub max_age: Option<Duration>,
    /// How long an object must be left alone after it was written, and after it was condemned,
    /// before it can be deleted (`--grace`). Safe when longer than the longest snapshot or
    /// restore against the key (docs/DESIGN.md, "Remote gc").
    pub grace: Duration,
    /// Change nothing; report what would be condemned and deleted.
    pub dry_run: bool,
    /// Connection, timeouts and transfer sizes.
    pub settings: RemoteSettings,
}

impl Default for RemoteGcOptions {
    fn default() -> Self {
        Self {
            keep: 1,
            max_age: None,
            grace: DEFAULT_GRACE,
            dry_run: false,
            settings: RemoteSettings::default(),
        }
    }
}

/// The grace period when none is given: one hour, twelve times the default overall timeout of
/// a snapshot or a restore.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// One object the gc acted on (or, in a dry run, would have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcObject {
    /// The key relative to the snapshot key (`packs/<token>.tar.zst`, `snapshots/…`).
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was condemned, milliseconds since the Unix epoch.
    pub condemned_at_ms: i64,
}

/// What [`collect`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteGcReport {
    /// The snapshot URL.
    pub url: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The digest the pointer names, if there is a pointer.
    pub pointer: Option<String>,
    /// Manifests under the key.
    pub manifests: usize,
    /// Digests of the manifests kept, and why (`pointer`, `keep`, `max-age`, `grace`,
    /// `unreadable`).
    pub kept: BTreeMap<String, &'static str>,
    /// Objects condemned by this run (deleted by a later one if still unreachable then).
    pub condemned: Vec<GcObject>,
    /// Objects deleted by this run (manifests first).
    pub deleted: Vec<GcObject>,
    /// Condemned objects that a kept manifest names again: no longer condemned.
    pub reprieved: Vec<String>,
    /// Condemned objects still within their grace period.
    pub waiting: Vec<GcObject>,
    /// Unreachable objects left alone because they were written less than the grace period ago.
    pub young: usize,
    /// Bytes of the deleted objects.
    pub freed_bytes: u64,
    /// Bytes of every object under `snapshots/` and `packs/` before the run.
    pub total_bytes: u64,
    /// Things the user should know (an unreadable manifest kept, a pointer to a missing one).
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// What a listed object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Archive,
    Pack,
}

struct Listed {
    key: String,
    kind: Kind,
    bytes: u64,
    modified_ms: i64,
}

/// Collects the snapshot key at `url` (docs/DESIGN.md, "Remote gc"): deletes what no pointer
/// and no kept manifest reaches, two runs at least `grace` apart, never an object a running
/// snapshot or restore may still need.
///
/// Any remote failure, a pointer or `gc.json` of a newer format, or a manifest of a newer
/// format (which may need objects this version cannot see) is an error; nothing is deleted
/// after the first error. An unreadable manifest is kept, and so is every pack and archive
/// under the key while it is there (it cannot say which ones it needs).
pub fn collect(url: &RemoteUrl, options: &RemoteGcOptions) -> Result<RemoteGcReport> {
    let started = Instant::now();
    let remote = Remote::new(url, options.settings.clone())?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run_once(url, &remote, options)? {
            Some(mut report) => {
                report.elapsed_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
            // Another gc replaced gc.json meanwhile: decide again from what it wrote.
            None if attempt < ATTEMPTS => continue,
            None => {
                return Err(SnapshotError::BadObject {
                    target: remote.describe(&gc_state_key(url)),
                    reason: format!(
                        "replaced by another gc {ATTEMPTS} times while this one ran; run it again \
                         once the other has finished"
                    ),
                });
            }
        }
    }
}

/// One pass; `None` when `gc.json` changed under it (nothing was deleted).
fn run_once(url: &RemoteUrl, remote: &Remote, options: &RemoteGcOptions) -> Result<Option<RemoteGcReport>> {
    // The time everything is judged by is taken before anything is read: an object condemned
    // at least `grace` before this instant, and found unreachable by reads made after it, has
    // been unreachable for longer than any snapshot or restore that could still need it.
    let start_ms = crate::clock::now_ms();
    let grace_ms = millis(options.grace);
    let mut report = RemoteGcReport {
        url: url.to_string(),
        dry_run: options.dry_run,
        ..RemoteGcReport::default()
    };

    let (state, state_version) = read_state(url, remote)?;
    // Packs before manifests: a pack uploaded before this listing whose manifest was written
    // before the next one is seen with its manifest; any later one is young.
    let mut listed = list(url, remote, PACKS)?;
    listed.extend(list(url, remote, SNAPSHOTS)?);
    report.total_bytes = listed.iter().map(|o| o.bytes).sum();
    let pointer_bytes = remote.get_bytes(&pointer_key(url))?;
    let pointer = read_pointer(url, remote, pointer_bytes.as_deref())?;
    report.pointer = pointer.clone();
    if pointer.is_none() && !listed.iter().any(|o| o.kind == Kind::Manifest) {
        // Not a snapshot key (a parent prefix, a typo, a key's own `packs/`): writing gc.json
        // there would litter it, and whatever is there was not written by `snapshot`.
        return Err(SnapshotError::BadObject {
            target: url.to_string(),
            reason: "no snapshot key here (no pointer.json and no snapshots/); give the URL that \
                     `warmcache snapshot` writes to; nothing was changed"
                .to_owned(),
        });
    }

    // Read every manifest, and the pointer's even if it was written after the listing.
    let mut digests: BTreeSet<String> = listed
        .iter()
        .filter(|o| o.kind == Kind::Manifest)
        .filter_map(|o| manifest_digest(&o.key).map(str::to_owned))
        .collect();
    if let Some(digest) = &pointer {
        digests.insert(digest.clone());
    }
    let mut manifests = BTreeMap::new();
    let mut unreadable = Vec::new();
    for digest in &digests {
        let key = manifest_key(url, digest);
        let Some(bytes) = remote.get_bytes(&key)? else {
            // Deleted since it was listed (by another gc), or a pointer to a missing manifest.
            if pointer.as_deref() == Some(digest.as_str()) {
                // The current snapshot is broken: the older ones are all a restore can fall back
                // on, so none is collected until a snapshot repairs the key.
                return Err(SnapshotError::BadObject {
                    target: remote.describe(&key),
                    reason: format!(
                        "the pointer names snapshot {digest}, whose manifest is missing, so that \
                         snapshot cannot be restored; nothing was collected: snapshot the tree again, \
                         then run gc"
                    ),
                });
            }
            continue;
        };
        match parse_manifest(&bytes, digest) {
            Ok(m) => {
                manifests.insert(digest.clone(), m);
            }
            Err(reason) if newer_manifest(&bytes) => {
                return Err(SnapshotError::BadObject {
                    target: remote.describe(&key),
                    reason: format!(
                        "{reason}; the remote gc cannot tell what it needs, so nothing was collected"
                    ),
                });
            }
            Err(reason) => {
                report.warnings.push(format!(
                    "{}: {reason}; kept, with every pack and archive under the key (it cannot say \
                     which it needs); delete it by hand if it is damaged",
                    remote.describe(&key)
                ));
                unreadable.push(digest.clone());
            }
        }
    }
    report.manifests = manifests.len() + unreadable.len();

    // Mark: the kept manifests.
    let modified: BTreeMap<&str, i64> = listed
        .iter()
        .filter(|o| o.kind == Kind::Manifest)
        .filter_map(|o| manifest_digest(&o.key).map(|d| (d, o.modified_ms)))
        .collect();
    if let Some(digest) = &pointer
        && (manifests.contains_key(digest) || unreadable.contains(digest))
    {
        report.kept.insert(digest.clone(), "pointer");
    }
    for digest in &unreadable {
        report.kept.entry(digest.clone()).or_insert("unreadable");
    }
    let mut by_age: Vec<(&String, i64)> = manifests.iter().map(|(d, m)| (d, created_at(m))).collect();
    by_age.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut newest = 0;
    for (digest, created) in by_age {
        if report.kept.contains_key(digest.as_str()) {
            continue;
        }
        let why = if newest < options.keep {
            newest += 1;
            Some("keep")
        } else if options
            .max_age
            .is_some_and(|age| created >= start_ms - millis(age))
        {
            Some("max-age")
        } else if modified
            .get(digest.as_str())
            .is_none_or(|&m| m > start_ms - grace_ms)
        {
            // Written within the grace period (or after the listing): a snapshot publishing
            // right now, whose pointer may not have moved yet.
            Some("grace")
        } else {
            None
        };
        if let Some(why) = why {
            report.kept.insert(digest.clone(), why);
        }
    }
    let mut reachable: BTreeSet<String> = BTreeSet::new();
    for digest in report.kept.keys() {
        reachable.insert(format!("{SNAPSHOTS}/{digest}.json"));
        if let Some(manifest) = manifests.get(digest) {
            reachable.extend(names(manifest));
        }
    }
    let keep_all_data = !unreadable.is_empty();

    // Sweep: condemn, wait, or delete each unreachable object.
    let listed_keys: BTreeSet<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    // What this run changes in gc.json, applied to whatever gc.json holds when it is written
    // (another gc may have written it meanwhile).
    let mut changes = Changes::default();
    changes.remove.extend(
        state
            .condemned
            .keys()
            .filter(|key| !listed_keys.contains(key.as_str()))
            .cloned(),
    );
    let mut doomed = Vec::new();
    for object in &listed {
        let key = &object.key;
        let is_reachable =
            reachable.contains(key) || (keep_all_data && matches!(object.kind, Kind::Pack | Kind::Archive));
        if is_reachable {
            if state.condemned.contains_key(key) {
                changes.remove.insert(key.clone());
                report.reprieved.push(key.clone());
            }
            continue;
        }
        if object.modified_ms > start_ms - grace_ms {
            // Young: a snapshot may be about to name it. A condemnation of an earlier object
            // with this key no longer applies.
            if state.condemned.contains_key(key) {
                changes.remove.insert(key.clone());
            }
            report.young += 1;
            continue;
        }
        match state.condemned.get(key).copied() {
            // Condemned after it was written, at least `grace` before this run began.
            Some(at) if at >= object.modified_ms && at <= start_ms - grace_ms => doomed.push(GcObject {
                key: key.clone(),
                bytes: object.bytes,
                condemned_at_ms: at,
            }),
            Some(at) if at >= object.modified_ms => report.waiting.push(GcObject {
                key: key.clone(),
                bytes: object.bytes,
                condemned_at_ms: at,
            }),
            // Not condemned yet, or condemned as an earlier object with the same key.
            stale => {
                if stale.is_some() {
                    changes.remove.insert(key.clone());
                }
                changes.add.insert(key.clone());
                report.condemned.push(GcObject {
                    key: key.clone(),
                    bytes: object.bytes,
                    condemned_at_ms: start_ms,
                });
            }
        }
    }
    // Manifests first: a run cut short never leaves a manifest naming a deleted pack.
    doomed.sort_by_key(|o| (!o.key.ends_with(".json"), o.key.clone()));

    if options.dry_run {
        report.freed_bytes = doomed.iter().map(|o| o.bytes).sum();
        report.deleted = doomed;
        return Ok(Some(report));
    }

    // Publish the condemnations before deleting anything: a snapshot reads gc.json before it
    // chooses what to reuse, so it never picks up an object about to go. On a conflict with
    // another gc, merge into what it wrote and try again.
    let (mut current, mut version) = (state, state_version);
    let mut written = None;
    for _ in 0..ATTEMPTS {
        // The time of a condemnation is taken just before it is published, never earlier: the
        // grace is counted from when snapshots can see it.
        let now = crate::clock::now_ms();
        let merged = changes.apply(&current, now);
        for object in &mut report.condemned {
            object.condemned_at_ms = merged.condemned.get(&object.key).copied().unwrap_or(now);
        }
        // Delete only what is still condemned, as this run saw it, in what gets published: an
        // object another gc has meanwhile found reachable again is spared.
        doomed.retain(|o| merged.condemned.get(&o.key) == Some(&o.condemned_at_ms));
        if merged == current && version.is_some() {
            written = Some((merged, version));
            break;
        }
        match write_state(url, remote, &merged, version.as_ref())? {
            CondPut::Done(v) => {
                written = Some((merged, Some(v)));
                break;
            }
            CondPut::Conflict => (current, version) = read_state(url, remote)?,
        }
    }
    let Some(published) = written else {
        return Ok(None);
    };
    // A last look before each delete: S3 has no conditional delete, so what this run decided
    // from its listing is checked against the remote as it is now. An object written again
    // since the listing (a manifest written afresh for a tree snapshotted again, A→B→A) is a new
    // object, not the one condemned; and whatever the pointer names now is spared, since a
    // snapshot may have published it since the pointer was read.
    // Listings give milliseconds and HEAD whole seconds (an HTTP date): compare seconds.
    let seconds = |ms: i64| ms.div_euclid(1000);
    let listed_at: BTreeMap<&str, i64> = listed
        .iter()
        .map(|o| (o.key.as_str(), seconds(o.modified_ms)))
        .collect();
    let mut current_pointer = pointer_bytes;
    let mut spared = BTreeSet::new();
    for object in &doomed {
        let written = remote
            .head(&url.join(&object.key))?
            .map(|meta| seconds(system_ms(meta.last_modified)));
        if written.is_none() || written.as_ref() != listed_at.get(object.key.as_str()) {
            continue;
        }
        let now_pointer = remote.get_bytes(&pointer_key(url))?;
        if now_pointer != current_pointer {
            spared = pointer_names(url, remote, now_pointer.as_deref())?;
            current_pointer = now_pointer;
        }
        if spared.contains(&object.key) {
            report
                .warnings
                .push(format!("{}: named by the pointer again; not deleted", object.key));
            continue;
        }
        remote.delete(&url.join(&object.key))?;
        report.freed_bytes += object.bytes;
        report.deleted.push(object.clone());
    }
    if !report.deleted.is_empty() {
        forget_deleted(url, remote, &report.deleted, published)?;
    }
    Ok(Some(report))
}

/// What one run changes in `gc.json`.
#[derive(Default)]
struct Changes {
    /// Condemnations lifted: reachable again, young, or no longer there.
    remove: BTreeSet<String>,
    /// New condemnations.
    add: BTreeSet<String>,
}

impl Changes {
    /// `state` with these changes, new condemnations dated `now`.
    fn apply(&self, state: &GcState, now: i64) -> GcState {
        let mut out = state.clone();
        out.version = GC_STATE_VERSION;
        for key in &self.remove {
            out.condemned.remove(key);
        }
        for key in &self.add {
            // Another gc's condemnation of the same object stands (it was published first).
            out.condemned.entry(key.clone()).or_insert(now);
        }
        out
    }
}

/// Removes the deleted keys from `gc.json`, merging with whatever another gc wrote meanwhile.
/// If this fails, the next run drops them anyway (they are no longer listed).
fn forget_deleted(
    url: &RemoteUrl,
    remote: &Remote,
    deleted: &[GcObject],
    published: (GcState, Option<ObjectVersion>),
) -> Result<()> {
    let (mut current, mut version) = published;
    for _ in 0..ATTEMPTS {
        let mut next = current.clone();
        for object in deleted {
            // Only the condemnation of the object deleted: a newer one with the same key
            // (condemned after it was written) keeps its own.
            if next.condemned.get(&object.key) == Some(&object.condemned_at_ms) {
                next.condemned.remove(&object.key);
            }
        }
        if next == current {
            return Ok(());
        }
        if let CondPut::Done(_) = write_state(url, remote, &next, version.as_ref())? {
            return Ok(());
        }
        // Another gc wrote it meanwhile: merge into what it wrote.
        (current, version) = read_state(url, remote)?;
    }
    Ok(())
}

fn write_state(
    url: &RemoteUrl,
    remote: &Remote,
    state: &GcState,
    version: Option<&ObjectVersion>,
) -> Result<CondPut> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| SnapshotError::BadObject {
        target: remote.describe(&gc_state_key(url)),
        reason: format!("cannot encode the gc state: {e}"),
    })?;
    Ok(remote.put_if(&gc_state_key(url), Bytes::from(bytes), version)?)
}

/// `gc.json` and its version. An unreadable one is started afresh (losing condemnations only
/// delays deletions); one of a newer format is refused.
fn read_state(url: &RemoteUrl, remote: &Remote) -> Result<(GcState, Option<ObjectVersion>)> {
    let key = gc_state_key(url);
    let Some((bytes, version)) = remote.get_versioned(&key)? else {
        return Ok((GcState::default(), None));
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    if let Ok(v) = serde_json::from_slice::<Versioned>(&bytes)
        && v.version > GC_STATE_VERSION
    {
        return Err(SnapshotError::BadObject {
            target: remote.describe(&key),
            reason: format!(
                "the gc state has format version {}, newer than this warmcache understands \
                 ({GC_STATE_VERSION}); upgrade warmcache",
                v.version
            ),
        });
    }
    match serde_json::from_slice::<GcState>(&bytes) {
        Ok(state) => Ok((state, Some(version))),
        Err(e) => {
            tracing::warn!(
                "{}: unreadable gc state ({e}); it is replaced and condemnations start over",
                remote.describe(&key)
            );
            Ok((GcState::default(), Some(version)))
        }
    }
}

/// The digest the pointer names, `None` without a pointer. A pointer that cannot be read stops
/// the gc: without it the current snapshot is unknown.
fn read_pointer(url: &RemoteUrl, remote: &Remote, bytes: Option<&[u8]>) -> Result<Option<String>> {
    let key = pointer_key(url);
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    match parse_pointer(bytes) {
        Ok(pointer) => Ok(Some(pointer.digest)),
        Err(e) => Err(SnapshotError::BadObject {
            target: remote.describe(&key),
            reason: match e {
                Unreadable::Newer(_) => e.to_string(),
                Unreadable::Garbage(_) => format!(
                    "{e}; the remote gc cannot tell which snapshot is current, so nothing was \
                     collected; snapshot the tree again to replace it"
                ),
            },
        }),
    }
}

/// The keys (relative to the snapshot key) a manifest names: its archive, or its packs.
fn names(manifest: &AnyManifest) -> Vec<String> {
    match manifest {
        AnyManifest::Archive(m) => vec![m.archive.clone()],
        AnyManifest::Packed(m) => m
            .packs
            .iter()
            .map(|p| format!("{PACKS}/{}.tar.zst", p.token))
            .collect(),
    }
}

/// What the pointer (as `bytes`) reaches: its manifest's key and everything the manifest names.
fn pointer_names(url: &RemoteUrl, remote: &Remote, bytes: Option<&[u8]>) -> Result<BTreeSet<String>> {
    let mut names_now = BTreeSet::new();
    let Some(digest) = read_pointer(url, remote, bytes)? else {
        return Ok(names_now);
    };
    names_now.insert(format!("{SNAPSHOTS}/{digest}.json"));
    if let Some(bytes) = remote.get_bytes(&manifest_key(url, &digest))?
        && let Ok(manifest) = parse_manifest(&bytes, &digest)
    {
        names_now.extend(names(&manifest));
    }
    Ok(names_now)
}

/// The objects under `KEY/<dir>/` that a snapshot writes; anything else there is left alone.
fn list(url: &RemoteUrl, remote: &Remote, dir: &str) -> Result<Vec<Listed>> {
    let prefix = url.join(dir);
    let objects = remote.list(&prefix, LIST_MAX + 1)?;
    if objects.len() > LIST_MAX {
        return Err(SnapshotError::BadObject {
            target: remote.describe(&prefix),
            reason: format!(
                "more than {LIST_MAX} objects; the remote gc collects only keys it can list in full"
            ),
        });
    }
    let base = url.join("");
    Ok(objects
        .into_iter()
        .filter_map(|meta: ObjectMeta| {
            let key = meta.key.strip_prefix(&base)?.to_owned();
            let kind = classify(&key)?;
            Some(Listed {
                key,
                kind,
                bytes: meta.size,
                modified_ms: system_ms(meta.last_modified),
            })
        })
        .collect())
}

fn classify(key: &str) -> Option<Kind> {
    if let Some(name) = key.strip_prefix(&format!("{PACKS}/")) {
        return name
            .strip_suffix(".tar.zst")
            .filter(|t| is_pack_token(t))
            .map(|_| Kind::Pack);
    }
    let name = key.strip_prefix(&format!("{SNAPSHOTS}/"))?;
    if name.contains('/') || name.starts_with('.') {
        return None;
    }
    if manifest_digest(key).is_some() {
        Some(Kind::Manifest)
    } else if name.len() > ".tar.zst".len() && name.ends_with(".tar.zst") {
        Some(Kind::Archive)
    } else {
        None
    }
}

/// The digest of `snapshots/<digest>.json`.
fn manifest_digest(key: &str) -> Option<&str> {
    let digest = key
        .strip_prefix(&format!("{SNAPSHOTS}/"))?
        .strip_suffix(".json")?;
    crate::ids::ArtifactId::new(digest).ok().map(|_| digest)
}

/// Whether a manifest that did not parse says it has a format version newer than any known.
fn newer_manifest(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    serde_json::from_slice::<Versioned>(bytes)
        .is_ok_and(|v| v.version > super::format::SNAPSHOT_MANIFEST_VERSION)
}

fn created_at(manifest: &AnyManifest) -> i64 {
    match manifest {
        AnyManifest::Archive(m) => m.created_at_ms,
        AnyManifest::Packed(m) => m.created_at_ms,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn system_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_merge_into_what_another_gc_wrote() {
        let theirs = GcState {
            version: GC_STATE_VERSION,
            condemned: BTreeMap::from([
                ("packs/a.tar.zst".to_owned(), 5),
                ("packs/b.tar.zst".to_owned(), 6),
                ("packs/c.tar.zst".to_owned(), 7),
            ]),
        };
        let changes = Changes {
            remove: BTreeSet::from(["packs/b.tar.zst".to_owned()]),
            add: BTreeSet::from(["packs/a.tar.zst".to_owned(), "packs/d.tar.zst".to_owned()]),
        };
        let merged = changes.apply(&theirs, 100);
        assert_eq!(
            merged.condemned,
            BTreeMap::from([
                // Their earlier condemnation of the same object stands.
                ("packs/a.tar.zst".to_owned(), 5),
                // Untouched by this run.
                ("packs/c.tar.zst".to_owned(), 7),
                ("packs/d.tar.zst".to_owned(), 100),
            ])
        );
    }

    #[test]
    fn only_what_a_snapshot_writes_is_a_candidate() {
        let digest = "a".repeat(64);
        assert_eq!(
            classify(&format!("snapshots/{digest}.json")),
            Some(Kind::Manifest)
        );
        assert_eq!(
            classify(&format!("snapshots/{digest}-0123.tar.zst")),
            Some(Kind::Archive)
        );
        assert_eq!(classify("packs/0123456789abcdef.tar.zst"), Some(Kind::Pack));
        for other in [
            "packs/notatoken.tar.zst",
            "packs/0123456789abcdef.json",
            "snapshots/readme.txt",
            "snapshots/x.json",
            "snapshots/sub/a.tar.zst",
            "snapshots/.tar.zst",
            "gc.json",
            "pointer.json",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }
}
