//! What is reachable from some manifests through the manifests in the
//! store: used to keep pinned images whole, to purge an image without what
//! others share, and to relink restored tags.

use std::collections::{HashSet, VecDeque};

use crate::cache::storage::{ContentStore, ContentStoreExt, Kind};
use crate::registry::{references, Descriptor, Digest};

/// Everything reachable from some manifests.
#[derive(Debug, Default)]
pub struct Reachable {
    pub manifests: HashSet<Digest>,
    pub blobs: HashSet<Digest>,
}

/// Walks from `roots` through the manifests in the store. A manifest that
/// is not cached is still listed (it is referenced) but not followed.
pub fn reachable(store: &dyn ContentStore, roots: impl IntoIterator<Item = Digest>) -> Reachable {
    let mut out = Reachable::default();
    let mut queue: VecDeque<Digest> = roots.into_iter().collect();
    while let Some(digest) = queue.pop_front() {
        if !out.manifests.insert(digest.clone()) {
            continue;
        }
        let Ok(Some(bytes)) = store.read_whole(Kind::Manifest, &digest) else {
            continue;
        };
        let Ok(refs) = references(&bytes) else {
            continue;
        };
        queue.extend(refs.manifests.iter().filter_map(Descriptor::digest));
        out.blobs
            .extend(refs.blobs.iter().filter_map(Descriptor::digest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::MemoryStore;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn reachable_follows_cached_manifests_only() {
        let store = MemoryStore::new();
        let image = format!(
            r#"{{"config":{{"digest":"{}","size":1}},"layers":[{{"digest":"{}","size":1}}]}}"#,
            d(3),
            d(4)
        );
        let image_digest = Digest::sha256_of(image.as_bytes());
        store
            .write_whole(Kind::Manifest, &image_digest, image.as_bytes())
            .unwrap();
        let index = format!(
            r#"{{"manifests":[{{"digest":"{image_digest}","size":1}},{{"digest":"{}","size":1}}]}}"#,
            d(9)
        );
        let index_digest = Digest::sha256_of(index.as_bytes());
        store
            .write_whole(Kind::Manifest, &index_digest, index.as_bytes())
            .unwrap();
        let r = reachable(&store, [index_digest.clone()]);
        assert_eq!(
            r.manifests.len(),
            3,
            "the index, the image, the uncached child"
        );
        assert_eq!(r.blobs.len(), 2);
        assert!(r.blobs.contains(&d(4).parse().unwrap()));
    }
}
