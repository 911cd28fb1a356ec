//! The built-in upstreams.

use super::UpstreamConfig;

/// The upstreams that exist when no config names any: the public registries
/// people pull from, anonymous.
pub fn builtin_upstreams() -> Vec<UpstreamConfig> {
    let preset = |name: &str, url: &str, aliases: &[&str]| UpstreamConfig {
        name: name.into(),
        url: url.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
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
        ),
        preset("ghcr.io", "https://ghcr.io", &[]),
        preset("quay.io", "https://quay.io", &[]),
        preset(
            "registry.k8s.io",
            "https://registry.k8s.io",
            &["k8s.gcr.io"],
        ),
        preset("gcr.io", "https://gcr.io", &[]),
        preset("public.ecr.aws", "https://public.ecr.aws", &[]),
        preset("mcr.microsoft.com", "https://mcr.microsoft.com", &[]),
        preset("registry.gitlab.com", "https://registry.gitlab.com", &[]),
    ]
}
