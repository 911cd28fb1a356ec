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
        "/admin/prefetch" if method == Method::POST => {
            super::prefetch::prefetch(&app, request.uri().query()).await
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

fn admin_allowed(app: &App, headers: &http::HeaderMap) -> bool {
    let policy = app.policy.read().clone();
    policy
        .admin_token
        .as_ref()
        .map_or(true, |token| token.accepts(headers))
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

pub(super) fn error(status: StatusCode, message: String) -> Response<Body> {
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

/// `POST /admin/import`: the body is a bundle (tar), verified and staged
/// as it arrives and installed only once all of it checked out (see
/// `cache::bundle`). The body is handed to the blocking importer through a
/// small channel, so memory stays bounded whatever the bundle's size.
async fn import(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let a = app.clone();
    let task = tokio::task::spawn_blocking(move || {
        let upstream_name =
            |n: &str| -> Option<String> { a.upstreams.get(n).map(|u| u.name.to_string()) };
        crate::cache::bundle::import(
            &a.cache.store,
            &a.cache.index,
            ChannelReader {
                rx,
                current: bytes::Bytes::new(),
            },
            &upstream_name,
        )
    });
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        let sent = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => tx.send(Ok(data)).await,
                Err(_) => continue,
            },
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                break;
            }
        };
        // The importer stopped reading (it rejected the bundle).
        if sent.is_err() {
            break;
        }
    }
    drop(tx);
    match task.await {
        Ok(Ok(report)) => {
            tracing::info!(
                images = report.images.len(),
                tags = report.tags,
                blobs = report.blobs_added,
                manifests = report.manifests_added,
                bytes = report.bytes_added,
                "bundle imported through the admin API"
            );
            json(StatusCode::OK, &report)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bundle import refused");
            let status = if e.is_bad_bundle() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            error(status, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A blocking `Read` over body chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn offline_state(app: &App) -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"offline\":{}}}\n", app.upstreams.offline()),
    )
}

fn text(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    with_type(status, content_type, body::full(text))
}

/// A streamed answer (its length unknown, so sent chunked).
pub(super) fn text_stream<S>(status: StatusCode, content_type: &'static str, s: S) -> Response<Body>
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    with_type(status, content_type, body::stream(s))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
