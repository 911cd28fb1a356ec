//! `regcache import`: install a bundle written by `export`, verifying
//! every digest.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};

use super::{human_bytes, open_local, runtime, Daemon};
use crate::cache::bundle::{BundleError, ImportReport};
use crate::config::Config;
use crate::metrics::Metrics;

pub fn import(config: &Config, path: &Path) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let report: ImportReport = if let Some(daemon) = Daemon::find(config) {
        runtime()?.block_on(async {
            let file = tokio::fs::File::from_std(file);
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                256 * 1024,
            ));
            let (_, r) = daemon
                .call(
                    daemon
                        .admin(reqwest::Method::POST, "/admin/import")
                        .header("content-type", "application/x-tar")
                        .body(body),
                )
                .await?;
            anyhow::Ok(r)
        })?
    } else {
        let cache = open_local(config, Arc::new(Metrics::new()))?;
        let names: Vec<(String, Vec<String>)> = config
            .upstreams()
            .into_iter()
            .map(|u| (u.name.clone(), u.aliases.clone()))
            .collect();
        let resolve = move |n: &str| -> Option<String> {
            names
                .iter()
                .find(|(name, aliases)| {
                    name.eq_ignore_ascii_case(n)
                        || aliases.iter().any(|a| a.eq_ignore_ascii_case(n))
                })
                .map(|(name, _)| name.clone())
        };
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        cache.import(reader, &resolve).map_err(|e: BundleError| {
            if e.is_bad_bundle() {
                anyhow!("rejected {}: {e}", path.display())
            } else {
                anyhow!("importing {}: {e}", path.display())
            }
        })?
    };
    for image in &report.images {
        println!("imported {image}");
    }
    for u in &report.unknown_upstreams {
        eprintln!(
            "warning: upstream {u:?} is not configured here: its tags are recorded but no client can reach them until an upstream of that name (or alias) is configured"
        );
    }
    println!(
        "{} images, {} tags; added {} manifests and {} blobs ({}), {} already cached",
        report.images.len(),
        report.tags,
        report.manifests_added,
        report.blobs_added,
        human_bytes(report.bytes_added),
        report.already_cached
    );
    Ok(ExitCode::SUCCESS)
}
