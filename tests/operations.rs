//! Operations: metrics that move with real traffic, the dashboard and alerts
//! only query exported metrics, the systemd unit and the Dockerfile hold up,
//! reload and drain behave.

pub mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault};
use common::http::{client, get};
use common::images::{self, sha256_digest, skopeo_copy_all, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::{free_port, Registry};
use common::seaweedfs::{self, SeaweedFs};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_real_pulls() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    // Five clients at once on the cold big layer: one fill, others coalesce.
    let url = format!(
        "{}/v2/test/big/blobs/{}",
        rc.url(),
        fixtures.big_layer_digest
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { get(&url).await.unwrap().1.len() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap() as u64, fixtures.big_layer_size);
    }
    let host = rc.host();
    let f = fixtures.oci_image.clone();
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().unwrap();
        skopeo_copy_all(
            &format!("{host}/{}:{}", f.repo, f.tag),
            &out.path().join("i"),
        )
        .unwrap();
    })
    .await
    .unwrap();

    rc.wait_for_fills();
    let m = rc.metrics();
    let size = fixtures.big_layer_size as f64;
    assert!(
        sample(
            &m,
            "regcache_cache_requests_total",
            &[("kind", "blob"), ("outcome", "miss")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "regcache_cache_requests_total",
            &[("kind", "blob"), ("outcome", "coalesced")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "regcache_cache_requests_total",
            &[("kind", "blob"), ("outcome", "hit")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "regcache_cache_requests_total",
            &[("kind", "tag"), ("outcome", "miss")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "regcache_served_bytes_total", &[("source", "upstream")]) >= 4.0 * size,
        "{m}"
    );
    assert!(
        sample(&m, "regcache_served_bytes_total", &[("source", "cache")]) >= size,
        "{m}"
    );
    let received = sample(
        &m,
        "regcache_upstream_received_bytes_total",
        &[("upstream", "local")],
    );
    assert!(
        received >= size && received < 1.5 * size,
        "the big layer came from upstream once: {received}"
    );
    assert_eq!(
        sample(&m, "regcache_fills_total", &[("result", "complete")]),
        sample(&m, "regcache_fill_size_bytes_count", &[])
    );
    assert!(
        sample(&m, "regcache_cache_size_bytes", &[("kind", "blob")]) >= size,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "regcache_http_requests_total",
            &[("route", "blob"), ("method", "GET"), ("status", "200")]
        ) >= 6.0
    );
    assert_eq!(sample(&m, "regcache_fills_in_progress", &[]), 0.0);
    assert_eq!(sample(&m, "regcache_fill_waiters", &[]), 0.0);
    // The standard process metrics, unprefixed, from the daemon itself.
    assert!(
        sample(&m, "process_resident_memory_bytes", &[]) > 0.0,
        "{m}"
    );
    assert!(sample(&m, "process_open_fds", &[]) > 0.0, "{m}");
    assert!(sample(&m, "process_start_time_seconds", &[]) > 0.0, "{m}");
}

/// Every `regcache_*` name a file mentions, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("regcache_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_query_only_exported_metrics() {
    let dashboard =
        std::fs::read_to_string(format!("{ROOT}/config/grafana/regcache.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        parsed["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "a real dashboard"
    );
    check_dashboard_datasource_and_panels(&parsed);
    let alerts =
        std::fs::read_to_string(format!("{ROOT}/config/prometheus/regcache-alerts.yml")).unwrap();
    assert!(alerts.contains("groups:") && alerts.contains("alert:"));

    // Traffic that touches every labelled series once.
    let fake = FakeUpstream::start(Behaviour {
        extra_headers: vec![
            ("ratelimit-limit".into(), "100;w=21600".into()),
            ("ratelimit-remaining".into(), "90;w=21600".into()),
        ],
        ..Behaviour::default()
    })
    .await;
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec(),
    );
    let digest = fake.add_blob(random_bytes(1000, 51));
    // A deny rule and a one-request manifest bucket, so the denied and
    // throttled counters are exported too.
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url()).set("deny", r#"["test/denied"]"#)],
        "[rate_limit]\nmanifests_per_second = 0.001\nburst = 1\n",
    );
    let c = client();
    c.get(format!("{}/v2/test/app/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    let denied = c
        .get(format!("{}/v2/test/denied/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let throttled = c
        .get(format!("{}/v2/test/app/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    c.get(format!("{}/v2/test/app/blobs/{digest}", rc.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.get(format!("{}/v2/test/app/blobs/{digest}", rc.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    rc.wait_for_fills();
    let exported = exported_names(&rc.metrics());
    // The cluster row's series exist only with the shared tier on: a
    // replica with `backend = "s3"` exports them, from startup.
    let engine = tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap();
    let shared = shared_tier_replica(&engine, &fake.url());
    let shared_exported = exported_names(&shared.metrics());
    let cluster = cluster_row_metric_names(&parsed);
    assert!(
        cluster.len() >= 8,
        "the Cluster row covers the shared tier: {cluster:?}"
    );
    let missing: Vec<_> = cluster.difference(&shared_exported).collect();
    assert!(
        missing.is_empty(),
        "the Cluster row queries metrics a shared-tier replica does not export: {missing:?}"
    );
    let exported: BTreeSet<String> = exported.union(&shared_exported).cloned().collect();
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let used = metric_names(text);
        assert!(used.len() >= 5, "{file} uses regcache metrics: {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics regcache does not export: {missing:?}\nexported: {exported:?}"
        );
    }
}

/// The metric names of a `/metrics` page (its `# TYPE` lines).
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The `regcache_*` names the panels below the dashboard's "Cluster" row
/// query (up to the next row).
fn cluster_row_metric_names(d: &serde_json::Value) -> BTreeSet<String> {
    let panels = d["panels"].as_array().unwrap();
    let start = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == "Cluster")
        .expect("a Cluster row");
    panels[start + 1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .flat_map(|t| metric_names(t["expr"].as_str().unwrap()))
        .collect()
}

/// A replica with the shared tier on (`[cache] backend = "s3"`) against
/// `engine`, its own prefix in the bucket.
fn shared_tier_replica(engine: &SeaweedFs, upstream: &str) -> Regcache {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("s3-secret");
    std::fs::write(&secret, seaweedfs::SECRET_KEY).unwrap();
    let peer = free_port();
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", upstream)],
        &format!(
            "[cache]\nbackend = \"s3\"\n\
             [cache.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"operations-dashboard\"\n\
             allow_http = true\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n\
             [cluster]\npeer_listen = \"127.0.0.1:{peer}\"\nadvertise_url = \"http://127.0.0.1:{peer}\"\n",
            engine.endpoint,
            seaweedfs::BUCKET,
            seaweedfs::ACCESS_KEY,
            secret.display()
        ),
    );
    // The secret is read at startup.
    drop(secrets);
    rc
}

/// Grafana's file provisioning and the kube-prometheus sidecar cannot fill
/// an import-time `${DS_PROMETHEUS}` input: every query goes through a
/// `datasource` variable instead. Stat panels show one number, so they ask
/// for an instant query, not a range to reduce.
fn check_dashboard_datasource_and_panels(d: &serde_json::Value) {
    assert!(d.get("__inputs").is_none(), "no import-time inputs");
    let text = d.to_string();
    assert!(
        !text.contains("DS_PROMETHEUS"),
        "no ${{DS_PROMETHEUS}} left"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource template variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let uses_variable =
        |v: &serde_json::Value| v["uid"] == "${datasource}" && v["type"] == "prometheus";
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert!(uses_variable(&v["datasource"]), "variable {}", v["name"]);
    }
    let panels = d["panels"].as_array().unwrap();
    let mut titles = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        titles.push(title);
        assert!(uses_variable(&p["datasource"]), "panel {title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title}");
        for t in targets {
            assert!(
                uses_variable(&t["datasource"]),
                "panel {title} {}",
                t["refId"]
            );
            if p["type"] == "stat" {
                assert!(
                    t["instant"] == true && t["range"] == false,
                    "stat panel {title} asks for an instant query"
                );
            }
        }
    }
    let exprs = |title: &str| -> String {
        panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("a panel titled {title}: {titles:?}"))["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let saved = exprs("Bandwidth saved");
    assert!(
        saved.contains(
            "sum(rate(regcache_served_bytes_total{job=~\"$job\", instance=~\"$instance\"}[$__rate_interval]))\n-\nsum(rate(regcache_upstream_received_bytes_total{"
        ),
        "Bandwidth saved plots sent minus received: {saved}"
    );
    for (title, needs) in [
        (
            "Evictions by reason",
            vec!["regcache_evictions_total", "by (reason)"],
        ),
        (
            "Cache size against max_size",
            vec!["regcache_cache_size_bytes", "regcache_cache_max_size_bytes"],
        ),
        (
            "Denied and throttled requests",
            vec![
                "regcache_denied_requests_total",
                "regcache_throttled_requests_total",
            ],
        ),
        ("Open readers", vec!["regcache_cache_open_readers"]),
        ("Free disk space", vec!["regcache_cache_free_bytes"]),
        ("Storage ready", vec!["regcache_storage_ready"]),
    ] {
        let e = exprs(title);
        for n in needs {
            assert!(e.contains(n), "{title}: {n} in {e}");
        }
    }
    assert!(!text.contains("does not evict"), "outdated description");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(format!("{ROOT}/systemd/regcache.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=",
        "WatchdogSec=",
        "DynamicUser=yes",
        "CacheDirectory=regcache",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(unit.contains(needed), "the unit sets {needed}");
    }
    // Under ProtectSystem=strict only the unit's own directories are
    // writable: the audit log of the README's hardened example must be in
    // the one LogsDirectory= hands the service.
    let logs_dirs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LogsDirectory="))
        .flat_map(str::split_whitespace)
        .collect();
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let audit_logs: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("log = \""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|path| path.starts_with('/'))
        .collect();
    assert!(
        !audit_logs.is_empty(),
        "the README configures an audit log file"
    );
    for path in audit_logs {
        assert!(
            logs_dirs
                .iter()
                .any(|d| path.starts_with(&format!("/var/log/{d}/"))),
            "{path} is not under a LogsDirectory= of the unit ({logs_dirs:?})"
        );
    }
    // systemd-analyze wants the binary to exist: point it at the test build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regcache.service");
    let unit = unit.replace("/usr/local/bin/regcache", env!("CARGO_BIN_EXE_regcache"));
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed by .ci/install-test-deps");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("regcache.service"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_with_a_healthcheck() {
    // No container engine runs here (and hadolint is not packaged), so the
    // Dockerfile's promises are checked by reading it.
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_owned()))
        .collect();
    let all = |name: &str| {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
    };
    assert!(all("FROM").len() >= 2, "multi-stage");
    assert!(
        all("FROM").last().unwrap().contains("slim")
            || all("FROM").last().unwrap().contains("distroless")
    );
    let user = all("USER");
    assert!(
        !user.is_empty() && user.iter().all(|u| *u != "root" && *u != "0"),
        "non-root: {user:?}"
    );
    assert!(all("EXPOSE")
        .iter()
        .any(|e| e.contains("5000") && e.contains("9090")));
    assert!(all("VOLUME")
        .iter()
        .any(|v| v.contains("/var/cache/regcache")));
    assert!(all("HEALTHCHECK")
        .iter()
        .any(|h| h.contains("regcache") && h.contains("healthcheck")));
    // Everything the build copies exists in the repository.
    for copy in all("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                std::path::Path::new(ROOT).join(src).exists(),
                "COPY source {src} exists"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_tag_ttl_while_a_download_goes_on() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let d1 = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[],"n":1}"#.to_vec(),
    );
    let data = random_bytes(2 * 1024 * 1024, 61);
    let blob = fake.add_blob(data.clone());
    fake.set_blob_fault(
        &blob,
        Fault::Slow {
            chunk: 128 * 1024,
            delay: Duration::from_millis(60),
        },
    );
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url()).tag_ttl("1h")]);
    let c = client();
    let tag = format!("{}/v2/test/app/manifests/v1", rc.url());
    assert_eq!(
        c.get(&tag).send().await.unwrap().headers()["docker-content-digest"],
        d1.as_str()
    );
    let download = tokio::spawn({
        let url = format!("{}/v2/test/app/blobs/{blob}", rc.url());
        async move { client().get(url).send().await.unwrap().bytes().await }
    });
    let d2 = fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[],"n":2}"#.to_vec(),
    );
    assert_eq!(
        c.get(&tag).send().await.unwrap().headers()["docker-content-digest"],
        d1.as_str(),
        "fresh for an hour"
    );

    rc.write_config(&[UpstreamEntry::new("fake", &fake.url()).tag_ttl("1s")], "");
    rc.sighup_and_wait("config reloaded").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.get(&tag).send().await.unwrap().headers()["docker-content-digest"],
        d2.as_str(),
        "the new TTL applies"
    );
    let body = download
        .await
        .unwrap()
        .expect("the download survives the reload");
    assert_eq!(sha256_digest(&body), blob);

    // A deny rule added by reload applies to the next request.
    let denied = UpstreamEntry::new("fake", &fake.url())
        .tag_ttl("1s")
        .set("deny", r#"["test/*"]"#);
    rc.write_config(&[denied], "");
    rc.sighup_and_wait("config reloaded").await;
    assert_eq!(
        c.get(&tag).send().await.unwrap().status(),
        403,
        "the new deny rule applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_large_download_finish_then_exits_cleanly() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let data = random_bytes(4 * 1024 * 1024, 71);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 256 * 1024,
            delay: Duration::from_millis(80),
        },
    );
    let mut rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        "shutdown_grace = \"20s\"\n",
    );
    let url = format!("{}/v2/test/app/blobs/{digest}", rc.url());
    let mut response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();
    let status = tokio::task::spawn_blocking(move || {
        let status = rc.terminate();
        (rc, status)
    });
    while let Some(chunk) = response
        .chunk()
        .await
        .expect("the download completes during the grace period")
    {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(sha256_digest(&body), digest);
    let (mut rc, status) = status.await.unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0 after draining: {status:?}"
    );
    assert!(rc.log().contains("stopped"));
    // A log that is not a terminal (a file, journald) gets no colour codes,
    // so its structured fields can be searched as written.
    assert!(!rc.log().contains('\u{1b}'), "colour codes in the log");
    assert!(rc.log().contains(" status=200 "), "{}", rc.log());

    // The index is consistent: the blob is served from the cache.
    rc.restart();
    let body = get(&url).await.unwrap().1;
    assert_eq!(body, data);
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_have_top_level_fields_with_bytes_sent_and_total_time() {
    let fake = FakeUpstream::start_default().await;
    let blob = random_bytes(1 << 20, 61);
    let digest = fake.add_blob(blob.clone());
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        "log_format = \"json\"\n",
    );
    let url = format!("{}/v2/test/app/blobs/{digest}", rc.url());
    let c = client();
    for _ in 0..2 {
        // A miss (streamed from the fill), then a hit (from the file).
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), blob.len());
    }
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The line is written when the body ends, just after the client has it.
    rc.wait_for_log_count("\"regcache::access\"", 3).await;
    let lines: Vec<serde_json::Value> = rc
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "regcache::access")
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (v, method, outcome, bytes) in [
        (&lines[0], "GET", "miss", blob.len() as u64),
        (&lines[1], "GET", "hit", blob.len() as u64),
        (&lines[2], "HEAD", "hit", 0),
    ] {
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["message"], "request", "{v}");
        assert_eq!(v["status"], 200, "top-level, a number: {v}");
        assert_eq!(v["method"], method, "{v}");
        assert_eq!(v["outcome"], outcome, "{v}");
        assert_eq!(v["bytes_sent"], bytes, "{v}");
        assert_eq!(v["end"], "complete", "{v}");
        let to_headers = v["ms_to_headers"].as_u64().expect("ms_to_headers");
        let total = v["ms_total"].as_u64().expect("ms_total");
        assert!(total >= to_headers, "{v}");
        assert!(v.get("fields").is_none(), "not nested: {v}");
    }
}
