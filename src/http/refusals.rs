//! The supply-chain gate at the HTTP edge: each manifest and blob answer
//! is checked (`policy::gate`), and a refusal becomes 403 `DENIED` with
//! its reason. The bookkeeping of each kind of refusal — its metric, its
//! audit line — is one function here ([`blocked`], [`admission_denied`],
//! [`signature_invalid`]), which also notifies the `[[notifications]]`
//! receivers.

use std::sync::Arc;

use serde::Serialize;

use super::app::{App, RequestLog};
use super::error::{ApiError, Code};
use super::route::Route;
use crate::cache::Manifest;
use crate::notify::Event;
use crate::policy::gate::{Refusal, RefusalKind, SigReason, Subject};
use crate::registry::Digest;

/// Checks a manifest answer before it is sent.
pub async fn check_manifest(
    app: &App,
    route: &Route,
    tag: Option<&str>,
    digest: &Digest,
    body: Option<Arc<Manifest>>,
    log: &mut RequestLog,
) -> Result<(), ApiError> {
    let subject = Subject {
        upstream: &route.upstream,
        repo: &route.repo,
        tag,
        user: log.user.as_deref(),
    };
    let checked = app
        .gate
        .check_manifest(&app.cache, &app.metrics, &subject, digest, body)
        .await;
    checked.map_err(|r| refused(app, route, log, &r))
}

/// Checks a blob before anything is fetched or sent.
pub async fn check_blob(
    app: &App,
    route: &Route,
    digest: &Digest,
    log: &mut RequestLog,
) -> Result<(), ApiError> {
    let subject = Subject {
        upstream: &route.upstream,
        repo: &route.repo,
        tag: None,
        user: log.user.as_deref(),
    };
    let checked = app
        .gate
        .check_blob(&app.cache, &app.metrics, &subject, digest)
        .await;
    checked.map_err(|r| refused(app, route, log, &r))
}

fn refused(app: &App, route: &Route, log: &mut RequestLog, refusal: &Refusal) -> ApiError {
    let upstream = &*route.upstream.name;
    match refusal.kind {
        RefusalKind::Blocked => blocked(app, upstream, route, log, refusal),
        RefusalKind::AdmissionDenied => admission_denied(app, upstream, route, log, refusal),
        RefusalKind::SignatureInvalid(why) => {
            signature_invalid(app, upstream, why, route, log, refusal)
        }
    }
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        Code::Denied,
        refusal.reason.clone(),
    )
}

/// A blocked digest was asked for.
fn blocked(app: &App, upstream: &str, route: &Route, log: &mut RequestLog, r: &Refusal) {
    app.metrics
        .blocked_refusals
        .with_label_values(&[upstream])
        .inc();
    log.outcome = "blocked";
    audit(app, "blocked", route, log, r);
    notify(route, r, |upstream, repository, digest, reason| {
        Event::Blocked {
            upstream,
            repository,
            digest,
            reason,
        }
    });
}

/// The admission webhook (or `on_error = "deny"`) refused.
fn admission_denied(app: &App, upstream: &str, route: &Route, log: &mut RequestLog, r: &Refusal) {
    app.metrics
        .admission_denials
        .with_label_values(&[upstream])
        .inc();
    log.outcome = "admission_denied";
    audit(app, "admission_denied", route, log, r);
    notify(route, r, |upstream, repository, digest, reason| {
        Event::AdmissionDenied {
            upstream,
            repository,
            digest,
            reason,
        }
    });
}

/// `require_signatures` refused: no signature, or none that verifies.
fn signature_invalid(
    app: &App,
    upstream: &str,
    why: SigReason,
    route: &Route,
    log: &mut RequestLog,
    r: &Refusal,
) {
    app.metrics
        .signature_refusals
        .with_label_values(&[upstream, why.label()])
        .inc();
    log.outcome = "signature_invalid";
    audit(app, "signature_invalid", route, log, r);
    notify(route, r, |upstream, repository, digest, reason| {
        Event::SignatureInvalid {
            upstream,
            repository,
            digest,
            reason,
        }
    });
}

/// Sends a refusal to the notification receivers, as the event `make`
/// builds from its upstream, repository, digest and reason.
fn notify(route: &Route, r: &Refusal, make: impl FnOnce(String, String, String, String) -> Event) {
    route.upstream.notifier().emit_unaudited(make(
        route.upstream.name.to_string(),
        route.repo.as_str().to_string(),
        r.digest.to_string(),
        r.reason.clone(),
    ));
}

/// The audit line of a refusal (beside the request's own line, which
/// carries the outcome), and the same as a log line.
#[derive(Serialize)]
struct PolicyLine<'a> {
    time: String,
    event: &'a str,
    client: String,
    user: Option<&'a str>,
    upstream: &'a str,
    repository: &'a str,
    reference: Option<&'a str>,
    digest: String,
    reason: &'a str,
}

fn audit(app: &App, event: &str, route: &Route, log: &RequestLog, r: &Refusal) {
    tracing::info!(
        event,
        upstream = %route.upstream.name,
        repository = %route.repo,
        digest = %r.digest,
        client = %log.client,
        reason = %r.reason,
        "refused by policy"
    );
    if let Some(audit) = &app.audit {
        audit.write(&PolicyLine {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event,
            client: log.client.to_string(),
            user: log.user.as_deref(),
            upstream: &route.upstream.name,
            repository: route.repo.as_str(),
            reference: log.reference.as_deref(),
            digest: r.digest.to_string(),
            reason: &r.reason,
        });
    }
}
