//! Checks on the config's own data, so a bad value stops startup (or a
//! reload) naming its key. What another module compiles (globs, credential
//! files, certificates) is checked where it is built, in `daemon`.

use super::{Config, ConfigError, HostPattern};
use crate::registry::RepoName;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
            if let Err(e) = u.credentials() {
                return invalid(format!("upstreams[{i}] ({})", u.name), e.to_string());
            }
            for (key, list) in [
                ("auth_hosts", u.auth_hosts.as_deref().unwrap_or_default()),
                ("redirect_hosts", &u.redirect_hosts[..]),
            ] {
                if let Some(e) = list.iter().find_map(|h| h.parse::<HostPattern>().err()) {
                    return invalid(format!("upstreams[{i}] ({}).{key}", u.name), e.to_string());
                }
            }
            if let Some(ca) = &u.ca_file {
                if let Err(e) = std::fs::read(ca) {
                    return invalid(
                        format!("upstreams[{i}] ({}).ca_file", u.name),
                        format!("{}: {e}", ca.display()),
                    );
                }
            }
            match url::Url::parse(&u.url) {
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
        if let Some(Err((key, message))) = self.admission.as_ref().map(|a| a.check()) {
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
        if self.limits.max_connections_per_client == 0 {
            return invalid(
                "limits.max_connections_per_client".into(),
                "must be greater than zero".into(),
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
        if c.scrub_bytes_per_second.0 == 0 {
            return invalid(
                "cache.scrub_bytes_per_second".into(),
                "must be greater than zero (turn the scrub off with scrub_interval = \"0\")".into(),
            );
        }
        for (i, u) in upstreams.iter().enumerate() {
            for p in &u.pin {
                let name = p.strip_suffix('*').unwrap_or(p).trim_end_matches('/');
                if p.is_empty() || (!name.is_empty() && RepoName::parse(name).is_err()) {
                    return invalid(
                        format!("upstreams[{i}] ({}).pin", u.name),
                        format!("{p:?} is not a repository name (or a prefix ending in *)"),
                    );
                }
            }
        }
        for (i, u) in upstreams.iter().enumerate() {
            if !(1..=19).contains(&u.tag_churn_moves) || u.tag_churn_window.0.is_zero() {
                return invalid(
                    format!("upstreams[{i}] ({}).tag_churn_moves, tag_churn_window", u.name),
                    "need 1 <= tag_churn_moves <= 19 (a tag's history holds 20 moves) and a window greater than zero".into(),
                );
            }
        }
        if c.backend == super::Backend::S3 {
            if let Err((key, message)) = c.s3.check().and_then(|()| self.cluster.check()) {
                return invalid(key, message);
            }
        }
        for (i, n) in self.notifications.iter().enumerate() {
            if let Some(message) = n.problem() {
                return invalid(format!("notifications[{i}]"), message);
            }
        }
        if let Err(message) = check_log_level(&self.log_level) {
            return invalid("log_level".into(), message);
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
}

/// A level, or a filter of `target=level` directives with an optional
/// default level. A bare word is read by tracing as a target (logging all
/// of it at every level), which in a config is a misspelt level: refused.
fn check_log_level(filter: &str) -> Result<(), String> {
    use tracing_subscriber::filter::{Directive, LevelFilter};
    let refuse = |what: &str| {
        Err(format!(
            "{what:?} is not a level (trace, debug, info, warn, error, off) nor a filter such as \"info,regcache=debug\""
        ))
    };
    if filter.trim().is_empty() {
        return refuse(filter);
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let valid = if directive.contains(['=', '[']) {
            directive.parse::<Directive>().is_ok()
        } else {
            directive.parse::<LevelFilter>().is_ok()
        };
        if !valid {
            return refuse(directive);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_must_be_a_level_or_a_filter() {
        for good in [
            "info",
            "WARN",
            "info,regcache=debug",
            "regcache::http=trace",
            "off",
        ] {
            assert!(check_log_level(good).is_ok(), "{good}");
        }
        for bad in ["verbose", "", "info,regcache=loud", "debug,chatty"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
        let c = Config {
            log_level: "verbose".into(),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("log_level: \"verbose\""), "{e}");
    }

    #[test]
    fn max_connections_per_client_must_be_positive() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.limits.max_connections_per_client = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_connections_per_client"), "{e}");
    }

    #[test]
    fn auth_and_redirect_hosts_must_be_hosts() {
        let with = |auth: &[&str], redirect: &[&str]| {
            let mut u = super::super::UpstreamConfig::new("up", "https://registry.example");
            u.auth_hosts = Some(auth.iter().map(|s| s.to_string()).collect());
            u.redirect_hosts = redirect.iter().map(|s| s.to_string()).collect();
            Config {
                default_upstream: "up".into(),
                upstreams: Some(vec![u]),
                ..Config::default()
            }
            .validate()
        };
        assert!(with(
            &["auth.example", "*.example.net", "10.0.0.5:8443"],
            &["[::1]:9000"]
        )
        .is_ok());
        for bad in [
            "https://auth.example",
            "auth.example/token",
            "u:p@auth.example",
            "",
            "*.10.0.0.1",
            "a:b",
        ] {
            let e = with(&[bad], &[]).unwrap_err().to_string();
            assert!(e.contains("auth_hosts"), "{bad}: {e}");
        }
        let e = with(&[], &["minio.example:port"]).unwrap_err().to_string();
        assert!(e.contains("(up).redirect_hosts"), "{e}");
    }

    #[test]
    fn the_scrub_is_off_unless_an_interval_is_set_and_its_rate_is_positive() {
        let parse = |toml: &str| -> crate::config::CacheConfig { toml::from_str(toml).unwrap() };
        assert_eq!(parse("").scrub_every(), None);
        assert_eq!(parse("scrub_interval = \"0\"").scrub_every(), None);
        assert_eq!(parse("scrub_interval = 0").scrub_every(), None);
        let on = parse("scrub_interval = \"24h\"\nscrub_bytes_per_second = \"8MiB\"");
        assert_eq!(
            on.scrub_every(),
            Some(std::time::Duration::from_secs(86400))
        );
        assert_eq!(on.scrub_bytes_per_second.0, 8 << 20);
        assert_eq!(parse("").scrub_bytes_per_second.0, 32 << 20);
        let mut c = Config::default();
        c.cache.scrub_bytes_per_second = crate::config::ByteSize(0);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cache.scrub_bytes_per_second"), "{e}");
    }
}
