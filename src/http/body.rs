//! The response body type: a boxed stream of byte chunks. A stream that
//! ends with an error makes hyper abort the connection, which is how a
//! failed fill reaches clients that already have headers.

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The body of a HEAD answer. Its size is reported as unknown rather than
/// zero, so that hyper keeps the `Content-Length` the handler set (the
/// length a GET would have), which containerd needs to resolve a tag.
pub fn head() -> Body {
    stream(futures_util::stream::empty())
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn stream<S>(s: S) -> Body
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(s.map_ok(Frame::data).map_err(|e| Box::new(e) as BoxError)).boxed_unsync()
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Sent to the end (or there was none to send: HEAD, 304).
    Complete,
    /// The body failed part-way (a failed fill): the connection was cut.
    Aborted,
    /// The client went away before the end.
    ClientGone,
}

impl Ending {
    pub fn label(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Aborted => "aborted",
            Ending::ClientGone => "client_gone",
        }
    }
}

/// A response body that counts the bytes it sends and, once, when it ends
/// or is dropped, hands the count and how it ended to `done` (the access
/// and audit lines, which want the bytes actually sent). `length` is what
/// the response promised to send (0 for HEAD, 304): hyper drops a body
/// once that much is out, without reading its end.
pub fn tally<F>(inner: Body, length: Option<u64>, done: F) -> Body
where
    F: FnOnce(u64, Ending) + Send + 'static,
{
    Tally {
        inner,
        bytes: 0,
        length,
        done: Some(done),
    }
    .boxed_unsync()
}

struct Tally<F: FnOnce(u64, Ending)> {
    inner: Body,
    bytes: u64,
    length: Option<u64>,
    done: Option<F>,
}

impl<F: FnOnce(u64, Ending)> Tally<F> {
    fn finish(&mut self, ending: Ending) {
        if let Some(done) = self.done.take() {
            done(self.bytes, ending);
        }
    }
}

// `F` is only called, never pinned.
impl<F: FnOnce(u64, Ending)> Unpin for Tally<F> {}

impl<F: FnOnce(u64, Ending)> http_body::Body for Tally<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Ending::Aborted),
            Poll::Ready(None) => self.finish(Ending::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64, Ending)> Drop for Tally<F> {
    fn drop(&mut self) {
        let all_sent = self.length.is_some_and(|n| self.bytes >= n);
        let ending = if all_sent || http_body::Body::is_end_stream(&self.inner) {
            Ending::Complete
        } else {
            Ending::ClientGone
        };
        self.finish(ending);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Seen = Arc<Mutex<Vec<(u64, Ending)>>>;

    fn watched(inner: Body, length: Option<u64>) -> (Body, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let body = tally(inner, length, move |bytes, ending| {
            record.lock().unwrap().push((bytes, ending))
        });
        (body, seen)
    }

    fn chunks(n: usize) -> Body {
        stream(futures_util::stream::iter(
            (0..n).map(|_| Ok(Bytes::from_static(b"0123456789"))),
        ))
    }

    #[tokio::test]
    async fn counts_what_was_sent_and_how_it_ended_once() {
        let (body, seen) = watched(chunks(3), Some(30));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 30);
        assert_eq!(*seen.lock().unwrap(), [(30, Ending::Complete)]);

        // hyper stops reading at the promised length, and drops the body.
        let (mut body, seen) = watched(chunks(3), Some(30));
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [(30, Ending::Complete)]);

        let (mut body, seen) = watched(chunks(3), Some(30));
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [(10, Ending::ClientGone)]);

        let failing = stream(futures_util::stream::iter([
            Ok(Bytes::from_static(b"01234")),
            Err(std::io::Error::other("fill failed")),
        ]));
        let (body, seen) = watched(failing, None);
        assert!(body.collect().await.is_err());
        assert_eq!(*seen.lock().unwrap(), [(5, Ending::Aborted)]);

        // A HEAD answer's body is never read.
        let (body, seen) = watched(head(), Some(0));
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [(0, Ending::Complete)]);
    }
}
