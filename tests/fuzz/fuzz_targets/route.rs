//! The request router: any method, path and query must route or be
//! refused with an OCI error, never panic; a routed repository name must be
//! valid by the grammar.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use regcache::config::Config;
use regcache::http::route::{parse, Parsed};
use regcache::metrics::Metrics;
use regcache::registry::RepoName;
use regcache::upstream::Upstreams;

fn upstreams() -> &'static Upstreams {
    static UPSTREAMS: OnceLock<Upstreams> = OnceLock::new();
    UPSTREAMS.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Upstreams::from_config(&Config::default(), Arc::new(Metrics::new())).expect("built-in upstreams")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (method, rest) = text.split_once(' ').unwrap_or(("GET", text));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if let Ok(Parsed::Repo(route)) = parse(&method, path, query, upstreams()) {
        assert!(RepoName::parse(route.repo.as_str()).is_ok());
    }
});
