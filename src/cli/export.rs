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
