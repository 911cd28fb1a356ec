//! Where cached things are kept: immutable, digest-addressed content behind
//! [`ContentStore`], mutable tag records behind [`TagStore`], and the sled
//! [`Index`] beside them, which is rebuildable from the store's listing.
//!
//! The traits are shaped after pingora-cache's `Storage` / `HandleHit` /
//! `HandleMiss`: a hit is a [`ReadAt`] handle, a miss is a [`Staged`] write
//! that becomes visible only through [`Staged::commit`] and is aborted when
//! dropped without it. Content is never changed in place, so a handle stays
//! valid for as long as it is held, even if the object is removed meanwhile.
//!
//! Every method blocks (file or memory I/O). The cache calls them on the
//! blocking pool (`tokio::task::spawn_blocking`), or from operations that
//! run there whole (eviction, verify, import). One exception, on purpose:
//! a fill's attach calls [`ContentStore::stat`] under the fill table's lock,
//! so that "not committed" and "fill registered" are one step; it is one
//! metadata lookup.

pub mod bucket;
pub mod fs;
mod fs_tags;
pub mod index;
pub mod memory;

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::Digest;

pub use fs::FsStore;
pub use memory::MemoryStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Blob, Kind::Manifest];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }
}

/// Random access to stored bytes: a committed object or a staged write.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`; fails if the object is shorter.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// An open committed object.
#[derive(Clone)]
pub struct Object {
    pub size: u64,
    pub reader: Arc<dyn ReadAt>,
}

/// What a listing finds in the store's space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// An object named by its digest. `location` says where, for reports.
    Object {
        digest: Digest,
        size: u64,
        location: String,
    },
    /// Something that is not named by a digest: never served, never
    /// deleted without being asked ([`ContentStore::remove_stray`]).
    Stray { location: String },
}

/// A write in progress. Dropping it without [`Staged::commit`] aborts it:
/// nothing of it becomes visible.
pub trait Staged: Send {
    /// Appends bytes at the end of what was written so far.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;

    /// Bytes appended so far.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of the bytes appended so far, which stays valid after the
    /// commit. `None` when the backend cannot be read while a write is in
    /// progress (see [`ContentStore::reads_while_staged`]).
    fn reader(&self) -> Option<Arc<dyn ReadAt>>;

    /// Releases what an idle staged write holds open (a file descriptor)
    /// until it is committed, so many can wait at once (an import).
    fn park(&mut self) {}

    /// Makes the bytes durable under `digest`; only then may the index
    /// mention them. The caller has verified the bytes against the digest.
    fn commit(self: Box<Self>, kind: Kind, digest: &Digest) -> io::Result<()>;
}

/// Immutable, digest-addressed content.
pub trait ContentStore: Send + Sync {
    /// Whether readers can follow a staged write before its commit: with
    /// it, clients of a fill stream as the bytes arrive; without it, they
    /// wait for the commit.
    fn reads_while_staged(&self) -> bool;

    /// The size of a committed object, if present.
    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<u64>>;

    /// Opens a committed object for reading.
    fn open(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Object>>;

    /// Starts a write; see [`Staged`].
    fn begin(&self) -> io::Result<Box<dyn Staged>>;

    /// Removes a committed object; removing an absent one is not an error.
    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<()>;

    /// Moves a committed object out of the store's space but keeps it, for
    /// a post-mortem (a file that does not hash to its name): it is no
    /// longer opened or listed, and a handle already open on it stays
    /// readable. One per digest is kept (a later one replaces it). Returns
    /// where it went; `None` when there was no such object.
    fn quarantine(&self, kind: Kind, digest: &Digest) -> io::Result<Option<String>>;

    /// Everything of a kind, objects and strays, one at a time.
    fn list(&self, kind: Kind) -> io::Result<Box<dyn Iterator<Item = io::Result<Listed>> + '_>>;

    /// Removes a stray a listing found.
    fn remove_stray(&self, location: &str) -> io::Result<()>;

    /// Where an object of this digest lives (or would), for reports.
    fn location(&self, kind: Kind, digest: &Digest) -> String;

    /// Free and total bytes where new objects go; `None` when the backend
    /// has no such bound. The free-space floor reads it.
    fn space(&self) -> io::Result<Option<Space>>;
}

/// Room on the backend's filesystem (or volume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// When the upstream last confirmed this mapping, unix milliseconds.
    pub checked_at: u64,
    /// How long the upstream said the answer stays fresh (its
    /// `Cache-Control: max-age`), when it said so: it can shorten
    /// `tag_ttl` for this tag, never lengthen it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// The upstream forbade sharing this answer (`no-store`, `private`):
    /// it answers the request that asked, and is never stored.
    #[serde(skip)]
    pub unshared: bool,
}

