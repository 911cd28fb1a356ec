//! A cache that looks after itself: size-bounded LRU eviction with pins and
//! open readers, purges through the admin API and the CLI, and `verify`.

pub mod common;

use std::time::{Duration, Instant};

use common::fake_upstream::{random_bytes, FakeUpstream};
use common::http::{client, get};
use common::images::{self, assert_pulls_from, sha256_digest, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::Registry;

const MIB: usize = 1024 * 1024;

async fn get_all(url: &str) -> Vec<u8> {
    let (status, body) = get(url).await.unwrap();
    assert_eq!(status, 200, "{url}");
    body.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_drops_to_low_water_in_lru_order_keeping_pinned_touched_and_open_blobs() {
    let fake = FakeUpstream::start_default().await;
    // A pinned image: config + a 1 MiB layer.
    let config = fake.add_blob(br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    let pinned_layer = fake.add_blob(random_bytes(MIB, 50));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{pinned_layer}","size":{MIB}}}]}}"#
    );
    let pinned_manifest = fake.add_manifest("team/pinned", Some("v1"), OCI_MANIFEST, manifest);
    let big_bytes = random_bytes(16 * MIB, 1);
    let big = fake.add_blob(big_bytes.clone());
    let small: Vec<String> = (0..10)
        .map(|i| fake.add_blob(random_bytes(MIB, 100 + i)))
        .collect();

    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url()).set("pin", r#"["team/pinned"]"#)],
        // High water (27.8 MB) lies between the totals before and after the
        // last small blob, so eviction starts only once every fill is in,
        // whatever the machine's timing.
        "[cache]\nmax_size = \"29184KiB\"\nhigh_water = 0.93\nlow_water = 0.75\ngc_interval = \"1h\"\n",
    );
    let base = rc.url();
    let blob_url = |repo: &str, d: &str| format!("{base}/v2/{repo}/blobs/{d}");
    let r = client()
        .get(format!("{base}/v2/team/pinned/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    get_all(&blob_url("team/pinned", &config)).await;
    get_all(&blob_url("team/pinned", &pinned_layer)).await;

    // The big blob: cached, then served to a client that reads one chunk
    // and stalls (16 MiB is far more than the socket buffers hold).
    get_all(&blob_url("test/app", &big)).await;
    let mut slow = client()
        .get(blob_url("test/app", &big))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let mut slow_body = slow.chunk().await.unwrap().unwrap().to_vec();

    // Ten more MiB, touching the first small blob after each: it is always
    // among the most recently used.
    for d in &small {
        get_all(&blob_url("test/app", d)).await;
        get_all(&blob_url("test/app", &small[0])).await;
    }

    // The last fill crossed the high-water mark and woke eviction, which
    // brings the cache down to the low-water mark (22.4 MB).
    let max_size = 29184 * 1024u64;
    let low_water = (max_size as f64 * 0.75) as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    let summary = loop {
        let (status, summary) = rc.admin_json("GET", "/admin/cache");
        assert_eq!(status, 200);
        if summary["total_bytes"].as_u64().unwrap() <= low_water {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "never evicted down to {low_water}: {summary:#}\n{}",
            rc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(summary["max_size"].as_u64(), Some(max_size));
    // The index entries of a run go (durably) before its files: wait for
    // the run to end before looking at the files.
    rc.wait_for_log_count("eviction run", 1).await;

    assert!(
        rc.blob_path(&big).exists(),
        "a blob being served was evicted"
    );
    for d in [&config, &pinned_layer] {
        assert!(rc.blob_path(d).exists(), "pinned blob {d} was evicted");
    }
    assert!(
        rc.cached_manifests().contains(&pinned_manifest),
        "the pinned manifest was evicted"
    );
    assert!(
        rc.blob_path(&small[0]).exists(),
        "the recently touched blob was evicted"
    );
    // Least recently used first: what is left of the others is the newest.
    let present: Vec<bool> = small[1..]
        .iter()
        .map(|d| rc.blob_path(d).exists())
        .collect();
    let evicted = present.iter().filter(|p| !**p).count();
    // 28.3 MB down to at most 22.4 MB: six of the 1 MiB blobs.
    assert_eq!(evicted, 6, "{present:?}");
    assert!(
        present.windows(2).all(|w| w[0] <= w[1]),
        "evicted out of LRU order: {present:?}"
    );
    assert!(rc.metric("regcache_evictions_total{reason=\"size\"}") >= evicted as f64);
    assert_eq!(rc.metric("regcache_cache_max_size_bytes"), max_size as f64);

    // The stalled client gets every byte.
    while let Some(chunk) = slow.chunk().await.unwrap() {
        slow_body.extend_from_slice(&chunk);
    }
    assert_eq!(slow_body.len(), big_bytes.len());
    assert_eq!(sha256_digest(&slow_body), big);

    // An evicted blob is simply fetched again on demand.
    let gone = &small[1];
    assert!(!rc.blob_path(gone).exists());
    let before = fake.count("GET", &format!("/blobs/{gone}"));
    assert_eq!(
        sha256_digest(&get_all(&blob_url("test/app", gone)).await),
        *gone
    );
    assert_eq!(fake.count("GET", &format!("/blobs/{gone}")), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_through_the_admin_api_and_the_cli_refetches_from_the_upstream() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 256 * 1024);
    let rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let f = fixtures.docker_schema2.clone();
    assert_pulls_from(&f, &rc.host()).await;
    let manifest_gets = || upstream.request_count("GET", &format!("/manifests/{}", f.digest));
    let layer = f.blobs[1].clone();
    let layer_gets = || upstream.request_count("GET", &format!("/blobs/{layer}"));
    assert_eq!((manifest_gets(), layer_gets()), (1, 1));

    let ls = rc.cli(&["ls"]);
    assert!(ls.success(), "{ls:?}");
    assert!(
        ls.stdout.contains("test/schema2") && ls.stdout.contains("v1"),
        "{}",
        ls.stdout
    );
    let (status, repos) = rc.admin_json("GET", "/admin/repositories");
    assert_eq!(status, 200);
    let tag = &repos[0]["tags"][0];
    assert_eq!(repos[0]["repository"], "test/schema2");
    assert_eq!(tag["digest"], f.digest.as_str());
    assert_eq!(tag["cached"], true);
    assert!(tag["last_accessed"].as_u64().unwrap() > 0);

    let (status, report) = rc.admin_json("DELETE", "/admin/manifests/local/test/schema2:v1");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["tags"][0], "local/test/schema2:v1");
    assert_eq!(report["manifests"][0], f.digest.as_str());
    let (status, report) = rc.admin_json("DELETE", &format!("/admin/blobs/{layer}"));
    assert_eq!(status, 200, "{report}");
    assert!(!rc.blob_path(&layer).exists());
    let (status, _) = rc.admin_json("DELETE", &format!("/admin/blobs/{layer}"));
    assert_eq!(status, 404, "a second purge finds nothing");
    let (status, _) = rc.admin_json("DELETE", "/admin/manifests/local/test/schema2");
    assert_eq!(status, 400, "a target without tag or digest is refused");
    assert_eq!(rc.metric("regcache_evictions_total{reason=\"purge\"}"), 2.0);

    assert_pulls_from(&f, &rc.host()).await;
    assert_eq!(
        (manifest_gets(), layer_gets()),
        (2, 2),
        "the purged manifest and blob came from the upstream again"
    );

    // The CLI purges through the running daemon too.
    let out = rc.cli(&["purge", "test/schema2:v1"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("removed 1 tags, 1 manifests"),
        "{}",
        out.stdout
    );
    let out = rc.cli(&["purge", "test/schema2:v1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("not in the cache"), "{}", out.stdout);
    assert_pulls_from(&f, &rc.host()).await;
    assert_eq!(manifest_gets(), 3);

    // POST /admin/gc on an unbounded cache evicts nothing.
    let (status, report) = rc.admin_json("POST", "/admin/gc");
    assert_eq!(status, 200);
    assert_eq!(report["evicted_size"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_corrupt_missing_and_orphaned_then_repairs() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 256 * 1024);
    let mut rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let f = fixtures.docker_schema2.clone();
    assert_pulls_from(&f, &rc.host()).await;

    // While the daemon runs, verify goes through it (tests/integrity.rs);
    // stopped, it also checks the index against the files.
    let out = rc.cli(&["verify"]);
    assert!(out.success(), "through the daemon: {out:?}");
    assert!(out.stdout.contains("0 problems"), "{}", out.stdout);

    rc.terminate();
    let (corrupt, deleted) = (f.blobs[1].clone(), f.blobs[2].clone());
    let path = rc.blob_path(&corrupt);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(rc.blob_path(&deleted)).unwrap();
    let orphan_bytes = b"nobody indexed me".to_vec();
    let orphan = sha256_digest(&orphan_bytes);
    let orphan_path = rc.blob_path(&orphan);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, orphan_bytes).unwrap();

    let out = rc.cli(&["verify"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.contains(&format!("corrupt blob {corrupt}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("missing blob {deleted}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("orphan file")
            && out.stdout.contains(orphan.trim_start_matches("sha256:")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 problems"), "{}", out.stdout);

    let out = rc.cli(&["verify", "--repair"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("repaired"), "{}", out.stdout);
    assert!(!rc.blob_path(&corrupt).exists());
    let aside = rc
        .cache_dir()
        .join("quarantine")
        .join(format!("blob-{}", corrupt.trim_start_matches("sha256:")));
    assert!(aside.exists(), "a corrupt file is moved aside, not deleted");
    // A valid file the index lost (a crash before its flush) is indexed
    // again, never deleted.
    assert!(orphan_path.exists());
    let out = rc.cli(&["verify"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("0 problems"), "{}", out.stdout);

    // The daemon fetches the repaired blobs again on demand.
    rc.start_again();
    assert_pulls_from(&f, &rc.host()).await;
    for d in [&corrupt, &deleted] {
        assert_eq!(
            upstream.request_count("GET", &format!("/blobs/{d}")),
            2,
            "{d}"
        );
    }
}
