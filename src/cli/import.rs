//! `regcache import`: install a bundle written by `export`, verifying
//! every digest.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use futures_util::StreamExt;

use super::{byte_style, human_bytes, interactive, open_local, runtime, upstreams, Daemon};
use crate::cache::bundle::{BundleError, ImportReport, Placement};
use crate::config::Config;
use crate::metrics::Metrics;

/// Where references that name no registry or repository go (a bare tag,
/// as `skopeo copy ... oci-archive:a.tar:v2` writes it).
#[derive(Debug, Default, Clone)]
pub struct ImportTarget {
    pub upstream: Option<String>,
    pub repo: Option<String>,
}

/// Counts what the importer reads off the file, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// `json`: the report as the admin API answers it, on one line.
pub fn import(
    config: &Config,
    path: &Path,
    target: &ImportTarget,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // The same upstreams, names and aliases the registry API routes by.
    let ups = upstreams(config)?;
    // Checked here too so that a bad flag is refused before any upload.
    let placement = Placement::new(target.upstream.as_deref(), target.repo.as_deref(), &ups)?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // On a terminal, a bar of the bundle's bytes read (and verified).
    let bar = if interactive() {
        let bar = match file.metadata().map(|m| m.len()) {
            Ok(len) if len > 0 => {
                let bar = indicatif::ProgressBar::new(len);
                bar.set_style(byte_style());
                bar
            }
            // A pipe: no total to draw a bar against.
            _ => {
                let bar = indicatif::ProgressBar::new_spinner();
                if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {bytes}") {
                    bar.set_style(style);
                }
                bar
            }
        };
        bar.set_message(format!("importing {}", path.display()));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let report = import_with(config, path, file, target, &placement, &ups, bar.clone());
    bar.finish_and_clear();
    let report = report?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
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

/// Through the daemon when one runs (the bundle streamed to its admin
/// API), else into the cache directory.
fn import_with(
    config: &Config,
    path: &Path,
    file: std::fs::File,
    target: &ImportTarget,
    placement: &Placement,
    ups: &crate::upstream::Upstreams,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<ImportReport> {
    Ok(if let Some(daemon) = Daemon::find(config) {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [("upstream", &target.upstream), ("repo", &target.repo)] {
            if let Some(v) = value {
                query.append_pair(key, v);
            }
        }
        let query = query.finish();
        let endpoint = if query.is_empty() {
            "/admin/import".to_owned()
        } else {
            format!("/admin/import?{query}")
        };
        runtime()?.block_on(async {
            let file = tokio::fs::File::from_std(file);
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(
                move |chunk| {
                    if let Ok(c) = chunk {
                        bar.inc(c.len() as u64)
                    }
                },
            );
            let body = reqwest::Body::wrap_stream(stream);
            let (_, r) = daemon
                .call(
                    daemon
                        .admin(reqwest::Method::POST, &endpoint)
                        .header("content-type", "application/x-tar")
                        .body(body),
                )
                .await?;
            anyhow::Ok(r)
        })?
    } else {
        let cache = open_local(config, Arc::new(Metrics::new()))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, Counting { inner: file, bar });
        cache
            .import(reader, ups, placement)
            .map_err(|e: BundleError| {
                if e.is_bad_bundle() {
                    anyhow!("rejected {}: {e}", path.display())
                } else {
                    anyhow!("importing {}: {e}", path.display())
                }
            })?
    })
}
