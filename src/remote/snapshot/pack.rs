//! The pack codec (docs/DESIGN.md, "Snapshots"): a pack is a standard tar.zst made of
//! independent zstd frames, followed by the manifest segments in skippable frames.
//!
//! [`PackWriter`] frames tar entries and file content, closes a zstd frame at the first place
//! outside a chunk after [`FRAME_TARGET`] bytes, compresses frames on a small pool of threads
//! (compression is what a snapshot spends its CPU on) and writes them in order to any
//! [`Write`], so a chunk is always inside one frame and can be fetched by a ranged GET of that
//! frame alone. [`decode_frame`] and [`decode_segment`] are the read side, for one frame or one
//! segment fetched by range.
//!
//! Because every frame is a complete zstd frame and segments are skippable frames, the whole
//! pack also decodes with any streaming zstd decoder (`zstd -dc`) into a tar that `tar -x`
//! reads, the segments skipped.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::format::{
    CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, ChunkRef, FRAME_TARGET, PackRef, SEGMENT_FRAME_MAGIC, SegmentEntry,
    SegmentRef,
};

/// A decoded manifest segment may hold at most this many bytes: about 4,096 entries of a few
/// hundred bytes, or a few entries of very large files with thousands of chunk references each.
/// A segment that claims more is refused rather than allocated.
pub const SEGMENT_MAX_BYTES: usize = 64 << 20;
/// The largest decompressed frame a [`PackWriter`] writes, for readers to bound
/// [`decode_frame`]: a frame is closed as soon as it holds [`FRAME_TARGET`] bytes, so it holds
/// less than that before its last piece, which is at most one chunk (a file under
/// [`super::format::CHUNK_THRESHOLD`] is one chunk) with its padding, or one entry's header
/// (a header of more than 64 KiB, for a path that long, gets a frame of its own).
pub const FRAME_MAX: usize = FRAME_TARGET as usize + super::format::CHUNK_THRESHOLD as usize + BIG_HEADER;
/// Headers larger than this start a frame of their own.
const BIG_HEADER: usize = 64 << 10;
/// zstd level of manifest segments (small, compressed once).
const SEGMENT_LEVEL: i32 = 3;
/// Frames compressed at once per compressing thread: bounds the uncompressed bytes held to
/// about `threads × 2 × (FRAME_TARGET + 1 MiB)` whatever the pack's size.
const FRAMES_PER_THREAD: usize = 2;
/// Compressing threads at most: a snapshot also reads and hashes the tree and uploads.
const MAX_COMPRESSORS: usize = 4;
const BLOCK: u64 = 512;

/// Why a pack could not be written or a piece of one read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Writing the pack (compressing, or handing bytes to the output) failed.
    #[error("cannot {op} the pack: {source}")]
    Io { op: &'static str, source: io::Error },
    /// Bytes fetched from a pack are not what the manifest says they are.
    #[error("corrupt pack data: {0}")]
    Corrupt(String),
    /// The writer was used out of order (a bug, reported rather than panicking).
    #[error("pack written out of order: {0}")]
    Misuse(&'static str),
}

type Result<T, E = PackError> = std::result::Result<T, E>;

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> PackError {
    move |source| PackError::Io { op, source }
}

/// Where a chunk written by [`PackWriter::chunk`] is: frame `frame` of the pack (numbered from
/// 0), bytes `at..at + len` of its decompressed content. Its byte range in the pack is known
/// once the frame is written ([`PackWriter::chunk_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAt {
    /// The frame's number.
    pub frame: usize,
    /// Offset in the decompressed frame.
    pub at: u64,
    /// The chunk's length.
    pub len: u64,
}

/// What a finished pack is: its [`PackRef`] and where its new segments went (in the order they
/// were added by [`PackWriter::segment`]).
#[derive(Debug, Clone)]
pub struct FinishedPack {
    /// The pack as a manifest lists it.
    pub pack: PackRef,
    /// The segments written, in order.
    pub segments: Vec<SegmentRef>,
    /// Bytes of tar (uncompressed) in the pack.
    pub tar_bytes: u64,
    /// zstd frames of tar content in the pack.
    pub frames: usize,
}

