//! What can go wrong talking to an upstream, and the one place that decides
//! which of it means "the upstream is failing": the circuit breaker counts
//! those failures against its health, and the cache may cover all of them
//! with a stale answer.

use std::time::Duration;

use http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} is unreachable: {detail}")]
    Unreachable { upstream: String, detail: String },
    #[error("upstream {upstream} sent no answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    #[error("upstream token: {0}")]
    Token(String),
    #[error("the mirror is offline: upstream {upstream} is not contacted")]
    Offline { upstream: String },
    #[error("upstream {upstream} is failing; not contacted until it recovers")]
    CircuitOpen { upstream: String },
    /// An answer other than the one the caller needs (a 404, a 503...).
    #[error("upstream {upstream} answered {status} for the {what}")]
    Status {
        upstream: String,
        status: StatusCode,
        what: &'static str,
        retry_after: Option<String>,
    },
    /// The body broke off or was unusable.
    #[error("upstream body failed: {0}")]
    Body(String),
    /// No body data arrived for this long.
    #[error("upstream sent no data for {0:?}")]
    Stalled(Duration),
    /// A body read whole was larger than its caller allows.
    #[error("upstream body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The upstream sent the mirror to a host it may not contact: a token
    /// realm outside `auth_hosts`, a redirect to an internal address or
    /// with credentials in it. Nothing was sent there.
    #[error("upstream {upstream}: refused to contact {host}: {reason}")]
    Refused {
        upstream: String,
        host: String,
        reason: String,
    },
}

/// Why an upstream gave no usable answer, as opposed to an answer about the
/// content itself (404, 401, 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not asked at all: the mirror is offline or the breaker is open.
    NotContacted,
    /// The connection or the request failed.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// A 5xx.
    ServerError,
    /// A 429.
    RateLimited,
    /// The body broke off, stalled, or could not be used.
    Body,
    /// The token dance failed.
    Token,
    /// The upstream pointed at a host the policy refuses.
    Refused,
}

impl Failure {
    /// The failure an answer's status is, if any.
    pub fn of_status(status: StatusCode) -> Option<Failure> {
        if status.is_server_error() {
            Some(Failure::ServerError)
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            Some(Failure::RateLimited)
        } else {
            None
        }
    }

    /// Whether the circuit breaker counts it against the upstream's health:
    /// a request that went out and got no answer, a 5xx or a 429 all mean
    /// "stop sending it traffic for a while". Broken bodies and token
    /// failures happen outside the request the breaker admitted; a refused
    /// host is the upstream answering in a way the mirror will not follow,
    /// not the upstream being down.
    pub fn counts_against_health(self) -> bool {
        matches!(
            self,
            Failure::Unreachable | Failure::Timeout | Failure::ServerError | Failure::RateLimited
        )
    }
}

impl UpstreamError {
    /// The kind of upstream failure this is; None for an answer about the
    /// content (a 404, a 401) that a stale copy must not paper over.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            UpstreamError::Unreachable { .. } => Some(Failure::Unreachable),
            UpstreamError::Timeout { .. } => Some(Failure::Timeout),
            UpstreamError::Token(_) => Some(Failure::Token),
            UpstreamError::Offline { .. } | UpstreamError::CircuitOpen { .. } => {
                Some(Failure::NotContacted)
            }
            UpstreamError::Status { status, .. } => Failure::of_status(*status),
            UpstreamError::Body(_) | UpstreamError::Stalled(_) | UpstreamError::TooLarge { .. } => {
                Some(Failure::Body)
            }
            UpstreamError::Refused { .. } => Some(Failure::Refused),
        }
    }

    /// Whether the upstream is failing (down, slow, rate-limiting), so a
    /// stale answer may cover for it.
    pub fn is_failure(&self) -> bool {
        self.failure().is_some()
    }

    /// The upstream said the content does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> UpstreamError {
        UpstreamError::Status {
            upstream: "up".into(),
            status: StatusCode::from_u16(status).unwrap(),
            what: "blob",
            retry_after: None,
        }
    }

    #[test]
    fn answers_about_content_are_not_failures() {
        for s in [400, 401, 403, 404, 416] {
            assert_eq!(answered(s).failure(), None, "{s}");
        }
        assert!(answered(404).is_not_found());
        assert!(!answered(500).is_not_found());
    }

    #[test]
    fn what_opens_the_breaker_is_a_failure_a_stale_answer_covers() {
        assert_eq!(answered(503).failure(), Some(Failure::ServerError));
        assert_eq!(answered(429).failure(), Some(Failure::RateLimited));
        let down = UpstreamError::Unreachable {
            upstream: "up".into(),
            detail: "connection failed".into(),
        };
        let slow = UpstreamError::Timeout {
            upstream: "up".into(),
            after: Duration::from_secs(1),
        };
        for e in [answered(500), answered(429), down, slow] {
            assert!(e.failure().is_some_and(Failure::counts_against_health));
            assert!(e.is_failure());
        }
        // Stale answers also cover what the breaker does not count.
        let not_counted = [
            UpstreamError::Offline {
                upstream: "up".into(),
            },
            UpstreamError::CircuitOpen {
                upstream: "up".into(),
            },
            UpstreamError::Token("no realm".into()),
            UpstreamError::Body("reset".into()),
            UpstreamError::Stalled(Duration::from_secs(1)),
            UpstreamError::TooLarge { limit: 1 },
            UpstreamError::Refused {
                upstream: "up".into(),
                host: "127.0.0.1".into(),
                reason: "a loopback address".into(),
            },
        ];
        for e in not_counted {
            assert!(e.is_failure(), "{e}");
            assert!(!e.failure().is_some_and(Failure::counts_against_health));
        }
    }
}
