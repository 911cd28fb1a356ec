//! The supply-chain gate's settings: `[policy] blocked_digests_file`,
//! `[admission]` (the review webhook) and each upstream's
//! `require_signatures`. Plain data; the gate (`policy::gate`) reads the
//! files and compiles the globs.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// `[policy]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Digests never served: one a line, an optional reason after
    /// whitespace, `#` comments. Read at startup, on SIGHUP and on
    /// `POST /admin/blocked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_digests_file: Option<PathBuf>,
}

/// What a review that fails (timeout, refused connection, bad answer)
/// decides.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Allow,
    Deny,
}

/// `[admission]`: a webhook that reviews each manifest before it is first
/// served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Where reviews are POSTed (`http://` or `https://`); redirects are
    /// not followed.
    pub url: String,
    /// A review's whole budget: connect, send, answer.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default)]
    pub on_error: OnError,
    /// How long a verdict is kept per (upstream, repository, digest).
    #[serde(default = "default_cache_verdicts")]
    pub cache_verdicts: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_cache_verdicts() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

/// One `require_signatures` entry of an upstream: manifests of the
/// repositories matching `repos` (globs) are served only with a cosign
/// signature that verifies with the key in `public_key_file`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureRule {
    pub repos: Vec<String>,
    pub public_key_file: PathBuf,
}

impl AdmissionConfig {
    /// The checks on the data alone (the URL's shape, a usable timeout).
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return Err((
                    "admission.url".into(),
                    format!(
                        "{:?} must be an http:// or https:// URL with a host",
                        self.url
                    ),
                ))
            }
            Err(e) => return Err(("admission.url".into(), format!("{:?}: {e}", self.url))),
        }
        if self.timeout.get().is_zero() {
            return Err(("admission.timeout".into(), "must be more than 0s".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_parses_with_defaults_and_checks_the_url() {
        let a: AdmissionConfig = toml::from_str(r#"url = "http://scanner:8080/review""#).unwrap();
        assert_eq!(a.timeout.get(), Duration::from_secs(5));
        assert_eq!(a.on_error, OnError::Allow);
        assert_eq!(a.cache_verdicts.get(), Duration::from_secs(86400));
        assert!(a.check().is_ok());
        let a: AdmissionConfig =
            toml::from_str("url = \"ftp://x/\"\non_error = \"deny\"\ntimeout = \"1s\"").unwrap();
        assert_eq!(a.on_error, OnError::Deny);
        assert_eq!(a.check().unwrap_err().0, "admission.url");
        assert!(
            toml::from_str::<AdmissionConfig>("url = \"http://x/\"\non_error = \"maybe\"").is_err()
        );
    }
}
