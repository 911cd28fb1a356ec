//! Supply-chain policy on tags, end to end against a real upstream
//! (docker-registry) and a real client (skopeo): a tag's history of moves
//! and its churn flag, immutable tags and accepting their refused moves,
//! `keep_deleted` both ways, and events out to notification receivers
//! (one that answers, one that is down, one that hangs), the supply-chain
//! gate's refusals among them.

pub mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::images::{
    skopeo, skopeo_inspect_digest, OciLayout, OCI_CONFIG, OCI_MANIFEST, SKOPEO_TIMEOUT,
};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::{free_port, http_request, Registry};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A small single-platform OCI image, its one layer's bytes seeded by
/// `seed`, pushed as `repo:tag`: (manifest digest, layer digest).
fn push_image(upstream: &Registry, repo: &str, tag: &str, seed: &str) -> (String, String) {
    let work = tempfile::tempdir().unwrap();
    let layout = OciLayout::create(work.path()).unwrap();
    let (layer, diff_id) = layout.put_random_layer(seed, 3000).unwrap();
    let descriptor = |media_type: &str, digest: &str, size: u64| json!({"mediaType": media_type, "digest": digest, "size": size});
    let config = layout
        .put_json(
            OCI_CONFIG,
            &json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"seed": seed}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }),
        )
        .unwrap();
    let manifest = layout
        .put_json(
            OCI_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(&config.media_type, &config.digest, config.size),
                "layers": [descriptor(&layer.media_type, &layer.digest, layer.size)],
            }),
        )
        .unwrap();
    layout.set_index(&manifest, tag).unwrap();
    let src = format!("oci:{}:{tag}", work.path().display());
    let dst = format!("docker://{}/{repo}:{tag}", upstream.host());
    skopeo(
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src,
            &dst,
        ],
        SKOPEO_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("pushing {repo}:{tag}: {e}"));
    (manifest.digest, layer.digest)
}

/// The digest a client (skopeo) gets for `reference` now, off the runtime.
async fn client_digest(reference: &str) -> String {
    let r = reference.to_owned();
    tokio::task::spawn_blocking(move || skopeo_inspect_digest(&r))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{reference}: {e}"))
}

/// Lets every cached tag go stale (the upstreams here use `tag_ttl = "1s"`).
async fn past_tag_ttl() {
    tokio::time::sleep(Duration::from_millis(1300)).await;
}

