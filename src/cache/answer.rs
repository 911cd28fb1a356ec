//! The cache's answers to the registry API's reads: a blob, a manifest, a
//! listing. Each carries its [`Outcome`]; the HTTP surface only turns them
//! into responses.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, Method};

use super::flight::{body_stream, wait_for_headers, Attached, BodySource, ReaderGuard};
use super::storage::{Kind, Object};
use super::{Cache, CacheError, Listing, Manifest, Outcome};
use crate::metrics::Metrics;
use crate::registry::{AcceptList, Digest, Reference, RepoName};
use crate::upstream::Upstream;

/// A failed answer, with how far it got: a fill that failed after it was
/// joined is still logged as `coalesced`.
#[derive(Debug)]
pub struct AnswerError {
    pub outcome: Option<Outcome>,
    pub error: CacheError,
}

impl From<CacheError> for AnswerError {
    fn from(error: CacheError) -> Self {
        AnswerError {
            outcome: None,
            error,
        }
    }
}

trait WithOutcome<T> {
    fn with(self, outcome: Outcome) -> Result<T, AnswerError>;
}

impl<T> WithOutcome<T> for Result<T, CacheError> {
    fn with(self, outcome: Outcome) -> Result<T, AnswerError> {
        self.map_err(|error| AnswerError {
            outcome: Some(outcome),
            error,
        })
    }
}

/// A blob: its size (unknown when the upstream streams without a length)
/// and, for a GET, its body.
pub struct BlobAnswer {
    pub outcome: Outcome,
    pub size: Option<u64>,
    pub body: Option<BlobBody>,
}

/// Where a blob's bytes come from, with the reader guard that keeps
/// eviction away for as long as the body lives.
pub struct BlobBody {
    source: BodySource,
    reader: Option<ReaderGuard>,
    metrics: Arc<Metrics>,
}

impl BlobBody {
    /// Bytes `[start, end)` in large chunks; `end` may be
    /// [`super::UNKNOWN_SIZE`]. A failed fill ends the stream with an
    /// error, which aborts the client's connection.
    pub fn stream(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        body_stream(self.source, start, end, self.metrics, self.reader)
    }
}

/// A manifest answer.
pub enum ManifestAnswer {
    Found {
        digest: Digest,
        media_type: String,
        size: u64,
        /// The bytes, for a GET; a HEAD by tag is answered from the tag
        /// record alone, without them.
        manifest: Option<Arc<Manifest>>,
        outcome: Outcome,
        /// Served past its freshness because the upstream failed.
        stale: bool,
    },
    /// The client accepts none of what is cached: relay it from the
    /// upstream uncached.
    NotAcceptable,
}

