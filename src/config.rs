//! Configuration: built-in defaults < TOML file < `REGCACHE_*` environment.
//!
//! Every struct denies unknown keys so that a typo is a startup error that
//! names the key instead of a silently ignored setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the config is looked for when `--config` is not given.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/regcache/regcache.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Registry API listener.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// Blob files, manifests and the index live here.
    pub cache_dir: PathBuf,
    /// Requests that name no upstream (no `ns=`, no prefix) go here.
    pub default_upstream: String,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs). From anyone
    /// else the header is ignored and the peer address is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Per-client request limits.
    pub rate_limit: RateLimitConfig,
    /// Client authentication (off unless a credential source is set).
    pub auth: AuthConfig,
    /// HTTPS on `listen` (off unless cert_file and key_file are set).
    pub tls: TlsConfig,
    /// Bounds on what one client connection may cost.
    pub limits: LimitsConfig,
    /// The JSON audit log: one line per request.
    pub audit: AuditConfig,
    /// Dialling an upstream may take this long.
    pub connect_timeout: HumanDuration,
    /// An upstream must answer with headers within this time.
    pub header_timeout: HumanDuration,
    /// A blob body that makes no progress for this long fails the fill.
    /// There is deliberately no total timeout: multi-GB layers are normal.
    pub idle_timeout: HumanDuration,
    /// On SIGTERM, open responses get this long to finish.
    pub shutdown_grace: HumanDuration,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    /// Log level or filter ("info", "debug", "info,regcache=debug");
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// Serve only what is cached and never dial out (every upstream).
    /// Switchable at run time: SIGHUP or `POST /admin/offline`.
    pub offline: bool,
    /// Size bound, age limit and eviction of the cache (`[cache]`).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Absent in every source means the built-in presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<UpstreamConfig>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Manifest (and tag list, referrers) requests per second per client;
    /// 0 turns the limit off.
    pub manifests_per_second: f64,
    /// How many manifest requests a client may make at once above the rate.
    pub burst: u32,
    /// Blob bytes per second per client; unset means unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_bytes_per_second: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// htpasswd file with bcrypt entries (`user:$2y$...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Static bearer tokens, one `user token` pair per line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// Per-user access lists: globs over `<upstream>/<repository>`. Users
    /// not listed may pull everything the upstream policy allows.
    pub access: std::collections::BTreeMap<String, Vec<String>>,
    /// Failed logins allowed per client per minute before it is refused
    /// with 429 for a while.
    pub failed_logins_per_minute: u32,
    /// A file holding the bearer token that `/admin/*` on `admin_listen`
    /// requires (purge, gc, import, offline switch, listings); `/metrics`,
    /// `/healthz` and `/readyz` stay open. Unset: the admin endpoints are
    /// open to whoever reaches `admin_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            tokens_file: None,
            access: Default::default(),
            failed_logins_per_minute: 10,
            admin_token_file: None,
        }
    }
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.tokens_file.is_some()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open client connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this time (slowloris).
    pub header_read_timeout: HumanDuration,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            max_header_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// "stdout", or a file path to append to; unset turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// What clients name in `ns=` or as a repository prefix.
    pub name: String,
    /// Base URL of the upstream registry (`https://` or `http://`).
    pub url: String,
    /// Other names that mean this upstream.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// How long a tag lookup is answered from the cache without asking the
    /// upstream.
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl: HumanDuration,
    /// How long past `tag_ttl` a cached tag may still be served when the
    /// upstream fails (down, slow, 5xx, 429). "0s" disables.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: HumanDuration,
    /// An upstream 404 for a manifest is remembered this long.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: HumanDuration,
    /// Serve only what is cached from this upstream; never dial it.
    #[serde(default)]
    pub offline: bool,
    /// Credentials for the upstream: `password`, or `password_file` (kept
    /// out of the main file), or `REGCACHE_UPSTREAMS__<n>__PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only for testing; logged as a warning.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Repository globs (on the upstream's names, e.g. `library/*`,
    /// `myorg/**`) that may be pulled; empty allows all. `deny` wins.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// Refuse manifests the upstream serves only with credentials.
    #[serde(default)]
    pub public_only: bool,
    /// Blob fills running at once against this upstream; more wait.
    #[serde(default = "default_max_concurrent_fills")]
    pub max_concurrent_fills: usize,
    /// Requests per second sent to this upstream; 0 is unlimited.
    #[serde(default)]
    pub max_requests_per_second: f64,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// How long an open breaker answers from the cache before probing again.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: HumanDuration,
    /// Repositories whose cached tags (and everything they reference) are
    /// never evicted: `"library/alpine"`, or a prefix ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin: Vec<String>,
}

