//! The blob store: content-addressed files, the source of truth of the
//! cache. Everything else (the index, the in-memory caches) can be rebuilt
//! from what is here.
//!
//! This is the seam where a shared object-store backend goes later: callers
//! only open by digest, write through a [`TempBlob`] and commit it.
//!
//! Layout under the cache directory:
//! `blobs/sha256/<2 hex>/<64 hex>`, `manifests/sha256/<2 hex>/<64 hex>`,
//! `tags/` for the tag records (see `tag_files`), `tmp/` for fills in
//! progress (emptied at startup).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::registry::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }
}

pub struct FsStore {
    root: PathBuf,
    next_temp: AtomicU64,
}

/// A file being filled. Dropping it without [`FsStore::commit`] removes it.
pub struct TempBlob {
    pub file: Arc<File>,
    path: PathBuf,
    committed: bool,
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl FsStore {
    /// Creates the layout and removes temporary files a crash left behind.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        for kind in [Kind::Blob, Kind::Manifest] {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(FsStore {
            root: root.to_owned(),
            next_temp: AtomicU64::new(0),
        })
    }

    /// The store at `root` without creating or cleaning anything: for
    /// reading committed files while a daemon owns the directory (they are
    /// immutable once renamed into place).
    pub fn at(root: &Path) -> FsStore {
        FsStore {
            root: root.to_owned(),
            next_temp: AtomicU64::new(0),
        }
    }

    /// A fresh directory under `tmp/` for staging many files (an import);
    /// the caller removes it.
    pub fn create_staging_dir(&self, label: &str) -> io::Result<PathBuf> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{label}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// Commits a verified file from a staging directory: fsync, rename into
    /// place, fsync the directory (as [`FsStore::commit`]).
    pub fn commit_path(&self, staged: &Path, kind: Kind, digest: &Digest) -> io::Result<()> {
        File::open(staged)?.sync_all()?;
        let dest = self.path(kind, digest);
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir)?;
        fs::rename(staged, &dest)?;
        File::open(&dir)?.sync_all()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a committed object lives.
    pub fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(kind.dir())
            .join("sha256")
            .join(&hex[..2])
            .join(hex)
    }

    /// The committed file and its size, if present.
    pub fn open_committed(&self, kind: Kind, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.path(kind, digest)) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok(Some((f, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn contains(&self, kind: Kind, digest: &Digest) -> bool {
        self.path(kind, digest).is_file()
    }

    pub fn create_temp(&self) -> io::Result<TempBlob> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("fill-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempBlob {
            file: Arc::new(file),
            path,
            committed: false,
        })
    }

    /// Makes verified content durable under its digest: fsync the file,
    /// rename it into place, fsync the directory. Only after this may the
    /// index mention it.
    pub fn commit(&self, mut temp: TempBlob, kind: Kind, digest: &Digest) -> io::Result<()> {
        temp.file.sync_all()?;
        let dest = self.path(kind, digest);
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir)?;
        fs::rename(&temp.path, &dest)?;
        temp.committed = true;
        File::open(&dir)?.sync_all()
    }

    /// Writes small content (a manifest) in one go through the same commit.
    pub fn write_whole(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let temp = self.create_temp()?;
        temp.file.write_all_at(bytes, 0)?;
        self.commit(temp, kind, digest)
    }

    /// Replaces `dest` with `bytes` by rename, so a reader sees the old
    /// file or the new one, never a mix. Not fsynced: for small records
    /// that can be refreshed (tags), not for content.
    pub(super) fn replace_file(&self, dest: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut temp = self.create_temp()?;
        temp.file.write_all_at(bytes, 0)?;
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::rename(&temp.path, dest)?;
        temp.committed = true;
        Ok(())
    }

    pub fn read_whole(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(kind, digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(kind, digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every committed digest of a kind with its size. Files whose names
    /// are not digests are skipped (and reported), never deleted blindly.
    pub fn list(&self, kind: Kind) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        let base = self.root.join(kind.dir()).join("sha256");
        for shard in fs::read_dir(&base)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let parsed = name.to_str().and_then(|n| Digest::from_hex(n).ok());
                match parsed {
                    Some(d) if entry.file_type()?.is_file() => {
                        out.push((d, entry.metadata()?.len()))
                    }
                    _ => {
                        tracing::warn!(path = %entry.path().display(), "stray file in the blob store")
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_vanish_unless_committed_and_startup_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        {
            let t = store.create_temp().unwrap();
            assert!(t.path.exists());
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        store.write_whole(Kind::Manifest, &d, b"x").unwrap();
        assert!(store.contains(Kind::Manifest, &d));
        assert!(!store.contains(Kind::Blob, &d));
        assert_eq!(store.list(Kind::Manifest).unwrap(), vec![(d.clone(), 1)]);

        // A crash leaves a temp file behind; reopening removes it.
        let leftover = store.create_temp().unwrap();
        std::mem::forget(leftover);
        let store = FsStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(store.read_whole(Kind::Manifest, &d).unwrap().unwrap(), b"x");
    }
}
