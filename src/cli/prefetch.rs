//! `regcache prefetch`: warm the cache with whole images before a rollout.
//!
//! Against a running daemon the images are pulled through its registry
//! listener (with `?ns=` naming the upstream), so the daemon caches them
//! exactly as it would for a client. Standalone, the cache directory and
//! the upstreams are built in-process and every blob goes through the same
//! fill (one fetch per digest, verified before commit) and every manifest
//! through the same manifest cache the daemon uses.

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar};

use super::image::{self, ImageRef};
use super::{human_bytes, interactive, open_ready, upstreams, Daemon};
use crate::cache::graph::{self, Descriptor};
use crate::cache::{Attached, Cache, Kind, Phase};
use crate::config::Config;
use crate::registry::{Digest, Reference, RepoName, MANIFEST_ACCEPT};
use crate::upstream::Upstream;

/// Blobs fetched at once per image.
const BLOB_CONCURRENCY: usize = 4;
/// Images prefetched at once.
const IMAGE_CONCURRENCY: usize = 2;

enum Source {
    Daemon(Daemon),
    Local(Arc<Cache>),
}

#[derive(Default)]
struct Done {
    manifests: u64,
    blobs: u64,
    bytes: u64,
}

impl Source {
    /// The manifest's digest and bytes (verified against the digest).
    async fn manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, Bytes), String> {
        match self {
            Source::Local(cache) => {
                let digest = match reference {
                    Reference::Digest(d) => d.clone(),
                    Reference::Tag(tag) => {
                        let (entry, _) = cache
                            .manifests
                            .resolve_tag(upstream, repo, tag)
                            .await
                            .map_err(|e| e.to_string())?;
                        entry.digest.parse().map_err(|e| format!("{e}"))?
                    }
                };
                let (m, _) = cache
                    .manifests
                    .by_digest(upstream, repo, &digest)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((digest, m.bytes.clone()))
            }
            Source::Daemon(d) => {
                let url = d.registry_url(&format!(
                    "/v2/{repo}/manifests/{}?ns={}",
                    reference_str(reference),
                    upstream.name
                ));
                let response = d
                    .http
                    .get(url)
                    .header("accept", MANIFEST_ACCEPT)
                    .send()
                    .await
                    .map_err(|e| format!("asking the daemon: {e}"))?;
                let status = response.status();
                let header_digest = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Digest>().ok());
                let bytes = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "manifest: the daemon answered {status}: {}",
                        String::from_utf8_lossy(&bytes).trim()
                    ));
                }
                let actual = Digest::sha256_of(&bytes);
                let expected = match reference {
                    Reference::Digest(d) => Some(d.clone()),
                    Reference::Tag(_) => header_digest,
                };
                if expected.is_some_and(|e| e != actual) {
                    return Err(format!("manifest does not hash to its digest ({actual})"));
                }
                Ok((actual, bytes))
            }
        }
    }

    /// Makes sure a blob is cached; `bar` advances as its bytes arrive.
    async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        blob: &Descriptor,
        bar: &ProgressBar,
    ) -> Result<u64, String> {
        let digest = blob
            .digest()
            .ok_or_else(|| format!("unsupported digest {}", blob.digest))?;
        match self {
            Source::Local(cache) => {
                match cache.fills.attach(upstream.clone(), repo.clone(), &digest) {
                    Attached::Committed => {
                        cache.index.touch(Kind::Blob, &digest);
                        bar.inc(blob.size);
                        Ok(blob.size)
                    }
                    Attached::Fill { mut progress, .. } => {
                        let mut reported = 0u64;
                        loop {
                            let (written, phase) = {
                                let p = progress.borrow_and_update();
                                (p.written, p.phase.clone())
                            };
                            bar.inc(written.saturating_sub(reported));
                            reported = reported.max(written);
                            match phase {
                                Phase::Complete { size, .. } => return Ok(size),
                                Phase::Failed(e) => return Err(format!("blob {digest}: {e}")),
                                Phase::Connecting | Phase::Streaming { .. } => {}
                            }
                            if progress.changed().await.is_err() {
                                return if cache.store.contains(Kind::Blob, &digest) {
                                    Ok(reported)
                                } else {
                                    Err(format!("blob {digest}: the fill ended without a result"))
                                };
                            }
                        }
                    }
                }
            }
            Source::Daemon(d) => {
                let url =
                    d.registry_url(&format!("/v2/{repo}/blobs/{digest}?ns={}", upstream.name));
                let response = d
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("blob {digest}: asking the daemon: {e}"))?;
                if !response.status().is_success() {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!(
                        "blob {digest}: the daemon answered {status}: {}",
                        body.trim()
                    ));
                }
                // Read (and check) every byte: the daemon caches the blob
                // as it serves it, and a clean end means it was verified.
                let mut hasher = crate::registry::Sha256Hasher::default();
                let mut n = 0u64;
                let mut stream = response.bytes_stream();
                while let Some(chunk) = stream
                    .try_next()
                    .await
                    .map_err(|e| format!("blob {digest}: {e}"))?
                {
                    hasher.update(&chunk);
                    n += chunk.len() as u64;
                    bar.inc(chunk.len() as u64);
                }
                if hasher.finish() != digest {
                    return Err(format!("blob {digest}: the bytes do not match the digest"));
                }
                Ok(n)
            }
        }
    }
}

fn reference_str(r: &Reference) -> String {
    match r {
        Reference::Tag(t) => t.as_str().to_owned(),
        Reference::Digest(d) => d.to_string(),
    }
}

