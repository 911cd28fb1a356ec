//! What every request handler shares ([`App`]), and the fields of the
//! access-log and audit lines each request gets ([`RequestLog`]).

use std::sync::Arc;

use super::activity::Activity;
use super::audit::AuditLog;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::gate::Gate;
use crate::policy::ClientPolicy;
use crate::upstream::Upstreams;

/// What every request handler shares.
pub struct App {
    pub config: Config,
    pub upstreams: Upstreams,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
    /// Client authentication, rate limits, trusted proxies: replaced whole
    /// on reload.
    pub policy: parking_lot::RwLock<Arc<ClientPolicy>>,
    /// The JSON audit log, when configured.
    pub audit: Option<AuditLog>,
    /// When serving began, for the status page's uptime.
    pub started: std::time::Instant,
    /// Most pulled images and recent denials, for the status page.
    pub activity: Activity,
    /// Blocked digests, signatures, admission: checked on every answer.
    pub gate: Gate,
    /// What the peer endpoint asks of other replicas (`peer_token_file`).
    pub peer_token: Option<crate::policy::AdminToken>,
}

impl App {
    /// Gauges that are read from state rather than kept up to date.
    pub fn refresh_gauges(&self) {
        use crate::cache::Kind;
        for kind in [Kind::Blob, Kind::Manifest] {
            let totals = self.cache.totals(kind);
            let label = [kind.label()];
            self.metrics
                .cache_bytes
                .with_label_values(&label)
                .set(totals.bytes as i64);
            self.metrics
                .cache_objects
                .with_label_values(&label)
                .set(totals.objects as i64);
        }
        self.metrics
            .open_readers
            .set(self.cache.open_blobs() as i64);
        for upstream in self.upstreams.all() {
            self.metrics
                .upstream_circuit_state
                .with_label_values(&[&upstream.name])
                .set(upstream.breaker_state().gauge_value());
        }
    }
}

/// Fields of the access-log and audit lines each request gets.
pub struct RequestLog {
    pub route: &'static str,
    pub upstream: Option<Arc<str>>,
    pub outcome: &'static str,
    /// The client's address (through trusted proxies).
    pub client: std::net::IpAddr,
    /// The authenticated user, when client authentication is on.
    pub user: Option<String>,
    pub repository: Option<String>,
    pub reference: Option<String>,
}

impl RequestLog {
    pub fn new(client: std::net::IpAddr) -> RequestLog {
        RequestLog {
            route: "",
            upstream: None,
            outcome: "",
            client,
            user: None,
            repository: None,
            reference: None,
        }
    }

    /// Who rate limits count against: the user, else the address.
    pub(crate) fn client_key(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{u}"),
            None => self.client.to_string(),
        }
    }
}
