//! `regcache prefetch`: warm the cache with whole images before a rollout.
//!
//! Against a running daemon each image is handed to its admin listener
//! (`POST /admin/prefetch`), so the daemon caches it in-process whatever its
//! registry listener demands (TLS, client credentials) and no blob crosses
//! to the CLI. Standalone, the cache directory and the upstreams are built
//! in-process. Both run `cache::prefetch`: every blob through the same fill
//! a client's pull uses (one fetch per digest, verified before commit) and
//! every manifest through the same manifest cache.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar};

use super::image::{self, ImageRef};
use super::{human_bytes, interactive, open_ready, upstreams, Daemon};
use crate::cache::prefetch::{
    self as cache_prefetch, prefetch_image, Plan, PrefetchProgress, Prefetched,
};
use crate::cache::Cache;
use crate::config::Config;
use crate::policy::{Refused, UpstreamRules};
use crate::registry::Reference;

/// Images prefetched at once.
const IMAGE_CONCURRENCY: usize = 2;

enum Source {
    Daemon(Daemon),
    /// Standalone: the upstreams' allow and deny rules are checked here,
    /// as the daemon checks them.
    Local(Arc<Cache>, UpstreamRules),
}

/// One image's progress on the terminal: a bar, or plain lines when
/// stderr is not a terminal.
struct Reporter {
    name: String,
    bar: ProgressBar,
    plain: bool,
}

impl PrefetchProgress for Reporter {
    fn planned(&self, plan: &Plan) {
        // Only now is there a total: until then the bar is a spinner (a bar
        // of length 0 is drawn full).
        self.bar.set_length(plan.bytes);
        self.bar.set_style(super::byte_style());
        if self.plain {
            let platforms = if plan.platforms.is_empty() {
                String::new()
            } else {
                format!(", platforms {}", plan.platforms.join(" "))
            };
            eprintln!(
                "prefetch {}: manifest {}{platforms}, {} blobs ({})",
                self.name,
                plan.digest,
                plan.blobs,
                human_bytes(plan.bytes)
            );
        }
    }

