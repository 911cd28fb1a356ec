//! Upstream health: a circuit breaker per upstream, so that no request
//! waits on an upstream that is known to be down.
//!
//! Closed: requests flow; consecutive failures are counted. After
//! `threshold` of them the breaker opens for `cooldown`: requests fail at
//! once and callers answer from the cache. When the cooldown ends one
//! request is let through as a probe (half-open); its success closes the
//! breaker, its failure opens it for another cooldown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of the `regcache_upstream_circuit_state` gauge.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

struct Inner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// A half-open probe is in flight; everyone else still fails fast.
    probing: bool,
}

pub struct CircuitBreaker {
    inner: Mutex<Inner>,
    threshold: u32,
    cooldown: Duration,
}

/// Whether a request may go out.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The probe of a half-open breaker: its outcome decides.
    Probe,
    Rejected,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                open_until: None,
                probing: false,
            }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn admit(&self) -> Admission {
        let mut inner = self.inner.lock();
        match inner.open_until {
            None => Admission::Allowed,
            Some(until) if Instant::now() < until => Admission::Rejected,
            Some(_) if inner.probing => Admission::Rejected,
            Some(_) => {
                inner.probing = true;
                Admission::Probe
            }
        }
    }

    /// Records an outcome (the failure it was, if any); returns the state
    /// afterwards. Only failures that [count against health] trip it.
    ///
    /// [count against health]: Failure::counts_against_health
    pub fn record(&self, admission: &Admission, failure: Option<Failure>) -> BreakerState {
        let success = !failure.is_some_and(Failure::counts_against_health);
        let mut inner = self.inner.lock();
        if *admission == Admission::Probe {
            inner.probing = false;
        }
        if success {
            inner.consecutive_failures = 0;
            inner.open_until = None;
        } else {
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            let trips =
                inner.consecutive_failures >= self.threshold || *admission == Admission::Probe;
            if trips {
                inner.open_until = Some(Instant::now() + self.cooldown);
            }
        }
        Self::state_of(&inner)
    }

    /// A probe that never completed (its caller went away) must not leave
    /// the breaker half-open forever.
    pub fn abandon(&self, admission: &Admission) {
        if *admission == Admission::Probe {
            self.inner.lock().probing = false;
        }
    }

    pub fn state(&self) -> BreakerState {
        Self::state_of(&self.inner.lock())
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    fn state_of(inner: &Inner) -> BreakerState {
        match inner.open_until {
            None => BreakerState::Closed,
            Some(until) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

/// An admitted request's hold on the breaker: [`ProbeGuard::finish`]
/// records its outcome; dropped unfinished (the caller went away or gave
/// up), it frees a probe slot instead.
pub(super) struct ProbeGuard<'a> {
    breaker: &'a CircuitBreaker,
    admission: Option<Admission>,
}

impl<'a> ProbeGuard<'a> {
    pub(super) fn new(breaker: &'a CircuitBreaker, admission: Admission) -> ProbeGuard<'a> {
        ProbeGuard {
            breaker,
            admission: Some(admission),
        }
    }

    pub(super) fn finish(mut self, failure: Option<Failure>) -> BreakerState {
        match self.admission.take() {
            Some(a) => self.breaker.record(&a, failure),
            None => self.breaker.state(),
        }
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.breaker.abandon(&a);
        }
    }
}

/// What was last logged about an upstream's health: each change is logged
/// once at WARN, a steady state (a thousand requests to a dead upstream)
/// not at all.
pub(super) struct Transitions {
    upstream: Arc<str>,
    breaker: Mutex<BreakerState>,
    unreachable: AtomicBool,
    token_failing: AtomicBool,
    ratelimit_low: AtomicBool,
    /// Last announced as down (unreachable, or its breaker open).
    announced_down: AtomicBool,
}

/// Rate-limit headroom below this share of the limit is "low".
const LOW_HEADROOM_PERCENT: i64 = 10;

/// Whether `remaining` of `limit` is low headroom.
pub(super) fn ratelimit_low(remaining: i64, limit: i64) -> bool {
    limit > 0 && remaining.saturating_mul(100) < limit.saturating_mul(LOW_HEADROOM_PERCENT)
}

impl Transitions {
    pub(super) fn new(upstream: Arc<str>) -> Transitions {
        Transitions {
            upstream,
            breaker: Mutex::new(BreakerState::Closed),
            unreachable: AtomicBool::new(false),
            token_failing: AtomicBool::new(false),
            ratelimit_low: AtomicBool::new(false),
            announced_down: AtomicBool::new(false),
        }
    }

    /// The breaker is now in `state`; `cause` is the last failure seen.
    /// Returns whether that was a change (and so was logged).
    pub(super) fn breaker(&self, state: BreakerState, cooldown: Duration, cause: &str) -> bool {
        let before = std::mem::replace(&mut *self.breaker.lock(), state);
        let upstream = &*self.upstream;
        match (before, state) {
            (a, b) if a == b => return false,
            (BreakerState::HalfOpen, BreakerState::Open) => tracing::warn!(
                upstream,
                cooldown = ?cooldown,
                cause,
                "circuit breaker re-opened: the probe failed"
            ),
            (_, BreakerState::Open) => tracing::warn!(
                upstream,
                cooldown = ?cooldown,
                cause,
                "circuit breaker opened: answering from the cache without contacting the upstream"
            ),
            (_, BreakerState::HalfOpen) => {
                tracing::warn!(upstream, "circuit breaker half-open: sending one probe")
            }
            (_, BreakerState::Closed) => {
                tracing::warn!(upstream, "circuit breaker closed: upstream recovered")
            }
        }
        true
    }

    /// A request got an answer (`Ok`) or failed to reach the upstream.
    pub(super) fn reachable(&self, outcome: Result<(), &str>) -> bool {
        let upstream = &*self.upstream;
        let failing = outcome.is_err();
        if self.unreachable.swap(failing, Ordering::Relaxed) == failing {
            return false;
        }
        match outcome {
            Err(error) => tracing::warn!(upstream, error, "upstream unreachable"),
            Ok(()) => tracing::warn!(upstream, "upstream reachable again"),
        }
        true
    }

    /// Whether the upstream is now down (unreachable, or its breaker not
    /// closed)
    /// or up, when that changed since the last announcement: an
    /// `upstream_down` or `upstream_up` event, once per change.
    pub(super) fn announce(&self, breaker: BreakerState) -> Option<bool> {
        let down = self.unreachable.load(Ordering::Relaxed) || breaker != BreakerState::Closed;
        (self.announced_down.swap(down, Ordering::Relaxed) != down).then_some(down)
    }

    /// A token fetch succeeded or failed.
    pub(super) fn token(&self, outcome: Result<(), &str>) -> bool {
        let upstream = &*self.upstream;
        let failing = outcome.is_err();
        if self.token_failing.swap(failing, Ordering::Relaxed) == failing {
            return false;
        }
        match outcome {
            Err(error) => tracing::warn!(upstream, error, "upstream token fetch failing"),
            Ok(()) => tracing::warn!(upstream, "upstream token fetch recovered"),
        }
        true
    }

    /// The upstream reported its rate limit and what remains of it.
    pub(super) fn ratelimit(&self, remaining: i64, limit: i64) -> bool {
        let upstream = &*self.upstream;
        let low = ratelimit_low(remaining, limit);
        if self.ratelimit_low.swap(low, Ordering::Relaxed) == low {
            return false;
        }
        if low {
            tracing::warn!(upstream, remaining, limit, "upstream rate limit low");
        } else {
            tracing::warn!(
                upstream,
                remaining,
                limit,
                "upstream rate limit headroom recovered"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILED: Option<Failure> = Some(Failure::ServerError);
    const OK: Option<Failure> = None;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_half_opens_and_recovers() {
        let b = CircuitBreaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            let a = b.admit();
            assert_eq!(a, Admission::Allowed);
            assert_eq!(b.record(&a, FAILED), BreakerState::Closed);
        }
        let a = b.admit();
        assert_eq!(b.record(&a, FAILED), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Rejected);

        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.admit();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(b.admit(), Admission::Rejected, "one probe at a time");
        // The probe fails: open again for a full cooldown.
        assert_eq!(b.record(&probe, FAILED), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = b.admit();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(b.record(&probe, OK), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_an_abandoned_probe_frees_the_slot() {
        let b = CircuitBreaker::new(2, Duration::from_secs(5));
        let a = b.admit();
        b.record(&a, FAILED);
        let a = b.admit();
        b.record(&a, OK);
        let a = b.admit();
        assert_eq!(
            b.record(&a, FAILED),
            BreakerState::Closed,
            "count restarted"
        );
        let a = b.admit();
        assert_eq!(b.record(&a, FAILED), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.admit();
        b.abandon(&probe);
        assert_eq!(b.admit(), Admission::Probe);
    }

    #[test]
    fn only_failures_that_count_against_health_trip_it() {
        let b = CircuitBreaker::new(1, Duration::from_secs(5));
        for answer in [
            None,
            Some(Failure::Body),
            Some(Failure::Token),
            Some(Failure::Refused),
        ] {
            let a = b.admit();
            assert_eq!(b.record(&a, answer), BreakerState::Closed, "{answer:?}");
        }
        let a = b.admit();
        assert_eq!(b.record(&a, Some(Failure::RateLimited)), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unfinished_frees_its_slot() {
        let b = CircuitBreaker::new(1, Duration::from_secs(5));
        let a = b.admit();
        b.record(&a, Some(Failure::Timeout));
        tokio::time::advance(Duration::from_secs(6)).await;
        drop(ProbeGuard::new(&b, b.admit()));
        assert_eq!(b.admit(), Admission::Probe);
    }

    #[test]
    fn each_change_is_reported_once() {
        let t = Transitions::new("up".into());
        let cool = Duration::from_secs(30);
        assert!(!t.breaker(BreakerState::Closed, cool, ""), "starts closed");
        assert!(t.breaker(BreakerState::Open, cool, "503"));
        assert!(!t.breaker(BreakerState::Open, cool, "503"));
        assert!(t.breaker(BreakerState::HalfOpen, cool, ""));
        assert!(t.breaker(BreakerState::Open, cool, "503"), "re-opened");
        assert!(t.breaker(BreakerState::Closed, cool, ""));

        assert!(!t.reachable(Ok(())));
        assert!(t.reachable(Err("connection refused")));
        assert!(!t.reachable(Err("connection refused")));
        assert!(t.reachable(Ok(())));
        assert!(!t.reachable(Ok(())));

        assert!(t.token(Err("the token server answered 500")));
        assert!(!t.token(Err("the token server answered 500")));
        assert!(t.token(Ok(())));

        assert!(!t.ratelimit(90, 100));
        assert!(t.ratelimit(9, 100), "under 10% is low");
        assert!(!t.ratelimit(3, 100));
        assert!(t.ratelimit(100, 100), "a new window");
    }

    #[test]
    fn down_and_up_are_announced_once_per_change() {
        let t = Transitions::new("up".into());
        assert_eq!(t.announce(BreakerState::Closed), None);
        t.reachable(Err("connection refused"));
        assert_eq!(t.announce(BreakerState::Closed), Some(true));
        assert_eq!(t.announce(BreakerState::Open), None, "still down");
        t.reachable(Ok(()));
        assert_eq!(t.announce(BreakerState::Open), None, "breaker still open");
        assert_eq!(t.announce(BreakerState::HalfOpen), None, "only probing");
        assert_eq!(t.announce(BreakerState::Closed), Some(false));
        assert_eq!(t.announce(BreakerState::Open), Some(true), "5xx opened it");
    }

    #[test]
    fn low_headroom_is_under_a_tenth_of_the_limit() {
        assert!(!ratelimit_low(10, 100));
        assert!(ratelimit_low(9, 100));
        assert!(ratelimit_low(0, 100));
        assert!(!ratelimit_low(0, 0), "no limit known");
    }
}
