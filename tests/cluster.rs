//! Several replicas, one cache (issue 13), end to end: three or more
//! regcache processes on 127.0.0.1 sharing one bucket on a real S3 engine
//! (SeaweedFS), a real `docker-registry` upstream (an in-process throttled
//! fake where a fill must take seconds), skopeo and plain HTTP as clients.
//!
//! What cannot be seen from outside is asserted through what can: the
//! upstream's own request log, the bucket's contents read back and hashed,
//! each replica's `/metrics` and log.

pub mod common;

use std::time::{Duration, Instant};

use common::cluster::{pull, push_generated_blob, Cluster, Pull, Replica, ReplicaOptions};
use common::fake_s3::FakeS3;
use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault};
use common::http::{client, client_builder};
use common::images::{self, assert_pulls, assert_pulls_from, sha256_digest, Fixtures};
use common::regcache::UpstreamEntry;
use common::registry::{http_request, Registry, TEST_PASSWORD, TEST_USER};
use regcache::cache::storage::Kind;

const MIB: u64 = 1024 * 1024;

fn local(upstream: &Registry) -> UpstreamEntry {
    UpstreamEntry::new("local", &upstream.url())
}

/// Waits (bounded) until `cond` holds.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests the upstream received whose target contains `path` (any method).
fn upstream_requests(upstream: &Registry, path: &str) -> Vec<String> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| r.uri.contains(path))
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect()
}

fn lease(outcome: &str) -> String {
    format!("regcache_fill_leases_total{{outcome=\"{outcome}\"}}")
}

/// Every blob and manifest of the fixtures with a repository that holds it.
fn fixture_contents(fixtures: &Fixtures) -> Vec<(Kind, String, String)> {
    let mut out = Vec::new();
    for f in fixtures.all() {
        out.push((Kind::Manifest, f.digest.clone(), f.repo.clone()));
        for m in &f.child_manifests {
            out.push((Kind::Manifest, m.clone(), f.repo.clone()));
        }
        for b in &f.blobs {
            out.push((Kind::Blob, b.clone(), f.repo.clone()));
        }
    }
    out
}