fn history(rc: &Regcache, upstream: &str, repo_tag: &str) -> Value {
    let (status, h) = rc.admin_json("GET", &format!("/admin/tags/{upstream}/{repo_tag}/history"));
    assert_eq!(status, 200, "{h}");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_again_upstream_shows_in_its_history_the_metric_and_the_audit_log() {
    let upstream = Registry::start();
    let (first, _) = push_image(&upstream, "team/app", "v1", "first");
    let audit = tempfile::tempdir().unwrap();
    let audit_log = audit.path().join("audit.log");
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("local", &upstream.url())
            .tag_ttl("1s")
            .set("tag_churn_moves", "1")],
        &format!("[audit]\nlog = {:?}\n", audit_log.display().to_string()),
    );
    let reference = format!("{}/team/app:v1", rc.host());
    assert_eq!(client_digest(&reference).await, first);
    assert!(history(&rc, "local", "team/app:v1")["moves"]
        .as_array()
        .unwrap()
        .is_empty());

    let (second, _) = push_image(&upstream, "team/app", "v1", "second");
    assert_ne!(first, second);
    past_tag_ttl().await;
    assert_eq!(
        client_digest(&reference).await,
        second,
        "the move is followed"
    );
    assert_eq!(
        rc.metric("regcache_tag_moves_total{upstream=\"local\"}"),
        1.0
    );
    assert_eq!(
        rc.metric("regcache_tag_churn_flagged_total{upstream=\"local\"}"),
        0.0
    );
    let h = history(&rc, "local", "team/app:v1");
    assert_eq!(h["digest"], second);
    let moves = h["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{h}");
    assert_eq!(moves[0]["old_digest"], first);
    assert_eq!(moves[0]["new_digest"], second);
    assert_eq!(moves[0]["action"], "followed");
    // The audit log is written by a thread of its own: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(20);
    let line: Value = loop {
        let audited = std::fs::read_to_string(&audit_log).unwrap_or_default();
        let found = audited
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "tag_moved");
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no tag_moved line in the audit log:\n{audited}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["old_digest"], first);
    assert_eq!(line["new_digest"], second);
    assert_eq!(line["repository"], "team/app");

    // A second move within the window passes tag_churn_moves = 1.
    let (third, _) = push_image(&upstream, "team/app", "v1", "third");
    past_tag_ttl().await;
    assert_eq!(client_digest(&reference).await, third);
    assert_eq!(
        rc.metric("regcache_tag_moves_total{upstream=\"local\"}"),
        2.0
    );
    assert_eq!(
        rc.metric("regcache_tag_churn_flagged_total{upstream=\"local\"}"),
        1.0
    );
    assert_eq!(rc.log_count("a tag keeps moving upstream: flagged"), 1);
    let h = history(&rc, "local", "team/app:v1");
    assert!(h["flagged_at"].is_string(), "{h}");
    assert_eq!(h["moves"][0]["new_digest"], third, "newest first");

    let out = rc.cli(&["tags", "history", "local/team/app:v1"]);
    assert!(out.success(), "{out:?}");
    for d in [&first, &second, &third] {
        assert!(out.stdout.contains(d.as_str()), "{out:?}");
    }
    assert!(out.stdout.contains("followed"), "{out:?}");
    let out = rc.cli(&["tags", "history", "--json", "local/team/app:v1"]);
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["moves"].as_array().unwrap().len(), 2);
    // With the daemon stopped, the CLI reads the index itself: the history
    // was kept.
    let mut rc = rc;
    rc.terminate();
    let out = rc.cli(&["tags", "history", "--json", "local/team/app:v1"]);
    assert!(out.success(), "{out:?}");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["moves"].as_array().unwrap().len(), 2);
    assert_eq!(json["digest"], third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_tag_keeps_its_first_digest_until_the_refused_move_is_accepted() {
    let upstream = Registry::start();
    let (first, _) = push_image(&upstream, "team/app", "v1", "pinned-1");
    let (latest, _) = push_image(&upstream, "team/app", "latest", "latest-1");
    let rc = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())
        .tag_ttl("1s")
        .set("immutable_tags", r#"["library/*:3.*", "team/*:v*"]"#)]);
    let pinned = format!("{}/team/app:v1", rc.host());
    let mutable = format!("{}/team/app:latest", rc.host());
    assert_eq!(client_digest(&pinned).await, first);
    assert_eq!(client_digest(&mutable).await, latest);

    let (second, _) = push_image(&upstream, "team/app", "v1", "pinned-2");
    let (latest2, _) = push_image(&upstream, "team/app", "latest", "latest-2");
    past_tag_ttl().await;
    assert_eq!(
        client_digest(&pinned).await,
        first,
        "an immutable tag is not moved"
    );
    assert_eq!(
        client_digest(&mutable).await,
        latest2,
        "a tag no glob matches is"
    );
    past_tag_ttl().await;
    assert_eq!(client_digest(&pinned).await, first);
    assert_eq!(
        rc.metric("regcache_tag_moves_refused_total{upstream=\"local\"}"),
        1.0,
        "refused once, however often revalidated"
    );
    assert_eq!(
        rc.metric("regcache_tag_moves_total{upstream=\"local\"}"),
        1.0
    );
    assert_eq!(rc.log_count("an immutable tag moved upstream: refused"), 1);
    let h = history(&rc, "local", "team/app:v1");
    assert_eq!(h["digest"], first);
    assert_eq!(h["pending"], second);
    assert_eq!(h["moves"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h["moves"][0]["action"], "refused");
    assert_eq!(h["moves"][0]["new_digest"], second);

    let out = rc.cli(&["tags", "accept", "local/team/app:v1"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains(&second), "{out:?}");
    assert_eq!(
        client_digest(&pinned).await,
        second,
        "clients switch at once"
    );
    let h = history(&rc, "local", "team/app:v1");
    assert_eq!(h["moves"][0]["action"], "accepted");
    assert!(h["pending"].is_null(), "{h}");
    // Nothing is waiting any more: the admin API says so, and so does the CLI.
    let (status, answer) = rc.admin_json("POST", "/admin/tags/local/team/app:v1/accept");
    assert_eq!(status, 409, "{answer}");
    let out = rc.cli(&["tags", "accept", "local/team/app:v1"]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("no refused move"), "{out:?}");
    // Still pinned, now to the accepted digest: moved again, refused again.
    let (third, _) = push_image(&upstream, "team/app", "v1", "pinned-3");
    past_tag_ttl().await;
    assert_eq!(client_digest(&pinned).await, second);
    assert_eq!(history(&rc, "local", "team/app:v1")["pending"], third);
    assert_eq!(
        rc.metric("regcache_tag_moves_refused_total{upstream=\"local\"}"),
        2.0
    );
    // The upstream moves it back: nothing waits any more.
    let (back, _) = push_image(&upstream, "team/app", "v1", "pinned-2");
    assert_eq!(back, second, "the same image again");
    past_tag_ttl().await;
    assert_eq!(client_digest(&pinned).await, second);
    let h = history(&rc, "local", "team/app:v1");
    assert!(h["pending"].is_null(), "{h}");
    assert_eq!(h["moves"][0]["action"], "withdrawn");
    assert_eq!(h["moves"][0]["old_digest"], third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_deleted_upstream_is_kept_or_dropped_as_keep_deleted_says() {
    let upstream = Registry::start();
    let (kept, _) = push_image(&upstream, "team/kept", "v1", "kept");
    let (gone, _) = push_image(&upstream, "team/gone", "v1", "gone");
    let rc = Regcache::start(&[
        UpstreamEntry::new("keep", &upstream.url()).tag_ttl("1s"),
        UpstreamEntry::new("drop", &upstream.url())
            .tag_ttl("1s")
            .set("keep_deleted", "false"),
    ]);
    let kept_ref = format!("{}/keep/team/kept:v1", rc.host());
    let gone_ref = format!("{}/drop/team/gone:v1", rc.host());
    assert_eq!(client_digest(&kept_ref).await, kept);
    assert_eq!(client_digest(&gone_ref).await, gone);
    for (repo, digest) in [("team/kept", &kept), ("team/gone", &gone)] {
        let path = format!("/v2/{repo}/manifests/{digest}");
        let r = http_request(upstream.addr, "DELETE", &path, &[], None).unwrap();
        assert_eq!(r.status, 202, "deleting {repo} upstream");
    }

    past_tag_ttl().await;
    assert_eq!(client_digest(&kept_ref).await, kept, "kept");
    past_tag_ttl().await;
    assert_eq!(client_digest(&kept_ref).await, kept, "still kept");
    assert_eq!(
        rc.metric("regcache_deleted_tags_kept_total{upstream=\"keep\"}"),
        1.0
    );
    assert_eq!(
        rc.log_count("still serving the cached digest (keep_deleted)"),
        1
    );
    assert!(history(&rc, "keep", "team/kept:v1")["deleted_at"].is_string());

    let accept = [("Accept", OCI_MANIFEST)];
    let r = http_request(
        rc.addr,
        "GET",
        "/v2/drop/team/gone/manifests/v1",
        &accept,
        None,
    )
    .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        String::from_utf8_lossy(&r.body).contains("MANIFEST_UNKNOWN"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        rc.metric("regcache_deleted_tags_kept_total{upstream=\"drop\"}"),
        0.0
    );
    // Dropped, not just refused once: still 404 after the next TTL.
    past_tag_ttl().await;
    let r = http_request(
        rc.addr,
        "GET",
        "/v2/drop/team/gone/manifests/v1",
        &accept,
        None,
    )
    .unwrap();
    assert_eq!(r.status, 404);
}

/// A notification receiver in the test: every POSTed body, as JSON.
struct Receiver {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Answers 200 to every request (keep-alive), recording its body.
    async fn start() -> Receiver {
        Self::answering(|_| Vec::new()).await
    }

    /// An admission webhook: denies repository `team/denied`, allows the
    /// rest, recording each review.
    async fn webhook() -> Receiver {
        Self::answering(|review| {
            let allowed = review["repository"] != "team/denied";
            serde_json::to_vec(
                &json!({"allowed": allowed, "reason": "denied by the test's webhook"}),
            )
            .unwrap()
        })
        .await
    }

    /// Answers 200 to every request (keep-alive) with `answer(body)` as
    /// JSON, recording the body.
    async fn answering(answer: fn(&Value) -> Vec<u8>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        let mut first = true;
                        loop {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if first {
                                first = false;
                                continue;
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
                        if stream.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let reply = answer(&v);
                        seen.lock().push(v);
                        let mut ok = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            reply.len()
                        )
                        .into_bytes();
                        ok.extend_from_slice(&reply);
                        if stream.get_mut().write_all(&ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { addr, events }
    }

    /// Accepts connections and never answers.
    async fn hanging() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .events
            .lock()
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("?").to_owned())
            .collect();
        names.sort();
        names
    }

    fn event(&self, name: &str) -> Value {
        self.events
            .lock()
            .iter()
            .find(|v| v["event"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.events.lock().len() < count {
            assert!(
                Instant::now() < deadline,
                "the receiver got only {:?}",
                self.names()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Flips bytes of a blob in the upstream's storage (same length), so the
/// upstream serves content that does not hash to its digest.
fn corrupt_upstream_blob(upstream: &Registry, digest: &str) {
    let hex = digest.trim_start_matches("sha256:");
    let path = upstream
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().take(64) {
        *b ^= 0xff;
    }
    write_file(&path, &bytes);
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_receiver_once_and_dead_receivers_do_not_slow_pulls() {
    let mut upstream = Registry::start();
    let (moving, _) = push_image(&upstream, "team/app", "latest", "moving-1");
    let (pinned, _) = push_image(&upstream, "team/pinned", "v1", "pinned-1");
    let (_, bad_layer) = push_image(&upstream, "team/bad", "v1", "bad");
    corrupt_upstream_blob(&upstream, &bad_layer);
    // The supply-chain gate's three refusals: a blocked digest, a
    // repository the admission webhook denies, a manifest without the
    // signature its repository requires.
    let (blocked, _) = push_image(&upstream, "team/blocked", "v1", "blocked");
    let (denied, _) = push_image(&upstream, "team/denied", "v1", "denied");
    let (unsigned, _) = push_image(&upstream, "team/signed", "v1", "unsigned");
    let policy = tempfile::tempdir().unwrap();
    let blocked_file = policy.path().join("blocked.txt");
    write_file(&blocked_file, format!("{blocked} known bad\n").as_bytes());
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosign/cosign.pub");
    let webhook = Receiver::webhook().await;

    let receiver = Receiver::start().await;
    let hanging = Receiver::hanging().await;
    let down = free_port();
    let notifications = format!(
        "[[notifications]]\nurl = \"http://{}/hook\"\n\
         [[notifications]]\nurl = \"http://127.0.0.1:{down}/hook\"\nevents = [\"tag_moved\", \"upstream_down\"]\nretries = 1\n\
         [[notifications]]\nurl = \"http://{hanging}/hook\"\ntimeout = \"1h\"\nretries = 0\n\
         [policy]\nblocked_digests_file = {:?}\n\
         [admission]\nurl = \"http://{}/review\"\ntimeout = \"5s\"\n",
        receiver.addr,
        blocked_file.display().to_string(),
        webhook.addr,
    );
    let rc = Regcache::start_with(
        &[UpstreamEntry::new("local", &upstream.url())
            .tag_ttl("1s")
            .set("immutable_tags", r#"["team/pinned:*"]"#)
            .set(
                "require_signatures",
                &format!(
                    "[{{ repos = [\"team/signed\"], public_key_file = {:?} }}]",
                    key.display().to_string()
                ),
            )
            .set("breaker_threshold", "1000")],
        &notifications,
    );
    let moving_ref = format!("{}/team/app:latest", rc.host());
    let pinned_ref = format!("{}/team/pinned:v1", rc.host());
    assert_eq!(client_digest(&moving_ref).await, moving);
    assert_eq!(client_digest(&pinned_ref).await, pinned);

    // tag_moved and tag_move_refused; revalidated twice, refused once.
    let (moved, _) = push_image(&upstream, "team/app", "latest", "moving-2");
    let (refused, _) = push_image(&upstream, "team/pinned", "v1", "pinned-2");
    past_tag_ttl().await;
    assert_eq!(client_digest(&moving_ref).await, moved);
    assert_eq!(client_digest(&pinned_ref).await, pinned);
    past_tag_ttl().await;
    assert_eq!(client_digest(&pinned_ref).await, pinned);

    // blocked, admission_denied, signature_invalid: one refusal each.
    for (repo, digest) in [
        ("team/blocked", &blocked),
        ("team/denied", &denied),
        ("team/signed", &unsigned),
    ] {
        let status = common::http::client()
            .get(format!("{}/v2/{repo}/manifests/{digest}", rc.url()))
            .header("accept", common::images::MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403, "{repo}");
    }

    // digest_mismatch: one GET of a blob the upstream serves corrupt, once
    // its manifest is cached (and admitted).
    client_digest(&format!("{}/team/bad:v1", rc.host())).await;
    let url = format!("{}/v2/team/bad/blobs/{bad_layer}", rc.url());
    let _ = common::http::get(&url).await;

    // upstream_down, then upstream_up: a stale tag is served meanwhile.
    upstream.stop();
    past_tag_ttl().await;
    assert_eq!(client_digest(&moving_ref).await, moved, "served stale");
    upstream.restart();
    // The first request after the restart may still meet a connection of
    // the old process: pull until the upstream has answered one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver.names().iter().any(|n| n == "upstream_up") {
        assert!(
            Instant::now() < deadline,
            "no upstream_up: {:?}",
            receiver.names()
        );
        past_tag_ttl().await;
        assert_eq!(client_digest(&moving_ref).await, moved);
    }

    receiver.wait_for(8).await;
    // Anything late or repeated would have had the time of these pulls.
    past_tag_ttl().await;
    assert_eq!(client_digest(&pinned_ref).await, pinned);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.names(),
        [
            "admission_denied",
            "blocked",
            "digest_mismatch",
            "signature_invalid",
            "tag_move_refused",
            "tag_moved",
            "upstream_down",
            "upstream_up"
        ]
    );
    let e = receiver.event("tag_moved");
    assert_eq!(
        (&e["old_digest"], &e["new_digest"]),
        (&json!(moving), &json!(moved))
    );
    assert_eq!(e["upstream"], "local");
    assert_eq!(e["repository"], "team/app");
    assert_eq!(e["tag"], "latest");
    assert!(e["time"].is_string());
    let e = receiver.event("tag_move_refused");
    assert_eq!(
        (&e["old_digest"], &e["new_digest"]),
        (&json!(pinned), &json!(refused))
    );
    let e = receiver.event("digest_mismatch");
    assert_eq!(e["expected"], bad_layer);
    assert_eq!(e["repository"], "team/bad");
    assert_eq!(receiver.event("upstream_down")["upstream"], "local");
    for (event, repo, digest) in [
        ("blocked", "team/blocked", &blocked),
        ("admission_denied", "team/denied", &denied),
        ("signature_invalid", "team/signed", &unsigned),
    ] {
        let e = receiver.event(event);
        assert_eq!(
            (&e["repository"], &e["digest"], &e["upstream"]),
            (&json!(repo), &json!(digest), &json!("local")),
            "{event}: {e}"
        );
        assert!(
            e["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{event}: {e}"
        );
    }
    assert!(webhook
        .events
        .lock()
        .iter()
        .any(|r| r["repository"] == "team/denied"));

    for event in [
        "blocked",
        "admission_denied",
        "signature_invalid",
        "tag_moved",
        "tag_move_refused",
        "digest_mismatch",
        "upstream_down",
        "upstream_up",
    ] {
        let sent = format!("regcache_notifications_total{{event=\"{event}\",outcome=\"sent\"}}");
        assert_eq!(rc.metric(&sent), 1.0, "{event}");
    }
    // The receiver that is down asked for two events: each fails after its
    // retry, counted; the hanging one holds its first event for an hour,
    // and every pull above finished all the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    for event in ["tag_moved", "upstream_down"] {
        let failed =
            format!("regcache_notifications_total{{event=\"{event}\",outcome=\"failed\"}}");
        while rc.metric(&failed) < 1.0 {
            assert!(Instant::now() < deadline, "{event} never counted failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
