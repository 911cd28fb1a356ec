//! Who the client is: its address (through trusted proxies only) and, when
//! client authentication is on, its user, from Basic credentials (htpasswd
//! with bcrypt, or a static token as the password) or a static Bearer token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use super::access::AccessListError;
use super::UserAccess;
use crate::config::AuthConfig;
use crate::registry::Digest;

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the right-most `X-Forwarded-For` entry that is not itself trusted.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("authentication required")]
    Missing,
    #[error("invalid username, password or token")]
    Invalid,
    #[error("too many failed logins from this client; retry later")]
    Locked { retry_after: Duration },
}

/// A credential file that cannot be used, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("auth.{what} {}: {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.htpasswd line {line}: expected user:hash")]
    HtpasswdLine { line: usize },
    #[error("auth.htpasswd line {line}: only bcrypt entries are accepted")]
    NotBcrypt { line: usize },
    #[error("auth.tokens_file line {line}: expected `user token`")]
    TokensLine { line: usize },
    #[error(transparent)]
    Access(#[from] AccessListError),
}

/// How long a verified Basic credential is remembered, so that a client
/// that sends it on every request does not cost a bcrypt hash each time.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

pub struct Authenticator {
    /// user → bcrypt hash.
    htpasswd: HashMap<String, String>,
    /// sha256(token) → user; compared in constant time.
    tokens: Vec<([u8; 32], String)>,
    pub access: UserAccess,
    verified: moka::sync::Cache<[u8; 32], String>,
    /// Failed logins in the current minute, per (address, user), per user
    /// and per address: one misconfigured job behind a NAT locks out its
    /// own user at that address, not everyone there.
    failures: Mutex<HashMap<FailureKey, (Instant, u32)>>,
    failures_per_minute: u32,
}

/// What failed logins are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    /// The user a request claimed (Basic), at one address; a bearer token
    /// claims no user, so it counts as `None`.
    Pair(IpAddr, Option<String>),
    /// One user, from anywhere.
    User(String),
    /// Everything from one address (many users behind a NAT).
    Address(IpAddr),
}

/// Per user and per address, a ceiling this many times the per-pair limit.
const SHARED_CEILING: u32 = 10;

/// What one request's failure counts against.
fn failure_keys(client: IpAddr, user: Option<String>) -> Vec<FailureKey> {
    let mut keys = vec![
        FailureKey::Pair(client, user.clone()),
        FailureKey::Address(client),
    ];
    keys.extend(user.map(FailureKey::User));
    keys
}

/// The user name a Basic header claims, before checking it.
fn claimed_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(user, _)| user.to_owned())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = Digest::sha256_of(bytes);
    let mut out = [0u8; 32];
    if let Ok(raw) = hex::decode(d.hex()) {
        out.copy_from_slice(&raw);
    }
    out
}

fn read(path: &Path, what: &'static str) -> Result<String, AuthFileError> {
    std::fs::read_to_string(path).map_err(|source| AuthFileError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    })
}

