//! Freshness of the mutable things (tags, tag lists, referrers): answered
//! from the cache while younger than the upstream's `tag_ttl`; then
//! refreshed; and, when the refresh fails because the upstream is down,
//! slow or rate-limiting, answered stale for up to `stale_if_error` more —
//! without ever waiting longer than `stale_timeout` (at most the header
//! timeout) for the upstream before doing so.

use std::future::Future;
use std::time::Duration;

use crate::cache::storage::index::now_millis;
use crate::cache::{CacheError, Outcome};
use crate::upstream::Upstream;

/// Looks up a mutable value. `cached` is the value and when the upstream
/// last confirmed it (unix ms); `refresh` asks the upstream (shared by
/// concurrent callers) and says whether this call joined another's flight.
pub async fn lookup<T, F, Fut>(
    upstream: &Upstream,
    cached: Option<(T, u64)>,
    refresh: F,
) -> Result<(T, Outcome), CacheError>
where
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: Future<Output = (Result<T, CacheError>, bool)>,
{
    let settings = upstream.settings();
    let now = now_millis();
    let age = |checked_at: u64| Duration::from_millis(now.saturating_sub(checked_at));
    if let Some((value, at)) = &cached {
        if age(*at) < settings.tag_ttl {
            return Ok((value.clone(), Outcome::Hit));
        }
    }
    let offline = upstream.is_offline();
    let stale = cached.as_ref().filter(|(_, at)| {
        offline
            || (!settings.stale_if_error.is_zero()
                && age(*at) < settings.tag_ttl + settings.stale_if_error)
    });
    let fresh_outcome = |joined: bool| match (joined, cached.is_some()) {
        (true, _) => Outcome::Coalesced,
        (false, true) => Outcome::Revalidated,
        (false, false) => Outcome::Miss,
    };
    let Some((stale_value, checked_at)) = stale else {
        let (result, joined) = refresh().await;
        return result.map(|v| (v, fresh_outcome(joined)));
    };
    // With something to fall back on, wait no longer than `stale_timeout`
    // (a client should not pay for a hung upstream); the refresh is a
    // flight of its own and goes on in the background, so the next
    // request gets its answer.
    let wait = settings.stale_timeout.min(upstream.header_timeout());
    match tokio::time::timeout(wait, refresh()).await {
        Ok((Ok(value), joined)) => Ok((value, fresh_outcome(joined))),
        Ok((Err(e), _)) if e.is_upstream_failure() => {
            tracing::warn!(upstream = %upstream.name, error = %e, age_s = age(*checked_at).as_secs(), "upstream failed; serving stale");
            Ok((stale_value.clone(), Outcome::Stale))
        }
        Ok((Err(e), _)) => Err(e),
        Err(_) => {
            tracing::warn!(upstream = %upstream.name, age_s = age(*checked_at).as_secs(), "upstream too slow; serving stale");
            Ok((stale_value.clone(), Outcome::Stale))
        }
    }
}
