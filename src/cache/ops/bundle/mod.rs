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
//! Import runs in three steps, one file each. `read` takes the tar front to
//! back, streams each blob into a staged write while hashing it, and
//! rejects the whole bundle at the first entry whose bytes do not match its
//! name. `check` then makes sure every image it lists is complete (each
//! image manifest's config and layers are in the bundle or already cached).
//! Only then does `install` commit the staged writes, index them and record
//! the tags. A truncated or tampered bundle therefore installs nothing: the
//! staged writes are dropped, which aborts them.

mod check;
mod export;
mod install;
mod names;
mod read;

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::cache::storage::index::{Index, IndexError};
use crate::cache::storage::{Kind, Storage};
use crate::registry::{Descriptor, Digest, Sha256Hasher};

pub use export::{plan_export, write_bundle};
pub use names::{Names, Placement};

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
    Index(#[from] IndexError),
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

/// Hashes what passes through a reader.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256Hasher,
    count: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256Hasher::default(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Installs a bundle read from `reader` into the cache (see the module
/// docs). `names` maps the upstreams a bundle names to this mirror's;
/// `placement` places references that name no registry or repository.
/// Blocks: call it on the blocking pool.
pub fn import<R: Read>(
    storage: &Storage,
    index: &Index,
    reader: R,
    names: &dyn Names,
    placement: &Placement,
) -> Result<ImportReport, BundleError> {
    let archive = read::read(storage.content.as_ref(), reader)?;
    let plan = check::check(storage.content.as_ref(), &archive, names, placement)?;
    install::install(storage, index, archive, plan)
}

#[cfg(test)]
mod tests;
