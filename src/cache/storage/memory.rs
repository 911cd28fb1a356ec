//! An in-memory backend: the reference implementation of the storage
//! traits, for unit tests of fills, eviction, verify and import without a
//! filesystem. Like pingora-cache's `memory.rs`, it is not for production:
//! nothing bounds it but the caller.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{ContentStore, Kind, Listed, Object, ReadAt, Space, Staged, TagRecord, TagStore};
use crate::registry::Digest;

/// Bytes that only grow while staged and never change once committed.
#[derive(Default)]
struct Buffer(RwLock<Vec<u8>>);

impl ReadAt for Buffer {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.0.read();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(buf.len()).filter(|&e| e <= bytes.len());
        match end {
            Some(end) => {
                buf.copy_from_slice(&bytes[start..end]);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the object",
            )),
        }
    }
}

#[derive(Default)]
struct Inner {
    objects: HashMap<(Kind, Digest), Arc<Buffer>>,
    /// Entries under names that are not digests: what a damaged store
    /// holds, so verify has something to find.
    strays: BTreeMap<String, Kind>,
    /// Objects moved aside by [`ContentStore::quarantine`].
    quarantined: HashMap<(Kind, Digest), Arc<Buffer>>,
    tags: HashMap<(String, String, String), TagRecord>,
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// Writes fail with this kind while set (a full disk, say).
    fail_writes: Mutex<Option<io::ErrorKind>>,
    /// What [`ContentStore::space`] reports: a disk of any fullness.
    space: Mutex<Option<Space>>,
    /// Called before each removal, to observe what else holds then.
    on_remove: Mutex<Option<RemoveHook>>,
}

type RemoveHook = Box<dyn Fn(Kind, &Digest) + Send + Sync>;

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Replaces an object's bytes in place: the damage verify looks for.
    pub fn corrupt(&self, kind: Kind, digest: &Digest, bytes: &[u8]) {
        let buffer = Arc::new(Buffer(RwLock::new(bytes.to_vec())));
        self.inner
            .lock()
            .objects
            .insert((kind, digest.clone()), buffer);
    }

    /// Puts something that is not named by a digest into the store.
    pub fn add_stray(&self, kind: Kind, name: &str) {
        self.inner.lock().strays.insert(name.to_owned(), kind);
    }

    /// From now on every write fails with `kind`, or none does.
    pub fn fail_writes(&self, kind: Option<io::ErrorKind>) {
        *self.fail_writes.lock() = kind;
    }

    /// Calls `hook` before every removal of an object.
    pub fn on_remove(&self, hook: impl Fn(Kind, &Digest) + Send + Sync + 'static) {
        *self.on_remove.lock() = Some(Box::new(hook));
    }

    /// Sets the free and total space the store reports.
    pub fn set_space(&self, space: Option<Space>) {
        *self.space.lock() = space;
    }

    fn check_writes(&self) -> io::Result<()> {
        match *self.fail_writes.lock() {
            Some(kind) => Err(io::Error::new(kind, "writes fail (test)")),
            None => Ok(()),
        }
    }
}

struct MemoryStaged {
    buffer: Arc<Buffer>,
    inner: Arc<Mutex<Inner>>,
    fail: Option<io::ErrorKind>,
}

impl Staged for MemoryStaged {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(kind) = self.fail {
            return Err(io::Error::new(kind, "writes fail (test)"));
        }
        self.buffer.0.write().extend_from_slice(data);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.buffer.0.read().len() as u64
    }

    fn reader(&self) -> Option<Arc<dyn ReadAt>> {
        Some(self.buffer.clone())
    }

    fn commit(self: Box<Self>, kind: Kind, digest: &Digest) -> io::Result<()> {
        self.inner
            .lock()
            .objects
            .insert((kind, digest.clone()), self.buffer.clone());
        Ok(())
    }
}

impl ContentStore for MemoryStore {
    fn reads_while_staged(&self) -> bool {
        true
    }

    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<u64>> {
        let inner = self.inner.lock();
        Ok(inner
            .objects
            .get(&(kind, digest.clone()))
            .map(|b| b.0.read().len() as u64))
    }

    fn open(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Object>> {
        let inner = self.inner.lock();
        Ok(inner.objects.get(&(kind, digest.clone())).map(|b| Object {
            size: b.0.read().len() as u64,
            reader: b.clone(),
        }))
    }

    fn begin(&self) -> io::Result<Box<dyn Staged>> {
        self.check_writes()?;
        Ok(Box::new(MemoryStaged {
            buffer: Arc::default(),
            inner: self.inner.clone(),
            fail: *self.fail_writes.lock(),
        }))
    }

    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<()> {
        if let Some(hook) = &*self.on_remove.lock() {
            hook(kind, digest);
        }
        self.inner.lock().objects.remove(&(kind, digest.clone()));
        Ok(())
    }

    fn quarantine(&self, kind: Kind, digest: &Digest) -> io::Result<Option<String>> {
        let mut inner = self.inner.lock();
        let key = (kind, digest.clone());
        let Some(buffer) = inner.objects.remove(&key) else {
            return Ok(None);
        };
        inner.quarantined.insert(key, buffer);
        Ok(Some(format!("memory:quarantine/{}/{digest}", kind.label())))
    }

    fn list(&self, kind: Kind) -> io::Result<Box<dyn Iterator<Item = io::Result<Listed>> + '_>> {
        let inner = self.inner.lock();
        let mut out: Vec<io::Result<Listed>> = inner
            .objects
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, d), b)| {
                Ok(Listed::Object {
                    digest: d.clone(),
                    size: b.0.read().len() as u64,
                    location: self.location(kind, d),
                })
            })
            .collect();
        out.extend(
            inner
                .strays
                .iter()
                .filter(|(_, k)| **k == kind)
                .map(|(name, _)| {
                    Ok(Listed::Stray {
                        location: name.clone(),
                    })
                }),
        );
        Ok(Box::new(out.into_iter()))
    }

    fn remove_stray(&self, location: &str) -> io::Result<()> {
        self.inner.lock().strays.remove(location);
        Ok(())
    }

    fn location(&self, kind: Kind, digest: &Digest) -> String {
        format!("memory:{}/{digest}", kind.label())
    }

    fn space(&self) -> io::Result<Option<Space>> {
        Ok(*self.space.lock())
    }
}

impl TagStore for MemoryStore {
    fn put_tag(&self, record: &TagRecord) -> io::Result<()> {
        self.check_writes()?;
        let key = (
            record.upstream.clone(),
            record.repo.clone(),
            record.tag.clone(),
        );
        self.inner.lock().tags.insert(key, record.clone());
        Ok(())
    }

    fn delete_tag(&self, upstream: &str, repo: &str, tag: &str) -> io::Result<()> {
        let key = (upstream.to_owned(), repo.to_owned(), tag.to_owned());
        self.inner.lock().tags.remove(&key);
        Ok(())
    }

    fn tag_records(&self) -> io::Result<Vec<TagRecord>> {
        Ok(self.inner.lock().tags.values().cloned().collect())
    }
}
