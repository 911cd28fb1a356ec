//! The deployment files: the image runs as a numeric user that every
//! Kubernetes example agrees with, deploy/kubernetes/ validates against the
//! Kubernetes schemas, its configs pass `check-config` with the environment
//! the pods get, the PrometheusRule and dashboard ConfigMap are generated
//! from config/, and the README shows the files as they are.
//!
//! The YAML checks run in tests/deploy/check_manifests.py with the
//! interpreter of target/test-venv (.ci/install-test-venv), which holds
//! PyYAML and kubernetes-validate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn python() -> PathBuf {
    let p = std::env::var_os("REGCACHE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/test-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/install-test-venv`",
        p.display()
    );
    p
}

/// Runs one check of check_manifests.py; its findings are the failure.
fn check(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(format!("{ROOT}/tests/deploy/check_manifests.py"))
        .args(args)
        .output()
        .expect("run check_manifests.py");
    assert!(
        out.status.success(),
        "check_manifests.py {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_owned()))
        .collect()
}

/// `USER uid:gid` of the final stage, both numeric.
fn image_user() -> (u32, u32) {
    let instructions = dockerfile();
    let user = instructions
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, u)| u.clone())
        .expect("the Dockerfile sets USER");
    // A kubelet enforcing runAsNonRoot refuses a named user: it cannot tell
    // from a name that it is not root.
    let (uid, gid) = user
        .split_once(':')
        .unwrap_or_else(|| panic!("USER {user} names no group"));
    let parse = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("USER {user} is not numeric"))
    };
    (parse(uid), parse(gid))
}

#[test]
fn the_image_runs_as_a_numeric_non_root_user_it_creates() {
    let (uid, gid) = image_user();
    assert!(uid != 0 && gid != 0, "USER {uid}:{gid} is root");
    // The user exists with those ids, so files it writes have an owner
    // name, and the cache directory is its own.
    let runs: Vec<String> = dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r)
        .collect();
    let all = runs.join(" ");
    for needed in [
        format!("groupadd --system --gid {gid}"),
        format!("--uid {uid} --gid {gid}"),
        format!("chown {uid}:{gid} /var/cache/regcache"),
    ] {
        assert!(all.contains(&needed), "the Dockerfile runs {needed:?}");
    }
}

#[test]
fn every_kubernetes_pod_runs_as_the_image_user_without_the_admin_port() {
    let (uid, gid) = image_user();
    check(&["pods", &uid.to_string(), &gid.to_string()]);
    // The README's own Kubernetes examples say the same.
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        for line in readme.lines().filter(|l| l.contains(&format!("{key}:"))) {
            let want = if key == "runAsUser" { uid } else { gid };
            assert!(
                line.contains(&format!("{key}: {want}")),
                "README: {line:?} is not {want}"
            );
        }
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    check(&["schemas"]);
}

#[test]
fn the_cluster_example_shares_a_bucket_without_a_persistent_volume() {
    // Replicas, emptyDir, the headless peer Service, ports, advertise_url,
    // replica_id and Secrets: check_manifests.py's findings fail it.
    let out = check(&["cluster"]);
    assert!(
        out.contains("Deployment/regcache-cluster")
            && out.contains("regcache-s3")
            && out.contains("regcache-peer-token"),
        "{out}"
    );
}

#[test]
fn the_prometheusrule_and_dashboard_configmap_are_generated_from_config() {
    check(&["generated"]);
}

/// `KEY=VALUE` pairs of the Dockerfile's ENV instructions.
fn image_env() -> BTreeMap<String, String> {
    dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_kubernetes_configs_pass_check_config_with_the_pods_environment() {
    let out = check(&["configs"]);
    let workloads: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for w in workloads {
        let name = w["workload"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut toml = w["toml"].as_str().unwrap().to_owned();
        // Files the config names under a mounted Secret exist in the pod:
        // here, under a tempdir.
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        // The pod's Secret volumes (the DaemonSet's admin token, the
        // cluster's S3 key and peer token), each a directory here.
        for (i, mount) in w["secret_mounts"].as_array().unwrap().iter().enumerate() {
            let mount = mount.as_str().unwrap();
            let here = secrets.join(i.to_string());
            std::fs::create_dir(&here).unwrap();
            toml = toml.replace(&format!("\"{mount}/"), &format!("\"{}/", here.display()));
        }
        for file in toml
            .split('"')
            .filter(|s| s.starts_with(&secrets.display().to_string()))
        {
            std::fs::write(file, "test-admin-token-0123456789abcdef\n").unwrap();
        }
        let config = dir.path().join("regcache.toml");
        std::fs::write(&config, &toml).unwrap();
        // The image's environment, then the container's, as the kubelet
        // sets them; the cache volume is a tempdir here.
        let mut env = image_env();
        for (k, v) in w["env"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_owned());
        }
        env.insert(
            "REGCACHE_CACHE_DIR".into(),
            dir.path().join("cache").display().to_string(),
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("REGCACHE_")) {
            cmd.env_remove(k);
        }
        let run = cmd
            .env_remove("RUST_LOG")
            .envs(&env)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{name}: check-config refused its config:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{name}: no {key} in\n{stdout}"))
                .parse::<std::net::SocketAddr>()
                .unwrap()
        };
        // The image's REGCACHE_ADMIN_LISTEN (0.0.0.0) wins over the file
        // unless the pod overrides it.
        let admin = value("admin_listen");
        assert!(admin.ip().is_loopback(), "{name}: admin_listen {admin}");
        assert_eq!(value("metrics_listen").port(), 9091, "{name}");
        let listen = value("listen");
        assert_eq!(listen.port(), 5000, "{name}");
        // A replica of the shared tier advertises its pod's address (the
        // check's stand-in for status.podIP) and is named after its pod.
        if stdout.contains("backend = \"s3\"") {
            for line in [
                "advertise_url = \"http://10.1.2.3:5002\"",
                "replica_id = \"regcache-cluster-6f7c9d-x2k4p\"",
                "peer_listen = \"0.0.0.0:5002\"",
            ] {
                assert!(stdout.contains(line), "{name}: no {line} in\n{stdout}");
            }
        }
        if w["host_network"].as_bool().unwrap() {
            assert!(
                listen.ip().is_loopback(),
                "{name}: on the node's network the registry answers the node only, not {listen}"
            );
        }
    }
}

#[test]
fn the_readme_shows_the_deploy_files_as_they_are() {
    // A fenced block whose first line is `# deploy/...` is an excerpt of
    // that file: the rest of the block appears in it, line for line.
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let mut blocks = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with("```") || line.len() == 3 {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let Some(path) = body
            .first()
            .and_then(|l| l.strip_prefix("# "))
            .and_then(|l| l.split_whitespace().next())
            .filter(|p| p.starts_with("deploy/"))
        else {
            continue;
        };
        blocks += 1;
        let file = std::fs::read_to_string(format!("{ROOT}/{path}"))
            .unwrap_or_else(|e| panic!("README names {path}: {e}"));
        let excerpt = body[1..].join("\n");
        assert!(
            file.contains(&excerpt),
            "README's block for {path} is not in the file:\n{excerpt}"
        );
    }
    assert!(blocks >= 3, "README shows {blocks} deploy/ files");
}
