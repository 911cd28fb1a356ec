//! An in-process fake OCI registry upstream for integration tests.
//!
//! It serves the registry *read* API from content registered by the test
//! (`add_blob`, `add_manifest`, `set_tag`, ...) and can inject faults a real
//! registry won't produce on demand: corrupted bytes, truncated bodies,
//! slow streams, arbitrary status codes, hung requests, and a server that
//! goes down and comes back on the same port.
//!
//! ```ignore
//! let up = FakeUpstream::start(Behaviour::default()).await;
//! let digest = up.add_blob(random_bytes(1 << 20, 7));
//! up.set_blob_fault(&digest, Fault::DropAfter(1000));
//! // ... point regcache at up.url() ...
//! assert_eq!(up.count("GET", "/blobs/"), 1);
//! ```
//!
//! Design notes:
//! * All state lives behind `Arc<Shared>` with `parking_lot` mutexes, so every
//!   setter works at runtime from `&self` while requests are in flight.
//! * A truncated body (`DropAfter`, `DropAtFractions`) is produced by sending
//!   the full `Content-Length` in the headers, streaming the first `n` bytes,
//!   pausing briefly so hyper flushes them, and then yielding an `Err` from
//!   the body stream. hyper's HTTP/1 server reacts to a body error by tearing
//!   down the connection, so clients see EOF before `Content-Length` is
//!   satisfied — an *error*, never a clean short body.
//! * Dropping the `FakeUpstream` aborts the accept task (closing the
//!   listener) and every live connection task (closing their sockets), so a
//!   request stuck on `Fault::Hang` fails instead of hanging forever.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{AbortHandle, JoinHandle};

use super::images::{sha256_digest, OCI_INDEX};

/// Pause between the last byte of a truncated body and the injected body
/// error, so hyper flushes the bytes before it kills the connection.
const TRUNCATE_FLUSH_PAUSE: Duration = Duration::from_millis(30);
/// Chunk size for streamed bodies when no `Slow` fault chooses one.
const DEFAULT_CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `len` deterministic, incompressible bytes derived from `seed` (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // splitmix the seed so nearby seeds give unrelated streams and 0 is fine.
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Initial configuration for [`FakeUpstream::start`]. Everything here can also
/// be changed at runtime through setters.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Honour `Range` requests on blobs (206 + `Content-Range`). When false,
    /// `Range` is ignored and the full body is sent with 200.
    pub honour_range: bool,
    /// Headers added to every response (e.g. rate-limit headers).
    pub extra_headers: Vec<(String, String)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            honour_range: true,
            extra_headers: Vec::new(),
        }
    }
}

/// An injectable fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Serve content with the right length (and headers) but every byte
    /// flipped (`b ^ 0xFF`), so the digest doesn't match.
    WrongBytes,
    /// Send headers with the full `Content-Length`, `n` bytes of the body,
    /// then abort the connection (the client sees a truncated body error).
    /// With `n >= body length` the response is effectively normal.
    DropAfter(usize),
    /// Successive GETs are cut at these fractions of the *total* content
    /// length (absolute positions, so a resumed `Range: bytes=k-` request
    /// cut at 0.7 ends at byte 0.7*len). Once the list is used up the content
    /// is served normally (and the rule removes itself).
    DropAtFractions(Vec<f64>),
    /// Stream the body in `chunk`-byte pieces with `delay` between them.
    Slow { chunk: usize, delay: Duration },
    /// Answer with this status, these extra headers and an OCI JSON error body
    /// (code chosen from the status: 401 UNAUTHORIZED, 403 DENIED,
    /// 404 MANIFEST_UNKNOWN/BLOB_UNKNOWN/NAME_UNKNOWN, 429 TOOMANYREQUESTS,
    /// otherwise UNKNOWN / UNAVAILABLE).
    Status(u16, Vec<(String, String)>),
    /// Read the request, then never answer (until the upstream is dropped or
    /// goes down).
    Hang,
    /// Read the request, then close the connection without any response.
    CloseConnection,
    /// Stream the body without a `Content-Length` (chunked), as a hostile
    /// or careless upstream may.
    NoLength,
}

