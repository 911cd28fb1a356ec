//! What the bucket janitor walks: the content objects of a kind, the
//! access records replicas write in batches (`access/<replica>/<name>`),
//! the fill leases, and the janitor's own lease (`leases/janitor`).
//!
//! Every listing comes in pages ([`Pages::next_page`]), each bounded in
//! memory by its size and in time by `request_timeout`, so a bucket of a
//! million objects is walked without holding the store's whole answer.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, UpdateVersion};

use super::lease::{Claim, Holder, Lease, CLOCK_MARGIN};
use super::{is_not_found, Bucket, BucketError, Kind, Result, Stored};
use crate::registry::Digest;

/// A content object as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketObject {
    pub kind: Kind,
    pub digest: Digest,
    pub size: u64,
    /// The store's clock.
    pub last_modified: SystemTime,
    pub e_tag: Option<String>,
}

impl BucketObject {
    /// What [`Bucket::remove_if_unchanged`] compares with.
    pub fn stored(&self) -> Stored {
        Stored {
            size: self.size,
            e_tag: self.e_tag.clone(),
        }
    }
}

/// One object of access records (`access/<replica>/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessBatch {
    key: Path,
    pub size: u64,
    pub last_modified: SystemTime,
    pub e_tag: Option<String>,
}

impl AccessBatch {
    /// Its key, for logs.
    pub fn name(&self) -> String {
        self.key.to_string()
    }
}

/// A fill lease as the listing shows it (its body unread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillLeaseEntry {
    pub digest: Digest,
    /// The store's clock: the holder's last renewal.
    pub last_modified: SystemTime,
    pub e_tag: Option<String>,
}

/// A listing, one bounded page at a time.
pub struct Pages<T> {
    bucket: Bucket,
    prefix: Path,
    stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
    parse: fn(&Bucket, ObjectMeta) -> Option<T>,
    done: bool,
}

impl<T> Pages<T> {
    /// Up to `max` more entries (entries that are not of this listing's
    /// shape are skipped); `None` once the listing is exhausted. Each page
    /// is one `list` call under `request_timeout`.
    pub async fn next_page(&mut self, max: usize) -> Result<Option<Vec<T>>> {
        if self.done {
            return Ok(None);
        }
        let max = max.max(1);
        let Pages {
            bucket,
            prefix,
            stream,
            parse,
            done,
        } = self;
        let collect = async {
            let mut page = Vec::new();
            let mut seen = 0;
            // Bounded by what was read, not what was kept, so a prefix full
            // of foreign keys still answers within its timeout.
            while seen < max {
                match stream.next().await {
                    Some(Ok(meta)) => {
                        seen += 1;
                        if let Some(entry) = parse(bucket, meta) {
                            page.push(entry);
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        *done = true;
                        break;
                    }
                }
            }
            Ok(page)
        };
        let page = bucket.bounded("list", prefix, collect).await?;
        if page.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some(page))
    }
}

/// The path's segments after the bucket's prefix.
fn segments(bucket: &Bucket, path: &Path) -> Vec<String> {
    path.parts()
        .skip(bucket.prefix.len())
        .map(|p| p.as_ref().to_owned())
        .collect()
}

fn parse_content(bucket: &Bucket, meta: ObjectMeta) -> Option<BucketObject> {
    let parts = segments(bucket, &meta.location);
    let [top, algorithm, fan, hex] = parts.as_slice() else {
        return None;
    };
    let kind = match top.as_str() {
        "blobs" => Kind::Blob,
        "manifests" => Kind::Manifest,
        _ => return None,
    };
    if algorithm != "sha256" || !hex.starts_with(fan.as_str()) {
        return None;
    }
    let digest = Digest::from_hex(hex).ok()?;
    Some(BucketObject {
        kind,
        digest,
        size: meta.size,
        last_modified: meta.last_modified.into(),
        e_tag: meta.e_tag,
    })
}

