//! Tag records in the bucket: `tags/<upstream>/<repository>/<tag>`, the
//! same JSON as the local tag files; last writer wins, as locally. A
//! replica that has never seen a tag starts from the record another one
//! wrote, then applies its own freshness rules to it.

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::{is_not_found, Bucket, BucketError, Result};
use crate::cache::storage::TagRecord;

/// Tag records are small; anything larger is not one.
const MAX_TAG_RECORD: usize = 64 * 1024;

impl Bucket {
    fn tag_key(&self, upstream: &str, repository: &str, tag: &str) -> object_store::path::Path {
        self.key(
            ["tags", upstream]
                .into_iter()
                .chain(repository.split('/'))
                .chain([tag]),
        )
    }

    pub async fn put_tag(&self, record: &TagRecord) -> Result<()> {
        let key = self.tag_key(&record.upstream, &record.repo, &record.tag);
        let body = serde_json::to_vec(record).map_err(|e| BucketError::Settings(e.to_string()))?;
        self.observer.bytes_to_store(body.len());
        self.bounded("put", &key, self.store.put(&key, Bytes::from(body).into()))
            .await
            .map(drop)
    }

    /// The record another replica wrote; `None` when there is none, or it
    /// does not read as one (it is then only a tag asked of the upstream).
    pub async fn tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>> {
        let key = self.tag_key(upstream, repository, tag);
        let got = match self.bounded("get", &key, self.store.get(&key)).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if got.meta.size > MAX_TAG_RECORD as u64 {
            return Ok(None);
        }
        let body = self.bounded("get", &key, got.bytes()).await?;
        self.observer.bytes_from_store(body.len());
        Ok(serde_json::from_slice::<TagRecord>(&body)
            .ok()
            .filter(|r| r.upstream == upstream && r.repo == repository && r.tag == tag))
    }
}
