//! Crash safety: a daemon killed mid-fill leaves nothing half-written that a
//! restart would serve, and loses no tag it had recorded.

pub mod common;

use std::time::Duration;

use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault};
use common::images::{sha256_digest, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_fill_then_restarted_serves_correct_bytes() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let mut rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let data = random_bytes(4 * 1024 * 1024, 9);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 256 * 1024,
            delay: Duration::from_millis(100),
        },
    );
    let url = format!("{}/v2/test/app/blobs/{digest}", rc.url());
    let mut response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.chunk().await.unwrap();
    // The fill is running: its temporary file exists and nothing is committed.
    let tmp_files = std::fs::read_dir(rc.tmp_dir()).unwrap().count();
    assert_eq!(tmp_files, 1, "one fill in progress");
    assert!(!rc.blob_path(&digest).exists());

    rc.kill();
    assert!(
        response.bytes().await.is_err(),
        "the client of a killed daemon sees a failed transfer"
    );
    fake.clear_faults();
    rc.restart();
    assert_eq!(
        std::fs::read_dir(rc.tmp_dir()).unwrap().count(),
        0,
        "leftovers removed at startup"
    );
    assert!(!rc.blob_path(&digest).exists());

    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), digest);
    assert!(rc.blob_path(&digest).exists());
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_does_not_need_the_upstream() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    fake.go_down().await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let r = reqwest::get(format!("{}/v2/", rc.url())).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("{}/v2/test/app/manifests/v1", rc.url()))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "an unreachable upstream with nothing cached is a clear 502"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_index_is_moved_aside_and_rebuilt() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let mut rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let data = random_bytes(300_000, 11);
    let digest = fake.add_blob(data.clone());
    let url = format!("{}/v2/test/app/blobs/{digest}", rc.url());
    assert_eq!(
        reqwest::get(&url).await.unwrap().bytes().await.unwrap(),
        data
    );
    rc.kill();
    // Scribble over every file of the index.
    for entry in std::fs::read_dir(rc.index_path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, b"this is not a sled database").unwrap();
        }
    }
    fake.go_down().await;
    let rebuilt = rc.log_count("index reconciled") + 1;
    rc.restart();
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        body, data,
        "served from the blob file with the upstream down"
    );
    let moved_aside = std::fs::read_dir(rc.cache_dir()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("index.corrupt-")
    });
    assert!(
        moved_aside,
        "the unreadable index is kept aside for inspection:\n{}",
        rc.log()
    );
    rc.wait_for_log_count("index reconciled", rebuilt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_pulled_just_before_a_kill_are_served_after_the_restart() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let mut rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url()).tag_ttl("1h")]);
    let mut digests = Vec::new();
    for tag in ["v1", "v2"] {
        let config = fake.add_blob(format!("{{\"tag\":\"{tag}\"}}").into_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":12}},"layers":[]}}"#
        );
        digests.push(fake.add_manifest("team/app", Some(tag), OCI_MANIFEST, manifest));
    }
    let client = common::http::client();
    // Built anew each time: a restart may move to other ports.
    let tag_url = |base: String, tag: &str| format!("{base}/v2/team/app/manifests/{tag}");
    for tag in ["v1", "v2"] {
        let r = client
            .get(tag_url(rc.url(), tag))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{tag}");
    }
    // At once: the index's next flush (every second) has not come.
    rc.kill();
    fake.go_down().await;
    let reconciled = rc.log_count("index reconciled") + 1;
    rc.restart();
    rc.wait_for_log_count("index reconciled", reconciled).await;
    for (tag, digest) in ["v1", "v2"].into_iter().zip(&digests) {
        let r = client
            .get(tag_url(rc.url(), tag))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{tag} with the upstream gone:\n{}",
            rc.log()
        );
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            digest.as_str()
        );
    }
}
