//! The Bearer-token dance: a 401 challenge names a realm, the realm hands
//! out a token for a scope, the request is retried with it. Tokens are
//! cached until shortly before they expire, one fetch at a time per key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use parking_lot::Mutex;
use serde::Deserialize;

use super::challenge::Challenge;
use super::UpstreamError;

/// Registries must issue tokens valid for at least this long; shorter (or
/// absent) lifetimes are treated as this, as containers/image does.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    upstream: Arc<str>,
    realm: String,
    service: String,
    scope: String,
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
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache {
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
            realms: Mutex::new(HashMap::new()),
        }
    }

    /// A cached token for this upstream and scope, if the upstream's realm
    /// is known and a token is still fresh: sent pre-emptively so that most
    /// requests cost one round trip, not three.
    pub async fn cached(&self, upstream: &Arc<str>, scope: &str) -> Option<Arc<str>> {
        let realm = self.realms.lock().get(upstream).cloned()?;
        let key = TokenKey {
            upstream: upstream.clone(),
            realm: realm.realm,
            service: realm.service,
            scope: scope.to_owned(),
        };
        self.tokens.get(&key).await.map(|t| t.value)
    }

    /// Answers a Bearer challenge: a token for `scope` from the challenge's
    /// realm. Concurrent callers for one key share one token request.
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        upstream: &Arc<str>,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<Arc<str>, UpstreamError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| UpstreamError::Token("the Bearer challenge names no realm".into()))?
            .to_owned();
        let service = challenge.param("service").unwrap_or_default().to_owned();
        self.realms.lock().insert(
            upstream.clone(),
            Realm {
                realm: realm.clone(),
                service: service.clone(),
            },
        );
        let key = TokenKey {
            upstream: upstream.clone(),
            realm,
            service,
            scope: scope.to_owned(),
        };
        let http = http.clone();
        let fetch_key = key.clone();
        // The fetch runs as its own task: if the client that started it hangs
        // up, the others waiting on the same key still get the token.
        let fetch = async move {
            tokio::spawn(fetch_token(http, fetch_key))
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

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

async fn fetch_token(http: reqwest::Client, key: TokenKey) -> Result<Token, UpstreamError> {
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
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| UpstreamError::Token(format!("token request failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(UpstreamError::Token(format!(
            "the token server answered {status}"
        )));
    }
    // Token responses are small; refuse anything that is not.
    let body = super::read_limited(response, 64 * 1024, Duration::from_secs(30))
        .await
        .map_err(|e| UpstreamError::Token(format!("reading the token failed: {e}")))?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::Token(format!("the token response is not JSON: {e}")))?;
    let value = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Token("the token response has no token".into()))?;
    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(0)).max(MIN_TOKEN_LIFETIME);
    // Refresh a little before the registry would refuse it.
    let margin = (lifetime / 10).min(Duration::from_secs(30));
    Ok(Token {
        value: value.into(),
        keep_for: lifetime - margin,
    })
}
