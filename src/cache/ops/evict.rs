//! Size-bounded LRU eviction, an age limit, pins.
//!
//! One run: write the batched access times, list every blob and manifest
//! with its last access, and remove the least recently used until the cache
//! is back under the low-water mark — but only if it was above the
//! high-water mark, so eviction happens in batches rather than on every
//! fill. Content not accessed for `max_age` goes too. Never removed:
//! content reachable from a pinned repository's cached tags, and blobs a
//! client is being served right now (fills are never candidates: they live
//! in `tmp/` and have no index entry until they are committed).
//!
//! Manifests and blobs are evicted independently. A cached manifest whose
//! blob was evicted is not broken: the next request for that blob is a
//! miss and goes through the normal fill, as on a cold cache. (A client
//! pulling an image touches its manifest and every blob, so LRU tends to
//! keep an image's parts together anyway.)
//!
//! The index entry is removed before the file: a crash in between leaves a
//! file without an entry, which startup reconcile indexes again — the index
//! never points at a missing file because of eviction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::reachable::{reachable, Reachable};
use crate::cache::flight::Readers;
use crate::cache::health::{Floor, Health};
use crate::cache::storage::index::{now_millis, Index, IndexError};
use crate::cache::storage::{ContentStoreExt, Kind, Storage};
use crate::metrics::Metrics;
use crate::registry::Digest;

/// Why content left the cache (the `reason` label of
/// `regcache_evictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Size,
    Age,
    Purge,
    /// The store's filesystem was below the free-space floor.
    Space,
    /// The object on disk is not what the index recorded (a truncated
    /// file, bytes that do not hash to its digest): moved aside (see
    /// [`Evictor::quarantine`]) so the next request fills it again.
    Corrupt,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Age => "age",
            Reason::Purge => "purge",
            Reason::Space => "free_space",
            Reason::Corrupt => "corrupt",
        }
    }
}

/// What [`Evictor::quarantine`] took out: the bytes the index recorded
/// and where the file went (`None` when it was already gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub size: u64,
    pub location: Option<String>,
}

/// The size and age bounds, in bytes and time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub max_size: Option<u64>,
    pub high_water: Option<u64>,
    pub low_water: Option<u64>,
    pub max_age: Option<Duration>,
    /// The free space fills keep on the store's filesystem; below it,
    /// eviction frees the difference whatever the size bound says.
    pub min_free: Option<Floor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

/// Pinned repositories per upstream, as the upstream names them (Docker
/// Hub's `alpine` is `library/alpine`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pins {
    by_upstream: HashMap<String, Vec<Pattern>>,
}

impl Pins {
    /// Pins from patterns already in each upstream's own names (Docker
    /// Hub's `alpine` given as `library/alpine`): one ending in `*` pins
    /// every repository with that prefix, any other exactly one repository.
    pub fn new<P>(by_upstream: impl IntoIterator<Item = (String, P)>) -> Pins
    where
        P: IntoIterator<Item = String>,
    {
        let mut pins = Pins::default();
        for (upstream, patterns) in by_upstream {
            let patterns: Vec<Pattern> = patterns
                .into_iter()
                .map(|p| match p.strip_suffix('*') {
                    Some(prefix) => Pattern::Prefix(prefix.to_owned()),
                    None => Pattern::Exact(p),
                })
                .collect();
            if !patterns.is_empty() {
                pins.by_upstream.insert(upstream, patterns);
            }
        }
        pins
    }

    pub fn is_empty(&self) -> bool {
        self.by_upstream.is_empty()
    }

    pub fn matches(&self, upstream: &str, repo: &str) -> bool {
        self.by_upstream.get(upstream).is_some_and(|patterns| {
            patterns.iter().any(|p| match p {
                Pattern::Exact(r) => r == repo,
                Pattern::Prefix(prefix) => repo.starts_with(prefix.as_str()),
            })
        })
    }
}

