//! Warming a cache and carrying it across an air gap: prefetch (through a
//! running daemon and standalone, all platforms or chosen ones), export to
//! an OCI-layout bundle, import into a cache with no upstream reachable.

pub mod common;

use std::collections::BTreeSet;

use common::images::{self, assert_pulls_from};
use common::regcache::{Regcache, UpstreamEntry};
use common::registry::{free_port, Registry};

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_chosen_or_all_platforms_then_serve_with_the_upstream_gone() {
    let mut upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 256 * 1024);
    let index = fixtures.oci_index.clone();
    let arm = index
        .children
        .iter()
        .find(|c| c.architecture == "arm64")
        .unwrap()
        .clone();

    // Through a running daemon, one platform: exactly that platform's blobs.
    let daemon = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let out = daemon.cli(&["prefetch", "--platform", "linux/arm64", "test/multiarch:v1"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("prefetched 1 of 1 images"),
        "{}",
        out.stdout
    );
    assert_eq!(daemon.cached_blobs(), set(&arm.blobs));
    assert!(
        daemon.log().contains("prefetch through the admin API"),
        "the daemon did the work"
    );
    assert_eq!(
        daemon.cached_manifests(),
        set(&[index.digest.clone(), arm.digest.clone()])
    );
    // A platform the index lacks fails, with a summary and a non-zero status.
    let out = daemon.cli(&["prefetch", "--platform", "linux/s390x", "test/multiarch:v1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("FAILED"), "{}", out.stdout);
    // Without --platform: every platform.
    let out = daemon.cli(&["prefetch", "test/multiarch:v1"]);
    assert!(out.success(), "{out:?}");
    assert_eq!(daemon.cached_blobs(), set(&index.blobs));

    // Standalone on a stopped daemon's cache directory, from a list file.
    let mut standalone = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    standalone.terminate();
    let list = standalone.dir.join("images.txt");
    std::fs::write(
        &list,
        "# images for the rollout\n\ntest/dockerlist:v1\nlocal/test/schema2:v1\n",
    )
    .unwrap();
    let out = standalone.cli(&["prefetch", list.to_str().unwrap()]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("prefetched 2 of 2 images"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("standalone") && out.stderr.contains("done in"),
        "plain progress lines without a terminal: {}",
        out.stderr
    );
    let mut expected = set(&fixtures.docker_list.blobs);
    expected.extend(fixtures.docker_schema2.blobs.iter().cloned());
    assert_eq!(standalone.cached_blobs(), expected);

    // The upstream goes away; both caches serve what was prefetched.
    upstream.stop();
    standalone.start_again();
    assert_pulls_from(&index, &daemon.host()).await;
    assert_pulls_from(&fixtures.docker_list, &standalone.host()).await;
    assert_pulls_from(&fixtures.docker_schema2, &standalone.host()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_an_empty_cache_with_no_upstream() {
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 2 * 1024 * 1024);
    let source = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let out = source.cli(&[
        "prefetch",
        "test/multiarch:v1",
        "test/dockerlist:v1",
        "test/schema2:v1",
        "test/big:v1",
    ]);
    assert!(out.success(), "{out:?}");

    // Export with the daemon running (files read directly, tags from the
    // admin API).
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    let out = source.cli(&["export", "--all", "--output", bundle.to_str().unwrap()]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("4 images"), "{}", out.stdout);
    // It is an OCI image layout: the references are annotations.
    let mut index_json = None;
    let mut archive = tar::Archive::new(std::fs::File::open(&bundle).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("index.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
            index_json = Some(serde_json::from_str::<serde_json::Value>(&s).unwrap());
        }
    }
    let index_json = index_json.expect("index.json in the bundle");
    let refs: BTreeSet<&str> = index_json["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(refs.contains("local/test/multiarch:v1"), "{refs:?}");
    assert_eq!(refs.len(), 4);

    // The air-gapped mirror: same upstream name, nothing listening there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut target = Regcache::start(&[UpstreamEntry::new("local", &nowhere)]);
    target.terminate();

    // A bundle with one flipped byte in a layer is rejected, installing nothing.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let offset = {
        let mut archive = tar::Archive::new(bytes.as_slice());
        let big = fixtures
            .big_layer_digest
            .trim_start_matches("sha256:")
            .to_owned();
        let entry = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().to_string_lossy().ends_with(&big))
            .unwrap();
        entry.raw_file_position() as usize
    };
    bytes[offset + 12_345] ^= 0x20;
    let tampered = work.path().join("tampered.tar");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = target.cli(&["import", tampered.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("tampered"), "{}", out.stderr);
    // So is a truncated one.
    let truncated = work.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..offset + 4096]).unwrap();
    let out = target.cli(&["import", truncated.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(target.cached_blobs().is_empty() && target.cached_manifests().is_empty());

    // The real bundle imports into the stopped mirror's directory.
    let out = target.cli(&["import", bundle.to_str().unwrap()]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("4 images, 4 tags"), "{}", out.stdout);
    target.start_again();
    for f in fixtures.all() {
        assert_pulls_from(f, &target.host()).await;
    }

    // Export from a stopped cache and import into a running mirror (the
    // bundle is streamed to its admin API).
    let mut source = source;
    source.terminate();
    let one = work.path().join("one.tar");
    let out = source.cli(&[
        "export",
        "--output",
        one.to_str().unwrap(),
        "test/multiarch:v1",
    ]);
    assert!(out.success(), "{out:?}");
    let running = Regcache::start(&[UpstreamEntry::new("local", &nowhere)]);
    let out = running.cli(&["import", tampered.to_str().unwrap()]);
    assert_eq!(
        out.code,
        Some(2),
        "the daemon refuses a bad bundle too: {out:?}"
    );
    let out = running.cli(&["import", one.to_str().unwrap()]);
    assert!(out.success(), "{out:?}");
    assert_pulls_from(&fixtures.oci_index, &running.host()).await;
    let ls = running.cli(&["ls"]);
    assert!(ls.stdout.contains("test/multiarch"), "{}", ls.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_through_a_daemon_that_demands_tls_and_credentials() {
    use common::registry::http_request;
    use common::tls::TestCa;
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 256 * 1024);
    let secrets = tempfile::tempdir().unwrap();
    let leaf = TestCa::new("prefetch test CA").issue(&["127.0.0.1"], secrets.path(), "server");
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, "ci ci-token\n").unwrap();
    let admin_token = secrets.path().join("admin.token");
    std::fs::write(&admin_token, "admin-secret\n").unwrap();
    let extra = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n[auth]\ntokens_file = {tokens:?}\nadmin_token_file = {admin_token:?}\n",
        leaf.cert_path, leaf.key_path
    );
    let upstreams = [UpstreamEntry::new("local", &upstream.url()).set("deny", "[\"secret/*\"]")];
    let daemon = Regcache::start_with(&upstreams, &extra);

    let out = daemon.cli(&["prefetch", "test/schema2:v1"]);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("prefetched 1 of 1 images"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("done in"), "{}", out.stderr);
    assert_eq!(daemon.cached_blobs(), set(&fixtures.docker_schema2.blobs));

    // The endpoint checks what it is given, with the upstream's rules.
    let auth = [("Authorization", "Bearer admin-secret")];
    let post = |query: &str| {
        http_request(
            daemon.admin,
            "POST",
            &format!("/admin/prefetch{query}"),
            &auth,
            Some(b""),
        )
        .unwrap()
    };
    assert_eq!(post("").status, 400);
    assert_eq!(post("?upstream=nowhere&repo=a/b&reference=v1").status, 404);
    assert_eq!(
        post("?upstream=local&repo=a/b&reference=bad%20tag").status,
        400
    );
    assert_eq!(
        post("?upstream=local&repo=secret/app&reference=v1").status,
        403
    );
    // A failure arrives as the last line of the stream, and the CLI exits 1.
    let missing = post("?upstream=local&repo=test/schema2&reference=nope");
    assert_eq!(missing.status, 200);
    let body = String::from_utf8_lossy(&missing.body).into_owned();
    assert!(
        body.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("{\"error\""),
        "{body}"
    );
    let out = daemon.cli(&["prefetch", "test/schema2:nope"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("FAILED"), "{}", out.stdout);
}

/// An OCI archive written by another tool carries only the standard
/// `org.opencontainers.image.ref.name`: a full `host/repo:tag` is recorded
/// under the upstream configured for that host; a bare tag is refused
/// unless `--upstream` and `--repo` say where it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skopeo_oci_archive_keeps_its_tags() {
    use common::images::{skopeo, SKOPEO_TIMEOUT};
    use common::registry::http_request;
    let upstream = Registry::start();
    let fixtures = images::load_fixtures_with_big_layer(&upstream, 64 * 1024);
    let work = tempfile::tempdir().unwrap();
    let archive = |name: &str, src: &str, ref_name: &str| {
        let path = work.path().join(name);
        skopeo(
            &[
                "copy",
                "--all",
                "--src-tls-verify=false",
                &format!("docker://{}/{src}", upstream.host()),
                &format!("oci-archive:{}:{ref_name}", path.display()),
            ],
            SKOPEO_TIMEOUT,
        )
        .unwrap();
        path
    };
    let full = archive(
        "full.tar",
        "test/multiarch:v1",
        &format!("{}/test/multiarch:v1", upstream.host()),
    );
    let bare = archive("bare.tar", "test/schema2:v1", "v2");

    // The air-gapped mirror knows the registry's host as an alias and
    // never dials: offline, nothing listening at its url.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let entry = || UpstreamEntry::new("local", &nowhere).alias(&upstream.host());
    let mut mirror = Regcache::start_with(&[entry()], "offline = true");
    mirror.terminate();
    let manifest = |mirror: &Regcache, path: &str| {
        let accept = [(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )];
        http_request(mirror.addr, "GET", path, &accept, None)
            .unwrap()
            .status
    };

    // Standalone, into the stopped mirror's directory.
    let out = mirror.cli(&["import", full.to_str().unwrap()]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("1 images, 1 tags"), "{}", out.stdout);
    assert!(
        out.stdout.contains("imported local/test/multiarch:v1"),
        "{}",
        out.stdout
    );
    mirror.start_again();
    assert_eq!(manifest(&mirror, "/v2/test/multiarch/manifests/v1"), 200);
    assert_pulls_from(&fixtures.oci_index, &mirror.host()).await;

    // Through the running daemon: a bare tag names no repository.
    let out = mirror.cli(&["import", bare.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("the archive names tag v2 without a repository: pass --upstream and --repo"),
        "{}",
        out.stderr
    );
    assert_eq!(manifest(&mirror, "/v2/team/app/manifests/v2"), 404);
    let out = mirror.cli(&[
        "import",
        "--upstream",
        "nowhere",
        "--repo",
        "team/app",
        bare.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("\"nowhere\""), "{}", out.stderr);
    let out = mirror.cli(&[
        "import",
        "--upstream",
        "local",
        "--repo",
        "team/app",
        bare.to_str().unwrap(),
    ]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("1 images, 1 tags"), "{}", out.stdout);
    assert_eq!(manifest(&mirror, "/v2/team/app/manifests/v2"), 200);

    // A host this mirror does not configure is refused, naming it.
    let other = Regcache::start_with(&[UpstreamEntry::new("local", &nowhere)], "offline = true");
    let out = other.cli(&["import", full.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains(&format!("{:?}", upstream.host())),
        "{}",
        out.stderr
    );
}

/// Runs `regcache <args>` for `rc` under a pseudo-terminal (util-linux
/// `script`), so progress is drawn as an operator sees it; what it drew.
fn on_a_terminal(rc: &Regcache, args: &str) -> String {
    let command = format!(
        "{} {args} --config {}",
        env!("CARGO_BIN_EXE_regcache"),
        rc.dir.join("regcache.toml").display()
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every management command that reports speaks JSON with --json; export
/// streams to stdout with `-o -`; import and prefetch draw honest progress
/// on a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_stdout_export_and_terminal_progress() {
    let upstream = Registry::start();
    let _fixtures = images::load_fixtures_with_big_layer(&upstream, 64 * 1024);
    let source = Regcache::start(&[UpstreamEntry::new("local", &upstream.url())]);
    let json = |out: &common::regcache::CliOutput| -> serde_json::Value {
        assert!(out.success(), "{out:?}");
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
    };
    let v = json(&source.cli(&["prefetch", "--json", "test/schema2:v1"]));
    assert_eq!(v["prefetched"], 1, "{v}");
    assert!(v["bytes"].as_u64().unwrap() > 0, "{v}");
    let missing = source.cli(&["prefetch", "--json", "test/nope:v1"]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    let v: serde_json::Value = serde_json::from_str(missing.stdout.trim()).unwrap();
    assert_eq!(v["failed"][0]["image"], "local/test/nope:v1", "{v}");

    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b.tar");
    let v = json(&source.cli(&[
        "export",
        "--json",
        "-o",
        bundle.to_str().unwrap(),
        "test/schema2:v1",
    ]));
    assert_eq!(v["images"][0], "local/test/schema2:v1", "{v}");
    // `-o -`: the tar on stdout, which tar itself reads.
    let streamed = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["export", "-o", "-", "test/schema2:v1", "--config"])
        .arg(source.dir.join("regcache.toml"))
        .output()
        .unwrap();
    assert!(streamed.status.success(), "{streamed:?}");
    assert_eq!(streamed.stdout, std::fs::read(&bundle).unwrap());
    let listed = work.path().join("streamed.tar");
    std::fs::write(&listed, &streamed.stdout).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&listed)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&tar.stdout);
    assert!(
        names.contains("index.json") && names.contains("oci-layout"),
        "{names}"
    );

    let v = json(&source.cli(&["gc", "--json"]));
    assert!(v.get("bytes_freed").is_some(), "{v}");
    let v = json(&source.cli(&["purge", "--json", "local/test/schema2:v1"]));
    assert_eq!(v[0]["target"], "local/test/schema2:v1", "{v}");
    assert_eq!(v[0]["tags"].as_array().unwrap().len(), 1, "{v}");

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let target = Regcache::start_with(
        &[UpstreamEntry::new("local", &nowhere)],
        "[cache]\nmax_size = \"50GB\"\n",
    );
    let v = json(&target.cli(&["import", "--json", bundle.to_str().unwrap()]));
    assert_eq!(v["tags"], 1, "{v}");
    // Sizes as the config writes them.
    let ls = target.cli(&["ls"]);
    assert!(ls.stdout.contains("max_size 50GB"), "{}", ls.stdout);

    // On a terminal: import draws its progress; a failed prefetch leaves no
    // bar, full or otherwise (a 0-length bar is drawn full).
    let drawn = on_a_terminal(&target, &format!("import {}", bundle.display()));
    assert!(drawn.contains("importing"), "{drawn}");
    let drawn = on_a_terminal(&source, "prefetch test/nope:v1");
    assert!(drawn.contains("FAILED"), "{drawn}");
    assert!(!drawn.contains(&"=".repeat(30)), "a full bar: {drawn}");
}
