//! An upstream's answer, in the transport's own type so that nothing
//! outside `upstream` depends on the HTTP client: status, headers and a
//! body stream, with the two things every caller does with it — insist on
//! the status it needs, and read a small body whole within a limit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, StatusCode};

use super::UpstreamError;

/// An answer's body: chunks as they arrive, failures as
/// [`UpstreamError::Body`].
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send + Sync>>;

/// One answer from an upstream (after authentication and redirects).
pub struct Response {
    upstream: Arc<str>,
    status: StatusCode,
    headers: HeaderMap,
    content_length: Option<u64>,
    /// How long [`Response::bytes`] waits for data.
    idle: Duration,
    body: BodyStream,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("upstream", &self.upstream)
            .field("status", &self.status)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// An answer from parts; `content_length` is the body's announced size.
    pub fn new(
        upstream: Arc<str>,
        status: StatusCode,
        headers: HeaderMap,
        content_length: Option<u64>,
        idle: Duration,
        body: BodyStream,
    ) -> Response {
        Response {
            upstream,
            status,
            headers,
            content_length,
            idle,
            body,
        }
    }

    pub(super) fn from_reqwest(
        upstream: Arc<str>,
        idle: Duration,
        response: reqwest::Response,
    ) -> Response {
        let status = response.status();
        let headers = response.headers().clone();
        // reqwest's value: the body's size, so 0 for a HEAD answer whatever
        // its Content-Length header says.
        let content_length = response.content_length();
        Response::new(
            upstream,
            status,
            headers,
            content_length,
            idle,
            Box::pin(body_of(response)),
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body's size as the transport knows it (for a HEAD answer, that
    /// of its empty body: read the Content-Length header instead).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    pub fn bytes_stream(self) -> BodyStream {
        self.body
    }

    /// The answer, if its status is 200; else the status as an error about
    /// the `what` ("blob", "manifest") that was asked for.
    pub fn require_ok(self, what: &'static str) -> Result<Response, UpstreamError> {
        if self.status == StatusCode::OK {
            Ok(self)
        } else {
            Err(self.status_error(what))
        }
    }

    /// This answer's status as an error about `what`, with the upstream's
    /// Retry-After.
    pub fn status_error(&self, what: &'static str) -> UpstreamError {
        UpstreamError::Status {
            upstream: self.upstream.to_string(),
            status: self.status,
            what,
            retry_after: self
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// What the answer's caching headers allow a shared cache, for an
    /// answer to `method`.
    pub fn sharing(&self, method: &Method) -> Sharing {
        sharing(method, self.status, &self.headers, SystemTime::now())
    }

    /// Reads a small body (manifest, listing) whole: more than `limit` bytes
    /// is [`UpstreamError::TooLarge`], no data for the upstream's idle
    /// timeout is [`UpstreamError::Stalled`].
    pub async fn bytes(self, limit: usize) -> Result<Bytes, UpstreamError> {
        read_limited(self.content_length, self.body, limit, self.idle).await
    }
}

/// What an upstream answer's `Cache-Control`, `Expires` and `Age` allow a
/// cache shared by many clients (RFC 9111, as `http-cache-semantics`
/// reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    /// Neither `no-store` nor `private`: the answer may be kept and given
    /// to other clients.
    pub storable: bool,
    /// How long the answer stays fresh, when the upstream said so
    /// explicitly (`max-age`, `s-maxage`, `Expires`, less `Age`). Without
    /// such a header `tag_ttl` alone decides: a registry that says nothing
    /// is not asking for every pull to be revalidated.
    pub max_age: Option<Duration>,
}

fn sharing(method: &Method, status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Sharing {
    use http_cache_semantics::{CacheOptions, CachePolicy};
    // The request as the policy needs it: our own Authorization (tokens,
    // credentials) is left out, since who may see what regcache caches
    // is decided by its own rules, not by "authenticated, so private".
    let mut request = http::Request::new(());
    *request.method_mut() = method.clone();
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    // Directives are case-insensitive (RFC 9111 §5.2); the crate compares
    // them as written.
    let lowered: Vec<_> = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| http::HeaderValue::from_str(&v.to_ascii_lowercase()).ok())
        .collect();
    response.headers_mut().remove(http::header::CACHE_CONTROL);
    for v in lowered {
        response
            .headers_mut()
            .append(http::header::CACHE_CONTROL, v);
    }
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(&request, &response, now, options);
    let explicit = headers.contains_key(http::header::EXPIRES)
        || headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| {
                d.split('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .any(|d| d == "max-age" || d == "s-maxage");
    Sharing {
        storable: policy.is_storable(),
        max_age: explicit.then(|| policy.time_to_live(now)),
    }
}

fn body_of(response: reqwest::Response) -> impl Stream<Item = Result<Bytes, UpstreamError>> {
    response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| UpstreamError::Body(describe(&e))))
}

/// Reads a body whole, refusing more than `limit` bytes and failing when no
/// data arrives for `idle`.
pub(super) async fn read_limited(
    content_length: Option<u64>,
    body: impl Stream<Item = Result<Bytes, UpstreamError>>,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, UpstreamError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(UpstreamError::TooLarge { limit });
    }
    let mut out = BytesMut::new();
    let mut body = std::pin::pin!(body);
    loop {
        let next = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| UpstreamError::Stalled(idle))?;
        let Some(chunk) = next else { break };
        let chunk = chunk?;
        if out.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Reads a reqwest answer whole (token responses), as [`read_limited`].
pub(super) async fn read_reqwest_limited(
    response: reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, UpstreamError> {
    let length = response.content_length();
    read_limited(length, body_of(response), limit, idle).await
}

/// A transport error's cause chain in one line, without the URL (which may
/// carry a presigned query or a token).
pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, chunks: Vec<Result<Bytes, UpstreamError>>) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        Response::new(
            "up".into(),
            StatusCode::from_u16(status).unwrap(),
            headers,
            None,
            Duration::from_secs(5),
            Box::pin(futures_util::stream::iter(chunks)),
        )
    }

