//! Image fixtures, generated locally and pushed into a [`Registry`] with
//! skopeo, plus skopeo helpers for pulling images back (through a proxy).
//!
//! Content is deterministic (a xorshift64* stream seeded from the fixture
//! name), so digests are the same on every run, and incompressible. Layers
//! are real `tar` archives wrapped in gzip made of *stored* (uncompressed)
//! deflate blocks: valid `tar+gzip` that costs no CPU to "compress".
//!
//! What was found about skopeo 1.9 / distribution 2.8 (and why the code is
//! the way it is):
//!
//! * c/image (skopeo) sniffs layer bytes, not media types. A layer that is
//!   not gzip/zstd is *compressed* on the way to a `docker://` or `oci:`
//!   destination, which changes its digest and the manifest's. Gzip layers
//!   are kept byte for byte. Hence the gzip wrapping (and `--preserve-digests`
//!   on the OCI pushes, so skopeo fails rather than silently rewriting).
//! * `skopeo copy --all --format v2s2` from an `oci:` layout holding an OCI
//!   index pushes a Docker manifest list of Docker schema2 manifests; the
//!   config and layer blobs are kept (same digests), the manifests are new.
//!   So no fixture needs a raw HTTP PUT.
//! * Pulling with `oci:` as destination converts Docker lists/manifests to
//!   OCI (new digests), and with `--preserve-digests` it fails outright
//!   ("Manifest list must be converted to type ...oci.image.index..."). The
//!   `dir:` transport with `--all` stores the top-level manifest bytes as
//!   `manifest.json`, each instance as `<hex>.manifest.json` and each blob as
//!   `<hex>`, unchanged for every media type: [`skopeo_copy_all`] uses `dir:`
//!   plus `--preserve-digests`, and [`read_dir_copy`] reads it back.
//! * c/image verifies every blob's digest while copying from `docker://`,
//!   so a proxy that serves wrong bytes makes the copy fail.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::registry::{http_request, skopeo_bin, Registry};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest media type the fixtures use, as one `Accept` value.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Payload bytes in the big layer by default: a bit over 50 MiB.
pub const BIG_LAYER_DEFAULT_PAYLOAD: u64 = 50 * 1024 * 1024 + 12_345;

/// Bound on any single skopeo invocation.
pub const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);

/// One platform manifest of an index / manifest list.
#[derive(Debug, Clone)]
pub struct ChildManifest {
    pub digest: String,
    pub media_type: String,
    pub os: String,
    pub architecture: String,
    /// Config then layers of this manifest.
    pub blobs: Vec<String>,
}

/// One image as the upstream registry serves it.
#[derive(Clone)]
pub struct Fixture {
    /// `oci-index`, `docker-list`, `docker-schema2` or `oci-image`.
    pub name: &'static str,
    pub repo: String,
    pub tag: String,
    /// Top-level manifest digest: `Docker-Content-Digest` of a HEAD with
    /// [`MANIFEST_ACCEPT`].
    pub digest: String,
    /// Top-level manifest media type (`Content-Type` of that HEAD).
    pub media_type: String,
    /// Top-level manifest bytes as served by the registry.
    pub manifest: Vec<u8>,
    /// Every config and layer digest, over all platforms, without repeats.
    pub blobs: Vec<String>,
    /// Digests of the platform manifests (empty for single images).
    pub child_manifests: Vec<String>,
    /// Details of the platform manifests (empty for single images).
    pub children: Vec<ChildManifest>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("name", &self.name)
            .field("repo", &self.repo)
            .field("tag", &self.tag)
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("manifest", &String::from_utf8_lossy(&self.manifest))
            .field("blobs", &self.blobs)
            .field("child_manifests", &self.child_manifests)
            .field("children", &self.children)
            .finish()
    }
}

impl Fixture {
    /// `<host>/repo:tag`, e.g. for `skopeo_copy_all(&f.reference(&proxy_host), ..)`.
    pub fn reference(&self, host: &str) -> String {
        format!("{host}/{}:{}", self.repo, self.tag)
    }
}

