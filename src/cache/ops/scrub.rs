//! Online integrity: committed content hashed again while the daemon
//! serves. [`Cache::verify_online`] is one pass at full speed (`POST
//! /admin/verify`, and `regcache verify` against a running daemon);
//! [`Cache::scrub`] starts a pass every `scrub_interval`, hashing at most
//! `scrub_bytes_per_second`, and resumes one a restart interrupted where it
//! stopped.
//!
//! A pass walks the index — committed objects only: a fill lives in `tmp/`
//! and has no entry until it is verified — opens each object through the
//! store and hashes it chunk by chunk on the blocking pool. A corrupt one
//! is quarantined through the evictor, index entry first, so a concurrent
//! request either has its open file already (served as it is, and the
//! client's digest check fails) or misses and fills it again. Content is
//! never rewritten in place, so the bytes hashed are the bytes served. The
//! one race left — the object evicted and filled again while it was being
//! hashed — quarantines a good file, which costs one refill.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::verify::{mismatch, unreadable, Problem, VerifyReport};
use crate::cache::storage::index::now_millis;
use crate::cache::storage::{Kind, Object};
use crate::cache::{Cache, CacheError, IndexError};
use crate::registry::{Digest, Sha256Hasher};

/// The background scrub's settings (`[cache] scrub_interval`,
/// `scrub_bytes_per_second`); a reload replaces them live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubSettings {
    /// How often a pass starts; `None`: no scrub.
    pub interval: Option<Duration>,
    pub bytes_per_second: u64,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        ScrubSettings {
            interval: None,
            bytes_per_second: 32 << 20,
        }
    }
}

/// What a pass will look at, told before the first object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyPlan {
    pub files: u64,
    pub bytes: u64,
}

/// Told as a pass goes (the admin API streams it).
pub trait VerifyProgress: Send + Sync {
    fn planned(&self, _plan: &VerifyPlan) {}
    /// Bytes hashed since the last call.
    fn checked(&self, _bytes: u64) {}
    fn found(&self, _problem: &Problem) {}
}

/// A pass nobody watches (the scrub: its metrics and logs tell).
struct Quiet;

impl VerifyProgress for Quiet {}

/// How a pass ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub report: VerifyReport,
    /// False when it stopped early: shutdown, or the scrub turned off.
    pub complete: bool,
}

/// The cache's integrity state: the scrub's settings, the one admin pass
/// allowed at a time, and the signal that stops passes at shutdown.
pub struct Integrity {
    settings: watch::Sender<ScrubSettings>,
    admin_running: Arc<AtomicBool>,
    stopping: CancellationToken,
}

impl Default for Integrity {
    fn default() -> Self {
        Integrity {
            settings: watch::Sender::new(ScrubSettings::default()),
            admin_running: Arc::default(),
            stopping: CancellationToken::new(),
        }
    }
}

/// The right to run the one admin pass; released when dropped.
pub struct VerifyTicket(Arc<AtomicBool>);

impl Drop for VerifyTicket {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Key of the scrub's [`Mark`] among the index's notes.
const MARK: &str = "scrub";

/// Where the background scrub is, kept in the index so that a restart
/// resumes a pass instead of starting over (a pass at a bounded rate can
/// take longer than the time between deploys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    /// When the current or last pass started, unix milliseconds (0: never).
    started_at: u64,
    /// The pass in progress; `None` between passes.
    resume: Option<Position>,
}

/// The last object a pass checked: objects are walked kind by kind in
/// digest order, the index's own order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    kind: usize,
    /// Hex of the last digest checked; empty: none yet.
    after: String,
}

/// How long a failed scrub pass waits before it is tried again.
const RETRY: Duration = Duration::from_secs(60);

/// Chunk size of an unpaced pass.
const FULL_CHUNK: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Admin { repair: bool },
    Scrub,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Admin { .. } => "admin",
            Mode::Scrub => "scrub",
        }
    }
}

/// Keeps hashing to a rate: after each chunk, how long to wait before the
/// next one so that bytes since the window began stay within `rate` a
/// second.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: u64,
    since: Instant,
    bytes: u64,
}

/// How far behind schedule a pass may fall (a slow disk, a sleep that
/// overshot) before the window starts again instead of bursting to catch up.
const MAX_BEHIND: Duration = Duration::from_secs(1);

impl Pacer {
    pub(crate) fn new(now: Instant) -> Pacer {
        Pacer {
            rate: 0,
            since: now,
            bytes: 0,
        }
    }

