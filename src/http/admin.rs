//! The admin listener: `/metrics`, `/healthz`, `/readyz`,
//! `/admin/offline` (GET shows, `POST ?enabled=true|false` switches the
//! global offline mode without a restart), and cache management:
//! `GET /admin/cache`, `GET /admin/repositories`,
//! `DELETE /admin/manifests/<upstream>/<repo>:<tag>` (or `@<digest>`),
//! `DELETE /admin/blobs/<digest>`, `POST /admin/gc`, `POST /admin/import`.
//!
//! Nothing here is authenticated: keep `admin_listen` on loopback or a
//! management network.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::body::{self, Body};
use super::App;
use crate::cache::manage;
use crate::cache::CacheError;
use crate::registry::{Digest, RepoName};

pub async fn admin_service(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/admin/manifests/") {
        return if method == Method::DELETE {
            let with_blobs = query_flag(request.uri().query(), "blobs");
            purge_manifest(&app, &percent_decode(rest), with_blobs).await
        } else {
            method_not_allowed("DELETE")
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/blobs/") {
        return if method == Method::DELETE {
            purge_blob(&app, &percent_decode(rest)).await
        } else {
            method_not_allowed("DELETE")
        };
    }
    match path.as_str() {
        "/admin/cache" if method == Method::GET => {
            let names: Vec<String> = app
                .upstreams
                .all()
                .iter()
                .map(|u| u.name.to_string())
                .collect();
            let a = app.clone();
            blocking_json(move || manage::summary(&a.cache, &names)).await
        }
        "/admin/repositories" if method == Method::GET => {
            let a = app.clone();
            blocking_json(move || manage::repositories(&a.cache)).await
        }
        "/admin/gc" if method == Method::POST => {
            let evictor = app.cache.evictor.clone();
            blocking_json(move || evictor.run().map_err(CacheError::from)).await
        }
        "/admin/import" if method == Method::POST => import(&app, request).await,
        "/admin/cache" | "/admin/repositories" => method_not_allowed("GET"),
        "/admin/gc" | "/admin/import" => method_not_allowed("POST"),
        "/metrics" => {
            app.refresh_gauges();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                app.metrics.render(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        // Ready as soon as the listeners are up: serving never needs the
        // upstream, and hits do not need the index.
        "/readyz" => text(StatusCode::OK, "text/plain", "ready\n".into()),
        "/admin/offline" if method == Method::GET => offline_state(&app),
        "/admin/offline" if method == Method::POST => {
            let enabled = request.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "enabled")
                    .map(|(_, v)| v.into_owned())
            });
            match enabled.as_deref() {
                Some("true" | "1") | None => app.upstreams.set_offline(true),
                Some("false" | "0") => app.upstreams.set_offline(false),
                Some(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "enabled must be true or false\n".into(),
                    )
                }
            }
            tracing::warn!(
                offline = app.upstreams.offline(),
                "offline mode switched through the admin API"
            );
            offline_state(&app)
        }
        _ => error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}")),
    }
}

fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == name && (v == "true" || v == "1"))
    })
}

/// Undoes %-escapes (a client may send `:` as `%3A`). Names, tags and
/// digests contain no `+`, so form decoding is exact here.
fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}"));
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allowed));
    r
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            text(status, "application/json", s)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the answer failed: {e}\n"),
        ),
    }
}

/// Runs blocking cache work (sled, files) off the async workers.
async fn blocking_json<T, F>(f: F) -> Response<Body>
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, CacheError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => json(StatusCode::OK, &value),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn purge_manifest(app: &Arc<App>, target: &str, with_blobs: bool) -> Response<Body> {
    let (upstream, repo, target) = match manage::parse_image_target(target) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
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
    match result {
        Ok(Ok(report)) => {
            for m in &report.manifests {
                if let Ok(d) = m.parse::<Digest>() {
                    app.cache.manifests.forget(&d).await;
                }
            }
            tracing::warn!(tags = ?report.tags, manifests = report.manifests.len(), blobs = report.blobs.len(), "purged through the admin API");
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

async fn purge_blob(app: &Arc<App>, digest: &str) -> Response<Body> {
    let digest: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || manage::purge_blob(&a.cache, &digest)).await;
    match result {
        Ok(Ok(report)) => {
            tracing::warn!(blobs = ?report.blobs, "purged through the admin API");
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

/// `POST /admin/import`: the body is a bundle (tar), read as it arrives.
async fn import(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let _ = (app, request);
    error(StatusCode::NOT_IMPLEMENTED, "not yet".into())
}

fn offline_state(app: &App) -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"offline\":{}}}\n", app.upstreams.offline()),
    )
}

fn text(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
