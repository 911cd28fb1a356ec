//! The one build step: a `Config` (plain data) turned into the runtime
//! parts — client policy, upstreams, eviction bounds and pins, TLS. Startup
//! builds them all; a reload builds the live half again with the same
//! functions, against the upstreams already running.

use std::sync::Arc;

use crate::cache::scrub::ScrubSettings;
use crate::cache::{Floor, Pins, Policy};
use crate::config::{Config, FreeSpace};
use crate::http::{Tls, TlsError};
use crate::metrics::Metrics;
use crate::policy::gate::GateSettings;
use crate::policy::{ClientPolicy, PolicyError};
use crate::registry::RepoName;
use crate::upstream::{self, Upstreams};

/// Everything the daemon runs on that comes from the config.
pub struct Parts {
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    pub live: Live,
    /// HTTPS on the registry listener, when configured.
    pub tls: Option<Arc<Tls>>,
}

/// What one config generation compiles to that a reload swaps in whole.
pub struct Live {
    pub policy: ClientPolicy,
    pub eviction: Policy,
    pub pins: Pins,
    pub scrub: ScrubSettings,
    /// Blocked digests, signature rules, the admission webhook.
    pub gate: GateSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A value that policy compiles is bad: the config is invalid.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error(transparent)]
    Upstreams(#[from] upstream::BuildError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("audit.log {target}: {source}")]
    Audit {
        target: String,
        source: std::io::Error,
    },
}

impl Parts {
    /// What `serve` builds before it binds anything, and all that
    /// `check-config` runs: every file the config names is opened here.
    pub fn build(config: &Config) -> Result<Parts, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let upstreams = Upstreams::from_config(config, metrics.clone())?;
        let live = Live::build(config, &upstreams)?;
        let tls = Tls::load(&config.tls)?;
        if let Some(target) = &config.audit.log {
            check_audit_target(target).map_err(|source| BuildError::Audit {
                target: target.clone(),
                source,
            })?;
        }
        Ok(Parts {
            metrics,
            upstreams,
            live,
            tls,
        })
    }
}

impl Live {
    /// `upstreams` resolves pins to each upstream's own repository names.
    pub fn build(config: &Config, upstreams: &Upstreams) -> Result<Live, PolicyError> {
        let policy = ClientPolicy::from_config(config)?;
        let (eviction, pins) = eviction(config, upstreams);
        Ok(Live {
            policy,
            eviction,
            pins,
            scrub: scrub(config),
            gate: GateSettings::from_config(config)?,
        })
    }
}

/// Whether the audit log can be opened as `serve` opens it (appending,
/// created when missing), without creating it: `check-config` must not
/// leave files behind.
fn check_audit_target(target: &str) -> std::io::Result<()> {
    if target == "stdout" {
        return Ok(());
    }
    let path = std::path::Path::new(target);
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if std::fs::metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// Checks what the config's own validation cannot: everything policy
/// compiles (globs, credential files, the admin token). For `check-config`
/// and the management commands; `serve` gets the same from [`Parts::build`].
pub fn check_config(config: &Config) -> Result<(), PolicyError> {
    ClientPolicy::from_config(config)?;
    GateSettings::from_config(config)?;
    Ok(())
}

/// The background scrub's settings of `[cache]`.
pub fn scrub(config: &Config) -> ScrubSettings {
    ScrubSettings {
        interval: config.cache.scrub_every(),
        bytes_per_second: config.cache.scrub_bytes_per_second.0,
    }
}

/// The eviction bounds of `[cache]` and the pins of every upstream that
/// `upstreams` runs, in the upstream's own names (Docker Hub's `alpine` is
/// `library/alpine`).
pub fn eviction(config: &Config, upstreams: &Upstreams) -> (Policy, Pins) {
    let c = &config.cache;
    let policy = Policy {
        max_size: c.max_size.map(|m| m.0),
        high_water: c.high_water_bytes(),
        low_water: c.low_water_bytes(),
        max_age: c.max_age.map(|d| d.get()),
        min_free: Some(match c.min_free {
            FreeSpace::Bytes(b) => Floor::Bytes(b.0),
            FreeSpace::Percent(p) => Floor::Fraction(p / 100.0),
        }),
    };
    let pins = Pins::new(config.upstreams().into_iter().filter_map(|u| {
        let upstream = upstreams.get(&u.name)?;
        let patterns: Vec<String> = u
            .pin
            .iter()
            .filter_map(|p| {
                if p.ends_with('*') {
                    Some(p.clone())
                } else {
                    RepoName::parse(p)
                        .ok()
                        .map(|r| upstream.upstream_repo(&r).to_string())
                }
            })
            .collect();
        Some((upstream.name.to_string(), patterns))
    }));
    (policy, pins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, UpstreamConfig};

    #[test]
    fn pins_are_resolved_to_the_upstreams_own_names() {
        let mut config = Config::default();
        let mut upstreams = crate::config::builtin_upstreams();
        // The first preset is Docker Hub, which keeps official images
        // under `library/`.
        let hub = upstreams[0].name.clone();
        let other = upstreams[1].name.clone();
        upstreams[0].pin = vec!["alpine".into(), "team/*".into()];
        upstreams.push(UpstreamConfig {
            pin: vec!["alpine".into()],
            ..UpstreamConfig::new("local", "http://127.0.0.1:1")
        });
        config.upstreams = Some(upstreams);
        config.cache.max_size = Some(ByteSize(1000));
        let running = Upstreams::from_config(&config, Arc::new(Metrics::new())).unwrap();
        let (policy, pins) = eviction(&config, &running);
        assert_eq!(policy.max_size, Some(1000));
        assert_eq!(policy.high_water, Some(950));
        assert_eq!(policy.low_water, Some(900));
        assert!(pins.matches(&hub, "library/alpine"));
        assert!(!pins.matches(&hub, "alpine"));
        assert!(pins.matches(&hub, "team/app"));
        assert!(pins.matches("local", "alpine"));
        assert!(!pins.matches(&other, "alpine"));
    }

    #[test]
    fn a_bad_policy_value_fails_the_build_naming_its_key() {
        let mut config = Config::default();
        let mut upstreams = crate::config::builtin_upstreams();
        upstreams[1].deny = vec!["a[".into()];
        let key = format!("upstreams[1] ({}).allow/deny: ", upstreams[1].name);
        config.upstreams = Some(upstreams);
        let e = Parts::build(&config).err().unwrap();
        assert!(matches!(e, BuildError::Invalid(_)), "{e}");
        assert!(e.to_string().starts_with(&key), "{e}");
        assert!(check_config(&config).is_err());
        assert!(check_config(&Config::default()).is_ok());
    }

    #[test]
    fn every_named_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let mut config = Config::default();
        config.tls.cert_file = Some(missing.clone());
        config.tls.key_file = Some(missing.clone());
        let e = Parts::build(&config).err().unwrap().to_string();
        assert!(
            e.contains("tls.cert_file") && e.contains("missing.pem"),
            "{e}"
        );

        let mut config = Config::default();
        let log = dir.path().join("no-such-dir/audit.log");
        config.audit.log = Some(log.display().to_string());
        let e = Parts::build(&config).err().unwrap().to_string();
        assert!(e.contains("no-such-dir/audit.log"), "{e}");
        // A log that does not exist yet in a directory that does is fine,
        // and is not created by the check.
        let log = dir.path().join("audit.log");
        config.audit.log = Some(log.display().to_string());
        assert!(Parts::build(&config).is_ok());
        assert!(!log.exists());
    }
}