/// The four fixtures pushed by [`load_fixtures`].
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// `test/multiarch:v1`: OCI index, linux/amd64 + linux/arm64 OCI manifests.
    pub oci_index: Fixture,
    /// `test/dockerlist:v1`: Docker manifest list of two schema2 manifests.
    pub docker_list: Fixture,
    /// `test/schema2:v1`: a single Docker schema2 manifest.
    pub docker_schema2: Fixture,
    /// `test/big:v1`: a single OCI manifest with one big layer.
    pub oci_image: Fixture,
    /// The big layer of `oci_image`.
    pub big_layer_digest: String,
    /// Its size in bytes (the blob as stored and served, gzip framing included).
    pub big_layer_size: u64,
}

impl Fixtures {
    pub fn all(&self) -> [&Fixture; 4] {
        [
            &self.oci_index,
            &self.docker_list,
            &self.docker_schema2,
            &self.oci_image,
        ]
    }
}

/// Generates the four fixtures and pushes them into `registry` with skopeo
/// (the big layer has [`BIG_LAYER_DEFAULT_PAYLOAD`] payload bytes).
pub fn load_fixtures(registry: &Registry) -> Fixtures {
    load_fixtures_with_big_layer(registry, BIG_LAYER_DEFAULT_PAYLOAD)
}

