//! The cache as a service: the HTTP surface, the CLI and the admin API ask
//! it whole questions — a blob, a manifest, a listing, a purge, a prefetch,
//! an import — and turn its answers into responses. How it answers is
//! inside, grouped by role:
//!
//! - `storage`: content behind [`storage::ContentStore`], tag records
//!   behind [`storage::TagStore`] (the filesystem backend and an in-memory
//!   one), and the sled index beside them, rebuildable from the store.
//! - `flight`: one upstream fetch per blob (fills) or per manifest question
//!   (single flights), and the bodies that stream from them.
//! - `freshness`: tags, listings, remembered 404s, the hot manifest set.
//! - `ops`: eviction, verify and the online scrub, purge and summaries,
//!   prefetch, bundles.

mod answer;
mod error;
pub mod flight;
pub mod freshness;
mod health;
mod ops;
mod outcome;
pub mod shared;
pub mod storage;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

pub use answer::{AnswerError, BlobAnswer, BlobBody, ManifestAnswer};
pub use error::CacheError;
pub use flight::{RunningFill, IO_CHUNK, UNKNOWN_SIZE};
pub use freshness::{Listing, Manifest, MAX_MANIFEST_SIZE};
pub use health::Floor;
pub use ops::bundle;
pub use ops::content_view;
pub use ops::evict::{GcReport, Pins, Policy, Reason};
pub use ops::manage;
pub use ops::prefetch;
pub use ops::scrub;
pub use ops::tags;
pub use ops::verify;
pub use outcome::Outcome;
pub use storage::index::{ContentEntry, Index, IndexError, ReconcileReport, Totals};
pub use storage::{FsStore, Kind, MemoryStore, Storage, TagEntry, TagRecord};

use flight::{Fills, Readers};
use freshness::{ListingCache, ManifestCache};
use health::Health;
use ops::evict::Evictor;
use shared::SharedTier;

use crate::metrics::Metrics;
use crate::registry::{Digest, RepoName};
use crate::upstream::Upstream;

/// Everything the HTTP surface, the CLI and the admin API ask of the cache.
/// Its parts are private: callers get answers, not the machinery.
pub struct Cache {
    /// Content and tag records: the source of truth.
    storage: Storage,
    /// What is cached, for lookups, eviction and summaries.
    index: Arc<Index>,
    /// Blob fills running now, one per digest.
    fills: Arc<Fills>,
    /// Tags and manifests: freshness, the hot set, single flights.
    manifests: ManifestCache,
    /// Tag lists and referrers.
    listings: ListingCache,
    /// Blobs being served from committed objects (never evicted meanwhile).
    readers: Arc<Readers>,
    evictor: Arc<Evictor>,
    /// Room above the free-space floor, and whether writes succeed.
    health: Arc<Health>,
    /// The scrub's settings and the online verify's bookkeeping.
    integrity: scrub::Integrity,
    metrics: Arc<Metrics>,
    /// Every fill, flight and background job of the cache, so shutdown
    /// waits for them instead of polling.
    tasks: TaskTracker,
    /// The bucket shared with other replicas (`[cache] backend = "s3"`).
    shared: Option<Arc<SharedTier>>,
}

