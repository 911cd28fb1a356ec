//! One upstream registry: its settings, its HTTP client (with its own CA
//! and TLS choices), authentication, redirects and health.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use parking_lot::RwLock;

use super::auth::{bearer_header, Credentials, CredentialsError};
use super::challenge::parse_challenges;
use super::health::{Admission, BreakerState, CircuitBreaker, ProbeGuard, Transitions};
use super::hosts::{refusal_in, HostPolicy, Refusal, ScreeningResolver};
use super::response::{describe, Response};
use super::{BuildError, Failure, Shared, UpstreamError};
use crate::config::UpstreamConfig;
use crate::policy::ImmutableTags;
use crate::registry::RepoName;

/// Hosts that all mean Docker Hub.
const DOCKER_HUB_NAMES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Redirect hops followed per request (blob redirects go to a CDN once;
/// registry.k8s.io redirects manifests to a regional host).
const MAX_REDIRECTS: usize = 10;

/// The settings of an upstream that can change without a restart.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub tag_ttl: Duration,
    pub stale_if_error: Duration,
    pub negative_ttl: Duration,
    pub offline: bool,
    pub credentials: Option<Credentials>,
    pub public_only: bool,
    /// Bytes one blob may have (`max_blob_size`).
    pub max_blob_size: u64,
    /// How long a stale answer waits for its revalidation.
    pub stale_timeout: Duration,
    /// Tags whose first digest is kept (`immutable_tags`).
    pub immutable_tags: ImmutableTags,
    /// A cached tag the upstream deleted is still served.
    pub keep_deleted: bool,
    /// More moves than this within `tag_churn_window` flag a tag.
    pub tag_churn_moves: u32,
    pub tag_churn_window: Duration,
}

/// Why an upstream's settings could not be taken from its config.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config names its credentials wrongly (config says how).
    #[error("{0}")]
    CredentialsConfig(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// An allow or deny pattern does not compile.
    #[error("{0}")]
    Rules(String),
    #[error(transparent)]
    Hosts(#[from] crate::config::HostPatternError),
    /// An `immutable_tags` pattern does not compile.
    #[error("immutable_tags: {0}")]
    ImmutableTags(String),
}

impl UpstreamSettings {
    fn from_config(c: &UpstreamConfig) -> Result<UpstreamSettings, SettingsError> {
        Ok(UpstreamSettings {
            tag_ttl: c.tag_ttl.get(),
            stale_if_error: c.stale_if_error.get(),
            negative_ttl: c.negative_ttl.get(),
            offline: c.offline,
            credentials: c
                .credentials()
                .map_err(|e| SettingsError::CredentialsConfig(e.to_string()))?
                .map(|(u, p)| Credentials::new(u, p))
                .transpose()?,
            public_only: c.public_only,
            max_blob_size: c.max_blob_size.0,
            stale_timeout: c.stale_timeout.get(),
            immutable_tags: ImmutableTags::new(&c.immutable_tags)
                .map_err(|e| SettingsError::ImmutableTags(e.to_string()))?,
            keep_deleted: c.keep_deleted,
            tag_churn_moves: c.tag_churn_moves,
            tag_churn_window: c.tag_churn_window.get(),
        })
    }
}

/// One configured upstream registry.
pub struct Upstream {
    pub name: Arc<str>,
    aliases: Vec<String>,
    base: reqwest::Url,
    http: reqwest::Client,
    /// What the client was built from; changing it needs a restart.
    tls: (Option<std::path::PathBuf>, bool),
    settings: RwLock<UpstreamSettings>,
    /// Where its realms and redirects may lead.
    hosts: Arc<HostPolicy>,
    /// The upstream answered a Basic challenge: send credentials up front.
    basic_auth: std::sync::atomic::AtomicBool,
    breaker: CircuitBreaker,
    /// What was last logged about its health.
    transitions: Transitions,
    /// Caps blob fills against this upstream, so a burst of clients cannot
    /// get the mirror banned.
    fill_slots: Arc<tokio::sync::Semaphore>,
    /// Caps requests per second to this upstream.
    pace: Option<governor::DefaultDirectRateLimiter>,
    docker_hub: bool,
    /// The most recent failure, for the status page.
    last_error: parking_lot::Mutex<Option<LastError>>,
    shared: Arc<Shared>,
}

/// An upstream's most recent failure.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at: std::time::SystemTime,
    pub message: String,
}

fn pace(per_second: f64) -> Option<governor::DefaultDirectRateLimiter> {
    if per_second <= 0.0 {
        return None;
    }
    let burst = std::num::NonZeroU32::new(per_second.ceil().max(1.0) as u32)?;
    let quota =
        governor::Quota::with_period(Duration::from_secs_f64(1.0 / per_second))?.allow_burst(burst);
    Some(governor::RateLimiter::direct(quota))
}

