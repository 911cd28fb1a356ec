//! The admin listener's answers: JSON, plain text, streams and errors.

use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::cache::CacheError;
use crate::http::body::{self, Body};

pub(super) fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}"));
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allowed));
    r
}

pub(super) fn error(status: StatusCode, message: String) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            text(status, "application/json", s)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the answer failed: {e}\n"),
        ),
    }
}

/// Runs blocking cache work (sled, files) off the async workers.
pub(super) async fn blocking_json<T, F>(f: F) -> Response<Body>
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, CacheError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => json(StatusCode::OK, &value),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) fn text(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    with_type(status, content_type, body::full(text))
}

/// A streamed answer (its length unknown, so sent chunked).
pub(super) fn text_stream<S>(status: StatusCode, content_type: &'static str, s: S) -> Response<Body>
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    with_type(status, content_type, body::stream(s))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// One line of a streamed NDJSON answer.
pub(super) fn json_line(value: serde_json::Value) -> std::io::Result<bytes::Bytes> {
    let mut s = value.to_string();
    s.push('\n');
    Ok(bytes::Bytes::from(s))
}
