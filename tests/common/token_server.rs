//! An in-process Docker registry token server (the "Bearer" token protocol),
//! so the real `docker-registry` (CNCF distribution 2.8) can run with
//! `auth: token:` and trust the tokens it issues.
//!
//! ```ignore
//! let ts = TokenServer::start("regcache-test-issuer", "regcache-test-registry").await;
//! let (mut registry, fixtures) = ts.start_registry_with_fixtures(64 * 1024);
//! // GET /v2/ on `registry` now answers 401 with
//! //   WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/token",service="regcache-test-registry"
//! let token = ts.fetch_token(&["repository:test/schema2:pull"], None).unwrap();
//! assert_eq!(ts.count_for_scope("repository:test/schema2:pull"), 1);
//! ```
//!
//! What distribution 2.8 wants of a token (`registry/auth/token/token.go`):
//!
//! * A compact JWS, header `{"typ":"JWT","alg":"ES256","x5c":[<std base64 DER>]}`.
//!   The signature is the raw 64-byte `r || s` (JWS form), not DER. The key
//!   is found in this order: `x5c` (the leaf must chain to
//!   `rootcertbundle`; any extended key usage is accepted), `jwk`, `kid`
//!   (libtrust's key ID of a key in `rootcertbundle`). Both `x5c` and `kid`
//!   are implemented here ([`KeyRef`]).
//! * Claims `iss` == the configured issuer, `aud` == the configured service
//!   **as a JSON string** (2.8's `ClaimSet.Audience` is a `string`: an
//!   array fails to unmarshal and the token is "malformed"), `exp`/`nbf`
//!   checked with 60 s of leeway, `access: [{type, name, actions}]`.
//! * The `rootcertbundle` is read once, at start-up.
//!
//! The server runs on its own thread with its own tokio runtime, so a test
//! may block its own thread (start a `Registry`, run skopeo) while the
//! registry or skopeo fetches tokens. Dropping the [`TokenServer`] stops it.
//!
//! Pushing fixtures into a token-auth registry: [`images::load_fixtures`]
//! pushes with skopeo *and reads back with plain unauthenticated HTTP*, so
//! it cannot run against a token-auth registry. [`TokenServer::start_registry_with_fixtures`]
//! starts the registry without auth, loads the fixtures, then appends the
//! `auth:` section to its `config.yml` and restarts it on the same port and
//! storage ([`TokenServer::enable_on`]).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::images::{self, Fixtures};
use super::registry::{http_request, Registry};

/// Default `expires_in` (seconds) of issued tokens, also their `exp - iat`.
pub const DEFAULT_EXPIRES_IN: u64 = 300;

/// How the JWS header names the signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef {
    /// `x5c: [<self-signed cert, std base64 DER>]` (the default).
    X5c,
    /// `kid: <libtrust key ID of the cert's public key>`.
    Kid,
}

/// One `access` entry of a token (and of a parsed scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parses `type:name:actions` (actions comma-separated; the name may
    /// itself contain `:`). `None` if malformed.
    pub fn parse_scope(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Access {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// One request the token server received (any path, any outcome).
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    /// Request target as sent (path and query).
    pub uri: String,
    /// `service` query parameter.
    pub service: Option<String>,
    /// Every `scope` (several parameters, and space-separated values, split).
    pub scopes: Vec<String>,
    /// `account` query parameter.
    pub account: Option<String>,
    /// Whether an `Authorization` header was present (any scheme).
    pub authorization: bool,
    /// User name of a Basic `Authorization` header that matched (the
    /// account the token was issued to).
    pub authenticated_user: Option<String>,
    /// Status of the answer.
    pub status: u16,
    /// What the issued token grants (empty when none was issued).
    pub granted: Vec<Access>,
    /// The issued token, if any.
    pub token: Option<String>,
    pub at: SystemTime,
}

/// Runtime-changeable behaviour.
#[derive(Debug, Clone)]
struct Policy {
    /// Valid Basic accounts; when empty, any Basic credentials are accepted.
    users: Vec<(String, String)>,
    require_auth: bool,
    grant_all_anonymous: bool,
    expires_in: u64,
    key_ref: KeyRef,
    status_override: Option<u16>,
    delay: Duration,
}

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    cert_der_b64: String,
    kid: String,
}

