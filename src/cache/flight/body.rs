//! A blob's body as a stream of chunks: from a committed object, or from a
//! running fill up to what it has staged (the last byte held back until the
//! fill is verified and committed).

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::watch;

use super::fill::{Phase, Progress, IO_CHUNK};
use super::readers::ReaderGuard;
use super::ring::Lookup;
use crate::cache::storage::ReadAt;
use crate::cache::CacheError;
use crate::metrics::Metrics;

/// Where a body's bytes come from.
pub enum BodySource {
    /// A committed object: everything up to `end` is readable at once.
    Committed(Arc<dyn ReadAt>),
    /// A running fill: readable up to what it has staged.
    Fill(watch::Receiver<Progress>),
}

struct ReadState {
    source: BodySource,
    pos: u64,
    end: u64,
    metrics: Arc<Metrics>,
    from_cache: bool,
    buffers: Buffers,
    _waiter: Option<WaiterGuard>,
    /// Keeps eviction away from the blob for as long as the body lives.
    _reader: Option<ReaderGuard>,
}

struct WaiterGuard(Arc<Metrics>);

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.0.fill_waiters.dec();
    }
}

/// `end` for a blob whose size the upstream did not announce: the stream
/// then runs until the fill completes.
pub const UNKNOWN_SIZE: u64 = u64::MAX;

/// Streams bytes `[start, end)` of a blob in large chunks. `end` is the
/// blob's size, the end of the requested range, or [`UNKNOWN_SIZE`].
pub fn body_stream(
    source: BodySource,
    start: u64,
    end: u64,
    metrics: Arc<Metrics>,
    reader: Option<ReaderGuard>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let from_cache = matches!(source, BodySource::Committed(_));
    let waiter = (!from_cache).then(|| {
        metrics.fill_waiters.inc();
        WaiterGuard(metrics.clone())
    });
    let state = ReadState {
        source,
        pos: start,
        end,
        metrics,
        from_cache,
        buffers: Buffers::default(),
        _waiter: waiter,
        _reader: reader,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match next_chunk(&mut state).await {
            Ok(Some(bytes)) => {
                let source = if state.from_cache {
                    "cache"
                } else {
                    "upstream"
                };
                state
                    .metrics
                    .bytes_served
                    .with_label_values(&[source])
                    .inc_by(bytes.len() as u64);
                Some((Ok(bytes), Some(state)))
            }
            Ok(None) => None,
            // End the stream after the error: the connection is aborted.
            Err(e) => Some((Err(e), None)),
        }
    })
}