    #[test]
    fn anything_but_200_is_a_status_error_with_retry_after() {
        assert!(answer(200, vec![]).require_ok("blob").is_ok());
        let e = answer(429, vec![]).require_ok("manifest").unwrap_err();
        assert_eq!(
            e.to_string(),
            "upstream up answered 429 Too Many Requests for the manifest"
        );
        assert!(matches!(
            e,
            UpstreamError::Status { retry_after: Some(ref r), what: "manifest", .. } if r == "7"
        ));
        assert!(answer(206, vec![]).require_ok("blob").is_err());
    }

    #[tokio::test]
    async fn bytes_reads_whole_within_the_limit() {
        let chunks = || vec![Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"cd"))];
        assert_eq!(answer(200, chunks()).bytes(4).await.unwrap(), "abcd");
        assert!(matches!(
            answer(200, chunks()).bytes(3).await,
            Err(UpstreamError::TooLarge { limit: 3 })
        ));
        let broken = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(UpstreamError::Body("reset".into())),
        ];
        assert!(matches!(
            answer(200, broken).bytes(10).await,
            Err(UpstreamError::Body(_))
        ));
    }

    fn sharing_of(headers: &[(&str, &str)]) -> Sharing {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        sharing(&Method::HEAD, StatusCode::OK, &map, SystemTime::now())
    }

    #[test]
    fn caching_headers_as_a_shared_cache_reads_them() {
        let open = Sharing {
            storable: true,
            max_age: None,
        };
        assert_eq!(sharing_of(&[]), open, "silence leaves tag_ttl alone");
        assert_eq!(sharing_of(&[("cache-control", "public")]), open);
        assert_eq!(
            sharing_of(&[("cache-control", "public, max-age=60")]),
            Sharing {
                storable: true,
                max_age: Some(Duration::from_secs(60))
            }
        );
        assert_eq!(
            sharing_of(&[("cache-control", "max-age=60"), ("age", "50")]).max_age,
            Some(Duration::from_secs(10)),
            "what caches before us used up"
        );
        assert_eq!(
            sharing_of(&[("cache-control", "max-age=600, s-maxage=5")]).max_age,
            Some(Duration::from_secs(5)),
            "s-maxage is for shared caches"
        );
        assert_eq!(
            sharing_of(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]).max_age,
            Some(Duration::ZERO)
        );
        for refused in ["no-store", "private", "private, max-age=60", "No-Store"] {
            assert!(
                !sharing_of(&[("cache-control", refused)]).storable,
                "{refused}"
            );
        }
        // Our own token on the request does not make the answer private.
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CACHE_CONTROL, "max-age=60".parse().unwrap());
        assert!(sharing(&Method::GET, StatusCode::OK, &headers, SystemTime::now()).storable);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_gives_up_on_a_stalled_body() {
        let mut r = answer(200, vec![]);
        r.body = Box::pin(futures_util::stream::pending());
        assert!(matches!(r.bytes(10).await, Err(UpstreamError::Stalled(_))));
    }
}