/// Like [`load_fixtures`] with the big layer's payload size chosen.
pub fn load_fixtures_with_big_layer(registry: &Registry, big_payload: u64) -> Fixtures {
    let work = tempfile::Builder::new()
        .prefix("regcache-fixtures-")
        .tempdir()
        .expect("fixtures tempdir");
    let host = registry.host();

    struct Spec {
        name: &'static str,
        repo: &'static str,
        docker: bool,
        multiarch: bool,
        payload: u64,
    }
    let specs = [
        Spec {
            name: "oci-index",
            repo: "test/multiarch",
            docker: false,
            multiarch: true,
            payload: 0,
        },
        Spec {
            name: "docker-list",
            repo: "test/dockerlist",
            docker: true,
            multiarch: true,
            payload: 0,
        },
        Spec {
            name: "docker-schema2",
            repo: "test/schema2",
            docker: true,
            multiarch: false,
            payload: 0,
        },
        Spec {
            name: "oci-image",
            repo: "test/big",
            docker: false,
            multiarch: false,
            payload: big_payload,
        },
    ];
    let tag = "v1";

    // Generate and push all four concurrently; the big one dominates.
    let results: Vec<(Option<Descriptor>, Result<(), String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                let layout_dir = work.path().join(spec.name);
                let host = host.clone();
                s.spawn(move || {
                    let layout = OciLayout::create(&layout_dir).expect("create OCI layout");
                    let big = if spec.multiarch {
                        write_multiarch(&layout, spec.name, tag).expect("write fixture");
                        None
                    } else {
                        let sizes: Vec<u64> = if spec.payload > 0 {
                            vec![spec.payload]
                        } else {
                            vec![3000, 7000]
                        };
                        let (layers, _) =
                            write_single(&layout, spec.name, "amd64", &sizes, true, tag)
                                .expect("write fixture");
                        (spec.payload > 0).then(|| layers[0].clone())
                    };
                    let src = format!("oci:{}:{tag}", layout_dir.display());
                    let dst = format!("docker://{host}/{}:{tag}", spec.repo);
                    let mut args = vec!["copy", "--all", "--dest-tls-verify=false"];
                    if spec.docker {
                        args.extend(["--format", "v2s2"]);
                    } else {
                        args.push("--preserve-digests");
                    }
                    args.extend([src.as_str(), dst.as_str()]);
                    let r = skopeo(&args, SKOPEO_TIMEOUT).map(|_| ());
                    (big, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut big_layer = None;
    for (spec, (big, r)) in specs.iter().zip(results) {
        if let Err(e) = r {
            panic!(
                "pushing fixture {} failed: {e}\n{}",
                spec.name,
                registry.logs()
            );
        }
        if big.is_some() {
            big_layer = big;
        }
    }
    let big_layer = big_layer.expect("big layer descriptor");

    let fetch = |spec: &Spec| -> Fixture {
        describe(registry, spec.name, spec.repo, tag).unwrap_or_else(|e| {
            panic!(
                "reading back fixture {}: {e}\n{}",
                spec.name,
                registry.logs()
            )
        })
    };
    let fixtures = Fixtures {
        oci_index: fetch(&specs[0]),
        docker_list: fetch(&specs[1]),
        docker_schema2: fetch(&specs[2]),
        oci_image: fetch(&specs[3]),
        big_layer_digest: big_layer.digest.clone(),
        big_layer_size: big_layer.size,
    };
    let expect = [OCI_INDEX, DOCKER_LIST, DOCKER_MANIFEST, OCI_MANIFEST];
    for (f, mt) in fixtures.all().into_iter().zip(expect) {
        assert_eq!(
            f.media_type, mt,
            "fixture {} has the wrong media type",
            f.name
        );
    }
    assert!(
        fixtures
            .oci_image
            .blobs
            .contains(&fixtures.big_layer_digest),
        "big layer was rewritten on push"
    );
    fixtures
}

/// Reads an image back from the registry (HEAD for the digest, GET for the
/// body, then each child manifest) into a [`Fixture`].
pub fn describe(
    registry: &Registry,
    name: &'static str,
    repo: &str,
    tag: &str,
) -> Result<Fixture, String> {
    let top = registry_manifest(registry, repo, tag)?;
    let doc: Value = serde_json::from_slice(&top.body).map_err(|e| e.to_string())?;
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    if let Some(list) = doc.get("manifests").and_then(Value::as_array) {
        for m in list {
            let digest = str_field(m, "digest")?;
            let child = registry_manifest(registry, repo, &digest)?;
            let cdoc: Value = serde_json::from_slice(&child.body).map_err(|e| e.to_string())?;
            let cblobs = manifest_blobs(&cdoc)?;
            for b in &cblobs {
                if !blobs.contains(b) {
                    blobs.push(b.clone());
                }
            }
            let platform = m.get("platform").cloned().unwrap_or(Value::Null);
            children.push(ChildManifest {
                digest,
                media_type: child.media_type,
                os: platform["os"].as_str().unwrap_or_default().to_string(),
                architecture: platform["architecture"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                blobs: cblobs,
            });
        }
    } else {
        blobs = manifest_blobs(&doc)?;
    }
    Ok(Fixture {
        name,
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest: top.digest,
        media_type: top.media_type,
        manifest: top.body,
        blobs,
        child_manifests: children.iter().map(|c| c.digest.clone()).collect(),
        children,
    })
}

fn str_field(v: &Value, k: &str) -> Result<String, String> {
    v.get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("manifest entry without {k}: {v}"))
}

/// Config digest followed by layer digests of an image manifest.
pub fn manifest_blobs(doc: &Value) -> Result<Vec<String>, String> {
    let mut out = vec![str_field(&doc["config"], "digest")?];
    for l in doc["layers"].as_array().ok_or("manifest without layers")? {
        out.push(str_field(l, "digest")?);
    }
    Ok(out)
}

/// A manifest as a registry serves it.
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    /// `Docker-Content-Digest` of the HEAD.
    pub digest: String,
    /// `Content-Type` of the HEAD.
    pub media_type: String,
    /// Body of the GET; its sha256 is checked against `digest`.
    pub body: Vec<u8>,
}

/// HEAD then GET `/v2/<repo>/manifests/<reference>` with [`MANIFEST_ACCEPT`].
pub fn registry_manifest(
    registry: &Registry,
    repo: &str,
    reference: &str,
) -> Result<ManifestInfo, String> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let accept = [("Accept", MANIFEST_ACCEPT)];
    let head =
        http_request(registry.addr, "HEAD", &path, &accept, None).map_err(|e| e.to_string())?;
    if head.status != 200 {
        return Err(format!("HEAD {path}: {}", head.status));
    }
    let digest = head
        .header("Docker-Content-Digest")
        .ok_or("no Docker-Content-Digest")?
        .to_string();
    let media_type = head.header("Content-Type").unwrap_or_default().to_string();
    let get =
        http_request(registry.addr, "GET", &path, &accept, None).map_err(|e| e.to_string())?;
    if get.status != 200 {
        return Err(format!("GET {path}: {}", get.status));
    }
    if sha256_digest(&get.body) != digest {
        return Err(format!("GET {path}: body does not hash to {digest}"));
    }
    Ok(ManifestInfo {
        digest,
        media_type,
        body: get.body,
    })
}

// ---------------------------------------------------------------------------
// skopeo

/// Runs `skopeo --insecure-policy <args>` with a private HOME,
/// XDG_RUNTIME_DIR, TMPDIR and REGISTRY_AUTH_FILE (so the machine's state
/// does not matter), killing it after `timeout`. Ok(stdout) or Err(message
/// with stderr).
pub fn skopeo(args: &[&str], timeout: Duration) -> Result<String, String> {
    let env = tempfile::Builder::new()
        .prefix("regcache-skopeo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let e = env.path();
    for d in ["home", "run", "tmp"] {
        fs::create_dir_all(e.join(d)).map_err(|x| x.to_string())?;
    }
    fs::write(e.join("auth.json"), "{}").map_err(|x| x.to_string())?;
    let out_path = e.join("stdout");
    let err_path = e.join("stderr");
    let mut cmd = Command::new(skopeo_bin());
    cmd.arg("--insecure-policy")
        .args(args)
        .env("HOME", e.join("home"))
        .env("XDG_RUNTIME_DIR", e.join("run"))
        .env("XDG_CONFIG_HOME", e.join("home/.config"))
        .env("TMPDIR", e.join("tmp"))
        .env("REGISTRY_AUTH_FILE", e.join("auth.json"))
        .env_remove("DOCKER_CONFIG")
        .env_remove("CONTAINERS_REGISTRIES_CONF")
        .env_remove("CONTAINERS_POLICY_JSON")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).map_err(|x| x.to_string())?)
        .stderr(File::create(&err_path).map_err(|x| x.to_string())?);
    let mut child = cmd.spawn().map_err(|x| {
        format!(
            "spawn {}: {x} (run .ci/install-test-deps)",
            skopeo_bin().display()
        )
    })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|x| x.to_string())? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(stdout),
        Some(st) => Err(format!("skopeo {args:?} failed ({st}):\n{stderr}")),
        None => Err(format!(
            "skopeo {args:?} timed out after {timeout:?}:\n{stderr}"
        )),
    }
}

