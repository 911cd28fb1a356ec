//! Manifests and tags.
//!
//! Manifests are small and immutable by digest: they are stored byte-exact
//! as files beside the blobs, kept hot in memory (moka), and never fetched
//! again once cached. Tags are the only mutable part: a tag is answered from
//! the index while it is younger than its upstream's `tag_ttl`, then
//! revalidated with a HEAD (free on Docker Hub), and the manifest is fetched
//! by digest only when the tag moved. Concurrent lookups of one tag, or one
//! manifest digest, share one upstream request.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::moves;
use super::negative::NegativeCache;
use super::ttl;
use crate::cache::flight::SingleFlight;
use crate::cache::health::Health;
use crate::cache::shared::SharedTier;
use crate::cache::storage::index::{now_millis, Index};
use crate::cache::storage::{ContentStoreExt, Kind, Storage, TagEntry, TagRecord};
use crate::cache::{CacheError, Outcome};
use crate::metrics::Metrics;
use crate::registry::{
    manifest_media_type, sniff_manifest_media_type, validate_manifest, Digest, RepoName, Tag,
    MANIFEST_ACCEPT,
};
use crate::upstream::{self, Upstream};
use tokio_util::task::TaskTracker;

/// Manifests larger than this are refused: containerd rejects anything over
/// 4 MiB anyway, and they are held whole in memory.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// The in-memory hot set of manifests.
const HOT_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

type TagKey = (Arc<str>, RepoName, Tag);

pub struct ManifestCache {
    storage: Storage,
    index: Arc<Index>,
    /// Told when a tag file cannot be written (a full disk).
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Synchronous moka: its calls take a short lock and never wait on
    /// I/O, and a purge on the blocking pool can drop entries directly.
    hot: moka::sync::Cache<Digest, Arc<Manifest>>,
    /// With whether the answer may be stored and shared.
    digest_flights: SingleFlight<Digest, Result<(Arc<Manifest>, bool), CacheError>>,
    tag_flights: SingleFlight<TagKey, Result<TagEntry, CacheError>>,
    negative: NegativeCache,
    /// The bucket shared with other replicas: asked before the upstream,
    /// and told what the upstream answered.
    shared: Option<Arc<SharedTier>>,
}

fn full_accept() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static(MANIFEST_ACCEPT),
    );
    headers
}

fn task_panicked<T>() -> Result<T, CacheError> {
    Err(CacheError::Internal("manifest task panicked".into()))
}

