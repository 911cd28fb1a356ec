//! The built-in upstreams.

use super::UpstreamConfig;

/// The upstreams that exist when no config names any: the public registries
/// people pull from, anonymous. Each lists the host its token realm is on
/// (`auth_hosts`), the one place real auth hosts are named.
pub fn builtin_upstreams() -> Vec<UpstreamConfig> {
    let preset = |name: &str, url: &str, aliases: &[&str], auth_hosts: &[&str]| UpstreamConfig {
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        auth_hosts: Some(auth_hosts.iter().map(|h| h.to_string()).collect()),
        ..UpstreamConfig::new(name, url)
    };
    vec![
        preset(
            "docker.io",
            "https://registry-1.docker.io",
            &[
                "index.docker.io",
                "registry-1.docker.io",
                "registry.hub.docker.com",
            ],
            &["auth.docker.io"],
        ),
        preset("ghcr.io", "https://ghcr.io", &[], &["ghcr.io"]),
        preset("quay.io", "https://quay.io", &[], &["quay.io"]),
        // Anonymous; its regional redirect targets answer with realms on
        // their own hosts, which need no entry.
        preset(
            "registry.k8s.io",
            "https://registry.k8s.io",
            &["k8s.gcr.io"],
            &[],
        ),
        preset("gcr.io", "https://gcr.io", &[], &["gcr.io"]),
        preset(
            "public.ecr.aws",
            "https://public.ecr.aws",
            &[],
            &["public.ecr.aws"],
        ),
        preset("mcr.microsoft.com", "https://mcr.microsoft.com", &[], &[]),
        preset(
            "registry.gitlab.com",
            "https://registry.gitlab.com",
            &[],
            &["gitlab.com"],
        ),
    ]
}

/// A configured upstream that leaves `auth_hosts` unset and has a preset's
/// `url` (typically to add credentials) keeps the preset's `auth_hosts`, so
/// naming an upstream does not break its token realm.
pub(super) fn with_preset_auth_hosts(mut upstream: UpstreamConfig) -> UpstreamConfig {
    if upstream.auth_hosts.is_none() {
        let url = upstream.url.trim_end_matches('/');
        upstream.auth_hosts = builtin_upstreams()
            .into_iter()
            .find(|p| p.url.eq_ignore_ascii_case(url))
            .and_then(|p| p.auth_hosts);
    }
    upstream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_name_valid_auth_hosts_and_a_configured_preset_url_keeps_them() {
        for p in builtin_upstreams() {
            let (auth, redirect) = p.host_patterns().expect("preset hosts parse");
            assert!(redirect.is_empty(), "{}", p.name);
            if p.name == "docker.io" {
                assert!(auth.iter().any(|h| h.matches("auth.docker.io", Some(443))));
            }
        }
        let named =
            with_preset_auth_hosts(UpstreamConfig::new("hub", "https://registry-1.docker.io/"));
        assert_eq!(named.auth_hosts, Some(vec!["auth.docker.io".to_owned()]));
        let own = with_preset_auth_hosts(UpstreamConfig {
            auth_hosts: Some(vec![]),
            ..UpstreamConfig::new("hub", "https://registry-1.docker.io")
        });
        assert_eq!(own.auth_hosts, Some(vec![]), "an explicit list wins");
        let other = with_preset_auth_hosts(UpstreamConfig::new("x", "https://registry.example"));
        assert_eq!(other.auth_hosts, None);
    }
}
