//! Wiring: the parts built from the config ([`parts`]), bind the
//! listeners, run until SIGTERM/SIGINT (reloading on SIGHUP, [`reload`]),
//! drain, flush the index.

mod cluster;
mod parts;
mod reload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cache::Cache;
use crate::config::Config;
use crate::http::{serve, Activity, App, AuditLog, Listener, ServeOptions, Shutdown};
use crate::policy::gate::Gate;

pub use parts::{check_config, eviction, BuildError, Live, Parts};

/// How often batched access times are written to the index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// How often storage health is checked: a failed index reopened, a failed
/// write retried, the free space read. It is also how long a cleared full
/// disk can take to be noticed.
const HEAL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the mirror on `parts`, built from `config` by [`Parts::build`].
/// `config_path` is what `--config` named, re-read on SIGHUP.
pub async fn run(config: Config, parts: Parts, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let Parts {
        metrics,
        upstreams,
        live,
        tls,
    } = parts;
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating cache_dir {}", config.cache_dir.display()))?;
    let cluster = cluster::build(&config, &metrics).await?;
    let cache = Cache::open_tiered(
        &config.cache_dir,
        metrics.clone(),
        cluster.as_ref().map(|c| c.tier.clone()),
    )
    .with_context(|| format!("opening the cache in {}", config.cache_dir.display()))?;
    cache.configure_eviction(live.eviction, live.pins);
    cache.configure_scrub(live.scrub);
    let registry_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding listen address {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin_listen address {}", config.admin_listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen address {addr}"))?,
        ),
        None => None,
    };
    if !config.admin_listen.ip().is_loopback() && live.policy.admin_token.is_none() {
        // Not an error: /admin/* and the status page refuse other hosts
        // (403), only the probes and /metrics answer them.
        tracing::warn!(
            admin_listen = %config.admin_listen,
            "admin_listen is not a loopback address and [auth] admin_token_file is not set: \
             /admin/* and the status page answer only requests from loopback"
        );
    }
    let peer_listener =
        match &cluster {
            Some(c) => Some(TcpListener::bind(c.peer_listen).await.with_context(|| {
                format!("binding cluster.peer_listen address {}", c.peer_listen)
            })?),
            None => None,
        };
    let grace = config.shutdown_grace.get();
    let audit = match &config.audit.log {
        Some(target) => Some(
            AuditLog::open(target, metrics.audit_dropped.clone())
                .with_context(|| format!("opening audit.log {target}"))?,
        ),
        None => None,
    };
    // Events (tag moves, refusals, upstreams down) go to the audit log
    // and to the notification receivers, delivered from here on.
    if let Some(audit) = &audit {
        let audit = audit.clone();
        upstreams
            .notifier()
            .set_audit(Box::new(move |event| audit.write_event(event)));
    }
    let _notifying = upstreams
        .notifier()
        .start()
        .context("starting notification delivery")?;
    let app = Arc::new(App {
        config,
        upstreams,
        cache,
        metrics,
        policy: parking_lot::RwLock::new(Arc::new(live.policy)),
        audit,
        started: std::time::Instant::now(),
        activity: Activity::default(),
        gate: Gate::new(live.gate),
        peer_token: cluster.and_then(|c| c.peer_token),
    });

    // The index is reconciled with the files in the background: hits are
    // served from the files meanwhile, so startup does not wait on a scan.
    // Eviction and the scrub start only after it, when the index's totals
    // and entries are right.
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
        // The scrub returns at shutdown by itself (stop_background).
        tokio::join!(
            eviction_loop(reconciling.clone()),
            reconciling.cache.scrub()
        );
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

    let healing = app.clone();
    let healer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEAL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let app = healing.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = app.cache.heal() {
                    tracing::debug!(error = %e, "storage not healed yet");
                }
            })
            .await;
            // A store that went down is asked again here, not by requests.
            if let Some(shared) = healing.cache.shared() {
                shared.probe().await;
            }
        }
    });

    let (stop, shutdown) = Shutdown::new();
    tracing::info!(
        listen = %registry_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        metrics = %metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
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
    // The optional listeners, plain HTTP with the same limits and grace.
    let plain = |listener, kind| {
        let options = ServeOptions {
            grace,
            limits: app.config.limits.clone(),
            tls: None,
        };
        tokio::spawn(serve(
            listener,
            kind,
            app.clone(),
            shutdown.clone(),
            options,
        ))
    };
    let metrics_server = metrics_listener.map(|l| plain(l, Listener::Metrics));
    let peer_server = peer_listener.map(|l| plain(l, Listener::Peer));
    let admin = tokio::spawn(serve(
        admin_listener,
        Listener::Admin,
        app.clone(),
        shutdown,
        admin_options,
    ));

    // Under systemd (Type=notify) the unit is "started" only now, with every
    // listener bound; elsewhere NOTIFY_SOCKET is unset and this does nothing.
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

    reload::wait_for_stop(&app, tls.as_deref(), config_path.as_deref()).await;
    notify_systemd(sd_notify::NotifyState::Stopping);
    tracing::info!(
        ?grace,
        "shutting down: no new connections, finishing open ones"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let _ = stop.send(true);
    // A scrub or an admin verify stops at its next chunk, so its stream
    // does not hold the admin listener open for the grace period.
    app.cache.stop_background();
    let _ = tokio::join!(registry, admin);
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    if let Some(p) = peer_server {
        let _ = p.await;
    }
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
    healer.abort();
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
