//! Events out: what the mirror noticed that an operator wants pushed to
//! them — a tag moved, a move refused, an upstream down — POSTed as JSON
//! to each `[[notifications]]` receiver that asked for it, and written to
//! the audit log.
//!
//! [`Notifier::emit`] never waits: the event is put on each receiver's
//! bounded queue (a full queue drops its oldest event, counted
//! `dropped`), and a background task per receiver delivers them one at a
//! time with bounded retries and a timeout per attempt (`sent` or
//! `failed`). A receiver that is down or hangs slows nothing but its own
//! queue.

mod deliver;
mod event;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntCounterVec;

pub use event::Event;

use crate::config::{NotificationConfig, EVENT_NAMES};

/// What an event becomes besides the receivers' POSTs: the audit log's
/// line, set by the daemon when it has an audit log.
pub type AuditSink = Box<dyn Fn(&serde_json::Value) + Send + Sync>;

/// The handle every part that notices events holds; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    receivers: Vec<Arc<Receiver>>,
    /// `regcache_notifications_total{event,outcome}`.
    counts: IntCounterVec,
    audit: OnceLock<AuditSink>,
}

/// One receiver: its settings and its queue.
struct Receiver {
    config: NotificationConfig,
    queue: Mutex<VecDeque<Queued>>,
    wake: tokio::sync::Notify,
    /// The last delivery failed: logged at WARN once per change.
    failing: AtomicBool,
}

/// An event waiting for delivery, already serialised.
struct Queued {
    name: &'static str,
    body: Bytes,
}

impl Notifier {
    /// Receivers from the config; nothing is delivered until
    /// [`Notifier::start`] (events emitted before wait in the queues).
    pub fn new(configs: &[NotificationConfig], counts: IntCounterVec) -> Notifier {
        // Every series at 0 from the start: dashboards and `increase()`.
        for event in EVENT_NAMES {
            for outcome in ["sent", "failed", "dropped"] {
                counts.with_label_values(&[event, outcome]);
            }
        }
        let receivers = configs
            .iter()
            .map(|c| {
                Arc::new(Receiver {
                    config: c.clone(),
                    queue: Mutex::new(VecDeque::new()),
                    wake: tokio::sync::Notify::new(),
                    failing: AtomicBool::new(false),
                })
            })
            .collect();
        Notifier {
            inner: Arc::new(Inner {
                receivers,
                counts,
                audit: OnceLock::new(),
            }),
        }
    }

    /// Sends every event to `sink` too (the audit log); once.
    pub fn set_audit(&self, sink: AuditSink) {
        let _ = self.inner.audit.set(sink);
    }

    /// Queues `event` for every receiver that wants it, and writes it to
    /// the audit log; never waits.
    pub fn emit(&self, event: Event) {
        self.queue(event, true)
    }

    /// As [`Notifier::emit`], for an event whose audit line the caller
    /// writes itself (the supply-chain gate's refusals, which carry the
    /// client and the reference).
    pub fn emit_unaudited(&self, event: Event) {
        self.queue(event, false)
    }

    fn queue(&self, event: Event, audited: bool) {
        let name = event.name();
        let wanted = self.inner.receivers.iter().any(|r| r.config.wants(name));
        let audit = self.inner.audit.get().filter(|_| audited);
        if !wanted && audit.is_none() {
            return;
        }
        let value = event.to_json(std::time::SystemTime::now());
        if let Some(sink) = audit {
            sink(&value);
        }
        if !wanted {
            return;
        }
        let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        for r in &self.inner.receivers {
            if !r.config.wants(name) {
                continue;
            }
            let dropped = {
                let mut queue = r.queue.lock();
                let dropped = if queue.len() >= r.config.queue.max(1) {
                    queue.pop_front()
                } else {
                    None
                };
                queue.push_back(Queued {
                    name,
                    body: body.clone(),
                });
                dropped
            };
            if let Some(old) = dropped {
                self.count(old.name, "dropped");
                tracing::debug!(url = %r.config.url, event = old.name, "notification queue full: dropped its oldest event");
            }
            r.wake.notify_one();
        }
    }

