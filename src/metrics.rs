//! Prometheus metrics, in regcache's own registry (never the global one, so
//! tests can read an isolated set). Labels are bounded: never a repository,
//! tag, digest or client address.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` series (memory, CPU, open fds, start
    /// time), unprefixed as dashboards expect, so in a registry of their own.
    process: Registry,
    /// Requests by route, method and status code.
    pub requests: IntCounterVec,
    /// Time to response headers, by route.
    pub request_duration: HistogramVec,
    /// Cache outcomes by upstream, kind (blob, manifest, tag, listing) and
    /// outcome; counted through [`Metrics::cache_outcome`].
    cache: IntCounterVec,
    /// Body bytes sent to clients, by where they came from.
    pub bytes_served: IntCounterVec,
    /// Requests sent upstream, by upstream and status (or "error").
    pub upstream_requests: IntCounterVec,
    /// Upstream time to response headers, by upstream.
    pub upstream_duration: HistogramVec,
    /// Body bytes received from each upstream.
    pub upstream_bytes: IntCounterVec,
    /// Blob fills running now.
    pub fills_in_progress: IntGauge,
    /// Client responses streaming from a running fill.
    pub fill_waiters: IntGauge,
    /// Fills that ended, by result.
    pub fills: IntCounterVec,
    /// How long completed fills took, and how big they were.
    pub fill_duration: Histogram,
    pub fill_size: Histogram,
    /// Fills that lost their upstream connection and resumed with a Range.
    pub fills_resumed: IntCounter,
    /// Content whose bytes did not hash to the digest it was fetched for.
    pub digest_mismatches: IntCounter,
    /// Docker Hub-style rate-limit headers, per upstream.
    pub upstream_ratelimit: IntGaugeVec,
    /// Circuit breaker per upstream: 0 closed, 1 open, 2 half-open.
    pub upstream_circuit_state: IntGaugeVec,
    /// Token requests sent to upstream token servers.
    pub token_fetches: IntCounter,
    /// Audit lines dropped because the writer could not keep up.
    pub audit_dropped: IntCounter,
    /// Requests refused by policy, by upstream.
    pub denied: IntCounterVec,
    /// Requests slowed or refused by a rate limit, by reason.
    throttled: IntCounterVec,
    /// Connections closed at accept, by reason (per_client).
    pub connections_refused: IntCounterVec,
    /// What the cache holds, by kind (blob, manifest).
    pub cache_bytes: IntGaugeVec,
    pub cache_objects: IntGaugeVec,
    /// The configured `max_size` (0: unbounded).
    pub cache_max_bytes: IntGauge,
    /// Objects and bytes removed from the cache, by reason (size, age,
    /// purge, corrupt).
    pub evictions: IntCounterVec,
    pub evicted_bytes: IntCounterVec,
    /// Blobs being streamed to clients from committed files.
    pub open_readers: IntGauge,
    /// Free bytes on the cache's filesystem, as last read.
    pub cache_free_bytes: IntGauge,
    /// 1 while storage writes succeed, 0 while they fail (not ready).
    pub storage_ready: IntGauge,
    /// Cached bytes hashed again while serving, by who asked (scrub, admin).
    pub verified_bytes: IntCounterVec,
    /// Background scrub passes that went through the whole cache.
    pub scrub_passes: IntCounter,
    // The supply-chain gate (`policy::gate`).
    /// Requests refused because a digest is blocked, by upstream.
    pub blocked_refusals: IntCounterVec,
    /// Admission reviews, by upstream and verdict (allowed, denied, error).
    pub admission_reviews: IntCounterVec,
    /// Requests refused by an admission verdict, by upstream.
    pub admission_denials: IntCounterVec,
    /// Manifests refused for their signature, by upstream and reason
    /// (missing, invalid, mismatch, unavailable).
    pub signature_refusals: IntCounterVec,
    /// Tag history and policy, by upstream: moves followed, moves of
    /// immutable tags refused, tags flagged for moving too often, cached
    /// tags served although the upstream deleted them.
    pub tag_moves: IntCounterVec,
    pub tag_moves_refused: IntCounterVec,
    pub tag_churn_flagged: IntCounterVec,
    pub deleted_tags_kept: IntCounterVec,
    /// Events for notification receivers, by event and outcome (sent,
    /// failed, dropped).
    pub notifications: IntCounterVec,
    /// The shared tier (`[cache] backend = "s3"`).
    pub shared: std::sync::Arc<SharedTierMetrics>,
}

