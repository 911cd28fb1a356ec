//! Blob fills: one upstream fetch per digest, however many clients ask.
//!
//! The fill is a task owned by the cache, not by any request. It appends to
//! a temporary file while hashing and publishes how many bytes are on disk
//! through a `watch` channel; every client of that digest reads the file up
//! to that mark, so a slow client never slows the fill or another client,
//! and memory does not grow with blob size or client count. The disk is the
//! buffer.
//!
//! When the upstream stream ends the fill checks size and digest, makes the
//! file durable, renames it into place, records it in the index and only
//! then publishes `Complete`. Any failure publishes `Failed`; readers that
//! already sent headers then end their body with an error, which aborts the
//! client's connection: no client ever sees a clean short or wrong body.
//! Readers also hold back the last byte of every response until the fill is
//! complete, so a client cannot receive a whole body that later fails
//! verification.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::index::Index;
use super::store::{FsStore, Kind};
use super::CacheError;
use crate::metrics::Metrics;
use crate::registry::{Digest, RepoName, Sha256Hasher};
use crate::upstream::{self, Upstream, UpstreamError};

/// File I/O happens in chunks this large: one blocking-pool hop and one
/// syscall per 256 KiB, not per network packet.
pub const IO_CHUNK: usize = 256 * 1024;

#[derive(Clone)]
pub enum Phase {
    /// Waiting for the upstream's headers.
    Connecting,
    /// Bytes are arriving; `size` is the upstream's Content-Length.
    Streaming {
        file: Arc<File>,
        size: Option<u64>,
    },
    /// Verified, durable and indexed.
    Complete {
        file: Arc<File>,
        size: u64,
    },
    Failed(CacheError),
}

#[derive(Clone)]
pub struct Progress {
    /// Bytes written to the file so far.
    pub written: u64,
    pub phase: Phase,
}

pub struct Fills {
    table: Mutex<HashMap<Digest, watch::Receiver<Progress>>>,
    store: Arc<FsStore>,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
}

/// What a blob request attaches to.
pub enum Attached {
    /// The blob was committed while we looked: serve it from the store.
    Committed,
    /// A running fill; `joined` is true when someone else started it.
    Fill {
        progress: watch::Receiver<Progress>,
        joined: bool,
    },
}

impl Fills {
    pub fn new(store: Arc<FsStore>, index: Arc<Index>, metrics: Arc<Metrics>) -> Fills {
        Fills {
            table: Mutex::new(HashMap::new()),
            store,
            index,
            metrics,
        }
    }