/// The media type of an upstream manifest answer, without parameters.
fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl ManifestCache {
    pub fn new(
        storage: Storage,
        index: Arc<Index>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shared: Option<Arc<SharedTier>>,
    ) -> ManifestCache {
        ManifestCache {
            storage,
            index,
            health,
            metrics,
            hot: moka::sync::Cache::builder()
                .weigher(|_: &Digest, m: &Arc<Manifest>| {
                    m.bytes.len().try_into().unwrap_or(u32::MAX)
                })
                .max_capacity(HOT_MANIFEST_BYTES)
                .build(),
            digest_flights: SingleFlight::new(tasks.clone()),
            tag_flights: SingleFlight::new(tasks),
            negative: NegativeCache::new(),
            shared,
        }
    }

    /// A manifest another replica stored, verified, brought onto the local
    /// disk and into the hot set. Counted as a hit: like a local one, it
    /// proves nothing about the repository, so the caller's private-content
    /// check applies.
    async fn shared_copy(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, CacheError> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let found = copy_from_shared(shared, &self.storage, &self.index, digest).await?;
        if let Some(manifest) = &found {
            self.hot.insert(digest.clone(), manifest.clone());
        }
        Ok(found)
    }

    /// The record another replica wrote for a tag this one has never seen,
    /// taken in as if it were its own: the tag's freshness rules then
    /// decide whether to ask the upstream.
    async fn shared_tag(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        tag: &Tag,
    ) -> Option<TagEntry> {
        let shared = self.shared.as_ref()?;
        let record = shared
            .tag(&upstream.name, repo.as_str(), tag.as_str())
            .await?;
        let entry = record.entry.clone();
        let tags = self.storage.tags.clone();
        let written = tokio::task::spawn_blocking(move || tags.put_tag(&record)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!(upstream = %upstream.name, %repo, %tag, "writing a tag file from the shared tier failed");
        }
        let recorded = self
            .index
            .set_tag(&upstream.name, repo.as_str(), tag.as_str(), &entry)
            // Learned through this repository by the replica that wrote it.
            .and_then(|()| {
                self.index
                    .link(&upstream.name, repo.as_str(), &entry.digest)
            });
        if let Err(e) = recorded {
            tracing::debug!(upstream = %upstream.name, %repo, %tag, error = %e, "recording a tag from the shared tier failed");
        }
        Some(entry)
    }

    fn count(&self, upstream: &Upstream, kind: &str, outcome: Outcome) {
        self.metrics
            .cache_outcome(&upstream.name, kind, outcome.label());
    }

    /// Drops a manifest from the in-memory hot set (after a purge).
    pub fn forget(&self, digest: &Digest) {
        self.hot.invalidate(digest);
    }

    /// Drops a tag whose manifest turned out not to be one, from the index
    /// and its tag file, so that the next lookup asks the upstream again
    /// instead of pointing at a body that will never be cached.
    pub async fn forget_tag(&self, upstream: &Upstream, repo: &RepoName, tag: &Tag) {
        let tags = self.storage.tags.clone();
        let (name, r, t) = (upstream.name.clone(), repo.clone(), tag.clone());
        let deleted =
            tokio::task::spawn_blocking(move || tags.delete_tag(&name, r.as_str(), t.as_str()))
                .await
                .map_err(CacheError::from)
                .and_then(|r| r.map_err(CacheError::from));
        let removed = self
            .index
            .remove_tag(&upstream.name, repo.as_str(), tag.as_str())
            .map_err(CacheError::from);
        if let Err(e) = deleted.and(removed) {
            tracing::warn!(upstream = %upstream.name, repo = %repo, tag = %tag, error = %e, "forgetting a tag that points at no manifest failed");
        }
    }

    /// A cached manifest, from memory or disk, without asking upstream.
    pub async fn local(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, CacheError> {
        if let Some(m) = self.hot.get(digest) {
            self.index.touch(Kind::Manifest, digest);
            return Ok(Some(m));
        }
        let Some(manifest) = read_stored(&self.storage, &self.index, digest).await? else {
            return Ok(None);
        };
        self.hot.insert(digest.clone(), manifest.clone());
        self.index.touch(Kind::Manifest, digest);
        Ok(Some(manifest))
    }

    /// The digest's one upstream fetch, for its single flight.
    fn fetch_once(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        negative_key: String,
        // Whether to look in the shared tier first (the caller has not).
        look_in_shared: bool,
    ) -> impl FnOnce() -> futures_util::future::BoxFuture<
        'static,
        Result<(Arc<Manifest>, bool), CacheError>,
    > {
        let upstream = upstream.clone();
        let repo = repo.clone();
        let digest = digest.clone();
        let store = self.storage.clone();
        let index = self.index.clone();
        let metrics = self.metrics.clone();
        let negative = self.negative.clone();
        let shared = self.shared.clone();
        let look = self.shared.clone().filter(|_| look_in_shared);
        let ttl = upstream.settings().negative_ttl;
        move || {
            Box::pin(async move {
                // A flight that ended between our look at the store and
                // this one's start has stored it already.
                if let Some(m) = read_stored(&store, &index, &digest).await? {
                    return Ok((m, true));
                }
                if let Some(shared) = &look {
                    if let Some(m) = copy_from_shared(shared, &store, &index, &digest).await? {
                        return Ok((m, true));
                    }
                }
                let work = fetch_by_digest(
                    &upstream,
                    &repo,
                    &digest,
                    &store,
                    &index,
                    &metrics,
                    shared.as_deref(),
                );
                negative.remembering(negative_key, ttl, work).await
            })
        }
    }

    /// Brings a manifest into the store in the background unless it is
    /// in the hot set. A HEAD by tag (how docker and containerd check a tag
    /// they hold) records only where the tag points; without the body, an
    /// outage later would answer that HEAD stale but fail the GET.
    pub fn warm(&self, upstream: &Arc<Upstream>, repo: &RepoName, digest: &Digest) {
        if self.hot.contains_key(digest) {
            return;
        }
        let key = NegativeCache::key(&upstream.name, repo.as_str(), &digest.to_string());
        let fetch = self.fetch_once(upstream, repo, digest, key, true);
        let flights = self.digest_flights.clone();
        let digest = digest.clone();
        self.digest_flights.tasks().spawn(async move {
            if let (Err(e), _) = flights.run(digest.clone(), fetch, task_panicked).await {
                tracing::debug!(%digest, error = %e, "fetching a tag's manifest after its HEAD failed");
            }
        });
    }

    /// The manifest with this digest: cached, or fetched once and cached.
    pub async fn by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Arc<Manifest>, Outcome), CacheError> {
        if let Some(m) = self.local(digest).await? {
            if let Some(shared) = &self.shared {
                shared.hit("local", Kind::Manifest);
            }
            self.count(upstream, "manifest", Outcome::Hit);
            return Ok((m, Outcome::Hit));
        }
        if let Some(m) = self.shared_copy(digest).await? {
            self.count(upstream, "manifest", Outcome::Hit);
            return Ok((m, Outcome::Hit));
        }
        let negative_key = NegativeCache::key(&upstream.name, repo.as_str(), &digest.to_string());
        if let Some(e) = self.negative.get(&negative_key).await {
            self.count(upstream, "manifest", Outcome::Negative);
            return Err(e);
        }
        let fetch = self.fetch_once(upstream, repo, digest, negative_key, false);
        let (result, joined) = self
            .digest_flights
            .run(digest.clone(), fetch, task_panicked)
            .await;
        let (manifest, shared) = result?;
        let outcome = if !shared {
            Outcome::Bypass
        } else if joined {
            Outcome::Coalesced
        } else {
            Outcome::Miss
        };
        if shared {
            self.hot.insert(digest.clone(), manifest.clone());
        }
        self.count(upstream, "manifest", outcome);
        Ok((manifest, outcome))
    }

    /// What `tag` points to: from the index while fresh, else from the
    /// upstream (one HEAD, shared by concurrent callers), else stale when
    /// the upstream fails.
    pub async fn resolve_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<(TagEntry, Outcome), CacheError> {
        let asked_at = now_millis();
        // A failing index (a full disk) is a tag not known here: asked of
        // the upstream, as on a cold cache.
        let cached = self
            .index
            .tag(&upstream.name, repo.as_str(), tag.as_str())
            .unwrap_or_else(|e| {
                tracing::debug!(upstream = %upstream.name, %repo, %tag, error = %e, "index lookup failed");
                None
            });
        let cached = match cached {
            Some(entry) => Some(entry),
            None => self.shared_tag(upstream, repo, tag).await,
        };
        let negative_key = NegativeCache::key(&upstream.name, repo.as_str(), tag.as_str());
        let refresh = || async {
            if let Some(e) = self.negative.get(&negative_key).await {
                self.count(upstream, "tag", Outcome::Negative);
                return (Err(e), false);
            }
            let revalidate = {
                let upstream = upstream.clone();
                let repo = repo.clone();
                let tag = tag.clone();
                let store = self.storage.clone();
                let index = self.index.clone();
                let health = self.health.clone();
                let metrics = self.metrics.clone();
                let negative = self.negative.clone();
                let negative_key = negative_key.clone();
                let shared = self.shared.clone();
                let ttl = upstream.settings().negative_ttl;
                move || async move {
                    // A flight that ended between our index read and this
                    // one's start has asked already: take its answer.
                    let answered = index
                        .tag(&upstream.name, repo.as_str(), tag.as_str())
                        .ok()
                        .flatten()
                        .filter(|e| e.checked_at >= asked_at);
                    if let Some(entry) = answered {
                        return Ok(entry);
                    }
                    let work = revalidate_tag(
                        &upstream,
                        &repo,
                        &tag,
                        Recorders {
                            store: &store,
                            index: &index,
                            health: &health,
                            metrics: &metrics,
                            shared: shared.as_deref(),
                        },
                    );
                    negative.remembering(negative_key, ttl, work).await
                }
            };
            let key = (upstream.name.clone(), repo.clone(), tag.clone());
            self.tag_flights.run(key, revalidate, task_panicked).await
        };
        let (entry, outcome) = match ttl::lookup(upstream, cached.clone(), refresh).await {
            // The upstream deleted a tag held here: served on, or no more
            // (`keep_deleted`).
            Err(e) if e.is_not_found() => {
                let Some(cached) = cached else {
                    return Err(e);
                };
                match moves::deleted(upstream, repo, tag, &self.index, &self.metrics, cached) {
                    Some(kept) => (kept, Outcome::Stale),
                    None => {
                        self.forget_tag(upstream, repo, tag).await;
                        return Err(e);
                    }
                }
            }
            answer => answer?,
        };
        self.count(upstream, "tag", outcome);
        Ok((entry, outcome))
    }
}

