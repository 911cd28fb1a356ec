//! What the admin API and the CLI show and do to the cache: a summary, the
//! cached repositories and tags, purges. The same functions serve a running
//! daemon (over the admin API) and the CLI on a stopped daemon's cache
//! directory, so both print the same thing. All of them block (sled, files):
//! call them on the blocking pool.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::evict::Reason;
use super::reachable::{reachable, Reachable};
use crate::cache::storage::Kind;
use crate::cache::{Cache, CacheError};
use crate::registry::{Digest, DigestError, TagError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub objects: u64,
    pub bytes: u64,
}

/// `GET /admin/cache`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheSummary {
    pub total_bytes: u64,
    pub max_size: Option<u64>,
    pub high_water: Option<u64>,
    pub low_water: Option<u64>,
    pub max_age_seconds: Option<u64>,
    pub blobs: Counts,
    pub manifests: Counts,
    pub tags: u64,
    /// Blobs being served to clients right now.
    pub open_blobs: u64,
    pub fills_in_progress: u64,
    pub upstreams: Vec<UpstreamSummary>,
}

/// Content is shared by digest across upstreams, so `bytes` is what this
/// upstream's cached tags reach: a layer two upstreams share is counted in
/// both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSummary {
    pub name: String,
    pub repositories: u64,
    pub tags: u64,
    pub bytes: u64,
    pub pinned: Vec<String>,
}

/// One entry of `GET /admin/repositories`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryListing {
    pub upstream: String,
    pub repository: String,
    pub pinned: bool,
    pub tags: Vec<TagListing>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagListing {
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// When the upstream last confirmed the tag (unix ms).
    pub checked_at: u64,
    /// Whether the manifest it points to is in the cache.
    pub cached: bool,
    /// Last use of that manifest (unix ms).
    pub last_accessed: Option<u64>,
    /// Bytes of the manifest and what it references that are cached.
    pub bytes: u64,
}

/// What a purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    pub tags: Vec<String>,
    pub manifests: Vec<String>,
    pub blobs: Vec<String>,
    pub bytes_freed: u64,
}

impl PurgeReport {
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.manifests.is_empty() && self.blobs.is_empty()
    }
}

/// Bytes of the cached content among `reachable`.
fn cached_bytes(cache: &Cache, reachable: &Reachable) -> Result<u64, CacheError> {
    let mut bytes = 0;
    for (kind, set) in [
        (Kind::Manifest, &reachable.manifests),
        (Kind::Blob, &reachable.blobs),
    ] {
        for d in set {
            if let Some(e) = cache.index.get(kind, d)? {
                bytes += e.size;
            }
        }
    }
    Ok(bytes)
}

pub fn summary(cache: &Cache, upstream_names: &[String]) -> Result<CacheSummary, CacheError> {
    let policy = cache.evictor.policy();
    let pins = cache.evictor.pins();
    let blobs = cache.index.totals(Kind::Blob);
    let manifests = cache.index.totals(Kind::Manifest);
    let tags = cache.index.all_tags()?;
    let mut upstreams = Vec::new();
    for name in upstream_names {
        let mine: Vec<_> = tags.iter().filter(|t| &t.upstream == name).collect();
        let repositories: HashSet<&str> = mine.iter().map(|t| t.repo.as_str()).collect();
        let roots = mine.iter().map(|t| t.entry.digest.clone());
        let reachable = reachable(cache.storage.content.as_ref(), roots);
        let mut pinned: Vec<String> = repositories
            .iter()
            .filter(|r| pins.matches(name, r))
            .map(|r| r.to_string())
            .collect();
        pinned.sort();
        upstreams.push(UpstreamSummary {
            name: name.clone(),
            repositories: repositories.len() as u64,
            tags: mine.len() as u64,
            bytes: cached_bytes(cache, &reachable)?,
            pinned,
        });
    }
    Ok(CacheSummary {
        total_bytes: blobs.bytes + manifests.bytes,
        max_size: policy.max_size,
        high_water: policy.high_water,
        low_water: policy.low_water,
        max_age_seconds: policy.max_age.map(|d| d.as_secs()),
        blobs: Counts {
            objects: blobs.objects,
            bytes: blobs.bytes,
        },
        manifests: Counts {
            objects: manifests.objects,
            bytes: manifests.bytes,
        },
        tags: tags.len() as u64,
        open_blobs: cache.readers.open_blobs() as u64,
        fills_in_progress: cache.fills.in_progress() as u64,
        upstreams,
    })
}

