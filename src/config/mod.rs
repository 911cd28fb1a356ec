//! Configuration: built-in defaults < TOML file < `REGCACHE_*` environment.
//!
//! Every struct denies unknown keys so that a typo is a startup error that
//! names the key instead of a silently ignored setting.
//!
//! Plain data: loading and checking the values is all this module does.
//! What they are compiled into (client policy, upstream clients, eviction
//! pins, TLS) is built once from a `Config` in `daemon`.

mod cache;
mod clients;
mod cluster;
mod listener;
mod notifications;
mod presets;
mod supply;
mod units;
mod upstream;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use cache::CacheConfig;
pub use clients::{AuthConfig, RateLimitConfig};
pub use cluster::{
    Backend, ClusterConfig, ConditionalWritesMode, Coordination, OnHolderUnreachable, S3Config,
};
pub use listener::{parse_listen, AuditConfig, LimitsConfig, LogFormat, TlsConfig};
pub use notifications::{NotificationConfig, EVENT_NAMES};
pub use presets::builtin_upstreams;
pub use supply::{AdmissionConfig, OnError, PolicyConfig, SignatureRule};
pub use units::{ByteSize, FreeSpace, HumanDuration, SizeError};
pub use upstream::{CredentialsError, HostPattern, HostPatternError, UpstreamConfig};

/// Kubernetes gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT`,
/// `<SERVICE>_PORT_5000_TCP_ADDR`… for each Service in its namespace: a
/// Service named `regcache` (or `regcache-metrics`) makes them look like
/// config keys. No config key has those shapes, so they are passed over.
fn is_service_link(key: &str) -> bool {
    let words: Vec<&str> = key.split('_').collect();
    words
        .iter()
        .enumerate()
        .any(|(i, w)| match (*w, words.get(i + 1)) {
            ("service", Some(&("host" | "port"))) => true,
            ("port", None) => true,
            ("port", Some(n)) => n.chars().all(|c| c.is_ascii_digit()),
            _ => false,
        })
}

/// Where the config is looked for when `--config` is not given.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/regcache/regcache.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Registry API listener.
    #[serde(deserialize_with = "listener::listen_address")]
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`, the status page and `/admin/*`.
    #[serde(deserialize_with = "listener::listen_address")]
    pub admin_listen: SocketAddr,
    /// Optional: `/metrics`, `/healthz` and `/readyz` only, for a scraper
    /// or a Service that must not reach the admin API.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "listener::optional_listen_address"
    )]
    pub metrics_listen: Option<SocketAddr>,
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
    /// The supply-chain gate: blocked digests (`[policy]`) and the
    /// admission webhook (`[admission]`, off when absent).
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionConfig>,
    /// Absent in every source means the built-in presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<UpstreamConfig>>,
    /// Receivers of events (`[[notifications]]`), none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationConfig>,
    /// This replica among others sharing a bucket (`[cache] backend = "s3"`).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            metrics_listen: None,
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
            policy: PolicyConfig::default(),
            admission: None,
            upstreams: None,
            notifications: Vec::new(),
            cluster: ClusterConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", describe(.0))]
    Figment(#[from] Box<figment::Error>),
    #[error("config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// figment's errors, each with its key as the user wrote it: `cache.max_size`
/// in a file, `REGCACHE_CACHE__MAX_SIZE` in the environment (figment's own
/// text says `default.cache.max_size`, its internal profile name).
fn describe(error: &figment::Error) -> String {
    let lines: Vec<String> = error
        .clone()
        .into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.source.is_none() && m.name.contains("environment"));
            let key = if from_env {
                format!("REGCACHE_{}", e.path.join("__").to_ascii_uppercase())
            } else {
                e.path.join(".")
            };
            let place = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(source) => format!(" (in {source})"),
                None if from_env => " (in the environment)".into(),
                None => String::new(),
            };
            if key.is_empty() {
                format!("{}{place}", e.kind)
            } else {
                format!("{key}: {}{place}", e.kind)
            }
        })
        .collect();
    lines.join("; ")
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
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    !k.starts_with("upstreams__") && !is_service_link(&k)
                })
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
        match &self.upstreams {
            Some(configured) => configured
                .iter()
                .cloned()
                .map(presets::with_preset_auth_hosts)
                .collect(),
            None => builtin_upstreams(),
        }
    }

    /// The effective config as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        let mut effective = self.clone();
        effective.upstreams = Some(self.upstreams());
        toml::to_string_pretty(&effective).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

#[cfg(test)]
// figment's `Jail` fixes the closures' error type.
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
                ups[0].credentials().expect("credentials"),
                Some(("bot".into(), "s3cret".into()))
            );
            assert!(!c.to_toml().contains("s3cret"), "secrets are redacted");
            Ok(())
        });
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
            assert!(!e.contains("default."), "{e}");
            assert!(e.starts_with("listne: unknown field"), "{e}");
            jail.create_file("n.toml", "[cache]\nmax_sise = 1\n")?;
            let e = Config::load(Some(Path::new("n.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("cache.max_sise: "), "{e}");
            assert!(e.contains("(in ") && e.contains("n.toml)"), "{e}");
            jail.set_env("REGCACHE_CACHE__MAX_SIZE", "lots");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.starts_with("REGCACHE_CACHE__MAX_SIZE: "), "{e}");
            jail.clear_env();
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
