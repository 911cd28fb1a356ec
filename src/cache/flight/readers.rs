//! Which committed blobs are being streamed to clients right now, so that
//! eviction leaves them alone. A response takes a [`ReaderGuard`] before it
//! opens the file and drops it when its body is dropped (finished, failed
//! or abandoned by the client).
//!
//! Removing a file that is open would not break the stream (an open file
//! stays readable on Unix), but the space would only come back when the
//! slowest client finished, and the blob would be gone for everyone after
//! it: skipping it is both cheaper and kinder.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::registry::Digest;

#[derive(Default)]
pub struct Readers {
    open: Mutex<HashMap<Digest, usize>>,
}

/// One open reader of a blob; released on drop.
pub struct ReaderGuard {
    readers: Arc<Readers>,
    digest: Digest,
}

impl Readers {
    pub fn acquire(self: &Arc<Self>, digest: &Digest) -> ReaderGuard {
        *self.open.lock().entry(digest.clone()).or_insert(0) += 1;
        ReaderGuard {
            readers: self.clone(),
            digest: digest.clone(),
        }
    }

    pub fn is_open(&self, digest: &Digest) -> bool {
        self.open.lock().contains_key(digest)
    }

    /// Blobs with at least one reader.
    pub fn open_blobs(&self) -> usize {
        self.open.lock().len()
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut open = self.readers.open.lock();
        if let Some(n) = open.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_per_digest_and_released_on_drop() {
        let readers = Arc::new(Readers::default());
        let a = Digest::sha256_of(b"a");
        let g1 = readers.acquire(&a);
        let g2 = readers.acquire(&a);
        assert!(readers.is_open(&a));
        drop(g1);
        assert!(readers.is_open(&a));
        drop(g2);
        assert!(!readers.is_open(&a));
        assert_eq!(readers.open_blobs(), 0);
    }
}
