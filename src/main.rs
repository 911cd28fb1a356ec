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
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (the default).
    #[command(after_help = "Example:\n  regcache serve --config /etc/regcache/regcache.toml")]
    Serve,
    /// Validate the config as `serve` would (every file it names is opened)
    /// and print the effective settings.
    #[command(
        after_help = "Example:\n  regcache check-config --config regcache.toml\n  REGCACHE_LISTEN=:5000 regcache check-config"
    )]
    CheckConfig,
    /// Exit 0 when the daemon's /healthz answers (for container HEALTHCHECKs,
    /// where no curl is installed).
    #[command(
        after_help = "Example (Dockerfile):\n  HEALTHCHECK CMD [\"regcache\", \"healthcheck\"]"
    )]
    Healthcheck,
    /// List cached repositories and tags, with the cache's size.
    #[command(after_help = "Example:\n  regcache ls\n  regcache ls --json | jq '.repositories'")]
    Ls {
        /// Print JSON (the admin API's answers) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove images or blobs from the cache.
    #[command(
        after_help = "Examples:\n  regcache purge alpine:3.20\n  regcache purge --blobs registry.example/org/app@sha256:...\n  regcache purge sha256:..."
    )]
    Purge {
        /// Also remove the image's blobs that no other cached tag uses.
        #[arg(long)]
        blobs: bool,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
        /// An image (`<upstream>/<repo>:<tag>`, `<repo>@sha256:...`, any
        /// image reference) or a blob's `sha256:...`.
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Run eviction now (max_size, max_age).
    #[command(after_help = "Example:
  regcache gc --json")]
    Gc {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every cached file and report corrupt ones (through the
    /// running daemon if one answers; stopped, also orphaned files and
    /// index entries without a file).
    #[command(after_help = "Example:
  regcache verify --repair")]
    Verify {
        /// Fix what is broken: corrupt files are quarantined (and fetched
        /// again on demand).
        #[arg(long)]
        repair: bool,
    },
    /// Pull images into the cache: image references, or files with one per line.
    #[command(
        after_help = "Examples:\n  regcache prefetch alpine:3.20 registry.example/org/app:v1\n  regcache prefetch --platform linux/amd64,linux/arm64 images.txt"
    )]
    Prefetch {
        /// Only these platforms of a multi-platform image (os/arch[/variant], comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "PLATFORMS")]
        platform: Vec<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// An image reference (`registry.example/team/app:v1`, `alpine:3.20`
        /// on the default upstream), or a file with one per line (`#` comments).
        #[arg(required = true, value_name = "FILE|IMAGE")]
        images: Vec<String>,
    },
    /// Write cached images to an OCI image layout tar for an air-gapped site.
    #[command(
        after_help = "Examples:\n  regcache export --output bundle.tar --all\n  regcache export -o - --all | ssh airgap 'cat > bundle.tar'"
    )]
    Export {
        /// The bundle to write; `-` streams it to stdout.
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// Every cached tag.
        #[arg(long)]
        all: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// A cached image to export (any image reference); or --all.
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Install a bundle written by `export`, or any OCI archive (verifying
    /// every digest).
    #[command(
        after_help = "Examples:\n  regcache import bundle.tar\n  regcache import --upstream local --repo team/app app-v2.tar   # oci-archive:app-v2.tar:v2"
    )]
    Import {
        /// The tar to install: an OCI image layout (`regcache export`,
        /// `skopeo copy ... oci-archive:FILE`).
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// The upstream (name or alias) for images the bundle names without
        /// a registry, e.g. a bare tag from `oci-archive:a.tar:v2`.
        #[arg(long, value_name = "NAME")]
        upstream: Option<String>,
        /// The repository for images the bundle names by a bare tag.
        #[arg(long, value_name = "REPO", requires = "upstream")]
        repo: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A tag's history of moves upstream, and accepting a refused move of
    /// an immutable tag.
    #[command(
        subcommand,
        after_help = "Examples:\n  regcache tags history registry.example/team/app:v1\n  regcache tags accept registry.example/team/app:v1"
    )]
    Tags(TagsCommand),
}

