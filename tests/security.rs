//! Safe to expose: allow/deny lists, client authentication, rate limits,
//! TLS, slow clients, and logs without secrets.

pub mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::fake_upstream::{Behaviour, FakeUpstream};
use common::http::{client, client_builder};
use common::images::{self, read_dir_copy, skopeo, skopeo_copy_all, OCI_MANIFEST, SKOPEO_TIMEOUT};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::Registry;
use common::tls::TestCa;

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_hold_for_manifests_and_blobs() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())
        .set("allow", r#"["test/*"]"#)
        .set("deny", r#"["test/big"]"#)]);
    let allowed = fixtures.docker_schema2.clone();
    let host = rc.host();
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("i");
        skopeo_copy_all(&format!("{host}/{}:{}", allowed.repo, allowed.tag), &dest).unwrap();
        assert_eq!(
            read_dir_copy(&dest).unwrap().manifest_digest,
            allowed.digest
        );
    })
    .await
    .unwrap();

    let c = client();
    let r = c
        .get(format!("{}/v2/test/big/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("test/big"),
        "{v}"
    );
    // A layer now cached through the allowed repository is not served
    // through the denied one.
    let layer = &fixtures.docker_schema2.blobs[0];
    let r = c
        .get(format!(
            "{}/v2/{}/blobs/{layer}",
            rc.url(),
            fixtures.docker_schema2.repo
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/v2/test/big/blobs/{layer}", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/v2/other/app/manifests/v1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DENIED", "not on the allow list");
    assert_eq!(
        upstream.request_count("*", "/v2/test/big/"),
        0,
        "denied requests never reach the upstream"
    );
    assert!(rc.metric("regcache_denied_requests_total{upstream=\"local\"}") >= 3.0);
    // Refusals are counted under the route they were for, not route="".
    let requests = |route: &str| {
        rc.metric(&format!(
            "regcache_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"403\"}}"
        ))
    };
    assert_eq!(requests("manifest"), 2.0, "{}", rc.metrics());
    assert_eq!(requests("blob"), 1.0, "{}", rc.metrics());
    assert_eq!(requests(""), 0.0, "{}", rc.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_bucket_gets_429_with_retry_after() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec(),
    );
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        "[rate_limit]\nmanifests_per_second = 0.5\nburst = 5\n",
    );
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/v1", rc.url()))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
            assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(
        &statuses[..5],
        &[200; 5],
        "within the burst nothing is refused: {statuses:?}"
    );
    assert!(
        statuses[5..].iter().filter(|s| **s == 429).count() >= 6,
        "{statuses:?}"
    );
    assert!(rc.metric("regcache_throttled_requests_total{reason=\"manifests\"}") >= 6.0);
    let refused = statuses.iter().filter(|s| **s == 429).count() as f64;
    assert_eq!(
        rc.metric("regcache_http_requests_total{method=\"GET\",route=\"manifest\",status=\"429\"}"),
        refused,
        "{}",
        rc.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_challenges_on_v2_and_enforces_user_access() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("right-password", 4).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("alice:{hash}\nlimited:{hash}\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("tokens"), "ci tok-0123456789abcdef\n").unwrap();
    let audit = dir.path().join("audit.log");
    let extra = format!(
        "[auth]\nhtpasswd = {:?}\ntokens_file = {:?}\n[auth.access]\nlimited = [\"local/test/schema2\"]\n[audit]\nlog = {:?}\n",
        dir.path().join("htpasswd").display().to_string(),
        dir.path().join("tokens").display().to_string(),
        audit.display().to_string(),
    );
    let rc = Regcache::start_with(&[UpstreamEntry::new("local", &upstream.url())], &extra);
    let c = client();

    let r = c.get(format!("{}/v2/", rc.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"regcache\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");

    let f = fixtures.oci_index.clone();
    let host = rc.host();
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("i");
        let src = format!("docker://{host}/{}:{}", f.repo, f.tag);
        let dst = format!("dir:{}", dest.display());
        skopeo(
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--src-creds",
                "alice:right-password",
                &src,
                &dst,
            ],
            SKOPEO_TIMEOUT,
        )
        .unwrap();
        assert_eq!(read_dir_copy(&dest).unwrap().manifest_digest, f.digest);
        let err = skopeo(
            &[
                "inspect",
                "--tls-verify=false",
                "--creds",
                "alice:wrong-password",
                &src,
            ],
            SKOPEO_TIMEOUT,
        )
        .unwrap_err();
        assert!(
            err.to_lowercase().contains("unauthorized") || err.contains("401"),
            "{err}"
        );
    })
    .await
    .unwrap();

    let manifest = |repo: &str| format!("{}/v2/{repo}/manifests/v1", rc.url());
    let r = c
        .get(manifest("test/big"))
        .basic_auth("limited", Some("right-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "limited may pull only test/schema2");
    assert_eq!(error_code(r).await, "DENIED");
    let r = c
        .get(manifest("test/schema2"))
        .basic_auth("limited", Some("right-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(manifest("test/schema2"))
        .bearer_auth("tok-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a static token as Bearer");
    let r = c
        .get(manifest("test/schema2"))
        .bearer_auth("tok-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Nothing anywhere carries a secret.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    let logs = format!("{}\n{}", rc.log(), audit_text);
    for secret in [
        "right-password",
        "wrong-password",
        "tok-0123456789abcdef",
        "tok-wrong",
        "Basic ",
        "Bearer ",
    ] {
        assert!(!logs.contains(secret), "{secret:?} leaked into the logs");
    }
    // The audit log: one JSON object per request, with the user and outcome.
    let entries: Vec<serde_json::Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries
        .iter()
        .any(|e| e["user"] == "limited" && e["status"] == 403 && e["outcome"] == "denied"));
    assert!(entries.iter().any(|e| e["user"] == "alice"
        && e["repository"] == "test/multiarch"
        && e["bytes"].as_u64().unwrap_or(0) > 0));
    for e in &entries {
        for field in [
            "time",
            "client",
            "method",
            "status",
            "bytes",
            "outcome",
            "duration_ms",
        ] {
            assert!(e.get(field).is_some(), "{field} in {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_a_certificate_swapped_on_sighup() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures(&upstream);
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new("regcache client-facing CA");
    let first = ca.issue(&["127.0.0.1", "localhost"], pki.path(), "first");
    let extra = |leaf: &common::tls::Leaf| {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            leaf.cert_path.display().to_string(),
            leaf.key_path.display().to_string()
        )
    };
    let upstreams = || vec![UpstreamEntry::new("local", &upstream.url())];
    let rc = Regcache::start_with(&upstreams(), &extra(&first));
    // skopeo trusts the CA through --src-cert-dir (ca.crt inside).
    let certs = pki.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca.cert_pem()).unwrap();
    let f = fixtures.oci_image.clone();
    let host = rc.host();
    let cert_dir = certs.display().to_string();
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("i");
        let src = format!("docker://{host}/{}:{}", f.repo, f.tag);
        let dst = format!("dir:{}", dest.display());
        skopeo(
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--src-cert-dir",
                &cert_dir,
                &src,
                &dst,
            ],
            SKOPEO_TIMEOUT,
        )
        .unwrap();
        assert_eq!(read_dir_copy(&dest).unwrap().manifest_digest, f.digest);
    })
    .await
    .unwrap();

    let presented = |rc_addr: std::net::SocketAddr| {
        let ca_pem = ca.cert_pem();
        async move {
            let client = client_builder()
                .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
                .tls_info(true)
                .build()
                .unwrap();
            let r = client
                .get(format!("https://{rc_addr}/v2/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
            r.extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|i| i.peer_certificate().map(|c| c.to_vec()))
                .unwrap()
        }
    };
    let before = presented(rc.addr).await;
    let second = ca.issue(&["127.0.0.1"], pki.path(), "second");
    rc.write_config(&upstreams(), &extra(&second));
    rc.sighup_and_wait("config reloaded").await;
    let after = presented(rc.addr).await;
    assert_ne!(before, after, "the new certificate is served after SIGHUP");
    let second_der = rustls_pki_types_der(&second.cert_pem);
    assert_eq!(after, second_der);
}

fn rustls_pki_types_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        "[limits]\nheader_read_timeout = \"2s\"\n",
    );
    let addr = rc.addr;
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Padding: slow\r\n\r\n";
        let started = Instant::now();
        for byte in request.iter() {
            if s.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Ok(_) => return started.elapsed(),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return started.elapsed(),
            }
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        started.elapsed()
    });
    // Meanwhile, a normal client is served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client()
        .get(format!("{}/v2/", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cut_after = slow.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(15),
        "the slow client was cut off after {cut_after:?}"
    );

    // An idle keep-alive connection is closed by the same timeout, so idle
    // clients cannot hold connection slots either.
    let idle = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        // Reads the response, then waits for the server to hang up.
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (response, Some(started.elapsed())),
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(_) => return (response, None),
            }
        }
    });
    let (response, closed_after) = idle.await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    let closed_after = closed_after.expect("the idle connection was closed");
    assert!(
        closed_after < Duration::from_secs(15),
        "idle for {closed_after:?}"
    );
}

