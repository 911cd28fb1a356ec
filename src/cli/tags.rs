//! `regcache tags history IMAGE` and `regcache tags accept IMAGE`: a tag's
//! moves, and taking the refused new digest of an immutable tag.

use std::process::ExitCode;

use anyhow::anyhow;

use super::{image, open_ready, runtime, upstreams, Daemon};
use crate::cache::tags::{self, AcceptReport, TagHistoryReport};
use crate::config::Config;
use crate::registry::Reference;

/// The upstream, repository and tag of `image`, as the cache names them.
fn tag_of(config: &Config, image: &str) -> anyhow::Result<(String, String, String)> {
    let ups = upstreams(config)?;
    let image = image::parse(image, &ups)?;
    let Reference::Tag(tag) = &image.reference else {
        return Err(anyhow!("{}: name a tag, not a digest", image.original));
    };
    Ok((
        image.upstream.name.to_string(),
        image.repo.to_string(),
        tag.as_str().to_owned(),
    ))
}

fn admin_path(upstream: &str, repo: &str, tag: &str, action: &str) -> String {
    format!("/admin/tags/{upstream}/{repo}:{tag}/{action}")
}

pub fn history(config: &Config, image: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (upstream, repo, tag) = tag_of(config, image)?;
    let report: TagHistoryReport = if let Some(daemon) = Daemon::find(config) {
        let path = admin_path(&upstream, &repo, &tag, "history");
        runtime()?.block_on(daemon.get(&path))?
    } else {
        let cache = open_ready(config, &upstreams(config)?)?;
        tags::history(&cache, &upstream, &repo, &tag)?
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let current = report
        .digest
        .as_ref()
        .map_or_else(|| "not cached".to_owned(), ToString::to_string);
    println!("{upstream}/{repo}:{tag}: {current}");
    if let Some(pending) = &report.pending {
        println!("  refused move to {pending} waiting: `regcache tags accept {image}` takes it");
    }
    if let Some(at) = &report.flagged_at {
        println!("  flagged for moving often at {at}");
    }
    if let Some(at) = &report.deleted_at {
        println!("  deleted upstream since {at}, still served (keep_deleted)");
    }
    if report.moves.is_empty() {
        println!("  no moves recorded");
    }
    for m in &report.moves {
        let action = serde_json::to_value(m.action)?;
        println!(
            "  {}  {:<8}  {} -> {}",
            m.time,
            action.as_str().unwrap_or("?"),
            m.old_digest,
            m.new_digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn accept(config: &Config, image: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (upstream, repo, tag) = tag_of(config, image)?;
    let report: AcceptReport = if let Some(daemon) = Daemon::find(config) {
        let path = admin_path(&upstream, &repo, &tag, "accept");
        runtime()?
            .block_on(daemon.call(daemon.admin(reqwest::Method::POST, &path)))?
            .1
    } else {
        let cache = open_ready(config, &upstreams(config)?)?;
        tags::accept(&cache, &upstream, &repo, &tag)?
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{upstream}/{repo}:{tag}: now {} (was {})",
            report.new_digest, report.old_digest
        );
    }
    Ok(ExitCode::SUCCESS)
}
