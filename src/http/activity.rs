//! What the status page shows of recent traffic: the most pulled images
//! and the last denied requests. Both are bounded, whatever the traffic:
//! a fixed number of counted images and a ring of recent denials.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::app::RequestLog;

/// Images counted at most; past that the least pulled one is replaced.
const TRACKED_IMAGES: usize = 256;

/// Denials remembered.
pub const RECENT_DENIALS: usize = 20;

/// A path is cut to this many bytes before it is kept.
const MAX_PATH: usize = 256;

/// Recent traffic, for the status page.
#[derive(Default)]
pub struct Activity {
    pulls: Mutex<TopCounter>,
    denials: Mutex<VecDeque<Denial>>,
}

/// A refused request.
#[derive(Debug, Clone)]
pub struct Denial {
    pub at: SystemTime,
    pub client: IpAddr,
    pub user: Option<String>,
    pub status: u16,
    /// "denied" (authentication or access rules) or "throttled".
    pub outcome: &'static str,
    pub upstream: Option<Arc<str>>,
    pub repository: Option<String>,
    pub path: String,
}

/// An image and how many manifest GETs it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulls {
    pub upstream: Arc<str>,
    pub repository: String,
    pub count: u64,
}

impl Activity {
    /// Notes one answered registry request.
    pub fn record(&self, log: &RequestLog, method: &http::Method, path: &str, status: u16) {
        if log.route == "manifest" && method == http::Method::GET && status == 200 {
            if let (Some(upstream), Some(repository)) = (&log.upstream, &log.repository) {
                self.pulls.lock().add(upstream, repository);
            }
        }
        if matches!(log.outcome, "denied" | "throttled") {
            let mut denials = self.denials.lock();
            if denials.len() == RECENT_DENIALS {
                denials.pop_front();
            }
            denials.push_back(Denial {
                at: SystemTime::now(),
                client: log.client,
                user: log.user.clone(),
                status,
                outcome: log.outcome,
                upstream: log.upstream.clone(),
                repository: log.repository.clone(),
                path: truncate(path, MAX_PATH).to_owned(),
            });
        }
    }

    /// The `n` most pulled images, most first.
    pub fn top_pulls(&self, n: usize) -> Vec<Pulls> {
        self.pulls.lock().top(n)
    }

    /// The last denials, newest first.
    pub fn recent_denials(&self) -> Vec<Denial> {
        self.denials.lock().iter().rev().cloned().collect()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Counts per (upstream, repository) in bounded memory ("space saving"):
/// when full, the least counted entry gives its place to the new one,
/// which inherits its count. The heavy hitters stay and are counted
/// exactly once they are in; only the tail is approximate.
#[derive(Default)]
struct TopCounter {
    counts: HashMap<(Arc<str>, String), u64>,
}

impl TopCounter {
    fn add(&mut self, upstream: &Arc<str>, repository: &str) {
        let key = (upstream.clone(), repository.to_owned());
        if let Some(c) = self.counts.get_mut(&key) {
            *c += 1;
            return;
        }
        let mut inherited = 0;
        if self.counts.len() >= TRACKED_IMAGES {
            let least = self
                .counts
                .iter()
                .min_by_key(|(_, c)| **c)
                .map(|(k, c)| (k.clone(), *c));
            if let Some((k, c)) = least {
                self.counts.remove(&k);
                inherited = c;
            }
        }
        self.counts.insert(key, inherited + 1);
    }

    fn top(&self, n: usize) -> Vec<Pulls> {
        let mut all: Vec<Pulls> = self
            .counts
            .iter()
            .map(|((u, r), c)| Pulls {
                upstream: u.clone(),
                repository: r.clone(),
                count: *c,
            })
            .collect();
        all.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.repository.cmp(&b.repository))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(route: &'static str, outcome: &'static str, repo: &str) -> RequestLog {
        let mut l = RequestLog::new("192.0.2.7".parse().unwrap());
        l.route = route;
        l.outcome = outcome;
        l.upstream = Some("hub".into());
        l.repository = Some(repo.into());
        l
    }

    #[test]
    fn manifest_gets_are_counted_and_ranked() {
        let a = Activity::default();
        for _ in 0..3 {
            a.record(
                &log("manifest", "hit", "team/app"),
                &http::Method::GET,
                "/",
                200,
            );
        }
        a.record(
            &log("manifest", "miss", "lib/x"),
            &http::Method::GET,
            "/",
            200,
        );
        // Not pulls: a HEAD, a blob, a failed answer.
        a.record(
            &log("manifest", "hit", "lib/x"),
            &http::Method::HEAD,
            "/",
            200,
        );
        a.record(&log("blob", "hit", "lib/x"), &http::Method::GET, "/", 200);
        a.record(&log("manifest", "", "lib/x"), &http::Method::GET, "/", 404);
        let top = a.top_pulls(10);
        assert_eq!(
            top.iter()
                .map(|p| (p.repository.as_str(), p.count))
                .collect::<Vec<_>>(),
            [("team/app", 3), ("lib/x", 1)]
        );
        assert_eq!(a.top_pulls(1).len(), 1);
    }

    #[test]
    fn the_counter_stays_bounded_and_keeps_the_heavy_hitters() {
        let a = Activity::default();
        for _ in 0..50 {
            a.record(
                &log("manifest", "hit", "popular"),
                &http::Method::GET,
                "/",
                200,
            );
        }
        for i in 0..10 * TRACKED_IMAGES {
            a.record(
                &log("manifest", "miss", &format!("once/{i}")),
                &http::Method::GET,
                "/",
                200,
            );
        }
        assert_eq!(a.pulls.lock().counts.len(), TRACKED_IMAGES);
        let top = a.top_pulls(1);
        assert_eq!(top[0].repository, "popular");
        assert_eq!(top[0].count, 50);
    }

    #[test]
    fn denials_keep_the_last_twenty_newest_first() {
        let a = Activity::default();
        for i in 0..30 {
            a.record(
                &log("", "denied", &format!("secret/{i}")),
                &http::Method::GET,
                &"x".repeat(1000),
                403,
            );
        }
        a.record(&log("manifest", "hit", "ok"), &http::Method::GET, "/", 200);
        let d = a.recent_denials();
        assert_eq!(d.len(), RECENT_DENIALS);
        assert_eq!(d[0].repository.as_deref(), Some("secret/29"));
        assert_eq!(d[19].repository.as_deref(), Some("secret/10"));
        assert_eq!(d[0].path.len(), MAX_PATH);
        assert_eq!(d[0].status, 403);
    }
}
