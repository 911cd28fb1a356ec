//! Clients of a running fill, served from its ring of recent chunks: a
//! client that falls behind the ring reads the file, a late joiner gets the
//! whole blob, one at a trickle slows nobody, and a fill that fails
//! verification aborts every client even when they hold nearly all of it.

pub mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::fake_upstream::{random_bytes, Behaviour, FakeUpstream, Fault};
use common::http::{client, get, read_body};
use common::images::sha256_digest;
use common::regcache::{Regcache, UpstreamEntry};

const MIB: usize = 1024 * 1024;

async fn setup() -> (FakeUpstream, Regcache) {
    let fake = FakeUpstream::start(Behaviour::default()).await;
    let rc = Regcache::start(&[UpstreamEntry::new("fake", &fake.url()).alias(&fake.host())]);
    (fake, rc)
}

fn blob_path(digest: &str) -> String {
    format!("/v2/test/app/blobs/{digest}")
}

/// A client that reads its response by hand, as slowly as it likes.
struct SlowClient {
    stream: TcpStream,
    body: Vec<u8>,
    length: usize,
}

impl SlowClient {
    /// Sends the request and reads the headers and the first bytes.
    fn start(rc: &Regcache, path: &str) -> SlowClient {
        let addr = rc.url().trim_start_matches("http://").to_string();
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a Content-Length");
        let mut client = SlowClient {
            stream,
            body: Vec::new(),
            length,
        };
        client.read(64 * 1024);
        client
    }

    fn read(&mut self, at_most: usize) {
        let mut buf = vec![0u8; at_most];
        let n = self.stream.read(&mut buf).unwrap();
        self.body.extend_from_slice(&buf[..n]);
    }

    fn finish(mut self) -> Vec<u8> {
        while self.body.len() < self.length {
            let before = self.body.len();
            self.read(256 * 1024);
            assert!(self.body.len() > before, "the body ended early");
        }
        self.body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_one_at_a_trickle_all_get_every_byte_from_one_upstream_get() {
    let (fake, rc) = setup().await;
    // Far more than the ring and the sockets' buffers hold.
    let data = random_bytes(48 * MIB, 21);
    let digest = fake.add_blob(data.clone());
    let path = blob_path(&digest);

    // The trickle client starts the fill and then reads nothing.
    let slow = SlowClient::start(&rc, &path);
    let url = format!("{}{path}", rc.url());
    let mut fast = Vec::new();
    for _ in 0..19 {
        let url = url.clone();
        fast.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in fast {
        let (status, body) = t.await.unwrap().expect("a fast client gets the blob");
        assert_eq!(status, 200);
        assert_eq!(sha256_digest(&body), digest);
    }
    // The 19 are done while the trickle client has read almost nothing:
    // none of them waited for it. Now it reads the rest, which the ring
    // let go of long ago: from the file, every byte right.
    assert!(slow.body.len() < data.len() / 2);
    let body = tokio::task::spawn_blocking(move || slow.finish())
        .await
        .unwrap();
    assert!(body == data, "the lagging client got the wrong bytes");
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_after_the_ring_moved_on_gets_the_whole_blob() {
    let (fake, rc) = setup().await;
    let data = random_bytes(12 * MIB + 3, 22);
    let digest = fake.add_blob(data.clone());
    // About 1.2 s for the whole blob: the joiner comes in half way, past
    // the bytes the ring still holds.
    fake.set_blob_fault(
        &digest,
        Fault::Slow {
            chunk: 256 * 1024,
            delay: Duration::from_millis(25),
        },
    );
    let url = format!("{}{}", rc.url(), blob_path(&digest));
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, late) = get(&url).await.expect("the late joiner gets the blob");
    assert_eq!(status, 200);
    assert!(late == data, "the late joiner got the wrong bytes");
    let (_, early) = first.await.unwrap().unwrap();
    assert!(early == data);
    assert_eq!(fake.count("GET", &format!("/blobs/{digest}")), 1);
    let coalesced = rc.metric(
        "regcache_cache_requests_total{kind=\"blob\",outcome=\"coalesced\",upstream=\"fake\"}",
    );
    assert_eq!(coalesced, 1.0, "the joiner attached to the running fill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_failing_verification_when_clients_hold_nearly_all_of_it_aborts_them_all() {
    let (fake, rc) = setup().await;
    let data = random_bytes(8 * MIB + 11, 23);
    let digest = fake.add_blob(data.clone());
    fake.set_blob_fault(&digest, Fault::WrongBytes);
    let url = format!("{}{}", rc.url(), blob_path(&digest));
    let mut clients = Vec::new();
    for _ in 0..5 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let response = client().get(&url).send().await?;
            Ok::<_, reqwest::Error>(read_body(response).await)
        }));
    }
    let mut most = 0;
    for c in clients {
        // An error before the headers is an abort too; after them, the
        // body must end in an error, never cleanly.
        if let Ok((got, error)) = c.await.unwrap() {
            assert!(
                error.is_some(),
                "a client saw a clean end of a body that failed verification"
            );
            assert!(got.len() < data.len(), "the last byte is held back");
            most = most.max(got.len());
        }
    }
    assert!(
        most >= data.len() / 2,
        "clients held most of the bytes before the failure ({most})"
    );
    assert!(!rc.blob_path(&digest).is_file(), "nothing is cached");
    assert!(rc.metric("regcache_digest_mismatches_total") >= 1.0);
}
