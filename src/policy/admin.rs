//! The admin token: what `/admin/*` on `admin_listen` asks for when
//! `auth.admin_token_file` is set, so that exposing the listener to a
//! metrics scraper does not also expose purge, import and the offline
//! switch.

use std::path::{Path, PathBuf};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Kept as a hash: compared in constant time, never logged.
pub struct AdminToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("admin_token_file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin_token_file {} holds no token", path.display())]
    Empty { path: PathBuf },
}

impl AdminToken {
    /// Reads the token from `path` (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<AdminToken, AdminTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminTokenError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.trim()).ok_or_else(|| AdminTokenError::Empty {
            path: path.to_owned(),
        })
    }

    /// A token given as text (surrounding whitespace is the caller's).
    pub fn new(token: &str) -> Option<AdminToken> {
        (!token.is_empty()).then(|| AdminToken {
            hash: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether the request carries `Authorization: Bearer <the token>`.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        presented.is_some_and(|t| {
            let hash: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            bool::from(hash.ct_eq(&self.hash))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = authorization {
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(a).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "s3cret-admin\n").unwrap();
        let token = AdminToken::load(&path).unwrap();
        assert!(token.accepts(&with(Some("Bearer s3cret-admin"))));
        for refused in [
            None,
            Some("Bearer s3cret"),
            Some("Bearer s3cret-admin2"),
            Some("Basic czNjcmV0LWFkbWlu"),
            Some("s3cret-admin"),
        ] {
            assert!(!token.accepts(&with(refused)), "{refused:?}");
        }
    }

    #[test]
    fn an_empty_or_missing_token_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(AdminToken::load(&empty)
            .unwrap_err()
            .to_string()
            .contains("holds no token"));
        assert!(AdminToken::load(&dir.path().join("absent"))
            .unwrap_err()
            .to_string()
            .contains("admin_token_file"));
    }
}
