//! Prefetch: bring whole images into the cache before anyone asks, through
//! the same manifest cache and blob fills a client's pull uses (one fetch
//! per digest, verified before commit). Run in-process by `regcache
//! prefetch` on a stopped daemon's cache, and by the daemon itself for
//! `POST /admin/prefetch`, so a daemon with TLS or client auth on its
//! registry listener can be warmed all the same.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::cache::flight::{Attached, Phase};
use crate::cache::storage::{ContentStoreExt, Kind};
use crate::cache::{Cache, CacheError};
use crate::registry::{references, Descriptor, Digest, Reference, RepoName};
use crate::upstream::Upstream;

/// Why an image could not be prefetched; the text is what the CLI prints
/// and the admin API streams.
#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("{0}")]
    Cache(#[from] CacheError),
    #[error("blob {digest}: {source}")]
    Blob { digest: Digest, source: CacheError },
    #[error("blob {0}: the fill ended without a result")]
    FillVanished(Digest),
    #[error("manifest {digest}: {source}")]
    BadManifest {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("unsupported digest {0}")]
    UnsupportedDigest(String),
    #[error("no manifest for {wanted} (the index has {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("manifest {0} is a nested index, which is not supported")]
    NestedIndex(Digest),
}

/// Blobs fetched at once per image.
const BLOB_CONCURRENCY: usize = 4;

/// What an image turned out to need, known once its manifests are in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub digest: String,
    /// The platforms chosen from an index; empty for a single manifest.
    pub platforms: Vec<String>,
    pub blobs: u64,
    pub bytes: u64,
}

/// What one image's prefetch cached (or found cached).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Prefetched {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// Told how an image's prefetch goes (a progress bar, a response stream).
pub trait PrefetchProgress: Send + Sync {
    fn planned(&self, plan: &Plan);
    /// `bytes` more of the image's blobs are on disk.
    fn advanced(&self, bytes: u64);
}

/// One image: its manifest, the chosen platforms' manifests (all when
/// `platforms` is empty), and their blobs. The caller has checked the
/// upstream's allow and deny rules, as for a pull.
pub async fn prefetch_image(
    cache: &Cache,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    reference: &Reference,
    platforms: &[String],
    progress: &dyn PrefetchProgress,
) -> Result<Prefetched, PrefetchError> {
    let (digest, bytes) = manifest(cache, upstream, repo, reference).await?;
    let refs = references(&bytes).map_err(|source| PrefetchError::BadManifest {
        digest: digest.clone(),
        source,
    })?;
    let mut done = Prefetched {
        manifests: 1,
        ..Prefetched::default()
    };
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut chosen = Vec::new();
    if refs.manifests.is_empty() {
        blobs = refs.blobs;
    } else {
        let children: Vec<&Descriptor> = refs
            .manifests
            .iter()
            .filter(|m| {
                platforms.is_empty() || m.platform.as_ref().is_some_and(|p| p.matches(platforms))
            })
            .collect();
        if children.is_empty() {
            let available: Vec<String> = refs
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref().map(|p| p.label()))
                .collect();
            return Err(PrefetchError::NoPlatform {
                wanted: platforms.join(", "),
                available: available.join(", "),
            });
        }
        for child in children {
            let cd = child
                .digest()
                .ok_or_else(|| PrefetchError::UnsupportedDigest(child.digest.clone()))?;
            let (_, child_bytes) =
                manifest(cache, upstream, repo, &Reference::Digest(cd.clone())).await?;
            done.manifests += 1;
            let r = references(&child_bytes).map_err(|source| PrefetchError::BadManifest {
                digest: cd.clone(),
                source,
            })?;
            if !r.manifests.is_empty() {
                return Err(PrefetchError::NestedIndex(cd));
            }
            chosen.push(
                child
                    .platform
                    .as_ref()
                    .map(|p| p.label())
                    .unwrap_or_else(|| "unknown".into()),
            );
            blobs.extend(r.blobs);
        }
    }
    let mut seen = HashSet::new();
    blobs.retain(|b| seen.insert(b.digest.clone()));
    progress.planned(&Plan {
        digest: digest.to_string(),
        platforms: chosen,
        blobs: blobs.len() as u64,
        bytes: blobs.iter().map(|b| b.size).sum(),
    });
    // Built up front rather than mapped inside the stream: a closure there
    // makes the future unusable in a spawned task (a higher-ranked
    // lifetime rustc cannot prove).
    let fetches: Vec<_> = blobs
        .iter()
        .map(|b| blob(cache, upstream, repo, b, progress))
        .collect();
    let sizes: Vec<u64> = futures_util::stream::iter(fetches)
        .buffer_unordered(BLOB_CONCURRENCY)
        .try_collect()
        .await?;
    done.blobs = sizes.len() as u64;
    done.bytes = sizes.iter().sum();
    Ok(done)
}

/// The manifest's digest and bytes, through the manifest cache.
async fn manifest(
    cache: &Cache,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    reference: &Reference,
) -> Result<(Digest, bytes::Bytes), CacheError> {
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(tag) => {
            let (entry, _) = cache.manifests.resolve_tag(upstream, repo, tag).await?;
            entry.digest
        }
    };
    let (m, _) = cache.manifests.by_digest(upstream, repo, &digest).await?;
    Ok((digest, m.bytes.clone()))
}

/// Makes sure a blob is cached, reporting its bytes as they land.
async fn blob(
    cache: &Cache,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    blob: &Descriptor,
    progress: &dyn PrefetchProgress,
) -> Result<u64, PrefetchError> {
    let digest = blob
        .digest()
        .ok_or_else(|| PrefetchError::UnsupportedDigest(blob.digest.clone()))?;
    match cache
        .fills
        .attach(upstream.clone(), repo.clone(), &digest)?
    {
        Attached::Committed => {
            cache.index.touch(Kind::Blob, &digest);
            progress.advanced(blob.size);
            Ok(blob.size)
        }
        Attached::Fill {
            progress: mut progress_rx,
            ..
        } => {
            let mut reported = 0u64;
            loop {
                let (written, phase) = {
                    let p = progress_rx.borrow_and_update();
                    (p.written, p.phase.clone())
                };
                progress.advanced(written.saturating_sub(reported));
                reported = reported.max(written);
                match phase {
                    Phase::Complete { size, .. } => return Ok(size),
                    Phase::Failed(source) => return Err(PrefetchError::Blob { digest, source }),
                    Phase::Connecting | Phase::Streaming { .. } => {}
                }
                if progress_rx.changed().await.is_err() {
                    return if cache
                        .storage
                        .content
                        .contains(Kind::Blob, &digest)
                        .map_err(CacheError::from)?
                    {
                        Ok(reported)
                    } else {
                        Err(PrefetchError::FillVanished(digest))
                    };
                }
            }
        }
    }
}
