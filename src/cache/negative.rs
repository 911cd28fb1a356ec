//! Negative caching: an upstream 404 is remembered for the upstream's
//! `negative_ttl`, so a stampede of clients asking for a missing tag costs
//! one upstream request, not one each.

use std::time::{Duration, Instant};

use moka::future::Cache;

use super::CacheError;

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

    /// Remembers `error` if it is a "not found".
    pub async fn remember(&self, key: String, error: &CacheError, ttl: Duration) {
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
