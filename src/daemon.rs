//! Wiring: build the parts from the config, bind the listeners, run until
//! SIGTERM/SIGINT, drain, flush the index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cache::{Cache, Pins, Policy};
use crate::config::Config;
use crate::http::{serve, App, AuditLog, Listener, ServeOptions, Shutdown, Tls};
use crate::metrics::Metrics;
use crate::policy::ClientPolicy;
use crate::upstream::Upstreams;

/// How often batched access times are written to the index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// `config_path` is what `--config` named, re-read on SIGHUP.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating cache_dir {}", config.cache_dir.display()))?;
    let cache = Cache::open(&config.cache_dir, metrics.clone())
        .with_context(|| format!("opening the cache in {}", config.cache_dir.display()))?;
    let upstreams = Upstreams::from_config(&config, metrics.clone())?;
    let tls = Tls::load(&config.tls).map_err(|e| anyhow::anyhow!(e))?;
    cache.configure_eviction(
        Policy::from_config(&config.cache),
        Pins::from_config(&config, &upstreams),
    );
    let registry_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding listen address {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin_listen address {}", config.admin_listen))?;
    let grace = config.shutdown_grace.get();
    let policy = ClientPolicy::from_config(&config).map_err(|e| anyhow::anyhow!(e))?;
    let audit = match &config.audit.log {
        Some(target) => Some(
            AuditLog::open(target, metrics.audit_dropped.clone())
                .with_context(|| format!("opening audit.log {target}"))?,
        ),
        None => None,
    };
    let app = Arc::new(App {
        config,
        upstreams,
        cache,
        metrics,
        policy: parking_lot::RwLock::new(Arc::new(policy)),
        audit,
    });

    // The index is reconciled with the files in the background: hits are
    // served from the files meanwhile, so startup does not wait on a scan.
    // Eviction starts only after it, when the index's totals are right.
    let reconciling = app.clone();
    let evicting = tokio::spawn(async move {
        let app = reconciling.clone();
        let a = app.clone();
        let _ = app
            .cache
            .spawn_blocking(move || match a.cache.reconcile() {
                Ok(report) => tracing::info!(
                    added = report.added,
                    dropped = report.dropped,
                    tags_restored = report.tags_restored,
                    "index reconciled with the blob store"
                ),
                Err(e) => tracing::error!(error = %e, "reconciling the index failed"),
            })
            .await;
        eviction_loop(reconciling).await
    });
    let flushing = app.clone();
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH_INTERVAL);
        loop {
            tick.tick().await;
            flushing.policy.read().limiter.forget_idle();
            let app = flushing.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = app.cache.flush_access_times() {
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
        tls = tls.is_some(),
        auth = app.config.auth.enabled(),
        "regcache serving"
    );
    let registry_options = ServeOptions {
        grace,
        limits: app.config.limits.clone(),
        tls: tls.clone(),
    };
    let admin_options = ServeOptions {
        grace,
        limits: app.config.limits.clone(),
        tls: None,
    };
    let registry = tokio::spawn(serve(
        registry_listener,
        Listener::Registry,
        app.clone(),
        shutdown.clone(),
        registry_options,
    ));
    let admin = tokio::spawn(serve(
        admin_listener,
        Listener::Admin,
        app.clone(),
        shutdown,
        admin_options,
    ));

    // Under systemd (Type=notify) the unit is "started" only now, with both
    // listeners bound; elsewhere NOTIFY_SOCKET is unset and this does nothing.
    notify_systemd(sd_notify::NotifyState::Ready);

    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Ping at half the interval systemd expects; a wedged runtime stops
        // pinging and systemd restarts us.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notify_systemd(sd_notify::NotifyState::Watchdog);
            }
        });
    }

    wait_for_stop(&app, tls.as_deref(), config_path.as_deref()).await;
    notify_systemd(sd_notify::NotifyState::Stopping);
    tracing::info!(
        ?grace,
        "shutting down: no new connections, finishing open ones"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let _ = stop.send(true);
    let _ = tokio::join!(registry, admin);
    // Fills nobody is reading any more still finish if they can in time, so
    // the work is not lost; what is left at the deadline is dropped, and its
    // temporary file with it.
    let abandoned = app
        .cache
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "fills and jobs still running at the end of the grace period are discarded"
        );
    }
    flusher.abort();
    evicting.abort();
    let app_for_flush = app.clone();
    tokio::task::spawn_blocking(move || app_for_flush.cache.flush_access_times())
        .await?
        .context("flushing the index")?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs eviction every `gc_interval`, and as soon as a new entry takes the
/// cache over the high-water mark.
async fn eviction_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.cache.gc_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.cache.over_high_water() => {}
        }
        let a = app.clone();
        match app.cache.spawn_blocking(move || a.cache.evict()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "eviction run failed"),
            Err(e) => tracing::error!(error = %e, "eviction task failed"),
        }
        // A cache held above the mark by pins or open readers would
        // otherwise rescan the index after every fill: at most once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "telling systemd our state failed");
    }
}

/// Runs until SIGTERM or SIGINT, reloading the config on every SIGHUP.
async fn wait_for_stop(app: &App, tls: Option<&Tls>, config_path: Option<&Path>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => reload(app, tls, config_path),
        }
    }
}

/// Applies what can change live; an invalid new config is refused whole and
/// the running one kept.
fn reload(app: &App, tls: Option<&Tls>, config_path: Option<&Path>) {
    notify_systemd(sd_notify::NotifyState::Reloading);
    match Config::load(config_path) {
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the new config is invalid; keeping the running one")
        }
        Ok(new) => {
            let mut needs_restart = app.upstreams.apply(&new);
            match (tls, new.tls.enabled()) {
                (Some(tls), true) => {
                    if let Err(e) = tls.reload(&new.tls) {
                        needs_restart.push(format!("TLS certificate not reloaded: {e}"));
                    }
                }
                (None, false) => {}
                _ => needs_restart.push("tls (turned on or off)".to_owned()),
            }
            match ClientPolicy::from_config(&new) {
                Ok(policy) => *app.policy.write() = Arc::new(policy),
                Err(e) => needs_restart.push(format!("client policy not applied: {e}")),
            }
            // Size bounds and pins apply at once (gc_interval at restart).
            app.cache.configure_eviction(
                Policy::from_config(&new.cache),
                Pins::from_config(&new, &app.upstreams),
            );
            let old = &app.config;
            for (key, changed) in [
                ("listen", old.listen != new.listen),
                ("admin_listen", old.admin_listen != new.admin_listen),
                ("cache_dir", old.cache_dir != new.cache_dir),
                (
                    "default_upstream",
                    old.default_upstream != new.default_upstream,
                ),
                (
                    "timeouts",
                    old.connect_timeout != new.connect_timeout
                        || old.header_timeout != new.header_timeout
                        || old.idle_timeout != new.idle_timeout,
                ),
            ] {
                if changed {
                    needs_restart.push(key.to_owned());
                }
            }
            tracing::info!(offline = new.offline, "config reloaded");
            if !needs_restart.is_empty() {
                tracing::warn!(settings = ?needs_restart, "these changes take effect only after a restart");
            }
        }
    }
    notify_systemd(sd_notify::NotifyState::Ready);
}
