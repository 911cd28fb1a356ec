//! Several regcache replicas sharing one bucket, for the shared-tier end to
//! end tests: one SeaweedFS ([`super::seaweedfs`]) per [`Cluster`], one
//! prefix per test, and replicas started with `[cache] backend = "s3"`,
//! `[cache.s3]` pointing at it and `[cluster]` with a peer port of their
//! own and one peer token file they all share.
//!
//! Each replica is a [`Regcache`] (its own empty cache directory, its own
//! log, `kill()` for a SIGKILL, `metric()` for one series); [`Replica`]
//! derefs to it. Besides starting replicas, this module looks into the
//! bucket the way a test needs to: the object of a digest, hashed as it
//! streams; a listing under the prefix; an object overwritten with wrong
//! bytes. And it pushes a large generated blob into a real upstream
//! without holding it in memory.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use regcache::cache::storage::bucket::Bucket;
use regcache::cache::storage::Kind;
use regcache::registry::Digest;

use super::images::Prng;
use super::regcache::{Exited, Regcache, UpstreamEntry};
use super::registry::{free_port, Registry};
use super::seaweedfs::{SeaweedFs, ACCESS_KEY, BUCKET, SECRET_KEY};

/// The token every replica of a [`Cluster`] presents on the peer endpoint.
pub const PEER_TOKEN: &str = "regcache-test-peer-token";

/// How long a test waits for something to land in (or leave) the bucket.
pub const BUCKET_WAIT: Duration = Duration::from_secs(30);

/// Extra lines for one replica's `[cache]`, `[cache.s3]` and `[cluster]`
/// tables (`key = value`, the value as TOML) and top-level keys.
#[derive(Default, Clone)]
pub struct ReplicaOptions {
    pub top: Vec<String>,
    pub cache: Vec<String>,
    pub s3: Vec<String>,
    pub cluster: Vec<String>,
}

impl ReplicaOptions {
    pub fn s3(mut self, key: &str, toml_value: &str) -> Self {
        self.s3.push(format!("{key} = {toml_value}"));
        self
    }

    pub fn cluster(mut self, key: &str, toml_value: &str) -> Self {
        self.cluster.push(format!("{key} = {toml_value}"));
        self
    }

    pub fn cache(mut self, key: &str, toml_value: &str) -> Self {
        self.cache.push(format!("{key} = {toml_value}"));
        self
    }

    pub fn top(mut self, key: &str, toml_value: &str) -> Self {
        self.top.push(format!("{key} = {toml_value}"));
        self
    }

    /// Whether `table.key` is set here (so the defaults below leave it).
    fn sets(&self, lines: &[String], key: &str) -> bool {
        lines
            .iter()
            .any(|l| l.split('=').next().map(str::trim) == Some(key))
    }
}

/// The config a replica gets (everything before its `[[upstreams]]`): the
/// S3 settings of the test engine (`allow_http`, `path_style`, a 30 s
/// `request_timeout`, the test keys), this replica's id, peer port and
/// advertised URL, and the shared token file. `opts` add to or override
/// any of them.
pub fn replica_config(
    endpoint: &str,
    prefix: &str,
    replica_id: &str,
    peer: SocketAddr,
    token_file: &std::path::Path,
    secret_file: &std::path::Path,
    opts: &ReplicaOptions,
) -> String {
    let mut s3 = vec![
        format!("endpoint = {endpoint:?}"),
        "region = \"us-east-1\"".to_string(),
        format!("bucket = {BUCKET:?}"),
        format!("prefix = {prefix:?}"),
        "path_style = true".to_string(),
        "allow_http = true".to_string(),
        format!("access_key_id = {ACCESS_KEY:?}"),
        format!(
            "secret_access_key_file = {:?}",
            secret_file.display().to_string()
        ),
        "request_timeout = \"30s\"".to_string(),
    ];
    s3.retain(|l| {
        let key = l.split('=').next().unwrap_or_default().trim();
        !opts.sets(&opts.s3, key)
    });
    s3.extend(opts.s3.iter().cloned());
    let mut cluster = vec![
        format!("replica_id = {replica_id:?}"),
        format!("peer_listen = \"{peer}\""),
        format!("advertise_url = \"http://{peer}\""),
        format!("peer_token_file = {:?}", token_file.display().to_string()),
    ];
    cluster.retain(|l| {
        let key = l.split('=').next().unwrap_or_default().trim();
        !opts.sets(&opts.cluster, key)
    });
    cluster.extend(opts.cluster.iter().cloned());
    let mut cache = vec!["backend = \"s3\"".to_string()];
    cache.retain(|l| {
        let key = l.split('=').next().unwrap_or_default().trim();
        !opts.sets(&opts.cache, key)
    });
    cache.extend(opts.cache.iter().cloned());
    format!(
        "{}\n[cache]\n{}\n\n[cache.s3]\n{}\n\n[cluster]\n{}\n",
        opts.top.join("\n"),
        cache.join("\n"),
        s3.join("\n"),
        cluster.join("\n")
    )
}

