//! Surviving the upstream: stale answers when it is down, slow or
//! rate-limiting; a circuit breaker; offline mode; negative caching;
//! resumed fills.

pub mod common;

use std::time::{Duration, Instant};

use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault, Scope};
use common::http::{client, get};
use common::images::{self, read_dir_copy, sha256_digest, skopeo_copy_all, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::Registry;

/// regcache runs with a 2 s header timeout here; this generous bound for
/// "answered within the header timeout" checks that nothing hangs, not how
/// fast the machine is.
const NO_HANG: Duration = Duration::from_secs(8);

fn manifest(n: u32) -> String {
    format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"n":{n}}}"#)
}

async fn start(tag_ttl: &str, extra: &[(&str, &str)]) -> (FakeUpstream, Regcache) {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let mut upstream = UpstreamEntry::new("fake", &fake.url())
        .alias(&fake.host())
        .tag_ttl(tag_ttl);
    for (k, v) in extra {
        upstream = upstream.set(k, v);
    }
    let rc = Regcache::start_with(
        &[upstream],
        "header_timeout = \"2s\"\nidle_timeout = \"2s\"\n",
    );
    (fake, rc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_upstream_failure_serves_cached_tags_stale_and_fails_fast_otherwise() {
    // A high breaker threshold keeps each failure mode reaching the upstream.
    let (fake, rc) = start("1s", &[("breaker_threshold", "100")]).await;
    let digest = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(1).into_bytes(),
    );
    let url = format!("{}/v2/test/app/manifests/v1", rc.url());
    let uncached = format!("{}/v2/test/app/manifests/never-seen", rc.url());
    let c = client();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let faults: Vec<(&str, Fault)> = vec![
        ("hang", Fault::Hang),
        ("reset", Fault::CloseConnection),
        ("500", Fault::status(500)),
        ("503", Fault::status(503)),
        ("429", Fault::status_with(429, &[("Retry-After", "5")])),
    ];
    for (name, fault) in faults {
        fake.set_global_fault(fault);
        let started = Instant::now();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}: a cached tag is served");
        assert_eq!(
            r.headers()["warning"],
            "110 - \"response is stale\"",
            "{name}"
        );
        assert_eq!(
            r.headers()["docker-content-digest"],
            digest.as_str(),
            "{name}"
        );
        assert!(
            started.elapsed() < NO_HANG,
            "{name}: took {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        let r = c.get(&uncached).send().await.unwrap();
        assert!(
            r.status().as_u16() >= 429,
            "{name}: uncached is an error, got {}",
            r.status()
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            !v["errors"][0]["message"].as_str().unwrap_or("").is_empty(),
            "{name}: {v}"
        );
        assert!(
            started.elapsed() < NO_HANG,
            "{name}: took {:?}",
            started.elapsed()
        );
    }

    // Refused connections, the upstream gone altogether.
    fake.clear_faults();
    fake.go_down().await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("warning"));
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "HEAD is served stale too");
    assert!(r.headers().contains_key("warning"));
    assert!(
        rc.metric(
            "regcache_cache_requests_total{kind=\"tag\",outcome=\"stale\",upstream=\"fake\"}"
        ) >= 7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_zero_disables_stale_answers() {
    let (fake, rc) = start("1s", &[("stale_if_error", "\"0s\"")]).await;
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(1).into_bytes(),
    );
    let url = format!("{}/v2/test/app/manifests/v1", rc.url());
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.set_global_fault(Fault::status(503));
    assert_eq!(client().get(&url).send().await.unwrap().status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_half_opens_and_recovers() {
    let (fake, rc) = start(
        "5m",
        &[("breaker_threshold", "3"), ("breaker_cooldown", "\"1s\"")],
    )
    .await;
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(1).into_bytes(),
    );
    fake.set_global_fault(Fault::status(503));
    let c = client();
    for i in 0..3 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/t{i}", rc.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
    }
    assert_eq!(
        rc.metric("regcache_upstream_circuit_state{upstream=\"fake\"}"),
        1.0,
        "open"
    );
    let before = fake.requests().len();
    for i in 0..5 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/u{i}", rc.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "answered at once while open");
        assert!(r.headers().contains_key("retry-after"));
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "no request reached the upstream while open"
    );

    // After the cooldown one probe goes out; it succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fake.clear_faults();
    let r = c
        .get(format!("{}/v2/test/app/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        rc.metric("regcache_upstream_circuit_state{upstream=\"fake\"}"),
        0.0,
        "closed"
    );
}

