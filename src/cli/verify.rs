//! `regcache verify`: re-hash every cached file (the daemon must be stopped).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;

use super::{byte_style, human_bytes, interactive, open_local, Daemon};
use crate::cache::verify::VerifyReport;
use crate::config::Config;
use crate::metrics::Metrics;

pub fn verify(config: &Config, repair: bool) -> anyhow::Result<ExitCode> {
    if Daemon::find(config).is_some() {
        bail!(
            "a regcache daemon answers on {}: stop it first (verify needs the index, which the daemon holds)",
            config.admin_listen
        );
    }
    // No reconcile here: it would quietly fix what verify is to report.
    let cache = open_local(config, Arc::new(Metrics::new()))?;
    let total = cache.indexed_bytes().unwrap_or(0);
    let bar = interactive().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(byte_style());
        bar.set_message("verifying");
        bar
    });
    let report: VerifyReport = cache.verify(repair, &mut |n| {
        if let Some(b) = &bar {
            b.inc(n)
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for p in &report.problems {
        println!("{p}");
    }
    println!(
        "checked {} files ({}): {} problems{}",
        report.files_checked,
        human_bytes(report.bytes_checked),
        report.problems.len(),
        if report.repaired {
            ", repaired"
        } else if report.problems.is_empty() {
            ""
        } else {
            " (run with --repair to fix)"
        }
    );
    Ok(if report.problems.is_empty() || report.repaired {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