    fn advanced(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

/// Why one image was not prefetched; its message ends the `FAILED` line.
#[derive(Debug, thiserror::Error)]
enum PrefetchError {
    /// The reference does not parse (the reason only: the line names it).
    #[error("{0}")]
    Reference(String),
    /// The upstream's allow and deny rules refuse the repository.
    #[error("{0}")]
    Rules(#[from] Refused),
    /// From the in-process prefetch, as it words it.
    #[error("{0}")]
    Local(#[from] cache_prefetch::PrefetchError),
    #[error("asking the daemon: {0}")]
    Ask(#[source] reqwest::Error),
    #[error("the daemon answered {status}: {message}")]
    Refused {
        status: reqwest::StatusCode,
        message: String,
    },
    #[error("reading the daemon's answer: {0}")]
    Read(#[source] reqwest::Error),
    #[error("the daemon's answer is not understood: {0}")]
    Garbled(#[source] serde_json::Error),
    /// The daemon's own `error` event.
    #[error("{0}")]
    Daemon(String),
    #[error("the daemon's answer ended without a result")]
    Truncated,
}

/// One line of the daemon's answer to `POST /admin/prefetch`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Plan(Plan),
    CachedBytes(u64),
    Done(Prefetched),
    Error(String),
}

impl Source {
    async fn prefetch(
        &self,
        image: &ImageRef,
        platforms: &[String],
        reporter: &Reporter,
    ) -> Result<Prefetched, PrefetchError> {
        match self {
            Source::Local(cache, rules) => {
                rules.check(&image.upstream.name, &image.repo)?;
                Ok(prefetch_image(
                    cache,
                    &image.upstream,
                    &image.repo,
                    &image.reference,
                    platforms,
                    reporter,
                )
                .await?)
            }
            Source::Daemon(d) => through_daemon(d, image, platforms, reporter).await,
        }
    }
}

async fn through_daemon(
    daemon: &Daemon,
    image: &ImageRef,
    platforms: &[String],
    reporter: &Reporter,
) -> Result<Prefetched, PrefetchError> {
    let reference = match &image.reference {
        Reference::Tag(t) => t.as_str().to_owned(),
        Reference::Digest(d) => d.to_string(),
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("upstream", &image.upstream.name)
        .append_pair("repo", image.repo.as_str())
        .append_pair("reference", &reference)
        .append_pair("platform", &platforms.join(","))
        .finish();
    let response = daemon
        .admin(reqwest::Method::POST, &format!("/admin/prefetch?{query}"))
        .send()
        .await
        .map_err(PrefetchError::Ask)?;
    let status = response.status();
    if !status.is_success() {
        let bytes = response.bytes().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("no message").to_owned();
        return Err(PrefetchError::Refused { status, message });
    }
    let mut stream = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut reported = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(PrefetchError::Read)?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: Event = serde_json::from_slice(&line).map_err(PrefetchError::Garbled)?;
            match event {
                Event::Plan(plan) => reporter.planned(&plan),
                Event::CachedBytes(n) => {
                    reporter.advanced(n.saturating_sub(reported));
                    reported = reported.max(n);
                }
                Event::Done(done) => return Ok(done),
                Event::Error(e) => return Err(PrefetchError::Daemon(e)),
            }
        }
    }
    Err(PrefetchError::Truncated)
}

/// Before the plan: a spinner and the image, no bar.
fn waiting_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{msg:40} {spinner} planning")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn message_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// What `--json` prints: the totals and each failure.
#[derive(serde::Serialize)]
struct Summary {
    images: usize,
    prefetched: usize,
    manifests: u64,
    blobs: u64,
    bytes: u64,
    failed: Vec<Failure>,
}

#[derive(serde::Serialize)]
struct Failure {
    image: String,
    error: String,
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

/// `json`: the summary as one JSON line instead of text.
pub fn prefetch(
    config: &Config,
    args: &[String],
    platforms: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ups = upstreams(config)?;
    let names = expand(args)?;
    if names.is_empty() {
        anyhow::bail!("no images to prefetch");
    }
    let mut failed: Vec<(String, PrefetchError)> = Vec::new();
    let mut images = Vec::new();
    for n in &names {
        match image::parse(n, &ups) {
            Ok(i) => images.push(i),
            Err(e) => {
                // The line names the reference already.
                let e = if e.original == *n {
                    e.reason()
                } else {
                    e.to_string()
                };
                failed.push((n.clone(), PrefetchError::Reference(e)))
            }
        }
    }
    let runtime = super::runtime()?;
    let (source, mode) = match Daemon::find(config) {
        Some(d) => (Source::Daemon(d), "through the running daemon"),
        None => (
            Source::Local(
                Arc::new(open_ready(config, &ups)?),
                UpstreamRules::from_config(config)?,
            ),
            "standalone on the cache directory",
        ),
    };
    let tty = interactive();
    let multi = MultiProgress::new();
    if !tty {
        eprintln!("prefetching {} images {mode}", images.len());
    }
    let results: Vec<(String, Result<Prefetched, PrefetchError>)> = runtime.block_on(async {
        futures_util::stream::iter(images.iter())
            .map(|image| {
                let bar = if tty {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(waiting_style());
                    bar.set_message(image.canonical());
                    bar.enable_steady_tick(std::time::Duration::from_millis(200));
                    bar
                } else {
                    ProgressBar::hidden()
                };
                let reporter = Reporter {
                    name: image.canonical(),
                    bar,
                    plain: !tty,
                };
                let source = &source;
                async move {
                    let started = Instant::now();
                    let r = source.prefetch(image, platforms, &reporter).await;
                    match &r {
                        Ok(_) => {
                            reporter.bar.finish();
                            if !tty {
                                eprintln!(
                                    "prefetch {}: done in {:.1}s",
                                    reporter.name,
                                    started.elapsed().as_secs_f64()
                                );
                            }
                        }
                        Err(e) => {
                            // No bar left behind: a partial or empty one
                            // would read as progress.
                            reporter.bar.set_style(message_style());
                            reporter
                                .bar
                                .abandon_with_message(format!("{} FAILED", reporter.name));
                            if !tty {
                                eprintln!("prefetch {}: FAILED: {e}", reporter.name);
                            }
                        }
                    }
                    (reporter.name, r)
                }
            })
            .buffer_unordered(IMAGE_CONCURRENCY)
            .collect()
            .await
    });
    if let Source::Local(cache, _) = &source {
        // Standalone: keep within max_size as the daemon would, and make
        // the access times durable.
        if cache.eviction_policy().max_size.is_some() {
            cache.evict()?;
        }
        cache.flush_access_times()?;
    }
    let mut total = Prefetched::default();
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
    if json {
        let summary = Summary {
            images: names.len(),
            prefetched: ok,
            manifests: total.manifests,
            blobs: total.blobs,
            bytes: total.bytes,
            failed: failed
                .iter()
                .map(|(image, e)| Failure {
                    image: image.clone(),
                    error: e.to_string(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string(&summary)?);
    } else {
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
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
