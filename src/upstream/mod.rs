//! The upstream side: which registries exist, and one pooled HTTP client
//! that speaks to them with the token dance, timeouts and safe redirects.

mod auth;
mod challenge;
mod health;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

pub use auth::TokenCache;
pub use challenge::{parse_challenges, Challenge};
pub use health::{Admission, BreakerState, CircuitBreaker};

use crate::config::{Config, UpstreamConfig};
use crate::metrics::Metrics;
use crate::registry::RepoName;

/// Hosts that all mean Docker Hub.
const DOCKER_HUB_NAMES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

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
    #[error("upstream body: {0}")]
    Body(String),
}

/// Everything the upstreams share: one connection pool, one token cache.
pub struct Shared {
    http: reqwest::Client,
    tokens: TokenCache,
    header_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The global `offline` switch.
    offline: AtomicBool,
}

/// The settings of an upstream that can change without a restart.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub tag_ttl: Duration,
    pub stale_if_error: Duration,
    pub negative_ttl: Duration,
    pub offline: bool,
}

impl UpstreamSettings {
    fn from_config(c: &UpstreamConfig) -> UpstreamSettings {
        UpstreamSettings {
            tag_ttl: c.tag_ttl.get(),
            stale_if_error: c.stale_if_error.get(),
            negative_ttl: c.negative_ttl.get(),
            offline: c.offline,
        }
    }
}

/// One configured upstream registry.
pub struct Upstream {
    pub name: Arc<str>,
    aliases: Vec<String>,
    base: reqwest::Url,
    settings: parking_lot::RwLock<UpstreamSettings>,
    breaker: CircuitBreaker,
    docker_hub: bool,
    shared: Arc<Shared>,
}

/// The configured upstreams; nothing else is ever dialled.
pub struct Upstreams {
    all: Vec<Arc<Upstream>>,
    by_name: HashMap<String, Arc<Upstream>>,
    default: Arc<Upstream>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("upstream {name}: {message}")]
    Upstream { name: String, message: String },
}

impl Upstreams {
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<Upstreams, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout.get())
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let shared = Arc::new(Shared {
            http,
            tokens: TokenCache::new(),
            header_timeout: config.header_timeout.get(),
            idle_timeout: config.idle_timeout.get(),
            metrics,
            offline: AtomicBool::new(config.offline),
        });
        let mut all = Vec::new();
        let mut by_name = HashMap::new();
        for u in config.upstreams() {
            let upstream = Arc::new(Upstream::new(&u, shared.clone())?);
            for n in std::iter::once(&u.name).chain(&u.aliases) {
                by_name.insert(n.to_ascii_lowercase(), upstream.clone());
            }
            all.push(upstream);
        }
        let default = by_name
            .get(&config.default_upstream.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| BuildError::Upstream {
                name: config.default_upstream.clone(),
                message: "default_upstream names no configured upstream".into(),
            })?;
        Ok(Upstreams {
            all,
            by_name,
            default,
        })
    }

    /// The upstream called `name` (its name or an alias), if configured.
    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.by_name.get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn default_upstream(&self) -> Arc<Upstream> {
        self.default.clone()
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.all
    }

    pub fn set_offline(&self, offline: bool) {
        self.default
            .shared
            .offline
            .store(offline, Ordering::Relaxed);
    }

    pub fn offline(&self) -> bool {
        self.default.shared.offline.load(Ordering::Relaxed)
    }

    /// Applies the settings of a reloaded config that can change live, and
    /// returns what needs a restart instead.
    pub fn apply(&self, config: &Config) -> Vec<String> {
        self.set_offline(config.offline);
        let mut needs_restart = Vec::new();
        let new = config.upstreams();
        for u in &new {
            match self.all.iter().find(|e| *e.name == *u.name) {
                Some(existing)
                    if existing.base.as_str().trim_end_matches('/')
                        == u.url.trim_end_matches('/') =>
                {
                    *existing.settings.write() = UpstreamSettings::from_config(u);
                }
                _ => needs_restart.push(format!("upstream {} (added or its url changed)", u.name)),
            }
        }
        for e in &self.all {
            if !new.iter().any(|u| *u.name == *e.name) {
                needs_restart.push(format!("upstream {} (removed)", e.name));
            }
        }
        needs_restart
    }
}

