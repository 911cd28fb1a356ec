//! Smoke tests for the in-process fake upstream (tests/common/fake_upstream.rs).

pub mod common;

use std::time::{Duration, Instant};

use common::fake_upstream::*;
use common::http::{client, client_builder, read_body};
use common::images::{sha256_digest, OCI_INDEX, OCI_MANIFEST};

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn serves_read_api() {
    let up = FakeUpstream::start_default().await;
    let c = client();
    let data = random_bytes(100_000, 1);
    let digest = up.add_blob(data.clone());
    assert_eq!(digest, sha256_digest(&data));

    let r = c.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // blob GET
    let r = c
        .get(format!("{}/v2/lib/app/blobs/{digest}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(r.content_length(), Some(100_000));
    let body = r.bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), digest);

    // blob HEAD keeps Content-Length
    let r = c
        .head(format!("{}/v2/lib/app/blobs/{digest}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("100000"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));

    // manifests: by tag, by digest, HEAD; repo name containing a marker word
    let mbytes = br#"{"schemaVersion":2}"#.to_vec();
    let repo = "org/blobs/thing";
    let md = up.add_manifest(repo, Some("v1"), OCI_MANIFEST, mbytes.clone());
    for reference in ["v1", md.as_str()] {
        let r = c
            .get(format!("{}/v2/{repo}/manifests/{reference}", up.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{reference}");
        assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(header(&r, "docker-content-digest"), Some(md.as_str()));
        assert_eq!(r.bytes().await.unwrap().as_ref(), &mbytes[..]);
    }
    let r = c
        .head(format!("{}/v2/{repo}/manifests/v1", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(mbytes.len().to_string().as_str())
    );

    // moving a tag
    let md2 = up.add_manifest(
        repo,
        None,
        OCI_INDEX,
        br#"{"schemaVersion":2,"x":1}"#.to_vec(),
    );
    up.set_tag(repo, "v1", &md2);
    let r = c
        .head(format!("{}/v2/{repo}/manifests/v1", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), Some(md2.as_str()));
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));

    // unknowns
    let r = c
        .get(format!("{}/v2/{repo}/manifests/nope", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(j["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let r = c
        .get(format!(
            "{}/v2/{repo}/blobs/{}",
            up.url(),
            sha256_digest(b"x")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(j["errors"][0]["code"], "BLOB_UNKNOWN");
    // manifest lives in `repo` only
    let r = c
        .get(format!("{}/v2/other/manifests/{md}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // tags list with pagination + configured Link
    up.set_tag(repo, "a", &md);
    up.set_tag(repo, "b", &md);
    let r = c
        .get(format!("{}/v2/{repo}/tags/list", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "link").is_none());
    let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(j["name"], repo);
    assert_eq!(j["tags"], serde_json::json!(["a", "b", "v1"]));
    let r = c
        .get(format!("{}/v2/{repo}/tags/list?n=2", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link"),
        Some(format!("</v2/{repo}/tags/list?n=2&last=b>; rel=\"next\"").as_str())
    );
    up.set_tags_link(repo, Some("</v2/x/tags/list?last=zz>; rel=\"next\""));
    let r = c
        .get(format!("{}/v2/{repo}/tags/list", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link"),
        Some("</v2/x/tags/list?last=zz>; rel=\"next\"")
    );

    // referrers: 404 by default, configurable
    let r = c
        .get(format!("{}/v2/{repo}/referrers/{md}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    up.set_referrers(repo, &md, br#"{"schemaVersion":2,"manifests":[]}"#.to_vec());
    let r = c
        .get(format!("{}/v2/{repo}/referrers/{md}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
}

#[tokio::test]
async fn range_requests() {
    let up = FakeUpstream::start_default().await;
    let c = client();
    let data = random_bytes(10_000, 2);
    let d = up.add_blob(data.clone());
    let url = format!("{}/v2/r/blobs/{d}", up.url());

    let r = c
        .get(&url)
        .header("range", "bytes=4000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 4000-9999/10000"));
    assert_eq!(r.content_length(), Some(6000));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[4000..]);

    let r = c
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = c
        .get(&url)
        .header("range", "bytes=10000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), Some("bytes */10000"));

    up.set_honour_range(false);
    let r = c
        .get(&url)
        .header("range", "bytes=4000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 10_000);
}

#[tokio::test]
async fn wrong_bytes() {
    let up = FakeUpstream::start_default().await;
    let data = random_bytes(50_000, 3);
    let d = up.add_blob(data.clone());
    up.set_blob_fault(&d, Fault::WrongBytes);
    let r = client()
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    let (body, err) = read_body(r).await;
    assert!(err.is_none());
    assert_eq!(body.len(), data.len());
    assert_ne!(sha256_digest(&body), d);
}

#[tokio::test]
async fn drop_after_is_a_body_error() {
    let up = FakeUpstream::start_default().await;
    let data = random_bytes(200_000, 4);
    let d = up.add_blob(data.clone());
    up.set_blob_fault(&d, Fault::DropAfter(12_345));
    let r = client()
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(200_000));
    let (body, err) = read_body(r).await;
    let err = err.expect("truncated body must be an error, not a clean end");
    eprintln!("truncation error as seen by reqwest: {err:?}");
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );
    assert_eq!(body.len(), 12_345);
    assert_eq!(&body[..], &data[..12_345]);

    // also bytes() errors
    let r = client()
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.is_err());

    // DropAfter(0): headers then nothing
    up.set_blob_fault(&d, Fault::DropAfter(0));
    let r = client()
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    let (body, err) = read_body(r).await;
    assert!(err.is_some());
    assert!(body.is_empty());

    // times: fault only once
    up.set_fault_times(Scope::Digest(d.clone()), Fault::DropAfter(10), 1);
    let c = client();
    let r = c
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert!(read_body(r).await.1.is_some());
    let r = c
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 200_000);
}

#[tokio::test]
async fn drop_at_fractions_with_resume() {
    let up = FakeUpstream::start_default().await;
    let c = client();
    let data = random_bytes(1_000_000, 5);
    let d = up.add_blob(data.clone());
    up.set_blob_fault(&d, Fault::DropAtFractions(vec![0.3, 0.7]));
    let url = format!("{}/v2/r/blobs/{d}", up.url());

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (mut got, err) = read_body(r).await;
    assert!(err.is_some());
    assert_eq!(got.len(), 300_000);

    let r = c
        .get(&url)
        .header("range", format!("bytes={}-", got.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        header(&r, "content-range"),
        Some("bytes 300000-999999/1000000")
    );
    let (part, err) = read_body(r).await;
    assert!(err.is_some());
    assert_eq!(part.len(), 400_000);
    got.extend_from_slice(&part);

    let r = c
        .get(&url)
        .header("range", format!("bytes={}-", got.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let (part, err) = read_body(r).await;
    assert!(err.is_none());
    got.extend_from_slice(&part);
    assert_eq!(sha256_digest(&got), d);
    assert_eq!(up.count("GET", "/blobs/"), 3);

    // Without range support every attempt restarts from 0 with 200.
    up.set_honour_range(false);
    up.set_blob_fault(&d, Fault::DropAtFractions(vec![0.3, 0.7]));
    let r = c
        .get(&url)
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (b, err) = read_body(r).await;
    assert!(err.is_some());
    assert_eq!(b.len(), 300_000);
    let r = c
        .get(&url)
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (b, err) = read_body(r).await;
    assert!(err.is_some());
    assert_eq!(b.len(), 700_000);
    let r = c.get(&url).send().await.unwrap();
    let (b, err) = read_body(r).await;
    assert!(err.is_none());
    assert_eq!(sha256_digest(&b), d);
}

#[tokio::test]
async fn slow_stream() {
    let up = FakeUpstream::start_default().await;
    let data = random_bytes(50_000, 6);
    let d = up.add_blob(data.clone());
    up.set_blob_fault(
        &d,
        Fault::Slow {
            chunk: 10_000,
            delay: Duration::from_millis(60),
        },
    );
    let t = Instant::now();
    let r = client()
        .get(format!("{}/v2/r/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    let body = r.bytes().await.unwrap();
    let el = t.elapsed();
    assert_eq!(sha256_digest(&body), d);
    assert!(el >= Duration::from_millis(4 * 60), "{el:?}");
    assert!(el < Duration::from_secs(2), "{el:?}");
}

#[tokio::test]
async fn hang_times_out_and_drop_closes_connections() {
    let up = FakeUpstream::start_default().await;
    up.set_global_fault(Fault::Hang);
    let c = client_builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let t = Instant::now();
    let err = c.get(format!("{}/v2/", up.url())).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(up.count("GET", "/v2/"), 1);

    // A hung request without client timeout fails once the upstream is
    // dropped (so not the common client, which has one).
    let url = up.url();
    let h = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("{url}/v2/"))
            .send()
            .await
    });
    assert!(
        up.wait_for_count("GET", "/v2/", 2, Duration::from_secs(2))
            .await
    );
    drop(up);
    let res = tokio::time::timeout(Duration::from_secs(3), h)
        .await
        .expect("not hung")
        .unwrap();
    assert!(res.is_err());
}

#[tokio::test]
async fn status_faults() {
    let up = FakeUpstream::start_default().await;
    let c = client();
    let d = up.add_blob(random_bytes(100, 7));
    up.set_path_fault(
        "/manifests/",
        Fault::status_with(429, &[("Retry-After", "7")]),
    );
    let r = c
        .get(format!("{}/v2/a/manifests/latest", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some("7"));
    let j: serde_json::Value = r.json_value().await;
    assert_eq!(j["errors"][0]["code"], "TOOMANYREQUESTS");
    // blobs unaffected by a path fault on manifests
    let r = c
        .get(format!("{}/v2/a/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    up.set_global_fault(Fault::status_with(
        401,
        &[(
            "WWW-Authenticate",
            "Bearer realm=\"http://127.0.0.1:1/token\",service=\"x\"",
        )],
    ));
    let r = c.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate")
        .unwrap()
        .starts_with("Bearer realm="));
    up.clear_faults();

    // 503 twice, then OK
    up.set_fault_times(Scope::Digest(d.clone()), Fault::status(503), 2);
    for want in [503, 503, 200] {
        let r = c
            .get(format!("{}/v2/a/blobs/{d}", up.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }
    // HEAD gets the status too
    up.set_blob_fault(&d, Fault::status(500));
    let r = c
        .head(format!("{}/v2/a/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    up.clear_fault(&Scope::Digest(d.clone()));

    // CloseConnection: no response at all
    up.set_blob_fault(&d, Fault::CloseConnection);
    let err = c
        .get(format!("{}/v2/a/blobs/{d}", up.url()))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout());
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}
impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn extra_headers_and_hook() {
    let up = FakeUpstream::start(Behaviour {
        extra_headers: vec![
            ("ratelimit-limit".into(), "100;w=21600".into()),
            ("ratelimit-remaining".into(), "42;w=21600".into()),
            ("docker-ratelimit-source".into(), "1.2.3.4".into()),
        ],
        ..Behaviour::default()
    })
    .await;
    let c = client();
    let r = c.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(header(&r, "ratelimit-remaining"), Some("42;w=21600"));
    assert_eq!(header(&r, "docker-ratelimit-source"), Some("1.2.3.4"));

    // Hook: demand Authorization on everything.
    up.set_on_request(|req| {
        if req.has_header("authorization") {
            None
        } else {
            Some(
                http::Response::builder()
                    .status(401)
                    .header("www-authenticate", "Basic realm=\"fake\"")
                    .body(bytes::Bytes::new())
                    .unwrap(),
            )
        }
    });
    let r = c.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/v2/", up.url()))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.clear_on_request();
    let r = c.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn accounting() {
    let up = FakeUpstream::start_default().await;
    let d = up.add_blob(random_bytes(1000, 8));
    let c1 = client();
    for _ in 0..3 {
        let r = c1
            .get(format!("{}/v2/x/blobs/{d}?foo=bar", up.url()))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    assert_eq!(up.connections(), 1, "pooled client reuses one connection");
    let r = client()
        .head(format!("{}/v2/x/blobs/{d}", up.url()))
        .bearer_auth("tok")
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.connections(), 2);
    assert_eq!(up.count("GET", "/blobs/"), 3);
    assert_eq!(up.count("HEAD", "/blobs/"), 1);
    assert_eq!(up.count("*", "/blobs/"), 4);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].query.as_deref(), Some("foo=bar"));
    assert_eq!(reqs[0].path, format!("/v2/x/blobs/{d}"));
    assert!(!reqs[0].has_header("authorization"));
    assert_eq!(reqs[3].header("authorization"), Some("Bearer tok"));
    assert_eq!(reqs[3].header("accept-encoding"), Some("identity"));
    assert_eq!(reqs[0].conn_id, reqs[2].conn_id);
    assert_ne!(reqs[0].conn_id, reqs[3].conn_id);
    up.reset_counts();
    assert_eq!(up.connections(), 0);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn down_and_restart() {
    let up = FakeUpstream::start_default().await;
    let c = client();
    let url = format!("{}/v2/", up.url());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);

    up.go_down().await;
    assert!(up.is_down());
    let err = c.get(&url).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let err = client().get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    up.restart().await.unwrap();
    assert!(!up.is_down());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);

    // refuse after one more request
    up.refuse_after_requests(1);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert!(c.get(&url).send().await.is_err());
    let err = client().get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    up.restart().await.unwrap();
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
}

#[test]
fn random_bytes_is_deterministic() {
    assert_eq!(random_bytes(1000, 9), random_bytes(1000, 9));
    assert_ne!(random_bytes(1000, 9), random_bytes(1000, 10));
    assert_eq!(random_bytes(13, 0).len(), 13);
    assert_eq!(&random_bytes(100, 9)[..13], &random_bytes(13, 9)[..]);
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}
