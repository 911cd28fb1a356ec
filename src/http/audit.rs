//! The audit log: one JSON line per registry request, written when the
//! response body ends (so it carries the bytes actually sent). Never
//! credentials or tokens: only who, what, and how it went.

use std::io::Write;
use std::pin::Pin;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::Serialize;

use super::body::{Body, BoxError};

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

    fn write(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// A response body that writes the audit entry when it ends or is dropped.
pub struct Audited {
    inner: Body,
    log: AuditLog,
    entry: Option<Entry>,
    started: tokio::time::Instant,
}

impl Audited {
    pub fn wrap(inner: Body, log: AuditLog, entry: Entry, started: tokio::time::Instant) -> Body {
        use http_body_util::BodyExt;
        Audited {
            inner,
            log,
            entry: Some(entry),
            started,
        }
        .boxed_unsync()
    }

    fn finish(&mut self, outcome_suffix: Option<&str>) {
        if let Some(mut entry) = self.entry.take() {
            entry.duration_ms = self.started.elapsed().as_millis() as u64;
            if let Some(suffix) = outcome_suffix {
                entry.outcome = format!("{}+{suffix}", entry.outcome);
            }
            self.log.write(&entry);
        }
    }
}

impl HttpBody for Audited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(entry)) = (frame.data_ref(), self.entry.as_mut()) {
                    entry.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some("aborted")),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        // A client that went away before the end: still one line.
        let unfinished = self
            .entry
            .as_ref()
            .is_some_and(|_| !self.inner.is_end_stream());
        self.finish(unfinished.then_some("client_gone"));
    }
}
