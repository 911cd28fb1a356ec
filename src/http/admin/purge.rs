//! `DELETE /admin/manifests/<upstream>/<repo>:<tag>` (or `@<digest>`) and
//! `DELETE /admin/blobs/<digest>`.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::respond::{error, json};
use crate::cache::manage::{self, PurgeReport};
use crate::cache::CacheError;
use crate::http::app::App;
use crate::http::body::Body;
use crate::registry::{Digest, RepoName};

pub(super) async fn purge_manifest(
    app: &Arc<App>,
    target: &str,
    with_blobs: bool,
) -> Response<Body> {
    let (upstream, repo, target) = match manage::parse_image_target(target) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let repo = match RepoName::parse(&repo) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Purge under the names the cache uses: the upstream's own name (an
    // alias works too) and its repository name (`library/` on Docker Hub).
    let (upstream, repo) = match app.upstreams.get(&upstream) {
        Some(u) => (u.name.to_string(), u.upstream_repo(&repo).to_string()),
        None => (upstream, repo.to_string()),
    };
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        manage::purge_image(&a.cache, &upstream, &repo, &target, with_blobs)
    })
    .await;
    answer(result)
}

pub(super) async fn purge_blob(app: &Arc<App>, digest: &str) -> Response<Body> {
    let digest: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || manage::purge_blob(&a.cache, &digest)).await;
    answer(result)
}

/// A purge's report: 404 when it found nothing to remove.
fn answer(
    result: Result<Result<PurgeReport, CacheError>, tokio::task::JoinError>,
) -> Response<Body> {
    match result {
        Ok(Ok(report)) => {
            tracing::warn!(tags = ?report.tags, manifests = report.manifests.len(), blobs = ?report.blobs, "purged through the admin API");
            let status = if report.is_empty() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            json(status, &report)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
