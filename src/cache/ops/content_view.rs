//! What the supply-chain gate (`policy::gate`) reads of the cache without
//! going through a request: the cached manifests (to know what references
//! what), one cached manifest's bytes, and its own small records in the
//! index (admission verdicts, kept across restarts).

use std::sync::Arc;

use crate::cache::storage::index::Index;
use crate::cache::storage::{ContentStore, ContentStoreExt, Kind};
use crate::cache::{Cache, CacheError, Manifest};
use crate::registry::Digest;

/// A handle on the cached manifests for a blocking walk (the gate's
/// reference graph); cheap to clone, `'static`, for `spawn_blocking`.
#[derive(Clone)]
pub struct ManifestSource {
    content: Arc<dyn ContentStore>,
    index: Arc<Index>,
}

impl ManifestSource {
    /// Every cached manifest's digest, from the index. Blocks.
    pub fn digests(&self) -> Result<Vec<Digest>, CacheError> {
        Ok(self
            .index
            .entries(Kind::Manifest)?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    /// A cached manifest's bytes (`None` when it is not here). Blocks.
    pub fn read(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.content.read_whole(Kind::Manifest, digest)?)
    }
}

impl Cache {
    pub fn manifest_source(&self) -> ManifestSource {
        ManifestSource {
            content: self.storage.content.clone(),
            index: self.index.clone(),
        }
    }

    /// How many manifests the index holds: the gate rereads what changed
    /// when this moves.
    pub fn manifest_count(&self) -> u64 {
        self.index.totals(Kind::Manifest).objects
    }

    /// A cached manifest, from memory or disk, without asking upstream.
    pub async fn local_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, CacheError> {
        self.manifests.local(digest).await
    }

    /// One of the gate's records in the index (`None` when absent).
    pub fn policy_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        Ok(self.index.note(&format!("policy:{key}"))?)
    }

    pub fn set_policy_record<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), CacheError> {
        Ok(self.index.set_note(&format!("policy:{key}"), value)?)
    }
}
