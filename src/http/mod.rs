//! The HTTP surface: the registry API listener, the admin listener, request
//! routing and the OCI error format.

mod admin;
mod blobs;
pub mod body;
pub mod error;
mod listings;
mod manifests;
mod passthrough;
pub mod range;
pub mod route;
mod server;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response};

pub use admin::admin_service;
pub use server::{serve, Listener, Shutdown};

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;
use body::Body;
use error::{ApiError, Code};
use route::{Endpoint, Parsed};

/// What every request handler shares.
pub struct App {
    pub config: Config,
    pub upstreams: Upstreams,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Gauges that are read from state rather than kept up to date.
    pub fn refresh_gauges(&self) {
        use crate::cache::Kind;
        for kind in [Kind::Blob, Kind::Manifest] {
            let totals = self.cache.index.totals(kind);
            let label = [kind.label()];
            self.metrics
                .cache_bytes
                .with_label_values(&label)
                .set(totals.bytes as i64);
            self.metrics
                .cache_objects
                .with_label_values(&label)
                .set(totals.objects as i64);
        }
        self.metrics
            .open_readers
            .set(self.cache.readers.open_blobs() as i64);
        for upstream in self.upstreams.all() {
            self.metrics
                .upstream_circuit_state
                .with_label_values(&[&upstream.name])
                .set(upstream.breaker_state().gauge_value());
        }
    }
}

/// Fields of the one access-log line each request gets.
#[derive(Default)]
pub struct RequestLog {
    pub route: &'static str,
    pub upstream: Option<Arc<str>>,
    pub outcome: &'static str,
}

/// Answers one registry API request.
pub async fn handle<B>(app: &App, request: Request<B>, log: &mut RequestLog) -> Response<Body> {
    let head = request.method() == Method::HEAD;
    let mut response = match route_and_answer(app, &request, head, log).await {
        Ok(r) => r,
        Err(e) => {
            if log.outcome.is_empty() {
                log.outcome = "error";
            }
            e.into_response(head)
        }
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

async fn route_and_answer<B>(
    app: &App,
    request: &Request<B>,
    head: bool,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    let uri = request.uri();
    if uri.path().len() + uri.query().map_or(0, str::len) > 4096 {
        return Err(ApiError::new(
            http::StatusCode::URI_TOO_LONG,
            Code::NameInvalid,
            "request URI too long",
        ));
    }
    let route = match route::parse(request.method(), uri.path(), uri.query(), &app.upstreams) {
        Ok(Parsed::Base) => {
            log.route = "base";
            let mut r = Response::new(if head { body::head() } else { body::full("{}") });
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(2));
            return Ok(r);
        }
        Ok(Parsed::Repo(route)) => route,
        Err(e) => {
            log.route = "invalid";
            return Err(e);
        }
    };
    log.upstream = Some(route.upstream.name.clone());
    let headers = request.headers();
    let mut response = match &route.endpoint {
        Endpoint::Blob(digest) => {
            log.route = "blob";
            blobs::blob(app, &route, digest, head, headers, log).await?
        }
        Endpoint::Manifest(reference) => {
            log.route = "manifest";
            manifests::manifest(app, &route, reference, head, headers, log).await?
        }
        Endpoint::TagsList => {
            log.route = "tags";
            listings::listing(
                app,
                &route,
                "tags/list",
                uri.path(),
                uri.query(),
                head,
                Code::NameUnknown,
                log,
            )
            .await?
        }
        Endpoint::Referrers(digest) => {
            log.route = "referrers";
            let suffix = format!("referrers/{digest}");
            listings::listing(
                app,
                &route,
                &suffix,
                uri.path(),
                uri.query(),
                head,
                Code::ManifestUnknown,
                log,
            )
            .await?
        }
    };
    // The OCI spec asks proxies to echo the namespace they served.
    if let Some(v) = route
        .client_ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        response.headers_mut().insert("oci-namespace", v);
    }
    Ok(response)
}

/// Marks an answer served past its freshness because the upstream failed.
pub fn mark_stale(response: &mut Response<Body>) {
    response.headers_mut().insert(
        http::header::WARNING,
        HeaderValue::from_static("110 - \"response is stale\""),
    );
}
