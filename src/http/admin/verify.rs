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
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::respond::{error, json_line, text_stream};
use crate::cache::scrub::{Pass, VerifyPlan, VerifyProgress};
use crate::cache::verify::Problem;
use crate::cache::CacheError;
use crate::http::app::App;
use crate::http::body::Body;

/// How often the stream looks at the progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

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
    let events = futures_util::stream::unfold(
        Events {
            shared,
            task: Some(task),
            plan_sent: false,
            sent_bytes: 0,
        },
        Events::next,
    );
    text_stream(StatusCode::OK, "application/x-ndjson", events)
}

struct Events {
    shared: Arc<Shared>,
    task: Option<JoinHandle<Result<Pass, CacheError>>>,
    plan_sent: bool,
    sent_bytes: u64,
}

impl Events {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Events)> {
        loop {
            let task = self.task.as_mut()?;
            // Looked at first: whatever the pass did before it finished is
            // then visible below, so no line is lost at the end.
            let finished = task.is_finished();
            if !self.plan_sent {
                let plan = self.shared.plan.lock().clone();
                if let Some(plan) = plan {
                    self.plan_sent = true;
                    return Some((json_line(serde_json::json!({ "plan": plan })), self));
                }
            }
            let problem = self.shared.problems.lock().pop_front();
            if let Some(problem) = problem {
                return Some((json_line(serde_json::json!({ "problem": problem })), self));
            }
            let checked = self.shared.checked.load(Ordering::Relaxed);
            if checked != self.sent_bytes {
                self.sent_bytes = checked;
                return Some((
                    json_line(serde_json::json!({ "checked_bytes": checked })),
                    self,
                ));
            }
            if finished {
                let outcome = match self.task.take()?.await {
                    Ok(Ok(p)) if p.complete => serde_json::json!({ "done": p.report }),
                    Ok(Ok(_)) => {
                        serde_json::json!({ "error": "stopped: the daemon is shutting down" })
                    }
                    Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                    Err(e) => serde_json::json!({ "error": format!("verify task failed: {e}") }),
                };
                return Some((json_line(outcome), self));
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
}
