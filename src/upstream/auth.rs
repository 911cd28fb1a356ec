//! Upstream authentication: the Bearer-token dance (a 401 challenge names a
//! realm, the realm hands out a token for a scope, the request is retried
//! with it) and Basic credentials. Tokens are cached until shortly before
//! they expire, one fetch at a time per key, and the key includes the
//! credential identity so one account's token never serves another's.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use moka::future::Cache;
use parking_lot::Mutex;
use serde::Deserialize;

use super::challenge::Challenge;
use super::response::{describe, read_reqwest_limited};
use super::UpstreamError;

/// Registries must issue tokens valid for at least this long; shorter (or
/// absent) lifetimes are treated as this, as containers/image does.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A user name and password that cannot be sent in a header.
#[derive(Debug, thiserror::Error)]
#[error("credentials cannot form a header")]
pub struct CredentialsError(#[source] http::header::InvalidHeaderValue);

/// An upstream account. Never printed: `Debug` shows only the user.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
    basic: HeaderValue,
}

impl Credentials {
    pub fn new(username: String, password: String) -> Result<Credentials, CredentialsError> {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut basic =
            HeaderValue::from_str(&format!("Basic {encoded}")).map_err(CredentialsError)?;
        basic.set_sensitive(true);
        Ok(Credentials {
            username,
            password,
            basic,
        })
    }

    /// A stable, non-reversible name for the account, for cache keys.
    pub fn identity(&self) -> String {
        let d = crate::registry::Digest::sha256_of(
            format!("{}\0{}", self.username, self.password).as_bytes(),
        );
        d.hex()[..16].to_owned()
    }

    pub fn basic_header(&self) -> HeaderValue {
        self.basic.clone()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: String,
    scope: String,
    /// "" for anonymous.
    identity: String,
}

#[derive(Clone)]
struct Token {
    value: Arc<str>,
    /// How long the cache keeps it: the lifetime less a refresh margin.
    keep_for: Duration,
}

struct TokenExpiry;

impl moka::Expiry<TokenKey, Token> for TokenExpiry {
    fn expire_after_create(&self, _: &TokenKey, token: &Token, _: Instant) -> Option<Duration> {
        Some(token.keep_for)
    }
}

/// Where an upstream sends clients for tokens, learned from its challenges.
#[derive(Clone, Debug)]
struct Realm {
    realm: String,
    service: String,
}

pub struct TokenCache {
    tokens: Cache<TokenKey, Token>,
    realms: Mutex<HashMap<Arc<str>, Realm>>,
    /// Token requests sent, for the metric.
    pub fetches: prometheus::IntCounter,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    issued_at: Option<String>,
}

/// A challenge answered: what to retry the request with.
pub fn bearer_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    v.set_sensitive(true);
    v
}

fn identity(credentials: Option<&Credentials>) -> String {
    credentials.map(Credentials::identity).unwrap_or_default()
}

impl TokenCache {
    pub fn new(fetches: prometheus::IntCounter) -> TokenCache {
        TokenCache {
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
            realms: Mutex::new(HashMap::new()),
            fetches,
        }
    }

    /// A cached token for this upstream and scope, if the upstream's realm
    /// is known and a token is still fresh: sent pre-emptively so that most
    /// requests cost one round trip, not three.
    pub async fn cached(
        &self,
        upstream: &Arc<str>,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Option<Arc<str>> {
        let realm = self.realms.lock().get(upstream).cloned()?;
        let key = TokenKey {
            realm: realm.realm,
            service: realm.service,
            scope: scope.to_owned(),
            identity: identity(credentials),
        };
        self.tokens.get(&key).await.map(|t| t.value)
    }

    /// Answers a Bearer challenge: a token for `scope` from the challenge's
    /// realm. Concurrent callers for one key share one token request.
    /// `home` is the upstream whose realm this is (None for a host the
    /// upstream redirected to: its realm is not remembered as ours).
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        home: Option<&Arc<str>>,
        challenge: &Challenge,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Arc<str>, UpstreamError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| UpstreamError::Token("the Bearer challenge names no realm".into()))?
            .to_owned();
        let service = challenge.param("service").unwrap_or_default().to_owned();
        if let Some(upstream) = home {
            self.realms.lock().insert(
                upstream.clone(),
                Realm {
                    realm: realm.clone(),
                    service: service.clone(),
                },
            );
        }
        let key = TokenKey {
            realm,
            service,
            scope: scope.to_owned(),
            identity: identity(credentials),
        };
        let http = http.clone();
        let fetch_key = key.clone();
        let credentials = credentials.cloned();
        let fetches = self.fetches.clone();
        // The fetch runs as its own task: if the client that started it hangs
        // up, the others waiting on the same key still get the token.
        let fetch = async move {
            fetches.inc();
            tokio::spawn(fetch_token(http, fetch_key, credentials))
                .await
                .map_err(|e| UpstreamError::Token(format!("token task failed: {e}")))?
        };
        self.tokens
            .try_get_with(key, fetch)
            .await
            .map(|t| t.value)
            .map_err(|e| (*e).clone())
    }
}

