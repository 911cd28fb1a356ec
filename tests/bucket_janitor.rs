//! The bucket janitor against a real S3 engine (SeaweedFS on 127.0.0.1),
//! through the library API: two replicas' janitors sharing one bucket,
//! access records from two replicas, the janitor lease, a live fill lease,
//! ETag-guarded deletes and compaction.

pub mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::seaweedfs::SeaweedFs;
use regcache::cache::storage::bucket::lease::{Claim, Holder};
use regcache::cache::storage::bucket::Bucket;
use regcache::cache::storage::Kind;
use regcache::cache::upkeep::{AccessLog, Janitor, JanitorSettings};
use regcache::metrics::{Metrics, SharedTierMetrics};
use regcache::registry::Digest;

/// The shortest TTL the config accepts: a recent access protects for 6 s.
const TTL: Duration = Duration::from_secs(3);

fn connect(engine: &SeaweedFs, prefix: &str) -> Bucket {
    Bucket::connect(&engine.settings(prefix)).unwrap()
}

fn settings(replica: &str) -> JanitorSettings {
    JanitorSettings {
        replica_id: replica.into(),
        high_water: None,
        low_water: None,
        max_age: None,
        lease_ttl: TTL,
        run_timeout: Duration::from_secs(120),
    }
}

fn janitor(bucket: &Bucket, settings: JanitorSettings) -> (Janitor, Arc<SharedTierMetrics>) {
    let metrics = Metrics::new().shared.clone();
    (
        Janitor::new(bucket.clone(), settings, metrics.clone()),
        metrics,
    )
}

