//! The management commands, one file each: `healthcheck`, `ls`, `purge`,
//! `gc`, `verify`, `prefetch`, `export`, `import`, `tags`. This file holds what
//! they share: opening the local cache, the runtime, output helpers.
//!
//! Each first asks whether a daemon answers on `admin_listen`
//! (`admin_client`). If one does, the command goes through its admin API,
//! because sled lets one process at a time open the index. If none does,
//! the command opens the cache directory itself (which also takes the
//! index lock, so a daemon started meanwhile waits its turn). `verify`
//! against a daemon checks the files' contents only (the index is the
//! daemon's); `export` reads the committed files directly either way (they
//! are immutable).

mod admin_client;
mod export;
mod gc;
mod healthcheck;
pub mod image;
mod import;
mod ls;
pub mod prefetch;
mod purge;
pub mod tags;
mod verify;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{anyhow, Context};

pub use admin_client::Daemon;
pub use export::export;
pub use gc::gc;
pub use healthcheck::{healthcheck, reachable_addr};
pub use import::{import, ImportTarget};
pub use ls::ls;
pub use purge::purge;
pub use verify::verify;

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Opens the cache directory of a stopped daemon.
pub fn open_local(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Cache> {
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating cache_dir {}", config.cache_dir.display()))?;
    Cache::open(&config.cache_dir, metrics).map_err(|e| match e {
        crate::cache::CacheError::Locked(m) => anyhow!(
            "{m}: no daemon answers on admin_listen {}, so another process has it open",
            config.admin_listen
        ),
        e => anyhow!("opening the cache in {}: {e}", config.cache_dir.display()),
    })
}

/// The local cache made ready for work: index reconciled (fast, as at
/// daemon startup) and eviction configured.
fn open_ready(config: &Config, upstreams: &Upstreams) -> anyhow::Result<Cache> {
    let cache = open_local(config, Arc::new(Metrics::new()))?;
    cache.reconcile().context("reconciling the index")?;
    let (policy, pins) = crate::daemon::eviction(config, upstreams);
    cache.configure_eviction(policy, pins);
    Ok(cache)
}

pub fn upstreams(config: &Config) -> anyhow::Result<Upstreams> {
    Ok(Upstreams::from_config(config, Arc::new(Metrics::new()))?)
}

pub fn human_bytes(n: u64) -> String {
    crate::config::ByteSize(n).approx()
}

/// Whether progress bars may be drawn.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// The progress bar of a transfer counted in bytes.
pub fn byte_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ")
}
