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
use tracing::Instrument;

use super::body::Body;
use super::{App, RequestLog};

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

/// Serves `listener` until shutdown, then waits up to `grace` for open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    kind: Listener,
    app: Arc<App>,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slow clients get this long to send their headers.
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024);
    builder.http2().max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    loop {
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
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(
            async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
}

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
        let mut log = RequestLog::default();
        let response = match kind {
            Listener::Registry => super::handle(&app, request, &mut log).await,
            Listener::Admin => {
                log.route = "admin";
                super::admin_service(app.clone(), request).await
            }
        };
        let status = response.status().as_u16();
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
                client = %peer,
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
