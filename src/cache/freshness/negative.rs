//! Negative caching: an upstream 404 is remembered for the upstream's
//! `negative_ttl`, so a stampede of clients asking for a missing tag costs
//! one upstream request, not one each.

use std::future::Future;
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::cache::CacheError;

#[derive(Clone)]
struct Entry {
    error: CacheError,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Cheap to clone: clones share the same entries.
#[derive(Clone)]
pub struct NegativeCache {
    entries: Cache<String, Entry>,
}

impl NegativeCache {
    pub fn new() -> NegativeCache {
        NegativeCache {
            entries: Cache::builder()
                .max_capacity(100_000)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    pub fn key(upstream: &str, repo: &str, what: &str) -> String {
        format!("{upstream}\0{repo}\0{what}")
    }

    /// The remembered "not found", if any.
    pub async fn get(&self, key: &str) -> Option<CacheError> {
        self.entries.get(key).await.map(|e| e.error)
    }

    /// Runs `work` unless a "not found" is already remembered for `key`,
    /// and remembers its "not found" before handing it back. Run inside a
    /// single flight, the answer is in place before the flight ends, and a
    /// flight started by a caller that checked just before sees it, so a
    /// stampede costs one upstream request however the requests interleave.
    pub async fn remembering<T>(
        &self,
        key: String,
        ttl: Duration,
        work: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        if let Some(e) = self.get(&key).await {
            return Err(e);
        }
        let result = work.await;
        if let Err(e) = &result {
            self.remember(key, e, ttl).await;
        }
        result
    }

    /// Remembers `error` if it is a "not found".
    async fn remember(&self, key: String, error: &CacheError, ttl: Duration) {
        if error.is_not_found() && !ttl.is_zero() {
            self.entries
                .insert(
                    key,
                    Entry {
                        error: error.clone(),
                        ttl,
                    },
                )
                .await;
        }
    }
}

impl Default for NegativeCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn answered(status: StatusCode) -> CacheError {
        CacheError::Upstream(crate::upstream::UpstreamError::Status {
            upstream: "up".into(),
            status,
            what: "manifest",
            retry_after: None,
        })
    }

    #[tokio::test]
    async fn a_remembered_not_found_stops_the_next_run_before_it_asks() {
        let negative = NegativeCache::new();
        let runs = AtomicUsize::new(0);
        let ttl = Duration::from_secs(60);
        for _ in 0..3 {
            let work = async {
                runs.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(answered(StatusCode::NOT_FOUND))
            };
            let e = negative
                .remembering("k".into(), ttl, work)
                .await
                .unwrap_err();
            assert!(e.is_not_found());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn other_failures_and_a_zero_ttl_are_not_remembered() {
        let negative = NegativeCache::new();
        let runs = AtomicUsize::new(0);
        for (status, ttl) in [
            (StatusCode::BAD_GATEWAY, Duration::from_secs(60)),
            (StatusCode::NOT_FOUND, Duration::ZERO),
        ] {
            for _ in 0..2 {
                let work = async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(answered(status))
                };
                let _ = negative.remembering("k".into(), ttl, work).await;
            }
        }
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }
}
