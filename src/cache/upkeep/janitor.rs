//! The bucket janitor: applies `[cache] max_size` and `max_age` to the
//! shared tier, one replica at a time.
//!
//! A run: claim `leases/janitor` (held fresh by another replica: skipped);
//! list every content object; merge every replica's access batches (the
//! newest time per digest wins; an object nobody recorded counts from its
//! `Last-Modified`); remove what is older than `max_age`, and when the
//! bucket is above the high-water mark, the least recently used down to
//! the low-water mark; then write what it merged back as one batch and
//! delete the batches it consumed, so their number stays bounded.
//!
//! Never removed: an object a live fill lease names, or one accessed within
//! `lease_ttl * 2` (a read may be open on some replica). A delete is
//! guarded by the ETag the listing showed ([`Bucket::remove_if_unchanged`]),
//! so content rewritten meanwhile stays. Whatever the janitor gets wrong
//! costs a refetch from an upstream, never a wrong byte: every reader
//! verifies what it reads.
//!
//! Access times are the replicas' clocks (unix ms); lease ages the store's.
//! Every store call is bounded by `request_timeout`, the whole run by
//! `run_timeout`, and memory by the bucket's object count (one small entry
//! per object) plus one access batch at a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::access::{self, AccessLog, MAX_BATCH_BYTES};
use crate::cache::storage::bucket::lease::{Claim, Holder, Lease, CLOCK_MARGIN};
use crate::cache::storage::bucket::listing::{AccessBatch, BucketObject, FillLeaseEntry};
use crate::cache::storage::bucket::{Bucket, BucketError};
use crate::cache::storage::index::now_millis;
use crate::cache::storage::Kind;
use crate::config::CacheConfig;
use crate::metrics::SharedTierMetrics;
use crate::registry::Digest;

/// The janitor's lease: `leases/janitor`.
pub const LEASE: &str = "janitor";
/// The merged batches go under this name in place of a replica's.
pub const MERGED: &str = "_merged";
/// Entries asked of the store per listing call.
const PAGE: usize = 1000;
/// Access batches merged per run; the rest wait for the next.
const MAX_BATCHES_PER_RUN: usize = 2000;
/// Records kept for digests the listing did not show (filled during the
/// run); beyond this they are dropped, which only ages those digests.
const MAX_UNLISTED: usize = 100_000;
/// Fill leases removed per run once abandoned.
const MAX_LEASES_REMOVED: usize = 10_000;
/// A fill lease nobody renewed for this long (and at least ten TTLs) is
/// abandoned: its holder finished or died long ago.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// The bounds a janitor applies, from `[cache]` and `[cluster]`.
#[derive(Debug, Clone, PartialEq)]
pub struct JanitorSettings {
    /// `[cluster] replica_id`: names this replica in the janitor lease.
    pub replica_id: String,
    /// Eviction by size starts above this many bytes…
    pub high_water: Option<u64>,
    /// …and removes the least recently used down to this many.
    pub low_water: Option<u64>,
    pub max_age: Option<Duration>,
    /// `[cluster] lease_ttl`: the janitor lease's TTL, the fill leases'
    /// staleness, and half the window in which a recent access protects.
    pub lease_ttl: Duration,
    /// A whole run is cut off after this long.
    pub run_timeout: Duration,
}

impl JanitorSettings {
    /// The `[cache]` bounds (`max_size` with `high_water`/`low_water`,
    /// `max_age`) for a replica whose leases last `lease_ttl`.
    pub fn from_config(
        cache: &CacheConfig,
        replica_id: &str,
        lease_ttl: Duration,
        run_timeout: Duration,
    ) -> JanitorSettings {
        JanitorSettings {
            replica_id: replica_id.to_owned(),
            high_water: cache.high_water_bytes(),
            low_water: cache.low_water_bytes(),
            max_age: cache.max_age.map(|d| d.get()),
            lease_ttl,
            run_timeout,
        }
    }

