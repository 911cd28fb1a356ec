//! What a tag's revalidation found, against what the cache held: a move
//! (followed, or refused for an immutable tag), recorded in the tag's
//! history, counted, audited and notified; a tag moving too often,
//! flagged; a tag the upstream deleted, kept or dropped (`keep_deleted`).

use crate::cache::storage::index::{now_millis, Index, MoveAction, TagHistory, TagMove};
use crate::cache::TagEntry;
use crate::metrics::Metrics;
use crate::notify::Event;
use crate::registry::{RepoName, Tag};
use crate::upstream::{Upstream, UpstreamSettings};

/// The entry to record for `tag` now that the upstream answered `fresh`:
/// `fresh` itself, or, when an immutable tag moved, the digest the cache
/// already serves, confirmed as of now.
pub(super) fn checked(
    upstream: &Upstream,
    repo: &RepoName,
    tag: &Tag,
    index: &Index,
    metrics: &Metrics,
    fresh: TagEntry,
) -> TagEntry {
    let (name, r, t) = (&*upstream.name, repo.as_str(), tag.as_str());
    let read = index
        .tag(name, r, t)
        .and_then(|previous| index.tag_history(name, r, t).map(|h| (previous, h)));
    let (previous, mut history) = match read {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(upstream = name, repo = r, tag = t, error = %e, "reading the tag's history failed; taking the upstream's answer");
            return fresh;
        }
    };
    let before = history.clone();
    if history.deleted_at.take().is_some() {
        tracing::warn!(upstream = name, repo = r, tag = t, digest = %fresh.digest, "the upstream has a tag it had deleted again");
    }
    let settings = upstream.settings();
    let recorded = match previous {
        Some(previous) if previous.digest != fresh.digest => {
            let pattern = settings.immutable_tags.matching(r, t).map(str::to_owned);
            let mut moved = TagMove {
                at: fresh.checked_at,
                old_digest: previous.digest.clone(),
                new_digest: fresh.digest.clone(),
                action: MoveAction::Followed,
                media_type: fresh.media_type.clone(),
                size: fresh.size,
            };
            match pattern {
                Some(pattern) => {
                    // Refused once per new digest: the upstream answers the
                    // same at every revalidation until it moves again.
                    let known = history
                        .pending()
                        .is_some_and(|m| m.new_digest == fresh.digest);
                    if !known {
                        moved.action = MoveAction::Refused;
                        history.push(moved);
                        tracing::warn!(upstream = name, repo = r, tag = t, kept = %previous.digest, refused = %fresh.digest, pattern = pattern.as_str(), "an immutable tag moved upstream: refused, the first digest is still served (regcache tags accept takes the new one)");
                        metrics.tag_moves_refused.with_label_values(&[name]).inc();
                        upstream.notifier().emit(Event::TagMoveRefused {
                            upstream: name.to_owned(),
                            repository: r.to_owned(),
                            tag: t.to_owned(),
                            old_digest: previous.digest.to_string(),
                            new_digest: fresh.digest.to_string(),
                            pattern,
                        });
                        flag_churn(
                            name,
                            r,
                            t,
                            &settings,
                            &mut history,
                            fresh.checked_at,
                            metrics,
                        );
                    }
                    TagEntry {
                        digest: previous.digest,
                        media_type: previous.media_type,
                        size: previous.size,
                        ..fresh
                    }
                }
                None => {
                    history.push(moved);
                    tracing::info!(upstream = name, repo = r, tag = t, old = %previous.digest, new = %fresh.digest, "tag moved upstream");
                    metrics.tag_moves.with_label_values(&[name]).inc();
                    upstream.notifier().emit(Event::TagMoved {
                        upstream: name.to_owned(),
                        repository: r.to_owned(),
                        tag: t.to_owned(),
                        old_digest: previous.digest.to_string(),
                        new_digest: fresh.digest.to_string(),
                    });
                    flag_churn(
                        name,
                        r,
                        t,
                        &settings,
                        &mut history,
                        fresh.checked_at,
                        metrics,
                    );
                    fresh
                }
            }
        }
        // Back where it is kept: a refused move waits no more.
        Some(_) => {
            if let Some(refused) = history.pending().cloned() {
                tracing::info!(upstream = name, repo = r, tag = t, digest = %fresh.digest, withdrawn = %refused.new_digest, "an immutable tag is back at its kept digest upstream: the refused move waits no more");
                history.push(TagMove {
                    at: fresh.checked_at,
                    old_digest: refused.new_digest,
                    new_digest: fresh.digest.clone(),
                    action: MoveAction::Withdrawn,
                    media_type: fresh.media_type.clone(),
                    size: fresh.size,
                });
            }
            fresh
        }
        None => fresh,
    };
    if history != before {
        if let Err(e) = index.set_tag_history(name, r, t, &history) {
            tracing::debug!(upstream = name, repo = r, tag = t, error = %e, "recording the tag's history failed");
        }
    }
    recorded
}

/// WARN and count when the move just recorded makes the tag one that
/// moves too often (once per `tag_churn_window`).
fn flag_churn(
    upstream: &str,
    repo: &str,
    tag: &str,
    settings: &UpstreamSettings,
    history: &mut TagHistory,
    now: u64,
    metrics: &Metrics,
) {
    let window = settings.tag_churn_window;
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if history.flag_churn(now, settings.tag_churn_moves, window_ms) {
        let moves = history.moves_since(now.saturating_sub(window_ms));
        tracing::warn!(upstream, repo, tag, moves, window = %humantime::format_duration(window), limit = settings.tag_churn_moves, "a tag keeps moving upstream: flagged (tag_churn_moves)");
        metrics
            .tag_churn_flagged
            .with_label_values(&[upstream])
            .inc();
    }
}

/// The upstream answered 404 for a tag the cache holds. With
/// `keep_deleted`, the cached entry to serve (confirmed as of now, so the
/// upstream is asked again after `tag_ttl`; WARN and counted once);
/// without, `None`: the caller forgets the tag.
pub(super) fn deleted(
    upstream: &Upstream,
    repo: &RepoName,
    tag: &Tag,
    index: &Index,
    metrics: &Metrics,
    cached: TagEntry,
) -> Option<TagEntry> {
    let (name, r, t) = (&*upstream.name, repo.as_str(), tag.as_str());
    if !upstream.settings().keep_deleted {
        tracing::warn!(upstream = name, repo = r, tag = t, digest = %cached.digest, "the upstream deleted a cached tag: no longer served (keep_deleted = false)");
        return None;
    }
    let now = now_millis();
    let mut history = index.tag_history(name, r, t).unwrap_or_default();
    if history.deleted_at.is_none() {
        history.deleted_at = Some(now);
        tracing::warn!(upstream = name, repo = r, tag = t, digest = %cached.digest, "the upstream deleted a cached tag: still serving the cached digest (keep_deleted)");
        metrics.deleted_tags_kept.with_label_values(&[name]).inc();
        if let Err(e) = index.set_tag_history(name, r, t, &history) {
            tracing::debug!(upstream = name, repo = r, tag = t, error = %e, "recording the tag's deletion failed");
        }
    }
    let kept = TagEntry {
        checked_at: now,
        ..cached
    };
    if let Err(e) = index.set_tag(name, r, t, &kept) {
        tracing::debug!(upstream = name, repo = r, tag = t, error = %e, "recording the kept tag failed");
    }
    Some(kept)
}
