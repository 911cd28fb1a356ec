use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regcache::config::{Config, LogFormat};
use regcache::daemon;

/// A pull-through caching proxy for container registries.
#[derive(Parser)]
#[command(name = "regcache", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (default: /etc/regcache/regcache.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (the default).
    Serve,
    /// Validate the config and print the effective settings.
    CheckConfig,
    /// Exit 0 when the daemon's /healthz answers (for container HEALTHCHECKs,
    /// where no curl is installed).
    Healthcheck,
    /// List cached repositories and tags, with the cache's size.
    Ls {
        /// Print JSON (the admin API's answers) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove images or blobs from the cache: `<upstream>/<repo>:<tag>`,
    /// `<repo>@sha256:...` (any image reference), or a blob's `sha256:...`.
    Purge {
        /// Also remove the image's blobs that no other cached tag uses.
        #[arg(long)]
        blobs: bool,
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Run eviction now (max_size, max_age).
    Gc,
    /// Re-hash every cached file; report corrupt and orphaned files and
    /// index entries without a file (the daemon must be stopped).
    Verify {
        /// Remove what is broken (it is fetched again on demand).
        #[arg(long)]
        repair: bool,
    },
    /// Pull images into the cache: image references, or files with one per line.
    Prefetch {
        /// Only these platforms of a multi-platform image (os/arch[/variant], comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "PLATFORMS")]
        platform: Vec<String>,
        #[arg(required = true, value_name = "FILE|IMAGE")]
        images: Vec<String>,
    },
    /// Write cached images to an OCI image layout tar for an air-gapped site.
    Export {
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// Every cached tag.
        #[arg(long)]
        all: bool,
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Install a bundle written by `export` (verifying every digest).
    Import {
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return invalid_configuration(&e),
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // What policy compiles (globs, credential files, the admin token) is
    // checked here for every command; `serve` compiles it once, below, as
    // part of building its parts.
    if !matches!(command, Command::Serve) {
        if let Err(e) = daemon::check_config(&config) {
            return invalid_configuration(&e);
        }
    }
    match command {
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Healthcheck => match regcache::cli::healthcheck(config.admin_listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("regcache: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Ls { json } => manage(&config, |c| regcache::cli::ls(c, json)),
        Command::Purge { blobs, targets } => {
            manage(&config, |c| regcache::cli::purge(c, &targets, blobs))
        }
        Command::Gc => manage(&config, regcache::cli::gc),
        Command::Verify { repair } => manage(&config, |c| regcache::cli::verify(c, repair)),
        Command::Prefetch { platform, images } => manage(&config, |c| {
            regcache::cli::prefetch::prefetch(c, &images, &platform)
        }),
        Command::Export {
            output,
            all,
            images,
        } => manage(&config, |c| regcache::cli::export(c, &output, &images, all)),
        Command::Import { bundle } => manage(&config, |c| regcache::cli::import(c, &bundle)),
        Command::Serve => {
            init_tracing(config.log_format, &config.log_level);
            // reqwest and any future TLS listener share one crypto provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("regcache: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let parts = match daemon::Parts::build(&config) {
                Ok(p) => p,
                Err(daemon::BuildError::Invalid(e)) => return invalid_configuration(&e),
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("regcache: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(config, parts, cli.config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("regcache: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn invalid_configuration(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("regcache: invalid configuration: {e}");
    ExitCode::from(2)
}

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|e| {
            eprintln!("regcache: log_level {level:?} is not a valid filter ({e}); using info");
            EnvFilter::new("info")
        });
    // Colour only on a terminal: under systemd or into a file the escape
    // codes would land in journald and break searching by field.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        // Event fields at the top level ({"level":…,"status":200,…}), as
        // log pipelines expect, not nested under "fields".
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs a management command: warnings and errors logged to stderr
/// (`RUST_LOG` for more), a clear message and a non-zero status on error.
fn manage(config: &Config, run: impl FnOnce(&Config) -> anyhow::Result<ExitCode>) -> ExitCode {
    init_tracing(config.log_format, "warn");
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regcache: {e:#}");
            ExitCode::from(2)
        }
    }
}
