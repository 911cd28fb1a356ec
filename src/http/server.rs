//! Accept loops for both listeners, with graceful shutdown: stop
//! accepting, let in-flight responses finish within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::body::Body;
use super::tls::Tls;
use super::{audit, App, RequestLog};
use crate::config::LimitsConfig;

/// Told to every accept loop when the process is asked to stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[derive(Clone, Copy)]
pub enum Listener {
    Registry,
    Admin,
}

/// How one listener treats its connections.
pub struct ServeOptions {
    pub grace: Duration,
    pub limits: LimitsConfig,
    /// HTTPS when set (the registry listener only).
    pub tls: Option<Arc<Tls>>,
}

/// Serves `listener` until shutdown, then waits up to `grace` for open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    kind: Listener,
    app: Arc<App>,
    mut shutdown: Shutdown,
    options: ServeOptions,
) {
    let limits = &options.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: a client gets this long to send its request headers.
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    // Taken before accept: past the limit, clients wait in the kernel's
    // backlog instead of costing us memory.
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit,
            _ = shutdown.wait() => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(dispatch(app, kind, peer, request).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = options.tls.as_ref().map(|t| t.acceptor());
        let handshake_timeout = limits.header_read_timeout.get();
        tokio::spawn(
            async move {
                let _permit = permit;
                let result = match tls {
                    None => {
                        watcher
                            .watch(
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .into_owned(),
                            )
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls_stream)) => {
                                watcher
                                    .watch(
                                        builder
                                            .serve_connection(TokioIo::new(tls_stream), service)
                                            .into_owned(),
                                    )
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?options.grace, "connections still open after the grace period; closing them");
    }
}

// Lint gate: `async fn` is the fix, left to the http rework (issue 11)
// to spare it a re-indented body.
#[allow(clippy::manual_async_fn)]
fn dispatch(
    app: Arc<App>,
    kind: Listener,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> impl Future<Output = hyper::Response<Body>> {
    async move {
        let started = tokio::time::Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // The query carries routing (containerd's ns=) and paging, never secrets.
        let query = request.uri().query().unwrap_or("").to_owned();
        let mut log = RequestLog::new(peer.ip());
        let mut response = match kind {
            Listener::Registry => super::handle(&app, peer.ip(), request, &mut log).await,
            Listener::Admin => {
                log.route = "admin";
                super::admin_service(app.clone(), request).await
            }
        };
        let status = response.status().as_u16();
        if let (Listener::Registry, Some(audit)) = (kind, &app.audit) {
            let digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let entry = audit::Entry {
                time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                client: log.client.to_string(),
                user: log.user.clone(),
                method: method.to_string(),
                upstream: log.upstream.as_deref().map(str::to_owned),
                repository: log.repository.clone(),
                reference: log.reference.clone(),
                digest,
                status,
                bytes: 0,
                outcome: if log.outcome.is_empty() {
                    "-".into()
                } else {
                    log.outcome.into()
                },
                duration_ms: 0,
            };
            let (parts, body) = response.into_parts();
            response = hyper::Response::from_parts(
                parts,
                audit::Audited::wrap(body, audit.clone(), entry, started),
            );
        }
        if matches!(kind, Listener::Registry) {
            app.metrics
                .requests
                .with_label_values(&[log.route, method.as_str(), &status.to_string()])
                .inc();
            app.metrics
                .request_duration
                .with_label_values(&[log.route])
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(
                target: "regcache::access",
                client = %log.client,
                user = log.user.as_deref().unwrap_or("-"),
                method = %method,
                path = %path,
                query = %query,
                status,
                route = log.route,
                upstream = log.upstream.as_deref().unwrap_or("-"),
                outcome = if log.outcome.is_empty() { "-" } else { log.outcome },
                ms_to_headers = started.elapsed().as_millis() as u64,
                "request"
            );
        }
        response
    }
}
