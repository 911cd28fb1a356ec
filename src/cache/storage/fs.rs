//! The filesystem backend: content-addressed files, the source of truth of
//! a node's cache.
//!
//! Layout under the cache directory:
//! `blobs/sha256/<2 hex>/<64 hex>`, `manifests/sha256/<2 hex>/<64 hex>`,
//! `tags/` for the tag records (see `fs_tags`), `tmp/` for writes in
//! progress (emptied at startup), `index/` for the sled index,
//! `quarantine/<kind>-<64 hex>` for corrupt files moved aside (never read
//! again; the operator deletes them).
//!
//! Commit protocol: write into `tmp/`, fsync the file, rename it into
//! place, fsync the directory. A reader sees a whole object or none.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{ContentStore, Kind, Listed, Object, ReadAt, Space, Staged};
use crate::registry::Digest;

fn kind_dir(kind: Kind) -> &'static str {
    match kind {
        Kind::Blob => "blobs",
        Kind::Manifest => "manifests",
    }
}

pub struct FsStore {
    root: PathBuf,
    /// Names temporary files uniquely within this process.
    next_temp: AtomicU64,
}

impl FsStore {
    /// Creates the layout and removes temporary files a crash left behind.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        for kind in Kind::ALL {
            fs::create_dir_all(root.join(kind_dir(kind)).join("sha256"))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(FsStore::at(root))
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a committed object lives.
    pub fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(kind_dir(kind))
            .join("sha256")
            .join(&hex[..2])
            .join(hex)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("fill-{}-{n}", std::process::id()))
    }

    /// Replaces `dest` with `bytes` by rename, so a reader sees the old
    /// file or the new one, never a mix. Not fsynced: for small records
    /// that can be refreshed (tags), not for content.
    pub(super) fn replace_file(&self, dest: &Path, bytes: &[u8]) -> io::Result<()> {
        let temp = self.temp_path();
        let written = fs::write(&temp, bytes).and_then(|()| {
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&temp, dest)
        });
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }
}

/// Moves an unreadable index (or anything else) aside, keeping it for a
/// post-mortem instead of deleting it.
pub fn move_aside(path: &Path, aside: &Path) -> io::Result<()> {
    fs::rename(path, aside)
}

/// The names in a directory, for tests that look at the layout.
#[cfg(test)]
pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// A file being written under `tmp/`. Dropping it without a commit
/// removes it.
struct FsStaged {
    path: PathBuf,
    root: PathBuf,
    /// Closed while parked; reopened to append or commit.
    file: Option<Arc<File>>,
    len: u64,
    committed: bool,
}

impl FsStaged {
    fn file(&mut self) -> io::Result<&Arc<File>> {
        if self.file.is_none() {
            let file = OpenOptions::new().read(true).write(true).open(&self.path)?;
            self.file = Some(Arc::new(file));
        }
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("staged file not open"))
    }
}

impl Staged for FsStaged {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let offset = self.len;
        self.file()?.write_all_at(data, offset)?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn reader(&self) -> Option<Arc<dyn ReadAt>> {
        // A parked write is read through a new read-only descriptor.
        let file = match &self.file {
            Some(f) => f.clone(),
            None => Arc::new(File::open(&self.path).ok()?),
        };
        Some(file as Arc<dyn ReadAt>)
    }

    fn park(&mut self) {
        self.file = None;
    }

    fn commit(mut self: Box<Self>, kind: Kind, digest: &Digest) -> io::Result<()> {
        self.file()?.sync_all()?;
        let hex = digest.hex();
        let dir = self
            .root
            .join(kind_dir(kind))
            .join("sha256")
            .join(&hex[..2]);
        fs::create_dir_all(&dir)?;
        fs::rename(&self.path, dir.join(hex))?;
        self.committed = true;
        File::open(&dir)?.sync_all()
    }
}