struct Shared {
    issuer: String,
    service: String,
    signer: Signer,
    policy: Mutex<Policy>,
    log: Mutex<Vec<TokenRequest>>,
    jti: AtomicU64,
}

/// Builder for a [`TokenServer`]; see [`TokenServer::builder`].
pub struct TokenServerBuilder {
    issuer: String,
    service: String,
    policy: Policy,
}

impl TokenServerBuilder {
    /// Adds a valid Basic account. Once at least one is configured, Basic
    /// credentials that match none are answered 401.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.policy
            .users
            .push((user.to_string(), password.to_string()));
        self
    }

    /// `expires_in` of the answers and `exp - iat` of the tokens.
    pub fn expires_in(mut self, secs: u64) -> Self {
        self.policy.expires_in = secs;
        self
    }

    /// Starts the server (on its own thread; see the module docs).
    pub async fn start(self) -> TokenServer {
        self.start_blocking()
    }

    /// Same as [`Self::start`], for non-async callers.
    pub fn start_blocking(self) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("regcache-token-server-")
            .tempdir()
            .expect("token server tempdir");

        // ECDSA P-256 key and a self-signed cert for it (no EKU: distribution
        // verifies the chain with ExtKeyUsageAny anyway).
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate P-256 key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "regcache test token signer");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let cert_pem_path = dir.path().join("token-signer.pem");
        fs::write(&cert_pem_path, cert.pem()).expect("write token signer cert");

        let rng = SystemRandom::new();
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .expect("load P-256 key into ring");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let signer = Signer {
            key: signing,
            rng,
            cert_der_b64: b64_std(cert.der()),
            kid: libtrust_key_id(&spki),
        };

        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind token server on 127.0.0.1");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();

        let shared = Arc::new(Shared {
            issuer: self.issuer,
            service: self.service,
            signer,
            policy: Mutex::new(self.policy),
            log: Mutex::new(Vec::new()),
            jti: AtomicU64::new(0),
        });

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                rt.block_on(accept_loop(thread_shared, listener, stop_rx));
                // Dropping the runtime drops every connection task.
            })
            .expect("spawn token server thread");

        TokenServer {
            addr,
            shared,
            cert_pem_path,
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

/// A running token server on 127.0.0.1. Stops when dropped.
pub struct TokenServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cert_pem_path: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a token server with default settings: anonymous `pull`,
    /// Basic-authenticated requests get every action they ask for,
    /// `expires_in` [`DEFAULT_EXPIRES_IN`], `x5c` headers.
    pub async fn start(issuer: &str, service: &str) -> TokenServer {
        Self::builder(issuer, service).start().await
    }

    pub fn builder(issuer: &str, service: &str) -> TokenServerBuilder {
        TokenServerBuilder {
            issuer: issuer.to_string(),
            service: service.to_string(),
            policy: Policy {
                users: Vec::new(),
                require_auth: false,
                grant_all_anonymous: false,
                expires_in: DEFAULT_EXPIRES_IN,
                key_ref: KeyRef::X5c,
                status_override: None,
                delay: Duration::ZERO,
            },
        }
    }

    /// `http://127.0.0.1:<port>/token`
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// libtrust key ID of the signing key (what a [`KeyRef::Kid`] header carries).
    pub fn key_id(&self) -> &str {
        &self.shared.signer.kid
    }

    /// The `auth:` section for `Registry::builder().extra_config(..)`.
    pub fn registry_auth_yaml(&self) -> String {
        // JSON strings are valid YAML double-quoted scalars.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            q(&self.realm()),
            q(self.service()),
            q(self.issuer()),
            q(self.cert_pem_path.to_str().expect("utf-8 cert path")),
        )
    }

    // --- runtime knobs -----------------------------------------------------

    pub fn set_require_auth(&self, yes: bool) {
        self.shared.policy.lock().require_auth = yes;
    }

    pub fn set_key_ref(&self, key_ref: KeyRef) {
        self.shared.policy.lock().key_ref = key_ref;
    }

    /// Answer every request with this status (and an error body) instead
    /// of a token; `None` restores normal service. Still recorded.
    pub fn set_status_override(&self, status: Option<u16>) {
        self.shared.policy.lock().status_override = status;
    }

    // --- accounting --------------------------------------------------------

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.log.lock().clone()
    }

    /// Number of requests so far.
    pub fn count(&self) -> usize {
        self.shared.log.lock().len()
    }

    /// Number of requests that asked for exactly this scope (among others),
    /// e.g. `"repository:test/schema2:pull"`.
    pub fn count_for_scope(&self, scope: &str) -> usize {
        self.shared
            .log
            .lock()
            .iter()
            .filter(|r| r.scopes.iter().any(|s| s == scope))
            .count()
    }

    /// Number of requests whose scopes name this repository (any actions).
    pub fn count_for_repository(&self, name: &str) -> usize {
        self.shared
            .log
            .lock()
            .iter()
            .filter(|r| {
                r.scopes.iter().any(|s| {
                    Access::parse_scope(s).is_some_and(|a| a.kind == "repository" && a.name == name)
                })
            })
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.log.lock().clear();
    }

    // --- tokens --------------------------------------------------------------

    /// Fetches a token over HTTP like a client would (so it is recorded):
    /// `GET /token?service=..&scope=..` with optional Basic credentials.
    /// Blocking; fine from async code since the server has its own thread.
    pub fn fetch_token(
        &self,
        scopes: &[&str],
        basic: Option<(&str, &str)>,
    ) -> Result<String, String> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("service", self.service());
        for s in scopes {
            q.append_pair("scope", s);
        }
        if let Some((u, _)) = basic {
            q.append_pair("account", u);
        }
        let path = format!("/token?{}", q.finish());
        let auth = basic.map(|(u, p)| format!("Basic {}", b64_std(format!("{u}:{p}").as_bytes())));
        let mut headers = vec![];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let resp =
            http_request(self.addr, "GET", &path, &headers, None).map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!(
                "token server answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| e.to_string())?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no token in {v}"))
    }

    /// The claims [`Self::mint`] starts from: this issuer and service,
    /// `iat`/`nbf` now, `exp` now + `lifetime_secs` (may be negative).
    pub fn claims(&self, subject: &str, access: &[Access], lifetime_secs: i64) -> Value {
        let now = unix_now() as i64;
        json!({
            "iss": self.issuer(),
            "sub": subject,
            "aud": self.service(),
            "exp": now + lifetime_secs,
            "nbf": now,
            "iat": now,
            "jti": self.shared.next_jti(),
            "access": access,
        })
    }

    /// Signs arbitrary claims with the server's key (not recorded): for
    /// expired, wrong-audience or wrong-issuer tokens.
    pub fn mint(&self, claims: &Value) -> String {
        let key_ref = self.shared.policy.lock().key_ref;
        self.shared.sign(claims, key_ref)
    }

    /// A pull token for `repository:<name>` made directly (not recorded).
    pub fn mint_pull(&self, repository: &str) -> String {
        let access = [Access {
            kind: "repository".into(),
            name: repository.into(),
            actions: vec!["pull".into()],
        }];
        let lifetime = self.shared.policy.lock().expires_in as i64;
        self.mint(&self.claims("", &access, lifetime))
    }

    // --- registries ----------------------------------------------------------

    /// Starts a registry (empty storage) that trusts this server.
    pub fn start_registry(&self) -> Registry {
        Registry::builder()
            .extra_config(&self.registry_auth_yaml())
            .start()
    }

    /// Starts a registry without auth, pushes the fixtures (big layer of
    /// `big_payload` bytes; see [`images::load_fixtures_with_big_layer`]),
    /// then turns token auth on ([`Self::enable_on`]).
    pub fn start_registry_with_fixtures(&self, big_payload: u64) -> (Registry, Fixtures) {
        let mut registry = Registry::start();
        let fixtures = images::load_fixtures_with_big_layer(&registry, big_payload);
        self.enable_on(&mut registry);
        (registry, fixtures)
    }

    /// Appends [`Self::registry_auth_yaml`] to the registry's
    /// `<dir>/config.yml` and restarts it (same port, same storage). The
    /// registry must have no `auth:` section yet.
    pub fn enable_on(&self, registry: &mut Registry) {
        let config = registry.dir().join("config.yml");
        let mut yaml = fs::read_to_string(&config)
            .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
        assert!(
            !yaml.lines().any(|l| l.starts_with("auth:")),
            "{} already has an auth section",
            config.display()
        );
        if !yaml.ends_with('\n') {
            yaml.push('\n');
        }
        yaml.push_str(&self.registry_auth_yaml());
        fs::write(&config, yaml).unwrap();
        registry.restart();
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Serving

async fn accept_loop(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("token server listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(status: StatusCode, extra: &[(&str, String)], body: Value) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in extra {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"errors": [{"code": code, "message": message, "detail": null}]})
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let policy = shared.policy.lock().clone();
    if !policy.delay.is_zero() {
        tokio::time::sleep(policy.delay).await;
    }

    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let mut service = None;
    let mut account = None;
    let mut scopes = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "service" => service = Some(v.into_owned()),
            "account" => account = Some(v.into_owned()),
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string)),
            _ => {}
        }
    }
    let auth_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = TokenRequest {
        method: req.method().to_string(),
        uri,
        service: service.clone(),
        scopes: scopes.clone(),
        account,
        authorization: req.headers().contains_key(header::AUTHORIZATION),
        authenticated_user: None,
        status: 0,
        granted: Vec::new(),
        token: None,
        at: SystemTime::now(),
    };
    let resp = answer(shared, &policy, &req, auth_header.as_deref(), &mut record);
    record.status = resp.status().as_u16();
    shared.log.lock().push(record);
    resp
}

