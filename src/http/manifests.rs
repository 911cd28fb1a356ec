//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::route::Route;
use super::{mark_stale, passthrough, App, RequestLog};
use crate::cache::{Kind, Manifest, Outcome};
use crate::registry::{AcceptList, Digest, Reference};

pub async fn manifest(
    app: &App,
    route: &Route,
    reference: &Reference,
    head: bool,
    headers: &HeaderMap,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    let accept = AcceptList::from_headers(headers);
    let cache = &app.cache.manifests;
    let mut stale = false;
    let manifest = match reference {
        Reference::Digest(digest) => {
            let (m, outcome) = cache
                .by_digest(&route.upstream, &route.repo, digest)
                .await
                .map_err(|e| ApiError::from_cache(&e, Code::ManifestUnknown))?;
            log.outcome = outcome.label();
            if outcome != Outcome::Miss {
                app.cache
                    .authorize_cached(&route.upstream, &route.repo, Kind::Manifest, digest)
                    .await
                    .map_err(|e| ApiError::from_cache(&e, Code::ManifestUnknown))?;
            }
            m
        }
        Reference::Tag(tag) => {
            let (entry, outcome) = cache
                .resolve_tag(&route.upstream, &route.repo, tag)
                .await
                .map_err(|e| ApiError::from_cache(&e, Code::ManifestUnknown))?;
            log.outcome = outcome.label();
            stale = outcome == Outcome::Stale;
            if !accept.allows(&entry.media_type) {
                return forward(route, reference, &accept, head, log).await;
            }
            let digest: Digest = entry.digest.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Code::Unavailable,
                    "corrupt tag entry",
                )
            })?;
            if head {
                // A HEAD answers from the tag record alone: no body needed,
                // and no manifest download for a version check.
                let mut response =
                    manifest_response(&digest, &entry.media_type, entry.size, None, headers);
                if stale {
                    mark_stale(&mut response);
                }
                return Ok(response);
            }
            let (m, _) = cache
                .by_digest(&route.upstream, &route.repo, &digest)
                .await
                .map_err(|e| ApiError::from_cache(&e, Code::ManifestUnknown))?;
            m
        }
    };
    if !accept.allows(&manifest.media_type) {
        return forward(route, reference, &accept, head, log).await;
    }
    let mut response = manifest_response(
        &manifest.digest,
        &manifest.media_type,
        manifest.bytes.len() as u64,
        (!head).then_some(&manifest),
        headers,
    );
    if stale {
        mark_stale(&mut response);
    }
    Ok(response)
}

/// Headers (and, for GET, the byte-exact body) of a manifest answer.
/// `If-None-Match` with the digest gets a 304.
fn manifest_response(
    digest: &Digest,
    media_type: &str,
    size: u64,
    body: Option<&Arc<Manifest>>,
    request_headers: &HeaderMap,
) -> Response<Body> {
    let etag = format!("\"{digest}\"");
    let not_modified = request_headers
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let mut response = Response::new(match body {
        Some(m) if !not_modified => body::full(m.bytes.clone()),
        _ => body::head(),
    });
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(media_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(http::header::ETAG, v);
    }
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    } else {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    response
}

/// The client accepts none of what is cached: ask the upstream with the
/// client's own Accept and relay the answer uncached.
async fn forward(
    route: &Route,
    reference: &Reference,
    accept: &AcceptList,
    head: bool,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    log.outcome = "bypass";
    passthrough::relay_manifest(route, reference, accept, head).await
}
