//! The status page (`GET /` on the admin listener): one server-rendered
//! HTML page, no script, read from state already in memory (no index walk,
//! no disk, no upstream call), so it is cheap to load and to reload.
//!
//! Every dynamic string goes through [`esc`]: repository names, paths and
//! error messages come from clients and upstreams. The page is also sent
//! with a Content-Security-Policy that runs no script at all.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Response, StatusCode};

use super::respond::text;
use crate::cache::{Kind, RunningFill};
use crate::http::activity::{Denial, Pulls};
use crate::http::app::App;
use crate::http::body::Body;
use crate::metrics::samples;
use crate::upstream::{BreakerState, LastError};

/// Rows of the most pulled images.
const TOP_IMAGES: usize = 10;

/// Running fills listed (the largest first); the count says if more run.
const FILLS_LISTED: usize = 20;

pub(super) fn page(app: &App) -> Response<Body> {
    let view = View::gather(app);
    let mut r = text(StatusCode::OK, "text/html; charset=utf-8", render(&view));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// What the page shows, read in one go.
struct View {
    version: &'static str,
    uptime: Duration,
    now: SystemTime,
    offline: bool,
    ready: Result<(), String>,
    upstreams: Vec<UpstreamView>,
    cache: CacheView,
    ratios: Vec<Ratio>,
    fills_running: usize,
    fills: Vec<RunningFill>,
    pulls: Vec<Pulls>,
    denials: Vec<Denial>,
}

struct UpstreamView {
    name: String,
    breaker: BreakerState,
    offline: bool,
    last_error: Option<LastError>,
    /// From the last `ratelimit-*` headers seen, if any.
    ratelimit_remaining: Option<i64>,
    ratelimit_limit: Option<i64>,
}

struct CacheView {
    blobs: (u64, u64),
    manifests: (u64, u64),
    max_size: Option<u64>,
    /// Free bytes on the cache's filesystem, once read.
    free: Option<u64>,
    open_readers: usize,
}

/// Lookups of one kind since start, and how many the cache answered.
struct Ratio {
    kind: &'static str,
    from_cache: u64,
    total: u64,
}

impl View {
    fn gather(app: &App) -> View {
        let ratelimits = samples(&app.metrics.upstream_ratelimit);
        let ratelimit = |upstream: &str, kind: &str| {
            ratelimits
                .iter()
                .find(|s| s.label("upstream") == Some(upstream) && s.label("kind") == Some(kind))
                .map(|s| s.value as i64)
        };
        let upstreams = app
            .upstreams
            .all()
            .iter()
            .map(|u| UpstreamView {
                name: u.name.to_string(),
                breaker: u.breaker_state(),
                offline: u.is_offline(),
                last_error: u.last_error(),
                ratelimit_remaining: ratelimit(&u.name, "remaining"),
                ratelimit_limit: ratelimit(&u.name, "limit"),
            })
            .collect();
        let totals = |k| {
            let t = app.cache.totals(k);
            (t.objects, t.bytes)
        };
        let free = app.metrics.cache_free_bytes.get();
        let cache = CacheView {
            blobs: totals(Kind::Blob),
            manifests: totals(Kind::Manifest),
            max_size: app.cache.eviction_policy().max_size,
            free: (free > 0).then_some(free as u64),
            open_readers: app.cache.open_blobs(),
        };
        let mut fills = app.cache.running_fills();
        let fills_running = fills.len();
        fills.truncate(FILLS_LISTED);
        View {
            version: env!("CARGO_PKG_VERSION"),
            uptime: app.started.elapsed(),
            now: SystemTime::now(),
            offline: app.upstreams.offline(),
            ready: app.cache.ready(),
            upstreams,
            cache,
            ratios: ratios(&app.metrics.cache_outcomes()),
            fills_running,
            fills,
            pulls: app.activity.top_pulls(TOP_IMAGES),
            denials: app.activity.recent_denials(),
        }
    }
}

/// Hit ratios as the dashboard computes them: a blob is from the cache
/// only on a hit; a manifest, tag or listing also when revalidated, served
/// stale or answered from a cached 404.
fn ratios(cache: &[crate::metrics::Sample]) -> Vec<Ratio> {
    ["blob", "manifest", "tag", "listing"]
        .into_iter()
        .map(|kind| {
            let mut r = Ratio {
                kind,
                from_cache: 0,
                total: 0,
            };
            for s in cache.iter().filter(|s| s.label("kind") == Some(kind)) {
                let n = s.value as u64;
                r.total += n;
                let cached = match s.label("outcome") {
                    Some("hit") => true,
                    Some("revalidated" | "stale" | "negative") => kind != "blob",
                    _ => false,
                };
                if cached {
                    r.from_cache += n;
                }
            }
            r
        })
        .collect()
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human_bytes(n: u64) -> String {
    crate::config::ByteSize(n).approx()
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

/// "3m 12s ago", to the second.
fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn breaker_text(state: BreakerState) -> (&'static str, &'static str) {
    match state {
        BreakerState::Closed => ("closed (healthy)", "ok"),
        BreakerState::Open => ("open (answering from cache)", "bad"),
        BreakerState::HalfOpen => ("half-open (probing)", "warn"),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f3f3f3}.ok{color:#176117}.warn{color:#8a5a00}.bad{color:#a01818}\
.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}";

fn render(v: &View) -> String {
    let mut h = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = render_into(&mut h, v);
    h
}

fn render_into(h: &mut String, v: &View) -> std::fmt::Result {
    write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>regcache status</title><style>{STYLE}</style></head><body>\n"
    )?;
    let uptime = humantime::format_duration(Duration::from_secs(v.uptime.as_secs()));
    write!(
        h,
        "<h1>regcache <span id=\"version\">{}</span></h1>\n\
         <p>Up <span id=\"uptime\">{uptime}</span>. ",
        esc(v.version)
    )?;
    match &v.ready {
        Ok(()) => write!(h, "<span class=\"ok\" id=\"ready\">Ready.</span> ")?,
        Err(why) => write!(
            h,
            "<span class=\"bad\" id=\"ready\">Not ready: {}.</span> ",
            esc(why)
        )?,
    }
    if v.offline {
        write!(
            h,
            "<span class=\"warn\">Offline: serving only what is cached.</span>"
        )?;
    }
    writeln!(h, "</p>")?;

    writeln!(h, "<h2>Upstreams</h2>\n<table id=\"upstreams\"><tr><th>Upstream</th><th>Circuit breaker</th><th>Last error</th><th>Rate limit left</th></tr>")?;
    for u in &v.upstreams {
        let (state, class) = breaker_text(u.breaker);
        let state = if u.offline {
            format!("{state}, offline")
        } else {
            state.to_owned()
        };
        let last = match &u.last_error {
            Some(e) => format!(
                "{} <span class=\"muted\">({})</span>",
                esc(&e.message),
                ago(v.now, e.at)
            ),
            None => "<span class=\"muted\">none</span>".to_owned(),
        };
        let headroom = match (u.ratelimit_remaining, u.ratelimit_limit) {
            (Some(r), Some(l)) => format!("{r} of {l}"),
            (Some(r), None) => r.to_string(),
            _ => "<span class=\"muted\">not reported</span>".to_owned(),
        };
        writeln!(
            h,
            "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{last}</td><td class=\"num\">{headroom}</td></tr>",
            esc(&u.name),
            esc(&state)
        )?;
    }
    writeln!(h, "</table>")?;

    let c = &v.cache;
    let used = c.blobs.1 + c.manifests.1;
    let bound = match c.max_size {
        Some(max) => format!(
            "{} of {} max_size ({})",
            human_bytes(used),
            human_bytes(max),
            percent(used, max)
        ),
        None => format!("{} (no max_size)", human_bytes(used)),
    };
    writeln!(
        h,
        "<h2>Cache</h2>\n<p id=\"cache-size\">{bound}</p>\n<table>\
         <tr><th></th><th>Objects</th><th>Bytes</th></tr>\
         <tr><td>Blobs</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\
         <tr><td>Manifests</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr></table>",
        c.blobs.0,
        human_bytes(c.blobs.1),
        c.manifests.0,
        human_bytes(c.manifests.1)
    )?;
    write!(h, "<p>Blobs being read now: {}.", c.open_readers)?;
    if let Some(free) = c.free {
        write!(h, " Free on the cache's filesystem: {}.", human_bytes(free))?;
    }
    writeln!(h, "</p>")?;

    writeln!(h, "<h2>Hit ratios since start</h2>\n<table id=\"ratios\"><tr><th>Kind</th><th>From cache</th><th>Lookups</th><th>Ratio</th></tr>")?;
    for r in &v.ratios {
        writeln!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            r.kind,
            r.from_cache,
            r.total,
            percent(r.from_cache, r.total)
        )?;
    }
    writeln!(h, "</table>")?;

    writeln!(
        h,
        "<h2>Fills in progress: <span id=\"fills-running\">{}</span></h2>",
        v.fills_running
    )?;
    if !v.fills.is_empty() {
        writeln!(h, "<table id=\"fills\"><tr><th>Upstream</th><th>Repository</th><th>Digest</th><th>Progress</th></tr>")?;
        for f in &v.fills {
            let progress = match f.size {
                Some(size) => format!(
                    "{} of {} ({})",
                    human_bytes(f.written),
                    human_bytes(size),
                    percent(f.written, size)
                ),
                None if f.written == 0 => "connecting".to_owned(),
                None => format!("{} (size unknown)", human_bytes(f.written)),
            };
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{progress}</td></tr>",
                esc(&f.upstream),
                esc(&f.repo),
                esc(&f.digest.to_string())
            )?;
        }
        writeln!(h, "</table>")?;
    }

    writeln!(h, "<h2>Most pulled images</h2>")?;
    if v.pulls.is_empty() {
        writeln!(h, "<p class=\"muted\">No manifest pulled since start.</p>")?;
    } else {
        writeln!(h, "<table id=\"pulls\"><tr><th>Upstream</th><th>Repository</th><th>Manifest GETs</th></tr>")?;
        for p in &v.pulls {
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&p.upstream),
                esc(&p.repository),
                p.count
            )?;
        }
        writeln!(h, "</table>")?;
    }

    writeln!(h, "<h2>Recent denials</h2>")?;
    if v.denials.is_empty() {
        writeln!(h, "<p class=\"muted\">None since start.</p>")?;
    } else {
        writeln!(h, "<table id=\"denials\"><tr><th>When</th><th>Client</th><th>User</th><th>Status</th><th>Upstream</th><th>Repository</th><th>Path</th></tr>")?;
        for d in &v.denials {
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                ago(v.now, d.at),
                esc(&d.client.to_string()),
                esc(d.user.as_deref().unwrap_or("-")),
                d.status,
                d.outcome,
                esc(d.upstream.as_deref().unwrap_or("-")),
                esc(d.repository.as_deref().unwrap_or("-")),
                esc(&d.path)
            )?;
        }
        writeln!(h, "</table>")?;
    }
    writeln!(
        h,
        "<p class=\"muted\">Read-only. JSON: <code>/admin/cache</code>, <code>/admin/repositories</code>; Prometheus: <code>/metrics</code>.</p>\n</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            version: "9.9.9",
            uptime: Duration::from_secs(3723),
            now: SystemTime::now(),
            offline: false,
            ready: Ok(()),
            upstreams: vec![UpstreamView {
                name: "hub".into(),
                breaker: BreakerState::Open,
                offline: false,
                last_error: Some(LastError {
                    at: SystemTime::now() - Duration::from_secs(5),
                    message: "answered 503 <b>down</b>".into(),
                }),
                ratelimit_remaining: Some(42),
                ratelimit_limit: Some(100),
            }],
            cache: CacheView {
                blobs: (3, 3 << 20),
                manifests: (2, 2048),
                max_size: Some(10 << 20),
                free: None,
                open_readers: 0,
            },
            ratios: ratios(&[]),
            fills_running: 0,
            fills: vec![],
            pulls: vec![],
            denials: vec![],
        }
    }

    #[test]
    fn every_dynamic_string_is_escaped() {
        let mut v = view();
        let evil = "team/<script>alert(1)</script>";
        v.pulls.push(Pulls {
            upstream: "hub\"><i>".into(),
            repository: evil.into(),
            count: 3,
        });
        v.denials.push(Denial {
            at: SystemTime::now(),
            client: "192.0.2.9".parse().unwrap(),
            user: Some("<img src=x onerror=alert(2)>".into()),
            status: 403,
            outcome: "denied",
            upstream: Some("hub".into()),
            repository: Some(evil.into()),
            path: "/v2/<script>/manifests/'x'".into(),
        });
        v.fills.push(RunningFill {
            digest: crate::registry::Digest::from_hex(&"a".repeat(64)).unwrap(),
            upstream: "hub".into(),
            repo: evil.into(),
            written: 5,
            size: Some(10),
        });
        v.fills_running = 1;
        let html = render(&v);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>down"), "{html}");
        assert!(!html.contains("\"><i>"), "{html}");
        assert!(
            html.contains("team/&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("&#39;x&#39;"), "{html}");
        assert!(html.contains("5 B of 10 B (50.0 %)"), "{html}");
    }

    #[test]
    fn the_page_shows_version_uptime_breaker_ratelimit_and_size_bound() {
        let html = render(&view());
        assert!(html.contains("<span id=\"version\">9.9.9</span>"), "{html}");
        assert!(html.contains("1h 2m 3s"), "{html}");
        assert!(html.contains("open (answering from cache)"), "{html}");
        assert!(
            html.contains("answered 503 &lt;b&gt;down&lt;/b&gt;"),
            "{html}"
        );
        assert!(html.contains("42 of 100"), "{html}");
        assert!(
            html.contains("3.0 MiB of 10.0 MiB max_size (30.0 %)"),
            "{html}"
        );
        assert!(html.contains("No manifest pulled since start."), "{html}");
        assert!(!html.contains("<script"), "no script at all");
    }

    #[test]
    fn hit_ratios_follow_the_dashboard() {
        let m = crate::metrics::Metrics::new();
        m.cache_outcome("hub", "blob", "hit");
        m.cache_outcome("hub", "blob", "miss");
        m.cache_outcome("hub", "blob", "stale");
        m.cache_outcome("hub", "manifest", "revalidated");
        m.cache_outcome("other", "manifest", "hit");
        m.cache_outcome("hub", "manifest", "miss");
        let r = ratios(&m.cache_outcomes());
        let get = |k: &str| {
            r.iter()
                .find(|x| x.kind == k)
                .map(|x| (x.from_cache, x.total))
        };
        assert_eq!(get("blob"), Some((1, 3)));
        assert_eq!(get("manifest"), Some((2, 3)));
        assert_eq!(get("tag"), Some((0, 0)));
    }
}