impl Fault {
    /// `Fault::Status(code, [])`.
    pub fn status(code: u16) -> Fault {
        Fault::Status(code, Vec::new())
    }
    /// `Fault::Status(code, headers)` from `&str` pairs.
    pub fn status_with(code: u16, headers: &[(&str, &str)]) -> Fault {
        Fault::Status(
            code,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
    /// Faults that change how a content body is streamed (only apply to GETs
    /// of blobs/manifests; ignored for HEAD and other endpoints).
    fn is_body_fault(&self) -> bool {
        matches!(
            self,
            Fault::WrongBytes
                | Fault::DropAfter(_)
                | Fault::DropAtFractions(_)
                | Fault::Slow { .. }
                | Fault::NoLength
        )
    }
}

/// Which requests a fault applies to. When several rules match, the most
/// specific wins: `Digest` > `Path` > `Global`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every request. Body faults (`WrongBytes`, `DropAfter`,
    /// `DropAtFractions`, `Slow`) only act on blob GETs in this scope;
    /// `Status`/`Hang`/`CloseConnection` act on every request, `/v2/` included.
    Global,
    /// Requests for this blob or manifest digest (a manifest requested by tag
    /// matches via its resolved digest).
    Digest(String),
    /// Requests whose path contains this substring. Body faults act on blob
    /// and manifest GETs.
    Path(String),
}

/// One recorded request.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: Bytes,
    /// Id of the TCP connection it arrived on (1-based, in accept order).
    pub conn_id: u64,
    pub at: Instant,
}

impl RecordedRequest {
    /// First value of header `name` as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Whether header `name` is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

/// Hook installed with [`FakeUpstream::set_on_request`]: return `Some` to
/// answer the request yourself (faults and routing are skipped; the global
/// extra headers are *not* added), `None` to continue normally.
pub type Hook = Arc<dyn Fn(&RecordedRequest) -> Option<Response<Bytes>> + Send + Sync>;

// ---------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------

type Body = UnsyncBoxBody<Bytes, io::Error>;

struct Rule {
    scope: Scope,
    fault: Fault,
    /// Remaining applications; `None` = forever.
    times: Option<usize>,
    /// Next index into `DropAtFractions`.
    frac_idx: usize,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Bytes>,
    /// (repo, digest) -> (media type, bytes)
    manifests: HashMap<(String, String), (String, Bytes)>,
    /// repo -> tag -> digest (BTreeMap: tags list comes out sorted)
    tags: HashMap<String, BTreeMap<String, String>>,
    /// (repo, subject digest) -> index body
    referrers: HashMap<(String, String), Bytes>,
    /// repo -> Link header value for tags/list
    tags_link: HashMap<String, String>,
    rules: Vec<Rule>,
    honour_range: bool,
    extra_headers: Vec<(String, String)>,
    /// Requests still answered before the server goes down.
    refuse_after: Option<usize>,
    down: bool,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    requests: Mutex<Vec<RecordedRequest>>,
    hook: Mutex<Option<Hook>>,
    connections: AtomicUsize,
    next_conn_id: AtomicU64,
    conns: Mutex<HashMap<u64, AbortHandle>>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

// ---------------------------------------------------------------------------
// FakeUpstream
// ---------------------------------------------------------------------------

/// A fake registry upstream on `127.0.0.1:<ephemeral>`. Stops on drop.
pub struct FakeUpstream {
    shared: Arc<Shared>,
}

impl FakeUpstream {
    /// Bind 127.0.0.1:0 and start serving. Must be called inside a tokio runtime.
    pub async fn start(behaviour: Behaviour) -> FakeUpstream {
        let listener = bind_reuse("127.0.0.1:0".parse().unwrap()).expect("bind fake upstream");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State {
                honour_range: behaviour.honour_range,
                extra_headers: behaviour.extra_headers,
                ..State::default()
            }),
            requests: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
            connections: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            accept: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(shared.clone(), listener));
        *shared.accept.lock() = Some(task);
        FakeUpstream { shared }
    }