fn parse_access(bucket: &Bucket, meta: ObjectMeta) -> Option<AccessBatch> {
    let parts = segments(bucket, &meta.location);
    let [top, _replica, _name] = parts.as_slice() else {
        return None;
    };
    (top == "access").then(|| AccessBatch {
        key: meta.location,
        size: meta.size,
        last_modified: meta.last_modified.into(),
        e_tag: meta.e_tag,
    })
}

fn parse_fill_lease(bucket: &Bucket, meta: ObjectMeta) -> Option<FillLeaseEntry> {
    let parts = segments(bucket, &meta.location);
    let [top, fill, hex] = parts.as_slice() else {
        return None;
    };
    if top != "leases" || fill != "fill" {
        return None;
    }
    Some(FillLeaseEntry {
        digest: Digest::from_hex(hex).ok()?,
        last_modified: meta.last_modified.into(),
        e_tag: meta.e_tag,
    })
}

impl Bucket {
    fn pages<T>(&self, prefix: Path, parse: fn(&Bucket, ObjectMeta) -> Option<T>) -> Pages<T> {
        Pages {
            bucket: self.clone(),
            stream: self.store.list(Some(&prefix)),
            prefix,
            parse,
            done: false,
        }
    }

    /// Every content object of `kind`, page by page.
    pub fn list_content(&self, kind: Kind) -> Pages<BucketObject> {
        let top = match kind {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        };
        self.pages(self.key([top]), parse_content)
    }

    /// Every batch of access records, of every replica.
    pub fn list_access_batches(&self) -> Pages<AccessBatch> {
        self.pages(self.key(["access"]), parse_access)
    }

    /// Stores one batch of access records at `access/<replica>/<name>`.
    pub async fn put_access_batch(&self, replica: &str, name: &str, body: Bytes) -> Result<()> {
        let replica = if replica.is_empty() {
            "unnamed"
        } else {
            replica
        };
        let key = self.key(["access", replica, name]);
        self.observer.bytes_to_store(body.len());
        self.bounded("put", &key, self.store.put(&key, body.into()))
            .await
            .map(drop)
    }

    /// A batch's bytes; `None` when it is gone (another janitor compacted
    /// it). One over `max` bytes is an error: no replica writes one.
    pub async fn read_access_batch(&self, batch: &AccessBatch, max: u64) -> Result<Option<Bytes>> {
        let key = &batch.key;
        let got = match self.bounded("get", key, self.store.get(key)).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if got.meta.size > max {
            return Err(BucketError::TooLarge {
                key: key.to_string(),
                size: got.meta.size,
                max,
            });
        }
        let body = self.bounded("get", key, got.bytes()).await?;
        self.observer.bytes_from_store(body.len());
        Ok(Some(body))
    }

