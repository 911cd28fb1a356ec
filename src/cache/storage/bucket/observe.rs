//! What every store call tells the operator: its operation, status and
//! time, the bytes moved, and whether the store is up — one place, so no
//! call can forget to count itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::BucketError;
use crate::metrics::SharedTierMetrics;

#[derive(Default)]
pub struct Observer {
    metrics: Option<Arc<SharedTierMetrics>>,
    /// Starts up; the first failure says otherwise (at WARN, once), and
    /// the first answer after it says up again. While it is down, request
    /// paths skip the store and only a background probe asks it, so a hung
    /// store costs at most one request its `request_timeout`.
    down: AtomicBool,
}

impl Observer {
    pub fn new(metrics: Option<Arc<SharedTierMetrics>>) -> Observer {
        Observer {
            metrics,
            down: AtomicBool::new(false),
        }
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
