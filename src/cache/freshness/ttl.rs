//! Freshness of the mutable things (tags, tag lists, referrers): answered
//! from the cache while younger than the upstream's `tag_ttl` (or the
//! shorter `max-age` the upstream gave that answer); then
//! refreshed; and, when the refresh fails because the upstream is down,
//! slow or rate-limiting, answered stale for up to `stale_if_error` more —
//! without ever waiting longer than `stale_timeout` (at most the header
//! timeout) for the upstream before doing so.

use std::future::Future;
use std::time::Duration;

use crate::cache::storage::index::now_millis;
use crate::cache::{CacheError, Outcome};
use crate::upstream::Upstream;

/// A cached answer to a mutable question, as the upstream last gave it.
pub trait Confirmed: Clone {
    /// When the upstream last confirmed it, unix ms.
    fn checked_at(&self) -> u64;
    /// The freshness the upstream gave it, if it gave one.
    fn max_age(&self) -> Option<Duration>;
    /// False for an answer the upstream forbade sharing: never stored, it
    /// answers only the request that asked.
    fn shared(&self) -> bool;
}

/// How long `cached` is fresh: `tag_ttl`, shortened (never lengthened) by
/// the upstream's own `max-age` for it.
pub fn fresh_for(tag_ttl: Duration, cached: &impl Confirmed) -> Duration {
    cached.max_age().map_or(tag_ttl, |m| m.min(tag_ttl))
}

/// Looks up a mutable value. `cached` is the value as last confirmed;
/// `refresh` asks the upstream (shared by concurrent callers) and says
/// whether this call joined another's flight.
pub async fn lookup<T, F, Fut>(
    upstream: &Upstream,
    cached: Option<T>,
    refresh: F,
) -> Result<(T, Outcome), CacheError>
where
    T: Confirmed,
    F: FnOnce() -> Fut,
    Fut: Future<Output = (Result<T, CacheError>, bool)>,
{
    let settings = upstream.settings();
    let now = now_millis();
    let age = |checked_at: u64| Duration::from_millis(now.saturating_sub(checked_at));
    let cached = cached.map(|c| {
        let ttl = fresh_for(settings.tag_ttl, &c);
        let at = c.checked_at();
        (c, at, ttl)
    });
    if let Some((value, at, ttl)) = &cached {
        if age(*at) < *ttl {
            return Ok((value.clone(), Outcome::Hit));
        }
    }
    let offline = upstream.is_offline();
    let stale = cached.as_ref().filter(|(_, at, ttl)| {
        offline || (!settings.stale_if_error.is_zero() && age(*at) < *ttl + settings.stale_if_error)
    });
    let fresh = |value: T, joined: bool| {
        let outcome = match (joined, cached.is_some()) {
            _ if !value.shared() => Outcome::Bypass,
            (true, _) => Outcome::Coalesced,
            (false, true) => Outcome::Revalidated,
            (false, false) => Outcome::Miss,
        };
        (value, outcome)
    };
    let Some((stale_value, checked_at, _)) = stale else {
        let (result, joined) = refresh().await;
        return result.map(|v| fresh(v, joined));
    };
    // With something to fall back on, wait no longer than `stale_timeout`
    // (a client should not pay for a hung upstream); the refresh is a
    // flight of its own and goes on in the background, so the next
    // request gets its answer.
    let wait = settings.stale_timeout.min(upstream.header_timeout());
    match tokio::time::timeout(wait, refresh()).await {
        Ok((Ok(value), joined)) => Ok(fresh(value, joined)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Answer(Option<Duration>);

    impl Confirmed for Answer {
        fn checked_at(&self) -> u64 {
            0
        }
        fn max_age(&self) -> Option<Duration> {
            self.0
        }
        fn shared(&self) -> bool {
            true
        }
    }

    #[test]
    fn the_upstream_max_age_shortens_tag_ttl_never_lengthens_it() {
        let ttl = Duration::from_secs(300);
        assert_eq!(fresh_for(ttl, &Answer(None)), ttl);
        let one = Duration::from_secs(1);
        assert_eq!(fresh_for(ttl, &Answer(Some(one))), one);
        assert_eq!(
            fresh_for(ttl, &Answer(Some(Duration::from_secs(3600)))),
            ttl
        );
        assert_eq!(
            fresh_for(ttl, &Answer(Some(Duration::ZERO))),
            Duration::ZERO
        );
    }
}
