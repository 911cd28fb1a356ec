//! The cache service over the in-memory store: fills that verify, fills
//! that fail verification, tags restored from their records.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::storage::{ContentStoreExt, TagStore};
use super::*;
use crate::config::{Config, UpstreamConfig};
use crate::registry::{AcceptList, Reference, Tag};
use crate::upstream::Upstreams;

fn tag(name: &str, digest: &Digest, checked_at: u64) -> TagRecord {
    TagRecord {
        upstream: "up".into(),
        repo: "team/app".into(),
        tag: name.into(),
        entry: TagEntry {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
            checked_at,
            max_age_ms: None,
            unshared: false,
        },
    }
}

/// A cache over a fresh in-memory store; the index lives in `dir`.
fn memory_cache(store: &Arc<MemoryStore>, dir: &std::path::Path) -> Cache {
    let index = Arc::new(Index::open(dir).unwrap());
    Cache::with_storage(Storage::new(store.clone()), index, Arc::new(Metrics::new()))
}

/// An upstream on 127.0.0.1 that answers every request with `body` (200,
/// with its length), and counts the requests.
async fn serving(body: &'static [u8]) -> (Arc<Upstream>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    let config = Config {
        upstreams: Some(vec![UpstreamConfig::new(
            "up",
            &format!("http://127.0.0.1:{port}"),
        )]),
        default_upstream: "up".into(),
        ..Config::default()
    };
    let upstreams = Upstreams::from_config(&config, Arc::new(Metrics::new())).unwrap();
    (upstreams.get("up").unwrap(), requests)
}

