//! `regcache ls`: the cache's size and every cached tag, as a table or JSON.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use super::{human_bytes, open_ready, runtime, upstreams, Daemon};
use crate::cache::manage::{self, CacheSummary, RepositoryListing};
use crate::config::Config;

pub fn ls(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let (summary, repos): (CacheSummary, Vec<RepositoryListing>) =
        if let Some(daemon) = Daemon::find(config) {
            runtime()?.block_on(async {
                anyhow::Ok((
                    daemon.get("/admin/cache").await?,
                    daemon.get("/admin/repositories").await?,
                ))
            })?
        } else {
            let ups = upstreams(config)?;
            let cache = open_ready(config, &ups)?;
            let names: Vec<String> = ups.all().iter().map(|u| u.name.to_string()).collect();
            (
                manage::summary(&cache, &names)?,
                manage::repositories(&cache)?,
            )
        };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cache": summary,
                "repositories": repos,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_summary(&summary));
    if repos.is_empty() {
        println!("\nno cached tags");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "UPSTREAM".to_owned(),
        "REPOSITORY".into(),
        "TAG".into(),
        "DIGEST".into(),
        "SIZE".into(),
        "LAST ACCESS".into(),
    ]];
    for r in &repos {
        for t in &r.tags {
            let repo = if r.pinned {
                format!("{} (pinned)", r.repository)
            } else {
                r.repository.clone()
            };
            rows.push([
                r.upstream.clone(),
                repo,
                t.tag.clone(),
                short(&t.digest).to_owned(),
                if t.cached {
                    human_bytes(t.bytes)
                } else {
                    "not cached".into()
                },
                t.last_accessed.map(when).unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    println!();
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn render_summary(s: &CacheSummary) -> String {
    let mut out = format!(
        "cache: {} in {} blobs and {} manifests, {} tags",
        human_bytes(s.total_bytes),
        s.blobs.objects,
        s.manifests.objects,
        s.tags
    );
    match (s.max_size, s.high_water, s.low_water) {
        (Some(max), Some(high), Some(low)) => out.push_str(&format!(
            "; max_size {} (evicts above {} down to {})",
            // As the config writes it: 50GB, not 46.6 GiB.
            crate::config::ByteSize(max),
            human_bytes(high),
            human_bytes(low)
        )),
        _ => out.push_str("; no max_size"),
    }
    if let Some(age) = s.max_age_seconds {
        out.push_str(&format!(
            "; max_age {}",
            humantime::format_duration(Duration::from_secs(age))
        ));
    }
    out.push('\n');
    for u in s
        .upstreams
        .iter()
        .filter(|u| u.tags > 0 || !u.pinned.is_empty())
    {
        out.push_str(&format!(
            "  {}: {} repositories, {} tags, {} referenced",
            u.name,
            u.repositories,
            u.tags,
            human_bytes(u.bytes)
        ));
        if !u.pinned.is_empty() {
            out.push_str(&format!(", pinned: {}", u.pinned.join(", ")));
        }
        out.push('\n');
    }
    out
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn when(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}