/// A tag with its place: what a tag record holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagRecord {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub entry: TagEntry,
}

/// Mutable tag records: where each cached tag pointed when last checked.
/// Last writer wins; a record is refreshable, so writes need not be durable.
pub trait TagStore: Send + Sync {
    fn put_tag(&self, record: &TagRecord) -> io::Result<()>;
    /// Removing a tag without a record is not an error.
    fn delete_tag(&self, upstream: &str, repo: &str, tag: &str) -> io::Result<()>;
    /// Every readable record; unreadable ones are skipped with a warning.
    fn tag_records(&self) -> io::Result<Vec<TagRecord>>;
}

/// Helpers every content store gets from the trait's methods.
pub trait ContentStoreExt: ContentStore {
    fn contains(&self, kind: Kind, digest: &Digest) -> io::Result<bool> {
        Ok(self.stat(kind, digest)?.is_some())
    }

    /// A whole small object (a manifest).
    fn read_whole(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        let Some(object) = self.open(kind, digest)? else {
            return Ok(None);
        };
        let len = usize::try_from(object.size).map_err(io::Error::other)?;
        let mut bytes = vec![0; len];
        object.reader.read_exact_at(&mut bytes, 0)?;
        Ok(Some(bytes))
    }

    /// Writes small verified content in one go through the same commit.
    fn write_whole(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let mut staged = self.begin()?;
        staged.append(bytes)?;
        staged.commit(kind, digest)
    }

    /// Every committed object of a kind with its size; strays are skipped
    /// with a warning.
    fn objects(&self, kind: Kind) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for item in self.list(kind)? {
            match item? {
                Listed::Object { digest, size, .. } => out.push((digest, size)),
                Listed::Stray { location } => {
                    tracing::warn!(%location, "stray file in the blob store")
                }
            }
        }
        Ok(out)
    }
}

impl<S: ContentStore + ?Sized> ContentStoreExt for S {}

/// Both halves of a backend, as the cache holds them.
#[derive(Clone)]
pub struct Storage {
    pub content: Arc<dyn ContentStore>,
    pub tags: Arc<dyn TagStore>,
}

impl Storage {
    pub fn new<S: ContentStore + TagStore + 'static>(store: Arc<S>) -> Storage {
        Storage {
            content: store.clone(),
            tags: store,
        }
    }
}

/// Reads an object in chunks of at most `chunk` bytes through `f`, with one
/// buffer: memory stays bounded whatever the size.
pub fn for_each_chunk(
    object: &Object,
    chunk: usize,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; chunk.min(object.size as usize).max(1)];
    let mut offset = 0u64;
    while offset < object.size {
        let n = (object.size - offset).min(buf.len() as u64) as usize;
        object.reader.read_exact_at(&mut buf[..n], offset)?;
        f(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

/// A plain [`io::Read`] over an object, for streaming it into a writer (a
/// bundle's tar).
pub struct ObjectReader {
    object: Object,
    pos: u64,
}

impl ObjectReader {
    pub fn new(object: Object) -> ObjectReader {
        ObjectReader { object, pos: 0 }
    }
}

impl io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.object.size - self.pos).min(buf.len() as u64) as usize;
        if n > 0 {
            self.object.reader.read_exact_at(&mut buf[..n], self.pos)?;
            self.pos += n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod contract;