impl Cache {
    /// Opens the filesystem store (removing crash leftovers) and the index
    /// (moving an unreadable one aside). Reconciling the two is
    /// [`Cache::reconcile`], run in the background so startup stays fast.
    ///
    /// The index is opened first: it is locked by whichever process has it,
    /// so a second process on the same directory fails here instead of
    /// emptying the running one's `tmp/`.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Cache, CacheError> {
        Cache::open_tiered(dir, metrics, None)
    }

    /// As [`Cache::open`], with a shared tier behind the local disk.
    pub fn open_tiered(
        dir: &Path,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedTier>>,
    ) -> Result<Cache, CacheError> {
        let index = Arc::new(Index::open(&dir.join("index"))?);
        let store = Arc::new(FsStore::open(dir)?);
        Ok(Cache::with_tiers(
            Storage::new(store),
            index,
            metrics,
            shared,
        ))
    }

    /// A cache over any storage backend.
    pub fn with_storage(storage: Storage, index: Arc<Index>, metrics: Arc<Metrics>) -> Cache {
        Cache::with_tiers(storage, index, metrics, None)
    }

    /// A cache over any storage backend, and a shared tier when given.
    pub fn with_tiers(
        storage: Storage,
        index: Arc<Index>,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedTier>>,
    ) -> Cache {
        let tasks = TaskTracker::new();
        let health = Arc::new(Health::new(
            storage.content.clone(),
            index.clone(),
            metrics.clone(),
        ));
        let fills = Arc::new(Fills::new(
            storage.content.clone(),
            index.clone(),
            health.clone(),
            metrics.clone(),
            tasks.clone(),
            shared.clone(),
        ));
        let manifests = ManifestCache::new(
            storage.clone(),
            index.clone(),
            health.clone(),
            metrics.clone(),
            tasks.clone(),
            shared.clone(),
        );
        let listings = ListingCache::new(index.clone(), metrics.clone(), tasks.clone());
        let readers = Arc::new(Readers::default());
        let evictor = Arc::new(Evictor::new(
            storage.clone(),
            index.clone(),
            readers.clone(),
            health.clone(),
            metrics.clone(),
        ));
        Cache {
            storage,
            index,
            fills,
            manifests,
            listings,
            readers,
            evictor,
            health,
            integrity: scrub::Integrity::default(),
            metrics,
            tasks,
            shared,
        }
    }

    /// Whether `repo` may read content that is already here. Content of an
    /// upstream with credentials may be private: it is served through a
    /// repository only once the upstream has shown that repository holds
    /// it (a fill through it, or a HEAD now), never by digest alone. Fails
    /// closed when the upstream cannot be asked.
    async fn authorize_cached(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        if !upstream.may_hold_private_content()
            || self.index.has_link(&upstream.name, repo.as_str(), digest)?
        {
            return Ok(());
        }
        // Another replica learned it through this repository.
        if let Some(shared) = &self.shared {
            if shared
                .is_linked(&upstream.name, repo.as_str(), digest)
                .await
            {
                self.index.link(&upstream.name, repo.as_str(), digest)?;
                return Ok(());
            }
        }
        let suffix = match kind {
            Kind::Blob => format!("blobs/{digest}"),
            Kind::Manifest => format!("manifests/{digest}"),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(crate::registry::MANIFEST_ACCEPT),
        );
        upstream
            .request(http::Method::HEAD, repo, &suffix, None, headers)
            .await?
            .require_ok(kind.label())?;
        self.index.link(&upstream.name, repo.as_str(), digest)?;
        if let Some(shared) = &self.shared {
            shared.publish_link(&upstream.name, repo.as_str(), digest);
        }
        Ok(())
    }

    /// Brings the index in line with the store: content entries with the
    /// objects, and tags with the tag records — every start, since a
    /// record can be newer than the index when the process died before the
    /// index's next flush (kill -9 a second after a pull). Blocks: call it
    /// on the blocking pool.
    pub fn reconcile(&self) -> Result<ReconcileReport, CacheError> {
        let mut report = self.index.reconcile(self.storage.content.as_ref())?;
        report.tags_restored = self.restore_tags()?;
        if !self.index.tags_restored()? {
            // A cache from before tag records: its tags get theirs, once.
            self.record_index_only_tags()?;
            self.index.mark_tags_restored()?;
        }
        self.index.flush()?;
        Ok(report)
    }

    /// Takes the tag records that are newer than the index's (or unknown
    /// to it) into the index, and links each restored tag's image to its
    /// repository, as the pull that cached it did: the upstream said the
    /// repository holds that manifest, and a registry holds a manifest only
    /// with its blobs.
    fn restore_tags(&self) -> Result<usize, CacheError> {
        let mut restored = 0;
        for r in self.storage.tags.tag_records()? {
            let known = self.index.tag(&r.upstream, &r.repo, &r.tag)?;
            if known.is_none_or(|e| r.entry.checked_at > e.checked_at) {
                self.index.set_tag(&r.upstream, &r.repo, &r.tag, &r.entry)?;
                let image = ops::reachable::reachable(
                    self.storage.content.as_ref(),
                    [r.entry.digest.clone()],
                );
                for d in image.manifests.iter().chain(&image.blobs) {
                    self.index.link(&r.upstream, &r.repo, d)?;
                }
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Writes a record for every tag only the index knows.
    fn record_index_only_tags(&self) -> Result<(), CacheError> {
        let on_file: std::collections::HashSet<_> = self
            .storage
            .tags
            .tag_records()?
            .into_iter()
            .map(|r| (r.upstream, r.repo, r.tag))
            .collect();
        for t in self.index.all_tags()? {
            if !on_file.contains(&(t.upstream.clone(), t.repo.clone(), t.tag.clone())) {
                self.storage.tags.put_tag(&t)?;
            }
        }
        Ok(())
    }

    // === Eviction ===

    /// Sets the size and age bounds and the pins (at startup and reload).
    pub fn configure_eviction(&self, policy: Policy, pins: Pins) {
        self.health.set_floor(policy.min_free);
        self.evictor.configure(policy, pins);
    }

    pub fn eviction_policy(&self) -> Policy {
        self.evictor.policy()
    }

    /// One eviction run. Blocks: call it on the blocking pool.
    pub fn evict(&self) -> Result<GcReport, CacheError> {
        Ok(self.evictor.run()?)
    }

    /// Resolves when a new entry pushed the cache past its high-water
    /// mark, or a fill found the store below its free-space floor.
    pub async fn over_high_water(&self) {
        tokio::select! {
            _ = self.index.wait_over_high_water() => {}
            _ = self.health.low_space() => {}
        }
    }

    // === Storage health ===

    /// `Err(why)` while storage writes fail: `/readyz` answers 503.
    pub fn ready(&self) -> Result<(), String> {
        self.health.ready()
    }

    /// Brings storage back after failed writes, once they can succeed
    /// (blocking: the daemon calls it every few seconds on the blocking
    /// pool). A failed index is reopened and reconciled with the store —
    /// what sled lost in the failure is taken back from the files and tag
    /// records — and a noted write failure is cleared by a probe write.
    pub fn heal(&self) -> Result<(), CacheError> {
        // sled notes a failed write in its own flusher thread; the index
        // learns of it from the next call that returns it, which this
        // flush is, so the failure is seen even while nothing else writes.
        if let Err(e) = self.index.flush() {
            tracing::debug!(error = %e, "index flush failed");
        }
        if self.index.recover()? {
            let report = self.reconcile()?;
            tracing::warn!(
                added = report.added,
                dropped = report.dropped,
                tags_restored = report.tags_restored,
                "index reconciled after its reopen"
            );
        }
        self.health.probe();
        // Refreshes the free-space gauge, and wakes eviction below the floor.
        if self.health.room_for(None).is_err() {
            tracing::debug!("below the free-space floor or not writable");
        }
        Ok(())
    }

    // === Bookkeeping ===

    /// Writes the batched access times. Blocks (briefly): sled.
    pub fn flush_access_times(&self) -> Result<(), CacheError> {
        Ok(self.index.flush_access_times()?)
    }

    /// Bytes the index records, walked now (right before a reconcile,
    /// when the running totals are not).
    pub fn indexed_bytes(&self) -> Result<u64, CacheError> {
        let mut total = 0;
        for kind in Kind::ALL {
            total += self
                .index
                .entries(kind)?
                .iter()
                .map(|(_, e)| e.size)
                .sum::<u64>();
        }
        Ok(total)
    }

    pub fn totals(&self, kind: Kind) -> Totals {
        self.index.totals(kind)
    }

    /// Blobs being streamed to clients from committed objects now.
    pub fn open_blobs(&self) -> usize {
        self.readers.open_blobs()
    }

    pub fn fills_in_progress(&self) -> usize {
        self.fills.in_progress()
    }

    /// The running fills with their progress (for the status page).
    pub fn running_fills(&self) -> Vec<RunningFill> {
        self.fills.running()
    }

    /// Runs a blocking job of the cache (an eviction run, the reconcile)
    /// under the same tracker as fills, so shutdown waits for it. Jobs must
    /// end by themselves: a loop around them stays outside.
    pub fn spawn_blocking<F, T>(&self, job: F) -> tokio::task::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.tasks.spawn_blocking(job)
    }

    /// Waits, up to `grace`, for every fill, flight and background job to
    /// end; returns how many were still running when it gave up. New work
    /// may still start meanwhile (a fill a last client asked for).
    pub async fn drain(&self, grace: Duration) -> usize {
        self.stop_background();
        self.tasks.close();
        let started = tokio::time::Instant::now();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        // Uploads and lease releases of the fills that just ended.
        if let Some(shared) = &self.shared {
            shared.drain(grace.saturating_sub(started.elapsed())).await;
        }
        self.tasks.len()
    }

    /// The shared tier, when this replica has one.
    pub fn shared(&self) -> Option<&Arc<SharedTier>> {
        self.shared.as_ref()
    }

    /// Whether a committed blob is here.
    #[cfg(test)]
    pub fn has_blob(&self, digest: &Digest) -> Result<bool, CacheError> {
        use storage::ContentStoreExt;
        Ok(self.storage.content.contains(Kind::Blob, digest)?)
    }
}

#[cfg(test)]
mod tests;
