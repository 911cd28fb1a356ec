//! Upstream authentication and the habits of real upstreams: Basic
//! credentials against a real htpasswd registry, redirects to another host,
//! rate-limit headers, auth errors.

pub mod common;

use bytes::Bytes;
use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream};
use common::http::{client, get};
use common::images::{self, read_dir_copy, sha256_digest, skopeo_copy_all, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::{Registry, TEST_PASSWORD, TEST_USER};
use common::token_server::TokenServer;

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> http::Response<Bytes> {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::from(body.to_owned())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_open_a_real_htpasswd_registry_and_their_absence_is_a_clear_401() {
    // Load the images into an open registry, then serve the same storage
    // with htpasswd auth.
    let mut loader = Registry::start();
    let fixtures = images::load_fixtures(&loader);
    loader.stop();
    let storage = loader.storage_dir();
    let upstream = Registry::builder()
        .htpasswd_auth()
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            storage.to_str().unwrap(),
        )
        .start();

    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("upstream.password");
    std::fs::write(&secret, format!("{TEST_PASSWORD}\n")).unwrap();
    let with_creds = Regcache::start(&[UpstreamEntry::new("private", &upstream.url())
        .set("username", &format!("{TEST_USER:?}"))
        .set(
            "password_file",
            &format!("{:?}", secret.display().to_string()),
        )]);
    let host = with_creds.host();
    let f = fixtures.oci_index.clone();
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("image");
        skopeo_copy_all(&format!("{host}/{}:{}", f.repo, f.tag), &dest).unwrap();
        assert_eq!(read_dir_copy(&dest).unwrap().manifest_digest, f.digest);
    })
    .await
    .unwrap();
    assert!(
        !with_creds.log().contains(TEST_PASSWORD),
        "the password never reaches the log"
    );

    let without = Regcache::start(&[UpstreamEntry::new("private", &upstream.url())]);
    let r = client()
        .get(format!(
            "{}/v2/{}/manifests/{}",
            without.url(),
            fixtures.oci_index.repo,
            fixtures.oci_index.tag
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        !r.headers().contains_key("www-authenticate"),
        "the upstream's challenge is not relayed"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("private"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_followed_without_carrying_credentials_to_the_other_host() {
    let origin = FakeUpstream::start(Behaviour::default()).await;
    let cdn = FakeUpstream::start(Behaviour::default()).await;
    let data = random_bytes(3 * 1024 * 1024 + 5, 41);
    let digest = cdn.add_blob(data.clone());
    // The registry wants Basic credentials, then sends blob GETs elsewhere.
    let cdn_url = cdn.url();
    origin.set_on_request(move |req| {
        if req.header("authorization") != Some("Basic Ym90OnMzY3JldA==") {
            return Some(response(
                401,
                &[("WWW-Authenticate", "Basic realm=\"origin\"")],
                "",
            ));
        }
        if req.path.contains("/blobs/") {
            let location = format!("{cdn_url}/v2/cdn{}?X-Signature=abc", &req.path[3..]);
            return Some(response(307, &[("Location", location.as_str())], ""));
        }
        None
    });
    // The CDN has its own token realm, anonymous.
    let cdn_realm = format!("{}/token", cdn.url());
    cdn.set_on_request(move |req| {
        if req.path == "/token" {
            return Some(response(
                200,
                &[("Content-Type", "application/json")],
                r#"{"token":"cdn-token","expires_in":300}"#,
            ));
        }
        if req.header("authorization") != Some("Bearer cdn-token") {
            let challenge = format!("Bearer realm=\"{cdn_realm}\",service=\"cdn\"");
            return Some(response(
                401,
                &[("WWW-Authenticate", challenge.as_str())],
                "",
            ));
        }
        None
    });
    let rc = Regcache::start(&[UpstreamEntry::new("origin", &origin.url())
        .set("username", "\"bot\"")
        .set("password", "\"s3cret\"")]);
    let body = get(&format!("{}/v2/org/app/blobs/{digest}", rc.url()))
        .await
        .unwrap()
        .1;
    assert_eq!(sha256_digest(&body), digest);
    assert!(rc.blob_path(&digest).is_file(), "verified and cached");
    for r in cdn.requests() {
        let auth = r.header("authorization").unwrap_or("");
        assert!(
            !auth.starts_with("Basic"),
            "the CDN never sees the registry's credentials: {auth}"
        );
    }
    assert!(cdn
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some("Bearer cdn-token")));
    let token_requests = cdn.requests_matching("GET", "/token");
    assert_eq!(token_requests.len(), 1);
    assert!(
        !token_requests[0].has_header("authorization"),
        "tokens from a foreign realm are fetched anonymously"
    );
    assert!(
        !rc.log().contains("X-Signature"),
        "presigned URLs stay out of the log"
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
async fn low_rate_limit_headroom_is_logged_once_when_it_starts_and_ends() {
    let limit = ("ratelimit-limit", "100;w=21600");
    let fake = FakeUpstream::start(Behaviour::default()).await;
    fake.set_extra_headers(&[limit, ("ratelimit-remaining", "90;w=21600")]);
    let digest = fake.add_manifest(
        "test/app",
        Some("v0"),
        OCI_MANIFEST,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec(),
    );
    for i in 1..10 {
        fake.set_tag("test/app", &format!("v{i}"), &digest);
    }
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let c = client();
    let pull = |i: u32| {
        let c = c.clone();
        let url = format!("{}/v2/test/app/manifests/v{i}", rc.url());
        async move { c.get(url).send().await.unwrap().status() }
    };
    assert_eq!(pull(0).await, 200);
    assert_eq!(warns(&rc, "rate limit"), 0, "90 of 100 left is no news");
    // Under a tenth left: one WARN however many pulls see it.
    fake.set_extra_headers(&[limit, ("ratelimit-remaining", "9;w=21600")]);
    for i in 1..5 {
        assert_eq!(pull(i).await, 200);
    }
    assert_eq!(warns(&rc, "upstream rate limit low"), 1, "{}", rc.log());
    assert!(rc.log().lines().any(|l| l.contains("rate limit low")
        && l.contains("remaining=9")
        && l.contains("limit=100")));
    fake.set_extra_headers(&[limit, ("ratelimit-remaining", "100;w=21600")]);
    for i in 5..8 {
        assert_eq!(pull(i).await, 200);
    }
    assert_eq!(
        warns(&rc, "upstream rate limit headroom recovered"),
        1,
        "{}",
        rc.log()
    );
    assert_eq!(warns(&rc, "upstream rate limit low"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_server_is_logged_once_when_it_starts_and_ends() {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    fake.add_manifest(
        "test/app",
        Some("v1"),
        OCI_MANIFEST,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec(),
    );
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let realm = format!("{}/token", fake.url());
    let flag = failing.clone();
    fake.set_on_request(move |r| {
        if r.path.starts_with("/token") {
            return Some(if flag.load(std::sync::atomic::Ordering::SeqCst) {
                response(500, &[], "token service down")
            } else {
                response(
                    200,
                    &[("content-type", "application/json")],
                    r#"{"token":"t"}"#,
                )
            });
        }
        if r.header("authorization") != Some("Bearer t") {
            let challenge = format!("Bearer realm=\"{realm}\",service=\"fake\"");
            return Some(response(401, &[("www-authenticate", &challenge)], ""));
        }
        None
    });
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url())]);
    let c = client();
    for i in 0..5 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/t{i}", rc.url()))
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_success(), "{}", r.status());
    }
    assert!(fake.count("GET", "/token") >= 5, "each pull tried a token");
    assert_eq!(
        warns(&rc, "upstream token fetch failing"),
        1,
        "{}",
        rc.log()
    );
    assert!(rc
        .log()
        .lines()
        .any(|l| l.contains("token fetch failing") && l.contains("500")));

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let r = c
            .get(format!("{}/v2/test/app/manifests/v1", rc.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        warns(&rc, "upstream token fetch recovered"),
        1,
        "{}",
        rc.log()
    );
    assert_eq!(warns(&rc, "upstream token fetch failing"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_become_gauges_and_auth_errors_name_the_upstream() {
    let fake = FakeUpstream::start(Behaviour {
        extra_headers: vec![
            ("ratelimit-limit".into(), "100;w=21600".into()),
            ("ratelimit-remaining".into(), "42;w=21600".into()),
            ("docker-ratelimit-source".into(), "192.0.2.1".into()),
        ],
        ..Behaviour::default()
    })
    .await;
    fake.add_manifest("library/alpine", Some("3"), OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec());
    let rc = Regcache::start(&[UpstreamEntry::new("docker.io", &fake.url())]);
    let r = client()
        .get(format!("{}/v2/alpine/manifests/3", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "single-component names get library/ on Docker Hub"
    );
    let metrics = rc.metrics();
    let gauge = |kind: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("regcache_upstream_ratelimit{")
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.contains("upstream=\"docker.io\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(gauge("limit"), Some(100.0), "{metrics}");
    assert_eq!(gauge("remaining"), Some(42.0), "{metrics}");

    fake.set_on_request(|req| {
        if req.path.contains("forbidden") {
            Some(response(403, &[], r#"{"errors":[{"code":"DENIED"}]}"#))
        } else if req.path.contains("secret") {
            Some(response(
                401,
                &[("WWW-Authenticate", "Basic realm=\"x\"")],
                "",
            ))
        } else {
            None
        }
    });
    let r = client()
        .get(format!("{}/v2/org/forbidden/manifests/1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("docker.io"));
    let r = client()
        .get(format!("{}/v2/org/secret/manifests/1", rc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_token_auth_registry_costs_one_token_per_scope_per_lifetime() {
    let tokens = TokenServer::start("regcache-test-issuer", "regcache-test-registry").await;
    let (upstream, fixtures) =
        tokio::task::block_in_place(|| tokens.start_registry_with_fixtures(1024 * 1024));
    tokens.clear_requests();
    // The token server has a port of its own: the upstream lists it.
    let rc = Regcache::start(&[UpstreamEntry::new("tokened", &upstream.url()).set(
        "auth_hosts",
        &format!("[{:?}]", realm_host(&tokens.realm())),
    )]);
    for f in fixtures.all() {
        let reference = format!("{}/{}:{}", rc.host(), f.repo, f.tag);
        let expected = f.digest.clone();
        tokio::task::spawn_blocking(move || {
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("image");
            skopeo_copy_all(&reference, &dest).unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(read_dir_copy(&dest).unwrap().manifest_digest, expected);
        })
        .await
        .unwrap();
    }
    // Every pull made several upstream requests (tag, manifests, blobs) in
    // one scope; each scope cost exactly one token.
    for f in fixtures.all() {
        let scope = format!("repository:{}:pull", f.repo);
        let upstream_requests = upstream.request_count("GET", &format!("/v2/{}/", f.repo));
        assert!(
            upstream_requests >= 3,
            "{scope}: {upstream_requests} upstream GETs"
        );
        assert_eq!(
            tokens.count_for_scope(&scope),
            1,
            "{scope}: one token request"
        );
    }
    assert_eq!(
        tokens.count(),
        fixtures.all().len(),
        "no token request beyond one per scope"
    );
    assert_eq!(
        rc.metric("regcache_upstream_token_fetches_total"),
        tokens.count() as f64
    );
    assert!(
        tokens.requests().iter().all(|r| !r.authorization),
        "anonymous upstream: no credentials sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_only_when_configured() {
    let mut loader = Registry::start();
    let fixtures = images::load_fixtures(&loader);
    loader.stop();
    let pki = tempfile::tempdir().unwrap();
    let ca = common::tls::TestCa::new("regcache test CA");
    let ca_file = ca.write_cert(pki.path(), "ca.pem");
    let leaf = ca.issue(&["127.0.0.1", "localhost"], pki.path(), "registry");
    let upstream = Registry::builder()
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            loader.storage_dir().to_str().unwrap(),
        )
        .env(
            "REGISTRY_HTTP_TLS_CERTIFICATE",
            leaf.cert_path.to_str().unwrap(),
        )
        .env("REGISTRY_HTTP_TLS_KEY", leaf.key_path.to_str().unwrap())
        .start();
    let https = format!("https://{}", upstream.host());
    let f = &fixtures.docker_schema2;
    let path = format!("/v2/{}/manifests/{}", f.repo, f.tag);
    let get = |rc: &Regcache| {
        let url = format!("{}{path}", rc.url());
        async move { client().get(url).send().await.unwrap() }
    };

    let trusted = Regcache::start(&[UpstreamEntry::new("tls", &https)
        .set("ca_file", &format!("{:?}", ca_file.display().to_string()))]);
    let r = get(&trusted).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], f.digest.as_str());

    let untrusted = Regcache::start(&[UpstreamEntry::new("tls", &https)]);
    let r = get(&untrusted).await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{v}"
    );

    let skipping =
        Regcache::start(&[UpstreamEntry::new("tls", &https).set("insecure_skip_verify", "true")]);
    assert_eq!(get(&skipping).await.status(), 200);
    assert!(
        skipping.log().contains("NOT verified"),
        "the insecure setting is logged as a warning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_target_that_asks_for_nothing_gets_no_authorization_at_all() {
    let origin = FakeUpstream::start(Behaviour::default()).await;
    let storage = FakeUpstream::start(Behaviour::default()).await;
    let data = random_bytes(500_000, 43);
    let digest = storage.add_blob(data.clone());
    let storage_url = storage.url();
    // An origin that issues Bearer tokens, then redirects blob GETs.
    let realm = format!("{}/token", origin.url());
    origin.set_on_request(move |req| {
        if req.path == "/token" {
            return Some(response(200, &[], r#"{"access_token":"origin-token"}"#));
        }
        if req.header("authorization") != Some("Bearer origin-token") {
            let challenge = format!(
                "Bearer realm=\"{realm}\",service=\"origin\",scope=\"repository:org/app:pull\""
            );
            return Some(response(
                401,
                &[("WWW-Authenticate", challenge.as_str())],
                "",
            ));
        }
        if req.path.contains("/blobs/") {
            let location = format!("{storage_url}{}", req.path);
            return Some(response(302, &[("Location", location.as_str())], ""));
        }
        None
    });
    let rc = Regcache::start(&[UpstreamEntry::new("origin", &origin.url())]);
    let body = get(&format!("{}/v2/org/app/blobs/{digest}", rc.url()))
        .await
        .unwrap()
        .1;
    assert_eq!(body, data);
    assert!(!storage.requests().is_empty());
    assert!(
        storage
            .requests()
            .iter()
            .all(|r| !r.has_header("authorization")),
        "the redirect target never sees the origin's token"
    );
    assert!(origin
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some("Bearer origin-token")));
}

fn port_of(up: &FakeUpstream) -> String {
    up.host().rsplit(':').next().unwrap().to_owned()
}

/// A 502 whose OCI message names `host`.
async fn assert_refused(r: reqwest::Response, host: &str) {
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    let message = v["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("refused to contact {host}")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_off_the_upstreams_host_gets_no_credentials_unless_in_auth_hosts() {
    let origin = FakeUpstream::start(Behaviour::default()).await;
    // Stands for any other host: it would hand out a token for the
    // credentials it is sent.
    let other = FakeUpstream::start(Behaviour::default()).await;
    let data = random_bytes(100_000, 51);
    let digest = origin.add_blob(data.clone());
    other.set_on_request(|req| {
        (req.path == "/token").then(|| {
            response(
                200,
                &[("Content-Type", "application/json")],
                r#"{"token":"other-token","expires_in":300}"#,
            )
        })
    });
    let realm = format!("http://{}/token", other.host());
    origin.set_on_request(move |req| {
        if req.header("authorization") == Some("Bearer other-token") {
            return None;
        }
        let challenge = format!("Bearer realm=\"{realm}\",service=\"origin\"");
        Some(response(
            401,
            &[("WWW-Authenticate", challenge.as_str())],
            "",
        ))
    });
    // As in the hostile upstream that found the defect: the upstream and the
    // realm are both on 127.0.0.1, on different ports.
    let url = origin.url();
    let entry = || {
        UpstreamEntry::new("origin", &url)
            .set("username", "\"bot\"")
            .set("password", "\"s3cret\"")
    };
    let blob = |rc: &Regcache| format!("{}/v2/org/app/blobs/{digest}", rc.url());

    let rc = Regcache::start(&[entry()]);
    let r = client().get(blob(&rc)).send().await.unwrap();
    assert_refused(r, &other.host()).await;
    assert!(origin.count("GET", "/blobs/") >= 1, "the challenge came");
    assert_eq!(other.connections(), 0, "the realm was never dialled");
    assert!(rc.log().contains("refused a host"), "{}", rc.log());

    // Listed, the same realm is the upstream's token service.
    let listed = Regcache::start(&[entry().set("auth_hosts", &format!("[{:?}]", other.host()))]);
    let body = get(&blob(&listed)).await.unwrap().1;
    assert_eq!(body, data);
    let token_requests = other.requests_matching("GET", "/token");
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].header("authorization"),
        Some("Basic Ym90OnMzY3JldA=="),
        "a listed realm gets the credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_with_credentials_or_to_an_unspecified_address_dial_nothing() {
    let origin = FakeUpstream::start(Behaviour::default()).await;
    let target = FakeUpstream::start(Behaviour::default()).await;
    let data = random_bytes(200_000, 52);
    let digest = target.add_blob(data.clone());
    let port = port_of(&target);
    // The first repository component picks where the blob GET is sent.
    origin.set_on_request(move |req| {
        let host = match req.path.split('/').nth(2)? {
            // Followed as is, the target got `Authorization: Basic` for these.
            "userinfo" => format!("bot:pw@127.0.0.1:{port}"),
            // Linux connects 0.0.0.0 to the local host.
            "unspecified" => format!("0.0.0.0:{port}"),
            "loopback" => format!("127.0.0.1:{port}"),
            _ => return None,
        };
        let location = format!("http://{host}{}", req.path);
        Some(response(307, &[("Location", location.as_str())], ""))
    });
    let entry = || {
        UpstreamEntry::new("origin", &origin.url())
            .set("username", "\"bot\"")
            .set("password", "\"s3cret\"")
    };
    let blob = |rc: &Regcache, repo: &str| format!("{}/v2/{repo}/app/blobs/{digest}", rc.url());

    let rc = Regcache::start(&[entry()]);
    let r = client().get(blob(&rc, "userinfo")).send().await.unwrap();
    assert_refused(r, &format!("127.0.0.1:{}", port_of(&target))).await;
    let r = client().get(blob(&rc, "unspecified")).send().await.unwrap();
    assert_refused(r, &format!("0.0.0.0:{}", port_of(&target))).await;
    assert_eq!(target.connections(), 0, "neither target was dialled");
    assert_eq!(origin.count("GET", "/blobs/"), 2);

    // The upstream is on loopback itself: a redirect to loopback is its own.
    let body = get(&blob(&rc, "loopback")).await.unwrap().1;
    assert_eq!(body, data);
    assert!(target
        .requests()
        .iter()
        .all(|r| !r.has_header("authorization")));

    // Listed in redirect_hosts, the unspecified address is followed.
    let listed = Regcache::start(&[entry().set("redirect_hosts", r#"["0.0.0.0"]"#)]);
    target.reset_counts();
    let body = get(&blob(&listed, "unspecified")).await.unwrap().1;
    assert_eq!(body, data);
    assert_eq!(target.count("GET", "/blobs/"), 1);
}

/// `host:port` of a realm URL.
fn realm_host(realm: &str) -> String {
    let url = reqwest::Url::parse(realm).expect("realm URL");
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}
