//! Per-client rate limits (GCRA token buckets from `governor`), keyed by
//! the authenticated user or else the client address.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitConfig;

/// Blob bodies are metered in chunks of at most this many bytes.
const METER_CHUNK: u32 = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

pub struct ClientLimiter {
    manifests: Option<DefaultKeyedRateLimiter<String>>,
    blob_bytes: Option<DefaultKeyedRateLimiter<String>>,
}

fn quota(per_second: f64, burst: u32) -> Option<Quota> {
    if per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / per_second);
    let burst = NonZeroU32::new(burst.max(1))?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

impl ClientLimiter {
    pub fn new(config: &RateLimitConfig) -> ClientLimiter {
        let burst = if config.burst == 0 {
            config.manifests_per_second.ceil() as u32
        } else {
            config.burst
        };
        let manifests = quota(config.manifests_per_second, burst).map(RateLimiter::keyed);
        let blob_bytes = config.blob_bytes_per_second.and_then(|rate| {
            // A second's worth, and at least one metering chunk, may pass at once.
            let burst = u32::try_from(rate).unwrap_or(u32::MAX).max(METER_CHUNK);
            quota(rate as f64, burst).map(RateLimiter::keyed)
        });
        ClientLimiter {
            manifests,
            blob_bytes,
        }
    }

    /// One manifest-class request by `client`.
    pub fn manifest(&self, client: &str) -> Result<(), Throttled> {
        let Some(limiter) = &self.manifests else {
            return Ok(());
        };
        limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| Throttled {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    /// Waits until `client` may receive `bytes` more blob bytes; returns
    /// whether it had to wait.
    pub async fn blob_bytes(&self, client: &str, bytes: usize) -> bool {
        let Some(limiter) = &self.blob_bytes else {
            return false;
        };
        let key = client.to_owned();
        let mut waited = false;
        let mut left = bytes as u64;
        while left > 0 {
            let n = left.min(u64::from(METER_CHUNK)) as u32;
            let Some(n) = NonZeroU32::new(n) else { break };
            loop {
                match limiter.check_key_n(&key, n) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        waited = true;
                        tokio::time::sleep(not_until.wait_time_from(DefaultClock::default().now()))
                            .await;
                    }
                    // More than the bucket can ever hold: let it through.
                    Err(_) => break,
                }
            }
            left -= u64::from(n.get());
        }
        waited
    }

    /// Forgets clients idle long enough to have a full bucket again, so
    /// memory does not grow with the number of distinct clients.
    pub fn forget_idle(&self) {
        for limiter in [&self.manifests, &self.blob_bytes].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn limits_blobs(&self) -> bool {
        self.blob_bytes.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_bucket_is_throttled_and_clients_are_separate() {
        let l = ClientLimiter::new(&RateLimitConfig {
            manifests_per_second: 1.0,
            burst: 3,
            blob_bytes_per_second: None,
        });
        for _ in 0..3 {
            assert!(l.manifest("a").is_ok());
        }
        let t = l.manifest("a").unwrap_err();
        assert!(t.retry_after > Duration::ZERO && t.retry_after <= Duration::from_secs(1));
        assert!(l.manifest("b").is_ok());
        assert!(ClientLimiter::new(&RateLimitConfig::default())
            .manifest("a")
            .is_ok());
    }

    #[tokio::test]
    async fn blob_bytes_wait_rather_than_fail() {
        let l = ClientLimiter::new(&RateLimitConfig {
            blob_bytes_per_second: Some(4 * 1024 * 1024),
            ..RateLimitConfig::default()
        });
        assert!(!l.blob_bytes("a", 1024 * 1024).await, "within the burst");
        let started = std::time::Instant::now();
        assert!(
            l.blob_bytes("a", 4 * 1024 * 1024).await,
            "beyond it, it waits"
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
