//! `[[upstreams]]`: one registry to mirror.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::{ByteSize, HumanDuration};

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
    /// How long a request for a stale tag waits for its revalidation
    /// before it is answered stale; the revalidation goes on in the
    /// background, and the next request gets its answer
    /// (stale-while-revalidate). Never longer than `header_timeout`.
    #[serde(default = "default_stale_timeout")]
    pub stale_timeout: HumanDuration,
    /// The largest blob a fill takes from this upstream: one announced
    /// larger is refused, and one streamed without a length fails when it
    /// passes the bound (a hostile upstream cannot fill the disk).
    #[serde(default = "default_max_blob_size")]
    pub max_blob_size: ByteSize,
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
    /// Hosts besides the upstream's own that may serve its token realm (and
    /// so receive its credentials): `host`, `host:port` or `*.domain`. Unset,
    /// an upstream whose `url` is a preset's gets the preset's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_hosts: Option<Vec<String>>,
    /// Redirect targets allowed although they are on a loopback, link-local,
    /// private or unspecified address (public ones always are).
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    /// Cosign signatures required for repositories matching a rule's globs
    /// (`[{ repos = ["team/*"], public_key_file = "..." }]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_signatures: Vec<super::SignatureRule>,
    /// Globs over `repository:tag` (`"library/*:3.*"`) whose first digest
    /// seen is kept: a move upstream is refused until accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_tags: Vec<String>,
    /// A cached tag the upstream answers 404 for is still served (true) or
    /// is dropped and answered 404 (false).
    #[serde(default = "default_keep_deleted")]
    pub keep_deleted: bool,
    /// A tag moving more than this many times within `tag_churn_window` is
    /// flagged (WARN and a metric); at most 19, the history holds 20 moves.
    #[serde(default = "default_tag_churn_moves")]
    pub tag_churn_moves: u32,
    #[serde(default = "default_tag_churn_window")]
    pub tag_churn_window: HumanDuration,
}

fn default_keep_deleted() -> bool {
    true
}

fn default_tag_churn_moves() -> u32 {
    5
}

fn default_tag_churn_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

/// An `auth_hosts` or `redirect_hosts` entry: a host name or IP address,
/// optionally with `:port` (else any port), or `*.domain` for every name
/// under that domain (not the domain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// As the `url` crate spells hosts: lowercase, IDNA, IPv6 without
    /// brackets.
    host: String,
    /// `*.host`: any name below `host`.
    subdomains: bool,
    port: Option<u16>,
}

/// Why an `auth_hosts` or `redirect_hosts` entry is not a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a host, host:port or *.domain: {why}")]
pub struct HostPatternError {
    entry: String,
    why: &'static str,
}

impl std::str::FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(entry: &str) -> Result<HostPattern, HostPatternError> {
        let bad = |why| HostPatternError {
            entry: entry.to_owned(),
            why,
        };
        if entry.contains("://") || entry.contains(['/', '@', '?', '#']) {
            return Err(bad("give the host alone, without scheme, path or user"));
        }
        let (subdomains, rest) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        // "[v6]:port", "[v6]", "name:port", "name", or a bare IPv6 address.
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (v6, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (format!("[{v6}]"), port)
        } else if rest.matches(':').count() > 1 {
            (format!("[{rest}]"), None)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))
            })
            .transpose()?;
        let parsed = url::Host::parse(&host).map_err(|_| bad("not a valid host"))?;
        if subdomains && !matches!(parsed, url::Host::Domain(_)) {
            return Err(bad("*. goes before a domain name, not an address"));
        }
        Ok(HostPattern {
            host: parsed.to_string().trim_matches(['[', ']']).to_owned(),
            subdomains,
            port,
        })
    }
}

impl HostPattern {
    /// Whether `host` (as `Url::host_str` gives it) on `port` matches; a
    /// `None` port matches only an entry without one.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_matches(['[', ']']);
        let name_matches = if self.subdomains {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|below| below.len() > 1 && below.ends_with('.'))
        } else {
            host == self.host
        };
        name_matches && (self.port.is_none() || self.port == port)
    }

    /// Whether the host name matches, whatever the port (for resolving a
    /// name, which has no port).
    pub fn matches_name(&self, host: &str) -> bool {
        self.matches(host, self.port)
    }
}

/// Secrets never appear in `check-config` output.
fn redact<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Why an upstream's credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("set password or password_file, not both")]
    PasswordTwice,
    #[error("password_file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("username is set without a password")]
    NoPassword,
    #[error("a password is set without a username")]
    NoUsername,
}

impl UpstreamConfig {
    /// The configured credentials, reading `password_file` now.
    pub fn credentials(&self) -> Result<Option<(String, String)>, CredentialsError> {
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => return Err(CredentialsError::PasswordTwice),
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    CredentialsError::PasswordFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => None,
        };
        match (&self.username, password) {
            (Some(u), Some(p)) => Ok(Some((u.clone(), p))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(CredentialsError::NoPassword),
            (None, Some(_)) => Err(CredentialsError::NoUsername),
        }
    }
}

fn default_stale_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_max_blob_size() -> ByteSize {
    ByteSize(64 << 30)
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
            max_blob_size: default_max_blob_size(),
            stale_timeout: default_stale_timeout(),
            breaker_threshold: default_breaker_threshold(),
            breaker_cooldown: default_breaker_cooldown(),
            pin: Vec::new(),
            auth_hosts: None,
            redirect_hosts: Vec::new(),
            require_signatures: Vec::new(),
            immutable_tags: Vec::new(),
            keep_deleted: default_keep_deleted(),
            tag_churn_moves: default_tag_churn_moves(),
            tag_churn_window: default_tag_churn_window(),
        }
    }

    /// The parsed `auth_hosts` and `redirect_hosts`.
    pub fn host_patterns(&self) -> Result<(Vec<HostPattern>, Vec<HostPattern>), HostPatternError> {
        let parse = |list: &[String]| -> Result<Vec<HostPattern>, HostPatternError> {
            list.iter().map(|h| h.parse()).collect()
        };
        Ok((
            parse(self.auth_hosts.as_deref().unwrap_or_default())?,
            parse(&self.redirect_hosts)?,
        ))
    }
}

fn default_tag_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
