//! The supply-chain gate end to end: blocked digests, the admission
//! webhook and cosign signature policy, against a real `docker-registry`
//! upstream, with skopeo and plain HTTP as clients.

pub mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use common::http::client;
use common::images::{self, sha256_digest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::{http_request, Registry};

const MANIFEST_ACCEPT: &str = images::MANIFEST_ACCEPT;
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

// --- the upstream: pushing hand-made content ---------------------------------

fn addr(registry: &Registry) -> SocketAddr {
    registry.host().parse().unwrap()
}

/// Pushes a blob (monolithic upload); its digest.
fn push_blob(registry: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let a = addr(registry);
    let r = http_request(
        a,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Some(b""),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap().to_owned();
    let path = match location.find("/v2/") {
        Some(at) => location[at..].to_owned(),
        None => location,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http_request(
        a,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(bytes),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    digest
}

/// Pushes a manifest under `reference` (a tag); its digest.
fn push_manifest(
    registry: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let r = http_request(
        addr(registry),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        Some(bytes),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    sha256_digest(bytes)
}

/// An image of these layers (bytes, pushed as gzip layers: the registry
/// does not look inside); its manifest digest.
fn push_image(registry: &Registry, repo: &str, tag: &str, layers: &[&[u8]]) -> String {
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": OCI_LAYER_GZIP, "digest": push_blob(registry, repo, l), "size": l.len()}))
        .collect();
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"tag": tag, "repo": repo}}})).unwrap();
    let config_digest = push_blob(registry, repo, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    push_manifest(registry, repo, tag, OCI_MANIFEST, &manifest)
}

/// A cosign signature manifest for `subject` at `sha256-<hex>.sig`, with
/// one simplesigning layer holding `payload` and `signature_b64` as its
/// annotation, laid out as cosign lays it out.
fn push_signature(
    registry: &Registry,
    repo: &str,
    subject: &str,
    payload: &[u8],
    signature_b64: &str,
) {
    let payload_digest = push_blob(registry, repo, payload);
    let config = serde_json::to_vec(&json!({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]}, "config": {}
    }))
    .unwrap();
    let config_digest = push_blob(registry, repo, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": config_digest},
        "layers": [{
            "mediaType": SIMPLESIGNING,
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": {"dev.cosignproject.cosign/signature": signature_b64}
        }]
    }))
    .unwrap();
    let tag = format!("sha256-{}.sig", subject.trim_start_matches("sha256:"));
    push_manifest(registry, repo, &tag, OCI_MANIFEST, &manifest);
}

// --- the client side ---------------------------------------------------------

/// GET through regcache: the status and the JSON error (or Null).
async fn get(rc: &Regcache, path: &str) -> (u16, Value, Vec<u8>) {
    let r = client()
        .get(format!("{}{path}", rc.url()))
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap().to_vec();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v, body)
}

/// Asserts a 403 DENIED whose message contains `needle`.
async fn assert_denied(rc: &Regcache, path: &str, needle: &str) {
    let (status, v, _) = get(rc, path).await;
    assert_eq!(status, 403, "{path}: {v}");
    assert_eq!(v["errors"][0]["code"], "DENIED", "{path}: {v}");
    let message = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{path}: {message:?} lacks {needle:?}"
    );
}

async fn assert_ok(rc: &Regcache, path: &str) -> Vec<u8> {
    let (status, v, body) = get(rc, path).await;
    assert_eq!(status, 200, "{path}: {v}");
    body
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cosign")
        .join(name)
}

