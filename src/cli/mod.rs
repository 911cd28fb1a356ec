//! The management commands: `ls`, `purge`, `gc`, `verify`, `prefetch`,
//! `export`, `import`.
//!
//! Each first asks whether a daemon answers on `admin_listen`. If one does,
//! the command goes through it (the admin API, or for prefetch the registry
//! listener), because sled lets one process at a time open the index. If
//! none does, the command opens the cache directory itself (which also
//! takes the index lock, so a daemon started meanwhile waits its turn).
//! `verify` needs the index and refuses while a daemon runs; `export`
//! reads the committed files directly either way (they are immutable).

pub mod image;
pub mod prefetch;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;

use crate::cache::bundle::{self, BundleError, ExportImage, ImportReport};
use crate::cache::manage::{self, CacheSummary, PurgeReport, RepositoryListing, Target};
use crate::cache::verify::VerifyReport;
use crate::cache::{Cache, FsStore, GcReport};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{Digest, Reference};
use crate::upstream::Upstreams;

/// A wildcard listen address is reached through loopback.
pub fn reachable_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// One plain HTTP/1.1 GET of `/healthz` on the admin listener.
pub fn healthcheck(admin: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let target = reachable_addr(admin);
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ))
    }
}

/// A running daemon, reached over its admin listener.
pub struct Daemon {
    pub admin: SocketAddr,
    http: reqwest::Client,
    admin_auth: Option<reqwest::header::HeaderValue>,
}