/// Registers a metric built from constant names; a failure here is a bug in
/// this file, caught by every test that builds `Metrics`.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric names and labels are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("regcache".into()), None)
            .expect("a constant prefix is valid");
        let r = &registry;
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let counter = |name: &str, help: &str| register(r, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| register(r, IntGauge::new(name, help));
        let histograms = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            register(
                r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
            )
        };
        let latency = || prometheus::exponential_buckets(0.0005, 2.5, 14).unwrap_or_default();
        let build_info = gauges(
            "build_info",
            "Always 1; the version is a label.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let metrics = Metrics {
            requests: counters(
                "http_requests_total",
                "Requests by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: histograms(
                "http_request_duration_seconds",
                "Time from request to response headers, by route (bodies stream afterwards).",
                latency(),
                &["route"],
            ),
            cache: counters(
                "cache_requests_total",
                "Cache lookups by upstream, kind (blob, manifest, tag, listing) and outcome (hit, miss, coalesced, revalidated, stale, negative).",
                &["upstream", "kind", "outcome"],
            ),
            bytes_served: counters(
                "served_bytes_total",
                "Body bytes sent to clients, by source (cache, upstream).",
                &["source"],
            ),
            upstream_requests: counters(
                "upstream_requests_total",
                "Requests sent upstream, by upstream and status.",
                &["upstream", "status"],
            ),
            upstream_duration: histograms(
                "upstream_request_duration_seconds",
                "Upstream time to response headers, by upstream.",
                latency(),
                &["upstream"],
            ),
            upstream_bytes: counters(
                "upstream_received_bytes_total",
                "Body bytes received from each upstream (blobs, manifests, listings).",
                &["upstream"],
            ),
            fill_duration: histogram(
                "fill_duration_seconds",
                "How long completed blob fills took.",
                prometheus::exponential_buckets(0.01, 3.0, 12).unwrap_or_default(),
            ),
            fill_size: histogram(
                "fill_size_bytes",
                "Size of completed blob fills.",
                prometheus::exponential_buckets(1024.0, 4.0, 12).unwrap_or_default(),
            ),
            audit_dropped: counter(
                "audit_dropped_total",
                "Audit log lines dropped because the writer could not keep up.",
            ),
            denied: counters(
                "denied_requests_total",
                "Requests refused by allow/deny rules or user access lists, by upstream.",
                &["upstream"],
            ),
            throttled: counters(
                "throttled_requests_total",
                "Requests slowed or refused by a limit, by reason (manifests, blob_bytes, failed_logins, upstream_fills, upstream_rate).",
                &["reason"],
            ),
            connections_refused: counters(
                "connections_refused_total",
                "Connections closed at accept, by reason (per_client: the address already holds max_connections_per_client).",
                &["reason"],
            ),
            cache_bytes: gauges("cache_size_bytes", "Bytes in the cache, by kind (blob, manifest).", &["kind"]),
            cache_objects: gauges("cache_objects", "Objects in the cache, by kind (blob, manifest).", &["kind"]),
            cache_max_bytes: gauge("cache_max_size_bytes", "The configured cache max_size in bytes (0: unbounded)."),
            evictions: counters("evictions_total", "Objects removed from the cache, by reason (size, age, purge, corrupt).", &["reason"]),
            evicted_bytes: counters("evicted_bytes_total", "Bytes removed from the cache, by reason (size, age, purge, corrupt).", &["reason"]),
            open_readers: gauge("cache_open_readers", "Blobs being streamed to clients from the cache now (never evicted)."),
            cache_free_bytes: gauge("cache_free_bytes", "Free bytes on the cache's filesystem, as last read (before fills and every few seconds)."),
            storage_ready: gauge("storage_ready", "1 while storage writes succeed, 0 while they fail and /readyz answers 503."),
            verified_bytes: counters(
                "verified_bytes_total",
                "Cached bytes hashed again by the running daemon, by who asked (scrub: the background scrub, admin: POST /admin/verify).",
                &["by"],
            ),
            scrub_passes: counter(
                "scrub_passes_total",
                "Background scrub passes that went through the whole cache.",
            ),
            fills_in_progress: gauge("fills_in_progress", "Blob fills running now."),
            fill_waiters: gauge("fill_waiters", "Client responses streaming from a running fill."),
            fills: counters("fills_total", "Blob fills that ended, by result.", &["result"]),
            fills_resumed: counter(
                "fills_resumed_total",
                "Fills that lost their upstream connection mid-blob and resumed with a Range request.",
            ),
            digest_mismatches: counter(
                "digest_mismatches_total",
                "Upstream content whose bytes did not match the requested digest.",
            ),
            upstream_ratelimit: gauges(
                "upstream_ratelimit",
                "Docker Hub rate-limit headers seen on the last manifest response (kind: limit, remaining).",
                &["upstream", "kind"],
            ),
            upstream_circuit_state: gauges(
                "upstream_circuit_state",
                "Circuit breaker per upstream: 0 closed (healthy), 1 open (answering from cache), 2 half-open (probing).",
                &["upstream"],
            ),
            token_fetches: counter(
                "upstream_token_fetches_total",
                "Token requests sent to upstream token servers.",
            ),
            blocked_refusals: counters(
                "blocked_refusals_total",
                "Requests refused because the manifest, its index or every manifest that reaches the blob is blocked, by upstream.",
                &["upstream"],
            ),
            admission_reviews: counters(
                "admission_reviews_total",
                "Admission webhook reviews, by upstream and verdict (allowed, denied, error).",
                &["upstream", "verdict"],
            ),
            admission_denials: counters(
                "admission_denials_total",
                "Requests refused by an admission verdict (or on_error = deny), by upstream.",
                &["upstream"],
            ),
            signature_refusals: counters(
                "signature_refusals_total",
                "Manifests refused by require_signatures, by upstream and reason (missing, invalid, mismatch, unavailable).",
                &["upstream", "reason"],
            ),
            tag_moves: counters(
                "tag_moves_total",
                "Tags found moved to a new digest on revalidation and followed, by upstream.",
                &["upstream"],
            ),
            tag_moves_refused: counters(
                "tag_moves_refused_total",
                "Moves of immutable tags refused (the first digest is still served), by upstream.",
                &["upstream"],
            ),
            tag_churn_flagged: counters(
                "tag_churn_flagged_total",
                "Tags flagged for moving more than tag_churn_moves times within tag_churn_window, by upstream.",
                &["upstream"],
            ),
            deleted_tags_kept: counters(
                "deleted_tags_kept_total",
                "Cached tags the upstream deleted (404) that are still served (keep_deleted), by upstream.",
                &["upstream"],
            ),
            notifications: counters(
                "notifications_total",
                "Events for notification receivers, by event and outcome (sent, failed, dropped).",
                &["event", "outcome"],
            ),
            shared: std::sync::Arc::new(SharedTierMetrics::new(r)),
            registry,
            process: process_registry(),
        };
        metrics.init_labels();
        metrics.storage_ready.set(1);
        metrics
    }

    /// Every eviction reason and connection refusal appears from the start
    /// (at 0), so rates and alerts work before the first one.
    fn init_labels(&self) {
        for reason in ["size", "age", "purge", "free_space", "corrupt"] {
            self.evictions.with_label_values(&[reason]);
            self.evicted_bytes.with_label_values(&[reason]);
        }
        self.connections_refused.with_label_values(&["per_client"]);
        // The first failure of a kind must count as an increase for the
        // failed-fill and disk alerts.
        for result in [
            "complete",
            "no_room",
            "storage_error",
            "upstream_error",
            "upstream_status",
            "stalled",
            "digest_mismatch",
            "size_mismatch",
            "too_large",
            "shared_error",
        ] {
            self.fills.with_label_values(&[result]);
        }
        for by in ["scrub", "admin"] {
            self.verified_bytes.with_label_values(&[by]);
        }
    }

    /// The per-upstream policy series, at 0 from the start, so that a
    /// dashboard shows them and `increase()` sees the first one.
    pub fn init_upstream(&self, upstream: &str) {
        for m in [
            &self.tag_moves,
            &self.tag_moves_refused,
            &self.tag_churn_flagged,
            &self.deleted_tags_kept,
            &self.blocked_refusals,
            &self.admission_denials,
        ] {
            m.with_label_values(&[upstream]);
        }
        for verdict in ["allowed", "denied", "error"] {
            self.admission_reviews
                .with_label_values(&[upstream, verdict]);
        }
        for reason in ["missing", "invalid", "mismatch", "unavailable"] {
            self.signature_refusals
                .with_label_values(&[upstream, reason]);
        }
    }

    /// Counts one cache lookup outcome.
    pub fn cache_outcome(&self, upstream: &str, kind: &str, outcome: &str) {
        self.cache
            .with_label_values(&[upstream, kind, outcome])
            .inc();
    }

    /// Counts a request slowed or refused by a limit.
    pub fn throttled(&self, reason: &str) {
        self.throttled.with_label_values(&[reason]).inc();
    }

    /// The cache lookup counts so far, per upstream, kind and outcome.
    pub fn cache_outcomes(&self) -> Vec<Sample> {
        samples(&self.cache)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = encoder.encode(&families, &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    if let Err(e) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!(error = %e, "process metrics unavailable");
    }
    registry
}

