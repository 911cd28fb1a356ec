//! End-to-end benchmark: regcache against the CNCF distribution registry in
//! proxy mode (Debian's `docker-registry`, "the peer"), both pulling through
//! from the same real `docker-registry` upstream, all on 127.0.0.1.
//!
//! Run: `cargo bench --bench e2e` (needs `docker-registry` and `skopeo`,
//! see `.ci/install-test-deps`; nginx is optional: with it, a warm pull is
//! also compared with nginx `sendfile` of the same file). About 2 minutes
//! on 2 cores, after the release build. Prints one table and writes it as
//! markdown to `target/bench-e2e.md`. Other work on the machine skews every
//! throughput figure (the table records the load average); the proxy CPU
//! rows are the least sensitive to it.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.
//!
//! Knobs (environment): `REGCACHE_BENCH_RUNS` (runs per figure, default 5,
//! at least 5 are advised), `REGCACHE_BENCH_WARM_RUNS` (warm pulls, default
//! 3 × runs: they are short and noisy), `REGCACHE_BENCH_BLOB_MIB` (default 200),
//! `REGCACHE_BENCH_LOAD_SECS` (manifest load per run, default 5),
//! `REGCACHE_BENCH_CLIENTS` (concurrent cold pulls, default 20),
//! `REGCACHE_BENCH_CONNS` (manifest load connections, default 16),
//! `REGCACHE_BENCH_BIN` (the regcache binary to measure, default the one
//! this bench was built with: a variant build, e.g. another chunk size).
//! The cross-replica cold stampede (`e2e/cluster.rs`, after the table):
//! `REGCACHE_BENCH_CLUSTER=0` skips it, `REGCACHE_BENCH_ONLY=cluster` runs
//! only it; its own knobs are in that file.
//!
//! How it measures:
//! * Every proxy runs with its defaults as deployed: regcache at log level
//!   info (one access line per request), the peer at level info with its
//!   access log on. The upstream too (its request counts come from its
//!   access log, read after the figures settle).
//! * Runs alternate regcache / peer (A B A B ...); each figure is the median
//!   of its runs; every run's value is listed under the table.
//! * Cold runs start the proxy anew on an empty cache directory, after a
//!   `sync` so one run's write-back does not land in the next.
//! * The blob client is a blocking HTTP/1.1 client reading through a 1 MiB
//!   buffer and discarding the bytes (the byte count is checked); one warm
//!   pull per proxy is hashed to check the content, outside the timings.
//! * The manifest load client is raw HTTP/1.1 over keep-alive connections on
//!   one thread (a current-thread tokio runtime), so on 2 cores the client
//!   takes at most one.
//! * Peak RSS is VmHWM from /proc/<pid>/status: for the concurrent cold
//!   pulls, of a proxy started fresh for each run; for the manifest load, of
//!   a proxy started fresh for that phase (so it covers startup, warm-up and
//!   all runs of that phase).

#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "../tests/common/mod.rs"]
pub mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::images::{load_fixtures_with_big_layer, MANIFEST_ACCEPT};
use common::registry::{free_port, http_get, parse_access_line, Registry};
use regcache::registry::Sha256Hasher;

const MIB: f64 = 1024.0 * 1024.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Child processes: every one this bench starts is registered here, so the
// watchdog can end them (by pid) if the run ever overstays its bound.

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static ABORTED: AtomicBool = AtomicBool::new(false);

fn register(pid: u32) {
    CHILDREN.lock().unwrap().push(pid);
}

fn unregister(pid: u32) {
    CHILDREN.lock().unwrap().retain(|&p| p != pid);
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
    unregister(child.id());
}

/// Ends the bench if it runs past `limit`: kills the processes it started
/// (so the main thread's requests fail and it unwinds, dropping the
/// upstream), then exits.
fn start_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        ABORTED.store(true, Ordering::SeqCst);
        eprintln!("e2e: watchdog: still running after {limit:?}; stopping");
        for pid in CHILDREN.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        std::thread::sleep(Duration::from_secs(30));
        std::process::exit(2);
    });
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn wait_ready(child: &mut Child, what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited at startup ({st}):\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if ready() {
            return;
        }
        if Instant::now() > deadline {
            kill_child(child);
            panic!(
                "{what} not ready after 20 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// CPU time (user + system) a process has used so far, in milliseconds,
/// threads that have exited included. Resolution: one clock tick (10 ms),
/// so per-pull figures are means over many pulls.
fn cpu_ms(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) * 1000.0 / clock_ticks_per_sec(),
        _ => f64::NAN,
    }
}

fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn mean(v: &[f64]) -> f64 {
    let s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        f64::NAN
    } else {
        s.iter().sum::<f64>() / s.len() as f64
    }
}

/// Peak resident set size of a process, in MiB.
fn vm_hwm_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn sync_disks() {
    let _ = Command::new("sync").status();
}

// ---------------------------------------------------------------------------
// The two proxies.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Regcache,
    Peer,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Regcache => "regcache",
            Kind::Peer => "peer",
        }
    }
}

/// A proxy process with its own directory (config, cache, logs), removed
/// on drop.
struct Proxy {
    kind: Kind,
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// Starts `regcache serve` on `config` (written into `dir`, its log beside
/// it) with none of this environment's `REGCACHE_*`/`AWS_*` variables, and
/// waits for its admin listener's `/healthz`.
fn spawn_regcache(dir: &Path, config: &str, what: &str, admin: SocketAddr) -> Child {
    let config_path = dir.join("regcache.toml");
    fs::write(&config_path, config).unwrap();
    let log_path = dir.join("regcache.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(regcache_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("REGCACHE_") || k.starts_with("AWS_") {
            cmd.env_remove(&*k);
        }
    }
    let mut child = cmd.spawn().expect("spawn regcache");
    register(child.id());
    wait_ready(&mut child, what, &log_path, || {
        http_get(admin, "/healthz").is_ok_and(|r| r.status == 200)
    });
    child
}

