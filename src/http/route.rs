//! From a request line to what it asks for and which upstream answers it.
//!
//! The endpoint is matched from the right of the path, because repository
//! names may contain `blobs` or `manifests` as components. The upstream is
//! chosen by, in order: containerd's `ns=` query; a path prefix before
//! `/v2` that names an upstream; a first repository component that names
//! one (`/v2/ghcr.io/owner/app/...`, as podman/CRI-O mirrors send); else the
//! default upstream. Only configured upstreams are ever chosen.

use std::sync::Arc;

use http::{Method, StatusCode};

use super::error::{ApiError, Code};
use crate::registry::{looks_like_host, Digest, Reference, RepoName};
use crate::upstream::{Upstream, Upstreams};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(Reference),
    Blob(Digest),
    TagsList,
    Referrers(Digest),
}

/// A routed repository request.
pub struct Route {
    pub endpoint: Endpoint,
    pub upstream: Arc<Upstream>,
    /// The repository as the upstream names it (`library/` added for Hub).
    pub repo: RepoName,
    /// What the client's path had before `/v2` and as the name, and its
    /// `ns`, to build client-facing `Link`s.
    pub client_prefix: String,
    pub client_name: String,
    pub client_ns: Option<String>,
}

/// What a request is, before any upstream is involved.
pub enum Parsed {
    /// `GET /v2/`
    Base,
    Repo(Route),
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unsupported,
        "regcache is a read-only mirror: push and delete are not supported",
    )
}

/// Splits off the path prefix before `/v2` (a mirror mounted at a path).
fn split_v2(path: &str) -> Option<(&str, &str)> {
    // The first "/v2/" wins: a tag or name component may itself be "v2".
    if let Some(at) = path.find("/v2/") {
        return Some((&path[..at], &path[at + 4..]));
    }
    path.strip_suffix("/v2").map(|prefix| (prefix, ""))
}

pub fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    upstreams: &Upstreams,
) -> Result<Parsed, ApiError> {
    let (prefix, rest) = split_v2(path).ok_or_else(|| {
        ApiError::not_found(Code::NameUnknown, "not a registry API path (no /v2/)")
    })?;
    if method != Method::GET && method != Method::HEAD {
        return Err(method_not_allowed());
    }
    if rest.is_empty() {
        return Ok(Parsed::Base);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if rest == "_catalog" {
        return Err(ApiError::not_found(
            Code::Unsupported,
            "the catalog is not available through this mirror",
        ));
    }
    if n >= 3 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads"
        || segments.ends_with(&["blobs", "uploads", ""])
    {
        return Err(method_not_allowed());
    }
    let (name_segments, endpoint) = if n >= 3
        && segments[n - 2] == "tags"
        && segments[n - 1] == "list"
    {
        (&segments[..n - 2], Endpoint::TagsList)
    } else if n >= 3 {
        let arg = segments[n - 1];
        let endpoint = match segments[n - 2] {
            "manifests" => Endpoint::Manifest(Reference::parse(arg).map_err(|e| match e {
                crate::registry::reference::ReferenceError::Tag(t) => {
                    ApiError::bad_request(Code::ManifestInvalid, t.to_string())
                }
                crate::registry::reference::ReferenceError::Digest(d) => {
                    ApiError::bad_request(Code::DigestInvalid, d.to_string())
                }
            })?),
            "blobs" => Endpoint::Blob(arg.parse().map_err(|e: crate::registry::DigestError| {
                ApiError::bad_request(Code::DigestInvalid, e.to_string())
            })?),
            "referrers" => {
                Endpoint::Referrers(arg.parse().map_err(|e: crate::registry::DigestError| {
                    ApiError::bad_request(Code::DigestInvalid, e.to_string())
                })?)
            }
            _ => {
                return Err(ApiError::not_found(
                    Code::NameUnknown,
                    "unknown registry endpoint",
                ))
            }
        };
        (&segments[..n - 2], endpoint)
    } else {
        return Err(ApiError::not_found(
            Code::NameUnknown,
            "unknown registry endpoint",
        ));
    };
    let client_name = name_segments.join("/");
    let name = RepoName::parse(&client_name)
        .map_err(|e| ApiError::bad_request(Code::NameInvalid, e.to_string()))?;
    let ns = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
    });
    let (upstream, name) = choose_upstream(upstreams, prefix, ns.as_deref(), name)?;
    Ok(Parsed::Repo(Route {
        endpoint,
        repo: upstream.upstream_repo(&name),
        upstream,
        client_prefix: prefix.to_owned(),
        client_name,
        client_ns: ns,
    }))
}

