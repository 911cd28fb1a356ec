//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::app::{App, RequestLog};
use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::headers::mark_stale;
use super::passthrough;
use super::refusals;
use super::route::Route;
use crate::cache::{Manifest, ManifestAnswer, Outcome};
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
    let answer = app
        .cache
        .manifest(&route.upstream, &route.repo, reference, &accept, head)
        .await
        .map_err(|e| {
            if let Some(outcome) = e.outcome {
                log.outcome = outcome.label();
            }
            ApiError::from_cache(&e.error, Code::ManifestUnknown)
        })?;
    let tag = match reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    match answer {
        ManifestAnswer::NotAcceptable => {
            // The client accepts none of what is cached: ask the upstream
            // with the client's own Accept and relay the answer uncached.
            log.outcome = Outcome::Bypass.label();
            let response = passthrough::relay_manifest(route, reference, &accept, head).await?;
            if app.gate.is_active(&route.upstream.name, &route.repo) {
                // The policy checks go by the digest relayed.
                let digest = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Digest>().ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::FORBIDDEN,
                            Code::Denied,
                            "the upstream's answer names no digest, which the policy checks need",
                        )
                    })?;
                refusals::check_manifest(app, route, tag, &digest, None, log).await?;
            }
            Ok(response)
        }
        ManifestAnswer::Found {
            digest,
            media_type,
            size,
            manifest,
            outcome,
            stale,
        } => {
            log.outcome = outcome.label();
            refusals::check_manifest(app, route, tag, &digest, manifest.clone(), log).await?;
            let mut response =
                manifest_response(&digest, &media_type, size, manifest.as_ref(), headers);
            if stale {
                mark_stale(&mut response);
            }
            Ok(response)
        }
    }
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
