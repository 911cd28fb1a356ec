//! Runs the real `regcache` binary for end-to-end tests: its own config
//! file, its own cache directory, free ports on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::registry::{free_port, http_get};

/// One upstream entry for the generated config.
pub struct UpstreamEntry {
    pub name: String,
    pub url: String,
    pub aliases: Vec<String>,
    pub tag_ttl: String,
    /// More `key = value` lines for this upstream.
    pub extra: Vec<String>,
}

impl UpstreamEntry {
    pub fn new(name: &str, url: &str) -> UpstreamEntry {
        UpstreamEntry {
            name: name.into(),
            url: url.into(),
            aliases: Vec::new(),
            tag_ttl: "5m".into(),
            extra: Vec::new(),
        }
    }

    /// Any other upstream key, the value written as TOML (`"7d"`, `true`, `3`).
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        self.extra.push(format!("{key} = {toml_value}"));
        self
    }

    pub fn alias(mut self, alias: &str) -> Self {
        self.aliases.push(alias.into());
        self
    }

    pub fn tag_ttl(mut self, ttl: &str) -> Self {
        self.tag_ttl = ttl.into();
        self
    }
}

pub struct Regcache {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    /// `cache_dir`: under `dir` unless a test put it elsewhere.
    cache: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Regcache {
    /// Starts regcache with these upstreams; the first is the default.
    pub fn start(upstreams: &[UpstreamEntry]) -> Regcache {
        Self::start_with(upstreams, "")
    }

    /// `extra` is appended to the top-level keys of the config.
    pub fn start_with(upstreams: &[UpstreamEntry], extra: &str) -> Regcache {
        Self::start_with_cache_in(upstreams, extra, None)
    }

    /// As [`Regcache::start_with`], with `cache_dir` at `cache` (a small
    /// filesystem, say) when given.
    pub fn start_with_cache_in(
        upstreams: &[UpstreamEntry],
        extra: &str,
        cache: Option<PathBuf>,
    ) -> Regcache {
        Self::start_full(upstreams, extra, cache, Ipv4Addr::LOCALHOST.into())
    }

    /// As [`Regcache::start_with`], with `admin_listen` on `admin_ip` (a
    /// non-loopback address of this machine, to be reached as another host).
    pub fn start_with_admin_on(
        upstreams: &[UpstreamEntry],
        extra: &str,
        admin_ip: IpAddr,
    ) -> Regcache {
        Self::start_full(upstreams, extra, None, admin_ip)
    }

    /// As [`Regcache::start_with`], for a config that may stop the start:
    /// `Err` with the exit status and the log when the process exits first.
    pub fn try_start_with(upstreams: &[UpstreamEntry], extra: &str) -> Result<Regcache, Exited> {
        Self::try_start_full(upstreams, extra, None, Ipv4Addr::LOCALHOST.into())
    }

    fn start_full(
        upstreams: &[UpstreamEntry],
        extra: &str,
        cache: Option<PathBuf>,
        admin_ip: IpAddr,
    ) -> Regcache {
        match Self::try_start_full(upstreams, extra, cache, admin_ip) {
            Ok(rc) => rc,
            Err(e) => panic!(
                "regcache exited at startup ({:?}); log:\n{}",
                e.status, e.log
            ),
        }
    }

    fn try_start_full(
        upstreams: &[UpstreamEntry],
        extra: &str,
        cache: Option<PathBuf>,
        admin_ip: IpAddr,
    ) -> Result<Regcache, Exited> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let cache = cache.unwrap_or_else(|| dir.join("cache"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = SocketAddr::new(admin_ip, free_port());
        let config_path = dir.join("regcache.toml");
        let mut rc = Regcache {
            child: None,
            addr,
            admin,
            log_path: dir.join("regcache.log"),
            config_path,
            dir,
            cache,
            _tmp: Some(tmp),
        };
        // The ports were free when picked, but another test's process can
        // take one before regcache binds it: then pick again.
        let mut last = None;
        for _ in 0..3 {
            rc.write_config(upstreams, extra);
            match rc.try_spawn() {
                Ok(()) => return Ok(rc),
                Err(e) if e.log.contains("Address already in use") => {
                    rc.addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                    rc.admin = SocketAddr::new(admin_ip, free_port());
                    let _ = std::fs::remove_file(&rc.log_path);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// Writes the config file; the first upstream is the default.
    pub fn write_config(&self, upstreams: &[UpstreamEntry], extra: &str) {
        let mut config = format!(
            "listen = \"{}\"\nadmin_listen = \"{}\"\ncache_dir = \"{}\"\ndefault_upstream = \"{}\"\n{extra}\n",
            self.addr,
            self.admin,
            self.cache_dir().display(),
            upstreams[0].name
        );
        for u in upstreams {
            let aliases: Vec<String> = u.aliases.iter().map(|a| format!("{a:?}")).collect();
            config.push_str(&format!(
                "\n[[upstreams]]\nname = {:?}\nurl = {:?}\naliases = [{}]\ntag_ttl = {:?}\n{}\n",
                u.name,
                u.url,
                aliases.join(", "),
                u.tag_ttl,
                u.extra.join("\n")
            ));
        }
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// Sends SIGHUP (reload the config file).
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// POST to the admin listener; the status code.
    pub fn admin_post(&self, path: &str) -> u16 {
        super::registry::http_request(self.admin, "POST", path, &[], Some(b""))
            .map(|r| r.status)
            .unwrap_or(0)
    }

    /// Runs `regcache <args> --config <this config>` to completion (bounded
    /// at two minutes); the CLI talks to this daemon when it runs, else to
    /// its cache directory.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let child = Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn regcache cli");
        // A watchdog bounds the run; output is read as it comes (a full
        // pipe must not stall the child).
        let pid = child.id();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let done = done.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if Instant::now() > deadline {
                        let _ = Command::new("kill")
                            .arg("-KILL")
                            .arg(pid.to_string())
                            .status();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let out = child.wait_with_output().expect("cli output");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = watchdog.join();
        CliOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the daemon again after [`Regcache::terminate`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.spawn();
    }

    /// Blob files in the cache directory, as digests.
    pub fn cached_blobs(&self) -> std::collections::BTreeSet<String> {
        self.cached_files("blobs")
    }

    /// Manifest files in the cache directory, as digests.
    pub fn cached_manifests(&self) -> std::collections::BTreeSet<String> {
        self.cached_files("manifests")
    }

    fn cached_files(&self, kind: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let base = self.cache_dir().join(kind).join("sha256");
        for shard in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.insert(format!("sha256:{}", f.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// A JSON answer of the admin listener.
    pub fn admin_json(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let body = if method == "GET" {
            None
        } else {
            Some(&b""[..])
        };
        let r = super::registry::http_request(self.admin, method, path, &[], body)
            .expect("admin request");
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache.clone()
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!(
                "regcache exited at startup ({:?}); log:\n{}",
                e.status, e.log
            );
        }
    }

    /// Starts the daemon and waits until it serves; `Err` with its exit
    /// status and log when it exits first.
    fn try_spawn(&mut self) -> Result<(), Exited> {
        // The log is appended across restarts: wait for a new line.
        let started_before = self.log().matches("regcache serving").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_regcache"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,regcache=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn regcache");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(Exited {
                    status,
                    log: self.log(),
                });
            }
            // Its own log line first: another process on the admin port
            // could answer the health check too.
            if self.log().matches("regcache serving").count() > started_before
                && http_get(self.admin, "/healthz")
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "regcache did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port`, as skopeo references want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default()
    }

    /// The value of one sample line (`name{labels}`) in `/metrics`, 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// How many times `needle` occurs in the log (kept across restarts).
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits (bounded) until `needle` occurs in the log `count` times.
    pub async fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "waited for {needle:?} x{count}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGHUP and waits for a new log line saying how it went:
    /// "config reloaded" or "reload refused".
    pub async fn sighup_and_wait(&self, outcome: &str) {
        let before = self.log_count(outcome);
        self.sighup();
        self.wait_for_log_count(outcome, before + 1).await;
    }

    /// Waits (bounded) until no fill is running: a client can have its
    /// whole body before the fill has made the file durable and counted it.
    pub fn wait_for_fills(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric("regcache_fills_in_progress") > 0.0 {
            assert!(Instant::now() < deadline, "fills still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn index_path(&self) -> PathBuf {
        self.cache_dir().join("index")
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.cache_dir()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.cache_dir().join("tmp")
    }
}

/// A daemon that exited before it served: how, and what it logged.
#[derive(Debug)]
pub struct Exited {
    pub status: std::process::ExitStatus,
    pub log: String,
}

/// What a CLI run printed, and its exit code.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl Drop for Regcache {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- regcache log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}
