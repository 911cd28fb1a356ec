//! `regcache verify`: re-hash every blob and manifest on disk and check the
//! index against the files. This is the slow, thorough check that startup
//! deliberately does not do (startup reconcile trusts file names, because
//! only verified content is ever renamed into the store).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::Index;
use super::store::{FsStore, Kind};
use super::CacheError;
use crate::registry::{Digest, Sha256Hasher};

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

/// Streams a file through sha256 with a fixed buffer: memory stays bounded
/// whatever the blob size.
pub fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finish(), total))
}

/// Checks every file and every index entry; with `repair`, removes corrupt
/// and orphaned files and dangling entries and corrects wrong sizes.
/// `progress` is told the size of each file as it is hashed.
pub fn verify(
    store: &FsStore,
    index: &Index,
    repair: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, CacheError> {
    let mut report = VerifyReport::default();
    for kind in [Kind::Blob, Kind::Manifest] {
        let base = store.root().join(kind.dir()).join("sha256");
        let mut files = Vec::new();
        for shard in fs::read_dir(&base)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                files.push((shard.path(), None));
                continue;
            }
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = Digest::from_hex(&name)
                    .ok()
                    .filter(|_| name.starts_with(&shard_name) && shard_name.len() == 2)
                    .filter(|_| entry.file_type().is_ok_and(|t| t.is_file()));
                files.push((entry.path(), digest));
            }
        }
        for (path, digest) in files {
            let Some(digest) = digest else {
                report.problems.push(Problem::Orphan {
                    path,
                    reason: "not named by its digest".into(),
                });
                continue;
            };
            let (actual, size) = hash_file(&path)?;
            report.files_checked += 1;
            report.bytes_checked += size;
            progress(size);
            if actual != digest {
                report.problems.push(Problem::Corrupt {
                    kind: kind.label().into(),
                    digest: digest.to_string(),
                    actual: actual.to_string(),
                    path,
                });
                continue;
            }
            match index.get(kind, &digest)? {
                None => report.problems.push(Problem::Orphan {
                    path,
                    reason: format!("a valid {} the index does not know", kind.label()),
                }),
                Some(e) if e.size != size => report.problems.push(Problem::WrongSize {
                    kind: kind.label().into(),
                    digest: digest.to_string(),
                    indexed: e.size,
                    actual: size,
                }),
                Some(_) => {}
            }
        }
        for (digest, _) in index.entries(kind)? {
            if !store.contains(kind, &digest) {
                report.problems.push(Problem::Missing {
                    kind: kind.label().into(),
                    digest: digest.to_string(),
                });
            }
        }
    }
    if repair && !report.problems.is_empty() {
        for p in &report.problems {
            fix(store, index, p)?;
        }
        index.flush()?;
        report.repaired = true;
    }
    Ok(report)
}

fn kind_of(label: &str) -> Kind {
    if label == Kind::Manifest.label() {
        Kind::Manifest
    } else {
        Kind::Blob
    }
}

fn fix(store: &FsStore, index: &Index, problem: &Problem) -> Result<(), CacheError> {
    match problem {
        Problem::Corrupt { kind, digest, .. } => {
            let d: Digest = digest.parse().map_err(|e| CacheError::Io(format!("{e}")))?;
            index.remove(kind_of(kind), &d)?;
            store.remove(kind_of(kind), &d)?;
        }
        Problem::Missing { kind, digest } => {
            let d: Digest = digest.parse().map_err(|e| CacheError::Io(format!("{e}")))?;
            index.remove(kind_of(kind), &d)?;
        }
        Problem::Orphan { path, .. } => {
            if path.is_dir() {
                fs::remove_dir_all(path)?;
            } else {
                fs::remove_file(path)?;
            }
        }
        Problem::WrongSize {
            kind,
            digest,
            actual,
            ..
        } => {
            let d: Digest = digest.parse().map_err(|e| CacheError::Io(format!("{e}")))?;
            let kind = kind_of(kind);
            let media_type = index.get(kind, &d)?.and_then(|e| e.media_type);
            index.remove(kind, &d)?;
            index.record(kind, &d, *actual, media_type.as_deref())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_repairs_corrupt_missing_and_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
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
        fs::write(store.path(Kind::Blob, &corrupt), b"will be corruptex").unwrap();
        fs::remove_file(store.path(Kind::Blob, &gone)).unwrap();
        let orphan = Digest::sha256_of(b"orphan");
        store.write_whole(Kind::Blob, &orphan, b"orphan").unwrap();
        fs::write(dir.path().join("blobs/sha256/stray.txt"), b"?").unwrap();

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
        assert!(!store.contains(Kind::Blob, &corrupt));
        assert!(index.get(Kind::Blob, &corrupt).unwrap().is_none());
        assert!(index.get(Kind::Blob, &gone).unwrap().is_none());
        assert!(!store.contains(Kind::Blob, &orphan));
        assert!(store.contains(Kind::Blob, &good));
        let report = verify(&store, &index, false, &mut |_| {}).unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.files_checked, 1);
    }
}