    /// Start with `Behaviour::default()` (range support on, no extra headers).
    pub async fn start_default() -> FakeUpstream {
        Self::start(Behaviour::default()).await
    }

    /// `"http://127.0.0.1:<port>"`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `"127.0.0.1:<port>"` (what goes into an image reference / registry host).
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    // ---- content -----------------------------------------------------------

    /// Register a blob (servable under any repository); returns its digest.
    pub fn add_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        self.shared.state.lock().blobs.insert(digest.clone(), bytes);
        digest
    }

    /// Register `bytes` under a digest they do not hash to (a lying
    /// upstream whose body can also be slowed with [`Fault::Slow`]).
    pub fn add_blob_as(&self, digest: &str, bytes: impl Into<Bytes>) {
        self.shared
            .state
            .lock()
            .blobs
            .insert(digest.to_owned(), bytes.into());
    }

    /// Register a manifest in `repo`, optionally tagging it; returns its digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        let mut st = self.shared.state.lock();
        st.manifests.insert(
            (repo.to_string(), digest.clone()),
            (media_type.to_string(), bytes),
        );
        if let Some(tag) = tag {
            st.tags
                .entry(repo.to_string())
                .or_default()
                .insert(tag.to_string(), digest.clone());
        }
        digest
    }

    /// Point (or move) `repo:tag` at `digest`.
    pub fn set_tag(&self, repo: &str, tag: &str, digest: &str) {
        self.shared
            .state
            .lock()
            .tags
            .entry(repo.to_string())
            .or_default()
            .insert(tag.to_string(), digest.to_string());
    }

    /// Set (or clear with `None`) the `Link` header sent on `repo`'s tags list.
    /// When unset and `?n=` truncates the list, a `rel="next"` Link is generated.
    pub fn set_tags_link(&self, repo: &str, link: Option<&str>) {
        let mut st = self.shared.state.lock();
        match link {
            Some(l) => {
                st.tags_link.insert(repo.to_string(), l.to_string());
            }
            None => {
                st.tags_link.remove(repo);
            }
        }
    }

    /// Serve `body` (an OCI image index) for `GET /v2/<repo>/referrers/<subject>`
    /// instead of the default 404.
    pub fn set_referrers(&self, repo: &str, subject_digest: &str, body: impl Into<Bytes>) {
        self.shared
            .state
            .lock()
            .referrers
            .insert((repo.to_string(), subject_digest.to_string()), body.into());
    }

    // ---- behaviour ---------------------------------------------------------

    /// Turn `Range` support on/off (off: Range ignored, 200 with full body).
    pub fn set_honour_range(&self, on: bool) {
        self.shared.state.lock().honour_range = on;
    }

    /// Replace the headers added to every response.
    pub fn set_extra_headers(&self, headers: &[(&str, &str)]) {
        self.shared.state.lock().extra_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Install the request hook (replaces any previous one). It runs after the
    /// request is recorded and before faults/routing.
    pub fn set_on_request<F>(&self, f: F)
    where
        F: Fn(&RecordedRequest) -> Option<Response<Bytes>> + Send + Sync + 'static,
    {
        *self.shared.hook.lock() = Some(Arc::new(f));
    }

    /// Remove the request hook.
    pub fn clear_on_request(&self) {
        *self.shared.hook.lock() = None;
    }

    // ---- faults ------------------------------------------------------------

    /// Install `fault` for `scope` until cleared (replaces the rule for the same scope).
    pub fn set_fault(&self, scope: Scope, fault: Fault) {
        self.insert_rule(scope, fault, None);
    }

    /// Install `fault` for `scope` for the next `times` matching requests only.
    pub fn set_fault_times(&self, scope: Scope, fault: Fault, times: usize) {
        self.insert_rule(scope, fault, Some(times));
    }

    /// `set_fault(Scope::Digest(digest), fault)`.
    pub fn set_blob_fault(&self, digest: &str, fault: Fault) {
        self.set_fault(Scope::Digest(digest.to_string()), fault);
    }

    /// `set_fault(Scope::Path(path_contains), fault)`.
    pub fn set_path_fault(&self, path_contains: &str, fault: Fault) {
        self.set_fault(Scope::Path(path_contains.to_string()), fault);
    }

    /// `set_fault(Scope::Global, fault)`.
    pub fn set_global_fault(&self, fault: Fault) {
        self.set_fault(Scope::Global, fault);
    }

    /// Remove the rule for `scope`, if any.
    pub fn clear_fault(&self, scope: &Scope) {
        self.shared.state.lock().rules.retain(|r| &r.scope != scope);
    }

    /// Remove all fault rules.
    pub fn clear_faults(&self) {
        self.shared.state.lock().rules.clear();
    }

    fn insert_rule(&self, scope: Scope, fault: Fault, times: Option<usize>) {
        let mut st = self.shared.state.lock();
        st.rules.retain(|r| r.scope != scope);
        if times == Some(0) {
            return;
        }
        st.rules.push(Rule {
            scope,
            fault,
            times,
            frac_idx: 0,
        });
    }

    // ---- up / down ---------------------------------------------------------

    /// Simulate the upstream going down: close the listener (new connections
    /// are refused) and abort all live connections. Completes once the
    /// listening socket is closed.
    pub async fn go_down(&self) {
        shutdown(&self.shared, None).await;
    }

    /// Answer `n` more requests normally; the next request after that gets its
    /// connection closed without a response, and the server goes down as with
    /// [`go_down`](Self::go_down) (listener closed before that client sees the error).
    pub fn refuse_after_requests(&self, n: usize) {
        self.shared.state.lock().refuse_after = Some(n);
    }

    /// Whether the server is currently down.
    pub fn is_down(&self) -> bool {
        self.shared.state.lock().down
    }

    /// Bring the server back up on the same port (SO_REUSEADDR). No-op if it
    /// is up. Fails only if something else grabbed the port meanwhile.
    pub async fn restart(&self) -> io::Result<()> {
        if self
            .shared
            .accept
            .lock()
            .as_ref()
            .is_some_and(|h| !h.is_finished())
        {
            self.shared.state.lock().down = false;
            return Ok(());
        }
        let listener = bind_reuse(self.shared.addr)?;
        {
            let mut st = self.shared.state.lock();
            st.down = false;
            st.refuse_after = None;
        }
        let task = tokio::spawn(accept_loop(self.shared.clone(), listener));
        *self.shared.accept.lock() = Some(task);
        Ok(())
    }

    // ---- accounting --------------------------------------------------------

    /// Number of TCP connections accepted (since start / last `reset_counts`).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Snapshot of all recorded requests, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// Requests with this method (`"*"` = any) whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.shared
            .requests
            .lock()
            .iter()
            .filter(|r| method_matches(method, &r.method) && r.path.contains(path_contains))
            .count()
    }

    /// Recorded requests matching like [`count`](Self::count).
    pub fn requests_matching(&self, method: &str, path_contains: &str) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .iter()
            .filter(|r| method_matches(method, &r.method) && r.path.contains(path_contains))
            .cloned()
            .collect()
    }

    /// Clear recorded requests and the connection counter.
    pub fn reset_counts(&self) {
        self.shared.requests.lock().clear();
        self.shared.connections.store(0, Ordering::SeqCst);
    }

    /// Poll until `count(method, path_contains) >= n` or `timeout`; returns
    /// whether the count was reached.
    pub async fn wait_for_count(
        &self,
        method: &str,
        path_contains: &str,
        n: usize,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count(method, path_contains) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(h) = self.shared.accept.lock().take() {
            h.abort();
        }
        for (_, h) in self.shared.conns.lock().drain() {
            h.abort();
        }
    }
}