/// One series of a counter or gauge as read now.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The series a counter or gauge (vector) has now; reading creates none.
pub fn samples(collector: &dyn Collector) -> Vec<Sample> {
    use prometheus::proto::MetricType;
    let mut out = Vec::new();
    for family in collector.collect() {
        let kind = family.get_field_type();
        for m in family.get_metric() {
            let value = match kind {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                _ => continue,
            };
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            out.push(Sample { labels, value });
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared tier's series: the object store, fill leases, the peer
/// streams between replicas, and the bucket janitor. Registered always,
/// labelled from the start only when the tier is on
/// ([`SharedTierMetrics::init`]), so a single replica's `/metrics` stays short.
pub struct SharedTierMetrics {
    /// Object-store calls by operation and status.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Bytes to and from the store.
    pub bytes: IntCounterVec,
    /// 1 while the store answers, 0 while it fails.
    pub up: IntGauge,
    /// Fill-lease outcomes (won, followed, taken_over, lost).
    pub leases: IntCounterVec,
    /// Bytes streamed between replicas (sent, received).
    pub peer_bytes: IntCounterVec,
    /// Content found on local disk or in the bucket, by kind.
    pub tier_hits: IntCounterVec,
    /// Objects in the bucket that failed their digest.
    pub corrupt: IntCounter,
    /// The janitor: bytes in the bucket at its last walk, objects it
    /// removed, and its runs.
    pub bucket_bytes: IntGauge,
    pub evicted: IntCounterVec,
    pub janitor_runs: IntCounterVec,
}

/// The object-store operations [`SharedTierMetrics::requests`] counts.
pub const STORE_OPS: [&str; 6] = ["put", "head", "get", "delete", "list", "multipart"];
/// The statuses it counts them by.
pub const STORE_STATUSES: [&str; 5] = ["ok", "not_found", "precondition", "error", "timeout"];

impl SharedTierMetrics {
    fn new(r: &Registry) -> SharedTierMetrics {
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        SharedTierMetrics {
            requests: counters(
                "object_store_requests_total",
                "Object-store requests by operation (put, head, get, delete, list, multipart) and status (ok, not_found, precondition, error, timeout).",
                &["op", "status"],
            ),
            request_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "object_store_request_duration_seconds",
                        "Object-store request time to the answer (a GET: to its headers), by operation.",
                    )
                    .buckets(prometheus::exponential_buckets(0.001, 2.5, 12).unwrap_or_default()),
                    &["op"],
                ),
            ),
            bytes: counters(
                "object_store_bytes_total",
                "Bytes written to (to_store) and read from (from_store) the object store.",
                &["direction"],
            ),
            up: register(
                r,
                IntGauge::new(
                    "object_store_up",
                    "1 while the object store answers, 0 while it fails (replicas serve local content and fill from upstreams alone).",
                ),
            ),
            leases: counters(
                "fill_leases_total",
                "Cross-replica fill leases, by outcome (won: this replica filled from the upstream; followed: it streamed another replica's fill; taken_over: it replaced a stale lease; lost: a renewal found the lease taken).",
                &["outcome"],
            ),
            peer_bytes: counters(
                "peer_bytes_total",
                "Blob bytes streamed between replicas over the peer endpoint (sent, received).",
                &["direction"],
            ),
            tier_hits: counters(
                "tier_hits_total",
                "Content served without the upstream, by tier (local: this replica's disk; bucket: the shared object store) and kind (blob, manifest).",
                &["tier", "kind"],
            ),
            corrupt: register(
                r,
                IntCounter::new(
                    "bucket_corrupt_total",
                    "Objects in the bucket whose bytes did not hash to their digest (deleted and filled again).",
                ),
            ),
            bucket_bytes: register(
                r,
                IntGauge::new(
                    "bucket_bytes",
                    "Bytes of content in the bucket at the janitor's last walk.",
                ),
            ),
            evicted: counters(
                "bucket_evicted_total",
                "Objects the janitor removed from the bucket, by reason (size, age).",
                &["reason"],
            ),
            janitor_runs: counters(
                "janitor_runs_total",
                "Bucket janitor runs, by result (ok, error, skipped: another replica holds the janitor lease).",
                &["result"],
            ),
        }
    }

    /// Every series at 0 from the start, when the tier is on.
    pub fn init(&self) {
        for op in STORE_OPS {
            self.request_duration.with_label_values(&[op]);
            for status in STORE_STATUSES {
                self.requests.with_label_values(&[op, status]);
            }
        }
        for direction in ["to_store", "from_store"] {
            self.bytes.with_label_values(&[direction]);
        }
        for outcome in ["won", "followed", "taken_over", "lost"] {
            self.leases.with_label_values(&[outcome]);
        }
        for direction in ["sent", "received"] {
            self.peer_bytes.with_label_values(&[direction]);
        }
        for tier in ["local", "bucket"] {
            for kind in ["blob", "manifest"] {
                self.tier_hits.with_label_values(&[tier, kind]);
            }
        }
        for reason in ["size", "age"] {
            self.evicted.with_label_values(&[reason]);
        }
        for result in ["ok", "error", "skipped"] {
            self.janitor_runs.with_label_values(&[result]);
        }
        self.up.set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_the_prefix() {
        let m = Metrics::new();
        m.requests.with_label_values(&["blob", "GET", "200"]).inc();
        m.fills_resumed.inc();
        let text = m.render();
        assert!(
            text.contains(
                "regcache_http_requests_total{method=\"GET\",route=\"blob\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("regcache_build_info{version=\""), "{text}");
        assert!(text.contains("regcache_fills_resumed_total 1"), "{text}");
        assert!(
            text.contains("regcache_evictions_total{reason=\"purge\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("regcache_connections_refused_total{reason=\"per_client\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("regcache_verified_bytes_total{by=\"scrub\"} 0"),
            "{text}"
        );
        assert!(text.contains("regcache_scrub_passes_total 0"), "{text}");
        assert!(
            text.contains("# TYPE regcache_fills_in_progress gauge"),
            "{text}"
        );
        // Before the first one, so its increase is seen.
        assert!(
            text.contains("regcache_evictions_total{reason=\"free_space\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("regcache_fills_total{result=\"no_room\"} 0"),
            "{text}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported_unprefixed() {
        let text = Metrics::new().render();
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name}: {text}");
        }
        assert!(!text.contains("regcache_process_"), "{text}");
    }

    #[test]
    fn samples_read_existing_series_without_creating_any() {
        let m = Metrics::new();
        assert!(m.cache_outcomes().is_empty());
        assert!(samples(&m.upstream_ratelimit).is_empty());
        m.cache_outcome("hub", "blob", "hit");
        m.cache_outcome("hub", "blob", "hit");
        m.upstream_ratelimit
            .with_label_values(&["hub", "remaining"])
            .set(7);
        let cache = m.cache_outcomes();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache[0].label("outcome"), Some("hit"));
        assert_eq!(cache[0].value, 2.0);
        assert_eq!(samples(&m.upstream_ratelimit)[0].value, 7.0);
        assert!(!m.render().contains("outcome=\"miss\""));
    }
}
