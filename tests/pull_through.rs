//! End to end with real parts: a real upstream (Debian's docker-registry,
//! CNCF distribution 2.8) and a real client (skopeo) pulling through the
//! regcache binary.

pub mod common;

use std::time::Duration;

use common::http::client;
use common::images::{self, assert_pulls};
use common::ns_shim::NsShim;
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_every_image_kind_through_every_routing_style() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let rc =
        Regcache::start(&[UpstreamEntry::new("local", &upstream.url()).alias(&upstream.host())]);
    let shim = NsShim::start(rc.addr, &upstream.host()).await;

    for fixture in fixtures.all() {
        let name_tag = format!("{}:{}", fixture.repo, fixture.tag);
        // Default upstream: the path names no upstream.
        let default_ref = format!("{}/{name_tag}", rc.host());
        // containerd style: ?ns=<registry host>.
        let ns_ref = format!("{}/{name_tag}", shim.host());
        // podman/CRI-O mirror style: the upstream as first path component.
        let prefix_ref = format!("{}/local/{name_tag}", rc.host());
        for reference in [default_ref, ns_ref, prefix_ref] {
            let f = fixture.clone();
            tokio::task::spawn_blocking(move || assert_pulls(&f, &reference))
                .await
                .unwrap();
        }
    }
    // Each blob came from the upstream once, however many pulls.
    let big = format!("/blobs/{}", fixtures.big_layer_digest);
    assert_eq!(upstream.request_count("GET", &big), 1);
    assert!(
        rc.metric("regcache_served_bytes_total{source=\"cache\"}")
            > 2.0 * fixtures.big_layer_size as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_cold_gets_of_a_large_blob_cost_one_upstream_get() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let digest = fixtures.big_layer_digest.clone();
    let url = format!("{}/v2/test/big/blobs/{digest}", rc.url());
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            // Some clients arrive while the fill is already running, and some
            // read slowly: neither may slow or break the others.
            tokio::time::sleep(Duration::from_millis(i * 15)).await;
            let mut response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut n = 0u64;
            while let Some(chunk) = response.chunk().await.expect("body completes") {
                n += chunk.len() as u64;
                sha2::Digest::update(&mut hasher, &chunk);
                if i % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (
                n,
                format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
            )
        }));
    }
    for t in tasks {
        let (n, got) = t.await.unwrap();
        assert_eq!(n, fixtures.big_layer_size);
        assert_eq!(got, digest);
    }
    assert_eq!(
        upstream.request_count("GET", &format!("/blobs/{digest}")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_index_is_rebuilt_and_cached_images_served_by_digest_and_tag_with_the_upstream_gone(
) {
    let mut upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let mut rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let fixture = fixtures.oci_index.clone();
    let by_tag = format!("{}/{}:{}", rc.host(), fixture.repo, fixture.tag);
    let f = fixture.clone();
    tokio::task::spawn_blocking(move || assert_pulls(&f, &by_tag))
        .await
        .unwrap();

    rc.kill();
    std::fs::remove_dir_all(rc.index_path()).unwrap();
    upstream.stop();
    let rebuilt = rc.log_count("index reconciled") + 1;
    rc.restart();
    rc.wait_for_log_count("index reconciled", rebuilt).await;

    // The tag too: it came back from its tag file, with nobody to ask.
    let by_digest = format!("{}/{}@{}", rc.host(), fixture.repo, fixture.digest);
    let by_tag = format!("{}/{}:{}", rc.host(), fixture.repo, fixture.tag);
    for reference in [by_digest, by_tag] {
        let f = fixture.clone();
        tokio::task::spawn_blocking(move || assert_pulls(&f, &reference))
            .await
            .unwrap();
    }
}