/// `[cache]`: how big the cache may grow and how long unused content stays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The bound on blob and manifest bytes ("50GiB", "512MiB", "1TB");
    /// absent means unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// Content not accessed for this long is evicted ("90d"); absent means
    /// no age limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Eviction starts when the cache is above this fraction of `max_size`…
    #[serde(default = "default_high_water")]
    pub high_water: f64,
    /// …and removes least-recently-used content down to this fraction.
    #[serde(default = "default_low_water")]
    pub low_water: f64,
    /// How often eviction runs besides when a fill crosses the high-water
    /// mark (it also applies `max_age`).
    #[serde(default = "default_gc_interval")]
    pub gc_interval: HumanDuration,
}

fn default_high_water() -> f64 {
    0.95
}

fn default_low_water() -> f64 {
    0.90
}

fn default_gc_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: None,
            max_age: None,
            high_water: default_high_water(),
            low_water: default_low_water(),
            gc_interval: default_gc_interval(),
        }
    }
}

impl CacheConfig {
    /// Bytes above which eviction starts, if the cache is bounded.
    pub fn high_water_bytes(&self) -> Option<u64> {
        self.max_size
            .map(|m| (m.0 as f64 * self.high_water).floor() as u64)
    }

    /// Bytes eviction brings the cache down to, if it is bounded.
    pub fn low_water_bytes(&self) -> Option<u64> {
        self.max_size
            .map(|m| (m.0 as f64 * self.low_water).floor() as u64)
    }
}

/// Secrets never appear in `check-config` output.
fn redact<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl UpstreamConfig {
    /// The configured credentials, reading `password_file` now.
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => return Err("set password or password_file, not both".into()),
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("password_file {}: {e}", path.display()))?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => None,
        };
        match (&self.username, password) {
            (Some(u), Some(p)) => Ok(Some((u.clone(), p))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("username is set without a password".into()),
            (None, Some(_)) => Err("a password is set without a username".into()),
        }
    }
}

fn default_max_concurrent_fills() -> usize {
    64
}

fn default_stale_if_error() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}

fn default_negative_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_breaker_threshold() -> u32 {
    5
}

fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl UpstreamConfig {
    /// An upstream with every optional setting at its default.
    pub fn new(name: &str, url: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            url: url.into(),
            aliases: Vec::new(),
            tag_ttl: default_tag_ttl(),
            stale_if_error: default_stale_if_error(),
            negative_ttl: default_negative_ttl(),
            offline: false,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            allow: Vec::new(),
            deny: Vec::new(),
            public_only: false,
            max_concurrent_fills: default_max_concurrent_fills(),
            max_requests_per_second: 0.0,
            breaker_threshold: default_breaker_threshold(),
            breaker_cooldown: default_breaker_cooldown(),
            pin: Vec::new(),
        }
    }
}

fn default_tag_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            cache_dir: PathBuf::from("regcache-data"),
            default_upstream: "docker.io".into(),
            trusted_proxies: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            audit: AuditConfig::default(),
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(30)),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            offline: false,
            cache: CacheConfig::default(),
            upstreams: None,
        }
    }
}