    fn count(&self, event: &str, outcome: &str) {
        self.inner.counts.with_label_values(&[event, outcome]).inc();
    }

    /// Starts one delivery task per receiver on the current runtime; they
    /// stop when the returned guard drops.
    pub fn start(&self) -> Result<Running, reqwest::Error> {
        let client = deliver::client()?;
        let tasks = self
            .inner
            .receivers
            .iter()
            .map(|r| {
                let notifier = self.clone();
                let receiver = r.clone();
                let client = client.clone();
                tokio::spawn(async move { notifier.run(receiver, client).await })
            })
            .collect();
        Ok(Running { tasks })
    }

    /// Delivers one receiver's queue, in order, for ever.
    async fn run(self, receiver: Arc<Receiver>, client: reqwest::Client) {
        loop {
            let next = receiver.queue.lock().pop_front();
            let Some(queued) = next else {
                receiver.wake.notified().await;
                continue;
            };
            let outcome = deliver::post(&client, &receiver.config, queued.body).await;
            self.count(queued.name, outcome);
            let failed = outcome == "failed";
            if receiver.failing.swap(failed, Ordering::Relaxed) != failed {
                if failed {
                    tracing::warn!(url = %receiver.config.url, event = queued.name, "notification receiver failing: events are retried, then counted failed");
                } else {
                    tracing::warn!(url = %receiver.config.url, "notification receiver taking events again");
                }
            }
        }
    }

    /// Events waiting for the receiver at `index` (tests).
    #[cfg(test)]
    fn queued(&self, index: usize) -> Vec<&'static str> {
        self.inner.receivers[index]
            .queue
            .lock()
            .iter()
            .map(|q| q.name)
            .collect()
    }
}

/// The delivery tasks; aborted when dropped.
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("n", "n"), &["event", "outcome"]).unwrap()
    }

    fn up(name: &str) -> Event {
        Event::UpstreamUp {
            upstream: name.into(),
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_event_and_counts_it() {
        let mut config = NotificationConfig::new("http://127.0.0.1:1/hook");
        config.queue = 2;
        let counts = counts();
        let n = Notifier::new(&[config], counts.clone());
        n.emit(up("a"));
        n.emit(Event::UpstreamDown {
            upstream: "a".into(),
            reason: "x".into(),
        });
        n.emit(up("a"));
        assert_eq!(n.queued(0), ["upstream_down", "upstream_up"]);
        assert_eq!(
            counts.with_label_values(&["upstream_up", "dropped"]).get(),
            1
        );
        assert_eq!(
            counts
                .with_label_values(&["upstream_down", "dropped"])
                .get(),
            0
        );
    }

    #[test]
    fn receivers_get_only_the_events_they_asked_for_and_the_audit_sink_all() {
        let mut only_up = NotificationConfig::new("http://127.0.0.1:1/a");
        only_up.events = vec!["upstream_up".into()];
        let all = NotificationConfig::new("http://127.0.0.1:1/b");
        let n = Notifier::new(&[only_up, all], counts());
        let audited = Arc::new(Mutex::new(Vec::new()));
        let seen = audited.clone();
        n.set_audit(Box::new(move |v| seen.lock().push(v["event"].clone())));
        n.emit(Event::UpstreamDown {
            upstream: "a".into(),
            reason: "x".into(),
        });
        n.emit(up("a"));
        assert_eq!(n.queued(0), ["upstream_up"]);
        assert_eq!(n.queued(1), ["upstream_down", "upstream_up"]);
        assert_eq!(*audited.lock(), ["upstream_down", "upstream_up"]);
    }

    #[tokio::test]
    async fn a_receiver_that_refuses_connections_is_counted_failed_after_its_retries() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut config = NotificationConfig::new(&format!("http://127.0.0.1:{port}/hook"));
        config.retries = 1;
        let counts = counts();
        let n = Notifier::new(&[config], counts.clone());
        let _running = n.start().unwrap();
        n.emit(up("a"));
        let failed = counts.with_label_values(&["upstream_up", "failed"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while failed.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "never counted failed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(counts.with_label_values(&["upstream_up", "sent"]).get(), 0);
    }
}
