//! The cross-replica cold stampede (issue 13): `replicas × clients` cold
//! pulls of one blob spread over regcache replicas that share a bucket
//! (`[cache] backend = "s3"`, one SeaweedFS on 127.0.0.1), against one
//! fs-backend regcache and one distribution proxy ("the peer") taking the
//! same number of clients. Per scenario: upstream GETs of the blob (target
//! 1), wall time (median and spread over runs), bytes streamed between
//! replicas (`regcache_peer_bytes_total`) and object-store requests per blob
//! (`regcache_object_store_requests_total`, summed over the replicas, by op).
//!
//! Every run starts its processes anew on empty local caches and a fresh
//! prefix in the bucket, so each run is a cold blob for the whole fleet.
//! Knobs: `REGCACHE_BENCH_CLUSTER=0` skips it, `REGCACHE_BENCH_ONLY=cluster`
//! runs only it, `REGCACHE_BENCH_CLUSTER_RUNS` (default 3),
//! `REGCACHE_BENCH_CLUSTER_PEER_RUNS` (default 1: the peer fetches once per
//! client, so a run takes long), `REGCACHE_BENCH_CLUSTER_SHAPES` (default
//! `3x10,10x5`: replicas × clients per replica), `REGCACHE_BENCH_CLUSTER_LOGS`
//! (a directory that keeps every replica's log).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::common::registry::{free_port, http_get, Registry};
use super::common::seaweedfs::{self, SeaweedFs};
use super::{
    count_since, env_u64, fmt_num, kill_child, median, pull, settled_requests, spawn_regcache,
    sync_disks, Kind, Proxy, MIB,
};