fn answer(
    shared: &Shared,
    policy: &Policy,
    req: &Request<Incoming>,
    auth_header: Option<&str>,
    record: &mut TokenRequest,
) -> Response<Full<Bytes>> {
    if let Some(status) = policy.status_override {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return respond(status, &[], error_body("UNKNOWN", "injected failure"));
    }
    if req.uri().path() != "/token" {
        return respond(
            StatusCode::NOT_FOUND,
            &[],
            error_body("NOT_FOUND", "no such path"),
        );
    }
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            &[("Allow", "GET".to_string())],
            error_body("UNSUPPORTED", "only GET /token"),
        );
    }
    let challenge = [(
        "WWW-Authenticate",
        format!("Basic realm=\"{}\"", shared.service),
    )];
    let unauthorized = |msg: &str| {
        respond(
            StatusCode::UNAUTHORIZED,
            &challenge,
            error_body("UNAUTHORIZED", msg),
        )
    };

    // Authentication.
    let mut user = None;
    if let Some(h) = auth_header {
        let Some(b64) = h
            .strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
        else {
            return unauthorized("unsupported authorization scheme");
        };
        let Some((u, p)) = b64_std_decode(b64.trim())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        else {
            return unauthorized("malformed Basic credentials");
        };
        let ok =
            policy.users.is_empty() || policy.users.iter().any(|(uu, pp)| *uu == u && *pp == p);
        if !ok {
            return unauthorized("invalid username or password");
        }
        user = Some(u);
    }
    if policy.require_auth && user.is_none() {
        return unauthorized("authentication required");
    }
    if let Some(s) = &record.service {
        if *s != shared.service {
            return respond(
                StatusCode::BAD_REQUEST,
                &[],
                error_body("INVALID_REQUEST", &format!("unknown service {s:?}")),
            );
        }
    }
    record.authenticated_user = user.clone();

    // Authorization: pull for everyone, everything asked for when
    // authenticated (or when grant_all_anonymous).
    let grant_all = user.is_some() || policy.grant_all_anonymous;
    let mut granted: Vec<Access> = Vec::new();
    for s in &record.scopes {
        let Some(mut a) = Access::parse_scope(s) else {
            return respond(
                StatusCode::BAD_REQUEST,
                &[],
                error_body("INVALID_REQUEST", &format!("malformed scope {s:?}")),
            );
        };
        if !grant_all {
            a.actions.retain(|x| x == "pull");
        }
        // Merge repeats of the same resource.
        if let Some(g) = granted
            .iter_mut()
            .find(|g| g.kind == a.kind && g.name == a.name)
        {
            let set: BTreeSet<String> = g.actions.drain(..).chain(a.actions).collect();
            g.actions = set.into_iter().collect();
        } else {
            granted.push(a);
        }
    }

    let now = SystemTime::now();
    let iat = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = json!({
        "iss": shared.issuer,
        "sub": user.clone().unwrap_or_default(),
        "aud": shared.service,
        "exp": iat + policy.expires_in as i64,
        "nbf": iat,
        "iat": iat,
        "jti": shared.next_jti(),
        "access": granted,
    });
    let token = shared.sign(&claims, policy.key_ref);
    record.granted = granted;
    record.token = Some(token.clone());
    respond(
        StatusCode::OK,
        &[],
        json!({
            "token": token,
            "access_token": token,
            "expires_in": policy.expires_in,
            "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
        }),
    )
}