impl Cache {
    /// `GET`/`HEAD` of a blob: from the store on a hit, from the one
    /// running fill on a miss. A HEAD of an uncached blob asks the upstream
    /// and starts no fill: a client checking for existence should not cost
    /// a download.
    pub async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        head: bool,
    ) -> Result<BlobAnswer, AnswerError> {
        // Taken before the object is opened and held by the body until it
        // is dropped: eviction skips blobs with readers.
        let mut guard = (!head).then(|| self.readers.acquire(digest));
        // Two passes at most: a fill may commit between our look and our
        // attach.
        for _ in 0..2 {
            if let Some(object) = self.open_intact_blob(digest).await? {
                self.authorize_cached(upstream, repo, Kind::Blob, digest)
                    .await
                    .with(Outcome::Hit)?;
                self.count(upstream, "blob", Outcome::Hit);
                self.index.touch(Kind::Blob, digest);
                if let Some(shared) = &self.shared {
                    shared.hit("local", Kind::Blob, digest);
                }
                return Ok(BlobAnswer {
                    outcome: Outcome::Hit,
                    size: Some(object.size),
                    body: (!head)
                        .then(|| self.body(BodySource::Committed(object.reader), guard.take())),
                });
            }
            if head {
                if let Some(size) = self.head_shared(upstream, repo, digest).await? {
                    return Ok(BlobAnswer {
                        outcome: Outcome::Hit,
                        size: Some(size),
                        body: None,
                    });
                }
                let size = self
                    .head_upstream(upstream, repo, digest)
                    .await
                    .with(Outcome::Miss)?;
                return Ok(BlobAnswer {
                    outcome: Outcome::Miss,
                    size,
                    body: None,
                });
            }
            if self.shared.is_some() {
                // A fill may come from the bucket or another replica,
                // which prove nothing about this repository.
                self.authorize_cached(upstream, repo, Kind::Blob, digest)
                    .await
                    .with(Outcome::Miss)?;
            }
            match self.fills.attach(upstream.clone(), repo.clone(), digest)? {
                Attached::Committed => continue,
                Attached::Fill {
                    mut progress,
                    joined,
                } => {
                    if joined && self.shared.is_none() {
                        // Someone else's fill proves nothing about this
                        // repository (with a shared tier, checked above).
                        self.authorize_cached(upstream, repo, Kind::Blob, digest)
                            .await
                            .with(Outcome::Coalesced)?;
                    }
                    let outcome = if joined {
                        Outcome::Coalesced
                    } else {
                        Outcome::Miss
                    };
                    self.count(upstream, "blob", outcome);
                    let size = wait_for_headers(&mut progress).await.with(outcome)?;
                    return Ok(BlobAnswer {
                        outcome,
                        size,
                        body: Some(self.body(BodySource::Fill(progress), guard.take())),
                    });
                }
            }
        }
        Err(CacheError::Internal("the blob vanished while it was being served".into()).into())
    }

    /// A blob for another replica's peer request: this replica's running
    /// fill of it (the last byte held until verified, as for any client),
    /// or its committed copy; `None` when it has neither. Never starts a
    /// fill, and asks no upstream: the caller holds the fill lease's
    /// answer, not a repository's.
    pub async fn peer_blob(
        &self,
        digest: &Digest,
        head: bool,
    ) -> Result<Option<BlobAnswer>, CacheError> {
        let mut guard = (!head).then(|| self.readers.acquire(digest));
        if let Some(object) = self.open_intact_blob(digest).await? {
            return Ok(Some(BlobAnswer {
                outcome: Outcome::Hit,
                size: Some(object.size),
                body: (!head)
                    .then(|| self.body(BodySource::Committed(object.reader), guard.take())),
            }));
        }
        let Some(mut progress) = self.fills.running_fill(digest) else {
            return Ok(None);
        };
        let size = wait_for_headers(&mut progress).await?;
        Ok(Some(BlobAnswer {
            outcome: Outcome::Coalesced,
            size,
            body: (!head).then(|| self.body(BodySource::Fill(progress), guard.take())),
        }))
    }

    fn body(&self, source: BodySource, reader: Option<ReaderGuard>) -> BlobBody {
        BlobBody {
            source,
            reader,
            metrics: self.metrics.clone(),
        }
    }

    fn count(&self, upstream: &Upstream, kind: &str, outcome: Outcome) {
        self.metrics
            .cache_outcome(&upstream.name, kind, outcome.label());
    }

    async fn open_blob(&self, digest: &Digest) -> Result<Option<Object>, CacheError> {
        let store = self.storage.content.clone();
        let d = digest.clone();
        Ok(tokio::task::spawn_blocking(move || store.open(Kind::Blob, &d)).await??)
    }

    /// The committed blob, if it is whole: one whose size is not the
    /// index's (a file truncated behind the cache's back) is corrupt, and is
    /// quarantined rather than served, so this request fills it again.
    async fn open_intact_blob(&self, digest: &Digest) -> Result<Option<Object>, CacheError> {
        let Some(object) = self.open_blob(digest).await? else {
            return Ok(None);
        };
        // A failing index (a full disk) must not fail a hit: without the
        // record there is nothing to compare, and the file is served.
        let recorded = self.index.get(Kind::Blob, digest).unwrap_or_else(|e| {
            tracing::debug!(%digest, error = %e, "index lookup failed; serving the file");
            None
        });
        match recorded {
            Some(entry) if entry.size != object.size => {
                let evictor = self.evictor.clone();
                let d = digest.clone();
                let taken = tokio::task::spawn_blocking(move || evictor.quarantine(Kind::Blob, &d))
                    .await??;
                let moved_to = taken.and_then(|q| q.location);
                tracing::warn!(%digest, indexed = entry.size, on_disk = object.size, moved_to = moved_to.as_deref(), "cached blob has the wrong size; quarantined, fetching it again");
                Ok(None)
            }
            _ => Ok(Some(object)),
        }
    }

    /// The size of a blob another replica stored, for a HEAD: answered
    /// without the upstream (which may be down, or rate-limiting).
    async fn head_shared(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, AnswerError> {
        let Some(shared) = self.shared.as_ref().filter(|s| s.worth_asking()) else {
            return Ok(None);
        };
        let Ok(Some(stored)) = shared.bucket().stat(Kind::Blob, digest).await else {
            return Ok(None);
        };
        self.authorize_cached(upstream, repo, Kind::Blob, digest)
            .await
            .with(Outcome::Hit)?;
        shared.hit("bucket", Kind::Blob, digest);
        Ok(Some(stored.size))
    }

    /// The upstream's size of a blob, from a HEAD.
    async fn head_upstream(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, CacheError> {
        let response = upstream
            .request(
                Method::HEAD,
                repo,
                &format!("blobs/{digest}"),
                None,
                HeaderMap::new(),
            )
            .await?
            .require_ok("blob")?;
        // The header, not the body's length: a HEAD has no body.
        Ok(response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// `GET`/`HEAD` of a manifest by tag or digest, for a client that
    /// accepts `accept`.
    pub async fn manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer, AnswerError> {
        let (manifest, outcome, stale) = match reference {
            Reference::Digest(digest) => {
                let (m, outcome) = self.manifests.by_digest(upstream, repo, digest).await?;
                if outcome != Outcome::Miss {
                    self.authorize_cached(upstream, repo, Kind::Manifest, digest)
                        .await
                        .with(outcome)?;
                }
                (m, outcome, false)
            }
            Reference::Tag(tag) => {
                let (entry, outcome) = self.manifests.resolve_tag(upstream, repo, tag).await?;
                let stale = outcome == Outcome::Stale;
                if !accept.allows(&entry.media_type) {
                    return Ok(ManifestAnswer::NotAcceptable);
                }
                if head {
                    // Asked upstream just now: have the body too, so the
                    // tag can be served whole through an outage.
                    if matches!(outcome, Outcome::Miss | Outcome::Revalidated) {
                        self.manifests.warm(upstream, repo, &entry.digest);
                    }
                    return Ok(ManifestAnswer::Found {
                        digest: entry.digest,
                        media_type: entry.media_type,
                        size: entry.size,
                        manifest: None,
                        outcome,
                        stale,
                    });
                }
                let (m, _) = match self
                    .manifests
                    .by_digest(upstream, repo, &entry.digest)
                    .await
                {
                    // The HEAD named a manifest type, the body is none:
                    // the tag must not keep pointing at it.
                    Err(e @ CacheError::NotAManifest { .. }) => {
                        self.manifests.forget_tag(upstream, repo, tag).await;
                        return Err(e).with(outcome);
                    }
                    found => found.with(outcome)?,
                };
                (m, outcome, stale)
            }
        };
        if !accept.allows(&manifest.media_type) {
            return Ok(ManifestAnswer::NotAcceptable);
        }
        Ok(ManifestAnswer::Found {
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            size: manifest.bytes.len() as u64,
            manifest: (!head).then_some(manifest),
            outcome,
            stale,
        })
    }

    /// `GET /v2/<repo>/<suffix>?<query>` (tag lists, referrers) at the
    /// upstream, through the cache.
    pub async fn listing(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        suffix: &str,
        query: Option<&str>,
    ) -> Result<(Listing, Outcome), CacheError> {
        self.listings.get(upstream, repo, suffix, query).await
    }
}