impl ttl::Confirmed for TagEntry {
    fn checked_at(&self) -> u64 {
        self.checked_at
    }
    fn max_age(&self) -> Option<std::time::Duration> {
        self.max_age_ms.map(std::time::Duration::from_millis)
    }
    fn shared(&self) -> bool {
        !self.unshared
    }
}

/// Asks the upstream where a tag points now, with a HEAD, and records it:
/// in its tag file, then in the index, unless the upstream's answer may
/// not be shared (`no-store`, `private`).
/// Where a tag's answer is recorded.
struct Recorders<'a> {
    store: &'a Storage,
    index: &'a Index,
    health: &'a Health,
    metrics: &'a Metrics,
    shared: Option<&'a SharedTier>,
}

async fn revalidate_tag(
    upstream: &Upstream,
    repo: &RepoName,
    tag: &Tag,
    to: Recorders<'_>,
) -> Result<TagEntry, CacheError> {
    let Recorders {
        store,
        index,
        health,
        metrics,
        shared,
    } = to;
    let response = ask_manifest(upstream, Method::HEAD, repo, tag.as_str()).await?;
    let sharing = response.sharing(&Method::HEAD);
    let headers = response.headers();
    let digest = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    // Only a manifest type is taken from a HEAD: anything else (a JSON or
    // HTML answer) is looked at whole below, so that no tag is recorded
    // for a body that is not a manifest.
    let media_type = content_type(headers)
        .and_then(|t| manifest_media_type(&t))
        .map(str::to_owned);
    // The header, not `content_length()`: a HEAD response's body is empty,
    // and the transport reports the body's length.
    let size: Option<u64> = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let with_sharing = |sharing: upstream::Sharing, digest, media_type, size| TagEntry {
        digest,
        media_type,
        size,
        checked_at: now_millis(),
        max_age_ms: sharing.max_age.map(|d| d.as_millis() as u64),
        unshared: !sharing.storable,
    };
    let entry = match (digest, media_type, size) {
        (Some(digest), Some(media_type), Some(size)) => {
            with_sharing(sharing, digest, media_type, size)
        }
        // Some registries answer HEAD without the digest: GET by tag and
        // hash the bytes instead; that answer's caching headers count.
        _ => {
            let fetched = get_manifest(upstream, repo, tag.as_str()).await?;
            let media_type = checked(upstream, repo, tag.as_str(), &fetched)?;
            let digest = Digest::sha256_of(&fetched.bytes);
            let size = fetched.bytes.len() as u64;
            with_sharing(fetched.sharing, digest, media_type, size)
        }
    };
    if entry.size > MAX_MANIFEST_SIZE as u64 {
        return Err(CacheError::ManifestTooLarge);
    }
    // A move is recorded; an immutable tag keeps its digest (even for an
    // answer that may not be stored).
    let entry = moves::checked(upstream, repo, tag, index, metrics, entry);
    if entry.unshared {
        tracing::debug!(upstream = %upstream.name, repo = %repo, tag = %tag, "the upstream forbids sharing this tag's answer; not recorded");
        return Ok(entry);
    }
    let record = TagRecord {
        upstream: upstream.name.to_string(),
        repo: repo.as_str().to_owned(),
        tag: tag.as_str().to_owned(),
        entry: entry.clone(),
    };
    if let Some(shared) = shared {
        shared.publish_tag(record.clone());
        if upstream.may_hold_private_content() {
            shared.publish_link(&upstream.name, repo.as_str(), &entry.digest);
        }
    }
    let writer = store.tags.clone();
    // The answer stands without its file (the index still has it); a tag
    // that cannot be recorded is only one a rebuilt index will miss.
    let written = tokio::task::spawn_blocking(move || writer.put_tag(&record)).await?;
    if let Err(e) = &written {
        tracing::debug!(upstream = %upstream.name, repo = %repo, tag = %tag, error = %e, "writing the tag file failed");
    }
    // A failed tag write is a failing disk: readiness says so (at WARN, once).
    health.note_write(&written.map_err(CacheError::from));
    // Nor does the answer wait on the index: while it fails writes (a full
    // disk) tags still resolve, and the tag file above restores the record
    // into the reopened index.
    let recorded = index
        .set_tag(&upstream.name, repo.as_str(), tag.as_str(), &entry)
        // The upstream just said this repository holds that manifest.
        .and_then(|()| index.link(&upstream.name, repo.as_str(), &entry.digest));
    if let Err(e) = recorded {
        tracing::debug!(upstream = %upstream.name, repo = %repo, tag = %tag, error = %e, "recording the tag in the index failed");
    }
    Ok(entry)
}

