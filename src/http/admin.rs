//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};

use super::body::{self, Body};
use super::App;

pub async fn admin_service<B>(app: Arc<App>, request: Request<B>) -> Response<Body> {
    let (status, content_type, text) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            app.metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        // Ready as soon as the listeners are up: serving never needs the
        // upstream, and hits do not need the index.
        "/readyz" => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
