//! Who may use the admin API (`/admin/*`) and the status page (`/`).
//!
//! With `[auth] admin_token_file` set, the bearer token is required, from
//! anywhere. Without it, only requests made on this host are served: the
//! peer is a loopback address and no proxy relayed the request (a proxy on
//! this host would otherwise make every client look local). So an
//! `admin_listen` on `0.0.0.0` without a token exposes nothing but
//! `/metrics`, `/healthz` and `/readyz`.

use std::net::IpAddr;

use http::HeaderMap;

/// What the configured token says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// No `admin_token_file`.
    NotConfigured,
    Accepted,
    /// Configured, and the request does not carry it.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: the token is configured and missing or wrong.
    NeedsToken,
    /// 403: no token is configured and the request is not from this host.
    NotLocal,
}

/// Whether an admin request from `peer` is served; `relayed` says a proxy
/// forwarded it (it carries `Forwarded` or `X-Forwarded-For`).
pub fn decide(peer: IpAddr, relayed: bool, token: TokenCheck) -> Decision {
    match token {
        TokenCheck::Accepted => Decision::Allow,
        TokenCheck::Refused => Decision::NeedsToken,
        // An IPv4 client on a dual-stack socket arrives as ::ffff:127.0.0.1.
        TokenCheck::NotConfigured if peer.to_canonical().is_loopback() && !relayed => {
            Decision::Allow
        }
        TokenCheck::NotConfigured => Decision::NotLocal,
    }
}

/// Whether a proxy says it forwarded this request for someone else.
pub fn relayed(headers: &HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_a_token_only_loopback_is_served() {
        for local in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                decide(ip(local), false, TokenCheck::NotConfigured),
                Decision::Allow,
                "{local}"
            );
        }
        for remote in [
            "10.0.0.5",
            "192.0.2.2",
            "fd00::2",
            "::ffff:10.0.0.5",
            "0.0.0.0",
        ] {
            assert_eq!(
                decide(ip(remote), false, TokenCheck::NotConfigured),
                Decision::NotLocal,
                "{remote}"
            );
        }
    }

    #[test]
    fn a_request_relayed_by_a_local_proxy_is_not_local() {
        assert_eq!(
            decide(ip("127.0.0.1"), true, TokenCheck::NotConfigured),
            Decision::NotLocal
        );
        let mut h = HeaderMap::new();
        assert!(!relayed(&h));
        h.insert("x-forwarded-for", "10.0.0.9".parse().unwrap());
        assert!(relayed(&h));
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=10.0.0.9".parse().unwrap());
        assert!(relayed(&h));
    }

    #[test]
    fn with_a_token_the_token_decides_wherever_the_request_comes_from() {
        for peer in ["127.0.0.1", "10.0.0.5"] {
            for relayed in [false, true] {
                assert_eq!(
                    decide(ip(peer), relayed, TokenCheck::Accepted),
                    Decision::Allow
                );
                assert_eq!(
                    decide(ip(peer), relayed, TokenCheck::Refused),
                    Decision::NeedsToken,
                    "a loopback peer still needs the configured token"
                );
            }
        }
    }
}
