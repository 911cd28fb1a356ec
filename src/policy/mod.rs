//! Policy: which repositories may be pulled (per upstream and per user),
//! who the client is, and how fast it may go.

mod access;
mod admin;
mod clients;
mod ratelimit;

pub use access::{RepoRules, UserAccess};
pub use admin::AdminToken;
pub use clients::{client_address, AuthError, Authenticator};
pub use ratelimit::{ClientLimiter, Throttled};

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
}

impl ClientPolicy {
    pub fn from_config(config: &Config) -> Result<ClientPolicy, String> {
        Ok(ClientPolicy {
            admin_token: load_admin_token(config)?,
            auth: Authenticator::load(&config.auth)?,
            limiter: ClientLimiter::new(&config.rate_limit),
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }
}

/// Checks everything in `config` that policy compiles (globs, credential
/// files), so a bad value stops startup or a reload with its key named.
pub fn validate(config: &Config) -> Result<(), (String, String)> {
    for (i, u) in config.upstreams().iter().enumerate() {
        RepoRules::new(&u.allow, &u.deny)
            .map_err(|e| (format!("upstreams[{i}] ({}).allow/deny", u.name), e))?;
    }
    Authenticator::load(&config.auth).map_err(|e| ("auth".to_owned(), e))?;
    load_admin_token(config).map_err(|e| ("auth.admin_token_file".to_owned(), e))?;
    Ok(())
}

pub fn load_admin_token(config: &Config) -> Result<Option<AdminToken>, String> {
    config
        .auth
        .admin_token_file
        .as_deref()
        .map(AdminToken::load)
        .transpose()
}
