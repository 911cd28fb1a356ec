//! Where one fill's bytes come from, and where it turns when they stop.
//!
//! Without a shared tier, that is the upstream, resumed with a Range when
//! its body breaks. With one ([`SharedTier::plan`]), a fill may instead
//! stream from the bucket (another replica stored the blob) or from the
//! replica holding the blob's fill lease; when that stream breaks, it
//! carries on from the bucket if the blob landed there, else follows the
//! lease's next holder, else takes the lease over once it is stale and
//! resumes from the upstream — always from the bytes it already has, with
//! the hasher carrying on. Whatever the origin, the fill verifies the whole
//! blob before it commits.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::fill::Progress;
use super::upload;
use crate::cache::shared::{LeaseKeeper, Plan, SharedTier};
use crate::cache::storage::bucket::lease::Holder;
use crate::cache::storage::bucket::Stored;
use crate::cache::storage::Kind;
use crate::cache::CacheError;
use crate::config::OnHolderUnreachable;
use crate::registry::{Digest, RepoName};
use crate::upstream::Upstream;

/// A body to receive, from wherever.
pub struct Opened<'a> {
    pub stream: BoxStream<'a, Result<Bytes, CacheError>>,
    /// The whole blob's size, when the origin says it.
    pub size: Option<u64>,
}

/// Where the bytes are coming from now.
pub enum Origin {
    Upstream,
    /// The bucket, and the version read (a corrupt one is removed only if
    /// it is still that one).
    Bucket(Stored),
    /// The replica holding the fill lease.
    Peer,
}

pub struct Source<'a> {
    upstream: &'a Upstream,
    repo: &'a RepoName,
    digest: &'a Digest,
    shared: Option<&'a Arc<SharedTier>>,
    pub origin: Origin,
    /// The fill's progress, for its upload to the bucket.
    progress: watch::Receiver<Progress>,
    /// The upstream's fill slot, while this fill fetches from it.
    slot: Option<OwnedSemaphorePermit>,
    /// Whether this fill uploads what it fetched (it fetched from the
    /// upstream, as lease holder or alone).
    uploading: bool,
}

fn shared_error(e: impl std::fmt::Display) -> CacheError {
    CacheError::Shared(e.to_string())
}

