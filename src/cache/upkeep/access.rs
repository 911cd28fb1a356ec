//! Access records of the shared tier: each replica notes in memory which
//! content it served or filled, and when, and writes what it noted as one
//! batch object, `access/<replica>/<unix-ms>-<nonce>.json`, every so often.
//! The janitor merges the batches of every replica to tell what the fleet
//! used least recently. Nothing here is on a request's path but
//! [`AccessLog::note`], which takes a lock for a map insert.
//!
//! A batch is newline-delimited JSON, one record a line:
//! `{"k":"blob","d":"<64hex>","t":<unix ms>}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cache::storage::bucket::{Bucket, BucketError};
use crate::cache::storage::index::now_millis;
use crate::cache::storage::Kind;
use crate::registry::Digest;

/// How many distinct digests a replica keeps between flushes by default;
/// about 10 MB of records at most.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The largest batch a reader accepts: [`DEFAULT_CAPACITY`]-sized batches
/// with room to spare.
pub const MAX_BATCH_BYTES: u64 = 32 << 20;

/// One line of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    k: String,
    d: String,
    t: u64,
}

/// Encodes records as a batch's body.
pub fn encode<'a>(records: impl IntoIterator<Item = (&'a (Kind, Digest), &'a u64)>) -> Bytes {
    let mut out = Vec::new();
    for ((kind, digest), t) in records {
        let line = Line {
            k: kind.label().to_owned(),
            d: digest.hex().to_owned(),
            t: *t,
        };
        // A struct of strings and a number always serialises.
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// The records of a batch's body; a line that does not read as one (a
/// newer format, a torn write) is skipped.
pub fn decode(body: &[u8]) -> impl Iterator<Item = (Kind, Digest, u64)> + '_ {
    body.split(|b| *b == b'\n').filter_map(|line| {
        let line: Line = serde_json::from_slice(line).ok()?;
        let kind = match line.k.as_str() {
            "blob" => Kind::Blob,
            "manifest" => Kind::Manifest,
            _ => return None,
        };
        Some((kind, Digest::from_hex(&line.d).ok()?, line.t))
    })
}

/// A batch name unique to this writer: `<unix-ms>-<nonce>.json`.
pub fn batch_name(counter: &AtomicU64) -> String {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{:x}{:08x}{:x}.json",
        now_millis(),
        std::process::id(),
        nanos,
        n
    )
}

/// This replica's accesses since its last flush.
pub struct AccessLog {
    replica: String,
    capacity: usize,
    /// The newest access of each (kind, digest).
    noted: Mutex<HashMap<(Kind, Digest), u64>>,
    batches: AtomicU64,
}

impl AccessLog {
    /// `replica`: `[cluster] replica_id`, the batch keys' second segment.
    pub fn new(replica: impl Into<String>) -> AccessLog {
        AccessLog::with_capacity(replica, DEFAULT_CAPACITY)
    }

    pub fn with_capacity(replica: impl Into<String>, capacity: usize) -> AccessLog {
        AccessLog {
            replica: replica.into(),
            capacity: capacity.max(1),
            noted: Mutex::new(HashMap::new()),
            batches: AtomicU64::new(0),
        }
    }

    /// Notes an access now (a hit or a fill of either tier).
    pub fn note(&self, kind: Kind, digest: &Digest) {
        self.note_at(kind, digest, now_millis());
    }

    /// Notes an access at `unix_ms`.
    pub fn note_at(&self, kind: Kind, digest: &Digest, unix_ms: u64) {
        let mut noted = self.noted.lock();
        if let Some(t) = noted.get_mut(&(kind, digest.clone())) {
            *t = (*t).max(unix_ms);
            return;
        }
        if noted.len() >= self.capacity {
            drop_oldest(&mut noted, self.capacity);
        }
        noted.insert((kind, digest.clone()), unix_ms);
    }

    /// Distinct digests noted since the last flush.
    pub fn len(&self) -> usize {
        self.noted.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what was noted as one batch; `Ok(0)` without a request when
    /// nothing was. On failure the records are kept for the next flush
    /// (still within the capacity), so a store that is down loses nothing
    /// but the oldest.
    pub async fn flush(&self, bucket: &Bucket) -> Result<usize, BucketError> {
        let taken = std::mem::take(&mut *self.noted.lock());
        if taken.is_empty() {
            return Ok(0);
        }
        let body = encode(&taken);
        let name = batch_name(&self.batches);
        match bucket.put_access_batch(&self.replica, &name, body).await {
            Ok(()) => Ok(taken.len()),
            Err(e) => {
                let mut noted = self.noted.lock();
                for (key, t) in taken {
                    if noted.len() >= self.capacity && !noted.contains_key(&key) {
                        drop_oldest(&mut noted, self.capacity);
                    }
                    let slot = noted.entry(key).or_insert(t);
                    *slot = (*slot).max(t);
                }
                Err(e)
            }
        }
    }

    /// Flushes every `interval` until `shutdown` turns true, then once
    /// more. A failed flush is logged and retried at the next interval.
    pub async fn run(
        self: Arc<Self>,
        bucket: Bucket,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let woke = tokio::select! {
                _ = tokio::time::sleep(interval) => None,
                changed = shutdown.changed() => Some(changed.is_ok()),
            };
            let stop = match woke {
                None => false,
                Some(sender_alive) => !sender_alive || *shutdown.borrow(),
            };
            if let Err(e) = self.flush(&bucket).await {
                tracing::debug!(error = %e, "access records not written; kept for the next flush");
            }
            if stop {
                return;
            }
        }
    }
}

