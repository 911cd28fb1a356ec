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

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::ring::Ring;
use super::source::{Opened, Source};
use crate::cache::health::Health;
use crate::cache::shared::SharedTier;
use crate::cache::storage::index::Index;
use crate::cache::storage::{ContentStore, Kind, ReadAt, Staged};
use crate::cache::CacheError;
use crate::metrics::Metrics;
use crate::registry::{Digest, RepoName, Sha256Hasher};
use crate::upstream::{self, Upstream, UpstreamError};

/// Store reads happen in chunks this large: one blocking-pool hop and one
/// syscall per 256 KiB, not per network packet.
pub const IO_CHUNK: usize = 256 * 1024;

/// A fill hands on the upstream's bytes in chunks this large: one write,
/// one hash update and one wake-up of the readers each.
pub const FILL_CHUNK: usize = 256 * 1024;

/// A buffer with less room than this left is not filled further.
const MIN_CHUNK: usize = 32 * 1024;

/// Recent bytes of a fill kept in memory for its readers (see [`Ring`]).
pub const RING_BYTES: usize = 4 * 1024 * 1024;

/// Chunks waiting for the writer at most; the fill waits beyond that.
pub(crate) const WRITE_QUEUE: usize = 4;

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
    /// Bytes received so far: in the ring, the write queue or the file.
    pub received: u64,
    /// The fill's recent bytes, while it streams.
    pub ring: Option<Arc<Ring>>,
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
    /// The bucket and the other replicas, when there are any.
    shared: Option<Arc<SharedTier>>,
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
        shared: Option<Arc<SharedTier>>,
    ) -> Fills {
        Fills {
            table: Mutex::new(HashMap::new()),
            store,
            index,
            health,
            metrics,
            tasks,
            shared,
        }
    }

    /// A running fill of `digest`, to stream it to another replica; never
    /// starts one.
    pub fn running_fill(&self, digest: &Digest) -> Option<watch::Receiver<Progress>> {
        self.table.lock().get(digest).map(|r| r.progress.clone())
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
            received: 0,
            ring: None,
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
                if let CacheError::DigestMismatch { expected, actual } = e {
                    fills.metrics.digest_mismatches.inc();
                    upstream
                        .notifier()
                        .emit(crate::notify::Event::DigestMismatch {
                            upstream: upstream.name.to_string(),
                            repository: repo.to_string(),
                            expected: expected.to_string(),
                            actual: actual.to_string(),
                        });
                }
                tx.send_modify(|p| {
                    p.phase = Phase::Failed(e.clone());
                    // Its memory goes with the failure.
                    p.ring = None;
                });
                e.fill_result_label()
            }
        };
        fills.metrics.fills.with_label_values(&[label]).inc();
        let refill = matches!(result, Err(CacheError::SharedCorrupt(_)));
        let fills = self.fills.clone();
        let digest = self.digest.clone();
        // The digest leaves the table after the terminal state is
        // published, so no request finds neither.
        drop(self);
        if refill {
            // The bucket's bad copy is gone: fill it again now, from the
            // upstream, rather than on the next client's request.
            if let Err(e) = fills.attach(upstream, repo, &digest) {
                tracing::debug!(%digest, error = %e, "refilling after a corrupt shared copy failed to start");
            }
        }
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
        // From the upstream, or with a shared tier from the bucket or the
        // replica holding the blob's fill lease; the upstream's fill slot
        // is held only while it is the upstream.
        let mut source = Source::new(upstream, repo, digest, self.shared.as_ref(), tx.subscribe());
        let opened = source.open().await?;
        let size = opened.size;
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
        let ring = Arc::new(Ring::new(RING_BYTES));
        tx.send_modify(|p| {
            p.ring = Some(ring.clone());
            p.phase = Phase::Streaming {
                reader: reader.clone(),
                size,
            }
        });

        // Writes overlap the receive: a writer on its own blocking thread
        // hashes and appends each chunk while the next one arrives, fed by
        // a short queue that holds the fill back when the disk is slower.
        let (queue, writer) = Writer::start(staged, ring.clone(), self.health.clone());
        let received = self
            .receive(&mut source, opened, size, tx, &ring, &queue)
            .await;
        // The writer ends once the queue is closed and drained; a failed
        // receive waits for it too, so the staged write is gone before the
        // failure is published.
        drop(queue);
        let written = writer
            .await
            .map_err(|e| CacheError::Internal(format!("the fill's writer: {e}")))?;
        // The writer's error first: it is why a receive stopped early.
        let (staged, hasher) = written?;
        received?;
        let written = staged.len();
        tx.send_modify(|p| p.written = written);
        if let Some(expected) = size.filter(|&s| s != written) {
            return Err(CacheError::SizeMismatch {
                expected,
                actual: written,
            });
        }
        let actual = hasher.finish();
        if actual != *digest {
            let mismatch = CacheError::DigestMismatch {
                expected: digest.clone(),
                actual,
            };
            if source.blame(&mismatch).await {
                return Err(CacheError::SharedCorrupt(digest.clone()));
            }
            return Err(mismatch);
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
        if let Some(shared) = self
            .shared
            .as_ref()
            .filter(|_| upstream.may_hold_private_content())
        {
            shared.publish_link(&upstream.name, repo.as_str(), digest);
        }
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
pub(super) async fn resume(
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

/// The fill's writer: hashes and appends chunks on one blocking thread, in
/// the order they were received, and tells the ring what is durable.
struct Writer;

type WriterResult = Result<(Box<dyn Staged>, Sha256Hasher), CacheError>;

impl Writer {
    fn start(
        mut staged: Box<dyn Staged>,
        ring: Arc<Ring>,
        health: Arc<Health>,
    ) -> (
        tokio::sync::mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<WriterResult>,
    ) {
        let (queue, mut chunks) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> WriterResult {
            let mut hasher = Sha256Hasher::default();
            let mut next_room_check = ROOM_CHECK_EVERY;
            while let Some(chunk) = chunks.blocking_recv() {
                if staged.len() >= next_room_check {
                    next_room_check = staged.len() + ROOM_CHECK_EVERY;
                    health.room_for(None)?;
                }
                hasher.update(&chunk);
                staged.append(&chunk)?;
                ring.set_durable(staged.len());
            }
            Ok((staged, hasher))
        });
        (queue, writer)
    }
}

impl Fills {
    /// Receives the upstream's body into the ring and the writer's queue,
    /// in chunks of [`FILL_CHUNK`], resuming a broken body where it broke.
    async fn receive(
        &self,
        source: &mut Source<'_>,
        opened: Opened<'_>,
        size: Option<u64>,
        tx: &watch::Sender<Progress>,
        ring: &Ring,
        queue: &tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<(), CacheError> {
        let upstream = source.upstream();
        let digest = source.digest();
        let idle = upstream.idle_timeout();
        let max_blob_size = upstream.settings().max_blob_size;
        let mut pending = ring.buffer(FILL_CHUNK);
        // Bytes handed on: to the ring and the writer.
        let mut received: u64 = 0;
        let mut body = opened.stream;
        // Bytes at the start of a restarted (200) stream that are staged already.
        let mut skip: u64 = 0;
        let mut resumes = 0;
        loop {
            let next = match body.next().now_or_never() {
                Some(item) => Ok(item),
                None => {
                    // Nothing more has arrived: hand on what has, so that
                    // on a slow link readers get bytes as they come, not a
                    // chunk at a time.
                    received += hand_on(&mut pending, ring, queue, tx).await?;
                    tokio::time::timeout(idle, body.next()).await
                }
            };
            let next = match next {
                Err(_) => Err(UpstreamError::Stalled(idle).into()),
                Ok(Some(Err(e))) => Err(e),
                Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
                Ok(None) => Ok(None),
            };
            match next {
                Ok(Some(chunk)) => {
                    let dropped = skip.min(chunk.len() as u64);
                    skip -= dropped;
                    let mut rest = &chunk[dropped as usize..];
                    if rest.is_empty() {
                        continue;
                    }
                    if source.is_upstream() {
                        upstream.count_received(rest.len());
                    }
                    let total = received + (pending.len() + rest.len()) as u64;
                    // With a length, the upstream is held to it; without
                    // one, only the bound is.
                    if let Some(expected) = size.filter(|&s| total > s) {
                        return Err(CacheError::SizeMismatch {
                            expected,
                            actual: total,
                        });
                    }
                    if size.is_none() && total > max_blob_size {
                        return Err(CacheError::BlobTooLarge {
                            upstream: upstream.name.to_string(),
                            limit: max_blob_size,
                        });
                    }
                    // Copied once, into a reused buffer, so that a chunk
                    // handed on is one large write and one slice.
                    while !rest.is_empty() {
                        let n = (pending.capacity() - pending.len()).min(rest.len());
                        pending.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        if pending.len() == pending.capacity() {
                            received += hand_on(&mut pending, ring, queue, tx).await?;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) if resumes < MAX_RESUMES && size.is_some() => {
                    // The source went away mid-blob: keep what we have and
                    // ask for the rest (of it, or of another source), so
                    // clients see a slower transfer, not a failure. The
                    // hasher carries on where it was.
                    resumes += 1;
                    self.metrics.fills_resumed.inc();
                    received += hand_on(&mut pending, ring, queue, tx).await?;
                    tracing::warn!(%digest, upstream = %upstream.name, error = %e, from = received, attempt = resumes, "blob body broke; resuming");
                    let (resumed, already) = source.reopen(received, size).await?;
                    body = resumed.stream;
                    skip = already;
                }
                Err(e) => return Err(e),
            }
        }
        hand_on(&mut pending, ring, queue, tx).await?;
        Ok(())
    }
}

/// Hands the pending chunk to the writer and to the readers. The next one
/// goes into the rest of the same buffer (a partial chunk, on a slow link),
/// or into a reused one. Returns its length.
async fn hand_on(
    pending: &mut BytesMut,
    ring: &Ring,
    queue: &tokio::sync::mpsc::Sender<Bytes>,
    tx: &watch::Sender<Progress>,
) -> Result<u64, CacheError> {
    if pending.is_empty() {
        return Ok(0);
    }
    let chunk = pending.split().freeze();
    if pending.capacity() < MIN_CHUNK {
        *pending = ring.buffer(FILL_CHUNK);
    }
    let len = chunk.len() as u64;
    // Queued first: the ring evicts only what the writer made durable, so
    // what readers see is always in the queue or the file.
    if queue.send(chunk.clone()).await.is_err() {
        // The writer stopped on an error; the caller collects it.
        return Err(CacheError::Internal("the fill's writer stopped".into()));
    }
    ring.push(chunk);
    let received = ring.received();
    tx.send_modify(|p| {
        p.received = received;
        p.written = ring.durable();
    });
    Ok(len)
}