pub fn repositories(cache: &Cache) -> Result<Vec<RepositoryListing>, CacheError> {
    // Last access is batched in memory; write it so the listing is current.
    cache.index.flush_access_times()?;
    let pins = cache.evictor.pins();
    let mut repos: BTreeMap<(String, String), Vec<TagListing>> = BTreeMap::new();
    for t in cache.index.all_tags()? {
        let digest: Option<Digest> = Some(t.entry.digest.clone());
        let entry = match &digest {
            Some(d) => cache.index.get(Kind::Manifest, d)?,
            None => None,
        };
        let bytes = match &digest {
            Some(d) if entry.is_some() => cached_bytes(
                cache,
                &reachable(cache.storage.content.as_ref(), [d.clone()]),
            )?,
            _ => 0,
        };
        repos
            .entry((t.upstream.clone(), t.repo.clone()))
            .or_default()
            .push(TagListing {
                tag: t.tag,
                digest: t.entry.digest.to_string(),
                media_type: t.entry.media_type,
                checked_at: t.entry.checked_at,
                cached: entry.is_some(),
                last_accessed: entry.map(|e| e.last_accessed),
                bytes,
            });
    }
    Ok(repos
        .into_iter()
        .map(|((upstream, repository), tags)| RepositoryListing {
            pinned: pins.matches(&upstream, &repository),
            upstream,
            repository,
            tags,
        })
        .collect())
}

/// What `DELETE /admin/manifests/...` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tag(String),
    Digest(Digest),
}

/// Why an image target does not parse; each message starts with the input.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?}: expected <upstream>/<repository>:<tag> or @<digest>")]
    NoUpstream(String),
    #[error("{0:?}: expected <upstream>/<repository>:<tag>")]
    Empty(String),
    #[error("{0:?}: name a tag (:<tag>) or a digest (@sha256:...)")]
    NoTarget(String),
    #[error("{0:?}: {1}")]
    Digest(String, DigestError),
    #[error("{0:?}: {1}")]
    Tag(String, TagError),
}

/// Splits `<upstream>/<repo>:<tag>` or `<upstream>/<repo>@<digest>`.
pub fn parse_image_target(s: &str) -> Result<(String, String, Target), TargetError> {
    let (upstream, rest) = s
        .split_once('/')
        .ok_or_else(|| TargetError::NoUpstream(s.to_owned()))?;
    let (repo, target) = if let Some((repo, digest)) = rest.split_once('@') {
        let digest = digest
            .parse()
            .map_err(|e| TargetError::Digest(s.to_owned(), e))?;
        (repo, Target::Digest(digest))
    } else if let Some((repo, tag)) = rest.rsplit_once(':') {
        crate::registry::Tag::parse(tag).map_err(|e| TargetError::Tag(s.to_owned(), e))?;
        (repo, Target::Tag(tag.to_owned()))
    } else {
        return Err(TargetError::NoTarget(s.to_owned()));
    };
    if upstream.is_empty() || repo.is_empty() {
        return Err(TargetError::Empty(s.to_owned()));
    }
    Ok((upstream.to_owned(), repo.to_owned(), target))
}

/// Removes a tag (or every tag of the repository pointing at a digest), the
/// manifest and, for an index, its child manifests (from the store and the
/// in-memory hot set). With `with_blobs`, also the blobs they reference
/// that no other cached tag reaches.
pub fn purge_image(
    cache: &Cache,
    upstream: &str,
    repo: &str,
    target: &Target,
    with_blobs: bool,
) -> Result<PurgeReport, CacheError> {
    let mut report = PurgeReport::default();
    let tags = cache.index.all_tags()?;
    let root: Option<Digest> = match target {
        Target::Tag(tag) => {
            let entry = cache.index.tag(upstream, repo, tag)?;
            cache.storage.tags.delete_tag(upstream, repo, tag)?;
            if cache.index.remove_tag(upstream, repo, tag)? {
                report.tags.push(format!("{upstream}/{repo}:{tag}"));
            }
            entry.map(|e| e.digest)
        }
        Target::Digest(d) => {
            for t in &tags {
                if t.upstream == upstream && t.repo == repo && t.entry.digest == *d {
                    cache.storage.tags.delete_tag(upstream, repo, &t.tag)?;
                    cache.index.remove_tag(upstream, repo, &t.tag)?;
                    report.tags.push(format!("{upstream}/{repo}:{}", t.tag));
                }
            }
            Some(d.clone())
        }
    };
    let Some(root) = root else {
        return Ok(report);
    };
    let content = cache.storage.content.as_ref();
    let doomed = reachable(content, [root]);
    let kept_blobs = if with_blobs {
        let others = tags
            .iter()
            .filter(|t| {
                !report
                    .tags
                    .contains(&format!("{}/{}:{}", t.upstream, t.repo, t.tag))
            })
            .map(|t| t.entry.digest.clone())
            .filter(|d| !doomed.manifests.contains(d));
        reachable(content, others).blobs
    } else {
        HashSet::new()
    };
    let mut victims = Vec::new();
    for d in &doomed.manifests {
        cache.manifests.forget(d);
        victims.push((Kind::Manifest, d.clone(), Reason::Purge));
    }
    if with_blobs {
        for d in doomed.blobs.difference(&kept_blobs) {
            victims.push((Kind::Blob, d.clone(), Reason::Purge));
        }
    }
    // One batch: one flush makes every index removal durable before any
    // file goes, however many objects the image has.
    for removed in cache.evictor.remove_all(victims)? {
        report.bytes_freed += removed.size;
        match removed.kind {
            Kind::Manifest => report.manifests.push(removed.digest.to_string()),
            Kind::Blob => report.blobs.push(removed.digest.to_string()),
        }
    }
    report.manifests.sort();
    report.blobs.sort();
    cache.index.flush()?;
    Ok(report)
}

