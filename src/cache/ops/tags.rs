//! A tag's history, and accepting a refused move of an immutable tag: for
//! `GET /admin/tags/<upstream>/<repo>:<tag>/history`, `POST .../accept` and
//! `regcache tags history|accept` on a stopped daemon's cache. Both block
//! (sled, the tag record): call them on the blocking pool.

use serde::{Deserialize, Serialize};

use crate::cache::storage::index::{now_millis, MoveAction, TagMove};
use crate::cache::{Cache, CacheError, TagEntry, TagRecord};
use crate::registry::Digest;

/// A tag's history as the admin API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagHistoryReport {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    /// The digest served for the tag now, if it is cached.
    pub digest: Option<Digest>,
    /// A refused move waiting for `accept`: the digest it would switch to.
    pub pending: Option<Digest>,
    /// When the tag was last flagged for moving too often (RFC 3339).
    pub flagged_at: Option<String>,
    /// Since when the upstream answers 404 while the tag is still served.
    pub deleted_at: Option<String>,
    /// Newest first.
    pub moves: Vec<MoveReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    /// RFC 3339.
    pub time: String,
    pub old_digest: Digest,
    pub new_digest: Digest,
    /// `followed`, `refused`, `accepted` or `withdrawn`.
    pub action: MoveAction,
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptReport {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub old_digest: Digest,
    pub new_digest: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("{0} has no refused move to accept")]
    NothingPending(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

fn time(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The history of `upstream/repo:tag` (names as the cache keeps them).
pub fn history(
    cache: &Cache,
    upstream: &str,
    repo: &str,
    tag: &str,
) -> Result<TagHistoryReport, CacheError> {
    let entry = cache.index.tag(upstream, repo, tag)?;
    let history = cache.index.tag_history(upstream, repo, tag)?;
    Ok(TagHistoryReport {
        upstream: upstream.to_owned(),
        repository: repo.to_owned(),
        tag: tag.to_owned(),
        digest: entry.map(|e| e.digest),
        pending: history.pending().map(|m| m.new_digest.clone()),
        flagged_at: history.flagged_at.map(time),
        deleted_at: history.deleted_at.map(time),
        moves: history
            .moves
            .iter()
            .rev()
            .map(|m| MoveReport {
                time: time(m.at),
                old_digest: m.old_digest.clone(),
                new_digest: m.new_digest.clone(),
                action: m.action,
            })
            .collect(),
    })
}

/// Switches an immutable tag to the digest of its refused move: recorded
/// as the tag (its record, then the index), and in its history.
pub fn accept(
    cache: &Cache,
    upstream: &str,
    repo: &str,
    tag: &str,
) -> Result<AcceptReport, AcceptError> {
    let name = format!("{upstream}/{repo}:{tag}");
    let mut history = cache
        .index
        .tag_history(upstream, repo, tag)
        .map_err(CacheError::from)?;
    let Some(pending) = history.pending().cloned() else {
        return Err(AcceptError::NothingPending(name));
    };
    let current = cache
        .index
        .tag(upstream, repo, tag)
        .map_err(CacheError::from)?;
    let old_digest = current.map_or(pending.old_digest.clone(), |e| e.digest);
    let now = now_millis();
    let entry = TagEntry {
        digest: pending.new_digest.clone(),
        media_type: pending.media_type.clone(),
        size: pending.size,
        checked_at: now,
        max_age_ms: None,
        unshared: false,
    };
    cache
        .storage
        .tags
        .put_tag(&TagRecord {
            upstream: upstream.to_owned(),
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            entry: entry.clone(),
        })
        .map_err(CacheError::from)?;
    cache
        .index
        .set_tag(upstream, repo, tag, &entry)
        .and_then(|()| cache.index.link(upstream, repo, &entry.digest))
        .map_err(CacheError::from)?;
    history.push(TagMove {
        at: now,
        old_digest: old_digest.clone(),
        new_digest: pending.new_digest.clone(),
        action: MoveAction::Accepted,
        media_type: pending.media_type,
        size: pending.size,
    });
    cache
        .index
        .set_tag_history(upstream, repo, tag, &history)
        .map_err(CacheError::from)?;
    tracing::warn!(upstream, repo, tag, old = %old_digest, new = %pending.new_digest, "a refused move of an immutable tag was accepted");
    Ok(AcceptReport {
        upstream: upstream.to_owned(),
        repository: repo.to_owned(),
        tag: tag.to_owned(),
        old_digest,
        new_digest: pending.new_digest,
    })
}
