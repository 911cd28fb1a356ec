//! The OCI error format, and the one place where internal errors become
//! HTTP answers.

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::body::{self, Body};
use crate::cache::CacheError;
use crate::upstream::UpstreamError;

/// OCI distribution-spec error codes (plus one for ranges, which the spec
/// leaves to HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

/// An error answer: status, OCI code, a message for people, and the few
/// headers some errors carry.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub retry_after: Option<String>,
    /// For 416: the size to put in `Content-Range: bytes */<size>`.
    pub unsatisfiable_size: Option<u64>,
    /// For 401 from regcache's own client authentication: challenge the
    /// client to send Basic credentials.
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            unsatisfiable_size: None,
            challenge: false,
        }
    }

    pub fn not_found(code: Code, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn bad_request(code: Code, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Maps a cache failure for content of `what` (blob or manifest).
    pub fn from_cache(e: &CacheError, unknown: Code) -> ApiError {
        match e {
            CacheError::Upstream(UpstreamError::Status {
                upstream,
                status,
                what,
                retry_after,
            }) => {
                let (status, code, message) = match status.as_u16() {
                    404 => (
                        StatusCode::NOT_FOUND,
                        unknown,
                        format!("{what} not found at upstream {upstream}"),
                    ),
                    401 => (
                        StatusCode::UNAUTHORIZED,
                        Code::Unauthorized,
                        format!("upstream {upstream} requires authentication for this {what}"),
                    ),
                    403 => (
                        StatusCode::FORBIDDEN,
                        Code::Denied,
                        format!("upstream {upstream} denied access to this {what}"),
                    ),
                    429 => (
                        StatusCode::TOO_MANY_REQUESTS,
                        Code::TooManyRequests,
                        format!("upstream {upstream} is rate-limiting this mirror"),
                    ),
                    s => (
                        StatusCode::BAD_GATEWAY,
                        Code::Unavailable,
                        format!("upstream {upstream} answered {s} for the {what}"),
                    ),
                };
                ApiError {
                    retry_after: retry_after
                        .clone()
                        .or_else(|| (status == StatusCode::TOO_MANY_REQUESTS).then(|| "60".into())),
                    ..ApiError::new(status, code, message)
                }
            }
            CacheError::Upstream(UpstreamError::Offline { .. }) => {
                ApiError::not_found(unknown, format!("not cached, and {e}"))
            }
            CacheError::Upstream(UpstreamError::CircuitOpen { .. }) => ApiError {
                retry_after: Some("30".into()),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::Unavailable,
                    format!("not cached, and {e}"),
                )
            },
            CacheError::Upstream(UpstreamError::Timeout { .. } | UpstreamError::Stalled(_)) => {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    Code::Unavailable,
                    e.to_string(),
                )
            }
            CacheError::Upstream(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, Code::Unavailable, e.to_string())
            }
            CacheError::DigestMismatch { .. }
            | CacheError::SharedCorrupt(_)
            | CacheError::SizeMismatch { .. }
            | CacheError::BlobTooLarge { .. }
            | CacheError::BadManifestAnswer => {
                ApiError::new(StatusCode::BAD_GATEWAY, Code::Unavailable, e.to_string())
            }
            CacheError::ManifestTooLarge | CacheError::NotAManifest { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                Code::ManifestInvalid,
                e.to_string(),
            ),
            // A full disk is the operator's to fix, and the client should
            // know it is not its request: 507, not a bare 500.
            CacheError::Storage(_) | CacheError::Index(_) if e.is_storage_full() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                Code::Unavailable,
                format!("the mirror's cache storage is full ({e})"),
            ),
            CacheError::NoRoom { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                Code::Unavailable,
                e.to_string(),
            ),
            CacheError::Unwritable(_) | CacheError::Shared(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                e.to_string(),
            ),
            CacheError::Storage(_)
            | CacheError::Index(_)
            | CacheError::Locked(_)
            | CacheError::Internal(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Unavailable,
                e.to_string(),
            ),
        }
    }

    /// The response; HEAD answers carry no body.
    pub fn into_response(self, head: bool) -> Response<Body> {
        let payload = json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        })
        .to_string();
        let length = payload.len();
        let mut response = Response::new(if head {
            body::empty()
        } else {
            body::full(payload)
        });
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Some(v) = self
            .retry_after
            .and_then(|r| HeaderValue::from_str(&r).ok())
        {
            headers.insert(http::header::RETRY_AFTER, v);
        }
        if self.challenge {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"regcache\""),
            );
        }
        if let Some(size) = self.unsatisfiable_size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(http::header::CONTENT_RANGE, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_body_is_oci_json_and_head_has_none() {
        use http_body_util::BodyExt;
        let e = ApiError::not_found(Code::BlobUnknown, "nope");
        let r = e.clone().into_response(false);
        assert_eq!(r.status(), 404);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "nope");
        let r = e.into_response(true);
        assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());
    }

    #[test]
    fn a_refused_host_is_a_502_naming_it() {
        let e = CacheError::Upstream(UpstreamError::Refused {
            upstream: "up".into(),
            host: "127.0.0.1".into(),
            reason: "a redirect to a loopback address".into(),
        });
        let api = ApiError::from_cache(&e, Code::BlobUnknown);
        assert_eq!(api.status, StatusCode::BAD_GATEWAY);
        assert!(
            api.message.contains("refused to contact 127.0.0.1"),
            "{}",
            api.message
        );
    }

    #[test]
    fn upstream_429_keeps_retry_after() {
        let e = CacheError::Upstream(UpstreamError::Status {
            upstream: "docker.io".into(),
            status: StatusCode::TOO_MANY_REQUESTS,
            what: "manifest",
            retry_after: Some("7".into()),
        });
        let api = ApiError::from_cache(&e, Code::ManifestUnknown);
        assert_eq!(api.status, 429);
        assert_eq!(api.code, Code::TooManyRequests);
        assert_eq!(api.retry_after.as_deref(), Some("7"));
    }
}
