//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: the cache's blob answer as a
//! response, with Range, the blob headers and the per-client byte meter.

use std::sync::Arc;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::app::{App, RequestLog};
use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::range::{parse_range, RangeRequest};
use super::route::Route;
use crate::cache::{BlobAnswer, UNKNOWN_SIZE};
use crate::policy::ClientPolicy;
use crate::registry::Digest;

pub async fn blob(
    app: &App,
    route: &Route,
    digest: &Digest,
    head: bool,
    headers: &HeaderMap,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    let range_header = headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok());
    // Blob bytes per client are metered only when a limit is configured.
    let meter = Some(app.policy.read().clone())
        .filter(|p| !head && p.limiter.limits_blobs())
        .map(|p| Meter {
            policy: p,
            client: log.client_key(),
            metrics: app.metrics.clone(),
        });
    super::refusals::check_blob(app, route, digest, log).await?;
    let answer = app
        .cache
        .blob(&route.upstream, &route.repo, digest, head)
        .await
        .map_err(|e| {
            if let Some(outcome) = e.outcome {
                log.outcome = outcome.label();
            }
            ApiError::from_cache(&e.error, Code::BlobUnknown)
        })?;
    log.outcome = answer.outcome.label();
    respond(digest, answer, range_header, meter, None)
}

/// Holds each chunk back until the client's blob byte budget allows it.
#[derive(Clone)]
struct Meter {
    policy: Arc<ClientPolicy>,
    client: String,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Meter {
    async fn pass(self, chunk: std::io::Result<bytes::Bytes>) -> std::io::Result<bytes::Bytes> {
        if let Ok(bytes) = &chunk {
            if self
                .policy
                .limiter
                .blob_bytes(&self.client, bytes.len())
                .await
            {
                self.metrics.throttled("blob_bytes");
            }
        }
        chunk
    }
}

fn blob_headers(digest: &Digest) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        http::header::ACCEPT_RANGES,
        HeaderValue::from_static("bytes"),
    );
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(http::header::ETAG, v);
    }
    // Content-addressed: it can never change.
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    h
}

/// A blob answer for another replica: each chunk counted by `count`.
pub(super) fn respond_counted(
    digest: &Digest,
    answer: BlobAnswer,
    range_header: Option<&str>,
    count: impl Fn(usize) + Send + Sync + 'static,
) -> Result<Response<Body>, ApiError> {
    respond(digest, answer, range_header, None, Some(Box::new(count)))
}

type Counter = Box<dyn Fn(usize) + Send + Sync>;

/// A blob answer for its size (unknown when the upstream streams without a
/// length: then Range is ignored and the body is chunked).
fn respond(
    digest: &Digest,
    answer: BlobAnswer,
    range_header: Option<&str>,
    meter: Option<Meter>,
    count: Option<Counter>,
) -> Result<Response<Body>, ApiError> {
    let mut headers = blob_headers(digest);
    let (status, start, end) = match answer.size {
        Some(size) => match parse_range(range_header, size) {
            RangeRequest::Full => (StatusCode::OK, 0, size),
            RangeRequest::Partial { start, end } => {
                let content_range =
                    HeaderValue::try_from(format!("bytes {start}-{}/{size}", end - 1)).map_err(
                        |e| {
                            ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                Code::Unavailable,
                                e.to_string(),
                            )
                        },
                    )?;
                headers.insert(http::header::CONTENT_RANGE, content_range);
                (StatusCode::PARTIAL_CONTENT, start, end)
            }
            RangeRequest::Unsatisfiable => {
                return Err(ApiError {
                    unsatisfiable_size: Some(size),
                    ..ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        Code::RangeInvalid,
                        format!("the range is outside the blob ({size} bytes)"),
                    )
                })
            }
        },
        None => (StatusCode::OK, 0, UNKNOWN_SIZE),
    };
    if end != UNKNOWN_SIZE {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    let body = match answer.body {
        None => body::head(),
        Some(blob) => {
            let chunks = blob.stream(start, end);
            match (meter, count) {
                (Some(meter), _) => {
                    body::stream(chunks.then(move |chunk| meter.clone().pass(chunk)))
                }
                (None, Some(count)) => body::stream(chunks.inspect(move |chunk| {
                    if let Ok(bytes) = chunk {
                        count(bytes.len());
                    }
                })),
                (None, None) => body::stream(chunks),
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}