fn not_configured(what: &str, host: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Code::NameUnknown,
        format!("{what} {host:?} names no upstream configured on this mirror"),
    )
}

fn choose_upstream(
    upstreams: &Upstreams,
    prefix: &str,
    ns: Option<&str>,
    name: RepoName,
) -> Result<(Arc<Upstream>, RepoName), ApiError> {
    if let Some(ns) = ns {
        let upstream = upstreams.get(ns).ok_or_else(|| not_configured("ns", ns))?;
        return Ok((upstream, name));
    }
    if let Some(last) = prefix.rsplit('/').next().filter(|p| !p.is_empty()) {
        if let Some(upstream) = upstreams.get(last) {
            return Ok((upstream, name));
        }
        // A mirror path naming a registry this mirror does not configure
        // (`/quay.io/v2/...`) would otherwise get the default upstream's
        // image of the same name.
        if looks_like_host(last) {
            return Err(not_configured("the path prefix", last));
        }
    }
    if let Some(rest) = name.without_first_component() {
        let first = name.components().next().unwrap_or_default();
        if let Some(upstream) = upstreams.get(first) {
            return Ok((upstream, rest));
        }
        // A first component shaped like a registry host that is not
        // configured is refused rather than sent to the default upstream
        // (Docker Hub namespaces cannot contain dots).
        if looks_like_host(first) {
            return Err(not_configured("the repository prefix", first));
        }
    }
    Ok((upstreams.default_upstream(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        crate::upstream::presets_with_local_for_tests()
    }

    fn route(method: Method, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
        match parse(&method, path, query, &upstreams())? {
            Parsed::Repo(r) => Ok(r),
            Parsed::Base => panic!("base"),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn default_upstream_and_library_prefix() {
        let r = route(Method::GET, "/v2/alpine/manifests/3.20", None).unwrap();
        assert_eq!(&*r.upstream.name, "docker.io");
        assert_eq!(r.repo.as_str(), "library/alpine");
        assert!(matches!(r.endpoint, Endpoint::Manifest(Reference::Tag(_))));
    }

    #[test]
    fn ns_query_is_decoded_and_matched_against_aliases() {
        let r = route(
            Method::HEAD,
            "/v2/org/app/manifests/v1",
            Some("ns=127.0.0.1%3A5001"),
        )
        .unwrap();
        assert_eq!(&*r.upstream.name, "local");
        assert_eq!(r.repo.as_str(), "org/app");
        let r = route(Method::GET, "/v2/app/blobs/".to_owned().as_str(), None);
        assert!(r.is_err());
        let e = route(
            Method::GET,
            "/v2/org/app/manifests/v1",
            Some("ns=evil.example.com"),
        )
        .err()
        .unwrap();
        assert_eq!(e.code, Code::NameUnknown);
        let r = route(
            Method::GET,
            "/v2/alpine/manifests/v1",
            Some("ns=registry-1.docker.io"),
        )
        .unwrap();
        assert_eq!(r.repo.as_str(), "library/alpine");
    }

    #[test]
    fn repository_prefix_and_path_prefix() {
        let r = route(
            Method::GET,
            &format!("/v2/ghcr.io/owner/app/blobs/{D}"),
            None,
        )
        .unwrap();
        assert_eq!(&*r.upstream.name, "ghcr.io");
        assert_eq!(r.repo.as_str(), "owner/app");
        let r = route(Method::GET, "/v2/docker.io/alpine/manifests/latest", None).unwrap();
        assert_eq!(r.repo.as_str(), "library/alpine");
        let e = route(Method::GET, "/v2/evil.example.com/x/manifests/latest", None)
            .err()
            .unwrap();
        assert_eq!(e.code, Code::NameUnknown);
        let r = route(Method::GET, "/mirror/quay.io/v2/org/app/manifests/1", None).unwrap();
        assert_eq!(&*r.upstream.name, "quay.io");
        let r = route(Method::GET, "/some/path/v2/org/app/manifests/1", None).unwrap();
        assert_eq!(&*r.upstream.name, "docker.io");
        assert_eq!(r.client_prefix, "/some/path");
        // A path prefix naming a registry that is not configured is refused,
        // never answered by the default upstream.
        for path in [
            "/unknown.example/v2/team/app/manifests/v1",
            "/mirror/registry.internal:5000/v2/team/app/manifests/v1",
            "/localhost/v2/team/app/manifests/v1",
        ] {
            let e = route(Method::GET, path, None).err().unwrap();
            assert_eq!(e.code, Code::NameUnknown, "{path}");
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn endpoints_match_from_the_right() {
        let r = route(Method::GET, "/v2/a/manifests/v2", None).unwrap();
        assert_eq!(
            r.endpoint,
            Endpoint::Manifest(Reference::parse("v2").unwrap())
        );
        let r = route(Method::GET, "/v2/v2/app/manifests/v2", None).unwrap();
        assert_eq!(r.repo.as_str(), "v2/app");
        assert!(matches!(
            parse(&Method::GET, "/mirror/v2", None, &upstreams()),
            Ok(Parsed::Base)
        ));
        let r = route(Method::GET, "/v2/a/blobs/manifests/x", None).unwrap();
        assert_eq!(r.repo.as_str(), "a/blobs");
        let r = route(Method::GET, &format!("/v2/manifests/blobs/{D}"), None).unwrap();
        assert_eq!(r.repo.as_str(), "library/manifests");
        assert!(matches!(r.endpoint, Endpoint::Blob(_)));
        let r = route(Method::GET, "/v2/x/tags/tags/list", None).unwrap();
        assert_eq!(r.repo.as_str(), "x/tags");
        assert_eq!(r.endpoint, Endpoint::TagsList);
        let r = route(Method::GET, &format!("/v2/x/y/referrers/{D}"), None).unwrap();
        assert!(matches!(r.endpoint, Endpoint::Referrers(_)));
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        let code =
            |m: Method, p: &str| route(m, p, None).err().map(|e| (e.status.as_u16(), e.code));
        assert_eq!(
            code(Method::GET, "/v2/UPPER/manifests/x"),
            Some((400, Code::NameInvalid))
        );
        assert_eq!(
            code(Method::GET, "/v2/a/../b/manifests/x"),
            Some((400, Code::NameInvalid))
        );
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/sha256:xyz"),
            Some((400, Code::DigestInvalid))
        );
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/md5:abc"),
            Some((400, Code::DigestInvalid))
        );
        assert_eq!(
            code(Method::GET, "/v2/a/manifests/-bad"),
            Some((400, Code::ManifestInvalid))
        );
        assert_eq!(
            code(Method::PUT, "/v2/a/manifests/x"),
            Some((405, Code::Unsupported))
        );
        assert_eq!(
            code(Method::POST, "/v2/a/blobs/uploads/"),
            Some((405, Code::Unsupported))
        );
        assert_eq!(
            code(Method::DELETE, &format!("/v2/a/blobs/{D}")),
            Some((405, Code::Unsupported))
        );
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/uploads/"),
            Some((405, Code::Unsupported))
        );
        assert_eq!(code(Method::GET, "/v2/a"), Some((404, Code::NameUnknown)));
        assert_eq!(code(Method::GET, "/other"), Some((404, Code::NameUnknown)));
        assert!(matches!(
            parse(&Method::GET, "/v2/", None, &upstreams()),
            Ok(Parsed::Base)
        ));
        assert!(matches!(
            parse(&Method::GET, "/v2", None, &upstreams()),
            Ok(Parsed::Base)
        ));
    }
}
