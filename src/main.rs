use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regcache::config::{Config, LogFormat};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Healthcheck => match healthcheck(config.admin_listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("regcache: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
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
            match runtime.block_on(regcache::daemon::run(config, cli.config.clone())) {
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

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|e| {
            eprintln!("regcache: log_level {level:?} is not a valid filter ({e}); using info");
            EnvFilter::new("info")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// One plain HTTP/1.1 GET of `/healthz` on the admin listener.
fn healthcheck(admin: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::time::Duration;
    // A wildcard listen address is reached through loopback.
    let target = if admin.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), admin.port())
    } else {
        admin
    };
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
