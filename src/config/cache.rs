//! `[cache]`: size bound, age limit, eviction, the background scrub.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cluster::{Backend, S3Config};
use super::{ByteSize, FreeSpace, HumanDuration};

/// `[cache]`: how big the cache may grow and how long unused content stays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The bound on blob and manifest bytes ("50GiB", "512MiB", "1TB");
    /// absent means unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// Content not accessed for this long is evicted ("90d"); absent means
    /// no age limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Eviction starts when the cache is above this fraction of `max_size`…
    #[serde(default = "default_high_water")]
    pub high_water: f64,
    /// …and removes least-recently-used content down to this fraction.
    #[serde(default = "default_low_water")]
    pub low_water: f64,
    /// How often eviction runs besides when a fill crosses the high-water
    /// mark (it also applies `max_age`).
    #[serde(default = "default_gc_interval")]
    pub gc_interval: HumanDuration,
    /// Free space kept on the cache's filesystem ("1GiB", or "5%" of it):
    /// a fill that would go below it is refused before it starts, and
    /// eviction frees the difference. Hits are served regardless.
    #[serde(default = "default_min_free")]
    pub min_free: FreeSpace,
    /// How often a background scrub pass starts: every cached file is
    /// hashed again and a corrupt one quarantined ("24h"). Absent or "0":
    /// no scrub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub_interval: Option<HumanDuration>,
    /// The scrub reads and hashes at most this many bytes a second.
    #[serde(default = "default_scrub_bytes_per_second")]
    pub scrub_bytes_per_second: ByteSize,
    /// "fs": this disk only; "s3": this disk, and a bucket shared with
    /// other replicas (`[cache.s3]`, `[cluster]`).
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub s3: S3Config,
}

fn default_min_free() -> FreeSpace {
    FreeSpace::Bytes(ByteSize(1 << 30))
}

fn default_high_water() -> f64 {
    0.95
}

fn default_low_water() -> f64 {
    0.90
}

fn default_gc_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// A small share of one disk's and one core's bandwidth.
fn default_scrub_bytes_per_second() -> ByteSize {
    ByteSize(32 << 20)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: None,
            max_age: None,
            high_water: default_high_water(),
            low_water: default_low_water(),
            gc_interval: default_gc_interval(),
            min_free: default_min_free(),
            scrub_interval: None,
            scrub_bytes_per_second: default_scrub_bytes_per_second(),
            backend: Backend::Fs,
            s3: S3Config::default(),
        }
    }
}

impl CacheConfig {
    /// Bytes above which eviction starts, if the cache is bounded.
    pub fn high_water_bytes(&self) -> Option<u64> {
        self.max_size
            .map(|m| (m.0 as f64 * self.high_water).floor() as u64)
    }

    /// The scrub's interval, if it is on ("0" is off).
    pub fn scrub_every(&self) -> Option<Duration> {
        self.scrub_interval
            .map(|d| d.get())
            .filter(|d| !d.is_zero())
    }

    /// Bytes eviction brings the cache down to, if it is bounded.
    pub fn low_water_bytes(&self) -> Option<u64> {
        self.max_size
            .map(|m| (m.0 as f64 * self.low_water).floor() as u64)
    }
}
