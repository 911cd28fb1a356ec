//! Fault handling against an in-process fake upstream: what a real registry
//! cannot be made to do on demand.

pub mod common;

use std::time::Duration;

use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault};
use common::http::{client, get};
use common::images::{sha256_digest, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};

const MIB: usize = 1024 * 1024;

async fn setup() -> (FakeUpstream, Regcache) {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url()).alias(&fake.host())]);
    (fake, rc)
}

fn blob_url(rc: &Regcache, digest: &str) -> String {
    format!("{}/v2/test/app/blobs/{digest}", rc.url())
}

/// Cached under its digest, and nothing left in tmp.
fn cached(rc: &Regcache, digest: &str) -> bool {
    rc.blob_path(digest).is_file()
}

fn tmp_is_empty(rc: &Regcache) -> bool {
    std::fs::read_dir(rc.tmp_dir())
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_fail_the_transfer_and_are_never_cached() {
    let (fake, rc) = setup().await;
    let data = random_bytes(3 * MIB + 17, 1);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(&digest, Fault::WrongBytes);

    let first = get(&blob_url(&rc, &digest)).await;
    assert!(
        first.is_err(),
        "a body that fails verification must not end cleanly"
    );
    assert!(!cached(&rc, &digest));
    assert!(tmp_is_empty(&rc));
    assert!(rc.metric("regcache_digest_mismatches_total") >= 1.0);

    // The next request starts a fresh fill and, with the upstream fixed, succeeds.
    fake.clear_faults();
    let (_, body) = get(&blob_url(&rc, &digest)).await.expect("refetch works");
    assert_eq!(sha256_digest(&body), digest);
    assert!(cached(&rc, &digest));
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upstream_connection_fails_clients_and_caches_nothing() {
    let (fake, rc) = setup().await;
    let data = random_bytes(4 * MIB, 2);
    let digest = fake.add_blob(data.clone());
    // Cut every attempt short: the fill resumes a few times, then gives up.
    fake.set_blob_fault(&digest, Fault::DropAfter(100_000));

    let first = get(&blob_url(&rc, &digest)).await;
    assert!(
        first.is_err(),
        "a truncated upstream must abort the client's transfer"
    );
    assert!(!cached(&rc, &digest));
    assert!(tmp_is_empty(&rc));

    fake.clear_faults();
    let (_, body) = get(&blob_url(&rc, &digest)).await.expect("refetch works");
    assert_eq!(body, data);
    assert!(cached(&rc, &digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_stop_the_fill() {
    let (fake, rc) = setup().await;
    let data = random_bytes(2 * MIB, 3);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 128 * 1024,
            delay: Duration::from_millis(40),
        },
    );
    {
        let response = client().get(blob_url(&rc, &digest)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut response = response;
        // Read a little, then drop the connection mid-transfer.
        let _ = response.chunk().await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cached(&rc, &digest) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = get(&blob_url(&rc, &digest)).await.unwrap();
    assert_eq!(body, data);
    assert_eq!(
        fake.count("GET", &format!("/blobs/{digest}")),
        1,
        "served from cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_upstream_fetch_including_late_joiners() {
    let (fake, rc) = setup().await;
    let data = random_bytes(6 * MIB, 4);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 256 * 1024,
            delay: Duration::from_millis(20),
        },
    );
    let url = blob_url(&rc, &digest);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Half start at once, half join while the fill is running.
            if i >= 10 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            get(&url).await
        }));
    }
    for t in tasks {
        let (_, body) = t.await.unwrap().expect("every client gets the blob");
        assert_eq!(sha256_digest(&body), digest);
    }
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 1);
    let coalesced = rc.metric(
        "regcache_cache_requests_total{kind=\"blob\",outcome=\"coalesced\",upstream=\"fake\"}",
    );
    assert!(
        coalesced >= 10.0,
        "late joiners attach to the fill (coalesced = {coalesced})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_cached_blobs() {
    let (fake, rc) = setup().await;
    let data = random_bytes(1000, 5);
    let digest = fake.add_blob(data.clone());
    let url = blob_url(&rc, &digest);
    assert_eq!(get(&url).await.unwrap().1, data);
    let c = client();

    let r = c
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/1000");
    assert_eq!(r.headers()["content-length"], "100");
    assert_eq!(r.bytes().await.unwrap(), &data[100..200]);

    let r = c
        .get(&url)
        .header("Range", "bytes=900-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &data[900..]);

    let r = c
        .get(&url)
        .header("Range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 990-999/1000");
    assert_eq!(r.bytes().await.unwrap(), &data[990..]);

    let r = c
        .get(&url)
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "RANGE_INVALID");

    let r = c
        .get(&url)
        .header("Range", "bytes=999999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416, "valid, but past the end");

    // Invalid ranges are ignored (RFC 9110 §14.2): the whole blob.
    for invalid in ["bytes=5-2", "bytes=oops"] {
        let r = c.get(&url).header("Range", invalid).send().await.unwrap();
        assert_eq!(r.status(), 200, "{invalid}");
        assert!(!r.headers().contains_key("content-range"), "{invalid}");
        assert_eq!(r.headers()["content-length"], "1000", "{invalid}");
        assert_eq!(r.bytes().await.unwrap(), &data[..], "{invalid}");
    }

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(
        fake.count("GET", "/blobs/"),
        1,
        "ranges are served from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_tag_is_answered_without_the_upstream() {
    let (fake, rc) = setup().await;
    let config = fake.add_blob(b"{}".to_vec());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
    );
    let digest = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest.clone().into_bytes(),
    );
    let c = client();
    let url = format!("{}/v2/test/app/manifests/v1", rc.url());
    for _ in 0..3 {
        let r = c
            .get(&url)
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.text().await.unwrap(), manifest);
        let r = c
            .head(&url)
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            manifest.len().to_string().as_str()
        );
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    }
    assert_eq!(
        fake.count("*", "/manifests/v1"),
        1,
        "one HEAD, then answered from the cache"
    );
    assert_eq!(fake.count("GET", &format!("/manifests/{digest}")), 1);

    // By digest it never goes upstream again.
    let r = c
        .get(format!("{}/v2/test/app/manifests/{digest}", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.count("GET", &format!("/manifests/{digest}")), 1);

    // A client that accepts only another type is relayed uncached.
    let r = c
        .get(&url)
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let relayed = fake.requests_matching("GET", "/manifests/v1");
    assert_eq!(
        relayed.len(),
        1,
        "relayed to the upstream, not served from the cache"
    );
    assert_eq!(
        relayed[0].header("accept"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        "with the client's own Accept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_past_its_ttl_is_revalidated_with_head_and_follows_a_move() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url()).tag_ttl("1s")]);
    let m1 = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"n":1}}"#);
    let m2 = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"n":2}}"#);
    let d1 = fake.add_manifest("test/app", Some("v1"), OCI_MANIFEST, m1.into_bytes());
    let url = format!("{}/v2/test/app/manifests/v1", rc.url());
    let c = client();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());
    assert_eq!(fake.count("HEAD", "/manifests/v1"), 2);
    assert_eq!(
        fake.count("GET", "/manifests/"),
        1,
        "unchanged tag: no second download"
    );

    let d2 = fake.add_manifest("test/app", Some("v1"), OCI_MANIFEST, m2.into_bytes());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["docker-content-digest"], d2.as_str());
    assert_eq!(fake.count("GET", &format!("/manifests/{d2}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_namespace_is_refused_without_dialling_it() {
    let (fake, rc) = setup().await;
    // A listener standing in for a host that is not configured.
    let bystander = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bystander.set_nonblocking(true).unwrap();
    let host = bystander.local_addr().unwrap().to_string();
    let c = client();
    let r = c
        .get(format!(
            "{}/v2/x/y/manifests/v1?ns={}",
            rc.url(),
            host.replace(':', "%3A")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "NAME_UNKNOWN");
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no upstream configured"));
    let r = c
        .get(format!("{}/v2/evil.example.com/y/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        bystander.accept().is_err(),
        "nothing connected to the unconfigured host"
    );
    assert_eq!(
        fake.connections(),
        0,
        "the default upstream was not asked either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_reach_clients_as_oci_errors() {
    let (fake, rc) = setup().await;
    let c = client();
    let url = format!("{}/v2/test/app/manifests/missing", rc.url());
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");

    fake.set_global_fault(Fault::status_with(429, &[("Retry-After", "7")]));
    let r = c
        .get(format!("{}/v2/test/app/manifests/other", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");

    let digest = sha256_digest(b"nothing");
    fake.set_global_fault(Fault::status(503));
    let r = c.get(blob_url(&rc, &digest)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let r = c.head(blob_url(&rc, &digest)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        r.bytes().await.unwrap().is_empty(),
        "HEAD errors carry no body"
    );

    let r = c
        .put(format!("{}/v2/test/app/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");

    let r = c
        .get(format!("{}/v2/test/app/blobs/sha256:nothex", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");

    let r = c.get(format!("{}/v2/", rc.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_and_referrers_are_relayed_with_links_rewritten() {
    let (fake, rc) = setup().await;
    for t in ["a", "b", "c"] {
        fake.add_manifest(
            "test/app",
            Some(t),
            OCI_MANIFEST,
            format!("{{\"t\":\"{t}\"}}").into_bytes(),
        );
    }
    let c = client();
    let r = c
        .get(format!(
            "{}/v2/test/app/tags/list?n=2&ns={}",
            rc.url(),
            fake.host()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.starts_with("</v2/test/app/tags/list?"), "{link}");
    assert!(link.contains("ns=127.0.0.1%3A"), "{link}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 2);
    let forwarded = fake.requests_matching("GET", "/tags/list");
    assert!(
        !forwarded[0]
            .query
            .clone()
            .unwrap_or_default()
            .contains("ns="),
        "ns is not sent upstream"
    );

    let subject = sha256_digest(b"subject");
    let r = c
        .get(format!("{}/v2/test/app/referrers/{subject}", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "an upstream 404 stays a 404 so clients fall back to tag schema"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_over_four_mebibytes_are_refused() {
    let (fake, rc) = setup().await;
    let huge = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","pad":"{}"}}"#,
        "x".repeat(4 * MIB + 1)
    );
    let digest = fake.add_manifest("test/app", Some("huge"), OCI_MANIFEST, huge.into_bytes());
    let c = client();
    for reference in ["huge", digest.as_str()] {
        let r = c
            .get(format!("{}/v2/test/app/manifests/{reference}", rc.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{reference}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
    }
    assert!(!rc
        .cache_dir()
        .join("manifests/sha256")
        .join(&digest[7..9])
        .join(&digest[7..])
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_past_max_blob_size_is_refused_with_or_without_a_length() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc =
        Regcache::start(
            &[UpstreamEntry::new("fake", &fake.url()).set("max_blob_size", "\"1MiB\"")],
        );
    // Streamed without a length: the fill stops at the bound, not at the
    // end of whatever the upstream sends.
    let endless = random_bytes(3 * MIB, 11);
    let digest = fake.add_blob(endless);
    fake.set_blob_fault(&digest, Fault::NoLength);
    let answer = get(&blob_url(&rc, &digest)).await;
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|(s, _)| *s == 502),
        "an unbounded blob must not be served: {answer:?}"
    );
    rc.wait_for_fills();
    assert!(!cached(&rc, &digest));
    assert!(tmp_is_empty(&rc));
    assert!(
        rc.log().contains("larger than max_blob_size"),
        "{}",
        rc.log()
    );

    // Announced larger than the bound: refused before anything is staged.
    let big = random_bytes(2 * MIB, 12);
    let digest = fake.add_blob(big);
    let (status, body) = get(&blob_url(&rc, &digest)).await.unwrap();
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("max_blob_size"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(!cached(&rc, &digest));

    // Within the bound, all is as usual.
    let small = random_bytes(MIB / 2, 13);
    let digest = fake.add_blob(small);
    fake.set_blob_fault(&digest, Fault::NoLength);
    let (status, body) = get(&blob_url(&rc, &digest)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256_digest(&body), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_cached_blob_is_fetched_again_not_served_short() {
    let (fake, rc) = setup().await;
    let data = random_bytes(MIB, 14);
    let digest = fake.add_blob(data.clone());
    let (_, body) = get(&blob_url(&rc, &digest)).await.unwrap();
    assert_eq!(body, data);
    rc.wait_for_fills();
    // Cut short behind the cache's back (a disk or an operator did it).
    let path = rc.blob_path(&digest);
    std::fs::write(&path, &data[..500]).unwrap();

    let (status, body) = get(&blob_url(&rc, &digest)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), data.len(), "never the short file");
    assert_eq!(sha256_digest(&body), digest);
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 2);
    assert_eq!(
        rc.metric("regcache_evictions_total{reason=\"corrupt\"}"),
        1.0
    );
    rc.wait_for_fills();
    assert_eq!(std::fs::read(&path).unwrap(), data, "refilled whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_a_manifest_is_refused_and_never_cached() {
    let (fake, rc) = setup().await;
    // `{}` as plain JSON under one tag, and under another tag whose
    // Content-Type claims a manifest (so the HEAD alone looks right).
    let junk = fake.add_manifest("test/app", Some("v1"), "application/json", b"{}".to_vec());
    fake.add_manifest("test/claims", Some("v1"), OCI_MANIFEST, b"{}".to_vec());
    let c = client();
    let url = |repo: &str, reference: &str| format!("{}/v2/{repo}/manifests/{reference}", rc.url());
    for (repo, reference) in [
        ("test/app", "v1"),
        ("test/app", junk.as_str()),
        ("test/claims", "v1"),
    ] {
        let r = c.get(url(repo, reference)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{repo}:{reference}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID", "{v}");
        let message = v["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("not a manifest"), "{message}");
    }
    let nothing_cached = |when: &str| {
        assert!(
            !rc.cached_manifests().contains(&junk),
            "{when}: the body was stored"
        );
        let (status, summary) = rc.admin_json("GET", "/admin/cache");
        assert_eq!(status, 200);
        assert_eq!(summary["tags"], 0, "{when}: {summary}");
        assert_eq!(summary["manifests"]["objects"], 0, "{when}: {summary}");
    };
    nothing_cached("after the first answers");

    // The upstream is fixed: the tags point at a real manifest now, and the
    // very next requests get it — nothing was remembered in between.
    let config = fake.add_blob(b"{}".to_vec());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
    );
    let good = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest.clone().into_bytes(),
    );
    fake.add_manifest(
        "test/claims",
        Some("v1"),
        OCI_MANIFEST,
        manifest.clone().into_bytes(),
    );
    for repo in ["test/app", "test/claims"] {
        let r = c.get(url(repo, "v1")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{repo}");
        assert_eq!(r.headers()["docker-content-digest"], good.as_str());
        assert_eq!(r.text().await.unwrap(), manifest);
    }
    // The junk digest is asked of the upstream again, and still refused.
    let r = c.get(url("test/app", &junk)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(fake.count("GET", &format!("/manifests/{junk}")), 3);
    assert_eq!(rc.cached_manifests(), [good.clone()].into_iter().collect());
    let (_, summary) = rc.admin_json("GET", "/admin/cache");
    assert_eq!(summary["manifests"]["objects"], 1, "{summary}");
}

/// A fake upstream whose every answer carries `cache_control`, and
/// regcache with this `tag_ttl`; `test/app:v1` is a manifest there.
async fn with_cache_control(cache_control: &str, tag_ttl: &str) -> (FakeUpstream, Regcache) {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    fake.set_extra_headers(&[("cache-control", cache_control)]);
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{}},"layers":[]}}"#)
            .into_bytes(),
    );
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url()).tag_ttl(tag_ttl)]);
    (fake, rc)
}

async fn pull_v1(rc: &Regcache) {
    let r = client()
        .get(format!("{}/v2/test/app/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_max_age_shortens_tag_ttl_and_never_lengthens_it() {
    let (fake, rc) = with_cache_control("max-age=1", "5m").await;
    pull_v1(&rc).await;
    pull_v1(&rc).await;
    assert_eq!(fake.count("HEAD", "/manifests/v1"), 1, "fresh for a second");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    pull_v1(&rc).await;
    assert_eq!(
        fake.count("HEAD", "/manifests/v1"),
        2,
        "max-age=1 beat tag_ttl = 5m"
    );

    let (fake, rc) = with_cache_control("max-age=3600", "1s").await;
    pull_v1(&rc).await;
    pull_v1(&rc).await;
    assert_eq!(fake.count("HEAD", "/manifests/v1"), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    pull_v1(&rc).await;
    assert_eq!(
        fake.count("HEAD", "/manifests/v1"),
        2,
        "max-age=3600 does not outlast tag_ttl = 1s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_answers_are_relayed_and_never_cached() {
    for cache_control in ["no-store", "private, max-age=600"] {
        let (fake, rc) = with_cache_control(cache_control, "5m").await;
        let tags = format!("{}/v2/test/app/tags/list", rc.url());
        for _ in 0..3 {
            pull_v1(&rc).await;
            let (status, body) = get(&tags).await.unwrap();
            assert_eq!(status, 200);
            assert!(String::from_utf8_lossy(&body).contains("v1"));
        }
        assert_eq!(
            fake.count("HEAD", "/manifests/v1"),
            3,
            "{cache_control}: every pull asks"
        );
        assert_eq!(
            fake.count("GET", "/manifests/sha256:"),
            3,
            "{cache_control}: the manifest too"
        );
        assert_eq!(fake.count("GET", "/tags/list"), 3, "{cache_control}");
        assert!(rc.cached_manifests().is_empty(), "{cache_control}");
        let (status, repos) = rc.admin_json("GET", "/admin/repositories");
        assert_eq!(status, 200);
        assert!(
            repos.as_array().is_some_and(|r| r.is_empty()),
            "{cache_control}: no tag recorded: {repos}"
        );
        assert!(
            rc.log().contains("outcome=\"bypass\""),
            "{cache_control}: {}",
            rc.log()
        );
    }
}