fn method_matches(want: &str, got: &Method) -> bool {
    want == "*" || want.is_empty() || got.as_str().eq_ignore_ascii_case(want)
}

fn bind_reuse(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn shutdown(shared: &Arc<Shared>, except_conn: Option<u64>) {
    shared.state.lock().down = true;
    let accept = shared.accept.lock().take();
    if let Some(h) = accept {
        h.abort();
        let _ = h.await; // the listener is dropped (socket closed) once this resolves
    }
    let mut conns = shared.conns.lock();
    let ids: Vec<u64> = conns
        .keys()
        .copied()
        .filter(|id| Some(*id) != except_conn)
        .collect();
    for id in ids {
        if let Some(h) = conns.remove(&id) {
            h.abort();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let id = shared.next_conn_id.fetch_add(1, Ordering::SeqCst);
        let sh = shared.clone();
        // Hold the map lock while spawning so the task can't remove its entry
        // before it is inserted.
        let mut conns = shared.conns.lock();
        let task = tokio::spawn(async move {
            let sh2 = sh.clone();
            let svc = service_fn(move |req| handle(sh2.clone(), id, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            sh.conns.lock().remove(&id);
        });
        conns.insert(id, task.abort_handle());
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Route {
    Base,
    Manifest {
        name: String,
        reference: String,
    },
    /// Blobs are global here: the repository in the path is not checked.
    Blob {
        digest: String,
    },
    TagsList {
        name: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
    Other,
}

/// Split `/v2/<name>/<kind>/<ref>` matching the kind marker from the right.
fn parse_route(path: &str) -> Route {
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    // rest = "<name>/<marker>..." ; find the right-most marker.
    let markers = ["/manifests/", "/blobs/", "/tags/list", "/referrers/"];
    let best = markers
        .iter()
        .filter_map(|m| rest.rfind(m).map(|i| (i, *m)))
        .max_by_key(|(i, _)| *i);
    let Some((i, marker)) = best else {
        return Route::Other;
    };
    let name = &rest[..i];
    let tail = &rest[i + marker.len()..];
    if name.is_empty() {
        return Route::Other;
    }
    let name = name.to_string();
    match marker {
        "/manifests/" if !tail.is_empty() => Route::Manifest {
            name,
            reference: tail.to_string(),
        },
        "/blobs/" if !tail.is_empty() && !tail.starts_with("uploads") => Route::Blob {
            digest: tail.to_string(),
        },
        "/tags/list" if tail.is_empty() => Route::TagsList { name },
        "/referrers/" if !tail.is_empty() => Route::Referrers {
            name,
            digest: tail.to_string(),
        },
        _ => Route::Other,
    }
}

/// What a matched rule tells the content server to do with the body.
#[derive(Debug, Default)]
struct BodyPlan {
    wrong_bytes: bool,
    drop_after: Option<usize>,
    /// Absolute cut position as a fraction of the full content.
    cut_fraction: Option<f64>,
    slow: Option<(usize, Duration)>,
    no_length: bool,
}

async fn handle(
    shared: Arc<Shared>,
    conn_id: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let rec = RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        version: parts.version,
        body,
        conn_id,
        at: Instant::now(),
    };
    shared.requests.lock().push(rec.clone());

    // Down / refuse-after.
    let go_down = {
        let mut st = shared.state.lock();
        if st.down {
            return Err(injected("fake upstream is down"));
        }
        match st.refuse_after.as_mut() {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    };
    if go_down {
        shutdown(&shared, Some(conn_id)).await;
        return Err(injected("fake upstream went down"));
    }

    // Hook.
    let hook = shared.hook.lock().clone();
    if let Some(hook) = hook {
        if let Some(resp) = hook(&rec) {
            let (p, b) = resp.into_parts();
            return Ok(Response::from_parts(p, full(b)));
        }
    }

    let route = parse_route(&rec.path);
    let is_get = rec.method == Method::GET;

    // Fault matching; also snapshot what we need from the state.
    let (fault, extra, honour_range) = {
        let mut st = shared.state.lock();
        let resolved: Option<String> = match &route {
            Route::Blob { digest } => Some(digest.clone()),
            Route::Manifest { name, reference } => {
                if reference.contains(':') {
                    Some(reference.clone())
                } else {
                    st.tags.get(name).and_then(|t| t.get(reference)).cloned()
                }
            }
            Route::Referrers { digest, .. } => Some(digest.clone()),
            _ => None,
        };
        let is_content = matches!(route, Route::Blob { .. } | Route::Manifest { .. });
        let is_blob = matches!(route, Route::Blob { .. });
        let rank = |r: &Rule| -> Option<u8> {
            let (rank, body_ok) = match &r.scope {
                Scope::Digest(d) => (3, resolved.as_deref() == Some(d.as_str()) && is_content),
                Scope::Path(p) => (2, rec.path.contains(p.as_str()) && is_content),
                Scope::Global => (1, is_blob),
            };
            let matches = match &r.scope {
                Scope::Digest(d) => resolved.as_deref() == Some(d.as_str()),
                Scope::Path(p) => rec.path.contains(p.as_str()),
                Scope::Global => true,
            };
            if !matches {
                return None;
            }
            if r.fault.is_body_fault() && !(body_ok && is_get) {
                return None;
            }
            Some(rank)
        };
        let best = st
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| rank(r).map(|k| (k, i)))
            .max_by_key(|(k, i)| (*k, *i))
            .map(|(_, i)| i);
        let fault = best.map(|i| {
            let rule = &mut st.rules[i];
            let out = match &rule.fault {
                Fault::DropAtFractions(fr) => {
                    let f = fr.get(rule.frac_idx).copied();
                    rule.frac_idx += 1;
                    f.map(|f| Fault::DropAtFractions(vec![f]))
                }
                other => Some(other.clone()),
            };
            let exhausted = match &rule.fault {
                Fault::DropAtFractions(fr) => rule.frac_idx >= fr.len(),
                _ => false,
            };
            let mut remove = exhausted;
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
                remove |= *t == 0;
            }
            if remove {
                st.rules.remove(i);
            }
            out
        });
        (fault.flatten(), st.extra_headers.clone(), st.honour_range)
    };

    let mut plan = BodyPlan::default();
    match fault {
        Some(Fault::Status(code, headers)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (ecode, msg) = match code {
                401 => ("UNAUTHORIZED", "authentication required"),
                403 => ("DENIED", "requested access to the resource is denied"),
                404 => match route {
                    Route::Manifest { .. } => ("MANIFEST_UNKNOWN", "manifest unknown"),
                    Route::Blob { .. } => ("BLOB_UNKNOWN", "blob unknown to registry"),
                    _ => ("NAME_UNKNOWN", "repository name not known to registry"),
                },
                429 => ("TOOMANYREQUESTS", "too many requests"),
                503 => ("UNAVAILABLE", "service unavailable"),
                _ => ("UNKNOWN", "unknown error"),
            };
            let mut resp = oci_error(status, ecode, msg);
            add_headers(resp.headers_mut(), &headers);
            add_headers(resp.headers_mut(), &extra);
            return Ok(resp);
        }
        Some(Fault::Hang) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Fault::CloseConnection) => return Err(injected("injected connection close")),
        Some(Fault::WrongBytes) => plan.wrong_bytes = true,
        Some(Fault::DropAfter(n)) => plan.drop_after = Some(n),
        Some(Fault::DropAtFractions(f)) => plan.cut_fraction = f.first().copied(),
        Some(Fault::Slow { chunk, delay }) => plan.slow = Some((chunk, delay)),
        Some(Fault::NoLength) => plan.no_length = true,
        None => {}
    }

    let mut resp = route_request(&shared, &rec, route, plan, honour_range);
    add_headers(resp.headers_mut(), &extra);
    Ok(resp)
}

fn route_request(
    shared: &Shared,
    rec: &RecordedRequest,
    route: Route,
    plan: BodyPlan,
    honour_range: bool,
) -> Response<Body> {
    let method = &rec.method;
    if !matches!(route, Route::Other) && *method != Method::GET && *method != Method::HEAD {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "read-only fake registry",
        );
    }
    let head = *method == Method::HEAD;
    match route {
        Route::Base => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("docker-distribution-api-version", "registry/2.0")
            .body(full(Bytes::from_static(b"{}")))
            .unwrap(),
        Route::Manifest { name, reference } => {
            let found = {
                let st = shared.state.lock();
                let digest = if reference.contains(':') {
                    Some(reference.clone())
                } else {
                    st.tags.get(&name).and_then(|t| t.get(&reference)).cloned()
                };
                digest.and_then(|d| {
                    st.manifests
                        .get(&(name.clone(), d.clone()))
                        .map(|(mt, b)| (d, mt.clone(), b.clone()))
                })
            };
            match found {
                None => oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                ),
                Some((digest, media_type, bytes)) => serve_content(
                    bytes,
                    &digest,
                    &media_type,
                    head,
                    None, // no Range on manifests
                    plan,
                ),
            }
        }
        Route::Blob { digest } => {
            let bytes = shared.state.lock().blobs.get(&digest).cloned();
            match bytes {
                None => oci_error(
                    StatusCode::NOT_FOUND,
                    "BLOB_UNKNOWN",
                    "blob unknown to registry",
                ),
                Some(bytes) => {
                    let range = if honour_range {
                        rec.headers.get("range").and_then(|v| v.to_str().ok())
                    } else {
                        None
                    };
                    let mut resp = serve_content(
                        bytes,
                        &digest,
                        "application/octet-stream",
                        head,
                        range,
                        plan,
                    );
                    if honour_range {
                        resp.headers_mut()
                            .insert("accept-ranges", HeaderValue::from_static("bytes"));
                    }
                    resp
                }
            }
        }
        Route::TagsList { name } => {
            let (tags, link) = {
                let st = shared.state.lock();
                match st.tags.get(&name) {
                    None => (None, None),
                    Some(t) => (
                        Some(t.keys().cloned().collect::<Vec<_>>()),
                        st.tags_link.get(&name).cloned(),
                    ),
                }
            };
            let Some(mut tags) = tags else {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    "repository name not known to registry",
                );
            };
            let q = parse_query(rec.query.as_deref());
            if let Some(last) = q.get("last") {
                tags.retain(|t| t.as_str() > last.as_str());
            }
            let mut auto_link = None;
            if let Some(n) = q.get("n").and_then(|n| n.parse::<usize>().ok()) {
                if tags.len() > n {
                    tags.truncate(n);
                    if let Some(l) = tags.last() {
                        auto_link = Some(format!(
                            "</v2/{name}/tags/list?n={n}&last={l}>; rel=\"next\""
                        ));
                    }
                }
            }
            let body =
                serde_json::to_vec(&serde_json::json!({ "name": name, "tags": tags })).unwrap();
            let mut b = Response::builder()
                .status(200)
                .header("content-type", "application/json");
            if let Some(l) = link.or(auto_link) {
                b = b.header("link", l);
            }
            b.body(full(Bytes::from(body))).unwrap()
        }
        Route::Referrers { name, digest } => {
            let body = shared.state.lock().referrers.get(&(name, digest)).cloned();
            match body {
                None => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "referrers not found"),
                Some(b) => Response::builder()
                    .status(200)
                    .header("content-type", OCI_INDEX)
                    .body(full(b))
                    .unwrap(),
            }
        }
        Route::Other => oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
    }
}

