//! The audit log: one JSON line per registry request, written when the
//! response body ends (so it carries the bytes actually sent). Never
//! credentials or tokens: only who, what, and how it went.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use serde::Serialize;

use super::body::Ending;

/// Lines waiting for the writer thread; beyond this, lines are dropped and
/// counted rather than letting a slow disk hold up requests.
const BACKLOG: usize = 10_000;

#[derive(Clone)]
pub struct AuditLog {
    lines: SyncSender<String>,
    dropped: prometheus::IntCounter,
}

#[derive(Serialize)]
pub struct Entry {
    pub time: String,
    pub client: String,
    pub user: Option<String>,
    pub method: String,
    pub upstream: Option<String>,
    pub repository: Option<String>,
    pub reference: Option<String>,
    pub digest: Option<String>,
    pub status: u16,
    pub bytes: u64,
    pub outcome: String,
    pub duration_ms: u64,
}

impl AuditLog {
    /// `target` is "stdout" or a file to append to.
    pub fn open(target: &str, dropped: prometheus::IntCounter) -> std::io::Result<AuditLog> {
        let mut out: Box<dyn Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, rx) = sync_channel::<String>(BACKLOG);
        // A plain thread: file writes block, and must not block the runtime.
        std::thread::Builder::new()
            .name("regcache-audit".into())
            .spawn(move || {
                for line in rx {
                    let _ = out.write_all(line.as_bytes()).and_then(|_| out.flush());
                }
            })?;
        Ok(AuditLog { lines: tx, dropped })
    }

    /// One line: a request's [`Entry`], or a policy refusal's own line.
    pub fn write<T: Serialize>(&self, entry: &T) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped.inc();
        }
    }
}

impl AuditLog {
    /// An event that no request's line tells (a tag moved upstream, a move
    /// refused): one line of its own, `{"time", "event", ...}`.
    pub fn write_event(&self, event: &serde_json::Value) {
        let Ok(mut line) = serde_json::to_string(event) else {
            return;
        };
        line.push('\n');
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped.inc();
        }
    }
}

impl Entry {
    /// The entry once its response body has ended (`bytes` sent).
    pub fn ended(mut self, bytes: u64, ending: Ending, elapsed: std::time::Duration) -> Entry {
        self.bytes = bytes;
        self.duration_ms = elapsed.as_millis() as u64;
        if ending != Ending::Complete {
            self.outcome = format!("{}+{}", self.outcome, ending.label());
        }
        self
    }
}