/// Reads from `s` until the server hangs up (0 bytes or an error), at most
/// `limit`; how long that took, or `None` if it never did.
fn wait_for_hang_up(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_after_header_read_timeout() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        "[limits]\nheader_read_timeout = \"1s\"\n",
    );
    let addr = rc.addr;
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        wait_for_hang_up(&mut s, Duration::from_secs(10))
    })
    .await
    .unwrap();
    let closed_after = closed_after.expect("a silent connection was still open after 10 s");
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    // The server still serves afterwards.
    let r = client()
        .get(format!("{}/v2/", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_connection() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("fake", &fake.url())],
        "[limits]\nmax_connections = 20\nmax_connections_per_client = 5\nheader_read_timeout = \"30s\"\n",
    );
    let addr = rc.addr;
    let url = rc.url();
    // A request first, so the daemon is known to be serving; on its own
    // connection, closed (a pooled client's would count as a sixth).
    let r = tokio::task::spawn_blocking(move || common::registry::http_get(addr, "/v2/"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let (held, sixth) = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // A sixth, asking; until the server has accepted and counted all
        // five (a loaded machine may take a while) it may still be let in,
        // so a sixth that was answered is retried, for a bounded time.
        let sixth = || {
            let mut s = TcpStream::connect(addr).unwrap();
            let started = Instant::now();
            // The write may already fail if the server hung up.
            let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut response = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        response.extend_from_slice(&buf[..n]);
                        if response.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            (response, started.elapsed())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempt = sixth();
        while !attempt.0.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            attempt = sixth();
        }
        (held, attempt)
    })
    .await
    .unwrap();
    let (response, took) = sixth;
    assert!(
        response.is_empty(),
        "a sixth connection from one address was answered: {:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(took < Duration::from_secs(3), "refused only after {took:?}");
    // Those five are still open (the server holds them within its 30 s)...
    assert_eq!(
        rc.metric("regcache_connections_refused_total{reason=\"per_client\"}"),
        1.0
    );
    // ...and once they close, the address gets in again.
    drop(held);
    let started = Instant::now();
    loop {
        let r = client().get(format!("{url}/v2/")).send().await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused after the five closed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_content_is_served_per_repository_and_public_only_refuses_it() {
    use common::registry::{TEST_PASSWORD, TEST_USER};
    let mut loader = Registry::start();
    let fixtures = images::load_fixtures(&loader);
    loader.stop();
    let upstream = Registry::builder()
        .htpasswd_auth()
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            loader.storage_dir().to_str().unwrap(),
        )
        .start();
    let creds = |u: UpstreamEntry| {
        u.set("username", &format!("{TEST_USER:?}"))
            .set("password", &format!("{TEST_PASSWORD:?}"))
    };
    let rc = Regcache::start(&[creds(UpstreamEntry::new("private", &upstream.url()))]);
    let c = client();
    let schema2 = &fixtures.docker_schema2;
    let layer = &schema2.blobs[1];
    let via = |repo: &str| format!("{}/v2/{repo}/blobs/{layer}", rc.url());
    assert_eq!(
        c.get(via(&schema2.repo)).send().await.unwrap().status(),
        200
    );
    // Cached now, but test/big does not hold that layer upstream: a digest
    // is no key to another repository's private content.
    let r = c.get(via("test/big")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let heads = upstream.request_count("HEAD", &format!("/v2/test/big/blobs/{layer}"));
    assert_eq!(heads, 1, "the upstream was asked about test/big");
    // The repository that fetched it is served without asking again.
    let before = upstream.request_count("*", &format!("/blobs/{layer}"));
    assert_eq!(
        c.get(via(&schema2.repo)).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        upstream.request_count("*", &format!("/blobs/{layer}")),
        before
    );

    let public_only = Regcache::start(&[
        creds(UpstreamEntry::new("private", &upstream.url())).set("public_only", "true")
    ]);
    let r = c
        .get(format!(
            "{}/v2/{}/manifests/{}",
            public_only.url(),
            schema2.repo,
            schema2.tag
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a manifest the upstream serves only with credentials is refused"
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_admin_endpoints_the_cli_uses_it_and_reload_swaps_it() {
    use common::registry::{http_get, http_request};
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, "first-admin-token\n").unwrap();
    let upstreams = [UpstreamEntry::new("fake", &fake.url())];
    let extra = format!("[auth]\nadmin_token_file = {token_file:?}\n");
    let rc = Regcache::start_with(&upstreams, &extra);
    let admin = |method: &str, path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_request(rc.admin, method, path, &headers, Some(b"")).unwrap()
    };

    for token in [None, Some("wrong"), Some("first-admin-token-and-more")] {
        let r = admin("GET", "/admin/cache", token);
        assert_eq!(r.status, 401, "{token:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert_eq!(
            admin("POST", "/admin/offline?enabled=true", token).status,
            401
        );
        assert_eq!(admin("DELETE", "/admin/blobs/sha256:00", token).status, 401);
    }
    let state = admin("GET", "/admin/offline", Some("first-admin-token"));
    assert_eq!(state.status, 200);
    assert!(
        String::from_utf8_lossy(&state.body).contains("false"),
        "the refused switch changed nothing"
    );
    assert_eq!(
        admin("GET", "/admin/cache", Some("first-admin-token")).status,
        200
    );
    // Scrapers and health checks need no token.
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(http_get(rc.admin, open).unwrap().status, 200, "{open}");
    }
    // The CLI reads the token from the daemon's config.
    let ls = rc.cli(&["ls"]);
    assert!(ls.success(), "{ls:?}");
    assert!(rc
        .log()
        .contains("admin request without the admin token refused"));
    assert!(
        !rc.log().contains("first-admin-token"),
        "the token stays out of the log"
    );

    // A new token takes effect on SIGHUP; the old one stops working.
    std::fs::write(&token_file, "second-admin-token\n").unwrap();
    rc.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin("GET", "/admin/cache", Some("second-admin-token")).status != 200 {
        assert!(Instant::now() < deadline, "no reload:\n{}", rc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        admin("GET", "/admin/cache", Some("first-admin-token")).status,
        401
    );
    assert!(rc.cli(&["ls"]).success());
}

/// Sends `raw` on a fresh connection and reads until the server closes it
/// (every request here asks for that, or is one hyper closes after): the
/// status code, the head's lines in lower case, and the body.
fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, Vec<String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it read everything.
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let lines: Vec<String> = head.split("\r\n").map(str::to_owned).collect();
    let status = lines[0]
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {:?}", lines[0]));
    (status, lines, out[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_right_status_and_oci_json_wherever_regcache_answers() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let addr = rc.addr;
    let request = |target: &[u8], headers: &[u8]| {
        let mut r = b"GET ".to_vec();
        r.extend_from_slice(target);
        r.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        r.extend_from_slice(headers);
        r.extend_from_slice(b"\r\n");
        r
    };
    let long = |n: usize| "a".repeat(n).into_bytes();
    let path = |p: &[u8]| {
        let mut v = b"/v2/".to_vec();
        v.extend_from_slice(p);
        v.extend_from_slice(b"/manifests/v1");
        v
    };
    let many_headers: Vec<u8> = (0..150)
        .flat_map(|i| format!("X-{i}: y\r\n").into_bytes())
        .collect();
    let mut big_header = b"X-Big: ".to_vec();
    big_header.extend(long(70 * 1024));
    big_header.extend_from_slice(b"\r\n");

    // What hyper answers itself, before regcache sees a request: the
    // status is right, the body empty, and the connection closed.
    let by_hyper: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "headers over max_header_bytes",
            request(b"/v2/", &big_header),
            431,
        ),
        (
            "more than 100 headers",
            request(b"/v2/", &many_headers),
            431,
        ),
        (
            "a URI over max_header_bytes",
            request(&path(&long(70 * 1024)), b""),
            431,
        ),
        (
            "two different Content-Lengths",
            request(b"/v2/", b"Content-Length: 1\r\nContent-Length: 2\r\n"),
            400,
        ),
        (
            "a Content-Length that is no number",
            request(b"/v2/", b"Content-Length: x\r\n"),
            400,
        ),
        (
            "a control byte in the path",
            request(&path(b"a\x01b"), b""),
            400,
        ),
        ("a NUL in the path", request(&path(b"a\x00b"), b""), 400),
        ("DEL in the path", request(&path(b"a\x7fb"), b""), 400),
        (
            "a byte that is no UTF-8 in the path",
            request(&path(b"a\xffb"), b""),
            400,
        ),
        (
            "a header name with a space",
            request(b"/v2/", b"Bad Name: y\r\n"),
            400,
        ),
        (
            "a control byte in a header value",
            request(b"/v2/", b"X-A: a\x01b\r\n"),
            400,
        ),
    ];
    for (what, raw, status) in by_hyper {
        let (got, head, body) = tokio::task::spawn_blocking(move || raw_exchange(addr, &raw))
            .await
            .unwrap();
        assert_eq!(got, status, "{what}: {head:?}");
        assert!(
            head.iter().any(|l| l == "content-length: 0"),
            "{what}: {head:?}"
        );
        assert!(body.is_empty(), "{what}");
    }

    // Everything that reaches regcache gets the OCI error format.
    let by_regcache: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("a URI over 4 KiB", request(&path(&long(5000)), b""), 414, "NAME_INVALID"),
        (
            "a query over 4 KiB",
            request(&[&b"/v2/a/tags/list?"[..], &long(5000)].concat(), b""),
            414,
            "NAME_INVALID",
        ),
        ("UTF-8 in the path", request(&path("é".as_bytes()), b""), 400, "NAME_INVALID"),
        ("percent-encoded garbage", request(&path(b"a%ff%00b"), b""), 400, "NAME_INVALID"),
        ("a bad percent escape", request(&path(b"a%zzb"), b""), 400, "NAME_INVALID"),
        ("dot segments", request(b"/v2/../../etc/manifests/v1", b""), 400, "NAME_INVALID"),
        ("an empty component", request(b"/v2/a//b/manifests/v1", b""), 400, "NAME_INVALID"),
        ("a bad digest", request(b"/v2/a/blobs/sha256:xyz", b""), 400, "DIGEST_INVALID"),
        ("a bad tag", request(b"/v2/a/manifests/-x", b""), 400, "MANIFEST_INVALID"),
        ("no /v2/", request(b"/etc/passwd", b""), 404, "NAME_UNKNOWN"),
        (
            "a push",
            b"PUT /v2/a/manifests/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            405,
            "UNSUPPORTED",
        ),
    ];
    for (what, raw, status, code) in by_regcache {
        let (got, head, body) = tokio::task::spawn_blocking(move || raw_exchange(addr, &raw))
            .await
            .unwrap();
        assert_eq!(got, status, "{what}: {head:?}");
        assert!(
            head.iter().any(|l| l == "content-type: application/json"),
            "{what}: {head:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", String::from_utf8_lossy(&body)));
        assert_eq!(v["errors"][0]["code"], code, "{what}: {v}");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // The server is none the worse for it.
    let r = client()
        .get(format!("{}/v2/", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