impl Shared {
    fn next_jti(&self) -> String {
        let mut r = [0u8; 8];
        self.signer.rng.fill(&mut r).expect("rng");
        format!(
            "{}-{}",
            self.jti.fetch_add(1, Ordering::Relaxed),
            hex::encode(r)
        )
    }

    /// Compact ES256 JWS of `claims`.
    fn sign(&self, claims: &Value, key_ref: KeyRef) -> String {
        let header = match key_ref {
            KeyRef::X5c => json!({"typ": "JWT", "alg": "ES256", "x5c": [self.signer.cert_der_b64]}),
            KeyRef::Kid => json!({"typ": "JWT", "alg": "ES256", "kid": self.signer.kid}),
        };
        let signing_input = format!(
            "{}.{}",
            b64_url(header.to_string().as_bytes()),
            b64_url(claims.to_string().as_bytes())
        );
        let sig = self
            .signer
            .key
            .sign(&self.signer.rng, signing_input.as_bytes())
            .expect("ES256 sign");
        format!("{signing_input}.{}", b64_url(sig.as_ref()))
    }
}

/// Decodes a token's claims (no verification), for assertions.
pub fn decode_claims(token: &str) -> Option<Value> {
    decode_part(token, 1)
}

/// Decodes a token's JWS header (no verification).
pub fn decode_header(token: &str) -> Option<Value> {
    decode_part(token, 0)
}

