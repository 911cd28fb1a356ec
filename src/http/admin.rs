//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and
//! `/admin/offline` (GET shows, `POST ?enabled=true|false` switches the
//! global offline mode without a restart).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};

use super::body::{self, Body};
use super::App;

pub async fn admin_service<B>(app: Arc<App>, request: Request<B>) -> Response<Body> {
    let method = request.method();
    match request.uri().path() {
        "/metrics" => {
            app.refresh_gauges();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                app.metrics.render(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        // Ready as soon as the listeners are up: serving never needs the
        // upstream, and hits do not need the index.
        "/readyz" => text(StatusCode::OK, "text/plain", "ready\n".into()),
        "/admin/offline" if method == Method::GET => offline_state(&app),
        "/admin/offline" if method == Method::POST => {
            let enabled = request.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "enabled")
                    .map(|(_, v)| v.into_owned())
            });
            match enabled.as_deref() {
                Some("true" | "1") | None => app.upstreams.set_offline(true),
                Some("false" | "0") => app.upstreams.set_offline(false),
                Some(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "enabled must be true or false\n".into(),
                    )
                }
            }
            tracing::warn!(
                offline = app.upstreams.offline(),
                "offline mode switched through the admin API"
            );
            offline_state(&app)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn offline_state(app: &App) -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"offline\":{}}}\n", app.upstreams.offline()),
    )
}

fn text(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
