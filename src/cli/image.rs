//! Image references as people write them on the command line:
//! `docker.io/library/alpine:3.20`, `ghcr.io/org/app@sha256:...`,
//! `alpine:3.20` or `team/app` (the default upstream; tag `latest`).

use std::sync::Arc;

use crate::registry::{Digest, DigestError, NameError, Reference, RepoName, Tag, TagError};
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

/// A reference that does not parse: what the user wrote, and why.
#[derive(Debug, thiserror::Error)]
#[error("{original}: {problem}")]
pub struct ImageRefError {
    /// What the user wrote (trimmed).
    pub original: String,
    problem: Problem,
}

impl ImageRefError {
    /// Why it does not parse, without the reference in front.
    pub fn reason(&self) -> String {
        self.problem.to_string()
    }
}

/// Kept out of the `source()` chain on purpose: the message already holds
/// it, and `anyhow`'s `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
enum Problem {
    #[error("{0}")]
    Digest(DigestError),
    #[error("{0}")]
    Tag(TagError),
    #[error("{0}")]
    Name(NameError),
    #[error("{0:?} names no upstream configured on this mirror")]
    UnknownRegistry(String),
}

/// Parses `s` against the configured upstreams: a first component that
/// names one (by name or alias) selects it; one that looks like a registry
/// host but is not configured is refused; anything else is on the default
/// upstream.
pub fn parse(s: &str, upstreams: &Upstreams) -> Result<ImageRef, ImageRefError> {
    let original = s.trim().to_owned();
    let fail = |problem| ImageRefError {
        original: original.clone(),
        problem,
    };
    let s = original.strip_prefix("docker://").unwrap_or(&original);
    let (name, reference) = if let Some((name, digest)) = s.split_once('@') {
        let digest: Digest = digest.parse().map_err(|e| fail(Problem::Digest(e)))?;
        (name, Reference::Digest(digest))
    } else {
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&s[..at], &s[at + 1..])
            }
            None => (s, "latest"),
        };
        let tag = Tag::parse(tag).map_err(|e| fail(Problem::Tag(e)))?;
        (name, Reference::Tag(tag))
    };
    let (upstream, name) = match name.split_once('/') {
        Some((first, rest)) => match upstreams.get(first) {
            Some(u) => (u, rest),
            None if first.contains('.') || first.contains(':') || first == "localhost" => {
                return Err(fail(Problem::UnknownRegistry(first.to_owned())))
            }
            None => (upstreams.default_upstream(), name),
        },
        None => (upstreams.default_upstream(), name),
    };
    let repo = RepoName::parse(name).map_err(|e| fail(Problem::Name(e)))?;
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

    #[test]
    fn errors_name_the_reference_then_the_reason() {
        let u = upstreams();
        let e = parse(" evil.example.com/x:1", &u).unwrap_err();
        assert_eq!(e.original, "evil.example.com/x:1");
        assert_eq!(
            e.to_string(),
            "evil.example.com/x:1: \"evil.example.com\" names no upstream configured on this mirror"
        );
        assert_eq!(
            e.reason(),
            "\"evil.example.com\" names no upstream configured on this mirror"
        );
        let e = parse("Alpine", &u).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Alpine: repository name component \"Alpine\" is invalid"
        );
    }
}
