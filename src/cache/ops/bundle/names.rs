//! Import: which tag a bundle's image is recorded under here. regcache's
//! own bundles say so exactly (`io.regcache.*`); other tools write only a
//! reference — skopeo and `oci-archive:` the standard
//! `org.opencontainers.image.ref.name` (a full `host/repo:tag`, or a bare
//! tag), containerd `io.containerd.image.name`. A reference is placed the
//! way the registry API places a request path: a first component naming a
//! configured upstream (name or alias) selects it; one shaped like a host
//! that names none is refused, never guessed.

use std::collections::BTreeMap;

use super::{
    BundleError, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, ANNOTATION_REPOSITORY,
    ANNOTATION_TAG, ANNOTATION_UPSTREAM,
};
use crate::registry::{looks_like_host, RepoName, Tag};
use crate::upstream::Upstreams;

/// This mirror's upstreams, as an import needs them.
pub trait Names {
    /// This mirror's name for an upstream a bundle names (its name, an
    /// alias, or a registry host), if one is configured.
    fn upstream(&self, name: &str) -> Option<String>;
    /// The repository as `upstream` itself names it (Docker Hub keeps
    /// official images under `library/`).
    fn repository(&self, upstream: &str, repo: RepoName) -> RepoName;
}

impl Names for Upstreams {
    fn upstream(&self, name: &str) -> Option<String> {
        self.get(name).map(|u| u.name.to_string())
    }

    fn repository(&self, upstream: &str, repo: RepoName) -> RepoName {
        match self.get(upstream) {
            Some(u) => u.upstream_repo(&repo),
            None => repo,
        }
    }
}

/// Where references that lack a registry or a repository go: `import
/// --upstream NAME --repo REPO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// This mirror's name for the upstream.
    pub upstream: Option<String>,
    /// As the upstream names it.
    pub repo: Option<RepoName>,
}

impl Placement {
    /// Checks `--upstream`/`--repo` as given, before any of the bundle is
    /// read.
    pub fn new(
        upstream: Option<&str>,
        repo: Option<&str>,
        names: &dyn Names,
    ) -> Result<Placement, BundleError> {
        let upstream = match upstream {
            None => None,
            Some(u) => Some(names.upstream(u).ok_or_else(|| {
                BundleError::Invalid(format!(
                    "--upstream {u:?} names no upstream configured on this mirror"
                ))
            })?),
        };
        let repo = match repo {
            None => None,
            Some(r) => {
                let Some(u) = &upstream else {
                    return Err(BundleError::Invalid(
                        "--repo needs --upstream: pass both".into(),
                    ));
                };
                let parsed = RepoName::parse(r)
                    .map_err(|e| BundleError::Invalid(format!("--repo {r:?}: {e}")))?;
                Some(names.repository(u, parsed))
            }
        };
        Ok(Placement { upstream, repo })
    }
}

/// The tag an index entry is to be recorded under, if it names one.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Named {
    /// The upstream as the bundle names it; this mirror's name when it
    /// came from a reference.
    pub upstream: String,
    pub repo: String,
    pub tag: String,
}

/// What an index entry's annotations say it is. `Ok(None)`: an image
/// without a tag (it is installed, reachable by digest).
pub(super) fn named(
    annotations: &BTreeMap<String, String>,
    names: &dyn Names,
    placement: &Placement,
) -> Result<Option<Named>, BundleError> {
    if let (Some(upstream), Some(repo), Some(tag)) = (
        annotations.get(ANNOTATION_UPSTREAM),
        annotations.get(ANNOTATION_REPOSITORY),
        annotations.get(ANNOTATION_TAG),
    ) {
        return Ok(Some(Named {
            upstream: upstream.clone(),
            repo: repo.clone(),
            tag: tag.clone(),
        }));
    }
    // containerd writes the full name here and only the tag in ref.name.
    match annotations
        .get(ANNOTATION_CONTAINERD_NAME)
        .or_else(|| annotations.get(ANNOTATION_REF_NAME))
    {
        Some(reference) => from_reference(reference.trim(), names, placement),
        None => Ok(None),
    }
}

