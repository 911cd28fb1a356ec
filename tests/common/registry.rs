//! A real upstream registry for the end-to-end tests: CNCF distribution 2.8
//! (Debian's `docker-registry`), run as a child process on 127.0.0.1.
//!
//! Each [`Registry`] owns a tempdir holding its config, its storage and its
//! logs. The process's stdout and stderr go to two separate files:
//!
//! * `access.log` (stdout): distribution wraps its handler in gorilla's
//!   `CombinedLoggingHandler(os.Stdout, ..)`, one line per request in Apache
//!   combined log format:
//!   `127.0.0.1 - - [27/Nov/2026:17:22:28 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
//!   That line is written only when the handler *returns*, and the blob
//!   handler returns well after the client has the whole body (it does more
//!   storage look-ups after serving), so counting these lines races with
//!   the client: a test could see N-1 right after its own request. Kept for
//!   people (see [`Registry::access_log`]), not for counting.
//! * `registry.log` (stderr): logrus text lines. At `level: debug` every
//!   request routed to the API (everything under `/v2/`) logs
//!   `msg="authorizing request"` once, *before* its handler writes anything,
//!   with `http.request.id`, `http.request.method` and `http.request.uri`;
//!   and `msg="response completed"` (or `"response completed with error"`)
//!   with `http.response.status` at the end. [`Registry::request_count`]
//!   counts the first kind: exact, and a response a client has received is
//!   always counted already. (Paths outside the API, e.g. `/v3/`, are
//!   never counted.)
//!
//! So the generated config runs the registry at log level debug; an
//! `extra_config` must not set `log:` again.
//!
//! This module's own readiness probes are `GET /v2/?regcache-test-...`;
//! they are left out of [`Registry::requests`] and [`Registry::request_count`].
//!
//! Both logs are opened in append mode, so counts accumulate across
//! [`Registry::stop`]/[`Registry::restart`].

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Binary name of CNCF distribution as Debian packages it. Override with
/// `REGCACHE_TEST_REGISTRY_BIN`.
pub const REGISTRY_BIN: &str = "docker-registry";
/// Override with `REGCACHE_TEST_SKOPEO_BIN`.
pub const SKOPEO_BIN: &str = "skopeo";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Request targets of this module's own probes start with this; they are
/// left out of [`Registry::requests`] and [`Registry::request_count`].
pub const PROBE_PREFIX: &str = "/v2/?regcache-test-";
/// Credentials of [`RegistryBuilder::htpasswd_auth`].
pub const TEST_USER: &str = "regcache-test";
pub const TEST_PASSWORD: &str = "regcache-test-password";
/// bcrypt (`$2b$`, cost 5) of [`TEST_PASSWORD`]; distribution's htpasswd
/// backend accepts only bcrypt.
pub const TEST_PASSWORD_BCRYPT: &str =
    "$2b$05$rpNSz1j.hdf.uWDPtSNnd.za7Qd0kGFTVEoflm9fcoLZbaFjjrK8u";

const READY_PROBE: &str = "/v2/?regcache-test-ready";

/// Path of the registry binary (env override or `docker-registry`).
pub fn registry_bin() -> PathBuf {
    std::env::var_os("REGCACHE_TEST_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REGISTRY_BIN))
}

/// Path of the skopeo binary (env override or `skopeo`).
pub fn skopeo_bin() -> PathBuf {
    std::env::var_os("REGCACHE_TEST_SKOPEO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SKOPEO_BIN))
}

fn find_executable(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
}

/// Panics with an actionable message when the external binaries are missing.
pub fn require_binaries() {
    for bin in [registry_bin(), skopeo_bin()] {
        if find_executable(&bin).is_none() {
            panic!(
                "{} not found in PATH: the end-to-end tests need Debian's `docker-registry` \
                 (CNCF distribution 2.8) and `skopeo`; run `.ci/install-test-deps`",
                bin.display()
            );
        }
    }
}

/// Picks a currently free port on 127.0.0.1 (bind :0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// One request the registry received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// distribution's `http.request.id`.
    pub id: String,
    pub method: String,
    /// Request target as sent, including any query string.
    pub uri: String,
    /// From the `response completed` line (401 for an auth challenge, which
    /// logs none); `None` while the response is not complete yet.
    pub status: Option<u16>,
}

/// Value of `key=` in a logrus text line (unquoted if it was quoted).
pub fn logrus_field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        None
    } else {
        Some(rest.split(' ').next().unwrap_or("").to_string())
    }
}