impl Drop for FsStaged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl ContentStore for FsStore {
    fn reads_while_staged(&self) -> bool {
        true
    }

    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(kind, digest)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Object>> {
        match File::open(self.path(kind, digest)) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok(Some(Object {
                    size,
                    reader: Arc::new(f),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn begin(&self) -> io::Result<Box<dyn Staged>> {
        let path = self.temp_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Box::new(FsStaged {
            path,
            root: self.root.clone(),
            file: Some(Arc::new(file)),
            len: 0,
            committed: false,
        }))
    }

    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(kind, digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn quarantine(&self, kind: Kind, digest: &Digest) -> io::Result<Option<String>> {
        let from = self.path(kind, digest);
        let dir = self.root.join("quarantine");
        fs::create_dir_all(&dir)?;
        let to = dir.join(format!("{}-{}", kind.label(), digest.hex()));
        match fs::rename(&from, &to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            r => r?,
        }
        // Durably gone from the store: a crash must not bring it back
        // where it would be served again.
        if let Some(shard) = from.parent() {
            File::open(shard)?.sync_all()?;
        }
        File::open(&dir)?.sync_all()?;
        Ok(Some(to.display().to_string()))
    }

    fn list(&self, kind: Kind) -> io::Result<Box<dyn Iterator<Item = io::Result<Listed>> + '_>> {
        let base = self.root.join(kind_dir(kind)).join("sha256");
        let shards = fs::read_dir(base)?;
        Ok(Box::new(shards.flat_map(
            |shard| -> Vec<io::Result<Listed>> {
                match shard.and_then(|s| Ok((s.file_type()?, s))) {
                    Err(e) => vec![Err(e)],
                    Ok((t, shard)) if !t.is_dir() => vec![Ok(Listed::Stray {
                        location: shard.path().display().to_string(),
                    })],
                    Ok((_, shard)) => list_shard(&shard),
                }
            },
        )))
    }

    fn remove_stray(&self, location: &str) -> io::Result<()> {
        let path = Path::new(location);
        // Only ever inside this store's content directories.
        let inside = Kind::ALL
            .iter()
            .any(|k| path.starts_with(self.root.join(kind_dir(*k))));
        if !inside {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{location} is not in the store"),
            ));
        }
        if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        }
    }

    fn location(&self, kind: Kind, digest: &Digest) -> String {
        self.path(kind, digest).display().to_string()
    }

    fn space(&self) -> io::Result<Option<Space>> {
        // statvfs of the directory new objects are staged in.
        let at = self.root.join("tmp");
        Ok(Some(Space {
            available: fs2::available_space(&at)?,
            total: fs2::total_space(&at)?,
        }))
    }
}

/// One shard directory: files named by their digest under the shard of
/// their first two hex characters are objects; anything else is a stray.
fn list_shard(shard: &fs::DirEntry) -> Vec<io::Result<Listed>> {
    let shard_name = shard.file_name().to_string_lossy().into_owned();
    let entries = match fs::read_dir(shard.path()) {
        Ok(entries) => entries,
        Err(e) => return vec![Err(e)],
    };
    entries
        .map(|entry| {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let location = entry.path().display().to_string();
            let digest = Digest::from_hex(&name)
                .ok()
                .filter(|_| shard_name.len() == 2 && name.starts_with(&shard_name));
            let file = entry.file_type()?.is_file();
            Ok(match digest {
                Some(digest) if file => Listed::Object {
                    digest,
                    size: entry.metadata()?.len(),
                    location,
                },
                _ => Listed::Stray { location },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::ContentStoreExt;

    #[test]
    fn temp_files_vanish_unless_committed_and_startup_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        {
            let mut t = store.begin().unwrap();
            t.append(b"x").unwrap();
            assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        store.write_whole(Kind::Manifest, &d, b"x").unwrap();
        assert!(store.contains(Kind::Manifest, &d).unwrap());
        assert!(!store.contains(Kind::Blob, &d).unwrap());
        assert_eq!(store.objects(Kind::Manifest).unwrap(), vec![(d.clone(), 1)]);
        // Today's layout, byte for byte: caches written before the storage
        // trait are read as they are.
        let hex = d.hex();
        assert_eq!(
            fs::read(
                dir.path()
                    .join(format!("manifests/sha256/{}/{hex}", &hex[..2]))
            )
            .unwrap(),
            b"x"
        );

        // A crash leaves a temp file behind; reopening removes it.
        let leftover = store.begin().unwrap();
        std::mem::forget(leftover);
        let store = FsStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(store.read_whole(Kind::Manifest, &d).unwrap().unwrap(), b"x");
    }

    #[test]
    fn strays_are_listed_and_removed_only_inside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let stray = dir.path().join("blobs/sha256/stray.txt");
        fs::write(&stray, b"?").unwrap();
        let listed: Vec<Listed> = store
            .list(Kind::Blob)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let location = stray.display().to_string();
        assert_eq!(
            listed,
            vec![Listed::Stray {
                location: location.clone()
            }]
        );
        assert!(store.remove_stray("/etc/passwd").is_err());
        store.remove_stray(&location).unwrap();
        assert!(!stray.exists());
    }

    #[test]
    fn a_parked_write_reopens_to_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        let mut staged = store.begin().unwrap();
        staged.append(b"hel").unwrap();
        staged.park();
        staged.append(b"lo").unwrap();
        staged.park();
        staged.commit(Kind::Blob, &d).unwrap();
        assert_eq!(store.read_whole(Kind::Blob, &d).unwrap().unwrap(), b"hello");
    }
}
