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