async fn next_chunk(state: &mut ReadState) -> io::Result<Option<Bytes>> {
    if state.pos >= state.end {
        return Ok(None);
    }
    let (reader, ring, readable) = match &mut state.source {
        BodySource::Committed(reader) => (reader.clone(), None, state.end),
        BodySource::Fill(progress) => loop {
            let snapshot = progress.borrow_and_update().clone();
            match snapshot.phase {
                Phase::Failed(e) => return Err(io::Error::other(e)),
                Phase::Complete { reader, size } => {
                    if state.end == UNKNOWN_SIZE {
                        state.end = size;
                    } else if size < state.end {
                        return Err(io::Error::other("blob is shorter than announced"));
                    }
                    if state.pos >= state.end {
                        return Ok(None);
                    }
                    break (reader, snapshot.ring, state.end);
                }
                // Hold back the final byte until the fill is verified.
                // Without a reader (a backend that cannot be read while
                // staged) wait for the commit.
                Phase::Streaming {
                    reader: Some(reader),
                    ..
                } => {
                    let readable = snapshot.received.min(state.end - 1);
                    if readable > state.pos {
                        break (reader, snapshot.ring, readable);
                    }
                }
                Phase::Streaming { reader: None, .. } | Phase::Connecting => {}
            }
            if progress.changed().await.is_err() {
                return Err(io::Error::other(ended_without_result()));
            }
        },
    };
    // The fill's recent bytes are served from memory; what the ring has
    // let go of is in the file (a reader that fell behind).
    let mut file_end = readable;
    match ring.as_ref().and_then(|r| r.get(state.pos, readable)) {
        Some(Lookup::Here(bytes)) => {
            state.pos += bytes.len() as u64;
            return Ok(Some(bytes));
        }
        Some(Lookup::InFile(ring_start)) => file_end = file_end.min(ring_start),
        None => {}
    }
    let len = (file_end - state.pos).min(IO_CHUNK as u64) as usize;
    let offset = state.pos;
    let mut buf = state.buffers.take(len);
    let buf = tokio::task::spawn_blocking(move || -> io::Result<BytesMut> {
        reader.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)??;
    let bytes = state.buffers.keep(buf);
    state.pos += bytes.len() as u64;
    Ok(Some(bytes))
}

/// A body's read buffers, reused once the connection has sent and dropped
/// what was read into them: no allocation and no zeroing per chunk.
///
/// A reused buffer is one this reader filled before, so all of it is
/// initialised and is read into as a plain `&mut [u8]`: no `unsafe`, no
/// uninitialised memory. A new one is zeroed once (`calloc`, which for
/// buffers this large is fresh zero pages from the kernel, not a memset).
#[derive(Default)]
struct Buffers {
    /// Handed out earlier; some may still be on their way to the client.
    sent: Vec<Bytes>,
}

/// Enough for one chunk in flight in the connection, one being read, and
/// one spare.
const BUFFERS: usize = 3;

impl Buffers {
    fn take(&mut self, len: usize) -> BytesMut {
        for i in 0..self.sent.len() {
            if self.sent[i].len() < len || !self.sent[i].is_unique() {
                continue;
            }
            let bytes = self.sent.swap_remove(i);
            match bytes.try_into_mut() {
                Ok(mut buf) => {
                    buf.truncate(len);
                    return buf;
                }
                Err(bytes) => self.sent.push(bytes),
            }
        }
        if self.sent.len() >= BUFFERS {
            self.sent.remove(0);
        }
        BytesMut::zeroed(len)
    }

    fn keep(&mut self, buf: BytesMut) -> Bytes {
        let bytes = buf.freeze();
        self.sent.push(bytes.clone());
        bytes
    }
}

/// The fill's sender went away without a terminal state: its task panicked
/// or was cancelled.
fn ended_without_result() -> CacheError {
    CacheError::Internal("the fill ended without a result".into())
}

/// Waits until the fill has the upstream's answer: the blob's size (if the
/// upstream declared one), or the error that ended it.
pub async fn wait_for_headers(
    progress: &mut watch::Receiver<Progress>,
) -> Result<Option<u64>, CacheError> {
    loop {
        match &progress.borrow_and_update().phase {
            Phase::Connecting => {}
            Phase::Streaming { size, .. } => return Ok(*size),
            Phase::Complete { size, .. } => return Ok(Some(*size)),
            Phase::Failed(e) => return Err(e.clone()),
        }
        if progress.changed().await.is_err() {
            return Err(ended_without_result());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use parking_lot::RwLock;

    use super::*;
    use crate::cache::flight::ring::Ring;

    /// The staged file: grows as the writer appends, counts its reads.
    #[derive(Default)]
    struct File {
        bytes: RwLock<Vec<u8>>,
        reads: AtomicUsize,
    }

    impl ReadAt for File {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let bytes = self.bytes.read();
            let at = offset as usize;
            let src = bytes
                .get(at..at + buf.len())
                .ok_or_else(|| io::Error::other("read past what was written"))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    const CHUNK: usize = 64 * 1024;

    /// A fill driven by hand: `deliver` does what the fill and its writer
    /// do for each chunk.
    struct Fake {
        data: Vec<u8>,
        sent: usize,
        ring: Arc<Ring>,
        file: Arc<File>,
        tx: watch::Sender<Progress>,
    }

    impl Fake {
        fn new(len: usize, ring_bytes: usize) -> Fake {
            let data: Vec<u8> = (0..len as u64)
                .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
                .collect();
            let ring = Arc::new(Ring::new(ring_bytes));
            let file = Arc::new(File::default());
            let (tx, _) = watch::channel(Progress {
                written: 0,
                received: 0,
                ring: Some(ring.clone()),
                phase: Phase::Streaming {
                    reader: Some(file.clone() as Arc<dyn ReadAt>),
                    size: Some(len as u64),
                },
            });
            Fake {
                data,
                sent: 0,
                ring,
                file,
                tx,
            }
        }

        /// Receives and writes the next `bytes` of the blob.
        fn deliver(&mut self, bytes: usize) {
            let until = self.sent.saturating_add(bytes).min(self.data.len());
            while self.sent < until {
                let end = (self.sent + CHUNK).min(until);
                let chunk = Bytes::copy_from_slice(&self.data[self.sent..end]);
                self.ring.push(chunk.clone());
                self.file.bytes.write().extend_from_slice(&chunk);
                self.ring.set_durable(end as u64);
                self.sent = end;
            }
            let received = self.sent as u64;
            self.tx.send_modify(|p| p.received = received);
        }

        fn complete(&self) {
            let file = self.file.clone();
            let size = self.data.len() as u64;
            self.tx
                .send_modify(|p| p.phase = Phase::Complete { reader: file, size });
        }

        fn fail(&self) {
            self.tx.send_modify(|p| {
                p.phase = Phase::Failed(CacheError::Internal("digest mismatch (test)".into()));
                p.ring = None;
            });
        }

        fn reader(&self) -> std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> {
            Box::pin(body_stream(
                BodySource::Fill(self.tx.subscribe()),
                0,
                self.data.len() as u64,
                Arc::new(Metrics::new()),
                None,
            ))
        }
    }

    async fn read_some(
        body: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin),
        out: &mut Vec<u8>,
        at_least: usize,
    ) {
        while out.len() < at_least {
            let chunk = body.next().await.expect("more bytes").expect("no error");
            out.extend_from_slice(&chunk);
        }
    }

    async fn read_rest(
        body: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin),
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_reader_behind_the_ring_reads_the_file_then_catches_up_in_memory() {
        let mut fill = Fake::new(3 * 1024 * 1024 + 123, 256 * 1024);
        let mut body = fill.reader();
        fill.deliver(CHUNK);
        let mut got = Vec::new();
        read_some(&mut body, &mut got, 1).await;
        assert_eq!(
            fill.file.reads.load(Ordering::SeqCst),
            0,
            "fresh bytes come from memory"
        );
        // The fill runs far ahead: what the reader has not read left the ring.
        fill.deliver(2 * 1024 * 1024);
        read_some(&mut body, &mut got, 2 * 1024 * 1024 + CHUNK - 1).await;
        let from_file = fill.file.reads.load(Ordering::SeqCst);
        assert!(from_file > 0, "the lagging reader read the file");
        // Caught up and keeping pace, it is served from the ring again.
        let len = fill.data.len();
        while fill.sent < len {
            fill.deliver(CHUNK);
            read_some(&mut body, &mut got, fill.sent.min(len - 1)).await;
        }
        assert_eq!(got.len(), len - 1, "the last byte waits for the commit");
        fill.complete();
        read_rest(&mut body, &mut got).await.unwrap();
        assert!(got == fill.data, "every byte right");
        assert_eq!(
            fill.file.reads.load(Ordering::SeqCst),
            from_file,
            "a reader keeping pace is served from memory"
        );
    }

    #[tokio::test]
    async fn a_late_joiner_gets_the_whole_blob() {
        let mut fill = Fake::new(2 * 1024 * 1024 + 5, 256 * 1024);
        fill.deliver(1024 * 1024 + 7);
        let mut body = fill.reader();
        let mut got = Vec::new();
        read_some(&mut body, &mut got, 1024 * 1024).await;
        fill.deliver(usize::MAX);
        fill.complete();
        read_rest(&mut body, &mut got).await.unwrap();
        assert!(got == fill.data);
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_the_commit_and_a_failure_aborts_every_reader() {
        let mut fill = Fake::new(1024 * 1024, 4 * 1024 * 1024);
        let mut bodies: Vec<_> = (0..5).map(|_| fill.reader()).collect();
        fill.deliver(usize::MAX);
        let mut tasks = Vec::new();
        for mut body in bodies.drain(..) {
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let end = read_rest(&mut body, &mut got).await;
                (got.len(), end)
            }));
        }
        // Every reader has all but the last byte, and waits.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "the last byte is held"
        );
        fill.fail();
        for t in tasks {
            let (len, end) = t.await.unwrap();
            assert_eq!(len, fill.data.len() - 1, "had everything but the last byte");
            assert!(end.is_err(), "no reader sees a clean end");
        }
    }

    #[tokio::test]
    async fn hits_reuse_their_read_buffers() {
        let file = Arc::new(File::default());
        let data: Vec<u8> = (0..(10 * IO_CHUNK) as u32).map(|i| i as u8).collect();
        file.bytes.write().extend_from_slice(&data);
        let mut body = Box::pin(body_stream(
            BodySource::Committed(file),
            0,
            data.len() as u64,
            Arc::new(Metrics::new()),
            None,
        ));
        let mut seen = std::collections::HashSet::new();
        let mut got = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            seen.insert(chunk.as_ptr() as usize);
            got.extend_from_slice(&chunk);
            // Sent and dropped, as a connection does.
        }
        assert!(got == data);
        assert!(
            seen.len() <= BUFFERS,
            "{} buffers for 10 chunks",
            seen.len()
        );
    }
}
