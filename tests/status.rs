//! What an operator reaches on the admin side: `metrics_listen` (probes and
//! `/metrics` only), the admin API refused to other hosts while no admin
//! token is configured, and the status page, rendered in a real headless
//! browser.

pub mod common;

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault, Scope};
use common::http::client;
use common::images::OCI_MANIFEST;
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::{free_port, http_get, http_request};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

/// A small image `repo:tag` on the fake upstream.
fn add_image(fake: &FakeUpstream, repo: &str, tag: &str) -> String {
    let config = fake.add_blob(b"{}".to_vec());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
    );
    fake.add_manifest(repo, Some(tag), OCI_MANIFEST, manifest.into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_only_metrics_and_the_probes() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    add_image(&fake, "team/app", "v1");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        &format!("metrics_listen = \"{metrics}\"\n"),
    );
    let r = client()
        .get(format!("{}/v2/team/app/manifests/v1", rc.url()))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let m = http_get(metrics, "/metrics").unwrap();
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("regcache_http_requests_total"), "{text}");
    assert!(text.contains("regcache_cache_requests_total"), "{text}");
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(http_get(metrics, probe).unwrap().status, 200, "{probe}");
    }
    // Nothing of the admin API, not even its read-only parts.
    for (method, path) in [
        ("GET", "/admin/cache"),
        ("GET", "/admin/repositories"),
        ("POST", "/admin/gc"),
        ("POST", "/admin/offline?enabled=true"),
        ("DELETE", "/admin/blobs/sha256:00"),
        ("GET", "/"),
    ] {
        let r = http_request(metrics, method, path, &[], Some(b"")).unwrap();
        assert_eq!(r.status, 404, "{method} {path}");
        let v = json(&r.body);
        assert!(
            v["error"].as_str().unwrap_or("").contains("metrics_listen"),
            "{method} {path}: {v}"
        );
    }
    // The admin listener keeps everything, for loopback.
    assert_eq!(http_get(rc.admin, "/admin/cache").unwrap().status, 200);
    assert_eq!(http_get(rc.admin, "/metrics").unwrap().status, 200);
    // A request relayed by a proxy is not a local one, even from loopback.
    let relayed = http_request(
        rc.admin,
        "GET",
        "/admin/cache",
        &[("X-Forwarded-For", "10.1.2.3")],
        None,
    )
    .unwrap();
    assert_eq!(relayed.status, 403);
}

/// An IPv4 address of this machine that is not loopback, if it has one.
fn own_non_loopback_ip() -> Option<IpAddr> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
        .find(|ip| std::net::TcpListener::bind((*ip, 0)).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_other_hosts_unless_an_admin_token_is_configured() {
    let Some(ip) = own_non_loopback_ip() else {
        eprintln!(
            "SKIPPED: this machine has no non-loopback IPv4 address (hostname -I) to call the \
             admin listener from another address; the rule itself is unit-tested in \
             http::admin::access"
        );
        return;
    };
    let fake = FakeUpstream::start(Behaviour::default()).await;
    add_image(&fake, "team/app", "v1");
    let upstreams = [UpstreamEntry::new("fake", &fake.url())];
    // Connecting to this machine's own address, the peer is that address:
    // to regcache, another host.
    let rc = Regcache::start_with_admin_on(&upstreams, "", ip);
    for (method, path) in [
        ("GET", "/admin/cache"),
        ("GET", "/admin/repositories"),
        ("POST", "/admin/offline?enabled=true"),
        ("POST", "/admin/gc"),
        ("DELETE", "/admin/manifests/fake/team/app:v1"),
        ("GET", "/"),
    ] {
        let r = http_request(rc.admin, method, path, &[], Some(b"")).unwrap();
        assert_eq!(r.status, 403, "{method} {path}");
        let message = json(&r.body)["error"].as_str().unwrap_or("").to_owned();
        assert!(
            message.contains("admin_token_file") && message.contains("loopback"),
            "{method} {path}: {message}"
        );
    }
    assert!(
        rc.log().contains(
            "admin_listen is not a loopback address and [auth] admin_token_file is not set"
        ),
        "{}",
        rc.log()
    );
    // The refused switch changed nothing: the upstream is still asked.
    let r = client()
        .get(format!("{}/v2/team/app/manifests/v1", rc.url()))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Scrapers and probes still reach what they need.
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(http_get(rc.admin, open).unwrap().status, 200, "{open}");
    }

    // With a token, the token decides, from anywhere.
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, "remote-admin-token\n").unwrap();
    let rc = Regcache::start_with_admin_on(
        &upstreams,
        &format!("[auth]\nadmin_token_file = {token_file:?}\n"),
        ip,
    );
    assert!(!rc.log().contains("admin_listen is not a loopback address"));
    let bearer = [("Authorization", "Bearer remote-admin-token")];
    for path in ["/admin/cache", "/"] {
        assert_eq!(http_get(rc.admin, path).unwrap().status, 401, "{path}");
        let r = http_request(rc.admin, "GET", path, &bearer, None).unwrap();
        assert_eq!(r.status, 200, "{path}");
    }
}

