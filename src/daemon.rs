//! Wiring: build the parts from the config, bind the listeners, run until
//! SIGTERM/SIGINT, drain, flush the index.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cache::Cache;
use crate::config::Config;
use crate::http::{serve, App, Listener, Shutdown};
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// How often batched access times are written to the index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating cache_dir {}", config.cache_dir.display()))?;
    let cache = Cache::open(&config.cache_dir, metrics.clone())
        .with_context(|| format!("opening the cache in {}", config.cache_dir.display()))?;
    let upstreams = Upstreams::from_config(&config, metrics.clone())?;
    let registry_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding listen address {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin_listen address {}", config.admin_listen))?;
    let grace = config.shutdown_grace.get();
    let app = Arc::new(App {
        config,
        upstreams,
        cache,
        metrics,
    });

    // The index is reconciled with the files in the background: hits are
    // served from the files meanwhile, so startup does not wait on a scan.
    let reconciling = app.clone();
    tokio::task::spawn_blocking(move || match reconciling.cache.reconcile() {
        Ok(report) => tracing::info!(
            added = report.added,
            dropped = report.dropped,
            "index reconciled with the blob store"
        ),
        Err(e) => tracing::error!(error = %e, "reconciling the index failed"),
    });
    let flushing = app.clone();
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH_INTERVAL);
        loop {
            tick.tick().await;
            let app = flushing.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = app.cache.index.flush_access_times() {
                    tracing::warn!(error = %e, "flushing access times failed");
                }
            })
            .await;
        }
    });

    let (stop, shutdown) = Shutdown::new();
    tracing::info!(
        listen = %registry_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        cache_dir = %app.config.cache_dir.display(),
        default_upstream = %app.config.default_upstream,
        "regcache serving"
    );
    let registry = tokio::spawn(serve(
        registry_listener,
        Listener::Registry,
        app.clone(),
        shutdown.clone(),
        grace,
    ));
    let admin = tokio::spawn(serve(
        admin_listener,
        Listener::Admin,
        app.clone(),
        shutdown,
        grace,
    ));

    // Under systemd (Type=notify) the unit is "started" only now, with both
    // listeners bound; elsewhere NOTIFY_SOCKET is unset and this does nothing.
    notify_systemd(sd_notify::NotifyState::Ready);

    wait_for_signal().await;
    notify_systemd(sd_notify::NotifyState::Stopping);
    tracing::info!(
        ?grace,
        "shutting down: no new connections, finishing open ones"
    );
    let _ = stop.send(true);
    let _ = tokio::join!(registry, admin);
    flusher.abort();
    let app_for_flush = app.clone();
    tokio::task::spawn_blocking(move || app_for_flush.cache.index.flush_access_times())
        .await?
        .context("flushing the index")?;
    tracing::info!("stopped");
    Ok(())
}

fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "telling systemd our state failed");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
