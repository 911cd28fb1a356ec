//! The admin listener: `/metrics`, `/healthz`, `/readyz`, the status page
//! (`GET /`, see `status`), `/admin/offline` (GET shows,
//! `POST ?enabled=true|false` switches the global offline mode without a
//! restart), and cache management:
//! `GET /admin/cache`, `GET /admin/repositories`,
//! `DELETE /admin/manifests/<upstream>/<repo>:<tag>` (or `@<digest>`),
//! `DELETE /admin/blobs/<digest>`, `POST /admin/gc`, `POST /admin/import`,
//! `POST /admin/prefetch` (see `prefetch`), `POST /admin/verify` (see
//! `verify`), `GET`/`POST /admin/blocked`,
//! `GET /admin/signatures/<upstream>/<repo>@<digest>` (see `supply`),
//! `GET /admin/tags/<upstream>/<repo>:<tag>/history` and
//! `POST .../accept` (see `tags`).
//!
//! `/admin/*` and the status page are served under the rule of `access`:
//! the admin token when `auth.admin_token_file` is set, else requests from
//! loopback only. `/metrics`, `/healthz` and `/readyz` are always open, for
//! scrapers and health checks, and are all that `metrics_listen` serves.

mod access;
mod import;
mod prefetch;
mod purge;
mod respond;
mod status;
mod supply;
mod tags;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::app::App;
use super::body::Body;
use crate::cache::manage;
use access::{Decision, TokenCheck};
use respond::{blocking_json, error, method_not_allowed, text};

/// The `metrics_listen` listener: the probes and `/metrics`, and a 404 for
/// everything else.
pub async fn metrics_service<B>(app: &Arc<App>, request: &Request<B>) -> Response<Body> {
    let path = request.uri().path();
    probe(app, path).await.unwrap_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint {path} on metrics_listen (it serves /metrics, /healthz and /readyz)"
            ),
        )
    })
}

/// `/metrics`, `/healthz` and `/readyz`: open to anyone on both listeners.
async fn probe(app: &Arc<App>, path: &str) -> Option<Response<Body>> {
    Some(match path {
        "/metrics" => {
            app.refresh_gauges();
            // The process collector reads /proc: off the async workers.
            let a = app.clone();
            let body = tokio::task::spawn_blocking(move || a.metrics.render())
                .await
                .unwrap_or_default();
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
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
        _ => return None,
    })
}

/// The admin rule for `/admin/*` and the status page; the refusal to send
/// when the request may not be served.
fn refusal(
    app: &App,
    peer: SocketAddr,
    headers: &http::HeaderMap,
    method: &Method,
    path: &str,
) -> Option<Response<Body>> {
    let policy = app.policy.read().clone();
    let token = match &policy.admin_token {
        None => TokenCheck::NotConfigured,
        Some(t) if t.accepts(headers) => TokenCheck::Accepted,
        Some(_) => TokenCheck::Refused,
    };
    match access::decide(peer.ip(), access::relayed(headers), token) {
        Decision::Allow => None,
        Decision::NeedsToken => {
            tracing::warn!(%method, %path, %peer, "admin request without the admin token refused");
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the admin token (Authorization: Bearer ...)".into(),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"regcache-admin\""),
            );
            Some(r)
        }
        Decision::NotLocal => {
            tracing::info!(%method, %path, %peer, "admin request from another host refused: no admin token is configured");
            Some(error(
                StatusCode::FORBIDDEN,
                "the admin API answers only requests from loopback while no admin token is \
                 configured: set [auth] admin_token_file (and send Authorization: Bearer <token>) \
                 or call from this host"
                    .into(),
            ))
        }
    }
}

pub async fn admin_service(
    app: Arc<App>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Some(r) = probe(&app, &path).await {
        return r;
    }
    if path == "/" || path.starts_with("/admin/") {
        if let Some(r) = refusal(&app, peer, request.headers(), &method, &path) {
            return r;
        }
    }
    if path == "/" {
        return if method == Method::GET || method == Method::HEAD {
            status::page(&app)
        } else {
            method_not_allowed("GET")
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/manifests/") {
        return if method == Method::DELETE {
            let with_blobs = query_flag(request.uri().query(), "blobs");
            purge::purge_manifest(&app, &percent_decode(rest), with_blobs).await
        } else {
            method_not_allowed("DELETE")
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/signatures/") {
        return if method == Method::GET {
            supply::signature(&app, &percent_decode(rest)).await
        } else {
            method_not_allowed("GET")
        };
    }
    if path == "/admin/blocked" {
        return match method {
            Method::GET => supply::blocked(&app),
            Method::POST => supply::reload_blocked(&app).await,
            _ => method_not_allowed("GET, POST"),
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/tags/") {
        return tags::tags(&app, &method, &percent_decode(rest)).await;
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
        "/admin/verify" if method == Method::POST => {
            verify::verify(&app, query_flag(request.uri().query(), "repair")).await
        }
        "/admin/cache" | "/admin/repositories" => method_not_allowed("GET"),
        "/admin/gc" | "/admin/import" | "/admin/prefetch" | "/admin/verify" => {
            method_not_allowed("POST")
        }
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

fn offline_state(app: &App) -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"offline\":{}}}\n", app.upstreams.offline()),
    )
}