async fn collect(body: BlobBody, size: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    let mut stream = std::pin::pin!(body.stream(0, size));
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_fill_streams_verifies_and_commits_into_the_store() {
    const LAYER: &[u8] = b"a layer that the upstream serves";
    let (upstream, requests) = serving(LAYER).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = memory_cache(&store, dir.path());
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(LAYER);

    let answer = cache.blob(&upstream, &repo, &digest, false).await.unwrap();
    assert_eq!(answer.outcome, Outcome::Miss);
    assert_eq!(answer.size, Some(LAYER.len() as u64));
    let bytes = collect(answer.body.unwrap(), LAYER.len() as u64)
        .await
        .unwrap();
    assert_eq!(bytes, LAYER);
    assert_eq!(cache.drain(Duration::from_secs(5)).await, 0);
    assert_eq!(
        store.read_whole(Kind::Blob, &digest).unwrap().unwrap(),
        LAYER
    );
    assert_eq!(cache.totals(Kind::Blob).bytes, LAYER.len() as u64);

    let again = cache.blob(&upstream, &repo, &digest, false).await.unwrap();
    assert_eq!(again.outcome, Outcome::Hit);
    let bytes = collect(again.body.unwrap(), LAYER.len() as u64)
        .await
        .unwrap();
    assert_eq!(bytes, LAYER);
    assert_eq!(requests.load(Ordering::SeqCst), 1, "a hit asks nobody");
}

#[tokio::test]
async fn a_fill_that_fails_verification_commits_nothing_and_frees_the_digest() {
    const WRONG: &[u8] = b"not the bytes that were asked for";
    let (upstream, requests) = serving(WRONG).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = memory_cache(&store, dir.path());
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(b"the bytes that were asked for");

    // Small as it is, the whole body may be in before the answer: then
    // the failure comes as the answer, else as the body's end.
    let outcome = |answer: Result<BlobAnswer, AnswerError>| async move {
        match answer {
            Err(e) => (e.outcome, e.error.to_string()),
            Ok(a) => {
                let size = a.size.unwrap();
                let body = collect(a.body.unwrap(), size).await;
                let error = body.expect_err("the body must fail, not end cleanly");
                (Some(a.outcome), error.to_string())
            }
        }
    };
    let (first, error) = outcome(cache.blob(&upstream, &repo, &digest, false).await).await;
    assert_eq!(first, Some(Outcome::Miss));
    assert!(error.contains("digest"), "{error}");
    assert_eq!(cache.drain(Duration::from_secs(5)).await, 0);
    assert!(!store.contains(Kind::Blob, &digest).unwrap());
    assert!(cache.index.get(Kind::Blob, &digest).unwrap().is_none());
    assert_eq!(cache.fills_in_progress(), 0, "the digest is free again");
    assert_eq!(cache.metrics.digest_mismatches.get(), 1);

    // The next request runs a fresh fill, which fails the same way.
    let (retry, _) = outcome(cache.blob(&upstream, &repo, &digest, false).await).await;
    assert_eq!(retry, Some(Outcome::Miss));
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_storage_failure_fails_the_fill_with_its_kind() {
    const LAYER: &[u8] = b"bytes for a full disk";
    let (upstream, _) = serving(LAYER).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    store.fail_writes(Some(std::io::ErrorKind::StorageFull));
    let cache = memory_cache(&store, dir.path());
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(LAYER);
    let error = match cache.blob(&upstream, &repo, &digest, false).await {
        Err(e) => e,
        Ok(_) => panic!("a fill that cannot store must fail"),
    };
    assert_eq!(error.outcome, Some(Outcome::Miss));
    assert!(error.error.is_storage_full(), "{}", error.error);
}

#[tokio::test]
async fn a_blob_announced_larger_than_the_room_above_the_floor_is_refused_unstaged() {
    const LAYER: &[u8] = b"six hundred bytes, say";
    let (upstream, requests) = serving(LAYER).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let floor = 10_000u64;
    store.set_space(Some(storage::Space {
        available: floor + LAYER.len() as u64 - 1,
        total: 1 << 30,
    }));
    let cache = memory_cache(&store, dir.path());
    cache.configure_eviction(
        Policy {
            min_free: Some(Floor::Bytes(floor)),
            ..Policy::default()
        },
        Pins::default(),
    );
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(LAYER);
    let error = match cache.blob(&upstream, &repo, &digest, false).await {
        Err(e) => e.error,
        Ok(_) => panic!("a blob with no room above the floor must be refused"),
    };
    assert!(matches!(error, CacheError::NoRoom { .. }), "{error}");
    // Its length was asked (one request), nothing was staged or kept.
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert!(!store.contains(Kind::Blob, &digest).unwrap());
    // With room, the same blob fills.
    store.set_space(Some(storage::Space {
        available: 1 << 20,
        total: 1 << 30,
    }));
    let answer = cache.blob(&upstream, &repo, &digest, false).await.unwrap();
    assert_eq!(answer.outcome, Outcome::Miss);
    let bytes = collect(answer.body.unwrap(), LAYER.len() as u64)
        .await
        .unwrap();
    assert_eq!(bytes, LAYER);
}

#[tokio::test]
async fn a_body_that_is_not_a_manifest_is_refused_and_nothing_is_kept() {
    const NOT_A_MANIFEST: &[u8] = b"{}";
    let (upstream, requests) = serving(NOT_A_MANIFEST).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = memory_cache(&store, dir.path());
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(NOT_A_MANIFEST);
    let accept = AcceptList::default();
    let by_tag = Reference::Tag(Tag::parse("v1").unwrap());
    let by_digest = Reference::Digest(digest.clone());
    for reference in [&by_digest, &by_tag, &by_digest] {
        let error = match cache
            .manifest(&upstream, &repo, reference, &accept, false)
            .await
        {
            Err(e) => e.error,
            Ok(_) => panic!("{{}} was served as the manifest {reference}"),
        };
        assert!(
            matches!(error, CacheError::NotAManifest { .. }),
            "{reference}: {error}"
        );
    }
    assert!(!store.contains(Kind::Manifest, &digest).unwrap());
    assert!(cache.index.get(Kind::Manifest, &digest).unwrap().is_none());
    assert!(cache.index.tag("up", "team/app", "v1").unwrap().is_none());
    assert!(store.tag_records().unwrap().is_empty());
    // Digest twice, tag once (its HEAD has no digest, so a GET follows):
    // nothing was remembered in between.
    assert_eq!(requests.load(Ordering::SeqCst), 4);
}

#[test]
fn a_rebuilt_index_gets_its_tags_and_their_links_back_from_the_tag_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let layer = Digest::sha256_of(b"layer");
    let manifest = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{layer}","size":5}}]}}"#);
    let root = Digest::sha256_of(manifest.as_bytes());
    {
        let cache = memory_cache(&store, &dir.path().join("index"));
        store.write_whole(Kind::Blob, &layer, b"layer").unwrap();
        store
            .write_whole(Kind::Manifest, &root, manifest.as_bytes())
            .unwrap();
        // As a revalidation records it: record, then index.
        let pulled = tag("v1", &root, 5);
        store.put_tag(&pulled).unwrap();
        cache
            .index
            .set_tag("up", "team/app", "v1", &pulled.entry)
            .unwrap();
        // A tag from before tag files existed: in the index only.
        let legacy = tag("old", &root, 7);
        cache
            .index
            .set_tag("up", "team/app", "old", &legacy.entry)
            .unwrap();
        let report = cache.reconcile().unwrap();
        assert_eq!(report.tags_restored, 0, "the index had them all");
        assert_eq!(
            store.tag_records().unwrap().len(),
            2,
            "the legacy tag got its record"
        );
        // The legacy write-back happens once per index: deleted records
        // do not come back from it.
        for t in ["v1", "old"] {
            store.delete_tag("up", "team/app", t).unwrap();
        }
        assert_eq!(cache.reconcile().unwrap().tags_restored, 0);
        assert!(store.tag_records().unwrap().is_empty());
        store.put_tag(&pulled).unwrap();
        store.put_tag(&legacy).unwrap();
        // A record newer than the index (the process died before the index
        // was flushed) is taken in at the next start, whatever the index.
        let moved = tag("v1", &layer, 9);
        store.put_tag(&moved).unwrap();
        assert_eq!(cache.reconcile().unwrap().tags_restored, 1);
        assert_eq!(
            cache.index.tag("up", "team/app", "v1").unwrap(),
            Some(moved.entry)
        );
        store.put_tag(&pulled).unwrap();
    }

    // A new index (the old one lost) over the same store.
    let cache = memory_cache(&store, &dir.path().join("rebuilt"));
    assert!(cache.index.all_tags().unwrap().is_empty());
    let report = cache.reconcile().unwrap();
    assert_eq!(report.added, 2);
    assert_eq!(report.tags_restored, 2);
    let mut tags = cache.index.all_tags().unwrap();
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(tags, vec![tag("old", &root, 7), tag("v1", &root, 5)]);
    for d in [&root, &layer] {
        assert!(cache.index.has_link("up", "team/app", d).unwrap());
    }
    assert!(!cache.index.has_link("up", "other/app", &layer).unwrap());
}

#[test]
fn the_newer_check_wins_when_index_and_record_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = memory_cache(&store, dir.path());
    let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
    cache
        .index
        .set_tag("up", "team/app", "v1", &tag("v1", &a, 10).entry)
        .unwrap();
    store.put_tag(&tag("v1", &b, 20)).unwrap();
    assert_eq!(cache.reconcile().unwrap().tags_restored, 1);
    assert_eq!(
        cache.index.tag("up", "team/app", "v1").unwrap(),
        Some(tag("v1", &b, 20).entry)
    );
}

