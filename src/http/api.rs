//! The registry API: one request from authentication through routing to
//! the handler's answer.

use http::{HeaderValue, Method, Request, Response};

use super::app::{App, RequestLog};
use super::body::{self, Body};
use super::error::{ApiError, Code};
use super::listings::Listed;
use super::route::{self, Endpoint, Parsed};
use super::{blobs, listings, manifests};
use crate::policy::{client_address, AuthError, ClientPolicy};

/// Answers one registry API request from `peer`.
pub async fn handle<B>(
    app: &App,
    peer: std::net::IpAddr,
    request: Request<B>,
    log: &mut RequestLog,
) -> Response<Body> {
    let head = request.method() == Method::HEAD;
    let policy = app.policy.read().clone();
    log.client = client_address(peer, request.headers(), &policy.trusted_proxies);
    // Routing first, answering after authentication: every refusal
    // (401, 403, 429) is then counted under the route it was for.
    let parsed = parse(app, &request);
    log.route = route_label(&parsed);
    let answer = match authenticate(app, &policy, &request, log).await {
        Ok(()) => route_and_answer(app, &policy, parsed, &request, head, log).await,
        Err(e) => Err(e),
    };
    let mut response = match answer {
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

/// With client authentication on, every request — `/v2/` included, since
/// Docker learns challenges only there — must carry valid credentials.
async fn authenticate<B>(
    app: &App,
    policy: &ClientPolicy,
    request: &Request<B>,
    log: &mut RequestLog,
) -> Result<(), ApiError> {
    let Some(auth) = policy.auth.clone() else {
        return Ok(());
    };
    let headers = request.headers().clone();
    let client = log.client;
    // bcrypt is deliberately slow: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || auth.authenticate(&headers, client))
        .await
        .unwrap_or(Err(AuthError::Invalid));
    match result {
        Ok(user) => {
            log.user = Some(user);
            Ok(())
        }
        Err(AuthError::Locked { retry_after }) => {
            app.metrics.throttled("failed_logins");
            log.outcome = "denied";
            Err(ApiError {
                retry_after: Some(retry_after.as_secs().max(1).to_string()),
                ..ApiError::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    Code::TooManyRequests,
                    AuthError::Locked { retry_after }.to_string(),
                )
            })
        }
        Err(e) => {
            log.outcome = "denied";
            Err(ApiError {
                challenge: true,
                ..ApiError::new(
                    http::StatusCode::UNAUTHORIZED,
                    Code::Unauthorized,
                    e.to_string(),
                )
            })
        }
    }
}

/// Upstream rules, then the user's access list: both by (upstream,
/// repository), so a digest known from an allowed repository is no way
/// into a denied one.
fn authorize(
    app: &App,
    policy: &ClientPolicy,
    route: &route::Route,
    log: &mut RequestLog,
) -> Result<(), ApiError> {
    let upstream = &route.upstream;
    let mut verdict = policy
        .repos
        .check(&upstream.name, &route.repo)
        .map_err(|rule| {
            format!(
                "repository {} of upstream {}: {rule}",
                route.repo, upstream.name
            )
        });
    if let (Ok(()), Some(auth), Some(user)) = (&verdict, &policy.auth, &log.user) {
        verdict = auth
            .access
            .check(user, &upstream.name, route.repo.as_str())
            .map_err(|refused| refused.to_string());
    }
    verdict.map_err(|message| {
        app.metrics
            .denied
            .with_label_values(&[&upstream.name])
            .inc();
        log.outcome = "denied";
        ApiError::new(http::StatusCode::FORBIDDEN, Code::Denied, message)
    })
}

/// What the request asks for; pure, so it may run before authentication.
fn parse<B>(app: &App, request: &Request<B>) -> Result<Parsed, ApiError> {
    let uri = request.uri();
    if uri.path().len() + uri.query().map_or(0, str::len) > 4096 {
        return Err(ApiError::new(
            http::StatusCode::URI_TOO_LONG,
            Code::NameInvalid,
            "request URI too long",
        ));
    }
    route::parse(request.method(), uri.path(), uri.query(), &app.upstreams)
}

/// The `route` label of the request metrics and access line.
fn route_label(parsed: &Result<Parsed, ApiError>) -> &'static str {
    match parsed {
        Ok(Parsed::Base) => "base",
        Ok(Parsed::Repo(route)) => match route.endpoint {
            Endpoint::Blob(_) => "blob",
            Endpoint::Manifest(_) => "manifest",
            Endpoint::TagsList => "tags",
            Endpoint::Referrers(_) => "referrers",
        },
        Err(_) => "invalid",
    }
}

async fn route_and_answer<B>(
    app: &App,
    policy: &ClientPolicy,
    parsed: Result<Parsed, ApiError>,
    request: &Request<B>,
    head: bool,
    log: &mut RequestLog,
) -> Result<Response<Body>, ApiError> {
    let uri = request.uri();
    let route = match parsed? {
        Parsed::Base => {
            let mut r = Response::new(if head { body::head() } else { body::full("{}") });
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(2));
            return Ok(r);
        }
        Parsed::Repo(route) => route,
    };
    log.upstream = Some(route.upstream.name.clone());
    log.repository = Some(route.repo.to_string());
    authorize(app, policy, &route, log)?;
    if !matches!(route.endpoint, Endpoint::Blob(_)) {
        policy.limiter.manifest(&log.client_key()).map_err(|t| {
            app.metrics.throttled("manifests");
            log.outcome = "throttled";
            ApiError {
                retry_after: Some(t.retry_after.as_secs().max(1).to_string()),
                ..ApiError::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    Code::TooManyRequests,
                    "too many manifest requests from this client; slow down",
                )
            }
        })?;
    }
    let headers = request.headers();
    let mut response = match &route.endpoint {
        Endpoint::Blob(digest) => {
            log.reference = Some(digest.to_string());
            blobs::blob(app, &route, digest, head, headers, log).await?
        }
        Endpoint::Manifest(reference) => {
            log.reference = Some(reference.to_string());
            manifests::manifest(app, &route, reference, head, headers, log).await?
        }
        Endpoint::TagsList => listings::listing(app, &route, Listed::Tags, uri, head, log).await?,
        Endpoint::Referrers(digest) => {
            listings::listing(app, &route, Listed::Referrers(digest), uri, head, log).await?
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