/// The regcache binary under measurement.
fn regcache_bin() -> PathBuf {
    std::env::var_os("REGCACHE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_regcache")))
}

impl Proxy {
    fn start(kind: Kind, upstream_url: &str) -> Proxy {
        match kind {
            Kind::Regcache => Self::start_regcache(upstream_url),
            Kind::Peer => Self::start_peer(upstream_url),
        }
    }

    fn start_regcache(upstream_url: &str) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("regcache-bench-rc-")
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = format!(
            "listen = \"{addr}\"\nadmin_listen = \"{admin}\"\ncache_dir = \"{}\"\n\
             default_upstream = \"local\"\n\n[[upstreams]]\nname = \"local\"\nurl = \"{upstream_url}\"\n\
             tag_ttl = \"5m\"\n",
            dir.path().join("cache").display()
        );
        let child = spawn_regcache(dir.path(), &config, "regcache", admin);
        Proxy {
            kind: Kind::Regcache,
            addr,
            child,
            dir,
        }
    }

    fn start_peer(upstream_url: &str) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("regcache-bench-peer-")
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // Debian's default config, with the proxy section: info logs and
        // the access log on, in-memory blob descriptor cache.
        let config = format!(
            "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: {addr}
  secret: regcache-bench-secret
proxy:
  remoteurl: {upstream_url}
",
            storage = dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("access.log")).unwrap())
            .stderr(fs::File::create(&log_path).unwrap());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn docker-registry (peer)");
        register(child.id());
        wait_ready(&mut child, "peer docker-registry", &log_path, || {
            http_get(addr, "/v2/").is_ok_and(|r| r.status == 200)
        });
        Proxy {
            kind: Kind::Peer,
            addr,
            child,
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_peak_mib(&self) -> f64 {
        vm_hwm_mib(self.pid())
    }

    fn log_tail(&self) -> String {
        let name = match self.kind {
            Kind::Regcache => "regcache.log",
            Kind::Peer => "registry.log",
        };
        let log = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        // Without backtrace frames, so a panic message stays in view.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("at ")
                    || t.split_once(": ")
                        .is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
            })
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "--- {} log, last lines ({}) ---\n{}",
                self.kind.label(),
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}

