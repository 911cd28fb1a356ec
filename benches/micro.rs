//! Micro benchmarks (criterion): the per-byte and per-request costs that
//! sit on regcache's hot paths.
//!
//! * `digest/*`: sha256 verification throughput over 1 MiB chunks (what a
//!   fill does to every byte it writes), next to a plain 1 MiB memcpy (cache
//!   resident) and a 64 MiB memcpy (DRAM) as memory-bandwidth references.
//! * `route/*`: `http::route::parse` on typical request paths (the built-in
//!   upstream presets: docker.io default, `ns=`, a registry-name prefix).
//! * `index/*`: sled index lookups (hit and miss) and inserts with N entries
//!   already present, and the time to open (and close) an index of N
//!   entries.
//!
//! Run: `cargo bench --bench micro` (about 1 minute on 2 cores, 20 s of it
//! filling the 10^6-entry index).
//!
//! N is 10^6 under `cargo bench` (filling it takes well under a minute) and
//! can be set with `REGCACHE_BENCH_INDEX_ENTRIES`, e.g. `=100000`. Under
//! `cargo test --all-targets` (criterion's test mode: every benchmark runs
//! once, no `--bench` argument) N is 1000 so the suite stays fast.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::Method;

use regcache::cache::{Index, Kind};
use regcache::config::Config;
use regcache::http::route;
use regcache::metrics::Metrics;
use regcache::registry::{Digest, Sha256Hasher};
use regcache::upstream::Upstreams;

const MIB: usize = 1024 * 1024;

/// `cargo bench` passes `--bench`; `cargo test` runs the target without it.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn index_entries() -> u64 {
    if let Some(n) = std::env::var("REGCACHE_BENCH_INDEX_ENTRIES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
    {
        return n;
    }
    if bench_mode() {
        1_000_000
    } else {
        1_000
    }
}

/// Deterministic, incompressible bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The i-th synthetic digest: sha256 of the number, so keys are spread
/// over the key space like real digests.
fn nth_digest(i: u64) -> Digest {
    Digest::sha256_of(&i.to_le_bytes())
}

fn configure() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

fn digest(c: &mut Criterion) {
    let data = pseudo_random(MIB, 0x5eed);
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("sha256_1MiB", |b| {
        b.iter_batched_ref(
            Sha256Hasher::default,
            |h| h.update(black_box(&data)),
            BatchSize::SmallInput,
        )
    });
    // The whole verification as a fill does it: update per 1 MiB, finish.
    g.bench_function("sha256_1MiB_and_finish", |b| {
        b.iter(|| {
            let mut h = Sha256Hasher::default();
            h.update(black_box(&data));
            black_box(h.finish())
        })
    });
    let mut dst = vec![0u8; MIB];
    g.bench_function("memcpy_1MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&data));
            black_box(&mut dst);
        })
    });
    g.finish();

    // The same copy out of cache: 64 MiB does not fit in any cache level,
    // so this is the DRAM bandwidth a copy per chunk would cost.
    let big = vec![0xa5u8; 64 * MIB];
    let mut big_dst = vec![0u8; 64 * MIB];
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.sample_size(10);
    g.bench_function("memcpy_64MiB", |b| {
        b.iter(|| {
            big_dst.copy_from_slice(black_box(&big));
            black_box(&mut big_dst);
        })
    });
    g.finish();
    drop((big, big_dst));

    let s = nth_digest(7).to_string();
    c.bench_function("digest/parse", |b| {
        b.iter(|| black_box(black_box(s.as_str()).parse::<Digest>().unwrap()))
    });
}

fn routing(c: &mut Criterion) {
    // The built-in presets (docker.io default, ghcr.io, quay.io, ...):
    // a realistic upstream table, built only from `Config::default()`.
    let config = Config::default();
    let upstreams =
        Upstreams::from_config(&config, Arc::new(Metrics::new())).expect("built-in upstreams");
    let blob = nth_digest(1).to_string();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "manifest_tag_default",
            "/v2/library/nginx/manifests/1.27-alpine".into(),
            None,
        ),
        (
            "blob_ns_query",
            format!("/v2/library/nginx/blobs/{blob}"),
            Some("ns=docker.io"),
        ),
        (
            "manifest_registry_prefix",
            "/v2/ghcr.io/owner/team/app/manifests/v1.2.3".into(),
            None,
        ),
        (
            "manifest_by_digest_deep",
            format!("/v2/myorg/group/sub/app/manifests/{blob}"),
            None,
        ),
        ("base", "/v2/".into(), None),
    ];
    let mut g = c.benchmark_group("route");
    for (name, path, query) in &cases {
        let method = if *name == "blob_ns_query" {
            Method::GET
        } else {
            Method::HEAD
        };
        assert!(
            route::parse(&method, path, *query, &upstreams).is_ok(),
            "{path} must route"
        );
        g.bench_function(*name, |b| {
            b.iter(|| {
                black_box(route::parse(
                    &method,
                    black_box(path.as_str()),
                    black_box(*query),
                    &upstreams,
                ))
                .is_ok()
            })
        });
    }
    g.finish();
}

fn fill_index(path: &Path, n: u64) -> Index {
    let index = Index::open(path).expect("open index");
    let started = Instant::now();
    for i in 0..n {
        index
            .record(Kind::Blob, &nth_digest(i), 1_000 + i, None)
            .expect("record");
    }
    // Make it durable, as a long-running cache's index would be.
    index.flush_access_times().expect("flush");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "index: filled {n} entries in {secs:.1} s ({:.0} inserts/s, {:.0} MiB on disk)",
        n as f64 / secs,
        dir_size(path) as f64 / MIB as f64
    );
    index
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn index(c: &mut Criterion) {
    let n = index_entries();
    let tmp = tempfile::Builder::new()
        .prefix("regcache-bench-index-")
        .tempdir()
        .expect("tempdir");
    let path = tmp.path().join("index");
    let index = fill_index(&path, n);
    let label = if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    };

    let mut g = c.benchmark_group(format!("index_{label}"));
    // Present keys, visited in a scattered order (a stride coprime with n).
    let present: Vec<Digest> = (0..4096u64).map(|i| nth_digest(i * 7919 % n)).collect();
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % present.len();
            let e = index.get(Kind::Blob, &present[i]).unwrap();
            black_box(e.expect("present"))
        })
    });
    let absent: Vec<Digest> = (0..4096u64).map(|i| nth_digest(u64::MAX - i)).collect();
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            i = (i + 1) % absent.len();
            black_box(index.get(Kind::Blob, &absent[i]).unwrap())
        })
    });
    // New keys every iteration: each insert grows the tree by one.
    let mut next = n;
    g.bench_function("record_new", |b| {
        b.iter_batched(
            || {
                next += 1;
                nth_digest(next)
            },
            |d| index.record(Kind::Blob, &d, 4242, None).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Open time: the index must be closed first (sled locks it).
    index.flush_access_times().expect("flush");
    drop(index);
    let mut g = c.benchmark_group(format!("index_{label}"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("open_and_close", |b| {
        b.iter(|| {
            // (No len(): sled counts by iterating the whole tree.)
            black_box(Index::open(&path).expect("reopen"))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = configure();
    targets = digest, routing, index
}
criterion_main!(benches);
