use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::*;
use crate::cache::upkeep::AccessLog;
use crate::metrics::Metrics;

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn bucket(store: Arc<dyn ObjectStore>) -> Bucket {
    Bucket::over(store, "fleet", Duration::from_secs(5))
}

fn settings(replica: &str) -> JanitorSettings {
    JanitorSettings {
        replica_id: replica.into(),
        high_water: None,
        low_water: None,
        max_age: None,
        lease_ttl: Duration::from_secs(30),
        run_timeout: Duration::from_secs(60),
    }
}

fn janitor(b: &Bucket, settings: JanitorSettings) -> (Janitor, Arc<SharedTierMetrics>) {
    let metrics = Metrics::new().shared.clone();
    (Janitor::new(b.clone(), settings, metrics.clone()), metrics)
}

/// A blob of `size` bytes, distinct per `i`.
async fn blob(b: &Bucket, i: u32, size: usize) -> Digest {
    let mut bytes = i.to_be_bytes().to_vec();
    bytes.resize(size.max(4), 0xa5);
    let d = Digest::sha256_of(&bytes);
    b.put(Kind::Blob, &d, Bytes::from(bytes), None)
        .await
        .unwrap();
    d
}

async fn present(b: &Bucket, d: &Digest) -> bool {
    b.stat(Kind::Blob, d).await.unwrap().is_some()
}

/// A replica's batch, as its `AccessLog` writes it.
async fn accessed(b: &Bucket, replica: &str, records: &[(&Digest, u64)]) {
    let log = AccessLog::new(replica);
    for (d, t) in records {
        log.note_at(Kind::Blob, d, *t);
    }
    log.flush(b).await.unwrap();
}

async fn batches(b: &Bucket) -> Vec<AccessBatch> {
    let mut pages = b.list_access_batches();
    let mut out = Vec::new();
    while let Some(page) = pages.next_page(100).await.unwrap() {
        out.extend(page);
    }
    out
}

/// The replicas' clock ten days after the objects were stored: by
/// `Last-Modified`, everything is ten days old.
fn later() -> u64 {
    now_millis() + 10 * DAY
}

#[tokio::test]
async fn content_not_accessed_for_max_age_goes_and_an_unrecorded_object_ages_from_its_store_time() {
    let b = bucket(Arc::new(InMemory::new()));
    let fresh = blob(&b, 1, 100).await;
    let stale = blob(&b, 2, 100).await;
    let unrecorded = blob(&b, 3, 100).await;
    let now = later();
    accessed(&b, "r1", &[(&fresh, now - HOUR), (&stale, now - 3 * DAY)]).await;
    let (j, metrics) = janitor(
        &b,
        JanitorSettings {
            max_age: Some(Duration::from_secs(2 * 86_400)),
            ..settings("r1")
        },
    );
    let report = j.run_at(now).await.unwrap();
    assert_eq!(report.evicted_age, 2, "{report:?}");
    assert_eq!(report.evicted_size, 0);
    assert!(present(&b, &fresh).await);
    assert!(!present(&b, &stale).await);
    assert!(!present(&b, &unrecorded).await);
    assert_eq!((report.objects, report.bytes), (1, 100));
    assert_eq!(metrics.bucket_bytes.get(), 100);
    assert_eq!(metrics.evicted.with_label_values(&["age"]).get(), 2);
    assert_eq!(metrics.evicted.with_label_values(&["size"]).get(), 0);

    // Through the public entry point, on the real clock: nothing is two
    // days old yet, and the run is counted.
    let report = j.run_once().await.unwrap();
    assert_eq!(report.evicted_age, 0);
    assert_eq!(metrics.janitor_runs.with_label_values(&["ok"]).get(), 1);
}

