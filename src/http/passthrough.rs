//! Endpoints relayed to the upstream uncached: `tags/list`, `referrers`, and
//! manifests in a media type the client accepts but the cache does not
//! hold. `Link` headers are rewritten to the client-facing path.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::route::Route;
use crate::cache::CacheError;
use crate::upstream::read_limited;

/// Answers a listing endpoint (`tags/list`, `referrers/<digest>`).
pub async fn listing(
    route: &Route,
    suffix: &str,
    client_path: &str,
    client_query: Option<&str>,
    head: bool,
    unknown: Code,
) -> Result<Response<Body>, ApiError> {
    // `ns` is ours; everything else (n, last, artifactType) is the upstream's.
    let query: Option<String> = client_query.map(|q| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k != "ns"))
            .finish()
    });
    let query = query.filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json, */*"),
    );
    relay(
        route,
        suffix,
        query.as_deref(),
        headers,
        head,
        LISTING_LIMIT,
        unknown,
        Some(client_path),
    )
    .await
}

/// Listings are buffered whole; a registry with more tags than this should
/// be paginated by the client.
const LISTING_LIMIT: usize = 8 * 1024 * 1024;

/// Relays one upstream answer: 2xx with its body and the headers clients
/// need; anything else as regcache's own OCI error (an upstream's
/// `WWW-Authenticate` must never reach the client, who would answer it with
/// credentials meant for the upstream).
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    route: &Route,
    suffix: &str,
    query: Option<&str>,
    headers: HeaderMap,
    head: bool,
    limit: usize,
    unknown: Code,
    link_path: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let method = if head { Method::HEAD } else { Method::GET };
    let upstream = &route.upstream;
    let response = upstream
        .request(method, &route.repo, suffix, query, headers)
        .await
        .map_err(|e| ApiError::from_cache(&CacheError::from(e), unknown))?;
    if suffix.starts_with("manifests/") {
        upstream.record_ratelimit(response.headers());
    }
    let status = response.status();
    if !status.is_success() {
        let e = CacheError::from_upstream_status(&upstream.name, &response, "listing");
        return Err(ApiError::from_cache(&e, unknown));
    }
    let mut out_headers = HeaderMap::new();
    for name in [
        "content-type",
        "docker-content-digest",
        "oci-filters-applied",
        "etag",
    ] {
        if let Some(v) = response.headers().get(name) {
            out_headers.insert(name, v.clone());
        }
    }
    if let (Some(path), Some(link)) = (link_path, response.headers().get(http::header::LINK)) {
        if let Some(v) = link
            .to_str()
            .ok()
            .and_then(|l| rewrite_link(l, path, route.client_ns.as_deref()))
        {
            out_headers.insert(http::header::LINK, v);
        }
    }
    let body = if head {
        if let Some(len) = response.headers().get(http::header::CONTENT_LENGTH) {
            out_headers.insert(http::header::CONTENT_LENGTH, len.clone());
        }
        body::head()
    } else {
        let bytes = read_limited(response, limit, upstream.idle_timeout())
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    Code::Unavailable,
                    format!("upstream {}: {e}", upstream.name),
                )
            })?;
        out_headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        body::full(bytes)
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    Ok(out)
}

/// `</v2/library/alpine/tags/list?n=2&last=b>; rel="next"` from the
/// upstream becomes the same query on the path the client used, with its
/// `ns` kept so the next page routes the same way.
fn rewrite_link(link: &str, client_path: &str, ns: Option<&str>) -> Option<HeaderValue> {
    let start = link.find('<')?;
    let end = link[start..].find('>')? + start;
    let target = &link[start + 1..end];
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut pairs = form_urlencoded::Serializer::new(String::new());
    pairs.extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "ns"));
    if let Some(ns) = ns {
        pairs.append_pair("ns", ns);
    }
    let query = pairs.finish();
    let rewritten = format!("<{client_path}?{query}>{}", &link[end + 1..]);
    HeaderValue::from_str(&rewritten).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_is_rewritten_to_the_client_path() {
        let v = rewrite_link(
            r#"</v2/library/alpine/tags/list?last=b&n=2>; rel="next""#,
            "/v2/alpine/tags/list",
            None,
        )
        .unwrap();
        assert_eq!(v, r#"</v2/alpine/tags/list?last=b&n=2>; rel="next""#);
        let v = rewrite_link(
            r#"<https://up.example/v2/org/app/tags/list?n=1&last=a>; rel="next""#,
            "/mirror/v2/org/app/tags/list",
            Some("ghcr.io"),
        )
        .unwrap();
        assert_eq!(
            v,
            r#"</mirror/v2/org/app/tags/list?n=1&last=a&ns=ghcr.io>; rel="next""#
        );
        assert!(rewrite_link("garbage", "/p", None).is_none());
    }
}
