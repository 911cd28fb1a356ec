//! Checks the test support itself: a real registry starts, the fixtures
//! push, skopeo pulls them back with the same digests, and the registry's
//! request log counts exactly.

pub mod common;

use common::images::{self, read_dir_copy, skopeo_copy_all};
use common::registry::{http_get, Registry};
use common::token_server::b64_std;
use std::time::Instant;

#[test]
fn fixtures_push_pull_and_request_counts() {
    let t0 = Instant::now();
    let mut reg = Registry::start();
    let fx = images::load_fixtures(&reg);
    eprintln!("registry + fixtures ready in {:?}", t0.elapsed());

    assert_eq!(fx.oci_index.media_type, images::OCI_INDEX);
    assert_eq!(fx.docker_list.media_type, images::DOCKER_LIST);
    assert_eq!(fx.docker_schema2.media_type, images::DOCKER_MANIFEST);
    assert_eq!(fx.oci_image.media_type, images::OCI_MANIFEST);
    assert_eq!(fx.oci_index.child_manifests.len(), 2);
    assert_eq!(fx.docker_list.child_manifests.len(), 2);
    for c in &fx.docker_list.children {
        assert_eq!(c.media_type, images::DOCKER_MANIFEST);
    }
    assert_eq!(fx.oci_index.blobs.len(), 6, "2 x (config + 2 layers)");
    assert!(fx.big_layer_size >= 50 * 1024 * 1024);

    // Exact request counting: pushing never GETs blobs, so 0, then 1.
    let blob_path = format!("/v2/test/big/blobs/{}", fx.big_layer_digest);
    let needle = format!("/blobs/{}", fx.big_layer_digest);
    assert_eq!(reg.request_count("GET", &needle), 0, "{}", reg.logs());
    let resp = http_get(reg.addr, &blob_path).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len() as u64, fx.big_layer_size);
    assert_eq!(images::sha256_digest(&resp.body), fx.big_layer_digest);
    assert_eq!(reg.request_count("GET", &needle), 1, "{}", reg.logs());
    drop(resp);

    // Same digests after a pull with skopeo.
    let out = tempfile::tempdir().unwrap();
    for f in fx.all() {
        let dest = out.path().join(f.name);
        skopeo_copy_all(&f.reference(&reg.host()), &dest)
            .unwrap_or_else(|e| panic!("pull {}: {e}", f.name));
        let got = read_dir_copy(&dest).unwrap();
        assert_eq!(got.manifest_digest, f.digest, "{}", f.name);
        assert_eq!(got.media_type, f.media_type, "{}", f.name);
        let mut children = f.child_manifests.clone();
        children.sort();
        assert_eq!(got.instance_digests, children, "{}", f.name);
        let mut blobs = f.blobs.clone();
        blobs.sort();
        assert_eq!(got.blob_digests, blobs, "{}", f.name);
        assert_eq!(
            images::skopeo_inspect_digest(&f.reference(&reg.host())).unwrap(),
            f.digest
        );
    }
    eprintln!("pulled back in {:?}", t0.elapsed());

    // skopeo fetched the big blob once more.
    assert_eq!(reg.request_count("GET", &needle), 2);
    // stop / restart keep port, storage and log.
    let addr = reg.addr;
    reg.stop();
    assert!(
        http_get(addr, "/v2/").is_err(),
        "registry still answers after stop"
    );
    reg.restart();
    assert_eq!(reg.addr, addr);
    let resp = http_get(reg.addr, &blob_path).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(reg.request_count("GET", &needle), 3);
    eprintln!("done in {:?}", t0.elapsed());
}

#[test]
fn fresh_registry_counts_from_zero() {
    let reg = Registry::start();
    assert_eq!(reg.request_count("GET", "/blobs/"), 0);
    // The readiness probe is hidden.
    assert_eq!(reg.request_count("GET", "/v2/"), 0);
    assert_eq!(http_get(reg.addr, "/v2/").unwrap().status, 200);
    assert_eq!(reg.request_count("GET", "/v2/"), 1);
    let r = http_get(
        reg.addr,
        "/v2/nope/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(reg.request_count("GET", "/blobs/"), 1);
    assert_eq!(reg.request_count("GET", "/v2/"), 2);
    let reqs = reg.requests();
    let last = reqs.last().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("GET", Some(404)));
}

#[test]
fn htpasswd_registry_needs_credentials() {
    use common::registry::{http_request, TEST_PASSWORD, TEST_USER};
    let reg = Registry::builder().htpasswd_auth().start();
    let r = http_get(reg.addr, "/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("Basic realm="));
    let basic = format!(
        "Basic {}",
        b64_std(format!("{TEST_USER}:{TEST_PASSWORD}").as_bytes())
    );
    let r = http_request(reg.addr, "GET", "/v2/", &[("Authorization", &basic)], None).unwrap();
    assert_eq!(r.status, 200, "{}", reg.logs());
    let reqs = reg.requests();
    let statuses: Vec<_> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(401), Some(200)]);
}
