//! A format-2 restore's remote half (docs/DESIGN.md, "Restore"): the manifest's segments,
//! fetched and checked against the tree digest before anything is extracted ([`read_tree`]),
//! and the frames of the packs holding the chunks no seed supplied, fetched whole or by ranged
//! GETs and handed to the tree builder ([`fetch_frames`]).

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::format::{PackedManifest, SegmentEntry, TreeCheck, pack_key};
use super::pack::{SEGMENT_MAX_BYTES, decode_frame, parse_segment};
use super::stat::SegmentCache;
use super::{Result, SnapshotError};
use crate::remote::{Remote, RemoteError, RemoteUrl};
use crate::store::EntryKind;

/// Ranges of one pack closer than this are fetched by one GET (a request costs more than a few
/// KiB of bytes nobody needs).
const MERGE_GAP: u64 = 64 * 1024;
/// The largest range one GET fetches: with `parallelism` in flight, memory stays bounded.
const MAX_RANGE: u64 = 4 << 20;

/// A snapshot's entries, read from its segments and checked against its digest.
pub(super) struct Tree {
    pub manifest: PackedManifest,
    pub entries: Vec<SegmentEntry>,
    /// Compressed bytes fetched for the segments.
    pub fetched: u64,
    /// Each segment's BLAKE3 (hex) and compressed payload, in manifest order, checked: what
    /// the segment cache keeps for the next snapshot or restore ([`super::stat::SegmentCache`]).
    pub segments: Vec<(String, Bytes)>,
}

/// Fetches and decodes every segment that the local segment cache (`local`: what the last
/// snapshot or restore of this directory to this URL kept) does not hold (ranges of one pack
/// coalesced, in parallel), and checks them all, cached or fetched alike: each against its BLAKE3, its entry count, every entry's path (safe, its parent a
/// directory listed before it) and the whole against the manifest's digest ([`TreeCheck`]).
/// Nothing is extracted before this succeeded.
pub(super) fn read_tree(
    remote: &Remote,
    url: &RemoteUrl,
    manifest: PackedManifest,
    target: &str,
    local: &SegmentCache,
) -> Result<Tree> {
    let bad = |reason: String| SnapshotError::BadObject {
        target: target.to_owned(),
        reason,
    };
    // One request per run of segments of the same pack that are close together; segments kept
    // locally are not fetched (a one-file delta then fetches one segment, not the manifest).
    // A kept payload is used only once it decodes to lines of its BLAKE3, as a fetched one must;
    // one that does not is fetched.
    let kept: Vec<Option<(Bytes, Vec<u8>)>> = manifest
        .segments
        .iter()
        .map(|segment| {
            let payload = local.get(&segment.blake3)?;
            let lines = decode_frame(payload, SEGMENT_MAX_BYTES).ok()?;
            (blake3::hash(&lines).to_hex().as_str() == segment.blake3)
                .then(|| (Bytes::copy_from_slice(payload), lines))
        })
        .collect();
    let mut order: Vec<usize> = (0..manifest.segments.len())
        .filter(|&i| kept[i].is_none())
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&manifest.segments[a], &manifest.segments[b]);
        (&x.pack, x.range[0]).cmp(&(&y.pack, y.range[0]))
    });
    let mut requests: Vec<(String, Range<u64>)> = Vec::new();
    let mut at = vec![(0usize, 0u64); manifest.segments.len()];
    let mut last_pack: Option<&str> = None;
    for i in order {
        let segment = &manifest.segments[i];
        let range = segment.range[0]..segment.range[1];
        let joins = last_pack == Some(segment.pack.as_str())
            && requests.last().is_some_and(|(_, r)| {
                range.start >= r.start && range.start <= r.end + MERGE_GAP && range.end - r.start <= MAX_RANGE
            });
        if joins {
            let last = requests.len() - 1;
            let r = &mut requests[last].1;
            r.end = r.end.max(range.end);
        } else {
            requests.push((pack_key(url, &segment.pack), range.clone()));
        }
        let index = requests.len() - 1;
        at[i] = (index, range.start - requests[index].1.start);
        last_pack = Some(segment.pack.as_str());
    }
    let mut bodies: Vec<Bytes> = Vec::with_capacity(requests.len());
    let mut sink = |_, body| {
        bodies.push(body);
        Ok(())
    };
    let fetched = remote.get_ranges(&requests, &mut sink, &crate::remote::NoProgress)?;

    let mut check = TreeCheck::new(&manifest).map_err(bad)?;
    let mut dirs = std::collections::HashSet::new();
    let mut entries = Vec::new();
    let mut payloads = Vec::with_capacity(manifest.segments.len());
    for ((i, segment), kept) in manifest.segments.iter().enumerate().zip(kept) {
        let (frame, decoded) = match kept {
            Some(kept) => kept,
            None => {
                let (request, offset) = at[i];
                let len = segment.range[1] - segment.range[0];
                let body = &bodies[request];
                let range = offset as usize..(offset + len) as usize;
                if body.get(range.clone()).is_none() {
                    return Err(bad(format!("segment {i} lies outside its pack")));
                }
                let frame = body.slice(range);
                let decoded = decode_frame(&frame, SEGMENT_MAX_BYTES)
                    .map_err(|e| bad(format!("segment {i} of pack `{}`: {e}", segment.pack)))?;
                (frame, decoded)
            }
        };
        if blake3::hash(&decoded).to_hex().as_str() != segment.blake3 {
            return Err(bad(format!(
                "segment {i} of pack `{}` does not match its BLAKE3",
                segment.pack
            )));
        }
        let decoded = parse_segment(&decoded)
            .map_err(|e| bad(format!("segment {i} of pack `{}`: {e}", segment.pack)))?;
        let count = decoded.len() as u64;
        for entry in decoded {
            check_path(&entry, &mut dirs).map_err(bad)?;
            check.push(&entry).map_err(bad)?;
            entries.push(entry);
        }
        if count != segment.entries {
            return Err(bad(format!(
                "segment {i} holds {count} entries, the manifest says {}",
                segment.entries
            )));
        }
        payloads.push((segment.blake3.clone(), frame));
    }
    check.finish().map_err(bad)?;
    Ok(Tree {
        manifest,
        entries,
        fetched,
        segments: payloads,
    })
}

