//! Blob fills: one upstream fetch per digest, however many clients ask.
//!
//! The fill is a task owned by the cache, not by any request. It appends to
//! a staged write while hashing and publishes how many bytes are staged
//! through a `watch` channel; every client of that digest reads the staged
//! bytes up to that mark (where the backend allows it), so a slow client
//! never slows the fill or another client, and memory does not grow with
//! blob size or client count. The store is the buffer.
//!
//! When the upstream stream ends the fill checks size and digest, commits
//! the write, records it in the index and only then publishes `Complete`.
//! Any failure publishes `Failed` (a panic or a cancelled task drops the
//! sender, which readers take as a failure too); readers that already sent
//! headers then end their body with an error, which aborts the client's
//! connection: no client ever sees a clean short or wrong body. Readers
//! also hold back the last byte of every response until the fill is
//! complete, so a client cannot receive a whole body that later fails
//! verification.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::cache::health::Health;
use crate::cache::storage::index::Index;
use crate::cache::storage::{ContentStore, Kind, ReadAt, Staged};
use crate::cache::CacheError;
use crate::metrics::Metrics;
use crate::registry::{Digest, RepoName, Sha256Hasher};
use crate::upstream::{self, Upstream, UpstreamError};

/// Store I/O happens in chunks this large: one blocking-pool hop and one
/// syscall per 256 KiB, not per network packet.
pub const IO_CHUNK: usize = 256 * 1024;

/// A fill re-reads the free space each time it has staged this much more,
/// so one without a length (or longer than the room) stops at the floor.
const ROOM_CHECK_EVERY: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
pub enum Phase {
    /// Waiting for the upstream's headers.
    Connecting,
    /// Bytes are arriving; `size` is the upstream's Content-Length.
    /// `reader` follows the staged bytes, when the backend allows it.
    Streaming {
        reader: Option<Arc<dyn ReadAt>>,
        size: Option<u64>,
    },
    /// Verified, durable and indexed.
    Complete {
        reader: Arc<dyn ReadAt>,
        size: u64,
    },
    Failed(CacheError),
}

#[derive(Clone)]
pub struct Progress {
    /// Bytes staged so far.
    pub written: u64,
    pub phase: Phase,
}

/// A running fill as the status page shows it.
#[derive(Debug, Clone)]
pub struct RunningFill {
    pub digest: Digest,
    pub upstream: Arc<str>,
    pub repo: String,
    /// Bytes staged so far.
    pub written: u64,
    /// The upstream's Content-Length, once its headers arrived.
    pub size: Option<u64>,
}

/// One digest's running fill: its progress, and whom it is fetched for.
struct Running {
    progress: watch::Receiver<Progress>,
    upstream: Arc<str>,
    repo: RepoName,
}

pub struct Fills {
    /// The running fill of each digest; entries leave through [`Entry`]'s
    /// drop, however the fill ends.
    table: Mutex<HashMap<Digest, Running>>,
    store: Arc<dyn ContentStore>,
    index: Arc<Index>,
    /// Room above the free-space floor; told how each fill's writes went.
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Every fill task, so shutdown can wait for them.
    tasks: TaskTracker,
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

/// A fill's place in the table and in the gauge, released on drop: a fill
/// that panics or is cancelled frees its digest for the next request.
struct Entry {
    fills: Arc<Fills>,
    digest: Digest,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.fills.table.lock().remove(&self.digest);
        self.fills.metrics.fills_in_progress.dec();
    }
}

impl Fills {
    pub fn new(
        store: Arc<dyn ContentStore>,
        index: Arc<Index>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) -> Fills {
        Fills {
            table: Mutex::new(HashMap::new()),
            store,
            index,
            health,
            metrics,
            tasks,
        }
    }

