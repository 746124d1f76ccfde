//! The bounded, in-order hand-off between a restore's download and its extraction thread
//! (docs/DESIGN.md, "Restore"): the download pushes each part as it completes, in order; the
//! extraction thread reads them as one byte stream.
//!
//! The stream only ends cleanly once the writer says the whole object arrived and matched its
//! digest ([`PipeWriter::finish`]): a download that fails, or a writer dropped without finishing,
//! makes the reader fail, so nothing downstream ever takes unverified bytes for a complete
//! archive. When the reader goes away (extraction failed), the writer fails at its next push, so
//! the download stops instead of fetching bytes nobody reads.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

/// How the stream ends.
enum End {
    /// More may come.
    Open,
    /// Everything arrived and was verified.
    Verified,
    /// The download failed (why, for the reader's error).
    Failed(String),
}

struct State {
    pieces: VecDeque<Bytes>,
    end: End,
    reader_gone: bool,
    /// The reader stopped because the bytes made no sense (corrupt, unsafe): only the digest,
    /// once every byte is in, says whether they were damaged; so the writer keeps going,
    /// discarding what it pushes.
    suspect: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Pieces held at most (besides the one the reader is working through).
    capacity: usize,
    /// Nanoseconds the reader waited for the download.
    waited_ns: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and two flags, never left half-updated.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A pipe holding at most `capacity` pieces; a push waits for room until `deadline`.
pub(super) fn pipe(capacity: usize, deadline: Instant) -> (PipeWriter, PipeReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pieces: VecDeque::new(),
            end: End::Open,
            reader_gone: false,
            suspect: false,
        }),
        changed: Condvar::new(),
        capacity: capacity.max(1),
        waited_ns: AtomicU64::new(0),
    });
    let writer = PipeWriter {
        shared: shared.clone(),
        deadline,
    };
    let reader = PipeReader {
        shared,
        current: Bytes::new(),
    };
    (writer, reader)
}

/// The download's end. Dropped without [`PipeWriter::finish`], the stream fails.
pub(super) struct PipeWriter {
    shared: Arc<Shared>,
    deadline: Instant,
}