    /// `n` more bytes were hashed at a bound of `rate` bytes a second; a
    /// new rate (a reload) starts a new window.
    pub(crate) fn wait_after(&mut self, n: u64, rate: u64, now: Instant) -> Duration {
        let rate = rate.max(1);
        if rate != self.rate {
            self.rate = rate;
            self.since = now;
            self.bytes = 0;
        }
        self.bytes += n;
        let due = self.since + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if due > now {
            return due - now;
        }
        if now - due > MAX_BEHIND {
            self.since = now;
            self.bytes = 0;
        }
        Duration::ZERO
    }
}

/// The chunk a paced pass reads at once: small enough that the waits
/// between chunks stay short at a low rate.
fn chunk_for(rate: u64) -> u64 {
    (rate / 4).clamp(64 << 10, FULL_CHUNK)
}

impl Cache {
    /// Replaces the scrub's settings; a running pass takes the new rate at
    /// its next chunk, and stops (to resume later) when the scrub is off.
    pub fn configure_scrub(&self, settings: ScrubSettings) {
        self.integrity.settings.send_replace(settings);
    }

    /// Stops online passes at their next chunk (shutdown). The scrub keeps
    /// its place for the next start.
    pub fn stop_background(&self) {
        self.integrity.stopping.cancel();
    }