    /// Joins the running fill for `digest`, or starts one.
    pub fn attach(
        self: &Arc<Self>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: &Digest,
    ) -> Result<Attached, CacheError> {
        let mut table = self.table.lock();
        if let Some(running) = table.get(digest) {
            return Ok(Attached::Fill {
                progress: running.progress.clone(),
                joined: true,
            });
        }
        // Checked under the lock: a fill that just committed has already
        // left the table, and its object is in place.
        if self.store.stat(Kind::Blob, digest)?.is_some() {
            return Ok(Attached::Committed);
        }
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            phase: Phase::Connecting,
        });
        table.insert(
            digest.clone(),
            Running {
                progress: rx.clone(),
                upstream: upstream.name.clone(),
                repo: repo.clone(),
            },
        );
        self.metrics.fills_in_progress.inc();
        let entry = Entry {
            fills: self.clone(),
            digest: digest.clone(),
        };
        drop(table);
        self.tasks.spawn(entry.run(tx, upstream, repo));
        Ok(Attached::Fill {
            progress: rx,
            joined: false,
        })
    }

    /// Fills running now.
    pub fn in_progress(&self) -> usize {
        self.table.lock().len()
    }

    /// The running fills and how far each is, largest first.
    pub fn running(&self) -> Vec<RunningFill> {
        let mut out: Vec<RunningFill> = self
            .table
            .lock()
            .iter()
            .map(|(digest, r)| {
                let progress = r.progress.borrow();
                let size = match &progress.phase {
                    Phase::Streaming { size, .. } => *size,
                    Phase::Complete { size, .. } => Some(*size),
                    Phase::Connecting | Phase::Failed(_) => None,
                };
                RunningFill {
                    digest: digest.clone(),
                    upstream: r.upstream.clone(),
                    repo: r.repo.to_string(),
                    written: progress.written,
                    size,
                }
            })
            .collect();
        out.sort_by(|a, b| b.size.cmp(&a.size).then(b.written.cmp(&a.written)));
        out
    }
}

impl Entry {
    async fn run(self, tx: watch::Sender<Progress>, upstream: Arc<Upstream>, repo: RepoName) {
        let fills = &self.fills;
        let digest = &self.digest;
        let started = tokio::time::Instant::now();
        let result = fills.fill(&tx, &upstream, &repo, digest).await;
        fills.health.note_write(&result);
        let label = match &result {
            Ok(size) => {
                fills
                    .metrics
                    .fill_duration
                    .observe(started.elapsed().as_secs_f64());
                fills.metrics.fill_size.observe(*size as f64);
                tracing::info!(%digest, upstream = %upstream.name, size, elapsed_ms = started.elapsed().as_millis() as u64, "fill complete");
                "complete"
            }
            Err(e) => {
                tracing::warn!(%digest, upstream = %upstream.name, error = %e, io_kind = ?e.io_kind(), "fill failed; nothing cached");
                if matches!(e, CacheError::DigestMismatch { .. }) {
                    fills.metrics.digest_mismatches.inc();
                }
                tx.send_modify(|p| p.phase = Phase::Failed(e.clone()));
                e.fill_result_label()
            }
        };
        fills.metrics.fills.with_label_values(&[label]).inc();
        // `self` drops here: the digest leaves the table after the terminal
        // state is published, so no request finds neither.
    }
}

