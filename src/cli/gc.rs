//! `regcache gc`: run eviction now.

use std::process::ExitCode;

use super::{human_bytes, open_ready, runtime, upstreams, Daemon};
use crate::cache::GcReport;
use crate::config::Config;

/// `json`: the report as the admin API answers it, on one line.
pub fn gc(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report: GcReport = if let Some(daemon) = Daemon::find(config) {
        runtime()?.block_on(async {
            let (_, r) = daemon
                .call(daemon.admin(reqwest::Method::POST, "/admin/gc"))
                .await?;
            anyhow::Ok(r)
        })?
    } else {
        let ups = upstreams(config)?;
        open_ready(config, &ups)?.evict()?
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "evicted {} by size and {} by age, {} freed; {} -> {} ({} pinned and {} open left alone); {} tags of evicted manifests forgotten",
        report.evicted_size,
        report.evicted_age,
        human_bytes(report.bytes_freed),
        human_bytes(report.total_before),
        human_bytes(report.total_after),
        report.pinned_skipped,
        report.open_skipped,
        report.tags_dropped
    );
    Ok(ExitCode::SUCCESS)
}
