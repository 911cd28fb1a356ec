//! `regcache export`: write cached images to an OCI image layout tar.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};

use super::image;
use super::{byte_style, human_bytes, interactive, open_ready, runtime, upstreams, Daemon};
use crate::cache::bundle::{self, ExportImage};
use crate::cache::manage::{self, RepositoryListing};
use crate::cache::FsStore;
use crate::config::Config;
use crate::registry::Reference;

/// What `--json` prints.
#[derive(serde::Serialize)]
struct Exported {
    output: String,
    images: Vec<String>,
    files: usize,
    bytes: u64,
    /// Platforms of an index left out (not cached).
    skipped: Vec<String>,
}

/// `output` "-" streams the bundle to stdout (then every message goes to
/// stderr); `json` prints the summary as one JSON line.
pub fn export(
    config: &Config,
    output: &Path,
    images: &[String],
    all: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if all != images.is_empty() {
        bail!("name the images to export, or --all (not both)");
    }
    let to_stdout = output == Path::new("-");
    if to_stdout && json {
        bail!("--json prints to stdout, where --output - writes the bundle: pick one");
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
        let image = image::parse(name, &ups)?;
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
    let bar = interactive().then(|| {
        let bar = indicatif::ProgressBar::new(plan.bytes());
        bar.set_style(byte_style());
        bar.set_message(format!("exporting {}", output.display()));
        bar
    });
    let mut progress = |n| {
        if let Some(b) = &bar {
            b.inc(n)
        }
    };
    if to_stdout {
        let stdout = std::io::stdout().lock();
        let written = bundle::write_bundle(
            &store,
            &plan,
            std::io::BufWriter::with_capacity(1 << 20, stdout),
            &mut progress,
        )
        .and_then(|w| {
            let mut stdout = w.into_inner().map_err(|e| e.into_error())?;
            std::io::Write::flush(&mut stdout)?;
            Ok(())
        });
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        written?;
    } else {
        let partial = output.with_extension("partial");
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let written = bundle::write_bundle(
            &store,
            &plan,
            std::io::BufWriter::with_capacity(1 << 20, file),
            &mut progress,
        )
        .and_then(|w| {
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        });
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
        std::fs::rename(&partial, output)
            .with_context(|| format!("renaming {} into place", partial.display()))?;
    }
    drop(local);
    if json {
        let summary = Exported {
            output: output.display().to_string(),
            images: chosen.iter().map(ExportImage::reference).collect(),
            files: plan.files.len(),
            bytes: plan.bytes(),
            skipped: plan.skipped.clone(),
        };
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    // With the bundle on stdout, the summary goes beside the progress.
    let say = |line: String| {
        if to_stdout {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };
    for image in &chosen {
        say(format!("exported {}", image.reference()));
    }
    say(format!(
        "wrote {}: {} images, {} files, {}",
        if to_stdout {
            "the bundle to stdout".to_owned()
        } else {
            output.display().to_string()
        },
        chosen.len(),
        plan.files.len(),
        human_bytes(plan.bytes())
    ));
    Ok(ExitCode::SUCCESS)
}
