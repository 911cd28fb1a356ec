//! Policy: which repositories may be pulled (per upstream and per user),
//! who the client is, and how fast it may go.

mod access;
mod admin;
mod clients;
pub mod gate;
mod ratelimit;
mod tags;

pub(crate) use access::glob_set;
pub use access::{
    AccessListError, PatternError, Refused, RepoRules, RulesError, UpstreamRules, UserAccess,
};
pub use admin::{AdminToken, AdminTokenError};
pub use clients::{client_address, AuthError, AuthFileError, Authenticator};
pub use ratelimit::{ClientLimiter, Throttled};
pub use tags::ImmutableTags;

use std::sync::Arc;

use crate::config::Config;

/// The client-facing policy of one config generation; swapped whole on
/// SIGHUP so a request always sees one consistent set.
pub struct ClientPolicy {
    pub auth: Option<Arc<Authenticator>>,
    pub limiter: ClientLimiter,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Required on `/admin/*` when configured.
    pub admin_token: Option<AdminToken>,
    /// Every upstream's allow/deny rules.
    pub repos: UpstreamRules,
}

/// A part of the policy that does not compile, with the config key that
/// holds it (`upstreams[0] (local).allow/deny`, `auth`,
/// `auth.admin_token_file`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("auth: {0}")]
    Auth(#[source] AuthFileError),
    #[error("auth.admin_token_file: {0}")]
    AdminToken(#[source] AdminTokenError),
    /// The supply-chain gate's files and settings (blocked digests,
    /// signature keys, the admission client).
    #[error(transparent)]
    Gate(#[from] gate::GateError),
}

impl ClientPolicy {
    /// Compiles everything policy takes from `config`: the globs, the
    /// credential files and the admin token, each read once here. A bad
    /// value is refused with its key named, so it stops startup, a
    /// management command or a reload.
    pub fn from_config(config: &Config) -> Result<ClientPolicy, PolicyError> {
        let repos = UpstreamRules::from_config(config)?;
        let auth = Authenticator::load(&config.auth).map_err(PolicyError::Auth)?;
        let admin_token = config
            .auth
            .admin_token_file
            .as_deref()
            .map(AdminToken::load)
            .transpose()
            .map_err(PolicyError::AdminToken)?;
        Ok(ClientPolicy {
            auth,
            limiter: ClientLimiter::new(&config.rate_limit),
            trusted_proxies: config.trusted_proxies.clone(),
            admin_token,
            repos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_as_config_errors_did() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.auth.admin_token_file = Some(dir.path().join("absent"));
        let e = ClientPolicy::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("auth.admin_token_file: admin_token_file "),
            "{e}"
        );

        std::fs::write(dir.path().join("h"), "bob:plaintext\n").unwrap();
        let mut config = Config::default();
        config.auth.htpasswd = Some(dir.path().join("h"));
        let e = ClientPolicy::from_config(&config)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "auth: auth.htpasswd line 1: only bcrypt entries are accepted"
        );
        assert!(ClientPolicy::from_config(&Config::default()).is_ok());
    }
}
