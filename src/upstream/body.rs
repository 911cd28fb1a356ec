//! Reading small upstream bodies (manifests, listings, tokens) whole, and
//! describing transport errors without leaking URLs.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("body too large")]
    TooLarge,
    #[error("no data for {0:?}")]
    Stalled(Duration),
    #[error("{0}")]
    Transport(String),
}

/// Reads a small body whole, refusing more than `limit` bytes and failing
/// when no data arrives for `idle`.
pub async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut out = BytesMut::new();
    let mut stream = response.bytes_stream();
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| ReadError::Stalled(idle))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ReadError::Transport(describe(&e)))?;
        if out.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// A transport error's cause chain in one line, without the URL (which may
/// carry a presigned query or a token).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
