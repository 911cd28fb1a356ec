//! A fill's upload to the shared tier, beside the fill: parts go up from
//! the growing local file as it passes each part boundary, and the object
//! is completed only once the fill has verified and committed the blob —
//! so the bucket never holds a final key with unverified bytes. A failed
//! or cancelled fill drops the upload, which aborts it. Content smaller
//! than one part goes up in one PUT at the end.
//!
//! It runs on its own task, reading the fill's progress: a slow store
//! never slows the fill or its clients.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::fill::{Phase, Progress};
use crate::cache::shared::{LeaseKeeper, SharedTier};
use crate::cache::storage::bucket::multipart::Upload;
use crate::cache::storage::bucket::BucketError;
use crate::cache::storage::{Kind, ReadAt};
use crate::registry::Digest;

/// Uploads the fill's blob; `lease` is held (renewed) until it ends, so a
/// follower whose stream broke finds the blob in the bucket, or a live
/// lease, never neither.
pub async fn upload(
    shared: Arc<SharedTier>,
    digest: Digest,
    mut progress: watch::Receiver<Progress>,
    lease: Option<LeaseKeeper>,
) {
    let _lease = lease;
    let mut up = Uploader {
        shared: &shared,
        digest: &digest,
        part: shared.settings().part_size,
        upload: None,
    };
    let result = loop {
        let (phase, written) = {
            let p = progress.borrow_and_update();
            (p.phase.clone(), p.written)
        };
        match phase {
            Phase::Complete { reader, size } => break up.finish(reader, size).await,
            Phase::Failed(_) => break Ok(false),
            Phase::Streaming {
                reader: Some(reader),
                ..
            } => {
                if let Err(e) = up.parts_up_to(&reader, written).await {
                    break Err(e);
                }
            }
            Phase::Streaming { reader: None, .. } | Phase::Connecting => {}
        }
        if progress.changed().await.is_err() {
            // The fill is over; its last word is what counts.
            let last = progress.borrow().phase.clone();
            break match last {
                Phase::Complete { reader, size } => up.finish(reader, size).await,
                _ => Ok(false),
            };
        }
    };
    match result {
        Ok(true) => tracing::debug!(%digest, "blob shared in the bucket"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(%digest, error = %e, "uploading a blob to the shared tier failed; other replicas fetch it themselves")
        }
    }
}

struct Uploader<'a> {
    shared: &'a SharedTier,
    digest: &'a Digest,
    part: u64,
    upload: Option<Upload>,
}

impl Uploader<'_> {
    fn sent(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| u.sent)
    }

    /// Sends every whole part below `written` (bytes already in the file).
    async fn parts_up_to(
        &mut self,
        reader: &Arc<dyn ReadAt>,
        written: u64,
    ) -> Result<(), BucketError> {
        while written >= self.sent() + self.part {
            self.send(reader, self.part).await?;
        }
        Ok(())
    }

    async fn send(&mut self, reader: &Arc<dyn ReadAt>, len: u64) -> Result<(), BucketError> {
        if self.upload.is_none() {
            self.upload = Some(
                self.shared
                    .bucket()
                    .begin_upload(Kind::Blob, self.digest, None)
                    .await?,
            );
        }
        let bytes = read(reader, self.sent(), len).await?;
        if let Some(upload) = self.upload.as_mut() {
            upload.put_part(bytes).await?;
        }
        Ok(())
    }

    /// The verified blob: the rest of its parts and the completion, or one
    /// PUT for a small one. `false` when the store is known down.
    async fn finish(&mut self, reader: Arc<dyn ReadAt>, size: u64) -> Result<bool, BucketError> {
        if self.upload.is_none() {
            if !self.shared.worth_asking() {
                return Ok(false);
            }
            if size <= self.part {
                let bytes = read(&reader, 0, size).await?;
                self.shared
                    .bucket()
                    .put(Kind::Blob, self.digest, bytes, None)
                    .await?;
                return Ok(true);
            }
        }
        while self.sent() < size {
            let len = (size - self.sent()).min(self.part);
            self.send(&reader, len).await?;
        }
        if let Some(upload) = self.upload.take() {
            upload.complete().await?;
        }
        Ok(true)
    }
}