// --- blocked digests -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_digests_are_refused_as_manifests_index_children_and_blobs_only_they_reach() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 20_000);
    let index = fixtures.oci_index.clone();
    let child = index.children[0].clone();
    let shared: &[u8] = b"a layer two images share";
    let only_a: &[u8] = b"a layer only the bad image has";
    let bad = push_image(&upstream, "team/shared", "bad", &[shared, only_a]);
    let good = push_image(&upstream, "team/shared", "good", &[shared]);
    let shared_digest = sha256_digest(shared);
    let only_a_digest = sha256_digest(only_a);

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(
        &list,
        format!(
            "# bad ones\n{bad} CVE-2099-0001 backdoor\n{}   pulled by the vendor\n",
            index.digest
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.log");
    let extra = format!(
        "[policy]\nblocked_digests_file = {:?}\n[audit]\nlog = {:?}\n",
        list.display().to_string(),
        audit.display().to_string()
    );
    let upstreams = [UpstreamEntry::new("local", &upstream.url())];
    let rc = Regcache::start_with(&upstreams, &extra);

    // A blocked image manifest, by tag and by digest, with its reason.
    assert_denied(
        &rc,
        "/v2/team/shared/manifests/bad",
        "CVE-2099-0001 backdoor",
    )
    .await;
    assert_denied(
        &rc,
        &format!("/v2/team/shared/manifests/{bad}"),
        "is blocked",
    )
    .await;
    let head = client()
        .head(format!("{}/v2/team/shared/manifests/bad", rc.url()))
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 403, "a HEAD is refused too");
    // Its own layer, which only it reaches; the shared one while no other
    // image is known to reach it.
    assert_denied(
        &rc,
        &format!("/v2/team/shared/blobs/{only_a_digest}"),
        "only through blocked",
    )
    .await;
    assert_denied(
        &rc,
        &format!("/v2/team/shared/blobs/{shared_digest}"),
        "only through blocked",
    )
    .await;
    // Another image that has the shared layer: it, and the layer, serve.
    assert_ok(&rc, "/v2/team/shared/manifests/good").await;
    assert_eq!(
        assert_ok(&rc, &format!("/v2/team/shared/blobs/{shared_digest}")).await,
        shared
    );
    assert_denied(
        &rc,
        &format!("/v2/team/shared/blobs/{only_a_digest}"),
        "only through blocked",
    )
    .await;
    let _ = good;

    // A blocked index, its platform manifest, and that manifest's layers.
    assert_denied(
        &rc,
        &format!("/v2/{}/manifests/{}", index.repo, index.tag),
        "pulled by the vendor",
    )
    .await;
    assert_denied(
        &rc,
        &format!("/v2/{}/manifests/{}", index.repo, child.digest),
        &format!("blocked index {}", index.digest),
    )
    .await;
    let layer = child.blobs.last().unwrap();
    assert_denied(
        &rc,
        &format!("/v2/{}/blobs/{layer}", index.repo),
        "only through blocked",
    )
    .await;
    // Cached, kept on disk, never served.
    let cached = rc.cached_manifests();
    assert!(
        cached.contains(&index.digest) && cached.contains(&bad),
        "{cached:?}"
    );

    // Other images are untouched: skopeo pulls one whole.
    images::assert_pulls_from(&fixtures.docker_schema2, &rc.host()).await;

    let refusals = rc.metric("regcache_blocked_refusals_total{upstream=\"local\"}");
    assert!(refusals >= 9.0, "{refusals}\n{}", rc.metrics());
    let lines = std::fs::read_to_string(&audit).unwrap_or_default();
    let policy_lines: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "blocked")
        .collect();
    assert!(policy_lines.len() >= 9, "{lines}");
    assert!(policy_lines.iter().any(|v| v["digest"] == bad.as_str()
        && v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("CVE-2099-0001")
        && v["repository"] == "team/shared"));

    // POST /admin/blocked reads the file again: the index is let go.
    std::fs::write(&list, format!("{bad} CVE-2099-0001 backdoor\n")).unwrap();
    let (status, v) = rc.admin_json("POST", "/admin/blocked");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["digests"], 1, "{v}");
    assert_ok(&rc, &format!("/v2/{}/manifests/{}", index.repo, index.tag)).await;
    assert_ok(
        &rc,
        &format!("/v2/{}/manifests/{}", index.repo, child.digest),
    )
    .await;
    assert_ok(&rc, &format!("/v2/{}/blobs/{layer}", index.repo)).await;
    // A bad file is refused whole; the running list stays.
    std::fs::write(&list, "sha256:nothex\n").unwrap();
    let (status, v) = rc.admin_json("POST", "/admin/blocked");
    assert_eq!(status, 400, "{v}");
    assert_denied(&rc, "/v2/team/shared/manifests/bad", "CVE-2099-0001").await;
    let (_, v) = rc.admin_json("GET", "/admin/blocked");
    assert_eq!(v["blocked"][0]["digest"], bad.as_str(), "{v}");

    // SIGHUP reads it too: an image served from the cache until now is
    // refused from then on.
    let schema2 = &fixtures.docker_schema2;
    assert_ok(
        &rc,
        &format!("/v2/{}/manifests/{}", schema2.repo, schema2.tag),
    )
    .await;
    std::fs::write(&list, format!("{} withdrawn\n", schema2.digest)).unwrap();
    rc.sighup_and_wait("config reloaded").await;
    assert_denied(
        &rc,
        &format!("/v2/{}/manifests/{}", schema2.repo, schema2.tag),
        "withdrawn",
    )
    .await;
    assert_ok(&rc, "/v2/team/shared/manifests/bad").await;
}

