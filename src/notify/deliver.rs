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

/// Whether a failed answer is worth another attempt (not a redirect that
/// was not followed: it would only be refused again).
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A receiver that answers every request with `answer` (a status line
    /// and headers), counting the requests.
    async fn answering(answer: String) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    // The head and the small JSON body arrive together.
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, count)
    }

    fn config(url: String) -> NotificationConfig {
        let mut c = NotificationConfig::new(&url);
        c.retries = 0;
        c
    }

    #[tokio::test]
    async fn redirects_are_followed_only_to_the_same_origin() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned();
        let (elsewhere, elsewhere_hits) = answering(ok.clone()).await;
        let away = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{elsewhere}/hook\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let (bouncer, _) = answering(away).await;
        let client = client().unwrap();
        let body = Bytes::from_static(b"{}");
        let mut bounced = config(format!("http://{bouncer}/hook"));
        bounced.retries = 3;
        let outcome = post(&client, &bounced, body.clone()).await;
        assert_eq!(outcome, "failed");
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "another host got nothing"
        );

        let (receiver, hits) = answering(ok).await;
        assert_eq!(
            post(&client, &config(format!("http://{receiver}/hook")), body).await,
            "sent"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        for s in [500, 503, 408, 429] {
            assert!(retryable(reqwest::StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [307, 400, 401, 403, 404, 410] {
            assert!(!retryable(reqwest::StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
