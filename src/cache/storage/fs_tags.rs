//! Tags as files: the durable record of where each cached tag pointed when
//! the upstream last confirmed it. The index keeps tags for fast lookup;
//! these files are what a rebuilt index gets them back from, so a site
//! that loses its index (an air gap above all) still pulls by tag.
//!
//! Layout under the cache directory: `tags/<2 hex>/<64 hex>.json`, named by
//! the sha256 of `upstream NUL repository NUL tag` (a configured upstream
//! name may hold characters no file name should), each holding the whole
//! [`TagRecord`]. They are written by rename and not fsynced: a tag is
//! refreshable, and a file a crash left empty is skipped on reading.

use std::fs;
use std::io;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::{FsStore, TagRecord, TagStore};

const TAGS_DIR: &str = "tags";

impl FsStore {
    pub(super) fn tag_path(&self, upstream: &str, repo: &str, tag: &str) -> PathBuf {
        let name = hex::encode(Sha256::digest(format!("{upstream}\0{repo}\0{tag}")));
        self.root()
            .join(TAGS_DIR)
            .join(&name[..2])
            .join(format!("{name}.json"))
    }
}

impl TagStore for FsStore {
    /// Records (or replaces) a tag's file.
    fn put_tag(&self, record: &TagRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        let dest = self.tag_path(&record.upstream, &record.repo, &record.tag);
        self.replace_file(&dest, &bytes)
    }

    /// Removes a tag's file; a tag without one is not an error.
    fn delete_tag(&self, upstream: &str, repo: &str, tag: &str) -> io::Result<()> {
        match fs::remove_file(self.tag_path(upstream, repo, tag)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable tag file. Unreadable ones (a crash mid-write, a
    /// stray file) are skipped with a warning, never deleted.
    fn tag_records(&self) -> io::Result<Vec<TagRecord>> {
        let base = self.root().join(TAGS_DIR);
        let shards = match fs::read_dir(&base) {
            Ok(shards) => shards,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for shard in shards {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let path = entry?.path();
                let parsed = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<TagRecord>(&b).ok());
                match parsed {
                    // Only the file its name says: a copied or renamed file
                    // must not bring a tag back under another name.
                    Some(r) if self.tag_path(&r.upstream, &r.repo, &r.tag) == path => out.push(r),
                    _ => tracing::warn!(path = %path.display(), "unreadable tag file skipped"),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::TagEntry;
    use crate::registry::Digest;

    fn record(tag: &str, digest: &str, checked_at: u64) -> TagRecord {
        TagRecord {
            upstream: "docker.io".into(),
            repo: "library/alpine".into(),
            tag: tag.into(),
            entry: TagEntry {
                digest: Digest::sha256_of(digest.as_bytes()),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                size: 9,
                checked_at,
                max_age_ms: None,
                unshared: false,
            },
        }
    }

    #[test]
    fn tag_files_round_trip_replace_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        assert!(store.tag_records().unwrap().is_empty());
        store.put_tag(&record("3", "sha256:aa", 1)).unwrap();
        store.put_tag(&record("3", "sha256:bb", 2)).unwrap();
        store.put_tag(&record("edge", "sha256:cc", 3)).unwrap();
        let mut got = store.tag_records().unwrap();
        got.sort_by(|a, b| a.tag.cmp(&b.tag));
        assert_eq!(
            got,
            vec![record("3", "sha256:bb", 2), record("edge", "sha256:cc", 3)]
        );
        store
            .delete_tag("docker.io", "library/alpine", "3")
            .unwrap();
        store
            .delete_tag("docker.io", "library/alpine", "3")
            .unwrap();
        assert_eq!(
            store.tag_records().unwrap(),
            vec![record("edge", "sha256:cc", 3)]
        );
    }

    #[test]
    fn torn_and_misplaced_tag_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.put_tag(&record("good", "sha256:aa", 1)).unwrap();
        let torn = store.tag_path("docker.io", "library/alpine", "torn");
        fs::create_dir_all(torn.parent().unwrap()).unwrap();
        fs::write(&torn, b"").unwrap();
        // A valid record under a name that is not its own.
        let moved = store.tag_path("docker.io", "library/alpine", "other");
        fs::create_dir_all(moved.parent().unwrap()).unwrap();
        fs::write(
            &moved,
            serde_json::to_vec(&record("x", "sha256:ff", 1)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            store.tag_records().unwrap(),
            vec![record("good", "sha256:aa", 1)]
        );
    }
}