impl Fills {
    async fn fill(
        &self,
        tx: &watch::Sender<Progress>,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<u64, CacheError> {
        // Below the floor, nothing is fetched at all.
        self.health.room_for(None)?;
        // Held for the whole fill: at most max_concurrent_fills per upstream.
        let _slot = upstream.fill_slot().await;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        let response = upstream
            .request(Method::GET, repo, &format!("blobs/{digest}"), None, headers)
            .await?
            .require_ok("blob")?;
        let size = response.content_length();
        let max_blob_size = upstream.settings().max_blob_size;
        let too_large = || CacheError::BlobTooLarge {
            upstream: upstream.name.to_string(),
            limit: max_blob_size,
        };
        // Refused before anything is staged when the upstream says so.
        if size.is_some_and(|s| s > max_blob_size) {
            return Err(too_large());
        }
        // And so is a blob the store has no room for: the client gets the
        // error, not a 200 that breaks off when the disk fills.
        self.health.room_for(size)?;
        let store = self.store.clone();
        let staged = tokio::task::spawn_blocking(move || store.begin()).await??;
        let reader = staged.reader().filter(|_| self.store.reads_while_staged());
        tx.send_modify(|p| {
            p.phase = Phase::Streaming {
                reader: reader.clone(),
                size,
            }
        });

        let idle = upstream.idle_timeout();
        let mut sink = Sink {
            staged: Some(staged),
            hasher: Sha256Hasher::default(),
            written: 0,
            pending: BytesMut::with_capacity(IO_CHUNK),
            size,
            health: self.health.clone(),
            next_room_check: ROOM_CHECK_EVERY,
        };
        let mut body = response.bytes_stream();
        // Bytes at the start of a restarted (200) stream that are staged already.
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
                        // With a length, the sink holds the upstream to it;
                        // without one, only the bound does.
                        if size.is_none() && sink.total_with(chunk.len()) > max_blob_size {
                            return Err(too_large());
                        }
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
        let (staged, hasher, written) = sink.finish()?;
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
        let reader = tokio::task::spawn_blocking(move || -> Result<_, CacheError> {
            staged.commit(Kind::Blob, &committed)?;
            match reader {
                Some(reader) => Ok(reader),
                None => store
                    .open(Kind::Blob, &committed)?
                    .map(|o| o.reader)
                    .ok_or_else(|| CacheError::Internal("committed blob not found".into())),
            }
        })
        .await??;
        self.index.record(Kind::Blob, digest, written, None)?;
        self.index.link(&upstream.name, repo.as_str(), digest)?;
        tx.send_modify(|p| {
            p.phase = Phase::Complete {
                reader,
                size: written,
            }
        });
        Ok(written)
    }
}

/// How often one fill may resume a broken upstream body.
const MAX_RESUMES: u32 = 3;

/// Asks for the rest of a blob from byte `from`. Returns the response and
/// how many leading bytes of it are already staged (all of them when the
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
        .map_err(|e| CacheError::Internal(e.to_string()))?;
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

/// The fill's side of the staged write: buffers to large writes, hashes,
/// and publishes progress.
struct Sink {
    /// Lent to the blocking pool for each write, and back.
    staged: Option<Box<dyn Staged>>,
    hasher: Sha256Hasher,
    written: u64,
    pending: BytesMut,
    size: Option<u64>,
    health: Arc<Health>,
    /// Staged bytes at which the free space is read again.
    next_room_check: u64,
}

impl Sink {
    /// What would be staged with `more` bytes.
    fn total_with(&self, more: usize) -> u64 {
        self.written + (self.pending.len() + more) as u64
    }

    async fn push(&mut self, chunk: &[u8], tx: &watch::Sender<Progress>) -> Result<(), CacheError> {
        let total = self.total_with(chunk.len());
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

    /// Hashes and appends what is pending on the blocking pool.
    async fn flush(&mut self, tx: &watch::Sender<Progress>) -> Result<(), CacheError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = self.pending.split().freeze();
        let mut hasher = std::mem::take(&mut self.hasher);
        let mut staged = self.staged.take().ok_or_else(lost)?;
        let room = (self.written >= self.next_room_check).then(|| {
            self.next_room_check = self.written + ROOM_CHECK_EVERY;
            self.health.clone()
        });
        let (staged, hasher) = tokio::task::spawn_blocking(move || -> Result<_, CacheError> {
            if let Some(room) = room {
                room.room_for(None)?;
            }
            hasher.update(&data);
            staged.append(&data)?;
            Ok((staged, hasher))
        })
        .await??;
        self.written = staged.len();
        self.staged = Some(staged);
        self.hasher = hasher;
        let written = self.written;
        tx.send_modify(|p| p.written = written);
        Ok(())
    }

    fn finish(self) -> Result<(Box<dyn Staged>, Sha256Hasher, u64), CacheError> {
        let staged = self.staged.ok_or_else(lost)?;
        Ok((staged, self.hasher, self.written))
    }
}

/// A write that failed on the blocking pool took the staged write with it.
fn lost() -> CacheError {
    CacheError::Internal("the staged write was lost by an earlier failure".into())
}