fn docker_ref(r: &str) -> String {
    if r.starts_with("docker://") {
        r.to_string()
    } else {
        format!("docker://{r}")
    }
}

/// `skopeo copy --all --preserve-digests --src-tls-verify=false
/// docker://<src_ref> dir:<dest_dir>`. `src_ref` is `host:port/repo:tag` or
/// `host:port/repo@sha256:..`; `dest_dir` must not exist or be empty. The
/// `dir:` transport keeps every manifest and blob byte for byte (unlike
/// `oci:`, see the module docs): read the result with [`read_dir_copy`].
/// Err carries skopeo's stderr.
pub fn skopeo_copy_all(src_ref: &str, dest_dir: &Path) -> Result<(), String> {
    let src = docker_ref(src_ref);
    let dst = format!("dir:{}", dest_dir.display());
    skopeo(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &src,
            &dst,
        ],
        SKOPEO_TIMEOUT,
    )
    .map(|_| ())
}

/// Raw top-level manifest via `skopeo inspect --raw --tls-verify=false`.
pub fn skopeo_inspect_raw(image_ref: &str) -> Result<Vec<u8>, String> {
    skopeo(
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &docker_ref(image_ref),
        ],
        SKOPEO_TIMEOUT,
    )
    .map(String::into_bytes)
}

/// Digest of the raw top-level manifest as skopeo sees it.
pub fn skopeo_inspect_digest(image_ref: &str) -> Result<String, String> {
    skopeo_inspect_raw(image_ref).map(|b| sha256_digest(&b))
}

/// Copies `reference` (every platform) with skopeo and asserts that what
/// arrived is `fixture`: the top-level manifest's digest and media type,
/// the platform manifests and the blobs.
pub fn assert_pulls(fixture: &Fixture, reference: &str) {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("image");
    skopeo_copy_all(reference, &dest).unwrap_or_else(|e| panic!("skopeo copy {reference}: {e}"));
    let got = read_dir_copy(&dest).unwrap();
    assert_eq!(got.manifest_digest, fixture.digest, "{reference}");
    assert_eq!(got.media_type, fixture.media_type, "{reference}");
    let mut children = fixture.child_manifests.clone();
    children.sort();
    assert_eq!(got.instance_digests, children, "{reference}");
    let mut blobs = fixture.blobs.clone();
    blobs.sort();
    assert_eq!(got.blob_digests, blobs, "{reference}");
}

/// [`assert_pulls`] of `fixture` from `host`, off the async runtime.
pub async fn assert_pulls_from(fixture: &Fixture, host: &str) {
    let (f, reference) = (fixture.clone(), fixture.reference(host));
    tokio::task::spawn_blocking(move || assert_pulls(&f, &reference))
        .await
        .unwrap();
}