/// Writes one pack to `out`: tar entries in the order given, compressed as independent zstd
/// frames, then the tar's end, then the manifest segments.
///
/// Use: [`Self::dir`], [`Self::symlink`] and [`Self::file`] + [`Self::chunk`]s adding up to the
/// file's size, in tar order; then [`Self::end_tar`]; then [`Self::segment`] for each new
/// segment; then [`Self::finish`]. Frames are compressed on up to [`MAX_COMPRESSORS`]
/// threads while the caller goes on; memory is bounded by the frames in flight.
pub struct PackWriter<W: Write> {
    out: W,
    token: String,
    /// Uncompressed bytes of the frame being filled.
    buf: Vec<u8>,
    /// Frames handed to the compressors (the one being filled is number `started`).
    started: usize,
    /// Byte ranges of the frames written so far, in order.
    frames: Vec<[u64; 2]>,
    /// Compressed frames that came back before an earlier one.
    ready: BTreeMap<usize, Vec<u8>>,
    pool: Pool,
    written: u64,
    hasher: blake3::Hasher,
    tar_bytes: u64,
    /// Content bytes the current file still expects.
    file_left: u64,
    /// Padding owed after the current file's content.
    file_pad: u64,
    tar_ended: bool,
    segments: Vec<SegmentRef>,
}

impl<W: Write> PackWriter<W> {
    /// Starts the pack `token` (its name, recorded in every [`ChunkRef`] and [`SegmentRef`]),
    /// compressed at zstd `level`.
    pub fn new(out: W, token: &str, level: i32) -> Self {
        let threads = crate::parallel::threads().clamp(1, MAX_COMPRESSORS);
        Self {
            out,
            token: token.to_owned(),
            buf: Vec::with_capacity(FRAME_TARGET as usize + (BLOCK as usize) * 4),
            started: 0,
            frames: Vec::new(),
            ready: BTreeMap::new(),
            pool: Pool::new(threads, level),
            written: 0,
            hasher: blake3::Hasher::new(),
            tar_bytes: 0,
            file_left: 0,
            file_pad: 0,
            tar_ended: false,
            segments: Vec::new(),
        }
    }

    /// The pack's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Bytes of tar written so far (uncompressed); 0 means the pack holds no entry yet.
    pub fn tar_bytes(&self) -> u64 {
        self.tar_bytes + self.buf.len() as u64
    }

    /// Compressed bytes handed to the output so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// How many frames are written (their byte ranges known): a [`ChunkAt`] whose frame is
    /// below this resolves with [`Self::chunk_ref`].
    pub fn frames_written(&self) -> usize {
        self.frames.len()
    }

    /// The byte range in the pack of frame `frame`, once written.
    pub fn frame_range(&self, frame: usize) -> Option<[u64; 2]> {
        self.frames.get(frame).copied()
    }

    /// The [`ChunkRef`] of a chunk written here, once its frame is written.
    pub fn chunk_ref(&self, at: &ChunkAt, blake3: Option<String>) -> Option<ChunkRef> {
        Some(ChunkRef {
            pack: self.token.clone(),
            frame: self.frame_range(at.frame)?,
            at: at.at,
            len: at.len,
            blake3,
        })
    }

    /// Appends a directory entry.
    pub fn dir(&mut self, path: &str, mtime: u64) -> Result<()> {
        let mut header = header(tar::EntryType::Directory, 0o755, 0, mtime);
        let bytes = header_bytes(&mut header, path, None)?;
        self.entry_header(&bytes)
    }