enum RangeSpec {
    Full,
    Partial(usize, usize), // [start, end)
    Unsatisfiable,
}

fn parse_range(h: &str, len: usize) -> RangeSpec {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full; // multi-range: ignore
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // suffix range: last b bytes
        let Ok(n) = b.parse::<usize>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial(len - n.min(len), len);
    }
    let Ok(start) = a.parse::<usize>() else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        len
    } else {
        match b.parse::<usize>() {
            Ok(e) if e >= start => (e + 1).min(len),
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial(start, end)
}

fn serve_content(
    data: Bytes,
    digest: &str,
    media_type: &str,
    head: bool,
    range: Option<&str>,
    plan: BodyPlan,
) -> Response<Body> {
    let total = data.len();
    let spec = range
        .map(|r| parse_range(r, total))
        .unwrap_or(RangeSpec::Full);
    let builder = Response::builder()
        .header("content-type", media_type)
        .header("docker-content-digest", digest);
    let (status, start, end, builder) = match spec {
        RangeSpec::Full => (StatusCode::OK, 0, total, builder),
        RangeSpec::Partial(s, e) => (
            StatusCode::PARTIAL_CONTENT,
            s,
            e,
            builder.header("content-range", format!("bytes {}-{}/{}", s, e - 1, total)),
        ),
        RangeSpec::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("content-range", format!("bytes */{total}"))
                .header("content-length", "0")
                .body(empty())
                .unwrap();
        }
    };
    let builder = builder.status(status);
    let builder = if plan.no_length {
        builder
    } else {
        builder.header("content-length", (end - start).to_string())
    };
    if head {
        return builder.body(empty()).unwrap();
    }
    let data = if plan.wrong_bytes {
        Bytes::from(data.iter().map(|b| b ^ 0xFF).collect::<Vec<u8>>())
    } else {
        data
    };
    let slice = data.slice(start..end);
    // Cut position relative to this response's body.
    let cut = match (plan.drop_after, plan.cut_fraction) {
        (Some(n), _) => Some(n.min(slice.len())),
        (None, Some(f)) => {
            let abs = ((total as f64) * f).floor() as usize;
            Some(abs.saturating_sub(start).min(slice.len()))
        }
        (None, None) => None,
    };
    if cut.is_none() && plan.slow.is_none() && !plan.no_length {
        return builder.body(full(slice)).unwrap();
    }
    let (chunk, delay) = match plan.slow {
        Some((c, d)) => (c, Some(d)),
        None => (DEFAULT_CHUNK, None),
    };
    builder.body(streamed(slice, chunk, delay, cut)).unwrap()
}

