//! The upstream side: which registries exist, and the client that speaks
//! to each with its credentials, the token dance, timeouts, a circuit
//! breaker and redirects that never carry credentials to another host;
//! `hosts` decides which realms and redirect targets may be contacted.

mod auth;
mod challenge;
mod client;
mod error;
mod health;
mod hosts;
mod response;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use auth::{Credentials, CredentialsError, TokenCache};
pub use challenge::{parse_challenges, Challenge};
pub use client::{LastError, SettingsError, Upstream, UpstreamSettings};
pub use error::{Failure, UpstreamError};
pub use health::{Admission, BreakerState, CircuitBreaker};
pub use response::{BodyStream, Response, Sharing};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::notify::Notifier;

/// What every upstream shares.
pub struct Shared {
    tokens: TokenCache,
    connect_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The global `offline` switch.
    offline: AtomicBool,
    /// Where events go (`[[notifications]]`, the audit log).
    notifier: Notifier,
}

/// The configured upstreams; nothing else is ever dialled.
pub struct Upstreams {
    all: Vec<Arc<Upstream>>,
    by_name: HashMap<String, Arc<Upstream>>,
    default: Arc<Upstream>,
    shared: Arc<Shared>,
}

/// Why a URL does not parse (the `url` crate's error, named through reqwest).
pub type UrlError = <reqwest::Url as std::str::FromStr>::Err;

/// Why the configured upstreams could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream {name}: building its HTTP client: {source}")]
    Client {
        name: String,
        source: reqwest::Error,
    },
    #[error("upstream {name}: url: {source}")]
    Url { name: String, source: UrlError },
    #[error("upstream {name}: ca_file {}: {source}", path.display())]
    CaFileRead {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upstream {name}: ca_file {}: {source}", path.display())]
    CaFileParse {
        name: String,
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("upstream {name}: ca_file {} holds no certificate", path.display())]
    CaFileEmpty { name: String, path: PathBuf },
    #[error("upstream {name}: default_upstream names no configured upstream")]
    NoDefault { name: String },
    #[error("upstream {name}: {source}")]
    Settings { name: String, source: SettingsError },
}

impl Upstreams {
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<Upstreams, BuildError> {
        let shared = Arc::new(Shared {
            tokens: TokenCache::new(metrics.token_fetches.clone()),
            notifier: Notifier::new(&config.notifications, metrics.notifications.clone()),
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
            shared.metrics.init_upstream(&u.name);
            for n in std::iter::once(&u.name).chain(&u.aliases) {
                by_name.insert(n.to_ascii_lowercase(), upstream.clone());
            }
            all.push(upstream);
        }
        let default = by_name
            .get(&config.default_upstream.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| BuildError::NoDefault {
                name: config.default_upstream.clone(),
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

    /// Where every upstream's (and the cache's) events go.
    pub fn notifier(&self) -> &Notifier {
        &self.shared.notifier
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
                    if let Err(e) = existing.update(u) {
                        needs_restart.push(format!("upstream {}: {e}", u.name));
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