impl Daemon {
    /// The daemon for this config, if its admin listener answers.
    pub fn find(config: &Config) -> Option<Daemon> {
        healthcheck(config.admin_listen).ok()?;
        // The daemon's own config names the admin token: the CLI on the
        // same host reads it from there. Unreadable, the daemon's 401 says
        // what is missing.
        let admin_auth = config.auth.admin_token_file.as_ref().and_then(|path| {
            let token = std::fs::read_to_string(path).unwrap_or_default();
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        Some(Daemon {
            admin: reachable_addr(config.admin_listen),
            http,
            admin_auth,
        })
    }

    /// A request to the admin listener, with the admin token when one is
    /// configured (never sent to the registry listener).
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.admin_url(path));
        match &self.admin_auth {
            Some(auth) => request.header(reqwest::header::AUTHORIZATION, auth.clone()),
            None => request,
        }
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Sends an admin request; the JSON answer, or the daemon's error.
    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, T)> {
        let response = request.send().await.context("asking the daemon")?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("reading the daemon's answer")?;
        if let Ok(v) = serde_json::from_slice::<T>(&bytes) {
            return Ok((status, v));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(anyhow!("the daemon answered {status}: {message}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.call(self.admin(reqwest::Method::GET, path)).await?.1)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Opens the cache directory of a stopped daemon.
pub fn open_local(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Cache> {
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating cache_dir {}", config.cache_dir.display()))?;
    Cache::open(&config.cache_dir, metrics).map_err(|e| match e {
        crate::cache::CacheError::Locked(m) => anyhow!(
            "{m}: no daemon answers on admin_listen {}, so another process has it open",
            config.admin_listen
        ),
        e => anyhow!("opening the cache in {}: {e}", config.cache_dir.display()),
    })
}

/// The local cache made ready for work: index reconciled (fast, as at
/// daemon startup) and eviction configured.
fn open_ready(config: &Config, upstreams: &Upstreams) -> anyhow::Result<Cache> {
    let cache = open_local(config, Arc::new(Metrics::new()))?;
    cache.reconcile().context("reconciling the index")?;
    let (policy, pins) = crate::daemon::eviction(config, upstreams);
    cache.configure_eviction(policy, pins);
    Ok(cache)
}

pub fn upstreams(config: &Config) -> anyhow::Result<Upstreams> {
    Ok(Upstreams::from_config(config, Arc::new(Metrics::new()))?)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
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

/// Whether progress bars may be drawn.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

// ---------------------------------------------------------------------------
// ls

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
            human_bytes(max),
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

// ---------------------------------------------------------------------------
// purge

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
    let image = image::parse(s, ups).map_err(|e| anyhow!(e))?;
    Ok(PurgeTarget::Image {
        upstream: image.upstream.name.to_string(),
        repo: image.repo.to_string(),
        target: match image.reference {
            Reference::Tag(t) => Target::Tag(t.as_str().to_owned()),
            Reference::Digest(d) => Target::Digest(d),
        },
    })
}

pub fn purge(config: &Config, targets: &[String], with_blobs: bool) -> anyhow::Result<ExitCode> {
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
    for (name, r) in &reports {
        if r.is_empty() {
            missing += 1;
            println!("{name}: not in the cache");
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

// ---------------------------------------------------------------------------
// gc

pub fn gc(config: &Config) -> anyhow::Result<ExitCode> {
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

// ---------------------------------------------------------------------------
// verify

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

pub fn byte_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ")
}

// ---------------------------------------------------------------------------
// export

pub fn export(
    config: &Config,
    output: &Path,
    images: &[String],
    all: bool,
) -> anyhow::Result<ExitCode> {
    if all != images.is_empty() {
        bail!("name the images to export, or --all (not both)");
    }
    let ups = upstreams(config)?;
    // The tag table comes from the daemon when it runs (it holds the
    // index); the files are read from the cache directory either way.
    let (listing, local) = if let Some(daemon) = Daemon::find(config) {
        let listing: Vec<RepositoryListing> =
            runtime()?.block_on(daemon.get("/admin/repositories"))?;
        (listing, None)
    } else {
        let cache = open_ready(config, &ups)?;
        (manage::repositories(&cache)?, Some(cache))
    };
    let store = FsStore::at(&config.cache_dir);
    let mut chosen = Vec::new();
    if all {
        for r in &listing {
            for t in &r.tags {
                if !t.cached {
                    eprintln!(
                        "skipping {}/{}:{}: its manifest is not cached",
                        r.upstream, r.repository, t.tag
                    );
                    continue;
                }
                chosen.push(ExportImage {
                    upstream: r.upstream.clone(),
                    repository: r.repository.clone(),
                    tag: Some(t.tag.clone()),
                    digest: t.digest.parse().map_err(|e| anyhow!("{}: {e}", t.digest))?,
                    media_type: Some(t.media_type.clone()),
                });
            }
        }
    }
    for name in images {
        let image = image::parse(name, &ups).map_err(|e| anyhow!(e))?;
        let (upstream, repo) = (image.upstream.name.to_string(), image.repo.to_string());
        match &image.reference {
            Reference::Digest(d) => chosen.push(ExportImage {
                upstream,
                repository: repo,
                tag: None,
                digest: d.clone(),
                media_type: None,
            }),
            Reference::Tag(tag) => {
                let found = listing
                    .iter()
                    .filter(|r| r.upstream == upstream && r.repository == repo)
                    .flat_map(|r| &r.tags)
                    .find(|t| t.tag == tag.as_str())
                    .ok_or_else(|| {
                        anyhow!(
                            "{name}: no cached tag {} (run `regcache prefetch {name}` first)",
                            image.canonical()
                        )
                    })?;
                chosen.push(ExportImage {
                    upstream,
                    repository: repo,
                    tag: Some(tag.as_str().to_owned()),
                    digest: found
                        .digest
                        .parse()
                        .map_err(|e| anyhow!("{}: {e}", found.digest))?,
                    media_type: Some(found.media_type.clone()),
                });
            }
        }
    }
    if chosen.is_empty() {
        bail!("nothing to export: the cache has no tags");
    }
    let plan = bundle::plan_export(&store, &chosen)?;
    for s in &plan.skipped {
        eprintln!("warning: left out {s}");
    }
    let partial = output.with_extension("partial");
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let bar = interactive().then(|| {
        let bar = indicatif::ProgressBar::new(plan.bytes());
        bar.set_style(byte_style());
        bar.set_message(format!("exporting {}", output.display()));
        bar
    });
    let written = bundle::write_bundle(
        &store,
        &plan,
        std::io::BufWriter::with_capacity(1 << 20, file),
        &mut |n| {
            if let Some(b) = &bar {
                b.inc(n)
            }
        },
    )
    .and_then(|w| {
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    std::fs::rename(&partial, output)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    drop(local);
    for image in &chosen {
        println!("exported {}", image.reference());
    }
    println!(
        "wrote {}: {} images, {} files, {}",
        output.display(),
        chosen.len(),
        plan.files.len(),
        human_bytes(plan.bytes())
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// import

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