#[tokio::test]
async fn above_high_water_the_least_recently_used_across_replicas_go_down_to_low_water() {
    let b = bucket(Arc::new(InMemory::new()));
    let a = blob(&b, 1, 100).await;
    let bb = blob(&b, 2, 100).await;
    let c = blob(&b, 3, 100).await;
    let d = blob(&b, 4, 100).await;
    let now = later();
    // Replica 1 alone would call `a` the oldest; replica 2 read it since.
    accessed(&b, "r1", &[(&a, now - 4 * HOUR), (&bb, now - HOUR)]).await;
    accessed(
        &b,
        "r2",
        &[
            (&a, now - HOUR / 2),
            (&c, now - 3 * HOUR),
            (&d, now - 2 * HOUR),
        ],
    )
    .await;
    let (j, metrics) = janitor(
        &b,
        JanitorSettings {
            high_water: Some(350),
            low_water: Some(250),
            ..settings("r1")
        },
    );
    let report = j.run_at(now).await.unwrap();
    assert_eq!(report.evicted_size, 2, "{report:?}");
    assert_eq!(report.evicted_bytes, 200);
    assert!(present(&b, &a).await);
    assert!(present(&b, &bb).await);
    assert!(!present(&b, &c).await);
    assert!(!present(&b, &d).await);
    assert_eq!(metrics.evicted.with_label_values(&["size"]).get(), 2);
    assert_eq!(metrics.bucket_bytes.get(), 200);

    // Below high water now: the next run removes nothing.
    let report = j.run_at(now).await.unwrap();
    assert_eq!(report.evicted_size, 0, "{report:?}");
    assert_eq!(report.bytes, 200);
}