    /// The right to run [`Cache::verify_online`]: `None` while another
    /// admin pass runs (one at a time; the scrub is not counted).
    pub fn verify_ticket(&self) -> Option<VerifyTicket> {
        let running = &self.integrity.admin_running;
        running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| VerifyTicket(running.clone()))
    }

    /// Hashes every committed object again at full speed while the cache
    /// serves; with `repair`, quarantines the corrupt and unreadable ones.
    pub async fn verify_online(
        &self,
        _ticket: &VerifyTicket,
        repair: bool,
        progress: &dyn VerifyProgress,
    ) -> Result<Pass, CacheError> {
        self.pass(Mode::Admin { repair }, progress).await
    }

    /// The background scrub: a pass every `scrub_interval` (measured from
    /// one pass's start to the next), resumed where a restart left it, until
    /// [`Cache::stop_background`]. Start it once the index is reconciled.
    pub async fn scrub(&self) {
        let mut settings = self.integrity.settings.subscribe();
        loop {
            let current = *settings.borrow_and_update();
            // Unreadable, the pass is tried now and reports the error.
            let wait = current.interval.map(|interval| {
                self.scrub_due_in(interval).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading the scrub's place in the index failed");
                    Duration::ZERO
                })
            });
            tokio::select! {
                _ = self.integrity.stopping.cancelled() => return,
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                _ = sleep_or_forever(wait) => {}
            }
            match self.pass(Mode::Scrub, &Quiet).await {
                Ok(pass) if pass.complete => {
                    self.metrics.scrub_passes.inc();
                    tracing::info!(
                        files = pass.report.files_checked,
                        bytes = pass.report.bytes_checked,
                        corrupt = pass.report.problems.len(),
                        "scrub pass complete"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?RETRY, "scrub pass failed");
                    tokio::select! {
                        _ = self.integrity.stopping.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// How long until the next scrub pass is due: at once when one is in
    /// progress (interrupted by a restart) or none ever ran.
    fn scrub_due_in(&self, interval: Duration) -> Result<Duration, IndexError> {
        let mark: Mark = self.index.note(MARK)?.unwrap_or_default();
        if mark.resume.is_some() {
            return Ok(Duration::ZERO);
        }
        let due = mark.started_at.saturating_add(interval.as_millis() as u64);
        Ok(Duration::from_millis(due.saturating_sub(now_millis())))
    }

    /// Whether a pass should stop before its next chunk.
    fn pass_stopped(&self, mode: Mode) -> bool {
        self.integrity.stopping.is_cancelled()
            || (mode == Mode::Scrub && self.integrity.settings.borrow().interval.is_none())
    }

    async fn pass(&self, mode: Mode, progress: &dyn VerifyProgress) -> Result<Pass, CacheError> {
        let repair = match mode {
            Mode::Admin { repair } => repair,
            // Quarantining is the point of the scrub.
            Mode::Scrub => true,
        };
        let mut mark = Mark::default();
        let mut from = Position::default();
        if mode == Mode::Scrub {
            mark = self.index.note(MARK)?.unwrap_or_default();
            match &mark.resume {
                Some(position) => from = position.clone(),
                None => {
                    mark = Mark {
                        started_at: now_millis(),
                        resume: Some(Position::default()),
                    };
                    self.index.set_note(MARK, &mark)?;
                }
            }
        }
        let index = self.index.clone();
        let start = from.clone();
        let todo = self
            .spawn_blocking(
                move || -> Result<Vec<(usize, Kind, Digest, u64)>, IndexError> {
                    let mut todo = Vec::new();
                    for (k, kind) in Kind::ALL.into_iter().enumerate().skip(start.kind) {
                        for (digest, entry) in index.entries(kind)? {
                            if k > start.kind || digest.hex() > start.after.as_str() {
                                todo.push((k, kind, digest, entry.size));
                            }
                        }
                    }
                    Ok(todo)
                },
            )
            .await??;
        progress.planned(&VerifyPlan {
            files: todo.len() as u64,
            bytes: todo.iter().map(|t| t.3).sum(),
        });
        if mode == Mode::Scrub && !todo.is_empty() {
            tracing::info!(
                files = todo.len(),
                resumed = !from.after.is_empty() || from.kind > 0,
                "scrub pass started"
            );
        }
        let mut report = VerifyReport::default();
        let mut pacer = Pacer::new(Instant::now());
        for (k, kind, digest, _) in todo {
            if self.pass_stopped(mode) {
                return Ok(Pass {
                    report,
                    complete: false,
                });
            }
            let store = self.storage.content.clone();
            let d = digest.clone();
            let hashed = match self.spawn_blocking(move || store.open(kind, &d)).await? {
                // Evicted since the listing: nothing to check.
                Ok(None) => continue,
                Ok(Some(object)) => match self.hash(&object, mode, progress, &mut pacer).await {
                    Hashed::Stopped => {
                        return Ok(Pass {
                            report,
                            complete: false,
                        })
                    }
                    Hashed::Done(r) => {
                        report.bytes_checked += object.size;
                        r
                    }
                },
                // It cannot be served either; a pass that stopped at it
                // would stop at it again after every retry.
                Err(e) => Err(e),
            };
            report.files_checked += 1;
            let location = self.storage.content.location(kind, &digest);
            let problem = match hashed {
                Ok(actual) => mismatch(kind, &digest, &actual, &location),
                Err(e) => Some(unreadable(kind, &digest, &e, &location)),
            };
            if let Some(problem) = problem {
                self.found(kind, &digest, &problem, repair, mode).await?;
                report.repaired |= repair;
                progress.found(&problem);
                report.problems.push(problem);
            }
            if mode == Mode::Scrub {
                mark.resume = Some(Position {
                    kind: k,
                    after: digest.hex().to_owned(),
                });
                self.index.set_note(MARK, &mark)?;
            }
        }
        if mode == Mode::Scrub {
            mark.resume = None;
            self.index.set_note(MARK, &mark)?;
        }
        Ok(Pass {
            report,
            complete: true,
        })
    }

    /// Hashes one object chunk by chunk on the blocking pool, waiting
    /// between chunks as the scrub's rate asks.
    async fn hash(
        &self,
        object: &Object,
        mode: Mode,
        progress: &dyn VerifyProgress,
        pacer: &mut Pacer,
    ) -> Hashed {
        let mut hasher = Sha256Hasher::default();
        let mut buf = Vec::new();
        let mut offset = 0u64;
        while offset < object.size {
            let rate = match mode {
                Mode::Scrub => Some(self.integrity.settings.borrow().bytes_per_second),
                Mode::Admin { .. } => None,
            };
            let n = (object.size - offset).min(rate.map_or(FULL_CHUNK, chunk_for));
            let reader = object.reader.clone();
            let job = move || -> io::Result<(Sha256Hasher, Vec<u8>)> {
                buf.resize(n as usize, 0);
                reader.read_exact_at(&mut buf, offset)?;
                hasher.update(&buf);
                Ok((hasher, buf))
            };
            match self.spawn_blocking(job).await {
                Ok(Ok(back)) => (hasher, buf) = back,
                Ok(Err(e)) => return Hashed::Done(Err(e)),
                Err(e) => return Hashed::Done(Err(io::Error::other(e))),
            }
            offset += n;
            progress.checked(n);
            self.metrics
                .verified_bytes
                .with_label_values(&[mode.label()])
                .inc_by(n);
            if self.pass_stopped(mode) {
                return Hashed::Stopped;
            }
            if let Some(rate) = rate {
                let wait = pacer.wait_after(n, rate, Instant::now());
                if !wait.is_zero() {
                    tokio::select! {
                        _ = self.integrity.stopping.cancelled() => return Hashed::Stopped,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        Hashed::Done(Ok(hasher.finish()))
    }

    /// Logs a corrupt object once, at WARN, and with `repair` takes it out
    /// of the cache so the next request fills it again.
    async fn found(
        &self,
        kind: Kind,
        digest: &Digest,
        problem: &Problem,
        repair: bool,
        mode: Mode,
    ) -> Result<(), CacheError> {
        if !repair {
            tracing::warn!(%problem, by = mode.label(), "cached file is corrupt; left in place (verify without repair)");
            return Ok(());
        }
        if kind == Kind::Manifest {
            self.manifests.forget(digest);
        }
        let (evictor, index, d) = (self.evictor.clone(), self.index.clone(), digest.clone());
        let taken = self
            .spawn_blocking(move || -> Result<_, IndexError> {
                let taken = evictor.quarantine(kind, &d)?;
                index.flush()?;
                Ok(taken)
            })
            .await??;
        let moved_to = taken.and_then(|q| q.location);
        tracing::warn!(%problem, by = mode.label(), moved_to = moved_to.as_deref(), "cached file is corrupt; quarantined, the next request fetches it again");
        Ok(())
    }
}

enum Hashed {
    Done(io::Result<Digest>),
    Stopped,
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::{ContentStoreExt, MemoryStore, Storage};
    use crate::cache::Index;
    use crate::metrics::Metrics;
    use parking_lot::Mutex;

    #[test]
    fn the_pacer_keeps_the_average_rate_without_bursting_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // 1 MiB at 1 MiB/s: the next chunk is due a second after the start.
        assert_eq!(p.wait_after(1 << 20, 1 << 20, t0), Duration::from_secs(1));
        // Hashing took 0.25 s of it already: 0.75 s left.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(p.wait_after(0, 1 << 20, t1), Duration::from_millis(750));
        // On schedule: two more MiB are due at 3 s.
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(p.wait_after(2 << 20, 1 << 20, t2), Duration::from_secs(2));
        // Far behind (a stall): no wait, and no catching up afterwards —
        // the next MiB waits its full second again.
        let t3 = t0 + Duration::from_secs(10);
        assert_eq!(p.wait_after(1 << 20, 1 << 20, t3), Duration::ZERO);
        assert_eq!(p.wait_after(1 << 20, 1 << 20, t3), Duration::from_secs(1));
        // A new rate starts a new window: 1 MiB at 2 MiB/s is half a second.
        assert_eq!(
            p.wait_after(1 << 20, 2 << 20, t3),
            Duration::from_millis(500)
        );
        // A rate of 0 is taken as 1 byte/s, never a division by zero.
        let mut p = Pacer::new(t0);
        assert_eq!(p.wait_after(2, 0, t0), Duration::from_secs(2));
    }

    #[test]
    fn chunks_shrink_with_the_rate_within_bounds() {
        assert_eq!(chunk_for(1 << 30), 1 << 20);
        assert_eq!(chunk_for(1 << 20), 256 << 10);
        assert_eq!(chunk_for(1000), 64 << 10);
    }

    #[derive(Default)]
    struct Seen {
        plan: Mutex<Option<VerifyPlan>>,
        bytes: Mutex<u64>,
        problems: Mutex<Vec<Problem>>,
    }

    impl VerifyProgress for Seen {
        fn planned(&self, plan: &VerifyPlan) {
            *self.plan.lock() = Some(plan.clone());
        }
        fn checked(&self, bytes: u64) {
            *self.bytes.lock() += bytes;
        }
        fn found(&self, problem: &Problem) {
            self.problems.lock().push(problem.clone());
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<MemoryStore>,
        index: Arc<Index>,
        metrics: Arc<Metrics>,
        cache: Cache,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let index = Arc::new(Index::open(&dir.path().join("index")).unwrap());
        let metrics = Arc::new(Metrics::new());
        let cache =
            Cache::with_storage(Storage::new(store.clone()), index.clone(), metrics.clone());
        Fixture {
            _dir: dir,
            store,
            index,
            metrics,
            cache,
        }
    }

    fn put(f: &Fixture, kind: Kind, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        f.store.write_whole(kind, &d, bytes).unwrap();
        f.index.record(kind, &d, bytes.len() as u64, None).unwrap();
        d
    }

    fn corrupt_evictions(m: &Metrics) -> u64 {
        m.evictions.with_label_values(&["corrupt"]).get()
    }

    #[tokio::test]
    async fn an_online_pass_reports_and_with_repair_quarantines_corrupt_objects() {
        let f = fixture();
        let good = put(&f, Kind::Blob, &[7u8; 300_000]);
        let bad = put(&f, Kind::Blob, b"will rot");
        let manifest = put(&f, Kind::Manifest, br#"{"schemaVersion":2}"#);
        f.store.corrupt(Kind::Blob, &bad, b"will roT");

        let ticket = f.cache.verify_ticket().unwrap();
        assert!(
            f.cache.verify_ticket().is_none(),
            "one admin pass at a time"
        );
        let seen = Seen::default();
        let pass = f.cache.verify_online(&ticket, false, &seen).await.unwrap();
        assert!(pass.complete);
        assert_eq!(pass.report.files_checked, 3);
        assert_eq!(
            *seen.plan.lock(),
            Some(VerifyPlan {
                files: 3,
                bytes: 300_000 + 8 + 19
            })
        );
        assert_eq!(*seen.bytes.lock(), 300_000 + 8 + 19);
        assert!(
            matches!(&pass.report.problems[..], [Problem::Corrupt { digest, .. }] if *digest == bad.to_string())
        );
        assert_eq!(*seen.problems.lock(), pass.report.problems);
        assert!(!pass.report.repaired);
        assert!(f.store.contains(Kind::Blob, &bad).unwrap(), "reported only");
        assert_eq!(corrupt_evictions(&f.metrics), 0);

        let pass = f.cache.verify_online(&ticket, true, &Quiet).await.unwrap();
        assert!(pass.report.repaired);
        assert!(!f.store.contains(Kind::Blob, &bad).unwrap());
        assert!(f.index.get(Kind::Blob, &bad).unwrap().is_none());
        assert_eq!(corrupt_evictions(&f.metrics), 1);
        for (kind, d) in [(Kind::Blob, &good), (Kind::Manifest, &manifest)] {
            assert!(f.store.contains(kind, d).unwrap());
            assert!(f.index.get(kind, d).unwrap().is_some());
        }
        assert_eq!(
            f.metrics.verified_bytes.with_label_values(&["admin"]).get(),
            2 * (300_000 + 8 + 19)
        );
        drop(ticket);
        assert!(f.cache.verify_ticket().is_some(), "released when dropped");
    }

    #[tokio::test]
    async fn a_scrub_pass_resumes_where_it_stopped_and_stops_at_shutdown() {
        let f = fixture();
        let mut digests: Vec<Digest> = (0..4u8).map(|i| put(&f, Kind::Blob, &[i; 10])).collect();
        digests.sort_by(|a, b| a.hex().cmp(b.hex()));
        f.cache.configure_scrub(ScrubSettings {
            interval: Some(Duration::from_secs(3600)),
            bytes_per_second: 1 << 30,
        });
        // A restart interrupted a pass after the second blob.
        f.index
            .set_note(
                MARK,
                &Mark {
                    started_at: now_millis(),
                    resume: Some(Position {
                        kind: 0,
                        after: digests[1].hex().to_owned(),
                    }),
                },
            )
            .unwrap();
        assert_eq!(
            f.cache.scrub_due_in(Duration::from_secs(3600)).unwrap(),
            Duration::ZERO
        );
        f.store
            .corrupt(Kind::Blob, &digests[0], b"not checked again");
        f.store.corrupt(Kind::Blob, &digests[3], b"found");
        let pass = f.cache.pass(Mode::Scrub, &Quiet).await.unwrap();
        assert!(pass.complete);
        assert_eq!(pass.report.files_checked, 2, "only the rest of the pass");
        assert_eq!(pass.report.problems.len(), 1);
        assert!(!f.store.contains(Kind::Blob, &digests[3]).unwrap());
        assert!(f.store.contains(Kind::Blob, &digests[0]).unwrap());
        // Between passes: the next one is due an interval after this one began.
        let mark: Mark = f.index.note(MARK).unwrap().unwrap();
        assert_eq!(mark.resume, None);
        let due = f.cache.scrub_due_in(Duration::from_secs(3600)).unwrap();
        assert!(due > Duration::from_secs(3500), "{due:?}");

        // The next pass starts from the beginning and finds the first one.
        f.index.set_note(MARK, &Mark::default()).unwrap();
        let pass = f.cache.pass(Mode::Scrub, &Quiet).await.unwrap();
        assert_eq!(pass.report.files_checked, 3);
        assert_eq!(corrupt_evictions(&f.metrics), 2);

        // Shutdown stops a pass before its next object, keeping its place.
        f.index.set_note(MARK, &Mark::default()).unwrap();
        f.cache.stop_background();
        let pass = f.cache.pass(Mode::Scrub, &Quiet).await.unwrap();
        assert!(!pass.complete);
        assert_eq!(pass.report.files_checked, 0);
        let mark: Mark = f.index.note(MARK).unwrap().unwrap();
        assert!(mark.resume.is_some());
        // And the loop returns at once.
        tokio::time::timeout(Duration::from_secs(5), f.cache.scrub())
            .await
            .unwrap();
    }
}