#[test]
fn a_cache_written_by_the_filesystem_layout_is_served_as_it_is() {
    // Files laid out as earlier releases wrote them, with no index at all.
    let dir = tempfile::tempdir().unwrap();
    let bytes = b"an old layer";
    let digest = Digest::sha256_of(bytes);
    {
        let store = FsStore::open(dir.path()).unwrap();
        store.write_whole(Kind::Blob, &digest, bytes).unwrap();
    }
    let cache = Cache::open(dir.path(), Arc::new(Metrics::new())).unwrap();
    assert_eq!(cache.reconcile().unwrap().added, 1);
    assert!(cache.has_blob(&digest).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_at_a_trickle_slows_nobody_and_memory_stays_within_the_ring() {
    use crate::cache::flight::fill::{FILL_CHUNK, RING_BYTES, WRITE_QUEUE};
    let layer: &'static [u8] = Box::leak(
        (0..24u32 * 1024 * 1024)
            .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
            .collect::<Vec<u8>>()
            .into_boxed_slice(),
    );
    let size = layer.len() as u64;
    let (upstream, requests) = serving(layer).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = Arc::new(memory_cache(&store, dir.path()));
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::sha256_of(layer);

    // The trickle reader starts the fill, takes one chunk and stops.
    let slow = cache.blob(&upstream, &repo, &digest, false).await.unwrap();
    let mut slow_body = Box::pin(slow.body.unwrap().stream(0, size));
    let mut slow_got = slow_body.next().await.unwrap().unwrap().to_vec();
    let ring = cache
        .fills
        .running_fill(&digest)
        .and_then(|p| p.borrow().ring.clone());
    let ring = ring.expect("a streaming fill has its ring");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (ring, done) = (ring.clone(), done.clone());
        async move {
            let mut most = 0;
            while !done.load(Ordering::SeqCst) {
                most = most.max(ring.held());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        }
    });

    let mut fast = Vec::new();
    for _ in 0..19 {
        let (cache, upstream, repo, digest) = (
            cache.clone(),
            upstream.clone(),
            repo.clone(),
            digest.clone(),
        );
        fast.push(tokio::spawn(async move {
            let answer = cache.blob(&upstream, &repo, &digest, false).await.unwrap();
            collect(answer.body.unwrap(), size).await.unwrap()
        }));
    }
    for t in fast {
        assert!(
            t.await.unwrap() == layer,
            "every fast reader gets every byte"
        );
    }
    done.store(true, Ordering::SeqCst);
    let most = sampler.await.unwrap();
    // The 19 got the whole blob, so the fill is complete, while the trickle
    // reader still holds its first chunk: nobody waited for it.
    assert!(slow_got.len() <= FILL_CHUNK);
    assert!(
        most <= RING_BYTES + (WRITE_QUEUE + 2) * FILL_CHUNK,
        "the ring held {most} bytes"
    );
    while let Some(chunk) = slow_body.next().await {
        slow_got.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        slow_got == layer,
        "the trickle reader gets every byte right"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one upstream GET");
}