async fn fetch_token(
    http: reqwest::Client,
    key: TokenKey,
    credentials: Option<Credentials>,
) -> Result<Token, UpstreamError> {
    let mut url = reqwest::Url::parse(&key.realm)
        .map_err(|e| UpstreamError::Token(format!("the token realm is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UpstreamError::Token(
            "the token realm is not an http(s) URL".into(),
        ));
    }
    {
        let mut q = url.query_pairs_mut();
        if !key.service.is_empty() {
            q.append_pair("service", &key.service);
        }
        q.append_pair("scope", &key.scope);
    }
    let mut request = http.get(url);
    if let Some(c) = &credentials {
        request = request.header(http::header::AUTHORIZATION, c.basic_header());
    }
    let response = request
        .send()
        .await
        .map_err(|e| UpstreamError::Token(format!("token request failed: {}", describe(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(UpstreamError::Token(format!(
            "the token server answered {status}"
        )));
    }
    // Token responses are small; refuse anything that is not.
    let body = read_reqwest_limited(response, 64 * 1024, Duration::from_secs(30))
        .await
        .map_err(|e| {
            let why = match e {
                UpstreamError::TooLarge { .. } => "body too large".to_owned(),
                UpstreamError::Stalled(d) => format!("no data for {d:?}"),
                UpstreamError::Body(detail) => detail,
                e => e.to_string(),
            };
            UpstreamError::Token(format!("reading the token failed: {why}"))
        })?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::Token(format!("the token response is not JSON: {e}")))?;
    let value = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Token("the token response has no token".into()))?;
    let keep_for = keep_for(
        parsed.expires_in,
        parsed.issued_at.as_deref(),
        SystemTime::now(),
    );
    Ok(Token {
        value: value.into(),
        keep_for,
    })
}

/// How long to keep a token: its lifetime (at least a minute) counted from
/// `issued_at` when the server says when that was, less a margin so it is
/// refreshed before the registry would refuse it.
fn keep_for(expires_in: Option<u64>, issued_at: Option<&str>, now: SystemTime) -> Duration {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(0)).max(MIN_TOKEN_LIFETIME);
    let age = issued_at
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|issued| now.duration_since(issued).ok())
        .unwrap_or_default();
    let remaining = lifetime.saturating_sub(age);
    let margin = (lifetime / 10).min(Duration::from_secs(30));
    remaining.saturating_sub(margin).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Docker Hub's anonymous tokens: 300 s, refreshed 30 s early.
        assert_eq!(keep_for(Some(300), None, now), Duration::from_secs(270));
        // Absent or too short: a minute, less 6 s.
        assert_eq!(keep_for(None, None, now), Duration::from_secs(54));
        assert_eq!(keep_for(Some(10), None, now), Duration::from_secs(54));
        // Issued 100 s ago by the server's clock.
        let issued = humantime::format_rfc3339(now - Duration::from_secs(100)).to_string();
        assert_eq!(
            keep_for(Some(300), Some(&issued), now),
            Duration::from_secs(170)
        );
        // Already expired by its own account: keep it only momentarily.
        let old = humantime::format_rfc3339(now - Duration::from_secs(1000)).to_string();
        assert_eq!(keep_for(Some(300), Some(&old), now), Duration::from_secs(1));
    }

    #[test]
    fn credentials_never_print_and_identities_differ() {
        let a = Credentials::new("bot".into(), "secret".into()).unwrap();
        let b = Credentials::new("bot".into(), "other".into()).unwrap();
        assert!(!format!("{a:?}").contains("secret"));
        assert_ne!(a.identity(), b.identity());
        assert!(a.basic_header().is_sensitive());
        assert_eq!(a.basic_header(), "Basic Ym90OnNlY3JldA==");
    }
}