/// Logs kept so far (REGCACHE_BENCH_CLUSTER_LOGS), for unique names.
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One regcache process of a fleet, with its own directory.
struct Replica {
    name: String,
    addr: SocketAddr,
    admin: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Replica {
    /// A replica sharing `prefix` of the engine's bucket with the others.
    fn start(upstream_url: &str, engine: &SeaweedFs, prefix: &str, name: &str) -> Replica {
        let dir = tempfile::Builder::new()
            .prefix("regcache-bench-replica-")
            .tempdir()
            .expect("tempdir");
        let secret = dir.path().join("s3-secret");
        fs::write(&secret, seaweedfs::SECRET_KEY).unwrap();
        let token = dir.path().join("peer-token");
        fs::write(&token, "regcache-bench-peer-token-0123456789").unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let peer: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = format!(
            "listen = \"{addr}\"\nadmin_listen = \"{admin}\"\ncache_dir = \"{cache}\"\n\
             default_upstream = \"local\"\n\n\
             [cache]\nbackend = \"s3\"\n\n\
             [cache.s3]\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\n\
             allow_http = true\naccess_key_id = \"{key}\"\nsecret_access_key_file = \"{secret}\"\n\
             conditional_writes = \"require\"\n\n\
             [cluster]\nreplica_id = \"{name}\"\npeer_listen = \"{peer}\"\n\
             advertise_url = \"http://{peer}\"\npeer_token_file = \"{token}\"\n\n\
             [[upstreams]]\nname = \"local\"\nurl = \"{upstream_url}\"\ntag_ttl = \"5m\"\n",
            cache = dir.path().join("cache").display(),
            endpoint = engine.endpoint,
            bucket = seaweedfs::BUCKET,
            key = seaweedfs::ACCESS_KEY,
            secret = secret.display(),
            token = token.display(),
        );
        let child = spawn_regcache(dir.path(), &config, "regcache replica", admin);
        Replica {
            name: name.to_owned(),
            addr,
            admin,
            child,
            dir,
        }
    }

    fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("regcache.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        // REGCACHE_BENCH_CLUSTER_LOGS=DIR keeps every replica's log there.
        if let Some(keep) = std::env::var_os("REGCACHE_BENCH_CLUSTER_LOGS") {
            let keep = std::path::PathBuf::from(keep);
            let n = KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = fs::create_dir_all(&keep).and_then(|_| {
                fs::copy(
                    self.dir.path().join("regcache.log"),
                    keep.join(format!("{n:03}-{}.log", self.name)),
                )
            });
        }
        if std::thread::panicking() {
            eprintln!(
                "--- replica log, last lines ({}) ---\n{}",
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}

/// Sums of the series of `name` on a `/metrics` page, by the value of
/// `label` (all of them under "" when `label` is empty).
fn sums_by(metrics: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with(['{', ' ']) {
            continue;
        }
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key = if label.is_empty() {
            String::new()
        } else {
            let needle = format!("{label}=\"");
            match rest.find(&needle) {
                Some(at) => rest[at + needle.len()..]
                    .split('"')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                None => continue,
            }
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// What the fleet's `/metrics` say about one run, summed over replicas.
#[derive(Default, Clone, PartialEq)]
struct FleetCounts {
    peer_bytes: BTreeMap<String, f64>,
    store_ops: BTreeMap<String, f64>,
    store_bytes: BTreeMap<String, f64>,
    leases: BTreeMap<String, f64>,
    fills_in_progress: f64,
}

fn fleet_counts(replicas: &[Replica]) -> FleetCounts {
    let mut c = FleetCounts::default();
    let add = |into: &mut BTreeMap<String, f64>, from: BTreeMap<String, f64>| {
        for (k, v) in from {
            *into.entry(k).or_insert(0.0) += v;
        }
    };
    for r in replicas {
        let m = r.metrics();
        add(
            &mut c.peer_bytes,
            sums_by(&m, "regcache_peer_bytes_total", "direction"),
        );
        add(
            &mut c.store_ops,
            sums_by(&m, "regcache_object_store_requests_total", "op"),
        );
        add(
            &mut c.store_bytes,
            sums_by(&m, "regcache_object_store_bytes_total", "direction"),
        );
        add(
            &mut c.leases,
            sums_by(&m, "regcache_fill_leases_total", "outcome"),
        );
        c.fills_in_progress += sums_by(&m, "regcache_fills_in_progress", "")
            .values()
            .sum::<f64>();
    }
    c
}

/// The fleet's counts once no fill runs and they stopped changing (the
/// upload to the bucket and the lease release finish after the last
/// client's byte).
fn settled_fleet_counts(replicas: &[Replica]) -> FleetCounts {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = fleet_counts(replicas);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = fleet_counts(replicas);
        if (now == last && now.fills_in_progress == 0.0) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Waits (up to 60 s) until the blob's final key exists under `prefix`:
/// its upload completes after the last client's byte. False on timeout.
fn wait_in_bucket(engine: &SeaweedFs, prefix: &str, digest: &str) -> bool {
    use object_store::ObjectStoreExt;
    let hex = digest.trim_start_matches("sha256:");
    let key = object_store::path::Path::from(format!("{prefix}/blobs/sha256/{}/{hex}", &hex[..2]));
    let Ok(store) = engine.client() else {
        return false;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if rt.block_on(store.head(&key)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `addrs.len() × per` clients at once, client `i` on `addrs[i % len]`;
/// the wall time from the common start to the last byte.
fn spread_pulls(addrs: &[SocketAddr], per: usize, path: &str, size: u64) -> Result<f64, String> {
    let n = addrs.len() * per;
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let path = path.to_string();
            let addr = addrs[i % addrs.len()];
            std::thread::spawn(move || {
                barrier.wait();
                pull(addr, &path, false)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut errors = Vec::new();
    for h in handles {
        match h.join().expect("client thread") {
            Ok(p) if p.bytes == size => {}
            Ok(p) => errors.push(format!("short body: {} of {size}", p.bytes)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if errors.is_empty() {
        Ok(wall)
    } else {
        Err(format!("{} of {n} pulls failed: {errors:?}", errors.len()))
    }
}

/// One scenario's runs.
#[derive(Default)]
struct Scenario {
    label: String,
    walls: Vec<f64>,
    upstream_gets: Vec<f64>,
    /// Per run, summed over replicas (the fleet only).
    counts: Vec<FleetCounts>,
}

impl Scenario {
    fn wall(&self) -> String {
        if self.walls.is_empty() {
            return "—".into();
        }
        let lo = self.walls.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.walls.iter().copied().fold(0.0, f64::max);
        format!(
            "{} ({}–{}, n={})",
            fmt_num(median(&self.walls)),
            fmt_num(lo),
            fmt_num(hi),
            self.walls.len()
        )
    }

    fn gets(&self) -> String {
        let v: Vec<String> = self.upstream_gets.iter().map(|g| fmt_num(*g)).collect();
        if v.is_empty() {
            "—".into()
        } else {
            v.join(", ")
        }
    }

    /// Median over runs of one summed series, formatted; "—" outside a
    /// fleet.
    fn median_of(&self, pick: impl Fn(&FleetCounts) -> f64) -> f64 {
        if self.counts.is_empty() {
            return f64::NAN;
        }
        median(&self.counts.iter().map(pick).collect::<Vec<_>>())
    }
}

/// Runs every shape; returns the markdown section (also printed).
pub(super) fn run(upstream: &Registry, blob_path: &str, digest: &str, size: u64) -> String {
    let runs = env_u64("REGCACHE_BENCH_CLUSTER_RUNS", 3).max(1) as usize;
    let peer_runs = env_u64("REGCACHE_BENCH_CLUSTER_PEER_RUNS", 1) as usize;
    let shapes: Vec<(usize, usize)> = std::env::var("REGCACHE_BENCH_CLUSTER_SHAPES")
        .unwrap_or_else(|_| "3x10,10x5".into())
        .split(',')
        .filter_map(|s| s.trim().split_once('x'))
        .filter_map(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
        .filter(|&(r, c)| r > 0 && c > 0)
        .collect();
    let up_url = upstream.url();
    eprintln!("e2e: cluster: starting SeaweedFS");
    let engine = SeaweedFs::start();
    let mut scenarios: Vec<(usize, usize, [Scenario; 3])> = Vec::new();
    let mut prefix_n = 0;
    for &(replicas, per) in &shapes {
        let clients = replicas * per;
        eprintln!(
            "e2e: cluster: {replicas} replicas × {per} clients ({clients} cold pulls), {runs} runs"
        );
        let mut fleet = Scenario {
            label: format!("{replicas} replicas sharing a bucket"),
            ..Scenario::default()
        };
        let mut single = Scenario {
            label: "one regcache (fs)".into(),
            ..Scenario::default()
        };
        let mut peer = Scenario {
            label: "peer (distribution proxy)".into(),
            ..Scenario::default()
        };
        for run in 0..runs {
            // The fleet: fresh replicas, a fresh prefix.
            prefix_n += 1;
            let prefix = format!("bench-{}-{prefix_n}", std::process::id());
            let fleet_procs: Vec<Replica> = (0..replicas)
                .map(|i| Replica::start(&up_url, &engine, &prefix, &format!("r{i}")))
                .collect();
            sync_disks();
            let before = settled_requests(upstream).len();
            let start_counts = fleet_counts(&fleet_procs);
            let addrs: Vec<SocketAddr> = fleet_procs.iter().map(|r| r.addr).collect();
            let wall = spread_pulls(&addrs, per, blob_path, size).unwrap_or_else(|e| {
                panic!(
                    "cluster {replicas}×{per}: {e}\n{}",
                    fleet_procs[0].log_tail()
                )
            });
            if !wait_in_bucket(&engine, &prefix, digest) {
                eprintln!("e2e: cluster: the blob is not in the bucket 60 s after the run");
            }
            let mut counts = settled_fleet_counts(&fleet_procs);
            // Startup's own calls (the conditional-write probe) are not
            // the blob's.
            for (k, v) in start_counts.store_ops {
                *counts.store_ops.entry(k).or_insert(0.0) -= v;
            }
            let after = settled_requests(upstream);
            fleet.walls.push(wall);
            fleet
                .upstream_gets
                .push(count_since(before, &after, "GET", digest) as f64);
            fleet.counts.push(counts);
            drop(fleet_procs);

            // One regcache, the same clients.
            let p = Proxy::start(Kind::Regcache, &up_url);
            sync_disks();
            let before = settled_requests(upstream).len();
            let wall = spread_pulls(&[p.addr], clients, blob_path, size)
                .unwrap_or_else(|e| panic!("single regcache: {e}\n{}", p.log_tail()));
            let after = settled_requests(upstream);
            single.walls.push(wall);
            single
                .upstream_gets
                .push(count_since(before, &after, "GET", digest) as f64);
            drop(p);

            if run < peer_runs {
                let p = Proxy::start(Kind::Peer, &up_url);
                sync_disks();
                let before = settled_requests(upstream).len();
                let wall = spread_pulls(&[p.addr], clients, blob_path, size)
                    .unwrap_or_else(|e| panic!("peer: {e}\n{}", p.log_tail()));
                let after = settled_requests(upstream);
                peer.walls.push(wall);
                peer.upstream_gets
                    .push(count_since(before, &after, "GET", digest) as f64);
                drop(p);
            }
        }
        scenarios.push((replicas, per, [fleet, single, peer]));
    }
    drop(engine);

    let size_mib = size as f64 / MIB;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Cross-replica cold stampede ({size_mib:.0} MiB blob)\n\n\
         Clients spread round-robin over the replicas; every run on fresh processes, \
         empty local caches and a fresh bucket prefix (one SeaweedFS, one upstream, \
         all on 127.0.0.1). Wall: median (min–max, runs). Per-blob figures are medians \
         over runs, summed over the replicas.\n"
    );
    let _ = writeln!(
        md,
        "| shape | scenario | upstream blob GETs (per run) | wall s | MiB between replicas (received) | store requests per blob | store MiB to / from |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | --- | ---: |");
    for (replicas, per, s) in &scenarios {
        for sc in s.iter() {
            let (between, ops, bytes) = if sc.counts.is_empty() {
                ("—".to_string(), "—".to_string(), "—".to_string())
            } else {
                let received =
                    sc.median_of(|c| c.peer_bytes.get("received").copied().unwrap_or(0.0) / MIB);
                let mut ops: Vec<String> = Vec::new();
                let names: Vec<String> = sc.counts[0].store_ops.keys().cloned().collect();
                let mut total = 0.0;
                for op in names {
                    let v = sc.median_of(|c| c.store_ops.get(&op).copied().unwrap_or(0.0));
                    total += v;
                    if v != 0.0 {
                        ops.push(format!("{op} {}", fmt_num(v)));
                    }
                }
                let to =
                    sc.median_of(|c| c.store_bytes.get("to_store").copied().unwrap_or(0.0) / MIB);
                let from =
                    sc.median_of(|c| c.store_bytes.get("from_store").copied().unwrap_or(0.0) / MIB);
                (
                    fmt_num(received),
                    format!("{} ({})", fmt_num(total), ops.join(", ")),
                    format!("{} / {}", fmt_num(to), fmt_num(from)),
                )
            };
            let _ = writeln!(
                md,
                "| {replicas} × {per} | {} | {} | {} | {between} | {ops} | {bytes} |",
                sc.label,
                sc.gets(),
                sc.wall()
            );
        }
    }
    let _ = writeln!(md, "\nFleet runs, each (summed over replicas):\n");
    for (replicas, per, s) in &scenarios {
        for (i, c) in s[0].counts.iter().enumerate() {
            let show = |m: &BTreeMap<String, f64>, scale: f64| {
                m.iter()
                    .map(|(k, v)| format!("{k} {}", fmt_num(v / scale)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                md,
                "- {replicas} × {per} run {}: wall {} s, upstream GETs {}; peer MiB [{}]; store ops [{}]; store MiB [{}]; leases [{}]",
                i + 1,
                fmt_num(s[0].walls[i]),
                fmt_num(s[0].upstream_gets[i]),
                show(&c.peer_bytes, MIB),
                show(&c.store_ops, 1.0),
                show(&c.store_bytes, MIB),
                show(&c.leases, 1.0),
            );
        }
    }
    println!("\n{md}");
    md
}
