//! `regcache purge`: remove images (optionally with their unshared blobs)
//! or single blobs.

use std::process::ExitCode;

use anyhow::anyhow;

use super::image;
use super::{human_bytes, open_ready, runtime, upstreams, Daemon};
use crate::cache::manage::{self, PurgeReport, Target};
use crate::config::Config;
use crate::registry::{Digest, Reference};
use crate::upstream::Upstreams;

enum PurgeTarget {
    Blob(Digest),
    Image {
        upstream: String,
        repo: String,
        target: Target,
    },
}

fn purge_target(s: &str, ups: &Upstreams) -> anyhow::Result<PurgeTarget> {
    if s.starts_with("sha256:") {
        return Ok(PurgeTarget::Blob(
            s.parse().map_err(|e| anyhow!("{s}: {e}"))?,
        ));
    }
    let image = image::parse(s, ups)?;
    Ok(PurgeTarget::Image {
        upstream: image.upstream.name.to_string(),
        repo: image.repo.to_string(),
        target: match image.reference {
            Reference::Tag(t) => Target::Tag(t.as_str().to_owned()),
            Reference::Digest(d) => Target::Digest(d),
        },
    })
}

/// One target's outcome, for `--json`.
#[derive(serde::Serialize)]
struct Purged<'a> {
    target: &'a str,
    #[serde(flatten)]
    report: &'a PurgeReport,
}

pub fn purge(
    config: &Config,
    targets: &[String],
    with_blobs: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ups = upstreams(config)?;
    let parsed = targets
        .iter()
        .map(|t| purge_target(t, &ups))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reports: Vec<(String, PurgeReport)> = if let Some(daemon) = Daemon::find(config) {
        runtime()?.block_on(async {
            let mut out = Vec::new();
            for (name, t) in targets.iter().zip(&parsed) {
                let path = match t {
                    PurgeTarget::Blob(d) => format!("/admin/blobs/{d}"),
                    PurgeTarget::Image {
                        upstream,
                        repo,
                        target,
                    } => {
                        let reference = match target {
                            Target::Tag(t) => format!(":{t}"),
                            Target::Digest(d) => format!("@{d}"),
                        };
                        let blobs = if with_blobs { "?blobs=true" } else { "" };
                        format!("/admin/manifests/{upstream}/{repo}{reference}{blobs}")
                    }
                };
                let (_, report): (_, PurgeReport) = daemon
                    .call(daemon.admin(reqwest::Method::DELETE, &path))
                    .await?;
                out.push((name.clone(), report));
            }
            anyhow::Ok(out)
        })?
    } else {
        let cache = open_ready(config, &ups)?;
        let mut out = Vec::new();
        for (name, t) in targets.iter().zip(&parsed) {
            let report = match t {
                PurgeTarget::Blob(d) => manage::purge_blob(&cache, d)?,
                PurgeTarget::Image {
                    upstream,
                    repo,
                    target,
                } => manage::purge_image(&cache, upstream, repo, target, with_blobs)?,
            };
            out.push((name.clone(), report));
        }
        out
    };
    let mut missing = 0;
    if json {
        let purged: Vec<Purged> = reports
            .iter()
            .map(|(target, report)| Purged { target, report })
            .collect();
        println!("{}", serde_json::to_string(&purged)?);
    }
    for (name, r) in &reports {
        if r.is_empty() {
            missing += 1;
            if !json {
                println!("{name}: not in the cache");
            }
        } else if json {
            continue;
        } else {
            println!(
                "{name}: removed {} tags, {} manifests, {} blobs ({})",
                r.tags.len(),
                r.manifests.len(),
                r.blobs.len(),
                human_bytes(r.bytes_freed)
            );
        }
    }
    Ok(if missing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
