//! Prometheus metrics, in regcache's own registry (never the global one, so
//! tests can read an isolated set). Labels are bounded: never a repository,
//! tag, digest or client address.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Cache outcomes by kind (blob, manifest, tag) and outcome.
    pub cache: IntCounterVec,
    /// Body bytes sent to clients, by where they came from.
    pub bytes_served: IntCounterVec,
    /// Requests sent upstream, by upstream and status (or "error").
    pub upstream_requests: IntCounterVec,
    /// Blob fills running now.
    pub fills_in_progress: IntGauge,
    /// Client responses streaming from a running fill.
    pub fill_waiters: IntGauge,
    /// Fills that ended, by result.
    pub fills: IntCounterVec,
    /// Content whose bytes did not hash to the digest it was fetched for.
    pub digest_mismatches: IntCounter,
    /// Docker Hub-style rate-limit headers, per upstream.
    pub upstream_ratelimit: IntGaugeVec,
    /// Circuit breaker per upstream: 0 closed, 1 open, 2 half-open.
    pub upstream_circuit_state: IntGaugeVec,
    /// Fills that lost their upstream connection and resumed with a Range.
    pub fills_resumed: IntCounter,
    /// Token requests sent to upstream token servers.
    pub token_fetches: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("regcache".into()), None)
            .expect("a constant prefix is valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter_vec(
            "http_requests_total",
            "Requests by route and status.",
            &["route", "status"],
        );
        let cache = counter_vec(
            "cache_requests_total",
            "Cache lookups by kind (blob, manifest, tag, listing) and outcome (hit, miss, coalesced, revalidated, stale, negative).",
            &["kind", "outcome"],
        );
        let bytes_served = counter_vec(
            "served_bytes_total",
            "Body bytes sent to clients, by source (cache, upstream).",
            &["source"],
        );
        let upstream_requests = counter_vec(
            "upstream_requests_total",
            "Requests sent upstream, by upstream and status.",
            &["upstream", "status"],
        );
        let fills = counter_vec(
            "fills_total",
            "Blob fills that ended, by result.",
            &["result"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let fills_in_progress = gauge("fills_in_progress", "Blob fills running now.");
        let fill_waiters = gauge(
            "fill_waiters",
            "Client responses streaming from a running fill.",
        );
        let digest_mismatches = IntCounter::new(
            "digest_mismatches_total",
            "Upstream content whose bytes did not match the requested digest.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(digest_mismatches.clone()))
            .expect("unique metric");
        let upstream_ratelimit = IntGaugeVec::new(
            Opts::new(
                "upstream_ratelimit",
                "Docker Hub rate-limit headers seen on the last manifest response (kind: limit, remaining).",
            ),
            &["upstream", "kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_ratelimit.clone()))
            .expect("unique metric");
        let upstream_circuit_state = IntGaugeVec::new(
            Opts::new(
                "upstream_circuit_state",
                "Circuit breaker per upstream: 0 closed (healthy), 1 open (answering from cache), 2 half-open (probing).",
            ),
            &["upstream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_circuit_state.clone()))
            .expect("unique metric");
        let fills_resumed = IntCounter::new(
            "fills_resumed_total",
            "Fills that lost their upstream connection mid-blob and resumed with a Range request.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(fills_resumed.clone()))
            .expect("unique metric");
        let token_fetches = IntCounter::new(
            "upstream_token_fetches_total",
            "Token requests sent to upstream token servers.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(token_fetches.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            token_fetches,
            upstream_circuit_state,
            fills_resumed,
            requests,
            cache,
            bytes_served,
            upstream_requests,
            fills_in_progress,
            fill_waiters,
            fills,
            digest_mismatches,
            upstream_ratelimit,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
