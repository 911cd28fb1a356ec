//! The cache: content-addressed blob and manifest files (the source of
//! truth), the sled index beside them, blob fills that coalesce concurrent
//! misses, and tag freshness.

pub mod bundle;
mod evict;
mod fill;
mod freshness;
pub mod graph;
mod index;
mod listings;
pub mod manage;
mod manifests;
mod negative;
pub mod prefetch;
mod readers;
mod single_flight;
mod store;
mod tag_files;
pub mod verify;

use std::path::Path;
use std::sync::Arc;

pub use evict::{Evictor, GcReport, Pins, Policy, Reason};
pub use fill::{
    body_stream, wait_for_headers, Attached, BodySource, Fills, Phase, Progress, IO_CHUNK,
    UNKNOWN_SIZE,
};
pub use index::{
    now_millis, ContentEntry, Index, IndexError, ReconcileReport, TagEntry, TagRecord, Totals,
};
pub use listings::{Listing, ListingCache};
pub use manifests::{Manifest, ManifestCache, Outcome, MAX_MANIFEST_SIZE};
pub use readers::{ReaderGuard, Readers};
pub use single_flight::SingleFlight;
pub use store::{FsStore, Kind};

use crate::metrics::Metrics;
use crate::registry::{Digest, RepoName};
use crate::upstream::{Upstream, UpstreamError};

/// Why a cache operation failed. Cloneable, because one fill's failure is
/// delivered to every client attached to it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// Anything the upstream did: unreachable, an unwanted status, a
    /// broken or stalled body ([`UpstreamError`] says which).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream content has digest {actual}, not the requested {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream content is {actual} bytes, not the announced {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("manifest is larger than {MAX_MANIFEST_SIZE} bytes")]
    ManifestTooLarge,
    #[error("upstream manifest answer has no usable digest or media type")]
    BadManifestAnswer,
    #[error("cache storage: {0}")]
    Io(String),
    #[error("{0}")]
    Locked(String),
}

impl CacheError {
    /// Failures that say the upstream is down, slow or rate-limiting — the
    /// ones a stale answer may cover — as opposed to answers about the
    /// content itself (404, 401, a digest mismatch). `upstream` decides.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(self, CacheError::Upstream(e) if e.is_failure())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CacheError::Upstream(e) if e.is_not_found())
    }

    fn fill_result_label(&self) -> &'static str {
        match self {
            CacheError::DigestMismatch { .. } => "digest_mismatch",
            CacheError::SizeMismatch { .. } => "size_mismatch",
            CacheError::Upstream(UpstreamError::Status { .. }) => "upstream_status",
            CacheError::Upstream(UpstreamError::Stalled(_)) => "stalled",
            CacheError::Io(_) => "storage_error",
            _ => "upstream_error",
        }
    }
}

impl From<std::io::Error> for CacheError {
    fn from(e: std::io::Error) -> Self {
        CacheError::Io(e.to_string())
    }
}

impl From<tokio::task::JoinError> for CacheError {
    fn from(e: tokio::task::JoinError) -> Self {
        CacheError::Io(format!("background task failed: {e}"))
    }
}

impl From<index::IndexError> for CacheError {
    fn from(e: index::IndexError) -> Self {
        CacheError::Io(e.to_string())
    }
}

/// Everything the HTTP surface needs from the cache.
pub struct Cache {
    pub store: Arc<FsStore>,
    pub index: Arc<Index>,
    pub fills: Arc<Fills>,
    pub manifests: ManifestCache,
    pub listings: ListingCache,
    /// Blobs being served from committed files (never evicted meanwhile).
    pub readers: Arc<Readers>,
    pub evictor: Arc<Evictor>,
}