/// All requests in a registry.log text, in arrival order.
pub fn parse_registry_log(log: &str) -> Vec<LoggedRequest> {
    let mut out: Vec<LoggedRequest> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for line in log.lines() {
        if line.contains(" msg=\"authorizing request\" ") {
            let (Some(id), Some(method), Some(uri)) = (
                logrus_field(line, "http.request.id"),
                logrus_field(line, "http.request.method"),
                logrus_field(line, "http.request.uri"),
            ) else {
                continue;
            };
            if index.contains_key(&id) {
                continue;
            }
            index.insert(id.clone(), out.len());
            out.push(LoggedRequest {
                id,
                method,
                uri,
                status: None,
            });
        } else if line.contains(" msg=\"response completed") {
            let id = logrus_field(line, "http.request.id");
            let status = logrus_field(line, "http.response.status").and_then(|s| s.parse().ok());
            if let Some(&i) = id.and_then(|id| index.get(&id)) {
                out[i].status = status;
            }
        } else if line.contains(" msg=\"error authorizing context:") {
            // An auth challenge ends the request without "response completed".
            let id = logrus_field(line, "http.request.id");
            if let Some(&i) = id.and_then(|id| index.get(&id)) {
                out[i].status.get_or_insert(401);
            }
        }
    }
    out
}

/// Parses one combined-log-format line of `access.log` into
/// (method, uri, status); `None` for anything else.
pub fn parse_access_line(line: &str) -> Option<(String, String, u16)> {
    // host ident user [date] "METHOD URI PROTO" status size "referer" "ua"
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut parts = rest[..end].split(' ');
    let method = parts.next()?.to_string();
    let uri = parts.next()?.to_string();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some((method, uri, status))
}

/// Builder for a [`Registry`] with extra configuration (e.g. an `auth:`
/// section) and extra files in its directory.
///
/// In `extra_config` and in file contents, `{dir}` is replaced with the
/// registry's own directory, so e.g.
/// ```ignore
/// Registry::builder()
///     .file("htpasswd", "user:$2y$05$...bcrypt...\n")
///     .extra_config("auth:\n  htpasswd:\n    realm: test\n    path: {dir}/htpasswd\n")
///     .start();
/// ```
/// (distribution's htpasswd auth only accepts bcrypt hashes).
#[derive(Default)]
pub struct RegistryBuilder {
    extra_config: String,
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
}

impl RegistryBuilder {
    /// Appends top-level YAML to the generated config. Must not repeat the
    /// keys the generated config already has (version, log, storage, http).
    pub fn extra_config(mut self, yaml: &str) -> Self {
        if !self.extra_config.is_empty() && !self.extra_config.ends_with('\n') {
            self.extra_config.push('\n');
        }
        self.extra_config.push_str(yaml);
        self
    }

    /// Writes `contents` to `<dir>/<name>` before the registry starts.
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((name.to_string(), contents.as_ref().to_vec()));
        self
    }

    /// Basic auth with distribution's htpasswd backend: one user,
    /// [`TEST_USER`] / [`TEST_PASSWORD`] (bcrypt cost 5, so each request
    /// costs ~3 ms of registry CPU). `/v2/` answers 401 without them.
    pub fn htpasswd_auth(self) -> Self {
        self.file("htpasswd", format!("{TEST_USER}:{TEST_PASSWORD_BCRYPT}\n"))
            .extra_config(
                "auth:\n  htpasswd:\n    realm: regcache-test\n    path: {dir}/htpasswd\n",
            )
    }

    /// Extra environment for the registry process (distribution reads
    /// `REGISTRY_<SECTION>_<KEY>` overrides from the environment).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> Registry {
        require_binaries();
        let dir = tempfile::Builder::new()
            .prefix("regcache-upstream-")
            .tempdir()
            .expect("create registry tempdir");
        let root = dir.path().to_path_buf();
        let subst = |s: &[u8]| -> Vec<u8> {
            match std::str::from_utf8(s) {
                Ok(t) => t.replace("{dir}", root.to_str().unwrap()).into_bytes(),
                Err(_) => s.to_vec(),
            }
        };
        for (name, contents) in &self.files {
            let p = root.join(name);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(&p, subst(contents)).unwrap();
        }
        let extra = String::from_utf8(subst(self.extra_config.as_bytes())).unwrap();
        fs::create_dir_all(root.join("storage")).unwrap();

        let config = root.join("config.yml");
        let mut last_err = String::new();
        // The free-port pick can race with another process; retry a few times.
        for _ in 0..3 {
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            fs::write(&config, config_yaml(&root, addr, &extra)).unwrap();
            match spawn_registry(&root, &config, addr, &self.env) {
                Ok(child) => {
                    return Registry {
                        addr,
                        dir,
                        config,
                        child: Some(child),
                        env: self.env,
                    }
                }
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }
}

