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

use http::{Response, StatusCode};
use parking_lot::Mutex;

use super::respond::{error, progress_stream};
use crate::cache::prefetch::{self, Plan, PrefetchProgress};
use crate::http::app::App;
use crate::http::body::Body;
use crate::registry::{Reference, RepoName};

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
    let (mut plan_sent, mut sent_bytes) = (false, 0);
    let pending = move || {
        if !plan_sent {
            if let Some(plan) = shared.plan.lock().clone() {
                plan_sent = true;
                return Some(serde_json::json!({ "plan": plan }));
            }
        }
        let cached = shared.cached.load(Ordering::Relaxed);
        (cached != sent_bytes).then(|| {
            sent_bytes = cached;
            serde_json::json!({ "cached_bytes": cached })
        })
    };
    progress_stream(task, pending, |result| match result {
        Ok(Ok(done)) => serde_json::json!({ "done": done }),
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Err(e) => serde_json::json!({ "error": format!("prefetch task failed: {e}") }),
    })
}