fn decode_part(token: &str, i: usize) -> Option<Value> {
    let part = token.split('.').nth(i)?;
    let std: String = part
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let padded = format!("{std}{}", "=".repeat((4 - std.len() % 4) % 4));
    serde_json::from_slice(&b64_std_decode(&padded)?).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// Encodings (kept local so the test support needs no base64/base32 crate)

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (chunk.get(1).copied().unwrap_or(0) as u32) << 8
            | chunk.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(alphabet[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding (x5c, Basic).
pub fn b64_std(bytes: &[u8]) -> String {
    b64(bytes, B64_STD, true)
}

/// base64url without padding (JWS).
pub fn b64_url(bytes: &[u8]) -> String {
    b64(bytes, B64_URL, false)
}

/// Standard base64 (padding required); `None` if malformed.
pub fn b64_std_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci == s.len() / 4 - 1;
        let mut v = 0u32;
        let mut pads = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let d = if c == b'=' {
                if !last || i < 2 {
                    return None;
                }
                pads += 1;
                0
            } else {
                if pads > 0 {
                    return None;
                }
                B64_STD.iter().position(|&a| a == c)? as u32
            };
            v = v << 6 | d;
        }
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pads]);
    }
    Some(out)
}

/// libtrust's key ID: the first 240 bits of sha256(SPKI DER), base32
/// without padding, in 12 groups of 4 joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = Sha256::digest(spki_der);
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut s = String::new();
    for &b in &h[..30] {
        bits = bits << 8 | b as u32;
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            s.push(B32[(bits >> nbits & 31) as usize] as char);
        }
    }
    s.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}
