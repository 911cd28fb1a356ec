//! Answers relayed from the upstream uncached: manifests in a media type the
//! client accepts but the cache does not hold.

use http::{HeaderMap, HeaderValue, Method, Response};

use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::route::Route;
use crate::cache::{CacheError, MAX_MANIFEST_SIZE};
use crate::registry::{AcceptList, Reference};

/// Relays one manifest answer, asked for with the client's own Accept: 2xx
/// with its body and the headers clients need; anything else as regcache's
/// own OCI error (an upstream's `WWW-Authenticate` must never reach the
/// client, who would answer it with credentials meant for the upstream).
pub async fn relay_manifest(
    route: &Route,
    reference: &Reference,
    accept: &AcceptList,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&accept.header_value()) {
        headers.insert(http::header::ACCEPT, v);
    }
    let method = if head { Method::HEAD } else { Method::GET };
    let upstream = &route.upstream;
    let failed = |e: CacheError| ApiError::from_cache(&e, Code::ManifestUnknown);
    let response = upstream
        .request(
            method,
            &route.repo,
            &format!("manifests/{reference}"),
            None,
            headers,
        )
        .await
        .map_err(|e| failed(e.into()))?;
    upstream.record_ratelimit(response.headers());
    let status = response.status();
    if !status.is_success() {
        return Err(failed(response.status_error("manifest").into()));
    }
    let mut out_headers = HeaderMap::new();
    for name in ["content-type", "docker-content-digest", "etag"] {
        if let Some(v) = response.headers().get(name) {
            out_headers.insert(name, v.clone());
        }
    }
    let body = if head {
        if let Some(len) = response.headers().get(http::header::CONTENT_LENGTH) {
            out_headers.insert(http::header::CONTENT_LENGTH, len.clone());
        }
        body::head()
    } else {
        let bytes = response
            .bytes(MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| failed(CacheError::manifest_body(e)))?;
        out_headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        body::full(bytes)
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    Ok(out)
}