/// The upstreams that exist when no config names any: the public registries
/// people pull from, anonymous.
pub fn builtin_upstreams() -> Vec<UpstreamConfig> {
    let preset = |name: &str, url: &str, aliases: &[&str]| UpstreamConfig {
        name: name.into(),
        url: url.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ..UpstreamConfig::new(name, url)
    };
    vec![
        preset(
            "docker.io",
            "https://registry-1.docker.io",
            &[
                "index.docker.io",
                "registry-1.docker.io",
                "registry.hub.docker.com",
            ],
        ),
        preset("ghcr.io", "https://ghcr.io", &[]),
        preset("quay.io", "https://quay.io", &[]),
        preset(
            "registry.k8s.io",
            "https://registry.k8s.io",
            &["k8s.gcr.io"],
        ),
        preset("gcr.io", "https://gcr.io", &[]),
        preset("public.ecr.aws", "https://public.ecr.aws", &[]),
        preset("mcr.microsoft.com", "https://mcr.microsoft.com", &[]),
        preset("registry.gitlab.com", "https://registry.gitlab.com", &[]),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    /// Loads defaults, then `path` (or the system file when it exists), then
    /// the environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) => {
                // Figment treats a missing file as empty; a named file must exist.
                std::fs::metadata(p).map_err(|source| ConfigError::Unreadable {
                    path: p.to_owned(),
                    source,
                })?;
                figment = figment.merge(Toml::file(p));
            }
            None if Path::new(SYSTEM_CONFIG_PATH).exists() => {
                figment = figment.merge(Toml::file(SYSTEM_CONFIG_PATH));
            }
            None => {}
        }
        // REGCACHE_UPSTREAMS__<n>__<KEY> addresses an array entry, which
        // figment cannot merge; those are applied after extraction.
        figment = figment.merge(
            Env::prefixed("REGCACHE_")
                .filter(|k| !k.as_str().to_ascii_lowercase().starts_with("upstreams__"))
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.apply_upstream_env(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    fn apply_upstream_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("REGCACHE_UPSTREAMS__") else {
                continue;
            };
            let bad = |message: &str| ConfigError::Invalid {
                key: name.clone(),
                message: message.to_owned(),
            };
            let (index, key) = rest
                .split_once("__")
                .ok_or_else(|| bad("expected REGCACHE_UPSTREAMS__<n>__<KEY>"))?;
            let index: usize = index.parse().map_err(|_| bad("<n> must be a number"))?;
            let mut upstreams = self.upstreams();
            let entry = upstreams
                .get_mut(index)
                .ok_or_else(|| bad("there is no upstream with that index"))?;
            match key.to_ascii_lowercase().as_str() {
                "username" => entry.username = Some(value),
                "password" => entry.password = Some(value),
                "password_file" => entry.password_file = Some(PathBuf::from(value)),
                _ => {
                    return Err(bad(
                        "only USERNAME, PASSWORD and PASSWORD_FILE can be set this way",
                    ))
                }
            }
            self.upstreams = Some(upstreams);
        }
        Ok(())
    }

    pub fn upstreams(&self) -> Vec<UpstreamConfig> {
        self.upstreams.clone().unwrap_or_else(builtin_upstreams)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        let upstreams = self.upstreams();
        if upstreams.is_empty() {
            return invalid("upstreams".into(), "at least one upstream is needed".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in upstreams.iter().enumerate() {
            if u.name.trim().is_empty() {
                return invalid(format!("upstreams[{i}].name"), "must not be empty".into());
            }
            for n in std::iter::once(&u.name).chain(&u.aliases) {
                if !seen.insert(n.to_ascii_lowercase()) {
                    return invalid(
                        format!("upstreams[{i}]"),
                        format!("the name or alias {n:?} is used twice"),
                    );
                }
            }
            if let Err(message) = u.credentials() {
                return invalid(format!("upstreams[{i}] ({})", u.name), message);
            }
            if let Some(ca) = &u.ca_file {
                if let Err(e) = std::fs::read(ca) {
                    return invalid(
                        format!("upstreams[{i}] ({}).ca_file", u.name),
                        format!("{}: {e}", ca.display()),
                    );
                }
            }
            match reqwest::Url::parse(&u.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                Ok(_) => {
                    return invalid(
                        format!("upstreams[{i}].url"),
                        format!("{:?} must be an http:// or https:// URL with a host", u.url),
                    )
                }
                Err(e) => {
                    return invalid(format!("upstreams[{i}].url"), format!("{:?}: {e}", u.url))
                }
            }
        }
        let default_known = upstreams.iter().any(|u| {
            u.name.eq_ignore_ascii_case(&self.default_upstream)
                || u.aliases
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&self.default_upstream))
        });
        if !default_known {
            return invalid(
                "default_upstream".into(),
                format!("{:?} names no configured upstream", self.default_upstream),
            );
        }
        if let Err((key, message)) = crate::policy::validate(self) {
            return invalid(key, message);
        }
        if self.tls.enabled() && (self.tls.cert_file.is_none() || self.tls.key_file.is_none()) {
            return invalid("tls".into(), "cert_file and key_file go together".into());
        }
        if self.limits.max_connections == 0 || self.limits.max_header_bytes < 8192 {
            return invalid(
                "limits".into(),
                "max_connections must be positive and max_header_bytes at least 8192".into(),
            );
        }
        let c = &self.cache;
        let fraction = |x: f64| x > 0.0 && x <= 1.0;
        if !fraction(c.high_water) || !fraction(c.low_water) || c.low_water >= c.high_water {
            return invalid(
                "cache.high_water, cache.low_water".into(),
                "need 0 < low_water < high_water <= 1 (e.g. 0.90 and 0.95)".into(),
            );
        }
        if c.max_size.is_some_and(|m| m.0 == 0) {
            return invalid("cache.max_size".into(), "must be greater than zero".into());
        }
        if c.gc_interval.0.is_zero() {
            return invalid(
                "cache.gc_interval".into(),
                "must be greater than zero".into(),
            );
        }
        for (i, u) in upstreams.iter().enumerate() {
            for p in &u.pin {
                let name = p.strip_suffix('*').unwrap_or(p).trim_end_matches('/');
                if p.is_empty()
                    || (!name.is_empty() && crate::registry::RepoName::parse(name).is_err())
                {
                    return invalid(
                        format!("upstreams[{i}] ({}).pin", u.name),
                        format!("{p:?} is not a repository name (or a prefix ending in *)"),
                    );
                }
            }
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.0.is_zero() {
                return invalid(key.into(), "must be greater than zero".into());
            }
        }
        Ok(())
    }

    /// The effective config as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        let mut effective = self.clone();
        effective.upstreams = Some(self.upstreams());
        toml::to_string_pretty(&effective).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

