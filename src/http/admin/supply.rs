//! The supply-chain gate's admin endpoints:
//! `GET /admin/blocked` (the blocked digests with their reasons),
//! `POST /admin/blocked` (read `[policy] blocked_digests_file` again, as
//! SIGHUP does; a bad file is refused with 400 and the running list kept),
//! and `GET /admin/signatures/<upstream>/<repo>@<digest>` (whether a cosign
//! signature of that digest verifies with the keys the repository requires,
//! without serving anything).

use std::sync::Arc;

use http::{Response, StatusCode};
use serde::Serialize;

use super::respond::{error, json};
use crate::cache::manage::{self, Target};
use crate::http::app::App;
use crate::http::body::Body;
use crate::policy::gate::GateError;
use crate::registry::RepoName;

#[derive(Serialize)]
struct BlockedAnswer {
    file: Option<String>,
    digests: usize,
    blocked: Vec<BlockedEntry>,
}

#[derive(Serialize)]
struct BlockedEntry {
    digest: String,
    reason: String,
}

pub(super) fn blocked(app: &App) -> Response<Body> {
    let entries = app.gate.blocked_entries();
    json(
        StatusCode::OK,
        &BlockedAnswer {
            file: app.gate.blocked_file().map(|p| p.display().to_string()),
            digests: entries.len(),
            blocked: entries
                .into_iter()
                .map(|(d, reason)| BlockedEntry {
                    digest: d.to_string(),
                    reason,
                })
                .collect(),
        },
    )
}

pub(super) async fn reload_blocked(app: &Arc<App>) -> Response<Body> {
    let a = app.clone();
    // Reads a file: off the async workers.
    match tokio::task::spawn_blocking(move || a.gate.reload_blocked()).await {
        Ok(Ok(_)) => blocked(app),
        Ok(Err(e @ GateError::NoBlockedFile)) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "blocked digests not reloaded; keeping the running list");
            error(
                StatusCode::BAD_REQUEST,
                format!("{e}; the running list is kept"),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn signature(app: &Arc<App>, target: &str) -> Response<Body> {
    let (upstream, repo, target) = match manage::parse_image_target(target) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Target::Digest(digest) = target else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the digest: <upstream>/<repo>@sha256:...".into(),
        );
    };
    let Some(upstream) = app.upstreams.get(&upstream) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream}"));
    };
    let repo = match RepoName::parse(&repo) {
        Ok(r) => upstream.upstream_repo(&r),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let report = app
        .gate
        .signature_report(&app.cache, &upstream, &repo, &digest)
        .await;
    json(StatusCode::OK, &report)
}