/// An entry's path must be relative, `/`-separated, without `.`, `..` or empty names, and its
/// parent a directory listed before it: then writing the tree in the stage never leaves it,
/// whatever the manifest says (symlinks are created last, and never as a parent).
fn check_path(
    entry: &SegmentEntry,
    dirs: &mut std::collections::HashSet<String>,
) -> std::result::Result<(), String> {
    let path = entry.path.as_str();
    let unsafe_name = path.is_empty()
        || path.contains('\0')
        || path.contains('\\') && cfg!(windows)
        || path
            .split('/')
            .any(|name| name.is_empty() || name == "." || name == "..");
    if unsafe_name {
        return Err(format!("the manifest lists an unsafe path `{path}`"));
    }
    if let Some((parent, _)) = path.rsplit_once('/')
        && !dirs.contains(parent)
    {
        return Err(format!(
            "the manifest lists `{path}`, whose parent is not a directory listed before it"
        ));
    }
    match entry.kind {
        EntryKind::Dir => {
            dirs.insert(path.to_owned());
        }
        EntryKind::Symlink => {
            let target = entry.target.as_deref().unwrap_or_default();
            crate::store::rule::check_target(std::ffi::OsStr::new(target))
                .map_err(|e| format!("`{path}` {e}"))?;
        }
        EntryKind::File => {
            if entry.digest.as_deref().is_none_or(|d| d.len() != 64) {
                return Err(format!("the manifest lists file `{path}` without a digest"));
            }
        }
    }
    Ok(())
}

/// One frame to fetch: its pack, its byte range there, and what it is for (an index the caller
/// keeps).
#[derive(Debug, Clone)]
pub(super) struct WantedFrame {
    pub pack: String,
    pub range: Range<u64>,
    pub job: usize,
}

/// How the frames of one pack are fetched.
pub(super) struct PackPlan {
    pub token: String,
    /// Indexes into the wanted frames, by range start.
    pub frames: Vec<usize>,
    /// Download the whole pack (streamed, BLAKE3 and size checked) rather than ranges.
    pub whole: bool,
}

/// Groups the wanted frames by pack and decides, pack by pack, whether to download the whole
/// pack (when at least half of it is wanted: one streamed download is faster than many ranges)
/// or ranged GETs of the frames. Frames of one pack may not overlap.
pub(super) fn plan(manifest: &PackedManifest, wanted: &[WantedFrame], target: &str) -> Result<Vec<PackPlan>> {
    let mut by_pack: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, frame) in wanted.iter().enumerate() {
        by_pack.entry(frame.pack.as_str()).or_default().push(i);
    }
    let mut plans = Vec::new();
    for (token, mut frames) in by_pack {
        let pack = manifest.pack(token).ok_or_else(|| SnapshotError::BadObject {
            target: target.to_owned(),
            reason: format!("a chunk is in pack `{token}`, which the manifest does not list"),
        })?;
        frames.sort_by_key(|&i| wanted[i].range.start);
        let mut needed = 0u64;
        for pair in frames.windows(2) {
            if wanted[pair[1]].range.start < wanted[pair[0]].range.end {
                return Err(SnapshotError::BadObject {
                    target: target.to_owned(),
                    reason: format!("pack `{token}` has overlapping frames in the manifest"),
                });
            }
        }
        for &i in &frames {
            let r = &wanted[i].range;
            if r.end > pack.bytes || r.start >= r.end || r.end - r.start > MAX_RANGE {
                return Err(SnapshotError::BadObject {
                    target: target.to_owned(),
                    reason: format!(
                        "a frame {r:?} does not fit in pack `{token}` of {} bytes",
                        pack.bytes
                    ),
                });
            }
            needed += r.end - r.start;
        }
        plans.push(PackPlan {
            token: token.to_owned(),
            whole: needed.saturating_mul(2) >= pack.bytes,
            frames,
        });
    }
    Ok(plans)
}

