//! The recent bytes of a running fill, kept in memory so that the clients
//! attached to it are served without a round trip through the file.
//!
//! The fill appends each chunk it receives; readers take zero-copy slices
//! of them. Only chunks that are already in the staged file leave the ring
//! (oldest first), so a reader that finds its offset before the ring's
//! start reads it from the file, and never from a hole. Memory is bounded
//! by the ring's capacity (plus the few chunks in the write queue, which
//! are the same buffers), whatever the blob size or the number of readers.
//!
//! Evicted chunks are kept a little longer in `retired`: once every slice a
//! reader took of one has been sent and dropped, its buffer is handed back
//! to the fill for the next chunk, so a fill allocates a few buffers, not
//! one per chunk.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

/// Evicted chunks kept for reuse of their buffers; beyond this many the
/// oldest is dropped (a reader still holds it).
const RETIRED: usize = 4;

pub struct Ring {
    inner: Mutex<Inner>,
    /// Bytes of chunks held at most, once they are durable.
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    chunks: VecDeque<Bytes>,
    /// Offset of `chunks[0]` in the blob.
    start: u64,
    /// Offset just past the last chunk: all bytes received so far.
    end: u64,
    /// Bytes in the staged file; nothing past it is evicted.
    durable: u64,
    retired: VecDeque<Bytes>,
}

/// Where a reader's next bytes are.
#[derive(Debug)]
pub enum Lookup {
    /// In the ring: a slice of one chunk, starting at the asked offset.
    Here(Bytes),
    /// Evicted already; the file has them, up to this offset (the ring's
    /// start) at least.
    InFile(u64),
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Appends the next received chunk (the fill's side).
    pub fn push(&self, chunk: Bytes) {
        let mut inner = self.inner.lock();
        inner.end += chunk.len() as u64;
        inner.chunks.push_back(chunk);
        self.evict(&mut inner);
    }

    /// Records that the staged file holds the first `durable` bytes (the
    /// writer's side).
    pub fn set_durable(&self, durable: u64) {
        let mut inner = self.inner.lock();
        inner.durable = durable;
        self.evict(&mut inner);
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.inner.lock().end
    }

    /// Bytes in the staged file.
    pub fn durable(&self) -> u64 {
        self.inner.lock().durable
    }

    /// Bytes of chunks the ring holds now.
    pub fn held(&self) -> usize {
        let inner = self.inner.lock();
        (inner.end - inner.start) as usize
    }

    fn evict(&self, inner: &mut Inner) {
        while let Some(front) = inner.chunks.front() {
            let len = front.len() as u64;
            let held = inner.end - inner.start;
            if held - len < self.capacity as u64 || inner.start + len > inner.durable {
                break;
            }
            if let Some(chunk) = inner.chunks.pop_front() {
                inner.start += len;
                if inner.retired.len() == RETIRED {
                    inner.retired.pop_front();
                }
                inner.retired.push_back(chunk);
            }
        }
    }

    /// The bytes at `pos`, at most up to `limit` (exclusive).
    pub fn get(&self, pos: u64, limit: u64) -> Option<Lookup> {
        let inner = self.inner.lock();
        if pos < inner.start {
            return Some(Lookup::InFile(inner.start));
        }
        let mut at = inner.start;
        for chunk in &inner.chunks {
            let next = at + chunk.len() as u64;
            if pos < next {
                let from = (pos - at) as usize;
                let to = (next.min(limit).max(pos) - at) as usize;
                return (to > from).then(|| Lookup::Here(chunk.slice(from..to)));
            }
            at = next;
        }
        None
    }

    /// An empty buffer of at least `capacity` for the fill's next chunk:
    /// a retired one nobody reads any more, or a new one.
    pub fn buffer(&self, capacity: usize) -> BytesMut {
        let mut inner = self.inner.lock();
        for _ in 0..inner.retired.len() {
            let Some(chunk) = inner.retired.pop_front() else {
                break;
            };
            match chunk.try_into_mut() {
                Ok(mut buf) if buf.capacity() >= capacity => {
                    buf.clear();
                    return buf;
                }
                Ok(_) => {}
                Err(chunk) => inner.retired.push_back(chunk),
            }
        }
        BytesMut::with_capacity(capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(fill: u8, len: usize) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn slices_come_from_the_chunk_that_holds_the_offset() {
        let ring = Ring::new(100);
        ring.push(chunk(1, 10));
        ring.push(chunk(2, 10));
        let Some(Lookup::Here(b)) = ring.get(5, 20) else {
            panic!("in the ring")
        };
        assert_eq!(&b[..], &[1; 5]);
        let Some(Lookup::Here(b)) = ring.get(12, 15) else {
            panic!("in the ring")
        };
        assert_eq!(&b[..], &[2; 3], "never past the limit");
        assert!(ring.get(20, 30).is_none(), "not received yet");
        assert!(ring.get(15, 15).is_none(), "nothing below the limit");
    }

    #[test]
    fn only_durable_chunks_leave_and_memory_stays_at_the_capacity() {
        let ring = Ring::new(20);
        for i in 0..5 {
            ring.push(chunk(i, 10));
        }
        // Nothing is in the file yet: all of it stays, however much.
        assert_eq!(ring.held(), 50);
        assert!(matches!(ring.get(0, 50), Some(Lookup::Here(_))));
        ring.set_durable(25);
        // Two whole chunks are durable and may go; the third is not whole.
        assert_eq!(ring.held(), 30);
        assert!(matches!(ring.get(5, 50), Some(Lookup::InFile(20))));
        ring.set_durable(50);
        assert_eq!(ring.held(), 20);
        for i in 0..100 {
            ring.push(chunk(i, 10));
            ring.set_durable(ring.received());
        }
        assert_eq!(ring.held(), 20, "bounded by the capacity");
        assert_eq!(ring.received(), 1050);
    }

    #[test]
    fn buffers_come_back_once_no_reader_holds_them() {
        let ring = Ring::new(0);
        let mut first = BytesMut::with_capacity(64);
        first.extend_from_slice(&[7; 64]);
        let ptr = first.as_ptr();
        ring.push(first.freeze());
        let Some(Lookup::Here(held)) = ring.get(0, 64) else {
            panic!("in the ring")
        };
        ring.set_durable(64);
        // A reader still sends a slice of it: a new buffer.
        assert_ne!(ring.buffer(64).as_ptr(), ptr);
        drop(held);
        let again = ring.buffer(64);
        assert_eq!(again.as_ptr(), ptr, "the same allocation, reused");
        assert!(again.is_empty());
    }
}
