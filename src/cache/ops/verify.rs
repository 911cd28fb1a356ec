//! `regcache verify`: re-hash every blob and manifest on disk and check the
//! index against the files. This is the slow, thorough check that startup
//! deliberately does not do (startup reconcile trusts file names, because
//! only verified content is ever renamed into the store).

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cache::storage::index::Index;
use crate::cache::storage::{for_each_chunk, ContentStore, ContentStoreExt, Kind, Listed, Object};
use crate::cache::CacheError;
use crate::registry::{sniff_manifest_media_type, Digest, Sha256Hasher};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The file's bytes do not hash to its name.
    Corrupt {
        kind: String,
        digest: String,
        actual: String,
        path: PathBuf,
    },
    /// The file cannot be read (an I/O error: a failing disk).
    Unreadable {
        kind: String,
        digest: String,
        error: String,
        path: PathBuf,
    },
    /// An index entry whose file is gone.
    Missing { kind: String, digest: String },
    /// A file the index does not know, or whose name is not a digest.
    Orphan { path: PathBuf, reason: String },
    /// The file is right but the index records another size.
    WrongSize {
        kind: String,
        digest: String,
        indexed: u64,
        actual: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Corrupt {
                kind,
                digest,
                actual,
                path,
            } => write!(
                f,
                "corrupt {kind} {digest}: the file hashes to {actual} ({})",
                path.display()
            ),
            Problem::Unreadable {
                kind,
                digest,
                error,
                path,
            } => write!(
                f,
                "unreadable {kind} {digest}: {error} ({})",
                path.display()
            ),
            Problem::Missing { kind, digest } => {
                write!(f, "missing {kind} {digest}: indexed, but the file is gone")
            }
            Problem::Orphan { path, reason } => {
                write!(f, "orphan file {}: {reason}", path.display())
            }
            Problem::WrongSize {
                kind,
                digest,
                indexed,
                actual,
            } => write!(
                f,
                "{kind} {digest}: the index says {indexed} bytes, the file has {actual}"
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
    pub repaired: bool,
}

/// Streams an object through sha256 with a fixed buffer: memory stays
/// bounded whatever the blob size.
pub fn hash_object(object: &Object) -> io::Result<Digest> {
    let mut hasher = Sha256Hasher::default();
    for_each_chunk(object, 1 << 20, |chunk| {
        hasher.update(chunk);
        Ok(())
    })?;
    Ok(hasher.finish())
}

/// What a repair does about one problem.
enum Fix {
    /// Drop the entry and move the object aside: its bytes are not its
    /// digest's, or cannot be read.
    Quarantine(Kind, Digest),
    /// Index a valid object the index does not know (a crash between the
    /// commit and the index's flush): valid content is never deleted.
    Reindex(Kind, Digest, u64),
    /// Drop the entry: its object is gone.
    Unindex(Kind, Digest),
    /// Remove something that is not named by a digest.
    Stray(String),
    /// Re-record the entry with the object's real size.
    Resize(Kind, Digest, u64),
}

/// Checks every object and every index entry; with `repair`, quarantines
/// corrupt and unreadable objects, removes strays and dangling entries,
/// indexes valid objects the index lost, and corrects wrong sizes. `progress` is told the size of each object as it is hashed.
pub fn verify(
    store: &dyn ContentStore,
    index: &Index,
    repair: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, CacheError> {
    let mut report = VerifyReport::default();
    let mut fixes = Vec::new();
    for kind in Kind::ALL {
        // Listed first, hashed after: a listing is not held open across
        // minutes of hashing.
        let listed: Vec<Listed> = store.list(kind)?.collect::<io::Result<_>>()?;
        for item in listed {
            let (digest, location) = match item {
                Listed::Stray { location } => {
                    report.problems.push(Problem::Orphan {
                        path: PathBuf::from(&location),
                        reason: "not named by its digest".into(),
                    });
                    fixes.push(Fix::Stray(location));
                    continue;
                }
                Listed::Object {
                    digest, location, ..
                } => (digest, location),
            };
            // Removed since it was listed (an eviction): nothing to check.
            let Some(object) = store.open(kind, &digest)? else {
                continue;
            };
            let hashed = hash_object(&object);
            let size = object.size;
            report.files_checked += 1;
            report.bytes_checked += size;
            progress(size);
            let problem = match hashed {
                Ok(actual) => mismatch(kind, &digest, &actual, &location),
                Err(e) => Some(unreadable(kind, &digest, &e, &location)),
            };
            if let Some(problem) = problem {
                report.problems.push(problem);
                fixes.push(Fix::Quarantine(kind, digest));
                continue;
            }
            match index.get(kind, &digest)? {
                None => {
                    report.problems.push(Problem::Orphan {
                        path: PathBuf::from(location),
                        reason: format!("a valid {} the index does not know", kind.label()),
                    });
                    fixes.push(Fix::Reindex(kind, digest, size));
                }
                Some(e) if e.size != size => {
                    report.problems.push(Problem::WrongSize {
                        kind: kind.label().into(),
                        digest: digest.to_string(),
                        indexed: e.size,
                        actual: size,
                    });
                    fixes.push(Fix::Resize(kind, digest, size));
                }
                Some(_) => {}
            }
        }
        for (digest, _) in index.entries(kind)? {
            if store.stat(kind, &digest)?.is_none() {
                report.problems.push(Problem::Missing {
                    kind: kind.label().into(),
                    digest: digest.to_string(),
                });
                fixes.push(Fix::Unindex(kind, digest));
            }
        }
    }
    if repair && !fixes.is_empty() {
        for fix in fixes {
            apply(store, index, fix)?;
        }
        index.flush()?;
        report.repaired = true;
    }
    Ok(report)
}

/// The problem of an object whose bytes hash to `actual`, if they are not
/// its digest's.
pub fn mismatch(kind: Kind, digest: &Digest, actual: &Digest, location: &str) -> Option<Problem> {
    (actual != digest).then(|| Problem::Corrupt {
        kind: kind.label().into(),
        digest: digest.to_string(),
        actual: actual.to_string(),
        path: PathBuf::from(location),
    })
}

/// The problem of an object that could not be read through.
pub fn unreadable(kind: Kind, digest: &Digest, error: &io::Error, location: &str) -> Problem {
    Problem::Unreadable {
        kind: kind.label().into(),
        digest: digest.to_string(),
        error: error.to_string(),
        path: PathBuf::from(location),
    }
}

fn apply(store: &dyn ContentStore, index: &Index, fix: Fix) -> Result<(), CacheError> {
    match fix {
        Fix::Quarantine(kind, d) => {
            index.remove(kind, &d)?;
            store.quarantine(kind, &d)?;
        }
        Fix::Unindex(kind, d) => {
            index.remove(kind, &d)?;
        }
        Fix::Reindex(kind, d, size) => {
            let media_type = match kind {
                Kind::Blob => None,
                Kind::Manifest => store
                    .read_whole(kind, &d)?
                    .and_then(|b| sniff_manifest_media_type(&b)),
            };
            index.record(kind, &d, size, media_type.as_deref())?;
        }
        Fix::Stray(location) => store.remove_stray(&location)?,
        Fix::Resize(kind, d, actual) => {
            let media_type = index.get(kind, &d)?.and_then(|e| e.media_type);
            index.remove(kind, &d)?;
            index.record(kind, &d, actual, media_type.as_deref())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::{ContentStoreExt, MemoryStore};

    #[test]
    fn finds_and_repairs_corrupt_missing_and_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let put = |bytes: &[u8]| {
            let d = Digest::sha256_of(bytes);
            store.write_whole(Kind::Blob, &d, bytes).unwrap();
            index
                .record(Kind::Blob, &d, bytes.len() as u64, None)
                .unwrap();
            d
        };
        let good = put(b"good");
        let corrupt = put(b"will be corrupted");
        let gone = put(b"will be deleted");
        store.corrupt(Kind::Blob, &corrupt, b"will be corruptex");
        store.remove(Kind::Blob, &gone).unwrap();
        let orphan = Digest::sha256_of(b"orphan");
        store.write_whole(Kind::Blob, &orphan, b"orphan").unwrap();
        store.add_stray(Kind::Blob, "stray.txt");

        let report = verify(&store, &index, false, &mut |_| {}).unwrap();
        assert_eq!(report.problems.len(), 4, "{:#?}", report.problems);
        assert!(report.problems.iter().any(
            |p| matches!(p, Problem::Corrupt { digest, .. } if *digest == corrupt.to_string())
        ));
        assert!(report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Missing { digest, .. } if *digest == gone.to_string())));
        assert_eq!(
            report
                .problems
                .iter()
                .filter(|p| matches!(p, Problem::Orphan { .. }))
                .count(),
            2
        );
        assert!(!report.repaired);

        let report = verify(&store, &index, true, &mut |_| {}).unwrap();
        assert!(report.repaired);
        assert!(!store.contains(Kind::Blob, &corrupt).unwrap());
        assert!(index.get(Kind::Blob, &corrupt).unwrap().is_none());
        assert!(index.get(Kind::Blob, &gone).unwrap().is_none());
        // Valid content is indexed again, never deleted.
        assert!(store.contains(Kind::Blob, &orphan).unwrap());
        assert_eq!(index.get(Kind::Blob, &orphan).unwrap().unwrap().size, 6);
        assert!(store.contains(Kind::Blob, &good).unwrap());
        let report = verify(&store, &index, false, &mut |_| {}).unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.files_checked, 2);
    }

    #[test]
    fn a_wrong_size_in_the_index_is_corrected() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let d = Digest::sha256_of(b"four");
        store.write_whole(Kind::Manifest, &d, b"four").unwrap();
        index.record(Kind::Manifest, &d, 9, Some("m")).unwrap();
        let report = verify(&store, &index, true, &mut |_| {}).unwrap();
        assert_eq!(
            report.problems,
            vec![Problem::WrongSize {
                kind: "manifest".into(),
                digest: d.to_string(),
                indexed: 9,
                actual: 4
            }]
        );
        let entry = index.get(Kind::Manifest, &d).unwrap().unwrap();
        assert_eq!((entry.size, entry.media_type.as_deref()), (4, Some("m")));
    }
}