/// One replica: a [`Regcache`] with a peer endpoint.
pub struct Replica {
    pub rc: Regcache,
    pub id: String,
    /// `peer_listen` (and, as `http://..`, `advertise_url`).
    pub peer: SocketAddr,
}

impl Deref for Replica {
    type Target = Regcache;
    fn deref(&self) -> &Regcache {
        &self.rc
    }
}

impl DerefMut for Replica {
    fn deref_mut(&mut self) -> &mut Regcache {
        &mut self.rc
    }
}

/// With `CLUSTER_TEST_REPLICA_LOGS` set (not `REGCACHE_...`: regcache reads
/// those as config keys), each replica's log is printed
/// when it goes, passing or not (a failing test prints them anyway).
impl Drop for Replica {
    fn drop(&mut self) {
        if std::env::var_os("CLUSTER_TEST_REPLICA_LOGS").is_some() && !std::thread::panicking() {
            eprintln!("--- replica {} log ---\n{}", self.id, self.rc.log());
        }
    }
}

impl Replica {
    /// The sum of every sample of `family` (`name{..} value` and `name
    /// value` lines) whose labels contain each of `labels`
    /// (`op="get"`): 0 if there is none.
    pub fn metric_sum(&self, family: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.rc.metrics(), family, labels)
    }

    /// WARN lines of the log containing `needle` (case-insensitive).
    pub fn warn_lines(&self, needle: &str) -> Vec<String> {
        level_lines(&self.rc.log(), "WARN", needle)
    }

    /// Waits (bounded by [`BUCKET_WAIT`]) until `series` (one sample line,
    /// as [`Regcache::metric`] takes it) satisfies `ok`; its last value.
    pub async fn wait_for_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + BUCKET_WAIT;
        loop {
            let v = self.rc.metric(series);
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{} {series} is still {v} after {BUCKET_WAIT:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// See [`Replica::metric_sum`].
pub fn metric_sum(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (labelset, value) = if let Some(r) = rest.strip_prefix('{') {
                let (set, v) = r.split_once('}')?;
                (set, v)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            labels
                .iter()
                .all(|want| labelset.contains(want))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Lines of a regcache log at `level` ("WARN", "ERROR") containing
/// `needle`, case-insensitively.
pub fn level_lines(log: &str, level: &str, needle: &str) -> Vec<String> {
    let needle = needle.to_ascii_lowercase();
    log.lines()
        .filter(|l| l.contains(&format!(" {level} ")) || l.starts_with(&format!("{level} ")))
        .filter(|l| l.to_ascii_lowercase().contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// One SeaweedFS, one prefix, and the secrets every replica reads.
pub struct Cluster {
    pub engine: SeaweedFs,
    pub prefix: String,
    secrets: tempfile::TempDir,
}

impl Cluster {
    /// Starts the engine (off the async runtime: its readiness check runs
    /// a runtime of its own) and writes the peer token and S3 secret files.
    pub async fn start(prefix: &str) -> Cluster {
        let engine = tokio::task::spawn_blocking(SeaweedFs::start)
            .await
            .expect("start SeaweedFS");
        let secrets = tempfile::Builder::new()
            .prefix("regcache-cluster-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(secrets.path().join("peer.token"), format!("{PEER_TOKEN}\n"))
            .expect("token file");
        std::fs::write(secrets.path().join("s3.secret"), format!("{SECRET_KEY}\n"))
            .expect("secret file");
        Cluster {
            engine,
            prefix: prefix.into(),
            secrets,
        }
    }

    pub fn token_file(&self) -> PathBuf {
        self.secrets.path().join("peer.token")
    }

    pub fn secret_file(&self) -> PathBuf {
        self.secrets.path().join("s3.secret")
    }

    /// A replica named `id` with these upstreams (the first is the default).
    pub fn replica(&self, id: &str, upstreams: &[UpstreamEntry]) -> Replica {
        self.replica_with(id, upstreams, &ReplicaOptions::default())
    }

    pub fn replica_with(
        &self,
        id: &str,
        upstreams: &[UpstreamEntry],
        opts: &ReplicaOptions,
    ) -> Replica {
        match self.try_replica_with(id, upstreams, opts) {
            Ok(r) => r,
            Err(e) => panic!(
                "replica {id} exited at startup ({}); log:\n{}",
                e.status, e.log
            ),
        }
    }

    /// As [`Cluster::replica_with`]; `Err` when the process exits first.
    pub fn try_replica_with(
        &self,
        id: &str,
        upstreams: &[UpstreamEntry],
        opts: &ReplicaOptions,
    ) -> Result<Replica, Exited> {
        start_replica(
            &self.engine.endpoint,
            &self.prefix,
            id,
            &self.token_file(),
            &self.secret_file(),
            upstreams,
            opts,
        )
    }

    /// regcache's own client of this cluster's bucket and prefix.
    pub fn bucket(&self) -> Bucket {
        Bucket::connect(&self.engine.settings(&self.prefix)).expect("bucket client")
    }

    /// A plain object_store client of the bucket (keys include the prefix).
    pub fn raw(&self) -> object_store::aws::AmazonS3 {
        self.engine.client().expect("object_store client")
    }

    /// The full key of a content object: `<prefix>/blobs/sha256/<2hex>/<64hex>`.
    pub fn content_key(&self, kind: Kind, digest: &str) -> StorePath {
        let hex = digest.trim_start_matches("sha256:");
        let top = match kind {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        };
        StorePath::from(format!("{}/{top}/sha256/{}/{hex}", self.prefix, &hex[..2]))
    }

    /// Every key under `<prefix>/<under>` with its size.
    pub async fn list(&self, under: &str) -> Vec<(String, u64)> {
        let raw = self.raw();
        let base = StorePath::from(format!("{}/{under}", self.prefix));
        let metas: Vec<_> = raw
            .list(Some(&base))
            .try_collect()
            .await
            .expect("list the bucket");
        metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect()
    }

    /// The digests of every `blobs/` or `manifests/` object in the bucket.
    pub async fn content_digests(&self, kind: Kind) -> Vec<String> {
        let top = match kind {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        };
        let mut out: Vec<String> = self
            .list(top)
            .await
            .into_iter()
            .filter_map(|(k, _)| {
                let hex = k.rsplit('/').next()?;
                (hex.len() == 64).then(|| format!("sha256:{hex}"))
            })
            .collect();
        out.sort();
        out
    }

    /// The object of `digest`, streamed and hashed: `(size, "sha256:..")`,
    /// `None` when the bucket does not hold it.
    pub async fn hash_object(&self, kind: Kind, digest: &str) -> Option<(u64, String)> {
        let raw = self.raw();
        let got = match raw.get(&self.content_key(kind, digest)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => panic!("GET {digest} from the bucket: {e}"),
        };
        let mut stream = got.into_stream();
        let mut hasher = Hasher::new();
        while let Some(chunk) = stream.try_next().await.expect("read from the bucket") {
            hasher.update(&chunk);
        }
        Some(hasher.finish())
    }

    /// Waits (bounded) until the bucket holds `digest` with the right bytes.
    pub async fn wait_verified(&self, kind: Kind, digest: &str) {
        let deadline = Instant::now() + BUCKET_WAIT;
        loop {
            if let Some((_, got)) = self.hash_object(kind, digest).await {
                if got == digest {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{digest} not in the bucket, verified, after {BUCKET_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (bounded) until a HEAD of every digest finds it in the bucket.
    pub async fn wait_present(&self, kind: Kind, digests: &[String]) {
        let bucket = self.bucket();
        let deadline = Instant::now() + BUCKET_WAIT;
        for d in digests {
            let digest: Digest = d.parse().expect("a digest");
            while bucket.stat(kind, &digest).await.ok().flatten().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{d} ({kind:?}) not in the bucket after {BUCKET_WAIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Waits (bounded) until some replica has recorded `digest` as learned
    /// through `repository` of `upstream`.
    pub async fn wait_linked(&self, upstream: &str, repository: &str, digest: &str) {
        let bucket = self.bucket();
        let d: Digest = digest.parse().expect("a digest");
        let deadline = Instant::now() + BUCKET_WAIT;
        while !bucket
            .is_linked(upstream, repository, &d)
            .await
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "no link {upstream}/{repository} -> {digest} after {BUCKET_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Overwrites the object of `digest` with as many wrong bytes (each one
    /// flipped), straight through object_store: damage inside the store.
    pub async fn corrupt(&self, kind: Kind, digest: &str) {
        let raw = self.raw();
        let key = self.content_key(kind, digest);
        let bytes = raw
            .get(&key)
            .await
            .expect("the object to corrupt")
            .bytes()
            .await
            .expect("its bytes");
        let wrong: Vec<u8> = bytes.iter().map(|b| b ^ 0xff).collect();
        raw.put(&key, PutPayload::from(wrong))
            .await
            .expect("overwrite the object");
    }
}

/// Starts one replica against any S3 endpoint (a [`Cluster`]'s, or a
/// fake's), picking a free peer port (again, if another process took it).
pub fn start_replica(
    endpoint: &str,
    prefix: &str,
    id: &str,
    token_file: &std::path::Path,
    secret_file: &std::path::Path,
    upstreams: &[UpstreamEntry],
    opts: &ReplicaOptions,
) -> Result<Replica, Exited> {
    let mut last = None;
    for _ in 0..3 {
        let peer: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let extra = replica_config(endpoint, prefix, id, peer, token_file, secret_file, opts);
        match Regcache::try_start_with(upstreams, &extra) {
            Ok(rc) => {
                return Ok(Replica {
                    rc,
                    id: id.into(),
                    peer,
                })
            }
            Err(e) if e.log.contains("Address already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("three attempts"))
}

/// sha256 of a stream, as it passes (ring's assembly: fast in a debug build).
pub struct Hasher {
    ctx: ring::digest::Context,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// `(bytes seen, "sha256:<hex>")`.
    pub fn finish(self) -> (u64, String) {
        (
            self.len,
            format!("sha256:{}", hex::encode(self.ctx.finish().as_ref())),
        )
    }
}

/// How one client's GET of a blob ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    /// The whole body arrived and ended cleanly: its length and digest.
    Complete {
        status: u16,
        len: u64,
        digest: String,
    },
    /// The exchange broke (before the headers, or in the body, after
    /// `got` bytes): an abort, never a clean end.
    Aborted { got: u64, error: String },
}

/// GETs `url`, hashing the body as it arrives (memory stays bounded).
pub async fn pull(client: &reqwest::Client, url: &str) -> Pull {
    let mut response = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => {
            return Pull::Aborted {
                got: 0,
                error: e.to_string(),
            }
        }
    };
    let status = response.status().as_u16();
    let mut hasher = Hasher::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => hasher.update(&chunk),
            Ok(None) => {
                let (len, digest) = hasher.finish();
                return Pull::Complete {
                    status,
                    len,
                    digest,
                };
            }
            Err(e) => {
                return Pull::Aborted {
                    got: hasher.len,
                    error: e.to_string(),
                }
            }
        }
    }
}

/// Pushes a blob of `size` pseudo-random bytes (seeded by `seed`) into
/// `repo` of a real upstream: one monolithic upload, generated as it is
/// sent, so nothing of that size is ever in memory. Its digest.
pub fn push_generated_blob(registry: &Registry, repo: &str, size: u64, seed: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut hasher = Hasher::new();
    generate(size, seed, &mut |b| hasher.update(b));
    let (_, digest) = hasher.finish();

    let addr = registry.addr;
    let start = super::registry::http_request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Some(b""),
    )
    .expect("start an upload");
    assert_eq!(start.status, 202, "{}", registry.logs());
    let location = start.header("location").expect("Location").to_owned();
    let path = match location.find("/v2/") {
        Some(at) => location[at..].to_owned(),
        None => location,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the upstream");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "PUT {path}{sep}digest={digest} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    )
    .unwrap();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut s);
        generate(size, seed, &mut |b| w.write_all(b).expect("send the blob"));
        w.flush().unwrap();
    }
    let mut status = String::new();
    BufReader::new(&s).read_line(&mut status).unwrap();
    assert!(
        status.starts_with("HTTP/1.1 201"),
        "pushing {digest}: {status}\n{}",
        registry.logs()
    );
    digest
}

/// `size` pseudo-random bytes seeded by `seed`, handed to `sink` a MiB at
/// a time.
fn generate(size: u64, seed: &str, sink: &mut dyn FnMut(&[u8])) {
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        sink(&buf[..n]);
        left -= n as u64;
    }
}
