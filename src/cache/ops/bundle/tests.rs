use std::sync::Arc;

use super::*;
use crate::cache::storage::{
    ContentStore, ContentStoreExt, FsStore, MemoryStore, Storage, TagStore,
};

/// One cache: the in-memory store, or the filesystem one where a test
/// looks at `tmp/`. The index is sled in a temporary directory either way.
struct Side {
    dir: tempfile::TempDir,
    memory: Option<Arc<MemoryStore>>,
    storage: Storage,
    index: Index,
}

impl Side {
    fn content(&self) -> &dyn ContentStore {
        self.storage.content.as_ref()
    }

    fn tags(&self) -> &dyn TagStore {
        self.storage.tags.as_ref()
    }

    fn has(&self, kind: Kind, d: &Digest) -> bool {
        self.content().contains(kind, d).unwrap()
    }

    /// Nothing left staged on disk (only meaningful for the fs side).
    fn tmp_is_empty(&self) -> bool {
        self.memory.is_some()
            || crate::cache::storage::fs::names_in(&self.dir.path().join("tmp")).is_empty()
    }
}

fn side() -> Side {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let index = Index::open(&dir.path().join("index")).unwrap();
    Side {
        dir,
        memory: Some(store.clone()),
        storage: Storage::new(store),
        index,
    }
}

fn fs_side() -> Side {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path()).unwrap());
    let index = Index::open(&dir.path().join("index")).unwrap();
    Side {
        dir,
        memory: None,
        storage: Storage::new(store),
        index,
    }
}

fn put(s: &Side, kind: Kind, bytes: &[u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    s.content().write_whole(kind, &d, bytes).unwrap();
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
    let plan = plan_export(s.content(), std::slice::from_ref(image)).unwrap();
    write_bundle(s.content(), &plan, Vec::new(), &mut |_| {}).unwrap()
}

/// Every upstream configured under the name the bundle gives it.
struct SameName;

impl Names for SameName {
    fn upstream(&self, name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    fn repository(
        &self,
        _upstream: &str,
        repo: crate::registry::RepoName,
    ) -> crate::registry::RepoName {
        repo
    }
}

#[test]
fn round_trip_installs_content_and_tags() {
    let (src, image, digests) = source();
    let tar = bundle(&src, &image);
    for dst in [side(), fs_side()] {
        let report = import(
            &dst.storage,
            &dst.index,
            tar.as_slice(),
            &SameName,
            &Placement::default(),
        )
        .unwrap();
        assert_eq!(report.images, vec!["local/team/app:v1"]);
        assert_eq!(
            (report.manifests_added, report.blobs_added, report.tags),
            (1, 2, 1)
        );
        assert!(dst.has(Kind::Manifest, &digests[0]));
        assert!(dst.has(Kind::Blob, &digests[2]));
        let tag = dst.index.tag("local", "team/app", "v1").unwrap().unwrap();
        assert_eq!(tag.digest, digests[0]);
        assert_eq!(tag.media_type, "application/vnd.oci.image.manifest.v1+json");
        // Recorded as a tag file too, so a lost index keeps it.
        let files = dst.tags().tag_records().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].entry, tag);
        // tmp/ holds nothing afterwards.
        assert!(dst.tmp_is_empty());
        // Importing again is harmless.
        let again = import(
            &dst.storage,
            &dst.index,
            tar.as_slice(),
            &SameName,
            &Placement::default(),
        )
        .unwrap();
        assert_eq!(again.already_cached, 3);
    }
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
    for dst in [side(), fs_side()] {
        let e = import(
            &dst.storage,
            &dst.index,
            flipped.as_slice(),
            &SameName,
            &Placement::default(),
        )
        .unwrap_err();
        assert!(matches!(e, BundleError::Corrupt(_)), "{e}");
        // Cut short mid-layer, and at a header boundary.
        for cut in [offset as usize + 5000, offset as usize - 512] {
            let e = import(
                &dst.storage,
                &dst.index,
                &tar[..cut],
                &SameName,
                &Placement::default(),
            )
            .unwrap_err();
            assert!(e.is_bad_bundle(), "{e}");
        }
        for d in &digests {
            assert!(!dst.has(Kind::Blob, d) && !dst.has(Kind::Manifest, d));
        }
        assert!(dst.index.all_tags().unwrap().is_empty());
        assert!(dst.tags().tag_records().unwrap().is_empty());
        assert!(dst.tmp_is_empty());
    }
}

#[test]
fn exporting_uncached_or_corrupt_content_fails() {
    let (src, image, digests) = source();
    let memory = src.memory.as_ref().unwrap();
    memory.corrupt(Kind::Blob, &digests[2], b"garbage");
    let plan = plan_export(src.content(), std::slice::from_ref(&image)).unwrap();
    let e = write_bundle(src.content(), &plan, Vec::new(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, BundleError::Corrupt(_)), "{e}");
    memory.remove(Kind::Blob, &digests[2]).unwrap();
    let e = plan_export(src.content(), &[image]).unwrap_err();
    assert!(matches!(e, BundleError::NotCached(_)), "{e}");
}