    /// An access this recent protects an object (a read may be open).
    fn open_window(&self) -> Duration {
        self.lease_ttl * 2
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JanitorReport {
    /// Another replica holds the janitor lease (its id): nothing was done.
    pub skipped_for: Option<String>,
    /// Content objects and their bytes in the bucket after the run.
    pub objects: u64,
    pub bytes: u64,
    pub evicted_age: u64,
    pub evicted_size: u64,
    pub evicted_bytes: u64,
    /// Due for eviction, kept: a live fill lease names it.
    pub kept_leased: u64,
    /// Due for eviction, kept: accessed within `lease_ttl * 2`.
    pub kept_open: u64,
    /// Due for eviction, kept: rewritten since the listing.
    pub changed: u64,
    /// Access batches merged and deleted, and merged batches written.
    pub batches_merged: u64,
    pub batches_written: u64,
    /// Abandoned fill leases removed.
    pub fill_leases_removed: u64,
}

impl JanitorReport {
    pub fn skipped(&self) -> bool {
        self.skipped_for.is_some()
    }

    fn skipped_for(holder: String) -> JanitorReport {
        JanitorReport {
            skipped_for: Some(holder),
            ..JanitorReport::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("the janitor lease was taken over during the run")]
    LeaseLost,
    #[error("the janitor run did not finish within {0:?}")]
    Timeout(Duration),
}

/// Why an object leaves the bucket (the `reason` label of
/// `regcache_bucket_evicted_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Size,
    Age,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Age => "age",
        }
    }
}

pub struct Janitor {
    bucket: Bucket,
    settings: JanitorSettings,
    metrics: Arc<SharedTierMetrics>,
    claims: AtomicU64,
    /// Whether the last run failed: a WARN on each change, not each run.
    failing: AtomicBool,
    /// This replica's own records, flushed before each run so the run
    /// sees them.
    log: Option<Arc<AccessLog>>,
}

impl Janitor {
    pub fn new(
        bucket: Bucket,
        settings: JanitorSettings,
        metrics: Arc<SharedTierMetrics>,
    ) -> Janitor {
        Janitor {
            bucket,
            settings,
            metrics,
            claims: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            log: None,
        }
    }

