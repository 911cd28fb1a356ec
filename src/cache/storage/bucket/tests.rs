use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::lease::{Claim, Holder, Lease};
use super::*;

fn bucket(store: Arc<dyn ObjectStore>) -> Bucket {
    Bucket::over(store, "/fleet/a/", Duration::from_secs(5))
}

fn holder(replica: &str) -> Holder {
    Holder {
        replica: replica.into(),
        url: format!("http://{replica}:5002"),
        nonce: format!("{replica}-nonce"),
        done: false,
    }
}

#[tokio::test]
async fn content_is_stored_under_its_digest_only_when_the_bytes_match() {
    let store = Arc::new(InMemory::new());
    let b = bucket(store.clone());
    let d = Digest::sha256_of(b"layer");
    let err = b
        .put(Kind::Blob, &d, Bytes::from_static(b"other"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Mismatch { .. }), "{err}");
    assert_eq!(b.stat(Kind::Blob, &d).await.unwrap(), None);

    b.put(Kind::Blob, &d, Bytes::from_static(b"layer"), None)
        .await
        .unwrap();
    let key = format!("fleet/a/blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
    assert_eq!(store.head(&Path::from(key)).await.unwrap().size, 5);
    assert_eq!(b.stat(Kind::Blob, &d).await.unwrap().unwrap().size, 5);
    assert_eq!(
        b.stat(Kind::Manifest, &d).await.unwrap(),
        None,
        "kinds apart"
    );

    let (stored, body) = b.read_from(Kind::Blob, &d, 2).await.unwrap().unwrap();
    assert_eq!(stored.size, 5);
    let rest: Vec<Bytes> = body.try_collect().await.unwrap();
    assert_eq!(rest.concat(), b"yer");
}

#[tokio::test]
async fn a_manifest_keeps_its_media_type_and_a_corrupt_one_is_caught_and_removed() {
    let store = Arc::new(InMemory::new());
    let b = bucket(store.clone());
    let body = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let d = Digest::sha256_of(&body);
    b.put(
        Kind::Manifest,
        &d,
        body.clone(),
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await
    .unwrap();
    assert_eq!(
        b.read_verified(Kind::Manifest, &d, 1024)
            .await
            .unwrap()
            .unwrap(),
        body
    );
    let key = Path::from(format!(
        "fleet/a/manifests/sha256/{}/{}",
        &d.hex()[..2],
        d.hex()
    ));
    let got = store.get(&key).await.unwrap();
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("application/vnd.oci.image.manifest.v1+json")
    );

    // Bytes damaged inside the store are refused, and removed only while
    // they are still the version that was read.
    store
        .put(&key, PutPayload::from_static(b"{}"))
        .await
        .unwrap();
    let err = b.read_verified(Kind::Manifest, &d, 1024).await.unwrap_err();
    assert!(matches!(err, BucketError::Mismatch { .. }), "{err}");
    assert!(
        b.read_verified(Kind::Manifest, &d, 1).await.is_err(),
        "bounded"
    );
    let seen = b.stat(Kind::Manifest, &d).await.unwrap().unwrap();
    store
        .put(&key, PutPayload::from(body.clone()))
        .await
        .unwrap();
    assert!(!b
        .remove_if_unchanged(Kind::Manifest, &d, &seen)
        .await
        .unwrap());
    assert!(b
        .read_verified(Kind::Manifest, &d, 1024)
        .await
        .unwrap()
        .is_some());
    let seen = b.stat(Kind::Manifest, &d).await.unwrap().unwrap();
    assert!(b
        .remove_if_unchanged(Kind::Manifest, &d, &seen)
        .await
        .unwrap());
    assert_eq!(
        b.read_verified(Kind::Manifest, &d, 1024).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn links_are_per_upstream_and_repository_and_names_stay_in_their_segment() {
    let store = Arc::new(InMemory::new());
    let b = bucket(store.clone());
    let d = Digest::sha256_of(b"x");
    b.link("hub", "team/app", &d).await.unwrap();
    assert!(b.is_linked("hub", "team/app", &d).await.unwrap());
    assert!(!b.is_linked("hub", "team/other", &d).await.unwrap());
    assert!(!b.is_linked("other", "team/app", &d).await.unwrap());
    assert!(!b.is_linked("hub", "team", &d).await.unwrap());
    // A hostile segment is encoded, not interpreted.
    b.link("hub", "../../blobs", &d).await.unwrap();
    let keys: Vec<String> = store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(
        keys.iter().all(|k| k.starts_with("fleet/a/links/")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn one_claim_wins_the_others_see_who_holds_it() {
    let b = bucket(Arc::new(InMemory::new()));
    let d = Digest::sha256_of(b"cold");
    let ttl = Duration::from_secs(30);
    let claims = futures_util::future::join_all((0..16).map(|i| {
        let b = b.clone();
        let d = d.clone();
        async move { b.claim(&d, &holder(&format!("r{i}")), ttl).await.unwrap() }
    }))
    .await;
    let winners: Vec<&Holder> = claims
        .iter()
        .filter_map(|c| match c {
            Claim::Won(l) => Some(&l.holder),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    for c in &claims {
        if let Claim::Held { holder, age } = c {
            assert_eq!(holder, winners[0]);
            assert!(*age < ttl);
        } else {
            assert!(matches!(c, Claim::Won(_)), "{c:?}");
        }
    }
}

#[tokio::test]
async fn a_lost_create_answer_is_recognised_renewals_and_releases_lose_to_a_take_over() {
    let b = bucket(Arc::new(InMemory::new()));
    let d = Digest::sha256_of(b"cold");
    let ttl = Duration::from_secs(30);
    let Claim::Won(mut first) = b.claim(&d, &holder("a"), ttl).await.unwrap() else {
        panic!("first claim")
    };
    // The same claim again (a retried create): it is ours.
    assert!(matches!(
        b.claim(&d, &holder("a"), ttl).await.unwrap(),
        Claim::Won(_)
    ));
    assert!(b.renew(&mut first).await.unwrap());

    // Finished: the next claimant may take over at once.
    let mut stale_copy = Lease::clone_for_test(&first);
    assert!(b.release(first).await.unwrap());
    let Claim::Stale {
        holder: was, seen, ..
    } = b.claim(&d, &holder("b"), ttl).await.unwrap()
    else {
        panic!("a done lease is stale")
    };
    assert!(was.done);
    let mut second = b
        .take_over(&d, &holder("b"), seen.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(
        b.take_over(&d, &holder("c"), seen).await.unwrap().is_none(),
        "once"
    );
    // The old holder's late renewal is refused.
    assert!(!b.renew(&mut stale_copy).await.unwrap());
    assert!(b.renew(&mut second).await.unwrap());
    assert!(matches!(
        b.claim(&d, &holder("c"), ttl).await.unwrap(),
        Claim::Held { .. }
    ));
}

#[tokio::test]
async fn the_probe_tells_a_store_that_ignores_conditions() {
    let honest = bucket(Arc::new(InMemory::new()));
    assert_eq!(
        honest.probe_conditional_writes("n1").await.unwrap(),
        ConditionalWrites::Honoured
    );
    let careless = bucket(Arc::new(Careless(InMemory::new())));
    assert!(matches!(
        careless.probe_conditional_writes("n1").await.unwrap(),
        ConditionalWrites::Ignored(_)
    ));
}

#[tokio::test]
async fn a_hung_store_is_bounded_by_the_timeout() {
    let b = Bucket::over(Arc::new(Hung), "", Duration::from_millis(50));
    let d = Digest::sha256_of(b"x");
    let err = b.stat(Kind::Blob, &d).await.unwrap_err();
    assert!(matches!(err, BucketError::Timeout { .. }), "{err}");
    assert!(err.is_unavailable());
}

#[test]
fn settings_that_would_dial_an_unnamed_host_are_refused() {
    let settings = S3Settings {
        endpoint: Some("http://127.0.0.1:8333".into()),
        region: "us-east-1".into(),
        bucket: "regcache".into(),
        prefix: String::new(),
        path_style: true,
        allow_http: true,
        access_key_id: String::new(),
        secret_access_key: String::new(),
        request_timeout: Duration::from_secs(1),
    };
    let err = Bucket::connect(&settings).unwrap_err();
    assert!(err.to_string().contains("access_key_id"), "{err}");
    let keyed = S3Settings {
        access_key_id: "k".into(),
        secret_access_key: "s".into(),
        ..settings
    };
    assert!(Bucket::connect(&keyed).is_ok());
}

impl Lease {
    /// A second handle on the same version, as a zombie holder would have.
    fn clone_for_test(lease: &Self) -> Self {
        Self {
            key: lease.key.clone(),
            version: lease.version.clone(),
            holder: lease.holder.clone(),
        }
    }
}

/// A store that treats every conditional write as a plain overwrite, as
/// Garage does.
#[derive(Debug)]
struct Careless(InMemory);

impl std::fmt::Display for Careless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "careless")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Careless {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        opts.mode = PutMode::Overwrite;
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// A store that never answers.
#[derive(Debug)]
struct Hung;

impl std::fmt::Display for Hung {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hung")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Hung {
    async fn put_opts(
        &self,
        _: &Path,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        std::future::pending().await
    }
    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        std::future::pending().await
    }
    async fn get_opts(&self, _: &Path, _: GetOptions) -> object_store::Result<GetResult> {
        std::future::pending().await
    }
    fn delete_stream(
        &self,
        _: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        Box::pin(futures_util::stream::pending())
    }
    fn list(&self, _: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        Box::pin(futures_util::stream::pending())
    }
    async fn list_with_delimiter(&self, _: Option<&Path>) -> object_store::Result<ListResult> {
        std::future::pending().await
    }
    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
        std::future::pending().await
    }
}