    /// Deletes a batch whose records were merged; one already gone is fine.
    pub async fn remove_access_batch(&self, batch: &AccessBatch) -> Result<()> {
        let key = &batch.key;
        match self.bounded("delete", key, self.store.delete(key)).await {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }

    /// Every fill lease, done or not, page by page.
    pub fn list_fill_leases(&self) -> Pages<FillLeaseEntry> {
        self.pages(self.key(["leases", "fill"]), parse_fill_lease)
    }

    /// Whether a replica is filling `digest` right now: its fill lease
    /// exists, is not marked done, and was renewed within `ttl` (plus
    /// [`CLOCK_MARGIN`]) by `store_now` ([`Bucket::store_now`]). An
    /// unreadable lease counts as live: the janitor keeps what it is
    /// unsure of.
    pub async fn live_fill_lease(
        &self,
        digest: &Digest,
        ttl: Duration,
        store_now: SystemTime,
    ) -> Result<bool> {
        let key = self.lease_key(digest);
        let got = match self.bounded("get", &key, self.store.get(&key)).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let modified = SystemTime::from(got.meta.last_modified);
        let body = self.bounded("get", &key, got.bytes()).await?;
        let age = store_now.duration_since(modified).unwrap_or(Duration::ZERO);
        if age > ttl + CLOCK_MARGIN {
            return Ok(false);
        }
        Ok(serde_json::from_slice::<Holder>(&body).map_or(true, |h| !h.done))
    }

    /// Removes a fill lease nobody renewed since the listing showed it
    /// (an abandoned one, long stale), so `leases/fill/` does not grow with
    /// every digest ever filled. A lease re-created in the window left is
    /// only lost to its holder, which then stops advertising: harmless.
    pub async fn remove_fill_lease_if_unchanged(&self, entry: &FillLeaseEntry) -> Result<bool> {
        let key = self.lease_key(&entry.digest);
        let now = match self.bounded("head", &key, self.store.head(&key)).await {
            Ok(meta) => meta,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        if now.e_tag != entry.e_tag || SystemTime::from(now.last_modified) != entry.last_modified {
            return Ok(false);
        }
        match self.bounded("delete", &key, self.store.delete(&key)).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Bucket::claim`] of a named lease, `leases/<name>` (the janitor's:
    /// `leases/janitor`), with the same rules; renew and release it with
    /// [`Bucket::renew`] and [`Bucket::release`].
    pub async fn claim_named(&self, name: &str, me: &Holder, ttl: Duration) -> Result<Claim> {
        self.claim_key(self.key(["leases", name]), me, ttl).await
    }

    /// [`Bucket::take_over`] of a named lease that [`Bucket::claim_named`]
    /// found stale.
    pub async fn take_over_named(
        &self,
        name: &str,
        me: &Holder,
        seen: UpdateVersion,
    ) -> Result<Option<Lease>> {
        self.take_over_key(self.key(["leases", name]), me, seen)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::ObjectStore;

    use super::*;

    fn bucket(store: Arc<dyn ObjectStore>) -> Bucket {
        Bucket::over(store, "fleet", Duration::from_secs(5))
    }

    fn holder(replica: &str) -> Holder {
        Holder {
            replica: replica.into(),
            url: String::new(),
            nonce: format!("{replica}-nonce"),
            done: false,
        }
    }

    async fn all<T>(mut pages: Pages<T>, size: usize) -> Vec<Vec<T>> {
        let mut out = Vec::new();
        while let Some(page) = pages.next_page(size).await.unwrap() {
            assert!(page.len() <= size);
            out.push(page);
        }
        out
    }

    #[tokio::test]
    async fn content_is_listed_by_kind_in_bounded_pages_with_what_a_delete_guards_on() {
        let store = Arc::new(InMemory::new());
        let b = bucket(store.clone());
        let mut blobs = Vec::new();
        for i in 0..5u8 {
            let bytes = Bytes::from(vec![i; 10 + i as usize]);
            let d = Digest::sha256_of(&bytes);
            b.put(Kind::Blob, &d, bytes, None).await.unwrap();
            blobs.push(d);
        }
        let m = Bytes::from_static(b"{}");
        let md = Digest::sha256_of(&m);
        b.put(Kind::Manifest, &md, m, None).await.unwrap();
        // Keys that are not content are not listed as content.
        store
            .put(
                &Path::from("fleet/blobs/sha256/zz/not-a-digest"),
                Bytes::new().into(),
            )
            .await
            .unwrap();
        b.link("up", "lib/x", &md).await.unwrap();

        let pages = all(b.list_content(Kind::Blob), 2).await;
        assert!(pages.len() >= 3, "{pages:?}");
        let listed: Vec<BucketObject> = pages.into_iter().flatten().collect();
        let mut digests: Vec<Digest> = listed.iter().map(|o| o.digest.clone()).collect();
        digests.sort();
        blobs.sort();
        assert_eq!(digests, blobs);
        for o in &listed {
            assert_eq!(o.kind, Kind::Blob);
            assert_eq!(
                b.stat(Kind::Blob, &o.digest).await.unwrap(),
                Some(o.stored())
            );
        }
        let manifests: Vec<BucketObject> = all(b.list_content(Kind::Manifest), 10)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(manifests.len(), 1);
        assert_eq!(manifests[0].digest, md);
        assert_eq!(manifests[0].size, 2);
    }

    #[tokio::test]
    async fn access_batches_are_put_listed_read_and_removed() {
        let b = bucket(Arc::new(InMemory::new()));
        assert!(all(b.list_access_batches(), 10).await.is_empty());
        b.put_access_batch("r1", "1-a.json", Bytes::from_static(b"one"))
            .await
            .unwrap();
        b.put_access_batch("r2", "2-b.json", Bytes::from_static(b"two!"))
            .await
            .unwrap();
        let batches: Vec<AccessBatch> = all(b.list_access_batches(), 10)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(batches.len(), 2);
        assert!(batches[0].name().ends_with("access/r1/1-a.json"));
        let body = b.read_access_batch(&batches[1], 100).await.unwrap();
        assert_eq!(body.as_deref(), Some(&b"two!"[..]));
        let err = b.read_access_batch(&batches[1], 3).await.unwrap_err();
        assert!(matches!(err, BucketError::TooLarge { .. }), "{err}");
        b.remove_access_batch(&batches[0]).await.unwrap();
        b.remove_access_batch(&batches[0]).await.unwrap();
        assert_eq!(b.read_access_batch(&batches[0], 100).await.unwrap(), None);
        assert_eq!(all(b.list_access_batches(), 10).await.concat().len(), 1);
    }

    #[tokio::test]
    async fn a_live_fill_lease_is_one_held_fresh_and_not_done() {
        let b = bucket(Arc::new(InMemory::new()));
        let d = Digest::sha256_of(b"filling");
        let ttl = Duration::from_secs(30);
        let now = b.store_now("janitor").await.unwrap();
        assert!(!b.live_fill_lease(&d, ttl, now).await.unwrap(), "none");
        let Claim::Won(lease) = b.claim(&d, &holder("a"), ttl).await.unwrap() else {
            panic!("claim")
        };
        assert!(b.live_fill_lease(&d, ttl, now).await.unwrap());
        // By the store's clock, long after: stale.
        let later = now + ttl + CLOCK_MARGIN + Duration::from_secs(5);
        assert!(!b.live_fill_lease(&d, ttl, later).await.unwrap());
        assert!(b.release(lease).await.unwrap());
        assert!(!b.live_fill_lease(&d, ttl, now).await.unwrap(), "done");

        let leases: Vec<FillLeaseEntry> = all(b.list_fill_leases(), 10).await.concat();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].digest, d);
        // Renewed since the listing: kept.
        let Claim::Stale { seen, .. } = b.claim(&d, &holder("b"), ttl).await.unwrap() else {
            panic!("a done lease is stale")
        };
        b.take_over(&d, &holder("b"), seen).await.unwrap().unwrap();
        assert!(!b.remove_fill_lease_if_unchanged(&leases[0]).await.unwrap());
        let fresh: Vec<FillLeaseEntry> = all(b.list_fill_leases(), 10).await.concat();
        assert!(b.remove_fill_lease_if_unchanged(&fresh[0]).await.unwrap());
        assert!(all(b.list_fill_leases(), 10).await.concat().is_empty());
    }

    #[tokio::test]
    async fn a_named_lease_has_one_holder_and_the_fill_leases_are_apart() {
        let b = bucket(Arc::new(InMemory::new()));
        let ttl = Duration::from_secs(30);
        let Claim::Won(mut lease) = b.claim_named("janitor", &holder("a"), ttl).await.unwrap()
        else {
            panic!("first claim")
        };
        match b.claim_named("janitor", &holder("b"), ttl).await.unwrap() {
            Claim::Held { holder, .. } => assert_eq!(holder.replica, "a"),
            other => panic!("{other:?}"),
        }
        assert!(b.renew(&mut lease).await.unwrap());
        assert!(all(b.list_fill_leases(), 10).await.concat().is_empty());
        assert!(b.release(lease).await.unwrap());
        let Claim::Stale { seen, .. } = b.claim_named("janitor", &holder("b"), ttl).await.unwrap()
        else {
            panic!("released")
        };
        assert!(b
            .take_over_named("janitor", &holder("b"), seen.clone())
            .await
            .unwrap()
            .is_some());
        assert!(b
            .take_over_named("janitor", &holder("c"), seen)
            .await
            .unwrap()
            .is_none());
    }
}