impl Cache {
    /// Opens the store (removing crash leftovers) and the index (moving an
    /// unreadable one aside). Reconciling the two is [`Cache::reconcile`],
    /// run in the background so startup stays fast.
    ///
    /// The index is opened first: it is locked by whichever process has it,
    /// so a second process on the same directory fails here instead of
    /// emptying the running one's `tmp/`.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Cache, CacheError> {
        let index = Arc::new(Index::open(&dir.join("index")).map_err(|e| match e {
            IndexError::Locked(_) => CacheError::Locked(e.to_string()),
            e => CacheError::from(e),
        })?);
        let store = Arc::new(FsStore::open(dir)?);
        let fills = Arc::new(Fills::new(store.clone(), index.clone(), metrics.clone()));
        let manifests = ManifestCache::new(store.clone(), index.clone(), metrics.clone());
        let listings = ListingCache::new(index.clone(), metrics.clone());
        let readers = Arc::new(Readers::default());
        let evictor = Arc::new(Evictor::new(
            store.clone(),
            index.clone(),
            readers.clone(),
            metrics,
        ));
        Ok(Cache {
            store,
            index,
            fills,
            manifests,
            listings,
            readers,
            evictor,
        })
    }

    /// Whether `repo` may read content that is already here. Content of an
    /// upstream with credentials may be private: it is served through a
    /// repository only once the upstream has shown that repository holds
    /// it (a fill through it, or a HEAD now), never by digest alone. Fails
    /// closed when the upstream cannot be asked.
    pub async fn authorize_cached(
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
        Ok(())
    }

    /// Brings the index in line with the store: content entries with the
    /// files, and, for a new or rebuilt index, the tags from the tag files.
    pub fn reconcile(&self) -> Result<ReconcileReport, CacheError> {
        let mut report = self.index.reconcile(&self.store)?;
        if !self.index.tags_restored()? {
            report.tags_restored = self.restore_tags()?;
            self.index.mark_tags_restored()?;
            self.index.flush()?;
        }
        Ok(report)
    }

    /// Takes the tag files into the index (the newer check wins) and links
    /// each restored tag's image to its repository, as the pull that cached
    /// it did: the upstream said the repository holds that manifest, and a
    /// registry holds a manifest only with its blobs. Tags only the index
    /// knows (a cache from before tag files) get their files.
    fn restore_tags(&self) -> Result<usize, CacheError> {
        let mut restored = 0;
        let mut on_file = std::collections::HashSet::new();
        for r in self.store.tag_records()? {
            let known = self.index.tag(&r.upstream, &r.repo, &r.tag)?;
            if known.map_or(true, |e| r.entry.checked_at > e.checked_at) {
                self.index.set_tag(&r.upstream, &r.repo, &r.tag, &r.entry)?;
                if let Ok(root) = r.entry.digest.parse::<Digest>() {
                    let image = graph::reachable(&self.store, [root]);
                    for d in image.manifests.iter().chain(&image.blobs) {
                        self.index.link(&r.upstream, &r.repo, d)?;
                    }
                }
                restored += 1;
            }
            on_file.insert((r.upstream, r.repo, r.tag));
        }
        for t in self.index.all_tags()? {
            if !on_file.contains(&(t.upstream.clone(), t.repo.clone(), t.tag.clone())) {
                self.store.put_tag(&t)?;
            }
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(name: &str, digest: &Digest, checked_at: u64) -> TagRecord {
        TagRecord {
            upstream: "up".into(),
            repo: "team/app".into(),
            tag: name.into(),
            entry: TagEntry {
                digest: digest.to_string(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 1,
                checked_at,
            },
        }
    }

    #[test]
    fn a_rebuilt_index_gets_its_tags_and_their_links_back_from_the_tag_files() {
        let dir = tempfile::tempdir().unwrap();
        let layer = Digest::sha256_of(b"layer");
        let manifest =
            format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{layer}","size":5}}]}}"#);
        let root = Digest::sha256_of(manifest.as_bytes());
        {
            let cache = Cache::open(dir.path(), Arc::new(Metrics::new())).unwrap();
            cache
                .store
                .write_whole(Kind::Blob, &layer, b"layer")
                .unwrap();
            cache
                .store
                .write_whole(Kind::Manifest, &root, manifest.as_bytes())
                .unwrap();
            // As a revalidation records it: file, then index.
            let pulled = tag("v1", &root, 5);
            cache.store.put_tag(&pulled).unwrap();
            cache
                .index
                .set_tag("up", "team/app", "v1", &pulled.entry)
                .unwrap();
            // A tag from before tag files existed: in the index only.
            let legacy = tag("old", &root, 7);
            cache
                .index
                .set_tag("up", "team/app", "old", &legacy.entry)
                .unwrap();
            let report = cache.reconcile().unwrap();
            assert_eq!(report.tags_restored, 0, "the index had them all");
            assert_eq!(
                cache.store.tag_records().unwrap().len(),
                2,
                "the legacy tag got its file"
            );
            // Only once per index: a later startup does not walk the files.
            std::fs::remove_dir_all(dir.path().join("tags")).unwrap();
            assert_eq!(cache.reconcile().unwrap().tags_restored, 0);
            cache.store.put_tag(&pulled).unwrap();
            cache.store.put_tag(&legacy).unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();

        let cache = Cache::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        assert!(cache.index.all_tags().unwrap().is_empty());
        let report = cache.reconcile().unwrap();
        assert_eq!(report.added, 2);
        assert_eq!(report.tags_restored, 2);
        let mut tags = cache.index.all_tags().unwrap();
        tags.sort_by(|a, b| a.tag.cmp(&b.tag));
        assert_eq!(tags, vec![tag("old", &root, 7), tag("v1", &root, 5)]);
        for d in [&root, &layer] {
            assert!(cache.index.has_link("up", "team/app", d).unwrap());
        }
        assert!(!cache.index.has_link("up", "other/app", &layer).unwrap());
    }

    #[test]
    fn the_newer_check_wins_when_index_and_file_disagree() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        cache
            .index
            .set_tag("up", "team/app", "v1", &tag("v1", &a, 10).entry)
            .unwrap();
        cache.store.put_tag(&tag("v1", &b, 20)).unwrap();
        assert_eq!(cache.reconcile().unwrap().tags_restored, 1);
        assert_eq!(
            cache.index.tag("up", "team/app", "v1").unwrap(),
            Some(tag("v1", &b, 20).entry)
        );
    }
}