/// nginx serving the upstream's blob file with sendfile: the ceiling for a
/// warm pull on this machine. Foreground, one process, its own prefix.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(bin: &Path, file: &Path) -> Result<Nginx, String> {
        let dir = tempfile::Builder::new()
            .prefix("regcache-bench-nginx-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        for sub in ["tmp", "logs"] {
            fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
        }
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let conf = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen {addr};
    location = /blob {{
      alias {file};
      default_type application/octet-stream;
    }}
  }}
}}
",
            d = d.display(),
            file = file.display()
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let log_path = d.join("logs/stderr.log");
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(d.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        register(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                unregister(child.id());
                return Err(format!(
                    "nginx exited ({st}): {}{}",
                    fs::read_to_string(&log_path).unwrap_or_default(),
                    fs::read_to_string(d.join("logs/error.log")).unwrap_or_default()
                ));
            }
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                return Err("nginx did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(Nginx {
            addr,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

// ---------------------------------------------------------------------------
// A throttled link to the upstream: a TCP relay whose upstream-to-client
// direction shares one token bucket across all its connections, as a WAN
// link does. Threads, blocking I/O; ends when the bench does.

struct Throttle {
    addr: SocketAddr,
}

/// Tokens are bytes; refilled continuously at `rate` bytes/s, at most one
/// burst of `BURST` banked.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

const BURST: f64 = 256.0 * 1024.0;

impl Bucket {
    /// Waits until `n` bytes may pass.
    fn take(bucket: &Mutex<Bucket>, n: usize) {
        loop {
            let wait = {
                let mut b = bucket.lock().unwrap();
                let now = Instant::now();
                b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * b.rate).min(BURST);
                b.at = now;
                if b.tokens >= n as f64 {
                    b.tokens -= n as f64;
                    return;
                }
                (n as f64 - b.tokens) / b.rate
            };
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

impl Throttle {
    fn start(upstream: SocketAddr, bytes_per_sec: f64) -> Throttle {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind throttle");
        let addr = listener.local_addr().expect("throttle addr");
        let bucket = Arc::new(Mutex::new(Bucket {
            rate: bytes_per_sec,
            tokens: 0.0,
            at: Instant::now(),
        }));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                // Requests pass freely.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (c2, s2);
                    let _ = io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
                let bucket = bucket.clone();
                std::thread::spawn(move || {
                    let (mut from, mut to) = (server, client);
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        Bucket::take(&bucket, n);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Throttle { addr }
    }
}

/// What hashing costs on this machine, as the floor of a verifying fill:
/// the fastest of three sha256 passes over `bytes`, in ms.
fn sha256_ms(bytes: &[u8]) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let mut h = Sha256Hasher::default();
            for chunk in bytes.chunks(1 << 20) {
                h.update(chunk);
            }
            std::hint::black_box(h.finish());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

// ---------------------------------------------------------------------------
// Blob client: blocking HTTP/1.1, one connection per pull, 1 MiB reads
// straight into BufReader's buffer and discarded.

struct Pull {
    bytes: u64,
    secs: f64,
    /// From the connect to the first byte of the body, seconds.
    ttfb: f64,
    digest: Option<String>,
}

impl Pull {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB / self.secs
    }
}

fn pull(addr: SocketAddr, path: &str, hash: bool) -> io::Result<Pull> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let started = Instant::now();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nUser-Agent: regcache-bench\r\nConnection: close\r\n\r\n"
    );
    (&s).write_all(req.as_bytes())?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("eof in headers".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<u64>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    if status != 200 {
        let mut body = Vec::new();
        let _ = r.take(4096).read_to_end(&mut body);
        return Err(bad(format!(
            "GET {path}: status {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    // The body's first byte (it may have come with the headers).
    r.fill_buf()?;
    let ttfb = started.elapsed().as_secs_f64();
    let mut hasher = hash.then(Sha256Hasher::default);
    // Reads and discards up to `n` bytes (u64::MAX: to EOF).
    let mut discard = |r: &mut BufReader<TcpStream>, n: u64| -> io::Result<u64> {
        let mut got = 0u64;
        while got < n {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min((n - got) as usize);
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..take]);
            }
            r.consume(take);
            got += take as u64;
        }
        Ok(got)
    };
    let bytes = if chunked {
        let mut total = 0;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            if discard(&mut r, size)? != size {
                return Err(bad("eof in chunk".into()));
            }
            total += size;
            line.clear();
            r.read_line(&mut line)?;
        }
        total
    } else if let Some(n) = length {
        let got = discard(&mut r, n)?;
        if got != n {
            return Err(bad(format!("short body: {got} of {n} bytes")));
        }
        got
    } else {
        discard(&mut r, u64::MAX)?
    };
    let secs = started.elapsed().as_secs_f64();
    Ok(Pull {
        bytes,
        secs,
        ttfb,
        digest: hasher.map(|h| h.finish().to_string()),
    })
}

fn pull_checked(addr: SocketAddr, path: &str, size: u64, what: &str) -> Pull {
    let p = pull(addr, path, false).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(p.bytes, size, "{what}: wrong byte count");
    p
}

/// `n` clients pull `path` at once (each its own connection and thread);
/// returns the wall time from the common start to the last byte.
fn concurrent_pulls(addr: SocketAddr, path: &str, size: u64, n: usize) -> Result<f64, String> {
    concurrent_pulls_each(addr, path, size, n).map(|(wall, _)| wall)
}

/// As [`concurrent_pulls`], with each client's own throughput (MiB/s).
fn concurrent_pulls_each(
    addr: SocketAddr,
    path: &str,
    size: u64,
    n: usize,
) -> Result<(f64, Vec<f64>), String> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let path = path.to_string();
            std::thread::spawn(move || {
                barrier.wait();
                pull(addr, &path, false)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut each = Vec::new();
    for h in handles {
        match h.join().expect("client thread") {
            Ok(p) if p.bytes == size => each.push(p.mib_s()),
            Ok(p) => errors.push(format!("short body: {} of {size}", p.bytes)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if errors.is_empty() {
        Ok((wall, each))
    } else {
        Err(format!("{} of {n} pulls failed: {errors:?}", errors.len()))
    }
}

// ---------------------------------------------------------------------------
// Manifest load client: raw HTTP/1.1 on keep-alive connections, one thread.

struct Load {
    requests: u64,
    errors: u64,
    secs: f64,
    /// Microseconds, sorted.
    latencies: Vec<u32>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i] as f64 / 1000.0
    }
}

fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Content-Length of a header block (lowercase-insensitive search).
fn header_content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

async fn load_connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    expect_len: usize,
    deadline: Instant,
    budget: Arc<AtomicU64>,
) -> io::Result<(Vec<u32>, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() >= deadline
            || budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_err()
        {
            break;
        }
        let t0 = Instant::now();
        s.write_all(&request).await?;
        let mut filled = 0usize;
        let (head_end, body_len, ok) = loop {
            let n = s.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            filled += n;
            if let Some(p) = find_subslice(&buf[..filled], b"\r\n\r\n") {
                let head = &buf[..p];
                let ok = head.starts_with(b"HTTP/1.1 200");
                let len = header_content_length(head).unwrap_or(0);
                break (p + 4, len, ok);
            }
            if filled == buf.len() {
                return Err(io::Error::other("response headers too large"));
            }
        };
        let total = head_end + body_len;
        if total > buf.len() {
            buf.resize(total, 0);
        }
        while filled < total {
            let n = s.read(&mut buf[filled..total]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
            }
            filled += n;
        }
        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if !ok || body_len != expect_len {
            errors += 1;
        }
    }
    Ok((lat, errors))
}

fn manifest_load(
    addr: SocketAddr,
    path: &str,
    expect_len: usize,
    conns: usize,
    duration: Duration,
    max_requests: u64,
) -> Result<Load, String> {
    let request = Arc::new(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {MANIFEST_ACCEPT}\r\nUser-Agent: regcache-bench\r\n\r\n"
        )
        .into_bytes(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let budget = Arc::new(AtomicU64::new(max_requests));
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                tokio::spawn(load_connection(
                    addr,
                    request.clone(),
                    expect_len,
                    deadline,
                    budget.clone(),
                ))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut failures = Vec::new();
        for t in tasks {
            // A request still open long after the deadline is a failure.
            match tokio::time::timeout(duration + Duration::from_secs(30), t).await {
                Ok(Ok(Ok((lat, e)))) => {
                    latencies.extend(lat);
                    errors += e;
                }
                Ok(Ok(Err(e))) => failures.push(e.to_string()),
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(_) => failures.push("connection hung".into()),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if !failures.is_empty() {
            return Err(format!(
                "{} connections failed: {failures:?}",
                failures.len()
            ));
        }
        latencies.sort_unstable();
        Ok(Load {
            requests: latencies.len() as u64,
            errors,
            secs,
            latencies,
        })
    })
}

// ---------------------------------------------------------------------------
// Upstream request counting, from its access log. A line is written when the
// handler returns, so counts are read once they have stopped changing.

fn upstream_requests(up: &Registry) -> Vec<(String, String)> {
    up.access_log()
        .lines()
        .filter_map(parse_access_line)
        .map(|(m, u, _)| (m, u))
        .filter(|(_, u)| !u.starts_with("/v2/?regcache-test-"))
        .collect()
}

fn settled_requests(up: &Registry) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = upstream_requests(up);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = upstream_requests(up);
        if now.len() == last.len() || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn count_since(
    before: usize,
    after: &[(String, String)],
    method: &str,
    path_contains: &str,
) -> usize {
    after[before.min(after.len())..]
        .iter()
        .filter(|(m, u)| m == method && u.contains(path_contains))
        .count()
}

// ---------------------------------------------------------------------------
// Results.

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

#[derive(Default)]
struct Series {
    regcache: Vec<f64>,
    peer: Vec<f64>,
    reference: Vec<f64>,
}

impl Series {
    fn push(&mut self, kind: Kind, v: f64) {
        match kind {
            Kind::Regcache => self.regcache.push(v),
            Kind::Peer => self.peer.push(v),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if (v.fract() == 0.0 && v.abs() < 1e9) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ")
}

struct Row {
    figure: String,
    regcache: String,
    peer: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

fn row(
    figure: impl Into<String>,
    regcache: f64,
    peer: f64,
    ratio: f64,
    target: &str,
    met: Option<bool>,
) -> Row {
    Row {
        figure: figure.into(),
        regcache: fmt_num(regcache),
        peer: fmt_num(peer),
        ratio: if ratio.is_nan() {
            "—".into()
        } else if ratio < 0.1 {
            format!("{ratio:.4}×")
        } else {
            format!("{ratio:.2}×")
        },
        target: target.into(),
        met,
    }
}

/// 1-minute load average, and the raw line.
fn loadavg() -> (f64, String) {
    let raw = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = raw
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    (one, raw.trim().to_string())
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / MIB))
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cmd_out = |prog: &str, args: &[&str]| -> String {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if s.is_empty() {
                    s = String::from_utf8_lossy(&o.stderr).trim().to_string();
                }
                s
            })
            .unwrap_or_default()
    };
    let date = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rev = cmd_out(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    vec![
        ("date".into(), date),
        ("cpu".into(), format!("{model}, {cores} cores")),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        (
            "regcache".into(),
            format!(
                "{} ({})",
                regcache_bin().display(),
                if rev.is_empty() { "no git".into() } else { rev }
            ),
        ),
        (
            "peer / upstream".into(),
            cmd_out("docker-registry", &["--version"]),
        ),
    ]
}

// ---------------------------------------------------------------------------

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: benchmark only; run `cargo bench --bench e2e` (skipped in test mode)");
        return;
    }
    common::registry::require_binaries();
    let runs = env_u64("REGCACHE_BENCH_RUNS", 5).max(1) as usize;
    let blob_mib = env_u64("REGCACHE_BENCH_BLOB_MIB", 200).max(1);
    let load_secs = env_u64("REGCACHE_BENCH_LOAD_SECS", 5).max(1);
    let clients = env_u64("REGCACHE_BENCH_CLIENTS", 20).max(1) as usize;
    let conns = env_u64("REGCACHE_BENCH_CONNS", 16).max(1) as usize;
    // A warm pull takes a tenth of a second and is the noisiest figure.
    let warm_runs = env_u64("REGCACHE_BENCH_WARM_RUNS", 3 * runs as u64).max(1) as usize;
    let only_cluster = std::env::var("REGCACHE_BENCH_ONLY").is_ok_and(|v| v == "cluster");
    let with_cluster = only_cluster || env_u64("REGCACHE_BENCH_CLUSTER", 1) != 0;
    start_watchdog(Duration::from_secs(
        if only_cluster { 0 } else { 20 * 60 } + if with_cluster { 20 * 60 } else { 0 },
    ));
    let bench_started = Instant::now();
    // Anything else running on the machine skews every figure: say so.
    let load_at_start = loadavg();
    if load_at_start.0 > 0.5 {
        eprintln!(
            "e2e: warning: load average {:.2} at start: other work on this machine will skew the figures",
            load_at_start.0
        );
    }
    let kinds = [Kind::Regcache, Kind::Peer];

    // Upstream at its default log level (info): counts come from its
    // access log.
    eprintln!(
        "e2e: starting the upstream and pushing a {blob_mib} MiB layer and a multi-arch image"
    );
    let upstream = Registry::builder()
        .env("REGISTRY_LOG_LEVEL", "info")
        .start();
    let t = Instant::now();
    let fixtures = load_fixtures_with_big_layer(&upstream, blob_mib * 1024 * 1024);
    eprintln!("e2e: fixtures pushed in {:.1} s", t.elapsed().as_secs_f64());
    let up_url = upstream.url();
    let digest = fixtures.big_layer_digest.clone();
    let size = fixtures.big_layer_size;
    let blob_path = format!("/v2/{}/blobs/{digest}", fixtures.oci_image.repo);
    let index = &fixtures.oci_index;
    let manifest_path = format!("/v2/{}/manifests/{}", index.repo, index.tag);
    let manifest_len = index.manifest.len();
    let blob_file = upstream
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&digest["sha256:".len()..][..2])
        .join(&digest["sha256:".len()..])
        .join("data");
    let size_mib = size as f64 / MIB;
    let blob_what = format!("{size_mib:.0} MiB blob");
    if only_cluster {
        let md = cluster::run(&upstream, &blob_path, &digest, size);
        write_report("bench-e2e-cluster.md", &md);
        return;
    }

    let mut notes: Vec<String> = Vec::new();

    // 1. Warm pull, with nginx sendfile of the upstream's own file as the
    //    ceiling.
    eprintln!("e2e: [1/5] warm pulls");
    let nginx = match find_in_path("nginx") {
        None => {
            notes.push("nginx is not installed: no sendfile ceiling.".into());
            None
        }
        Some(bin) => match Nginx::start(&bin, &blob_file) {
            Ok(n) => Some(n),
            Err(e) => {
                notes.push(format!("nginx did not start ({e}): no sendfile ceiling."));
                None
            }
        },
    };
    let mut warm = Series::default();
    let mut warm_cpu = Series::default();
    {
        let proxies: Vec<Proxy> = kinds.iter().map(|&k| Proxy::start(k, &up_url)).collect();
        for p in &proxies {
            // Fill, then one hashed pull to check the content, then one
            // more unmeasured pull (the peer stores in the background).
            pull_checked(p.addr, &blob_path, size, "warm-up (fill)");
            let v = pull(p.addr, &blob_path, true).expect("verified pull");
            assert_eq!(
                v.bytes,
                size,
                "{}: verified pull byte count",
                p.kind.label()
            );
            assert_eq!(
                v.digest.as_deref(),
                Some(digest.as_str()),
                "{} served wrong bytes",
                p.kind.label()
            );
            pull_checked(p.addr, &blob_path, size, "warm-up");
        }
        if let Some(n) = &nginx {
            pull_checked(n.addr, "/blob", size, "nginx warm-up");
        }
        for _ in 0..warm_runs {
            for p in &proxies {
                let cpu = cpu_ms(p.pid());
                let r = pull_checked(p.addr, &blob_path, size, "warm pull");
                warm_cpu.push(p.kind, cpu_ms(p.pid()) - cpu);
                warm.push(p.kind, r.mib_s());
            }
            if let Some(n) = &nginx {
                let cpu = cpu_ms(n.child.id());
                warm.reference
                    .push(pull_checked(n.addr, "/blob", size, "nginx pull").mib_s());
                warm_cpu.reference.push(cpu_ms(n.child.id()) - cpu);
            }
        }
    }
    // 2. Cold pull: fresh proxy on an empty cache each run; direct from the
    //    upstream as the reference.
    eprintln!("e2e: [2/5] cold pulls");
    let mut cold = Series::default();
    let mut cold_cpu = Series::default();
    let mut cold_ttfb = Series::default();
    // The floor of a verifying fill: sha256 of the same bytes, here, now.
    let hash_ms = {
        let bytes = fs::read(&blob_file).expect("read the upstream's blob file");
        sha256_ms(&bytes)
    };
    pull_checked(upstream.addr, &blob_path, size, "direct warm-up");
    for _ in 0..runs {
        sync_disks();
        let direct = pull_checked(upstream.addr, &blob_path, size, "direct pull");
        cold.reference.push(direct.mib_s());
        cold_ttfb.reference.push(direct.ttfb * 1000.0);
        for &k in &kinds {
            let p = Proxy::start(k, &up_url);
            sync_disks();
            let cpu = cpu_ms(p.pid());
            let r = pull_checked(
                p.addr,
                &blob_path,
                size,
                &format!("{} cold pull", k.label()),
            );
            cold_cpu.push(k, cpu_ms(p.pid()) - cpu);
            cold.push(k, r.mib_s());
            cold_ttfb.push(k, r.ttfb * 1000.0);
        }
    }

    // 3. Concurrent cold pulls: fresh proxy each run; wall time, upstream
    //    GETs of the blob, peak RSS.
    eprintln!("e2e: [3/5] {clients} concurrent cold pulls");
    let mut stampede_wall = Series::default();
    let mut stampede_gets = Series::default();
    let mut stampede_rss = Series::default();
    let mut stampede_heads = Series::default();
    let mut stampede_cpu = Series::default();
    for _ in 0..runs {
        for &k in &kinds {
            let p = Proxy::start(k, &up_url);
            sync_disks();
            let before = settled_requests(&upstream).len();
            let cpu = cpu_ms(p.pid());
            let wall = concurrent_pulls(p.addr, &blob_path, size, clients).unwrap_or_else(|e| {
                panic!("{}: {e}\n{}", k.label(), p.log_tail());
            });
            stampede_cpu.push(k, cpu_ms(p.pid()) - cpu);
            let after = settled_requests(&upstream);
            stampede_wall.push(k, wall);
            stampede_gets.push(k, count_since(before, &after, "GET", &digest) as f64);
            stampede_heads.push(k, count_since(before, &after, "HEAD", &digest) as f64);
            stampede_rss.push(k, p.rss_peak_mib());
        }
        // The floor on this machine: the same number of clients pulling
        // the same file from nginx sendfile.
        if let Some(n) = &nginx {
            let cpu = cpu_ms(n.child.id());
            let wall = concurrent_pulls(n.addr, "/blob", size, clients)
                .unwrap_or_else(|e| panic!("nginx: {e}"));
            stampede_cpu.reference.push(cpu_ms(n.child.id()) - cpu);
            stampede_wall.reference.push(wall);
        }
    }
    drop(nginx);

    // 4. Cold pulls through a throttled link to the upstream: 1 client,
    //    then `clients` at once; each client's throughput against the link.
    let link_mib_s = env_u64("REGCACHE_BENCH_LINK_MIB_S", 100).max(1) as f64;
    let throttled_runs = env_u64("REGCACHE_BENCH_THROTTLED_RUNS", 3) as usize;
    // The peer fetches once per client plus once for its cache, all over
    // the one link: 20 clients take about 21 × the blob's time on it.
    let peer_crowd_runs = env_u64("REGCACHE_BENCH_THROTTLED_PEER_RUNS", 1) as usize;
    eprintln!(
        "e2e: [4/5] cold pulls through a {link_mib_s} MiB/s upstream link, 1 and {clients} clients"
    );
    let throttle = Throttle::start(upstream.addr, link_mib_s * MIB);
    let throttled_url = format!("http://{}", throttle.addr);
    let mut link_one = Series::default();
    let mut link_crowd = Series::default();
    let mut link_gets = Series::default();
    for run in 0..throttled_runs {
        // The link's own delivery, without a proxy: what "÷ link" can reach.
        let direct = pull_checked(throttle.addr, &blob_path, size, "direct pull via the link");
        link_one.reference.push(direct.mib_s() / link_mib_s);
        for &k in &kinds {
            let p = Proxy::start(k, &throttled_url);
            sync_disks();
            let r = pull_checked(p.addr, &blob_path, size, "throttled cold pull");
            link_one.push(k, r.mib_s() / link_mib_s);
            drop(p);
            if k == Kind::Peer && run >= peer_crowd_runs {
                continue;
            }
            let p = Proxy::start(k, &throttled_url);
            sync_disks();
            let before = settled_requests(&upstream).len();
            let (_, each) = concurrent_pulls_each(p.addr, &blob_path, size, clients)
                .unwrap_or_else(|e| panic!("{} throttled: {e}\n{}", k.label(), p.log_tail()));
            let slowest = each.iter().copied().fold(f64::INFINITY, f64::min);
            link_crowd.push(k, slowest / link_mib_s);
            let after = settled_requests(&upstream);
            link_gets.push(k, count_since(before, &after, "GET", &digest) as f64);
        }
    }

    // 5. Warm tag manifests at `conns` connections.
    eprintln!("e2e: [5/5] warm manifest-by-tag load, {conns} connections, {load_secs} s per run");
    let mut rps = Series::default();
    let mut p50 = Series::default();
    let mut p99 = Series::default();
    let mut upstream_reqs = Series::default();
    let mut load_rss = Series::default();
    let mut load_errors = [0u64; 2];
    {
        let proxies: Vec<Proxy> = kinds.iter().map(|&k| Proxy::start(k, &up_url)).collect();
        for p in &proxies {
            // First request fills the tag and manifest; a short unmeasured
            // load warms connections and allocators.
            let first = manifest_load(
                p.addr,
                &manifest_path,
                manifest_len,
                1,
                Duration::from_secs(10),
                1,
            )
            .expect("first manifest request");
            assert!(
                first.requests == 1 && first.errors == 0,
                "{}: the first manifest request failed\n{}",
                p.kind.label(),
                p.log_tail()
            );
            manifest_load(
                p.addr,
                &manifest_path,
                manifest_len,
                conns,
                Duration::from_secs(1),
                1_000_000,
            )
            .expect("manifest warm-up");
        }
        for _ in 0..runs {
            for (i, p) in proxies.iter().enumerate() {
                let before = settled_requests(&upstream).len();
                let l = manifest_load(
                    p.addr,
                    &manifest_path,
                    manifest_len,
                    conns,
                    Duration::from_secs(load_secs),
                    5_000_000,
                )
                .unwrap_or_else(|e| {
                    panic!("{} manifest load: {e}\n{}", p.kind.label(), p.log_tail())
                });
                let after = settled_requests(&upstream);
                load_errors[i] += l.errors;
                rps.push(p.kind, l.rps());
                p50.push(p.kind, l.pct_ms(0.50));
                p99.push(p.kind, l.pct_ms(0.99));
                upstream_reqs.push(p.kind, (after.len() - before.min(after.len())) as f64);
            }
        }
        for p in &proxies {
            load_rss.push(p.kind, p.rss_peak_mib());
        }
    }
    for (i, k) in kinds.iter().enumerate() {
        if load_errors[i] > 0 {
            notes.push(format!(
                "{}: {} manifest answers were not 200 with the expected {manifest_len} bytes",
                k.label(),
                load_errors[i]
            ));
        }
    }

    // The table.
    let m = |v: &[f64]| median(v);
    let mut rows = Vec::new();
    let (wa, wb) = (m(&warm.regcache), m(&warm.peer));
    rows.push(row(
        format!("warm pull, {blob_what}, MiB/s"),
        wa,
        wb,
        wa / wb,
        "≥ 1.1× peer",
        Some(wa / wb >= 1.1),
    ));
    if !warm.reference.is_empty() {
        let n = m(&warm.reference);
        rows.push(row(
            format!("warm pull ÷ nginx sendfile ({} MiB/s)", fmt_num(n)),
            wa / n,
            wb / n,
            f64::NAN,
            "regcache ≥ 0.9",
            Some(wa / n >= 0.9),
        ));
    }
    let (ca, cb, cd) = (m(&cold.regcache), m(&cold.peer), m(&cold.reference));
    rows.push(row(
        format!("cold pull, {blob_what}, MiB/s"),
        ca,
        cb,
        ca / cb,
        "≥ 1.3× peer",
        Some(ca / cb >= 1.3),
    ));
    let (ta, tb, td) = (
        m(&cold_ttfb.regcache),
        m(&cold_ttfb.peer),
        m(&cold_ttfb.reference),
    );
    rows.push(row(
        format!("cold time to first byte, ms (direct: {})", fmt_num(td)),
        ta,
        tb,
        ta / tb,
        "≤ direct + 5 ms",
        Some(ta <= td + 5.0),
    ));
    rows.push(row(
        format!("cold pull ÷ direct from upstream ({} MiB/s)", fmt_num(cd)),
        ca / cd,
        cb / cd,
        f64::NAN,
        "regcache ≥ 0.85",
        Some(ca / cd >= 0.85),
    ));
    let (sa, sb) = (m(&stampede_wall.regcache), m(&stampede_wall.peer));
    rows.push(row(
        format!("{clients} concurrent cold pulls, wall s"),
        sa,
        sb,
        sa / sb,
        "≤ 0.35× peer",
        Some(sa / sb <= 0.35),
    ));
    if !stampede_wall.reference.is_empty() {
        let n = m(&stampede_wall.reference);
        rows.push(row(
            format!(
                "{clients} concurrent pulls ÷ nginx sendfile floor ({} s)",
                fmt_num(n)
            ),
            sa / n,
            sb / n,
            f64::NAN,
            "",
            None,
        ));
    }
    let (ga, gb) = (max(&stampede_gets.regcache), max(&stampede_gets.peer));
    let gets_min = stampede_gets
        .regcache
        .iter()
        .copied()
        .fold(f64::NAN, f64::min);
    rows.push(row(
        format!("{clients} concurrent cold pulls, upstream blob GETs (max of runs)"),
        ga,
        gb,
        f64::NAN,
        "regcache = 1",
        Some(ga == 1.0 && gets_min == 1.0),
    ));
    if throttled_runs > 0 {
        let (oa, ob) = (m(&link_one.regcache), m(&link_one.peer));
        rows.push(row(
            format!(
                "cold pull via a {link_mib_s} MiB/s upstream link, 1 client ÷ link (direct: {})",
                fmt_num(m(&link_one.reference))
            ),
            oa,
            ob,
            oa / ob,
            "regcache ≥ 0.95",
            Some(oa >= 0.95),
        ));
        let (na, nb) = (m(&link_crowd.regcache), m(&link_crowd.peer));
        rows.push(row(
            format!("cold pull via a {link_mib_s} MiB/s link, {clients} clients, slowest ÷ link"),
            na,
            nb,
            na / nb,
            "regcache ≥ 0.95",
            Some(na >= 0.95),
        ));
        let (ga, gb) = (max(&link_gets.regcache), max(&link_gets.peer));
        rows.push(row(
            format!("cold pull via the link, {clients} clients, upstream blob GETs (max)"),
            ga,
            gb,
            f64::NAN,
            "regcache = 1",
            Some(ga == 1.0),
        ));
    }
    let (ra, rb) = (m(&rps.regcache), m(&rps.peer));
    rows.push(row(
        format!("warm tag manifest GET, req/s ({conns} conns)"),
        ra,
        rb,
        ra / rb,
        "≥ 10× peer",
        Some(ra / rb >= 10.0),
    ));
    let (la, lb) = (m(&p50.regcache), m(&p50.peer));
    rows.push(row(
        "warm tag manifest GET, p50 ms",
        la,
        lb,
        la / lb,
        "",
        None,
    ));
    let (qa, qb) = (m(&p99.regcache), m(&p99.peer));
    rows.push(row(
        "warm tag manifest GET, p99 ms",
        qa,
        qb,
        qa / qb,
        "regcache ≤ 5 ms",
        Some(qa <= 5.0),
    ));
    let (ua, ub) = (
        upstream_reqs.regcache.iter().sum::<f64>(),
        upstream_reqs.peer.iter().sum::<f64>(),
    );
    rows.push(row(
        "warm tag manifest GET, requests reaching upstream (all runs)",
        ua,
        ub,
        f64::NAN,
        "regcache = 0",
        Some(ua == 0.0),
    ));
    let (xa, xb) = (max(&stampede_rss.regcache), max(&stampede_rss.peer));
    rows.push(row(
        format!("peak RSS during {clients} concurrent cold pulls, MiB (max of runs)"),
        xa,
        xb,
        xa / xb,
        "≤ 0.8× peer",
        Some(xa <= 0.8 * xb),
    ));
    let (ya, yb) = (max(&load_rss.regcache), max(&load_rss.peer));
    rows.push(row(
        "peak RSS during manifest load, MiB",
        ya,
        yb,
        ya / yb,
        "≤ peer",
        Some(ya <= yb),
    ));
    // CPU the proxy process spent: far less sensitive to other work on the
    // machine than the throughputs are. Means (10 ms clock ticks).
    let with_ref = |name: String, s: &Series| {
        if s.reference.is_empty() {
            name
        } else {
            format!("{name} (nginx: {})", fmt_num(mean(&s.reference)))
        }
    };
    let (ka, kb) = (mean(&warm_cpu.regcache), mean(&warm_cpu.peer));
    rows.push(row(
        with_ref("proxy CPU per warm pull, ms".to_string(), &warm_cpu),
        ka,
        kb,
        ka / kb,
        "(info)",
        None,
    ));
    let (ka, kb) = (mean(&cold_cpu.regcache), mean(&cold_cpu.peer));
    rows.push(row(
        "proxy CPU per cold pull, ms",
        ka,
        kb,
        ka / kb,
        "≤ 0.6× peer",
        Some(ka / kb <= 0.6),
    ));
    rows.push(row(
        format!(
            "proxy CPU per cold pull ÷ sha256 of the same bytes ({} ms)",
            fmt_num(hash_ms)
        ),
        ka / hash_ms,
        kb / hash_ms,
        f64::NAN,
        "regcache ≤ 1.6",
        Some(ka / hash_ms <= 1.6),
    ));
    let (ka, kb) = (mean(&stampede_cpu.regcache), mean(&stampede_cpu.peer));
    rows.push(row(
        with_ref(
            format!("proxy CPU per {clients} concurrent cold pulls, ms"),
            &stampede_cpu,
        ),
        ka,
        kb,
        ka / kb,
        "(info)",
        None,
    ));

    let mut machine = machine();
    let load_at_end = loadavg();
    machine.push((
        "load average (1 min)".into(),
        format!(
            "{:.2} at start, {:.2} at end (the bench itself adds about 1)",
            load_at_start.0, load_at_end.0
        ),
    ));
    let mut md = String::new();
    let _ = writeln!(md, "## regcache end-to-end benchmark\n");
    let _ = writeln!(
        md,
        "`cargo bench --bench e2e`: medians of {runs} runs ({warm_runs} for warm pulls), \
         alternating regcache / peer; \
         peer = `docker-registry` (CNCF distribution) in proxy mode; both pull through from \
         the same `docker-registry` upstream on 127.0.0.1.\n"
    );
    for (k, v) in &machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| figure | regcache | peer | ratio | target | met |");
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- | --- |");
    let mut met = 0;
    let mut judged = 0;
    for r in &rows {
        let verdict = match r.met {
            Some(true) => {
                met += 1;
                judged += 1;
                "yes"
            }
            Some(false) => {
                judged += 1;
                "**no**"
            }
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.regcache, r.peer, r.ratio, r.target, verdict
        );
    }
    let _ = writeln!(md, "\nTargets met: {met} of {judged}.\n");
    let _ = writeln!(md, "Every run (in order):\n");
    let mut runs_line = |name: &str, s: &Series| {
        let _ = writeln!(
            md,
            "- {name}: regcache [{}]; peer [{}]{}",
            fmt_runs(&s.regcache),
            fmt_runs(&s.peer),
            if s.reference.is_empty() {
                String::new()
            } else {
                format!("; reference [{}]", fmt_runs(&s.reference))
            }
        );
    };
    runs_line("warm MiB/s (reference: nginx sendfile)", &warm);
    runs_line("cold MiB/s (reference: direct from upstream)", &cold);
    runs_line("cold time to first byte ms (reference: direct)", &cold_ttfb);
    runs_line(
        "throttled link, 1 client ÷ link (reference: direct through the link)",
        &link_one,
    );
    runs_line("throttled link, slowest of the clients ÷ link", &link_crowd);
    runs_line("throttled link, upstream blob GETs", &link_gets);
    runs_line(
        "concurrent cold wall s (reference: nginx sendfile, warm)",
        &stampede_wall,
    );
    runs_line("concurrent cold upstream blob GETs", &stampede_gets);
    runs_line("concurrent cold upstream blob HEADs", &stampede_heads);
    runs_line("concurrent cold VmHWM MiB", &stampede_rss);
    runs_line("warm pull proxy CPU ms (reference: nginx)", &warm_cpu);
    runs_line("cold pull proxy CPU ms", &cold_cpu);
    runs_line(
        "concurrent cold proxy CPU ms (reference: nginx, warm)",
        &stampede_cpu,
    );
    runs_line("manifest req/s", &rps);
    runs_line("manifest p50 ms", &p50);
    runs_line("manifest p99 ms", &p99);
    runs_line("manifest requests reaching upstream", &upstream_reqs);
    runs_line("manifest-phase VmHWM MiB", &load_rss);
    for n in &notes {
        let _ = writeln!(md, "\nNote: {n}");
    }
    let _ = writeln!(
        md,
        "\nBench wall time: {:.0} s.",
        bench_started.elapsed().as_secs_f64()
    );

    // Plain table on stdout.
    println!();
    for (k, v) in &machine {
        println!("{k:>16}: {v}");
    }
    println!();
    let widths = [
        rows.iter()
            .map(|r| r.figure.chars().count())
            .max()
            .unwrap_or(6)
            .max(6),
        10,
        10,
        7,
        16,
    ];
    println!(
        "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  met",
        "figure",
        "regcache",
        "peer",
        "ratio",
        "target",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3],
        w4 = widths[4]
    );
    for r in &rows {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}",
            r.figure,
            r.regcache,
            r.peer,
            r.ratio,
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            },
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
    }
    println!("\ntargets met: {met} of {judged}");
    for n in &notes {
        println!("note: {n}");
    }

    if with_cluster {
        md.push('\n');
        md.push_str(&cluster::run(&upstream, &blob_path, &digest, size));
    }
    write_report("bench-e2e.md", &md);
    if ABORTED.load(Ordering::SeqCst) {
        std::process::exit(2);
    }
}

/// Writes `md` as `name` in the target directory.
fn write_report(name: &str, md: &str) {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target_dir.join(name);
    match fs::create_dir_all(&target_dir).and_then(|_| fs::write(&out, md)) {
        Ok(()) => println!("written: {}", out.display()),
        Err(e) => eprintln!("e2e: could not write {}: {e}", out.display()),
    }
}
