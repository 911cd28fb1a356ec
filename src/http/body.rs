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