/// A size written as "50GiB", "512MiB", "1TB", "1.5GiB" (or a number of
/// bytes). Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal
/// ones (KB, MB, GB, TB; K, M, G, T) powers of 1000.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 13] = [
    ("tib", 1 << 40),
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("tb", 1_000_000_000_000),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("t", 1_000_000_000_000),
    ("g", 1_000_000_000),
    ("m", 1_000_000),
    ("k", 1_000),
    ("b", 1),
];

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let unit = unit.trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    format!(
                        "invalid size {s:?}: unknown unit {unit:?} (use e.g. 512MiB, 50GiB, 1TB)"
                    )
                })?
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number and a unit, e.g. 50GiB"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("invalid size {s:?}"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that states the size exactly, so that the
    /// printed form reads back to the same number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= m && self.0 % m == 0 {
                return write!(f, "{}{unit}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as "5m", "30s", "7d" (or a number of seconds).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map(HumanDuration)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}"))),
        }
    }
}

#[cfg(test)]
// figment::Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_a_docker_hub_mirror() {
        Jail::expect_with(|_jail| {
            let c = Config::load(None).expect("defaults load");
            assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
            assert_eq!(c.default_upstream, "docker.io");
            assert_eq!(c.upstreams().len(), 8);
            Ok(())
        });
    }

    #[test]
    fn file_then_env_override() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "r.toml",
                r#"
                listen = "127.0.0.1:6000"
                default_upstream = "local"
                [[upstreams]]
                name = "local"
                url = "http://127.0.0.1:5001"
                tag_ttl = "1m"
                "#,
            )?;
            jail.set_env("REGCACHE_LISTEN", "127.0.0.1:7000");
            jail.set_env("REGCACHE_CACHE_DIR", "/tmp/x");
            jail.set_env("REGCACHE_UPSTREAMS__0__USERNAME", "bot");
            jail.set_env("REGCACHE_UPSTREAMS__0__PASSWORD", "s3cret");
            let c = Config::load(Some(Path::new("r.toml"))).expect("loads");
            assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
            assert_eq!(c.cache_dir, PathBuf::from("/tmp/x"));
            let ups = c.upstreams();
            assert_eq!(ups.len(), 1);
            assert_eq!(ups[0].tag_ttl.get(), Duration::from_secs(60));
            assert_eq!(
                ups[0].credentials(),
                Ok(Some(("bot".into(), "s3cret".into())))
            );
            assert!(!c.to_toml().contains("s3cret"), "secrets are redacted");
            Ok(())
        });
    }

    #[test]
    fn sizes_parse_and_print_back() {
        let p = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(p("512MiB"), Ok(512 << 20));
        assert_eq!(p("50GiB"), Ok(50 << 30));
        assert_eq!(p("1TB"), Ok(1_000_000_000_000));
        assert_eq!(p("1.5 GiB"), Ok(3 << 29));
        assert_eq!(p("4096"), Ok(4096));
        assert_eq!(p("10m"), Ok(10_000_000));
        assert!(p("ten GiB").is_err());
        assert!(p("5 parsecs").is_err());
        for b in [ByteSize(50 << 30), ByteSize(12345), ByteSize(3 << 29)] {
            assert_eq!(b.to_string().parse::<ByteSize>(), Ok(b));
        }
        assert_eq!(ByteSize(50 << 30).to_string(), "50GiB");
    }

    #[test]
    fn cache_table_and_pins() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "r.toml",
                r#"
                default_upstream = "local"
                [cache]
                max_size = "10MiB"
                max_age = "90d"
                [[upstreams]]
                name = "local"
                url = "http://127.0.0.1:5001"
                pin = ["library/alpine", "team/*"]
                "#,
            )?;
            jail.set_env("REGCACHE_CACHE__LOW_WATER", "0.5");
            let c = Config::load(Some(Path::new("r.toml"))).expect("loads");
            assert_eq!(c.cache.max_size, Some(ByteSize(10 << 20)));
            assert_eq!(c.cache.max_age.map(|d| d.get().as_secs()), Some(90 * 86400));
            assert_eq!(c.cache.high_water_bytes(), Some((10u64 << 20) * 95 / 100));
            assert_eq!(c.cache.low_water_bytes(), Some(5 << 20));
            assert_eq!(c.upstreams()[0].pin, vec!["library/alpine", "team/*"]);
            // The printed config reads back.
            jail.create_file("printed.toml", &c.to_toml())?;
            let again = Config::load(Some(Path::new("printed.toml"))).expect("reloads");
            assert_eq!(again.cache, c.cache);

            jail.create_file("bad.toml", "[cache]\nmax_size = \"lots\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("max_size"), "{e}");
            jail.create_file("bad2.toml", "[cache]\nhigh_water = 0.5\nlow_water = 0.9\n")?;
            let e = Config::load(Some(Path::new("bad2.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("low_water"), "{e}");
            jail.create_file("bad3.toml", "[cache]\nmax_sise = \"1GiB\"\n")?;
            let e = Config::load(Some(Path::new("bad3.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("max_sise"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("a.toml", "listne = \"127.0.0.1:1\"\n")?;
            let e = Config::load(Some(Path::new("a.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("listne"), "{e}");
            jail.create_file("b.toml", "header_timeout = \"soon\"\n")?;
            let e = Config::load(Some(Path::new("b.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("header_timeout"), "{e}");
            jail.create_file("c.toml", "default_upstream = \"nowhere.example\"\n")?;
            let e = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("default_upstream"), "{e}");
            jail.create_file(
                "d.toml",
                "[[upstreams]]\nname = \"x\"\nurl = \"ftp://h\"\ncolour = 1\n",
            )?;
            let e = Config::load(Some(Path::new("d.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("colour"), "{e}");
            let e = Config::load(Some(Path::new("missing.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("missing.toml"), "{e}");
            Ok(())
        });
    }
}
