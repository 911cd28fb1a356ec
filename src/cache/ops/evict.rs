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

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub total_before: u64,
    pub total_after: u64,
    pub evicted_size: u64,
    pub evicted_age: u64,
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
        metrics: Arc<Metrics>,
    ) -> Evictor {
        Evictor {
            store,
            index,
            readers,
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

    /// Removes one object: index entry first, then the file (see the
    /// module docs), and counts it. Returns the bytes it held. With
    /// [`Reason::Corrupt`] the file is quarantined rather than deleted.
    pub fn remove(
        &self,
        kind: Kind,
        digest: &Digest,
        reason: Reason,
    ) -> Result<Option<u64>, IndexError> {
        Ok(self.take_out(kind, digest, reason)?.map(|(size, _)| size))
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
        let taken = self.take_out(kind, digest, Reason::Corrupt)?;
        Ok(taken.map(|(size, location)| Quarantined { size, location }))
    }

    /// The bytes the object held, and where a quarantined file went.
    fn take_out(
        &self,
        kind: Kind,
        digest: &Digest,
        reason: Reason,
    ) -> Result<Option<(u64, Option<String>)>, IndexError> {
        let entry = self.index.remove(kind, digest)?;
        let content = &self.store.content;
        let mut location = None;
        let gone = if reason == Reason::Corrupt {
            content.quarantine(kind, digest).map(|to| {
                location = to;
                location.is_some()
            })
        } else {
            let on_disk = content.contains(kind, digest).unwrap_or(true);
            content.remove(kind, digest).map(|()| on_disk)
        };
        let on_disk = gone.unwrap_or_else(|e| {
            tracing::warn!(%digest, kind = kind.label(), error = %e, "removing the file failed; startup reconcile will index it again");
            true
        });
        if entry.is_none() && !on_disk {
            return Ok(None);
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
        Ok(Some((size, location)))
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
        if !over_high && age_cutoff.is_none() {
            report.total_after = total;
            return Ok(report);
        }
        let pinned = self.pinned()?;
        // Least recently used first; ties by digest, so runs are repeatable.
        candidates.sort();
        let mut skipped_pins = HashSet::new();
        let mut evicted_manifests = HashSet::new();
        for (last_accessed, kind, digest, size) in candidates {
            let expired = age_cutoff.is_some_and(|cutoff| last_accessed < cutoff);
            let over = over_high && total > target;
            if !expired && !over {
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
            let reason = if expired { Reason::Age } else { Reason::Size };
            if self.remove(kind, &digest, reason)?.is_some() {
                if kind == Kind::Manifest {
                    evicted_manifests.insert(digest);
                }
                total = total.saturating_sub(size);
                report.bytes_freed += size;
                match reason {
                    Reason::Age => report.evicted_age += 1,
                    _ => report.evicted_size += 1,
                }
            }
        }
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
        if report.evicted_size + report.evicted_age > 0 {
            tracing::info!(
                evicted_size = report.evicted_size,
                evicted_age = report.evicted_age,
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
        evictor: Evictor,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let index = Arc::new(Index::open(&dir.path().join("index")).unwrap());
        let readers = Arc::new(Readers::default());
        let evictor = Evictor::new(
            Storage::new(store.clone()),
            index.clone(),
            readers.clone(),
            Arc::new(Metrics::new()),
        );
        Fixture {
            _dir: dir,
            store,
            index,
            readers,
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
        }
    }

    #[test]
    fn lru_down_to_the_low_water_mark_skipping_open_blobs() {
        let f = fixture();
        let blobs: Vec<Digest> = (0..10u8)
            .map(|i| {
                let d = put(&f, Kind::Blob, &[i; 100]);
                // Distinct access times, oldest first.
                std::thread::sleep(Duration::from_millis(3));
                d
            })
            .collect();
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