/// A streamed body: `chunk`-sized frames with optional `delay` between them;
/// with `cut = Some(n)` it stops after `n` bytes and yields an error, which
/// makes hyper abort the connection mid-body.
fn streamed(data: Bytes, chunk: usize, delay: Option<Duration>, cut: Option<usize>) -> Body {
    struct St {
        data: Bytes,
        pos: usize,
        limit: usize,
        chunk: usize,
        delay: Option<Duration>,
        cut: bool,
        done: bool,
    }
    let st = St {
        limit: cut.unwrap_or(data.len()).min(data.len()),
        data,
        pos: 0,
        chunk: chunk.max(1),
        delay,
        cut: cut.is_some(),
        done: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if st.pos < st.limit {
            if st.pos > 0 {
                if let Some(d) = st.delay {
                    tokio::time::sleep(d).await;
                }
            }
            let end = (st.pos + st.chunk).min(st.limit);
            let b = st.data.slice(st.pos..end);
            st.pos = end;
            return Some((Ok(Frame::data(b)), st));
        }
        st.done = true;
        if st.cut {
            // Let hyper flush what it has buffered (it flushes while we're
            // Pending), then kill the connection via a body error.
            tokio::time::sleep(TRUNCATE_FLUSH_PAUSE).await;
            return Some((Err(injected("injected body truncation")), st));
        }
        None
    });
    StreamBody::new(stream).boxed_unsync()
}

fn injected(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, msg)
}

fn full(b: Bytes) -> Body {
    Full::new(b)
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({
        "errors": [{ "code": code, "message": message, "detail": null }]
    }))
    .unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(Bytes::from(body)))
        .unwrap()
}

fn add_headers(h: &mut HeaderMap, extra: &[(String, String)]) {
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(k.to_string(), v.to_string());
    }
    out
}