/// One image: its manifest, the chosen platforms' manifests, their blobs.
async fn prefetch_image(
    source: &Source,
    image: &ImageRef,
    platforms: &[String],
    bar: &ProgressBar,
    plain: bool,
) -> Result<Done, String> {
    let started = Instant::now();
    let name = image.canonical();
    let (digest, bytes) = source
        .manifest(&image.upstream, &image.repo, &image.reference)
        .await?;
    let refs = graph::references(&bytes).map_err(|e| format!("manifest {digest}: {e}"))?;
    let mut done = Done {
        manifests: 1,
        ..Done::default()
    };
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut chosen_platforms = Vec::new();
    if refs.manifests.is_empty() {
        blobs = refs.blobs;
    } else {
        let children: Vec<&Descriptor> = refs
            .manifests
            .iter()
            .filter(|m| {
                platforms.is_empty() || m.platform.as_ref().is_some_and(|p| p.matches(platforms))
            })
            .collect();
        if children.is_empty() {
            let available: Vec<String> = refs
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref().map(|p| p.label()))
                .collect();
            return Err(format!(
                "no manifest for {} (the index has {})",
                platforms.join(", "),
                available.join(", ")
            ));
        }
        for child in children {
            let cd = child
                .digest()
                .ok_or_else(|| format!("unsupported digest {}", child.digest))?;
            let (_, child_bytes) = source
                .manifest(&image.upstream, &image.repo, &Reference::Digest(cd.clone()))
                .await?;
            done.manifests += 1;
            let r = graph::references(&child_bytes).map_err(|e| format!("manifest {cd}: {e}"))?;
            if !r.manifests.is_empty() {
                return Err(format!(
                    "manifest {cd} is a nested index, which is not supported"
                ));
            }
            chosen_platforms.push(
                child
                    .platform
                    .as_ref()
                    .map(|p| p.label())
                    .unwrap_or_else(|| "unknown".into()),
            );
            blobs.extend(r.blobs);
        }
    }
    let mut seen = HashSet::new();
    blobs.retain(|b| seen.insert(b.digest.clone()));
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    bar.set_length(total);
    if plain {
        let platforms = if chosen_platforms.is_empty() {
            String::new()
        } else {
            format!(", platforms {}", chosen_platforms.join(" "))
        };
        eprintln!(
            "prefetch {name}: manifest {digest}{platforms}, {} blobs ({})",
            blobs.len(),
            human_bytes(total)
        );
    }
    let sizes: Vec<u64> = futures_util::stream::iter(blobs.iter())
        .map(|b| source.blob(&image.upstream, &image.repo, b, bar))
        .buffer_unordered(BLOB_CONCURRENCY)
        .try_collect()
        .await?;
    done.blobs = sizes.len() as u64;
    done.bytes = sizes.iter().sum();
    if plain {
        eprintln!(
            "prefetch {name}: done in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(done)
}

/// `FILE` arguments hold one image per line (blank lines and `#` comments
/// are skipped); anything else is an image reference.
fn expand(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args {
        if Path::new(a).is_file() {
            let text = std::fs::read_to_string(a).with_context(|| format!("reading {a}"))?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

pub fn prefetch(
    config: &Config,
    args: &[String],
    platforms: &[String],
) -> anyhow::Result<ExitCode> {
    let ups = upstreams(config)?;
    let names = expand(args)?;
    if names.is_empty() {
        anyhow::bail!("no images to prefetch");
    }
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut images = Vec::new();
    for n in &names {
        match image::parse(n, &ups) {
            Ok(i) => images.push(i),
            Err(e) => {
                // The parser's message already starts with the reference.
                let e = e
                    .strip_prefix(&format!("{n}: "))
                    .map(str::to_owned)
                    .unwrap_or(e);
                failed.push((n.clone(), e))
            }
        }
    }
    let runtime = super::runtime()?;
    let (source, mode) = match Daemon::find(config) {
        Some(d) => (Source::Daemon(d), "through the running daemon"),
        None => (
            Source::Local(Arc::new(open_ready(config, &ups)?)),
            "standalone on the cache directory",
        ),
    };
    let tty = interactive();
    let multi = MultiProgress::new();
    if !tty {
        eprintln!("prefetching {} images {mode}", images.len());
    }
    let results: Vec<(String, Result<Done, String>)> = runtime.block_on(async {
        futures_util::stream::iter(images.iter())
            .map(|image| {
                let bar = if tty {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(super::byte_style());
                    bar.set_message(image.canonical());
                    bar
                } else {
                    ProgressBar::hidden()
                };
                let source = &source;
                async move {
                    let r = prefetch_image(source, image, platforms, &bar, !tty).await;
                    match &r {
                        Ok(_) => bar.finish(),
                        Err(e) => {
                            bar.abandon_with_message(format!("{} FAILED", image.canonical()));
                            if !tty {
                                eprintln!("prefetch {}: FAILED: {e}", image.canonical());
                            }
                        }
                    }
                    (image.canonical(), r)
                }
            })
            .buffer_unordered(IMAGE_CONCURRENCY)
            .collect()
            .await
    });
    if let Source::Local(cache) = &source {
        // Standalone: keep within max_size as the daemon would, and make
        // the access times durable.
        if cache.evictor.policy().max_size.is_some() {
            cache.evictor.run()?;
        }
        cache.index.flush_access_times()?;
    }
    let mut total = Done::default();
    let mut ok = 0;
    for (name, r) in results {
        match r {
            Ok(d) => {
                ok += 1;
                total.manifests += d.manifests;
                total.blobs += d.blobs;
                total.bytes += d.bytes;
            }
            Err(e) => failed.push((name, e)),
        }
    }
    println!(
        "prefetched {ok} of {} images: {} manifests, {} blobs, {}",
        names.len(),
        total.manifests,
        total.blobs,
        human_bytes(total.bytes)
    );
    for (name, e) in &failed {
        println!("FAILED {name}: {e}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
