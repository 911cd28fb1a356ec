//! SIGHUP: read the config again and apply what can change live, through
//! the same build step as startup. An invalid new config is refused whole
//! and the running one kept; what needs a restart is named in a warning.

use std::path::Path;
use std::sync::Arc;

use super::notify_systemd;
use super::parts::Live;
use crate::config::{Config, ConfigError};
use crate::http::{App, Tls};
use crate::policy::PolicyError;

/// Runs until SIGTERM or SIGINT, reloading the config on every SIGHUP.
pub(super) async fn wait_for_stop(app: &App, tls: Option<&Tls>, config_path: Option<&Path>) {
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

/// Why a new config is refused.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

fn reload(app: &App, tls: Option<&Tls>, config_path: Option<&Path>) {
    notify_systemd(sd_notify::NotifyState::Reloading);
    match rebuild(app, config_path) {
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the new config is invalid; keeping the running one")
        }
        Ok((new, live)) => apply(app, tls, &new, live),
    }
    notify_systemd(sd_notify::NotifyState::Ready);
}

/// The new config and its live parts, built before anything is applied.
fn rebuild(app: &App, config_path: Option<&Path>) -> Result<(Config, Live), Refused> {
    let new = Config::load(config_path)?;
    let mut live = Live::build(&new, &app.upstreams)?;
    // An upstream the new config drops keeps running until a restart, and
    // keeps its rules until then.
    live.policy.repos.inherit(&app.policy.read().repos);
    Ok((new, live))
}

fn apply(app: &App, tls: Option<&Tls>, new: &Config, live: Live) {
    let mut needs_restart = app.upstreams.apply(new);
    match (tls, new.tls.enabled()) {
        (Some(tls), true) => {
            if let Err(e) = tls.reload(&new.tls) {
                needs_restart.push(format!("TLS certificate not reloaded: {e}"));
            }
        }
        (None, false) => {}
        _ => needs_restart.push("tls (turned on or off)".to_owned()),
    }
    *app.policy.write() = Arc::new(live.policy);
    // Size bounds, pins and the scrub apply at once (gc_interval at restart).
    app.cache.configure_eviction(live.eviction, live.pins);
    app.cache.configure_scrub(live.scrub);
    app.gate.apply(live.gate);
    let old = &app.config;
    for (key, changed) in [
        ("listen", old.listen != new.listen),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
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
        ("notifications", old.notifications != new.notifications),
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