/// WARN lines of regcache's log that contain `needle`.
fn warns(rc: &Regcache, needle: &str) -> usize {
    rc.log()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_at_warn_once_when_it_starts_and_once_when_it_ends() {
    let (fake, rc) = start(
        "5m",
        &[("breaker_threshold", "3"), ("breaker_cooldown", "\"1s\"")],
    )
    .await;
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(1).into_bytes(),
    );
    fake.go_down().await;
    let c = client();
    for i in 0..10 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/t{i}", rc.url()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    let log = rc.log();
    assert_eq!(warns(&rc, "upstream unreachable"), 1, "{log}");
    assert_eq!(warns(&rc, "circuit breaker opened"), 1, "{log}");
    assert_eq!(warns(&rc, "circuit breaker"), 1, "nothing else yet: {log}");
    assert!(
        log.lines()
            .any(|l| l.contains("circuit breaker opened") && l.contains("upstream=\"fake\"")),
        "names the upstream: {log}"
    );

    // Back up: the probe after the cooldown closes the breaker, logged once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fake.restart().await.unwrap();
    for i in 0..5 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/v1?n={i}", rc.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(format!("{}/v2/test/app/manifests/gone{i}", rc.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "the upstream answers");
    }
    let log = rc.log();
    assert_eq!(warns(&rc, "circuit breaker half-open"), 1, "{log}");
    assert_eq!(warns(&rc, "circuit breaker closed"), 1, "{log}");
    assert_eq!(warns(&rc, "upstream reachable again"), 1, "{log}");
    assert_eq!(warns(&rc, "upstream unreachable"), 1, "{log}");
    assert_eq!(warns(&rc, "circuit breaker opened"), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_never_dials_out_and_can_be_switched_live() {
    let (fake, mut rc) = start("1s", &[]).await;
    let blob = random_bytes(100_000, 21);
    let blob_digest = fake.add_blob(blob.clone());
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(1).into_bytes(),
    );
    let c = client();
    let tag_url = format!("{}/v2/test/app/manifests/v1", rc.url());
    let blob_url = format!("{}/v2/test/app/blobs/{blob_digest}", rc.url());
    assert_eq!(c.get(&tag_url).send().await.unwrap().status(), 200);
    assert_eq!(
        c.get(&blob_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        blob
    );

    assert_eq!(rc.admin_post("/admin/offline?enabled=true"), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let connections = fake.connections();
    let r = c.get(&tag_url).send().await.unwrap();
    assert_eq!(r.status(), 200, "cached content is served");
    assert_eq!(
        c.get(&blob_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        blob
    );
    let r = c
        .get(format!("{}/v2/test/app/manifests/v2", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("offline"),
        "{v}"
    );
    let missing = sha256_digest(b"not cached");
    let r = c
        .get(format!("{}/v2/test/app/blobs/{missing}", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
    assert_eq!(
        fake.connections(),
        connections,
        "no connection to the upstream while offline"
    );
    assert_eq!(fake.count("*", "/manifests/v2"), 0, "and no request");

    // Back online through the admin API...
    assert_eq!(rc.admin_post("/admin/offline?enabled=false"), 200);
    let r = c
        .get(format!("{}/v2/test/app/manifests/v2", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "asked upstream, which has no v2");
    assert_eq!(
        fake.count("*", "/manifests/v2"),
        1,
        "online again: the upstream is asked"
    );

    // ...and offline again through the config file and SIGHUP.
    let upstream = UpstreamEntry::new("fake", &fake.url())
        .tag_ttl("1s")
        .set("offline", "true");
    rc.write_config(&[upstream], "header_timeout = \"2s\"\n");
    rc.sighup_and_wait("config reloaded").await;
    let connections = fake.connections();
    let r = c
        .get(format!("{}/v2/test/app/manifests/v3", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(fake.connections(), connections);

    // A broken config on SIGHUP is refused and the running one kept.
    std::fs::write(rc.dir.join("regcache.toml"), "listen = 5\n").unwrap();
    rc.sighup_and_wait("reload refused").await;
    assert_eq!(c.get(&blob_url).send().await.unwrap().status(), 200);
    rc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_for_a_missing_tag_cost_one_upstream_request() {
    let (fake, rc) = start("5m", &[]).await;
    let url = format!("{}/v2/test/app/manifests/missing", rc.url());
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            c.get(&url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 404);
    }
    // And the 404 is remembered for later requests too.
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(fake.count("*", "/manifests/missing"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_resumes_after_the_upstream_cuts_the_connection_twice() {
    let (fake, rc) = start("5m", &[]).await;
    let data = random_bytes(8 * 1024 * 1024, 31);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(&digest, Fault::DropAtFractions(vec![0.3, 0.7]));
    let body = get(&format!("{}/v2/test/app/blobs/{digest}", rc.url()))
        .await
        .expect("the client sees a whole transfer, not a failure")
        .1;
    assert_eq!(sha256_digest(&body), digest);
    assert_eq!(
        fake.count("GET", &format!("/blobs/{digest}")),
        3,
        "one GET and two resumes"
    );
    let ranges: Vec<String> = fake
        .requests_matching("GET", &format!("/blobs/{digest}"))
        .iter()
        .filter_map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges.len(), 2, "resumed with Range: {ranges:?}");
    assert!(rc.blob_path(&digest).is_file());
    assert_eq!(rc.metric("regcache_fills_resumed_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_restarts_cleanly_when_the_upstream_ignores_range() {
    let (fake, rc) = start("5m", &[]).await;
    fake.set_honour_range(false);
    let data = random_bytes(8 * 1024 * 1024, 32);
    let digest = fake.add_blob(data.clone());
    fake.set_fault(
        Scope::Digest(digest.clone()),
        Fault::DropAtFractions(vec![0.3, 0.7]),
    );
    let body = get(&format!("{}/v2/test/app/blobs/{digest}", rc.url()))
        .await
        .unwrap()
        .1;
    assert_eq!(body, data);
    assert!(rc.blob_path(&digest).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_cached_images_with_the_real_upstream_stopped_and_after_a_restart() {
    let mut upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let mut rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url()).tag_ttl("1s")]);
    let pull = |host: String| {
        for f in fixtures.all() {
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("image");
            let reference = format!("{host}/{}:{}", f.repo, f.tag);
            skopeo_copy_all(&reference, &dest).unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(read_dir_copy(&dest).unwrap().manifest_digest, f.digest);
        }
    };
    let host = rc.host();
    tokio::task::block_in_place(|| pull(host.clone()));
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio::task::block_in_place(|| pull(host.clone()));
    rc.restart();
    tokio::task::block_in_place(|| pull(rc.host()));
    assert!(rc.log().contains("serving stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_costs_a_stale_tag_stale_timeout_not_the_header_timeout() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let upstream = UpstreamEntry::new("fake", &fake.url())
        .tag_ttl("1s")
        .set("stale_timeout", "\"500ms\"")
        .set("breaker_threshold", "100");
    // A header timeout far above the stale timeout: before stale_timeout
    // existed, each stale answer waited for all of it.
    let rc = Regcache::start_with(&[upstream], "header_timeout = \"20s\"\n");
    let digest = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(1).into_bytes(),
    );
    let url = format!("{}/v2/test/app/manifests/v1", rc.url());
    let c = client();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    fake.set_global_fault(Fault::Hang);
    let started = Instant::now();
    let r = c.get(&url).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["warning"], "110 - \"response is stale\"");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert!(
        took < Duration::from_secs(10),
        "answered stale after {took:?}: the header timeout (20 s), not stale_timeout (0.5 s)"
    );
}

/// docker and containerd check a tag they hold with a HEAD only. Such a tag
/// must be servable whole through a later outage: the HEAD that asked the
/// upstream also brings the manifest's body in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_only_ever_asked_by_head_is_served_whole_through_an_outage() {
    let (fake, rc) = start("1s", &[]).await;
    let digest = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        manifest(7).into_bytes(),
    );
    let url = format!("{}/v2/test/app/manifests/v1", rc.url());
    let c = client();
    let r = c
        .head(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + NO_HANG;
    while !rc.cached_manifests().contains(&digest) {
        assert!(
            Instant::now() < deadline,
            "the HEAD did not bring the body in; log:\n{}",
            rc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.go_down().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .get(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a GET after the outage began");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.bytes().await.unwrap(), manifest(7).as_bytes());
}