#[derive(Subcommand)]
enum TagsCommand {
    /// The tag's recorded moves (newest first), and a refused move waiting.
    #[command(after_help = "Example:\n  regcache tags history registry.example/team/app:v1")]
    History {
        /// Print JSON (the admin API's answer).
        #[arg(long)]
        json: bool,
        /// A tag (any image reference with a tag).
        #[arg(value_name = "IMAGE")]
        image: String,
    },
    /// Serve the digest an immutable tag's refused move points at.
    #[command(after_help = "Example:\n  regcache tags accept registry.example/team/app:v1")]
    Accept {
        /// Print JSON (the admin API's answer).
        #[arg(long)]
        json: bool,
        /// An immutable tag with a refused move (any image reference).
        #[arg(value_name = "IMAGE")]
        image: String,
    },
}

/// The top-level help's epilogue: the defaults, taken from the code so it
/// cannot drift, and how the environment sets them.
fn top_help() -> String {
    let d = Config::default();
    format!(
        "Defaults (without a config file):
  listen            {}   registry API
  admin_listen      {}   /metrics, /healthz, /readyz, /admin/*
  cache_dir         {}
  default_upstream  {}
Config: --config FILE, else {} when it exists.
Environment: REGCACHE_<KEY> sets any key over the file, `__` for nesting:
  REGCACHE_LISTEN=:5000, REGCACHE_CACHE_DIR=/var/cache/regcache,
  REGCACHE_CACHE__MAX_SIZE=50GB, REGCACHE_UPSTREAMS__0__PASSWORD=...
  RUST_LOG overrides log_level.

Examples:
  regcache --config /etc/regcache/regcache.toml        # serve
  regcache check-config --config regcache.toml
  regcache prefetch alpine:3.20",
        d.listen,
        d.admin_listen,
        d.cache_dir.display(),
        d.default_upstream,
        regcache::config::SYSTEM_CONFIG_PATH,
    )
}

fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().after_help(top_help()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return invalid_configuration(&e),
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // What policy compiles (globs, credential files, the admin token) is
    // checked here for every command; `serve` compiles it once, below, as
    // part of building its parts.
    if !matches!(command, Command::Serve | Command::CheckConfig) {
        if let Err(e) = daemon::check_config(&config) {
            return invalid_configuration(&e);
        }
    }
    match command {
        // Exactly what `serve` builds before binding, files opened and all.
        Command::CheckConfig => match daemon::Parts::build(&config) {
            Ok(_) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => invalid_configuration(&e),
        },
        Command::Healthcheck => match regcache::cli::healthcheck(config.admin_listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("regcache: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Ls { json } => manage(&config, |c| regcache::cli::ls(c, json)),
        Command::Purge {
            blobs,
            json,
            targets,
        } => manage(&config, |c| regcache::cli::purge(c, &targets, blobs, json)),
        Command::Gc { json } => manage(&config, |c| regcache::cli::gc(c, json)),
        Command::Verify { repair } => manage(&config, |c| regcache::cli::verify(c, repair)),
        Command::Prefetch {
            platform,
            json,
            images,
        } => manage(&config, |c| {
            regcache::cli::prefetch::prefetch(c, &images, &platform, json)
        }),
        Command::Export {
            output,
            all,
            json,
            images,
        } => manage(&config, |c| {
            regcache::cli::export(c, &output, &images, all, json)
        }),
        Command::Import {
            bundle,
            upstream,
            repo,
            json,
        } => manage(&config, |c| {
            let target = regcache::cli::ImportTarget { upstream, repo };
            regcache::cli::import(c, &bundle, &target, json)
        }),
        Command::Tags(TagsCommand::History { json, image }) => {
            manage(&config, |c| regcache::cli::tags::history(c, &image, json))
        }
        Command::Tags(TagsCommand::Accept { json, image }) => {
            manage(&config, |c| regcache::cli::tags::accept(c, &image, json))
        }
        Command::Serve => {
            let log_format = config.log_format;
            init_tracing(log_format, &config.log_level);
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
                Err(e) => return startup_failed(log_format, &e),
            };
            match runtime.block_on(daemon::run(config, parts, cli.config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => startup_failed(log_format, &format!("{e:#}")),
            }
        }
    }
}

/// Once: as a log line where logs are JSON (a pipeline parses them), else
/// as plain text — both went to stderr before, so a terminal saw it twice.
fn startup_failed(format: LogFormat, e: &dyn std::fmt::Display) -> ExitCode {
    match format {
        LogFormat::Json => tracing::error!("{e}"),
        LogFormat::Text => eprintln!("regcache: {e}"),
    }
    ExitCode::FAILURE
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
