//! Export: what goes into a bundle, worked out from the store alone, and
//! the tar written from it. Each object is streamed from the store and
//! hashed on the way, so a corrupt cache file fails the export instead of
//! producing a bad bundle.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};

use super::{
    BundleError, ExportImage, ExportPlan, HashingReader, ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME, ANNOTATION_REPOSITORY, ANNOTATION_TAG, ANNOTATION_UPSTREAM, OCI_INDEX,
    OCI_LAYOUT,
};
use crate::cache::storage::{ContentStore, ContentStoreExt, Kind, ObjectReader};
use crate::registry::{references, sniff_manifest_media_type, Descriptor, Digest};

fn read_manifest(
    store: &dyn ContentStore,
    digest: &Digest,
) -> Result<Option<Vec<u8>>, BundleError> {
    Ok(store.read_whole(Kind::Manifest, digest)?)
}

fn blob_size(store: &dyn ContentStore, digest: &Digest) -> Option<u64> {
    store.stat(Kind::Blob, digest).ok().flatten()
}

/// Works out what to write, from the files in the store alone. An image
/// whose manifest, config or a layer is not cached fails the plan; an
/// index's platform manifests that are not (completely) cached are left out
/// and listed in `skipped`.
pub fn plan_export(
    store: &dyn ContentStore,
    images: &[ExportImage],
) -> Result<ExportPlan, BundleError> {
    let mut plan = ExportPlan::default();
    let mut seen: HashSet<(Kind, Digest)> = HashSet::new();
    let mut add = |plan: &mut ExportPlan, kind: Kind, digest: &Digest, size: u64| {
        if seen.insert((kind, digest.clone())) {
            plan.files.push((kind, digest.clone(), size));
        }
    };
    for image in images {
        let reference = image.reference();
        let bytes = read_manifest(store, &image.digest)?.ok_or_else(|| {
            BundleError::NotCached(format!(
                "{reference}: manifest {} is not cached (run `regcache prefetch` first)",
                image.digest
            ))
        })?;
        let media_type = image
            .media_type
            .clone()
            .or_else(|| sniff_manifest_media_type(&bytes))
            .unwrap_or_else(|| OCI_INDEX.to_owned());
        let refs = references(&bytes)
            .map_err(|e| BundleError::Corrupt(format!("{reference}: manifest is not JSON: {e}")))?;
        let mut parts: Vec<(Kind, Digest, u64)> = Vec::new();
        if refs.manifests.is_empty() {
            parts.extend(image_parts(store, &refs.blobs).map_err(|missing| {
                BundleError::NotCached(format!(
                    "{reference}: {missing} is not cached (run `regcache prefetch` first)"
                ))
            })?);
        } else {
            for child in &refs.manifests {
                let Some(cd) = child.digest() else {
                    continue;
                };
                let label = child
                    .platform
                    .as_ref()
                    .map(|p| p.label())
                    .unwrap_or_else(|| "unknown platform".into());
                let child_parts = read_manifest(store, &cd)?
                    .ok_or_else(|| format!("manifest {cd} is not cached"))
                    .and_then(|b| {
                        let r = references(&b).map_err(|e| format!("manifest {cd}: {e}"))?;
                        if !r.manifests.is_empty() {
                            return Err(format!("manifest {cd} is a nested index"));
                        }
                        let mut p = vec![(Kind::Manifest, cd.clone(), b.len() as u64)];
                        p.extend(image_parts(store, &r.blobs)?);
                        Ok(p)
                    });
                match child_parts {
                    Ok(p) => parts.extend(p),
                    Err(why) => plan.skipped.push(format!("{reference} ({label}): {why}")),
                }
            }
        }
        add(&mut plan, Kind::Manifest, &image.digest, bytes.len() as u64);
        for (kind, d, size) in parts {
            add(&mut plan, kind, &d, size);
        }
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_REF_NAME.to_owned(), reference.clone());
        annotations.insert(ANNOTATION_CONTAINERD_NAME.to_owned(), reference.clone());
        annotations.insert(ANNOTATION_UPSTREAM.to_owned(), image.upstream.clone());
        annotations.insert(ANNOTATION_REPOSITORY.to_owned(), image.repository.clone());
        if let Some(t) = &image.tag {
            annotations.insert(ANNOTATION_TAG.to_owned(), t.clone());
        }
        plan.index.push(Descriptor {
            media_type: Some(media_type),
            digest: image.digest.to_string(),
            size: bytes.len() as u64,
            platform: None,
            annotations: Some(annotations),
        });
    }
    Ok(plan)
}

/// Config and layers of an image manifest, all of which must be cached;
/// the error names the first that is not.
fn image_parts(
    store: &dyn ContentStore,
    blobs: &[Descriptor],
) -> Result<Vec<(Kind, Digest, u64)>, String> {
    blobs
        .iter()
        .map(|b| {
            let d = b
                .digest()
                .ok_or_else(|| format!("blob {} has an unsupported digest", b.digest))?;
            let size = blob_size(store, &d).ok_or_else(|| format!("blob {d}"))?;
            Ok((Kind::Blob, d, size))
        })
        .collect()
}

fn header(path: &str, size: u64) -> Result<tar::Header, BundleError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    // A fixed time: the same content gives the same bundle.
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Writes the bundle. `progress` is told the bytes of each file written.
pub fn write_bundle<W: Write>(
    store: &dyn ContentStore,
    plan: &ExportPlan,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<W, BundleError> {
    let mut tar = tar::Builder::new(out);
    tar.append(&header("oci-layout", OCI_LAYOUT.len() as u64)?, OCI_LAYOUT)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": plan.index,
    });
    let index = serde_json::to_vec_pretty(&index)
        .map_err(|e| BundleError::Invalid(format!("encoding index.json: {e}")))?;
    tar.append(&header("index.json", index.len() as u64)?, index.as_slice())?;
    for (kind, digest, _) in &plan.files {
        let vanished = |why: String| {
            BundleError::NotCached(format!(
                "{} {digest} vanished from the cache during the export: {why}",
                kind.label()
            ))
        };
        let object = store
            .open(*kind, digest)
            .map_err(|e| vanished(e.to_string()))?
            .ok_or_else(|| vanished("not found".into()))?;
        // The open object's size, not the planned one: the header must
        // match what is streamed, and the hash below catches any difference.
        let size = object.size;
        let mut reader = HashingReader::new(ObjectReader::new(object).take(size));
        let path = format!("blobs/sha256/{}", digest.hex());
        tar.append(&header(&path, size)?, &mut reader)?;
        let actual = std::mem::take(&mut reader.hasher).finish();
        if reader.count != size || actual != *digest {
            return Err(BundleError::Corrupt(format!(
                "the cached {} {digest} is corrupt (it hashes to {actual}); run `regcache verify --repair`",
                kind.label()
            )));
        }
        progress(size);
    }
    Ok(tar.into_inner()?)
}
