//! What every store call tells the operator: its operation, status and
//! time, the bytes moved, and whether the store is up — one place, so no
//! call can forget to count itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BucketError;
use crate::metrics::SharedTierMetrics;

/// While the store is down, a request path tries it again at most this
/// often; the rest go straight to the local disk and the upstream.
pub const RETRY_DOWN_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Observer {
    metrics: Option<Arc<SharedTierMetrics>>,
    /// Starts up; the first failure says otherwise (at WARN, once).
    down: AtomicBool,
    /// When the store last failed, in ms since `epoch`.
    failed_at_ms: AtomicU64,
    epoch: Option<Instant>,
}

impl Observer {
    pub fn new(metrics: Option<Arc<SharedTierMetrics>>) -> Observer {
        Observer {
            metrics,
            down: AtomicBool::new(false),
            failed_at_ms: AtomicU64::new(0),
            epoch: Some(Instant::now()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.map_or(0, |e| {
            e.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
        })
    }

    /// Whether a request should ask the store now: always while it is up;
    /// while it is down, once per [`RETRY_DOWN_AFTER`].
    pub fn worth_asking(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let last = self.failed_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RETRY_DOWN_AFTER.as_millis() as u64 {
            return false;
        }
        // One caller wins the retry; the others keep skipping.
        self.failed_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Counts one finished call.
    pub fn call<T>(&self, op: &'static str, started: Instant, result: &Result<T, BucketError>) {
        let status = match result {
            Ok(_) => "ok",
            Err(e) => e.status_label(),
        };
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[op, status]).inc();
            m.request_duration
                .with_label_values(&[op])
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Err(e) if e.is_unavailable() => self.failed(e),
            _ => self.answered(),
        }
    }

    fn failed(&self, e: &BucketError) {
        self.failed_at_ms.store(self.now_ms(), Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "object store unavailable: serving from local disk and filling from upstreams alone until it answers");
            if let Some(m) = &self.metrics {
                m.up.set(0);
            }
        }
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::warn!("object store answers again: the shared tier is back");
            if let Some(m) = &self.metrics {
                m.up.set(1);
            }
        }
    }

    pub fn bytes_to_store(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.bytes.with_label_values(&["to_store"]).inc_by(n as u64);
        }
    }

    pub fn bytes_from_store(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.bytes.with_label_values(&["from_store"]).inc_by(n as u64);
        }
    }
}
