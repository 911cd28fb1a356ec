//! Bundles for air-gapped sites: an OCI image layout in a tar file.
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one descriptor per exported image, annotated
//!                            with where it came from (see ANNOTATION_*)
//! blobs/sha256/<hex>         every manifest, config and layer, once
//! ```
//!
//! Export streams each file from the store into the tar (hashing it on the
//! way, so a corrupt cache file fails the export instead of producing a bad
//! bundle); nothing is held in memory but manifests (at most 4 MiB each).
//!
//! Import reads the tar front to back, streams each blob into a staging
//! directory under `tmp/` while hashing it, and rejects the whole bundle at
//! the first entry whose bytes do not match its name. Only when the whole
//! archive has been read and every image it lists is complete (each image
//! manifest's config and layers are in the bundle or already cached) are
//! the files renamed into the store, indexed, and the tags recorded. A
//! truncated or tampered bundle therefore installs nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::graph::{self, Descriptor};
use super::index::{now_millis, Index, TagEntry, TagRecord};
use super::manifests::MAX_MANIFEST_SIZE;
use super::store::{FsStore, Kind};
use crate::registry::{sniff_manifest_media_type, Digest, RepoName, Sha256Hasher, Tag};

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's `ctr images import` names images by this one.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_UPSTREAM: &str = "io.regcache.upstream";
pub const ANNOTATION_REPOSITORY: &str = "io.regcache.repository";
pub const ANNOTATION_TAG: &str = "io.regcache.tag";

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("index: {0}")]
    Index(#[from] super::index::IndexError),
    /// Content that does not match its digest: in the cache on export, in
    /// the bundle on import.
    #[error("{0}")]
    Corrupt(String),
    /// The bundle lacks something its images need, or is cut short.
    #[error("{0}")]
    Incomplete(String),
    /// Not a bundle, or not one regcache can read.
    #[error("{0}")]
    Invalid(String),
    /// An image to export is not (completely) in the cache.
    #[error("{0}")]
    NotCached(String),
}

impl BundleError {
    /// Whether the bundle itself is at fault (as opposed to the disk).
    pub fn is_bad_bundle(&self) -> bool {
        matches!(
            self,
            BundleError::Corrupt(_) | BundleError::Incomplete(_) | BundleError::Invalid(_)
        )
    }
}

/// One image to export: a cached manifest and, if it came by tag, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportImage {
    pub upstream: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Digest,
    /// Known from the tag record; sniffed from the bytes otherwise.
    pub media_type: Option<String>,
}

impl ExportImage {
    /// `upstream/repository:tag` or `upstream/repository@digest`.
    pub fn reference(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.upstream, self.repository),
            None => format!("{}/{}@{}", self.upstream, self.repository, self.digest),
        }
    }
}

/// What goes into a bundle: the index and every file, deduplicated.
#[derive(Debug, Default)]
pub struct ExportPlan {
    pub index: Vec<Descriptor>,
    /// (kind, digest, size) in the order they are written.
    pub files: Vec<(Kind, Digest, u64)>,
    /// Platform manifests of an index that are not cached and left out.
    pub skipped: Vec<String>,
}

impl ExportPlan {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, _, s)| s).sum()
    }
}

fn read_manifest(store: &FsStore, digest: &Digest) -> Result<Option<Vec<u8>>, BundleError> {
    Ok(store.read_whole(Kind::Manifest, digest)?)
}

