//! The shared tier's bucket client against a real S3 engine (SeaweedFS on
//! 127.0.0.1): the conditional writes the fill lease depends on, verified
//! content, the store's clock, and a store that goes away.

pub mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::seaweedfs::SeaweedFs;
use futures_util::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use regcache::cache::storage::bucket::lease::{Claim, Holder};
use regcache::cache::storage::bucket::{Bucket, BucketError, ConditionalWrites, S3Settings};
use regcache::cache::storage::Kind;
use regcache::registry::Digest;

fn settings(engine: &SeaweedFs, prefix: &str) -> S3Settings {
    engine.settings(prefix)
}

fn holder(replica: &str) -> Holder {
    Holder {
        replica: replica.into(),
        url: format!("http://127.0.0.1:1/{replica}"),
        nonce: format!("{replica}-{}", std::process::id()),
        done: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_client_against_seaweedfs() {
    let mut engine = tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap();
    let bucket = Bucket::connect(&settings(&engine, "t1")).unwrap();

    // The probe: SeaweedFS 4.48 honours If-None-Match and If-Match.
    assert_eq!(
        bucket.probe_conditional_writes("startup").await.unwrap(),
        ConditionalWrites::Honoured
    );

    // Three rounds of 16 replicas claiming one cold digest: one winner each.
    for round in 0..3u8 {
        let d = Digest::sha256_of(&[round]);
        let claims = futures_util::future::join_all((0..16).map(|i| {
            let bucket = bucket.clone();
            let d = d.clone();
            async move {
                bucket
                    .claim(&d, &holder(&format!("r{i}")), Duration::from_secs(30))
                    .await
                    .unwrap()
            }
        }))
        .await;
        let won = claims.iter().filter(|c| matches!(c, Claim::Won(_))).count();
        let held = claims
            .iter()
            .filter(|c| matches!(c, Claim::Held { .. }))
            .count();
        assert_eq!((won, held), (1, 15), "round {round}: {claims:?}");
    }

    // Staleness by the store's clock: a lease nobody renewed for longer
    // than the TTL plus the margin may be taken over, once.
    let d = Digest::sha256_of(b"stale");
    let Claim::Won(mut first) = bucket
        .claim(&d, &holder("a"), Duration::ZERO)
        .await
        .unwrap()
    else {
        panic!("first claim")
    };
    assert!(matches!(
        bucket
            .claim(&d, &holder("b"), Duration::ZERO)
            .await
            .unwrap(),
        Claim::Held { .. }
    ));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let Claim::Stale { seen, age, .. } = bucket
        .claim(&d, &holder("b"), Duration::ZERO)
        .await
        .unwrap()
    else {
        panic!("not stale after 3.5 s")
    };
    assert!(age >= Duration::from_secs(2), "{age:?}");
    assert!(bucket
        .take_over(&d, &holder("b"), seen.clone())
        .await
        .unwrap()
        .is_some());
    assert!(bucket
        .take_over(&d, &holder("c"), seen)
        .await
        .unwrap()
        .is_none());
    assert!(!bucket.renew(&mut first).await.unwrap(), "the zombie lost");

    // Content: verified on the way in and on the way out.
    let blob = Bytes::from(vec![7u8; 3 << 20]);
    let bd = Digest::sha256_of(&blob);
    bucket
        .put(Kind::Blob, &bd, blob.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        bucket.stat(Kind::Blob, &bd).await.unwrap().unwrap().size,
        3 << 20
    );
    let (_, body) = bucket
        .read_from(Kind::Blob, &bd, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let rest: Vec<Bytes> = body.try_collect().await.unwrap();
    assert_eq!(rest.concat(), blob[1 << 20..]);
    assert!(bucket
        .stat(Kind::Blob, &Digest::sha256_of(b"none"))
        .await
        .unwrap()
        .is_none());

    let manifest = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"x"}"#);
    let md = Digest::sha256_of(&manifest);
    bucket
        .put(
            Kind::Manifest,
            &md,
            manifest.clone(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .unwrap();
    assert_eq!(
        bucket
            .read_verified(Kind::Manifest, &md, 4096)
            .await
            .unwrap()
            .unwrap(),
        manifest
    );
    // Damaged inside the store: caught, and removed while still damaged.
    let raw = engine.client().unwrap();
    let key = format!("t1/manifests/sha256/{}/{}", &md.hex()[..2], md.hex());
    raw.put(&key.as_str().into(), PutPayload::from_static(b"{}"))
        .await
        .unwrap();
    let err = bucket
        .read_verified(Kind::Manifest, &md, 4096)
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Mismatch { .. }), "{err}");
    let seen = bucket.stat(Kind::Manifest, &md).await.unwrap().unwrap();
    assert!(bucket
        .remove_if_unchanged(Kind::Manifest, &md, &seen)
        .await
        .unwrap());
    assert!(bucket
        .read_verified(Kind::Manifest, &md, 4096)
        .await
        .unwrap()
        .is_none());

    // Links across replicas: another client of the same prefix sees them.
    let other = Bucket::connect(&settings(&engine, "t1")).unwrap();
    bucket.link("hub", "team/app", &bd).await.unwrap();
    assert!(other.is_linked("hub", "team/app", &bd).await.unwrap());
    assert!(!other.is_linked("hub", "team/else", &bd).await.unwrap());
    let elsewhere = Bucket::connect(&settings(&engine, "t2")).unwrap();
    assert!(
        !elsewhere.is_linked("hub", "team/app", &bd).await.unwrap(),
        "prefixes apart"
    );

    // The store goes away: every call fails, as unavailable, within its bound.
    let bucket = Bucket::connect(&S3Settings {
        request_timeout: Duration::from_secs(5),
        ..settings(&engine, "t1")
    })
    .unwrap();
    engine.kill();
    let started = Instant::now();
    let err = bucket.stat(Kind::Blob, &bd).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
