//! `GET /v2/<name>/tags/list` and `GET /v2/<name>/referrers/<digest>`:
//! mutable listings, cached like tags. `Link` headers are rewritten to the
//! client-facing path.

use http::{HeaderValue, Response};

use super::app::{App, RequestLog};
use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::headers::mark_stale;
use super::route::Route;
use crate::cache::Outcome;
use crate::registry::Digest;

/// What a listing endpoint asks the upstream for, and the error code of a
/// repository (or subject) the upstream does not know.
pub enum Listed<'a> {
    Tags,
    Referrers(&'a Digest),
}

pub async fn listing(
    app: &App,
    route: &Route,
    listed: Listed<'_>,
    uri: &http::Uri,
    head: bool,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    let (suffix, unknown) = match listed {
        Listed::Tags => ("tags/list".to_owned(), Code::NameUnknown),
        Listed::Referrers(d) => (format!("referrers/{d}"), Code::ManifestUnknown),
    };
    let client_path = uri.path();
    // `ns` is ours; everything else (n, last, artifactType) is the upstream's.
    let query = uri
        .query()
        .map(|q| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k != "ns"))
                .finish()
        })
        .filter(|q| !q.is_empty());
    let (listing, outcome) = app
        .cache
        .listing(&route.upstream, &route.repo, &suffix, query.as_deref())
        .await
        .map_err(|e| ApiError::from_cache(&e, unknown))?;
    log.outcome = outcome.label();
    let length = listing.body.len();
    let mut response = Response::new(if head {
        body::head()
    } else {
        body::full(listing.body)
    });
    let headers = response.headers_mut();
    let content_type = listing
        .content_type
        .as_deref()
        .unwrap_or("application/json");
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(v) = listing
        .filters_applied
        .as_deref()
        .and_then(|f| HeaderValue::from_str(f).ok())
    {
        headers.insert("oci-filters-applied", v);
    }
    if let Some(v) = listing
        .link
        .as_deref()
        .and_then(|l| rewrite_link(l, client_path, route.client_ns.as_deref()))
    {
        headers.insert(http::header::LINK, v);
    }
    if outcome == Outcome::Stale {
        mark_stale(&mut response);
    }
    Ok(response)
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