    /// Flushes this replica's access log before each run.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Janitor {
        self.log = Some(log);
        self
    }

    /// One run, if this replica wins the janitor lease; counted in
    /// `regcache_janitor_runs_total{result}`.
    pub async fn run_once(&self) -> Result<JanitorReport, JanitorError> {
        if let Some(log) = &self.log {
            if let Err(e) = log.flush(&self.bucket).await {
                tracing::debug!(error = %e, "access records not written before the janitor run");
            }
        }
        let result = self.run_at(now_millis()).await;
        let label = match &result {
            Ok(r) if r.skipped() => "skipped",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.metrics.janitor_runs.with_label_values(&[label]).inc();
        result
    }

    /// Runs every `interval` until `shutdown` turns true (a run in progress
    /// is then abandoned; its lease goes stale by itself).
    pub async fn run(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            let woke = tokio::select! {
                _ = tokio::time::sleep(interval) => None,
                changed = shutdown.changed() => Some(changed.is_ok()),
            };
            match woke {
                None => {}
                Some(false) => return,
                Some(true) if *shutdown.borrow() => return,
                Some(true) => continue,
            }
            let result = tokio::select! {
                result = self.run_once() => result,
                _ = stopped(&mut shutdown) => return,
            };
            self.log(result);
        }
    }

    fn log(&self, result: Result<JanitorReport, JanitorError>) {
        match result {
            Ok(report) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("bucket janitor runs again");
                }
                if report.skipped() {
                    tracing::debug!(holder = ?report.skipped_for, "bucket janitor: another replica holds the lease");
                } else if report.evicted_age + report.evicted_size > 0 {
                    tracing::info!(
                        objects = report.objects,
                        bytes = report.bytes,
                        evicted_age = report.evicted_age,
                        evicted_size = report.evicted_size,
                        evicted_bytes = report.evicted_bytes,
                        kept_leased = report.kept_leased,
                        kept_open = report.kept_open,
                        "bucket janitor run"
                    );
                } else {
                    tracing::debug!(
                        objects = report.objects,
                        bytes = report.bytes,
                        batches_merged = report.batches_merged,
                        "bucket janitor run"
                    );
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "bucket janitor run failed; retrying at the next interval");
                }
            }
        }
    }

    fn holder(&self) -> Holder {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Holder {
            replica: self.settings.replica_id.clone(),
            url: String::new(),
            nonce: format!("janitor-{nanos:x}-{n}"),
            done: false,
        }
    }

    /// A run as if the replicas' clocks said `now_ms` (tests move it on).
    async fn run_at(&self, now_ms: u64) -> Result<JanitorReport, JanitorError> {
        let me = self.holder();
        let ttl = self.settings.lease_ttl;
        let lease = match self.bucket.claim_named(LEASE, &me, ttl).await? {
            Claim::Won(lease) => lease,
            Claim::Held { holder, .. } => return Ok(JanitorReport::skipped_for(holder.replica)),
            Claim::Stale { holder, seen, .. } => {
                match self.bucket.take_over_named(LEASE, &me, seen).await? {
                    Some(lease) => lease,
                    None => return Ok(JanitorReport::skipped_for(holder.replica)),
                }
            }
        };
        let keeper = Keeper::start(self.bucket.clone(), lease, ttl);
        let mut report = JanitorReport::default();
        let limit = self.settings.run_timeout;
        let walked = tokio::time::timeout(limit, self.walk(now_ms, &keeper, &mut report)).await;
        keeper.stop().await;
        match walked {
            Err(_) => Err(JanitorError::Timeout(limit)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(report),
        }
    }

    async fn walk(
        &self,
        now_ms: u64,
        keeper: &Keeper,
        report: &mut JanitorReport,
    ) -> Result<(), JanitorError> {
        let ttl = self.settings.lease_ttl;

        let mut objects: Vec<BucketObject> = Vec::new();
        for kind in Kind::ALL {
            let mut pages = self.bucket.list_content(kind);
            while let Some(page) = pages.next_page(PAGE).await? {
                keeper.check()?;
                objects.extend(page);
            }
        }
        let index: HashMap<(Kind, Digest), usize> = objects
            .iter()
            .enumerate()
            .map(|(i, o)| ((o.kind, o.digest.clone()), i))
            .collect();

        let mut batches: Vec<AccessBatch> = Vec::new();
        let mut pages = self.bucket.list_access_batches();
        while let Some(page) = pages.next_page(PAGE).await? {
            keeper.check()?;
            batches.extend(page);
            if batches.len() >= MAX_BATCHES_PER_RUN {
                batches.truncate(MAX_BATCHES_PER_RUN);
                break;
            }
        }
        let mut last: Vec<Option<u64>> = vec![None; objects.len()];
        let mut unlisted: HashMap<(Kind, Digest), u64> = HashMap::new();
        let recent = now_ms.saturating_sub(millis(self.settings.open_window()));
        let mut consumed = Vec::new();
        for batch in batches {
            keeper.check()?;
            let body = match self.bucket.read_access_batch(&batch, MAX_BATCH_BYTES).await {
                Ok(Some(body)) => body,
                Ok(None) => continue,
                Err(e @ BucketError::TooLarge { .. }) => {
                    // No replica writes one: dropped, or it would stop every run.
                    tracing::warn!(error = %e, "bucket janitor: an access batch too large to read; removing it");
                    consumed.push(batch);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for (kind, digest, t) in access::decode(&body) {
                let key = (kind, digest);
                if let Some(&i) = index.get(&key) {
                    last[i] = Some(last[i].map_or(t, |l| l.max(t)));
                } else if t >= recent && (unlisted.len() < MAX_UNLISTED) {
                    let slot = unlisted.entry(key).or_insert(t);
                    *slot = (*slot).max(t);
                }
            }
            consumed.push(batch);
        }

        let store_now = self.bucket.store_now(&self.settings.replica_id).await?;
        let store_started = Instant::now();
        let mut leased: HashSet<Digest> = HashSet::new();
        let mut abandoned: Vec<FillLeaseEntry> = Vec::new();
        let abandoned_after = ABANDONED_AFTER.max(ttl * 10);
        let mut pages = self.bucket.list_fill_leases();
        while let Some(page) = pages.next_page(PAGE).await? {
            keeper.check()?;
            for entry in page {
                let age = store_now
                    .duration_since(entry.last_modified)
                    .unwrap_or(Duration::ZERO);
                if age <= ttl + CLOCK_MARGIN {
                    leased.insert(entry.digest);
                } else if age > abandoned_after && abandoned.len() < MAX_LEASES_REMOVED {
                    abandoned.push(entry);
                }
            }
        }

        let plan = plan(&objects, &last, &leased, now_ms, &self.settings);
        report.kept_leased = plan.kept_leased;
        report.kept_open = plan.kept_open;
        let mut remaining = plan.total;
        let mut gone = vec![false; objects.len()];
        for (i, reason) in plan.evict {
            keeper.check()?;
            let o = &objects[i];
            let now = store_now + store_started.elapsed();
            if self.bucket.live_fill_lease(&o.digest, ttl, now).await? {
                report.kept_leased += 1;
                continue;
            }
            if !self
                .bucket
                .remove_if_unchanged(o.kind, &o.digest, &o.stored())
                .await?
            {
                report.changed += 1;
                continue;
            }
            gone[i] = true;
            remaining -= o.size;
            report.evicted_bytes += o.size;
            match reason {
                Reason::Age => report.evicted_age += 1,
                Reason::Size => report.evicted_size += 1,
            }
            self.metrics
                .evicted
                .with_label_values(&[reason.label()])
                .inc();
            self.metrics.bucket_bytes.set(gauge(remaining));
            tracing::debug!(kind = o.kind.label(), digest = %o.digest, size = o.size, reason = reason.label(), "evicted from the bucket");
        }
        report.objects = gone.iter().filter(|g| !**g).count() as u64;
        report.bytes = remaining;
        self.metrics.bucket_bytes.set(gauge(remaining));

        for entry in &abandoned {
            keeper.check()?;
            if self.bucket.remove_fill_lease_if_unchanged(entry).await? {
                report.fill_leases_removed += 1;
            }
        }

        // Compaction: what was merged goes back as one batch (more only
        // past a batch's capacity), then the consumed ones go. Nothing to
        // do when all there was is an earlier merge and nothing left.
        let nothing_new = consumed.iter().all(is_merged) && consumed.len() <= 1;
        if consumed.is_empty() || (nothing_new && report.evicted_age + report.evicted_size == 0) {
            return Ok(());
        }
        let mut merged: Vec<((Kind, Digest), u64)> = objects
            .iter()
            .zip(&last)
            .zip(&gone)
            .filter(|(_, gone)| !**gone)
            .filter_map(|((o, t), _)| t.map(|t| ((o.kind, o.digest.clone()), t)))
            .collect();
        merged.extend(unlisted);
        let counter = AtomicU64::new(0);
        for chunk in merged.chunks(access::DEFAULT_CAPACITY) {
            keeper.check()?;
            let body = access::encode(chunk.iter().map(|(k, t)| (k, t)));
            self.bucket
                .put_access_batch(MERGED, &access::batch_name(&counter), body)
                .await?;
            report.batches_written += 1;
        }
        for batch in &consumed {
            keeper.check()?;
            self.bucket.remove_access_batch(batch).await?;
            report.batches_merged += 1;
        }
        Ok(())
    }
}

/// A batch an earlier run merged.
fn is_merged(batch: &AccessBatch) -> bool {
    let name = batch.name();
    let mut parts = name.rsplit('/');
    parts.next();
    parts.next() == Some(MERGED)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn gauge(bytes: u64) -> i64 {
    bytes.min(i64::MAX as u64) as i64
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// What a run will try to remove, oldest first within each reason.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    evict: Vec<(usize, Reason)>,
    /// Bytes listed.
    total: u64,
    kept_leased: u64,
    kept_open: u64,
}

/// Decides from the listing alone (no store calls), so it can be tested
/// on any clock.
fn plan(
    objects: &[BucketObject],
    last: &[Option<u64>],
    leased: &HashSet<Digest>,
    now_ms: u64,
    settings: &JanitorSettings,
) -> Plan {
    let mut plan = Plan {
        total: objects.iter().map(|o| o.size).sum(),
        ..Plan::default()
    };
    let accessed: Vec<u64> = objects
        .iter()
        .zip(last)
        .map(|(o, t)| unix_ms(o.last_modified).max(t.unwrap_or(0)))
        .collect();
    let open = millis(settings.open_window());
    // Whether object `i` may go; counts each kept object once, however
    // many bounds it was due under.
    let mut kept = vec![false; objects.len()];
    let mut may_go = |i: usize, plan: &mut Plan| {
        let leased = leased.contains(&objects[i].digest);
        let open_read = now_ms.saturating_sub(accessed[i]) < open;
        if (leased || open_read) && !std::mem::replace(&mut kept[i], true) {
            if leased {
                plan.kept_leased += 1;
            } else {
                plan.kept_open += 1;
            }
        }
        !leased && !open_read
    };

    let mut chosen = vec![false; objects.len()];
    let mut remaining = plan.total;
    if let Some(max_age) = settings.max_age {
        let max_age = millis(max_age);
        let mut old: Vec<usize> = (0..objects.len())
            .filter(|&i| now_ms.saturating_sub(accessed[i]) > max_age)
            .collect();
        old.sort_by_key(|&i| accessed[i]);
        for i in old {
            if may_go(i, &mut plan) {
                chosen[i] = true;
                remaining -= objects[i].size;
                plan.evict.push((i, Reason::Age));
            }
        }
    }
    if let Some(high) = settings.high_water {
        if remaining > high {
            let low = settings.low_water.unwrap_or(high).min(high);
            let mut lru: Vec<usize> = (0..objects.len()).filter(|&i| !chosen[i]).collect();
            lru.sort_by(|&a, &b| {
                accessed[a]
                    .cmp(&accessed[b])
                    .then_with(|| objects[b].size.cmp(&objects[a].size))
            });
            for i in lru {
                if remaining <= low {
                    break;
                }
                if may_go(i, &mut plan) {
                    chosen[i] = true;
                    remaining -= objects[i].size;
                    plan.evict.push((i, Reason::Size));
                }
            }
        }
    }
    plan
}

/// Keeps the janitor lease renewed while a run works, every `ttl / 3`,
/// and says when it was lost. Dropped without [`Keeper::stop`] (the run
/// was cancelled), it stops renewing and the lease goes stale by itself.
struct Keeper {
    bucket: Bucket,
    lost: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Option<Lease>>>,
}

impl Keeper {
    fn start(bucket: Bucket, mut lease: Lease, ttl: Duration) -> Keeper {
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let every = (ttl / 3).max(Duration::from_millis(100));
        let task = tokio::spawn({
            let bucket = bucket.clone();
            let lost = lost.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => return Some(lease),
                        _ = tokio::time::sleep(every) => {}
                    }
                    match bucket.renew(&mut lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("bucket janitor lease taken over by another replica; stopping this run");
                            lost.store(true, Ordering::Relaxed);
                            return None;
                        }
                        // The store hiccuped: the next tick tries again, and
                        // a lease that goes stale meanwhile is lost above.
                        Err(e) => tracing::debug!(error = %e, "janitor lease not renewed"),
                    }
                }
            }
        });
        Keeper {
            bucket,
            lost,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn check(&self) -> Result<(), JanitorError> {
        if self.lost.load(Ordering::Relaxed) {
            Err(JanitorError::LeaseLost)
        } else {
            Ok(())
        }
    }

    /// Stops renewing and marks the lease done, so the next run (of any
    /// replica) may claim it at once.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        if let Ok(Some(lease)) = task.await {
            if let Err(e) = self.bucket.release(lease).await {
                tracing::debug!(error = %e, "janitor lease not released; it goes stale by itself");
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