fn config_yaml(root: &Path, addr: SocketAddr, extra: &str) -> String {
    format!(
        "version: 0.1
log:
  level: debug
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: regcache-test-secret
{extra}
",
        storage = root.join("storage").display(),
    )
}

/// A running (or stopped) CNCF distribution registry on 127.0.0.1.
pub struct Registry {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Registry {
    /// Starts a registry with the default config (no auth, deletes enabled).
    pub fn start() -> Registry {
        Self::builder().start()
    }

    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's own directory (config, storage/, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// For failure messages: the access log and registry.log's last lines
    /// above debug level.
    pub fn logs(&self) -> String {
        read_logs(self.dir.path())
    }

    /// The access log as it is (see the module docs for why counts do
    /// not come from it).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    /// Every request routed to the API so far, in arrival order, without
    /// this module's readiness probes. Includes requests still in flight
    /// (`status: None`).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        parse_registry_log(&log)
            .into_iter()
            .filter(|r| !r.uri.starts_with(PROBE_PREFIX))
            .collect()
    }

    /// Number of requests with this method (case-insensitive) whose request
    /// target contains `path_contains`, e.g.
    /// `request_count("GET", "/blobs/sha256:..")`. Exact: each request is
    /// logged once, when it arrives, before any byte of its response, so a
    /// response anyone has received is counted. Requests still in flight are
    /// counted too, whatever their outcome (401s and 404s included).
    pub fn request_count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.uri.contains(path_contains))
            .count()
    }

    /// Kills the registry process (SIGKILL) and waits for it. Connections
    /// are reset; the port is closed until [`Self::restart`]. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (if running) and starts again on the same port with the same
    /// storage and config; waits until `/v2/` answers.
    pub fn restart(&mut self) {
        self.stop();
        // The port is ours until something else grabs it; Go's listener uses
        // SO_REUSEADDR so TIME_WAIT connections don't block the rebind.
        match spawn_registry(self.dir.path(), &self.config, self.addr, &self.env) {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("docker-registry did not restart on {}: {e}", self.addr),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("upstream registry {} logs:\n{}", self.addr, self.logs());
        }
    }
}

/// The access log, then registry.log's last 100 lines above debug level
/// (the debug lines are many; the full file is at `<dir>/registry.log`).
fn read_logs(dir: &Path) -> String {
    let a = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let l = fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    let lines: Vec<&str> = l.lines().filter(|l| !l.contains(" level=debug ")).collect();
    let tail = lines[lines.len().saturating_sub(100)..].join("\n");
    format!(
        "--- {}/access.log ---\n{a}--- registry.log (no debug, last 100) ---\n{tail}\n",
        dir.display()
    )
}

/// Spawns `docker-registry serve <config>` with stdout appended to
/// `<dir>/access.log` and stderr to `<dir>/registry.log`, and waits until
/// `GET /v2/` answers (200, or 401 when auth is configured).
fn spawn_registry(
    dir: &Path,
    config: &Path,
    addr: SocketAddr,
    env: &[(String, String)],
) -> Result<Child, String> {
    let open = |p: PathBuf| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("open registry log")
    };
    let mut cmd = Command::new(registry_bin());
    cmd.arg("serve")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(open(dir.join("access.log")))
        .stderr(open(dir.join("registry.log")));
    // distribution overrides config keys from REGISTRY_* variables; keep
    // the machine's environment out of it.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", registry_bin().display()))?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}\n{}", read_logs(dir)));
        }
        if let Ok(resp) = http_request(addr, "GET", READY_PROBE, &[], None) {
            // A TLS listener (REGISTRY_HTTP_TLS_*) answers plain HTTP with 400.
            let tls_up =
                resp.status == 400 && String::from_utf8_lossy(&resp.body).contains("HTTPS");
            if resp.status == 200 || resp.status == 401 || tls_up {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "/v2/ not ready after {READY_TIMEOUT:?}\n{}",
                read_logs(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// A tiny blocking HTTP/1.1 client (Connection: close), enough for probes,
// HEADs and blob GETs against local servers without reqwest's `blocking`.

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to `addr` and reads the whole response (30 s timeouts).
/// `path` is the request target (`/v2/...`). `Host`, `Connection: close`
/// and `Content-Length` (when `body` is given) are added.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<HttpResponse> {
    let timeout = Duration::from_secs(30);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    s.flush()?;

    let mut r = BufReader::new(s);
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("eof in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 || status < 200 {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// `GET http://<addr><path>`.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    http_request(addr, "GET", path, &[], None)
}