/// `HEAD` or `GET manifests/<reference>` with the full Accept set; anything
/// but 200 is an error. Every manifest answer carries Docker Hub's
/// rate-limit headers, so they are recorded here.
async fn ask_manifest(
    upstream: &Upstream,
    method: Method,
    repo: &RepoName,
    reference: &str,
) -> Result<upstream::Response, CacheError> {
    let response = upstream
        .request(
            method,
            repo,
            &format!("manifests/{reference}"),
            None,
            full_accept(),
        )
        .await?;
    upstream.record_ratelimit(response.headers());
    Ok(response.require_ok("manifest")?)
}

struct Fetched {
    bytes: Bytes,
    content_type: Option<String>,
    sharing: upstream::Sharing,
}

/// `GET manifests/<reference>` with the full Accept set: the bytes, at most
/// [`MAX_MANIFEST_SIZE`], and their `Content-Type`, not yet checked.
async fn get_manifest(
    upstream: &Upstream,
    repo: &RepoName,
    reference: &str,
) -> Result<Fetched, CacheError> {
    let response = ask_manifest(upstream, Method::GET, repo, reference).await?;
    let content_type = content_type(response.headers());
    let sharing = response.sharing(&Method::GET);
    let bytes = response
        .bytes(MAX_MANIFEST_SIZE)
        .await
        .map_err(CacheError::manifest_body)?;
    upstream.count_received(bytes.len());
    Ok(Fetched {
        bytes,
        content_type,
        sharing,
    })
}

