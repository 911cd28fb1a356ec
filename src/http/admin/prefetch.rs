//! `POST /admin/prefetch?upstream=U&repo=R&reference=T[&platform=os/arch,...]`:
//! the daemon brings one image into its cache (see `cache::prefetch`), so
//! `regcache prefetch` works against a daemon whatever its registry
//! listener demands (TLS, client credentials).
//!
//! The answer streams one JSON object per line: `{"plan": ...}` once the
//! manifests are in, `{"cached_bytes": N}` as blobs land (sampled, at most
//! a few lines a second), and last `{"done": ...}` or `{"error": "..."}`.
//! A client that goes away does not stop the prefetch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::respond::{error, json_line, text_stream};
use crate::cache::prefetch::{self, Plan, PrefetchError, PrefetchProgress, Prefetched};
use crate::http::app::App;
use crate::http::body::Body;
use crate::registry::{Reference, RepoName};

/// How often the stream looks at the progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Written by the prefetch, sampled by the response stream: a slow reader
/// costs no memory.
#[derive(Default)]
struct Shared {
    plan: Mutex<Option<Plan>>,
    cached: AtomicU64,
}

impl PrefetchProgress for Shared {
    fn planned(&self, plan: &Plan) {
        *self.plan.lock() = Some(plan.clone());
    }

    fn advanced(&self, bytes: u64) {
        self.cached.fetch_add(bytes, Ordering::Relaxed);
    }
}

pub async fn prefetch(app: &Arc<App>, query: Option<&str>) -> Response<Body> {
    let param = |name: &str| {
        query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let (Some(upstream), Some(repo), Some(reference)) =
        (param("upstream"), param("repo"), param("reference"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "upstream, repo and reference are required".into(),
        );
    };
    let Some(upstream) = app.upstreams.get(&upstream) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no upstream configured as {upstream:?}"),
        );
    };
    let repo = match RepoName::parse(&repo) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("repo: {e}")),
    };
    let reference = match Reference::parse(&reference) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reference: {e}")),
    };
    let platforms: Vec<String> = param("platform")
        .map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // The upstream's rules hold for a prefetch as for a pull.
    let allowed = app.policy.read().repos.check(&upstream.name, &repo);
    if let Err(rule) = allowed {
        return error(StatusCode::FORBIDDEN, rule.to_string());
    }
    tracing::info!(upstream = %upstream.name, %repo, reference = %reference, "prefetch through the admin API");
    let shared = Arc::new(Shared::default());
    let task = {
        let (app, shared) = (app.clone(), shared.clone());
        tokio::spawn(async move {
            let result = prefetch::prefetch_image(
                &app.cache, &upstream, &repo, &reference, &platforms, &*shared,
            )
            .await;
            match &result {
                Ok(done) => {
                    tracing::info!(upstream = %upstream.name, %repo, manifests = done.manifests, blobs = done.blobs, bytes = done.bytes, "prefetch complete")
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream.name, %repo, error = %e, "prefetch failed")
                }
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
    task: Option<JoinHandle<Result<Prefetched, PrefetchError>>>,
    plan_sent: bool,
    sent_bytes: u64,
}

impl Events {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Events)> {
        loop {
            let task = self.task.as_mut()?;
            // Looked at first: whatever the task did before it finished is
            // then visible below, so no progress line is lost at the end.
            let finished = task.is_finished();
            if !self.plan_sent {
                let plan = self.shared.plan.lock().clone();
                if let Some(plan) = plan {
                    self.plan_sent = true;
                    return Some((json_line(serde_json::json!({ "plan": plan })), self));
                }
            }
            let cached = self.shared.cached.load(Ordering::Relaxed);
            if cached != self.sent_bytes {
                self.sent_bytes = cached;
                return Some((
                    json_line(serde_json::json!({ "cached_bytes": cached })),
                    self,
                ));
            }
            if finished {
                let outcome = match self.task.take()?.await {
                    Ok(Ok(done)) => serde_json::json!({ "done": done }),
                    Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                    Err(e) => serde_json::json!({ "error": format!("prefetch task failed: {e}") }),
                };
                return Some((json_line(outcome), self));
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
}
