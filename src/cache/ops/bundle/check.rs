//! Import, step two: with the whole bundle read and verified, make sure
//! every image it lists is complete — each image manifest's config and
//! layers are in the bundle or already cached — and work out what to
//! install and which tags to record.

use std::collections::{HashMap, HashSet};

use super::names::{named, Named, Names, Placement};
use super::read::Archive;
use super::{BundleError, ImportReport, ANNOTATION_REF_NAME, OCI_INDEX};
use crate::cache::storage::index::now_millis;
use crate::cache::storage::{ContentStore, ContentStoreExt, Kind, TagEntry, TagRecord};
use crate::registry::{references, sniff_manifest_media_type, Digest, RepoName, Tag};

/// A tag to record, with everything its image is made of (for the links).
pub(super) struct TagToRecord {
    pub record: TagRecord,
    pub closure: Vec<Digest>,
}

/// What to install.
#[derive(Default)]
pub(super) struct Plan {
    /// digest → media type, for the manifests to install.
    pub manifests: HashMap<Digest, Option<String>>,
    pub blobs: HashSet<Digest>,
    pub tags: Vec<TagToRecord>,
    /// The report so far: images, missing platforms, unknown upstreams.
    pub report: ImportReport,
}

pub(super) fn check(
    store: &dyn ContentStore,
    archive: &Archive,
    names: &dyn Names,
    placement: &Placement,
) -> Result<Plan, BundleError> {
    let staged = &archive.staged;
    let manifest_bytes = |d: &Digest| -> Result<Option<Vec<u8>>, BundleError> {
        if let Some(object) = staged.get(d) {
            return Ok(Some(object.read_whole(d)?));
        }
        Ok(store.read_whole(Kind::Manifest, d)?)
    };
    let present = |kind: Kind, d: &Digest| -> Result<bool, BundleError> {
        Ok(staged.contains_key(d) || store.contains(kind, d)?)
    };
    let mut plan = Plan::default();
    let report = &mut plan.report;
    let (manifests, blobs, tags) = (&mut plan.manifests, &mut plan.blobs, &mut plan.tags);
    for root in &archive.index.manifests {
        let digest = root.digest().ok_or_else(|| {
            BundleError::Invalid(format!("index.json: unsupported digest {}", root.digest))
        })?;
        let annotations = root.annotations.clone().unwrap_or_default();
        let mut reference = annotations
            .get(ANNOTATION_REF_NAME)
            .cloned()
            .unwrap_or_else(|| digest.to_string());
        let bytes = manifest_bytes(&digest)?.ok_or_else(|| {
            BundleError::Incomplete(format!(
                "{reference}: manifest {digest} is not in the bundle"
            ))
        })?;
        let refs = references(&bytes)
            .map_err(|e| BundleError::Invalid(format!("{reference}: manifest {digest}: {e}")))?;
        let media_type = root
            .media_type
            .clone()
            .or_else(|| sniff_manifest_media_type(&bytes));
        manifests.insert(digest.clone(), media_type.clone());
        let mut closure = vec![digest.clone()];
        let mut images = Vec::new();
        if refs.manifests.is_empty() {
            images.push((digest.clone(), refs));
        } else {
            for child in &refs.manifests {
                let cd = child.digest().ok_or_else(|| {
                    BundleError::Invalid(format!(
                        "{reference}: unsupported digest {}",
                        child.digest
                    ))
                })?;
                match manifest_bytes(&cd)? {
                    None => report.missing_platforms += 1,
                    Some(b) => {
                        let r = references(&b).map_err(|e| {
                            BundleError::Invalid(format!("{reference}: manifest {cd}: {e}"))
                        })?;
                        manifests.insert(
                            cd.clone(),
                            child
                                .media_type
                                .clone()
                                .or_else(|| sniff_manifest_media_type(&b)),
                        );
                        closure.push(cd.clone());
                        images.push((cd, r));
                    }
                }
            }
        }
        for (image, refs) in images {
            for b in &refs.blobs {
                let d = b.digest().ok_or_else(|| {
                    BundleError::Invalid(format!("{reference}: unsupported digest {}", b.digest))
                })?;
                if !present(Kind::Blob, &d)? {
                    return Err(BundleError::Incomplete(format!(
                        "{reference}: blob {d} of manifest {image} is neither in the bundle nor cached: truncated bundle? nothing was installed"
                    )));
                }
                closure.push(d.clone());
                blobs.insert(d);
            }
        }
        if let Some(Named {
            upstream,
            repo,
            tag,
        }) = named(&annotations, names, placement)?
        {
            RepoName::parse(&repo)
                .map_err(|e| BundleError::Invalid(format!("{reference}: {e}")))?;
            Tag::parse(&tag).map_err(|e| BundleError::Invalid(format!("{reference}: {e}")))?;
            let local = match names.upstream(&upstream) {
                Some(n) => n,
                None => {
                    if !report.unknown_upstreams.contains(&upstream) {
                        report.unknown_upstreams.push(upstream.clone());
                    }
                    upstream.clone()
                }
            };
            // As recorded here: what a client pulls.
            reference = format!("{local}/{repo}:{tag}");
            tags.push(TagToRecord {
                record: TagRecord {
                    upstream: local,
                    repo,
                    tag,
                    entry: TagEntry {
                        digest: digest.clone(),
                        media_type: media_type.clone().unwrap_or_else(|| OCI_INDEX.to_owned()),
                        size: bytes.len() as u64,
                        checked_at: now_millis(),
                        max_age_ms: None,
                        unshared: false,
                    },
                },
                closure: closure.clone(),
            });
        }
        report.images.push(reference);
    }
    Ok(plan)
}
