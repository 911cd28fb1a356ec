//! Large content as a multipart upload: parts go up as the fill passes each
//! part boundary, and the object appears under its final key only when
//! [`Upload::complete`] is called — after the writer's own sha256 check. A
//! dropped upload is aborted in the background, so a failed fill leaves no
//! object (only the store's own bookkeeping of an aborted upload).

use bytes::Bytes;
use object_store::{Attribute, Attributes, MultipartUpload, PutMultipartOptions};

use super::{Bucket, Kind, Result};
use crate::registry::Digest;

/// A multipart upload in progress.
pub struct Upload {
    bucket: Bucket,
    key: object_store::path::Path,
    inner: Option<Box<dyn MultipartUpload>>,
    /// Bytes sent so far: what the next part follows.
    pub sent: u64,
}

impl Bucket {
    /// Starts a multipart upload of `digest`'s content.
    pub async fn begin_upload(
        &self,
        kind: Kind,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Upload> {
        let key = self.content_key(kind, digest);
        let mut attributes = Attributes::new();
        if let Some(media_type) = media_type {
            attributes.insert(Attribute::ContentType, media_type.to_owned().into());
        }
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let inner = self
            .bounded("multipart", &key, self.store.put_multipart_opts(&key, opts))
            .await?;
        Ok(Upload {
            bucket: self.clone(),
            key,
            inner: Some(inner),
            sent: 0,
        })
    }
}

impl Upload {
    /// Sends the next part (every part but the last at least 5 MiB).
    pub async fn put_part(&mut self, part: Bytes) -> Result<()> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        let len = part.len();
        let call = inner.put_part(part.into());
        self.bucket.bounded("multipart", &self.key, call).await?;
        self.bucket.observer.bytes_to_store(len);
        self.sent += len as u64;
        Ok(())
    }

    /// Makes the object visible. The caller has verified every byte sent.
    pub async fn complete(mut self) -> Result<()> {
        let Some(mut inner) = self.inner.take() else {
            return Ok(());
        };
        let key = self.key.clone();
        self.bucket
            .bounded("multipart", &key, inner.complete())
            .await
            .map(drop)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        // Never completed: the parts are thrown away, best effort, within
        // the call's bound.
        let bucket = self.bucket.clone();
        let key = self.key.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = bucket.bounded("multipart", &key, inner.abort()).await {
                    tracing::debug!(%key, error = %e, "aborting a multipart upload failed");
                }
            });
        }
    }
}
