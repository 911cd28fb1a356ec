//! One event to one receiver: a POST with a timeout per attempt and
//! bounded retries with backoff; redirects only to the same origin.

use std::time::Duration;

use bytes::Bytes;

use crate::config::NotificationConfig;

/// Redirect hops followed per delivery (same origin only).
const MAX_REDIRECTS: usize = 3;

/// The first retry waits this long, each next one twice as long, capped.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The client every receiver's deliveries share. The URL is a host the
/// config names; a redirect elsewhere is not followed (it counts as a
/// failed attempt), so events cannot be bounced to a host nobody named.
pub(super) fn client() -> Result<reqwest::Client, reqwest::Error> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > MAX_REDIRECTS || !same_origin {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether a failed answer is worth another attempt.
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status.is_redirection()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Delivers `body`; the outcome label, `sent` or `failed`.
pub(super) async fn post(
    client: &reqwest::Client,
    config: &NotificationConfig,
    body: Bytes,
) -> &'static str {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=config.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let request = client
            .post(&config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(config.timeout.get())
            .body(body.clone());
        match request.send().await {
            Ok(r) if r.status().is_success() => return "sent",
            Ok(r) if !retryable(r.status()) => {
                tracing::debug!(url = %config.url, status = r.status().as_u16(), "notification refused by its receiver; not retried");
                return "failed";
            }
            Ok(r) => {
                tracing::debug!(url = %config.url, status = r.status().as_u16(), attempt, "notification not taken; retrying");
            }
            Err(e) => {
                tracing::debug!(url = %config.url, error = %e, attempt, "notification delivery failed");
            }
        }
    }
    tracing::debug!(url = %config.url, attempts = config.retries + 1, "notification not delivered; given up");
    "failed"
}
