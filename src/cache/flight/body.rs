//! A blob's body as a stream of chunks: from a committed object, or from a
//! running fill up to what it has staged (the last byte held back until the
//! fill is verified and committed).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::fill::{Phase, Progress, IO_CHUNK};
use super::readers::ReaderGuard;
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
    let (reader, readable) = match &mut state.source {
        BodySource::Committed(reader) => (reader.clone(), state.end),
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
                    break (reader, state.end);
                }
                // Hold back the final byte until the fill is verified.
                // Without a reader (a backend that cannot be read while
                // staged) wait for the commit.
                Phase::Streaming {
                    reader: Some(reader),
                    ..
                } => {
                    let readable = snapshot.written.min(state.end - 1);
                    if readable > state.pos {
                        break (reader, readable);
                    }
                }
                Phase::Streaming { reader: None, .. } | Phase::Connecting => {}
            }
            if progress.changed().await.is_err() {
                return Err(io::Error::other(ended_without_result()));
            }
        },
    };
    let len = (readable - state.pos).min(IO_CHUNK as u64) as usize;
    let offset = state.pos;
    let bytes = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        reader.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)??;
    state.pos += bytes.len() as u64;
    Ok(Some(bytes))
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