    /// Joins the running fill for `digest`, or starts one.
    pub fn attach(
        self: &Arc<Self>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: &Digest,
    ) -> Attached {
        let mut table = self.table.lock();
        if let Some(progress) = table.get(digest) {
            return Attached::Fill {
                progress: progress.clone(),
                joined: true,
            };
        }
        // Checked under the lock: a fill that just committed has already
        // left the table, and its file is in place.
        if self.store.contains(Kind::Blob, digest) {
            return Attached::Committed;
        }
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            phase: Phase::Connecting,
        });
        table.insert(digest.clone(), rx.clone());
        drop(table);
        let fills = self.clone();
        let digest = digest.clone();
        tokio::spawn(async move { fills.run(tx, upstream, repo, digest).await });
        Attached::Fill {
            progress: rx,
            joined: false,
        }
    }

    /// Fills running now.
    pub fn in_progress(&self) -> usize {
        self.table.lock().len()
    }

    async fn run(
        self: Arc<Self>,
        tx: watch::Sender<Progress>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: Digest,
    ) {
        self.metrics.fills_in_progress.inc();
        let started = tokio::time::Instant::now();
        let result = self.fill(&tx, &upstream, &repo, &digest).await;
        let label = match &result {
            Ok(size) => {
                self.metrics
                    .fill_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.fill_size.observe(*size as f64);
                tracing::info!(%digest, upstream = %upstream.name, size, elapsed_ms = started.elapsed().as_millis() as u64, "fill complete");
                "complete"
            }
            Err(e) => {
                tracing::warn!(%digest, upstream = %upstream.name, error = %e, "fill failed; nothing cached");
                if matches!(e, CacheError::DigestMismatch { .. }) {
                    self.metrics.digest_mismatches.inc();
                }
                tx.send_modify(|p| p.phase = Phase::Failed(e.clone()));
                e.fill_result_label()
            }
        };
        self.metrics.fills.with_label_values(&[label]).inc();
        self.table.lock().remove(&digest);
        self.metrics.fills_in_progress.dec();
    }

    async fn fill(
        &self,
        tx: &watch::Sender<Progress>,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<u64, CacheError> {
        // Held for the whole fill: at most max_concurrent_fills per upstream.
        let _slot = upstream.fill_slot().await;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        let response = upstream
            .request(Method::GET, repo, &format!("blobs/{digest}"), None, headers)
            .await?
            .require_ok("blob")?;
        let size = response.content_length();
        let store = self.store.clone();
        let temp = tokio::task::spawn_blocking(move || store.create_temp()).await??;
        let file = temp.file.clone();
        tx.send_modify(|p| {
            p.phase = Phase::Streaming {
                file: file.clone(),
                size,
            }
        });

        let idle = upstream.idle_timeout();
        let mut sink = Sink {
            file: file.clone(),
            hasher: Sha256Hasher::default(),
            written: 0,
            pending: BytesMut::with_capacity(IO_CHUNK),
            size,
        };
        let mut body = response.bytes_stream();
        // Bytes at the start of a restarted (200) stream that are on disk already.
        let mut skip: u64 = 0;
        let mut resumes = 0;
        loop {
            let next = match tokio::time::timeout(idle, body.next()).await {
                Err(_) => Err(UpstreamError::Stalled(idle).into()),
                Ok(Some(Err(e))) => Err(CacheError::from(e)),
                Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
                Ok(None) => Ok(None),
            };
            match next {
                Ok(Some(mut chunk)) => {
                    let dropped = skip.min(chunk.len() as u64);
                    skip -= dropped;
                    let chunk = chunk.split_off(dropped as usize);
                    if !chunk.is_empty() {
                        upstream.count_received(chunk.len());
                        sink.push(&chunk, tx).await?;
                    }
                }
                Ok(None) => break,
                Err(e) if resumes < MAX_RESUMES && sink.size.is_some() => {
                    // The upstream went away mid-blob: keep what we have and
                    // ask for the rest, so clients see a slower transfer, not
                    // a failure. The hasher carries on where it was.
                    resumes += 1;
                    self.metrics.fills_resumed.inc();
                    sink.flush(tx).await?;
                    tracing::warn!(%digest, upstream = %upstream.name, error = %e, from = sink.written, attempt = resumes, "upstream body broke; resuming");
                    let (resumed, already) =
                        resume(upstream, repo, digest, sink.written, sink.size).await?;
                    body = resumed.bytes_stream();
                    skip = already;
                }
                Err(e) => return Err(e),
            }
        }
        sink.flush(tx).await?;
        let Sink {
            hasher, written, ..
        } = sink;
        if let Some(expected) = size.filter(|&s| s != written) {
            return Err(CacheError::SizeMismatch {
                expected,
                actual: written,
            });
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(CacheError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let store = self.store.clone();
        let committed = digest.clone();
        tokio::task::spawn_blocking(move || store.commit(temp, Kind::Blob, &committed)).await??;
        self.index.record(Kind::Blob, digest, written, None)?;
        self.index.link(&upstream.name, repo.as_str(), digest)?;
        tx.send_modify(|p| {
            p.phase = Phase::Complete {
                file: file.clone(),
                size: written,
            }
        });
        Ok(written)
    }
}

/// How often one fill may resume a broken upstream body.
const MAX_RESUMES: u32 = 3;

/// Asks for the rest of a blob from byte `from`. Returns the response and
/// how many leading bytes of it are already on disk (all of them when the
/// upstream ignores Range and starts over with a 200).
async fn resume(
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    from: u64,
    size: Option<u64>,
) -> Result<(upstream::Response, u64), CacheError> {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    let range = HeaderValue::try_from(format!("bytes={from}-"))
        .map_err(|e| CacheError::Io(e.to_string()))?;
    headers.insert(http::header::RANGE, range);
    let response = upstream
        .request(Method::GET, repo, &format!("blobs/{digest}"), None, headers)
        .await?;
    match response.status() {
        StatusCode::PARTIAL_CONTENT => {
            let starts_right = response
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {from}-")));
            if !starts_right {
                return Err(
                    UpstreamError::Body("resumed with the wrong Content-Range".into()).into(),
                );
            }
            Ok((response, 0))
        }
        StatusCode::OK => {
            if size.is_some_and(|s| response.content_length() != Some(s)) {
                return Err(UpstreamError::Body("restarted with a different length".into()).into());
            }
            Ok((response, from))
        }
        _ => Err(response.status_error("blob").into()),
    }
}

/// The fill's side of the file: buffers to large writes, hashes, and
/// publishes progress.
struct Sink {
    file: Arc<File>,
    hasher: Sha256Hasher,
    written: u64,
    pending: BytesMut,
    size: Option<u64>,
}

impl Sink {
    async fn push(&mut self, chunk: &[u8], tx: &watch::Sender<Progress>) -> Result<(), CacheError> {
        let total = self.written + (self.pending.len() + chunk.len()) as u64;
        if let Some(expected) = self.size.filter(|&s| total > s) {
            return Err(CacheError::SizeMismatch {
                expected,
                actual: total,
            });
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= IO_CHUNK {
            self.flush(tx).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, tx: &watch::Sender<Progress>) -> Result<(), CacheError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = self.pending.split().freeze();
        let hasher = std::mem::take(&mut self.hasher);
        (self.hasher, self.written) =
            write_at(self.file.clone(), hasher, self.written, data).await?;
        let written = self.written;
        tx.send_modify(|p| p.written = written);
        Ok(())
    }
}

/// Hashes and appends one chunk on the blocking pool.
async fn write_at(
    file: Arc<File>,
    mut hasher: Sha256Hasher,
    offset: u64,
    data: Bytes,
) -> Result<(Sha256Hasher, u64), CacheError> {
    tokio::task::spawn_blocking(move || {
        hasher.update(&data);
        file.write_all_at(&data, offset)?;
        Ok((hasher, offset + data.len() as u64))
    })
    .await?
}

/// Where a body's bytes come from.
pub enum BodySource {
    /// A committed file: everything up to `end` is readable at once.
    File(Arc<File>),
    /// A running fill: readable up to what it has written.
    Fill(watch::Receiver<Progress>),
}

struct ReadState {
    source: BodySource,
    pos: u64,
    end: u64,
    metrics: Arc<Metrics>,
    from_cache: bool,
    _waiter: Option<WaiterGuard>,
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
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let from_cache = matches!(source, BodySource::File(_));
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
    let (file, readable) = match &mut state.source {
        BodySource::File(file) => (file.clone(), state.end),
        BodySource::Fill(progress) => loop {
            let snapshot = progress.borrow_and_update().clone();
            match snapshot.phase {
                Phase::Failed(e) => return Err(io::Error::other(e)),
                Phase::Complete { file, size } => {
                    if state.end == UNKNOWN_SIZE {
                        state.end = size;
                    } else if size < state.end {
                        return Err(io::Error::other("blob is shorter than announced"));
                    }
                    if state.pos >= state.end {
                        return Ok(None);
                    }
                    break (file, state.end);
                }
                Phase::Streaming { file, .. } => {
                    // Hold back the final byte until the fill is verified.
                    let readable = snapshot.written.min(state.end - 1);
                    if readable > state.pos {
                        break (file, readable);
                    }
                }
                Phase::Connecting => {}
            }
            if progress.changed().await.is_err() {
                return Err(io::Error::other("the fill ended without a result"));
            }
        },
    };
    let len = (readable - state.pos).min(IO_CHUNK as u64) as usize;
    let offset = state.pos;
    let bytes = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)??;
    state.pos += bytes.len() as u64;
    Ok(Some(bytes))
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
            return Err(CacheError::Io("the fill ended without a result".into()));
        }
    }
}