impl<'a> Source<'a> {
    pub fn new(
        upstream: &'a Upstream,
        repo: &'a RepoName,
        digest: &'a Digest,
        shared: Option<&'a Arc<SharedTier>>,
        progress: watch::Receiver<Progress>,
    ) -> Source<'a> {
        Source {
            upstream,
            repo,
            digest,
            shared,
            origin: Origin::Upstream,
            progress,
            slot: None,
            uploading: false,
        }
    }

    pub fn upstream(&self) -> &'a Upstream {
        self.upstream
    }

    pub fn digest(&self) -> &'a Digest {
        self.digest
    }

    pub fn is_upstream(&self) -> bool {
        matches!(self.origin, Origin::Upstream)
    }

    /// The first body of the fill.
    pub async fn open(&mut self) -> Result<Opened<'a>, CacheError> {
        let Some(shared) = self.shared else {
            return self.turn_upstream(None, 0).await;
        };
        // One GET: a 404 is the miss, so no HEAD goes before it.
        if shared.worth_asking() {
            if let Some(opened) = self.open_bucket(shared, 0).await {
                shared.hit("bucket", Kind::Blob, self.digest);
                return Ok(opened);
            }
        }
        match shared.plan(self.digest).await {
            Plan::Follow(holder) => self.follow_first(shared, holder).await,
            Plan::Upstream(lease) => self.turn_upstream(lease, 0).await,
            // A stale lease whose holder had stored the blob meanwhile.
            Plan::Bucket(_) => match self.open_bucket(shared, 0).await {
                Some(opened) => {
                    shared.hit("bucket", Kind::Blob, self.digest);
                    Ok(opened)
                }
                None => self.turn_upstream(None, 0).await,
            },
        }
    }

    /// Follows the lease holder from the start; `on_holder_unreachable`
    /// decides when it cannot be reached.
    async fn follow_first(
        &mut self,
        shared: &'a Arc<SharedTier>,
        holder: Holder,
    ) -> Result<Opened<'a>, CacheError> {
        match self.follow(shared, &holder, 0).await {
            Ok(opened) => {
                shared.lease_outcome("followed");
                Ok(opened)
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, holder = %holder.replica, error = %e, "the fill lease's holder cannot be reached");
                match shared.settings().on_holder_unreachable {
                    OnHolderUnreachable::Fetch => self.turn_upstream(None, 0).await,
                    OnHolderUnreachable::Wait => self.recover(shared, 0, None).await,
                }
            }
        }
    }

    /// The body again from byte `from`, after the current one broke, and
    /// how many of its leading bytes are staged already.
    pub async fn reopen(
        &mut self,
        from: u64,
        size: Option<u64>,
    ) -> Result<(Opened<'a>, u64), CacheError> {
        match (&self.origin, self.shared) {
            (Origin::Upstream, _) | (_, None) => self.upstream_from(from, size).await,
            (Origin::Bucket(_), Some(shared)) => match self.open_bucket(shared, from).await {
                Some(opened) => Ok((opened, 0)),
                None => Ok((self.recover(shared, from, size).await?, 0)),
            },
            (Origin::Peer, Some(shared)) => Ok((self.recover(shared, from, size).await?, 0)),
        }
    }

    /// After a broken peer stream: the bucket if the blob landed, else the
    /// lease's (new) holder, else the lease itself once it is stale. Bounded
    /// by [`SharedTier::takeover_wait`]; after that, the upstream alone.
    async fn recover(
        &mut self,
        shared: &'a Arc<SharedTier>,
        from: u64,
        size: Option<u64>,
    ) -> Result<Opened<'a>, CacheError> {
        let deadline = tokio::time::Instant::now() + shared.takeover_wait();
        loop {
            if shared
                .bucket()
                .stat(Kind::Blob, self.digest)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                if let Some(opened) = self.open_bucket(shared, from).await {
                    return Ok(opened);
                }
            }
            match shared.claim(self.digest).await {
                Plan::Follow(holder) => {
                    if let Ok(opened) = self.follow(shared, &holder, from).await {
                        return Ok(opened);
                    }
                }
                Plan::Upstream(lease) => {
                    let (opened, _) = self.turn_upstream_from(lease, from, size).await?;
                    return Ok(opened);
                }
                Plan::Bucket(_) => {
                    if let Some(opened) = self.open_bucket(shared, from).await {
                        return Ok(opened);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(digest = %self.digest, from, "no replica and no bucket could finish the blob in time; fetching it alone");
                let (opened, _) = self.turn_upstream_from(None, from, size).await?;
                return Ok(opened);
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    async fn follow(
        &mut self,
        shared: &'a Arc<SharedTier>,
        holder: &Holder,
        from: u64,
    ) -> Result<Opened<'a>, CacheError> {
        let body = shared
            .peer()
            .open(holder, self.digest, from)
            .await
            .map_err(shared_error)?;
        self.origin = Origin::Peer;
        Ok(Opened {
            stream: body.stream.map_err(shared_error).boxed(),
            size: body.size,
        })
    }

    async fn open_bucket(&mut self, shared: &'a Arc<SharedTier>, from: u64) -> Option<Opened<'a>> {
        match shared
            .bucket()
            .read_from(Kind::Blob, self.digest, from)
            .await
        {
            Ok(Some((stored, body))) => {
                let size = Some(stored.size);
                self.origin = Origin::Bucket(stored);
                Some(Opened {
                    stream: body.map_err(shared_error).boxed(),
                    size,
                })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(digest = %self.digest, error = %e, "reading a blob from the shared tier failed");
                None
            }
        }
    }

    /// Turns to the upstream from the start.
    async fn turn_upstream(
        &mut self,
        lease: Option<LeaseKeeper>,
        from: u64,
    ) -> Result<Opened<'a>, CacheError> {
        self.become_filler(lease).await;
        debug_assert_eq!(from, 0);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        let response = self
            .upstream
            .request(
                Method::GET,
                self.repo,
                &format!("blobs/{}", self.digest),
                None,
                headers,
            )
            .await?
            .require_ok("blob")?;
        let size = response.content_length();
        Ok(Opened {
            stream: response.bytes_stream().map_err(CacheError::from).boxed(),
            size,
        })
    }

    /// Turns to the upstream from byte `from` (a resume when `from > 0`).
    async fn turn_upstream_from(
        &mut self,
        lease: Option<LeaseKeeper>,
        from: u64,
        size: Option<u64>,
    ) -> Result<(Opened<'a>, u64), CacheError> {
        if from == 0 {
            let opened = self.turn_upstream(lease, 0).await?;
            return Ok((opened, 0));
        }
        self.become_filler(lease).await;
        self.upstream_from(from, size).await
    }

    async fn upstream_from(
        &mut self,
        from: u64,
        size: Option<u64>,
    ) -> Result<(Opened<'a>, u64), CacheError> {
        let (response, skip) =
            super::fill::resume(self.upstream, self.repo, self.digest, from, size).await?;
        Ok((
            Opened {
                stream: response.bytes_stream().map_err(CacheError::from).boxed(),
                size,
            },
            skip,
        ))
    }

    /// This fill now fetches from the upstream: it takes a fill slot, and
    /// with a shared tier it uploads what it fetched (holding `lease`, when
    /// it has one, until the upload ends).
    async fn become_filler(&mut self, lease: Option<LeaseKeeper>) {
        self.origin = Origin::Upstream;
        if self.slot.is_none() {
            self.slot = self.upstream.fill_slot().await;
        }
        if let (Some(shared), false) = (self.shared, self.uploading) {
            self.uploading = true;
            let progress = self.progress.clone();
            let digest = self.digest.clone();
            shared
                .tasks()
                .spawn(upload::upload(shared.clone(), digest, progress, lease));
        }
    }

    /// What a failed verification says about the origin: content read from
    /// the bucket that does not hash is the bucket's, and is removed.
    /// `true` when it was the bucket's.
    pub async fn blame(&self, error: &CacheError) -> bool {
        match (&self.origin, self.shared) {
            (Origin::Bucket(seen), Some(shared)) => {
                shared
                    .corrupt(Kind::Blob, self.digest, Some(seen.clone()), error)
                    .await;
                true
            }
            _ => false,
        }
    }
}