    /// Appends a symlink entry.
    pub fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0, mtime);
        let bytes = header_bytes(&mut header, path, Some(target))?;
        self.entry_header(&bytes)
    }

    /// Starts a regular file of `size` bytes; its content follows as [`Self::chunk`]s.
    pub fn file(&mut self, path: &str, exec: bool, size: u64, mtime: u64) -> Result<()> {
        let mut header = header(
            tar::EntryType::Regular,
            if exec { 0o755 } else { 0o644 },
            size,
            mtime,
        );
        let bytes = header_bytes(&mut header, path, None)?;
        self.entry_header(&bytes)?;
        self.file_left = size;
        self.file_pad = (BLOCK - size % BLOCK) % BLOCK;
        Ok(())
    }

    /// Appends the next piece of the current file's content as one chunk: it lands in one
    /// frame, which may close right after it.
    pub fn chunk(&mut self, bytes: &[u8]) -> Result<ChunkAt> {
        if bytes.len() as u64 > self.file_left {
            return Err(PackError::Misuse("more content than the file's size"));
        }
        let at = ChunkAt {
            frame: self.started,
            at: self.buf.len() as u64,
            len: bytes.len() as u64,
        };
        self.buf.extend_from_slice(bytes);
        self.file_left -= bytes.len() as u64;
        if self.file_left == 0 {
            let pad = self.file_pad as usize;
            self.buf.resize(self.buf.len() + pad, 0);
            self.file_pad = 0;
        }
        self.maybe_close()?;
        Ok(at)
    }

    fn entry_header(&mut self, bytes: &[u8]) -> Result<()> {
        if self.file_left > 0 || self.tar_ended {
            return Err(PackError::Misuse(
                "an entry started inside a file or after the tar's end",
            ));
        }
        if bytes.len() > BIG_HEADER {
            self.close_frame()?;
            self.buf.extend_from_slice(bytes);
            return self.close_frame();
        }
        self.buf.extend_from_slice(bytes);
        self.maybe_close()
    }

    /// Closes the frame being filled once it reached [`FRAME_TARGET`]: the caller only calls
    /// this between chunks, so a chunk never straddles two frames.
    fn maybe_close(&mut self) -> Result<()> {
        if self.buf.len() as u64 >= FRAME_TARGET {
            self.close_frame()?;
        }
        Ok(())
    }

    fn close_frame(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(FRAME_TARGET as usize + (BLOCK as usize) * 4),
        );
        self.tar_bytes += frame.len() as u64;
        let number = self.started;
        self.started += 1;
        if let Some(done) = self.pool.submit(number, frame)? {
            self.accept(done)?;
        }
        // Keep the number of frames in flight bounded.
        while self.started - self.frames.len() - self.ready.len() > self.pool.capacity() {
            let done = self.pool.receive()?;
            self.accept(done)?;
        }
        Ok(())
    }

    /// Takes a compressed frame back and writes every frame that is now next in order.
    fn accept(&mut self, (number, bytes): (usize, Vec<u8>)) -> Result<()> {
        self.ready.insert(number, bytes);
        while let Some(bytes) = self.ready.remove(&self.frames.len()) {
            let start = self.written;
            self.emit(&bytes)?;
            self.frames.push([start, self.written]);
        }
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(io_err("write"))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the tar's end (two zero blocks) and waits until every frame is written, so every
    /// [`ChunkAt`] resolves.
    pub fn end_tar(&mut self) -> Result<()> {
        if self.file_left > 0 {
            return Err(PackError::Misuse("the tar ended inside a file"));
        }
        if self.tar_ended {
            return Ok(());
        }
        self.buf.resize(self.buf.len() + 2 * BLOCK as usize, 0);
        self.close_frame()?;
        while self.frames.len() < self.started {
            let done = self.pool.receive()?;
            self.accept(done)?;
        }
        self.tar_ended = true;
        Ok(())
    }

    /// Appends one manifest segment (its JSON Lines, [`encode_segment`]) after the tar's end, as
    /// a zstd frame in a skippable frame; returns where it is.
    pub fn segment(&mut self, lines: &[u8], entries: u64) -> Result<SegmentRef> {
        let payload = compress_segment(lines)?;
        self.segment_payload(&payload, blake3::hash(lines).to_hex().to_string(), entries)
    }

    /// Like [`Self::segment`], for a segment already compressed ([`compress_segment`]) whose
    /// lines hash to `lines_blake3`.
    pub fn segment_payload(
        &mut self,
        payload: &[u8],
        lines_blake3: String,
        entries: u64,
    ) -> Result<SegmentRef> {
        if !self.tar_ended {
            self.end_tar()?;
        }
        let size = u32::try_from(payload.len())
            .map_err(|_| PackError::Misuse("a manifest segment too large for a skippable frame"))?;
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&SEGMENT_FRAME_MAGIC.to_le_bytes());
        head[4..].copy_from_slice(&size.to_le_bytes());
        self.emit(&head)?;
        let start = self.written;
        self.emit(payload)?;
        let segment = SegmentRef {
            pack: self.token.clone(),
            range: [start, self.written],
            blake3: lines_blake3,
            entries,
        };
        self.segments.push(segment.clone());
        Ok(segment)
    }

    /// Ends the pack (the tar's end, if not written yet) and flushes the output.
    pub fn finish(mut self, full: bool) -> Result<(W, FinishedPack)> {
        self.end_tar()?;
        self.out.flush().map_err(io_err("flush"))?;
        let finished = FinishedPack {
            pack: PackRef {
                token: self.token.clone(),
                bytes: self.written,
                blake3: self.hasher.finalize().to_hex().to_string(),
                full,
            },
            segments: std::mem::take(&mut self.segments),
            tar_bytes: self.tar_bytes,
            frames: self.frames.len(),
        };
        Ok((self.out, finished))
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// The header block(s) of one entry: the tar crate writes GNU long-name (and long-link)
/// entries first when the path (or target) does not fit the header. Its builder ends every
/// archive with two zero blocks, which are cut off here: the pack writes its own end.
fn header_bytes(header: &mut tar::Header, path: &str, target: Option<&str>) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::with_capacity(2048));
    let written = match target {
        Some(target) => builder.append_link(header, path, target),
        None => builder.append_data(header, path, io::empty()),
    };
    written.map_err(|e| PackError::Io {
        op: "frame a tar entry for",
        source: io::Error::new(e.kind(), format!("`{path}`: {e}")),
    })?;
    let mut bytes = builder.into_inner().map_err(io_err("frame a tar entry for"))?;
    bytes.truncate(bytes.len().saturating_sub(2 * BLOCK as usize));
    Ok(bytes)
}