fn from_reference(
    reference: &str,
    names: &dyn Names,
    placement: &Placement,
) -> Result<Option<Named>, BundleError> {
    let invalid = |m: String| BundleError::Invalid(format!("the archive names {reference}: {m}"));
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
        _ => (name, None),
    };
    // No component and no tag: the whole reference is a tag (`v2`), as
    // `oci-archive:a.tar:v2` writes it.
    let (path, tag) = match tag {
        None if !path.contains('/') && digest.is_none() => ("", Some(path)),
        // `host/repo` with neither tag nor digest means `latest`, as for
        // docker.
        None if digest.is_none() => (path, Some("latest")),
        t => (path, t),
    };
    let Some(tag) = tag else {
        // `repo@digest`: nothing to record.
        return Ok(None);
    };
    let tag = Tag::parse(tag).map_err(|e| invalid(e.to_string()))?;
    if path.is_empty() {
        let (Some(upstream), Some(repo)) = (&placement.upstream, &placement.repo) else {
            return Err(BundleError::Invalid(format!(
                "the archive names tag {} without a repository: pass --upstream and --repo",
                tag.as_str()
            )));
        };
        return Ok(Some(Named {
            upstream: upstream.clone(),
            repo: repo.to_string(),
            tag: tag.as_str().to_owned(),
        }));
    }
    let (first, rest) = path.split_once('/').unwrap_or((path, ""));
    let (upstream, repo) = match names.upstream(first).filter(|_| !rest.is_empty()) {
        Some(upstream) => (upstream, rest),
        None if looks_like_host(first) => {
            return Err(invalid(format!(
                "{first:?} names no upstream configured on this mirror (as its name or an alias)"
            )))
        }
        None => match &placement.upstream {
            Some(upstream) => (upstream.clone(), path),
            None => {
                return Err(invalid(
                    "a repository without a registry: pass --upstream".into(),
                ))
            }
        },
    };
    let repo = RepoName::parse(repo).map_err(|e| invalid(e.to_string()))?;
    Ok(Some(Named {
        repo: names.repository(&upstream, repo).to_string(),
        upstream,
        tag: tag.as_str().to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `local` (alias `127.0.0.1:5001`) and a Docker Hub-like `hub`.
    struct Two;

    impl Names for Two {
        fn upstream(&self, name: &str) -> Option<String> {
            match name {
                "local" | "127.0.0.1:5001" => Some("local".into()),
                "hub" | "hub.example" => Some("hub".into()),
                _ => None,
            }
        }

        fn repository(&self, upstream: &str, repo: RepoName) -> RepoName {
            if upstream == "hub" {
                repo.with_library_prefix()
            } else {
                repo
            }
        }
    }

    fn ref_name(r: &str, placement: &Placement) -> Result<Option<Named>, BundleError> {
        let annotations = BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), r.to_owned())]);
        named(&annotations, &Two, placement)
    }

    fn tag(upstream: &str, repo: &str, tag: &str) -> Option<Named> {
        Some(Named {
            upstream: upstream.into(),
            repo: repo.into(),
            tag: tag.into(),
        })
    }

    #[test]
    fn a_full_reference_maps_its_host_to_the_upstream() {
        let none = Placement::default();
        assert_eq!(
            ref_name("127.0.0.1:5001/team/app:v2", &none).unwrap(),
            tag("local", "team/app", "v2")
        );
        assert_eq!(
            ref_name("hub.example/alpine:3", &none).unwrap(),
            tag("hub", "library/alpine", "3")
        );
        assert_eq!(
            ref_name("local/team/app", &none).unwrap(),
            tag("local", "team/app", "latest")
        );
        let digest = format!("local/team/app@sha256:{}", "a".repeat(64));
        assert_eq!(ref_name(&digest, &none).unwrap(), None);
        let e = ref_name("registry.example/team/app:v2", &none).unwrap_err();
        assert!(e.to_string().contains("\"registry.example\""), "{e}");
        assert!(e.is_bad_bundle());
    }

    #[test]
    fn a_bare_tag_needs_upstream_and_repo() {
        let e = ref_name("v2", &Placement::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the archive names tag v2 without a repository: pass --upstream and --repo"
        );
        let placed = Placement::new(Some("hub.example"), Some("alpine"), &Two).unwrap();
        assert_eq!(
            ref_name("v2", &placed).unwrap(),
            tag("hub", "library/alpine", "v2")
        );
        // A repository without a registry takes --upstream.
        assert!(ref_name("team/app:v2", &Placement::default()).is_err());
        assert_eq!(
            ref_name("team/app:v2", &placed).unwrap(),
            tag("hub", "team/app", "v2")
        );
        assert!(Placement::new(Some("nowhere"), None, &Two).is_err());
        assert!(Placement::new(None, Some("team/app"), &Two).is_err());
        assert!(Placement::new(Some("local"), Some("Team"), &Two).is_err());
    }

    #[test]
    fn regcache_and_containerd_annotations_win() {
        let ours = BTreeMap::from([
            (ANNOTATION_REF_NAME.to_owned(), "v9".to_owned()),
            (ANNOTATION_UPSTREAM.to_owned(), "elsewhere".to_owned()),
            (ANNOTATION_REPOSITORY.to_owned(), "team/app".to_owned()),
            (ANNOTATION_TAG.to_owned(), "v1".to_owned()),
        ]);
        let n = named(&ours, &Two, &Placement::default()).unwrap();
        assert_eq!(n, tag("elsewhere", "team/app", "v1"));
        let containerd = BTreeMap::from([
            (ANNOTATION_REF_NAME.to_owned(), "v2".to_owned()),
            (
                ANNOTATION_CONTAINERD_NAME.to_owned(),
                "local/team/app:v2".to_owned(),
            ),
        ]);
        let n = named(&containerd, &Two, &Placement::default()).unwrap();
        assert_eq!(n, tag("local", "team/app", "v2"));
    }
}