/// The media type of a fetched manifest, once its body is known to be one;
/// anything else is refused before it can be stored or tagged.
fn checked(
    upstream: &Upstream,
    repo: &RepoName,
    reference: &str,
    fetched: &Fetched,
) -> Result<String, CacheError> {
    validate_manifest(fetched.content_type.as_deref(), &fetched.bytes).map_err(|error| {
        tracing::warn!(upstream = %upstream.name, repo = %repo, reference, content_type = fetched.content_type.as_deref().unwrap_or("-"), %error, "upstream answered a body that is not a manifest; not cached");
        CacheError::NotAManifest {
            upstream: upstream.name.to_string(),
            reference: reference.to_owned(),
            error,
        }
    })
}

/// Writes verified manifest bytes to the store, then the index.
async fn store_manifest(
    store: &Storage,
    index: &Index,
    digest: &Digest,
    bytes: &Bytes,
    media_type: &str,
) -> Result<(), CacheError> {
    let content = store.content.clone();
    let (d, to_store) = (digest.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || content.write_whole(Kind::Manifest, &d, &to_store))
        .await??;
    index.record(Kind::Manifest, digest, bytes.len() as u64, Some(media_type))?;
    Ok(())
}

/// A manifest from the shared tier, verified there, stored on the local
/// disk and in the index.
async fn copy_from_shared(
    shared: &SharedTier,
    store: &Storage,
    index: &Index,
    digest: &Digest,
) -> Result<Option<Arc<Manifest>>, CacheError> {
    let Some(bytes) = shared.manifest(digest, MAX_MANIFEST_SIZE as u64).await else {
        return Ok(None);
    };
    let Some(media_type) = sniff_manifest_media_type(&bytes) else {
        tracing::debug!(%digest, "a manifest in the shared tier names no media type; asking the upstream");
        return Ok(None);
    };
    store_manifest(store, index, digest, &bytes, &media_type).await?;
    shared.hit("bucket", Kind::Manifest);
    Ok(Some(Arc::new(Manifest {
        digest: digest.clone(),
        media_type,
        bytes,
    })))
}

