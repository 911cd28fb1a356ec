//! Real clients pulling through regcache with the configuration the README
//! shows them, beside skopeo (tests/pull_through.rs): buildah, with a
//! registries.conf mirror of the README's podman / CRI-O / buildah shape.

pub mod common;

use std::path::Path;
use std::process::Command;

use common::images;
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::Registry;

/// Bound on one buildah command (coreutils `timeout`, so a hung pull fails
/// the test instead of holding it).
const BUILDAH_TIMEOUT_SECS: &str = "120";

fn buildah(state: &Path, registries_conf: &Path, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg(BUILDAH_TIMEOUT_SECS)
        .arg("buildah")
        .arg("--root")
        .arg(state.join("root"))
        .arg("--runroot")
        .arg(state.join("run"))
        // vfs needs no overlay mounts, which a CI sandbox may not allow.
        .args(["--storage-driver", "vfs", "--registries-conf"])
        .arg(registries_conf)
        .args(args)
        .output()
        .expect("buildah is installed by .ci/install-test-deps");
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_pulls_through_a_registries_conf_mirror() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 256 * 1024);
    let rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let fixture = fixtures.docker_schema2.clone();

    let dir = tempfile::tempdir().unwrap();
    // The README's shape: the registry as prefix and location, regcache as
    // its mirror with the upstream's name as the first path component.
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{up}\"\nlocation = \"{up}\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{rc}/local\"\ninsecure = true\n",
            up = upstream.host(),
            rc = rc.host(),
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let state = dir.path().to_owned();
    let reference = format!("{}/{}:{}", upstream.host(), fixture.repo, fixture.tag);
    let (conf2, policy2, state2, reference2) = (
        conf.clone(),
        policy.clone(),
        state.clone(),
        reference.clone(),
    );
    let digests = tokio::task::spawn_blocking(move || {
        buildah(
            &state2,
            &conf2,
            &[
                "pull",
                "--signature-policy",
                policy2.to_str().unwrap(),
                &reference2,
            ],
        );
        buildah(
            &state2,
            &conf2,
            &["images", "--digests", "--format", "{{.Digest}}"],
        )
    })
    .await
    .unwrap();

    // buildah has the image as the upstream serves it ...
    assert!(
        digests.lines().any(|d| d.trim() == fixture.digest),
        "buildah has {digests:?}, not {}",
        fixture.digest
    );
    // ... and it came through the mirror, not by the fallback to the
    // registry itself: regcache sent every blob of it, fetched once.
    let blob_bytes: u64 = fixture
        .blobs
        .iter()
        .map(|b| {
            std::fs::metadata(rc.blob_path(b))
                .unwrap_or_else(|e| panic!("{b} is not cached: {e}"))
                .len()
        })
        .sum();
    assert!(
        rc.metric("regcache_served_bytes_total{source=\"upstream\"}")
            + rc.metric("regcache_served_bytes_total{source=\"cache\"}")
            >= blob_bytes as f64
    );
    for blob in &fixture.blobs {
        assert_eq!(
            upstream.request_count("GET", &format!("/blobs/{blob}")),
            1,
            "{blob}"
        );
    }
}