// --- admission ---------------------------------------------------------------

/// How the test webhook answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Deny the repositories in `denied`, allow the rest.
    Review,
    /// Never answer (until the test ends).
    Hang,
    /// Answer with a redirect to `/followed` on this server.
    Redirect,
}

/// A small in-process admission webhook: counts reviews, keeps them.
struct Webhook {
    addr: SocketAddr,
    reviews: Arc<Mutex<Vec<Value>>>,
    count: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
}

impl Webhook {
    fn start(denied: &'static [&'static str]) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(Mode::Review));
        let (r, c, m) = (reviews.clone(), count.clone(), mode.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (r, c, m) = (r.clone(), c.clone(), m.clone());
                std::thread::spawn(move || serve_review(stream, denied, &r, &c, &m));
            }
        });
        Webhook {
            addr,
            reviews,
            count,
            mode,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/review", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn serve_review(
    stream: TcpStream,
    denied: &[&str],
    reviews: &Mutex<Vec<Value>>,
    count: &AtomicUsize,
    mode: &Mutex<Mode>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    count.fetch_add(1, Ordering::SeqCst);
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    review["_path"] = json!(path);
    reviews.lock().unwrap().push(review.clone());
    let mut stream = stream;
    let mode = *mode.lock().unwrap();
    match mode {
        Mode::Hang => {
            std::thread::sleep(Duration::from_secs(90));
            return;
        }
        Mode::Redirect => {
            let here = stream.local_addr().unwrap();
            let _ = write!(
                stream,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{here}/followed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Mode::Review => {}
    }
    let repo = review["repository"].as_str().unwrap_or_default();
    let answer = if denied.contains(&repo) {
        json!({"allowed": false, "reason": format!("{repo}: critical vulnerability CVE-2099-1234")})
    } else {
        json!({"allowed": true, "reason": "clean"})
    };
    let answer = serde_json::to_vec(&answer).unwrap();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    let _ = stream.write_all(&answer);
}

fn admission(url: &str, on_error: &str) -> String {
    format!("[admission]\nurl = {url:?}\ntimeout = \"1s\"\non_error = {on_error:?}\ncache_verdicts = \"1h\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_webhook_that_denies_a_repository_blocks_it_and_reviews_once() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 20_000);
    let hook = Webhook::start(&["test/schema2"]);
    let upstreams = [UpstreamEntry::new("local", &upstream.url())];
    let mut rc = Regcache::start_with(&upstreams, &admission(&hook.url(), "deny"));

    // Denied: the manifest, and its blobs for a client that skips it.
    let denied = &fixtures.docker_schema2;
    assert_denied(
        &rc,
        &format!("/v2/{}/manifests/{}", denied.repo, denied.tag),
        "CVE-2099-1234",
    )
    .await;
    assert_denied(
        &rc,
        &format!("/v2/{}/blobs/{}", denied.repo, denied.blobs[0]),
        "CVE-2099-1234",
    )
    .await;
    assert_eq!(hook.count(), 1, "one review");
    let review = hook.reviews.lock().unwrap()[0].clone();
    assert_eq!(review["upstream"], "local");
    assert_eq!(review["repository"], "test/schema2");
    assert_eq!(review["tag"], "v1");
    assert_eq!(review["digest"], denied.digest.as_str());
    let mut layers: Vec<&str> = review["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    layers.sort();
    let mut blobs: Vec<&str> = denied.blobs.iter().map(String::as_str).collect();
    blobs.sort();
    assert_eq!(layers, blobs, "{review}");
    assert!(
        review["layers"][1]["size"].as_u64().unwrap() > 0,
        "{review}"
    );

    // An allowed image pulls whole with skopeo.
    images::assert_pulls_from(&fixtures.docker_list, &rc.host()).await;
    let after_list = hook.count();
    assert_eq!(
        after_list, 2,
        "the list's review covers its platform manifests"
    );
    let list_review = hook.reviews.lock().unwrap()[1].clone();
    assert_eq!(
        list_review["platforms"].as_array().unwrap().len(),
        2,
        "{list_review}"
    );

    // 20 concurrent cold pulls of one image: one review.
    let index = fixtures.oci_index.clone();
    let pulls = (0..20).map(|_| {
        let (url, index) = (rc.url(), index.clone());
        tokio::spawn(async move {
            let c = client();
            let r = c
                .get(format!("{url}/v2/{}/manifests/{}", index.repo, index.tag))
                .header("accept", MANIFEST_ACCEPT)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            for child in &index.child_manifests {
                let r = c
                    .get(format!("{url}/v2/{}/manifests/{child}", index.repo))
                    .header("accept", MANIFEST_ACCEPT)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            for blob in &index.blobs {
                let r = c
                    .get(format!("{url}/v2/{}/blobs/{blob}", index.repo))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        })
    });
    for p in futures_util::future::join_all(pulls).await {
        p.unwrap();
    }
    assert_eq!(
        hook.count(),
        after_list + 1,
        "20 concurrent pulls, one review"
    );
    assert_eq!(
        rc.metric("regcache_admission_reviews_total{upstream=\"local\",verdict=\"denied\"}"),
        1.0
    );
    assert_eq!(
        rc.metric("regcache_admission_reviews_total{upstream=\"local\",verdict=\"allowed\"}"),
        2.0
    );
    assert!(rc.metric("regcache_admission_denials_total{upstream=\"local\"}") >= 2.0);

    // Verdicts are kept in the index: a restart reviews nothing again.
    rc.terminate();
    rc.start_again();
    assert_ok(&rc, &format!("/v2/{}/manifests/{}", index.repo, index.tag)).await;
    assert_denied(
        &rc,
        &format!("/v2/{}/manifests/{}", denied.repo, denied.tag),
        "CVE-2099-1234",
    )
    .await;
    assert_eq!(hook.count(), after_list + 1, "verdicts survive a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_webhook_is_bounded_by_its_timeout_and_on_error_decides() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 20_000);
    let hook = Webhook::start(&[]);
    hook.set_mode(Mode::Hang);
    let upstreams = [UpstreamEntry::new("local", &upstream.url())];
    let rc = Regcache::start_with(&upstreams, &admission(&hook.url(), "deny"));
    let image = &fixtures.docker_schema2;
    let path = format!("/v2/{}/manifests/{}", image.repo, image.tag);

    // The webhook never answers: the pull is answered (within the client's
    // own 60 s bound, far past the 1 s review timeout), by on_error.
    assert_denied(&rc, &path, "on_error is deny").await;
    assert_eq!(
        rc.metric("regcache_admission_reviews_total{upstream=\"local\",verdict=\"error\"}"),
        1.0
    );
    // A failed review is no verdict: it is asked again.
    assert_denied(&rc, &path, "no answer within").await;
    assert_eq!(hook.count(), 2);

    // on_error = allow: the same pull is served.
    rc.write_config(&upstreams, &admission(&hook.url(), "allow"));
    rc.sighup_and_wait("config reloaded").await;
    assert_ok(&rc, &path).await;
    images::assert_pulls_from(image, &rc.host()).await;
    assert!(
        rc.log_count("serving (on_error = allow)") >= 1,
        "{}",
        rc.log()
    );

    // A webhook that redirects is not followed: its answer is an error.
    hook.set_mode(Mode::Redirect);
    rc.write_config(&upstreams, &admission(&hook.url(), "deny"));
    rc.sighup_and_wait("config reloaded").await;
    let other = &fixtures.docker_list;
    let other_path = format!("/v2/{}/manifests/{}", other.repo, other.tag);
    assert_denied(&rc, &other_path, "answered 307").await;
    let followed = hook
        .reviews
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["_path"] == "/followed")
        .count();
    assert_eq!(followed, 0, "the redirect was followed");
}

// --- signatures --------------------------------------------------------------

/// The simplesigning payload cosign writes for `digest`.
fn payload_for(reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// A P-256 key made here, as a cosign.pub and a signer.
struct TestKey {
    pair: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl TestKey {
    fn new() -> TestKey {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        TestKey { pair, rng }
    }

    fn pem(&self) -> String {
        use ring::signature::KeyPair;
        let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &b64[..64],
            &b64[64..]
        )
    }

    fn sign(&self, payload: &[u8]) -> String {
        let sig = self.pair.sign(&self.rng, payload).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_signatures_are_required_and_checked_against_cosigns_own_fixture() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 20_000);
    // The fixture from sigstore-rs: a payload cosign signed for an image
    // this test does not have, its signature and the key (see
    // tests/fixtures/cosign/README.md).
    let payload = std::fs::read(fixture("payload.json")).unwrap();
    let signature = std::fs::read_to_string(fixture("signature.b64"))
        .unwrap()
        .trim()
        .to_owned();
    let subject = "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";
    push_signature(&upstream, "team/busybox", subject, &payload, &signature);
    let tampered = String::from_utf8(payload.clone())
        .unwrap()
        .replace("busybox", "busyb0x");
    push_signature(
        &upstream,
        "team/tampered",
        subject,
        tampered.as_bytes(),
        &signature,
    );
    push_signature(&upstream, "other/busybox", subject, &payload, &signature);

    // Images of our own, signed in the same layout with a key made here.
    let key = TestKey::new();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.pub");
    std::fs::write(&ours, key.pem()).unwrap();
    let signed = push_image(&upstream, "team/app", "v1", &[b"signed layer"]);
    push_signature(
        &upstream,
        "team/app",
        &signed,
        &payload_for("registry.example/team/app", &signed),
        &key.sign(&payload_for("registry.example/team/app", &signed)),
    );
    let unsigned = push_image(&upstream, "team/unsigned", "v1", &[b"unsigned layer"]);
    // Signed by us, in a repository whose rule trusts another key.
    let elsewhere = push_image(&upstream, "other/app", "v1", &[b"other layer"]);
    push_signature(
        &upstream,
        "other/app",
        &elsewhere,
        &payload_for("registry.example/other/app", &elsewhere),
        &key.sign(&payload_for("registry.example/other/app", &elsewhere)),
    );
    // A valid signature, of another image.
    let moved = push_image(&upstream, "team/moved", "v1", &[b"moved layer"]);
    push_signature(
        &upstream,
        "team/moved",
        &moved,
        &payload_for("registry.example/team/app", &signed),
        &key.sign(&payload_for("registry.example/team/app", &signed)),
    );
    // Not covered by any rule.
    let free = push_image(&upstream, "free/app", "v1", &[b"free layer"]);
    // Fixture images skopeo pulls whole: an index signed (its platform
    // manifests are served on its signature) and a single image.
    for f in [&fixtures.oci_index, &fixtures.docker_schema2] {
        let reference = format!("registry.example/{}", f.repo);
        let p = payload_for(&reference, &f.digest);
        push_signature(&upstream, &f.repo, &f.digest, &p, &key.sign(&p));
    }

    let rules = format!(
        "[{{ repos = [\"team/busybox\", \"team/tampered\"], public_key_file = {:?} }}, {{ repos = [\"team/*\"], public_key_file = {:?} }}, {{ repos = [\"other/*\"], public_key_file = {:?} }}, {{ repos = [\"test/*\"], public_key_file = {:?} }}]",
        fixture("cosign.pub").display().to_string(),
        ours.display().to_string(),
        fixture("other.pub").display().to_string(),
        ours.display().to_string(),
    );
    let mut rc = Regcache::start(&[
        UpstreamEntry::new("local", &upstream.url()).set("require_signatures", &rules)
    ]);

    // cosign's own signature verifies with cosign's key ...
    let (status, v) = rc.admin_json(
        "GET",
        &format!("/admin/signatures/local/team/busybox@{subject}"),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert!(
        v["key_file"].as_str().unwrap().ends_with("cosign.pub"),
        "{v}"
    );
    // ... not once its payload is changed ...
    let (_, v) = rc.admin_json(
        "GET",
        &format!("/admin/signatures/local/team/tampered@{subject}"),
    );
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["reason"], "invalid", "{v}");
    // ... nor with another key.
    let (_, v) = rc.admin_json(
        "GET",
        &format!("/admin/signatures/local/other/busybox@{subject}"),
    );
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["reason"], "invalid", "{v}");

    // Through the registry API: a signed image is served and pulls whole
    // with skopeo; a missing signature, a wrong key and a signature of
    // another image are refused.
    assert_ok(&rc, "/v2/team/app/manifests/v1").await;
    images::assert_pulls_from(&fixtures.oci_index, &rc.host()).await;
    images::assert_pulls_from(&fixtures.docker_schema2, &rc.host()).await;
    let big = &fixtures.oci_image;
    assert_denied(
        &rc,
        &format!("/v2/{}/manifests/{}", big.repo, big.tag),
        "missing",
    )
    .await;
    assert_denied(
        &rc,
        "/v2/team/unsigned/manifests/v1",
        "missing: no cosign signature",
    )
    .await;
    assert_denied(
        &rc,
        &format!("/v2/team/unsigned/manifests/{unsigned}"),
        "missing",
    )
    .await;
    assert_denied(&rc, "/v2/other/app/manifests/v1", "invalid").await;
    assert_denied(&rc, "/v2/team/moved/manifests/v1", "mismatch").await;
    assert_ok(&rc, "/v2/free/app/manifests/v1").await;
    let _ = free;
    for (reason, at_least) in [("missing", 3.0), ("invalid", 1.0), ("mismatch", 1.0)] {
        let n = rc.metric(&format!(
            "regcache_signature_refusals_total{{reason=\"{reason}\",upstream=\"local\"}}"
        ));
        assert!(n >= at_least, "{reason}: {n}\n{}", rc.metrics());
    }

    // Signatures are cached like any content: with the upstream gone and
    // the memory of verified digests lost in a restart, the signed image
    // still verifies (and the unsigned one is still refused).
    let mut upstream = upstream;
    upstream.stop();
    rc.terminate();
    rc.start_again();
    assert_ok(&rc, &format!("/v2/team/app/manifests/{signed}")).await;
    assert_denied(
        &rc,
        &format!("/v2/team/unsigned/manifests/{unsigned}"),
        "requires a cosign signature",
    )
    .await;
}