impl Upstream {
    pub(super) fn new(
        config: &UpstreamConfig,
        shared: Arc<Shared>,
    ) -> Result<Upstream, BuildError> {
        let name = || config.name.clone();
        let mut base = reqwest::Url::parse(&config.url).map_err(|source| BuildError::Url {
            name: name(),
            source,
        })?;
        // Joining "v2/..." onto the base must keep any path the URL has.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let (auth_hosts, redirect_hosts) =
            config.host_patterns().map_err(|e| BuildError::Settings {
                name: name(),
                source: e.into(),
            })?;
        let hosts = Arc::new(HostPolicy::new(&base, auth_hosts, redirect_hosts));
        let mut builder = reqwest::Client::builder()
            .connect_timeout(shared.connect_timeout)
            // Every name this client dials is screened: a redirect target
            // whose name resolves to an internal address is refused there.
            .dns_resolver(Arc::new(ScreeningResolver(hosts.clone())))
            .pool_idle_timeout(Duration::from_secs(90))
            // Redirects are followed by `request`, which decides per hop
            // what credentials may go along.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| BuildError::CaFileRead {
                name: name(),
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                BuildError::CaFileParse {
                    name: name(),
                    path: path.clone(),
                    source,
                }
            })?;
            if certs.is_empty() {
                return Err(BuildError::CaFileEmpty {
                    name: name(),
                    path: path.clone(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if config.insecure_skip_verify {
            tracing::warn!(upstream = %config.name, "insecure_skip_verify: TLS certificates of this upstream are NOT verified");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|source| BuildError::Client {
            name: name(),
            source,
        })?;
        let settings =
            UpstreamSettings::from_config(config).map_err(|source| BuildError::Settings {
                name: name(),
                source,
            })?;
        let docker_hub = std::iter::once(&config.name)
            .chain(&config.aliases)
            .chain(base.host_str().map(str::to_owned).iter())
            .any(|n| DOCKER_HUB_NAMES.contains(&n.to_ascii_lowercase().as_str()));
        Ok(Upstream {
            name: config.name.as_str().into(),
            aliases: config.aliases.clone(),
            base,
            http,
            tls: (config.ca_file.clone(), config.insecure_skip_verify),
            settings: RwLock::new(settings),
            hosts,
            basic_auth: std::sync::atomic::AtomicBool::new(false),
            breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_cooldown.get()),
            transitions: Transitions::new(config.name.as_str().into()),
            fill_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_fills.max(1),
            )),
            pace: pace(config.max_requests_per_second),
            docker_hub,
            last_error: parking_lot::Mutex::new(None),
            shared,
        })
    }

    /// Whether a reloaded config describes the same endpoint (so that the
    /// live settings can simply be swapped).
    pub(super) fn same_endpoint(&self, config: &UpstreamConfig) -> bool {
        let url = config.url.trim_end_matches('/');
        self.base.as_str().trim_end_matches('/') == url
            && self.tls == (config.ca_file.clone(), config.insecure_skip_verify)
    }

    pub(super) fn update(&self, config: &UpstreamConfig) -> Result<(), SettingsError> {
        let settings = UpstreamSettings::from_config(config)?;
        let (auth_hosts, redirect_hosts) = config.host_patterns()?;
        self.hosts.set_lists(auth_hosts, redirect_hosts);
        let credentials_changed = self.settings.read().credentials != settings.credentials;
        *self.settings.write() = settings;
        if credentials_changed {
            self.basic_auth.store(false, Ordering::Relaxed);
        }
        Ok(())
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

    /// Where events about this upstream and its content go.
    pub fn notifier(&self) -> &crate::notify::Notifier {
        &self.shared.notifier
    }

    pub fn settings(&self) -> UpstreamSettings {
        self.settings.read().clone()
    }

    /// Offline globally or for this upstream.
    pub fn is_offline(&self) -> bool {
        self.shared.offline.load(Ordering::Relaxed) || self.settings.read().offline
    }

    /// A slot for one blob fill; waits while `max_concurrent_fills` run.
    pub async fn fill_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if self.fill_slots.available_permits() == 0 {
            self.shared.metrics.throttled("upstream_fills");
        }
        self.fill_slots.clone().acquire_owned().await.ok()
    }

    /// Content fetched with credentials may be private (unless only public
    /// manifests are accepted).
    pub fn may_hold_private_content(&self) -> bool {
        let settings = self.settings.read();
        settings.credentials.is_some() && !settings.public_only
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The most recent failure talking to this upstream, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().clone()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.name).chain(self.aliases.iter().map(String::as_str))
    }

    /// Sends `method /v2/<repo>/<suffix>[?query]`: authenticates as the
    /// upstream asks (Bearer token or Basic), follows redirects itself, and
    /// returns the final answer. Any status comes back as a response; only
    /// transport failures, timeouts, offline and an open breaker are errors.
    pub async fn request(
        &self,
        method: Method,
        repo: &RepoName,
        suffix: &str,
        query: Option<&str>,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        let answer = self.request_at(method, repo, suffix, query, headers).await;
        self.note_failure(&answer);
        answer
    }

    /// Remembers a failure of this upstream (not the mirror's own refusal
    /// to call it: offline, or a breaker already open).
    fn note_failure(&self, answer: &Result<Response, UpstreamError>) {
        let message = match answer {
            Err(UpstreamError::Offline { .. } | UpstreamError::CircuitOpen { .. }) => return,
            Err(e) => e.to_string(),
            Ok(r) if Failure::of_status(r.status()).is_some() => {
                format!("answered {}", r.status())
            }
            Ok(_) => return,
        };
        *self.last_error.lock() = Some(LastError {
            at: std::time::SystemTime::now(),
            message,
        });
    }

    async fn request_at(
        &self,
        method: Method,
        repo: &RepoName,
        suffix: &str,
        query: Option<&str>,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        let mut url = self
            .base
            .join(&format!("v2/{}/{}", repo.as_str(), suffix))
            .map_err(|e| self.unreachable(format!("bad URL: {e}")))?;
        url.set_query(query);
        let scope = format!("repository:{}:pull", repo.as_str());
        let settings = self.settings();
        // public_only: manifests are asked for without credentials, so what
        // only the account can see is refused, not cached for everyone.
        let credentials = if settings.public_only && suffix.starts_with("manifests/") {
            None
        } else {
            settings.credentials
        };
        let mut method = method;
        for _ in 0..=MAX_REDIRECTS {
            // Credentials and our tokens go only to the upstream itself; a
            // redirect target (a CDN, object storage with a presigned URL)
            // gets nothing unless it challenges on its own account.
            let home = url.origin() == self.base.origin();
            let authorization = if home {
                self.upfront_auth(&scope, credentials.as_ref()).await
            } else {
                None
            };
            let mut response = self
                .send(method.clone(), url.clone(), &headers, authorization)
                .await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                let home_credentials = if home { credentials.as_ref() } else { None };
                if let Some(retry) = self
                    .answer_challenge(&response, &scope, home, home_credentials)
                    .await?
                {
                    response = self
                        .send(method.clone(), url.clone(), &headers, Some(retry))
                        .await?;
                }
            }
            if !response.status().is_redirection() {
                return Ok(self.answer(response));
            }
            let next = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            let Some(next) = next else {
                return Ok(self.answer(response));
            };
            // Checked before anything is sent there.
            self.hosts
                .check_redirect(&next)
                .map_err(|r| self.refused(r))?;
            if response.status() == StatusCode::SEE_OTHER {
                method = Method::GET;
            }
            url = next;
        }
        Err(self.unreachable(format!("more than {MAX_REDIRECTS} redirects")))
    }

    fn answer(&self, response: reqwest::Response) -> Response {
        Response::from_reqwest(self.name.clone(), self.shared.idle_timeout, response)
    }

    fn timeout(&self) -> UpstreamError {
        UpstreamError::Timeout {
            upstream: self.name.to_string(),
            after: self.shared.header_timeout,
        }
    }

    /// A host the policy refuses: logged, and the request fails naming it.
    fn refused(&self, refusal: Refusal) -> UpstreamError {
        tracing::warn!(
            upstream = %self.name,
            host = %refusal.host,
            reason = %refusal.reason,
            "refused a host the upstream pointed at"
        );
        UpstreamError::Refused {
            upstream: self.name.to_string(),
            host: refusal.host,
            reason: refusal.reason,
        }
    }

    fn unreachable(&self, detail: String) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.name.to_string(),
            detail,
        }
    }

    /// What to send before any challenge: Basic credentials once the
    /// upstream has asked for them, else a cached token for the scope.
    async fn upfront_auth(
        &self,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Option<HeaderValue> {
        if let Some(c) = credentials.filter(|_| self.basic_auth.load(Ordering::Relaxed)) {
            return Some(c.basic_header());
        }
        let token = self
            .shared
            .tokens
            .cached(&self.name, scope, credentials)
            .await?;
        Some(bearer_header(&token))
    }

    /// Answers a 401's challenge, if it can: a Bearer token (with our
    /// credentials only at our own upstream's realm), or Basic credentials
    /// to our own upstream. None leaves the 401 to the caller.
    async fn answer_challenge(
        &self,
        response: &reqwest::Response,
        scope: &str,
        home: bool,
        credentials: Option<&Credentials>,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let challenges: Vec<_> = response
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            // Before anything (credentials above all) goes to the realm. One
            // that is not a URL fails in the token fetch, dialling nothing.
            let realm = bearer
                .param("realm")
                .and_then(|r| reqwest::Url::parse(r).ok());
            if let Some(realm) = realm {
                self.hosts
                    .check_realm(&realm, response.url())
                    .map_err(|r| self.refused(r))?;
            }
            let home_name = home.then_some(&self.name);
            let answer =
                self.shared
                    .tokens
                    .answer(&self.http, home_name, bearer, scope, credentials);
            let token = tokio::time::timeout(self.shared.header_timeout, answer)
                .await
                .map_err(|_| self.timeout())
                .and_then(|r| r);
            match &token {
                Ok(_) => self.transitions.token(Ok(())),
                Err(e) => self.transitions.token(Err(&e.to_string())),
            };
            return Ok(Some(bearer_header(&token?)));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if let Some(c) = credentials {
                self.basic_auth.store(true, Ordering::Relaxed);
                return Ok(Some(c.basic_header()));
            }
        }
        Ok(None)
    }

    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: &HeaderMap,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
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
        if admission == Admission::Probe {
            self.transitions
                .breaker(BreakerState::HalfOpen, self.breaker.cooldown(), "");
        }
        // If this future is dropped (or gives up waiting for its turn)
        // before the request is answered, a probe slot must be freed.
        let probe = ProbeGuard::new(&self.breaker, admission);
        if let Some(pace) = &self.pace {
            if pace.check().is_err() {
                self.shared.metrics.throttled("upstream_rate");
                tokio::time::timeout(self.shared.header_timeout, pace.until_ready())
                    .await
                    .map_err(|_| self.timeout())?;
            }
        }
        let mut request = self.http.request(method, url).headers(headers.clone());
        // Compressed transfer would change the bytes that must hash to the
        // digest.
        request = request.header(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if let Some(a) = authorization {
            request = request.header(http::header::AUTHORIZATION, a);
        }
        let started = tokio::time::Instant::now();
        let sent = match tokio::time::timeout(self.shared.header_timeout, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(match refusal_in(&e) {
                Some(r) => self.refused(r),
                None => self.unreachable(describe(&e)),
            }),
            Err(_) => Err(self.timeout()),
        };
        let status_label = match &sent {
            Ok(r) => r.status().as_u16().to_string(),
            Err(UpstreamError::Timeout { .. }) => "timeout".to_owned(),
            Err(UpstreamError::Refused { .. }) => "refused".to_owned(),
            Err(_) => "error".to_owned(),
        };
        let metrics = &self.shared.metrics;
        metrics
            .upstream_requests
            .with_label_values(&[&*self.name, status_label.as_str()])
            .inc();
        metrics
            .upstream_duration
            .with_label_values(&[&*self.name])
            .observe(started.elapsed().as_secs_f64());
        let failure = match &sent {
            Ok(r) => Failure::of_status(r.status()),
            Err(e) => e.failure(),
        };
        let state = probe.finish(failure);
        let cause = match &sent {
            Ok(r) => format!("status {}", r.status().as_u16()),
            Err(e) => e.to_string(),
        };
        match &sent {
            Err(UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. }) => {
                self.transitions.reachable(Err(&cause));
            }
            Ok(_) => {
                self.transitions.reachable(Ok(()));
            }
            Err(_) => {}
        }
        self.transitions
            .breaker(state, self.breaker.cooldown(), &cause);
        if let Some(down) = self.transitions.announce(state) {
            let upstream = self.name.to_string();
            self.shared.notifier.emit(if down {
                crate::notify::Event::UpstreamDown {
                    upstream,
                    reason: cause,
                }
            } else {
                crate::notify::Event::UpstreamUp { upstream }
            });
        }
        metrics
            .upstream_circuit_state
            .with_label_values(&[&*self.name])
            .set(state.gauge_value());
        sent
    }

    /// Counts body bytes received from this upstream.
    pub fn count_received(&self, bytes: usize) {
        self.shared
            .metrics
            .upstream_bytes
            .with_label_values(&[&*self.name])
            .inc_by(bytes as u64);
    }

    /// Records Docker Hub's rate-limit headers (`ratelimit-limit: 100;w=21600`).
    pub fn record_ratelimit(&self, headers: &HeaderMap) {
        let value = |header: &str| {
            headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let limit = value("ratelimit-limit");
        let remaining = value("ratelimit-remaining");
        for (v, kind) in [(limit, "limit"), (remaining, "remaining")] {
            if let Some(v) = v {
                self.shared
                    .metrics
                    .upstream_ratelimit
                    .with_label_values(&[&*self.name, kind])
                    .set(v);
            }
        }
        if let (Some(limit), Some(remaining)) = (limit, remaining) {
            self.transitions.ratelimit(remaining, limit);
        }
    }
}