/// Waits until the bucket holds every blob, manifest and tag the fixtures
/// have: what a replica writes there after it served a pull.
async fn wait_for_fixtures_in_bucket(cluster: &Cluster, fixtures: &Fixtures) {
    for (kind, digest, _) in fixture_contents(fixtures) {
        cluster.wait_present(kind, &[digest]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tags = cluster.list("tags").await;
        if tags.len() >= fixtures.all().len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bucket holds {} tag records, not one per fixture: {tags:?}",
            tags.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET of a manifest through `rc`: the status, the Docker-Content-Digest
/// and the sha256 of the body.
async fn get_manifest(rc: &Replica, repo: &str, reference: &str) -> (u16, String, String) {
    let r = client()
        .get(format!("{}/v2/{repo}/manifests/{reference}", rc.url()))
        .header("Accept", images::MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {repo}:{reference} through {}: {e}", rc.id));
    let status = r.status().as_u16();
    let header = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.bytes().await.expect("manifest body");
    (status, header, sha256_digest(&body))
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

fn blob_url(rc: &Replica, repo: &str, digest: &str) -> String {
    format!("{}/v2/{repo}/blobs/{digest}", rc.url())
}

/// A complete, clean 200 of exactly these bytes.
fn assert_complete(p: &Pull, len: u64, digest: &str, who: &str) {
    match p {
        Pull::Complete {
            status: 200,
            len: l,
            digest: d,
        } if *l == len && d == digest => {}
        other => panic!("{who}: {other:?}, not a clean 200 of {len} bytes hashing to {digest}"),
    }
}

/// A client either got every byte right or saw its exchange break: never a
/// clean end of a short or wrong body.
fn assert_right_or_aborted(p: &Pull, len: u64, digest: &str, who: &str) {
    if let Pull::Complete { .. } = p {
        assert_complete(p, len, digest, who);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_cold_gets_of_a_200_mib_blob_over_three_replicas_cost_one_upstream_get() {
    let cluster = Cluster::start("stampede").await;
    let upstream = Registry::start();
    let size = 200 * MIB + 12_345;
    let digest = push_generated_blob(&upstream, "test/huge", size, "stampede");
    let replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| cluster.replica(id, &[local(&upstream)]))
        .collect();

    // 30 clients, ten a replica, all cold; each hashes its body as it reads.
    let c = client_builder()
        .timeout(Duration::from_secs(240))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..30usize {
        let url = blob_url(&replicas[i % 3], "test/huge", &digest);
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
            pull(&c, &url).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let p = t.await.unwrap();
        assert_complete(
            &p,
            size,
            &digest,
            &format!("client {i} of replica {}", i % 3),
        );
    }
    let gets = upstream_requests(&upstream, &format!("/blobs/{digest}"))
        .into_iter()
        .filter(|r| r.starts_with("GET "))
        .count();
    let leases: Vec<String> = replicas
        .iter()
        .map(|r| {
            format!(
                "{}: won {} followed {} peer bytes received {}",
                r.id,
                r.metric(&lease("won")),
                r.metric(&lease("followed")),
                r.metric("regcache_peer_bytes_total{direction=\"received\"}")
            )
        })
        .collect();
    assert_eq!(gets, 1, "upstream GETs of the blob; leases: {leases:?}");
    eprintln!("stampede leases: {leases:?}");

    // The bucket holds it, verified.
    cluster.wait_verified(Kind::Blob, &digest).await;

    // The peer endpoint: a committed blob, for the right token only.
    let peer_path = format!("/_regcache/v1/fills/{digest}");
    let holder = &replicas[0];
    let bearer = format!("Bearer {}", common::cluster::PEER_TOKEN);
    let head = |headers: &[(&str, &str)]| {
        http_request(holder.peer, "HEAD", &peer_path, headers, None)
            .map(|r| r.status)
            .unwrap_or(0)
    };
    assert_eq!(head(&[]), 401, "no token");
    assert_eq!(
        head(&[("Authorization", "Bearer wrong")]),
        401,
        "wrong token"
    );
    assert_eq!(
        head(&[("Authorization", &bearer)]),
        200,
        "the committed blob"
    );
    // A resumed read: the tail, as the upstream itself has it.
    let range = format!("bytes={}-", size - 1000);
    let tail = http_request(
        holder.peer,
        "GET",
        &peer_path,
        &[("Authorization", &bearer), ("Range", &range)],
        None,
    )
    .expect("a ranged GET of the peer endpoint");
    assert_eq!(tail.status, 206);
    let upstream_tail = http_request(
        upstream.addr,
        "GET",
        &format!("/v2/test/huge/blobs/{digest}"),
        &[("Range", &range)],
        None,
    )
    .unwrap();
    assert_eq!(upstream_tail.body.len(), 1000, "the upstream honours Range");
    assert!(
        tail.body == upstream_tail.body,
        "the peer's tail is the blob's"
    );
    let unknown = format!("/_regcache/v1/fills/{}", sha256_digest(b"nothing"));
    let r = http_request(
        holder.peer,
        "HEAD",
        &unknown,
        &[("Authorization", &bearer)],
        None,
    )
    .map(|r| r.status)
    .unwrap_or(0);
    assert_eq!(r, 404, "a digest it neither fills nor holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_through_one_replica_then_another_with_the_upstream_stopped_gives_identical_digests()
{
    let cluster = Cluster::start("warm").await;
    let mut upstream = Registry::start();
    // The big layer spans two multipart parts of the default 16 MiB.
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 20 * MIB);
    let a = cluster.replica("a", &[local(&upstream)]);
    for f in fixtures.all() {
        assert_pulls_from(f, &a.host()).await;
    }
    wait_for_fixtures_in_bucket(&cluster, &fixtures).await;

    // B starts after the upstream is gone, with an empty local disk: all it
    // serves comes from the bucket, by tag and by digest.
    upstream.stop();
    let b = cluster.replica("b", &[local(&upstream)]);
    assert!(b.cached_blobs().is_empty(), "B starts with an empty disk");
    for f in fixtures.all() {
        assert_pulls_from(f, &b.host()).await;
        let (f, by_digest) = (f.clone(), format!("{}/{}@{}", b.host(), f.repo, f.digest));
        tokio::task::spawn_blocking(move || assert_pulls(&f, &by_digest))
            .await
            .unwrap();
    }
    assert!(
        b.metric_sum(
            "regcache_tier_hits_total",
            &["tier=\"bucket\"", "kind=\"blob\""]
        ) >= 1.0,
        "B's blobs came from the bucket:\n{}",
        b.metrics()
    );
    assert!(
        b.metric_sum(
            "regcache_tier_hits_total",
            &["tier=\"bucket\"", "kind=\"manifest\""]
        ) >= 1.0,
        "B's manifests came from the bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_with_the_upstream_stopped_serves_everything_the_bucket_holds() {
    let cluster = Cluster::start("fresh").await;
    let mut upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 6 * MIB);
    let mut a = cluster.replica("a", &[local(&upstream)]);
    for f in fixtures.all() {
        assert_pulls_from(f, &a.host()).await;
    }
    wait_for_fixtures_in_bucket(&cluster, &fixtures).await;
    // Nobody left to ask but the bucket: no upstream, no peer.
    upstream.stop();
    a.kill();

    let c = cluster.replica("c", &[local(&upstream)]);
    let contents = fixture_contents(&fixtures);
    let repo_of = |kind: Kind, digest: &str| {
        contents
            .iter()
            .find(|(k, d, _)| *k == kind && d == digest)
            .map(|(_, _, r)| r.clone())
            .unwrap_or_else(|| panic!("the bucket holds {digest}, which no fixture has"))
    };
    let blobs = cluster.content_digests(Kind::Blob).await;
    let manifests = cluster.content_digests(Kind::Manifest).await;
    assert!(!blobs.is_empty() && !manifests.is_empty());
    let http = client();
    for d in &blobs {
        let repo = repo_of(Kind::Blob, d);
        let size = cluster.hash_object(Kind::Blob, d).await.expect("listed").0;
        let p = pull(&http, &blob_url(&c, &repo, d)).await;
        assert_complete(&p, size, d, &format!("blob {d} through {repo}"));
    }
    for d in &manifests {
        let repo = repo_of(Kind::Manifest, d);
        let (status, header, body) = get_manifest(&c, &repo, d).await;
        assert_eq!(
            (status, header.as_str(), body.as_str()),
            (200, d.as_str(), d.as_str())
        );
    }
    // And the tags, from the bucket's tag records.
    for f in fixtures.all() {
        let (status, header, body) = get_manifest(&c, &f.repo, &f.tag).await;
        assert_eq!(status, 200, "{}:{}", f.repo, f.tag);
        assert_eq!(header, f.digest, "{}:{}", f.repo, f.tag);
        assert_eq!(body, f.digest, "{}:{}", f.repo, f.tag);
    }
    // What C read from the bucket it committed to its own disk.
    wait_until(
        "C's disk holds the blobs it served",
        Duration::from_secs(20),
        || {
            let cached = c.cached_blobs();
            blobs.iter().all(|b| cached.contains(b))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_killed_mid_fill_is_taken_over_and_the_blob_lands_once_verified() {
    let cluster = Cluster::start("takeover").await;
    // A throttled upstream: about 5 MiB/s, so the fill takes eight seconds.
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let data = random_bytes(40 * MIB as usize + 7, 41);
    let len = data.len() as u64;
    let digest = fake.add_blob(data);
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 256 * 1024,
            delay: Duration::from_millis(50),
        },
    );
    let entry = || UpstreamEntry::new("fake", &fake.url());
    // A short TTL: the dead holder's lease is stale 5 s after its last
    // renewal. The default `on_holder_unreachable`: a broken stream from
    // the holder is a takeover all the same.
    let opts = ReplicaOptions::default().cluster("lease_ttl", "\"3s\"");
    let mut a = cluster.replica_with("a", &[entry()], &opts);
    let b = cluster.replica_with("b", &[entry()], &opts);
    let c = cluster.replica_with("c", &[entry()], &opts);

    let http = client();
    let url_a = blob_url(&a, "test/app", &digest);
    let holder_client = tokio::spawn({
        let http = http.clone();
        async move { pull(&http, &url_a).await }
    });
    a.wait_for_metric(&lease("won"), |v| v >= 1.0).await;
    assert!(
        fake.wait_for_count(
            "GET",
            &format!("/blobs/{digest}"),
            1,
            Duration::from_secs(20)
        )
        .await,
        "A fetches from the upstream"
    );

    // Followers on B and C, two clients each, streaming from A.
    let mut followers = Vec::new();
    for (i, r) in [&b, &c, &b, &c].iter().enumerate() {
        let url = blob_url(r, "test/app", &digest);
        let http = http.clone();
        let who = format!("client {i} of {}", r.id);
        followers.push((who, tokio::spawn(async move { pull(&http, &url).await })));
    }
    b.wait_for_metric(&lease("followed"), |v| v >= 1.0).await;
    c.wait_for_metric(&lease("followed"), |v| v >= 1.0).await;
    a.wait_for_metric("regcache_peer_bytes_total{direction=\"sent\"}", |v| v > 0.0)
        .await;

    // The holder dies mid-fill.
    a.kill();
    let p = holder_client.await.unwrap();
    assert!(
        matches!(p, Pull::Aborted { .. }),
        "A's own client was cut off mid-fill (else the fill was over before the kill): {p:?}"
    );

    for (who, t) in followers {
        let p = t.await.unwrap();
        assert_right_or_aborted(&p, len, &digest, &who);
        eprintln!("{who}: {p:?}");
    }
    let taken_over = || b.metric(&lease("taken_over")) + c.metric(&lease("taken_over"));
    wait_until(
        "a survivor took the lease over",
        Duration::from_secs(30),
        || taken_over() >= 1.0,
    )
    .await;

    // In the bucket exactly once, verified.
    cluster.wait_verified(Kind::Blob, &digest).await;
    let objects = cluster.list("blobs").await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0].0.ends_with(digest.trim_start_matches("sha256:")) && objects[0].1 == len,
        "{objects:?}"
    );
    // One fetch by the dead holder, one by its successor, which resumed
    // from the bytes it already had: no follower fetched on its own.
    let gets = fake.requests_matching("GET", &format!("/blobs/{digest}"));
    assert_eq!(gets.len(), 2, "{gets:?}");
    let resumed_at: u64 = gets[1]
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the successor's GET is no `Range: bytes=N-`: {gets:?}"));
    assert!(
        resumed_at > 0 && resumed_at < len,
        "resumed at {resumed_at} of {len}"
    );
    // Both survivors serve it now.
    for r in [&b, &c] {
        let p = pull(&http, &blob_url(r, "test/app", &digest)).await;
        assert_complete(&p, len, &digest, &format!("{} afterwards", r.id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_be_reached_is_fetched_around_or_waited_out_as_configured() {
    let cluster = Cluster::start("unreachable").await;
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let slow = Fault::Slow {
        chunk: 256 * 1024,
        delay: Duration::from_millis(50),
    };
    // Two blobs A starts filling and never finishes: one for a follower
    // that fetches around a dead holder, one for a follower that waits.
    let blobs: Vec<(String, u64)> = (0..2)
        .map(|i| {
            let data = random_bytes(16 * MIB as usize + i, 50 + i as u64);
            let len = data.len() as u64;
            let d = fake.add_blob(data);
            fake.set_blob_fault(&d, slow.clone());
            (d, len)
        })
        .collect();
    let entry = || UpstreamEntry::new("fake", &fake.url());
    let ttl = ReplicaOptions::default().cluster("lease_ttl", "\"3s\"");
    let mut a = cluster.replica_with("a", &[entry()], &ttl);
    let http = client();
    let mut holder_clients = Vec::new();
    for (d, _) in &blobs {
        let (http, url) = (http.clone(), blob_url(&a, "test/app", d));
        holder_clients.push(tokio::spawn(async move { pull(&http, &url).await }));
    }
    for (d, _) in &blobs {
        assert!(
            fake.wait_for_count("GET", &format!("/blobs/{d}"), 1, Duration::from_secs(20))
                .await
        );
    }
    assert_eq!(a.metric(&lease("won")), 2.0);
    // Dead with both leases fresh in the bucket: its peer port refuses.
    a.kill();
    for c in holder_clients {
        let p = c.await.unwrap();
        assert!(matches!(p, Pull::Aborted { .. }), "{p:?}");
    }

    // "fetch" (the default): an independent, verified fetch at once.
    let b = cluster.replica_with("b", &[entry()], &ttl);
    let (d, len) = &blobs[0];
    let p = pull(&http, &blob_url(&b, "test/app", d)).await;
    assert_complete(&p, *len, d, "B, fetching around the dead holder");
    assert_eq!(fake.count("GET", &format!("/blobs/{d}")), 2);
    assert_eq!(b.metric(&lease("taken_over")), 0.0, "B did not wait for it");

    // "wait": no fetch of its own until the lease is stale; then it takes
    // the lease over and fills.
    let c = cluster.replica_with(
        "c",
        &[entry()],
        &ttl.clone().cluster("on_holder_unreachable", "\"wait\""),
    );
    let (d, len) = &blobs[1];
    let p = pull(&http, &blob_url(&c, "test/app", d)).await;
    assert_complete(&p, *len, d, "C, waiting the dead holder out");
    assert_eq!(c.metric(&lease("taken_over")), 1.0, "{}", c.metrics());
    assert_eq!(fake.count("GET", &format!("/blobs/{d}")), 2);
    for (d, _) in &blobs {
        cluster.wait_verified(Kind::Blob, d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_failing_verification_on_the_holder_aborts_every_follower_and_shares_nothing() {
    let cluster = Cluster::start("unverified").await;
    let fake = FakeUpstream::start(Behaviour::default()).await;
    // The upstream lies about the last byte only: every byte a follower
    // could be given before the holder's check is right but one.
    let good = random_bytes(16 * MIB as usize, 60);
    let len = good.len() as u64;
    let digest = sha256_digest(&good);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    fake.add_blob_as(&digest, bad);
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 256 * 1024,
            delay: Duration::from_millis(50),
        },
    );
    let entry = || UpstreamEntry::new("fake", &fake.url());
    let a = cluster.replica("a", &[entry()]);
    let b = cluster.replica("b", &[entry()]);
    let c = cluster.replica("c", &[entry()]);
    let http = client();
    let mut clients = Vec::new();
    let url = blob_url(&a, "test/app", &digest);
    clients.push((
        "A".to_string(),
        tokio::spawn({
            let http = http.clone();
            async move { pull(&http, &url).await }
        }),
    ));
    a.wait_for_metric(&lease("won"), |v| v >= 1.0).await;
    for (i, r) in [&b, &c, &b, &c].iter().enumerate() {
        let (http, url) = (http.clone(), blob_url(r, "test/app", &digest));
        clients.push((
            format!("client {i} of {}", r.id),
            tokio::spawn(async move { pull(&http, &url).await }),
        ));
    }
    // And one straight from the holder's peer endpoint.
    let (peer, path) = (a.peer, format!("/_regcache/v1/fills/{digest}"));
    let direct = tokio::task::spawn_blocking(move || {
        let bearer = format!("Bearer {}", common::cluster::PEER_TOKEN);
        http_request(peer, "GET", &path, &[("Authorization", &bearer)], None)
    });
    b.wait_for_metric(&lease("followed"), |v| v >= 1.0).await;
    c.wait_for_metric(&lease("followed"), |v| v >= 1.0).await;

    for (who, t) in clients {
        let p = t.await.unwrap();
        match p {
            Pull::Aborted { got, .. } => assert!(got < len, "{who} got {got} of {len}"),
            other => panic!("{who}: a clean end of a body that failed verification: {other:?}"),
        }
    }
    match direct.await.unwrap() {
        Ok(r) if r.status == 200 || r.status == 206 => {
            panic!(
                "the peer endpoint ended {} bytes of an unverified fill cleanly",
                r.body.len()
            )
        }
        _ => {}
    }
    assert!(a.metric("regcache_digest_mismatches_total") >= 1.0);
    for r in [&a, &b, &c] {
        r.wait_for_fills();
    }
    assert_eq!(cluster.hash_object(Kind::Blob, &digest).await, None);
    assert!(cluster.list("blobs").await.is_empty());

    // The upstream mends: the next GET is right, and shared.
    fake.clear_faults();
    fake.add_blob_as(&digest, good);
    let p = pull(&http, &blob_url(&b, "test/app", &digest)).await;
    assert_complete(&p, len, &digest, "B after the upstream mended");
    cluster.wait_verified(Kind::Blob, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_in_the_bucket_aborts_its_reader_and_is_deleted_and_refilled() {
    let cluster = Cluster::start("corrupt").await;
    let upstream = Registry::start();
    let size = 12 * MIB + 5;
    let digest = push_generated_blob(&upstream, "test/app", size, "corrupt");
    let a = cluster.replica("a", &[local(&upstream)]);
    let http = client();
    let p = pull(&http, &blob_url(&a, "test/app", &digest)).await;
    assert_complete(&p, size, &digest, "A's fill");
    cluster.wait_verified(Kind::Blob, &digest).await;

    // Damage inside the store: same length, every byte wrong.
    cluster.corrupt(Kind::Blob, &digest).await;
    let damaged = cluster.hash_object(Kind::Blob, &digest).await.unwrap();
    assert_eq!(damaged.0, size);
    assert_ne!(damaged.1, digest);

    // B has an empty disk: it reads the bucket, finds the mismatch, aborts.
    let b = cluster.replica("b", &[local(&upstream)]);
    let p = pull(&http, &blob_url(&b, "test/app", &digest)).await;
    assert_right_or_aborted(&p, size, &digest, "B's reader of the damaged object");
    assert!(
        matches!(p, Pull::Aborted { .. }),
        "the reader of the damaged object is aborted: {p:?}"
    );
    b.wait_for_metric("regcache_bucket_corrupt_total", |v| v >= 1.0)
        .await;

    // The next GET is right, and so is the bucket's object again.
    let p = pull(&http, &blob_url(&b, "test/app", &digest)).await;
    assert_complete(&p, size, &digest, "B after the refill");
    cluster.wait_verified(Kind::Blob, &digest).await;

    // A manifest, read whole and verified before anything is sent: a
    // damaged copy is never served, and is replaced.
    let manifest = push_image_of(&upstream, "test/app", "v1", &digest, size);
    let (status, _, body) = get_manifest(&a, "test/app", &manifest).await;
    assert_eq!((status, body.as_str()), (200, manifest.as_str()));
    cluster.wait_verified(Kind::Manifest, &manifest).await;
    cluster.corrupt(Kind::Manifest, &manifest).await;
    let c = cluster.replica("c", &[local(&upstream)]);
    let (status, _, body) = get_manifest(&c, "test/app", &manifest).await;
    assert!(
        status != 200 || body == manifest,
        "C served the damaged manifest ({status}, {body})"
    );
    c.wait_for_metric("regcache_bucket_corrupt_total", |v| v >= 1.0)
        .await;
    let (status, _, body) = get_manifest(&c, "test/app", &manifest).await;
    assert_eq!(
        (status, body.as_str()),
        (200, manifest.as_str()),
        "C afterwards"
    );
    cluster.wait_verified(Kind::Manifest, &manifest).await;
}

/// Pushes an OCI image of one layer (already in `repo`) and a small
/// config under `tag`; the manifest's digest.
fn push_image_of(upstream: &Registry, repo: &str, tag: &str, layer: &str, size: u64) -> String {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256_digest(config);
    let r = http_request(
        upstream.addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Some(b""),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap();
    let path = &location[location.find("/v2/").unwrap()..];
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http_request(
        upstream.addr,
        "PUT",
        &format!("{path}{sep}digest={config_digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(config),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_MANIFEST,
        "config": {"mediaType": images::OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": images::OCI_LAYER_GZIP, "digest": layer, "size": size}],
    }))
    .unwrap();
    let r = http_request(
        upstream.addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", images::OCI_MANIFEST)],
        Some(&manifest),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    sha256_digest(&manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_recorded_by_one_replica_authorises_the_repository_on_another_and_no_other() {
    let cluster = Cluster::start("private").await;
    let mut loader = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&loader, MIB);
    loader.stop();
    let upstream = Registry::builder()
        .htpasswd_auth()
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            loader.storage_dir().to_str().unwrap(),
        )
        .start();
    let entry = || {
        UpstreamEntry::new("private", &upstream.url())
            .set("username", &format!("{TEST_USER:?}"))
            .set("password", &format!("{TEST_PASSWORD:?}"))
    };
    let replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| cluster.replica(id, &[entry()]))
        .collect();
    let http = client();
    let schema2 = &fixtures.docker_schema2;
    let x = schema2.repo.as_str();
    // test/big does not hold that layer, nor that manifest, upstream.
    let y = fixtures.oci_image.repo.as_str();
    let layer = schema2.blobs[1].clone();
    let layer_size = upstream_blob_size(&upstream, x, &layer);

    // A learns the layer and the manifest through X.
    let a = &replicas[0];
    let p = pull(&http, &blob_url(a, x, &layer)).await;
    assert_complete(&p, layer_size, &layer, "A through X");
    let (status, _, body) = get_manifest(a, x, &schema2.digest).await;
    assert_eq!((status, body.as_str()), (200, schema2.digest.as_str()));
    cluster.wait_linked("private", x, &layer).await;
    cluster.wait_linked("private", x, &schema2.digest).await;
    cluster
        .wait_present(Kind::Blob, std::slice::from_ref(&layer))
        .await;
    cluster
        .wait_present(Kind::Manifest, std::slice::from_ref(&schema2.digest))
        .await;

    // B and C serve X from the bucket on A's link: the upstream is not
    // asked about X again (no HEAD, no GET).
    let blob_path = format!("/v2/{x}/blobs/{layer}");
    let manifest_path = format!("/v2/{x}/manifests/{}", schema2.digest);
    let before = (
        upstream_requests(&upstream, &blob_path),
        upstream_requests(&upstream, &manifest_path),
    );
    for r in &replicas[1..] {
        let p = pull(&http, &blob_url(r, x, &layer)).await;
        assert_complete(&p, layer_size, &layer, &format!("{} through X", r.id));
        let (status, _, body) = get_manifest(r, x, &schema2.digest).await;
        assert_eq!(
            (status, body.as_str()),
            (200, schema2.digest.as_str()),
            "{}",
            r.id
        );
    }
    let after = (
        upstream_requests(&upstream, &blob_path),
        upstream_requests(&upstream, &manifest_path),
    );
    assert_eq!(before, after, "B and C asked the upstream about X");

    // Through Y, which does not hold them, every replica refuses them,
    // the one that learned them included.
    for r in &replicas {
        let resp = http.get(blob_url(r, y, &layer)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{} served X's layer through Y", r.id);
        assert_eq!(error_code(resp).await, "BLOB_UNKNOWN", "{}", r.id);
        let resp = http
            .get(format!("{}/v2/{y}/manifests/{}", r.url(), schema2.digest))
            .header("Accept", images::MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{} served X's manifest through Y", r.id);
        assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN", "{}", r.id);
    }
    assert!(
        !upstream_requests(&upstream, &format!("/v2/{y}/blobs/{layer}")).is_empty(),
        "the upstream was asked about Y"
    );
}

/// A blob's size as the upstream states it (HEAD with credentials).
fn upstream_blob_size(upstream: &Registry, repo: &str, digest: &str) -> u64 {
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{TEST_USER}:{TEST_PASSWORD}"))
    );
    let r = http_request(
        upstream.addr,
        "HEAD",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[("Authorization", &auth)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    r.header("content-length").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_object_store_gone_replicas_serve_local_content_and_fill_from_the_upstream() {
    let mut cluster = Cluster::start("storedown").await;
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 2 * MIB);
    let opts = ReplicaOptions::default().s3("request_timeout", "\"5s\"");
    let a = cluster.replica_with("a", &[local(&upstream)], &opts);
    let b = cluster.replica_with("b", &[local(&upstream)], &opts);
    let c = cluster.replica_with("c", &[local(&upstream)], &opts);
    assert_pulls_from(&fixtures.oci_index, &a.host()).await;
    assert_pulls_from(&fixtures.docker_list, &b.host()).await;
    for (kind, digest, _) in fixture_contents(&fixtures) {
        if fixtures.oci_index.blobs.contains(&digest) || digest == fixtures.oci_index.digest {
            cluster.wait_present(kind, &[digest]).await;
        }
    }
    assert_eq!(a.metric("regcache_object_store_up"), 1.0, "{}", a.metrics());

    cluster.engine.kill();
    // Local content, and new images filled from the upstream alone.
    assert_pulls_from(&fixtures.oci_index, &a.host()).await;
    assert_pulls_from(&fixtures.docker_schema2, &a.host()).await;
    assert_pulls_from(&fixtures.docker_list, &b.host()).await;
    assert_pulls_from(&fixtures.oci_image, &b.host()).await;
    assert_pulls_from(&fixtures.docker_schema2, &c.host()).await;

    for r in [&a, &b, &c] {
        r.wait_for_metric("regcache_object_store_up", |v| v == 0.0)
            .await;
        wait_until(
            &format!("{} logs a WARN about the object store", r.id),
            Duration::from_secs(20),
            || !r.warn_lines("object store").is_empty(),
        )
        .await;
        assert!(
            r.metric_sum(
                "regcache_object_store_requests_total",
                &["status=\"error\""]
            ) + r.metric_sum(
                "regcache_object_store_requests_total",
                &["status=\"timeout\""]
            ) >= 1.0,
            "{} counted the failed store requests:\n{}",
            r.id,
            r.metrics()
        );
    }
    // A WARN for the change, not one per request (a few pulls ran since).
    let warns = a.warn_lines("object store");
    assert!(warns.len() <= 3, "{warns:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_stops_the_start_when_they_are_required() {
    let store = FakeS3::start();
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("peer.token");
    let secret = secrets.path().join("s3.secret");
    std::fs::write(&token, "t\n").unwrap();
    std::fs::write(&secret, format!("{}\n", common::seaweedfs::SECRET_KEY)).unwrap();
    let nowhere = format!("http://127.0.0.1:{}", common::registry::free_port());
    let upstreams = [UpstreamEntry::new("local", &nowhere)];
    let start = |opts: ReplicaOptions| {
        common::cluster::start_replica(
            &store.endpoint(),
            "probe",
            "a",
            &token,
            &secret,
            &upstreams,
            &opts,
        )
    };

    let required = ReplicaOptions::default().s3("conditional_writes", "\"require\"");
    let exited = match start(required) {
        Ok(r) => panic!(
            "regcache started against a store that ignores conditional writes:\n{}",
            r.log()
        ),
        Err(e) => e,
    };
    assert!(!exited.status.success(), "{}", exited.status);
    assert!(
        exited.log.contains("conditional writes") && exited.log.contains("require"),
        "the message names the cause:\n{}",
        exited.log
    );
    assert!(
        store.conditional_puts() >= 1,
        "the store was probed: {:?}",
        store.requests()
    );

    // "probe" (the default): it runs, uncoordinated, and says so loudly.
    let replica = start(ReplicaOptions::default())
        .unwrap_or_else(|e| panic!("with conditional_writes = \"probe\" it starts:\n{}", e.log));
    let errors = common::cluster::level_lines(&replica.log(), "ERROR", "conditional");
    assert!(!errors.is_empty(), "{}", replica.log());
    // The store works otherwise: the refusal above was about conditions.
    assert_eq!(
        replica.metric("regcache_object_store_up"),
        1.0,
        "{}",
        replica.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hangs_blocks_nothing_beyond_the_request_timeout() {
    // A store that stops answering (the fake: it ignores conditional
    // writes too, so the replica runs uncoordinated, as "probe" allows).
    let store = FakeS3::start();
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("peer.token");
    let secret = secrets.path().join("s3.secret");
    std::fs::write(&token, "t\n").unwrap();
    std::fs::write(&secret, format!("{}\n", common::seaweedfs::SECRET_KEY)).unwrap();
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, MIB);
    let a = common::cluster::start_replica(
        &store.endpoint(),
        "hang",
        "a",
        &token,
        &secret,
        &[local(&upstream)],
        &ReplicaOptions::default().s3("request_timeout", "\"2s\""),
    )
    .unwrap_or_else(|e| panic!("start against the fake store:\n{}", e.log));
    assert_pulls_from(&fixtures.docker_schema2, &a.host()).await;
    assert_eq!(a.metric("regcache_object_store_up"), 1.0);

    store.set_hang(true);
    // Local content, and a new image from the upstream: each store call
    // gives up after 2 s, and the skopeo copies (bounded at two minutes
    // each) complete.
    assert_pulls_from(&fixtures.docker_schema2, &a.host()).await;
    assert_pulls_from(&fixtures.oci_index, &a.host()).await;
    a.wait_for_metric("regcache_object_store_up", |v| v == 0.0)
        .await;
    assert!(
        a.metric_sum(
            "regcache_object_store_requests_total",
            &["status=\"timeout\""]
        ) >= 1.0,
        "{}",
        a.metrics()
    );
    assert!(!a.warn_lines("object store").is_empty(), "{}", a.log());
    store.set_hang(false);
}
