//! `GET /admin/tags/<upstream>/<repo>:<tag>/history` and
//! `POST /admin/tags/<upstream>/<repo>:<tag>/accept`.

use std::sync::Arc;

use http::{Method, Response, StatusCode};

use super::respond::{blocking_json, error, json, method_not_allowed};
use crate::cache::manage::{self, Target};
use crate::cache::tags::{self, AcceptError};
use crate::http::app::App;
use crate::http::body::Body;
use crate::registry::RepoName;

/// `rest` is what follows `/admin/tags/`, %-decoded.
pub(super) async fn tags(app: &Arc<App>, method: &Method, rest: &str) -> Response<Body> {
    let (target, action) = match rest.rsplit_once('/') {
        Some((t, a @ ("history" | "accept"))) => (t, a),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "use /admin/tags/<upstream>/<repo>:<tag>/history or .../accept".into(),
            )
        }
    };
    let (upstream, repo, tag) = match names(app, target) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let a = app.clone();
    match action {
        "history" if *method == Method::GET => {
            blocking_json(move || tags::history(&a.cache, &upstream, &repo, &tag)).await
        }
        "accept" if *method == Method::POST => {
            let done =
                tokio::task::spawn_blocking(move || tags::accept(&a.cache, &upstream, &repo, &tag))
                    .await;
            match done {
                Ok(Ok(report)) => json(StatusCode::OK, &report),
                Ok(Err(e @ AcceptError::NothingPending(_))) => {
                    error(StatusCode::CONFLICT, e.to_string())
                }
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "history" => method_not_allowed("GET"),
        _ => method_not_allowed("POST"),
    }
}

/// The upstream, repository and tag under the names the cache keeps: the
/// upstream's own name (an alias works too) and its repository name.
fn names(app: &App, target: &str) -> Result<(String, String, String), String> {
    let (upstream, repo, target) = manage::parse_image_target(target).map_err(|e| e.to_string())?;
    let Target::Tag(tag) = target else {
        return Err("name a tag (:<tag>), not a digest".into());
    };
    let repo = RepoName::parse(&repo).map_err(|e| e.to_string())?;
    Ok(match app.upstreams.get(&upstream) {
        Some(u) => (u.name.to_string(), u.upstream_repo(&repo).to_string(), tag),
        None => (upstream, repo.to_string(), tag),
    })
}