fn holder(replica: &str) -> Holder {
    Holder {
        replica: replica.into(),
        url: format!("http://127.0.0.1:1/{replica}"),
        nonce: format!("{replica}-{}", std::process::id()),
        done: false,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn blob(b: &Bucket, i: u32, size: usize) -> Digest {
    let mut bytes = i.to_be_bytes().to_vec();
    bytes.resize(size, 0x5a);
    let d = Digest::sha256_of(&bytes);
    b.put(Kind::Blob, &d, Bytes::from(bytes), None)
        .await
        .unwrap();
    d
}

async fn present(b: &Bucket, kind: Kind, d: &Digest) -> bool {
    b.stat(kind, d).await.unwrap().is_some()
}

async fn batch_count(b: &Bucket) -> usize {
    let mut pages = b.list_access_batches();
    let mut n = 0;
    while let Some(page) = pages.next_page(100).await.unwrap() {
        n += page.len();
    }
    n
}

/// Lets everything stored so far age past the open-read window.
async fn age_past_the_open_window() {
    tokio::time::sleep(TTL * 2 + Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_janitors_share_one_bucket() {
    let engine = tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap();

    // Age, the protections, the janitor lease and compaction.
    let r1 = connect(&engine, "age");
    let r2 = connect(&engine, "age");
    let gone = blob(&r1, 1, 1000).await;
    let read_recently = blob(&r1, 2, 1000).await;
    let filling = blob(&r2, 3, 1000).await;
    let manifest = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let md = Digest::sha256_of(&manifest);
    r2.put(Kind::Manifest, &md, manifest, Some("application/json"))
        .await
        .unwrap();
    age_past_the_open_window().await;
    let fresh = blob(&r2, 4, 1000).await;
    let log1 = AccessLog::new("r1");
    log1.note(Kind::Blob, &read_recently);
    log1.flush(&r1).await.unwrap();
    let log2 = AccessLog::new("r2");
    log2.note_at(Kind::Blob, &gone, now_ms() - 3_600_000);
    log2.flush(&r2).await.unwrap();
    // r2 refills `filling` (a corrupt copy, say) under a live fill lease.
    let Claim::Won(_fill) = r2.claim(&filling, &holder("r2"), TTL).await.unwrap() else {
        panic!("fill lease")
    };

    let age = |replica| JanitorSettings {
        max_age: Some(Duration::from_millis(1)),
        ..settings(replica)
    };
    let (j1, m1) = janitor(&r1, age("r1"));
    let (j2, m2) = janitor(&r2, age("r2"));
    // r1's janitor lease held: r2's janitor skips and touches nothing.
    let Claim::Won(held) = r1.claim_named("janitor", &holder("r1"), TTL).await.unwrap() else {
        panic!("janitor lease")
    };
    let skipped = j2.run_once().await.unwrap();
    assert_eq!(skipped.skipped_for.as_deref(), Some("r1"));
    assert_eq!(m2.janitor_runs.with_label_values(&["skipped"]).get(), 1);
    assert!(present(&r1, Kind::Blob, &gone).await);
    assert_eq!(batch_count(&r1).await, 2);
    assert!(r1.release(held).await.unwrap());

    let report = j1.run_once().await.unwrap();
    assert!(!report.skipped(), "{report:?}");
    assert_eq!(report.evicted_age, 2, "{report:?}");
    assert!(!present(&r2, Kind::Blob, &gone).await, "old by its record");
    assert!(
        !present(&r2, Kind::Manifest, &md).await,
        "old by Last-Modified"
    );
    assert!(
        present(&r2, Kind::Blob, &read_recently).await,
        "an open read"
    );
    assert!(
        present(&r2, Kind::Blob, &filling).await,
        "a live fill lease"
    );
    assert!(present(&r2, Kind::Blob, &fresh).await, "just stored");
    assert_eq!(m1.evicted.with_label_values(&["age"]).get(), 2);
    assert_eq!(m1.bucket_bytes.get(), 3000);
    assert_eq!(m1.janitor_runs.with_label_values(&["ok"]).get(), 1);
    assert_eq!(batch_count(&r2).await, 1, "compacted into one batch");

    // r1 released its janitor lease: r2's runs at once.
    let report = j2.run_once().await.unwrap();
    assert!(!report.skipped(), "{report:?}");
    assert_eq!(m2.janitor_runs.with_label_values(&["ok"]).get(), 1);
    assert!(batch_count(&r2).await <= 1);

    // Size: the least recently used across both replicas' records go.
    let r1 = connect(&engine, "size");
    let r2 = connect(&engine, "size");
    let xs = [
        blob(&r1, 10, 1000).await,
        blob(&r1, 11, 1000).await,
        blob(&r2, 12, 1000).await,
        blob(&r2, 13, 1000).await,
    ];
    let stored = now_ms();
    // Each after the objects' Last-Modified, and past the open window by
    // the time the janitor runs. xs[3] has no record: the oldest.
    let log1 = AccessLog::new("r1");
    log1.note_at(Kind::Blob, &xs[0], stored + 50);
    log1.note_at(Kind::Blob, &xs[1], stored + 100);
    log1.flush(&r1).await.unwrap();
    let log2 = AccessLog::new("r2");
    // r1 alone would call xs[0] the least recently used after xs[3].
    log2.note_at(Kind::Blob, &xs[0], stored + 300);
    log2.note_at(Kind::Blob, &xs[2], stored + 200);
    log2.flush(&r2).await.unwrap();
    age_past_the_open_window().await;
    let size = |replica| JanitorSettings {
        high_water: Some(3500),
        low_water: Some(2500),
        ..settings(replica)
    };
    let (j1, _) = janitor(&r1, size("r1"));
    let (j2, m2) = janitor(&r2, size("r2"));
    let report = j2.run_once().await.unwrap();
    assert_eq!(report.evicted_size, 2, "{report:?}");
    assert!(!present(&r1, Kind::Blob, &xs[3]).await);
    assert!(!present(&r1, Kind::Blob, &xs[1]).await);
    assert!(present(&r1, Kind::Blob, &xs[0]).await);
    assert!(present(&r1, Kind::Blob, &xs[2]).await);
    assert_eq!(m2.evicted.with_label_values(&["size"]).get(), 2);
    assert_eq!(m2.bucket_bytes.get(), 2000);
    let report = j1.run_once().await.unwrap();
    assert_eq!((report.evicted_size, report.bytes), (0, 2000), "{report:?}");
}
