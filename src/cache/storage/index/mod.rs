//! The on-disk index (sled): what is cached, its media type and size, when
//! it was fetched and last used, and which digest each tag pointed to when
//! last checked.
//!
//! The index is never the only record: content entries are written only
//! after the file is durable, tags after their tag file, and a missing or
//! corrupt index is rebuilt from the store. What a rebuild loses (tag
//! lists, referrers, which repositories were seen to hold which digests
//! beyond the cached tags) is asked of the upstream again on next use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::{ContentStore, ContentStoreExt, Kind, TagEntry, TagRecord};
use crate::registry::{sniff_manifest_media_type, Digest};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContentEntry {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Unix milliseconds.
    pub first_fetched: u64,
    pub last_accessed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Sled(#[from] sled::Error),
    #[error("index: {0}")]
    Io(#[from] std::io::Error),
    /// Another process (a running daemon) has the index open: sled allows
    /// one process at a time.
    #[error("the index {0} is in use by another process (is the regcache daemon running?)")]
    Locked(String),
    /// Closed for a reopen after a failed write (see [`Index::recover`]).
    #[error("index: being reopened after a failed write")]
    Reopening,
}

/// sled reports a held lock as a plain I/O error; it must never be taken
/// for corruption (moving the index of a running daemon aside).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Calls into the index run inline on runtime workers, and that is
/// deliberate, as mini-redis documents for its mutex: sled answers reads
/// from its page cache and appends writes to an in-memory log that its own
/// thread flushes every second (`flush_every_ms`), so no call waits on the
/// disk. The exceptions are [`Index::open`], [`Index::reconcile`],
/// [`Index::flush`] and [`Index::recover`], which do wait: they run at
/// startup, in operations that are on the blocking pool already, or at
/// shutdown.
///
/// Once sled fails a write (a full disk), it refuses every later write
/// until it is reopened: the index notes the failure ([`Index::failed`])
/// and [`Index::recover`] reopens it once writes can succeed again.
pub struct Index {
    path: PathBuf,
    /// The open database; `None` only for the moment of a reopen. Calls
    /// clone the `Arc` and release the lock at once, so a reopen waits at
    /// most for the calls in flight.
    trees: RwLock<Option<Arc<Trees>>>,
    /// sled reported an I/O failure: it accepts no write until reopened.
    failed: AtomicBool,
    /// Access times gathered between flushes, so a hit costs no write.
    touched: Mutex<HashMap<(Kind, Digest), u64>>,
    /// Objects and bytes per kind, kept as entries come and go (sled's own
    /// `len` walks the whole tree).
    totals: Mutex<HashMap<Kind, Totals>>,
    /// Total bytes above which a new entry wakes the evictor.
    high_water: AtomicU64,
    over_high_water: tokio::sync::Notify,
    /// Removals not yet flushed, so a test can tell a durable removal from
    /// one still in sled's log.
    #[cfg(test)]
    pub(crate) unflushed_removals: AtomicU64,
}

/// One open sled database and its trees.
struct Trees {
    db: sled::Db,
    blobs: sled::Tree,
    manifests: sled::Tree,
    tags: sled::Tree,
    listings: sled::Tree,
    /// (upstream, repository, digest) triples the upstream has shown a
    /// repository may read: private content is served per repository,
    /// never by digest alone.
    links: sled::Tree,
    /// Each tag's recent moves (`history`), keyed as `tags`.
    tag_history: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> sled::Result<Trees> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .open()?;
        Ok(Trees {
            blobs: db.open_tree("blobs")?,
            manifests: db.open_tree("manifests")?,
            tags: db.open_tree("tags")?,
            listings: db.open_tree("listings")?,
            links: db.open_tree("links")?,
            tag_history: db.open_tree("tag_history")?,
            db,
        })
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Blob => &self.blobs,
            Kind::Manifest => &self.manifests,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub objects: u64,
    pub bytes: u64,
}

/// Marker key (default tree): the tag files have been read into this index.
const TAGS_RESTORED: &[u8] = b"tags_restored";

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Index {
    /// Opens the index at `path`; one that cannot be opened is moved aside
    /// and a new one started (the caller then reconciles it with the store).
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let trees = match Trees::open(path) {
            Ok(t) => t,
            Err(e) if is_lock_error(&e) => {
                return Err(IndexError::Locked(path.display().to_string()))
            }
            Err(e) => {
                let aside = path.with_extension(format!("corrupt-{}", now_millis()));
                tracing::warn!(error = %e, aside = %aside.display(), "index unreadable; moving it aside and rebuilding");
                super::fs::move_aside(path, &aside)?;
                Trees::open(path)?
            }
        };
        Ok(Index {
            path: path.to_owned(),
            trees: RwLock::new(Some(Arc::new(trees))),
            failed: AtomicBool::new(false),
            touched: Mutex::new(HashMap::new()),
            totals: Mutex::new(HashMap::new()),
            high_water: AtomicU64::new(u64::MAX),
            over_high_water: tokio::sync::Notify::new(),
            #[cfg(test)]
            unflushed_removals: AtomicU64::new(0),
        })
    }

    /// The open trees, or `Reopening` during a reopen: calls on runtime
    /// workers never wait for one (only a reopen ever takes the lock to
    /// write).
    fn trees(&self) -> Result<Arc<Trees>, IndexError> {
        self.trees
            .try_read()
            .and_then(|t| t.clone())
            .ok_or(IndexError::Reopening)
    }

    /// Marks the index failed, as a failed write does (tests of recovery).
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Passes sled's answer on, noting an I/O failure: from then on sled
    /// refuses writes until [`Index::recover`] reopens it.
    fn sled<T>(&self, r: sled::Result<T>) -> Result<T, IndexError> {
        r.map_err(|e| {
            let io_failure = matches!(e, sled::Error::Io(_)) && !is_lock_error(&e);
            if io_failure && !self.failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "index write failed: not ready until the index is reopened");
            }
            IndexError::from(e)
        })
    }

    /// Whether sled has failed a write and waits for [`Index::recover`].
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Reopens a failed index (blocking). What sled had not written when it
    /// failed is lost; the caller reconciles with the store afterwards,
    /// which is the source of truth. Returns whether it reopened; an error
    /// means try again later (still no space, or calls in flight).
    pub fn recover(&self) -> Result<bool, IndexError> {
        if !self.failed() {
            return Ok(false);
        }
        let mut slot = self.trees.write();
        if let Some(current) = slot.take() {
            match Arc::try_unwrap(current) {
                // Dropping the last handle closes the database and its
                // file lock, which the reopen needs.
                Ok(trees) => drop(trees),
                Err(shared) => {
                    *slot = Some(shared);
                    return Err(IndexError::Reopening);
                }
            }
        }
        let trees = Trees::open(&self.path)?;
        trees.db.flush()?;
        *slot = Some(Arc::new(trees));
        self.failed.store(false, Ordering::Relaxed);
        tracing::warn!(path = %self.path.display(), "index reopened after a failed write");
        Ok(true)
    }

    /// Entries that push the total past `bytes` wake
    /// [`Index::wait_over_high_water`]; `None` disables it.
    pub fn set_high_water(&self, bytes: Option<u64>) {
        self.high_water
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Resolves when a new entry took the cache over the high-water mark.
    pub async fn wait_over_high_water(&self) {
        self.over_high_water.notified().await
    }

    /// Bytes of blobs and manifests together.
    pub fn total_bytes(&self) -> u64 {
        let totals = self.totals.lock();
        totals.values().map(|t| t.bytes).sum()
    }

    pub fn get(&self, kind: Kind, digest: &Digest) -> Result<Option<ContentEntry>, IndexError> {
        let t = self.trees()?;
        Ok(self
            .sled(t.tree(kind).get(digest.hex()))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn record(
        &self,
        kind: Kind,
        digest: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<(), IndexError> {
        let now = now_millis();
        let entry = ContentEntry {
            size,
            media_type: media_type.map(str::to_owned),
            first_fetched: now,
            last_accessed: now,
        };
        self.put(kind, digest, &entry)
    }

    fn put(&self, kind: Kind, digest: &Digest, entry: &ContentEntry) -> Result<(), IndexError> {
        let value = serde_json::to_vec(entry).unwrap_or_default();
        let t = self.trees()?;
        let old = self.sled(t.tree(kind).insert(digest.hex(), value))?;
        let old_size = old
            .and_then(|v| serde_json::from_slice::<ContentEntry>(&v).ok())
            .map(|e| e.size);
        let mut totals = self.totals.lock();
        let t = totals.entry(kind).or_default();
        match old_size {
            None => t.objects += 1,
            Some(size) => t.bytes = t.bytes.saturating_sub(size),
        }
        t.bytes += entry.size;
        let grew = old_size.is_none();
        drop(totals);
        if grew && self.total_bytes() > self.high_water.load(Ordering::Relaxed) {
            self.over_high_water.notify_one();
        }
        Ok(())
    }

    /// Removes an entry; returns what it said, if there was one.
    pub fn remove(&self, kind: Kind, digest: &Digest) -> Result<Option<ContentEntry>, IndexError> {
        let t = self.trees()?;
        let old = self.sled(t.tree(kind).remove(digest.hex()))?;
        #[cfg(test)]
        self.unflushed_removals.fetch_add(1, Ordering::Relaxed);
        let old = old.and_then(|v| serde_json::from_slice::<ContentEntry>(&v).ok());
        if let Some(e) = &old {
            let mut totals = self.totals.lock();
            let t = totals.entry(kind).or_default();
            t.objects = t.objects.saturating_sub(1);
            t.bytes = t.bytes.saturating_sub(e.size);
        }
        Ok(old)
    }

    /// Every entry of a kind. Keys that are not digests are skipped
    /// (reconcile drops them).
    pub fn entries(&self, kind: Kind) -> Result<Vec<(Digest, ContentEntry)>, IndexError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for item in t.tree(kind).iter() {
            let (key, value) = self.sled(item)?;
            let digest = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| Digest::from_hex(k).ok());
            let entry = serde_json::from_slice::<ContentEntry>(&value).ok();
            if let (Some(d), Some(e)) = (digest, entry) {
                out.push((d, e));
            }
        }
        Ok(out)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), IndexError> {
        let t = self.trees()?;
        self.sled(t.db.flush())?;
        #[cfg(test)]
        self.unflushed_removals.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Objects and bytes of a kind in the cache.
    pub fn totals(&self, kind: Kind) -> Totals {
        self.totals.lock().get(&kind).copied().unwrap_or_default()
    }

    /// Notes a use; written by the next [`Index::flush_access_times`].
    pub fn touch(&self, kind: Kind, digest: &Digest) {
        self.touched
            .lock()
            .insert((kind, digest.clone()), now_millis());
    }

    pub fn flush_access_times(&self) -> Result<(), IndexError> {
        let batch = std::mem::take(&mut *self.touched.lock());
        for ((kind, digest), at) in batch {
            if let Some(mut entry) = self.get(kind, &digest)? {
                entry.last_accessed = entry.last_accessed.max(at);
                self.put(kind, &digest, &entry)?;
            }
        }
        self.flush()
    }

    fn tag_key(upstream: &str, repo: &str, tag: &str) -> Vec<u8> {
        // NUL cannot occur in any of the three, so the key is unambiguous.
        format!("{upstream}\0{repo}\0{tag}").into_bytes()
    }

    pub fn tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagEntry>, IndexError> {
        let t = self.trees()?;
        Ok(self
            .sled(t.tags.get(Self::tag_key(upstream, repo, tag)))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn set_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        entry: &TagEntry,
    ) -> Result<(), IndexError> {
        let value = serde_json::to_vec(entry).unwrap_or_default();
        let t = self.trees()?;
        self.sled(t.tags.insert(Self::tag_key(upstream, repo, tag), value))?;
        Ok(())
    }

    /// Whether this index has taken in the store's tag files: false for a
    /// new or rebuilt index (and one from before tag files existed).
    pub fn tags_restored(&self) -> Result<bool, IndexError> {
        let t = self.trees()?;
        self.sled(t.db.contains_key(TAGS_RESTORED))
    }

    pub fn mark_tags_restored(&self) -> Result<(), IndexError> {
        let t = self.trees()?;
        self.sled(t.db.insert(TAGS_RESTORED, &[]))?;
        Ok(())
    }

    /// A small record of the cache's own bookkeeping (where the scrub is),
    /// under `key` in the default tree; `None` when absent or unreadable.
    pub fn note<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, IndexError> {
        let t = self.trees()?;
        Ok(self
            .sled(t.db.get(format!("note:{key}")))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn set_note<T: Serialize>(&self, key: &str, value: &T) -> Result<(), IndexError> {
        let value = serde_json::to_vec(value).unwrap_or_default();
        let t = self.trees()?;
        self.sled(t.db.insert(format!("note:{key}"), value))?;
        Ok(())
    }

    fn link_key(upstream: &str, repo: &str, digest: &Digest) -> Vec<u8> {
        format!("{upstream}\0{repo}\0{}", digest.hex()).into_bytes()
    }

    pub fn link(&self, upstream: &str, repo: &str, digest: &Digest) -> Result<(), IndexError> {
        let t = self.trees()?;
        self.sled(t.links.insert(Self::link_key(upstream, repo, digest), &[]))?;
        Ok(())
    }

    pub fn has_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, IndexError> {
        let t = self.trees()?;
        self.sled(t.links.contains_key(Self::link_key(upstream, repo, digest)))
    }

    pub fn remove_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<bool, IndexError> {
        let t = self.trees()?;
        Ok(self
            .sled(t.tags.remove(Self::tag_key(upstream, repo, tag)))?
            .is_some())
    }

    /// Every cached tag, ordered by upstream, repository and tag.
    pub fn all_tags(&self) -> Result<Vec<TagRecord>, IndexError> {
        let t = self.trees()?;
        let mut out = Vec::new();
        for item in t.tags.iter() {
            let (key, value) = self.sled(item)?;
            let Ok(key) = std::str::from_utf8(&key) else {
                continue;
            };
            let mut parts = key.splitn(3, '\0');
            let (Some(upstream), Some(repo), Some(tag)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Ok(entry) = serde_json::from_slice::<TagEntry>(&value) {
                out.push(TagRecord {
                    upstream: upstream.to_owned(),
                    repo: repo.to_owned(),
                    tag: tag.to_owned(),
                    entry,
                });
            }
        }
        Ok(out)
    }

    pub fn listing<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, IndexError> {
        let t = self.trees()?;
        Ok(self
            .sled(t.listings.get(key.as_bytes()))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn set_listing<T: Serialize>(&self, key: &str, listing: &T) -> Result<(), IndexError> {
        let value = serde_json::to_vec(listing).unwrap_or_default();
        let t = self.trees()?;
        self.sled(t.listings.insert(key.as_bytes(), value))?;
        Ok(())
    }

    /// Makes the index agree with the store: entries without a file are
    /// dropped; files without an entry are indexed. Files are trusted, not
    /// re-hashed: only verified content is ever renamed into the store, and
    /// re-hashing a large cache would make startup slow (`verify` does it).
    pub fn reconcile(&self, store: &dyn ContentStore) -> Result<ReconcileReport, IndexError> {
        let t = self.trees()?;
        let mut report = ReconcileReport::default();
        for kind in [Kind::Blob, Kind::Manifest] {
            let on_disk: HashMap<Digest, u64> = store.objects(kind)?.into_iter().collect();
            for item in t.tree(kind).iter() {
                let (key, _) = self.sled(item)?;
                let digest = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| Digest::from_hex(k).ok());
                match digest {
                    Some(d) if on_disk.contains_key(&d) => {}
                    _ => {
                        self.sled(t.tree(kind).remove(key))?;
                        report.dropped += 1;
                    }
                }
            }
            for (digest, size) in on_disk {
                if self.sled(t.tree(kind).contains_key(digest.hex()))? {
                    continue;
                }
                let media_type = match kind {
                    Kind::Blob => None,
                    Kind::Manifest => store
                        .read_whole(kind, &digest)?
                        .and_then(|b| sniff_manifest_media_type(&b)),
                };
                self.record(kind, &digest, size, media_type.as_deref())?;
                report.added += 1;
            }
            self.recount(&t, kind);
        }
        self.flush()?;
        Ok(report)
    }
}

impl Index {
    /// Sets the totals of a kind from a walk of its tree.
    fn recount(&self, trees: &Trees, kind: Kind) {
        let mut t = Totals::default();
        for (_, v) in trees.tree(kind).iter().flatten() {
            if let Ok(e) = serde_json::from_slice::<ContentEntry>(&v) {
                t.objects += 1;
                t.bytes += e.size;
            }
        }
        self.totals.lock().insert(kind, t);
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub dropped: usize,
    /// Tags taken into a new or rebuilt index from the tag files.
    pub tags_restored: usize,
}

mod history;
#[cfg(test)]
mod tests;

pub use history::{MoveAction, TagHistory, TagMove, HISTORY_LEN};
