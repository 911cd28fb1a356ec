//! `POST /admin/verify[?repair=true]`: the daemon hashes every cached blob
//! and manifest again while it serves (see `cache::scrub`); with `repair`,
//! a corrupt or unreadable one is quarantined and fetched again on the next
//! request. `regcache verify [--repair]` uses it when a daemon runs.
//!
//! The answer streams one JSON object per line, as prefetch's does:
//! `{"plan": {"files": N, "bytes": B}}` first, `{"checked_bytes": N}` as
//! files are hashed (sampled, at most a few lines a second),
//! `{"problem": ...}` for each corrupt file, and last `{"done": report}` or
//! `{"error": "..."}`. One pass at a time (409 while another runs); a
//! client that goes away does not stop it, shutdown does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{Response, StatusCode};
use parking_lot::Mutex;

use super::respond::{error, progress_stream};
use crate::cache::scrub::{VerifyPlan, VerifyProgress};
use crate::cache::verify::Problem;
use crate::http::app::App;
use crate::http::body::Body;

/// Written by the pass, read by the response stream. Problems wait in a
/// queue until sent: at most one per cached object.
#[derive(Default)]
struct Shared {
    plan: Mutex<Option<VerifyPlan>>,
    checked: AtomicU64,
    problems: Mutex<VecDeque<Problem>>,
}

impl VerifyProgress for Shared {
    fn planned(&self, plan: &VerifyPlan) {
        *self.plan.lock() = Some(plan.clone());
    }

    fn checked(&self, bytes: u64) {
        self.checked.fetch_add(bytes, Ordering::Relaxed);
    }

    fn found(&self, problem: &Problem) {
        self.problems.lock().push_back(problem.clone());
    }
}

pub async fn verify(app: &Arc<App>, repair: bool) -> Response<Body> {
    let Some(ticket) = app.cache.verify_ticket() else {
        return error(
            StatusCode::CONFLICT,
            "a verify is running already; wait for it to finish".into(),
        );
    };
    tracing::info!(repair, "verify through the admin API");
    let shared = Arc::new(Shared::default());
    let task = {
        let (app, shared) = (app.clone(), shared.clone());
        tokio::spawn(async move {
            let result = app.cache.verify_online(&ticket, repair, &*shared).await;
            match &result {
                Ok(p) if p.complete => {
                    tracing::info!(
                        files = p.report.files_checked,
                        bytes = p.report.bytes_checked,
                        problems = p.report.problems.len(),
                        repair,
                        "verify complete"
                    )
                }
                Ok(p) => {
                    tracing::warn!(files = p.report.files_checked, "verify stopped by shutdown")
                }
                Err(e) => tracing::warn!(error = %e, "verify failed"),
            }
            result
        })
    };
    let (mut plan_sent, mut sent_bytes) = (false, 0);
    let pending = move || {
        if !plan_sent {
            if let Some(plan) = shared.plan.lock().clone() {
                plan_sent = true;
                return Some(serde_json::json!({ "plan": plan }));
            }
        }
        if let Some(problem) = shared.problems.lock().pop_front() {
            return Some(serde_json::json!({ "problem": problem }));
        }
        let checked = shared.checked.load(Ordering::Relaxed);
        (checked != sent_bytes).then(|| {
            sent_bytes = checked;
            serde_json::json!({ "checked_bytes": checked })
        })
    };
    progress_stream(task, pending, |result| match result {
        Ok(Ok(p)) if p.complete => serde_json::json!({ "done": p.report }),
        Ok(Ok(_)) => serde_json::json!({ "error": "stopped: the daemon is shutting down" }),
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Err(e) => serde_json::json!({ "error": format!("verify task failed: {e}") }),
    })
}