/// What a `dir:` copy (from [`skopeo_copy_all`]) holds.
#[derive(Debug, Clone)]
pub struct DirCopy {
    /// sha256 of `manifest.json`, the top-level manifest's bytes.
    pub manifest_digest: String,
    /// Its `mediaType` field (empty if absent).
    pub media_type: String,
    /// Digests of the per-platform manifests (`<hex>.manifest.json`), sorted.
    pub instance_digests: Vec<String>,
    /// Digests of all blobs (configs and layers), sorted.
    pub blob_digests: Vec<String>,
}

/// Reads a `dir:` copy back, checking that every file hashes to its name.
pub fn read_dir_copy(dir: &Path) -> Result<DirCopy, String> {
    let manifest =
        fs::read(dir.join("manifest.json")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let doc: Value = serde_json::from_slice(&manifest).map_err(|e| e.to_string())?;
    let mut instance_digests = Vec::new();
    let mut blob_digests = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (hex, is_manifest) = match name.strip_suffix(".manifest.json") {
            Some(h) => (h.to_string(), true),
            None => (name.clone(), false),
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue; // manifest.json, version, signatures
        }
        let actual = sha256_file(&entry.path()).map_err(|e| e.to_string())?;
        let expected = format!("sha256:{hex}");
        if actual != expected {
            return Err(format!(
                "{}: content hashes to {actual}",
                entry.path().display()
            ));
        }
        if is_manifest {
            instance_digests.push(expected);
        } else {
            blob_digests.push(expected);
        }
    }
    instance_digests.sort();
    blob_digests.sort();
    Ok(DirCopy {
        manifest_digest: sha256_digest(&manifest),
        media_type: doc["mediaType"].as_str().unwrap_or_default().to_string(),
        instance_digests,
        blob_digests,
    })
}

// ---------------------------------------------------------------------------
// Hashing

/// `"sha256:<lowercase hex>"` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

// ---------------------------------------------------------------------------
// Content generation

/// xorshift64*: deterministic, fast, and its output does not compress.
pub struct Prng(u64);

impl Prng {
    /// Seeded from the sha256 of `seed`.
    pub fn new(seed: &str) -> Prng {
        let h = Sha256::digest(seed.as_bytes());
        let s = u64::from_le_bytes(h[..8].try_into().unwrap());
        Prng(s | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&v[..rest.len()]);
        }
    }
}

fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    t
}

/// Writer that hashes (sha256) and counts what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// gzip made of stored deflate blocks (RFC 1951 BTYPE=00): a valid gzip
/// stream whose size is the input's plus 5 bytes per 64 KiB plus 18.
/// Also hashes the uncompressed stream (the layer's diff_id).
struct StoredGzip<W: Write> {
    out: HashingWriter<W>,
    buf: Vec<u8>,
    crc: u32,
    table: [u32; 256],
    isize: u64,
    diff: Sha256,
}

const STORED_MAX: usize = 65_535;

impl<W: Write> StoredGzip<W> {
    fn new(inner: W) -> io::Result<Self> {
        let mut out = HashingWriter {
            inner,
            hash: Sha256::new(),
            len: 0,
        };
        // magic, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown)
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(StoredGzip {
            out,
            buf: Vec::with_capacity(STORED_MAX),
            crc: 0xFFFF_FFFF,
            table: crc32_table(),
            isize: 0,
            diff: Sha256::new(),
        })
    }

    fn block(&mut self, last: bool) -> io::Result<()> {
        let len = self.buf.len() as u16;
        let mut hdr = [u8::from(last), 0, 0, 0, 0];
        hdr[1..3].copy_from_slice(&len.to_le_bytes());
        hdr[3..5].copy_from_slice(&(!len).to_le_bytes());
        self.out.write_all(&hdr)?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.diff.update(data);
        self.isize += data.len() as u64;
        for &b in data {
            self.crc = self.table[((self.crc ^ b as u32) & 0xff) as usize] ^ (self.crc >> 8);
        }
        while !data.is_empty() {
            let n = (STORED_MAX - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == STORED_MAX {
                self.block(false)?;
            }
        }
        Ok(())
    }

    /// Returns (diff_id, blob digest, blob size).
    fn finish(mut self) -> io::Result<(String, String, u64)> {
        self.block(true)?;
        let crc = !self.crc;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.isize as u32).to_le_bytes())?;
        self.out.flush()?;
        Ok((
            format!("sha256:{}", hex::encode(self.diff.finalize())),
            format!("sha256:{}", hex::encode(self.out.hash.finalize())),
            self.out.len,
        ))
    }
}