fn blob_size(store: &FsStore, digest: &Digest) -> Option<u64> {
    fs::metadata(store.path(Kind::Blob, digest))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Works out what to write, from the files in the store alone. An image
/// whose manifest, config or a layer is not cached fails the plan; an
/// index's platform manifests that are not (completely) cached are left out
/// and listed in `skipped`.
pub fn plan_export(store: &FsStore, images: &[ExportImage]) -> Result<ExportPlan, BundleError> {
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
        let refs = graph::references(&bytes)
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
                        let r = graph::references(&b).map_err(|e| format!("manifest {cd}: {e}"))?;
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

/// Config and layers of an image manifest, all of which must be cached.
fn image_parts(store: &FsStore, blobs: &[Descriptor]) -> Result<Vec<(Kind, Digest, u64)>, String> {
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

/// Hashes what passes through a reader.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256Hasher,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
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
    store: &FsStore,
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
        let file = File::open(store.path(*kind, digest)).map_err(|e| {
            BundleError::NotCached(format!(
                "{} {digest} vanished from the cache during the export: {e}",
                kind.label()
            ))
        })?;
        // The open file's size, not the planned one: the header must match
        // what is streamed, and the hash below catches any difference.
        let size = file.metadata()?.len();
        let mut reader = HashingReader {
            inner: file.take(size),
            hasher: Sha256Hasher::default(),
            count: 0,
        };
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

/// What an import installed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// References of the images in the bundle.
    pub images: Vec<String>,
    pub tags: u64,
    pub manifests_added: u64,
    pub blobs_added: u64,
    /// Files the cache already had.
    pub already_cached: u64,
    pub bytes_added: u64,
    /// Platform manifests an index lists that the bundle does not carry.
    pub missing_platforms: u64,
    /// Tags recorded for an upstream this mirror does not configure.
    pub unknown_upstreams: Vec<String>,
}

/// Removes the staging directory however the import ends.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// Reads a small entry whole, refusing more than `limit` bytes.
fn read_small(entry: &mut impl Read, limit: usize, what: &str) -> Result<Vec<u8>, BundleError> {
    let mut buf = Vec::new();
    entry.take(limit as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > limit {
        return Err(BundleError::Invalid(format!(
            "{what} is larger than {limit} bytes"
        )));
    }
    Ok(buf)
}

/// A tar read error means the bundle is cut short or mangled.
fn tar_error(e: io::Error) -> BundleError {
    BundleError::Incomplete(format!("the bundle is truncated or not a tar archive: {e}"))
}

/// Installs a bundle read from `reader` into the cache (see the module
/// docs). `upstream_name` maps a recorded upstream to this mirror's name
/// for it (its name or an alias), or None when it is not configured.
pub fn import<R: Read>(
    store: &FsStore,
    index: &Index,
    reader: R,
    upstream_name: &dyn Fn(&str) -> Option<String>,
) -> Result<ImportReport, BundleError> {
    let staging = Staging(store.create_staging_dir("import")?);
    let mut staged: HashMap<Digest, (PathBuf, u64)> = HashMap::new();
    let mut layout = None;
    let mut layout_index = None;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let path = entry
            .path()
            .map_err(tar_error)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./").to_owned();
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(BundleError::Invalid(format!(
                    "{path}: unexpected entry type {other:?}"
                )))
            }
        }
        if path == "oci-layout" {
            layout = Some(
                read_small(&mut entry, 4096, "oci-layout").map_err(|e| match e {
                    BundleError::Io(io) => tar_error(io),
                    e => e,
                })?,
            );
        } else if path == "index.json" {
            layout_index = Some(
                read_small(&mut entry, MAX_MANIFEST_SIZE, "index.json").map_err(|e| match e {
                    BundleError::Io(io) => tar_error(io),
                    e => e,
                })?,
            );
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = Digest::from_hex(hex)
                .map_err(|_| BundleError::Invalid(format!("{path}: not a sha256 digest")))?;
            let dest = staging.0.join(digest.hex());
            let mut file = File::create(&dest)?;
            let mut hashing = HashingReader {
                inner: &mut entry,
                hasher: Sha256Hasher::default(),
                count: 0,
            };
            io::copy(&mut hashing, &mut file).map_err(tar_error)?;
            let expected = hashing.inner.header().size().map_err(tar_error)?;
            let (count, actual) = (hashing.count, hashing.hasher.finish());
            if count != expected {
                return Err(BundleError::Incomplete(format!("{path}: cut short")));
            }
            if actual != digest {
                return Err(BundleError::Corrupt(format!(
                    "{path}: the content hashes to {actual}, not {digest}: the bundle is corrupt or was tampered with; nothing was installed"
                )));
            }
            staged.insert(digest, (dest, count));
        } else {
            tracing::warn!(%path, "ignoring an unexpected file in the bundle");
        }
    }
    let layout = layout.ok_or_else(|| {
        BundleError::Invalid("no oci-layout file: not an OCI image layout".into())
    })?;
    let layout: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| BundleError::Invalid(format!("oci-layout: {e}")))?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(BundleError::Invalid(
            "oci-layout has no imageLayoutVersion".into(),
        ));
    }
    let layout_index = layout_index
        .ok_or_else(|| BundleError::Incomplete("no index.json: truncated bundle?".into()))?;
    let layout_index: LayoutIndex = serde_json::from_slice(&layout_index)
        .map_err(|e| BundleError::Invalid(format!("index.json: {e}")))?;

    // Everything is read and verified; now check the images are complete.
    let manifest_bytes = |d: &Digest| -> Result<Option<Vec<u8>>, BundleError> {
        if let Some((path, size)) = staged.get(d) {
            if *size as usize > MAX_MANIFEST_SIZE {
                return Err(BundleError::Invalid(format!(
                    "manifest {d} is larger than 4 MiB"
                )));
            }
            return Ok(Some(fs::read(path)?));
        }
        Ok(store.read_whole(Kind::Manifest, d)?)
    };
    let present = |kind: Kind, d: &Digest| staged.contains_key(d) || store.contains(kind, d);
    let mut report = ImportReport::default();
    // digest → media type, for the manifests to install.
    let mut manifests: HashMap<Digest, Option<String>> = HashMap::new();
    let mut blobs: HashSet<Digest> = HashSet::new();
    // (upstream, repository, tag, entry, everything the image is made of).
    let mut tags: Vec<(String, String, String, TagEntry, Vec<Digest>)> = Vec::new();
    for root in &layout_index.manifests {
        let digest = root.digest().ok_or_else(|| {
            BundleError::Invalid(format!("index.json: unsupported digest {}", root.digest))
        })?;
        let annotations = root.annotations.clone().unwrap_or_default();
        let reference = annotations
            .get(ANNOTATION_REF_NAME)
            .cloned()
            .unwrap_or_else(|| digest.to_string());
        let bytes = manifest_bytes(&digest)?.ok_or_else(|| {
            BundleError::Incomplete(format!(
                "{reference}: manifest {digest} is not in the bundle"
            ))
        })?;
        let refs = graph::references(&bytes)
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
                        let r = graph::references(&b).map_err(|e| {
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
                if !present(Kind::Blob, &d) {
                    return Err(BundleError::Incomplete(format!(
                        "{reference}: blob {d} of manifest {image} is neither in the bundle nor cached: truncated bundle? nothing was installed"
                    )));
                }
                closure.push(d.clone());
                blobs.insert(d);
            }
        }
        if let (Some(upstream), Some(repo), Some(tag)) = (
            annotations.get(ANNOTATION_UPSTREAM),
            annotations.get(ANNOTATION_REPOSITORY),
            annotations.get(ANNOTATION_TAG),
        ) {
            RepoName::parse(repo).map_err(|e| BundleError::Invalid(format!("{reference}: {e}")))?;
            Tag::parse(tag).map_err(|e| BundleError::Invalid(format!("{reference}: {e}")))?;
            let local = match upstream_name(upstream) {
                Some(n) => n,
                None => {
                    if !report.unknown_upstreams.contains(upstream) {
                        report.unknown_upstreams.push(upstream.clone());
                    }
                    upstream.clone()
                }
            };
            tags.push((
                local,
                repo.clone(),
                tag.clone(),
                TagEntry {
                    digest: digest.to_string(),
                    media_type: media_type.clone().unwrap_or_else(|| OCI_INDEX.to_owned()),
                    size: bytes.len() as u64,
                    checked_at: now_millis(),
                },
                closure.clone(),
            ));
        }
        report.images.push(reference);
    }

    // Install: files first (each renamed into place, then indexed), tags last.
    let mut install =
        |kind: Kind, d: &Digest, media_type: Option<&str>| -> Result<(), BundleError> {
            if store.contains(kind, d) {
                report.already_cached += 1;
                if index.get(kind, d)?.is_none() {
                    let size = fs::metadata(store.path(kind, d))?.len();
                    index.record(kind, d, size, media_type)?;
                }
                return Ok(());
            }
            let Some((path, size)) = staged.get(d) else {
                return Ok(());
            };
            store.commit_path(path, kind, d)?;
            index.record(kind, d, *size, media_type)?;
            report.bytes_added += size;
            match kind {
                Kind::Blob => report.blobs_added += 1,
                Kind::Manifest => report.manifests_added += 1,
            }
            Ok(())
        };
    for d in &blobs {
        install(Kind::Blob, d, None)?;
    }
    for (d, media_type) in &manifests {
        install(Kind::Manifest, d, media_type.as_deref())?;
    }
    for (upstream, repo, tag, entry, closure) in &tags {
        store.put_tag(&TagRecord {
            upstream: upstream.clone(),
            repo: repo.clone(),
            tag: tag.clone(),
            entry: entry.clone(),
        })?;
        index.set_tag(upstream, repo, tag, entry)?;
        // The bundle vouches that this repository holds the image, as a
        // pull through it would have: private-content checks need no
        // upstream (there is none in an air gap).
        for d in closure {
            index.link(upstream, repo, d)?;
        }
        report.tags += 1;
    }
    index.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Side {
        _dir: tempfile::TempDir,
        store: FsStore,
        index: Index,
    }

    fn side() -> Side {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        Side {
            _dir: dir,
            store,
            index,
        }
    }

    fn put(s: &Side, kind: Kind, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        s.store.write_whole(kind, &d, bytes).unwrap();
        s.index.record(kind, &d, bytes.len() as u64, None).unwrap();
        d
    }

    /// A cache with one tagged image (config + a 300 KiB layer).
    fn source() -> (Side, ExportImage, Vec<Digest>) {
        let s = side();
        let layer: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let layer = put(&s, Kind::Blob, &layer);
        let config = put(&s, Kind::Blob, br#"{"architecture":"amd64","os":"linux"}"#);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{config}","size":1}},"layers":[{{"digest":"{layer}","size":1}}]}}"#
        );
        let m = put(&s, Kind::Manifest, manifest.as_bytes());
        let image = ExportImage {
            upstream: "local".into(),
            repository: "team/app".into(),
            tag: Some("v1".into()),
            digest: m.clone(),
            media_type: None,
        };
        (s, image, vec![m, config, layer])
    }

    fn bundle(s: &Side, image: &ExportImage) -> Vec<u8> {
        let plan = plan_export(&s.store, std::slice::from_ref(image)).unwrap();
        write_bundle(&s.store, &plan, Vec::new(), &mut |_| {}).unwrap()
    }

    fn same_name(n: &str) -> Option<String> {
        Some(n.to_owned())
    }

    #[test]
    fn round_trip_installs_content_and_tags() {
        let (src, image, digests) = source();
        let tar = bundle(&src, &image);
        let dst = side();
        let report = import(&dst.store, &dst.index, tar.as_slice(), &same_name).unwrap();
        assert_eq!(report.images, vec!["local/team/app:v1"]);
        assert_eq!(
            (report.manifests_added, report.blobs_added, report.tags),
            (1, 2, 1)
        );
        assert!(dst.store.contains(Kind::Manifest, &digests[0]));
        assert!(dst.store.contains(Kind::Blob, &digests[2]));
        let tag = dst.index.tag("local", "team/app", "v1").unwrap().unwrap();
        assert_eq!(tag.digest, digests[0].to_string());
        assert_eq!(tag.media_type, "application/vnd.oci.image.manifest.v1+json");
        // Recorded as a tag file too, so a lost index keeps it.
        let files = dst.store.tag_records().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].entry, tag);
        // tmp/ holds nothing afterwards.
        assert_eq!(
            fs::read_dir(dst.store.root().join("tmp")).unwrap().count(),
            0
        );
        // Importing again is harmless.
        let again = import(&dst.store, &dst.index, tar.as_slice(), &same_name).unwrap();
        assert_eq!(again.already_cached, 3);
    }

    #[test]
    fn a_flipped_byte_or_a_cut_installs_nothing() {
        let (src, image, digests) = source();
        let tar = bundle(&src, &image);
        // Flip a byte in the middle of the layer's data.
        let mut flipped = tar.clone();
        let mut archive = tar::Archive::new(tar.as_slice());
        let offset = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| {
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(digests[2].hex())
            })
            .map(|e| e.raw_file_position())
            .unwrap();
        flipped[offset as usize + 1000] ^= 0x01;
        let dst = side();
        let e = import(&dst.store, &dst.index, flipped.as_slice(), &same_name).unwrap_err();
        assert!(matches!(e, BundleError::Corrupt(_)), "{e}");
        // Cut short mid-layer, and at a header boundary.
        for cut in [offset as usize + 5000, offset as usize - 512] {
            let e = import(&dst.store, &dst.index, &tar[..cut], &same_name).unwrap_err();
            assert!(e.is_bad_bundle(), "{e}");
        }
        for d in &digests {
            assert!(!dst.store.contains(Kind::Blob, d) && !dst.store.contains(Kind::Manifest, d));
        }
        assert!(dst.index.all_tags().unwrap().is_empty());
        assert!(dst.store.tag_records().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dst.store.root().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn exporting_uncached_or_corrupt_content_fails() {
        let (src, image, digests) = source();
        fs::write(src.store.path(Kind::Blob, &digests[2]), b"garbage").unwrap();
        let plan = plan_export(&src.store, std::slice::from_ref(&image)).unwrap();
        let e = write_bundle(&src.store, &plan, Vec::new(), &mut |_| {}).unwrap_err();
        assert!(matches!(e, BundleError::Corrupt(_)), "{e}");
        src.store.remove(Kind::Blob, &digests[2]).unwrap();
        let e = plan_export(&src.store, &[image]).unwrap_err();
        assert!(matches!(e, BundleError::NotCached(_)), "{e}");
    }
}
