//! Online integrity: a file corrupted on disk behind a running daemon is
//! found by `POST /admin/verify`, by `regcache verify` through the daemon,
//! or by the background scrub; it is quarantined (moved aside, out of the
//! index, counted) and fetched again by the next request.

pub mod common;

use std::time::{Duration, Instant};

use common::fake_upstream::{random_bytes, FakeUpstream};
use common::http::{client, get};
use common::images::sha256_digest;
use common::regcache::{Regcache, UpstreamEntry};

const MIB: usize = 1024 * 1024;

fn blob_url(rc: &Regcache, digest: &str) -> String {
    format!("{}/v2/test/app/blobs/{digest}", rc.url())
}

/// Caches `data` through the daemon, then flips one byte of the cached
/// file (a disk or an operator did it).
async fn cache_and_flip(rc: &Regcache, digest: &str, data: &[u8]) {
    let (status, body) = get(&blob_url(rc, digest)).await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, data));
    rc.wait_for_fills();
    let path = rc.blob_path(digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
}

fn quarantined(rc: &Regcache, digest: &str) -> std::path::PathBuf {
    rc.cache_dir()
        .join("quarantine")
        .join(format!("blob-{}", digest.trim_start_matches("sha256:")))
}

/// `POST /admin/verify`, its NDJSON lines parsed.
async fn admin_verify(rc: &Regcache, query: &str) -> (u16, Vec<serde_json::Value>) {
    let r = client()
        .post(format!("http://{}/admin/verify{query}", rc.admin))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    (status, lines)
}

/// After quarantine, the next GET fetches the blob once more and serves
/// the right bytes.
async fn refetched(rc: &Regcache, fake: &FakeUpstream, digest: &str, data: &[u8]) {
    let (status, body) = get(&blob_url(rc, digest)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256_digest(&body), digest, "the right bytes");
    assert_eq!(body, data);
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 2);
    rc.wait_for_fills();
    assert_eq!(std::fs::read(rc.blob_path(digest)).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_verify_reports_then_quarantines_a_flipped_blob_and_the_next_pull_refetches_it() {
    let fake = FakeUpstream::start_default().await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let data = random_bytes(2 * MIB, 21);
    let digest = fake.add_blob(data.clone());
    let other = random_bytes(MIB / 2, 22);
    let other_digest = fake.add_blob(other.clone());
    get(&blob_url(&rc, &other_digest)).await.unwrap();
    cache_and_flip(&rc, &digest, &data).await;

    // Without repair: reported, left in place.
    let (status, lines) = admin_verify(&rc, "").await;
    assert_eq!(status, 200, "{lines:?}");
    let size = (2 * MIB + MIB / 2) as u64;
    assert_eq!(lines[0]["plan"]["files"], 2, "{lines:?}");
    assert_eq!(lines[0]["plan"]["bytes"], size, "{lines:?}");
    let problems: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("problem")).collect();
    assert_eq!(problems.len(), 1, "{lines:?}");
    assert_eq!(problems[0]["problem"], "corrupt");
    assert_eq!(problems[0]["digest"], digest);
    let done = &lines.last().unwrap()["done"];
    assert_eq!(done["files_checked"], 2, "{lines:?}");
    assert_eq!(done["bytes_checked"], size);
    assert_eq!(done["repaired"], false);
    assert!(rc.blob_path(&digest).exists(), "reported only");

    // With repair: moved aside, out of the index, counted.
    let (status, lines) = admin_verify(&rc, "?repair=true").await;
    assert_eq!(status, 200);
    assert_eq!(lines.last().unwrap()["done"]["repaired"], true, "{lines:?}");
    assert!(!rc.blob_path(&digest).exists());
    assert!(quarantined(&rc, &digest).exists(), "kept for a post-mortem");
    assert!(rc.blob_path(&other_digest).exists(), "a good file stays");
    assert_eq!(
        rc.metric("regcache_evictions_total{reason=\"corrupt\"}"),
        1.0
    );
    assert!(rc.metric("regcache_verified_bytes_total{by=\"admin\"}") >= 2.0 * size as f64);
    assert!(rc.log_count("quarantined, the next request fetches it again") == 1);
    refetched(&rc, &fake, &digest, &data).await;
    assert_eq!(fake.count("GET", &format!("/blobs/{other_digest}")), 1);

    let (status, lines) = admin_verify(&rc, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        lines.last().unwrap()["done"]["problems"],
        serde_json::json!([])
    );
    let r = client()
        .get(format!("http://{}/admin/verify", rc.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_goes_through_the_running_daemon_and_repair_quarantines() {
    let fake = FakeUpstream::start_default().await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let data = random_bytes(MIB, 23);
    let digest = fake.add_blob(data.clone());
    cache_and_flip(&rc, &digest, &data).await;

    let out = rc.cli(&["verify"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.contains(&format!("corrupt blob {digest}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("1 problems (run with --repair"),
        "{}",
        out.stdout
    );
    assert!(rc.blob_path(&digest).exists());

    let out = rc.cli(&["verify", "--repair"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("1 problems, repaired"),
        "{}",
        out.stdout
    );
    assert!(!rc.blob_path(&digest).exists());
    assert!(quarantined(&rc, &digest).exists());
    refetched(&rc, &fake, &digest, &data).await;

    let out = rc.cli(&["verify"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("checked 1 files"), "{}", out.stdout);
    assert!(out.stdout.contains("0 problems"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_turned_on_by_reload_quarantines_a_corrupt_file_unasked() {
    let fake = FakeUpstream::start_default().await;
    let upstreams = [UpstreamEntry::new("fake", &fake.url())];
    let rc = Regcache::start(&upstreams);
    let data = random_bytes(MIB, 24);
    let digest = fake.add_blob(data.clone());
    cache_and_flip(&rc, &digest, &data).await;
    assert_eq!(
        rc.metric("regcache_verified_bytes_total{by=\"scrub\"}"),
        0.0,
        "off by default"
    );

    // A pass every second, bounded at 256 KiB/s: this one blob takes
    // about four seconds to hash.
    rc.write_config(
        &upstreams,
        "[cache]\nscrub_interval = \"1s\"\nscrub_bytes_per_second = \"256KiB\"\n",
    );
    rc.sighup_and_wait("config reloaded").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rc.blob_path(&digest).exists() {
        assert!(
            Instant::now() < deadline,
            "the scrub did not quarantine it; log:\n{}",
            rc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(quarantined(&rc, &digest).exists());
    assert_eq!(
        rc.metric("regcache_evictions_total{reason=\"corrupt\"}"),
        1.0
    );
    assert!(rc.metric("regcache_verified_bytes_total{by=\"scrub\"}") >= MIB as f64);
    assert_eq!(
        rc.log_count("cached file is corrupt; quarantined, the next request fetches it again"),
        1
    );
    refetched(&rc, &fake, &digest, &data).await;
}