/// The stored manifest with this digest, if any, read off the async runtime.
async fn read_stored(
    store: &Storage,
    index: &Index,
    digest: &Digest,
) -> Result<Option<Arc<Manifest>>, CacheError> {
    let reader = store.content.clone();
    let d = digest.clone();
    let Some(bytes) =
        tokio::task::spawn_blocking(move || reader.read_whole(Kind::Manifest, &d)).await??
    else {
        return Ok(None);
    };
    // A failing index (a full disk) must not fail a stored manifest: its
    // media type can be read from the bytes.
    let recorded = index.get(Kind::Manifest, digest).unwrap_or_else(|e| {
        tracing::debug!(%digest, error = %e, "index lookup failed; sniffing the media type");
        None
    });
    let media_type = recorded
        .and_then(|e| e.media_type)
        .or_else(|| sniff_manifest_media_type(&bytes))
        .ok_or(CacheError::BadManifestAnswer)?;
    Ok(Some(Arc::new(Manifest {
        digest: digest.clone(),
        media_type,
        bytes: bytes.into(),
    })))
}

async fn fetch_by_digest(
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    store: &Storage,
    index: &Index,
    metrics: &Metrics,
    shared: Option<&SharedTier>,
) -> Result<(Arc<Manifest>, bool), CacheError> {
    let fetched = get_manifest(upstream, repo, &digest.to_string()).await?;
    let actual = Digest::sha256_of(&fetched.bytes);
    if actual != *digest {
        metrics.digest_mismatches.inc();
        upstream
            .notifier()
            .emit(crate::notify::Event::DigestMismatch {
                upstream: upstream.name.to_string(),
                repository: repo.to_string(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        return Err(CacheError::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    let media_type = checked(upstream, repo, &digest.to_string(), &fetched)?;
    let bytes = fetched.bytes;
    let manifest = Arc::new(Manifest {
        digest: digest.clone(),
        media_type: media_type.clone(),
        bytes: bytes.clone(),
    });
    // Content-addressed, but still the upstream's to keep private.
    if !fetched.sharing.storable {
        tracing::debug!(upstream = %upstream.name, repo = %repo, %digest, "the upstream forbids sharing this manifest; not stored");
        return Ok((manifest, false));
    }
    store_manifest(store, index, digest, &bytes, &media_type).await?;
    index.link(&upstream.name, repo.as_str(), digest)?;
    if let Some(shared) = shared {
        shared.publish_manifest(digest, bytes, &media_type);
        if upstream.may_hold_private_content() {
            shared.publish_link(&upstream.name, repo.as_str(), digest);
        }
    }
    Ok((manifest, true))
}
