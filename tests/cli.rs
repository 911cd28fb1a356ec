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
