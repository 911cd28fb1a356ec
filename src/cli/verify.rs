//! `regcache verify`: re-hash every cached file. Against a running daemon
//! it asks the daemon to (`POST /admin/verify`), which checks the files'
//! contents while it serves; with the daemon stopped it also checks the
//! index against the files.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;

use super::{byte_style, human_bytes, interactive, open_local, runtime, Daemon};
use crate::cache::scrub::VerifyPlan;
use crate::cache::verify::{Problem, VerifyReport};
use crate::config::Config;
use crate::metrics::Metrics;

pub fn verify(config: &Config, repair: bool) -> anyhow::Result<ExitCode> {
    let bar = interactive().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(byte_style());
        bar.set_message("verifying");
        bar
    });
    let report = if let Some(daemon) = Daemon::find(config) {
        if bar.is_none() {
            eprintln!("verifying through the running daemon (file contents; stop it to also check the index)");
        }
        runtime()?.block_on(through_daemon(&daemon, repair, bar.as_ref()))?
    } else {
        // No reconcile here: it would quietly fix what verify is to report.
        let cache = open_local(config, Arc::new(Metrics::new()))?;
        if let Some(b) = &bar {
            b.set_length(cache.indexed_bytes().unwrap_or(0));
        }
        let report = cache.verify(repair, &mut |n| {
            if let Some(b) = &bar {
                b.inc(n)
            }
        })?;
        for p in &report.problems {
            println!("{p}");
        }
        report
    };
    if let Some(b) = bar {
        b.finish_and_clear();
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

/// One line of the daemon's answer to `POST /admin/verify`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Plan(VerifyPlan),
    CheckedBytes(u64),
    Problem(Problem),
    Done(VerifyReport),
    Error(String),
}

/// Streams the daemon's pass, printing each problem as it is found.
async fn through_daemon(
    daemon: &Daemon,
    repair: bool,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<VerifyReport> {
    let path = if repair {
        "/admin/verify?repair=true"
    } else {
        "/admin/verify"
    };
    let response = daemon
        .admin(reqwest::Method::POST, path)
        .send()
        .await
        .context("asking the daemon")?;
    let status = response.status();
    if !status.is_success() {
        let bytes = response.bytes().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        bail!(
            "the daemon answered {status}: {}",
            body["error"].as_str().unwrap_or("no message")
        );
    }
    let mut stream = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("reading the daemon's answer")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: Event =
                serde_json::from_slice(&line).context("the daemon's answer is not understood")?;
            match event {
                Event::Plan(plan) => {
                    if let Some(b) = bar {
                        b.set_length(plan.bytes)
                    }
                }
                Event::CheckedBytes(n) => {
                    if let Some(b) = bar {
                        b.set_position(n)
                    }
                }
                Event::Problem(p) => match bar {
                    Some(b) => b.println(p.to_string()),
                    None => println!("{p}"),
                },
                Event::Done(report) => return Ok(report),
                Event::Error(e) => return Err(anyhow!("the daemon: {e}")),
            }
        }
    }
    bail!("the daemon's answer ended without a result")
}