#[tokio::test]
async fn a_digest_a_live_fill_lease_names_is_kept() {
    let b = bucket(Arc::new(InMemory::new()));
    let leased = blob(&b, 1, 100).await;
    let next = blob(&b, 2, 100).await;
    let newest = blob(&b, 3, 100).await;
    let now = later();
    accessed(
        &b,
        "r1",
        &[
            (&leased, now - 3 * HOUR),
            (&next, now - 2 * HOUR),
            (&newest, now - HOUR),
        ],
    )
    .await;
    let holder = Holder {
        replica: "r2".into(),
        url: "http://r2:5002".into(),
        nonce: "n".into(),
        done: false,
    };
    let Claim::Won(_lease) = b
        .claim(&leased, &holder, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    let (j, _) = janitor(
        &b,
        JanitorSettings {
            high_water: Some(250),
            low_water: Some(200),
            ..settings("r1")
        },
    );
    let report = j.run_at(now).await.unwrap();
    assert!(report.kept_leased >= 1, "{report:?}");
    assert!(present(&b, &leased).await, "the leased digest stays");
    assert!(
        !present(&b, &next).await,
        "the next least recently used goes"
    );
    assert!(present(&b, &newest).await);
}

#[tokio::test]
async fn content_accessed_within_two_lease_ttls_is_kept_whatever_the_bounds() {
    let b = bucket(Arc::new(InMemory::new()));
    let reading = blob(&b, 1, 100).await;
    let also = blob(&b, 2, 100).await;
    let old = blob(&b, 3, 100).await;
    let now = later();
    accessed(
        &b,
        "r1",
        &[
            (&reading, now - 10_000),
            (&also, now - 5_000),
            (&old, now - 2 * DAY),
        ],
    )
    .await;
    let (j, _) = janitor(
        &b,
        JanitorSettings {
            high_water: Some(150),
            low_water: Some(50),
            // Shorter than the open window: still no eviction of a read.
            max_age: Some(Duration::from_millis(1)),
            ..settings("r1")
        },
    );
    let report = j.run_at(now).await.unwrap();
    assert!(present(&b, &reading).await);
    assert!(present(&b, &also).await);
    assert!(!present(&b, &old).await);
    assert_eq!(report.evicted_age, 1, "{report:?}");
    assert_eq!(report.kept_open, 2, "{report:?}");
    assert_eq!(report.bytes, 200);
}

#[tokio::test]
async fn a_second_janitor_skips_while_the_lease_is_held_and_runs_once_it_is_released() {
    let b = bucket(Arc::new(InMemory::new()));
    let old = blob(&b, 1, 100).await;
    let other = Holder {
        replica: "r1".into(),
        url: String::new(),
        nonce: "other".into(),
        done: false,
    };
    let Claim::Won(held) = b
        .claim_named(LEASE, &other, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    let (j, metrics) = janitor(
        &b,
        JanitorSettings {
            max_age: Some(Duration::from_secs(3600)),
            ..settings("r2")
        },
    );
    let report = j.run_once().await.unwrap();
    assert_eq!(report.skipped_for.as_deref(), Some("r1"));
    assert_eq!(
        metrics.janitor_runs.with_label_values(&["skipped"]).get(),
        1
    );
    assert_eq!(metrics.janitor_runs.with_label_values(&["ok"]).get(), 0);
    let report = j.run_at(later()).await.unwrap();
    assert!(report.skipped());
    assert!(present(&b, &old).await, "a skipped run removes nothing");

    assert!(b.release(held).await.unwrap());
    let report = j.run_at(later()).await.unwrap();
    assert!(!report.skipped(), "{report:?}");
    assert_eq!(report.evicted_age, 1);
    // It released its own lease: a third replica may run at once.
    let (k, _) = janitor(&b, settings("r3"));
    assert!(!k.run_once().await.unwrap().skipped());
}

#[tokio::test]
async fn compaction_leaves_one_batch_with_the_newest_time_of_each_digest() {
    let b = bucket(Arc::new(InMemory::new()));
    let a = blob(&b, 1, 100).await;
    let c = blob(&b, 2, 100).await;
    let gone = blob(&b, 3, 100).await;
    let now = later();
    accessed(&b, "r1", &[(&a, now - 5 * HOUR), (&c, now - HOUR)]).await;
    accessed(&b, "r1", &[(&a, now - 3 * HOUR)]).await;
    accessed(&b, "r2", &[(&a, now - 4 * HOUR), (&gone, now - 9 * DAY)]).await;
    assert_eq!(batches(&b).await.len(), 3);
    let (j, _) = janitor(
        &b,
        JanitorSettings {
            max_age: Some(Duration::from_secs(86_400)),
            ..settings("r1")
        },
    );
    let report = j.run_at(now).await.unwrap();
    assert_eq!(report.batches_merged, 3, "{report:?}");
    assert_eq!(report.batches_written, 1);
    assert_eq!(report.evicted_age, 1);
    let left = batches(&b).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(is_merged(&left[0]), "{}", left[0].name());
    let body = b
        .read_access_batch(&left[0], MAX_BATCH_BYTES)
        .await
        .unwrap()
        .unwrap();
    let mut records: Vec<(Kind, Digest, u64)> = access::decode(&body).collect();
    records.sort();
    let mut want = vec![
        (Kind::Blob, a.clone(), now - 3 * HOUR),
        (Kind::Blob, c.clone(), now - HOUR),
    ];
    want.sort();
    assert_eq!(records, want, "the evicted digest's record is dropped");

    // A new batch and the merged one merge again into one.
    accessed(&b, "r2", &[(&c, now - HOUR / 2)]).await;
    let report = j.run_at(now).await.unwrap();
    assert_eq!(report.batches_merged, 2, "{report:?}");
    assert_eq!(batches(&b).await.len(), 1);
    // Nothing new: the merged batch is left as it is.
    let report = j.run_at(now).await.unwrap();
    assert_eq!(report.batches_written, 0, "{report:?}");
    assert_eq!(batches(&b).await.len(), 1);
    assert!(present(&b, &a).await && present(&b, &c).await);
}

#[tokio::test]
async fn an_object_rewritten_since_the_listing_is_not_deleted() {
    let store = Arc::new(InMemory::new());
    let b = bucket(store.clone());
    let rewritten = blob(&b, 1, 100).await;
    let old = blob(&b, 2, 100).await;
    let hex = rewritten.hex();
    let victim = Path::from(format!("fleet/blobs/sha256/{}/{hex}", &hex[..2]));
    let shifty = bucket(Arc::new(Shifty {
        inner: store.clone(),
        victim,
    }));
    let (j, metrics) = janitor(
        &shifty,
        JanitorSettings {
            max_age: Some(Duration::from_secs(86_400)),
            ..settings("r1")
        },
    );
    let report = j.run_at(later()).await.unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    assert_eq!(report.evicted_age, 1);
    assert!(present(&b, &rewritten).await, "rewritten meanwhile: kept");
    assert!(!present(&b, &old).await);
    assert_eq!(metrics.evicted.with_label_values(&["age"]).get(), 1);
}

#[tokio::test]
async fn an_abandoned_fill_lease_is_removed_and_a_fresh_one_is_not() {
    let b = bucket(Arc::new(InMemory::new()));
    let d = Digest::sha256_of(b"x");
    let holder = Holder {
        replica: "r2".into(),
        url: String::new(),
        nonce: "n".into(),
        done: false,
    };
    let ttl = Duration::ZERO;
    assert!(matches!(
        b.claim(&d, &holder, ttl).await.unwrap(),
        Claim::Won(_)
    ));
    // With a zero TTL the lease is abandoned only past ABANDONED_AFTER, by
    // the store's clock: not yet.
    let (j, _) = janitor(
        &b,
        JanitorSettings {
            lease_ttl: ttl,
            ..settings("r1")
        },
    );
    let report = j.run_at(now_millis()).await.unwrap();
    assert_eq!(report.fill_leases_removed, 0);
    let mut pages = b.list_fill_leases();
    assert_eq!(pages.next_page(10).await.unwrap().unwrap().len(), 1);
}

#[test]
fn the_plan_on_any_clock() {
    let now = 100 * DAY;
    let object = |i: u32, size: u64, modified_ms: u64| BucketObject {
        kind: Kind::Blob,
        digest: Digest::sha256_of(&i.to_be_bytes()),
        size,
        last_modified: UNIX_EPOCH + Duration::from_millis(modified_ms),
        e_tag: Some(format!("{i}")),
    };
    let objects = vec![
        object(0, 10, now - 50 * DAY),
        object(1, 10, now - 40 * DAY),
        object(2, 10, now - 30 * DAY),
        // Stored long ago, read recently.
        object(3, 10, now - 90 * DAY),
    ];
    let last = vec![None, None, None, Some(now - DAY)];
    let s = JanitorSettings {
        max_age: Some(Duration::from_secs(45 * 86_400)),
        high_water: Some(25),
        low_water: Some(15),
        ..settings("r1")
    };
    let p = plan(&objects, &last, &HashSet::new(), now, &s);
    assert_eq!(p.total, 40);
    assert_eq!(
        p.evict,
        vec![(0, Reason::Age), (1, Reason::Size), (2, Reason::Size)]
    );
    // Leased: skipped, the next one goes in its place.
    let leased: HashSet<Digest> = [objects[1].digest.clone()].into();
    let p = plan(&objects, &last, &leased, now, &s);
    assert_eq!(
        p.evict,
        vec![(0, Reason::Age), (2, Reason::Size), (3, Reason::Size)]
    );
    assert_eq!(p.kept_leased, 1);
    // Unbounded: nothing.
    let p = plan(&objects, &last, &HashSet::new(), now, &settings("r1"));
    assert!(p.evict.is_empty());
}

/// A store where one object is rewritten (same bytes, new ETag) right
/// after every listing: another replica refilling it while the janitor
/// decides.
#[derive(Debug)]
struct Shifty {
    inner: Arc<InMemory>,
    victim: Path,
}

impl std::fmt::Display for Shifty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shifty")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Shifty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let victim = self.victim.clone();
        let prefix = prefix.cloned();
        futures_util::stream::once(async move {
            let listed: Vec<object_store::Result<ObjectMeta>> =
                inner.list(prefix.as_ref()).collect().await;
            let shown = listed
                .iter()
                .any(|m| m.as_ref().is_ok_and(|m| m.location == victim));
            if shown {
                if let Ok(got) = inner.get(&victim).await {
                    if let Ok(bytes) = got.bytes().await {
                        let _ = inner.put(&victim, bytes.into()).await;
                    }
                }
            }
            futures_util::stream::iter(listed)
        })
        .flatten()
        .boxed()
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn the_replica_s_own_unflushed_records_count_in_its_run() {
    let b = bucket(Arc::new(InMemory::new()));
    let read = blob(&b, 1, 100).await;
    let log = Arc::new(AccessLog::new("r1"));
    // Read ten days after it was stored, on the real clock "now".
    log.note_at(Kind::Blob, &read, now_millis() + 10 * DAY);
    let (j, _) = janitor(
        &b,
        JanitorSettings {
            max_age: Some(Duration::from_secs(86_400)),
            ..settings("r1")
        },
    );
    let j = j.with_access_log(log.clone());
    let report = j.run_once().await.unwrap();
    assert_eq!(report.evicted_age, 0, "{report:?}");
    assert!(log.is_empty());
    let left = batches(&b).await;
    assert_eq!(left.len(), 1);
    assert!(is_merged(&left[0]));
    let body = b
        .read_access_batch(&left[0], MAX_BATCH_BYTES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(access::decode(&body).count(), 1);
}