/// The DOM chromium renders for `url`, or None when chromium is absent.
/// Bounded: the browser's process group is killed after a minute.
fn chromium_dom(url: &str) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-proxy-server",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group, so that the browser's helpers go with it.
        .process_group(0)
        .spawn()
        .expect("spawn chromium");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever is left of the group it started (nothing, normally).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let dom = reader.join().unwrap();
    assert!(status.is_some(), "chromium did not finish within a minute");
    assert!(status.unwrap().success(), "chromium failed; output:\n{dom}");
    Some(dom)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_a_headless_browser() {
    let fake = FakeUpstream::start(Behaviour {
        extra_headers: vec![
            ("ratelimit-limit".into(), "100;w=21600".into()),
            ("ratelimit-remaining".into(), "77;w=21600".into()),
        ],
        honour_range: true,
    })
    .await;
    add_image(&fake, "team/app", "v1");
    add_image(&fake, "secret/app", "v1");
    add_image(&fake, "broken/app", "v1");
    fake.set_fault(Scope::Path("broken/app".into()), Fault::status(503));
    // A blob that arrives slowly, to be seen while it fills.
    let slow = fake.add_blob(random_bytes(100 * 1024, 7));
    fake.set_blob_fault(
        &slow,
        Fault::Slow {
            chunk: 1024,
            delay: Duration::from_millis(300),
        },
    );
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url()).set("deny", r#"["secret/*"]"#)],
        "[cache]\nmax_size = \"10MiB\"\n",
    );
    let c = client();
    let get = |path: String| {
        c.get(format!("{}{path}", rc.url()))
            .header("Accept", OCI_MANIFEST)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            get("/v2/team/app/manifests/v1".into())
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        get("/v2/secret/app/manifests/v1".into())
            .await
            .unwrap()
            .status(),
        403
    );
    let broken = get("/v2/broken/app/manifests/v1".into()).await.unwrap();
    assert!(broken.status().is_server_error(), "{}", broken.status());
    // Held open, unread: the fill runs on without it.
    let _slow_response = get(format!("/v2/team/app/blobs/{slow}")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = http_get(rc.admin, "/").unwrap();
        assert_eq!(page.status, 200);
        if String::from_utf8_lossy(&page.body).contains("of 100.0 KiB (") {
            assert_eq!(
                page.header("content-type"),
                Some("text/html; charset=utf-8")
            );
            assert!(page
                .header("content-security-policy")
                .is_some_and(|p| p.contains("default-src 'none'")));
            break;
        }
        assert!(Instant::now() < deadline, "the slow fill never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("http://{}/", rc.admin);
    let Some(dom) = tokio::task::spawn_blocking(move || chromium_dom(&url))
        .await
        .unwrap()
    else {
        eprintln!(
            "SKIPPED: chromium is not installed (bash .ci/install-test-deps installs it); \
             the page was checked over plain HTTP only"
        );
        return;
    };
    let has = |needle: &str| assert!(dom.contains(needle), "{needle:?} not in the DOM:\n{dom}");
    has("<title>regcache status</title>");
    has(&format!(
        "<span id=\"version\">{}</span>",
        env!("CARGO_PKG_VERSION")
    ));
    has("<span id=\"uptime\">");
    has("<td>fake</td>");
    has("closed (healthy)");
    has("answered 503 Service Unavailable");
    has("77 of 100");
    has("of 10.0 MiB max_size (");
    has("Hit ratios since start");
    has("Fills in progress: <span id=\"fills-running\">1</span>");
    has(&format!("<code>{slow}</code>"));
    has("of 100.0 KiB (");
    has("<td>team/app</td><td class=\"num\">3</td>");
    has("<td>secret/app</td>");
    has("403 denied");
    assert!(!dom.contains("<script"), "no script on the page");
}