impl Upstream {
    fn new(config: &UpstreamConfig, shared: Arc<Shared>) -> Result<Upstream, BuildError> {
        let mut base = reqwest::Url::parse(&config.url).map_err(|e| BuildError::Upstream {
            name: config.name.clone(),
            message: format!("url: {e}"),
        })?;
        // Joining "v2/..." onto the base must keep any path the URL has.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let docker_hub = std::iter::once(&config.name)
            .chain(&config.aliases)
            .chain(base.host_str().map(str::to_owned).iter())
            .any(|n| DOCKER_HUB_NAMES.contains(&n.to_ascii_lowercase().as_str()));
        Ok(Upstream {
            name: config.name.as_str().into(),
            aliases: config.aliases.clone(),
            base,
            settings: parking_lot::RwLock::new(UpstreamSettings::from_config(config)),
            breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_cooldown.get()),
            docker_hub,
            shared,
        })
    }

    pub fn is_docker_hub(&self) -> bool {
        self.docker_hub
    }

    /// The upstream's own name for a repository: Docker Hub keeps official
    /// images under `library/`.
    pub fn upstream_repo(&self, repo: &RepoName) -> RepoName {
        if self.docker_hub {
            repo.with_library_prefix()
        } else {
            repo.clone()
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.shared.idle_timeout
    }

    pub fn header_timeout(&self) -> Duration {
        self.shared.header_timeout
    }

    pub fn settings(&self) -> UpstreamSettings {
        self.settings.read().clone()
    }

    /// Offline globally or for this upstream.
    pub fn is_offline(&self) -> bool {
        self.shared.offline.load(Ordering::Relaxed) || self.settings.read().offline
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Sends `method /v2/<repo>/<suffix>[?query]`, answering a Bearer
    /// challenge once if the upstream asks for one. Any status comes back as
    /// a response; only transport failures and timeouts are errors.
    pub async fn request(
        &self,
        method: Method,
        repo: &RepoName,
        suffix: &str,
        query: Option<&str>,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut url = self
            .base
            .join(&format!("v2/{}/{}", repo.as_str(), suffix))
            .map_err(|e| UpstreamError::Unreachable {
                upstream: self.name.to_string(),
                detail: format!("bad URL: {e}"),
            })?;
        url.set_query(query);
        let scope = format!("repository:{}:pull", repo.as_str());
        let token = self.shared.tokens.cached(&self.name, &scope).await;
        let response = self
            .send(method.clone(), url.clone(), &headers, token.as_deref())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let bearer = response
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .find(|c| c.scheme == "bearer");
        let Some(challenge) = bearer else {
            return Ok(response);
        };
        let token = self
            .shared
            .tokens
            .answer(&self.shared.http, &self.name, &challenge, &scope)
            .await?;
        self.send(method, url, &headers, Some(&token)).await
    }

    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: &HeaderMap,
        token: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self
            .shared
            .http
            .request(method, url)
            .headers(headers.clone());
        // Compressed transfer would change the bytes that must hash to the
        // digest.
        request = request.header(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if self.is_offline() {
            return Err(UpstreamError::Offline {
                upstream: self.name.to_string(),
            });
        }
        let admission = self.breaker.admit();
        if admission == Admission::Rejected {
            return Err(UpstreamError::CircuitOpen {
                upstream: self.name.to_string(),
            });
        }
        // If this future is dropped mid-request, a probe slot must be freed.
        let probe = ProbeGuard {
            breaker: &self.breaker,
            admission: Some(admission),
        };
        let sent = tokio::time::timeout(self.shared.header_timeout, request.send()).await;
        let status_label = match &sent {
            Ok(Ok(r)) => r.status().as_u16().to_string(),
            Ok(Err(_)) => "error".to_owned(),
            Err(_) => "timeout".to_owned(),
        };
        self.shared
            .metrics
            .upstream_requests
            .with_label_values(&[&*self.name, status_label.as_str()])
            .inc();
        // 5xx and 429 count against the upstream's health: both mean "stop
        // sending it traffic for a while".
        let healthy = matches!(&sent, Ok(Ok(r)) if !r.status().is_server_error() && r.status() != StatusCode::TOO_MANY_REQUESTS);
        let state = probe.finish(healthy);
        self.shared
            .metrics
            .upstream_circuit_state
            .with_label_values(&[&*self.name])
            .set(state.gauge_value());
        match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(UpstreamError::Unreachable {
                upstream: self.name.to_string(),
                detail: describe(&e),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.to_string(),
                after: self.shared.header_timeout,
            }),
        }
    }

    /// Records Docker Hub's rate-limit headers (`ratelimit-limit: 100;w=21600`).
    pub fn record_ratelimit(&self, headers: &HeaderMap) {
        for (header, kind) in [
            ("ratelimit-limit", "limit"),
            ("ratelimit-remaining", "remaining"),
        ] {
            let value = headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .and_then(|v| v.trim().parse::<i64>().ok());
            if let Some(v) = value {
                self.shared
                    .metrics
                    .upstream_ratelimit
                    .with_label_values(&[&*self.name, kind])
                    .set(v);
            }
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.name).chain(self.aliases.iter().map(String::as_str))
    }
}

struct ProbeGuard<'a> {
    breaker: &'a CircuitBreaker,
    admission: Option<Admission>,
}

impl ProbeGuard<'_> {
    fn finish(mut self, healthy: bool) -> BreakerState {
        match self.admission.take() {
            Some(a) => self.breaker.record(&a, healthy),
            None => self.breaker.state(),
        }
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.breaker.abandon(&a);
        }
    }
}

/// A transport error's cause chain in one line, without the URL (which may
/// carry a presigned query).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("body too large")]
    TooLarge,
    #[error("no data for {0:?}")]
    Stalled(Duration),
    #[error("{0}")]
    Transport(String),
}

/// Reads a small body whole, refusing more than `limit` bytes and failing
/// when no data arrives for `idle`.
pub async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut out = BytesMut::new();
    let mut stream = response.bytes_stream();
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| ReadError::Stalled(idle))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ReadError::Transport(describe(&e)))?;
        if out.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
