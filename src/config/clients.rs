//! What clients may do: authentication, access lists, rate limits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
