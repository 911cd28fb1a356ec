//! The peer endpoint, on `[cluster] peer_listen`: another replica that
//! follows this one's fill of a blob streams it from here,
//! `GET /_regcache/v1/fills/sha256:<hex>`, with the shared bearer token and
//! `Range: bytes=N-` to resume. It serves the running fill (the last byte
//! held until it is verified, as for any client) or the committed blob,
//! and never starts a fill: a peer asks for what this replica holds the
//! lease of, not for content of a repository.

use http::{Method, Response, StatusCode};
use hyper::body::Incoming;

use super::app::{App, RequestLog};
use super::body::Body;
use super::error::{ApiError, Code};
use crate::cache::shared::peer::FILLS_PATH;
use crate::registry::Digest;

pub async fn handle(
    app: &App,
    request: &hyper::Request<Incoming>,
    log: &mut RequestLog,
) -> Response<Body> {
    log.route = "peer";
    let head = request.method() == Method::HEAD;
    match answer(app, request, head, log).await {
        Ok(response) => response,
        Err(e) => e.into_response(head),
    }
}

async fn answer(
    app: &App,
    request: &hyper::Request<Incoming>,
    head: bool,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    if let Some(token) = &app.peer_token {
        if !token.accepts(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                Code::Unauthorized,
                "the peer endpoint needs the cluster's bearer token",
            ));
        }
    }
    if !head && request.method() != Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            "the peer endpoint answers GET and HEAD",
        ));
    }
    let digest: Digest = request
        .uri()
        .path()
        .strip_prefix(FILLS_PATH)
        .ok_or_else(|| ApiError::not_found(Code::NameUnknown, "not a peer endpoint path"))?
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Code::DigestInvalid, format!("{e}")))?;
    log.reference = Some(digest.to_string());
    let answer = app
        .cache
        .peer_blob(&digest, head)
        .await
        .map_err(|e| ApiError::from_cache(&e, Code::BlobUnknown))?
        .ok_or_else(|| {
            ApiError::not_found(
                Code::BlobUnknown,
                "this replica neither fills nor holds that blob",
            )
        })?;
    log.outcome = answer.outcome.label();
    let range = request
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok());
    let sent = app.metrics.shared.peer_bytes.with_label_values(&["sent"]);
    super::blobs::respond_counted(&digest, answer, range, move |n| sent.inc_by(n as u64))
}
