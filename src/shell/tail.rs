//! The bounded tail of a command's output.

use std::collections::VecDeque;

use super::DEFAULT_TAIL_BYTES;

/// Keeps the last `cap` bytes written to it.
pub(super) struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(cap.min(DEFAULT_TAIL_BYTES)),
            cap,
            dropped: 0,
        }
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(self.cap)..];
        self.dropped += (data.len() - keep.len()) as u64;
        self.buf.extend(keep);
        let excess = self.buf.len().saturating_sub(self.cap);
        if excess > 0 {
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    pub(super) fn render(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let text = String::from_utf8_lossy(&bytes);
        if self.dropped > 0 {
            format!(
                "[... {} earlier bytes of output omitted ...]\n{text}",
                self.dropped
            )
        } else {
            text.into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_buffer_is_bounded() {
        let mut t = Tail::new(8);
        t.push(b"0123");
        t.push(b"456789");
        assert_eq!(
            t.render(),
            "[... 2 earlier bytes of output omitted ...]\n23456789"
        );
        t.push(b"abcdefghijkl");
        assert_eq!(
            t.render(),
            "[... 14 earlier bytes of output omitted ...]\nefghijkl"
        );
        assert!(t.buf.len() <= 8);
        let mut none = Tail::new(0);
        none.push(b"abc");
        assert_eq!(none.render(), "[... 3 earlier bytes of output omitted ...]\n");
    }
}
