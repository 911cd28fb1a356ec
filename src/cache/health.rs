//! Whether the cache can take new content: the free-space floor, and
//! storage writes that fail (a full disk, a failed index).
//!
//! Hits never depend on it: what is cached is served throughout. New
//! fills are refused before they start — before any byte is fetched or
//! any 200 sent — while the store is below the floor or the index cannot
//! be written, and readiness says "not ready" while writes fail. The
//! daemon's heal loop ([`super::Cache::heal`]) brings both back once
//! space returns; nothing needs a restart.

use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::storage::index::Index;
use super::storage::{ContentStore, Space};
use super::CacheError;
use crate::metrics::Metrics;

/// The free space the store keeps: a number of bytes, or a share of the
/// filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Floor {
    Bytes(u64),
    /// A fraction of the total, 0 to 1.
    Fraction(f64),
}

impl Floor {
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Floor::Bytes(b) => b,
            Floor::Fraction(f) => (total as f64 * f.clamp(0.0, 1.0)) as u64,
        }
    }
}

pub struct Health {
    store: Arc<dyn ContentStore>,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    floor: RwLock<Option<Floor>>,
    /// Why the last content write failed, while no write has succeeded
    /// since: readiness reports it.
    write_failure: Mutex<Option<String>>,
    /// Rings when a fill found the store below the floor, so eviction runs
    /// now rather than at its next interval.
    low_space: Notify,
}

/// Eviction frees this share of the floor beyond it, so the next fill does
/// not stop at the floor again at once.
const FLOOR_MARGIN: f64 = 0.1;

impl Health {
    pub fn new(store: Arc<dyn ContentStore>, index: Arc<Index>, metrics: Arc<Metrics>) -> Health {
        Health {
            store,
            index,
            metrics,
            floor: RwLock::new(None),
            write_failure: Mutex::new(None),
            low_space: Notify::new(),
        }
    }

    pub fn set_floor(&self, floor: Option<Floor>) {
        *self.floor.write() = floor;
    }

    /// The store's space now, and the floor in bytes, when both apply.
    /// A statvfs: no disk I/O, cheap enough to call before each fill.
    fn space(&self) -> Option<(Space, u64)> {
        let floor = (*self.floor.read())?;
        match self.store.space() {
            Ok(Some(space)) => {
                self.metrics.cache_free_bytes.set(space.available as i64);
                Some((space, floor.bytes(space.total)))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "reading the store's free space failed");
                None
            }
        }
    }

    /// Refuses new content of `incoming` bytes (unknown: `None`) that the
    /// store has no room for above the floor, or that could not be indexed.
    pub fn room_for(&self, incoming: Option<u64>) -> Result<(), CacheError> {
        if self.index.failed() {
            return Err(CacheError::Unwritable(
                "the index failed a write and is waiting to be reopened".into(),
            ));
        }
        if let Some((space, floor)) = self.space() {
            let after = space.available.saturating_sub(incoming.unwrap_or(0));
            if after < floor {
                self.low_space.notify_one();
                return Err(CacheError::NoRoom {
                    available: space.available,
                    floor,
                });
            }
        }
        Ok(())
    }

    /// Bytes eviction should free to bring the store back above the floor
    /// (with a margin); `None` when it is above.
    pub fn shortfall(&self) -> Option<u64> {
        let (space, floor) = self.space()?;
        let target = floor + (floor as f64 * FLOOR_MARGIN) as u64;
        (space.available < floor).then(|| target - space.available)
    }

    /// Resolves when a fill found the store below the floor.
    pub async fn low_space(&self) {
        self.low_space.notified().await
    }

    /// Notes how a content write ended: a failure makes the cache not
    /// ready (logged once), a success ready again.
    pub fn note_write<T>(&self, result: &Result<T, CacheError>) {
        match result {
            Ok(_) => {
                if self.write_failure.lock().take().is_some() {
                    tracing::warn!("storage writes succeed again: ready");
                }
            }
            Err(e @ (CacheError::Storage(_) | CacheError::Index(_))) => {
                let mut failure = self.write_failure.lock();
                if failure.is_none() {
                    tracing::warn!(error = %e, io_kind = ?e.io_kind(), "storage write failed: not ready until writes succeed");
                }
                *failure = Some(e.to_string());
            }
            Err(_) => {}
        }
    }

    /// Tries a small staged write (blocking), clearing a noted failure when
    /// it succeeds: readiness comes back without waiting for a client.
    pub fn probe(&self) {
        if self.write_failure.lock().is_none() {
            return;
        }
        let result = (|| -> io::Result<()> {
            let mut staged = self.store.begin()?;
            staged.append(b"probe")?;
            // Dropped: a staged write that is never committed is aborted.
            Ok(())
        })();
        self.note_write(&result.map_err(CacheError::from));
    }

    /// `Err(why)` while storage writes fail.
    pub fn ready(&self) -> Result<(), String> {
        let ready = if self.index.failed() {
            Err("the cache index failed a write and is waiting to be reopened".to_owned())
        } else if let Some(why) = self.write_failure.lock().clone() {
            Err(format!("storage writes fail: {why}"))
        } else {
            Ok(())
        };
        self.metrics.storage_ready.set(i64::from(ready.is_ok()));
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::MemoryStore;

    fn fixture() -> (tempfile::TempDir, Arc<MemoryStore>, Health) {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(&dir.path().join("index")).unwrap());
        let store = Arc::new(MemoryStore::new());
        let health = Health::new(store.clone(), index, Arc::new(Metrics::new()));
        (dir, store, health)
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_floor_refuses_what_would_cross_it_and_names_the_shortfall() {
        let (_dir, store, health) = fixture();
        store.set_space(Some(Space {
            available: 3 * GIB,
            total: 100 * GIB,
        }));
        // No floor configured: anything goes.
        assert!(health.room_for(Some(10 * GIB)).is_ok());
        health.set_floor(Some(Floor::Bytes(GIB)));
        assert!(health.room_for(Some(GIB)).is_ok());
        assert!(health.room_for(None).is_ok());
        let refused = health.room_for(Some(2 * GIB + 1)).unwrap_err();
        assert!(matches!(refused, CacheError::NoRoom { floor, .. } if floor == GIB));
        assert_eq!(health.shortfall(), None);
        // 5% of 100 GiB is above the 3 GiB free.
        health.set_floor(Some(Floor::Fraction(0.05)));
        assert!(health.room_for(None).is_err());
        let target = 5 * GIB + (5 * GIB) / 10;
        assert_eq!(health.shortfall(), Some(target - 3 * GIB));
    }

    #[test]
    fn a_failed_write_makes_it_not_ready_until_a_probe_succeeds() {
        let (_dir, store, health) = fixture();
        assert!(health.ready().is_ok());
        store.fail_writes(Some(io::ErrorKind::StorageFull));
        health.note_write::<()>(&Err(io::Error::from(io::ErrorKind::StorageFull).into()));
        assert!(health.ready().is_err());
        health.probe();
        assert!(health.ready().is_err(), "the disk is still full");
        store.fail_writes(None);
        health.probe();
        assert!(health.ready().is_ok());
        // Upstream failures are not storage failures.
        health.note_write::<()>(&Err(CacheError::Internal("x".into())));
        assert!(health.ready().is_ok());
    }
}
