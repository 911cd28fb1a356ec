//! Operations on the cache as a whole: eviction, verify and the online
//! scrub, purges and summaries, prefetch, bundles for air-gapped sites,
//! tag histories.

pub mod bundle;
pub mod content_view;
pub mod evict;
pub mod manage;
pub mod prefetch;
pub(super) mod reachable;
pub mod scrub;
pub mod tags;
pub mod verify;

use std::io::Read;

use super::{Cache, CacheError};

impl Cache {
    /// Re-hashes every object and checks the index against the store (see
    /// [`verify::verify`]). Blocks: call it on the blocking pool.
    pub fn verify(
        &self,
        repair: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<verify::VerifyReport, CacheError> {
        verify::verify(self.storage.content.as_ref(), &self.index, repair, progress)
    }

    /// Installs a bundle (see [`bundle::import`]). Blocks: call it on the
    /// blocking pool.
    pub fn import<R: Read>(
        &self,
        reader: R,
        names: &dyn bundle::Names,
        placement: &bundle::Placement,
    ) -> Result<bundle::ImportReport, bundle::BundleError> {
        bundle::import(&self.storage, &self.index, reader, names, placement)
    }
}
