//! Image references as people write them on the command line:
//! `docker.io/library/alpine:3.20`, `ghcr.io/org/app@sha256:...`,
//! `alpine:3.20` or `team/app` (the default upstream; tag `latest`).

use std::sync::Arc;

use crate::registry::{Digest, Reference, RepoName, Tag};
use crate::upstream::{Upstream, Upstreams};

#[derive(Clone)]
pub struct ImageRef {
    pub upstream: Arc<Upstream>,
    /// As the upstream names it (`library/` added on Docker Hub).
    pub repo: RepoName,
    pub reference: Reference,
    /// What the user wrote.
    pub original: String,
}

impl ImageRef {
    /// `upstream/repo:tag` or `upstream/repo@digest`, with this mirror's
    /// name for the upstream.
    pub fn canonical(&self) -> String {
        match &self.reference {
            Reference::Tag(t) => format!("{}/{}:{}", self.upstream.name, self.repo, t.as_str()),
            Reference::Digest(d) => format!("{}/{}@{d}", self.upstream.name, self.repo),
        }
    }
}

impl std::fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Parses `s` against the configured upstreams: a first component that
/// names one (by name or alias) selects it; one that looks like a registry
/// host but is not configured is refused; anything else is on the default
/// upstream.
pub fn parse(s: &str, upstreams: &Upstreams) -> Result<ImageRef, String> {
    let original = s.trim().to_owned();
    let s = original.strip_prefix("docker://").unwrap_or(&original);
    let (name, reference) = if let Some((name, digest)) = s.split_once('@') {
        let digest: Digest = digest.parse().map_err(|e| format!("{original}: {e}"))?;
        (name, Reference::Digest(digest))
    } else {
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        match s[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = Tag::parse(&s[at + 1..]).map_err(|e| format!("{original}: {e}"))?;
                (&s[..at], Reference::Tag(tag))
            }
            None => (
                s,
                Reference::Tag(Tag::parse("latest").map_err(|e| e.to_string())?),
            ),
        }
    };
    let (upstream, name) = match name.split_once('/') {
        Some((first, rest)) => match upstreams.get(first) {
            Some(u) => (u, rest),
            None if first.contains('.') || first.contains(':') || first == "localhost" => {
                return Err(format!(
                    "{original}: {first:?} names no upstream configured on this mirror"
                ))
            }
            None => (upstreams.default_upstream(), name),
        },
        None => (upstreams.default_upstream(), name),
    };
    let repo = RepoName::parse(name).map_err(|e| format!("{original}: {e}"))?;
    Ok(ImageRef {
        repo: upstream.upstream_repo(&repo),
        upstream,
        reference,
        original,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        crate::upstream::presets_with_local_for_tests()
    }

    #[test]
    fn references_resolve_to_upstreams() {
        let u = upstreams();
        let c = |s: &str| parse(s, &u).map(|r| r.canonical());
        assert_eq!(c("alpine").unwrap(), "docker.io/library/alpine:latest");
        assert_eq!(c("alpine:3.20").unwrap(), "docker.io/library/alpine:3.20");
        assert_eq!(
            c("docker.io/library/alpine:3.20").unwrap(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(c("ghcr.io/org/app:v1").unwrap(), "ghcr.io/org/app:v1");
        assert_eq!(
            c("127.0.0.1:5001/team/app").unwrap(),
            "local/team/app:latest"
        );
        assert_eq!(
            c("docker://local/team/app:v2").unwrap(),
            "local/team/app:v2"
        );
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            c(&format!("ghcr.io/org/app@{d}")).unwrap(),
            format!("ghcr.io/org/app@{d}")
        );
        assert!(c("evil.example.com/x:1").is_err());
        assert!(c("Alpine").is_err());
        assert!(c("alpine@sha256:zz").is_err());
    }
}