/// A segment's JSON Lines: one [`SegmentEntry`] per line, in order. The bytes depend on the
/// entries alone, so a segment whose entries did not change hashes the same and is reused.
pub fn encode_segment(entries: &[SegmentEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 160);
    for entry in entries {
        // Serializing plain data to memory cannot fail.
        if serde_json::to_writer(&mut out, entry).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// A segment's lines compressed as one zstd frame (with its size and checksum): the payload of
/// its skippable frame.
pub fn compress_segment(lines: &[u8]) -> Result<Vec<u8>> {
    let mut payload = compressor(SEGMENT_LEVEL)
        .and_then(|mut c| c.compress(lines))
        .map_err(io_err("compress a segment of"))?;
    // zstd sizes the buffer for the worst case; a full pack holds every segment until its end.
    payload.shrink_to_fit();
    Ok(payload)
}

/// Decodes one zstd frame fetched by range (a frame of a pack's tar, or a segment's payload):
/// exactly one frame, declaring its decompressed size, at most `max_len` bytes, with its
/// checksum verified when present.
pub fn decode_frame(bytes: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let corrupt = |what: String| PackError::Corrupt(what);
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(bytes).map_err(|code| {
        corrupt(format!(
            "not a zstd frame ({})",
            zstd::zstd_safe::get_error_name(code)
        ))
    })?;
    if frame_len != bytes.len() {
        return Err(corrupt(format!(
            "the range holds {} bytes but its zstd frame {frame_len}",
            bytes.len()
        )));
    }
    let declared = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(n)) => n,
        _ => return Err(corrupt("a zstd frame without its content size".to_owned())),
    };
    if declared > max_len as u64 {
        return Err(corrupt(format!(
            "a zstd frame declares {declared} bytes, more than the {max_len} expected"
        )));
    }
    let out = zstd::bulk::decompress(bytes, declared as usize)
        .map_err(|e| corrupt(format!("a zstd frame does not decode: {e}")))?;
    if out.len() as u64 != declared {
        return Err(corrupt(format!(
            "a zstd frame decoded to {} bytes, not the {declared} it declares",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes one manifest segment: the payload of its skippable frame (a zstd frame of JSON
/// Lines, [`SegmentRef::range`]) into its entries, in order. The entries are not trusted yet:
/// [`super::format::TreeCheck`] checks them against the manifest's digest.
pub fn decode_segment(payload: &[u8]) -> Result<Vec<SegmentEntry>> {
    let lines = decode_frame(payload, SEGMENT_MAX_BYTES)?;
    parse_segment(&lines)
}

/// Parses a segment's JSON Lines (decompressed).
pub fn parse_segment(lines: &[u8]) -> Result<Vec<SegmentEntry>> {
    let mut entries = Vec::new();
    for (n, line) in lines.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry = serde_json::from_slice(line)
            .map_err(|e| PackError::Corrupt(format!("line {} of a manifest segment: {e}", n + 1)))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// A file's chunks as the format cuts them (FastCDC 2020 with [`CHUNK_MIN`], [`CHUNK_AVG`] and
/// [`CHUNK_MAX`]), read from `source`; used by snapshot to cut files and by restore to find the
/// chunks a seed file already holds.
pub fn chunks<R: Read>(source: R) -> fastcdc::v2020::StreamCDC<R> {
    fastcdc::v2020::StreamCDC::new(source, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
}

/// A small pool of threads compressing frames, each into one independent zstd frame with its
/// content size and checksum.
struct Pool {
    jobs: Option<SyncSender<(usize, Vec<u8>)>>,
    done: Receiver<(usize, io::Result<Vec<u8>>)>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// With one thread, frames are compressed on the caller's (no pool).
    inline: Option<zstd::bulk::Compressor<'static>>,
}

fn compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.include_checksum(true)?;
    c.include_contentsize(true)?;
    Ok(c)
}

impl Pool {
    fn new(threads: usize, level: i32) -> Self {
        let (done_tx, done) = sync_channel(threads * FRAMES_PER_THREAD + 1);
        if threads <= 1 {
            return Self {
                jobs: None,
                done,
                workers: Vec::new(),
                threads: 1,
                inline: compressor(level).ok(),
            };
        }
        let (jobs, job_rx) = sync_channel::<(usize, Vec<u8>)>(threads * FRAMES_PER_THREAD);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    let mut c = compressor(level);
                    loop {
                        // The lock is held only to take the next job.
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((number, frame)) = job else { return };
                        let result = match &mut c {
                            Ok(c) => c.compress(&frame),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        if done_tx.send((number, result)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(jobs),
            done,
            workers,
            threads,
            inline: None,
        }
    }

    /// Frames that may be in flight beyond those written.
    fn capacity(&self) -> usize {
        if self.jobs.is_none() {
            0
        } else {
            self.threads * FRAMES_PER_THREAD
        }
    }

    /// Hands a frame over; with no pool it is compressed at once and returned.
    fn submit(&mut self, number: usize, frame: Vec<u8>) -> Result<Option<(usize, Vec<u8>)>> {
        match &self.jobs {
            Some(jobs) => {
                jobs.send((number, frame)).map_err(|_| PackError::Io {
                    op: "compress",
                    source: io::Error::other("the compressing threads stopped"),
                })?;
                Ok(None)
            }
            None => {
                let c = self.inline.as_mut().ok_or_else(|| PackError::Io {
                    op: "compress",
                    source: io::Error::other("cannot create a zstd context"),
                })?;
                let bytes = c.compress(&frame).map_err(io_err("compress"))?;
                Ok(Some((number, bytes)))
            }
        }
    }

    /// The next compressed frame (in any order).
    fn receive(&mut self) -> Result<(usize, Vec<u8>)> {
        let (number, result) = self.done.recv().map_err(|_| PackError::Io {
            op: "compress",
            source: io::Error::other("the compressing threads stopped"),
        })?;
        Ok((number, result.map_err(io_err("compress"))?))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job queue ends each worker once it finished its frame: the result queue
        // has room for every frame in flight, so no worker blocks on it.
        self.jobs = None;
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(seed: u64, len: usize) -> Vec<u8> {
        // Incompressible-ish bytes (xorshift), so frames have realistic sizes.
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Where each chunk of a file went, with its bytes.
    type Placed = Vec<(ChunkAt, Vec<u8>)>;

    struct Written {
        bytes: Vec<u8>,
        pack: FinishedPack,
        /// (path, chunk locations with their bytes)
        files: Vec<(String, Placed)>,
        frame_ranges: Vec<[u64; 2]>,
    }

    fn write_pack(files: &[(&str, Vec<u8>)], segments: &[Vec<SegmentEntry>]) -> Written {
        let mut pack = PackWriter::new(Vec::new(), "0123456789abcdef", 3);
        pack.dir("d", 0).unwrap();
        pack.symlink("d/link", "../x", 0).unwrap();
        let mut placed = Vec::new();
        for (path, data) in files {
            pack.file(path, false, data.len() as u64, 0).unwrap();
            let mut chunks = Vec::new();
            if data.len() as u64 >= crate::remote::snapshot::format::CHUNK_THRESHOLD {
                for c in chunks_in(data) {
                    let at = pack.chunk(&data[c.clone()]).unwrap();
                    chunks.push((at, data[c].to_vec()));
                }
            } else if !data.is_empty() {
                chunks.push((pack.chunk(data).unwrap(), data.clone()));
            }
            placed.push((path.to_string(), chunks));
        }
        pack.end_tar().unwrap();
        for s in segments {
            pack.segment(&encode_segment(s), s.len() as u64).unwrap();
        }
        let frame_ranges = (0..pack.frames_written())
            .filter_map(|i| pack.frame_range(i))
            .collect();
        let (bytes, finished) = pack.finish(true).unwrap();
        Written {
            bytes,
            pack: finished,
            files: placed,
            frame_ranges,
        }
    }

    fn chunks_in(data: &[u8]) -> Vec<std::ops::Range<usize>> {
        chunks(data)
            .map(|c| {
                let c = c.unwrap();
                c.offset as usize..c.offset as usize + c.length
            })
            .collect()
    }

    fn entry(path: &str) -> SegmentEntry {
        SegmentEntry {
            entry: crate::store::ManifestEntry::file(
                path.into(),
                false,
                3,
                blake3::hash(b"abc").to_hex().to_string(),
            ),
            chunks: vec![ChunkRef {
                pack: "0123456789abcdef".into(),
                frame: [0, 10],
                at: 0,
                len: 3,
                blake3: None,
            }],
        }
    }

    #[test]
    fn chunks_decode_from_their_frame_alone() {
        let files = vec![
            ("d/small", b"hello".to_vec()),
            ("d/empty", Vec::new()),
            ("d/big", content(7, 6 << 20)),
            (
                "d/a-path-long-enough-to-need-a-gnu-long-name-entry/0123456789/0123456789/0123456789/0123456789/f",
                content(9, 300_000),
            ),
        ];
        let w = write_pack(&files, &[]);
        assert!(w.frame_ranges.len() > 4, "{} frames", w.frame_ranges.len());
        for [start, end] in &w.frame_ranges {
            assert!(decode_frame(&w.bytes[*start as usize..*end as usize], FRAME_MAX).is_ok());
        }
        for (_, chunks) in &w.files {
            for (at, data) in chunks {
                let [start, end] = w.frame_ranges[at.frame];
                let frame = decode_frame(&w.bytes[start as usize..end as usize], 4 << 20).unwrap();
                assert_eq!(&frame[at.at as usize..(at.at + at.len) as usize], &data[..]);
            }
        }
        assert_eq!(w.pack.pack.bytes, w.bytes.len() as u64);
        assert_eq!(w.pack.pack.blake3, blake3::hash(&w.bytes).to_hex().to_string());
        // A frame's range must be exactly one frame, within its size limit.
        let [start, end] = w.frame_ranges[1];
        assert!(decode_frame(&w.bytes[start as usize..end as usize + 1], 4 << 20).is_err());
        assert!(decode_frame(&w.bytes[start as usize..end as usize], 10).is_err());
    }

    #[test]
    fn the_whole_pack_is_a_tar_zst_with_segments_skipped() {
        let files = vec![("d/a", b"first".to_vec()), ("d/b", content(3, 2 << 20))];
        let segment: Vec<SegmentEntry> = (0..20).map(|i| entry(&format!("p{i:02}"))).collect();
        let w = write_pack(&files, std::slice::from_ref(&segment));
        // zstd's streaming decoder reads all frames in sequence and skips skippable ones.
        let decoder = zstd::stream::read::Decoder::new(&w.bytes[..]).unwrap();
        let mut archive = tar::Archive::new(decoder);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((path, entry.header().entry_type(), data));
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0].0, "d");
        assert_eq!(seen[1].1, tar::EntryType::Symlink);
        assert_eq!((seen[2].0.as_str(), &seen[2].2), ("d/a", &files[0].1));
        assert_eq!((seen[3].0.as_str(), &seen[3].2), ("d/b", &files[1].1));
        // After the tar, the decoder yields nothing more (the segments are skipped).
        let mut rest = Vec::new();
        let mut decoder = zstd::stream::read::Decoder::new(&w.bytes[..]).unwrap();
        decoder.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len() as u64, w.pack.tar_bytes);
        // The segment decodes from its range alone.
        let s = &w.pack.segments[0];
        let decoded = decode_segment(&w.bytes[s.range[0] as usize..s.range[1] as usize]).unwrap();
        assert_eq!(decoded, segment);
        assert_eq!(s.entries, 20);
        assert_eq!(
            s.blake3,
            blake3::hash(&encode_segment(&segment)).to_hex().to_string()
        );
        // Its skippable frame header precedes it.
        let head = &w.bytes[s.range[0] as usize - 8..s.range[0] as usize];
        assert_eq!(&head[..4], &SEGMENT_FRAME_MAGIC.to_le_bytes());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_frame(b"not zstd at all", 100).is_err());
        assert!(decode_segment(b"").is_err());
        let frame = zstd::bulk::compress(b"{\"path\":1}\n", 3).unwrap();
        assert!(matches!(decode_segment(&frame), Err(PackError::Corrupt(_))));
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut pack = PackWriter::new(Vec::new(), "0123456789abcdef", 3);
        pack.file("f", false, 2, 0).unwrap();
        assert!(pack.chunk(b"abc").is_err());
        assert!(pack.dir("d", 0).is_err());
        assert!(pack.end_tar().is_err());
    }
}
