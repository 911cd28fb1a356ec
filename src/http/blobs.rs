//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: from the store on a hit, from the
//! one running fill on a miss.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::range::{parse_range, RangeRequest};
use super::route::Route;
use super::{App, RequestLog};
use crate::cache::{
    body_stream, wait_for_headers, Attached, BodySource, CacheError, Kind, ReaderGuard,
    UNKNOWN_SIZE,
};
use crate::policy::ClientPolicy;
use crate::registry::Digest;
use futures_util::StreamExt;

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
    // Taken before the file is opened and held by the body until it is
    // dropped: eviction skips blobs with readers.
    let mut guard = (!head).then(|| app.cache.readers.acquire(digest));
    // Two passes at most: a fill may commit between our look and our attach.
    // Blob bytes per client are metered only when a limit is configured.
    let meter = Some(app.policy.read().clone())
        .filter(|p| !head && p.limiter.limits_blobs())
        .map(|p| Meter {
            policy: p,
            client: log.client_key(),
            metrics: app.metrics.clone(),
        });
    for _ in 0..2 {
        if let Some((file, size)) = open_committed(app, digest).await? {
            authorize_cached(app, route, digest).await?;
            log.outcome = "hit";
            app.metrics
                .cache_outcome(&route.upstream.name, "blob", "hit");
            app.cache.index.touch(Kind::Blob, digest);
            return respond(
                app,
                digest,
                BodySource::File(Arc::new(file)),
                Some(size),
                range_header,
                head,
                meter,
                guard.take(),
            );
        }
        if head {
            log.outcome = "miss";
            return head_upstream(route, digest).await;
        }
        match app
            .cache
            .fills
            .attach(route.upstream.clone(), route.repo.clone(), digest)
        {
            Attached::Committed => continue,
            Attached::Fill {
                mut progress,
                joined,
            } => {
                if joined {
                    // Someone else's fill proves nothing about this repository.
                    authorize_cached(app, route, digest).await?;
                }
                log.outcome = if joined { "coalesced" } else { "miss" };
                app.metrics
                    .cache_outcome(&route.upstream.name, "blob", log.outcome);
                let size = wait_for_headers(&mut progress)
                    .await
                    .map_err(|e| ApiError::from_cache(&e, Code::BlobUnknown))?;
                return respond(
                    app,
                    digest,
                    BodySource::Fill(progress),
                    size,
                    range_header,
                    head,
                    meter,
                    guard.take(),
                );
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable,
        "the blob vanished while it was being served",
    ))
}

async fn authorize_cached(app: &App, route: &Route, digest: &Digest) -> Result<(), ApiError> {
    app.cache
        .authorize_cached(&route.upstream, &route.repo, Kind::Blob, digest)
        .await
        .map_err(|e| ApiError::from_cache(&e, Code::BlobUnknown))
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

async fn open_committed(
    app: &App,
    digest: &Digest,
) -> Result<Option<(std::fs::File, u64)>, ApiError> {
    let store = app.cache.store.clone();
    let d = digest.clone();
    tokio::task::spawn_blocking(move || store.open_committed(Kind::Blob, &d))
        .await
        .map_err(CacheError::from)
        .and_then(|r| r.map_err(CacheError::from))
        .map_err(|e| ApiError::from_cache(&e, Code::BlobUnknown))
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

/// A blob answer for `size` bytes (unknown when the upstream streams
/// without a length: then Range is ignored and the body is chunked).
// Lint gate: until the cache hands http a whole blob answer (issue 11).
#[allow(clippy::too_many_arguments)]
fn respond(
    app: &App,
    digest: &Digest,
    source: BodySource,
    size: Option<u64>,
    range_header: Option<&str>,
    head: bool,
    meter: Option<Meter>,
    guard: Option<ReaderGuard>,
) -> Result<Response<Body>, ApiError> {
    let mut headers = blob_headers(digest);
    let (status, start, end) = match size {
        Some(size) => match parse_range(range_header, size).map_err(|e| {
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::RangeInvalid,
                e.to_string(),
            )
        })? {
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
    let body = if head {
        body::head()
    } else {
        let chunks = body_stream(source, start, end, app.metrics.clone());
        // The reader guard lives as long as the body does: eviction skips
        // blobs being sent.
        let chunks = futures_util::StreamExt::map(chunks, move |chunk| {
            let _reader = &guard;
            chunk
        });
        match meter {
            Some(meter) => body::stream(chunks.then(move |chunk| meter.clone().pass(chunk))),
            None => body::stream(chunks),
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// HEAD of an uncached blob asks the upstream and starts no fill: a client
/// checking for existence should not cost a download.
async fn head_upstream(route: &Route, digest: &Digest) -> Result<Response<Body>, ApiError> {
    let response = route
        .upstream
        .request(
            Method::HEAD,
            &route.repo,
            &format!("blobs/{digest}"),
            None,
            HeaderMap::new(),
        )
        .await
        .map_err(|e| ApiError::from_cache(&CacheError::from(e), Code::BlobUnknown))?;
    if response.status() != StatusCode::OK {
        let e = CacheError::from_upstream_status(&route.upstream.name, &response, "blob");
        return Err(ApiError::from_cache(&e, Code::BlobUnknown));
    }
    let mut headers = blob_headers(digest);
    if let Some(len) = response.headers().get(http::header::CONTENT_LENGTH) {
        headers.insert(http::header::CONTENT_LENGTH, len.clone());
    }
    let mut out = Response::new(body::head());
    *out.headers_mut() = headers;
    Ok(out)
}