/// Removes one blob. A client being served from it keeps its open file and
/// finishes; the next request fetches it again.
pub fn purge_blob(cache: &Cache, digest: &Digest) -> Result<PurgeReport, CacheError> {
    let mut report = PurgeReport::default();
    if let Some(size) = cache.evictor.remove(Kind::Blob, digest, Reason::Purge)? {
        report.blobs.push(digest.to_string());
        report.bytes_freed = size;
    }
    cache.index.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::{ContentStoreExt, MemoryStore, Storage, TagStore};
    use crate::metrics::Metrics;
    use std::sync::Arc;

    #[test]
    fn targets_parse() {
        let (u, r, t) = parse_image_target("docker.io/library/alpine:3.20").unwrap();
        assert_eq!((u.as_str(), r.as_str()), ("docker.io", "library/alpine"));
        assert_eq!(t, Target::Tag("3.20".into()));
        let d = Digest::sha256_of(b"x");
        let (u, r, t) = parse_image_target(&format!("registry.internal:5000/app@{d}")).unwrap();
        assert_eq!((u.as_str(), r.as_str()), ("registry.internal:5000", "app"));
        assert_eq!(t, Target::Digest(d));
        assert!(parse_image_target("alpine").is_err());
        assert!(parse_image_target("docker.io/alpine").is_err());
        assert!(parse_image_target("docker.io/alpine@sha256:zz").is_err());
    }

    #[test]
    fn purge_a_tag_with_and_without_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let index = Arc::new(crate::cache::Index::open(dir.path()).unwrap());
        let cache =
            Cache::with_storage(Storage::new(store.clone()), index, Arc::new(Metrics::new()));
        let put = |kind: Kind, bytes: &[u8]| {
            let d = Digest::sha256_of(bytes);
            store.write_whole(kind, &d, bytes).unwrap();
            cache
                .index
                .record(kind, &d, bytes.len() as u64, None)
                .unwrap();
            d
        };
        let shared = put(Kind::Blob, b"shared layer");
        let own = put(Kind::Blob, b"own layer");
        let image = |layers: &[&Digest]| {
            let l: Vec<String> = layers
                .iter()
                .map(|d| format!(r#"{{"digest":"{d}","size":1}}"#))
                .collect();
            format!(r#"{{"layers":[{}]}}"#, l.join(","))
        };
        let a = put(Kind::Manifest, image(&[&shared, &own]).as_bytes());
        let b = put(Kind::Manifest, image(&[&shared]).as_bytes());
        let tag = |name: &str, d: &Digest| {
            let record = crate::cache::TagRecord {
                upstream: "up".into(),
                repo: "repo".into(),
                tag: name.into(),
                entry: crate::cache::TagEntry {
                    digest: d.clone(),
                    media_type: "m".into(),
                    size: 1,
                    checked_at: 0,
                    max_age_ms: None,
                    unshared: false,
                },
            };
            store.put_tag(&record).unwrap();
            cache
                .index
                .set_tag("up", "repo", name, &record.entry)
                .unwrap()
        };
        tag("a", &a);
        tag("b", &b);
        let listing = repositories(&cache).unwrap();
        assert_eq!(listing.len(), 1);
        assert_eq!(listing[0].tags.len(), 2);
        assert!(listing[0].tags.iter().all(|t| t.cached));

        let report = purge_image(&cache, "up", "repo", &Target::Tag("a".into()), true).unwrap();
        assert_eq!(report.tags, vec!["up/repo:a"]);
        let files = store.tag_records().unwrap();
        assert_eq!(files.len(), 1, "the tag file went with the tag");
        assert_eq!(files[0].tag, "b");
        assert_eq!(report.manifests, vec![a.to_string()]);
        assert_eq!(
            report.blobs,
            vec![own.to_string()],
            "the shared layer stays"
        );
        assert!(store.contains(Kind::Blob, &shared).unwrap());
        assert!(!store.contains(Kind::Manifest, &a).unwrap());

        let report = purge_image(&cache, "up", "repo", &Target::Digest(b.clone()), false).unwrap();
        assert_eq!(report.tags, vec!["up/repo:b"]);
        assert!(store.tag_records().unwrap().is_empty());
        assert!(report.blobs.is_empty());
        assert!(store.contains(Kind::Blob, &shared).unwrap());
        assert!(purge_blob(&cache, &shared).unwrap().blobs.len() == 1);
        assert!(purge_blob(&cache, &shared).unwrap().is_empty());
        let s = summary(&cache, &["up".into()]).unwrap();
        assert_eq!(s.blobs.objects, 0);
        assert_eq!(s.tags, 0);
    }
}
