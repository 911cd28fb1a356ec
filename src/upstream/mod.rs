//! The upstream side: which registries exist, and the client that speaks
//! to each with its credentials, the token dance, timeouts, a circuit
//! breaker and redirects that never carry credentials to another host.

mod auth;
mod body;
mod challenge;
mod client;
mod health;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use auth::{Credentials, TokenCache};
pub use body::{read_limited, ReadError};
pub use challenge::{parse_challenges, Challenge};
pub use client::{Upstream, UpstreamSettings};
pub use health::{Admission, BreakerState, CircuitBreaker};
/// The answer of an upstream request (placeholder until the upstream
/// response type lands).
pub type Response = reqwest::Response;

use crate::config::Config;
use crate::metrics::Metrics;

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
}

/// What every upstream shares.
pub struct Shared {
    tokens: TokenCache,
    connect_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The global `offline` switch.
    offline: AtomicBool,
}

/// The configured upstreams; nothing else is ever dialled.
pub struct Upstreams {
    all: Vec<Arc<Upstream>>,
    by_name: HashMap<String, Arc<Upstream>>,
    default: Arc<Upstream>,
    shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream {name}: building its HTTP client: {source}")]
    Client {
        name: String,
        source: reqwest::Error,
    },
    #[error("upstream {name}: {message}")]
    Upstream { name: String, message: String },
}

impl Upstreams {
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<Upstreams, BuildError> {
        let shared = Arc::new(Shared {
            tokens: TokenCache::new(metrics.token_fetches.clone()),
            connect_timeout: config.connect_timeout.get(),
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
            shared,
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
        self.shared.offline.store(offline, Ordering::Relaxed);
    }

    pub fn offline(&self) -> bool {
        self.shared.offline.load(Ordering::Relaxed)
    }

    /// Applies the settings of a reloaded config that can change live
    /// (credentials, TTLs, offline), and returns what needs a restart.
    pub fn apply(&self, config: &Config) -> Vec<String> {
        self.set_offline(config.offline);
        let mut needs_restart = Vec::new();
        let new = config.upstreams();
        for u in &new {
            match self.all.iter().find(|e| *e.name == *u.name) {
                Some(existing) if existing.same_endpoint(u) => {
                    if let Err(message) = existing.update(u) {
                        needs_restart.push(format!("upstream {}: {message}", u.name));
                    }
                }
                _ => needs_restart.push(format!(
                    "upstream {} (added, or its url or TLS settings changed)",
                    u.name
                )),
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

/// The presets plus an upstream `local` aliased `127.0.0.1:5001`, for unit
/// tests that route.
#[cfg(test)]
pub fn presets_with_local_for_tests() -> Upstreams {
    let mut config = Config::default();
    let mut upstreams = crate::config::builtin_upstreams();
    upstreams.push(crate::config::UpstreamConfig {
        aliases: vec!["127.0.0.1:5001".into()],
        ..crate::config::UpstreamConfig::new("local", "http://127.0.0.1:1")
    });
    config.upstreams = Some(upstreams);
    Upstreams::from_config(&config, Arc::new(Metrics::new())).expect("test upstreams build")
}