/// `len` bytes at `offset` of the local file, off the runtime.
async fn read(reader: &Arc<dyn ReadAt>, offset: u64, len: u64) -> Result<Bytes, BucketError> {
    let reader = reader.clone();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
        let n = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut buf = vec![0u8; n];
        reader.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(|e| BucketError::Local(e.to_string()))?;
    read.map_err(|e| BucketError::Local(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::memory::InMemory;

    use super::*;
    use crate::cache::shared::{PeerClient, TierSettings};
    use crate::cache::storage::bucket::Bucket;
    use crate::cache::storage::{ContentStore, FsStore};
    use crate::config::{Coordination, OnHolderUnreachable};
    use crate::metrics::Metrics;

    const PART: u64 = 5 << 20;

    fn tier() -> Arc<SharedTier> {
        let bucket = Bucket::over(Arc::new(InMemory::new()), "t", Duration::from_secs(5));
        let metrics = Arc::new(Metrics::new());
        let peer =
            PeerClient::new(None, Duration::from_secs(1), Duration::from_secs(1), None).unwrap();
        Arc::new(SharedTier::new(
            bucket,
            TierSettings {
                replica_id: "r".into(),
                advertise_url: "http://127.0.0.1:1".into(),
                coordination: Coordination::S3Lease,
                lease_ttl: Duration::from_secs(30),
                on_holder_unreachable: OnHolderUnreachable::Fetch,
                part_size: PART,
                peer_networks: Vec::new(),
                peer_hosts: Vec::new(),
            },
            peer,
            metrics,
        ))
    }

    fn progress(phase: Phase, written: u64) -> Progress {
        Progress {
            written,
            received: written,
            ring: None,
            phase,
        }
    }

    /// Streams `data` through a staged file in `steps`, as a fill does, with
    /// the upload beside it; `fail` ends the fill with a failure instead of
    /// completing it. Returns the tier and whether the object showed up
    /// before the end.
    async fn fill(data: &[u8], steps: usize, fail: bool) -> (Arc<SharedTier>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let mut staged = store.begin().unwrap();
        let reader = staged.reader().unwrap();
        let (tx, rx) = watch::channel(progress(Phase::Connecting, 0));
        let shared = tier();
        let digest = Digest::sha256_of(data);
        let task = tokio::spawn(upload(shared.clone(), digest.clone(), rx, None));
        let step = data.len().div_ceil(steps);
        let mut early = false;
        for chunk in data.chunks(step) {
            staged.append(chunk).unwrap();
            let written = staged.len();
            tx.send_replace(progress(
                Phase::Streaming {
                    reader: Some(reader.clone()),
                    size: Some(data.len() as u64),
                },
                written,
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
            early |= shared
                .bucket()
                .stat(Kind::Blob, &digest)
                .await
                .unwrap()
                .is_some();
        }
        if fail {
            tx.send_replace(progress(
                Phase::Failed(crate::cache::CacheError::Internal("broke".into())),
                staged.len(),
            ));
        } else {
            tx.send_replace(progress(
                Phase::Complete {
                    reader: reader.clone(),
                    size: data.len() as u64,
                },
                data.len() as u64,
            ));
        }
        drop(tx);
        task.await.unwrap();
        (shared, early)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_large_blob_goes_up_in_parts_and_appears_only_once_verified() {
        let blob = data((3 * PART + 12345) as usize);
        let (shared, early) = fill(&blob, 8, false).await;
        assert!(!early, "the final key appeared before the fill completed");
        let d = Digest::sha256_of(&blob);
        let (stored, body) = shared
            .bucket()
            .read_from(Kind::Blob, &d, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.size, blob.len() as u64);
        let got: Vec<Bytes> = futures_util::TryStreamExt::try_collect(body).await.unwrap();
        assert_eq!(Digest::sha256_of(&got.concat()), d);
    }

    #[tokio::test]
    async fn a_small_blob_goes_up_in_one_put() {
        let blob = data(1000);
        let (shared, early) = fill(&blob, 3, false).await;
        assert!(!early);
        let d = Digest::sha256_of(&blob);
        assert_eq!(
            shared
                .bucket()
                .stat(Kind::Blob, &d)
                .await
                .unwrap()
                .map(|s| s.size),
            Some(1000)
        );
    }

    #[tokio::test]
    async fn a_failed_fill_leaves_nothing_in_the_bucket() {
        for len in [1000, (2 * PART + 1) as usize] {
            let blob = data(len);
            let (shared, _) = fill(&blob, 4, true).await;
            let d = Digest::sha256_of(&blob);
            assert_eq!(
                shared.bucket().stat(Kind::Blob, &d).await.unwrap(),
                None,
                "{len}"
            );
        }
    }
}
