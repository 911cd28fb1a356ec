//! The admin listener: `/metrics`, `/healthz`, `/readyz`,
//! `/admin/offline` (GET shows, `POST ?enabled=true|false` switches the
//! global offline mode without a restart), and cache management:
//! `GET /admin/cache`, `GET /admin/repositories`,
//! `DELETE /admin/manifests/<upstream>/<repo>:<tag>` (or `@<digest>`),
//! `DELETE /admin/blobs/<digest>`, `POST /admin/gc`, `POST /admin/import`,
//! `POST /admin/prefetch` (see `prefetch`).
//!
//! With `auth.admin_token_file` set, `/admin/*` asks for that bearer
//! token; without it nothing here is authenticated (keep `admin_listen` on
//! loopback or a management network). `/metrics`, `/healthz` and
//! `/readyz` are always open, for scrapers and health checks.

mod import;
mod prefetch;
mod purge;
mod respond;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::app::App;
use super::body::Body;
use crate::cache::manage;
use respond::{blocking_json, error, method_not_allowed, text};

pub async fn admin_service(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if path.starts_with("/admin/") && !admin_allowed(&app, request.headers()) {
        tracing::warn!(%method, %path, "admin request without the admin token refused");
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the admin token (Authorization: Bearer ...)".into(),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"regcache-admin\""),
        );
        return r;
    }
    if let Some(rest) = path.strip_prefix("/admin/manifests/") {
        return if method == Method::DELETE {
            let with_blobs = query_flag(request.uri().query(), "blobs");
            purge::purge_manifest(&app, &percent_decode(rest), with_blobs).await
        } else {
            method_not_allowed("DELETE")
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/blobs/") {
        return if method == Method::DELETE {
            purge::purge_blob(&app, &percent_decode(rest)).await
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
            let a = app.clone();
            blocking_json(move || a.cache.evict()).await
        }
        "/admin/import" if method == Method::POST => import::import(&app, request).await,
        "/admin/prefetch" if method == Method::POST => {
            prefetch::prefetch(&app, request.uri().query()).await
        }
        "/admin/cache" | "/admin/repositories" => method_not_allowed("GET"),
        "/admin/gc" | "/admin/import" | "/admin/prefetch" => method_not_allowed("POST"),
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
        // upstream, and hits do not need the index. Not ready while storage
        // writes fail (a full disk): new content cannot be cached, and a
        // balancer should prefer a replica that can.
        "/readyz" => match app.cache.ready() {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
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

fn admin_allowed(app: &App, headers: &http::HeaderMap) -> bool {
    let policy = app.policy.read().clone();
    policy
        .admin_token
        .as_ref()
        .is_none_or(|token| token.accepts(headers))
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

fn offline_state(app: &App) -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"offline\":{}}}\n", app.upstreams.offline()),
    )
}