/// The bytes a plan will fetch.
pub(super) fn planned_bytes(manifest: &PackedManifest, plans: &[PackPlan], wanted: &[WantedFrame]) -> u64 {
    plans
        .iter()
        .map(|p| match (p.whole, manifest.pack(&p.token)) {
            (true, Some(pack)) => pack.bytes,
            _ => p
                .frames
                .iter()
                .map(|&i| wanted[i].range.end - wanted[i].range.start)
                .sum(),
        })
        .sum()
}

/// Fetches the planned frames, handing each one's compressed bytes to `frame(job, bytes)` as
/// soon as it is in (a pack downloaded whole is cut into its frames as it streams). Returns the
/// bytes downloaded. `frame` failing stops the download.
pub(super) fn fetch_frames(
    remote: &Remote,
    url: &RemoteUrl,
    manifest: &PackedManifest,
    plans: &[PackPlan],
    wanted: &[WantedFrame],
    frame: &mut (dyn FnMut(usize, Bytes) -> std::io::Result<()> + Send),
    progress: &dyn crate::remote::Progress,
) -> std::result::Result<u64, RemoteError> {
    let mut downloaded = 0u64;
    let mut requests: Vec<(String, Range<u64>)> = Vec::new();
    let mut request_frames: Vec<Vec<usize>> = Vec::new();
    for plan in plans {
        let key = pack_key(url, &plan.token);
        if plan.whole {
            let Some(pack) = manifest.pack(&plan.token) else {
                continue;
            };
            let mut cutter = Cutter {
                frames: &plan.frames,
                wanted,
                next: 0,
                pos: 0,
                buf: BytesMut::new(),
            };
            let mut sink = |piece: Bytes| cutter.push(piece, frame);
            let got = remote.get_streamed(&key, pack.bytes, &pack.blake3, &mut sink, progress)?;
            downloaded += got.bytes;
            if cutter.next != plan.frames.len() {
                return Err(RemoteError::Truncated {
                    target: remote.describe(&key),
                    expected: wanted[plan.frames[cutter.next]].range.end,
                    received: got.bytes,
                });
            }
            continue;
        }
        for &i in &plan.frames {
            let r = &wanted[i].range;
            let joins = requests.last().is_some_and(|(k, last)| {
                *k == key && r.start <= last.end + MERGE_GAP && r.end - last.start <= MAX_RANGE
            });
            if joins {
                let last = requests.len() - 1;
                requests[last].1.end = r.end;
                request_frames[last].push(i);
            } else {
                requests.push((key.clone(), r.clone()));
                request_frames.push(vec![i]);
            }
        }
    }
    if !requests.is_empty() {
        let mut sink = |index: usize, body: Bytes| {
            let start = requests[index].1.start;
            for &i in &request_frames[index] {
                let r = &wanted[i].range;
                frame(
                    wanted[i].job,
                    body.slice((r.start - start) as usize..(r.end - start) as usize),
                )?;
            }
            Ok(())
        };
        downloaded += remote.get_ranges(&requests, &mut sink, progress)?;
    }
    Ok(downloaded)
}

/// Cuts the wanted frames out of a pack streaming by in order.
struct Cutter<'a> {
    frames: &'a [usize],
    wanted: &'a [WantedFrame],
    next: usize,
    pos: u64,
    buf: BytesMut,
}

impl Cutter<'_> {
    fn push(
        &mut self,
        piece: Bytes,
        frame: &mut (dyn FnMut(usize, Bytes) -> std::io::Result<()> + Send),
    ) -> std::io::Result<()> {
        let start = self.pos;
        let end = start + piece.len() as u64;
        self.pos = end;
        while let Some(&i) = self.frames.get(self.next) {
            let r = &self.wanted[i].range;
            if r.start >= end {
                break;
            }
            let from = r.start.max(start) - start;
            let to = r.end.min(end) - start;
            let whole_here = r.start >= start && r.end <= end;
            if whole_here {
                frame(self.wanted[i].job, piece.slice(from as usize..to as usize))?;
                self.next += 1;
                continue;
            }
            self.buf.extend_from_slice(&piece[from as usize..to as usize]);
            if r.end > end {
                break;
            }
            let bytes = std::mem::take(&mut self.buf).freeze();
            frame(self.wanted[i].job, bytes)?;
            self.next += 1;
        }
        Ok(())
    }
}
