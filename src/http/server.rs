//! Accept loops for both listeners, with graceful shutdown: stop
//! accepting, let in-flight responses finish within the grace period.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::app::{App, RequestLog};
use super::audit;
use super::body::Body;
use super::tls::Tls;
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
    /// `metrics_listen`: the probes and `/metrics`, nothing else.
    Metrics,
    /// `[cluster] peer_listen`: the other replicas' fill streams.
    Peer,
}

/// How one listener treats its connections.
pub struct ServeOptions {
    pub grace: Duration,
    pub limits: LimitsConfig,
    /// HTTPS when set (the registry listener only).
    pub tls: Option<Arc<Tls>>,
}

/// The pause after a failed accept: from [`AcceptBackoff::FIRST`] doubling
/// to [`AcceptBackoff::MAX`], back to the start after an accept succeeds.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(Self::MAX);
        pause
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }
}

/// Open connections per client address, so one host cannot take every
/// slot of `max_connections`. An address is in the map only while it has a
/// connection open, so the map is bounded by `max_connections`.
struct PerClient {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerClient {
    fn new(limit: usize) -> PerClient {
        PerClient {
            limit,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it already
    /// holds `limit`.
    fn try_acquire(&self, ip: IpAddr) -> Option<ClientSlot> {
        // An IPv4 client on a dual-stack socket is the same host either way.
        let ip = ip.to_canonical();
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            open: self.open.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().len()
    }
}

/// One open connection counted against its address; released on drop,
/// however the connection ends.
struct ClientSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Entry::Occupied(mut count) = open.entry(self.ip) {
            *count.get_mut() = count.get().saturating_sub(1);
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// Runs `conn` but drops it (closing the socket) unless `first` is notified
/// by `deadline`. hyper's header timeout starts only once the protocol is
/// known, which takes a first byte, so a silent connection would otherwise
/// hold its slot for ever.
async fn first_request_by<F: Future>(
    conn: F,
    first: &Notify,
    deadline: Instant,
) -> Option<F::Output> {
    tokio::pin!(conn);
    tokio::select! {
        biased;
        out = &mut conn => return Some(out),
        _ = first.notified() => {}
        _ = tokio::time::sleep_until(deadline) => return None,
    }
    Some(conn.await)
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
    let per_client = PerClient::new(limits.max_connections_per_client);
    let graceful = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
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
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin, longer
                // while it lasts.
                let pause = backoff.next();
                tracing::warn!(error = %e, retry_in = ?pause, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait() => break,
                }
                continue;
            }
        };
        // From accept: a TLS handshake and the first request head share it.
        let deadline = Instant::now() + limits.header_read_timeout.get();
        let Some(slot) = per_client.try_acquire(peer.ip()) else {
            app.metrics
                .connections_refused
                .with_label_values(&["per_client"])
                .inc();
            tracing::debug!(%peer, limit = limits.max_connections_per_client, "too many connections from this address; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let first = Arc::new(Notify::new());
        let app = app.clone();
        let service = {
            let first = first.clone();
            service_fn(move |request: hyper::Request<Incoming>| {
                // Called once a request head is complete.
                first.notify_one();
                let app = app.clone();
                async move { Ok::<_, Infallible>(dispatch(app, kind, peer, request).await) }
            })
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = options.tls.as_ref().map(|t| t.acceptor());
        let handshake_timeout = limits.header_read_timeout.get();
        tokio::spawn(
            async move {
                let _permit = permit;
                let _slot = slot;
                let served = async move {
                    match tls {
                        None => Some(
                            watcher
                                .watch(
                                    builder
                                        .serve_connection(TokioIo::new(stream), service)
                                        .into_owned(),
                                )
                                .await,
                        ),
                        Some(acceptor) => {
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls_stream)) => Some(
                                    watcher
                                        .watch(
                                            builder
                                                .serve_connection(TokioIo::new(tls_stream), service)
                                                .into_owned(),
                                        )
                                        .await,
                                ),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    None
                                }
                            }
                        }
                    }
                };
                match first_request_by(served, &first, deadline).await {
                    None => tracing::debug!(
                        "no request head within header_read_timeout of accept; closing"
                    ),
                    Some(Some(Err(e))) => {
                        tracing::debug!(error = %e, "connection ended with an error")
                    }
                    Some(_) => {}
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

async fn dispatch(
    app: Arc<App>,
    kind: Listener,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Body> {
    let started = tokio::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The query carries routing (containerd's ns=) and paging, never secrets.
    let query = request.uri().query().unwrap_or("").to_owned();
    let mut log = RequestLog::new(peer.ip());
    let response = match kind {
        Listener::Registry => super::api::handle(&app, peer.ip(), request, &mut log).await,
        Listener::Admin => {
            log.route = "admin";
            super::admin::admin_service(app.clone(), peer, request).await
        }
        Listener::Metrics => {
            log.route = "metrics";
            super::admin::metrics_service(&app, &request).await
        }
        Listener::Peer => super::peer::handle(&app, &request, &mut log).await,
    };
    let status = response.status().as_u16();
    match kind {
        Listener::Registry => app.activity.record(&log, &method, &path, status),
        // Counted and logged like client requests, but not the clients'
        // activity on the status page.
        Listener::Peer => {}
        Listener::Admin | Listener::Metrics => return response,
    }
    app.metrics
        .requests
        .with_label_values(&[log.route, method.as_str(), &status.to_string()])
        .inc();
    app.metrics
        .request_duration
        .with_label_values(&[log.route])
        .observe(started.elapsed().as_secs_f64());
    let ms_to_headers = started.elapsed().as_millis() as u64;
    let audit = app.audit.clone().map(|audit| {
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
        (audit, entry)
    });
    // What the response promises to send: nothing after the headers of a
    // HEAD, 204 or 304, whatever the body holds.
    let length = if method == http::Method::HEAD || status == 204 || status == 304 {
        Some(0)
    } else {
        response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or_else(|| http_body::Body::size_hint(response.body()).exact())
    };
    // The line is written when the body ends, so it carries the bytes sent
    // and the whole duration; in the connection's span, wherever that is.
    let span = tracing::Span::current();
    let (parts, body) = response.into_parts();
    let body = super::body::tally(body, length, move |bytes_sent, ending| {
        let elapsed = started.elapsed();
        let _in = span.enter();
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
            ms_to_headers,
            bytes_sent,
            ms_total = elapsed.as_millis() as u64,
            end = ending.label(),
            "request"
        );
        if let Some((audit, entry)) = audit {
            audit.write(&entry.ended(bytes_sent, ending, elapsed));
        }
    });
    hyper::Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
    }

    #[test]
    fn per_client_slots_cap_an_address_and_are_released_on_drop() {
        let per_client = PerClient::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = per_client.try_acquire(a).unwrap();
        let second = per_client.try_acquire(mapped).unwrap();
        assert!(per_client.try_acquire(a).is_none(), "a third from one host");
        let other = per_client.try_acquire(b).unwrap();
        drop(first);
        let again = per_client.try_acquire(a).unwrap();
        drop((second, again, other));
        assert_eq!(
            per_client.addresses(),
            0,
            "no entry outlives its connections"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_by_the_deadline_is_dropped() {
        let first = Notify::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let silent = first_request_by(std::future::pending::<()>(), &first, deadline);
        assert_eq!(silent.await, None);

        // Once a request arrived, the deadline no longer applies.
        let first = Notify::new();
        first.notify_one();
        let deadline = Instant::now() + Duration::from_secs(1);
        let slow = first_request_by(
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                7
            },
            &first,
            deadline,
        );
        assert_eq!(slow.await, Some(7));
    }
}