impl PipeWriter {
    /// Hands one piece over, waiting while the pipe is full. Fails when the reader is gone or
    /// the deadline passes first; when the reader gave up on the data as suspect
    /// ([`Verdict::suspect`]), succeeds without keeping anything, so the download still ends
    /// with its digest checked.
    pub(super) fn push(&self, piece: Bytes) -> io::Result<()> {
        let mut state = self.shared.lock();
        loop {
            if state.reader_gone {
                if state.suspect {
                    return Ok(());
                }
                return Err(io::Error::other("the extraction stopped"));
            }
            if state.pieces.len() < self.shared.capacity {
                state.pieces.push_back(piece);
                self.shared.changed.notify_all();
                return Ok(());
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the extraction did not keep up before the deadline",
                ));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Whether the reader stopped for a reason of its own (so a failed push is the
    /// extraction's failure, not the download's).
    pub(super) fn reader_gone(&self) -> bool {
        let state = self.shared.lock();
        state.reader_gone && !state.suspect
    }

    /// Everything arrived and was verified: the reader gets the end of the stream after the
    /// pieces still queued.
    pub(super) fn finish(self) {
        self.end(End::Verified);
    }

    /// The download failed: the reader gets an error saying `why`.
    pub(super) fn fail(self, why: String) {
        self.end(End::Failed(why));
    }

    fn end(&self, end: End) {
        let mut state = self.shared.lock();
        if matches!(state.end, End::Open) {
            if matches!(end, End::Failed(_)) {
                // Nothing queued may be read any more: the object is not what was promised.
                state.pieces.clear();
            }
            state.end = end;
        }
        self.shared.changed.notify_all();
    }
}

/// Fails the stream at any time, even after [`PipeWriter::finish`]: the caller gave up (its
/// deadline passed), so the reader must stop at its next read instead of extracting the rest.
pub(super) struct Cancel(Arc<Shared>);

impl Cancel {
    pub(super) fn cancel(&self, why: &str) {
        let mut state = self.0.lock();
        state.pieces.clear();
        state.end = End::Failed(why.to_owned());
        self.0.changed.notify_all();
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.end(End::Failed("the download stopped before the end".to_owned()));
    }
}

/// The extraction's end: a [`Read`] of the object's bytes, in order.
pub(super) struct PipeReader {
    shared: Arc<Shared>,
    current: Bytes,
}

/// What the reader's side says about why it stopped, before it goes.
pub(super) struct Verdict(Arc<Shared>);

impl Verdict {
    /// The data made no sense: let the download finish (discarding the rest) so its digest says
    /// whether it was damaged.
    pub(super) fn suspect(&self) {
        let mut state = self.0.lock();
        state.suspect = true;
        state.reader_gone = true;
        state.pieces.clear();
        self.0.changed.notify_all();
    }
}

impl PipeReader {
    /// A handle to say why the reader stops.
    pub(super) fn verdict(&self) -> Verdict {
        Verdict(self.shared.clone())
    }

    /// A handle that fails this stream whenever the caller decides to.
    pub(super) fn canceller(&self) -> Cancel {
        Cancel(self.shared.clone())
    }

    /// A handle on the time this reader spent waiting for the download, readable after the
    /// reader is gone.
    pub(super) fn waited(&self) -> Waited {
        Waited(self.shared.clone())
    }
}

/// Time a [`PipeReader`] waited for bytes.
pub(super) struct Waited(Arc<Shared>);

impl Waited {
    pub(super) fn get(&self) -> Duration {
        Duration::from_nanos(self.0.waited_ns.load(Ordering::Relaxed))
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.is_empty() || self.cancelled() {
            self.current = Bytes::new();
            let started = Instant::now();
            let mut state = self.shared.lock();
            loop {
                if let End::Failed(why) = &state.end {
                    return Err(io::Error::other(why.clone()));
                }
                if let Some(piece) = state.pieces.pop_front() {
                    self.current = piece;
                    self.shared.changed.notify_all();
                    break;
                }
                if matches!(state.end, End::Verified) {
                    return Ok(0);
                }
                state = self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            drop(state);
            let waited = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            self.shared.waited_ns.fetch_add(waited, Ordering::Relaxed);
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

impl PipeReader {
    /// Whether the stream failed (a cancel) while a piece is still being read: stop now.
    fn cancelled(&self) -> bool {
        !self.current.is_empty() && matches!(self.shared.lock().end, End::Failed(_))
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.reader_gone = true;
        state.pieces.clear();
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[test]
    fn bytes_arrive_in_order_and_end_only_when_verified() {
        let (writer, mut reader) = pipe(2, far());
        let feeder = std::thread::spawn(move || {
            for i in 0..10u8 {
                writer.push(Bytes::from(vec![i; 1000])).unwrap();
            }
            writer.finish();
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        feeder.join().unwrap();
        let expected: Vec<u8> = (0..10u8).flat_map(|i| vec![i; 1000]).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_failed_or_abandoned_download_is_an_error_not_an_end() {
        let (writer, mut reader) = pipe(4, far());
        writer.push(Bytes::from_static(b"abc")).unwrap();
        writer.fail("digest mismatch".to_owned());
        let mut all = Vec::new();
        let err = reader.read_to_end(&mut all).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");

        let (writer, mut reader) = pipe(4, far());
        writer.push(Bytes::from_static(b"abc")).unwrap();
        drop(writer);
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_cancel_fails_the_stream_even_after_it_was_verified() {
        let (writer, mut reader) = pipe(4, far());
        let cancel = reader.canceller();
        writer.push(Bytes::from(vec![1u8; 1000])).unwrap();
        writer.finish();
        let mut buf = [0u8; 10];
        assert_eq!(reader.read(&mut buf).unwrap(), 10, "a piece in hand");
        cancel.cancel("the deadline passed");
        let err = reader.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("deadline"), "{err}");
    }

    #[test]
    fn a_gone_reader_stops_the_writer() {
        let (writer, reader) = pipe(1, far());
        writer.push(Bytes::from_static(b"a")).unwrap();
        drop(reader);
        assert!(writer.reader_gone());
        assert!(writer.push(Bytes::from_static(b"b")).is_err());
    }

    #[test]
    fn a_reader_that_finds_the_data_suspect_lets_the_download_finish() {
        let (writer, reader) = pipe(1, far());
        reader.verdict().suspect();
        drop(reader);
        assert!(!writer.reader_gone(), "not a failure of its own");
        for _ in 0..10 {
            writer.push(Bytes::from_static(b"discarded")).unwrap();
        }
        writer.finish();
    }

    #[test]
    fn a_full_pipe_gives_up_at_the_deadline() {
        let (writer, _reader) = pipe(1, Instant::now() + Duration::from_millis(50));
        writer.push(Bytes::from_static(b"a")).unwrap();
        let err = writer.push(Bytes::from_static(b"b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