/// One object [`Evictor::remove_all`] took out of the cache.
pub struct Removed {
    pub kind: Kind,
    pub digest: Digest,
    reason: Reason,
    /// The bytes its index entry recorded.
    pub size: u64,
    /// Where a quarantined file went.
    location: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub total_before: u64,
    pub total_after: u64,
    pub evicted_size: u64,
    pub evicted_age: u64,
    /// Removed to bring the filesystem back above `min_free`.
    #[serde(default)]
    pub evicted_space: u64,
    pub bytes_freed: u64,
    /// Candidates left alone because a pinned repository references them.
    pub pinned_skipped: u64,
    /// Blobs left alone because a client was being served from them.
    pub open_skipped: u64,
    /// Tags forgotten because their manifest was evicted (a tag without its
    /// manifest serves nothing, and unique CI tags would pile up).
    #[serde(default)]
    pub tags_dropped: u64,
}

pub struct Evictor {
    store: Storage,
    index: Arc<Index>,
    readers: Arc<Readers>,
    /// How far the store is below its free-space floor.
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    settings: RwLock<(Policy, Pins)>,
    /// One run at a time (the periodic one, a fill's trigger, the admin API).
    running: Mutex<()>,
}

impl Evictor {
    pub fn new(
        store: Storage,
        index: Arc<Index>,
        readers: Arc<Readers>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Evictor {
        Evictor {
            store,
            index,
            readers,
            health,
            metrics,
            settings: RwLock::new((Policy::default(), Pins::default())),
            running: Mutex::new(()),
        }
    }

    pub fn configure(&self, policy: Policy, pins: Pins) {
        self.index.set_high_water(policy.high_water);
        self.metrics
            .cache_max_bytes
            .set(policy.max_size.map_or(0, |m| m as i64));
        *self.settings.write() = (policy, pins);
    }

    pub fn policy(&self) -> Policy {
        self.settings.read().0.clone()
    }

    pub fn pins(&self) -> Pins {
        self.settings.read().1.clone()
    }

    /// Removes one object: index entry first, durably, then the file (see
    /// the module docs), and counts it. Returns the bytes it held. With
    /// [`Reason::Corrupt`] the file is quarantined rather than deleted.
    pub fn remove(
        &self,
        kind: Kind,
        digest: &Digest,
        reason: Reason,
    ) -> Result<Option<u64>, IndexError> {
        let removed = self.remove_all(vec![(kind, digest.clone(), reason)])?;
        Ok(removed.into_iter().next().map(|r| r.size))
    }

    /// Takes corrupt content out of the cache in the same order as
    /// [`Evictor::remove`] (index entry first, so a concurrent request
    /// either finished with its open file or misses and fills again), but
    /// moves the file aside instead of deleting it, for a post-mortem.
    /// Counted as an eviction with reason `corrupt`; the caller logs the
    /// cause at WARN.
    pub fn quarantine(
        &self,
        kind: Kind,
        digest: &Digest,
    ) -> Result<Option<Quarantined>, IndexError> {
        let removed = self.remove_all(vec![(kind, digest.clone(), Reason::Corrupt)])?;
        Ok(removed.into_iter().next().map(|r| Quarantined {
            size: r.size,
            location: r.location,
        }))
    }

    /// Removes objects: every index entry first, then one flush that makes
    /// those removals durable, then the files (corrupt ones moved aside). A
    /// crash at any point leaves at worst files without entries (which
    /// startup reconcile indexes again), never an entry without its file.
    /// Returns what was removed (present in the index or on disk) with the
    /// bytes each held.
    pub fn remove_all(
        &self,
        victims: Vec<(Kind, Digest, Reason)>,
    ) -> Result<Vec<Removed>, IndexError> {
        let mut entries = Vec::with_capacity(victims.len());
        for (kind, digest, reason) in victims {
            let entry = self.index.remove(kind, &digest)?;
            entries.push((kind, digest, reason, entry));
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.index.flush()?;
        let content = &self.store.content;
        let mut removed = Vec::with_capacity(entries.len());
        for (kind, digest, reason, entry) in entries {
            // Filled again since its entry went: the new file stays.
            if entry.is_some() && self.index.get(kind, &digest)?.is_some() {
                continue;
            }
            let mut location = None;
            let gone = if reason == Reason::Corrupt {
                content.quarantine(kind, &digest).map(|to| {
                    location = to;
                    location.is_some()
                })
            } else {
                let on_disk = content.contains(kind, &digest).unwrap_or(true);
                content.remove(kind, &digest).map(|()| on_disk)
            };
            let on_disk = gone.unwrap_or_else(|e| {
                tracing::warn!(%digest, kind = kind.label(), error = %e, "removing the file failed; startup reconcile will index it again");
                true
            });
            if entry.is_none() && !on_disk {
                continue;
            }
            let size = entry.map_or(0, |e| e.size);
            self.metrics
                .evictions
                .with_label_values(&[reason.label()])
                .inc();
            self.metrics
                .evicted_bytes
                .with_label_values(&[reason.label()])
                .inc_by(size);
            if reason != Reason::Corrupt {
                tracing::info!(%digest, kind = kind.label(), size, reason = reason.label(), "removed from the cache");
            }
            removed.push(Removed {
                kind,
                digest,
                reason,
                size,
                location,
            });
        }
        Ok(removed)
    }

    /// Content that pinned repositories' cached tags reach.
    pub fn pinned(&self) -> Result<Reachable, IndexError> {
        let pins = self.pins();
        if pins.is_empty() {
            return Ok(Reachable::default());
        }
        let roots = self
            .index
            .all_tags()?
            .into_iter()
            .filter(|t| pins.matches(&t.upstream, &t.repo))
            .map(|t| t.entry.digest);
        Ok(reachable(self.store.content.as_ref(), roots))
    }

    /// One eviction run (blocking: call it on the blocking pool).
    pub fn run(&self) -> Result<GcReport, IndexError> {
        let _one_at_a_time = self.running.lock();
        let policy = self.policy();
        self.index.flush_access_times()?;
        let mut candidates = Vec::new();
        let mut total = 0u64;
        for kind in [Kind::Blob, Kind::Manifest] {
            for (digest, entry) in self.index.entries(kind)? {
                total += entry.size;
                candidates.push((entry.last_accessed, kind, digest, entry.size));
            }
        }
        let mut report = GcReport {
            total_before: total,
            ..GcReport::default()
        };
        let over_high = policy.high_water.is_some_and(|h| total > h);
        let target = policy.low_water.unwrap_or(u64::MAX);
        let age_cutoff = policy
            .max_age
            .map(|age| now_millis().saturating_sub(age.as_millis() as u64));
        // Bytes to free for the free-space floor, whatever the size bound.
        let mut short = self.health.shortfall().unwrap_or(0);
        if !over_high && age_cutoff.is_none() && short == 0 {
            report.total_after = total;
            return Ok(report);
        }
        let pinned = self.pinned()?;
        // Least recently used first; ties by digest, so runs are repeatable.
        candidates.sort();
        let mut skipped_pins = HashSet::new();
        let mut victims = Vec::new();
        for (last_accessed, kind, digest, size) in candidates {
            let expired = age_cutoff.is_some_and(|cutoff| last_accessed < cutoff);
            let over = over_high && total > target;
            if !expired && !over && short == 0 {
                // Sorted oldest first: nothing after this is due either.
                break;
            }
            let is_pinned = match kind {
                Kind::Blob => pinned.blobs.contains(&digest),
                Kind::Manifest => pinned.manifests.contains(&digest),
            };
            if is_pinned {
                skipped_pins.insert(digest);
                continue;
            }
            if kind == Kind::Blob && self.readers.is_open(&digest) {
                report.open_skipped += 1;
                continue;
            }
            let reason = match (expired, over) {
                (true, _) => Reason::Age,
                (false, true) => Reason::Size,
                (false, false) => Reason::Space,
            };
            total = total.saturating_sub(size);
            short = short.saturating_sub(size);
            victims.push((kind, digest, reason));
        }
        let mut evicted_manifests = HashSet::new();
        for removed in self.remove_all(victims)? {
            report.bytes_freed += removed.size;
            if removed.kind == Kind::Manifest {
                evicted_manifests.insert(removed.digest);
            }
            match removed.reason {
                Reason::Age => report.evicted_age += 1,
                Reason::Space => report.evicted_space += 1,
                _ => report.evicted_size += 1,
            }
        }
        total = report.total_before.saturating_sub(report.bytes_freed);
        report.pinned_skipped = skipped_pins.len() as u64;
        report.total_after = total;
        if !evicted_manifests.is_empty() {
            for t in self.index.all_tags()? {
                if evicted_manifests.contains(&t.entry.digest) {
                    self.store.tags.delete_tag(&t.upstream, &t.repo, &t.tag)?;
                    self.index.remove_tag(&t.upstream, &t.repo, &t.tag)?;
                    report.tags_dropped += 1;
                }
            }
        }
        self.index.flush()?;
        if over_high && total > target {
            tracing::warn!(
                total,
                target,
                pinned = report.pinned_skipped,
                open = report.open_skipped,
                "cache still above the low-water mark: the rest is pinned or being served"
            );
        }
        if report.evicted_size + report.evicted_age + report.evicted_space > 0 {
            tracing::info!(
                evicted_size = report.evicted_size,
                evicted_age = report.evicted_age,
                evicted_space = report.evicted_space,
                tags_dropped = report.tags_dropped,
                bytes_freed = report.bytes_freed,
                total_after = report.total_after,
                "eviction run"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::{MemoryStore, TagEntry, TagRecord, TagStore};

    /// The in-memory store; the index is sled in a temporary directory.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<MemoryStore>,
        index: Arc<Index>,
        readers: Arc<Readers>,
        health: Arc<Health>,
        evictor: Evictor,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let index = Arc::new(Index::open(&dir.path().join("index")).unwrap());
        let readers = Arc::new(Readers::default());
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(store.clone(), index.clone(), metrics.clone()));
        let evictor = Evictor::new(
            Storage::new(store.clone()),
            index.clone(),
            readers.clone(),
            health.clone(),
            metrics,
        );
        Fixture {
            _dir: dir,
            store,
            index,
            readers,
            health,
            evictor,
        }
    }

    fn put(f: &Fixture, kind: Kind, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        f.store.write_whole(kind, &d, bytes).unwrap();
        f.index.record(kind, &d, bytes.len() as u64, None).unwrap();
        d
    }

    fn bounded(max: u64) -> Policy {
        Policy {
            max_size: Some(max),
            high_water: Some(max * 95 / 100),
            low_water: Some(max * 90 / 100),
            max_age: None,
            min_free: None,
        }
    }

    /// Ten 100-byte blobs, oldest first.
    fn ten_blobs(f: &Fixture) -> Vec<Digest> {
        (0..10u8)
            .map(|i| {
                let d = put(f, Kind::Blob, &[i; 100]);
                // Distinct access times, oldest first.
                std::thread::sleep(Duration::from_millis(3));
                d
            })
            .collect()
    }

    #[test]
    fn below_the_free_space_floor_the_oldest_go_until_the_shortfall_is_freed() {
        let f = fixture();
        let blobs = ten_blobs(&f);
        f.store.set_space(Some(crate::cache::storage::Space {
            available: 800,
            total: 10_000,
        }));
        let policy = Policy {
            min_free: Some(Floor::Bytes(1000)),
            ..Policy::default()
        };
        f.health.set_floor(policy.min_free);
        f.evictor.configure(policy, Pins::default());
        let report = f.evictor.run().unwrap();
        // 1000 + 10% margin - 800 free = 300 bytes: the three oldest.
        assert_eq!(report.evicted_space, 3);
        assert_eq!(report.bytes_freed, 300);
        for (i, d) in blobs.iter().enumerate() {
            assert_eq!(f.store.contains(Kind::Blob, d).unwrap(), i >= 3, "blob {i}");
        }
        // Back above the floor: nothing more goes.
        f.store.set_space(Some(crate::cache::storage::Space {
            available: 1200,
            total: 10_000,
        }));
        assert_eq!(f.evictor.run().unwrap().evicted_space, 0);
    }

    /// kill -9 between an index removal and its flush must not leave an
    /// entry whose file is gone: every file goes only after the removals of
    /// its run are durable.
    #[test]
    fn index_removals_are_durable_before_any_file_is_removed() {
        let f = fixture();
        let blobs = ten_blobs(&f);
        let unflushed_at_removal = Arc::new(Mutex::new(Vec::new()));
        let (index, seen) = (f.index.clone(), unflushed_at_removal.clone());
        f.store.on_remove(move |_, _| {
            seen.lock().push(
                index
                    .unflushed_removals
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        });
        f.evictor.configure(bounded(700), Pins::default());
        assert_eq!(f.evictor.run().unwrap().evicted_size, 4);
        assert_eq!(*unflushed_at_removal.lock(), vec![0; 4]);
        // One object (a purge) too.
        f.evictor
            .remove(Kind::Blob, &blobs[9], Reason::Purge)
            .unwrap();
        assert_eq!(unflushed_at_removal.lock().last(), Some(&0));
    }

    #[test]
    fn lru_down_to_the_low_water_mark_skipping_open_blobs() {
        let f = fixture();
        let blobs = ten_blobs(&f);
        // Blob 0 is touched: now the most recent. Blob 1 is being served.
        f.index.touch(Kind::Blob, &blobs[0]);
        let _serving = f.readers.acquire(&blobs[1]);
        f.evictor.configure(bounded(700), Pins::default());
        let report = f.evictor.run().unwrap();
        // 1000 bytes, low water 630: four blobs go (2, 3, 4, 5).
        assert_eq!(report.total_before, 1000);
        assert_eq!(report.evicted_size, 4);
        assert_eq!(report.total_after, 600);
        assert_eq!(report.open_skipped, 1);
        for (i, d) in blobs.iter().enumerate() {
            let expect = !(2..=5).contains(&i);
            assert_eq!(f.store.contains(Kind::Blob, d).unwrap(), expect, "blob {i}");
            assert_eq!(
                f.index.get(Kind::Blob, d).unwrap().is_some(),
                expect,
                "blob {i}"
            );
        }
        // Under the high-water mark now: a second run does nothing.
        assert_eq!(f.evictor.run().unwrap().evicted_size, 0);
    }

    #[test]
    fn pinned_images_survive_and_age_applies_without_a_size_bound() {
        let f = fixture();
        let layer = put(&f, Kind::Blob, b"pinned layer");
        let other = put(&f, Kind::Blob, b"unpinned layer");
        let manifest = format!(r#"{{"layers":[{{"digest":"{layer}","size":12}}]}}"#);
        let m = put(&f, Kind::Manifest, manifest.as_bytes());
        f.index
            .set_tag(
                "docker.io",
                "library/alpine",
                "3",
                &TagEntry {
                    digest: m.clone(),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    size: manifest.len() as u64,
                    checked_at: 0,
                    max_age_ms: None,
                    unshared: false,
                },
            )
            .unwrap();
        let mut pins = Pins::default();
        pins.by_upstream.insert(
            "docker.io".into(),
            vec![Pattern::Exact("library/alpine".into())],
        );
        std::thread::sleep(Duration::from_millis(20));
        f.evictor.configure(
            Policy {
                max_age: Some(Duration::from_millis(10)),
                ..Policy::default()
            },
            pins.clone(),
        );
        let report = f.evictor.run().unwrap();
        assert_eq!(report.evicted_age, 1);
        assert_eq!(report.pinned_skipped, 2);
        assert!(f.store.contains(Kind::Blob, &layer).unwrap());
        assert!(f.store.contains(Kind::Manifest, &m).unwrap());
        assert!(!f.store.contains(Kind::Blob, &other).unwrap());
        assert!(pins.matches("docker.io", "library/alpine"));
        assert!(!pins.matches("docker.io", "library/alpine2"));
        assert!(!pins.matches("ghcr.io", "library/alpine"));
        assert_eq!(report.tags_dropped, 0, "the pinned tag stays");

        // Unpinned, the image ages out, and its tag goes with its manifest.
        f.evictor.configure(
            Policy {
                max_age: Some(Duration::from_millis(10)),
                ..Policy::default()
            },
            Pins::default(),
        );
        f.store
            .put_tag(&TagRecord {
                upstream: "docker.io".into(),
                repo: "library/alpine".into(),
                tag: "3".into(),
                entry: f
                    .index
                    .tag("docker.io", "library/alpine", "3")
                    .unwrap()
                    .unwrap(),
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let report = f.evictor.run().unwrap();
        assert_eq!(report.evicted_age, 2);
        assert_eq!(report.tags_dropped, 1);
        assert!(f.index.all_tags().unwrap().is_empty());
        assert!(f.store.tag_records().unwrap().is_empty());
    }
}
