//! The command line: version, config validation, and readiness signalling.

pub mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::registry::free_port;

fn regcache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_regcache"));
    // The machine's own /etc/regcache must not leak into these tests.
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn version_and_help() {
    let out = regcache().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("regcache "));
    let out = regcache().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("serve") && help.contains("check-config"),
        "{help}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/regcache.toml");
    let out = regcache()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("default_upstream = \"docker.io\""),
        "{printed}"
    );
    assert!(printed.contains("registry.k8s.io"), "{printed}");
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:5000\"\ntag_tll = \"5m\"\n").unwrap();
    let out = regcache()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tag_tll"));

    let out = regcache()
        .arg("check-config")
        .env("REGCACHE_IDLE_TIMEOUT", "whenever")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IDLE_TIMEOUT"));

    // serve refuses too, before binding anything.
    let out = regcache()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `check-config` runs what `serve` runs before binding: a config one
/// refuses, the other refuses too, naming the key or the file.
#[test]
fn check_config_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let cases = [
        (
            "tls",
            format!("[tls]\ncert_file = {missing:?}\nkey_file = {missing:?}\n"),
            "missing-cert.pem",
        ),
        (
            "log_level",
            "log_level = \"verbose\"\n".to_owned(),
            "log_level: \"verbose\" is not a level",
        ),
        ("integer", "header_timeout = 7\n".to_owned(), "write \"7s\""),
        (
            "string",
            "header_timeout = \"7\"\n".to_owned(),
            "write \"7s\"",
        ),
    ];
    for (name, toml, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        let toml = format!(
            "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\ncache_dir = {:?}\n{toml}",
            free_port(),
            free_port(),
            dir.path().join("cache")
        );
        std::fs::write(&path, toml).unwrap();
        for command in ["check-config", "serve"] {
            let out = regcache()
                .args([command, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: {command} accepted it");
            assert!(stderr.contains(expected), "{name}: {command}: {stderr}");
        }
    }
    let out = regcache()
        .arg("check-config")
        .env("REGCACHE_HEADER_TIMEOUT", "7")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("write \"7s\""), "{stderr}");
}

/// Every subcommand's help shows an example and describes each positional
/// argument; the top-level help names the defaults and `REGCACHE_*`.
#[test]
fn help_names_defaults_examples_and_every_argument() {
    let help = |args: &[&str]| {
        let out = regcache().args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&[]);
    for needle in [
        "127.0.0.1:5000",
        "127.0.0.1:9090",
        "regcache-data",
        "/etc/regcache/regcache.toml",
        "REGCACHE_LISTEN",
        "REGCACHE_CACHE__MAX_SIZE",
        "Examples:",
    ] {
        assert!(top.contains(needle), "{needle}: {top}");
    }
    for command in [
        "serve",
        "check-config",
        "healthcheck",
        "ls",
        "purge",
        "gc",
        "verify",
        "prefetch",
        "export",
        "import",
    ] {
        let text = help(&[command]);
        assert!(text.contains("Example"), "{command}: {text}");
        // clap lists positionals under "Arguments:", one per line, the
        // help text after the name.
        if let Some(section) = text.split("Arguments:\n").nth(1) {
            for line in section.lines().take_while(|l| !l.trim().is_empty()) {
                let described = line.trim().split_once("  ").map(|(_, h)| h.trim());
                assert!(
                    described.is_some_and(|h| !h.is_empty()),
                    "{command}: an argument without help: {line:?}"
                );
            }
        }
    }
}

/// Listen addresses as distribution and zot take them, sizes printed as
/// written, and a config error printed once with the key as written.
#[test]
fn listen_forms_sizes_and_errors_as_the_user_wrote_them() {
    let check = |env: &[(&str, &str)]| {
        let mut c = regcache();
        c.arg("check-config");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, printed, err) = check(&[("REGCACHE_LISTEN", ":5000")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(printed.contains("listen = \"0.0.0.0:5000\""), "{printed}");
    let (code, printed, err) = check(&[("REGCACHE_ADMIN_LISTEN", "localhost:9191")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        printed.contains("admin_listen = \"127.0.0.1:9191\""),
        "{printed}"
    );
    let (code, printed, err) = check(&[("REGCACHE_CACHE__MAX_SIZE", "50GB")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(printed.contains("max_size = \"50GB\""), "{printed}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[cache]\nmax_sise = \"50GB\"\n").unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        format!(
            "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\ncache_dir = {:?}\n[tls]\ncert_file = {missing:?}\nkey_file = {missing:?}\n",
            free_port(),
            free_port(),
            dir.path().join("cache")
        ),
    )
    .unwrap();
    for (command, config, key) in [
        ("check-config", &path, "cache.max_sise"),
        ("serve", &path, "cache.max_sise"),
        ("serve", &tls, "missing-cert.pem"),
    ] {
        let out = regcache()
            .args([command, "--config"])
            .arg(config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}");
        assert!(stderr.contains(key), "{command}: {stderr}");
        assert!(!stderr.contains("default."), "{command}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.contains(key)).count(),
            1,
            "{command}: printed once: {stderr}"
        );
    }
    let (_, _, err) = check(&[("REGCACHE_CACHE__MAX_SIZE", "lots")]);
    assert!(err.contains("REGCACHE_CACHE__MAX_SIZE"), "{err}");
}

#[test]
fn environment_overrides_the_defaults() {
    let out = regcache()
        .arg("check-config")
        .env("REGCACHE_LISTEN", "127.0.0.1:6001")
        .env("REGCACHE_CACHE_DIR", "/srv/cache")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:6001\""), "{printed}");
    assert!(printed.contains("cache_dir = \"/srv/cache\""), "{printed}");
}

/// A Kubernetes Service named `regcache` puts these into every pod of its
/// namespace; they stopped regcache at startup ("unknown field: port").
#[test]
fn kubernetes_service_links_are_not_taken_for_config_keys() {
    let out = regcache()
        .arg("check-config")
        .env("REGCACHE_PORT", "tcp://10.0.0.7:5000")
        .env("REGCACHE_PORT_5000_TCP", "tcp://10.0.0.7:5000")
        .env("REGCACHE_PORT_5000_TCP_ADDR", "10.0.0.7")
        .env("REGCACHE_PORT_5000_TCP_PORT", "5000")
        .env("REGCACHE_PORT_5000_TCP_PROTO", "tcp")
        .env("REGCACHE_SERVICE_HOST", "10.0.0.7")
        .env("REGCACHE_SERVICE_PORT", "5000")
        .env("REGCACHE_SERVICE_PORT_REGISTRY", "5000")
        .env("REGCACHE_METRICS_SERVICE_HOST", "10.0.0.8")
        .env("REGCACHE_METRICS_PORT_9091_TCP_PORT", "9091")
        .env("REGCACHE_LISTEN", "127.0.0.1:6002")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:6002\""), "{printed}");
}

#[test]
fn tells_systemd_it_is_ready_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = regcache()
        .arg("serve")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("REGCACHE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("REGCACHE_ADMIN_LISTEN", &admin)
        .env("REGCACHE_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification arrives");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    let out = regcache()
        .arg("healthcheck")
        .env("REGCACHE_ADMIN_LISTEN", &admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = socket
        .recv(&mut buf)
        .expect("a stopping notification arrives");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = child.wait().unwrap();
    let out = regcache()
        .arg("healthcheck")
        .env("REGCACHE_ADMIN_LISTEN", &admin)
        .output()
        .unwrap();
    assert!(!out.status.success(), "no daemon, not healthy");
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
}