/// A ustar header for a regular file.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8], v: u64, width: usize| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[..width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644, 8); // mode
    octal(&mut h[108..116], 0, 8); // uid
    octal(&mut h[116..124], 0, 8); // gid
    octal(&mut h[124..136], size, 12); // size
    octal(&mut h[136..148], 0, 12); // mtime
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// An OCI descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A minimal OCI image layout writer.
pub struct OciLayout {
    pub dir: PathBuf,
}

impl OciLayout {
    pub fn create(dir: &Path) -> io::Result<OciLayout> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> io::Result<Descriptor> {
        let digest = sha256_digest(bytes);
        fs::write(self.blob_path(&digest), bytes)?;
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
        })
    }

    pub fn put_json(&self, media_type: &str, v: &Value) -> io::Result<Descriptor> {
        self.put_blob(media_type, &serde_json::to_vec(v).unwrap())
    }

    /// A `tar+gzip` layer holding one file of `payload` pseudo-random bytes
    /// seeded by `seed`. Returns (layer descriptor, diff_id).
    pub fn put_random_layer(&self, seed: &str, payload: u64) -> io::Result<(Descriptor, String)> {
        let tmp = self.dir.join(format!(
            "layer-{}.tmp",
            hex::encode(Sha256::digest(seed.as_bytes()))
        ));
        let mut gz = StoredGzip::new(BufWriter::with_capacity(1 << 20, File::create(&tmp)?))?;
        gz.put(&tar_header("data/random.bin", payload))?;
        let mut rng = Prng::new(seed);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = payload;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            gz.put(&buf[..n])?;
            left -= n as u64;
        }
        let pad = (512 - (payload % 512) as usize) % 512;
        gz.put(&vec![0u8; pad + 1024])?;
        let (diff_id, digest, size) = gz.finish()?;
        fs::rename(&tmp, self.blob_path(&digest))?;
        Ok((
            Descriptor {
                media_type: OCI_LAYER_GZIP.to_string(),
                digest,
                size,
            },
            diff_id,
        ))
    }

    /// Writes `index.json` naming `manifest` as `tag`.
    pub fn set_index(&self, manifest: &Descriptor, tag: &str) -> io::Result<()> {
        let mut d = manifest.to_json();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [d]});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
    }
}

/// One OCI image (config + layers of the given payload sizes). Returns the
/// layer descriptors and the manifest descriptor; when `tag_it`, the layout's
/// index.json names the manifest `tag`.
fn write_single(
    layout: &OciLayout,
    name: &str,
    arch: &str,
    layer_payloads: &[u64],
    tag_it: bool,
    tag: &str,
) -> io::Result<(Vec<Descriptor>, Descriptor)> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (i, &size) in layer_payloads.iter().enumerate() {
        let (d, diff) = layout.put_random_layer(&format!("{name}/{arch}/layer{i}"), size)?;
        layers.push(d);
        diff_ids.push(diff);
        history.push(json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("regcache fixture {name} layer {i}")}));
    }
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/true"],
                   "Labels": {"regcache.fixture": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config = layout.put_json(OCI_CONFIG, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    });
    let manifest = layout.put_json(OCI_MANIFEST, &manifest)?;
    if tag_it {
        layout.set_index(&manifest, tag)?;
    }
    Ok((layers, manifest))
}

/// An OCI index of linux/amd64 and linux/arm64 images, two small layers each.
fn write_multiarch(layout: &OciLayout, name: &str, tag: &str) -> io::Result<Descriptor> {
    let mut manifests = Vec::new();
    for (arch, sizes) in [("amd64", [2000u64, 5000]), ("arm64", [2500, 4500])] {
        let (_, m) = write_single(layout, name, arch, &sizes, false, tag)?;
        let mut d = m.to_json();
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        manifests.push(d);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let index = layout.put_json(OCI_INDEX, &index)?;
    layout.set_index(&index, tag)?;
    Ok(index)
}