impl Authenticator {
    /// None when client authentication is off.
    pub fn load(config: &AuthConfig) -> Result<Option<Arc<Authenticator>>, AuthFileError> {
        if !config.enabled() {
            return Ok(None);
        }
        let mut htpasswd = HashMap::new();
        if let Some(path) = &config.htpasswd {
            for (n, line) in read(path, "htpasswd")?.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) = line
                    .split_once(':')
                    .ok_or(AuthFileError::HtpasswdLine { line: n + 1 })?;
                if !hash.starts_with("$2") {
                    return Err(AuthFileError::NotBcrypt { line: n + 1 });
                }
                htpasswd.insert(user.to_owned(), hash.to_owned());
            }
        }
        let mut tokens = Vec::new();
        if let Some(path) = &config.tokens_file {
            for (n, line) in read(path, "tokens_file")?.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, token) = line
                    .split_once(char::is_whitespace)
                    .map(|(u, t)| (u, t.trim()))
                    .filter(|(_, t)| !t.is_empty())
                    .ok_or(AuthFileError::TokensLine { line: n + 1 })?;
                tokens.push((sha256(token.as_bytes()), user.to_owned()));
            }
        }
        Ok(Some(Arc::new(Authenticator {
            htpasswd,
            tokens,
            access: UserAccess::new(&config.access)?,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
            failures: Mutex::new(HashMap::new()),
            failures_per_minute: config.failed_logins_per_minute.max(1),
        })))
    }

    /// The user the request authenticates as. bcrypt is slow on purpose,
    /// so call this off the async runtime's worker threads.
    pub fn authenticate(&self, headers: &HeaderMap, client: IpAddr) -> Result<String, AuthError> {
        let keys = failure_keys(client, claimed_user(headers));
        if let Some(retry_after) = self.locked(&keys) {
            return Err(AuthError::Locked { retry_after });
        }
        let header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Missing)?;
        let (scheme, value) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        let result = match scheme.to_ascii_lowercase().as_str() {
            "basic" => self.basic(value.trim()),
            "bearer" => self.token(value.trim()).ok_or(AuthError::Invalid),
            _ => Err(AuthError::Invalid),
        };
        if result.is_err() {
            self.count_failure(&keys);
        }
        result
    }

    fn basic(&self, encoded: &str) -> Result<String, AuthError> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| AuthError::Invalid)?;
        let key = sha256(&raw);
        if let Some(user) = self.verified.get(&key) {
            return Ok(user);
        }
        let text = String::from_utf8(raw).map_err(|_| AuthError::Invalid)?;
        let (user, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        let by_password = self
            .htpasswd
            .get(user)
            .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false));
        // A static token also works as the password (any client that can
        // only do Basic can still use one), for the token's own user.
        let by_token = || self.token(password).is_some_and(|u| u == user);
        if by_password || by_token() {
            self.verified.insert(key, user.to_owned());
            Ok(user.to_owned())
        } else {
            Err(AuthError::Invalid)
        }
    }

    fn token(&self, token: &str) -> Option<String> {
        let presented = sha256(token.as_bytes());
        // Every entry is compared, so the time taken says nothing about
        // which one (if any) matched.
        let mut found = None;
        for (hash, user) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(user.clone());
            }
        }
        found
    }

    fn limit(&self, key: &FailureKey) -> u32 {
        match key {
            FailureKey::Pair(..) => self.failures_per_minute,
            FailureKey::User(_) | FailureKey::Address(_) => {
                self.failures_per_minute.saturating_mul(SHARED_CEILING)
            }
        }
    }

    /// How long until the longest of the locks on `keys` ends, if any holds.
    fn locked(&self, keys: &[FailureKey]) -> Option<Duration> {
        let failures = self.failures.lock();
        let window = Duration::from_secs(60);
        keys.iter()
            .filter_map(|key| {
                let (since, count) = failures.get(key)?;
                (*count >= self.limit(key) && since.elapsed() < window)
                    .then(|| window - since.elapsed())
            })
            .max()
    }

    fn count_failure(&self, keys: &[FailureKey]) {
        let mut failures = self.failures.lock();
        if failures.len() > 100_000 {
            // Bounded memory under a scan from many addresses.
            failures.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
        for key in keys {
            let entry = failures.entry(key.clone()).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= Duration::from_secs(60) {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(header: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(header).unwrap(),
        );
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        use base64::Engine;
        auth(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    fn authenticator(dir: &Path) -> Arc<Authenticator> {
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("# users\nalice:{hash}\n")).unwrap();
        std::fs::write(dir.join("tokens"), "ci s3cr3t-token\n").unwrap();
        let config = AuthConfig {
            htpasswd: Some(dir.join("htpasswd")),
            tokens_file: Some(dir.join("tokens")),
            failed_logins_per_minute: 3,
            ..AuthConfig::default()
        };
        Authenticator::load(&config).unwrap().unwrap()
    }

    #[test]
    fn basic_bearer_and_token_as_password() {
        let dir = tempfile::tempdir().unwrap();
        let a = authenticator(dir.path());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            a.authenticate(&basic("alice", "pw"), ip),
            Ok("alice".into())
        );
        assert_eq!(
            a.authenticate(&basic("alice", "pw"), ip),
            Ok("alice".into()),
            "cached"
        );
        assert_eq!(
            a.authenticate(&auth("Bearer s3cr3t-token"), ip),
            Ok("ci".into())
        );
        assert_eq!(
            a.authenticate(&basic("ci", "s3cr3t-token"), ip),
            Ok("ci".into())
        );
        assert_eq!(
            a.authenticate(&basic("alice", "s3cr3t-token"), ip),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.authenticate(&HeaderMap::new(), ip),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn failed_logins_lock_the_client_out() {
        let dir = tempfile::tempdir().unwrap();
        let a = authenticator(dir.path());
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                a.authenticate(&basic("alice", "wrong"), ip),
                Err(AuthError::Invalid)
            );
        }
        assert!(matches!(
            a.authenticate(&basic("alice", "pw"), ip),
            Err(AuthError::Locked { .. })
        ));
        let other: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(
            a.authenticate(&basic("alice", "pw"), other),
            Ok("alice".into())
        );
    }

    #[test]
    fn one_users_failures_do_not_lock_out_others_at_the_same_address() {
        let dir = tempfile::tempdir().unwrap();
        let a = authenticator(dir.path());
        let nat: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                a.authenticate(&basic("alice", "wrong"), nat),
                Err(AuthError::Invalid)
            );
        }
        assert!(matches!(
            a.authenticate(&basic("alice", "pw"), nat),
            Err(AuthError::Locked { .. })
        ));
        // Another user behind the same NAT still gets in.
        assert_eq!(
            a.authenticate(&basic("ci", "s3cr3t-token"), nat),
            Ok("ci".into())
        );
        // The address as a whole has a much higher ceiling (10x).
        for i in 0..27 {
            let user = format!("guess{i}");
            assert_eq!(
                a.authenticate(&basic(&user, "wrong"), nat),
                Err(AuthError::Invalid)
            );
        }
        assert!(matches!(
            a.authenticate(&basic("ci", "s3cr3t-token"), nat),
            Err(AuthError::Locked { .. })
        ));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.1.1.1"),
        );
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_address(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(stranger, &h, &trusted), stranger);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h"), "bob:plaintext\n").unwrap();
        let config = AuthConfig {
            htpasswd: Some(dir.path().join("h")),
            ..AuthConfig::default()
        };
        assert!(Authenticator::load(&config)
            .err()
            .unwrap()
            .to_string()
            .contains("bcrypt"));
        let config = AuthConfig {
            tokens_file: Some(dir.path().join("missing")),
            ..AuthConfig::default()
        };
        assert!(Authenticator::load(&config)
            .err()
            .unwrap()
            .to_string()
            .contains("tokens_file"));
    }
}