/// Makes room by forgetting the oldest 1/64 of the map (at least one), so
/// a full map costs one linear pass per many inserts. Forgetting an access
/// only makes content look older than it is to the janitor: at worst an
/// early eviction, which is a miss, never a wrong byte.
fn drop_oldest(noted: &mut HashMap<(Kind, Digest), u64>, capacity: usize) {
    let n = (capacity / 64).max(1).min(noted.len());
    if n == 0 {
        return;
    }
    let mut times: Vec<u64> = noted.values().copied().collect();
    let (_, cut, _) = times.select_nth_unstable(n - 1);
    let cut = *cut;
    let mut left = n;
    noted.retain(|_, t| {
        if left > 0 && *t <= cut {
            left -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn d(i: u32) -> Digest {
        Digest::sha256_of(&i.to_be_bytes())
    }

    #[test]
    fn a_batch_reads_back_and_foreign_lines_are_skipped() {
        let mut records = HashMap::new();
        records.insert((Kind::Blob, d(1)), 5);
        records.insert((Kind::Manifest, d(2)), 7);
        let mut body = encode(&records).to_vec();
        body.extend_from_slice(b"{\"k\":\"chart\",\"d\":\"00\",\"t\":1}\nnot json\n");
        let mut back: Vec<(Kind, Digest, u64)> = decode(&body).collect();
        back.sort();
        assert_eq!(back, vec![(Kind::Blob, d(1), 5), (Kind::Manifest, d(2), 7)]);
        let line = String::from_utf8(encode(&records).to_vec()).unwrap();
        assert!(line.contains(&format!(
            "{{\"k\":\"blob\",\"d\":\"{}\",\"t\":5}}",
            d(1).hex()
        )));
    }

    #[test]
    fn the_map_is_bounded_and_keeps_the_newest() {
        let log = AccessLog::with_capacity("r1", 128);
        for i in 0..1000 {
            log.note_at(Kind::Blob, &d(i), 1000 + i as u64);
        }
        assert!(log.len() <= 128, "{}", log.len());
        let noted = log.noted.lock();
        assert!(noted.contains_key(&(Kind::Blob, d(999))));
        assert!(!noted.contains_key(&(Kind::Blob, d(0))));
        drop(noted);
        // A second note of one digest keeps its newest time.
        log.note_at(Kind::Blob, &d(999), 5);
        assert_eq!(log.noted.lock()[&(Kind::Blob, d(999))], 1999);
    }

    #[tokio::test]
    async fn a_flush_writes_one_batch_under_the_replica_and_empties_the_log() {
        let bucket = Bucket::over(Arc::new(InMemory::new()), "p", Duration::from_secs(5));
        let log = AccessLog::new("r1");
        assert_eq!(log.flush(&bucket).await.unwrap(), 0);
        log.note(Kind::Blob, &d(1));
        log.note(Kind::Manifest, &d(2));
        log.note(Kind::Blob, &d(1));
        assert_eq!(log.flush(&bucket).await.unwrap(), 2);
        assert!(log.is_empty());
        let mut pages = bucket.list_access_batches();
        let batches = pages.next_page(10).await.unwrap().unwrap();
        assert_eq!(batches.len(), 1);
        let name = batches[0].name();
        assert!(name.starts_with("p/access/r1/"), "{name}");
        assert!(name.ends_with(".json"), "{name}");
        let body = bucket
            .read_access_batch(&batches[0], MAX_BATCH_BYTES)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decode(&body).count(), 2);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_records() {
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        // A store slower than the timeout: every put times out.
        let slow = ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: Duration::from_secs(60),
                ..Default::default()
            },
        );
        let bucket = Bucket::over(Arc::new(slow), "p", Duration::from_millis(50));
        let log = AccessLog::new("r1");
        log.note_at(Kind::Blob, &d(1), 10);
        assert!(log.flush(&bucket).await.is_err());
        assert_eq!(log.noted.lock()[&(Kind::Blob, d(1))], 10);
    }
}
