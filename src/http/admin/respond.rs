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

/// How often a progress stream looks at its job.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The NDJSON answer of a long admin job (prefetch, verify): every line
/// `pending` has while the job runs (it keeps its own "already sent"
/// state), sampled a few times a second so a slow reader costs no memory,
/// then one last line from `last` with the job's result. The job runs on
/// whether or not the client stays.
pub(super) fn progress_stream<T, P, L>(
    job: tokio::task::JoinHandle<T>,
    pending: P,
    last: L,
) -> Response<Body>
where
    T: Send + 'static,
    P: FnMut() -> Option<serde_json::Value> + Send + 'static,
    L: FnOnce(Result<T, tokio::task::JoinError>) -> serde_json::Value + Send + 'static,
{
    struct State<T, P, L> {
        job: Option<tokio::task::JoinHandle<T>>,
        pending: P,
        last: Option<L>,
    }
    let lines = futures_util::stream::unfold(
        State {
            job: Some(job),
            pending,
            last: Some(last),
        },
        |mut state| async move {
            loop {
                let job = state.job.as_mut()?;
                // Looked at first: whatever the job did before it finished
                // is then visible below, so no line is lost at the end.
                let finished = job.is_finished();
                if let Some(line) = (state.pending)() {
                    return Some((json_line(line), state));
                }
                if finished {
                    let result = state.job.take()?.await;
                    let last = state.last.take()?;
                    return Some((json_line(last(result)), state));
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        },
    );
    text_stream(StatusCode::OK, "application/x-ndjson", lines)
}
