//! The client side of the peer endpoint: a follower streams a blob from
//! the replica that holds its fill lease, `GET <advertise_url>/_regcache/v1/fills/sha256:<hex>`
//! with the shared bearer token and `Range: bytes=N-` to resume. The body
//! is hashed by the follower's own fill, never trusted.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::StatusCode;

use super::Holder;
use crate::metrics::SharedTierMetrics;
use crate::registry::Digest;

/// The path of the peer endpoint under `advertise_url`.
pub const FILLS_PATH: &str = "/_regcache/v1/fills/";

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("peer {url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("peer {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("peer {url}: no headers within {0:?}", .timeout)]
    Timeout { url: String, timeout: Duration },
}

/// A blob streaming from a peer, from the offset asked for.
pub struct PeerBody {
    pub stream: BoxStream<'static, Result<Bytes, PeerError>>,
    /// The blob's whole size, when the holder knows it.
    pub size: Option<u64>,
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// `Bearer <token>`, when `peer_token_file` is set.
    authorization: Option<String>,
    /// Bounds the wait for a peer's headers (the holder itself may be
    /// waiting for its upstream's).
    header_timeout: Duration,
    metrics: Option<std::sync::Arc<SharedTierMetrics>>,
}

impl PeerClient {
    pub fn new(
        token: Option<String>,
        connect_timeout: Duration,
        header_timeout: Duration,
        metrics: Option<std::sync::Arc<SharedTierMetrics>>,
    ) -> Result<PeerClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // A peer never redirects: one that does is not one.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(PeerClient {
            http,
            authorization: token.map(|t| format!("Bearer {t}")),
            header_timeout,
            metrics,
        })
    }

    /// The token a request to this replica's peer endpoint must carry.
    pub fn expected_authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// Opens `digest` at the holder from byte `from`.
    pub async fn open(
        &self,
        holder: &Holder,
        digest: &Digest,
        from: u64,
    ) -> Result<PeerBody, PeerError> {
        let url = format!("{}{FILLS_PATH}{digest}", holder.url.trim_end_matches('/'));
        let mut request = self.http.get(&url);
        if let Some(a) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, a);
        }
        if from > 0 {
            request = request.header(http::header::RANGE, format!("bytes={from}-"));
        }
        let response = match tokio::time::timeout(self.header_timeout, request.send()).await {
            Err(_) => {
                return Err(PeerError::Timeout {
                    url,
                    timeout: self.header_timeout,
                })
            }
            Ok(Err(source)) => return Err(PeerError::Unreachable { url, source }),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let size = match (from, status) {
            (0, StatusCode::OK) => response.content_length(),
            (_, StatusCode::PARTIAL_CONTENT) => {
                let range = response
                    .headers()
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let total = range
                    .strip_prefix(&format!("bytes {from}-"))
                    .and_then(|rest| rest.split_once('/'))
                    .and_then(|(_, total)| total.parse::<u64>().ok());
                match total {
                    Some(total) => Some(total),
                    None => {
                        return Err(PeerError::Protocol {
                            url,
                            message: format!("resumed with Content-Range {range:?}"),
                        })
                    }
                }
            }
            _ => return Err(PeerError::Status { url, status }),
        };
        let metrics = self.metrics.clone();
        let name = url.clone();
        let stream = response
            .bytes_stream()
            .inspect_ok(move |chunk| {
                if let Some(m) = &metrics {
                    m.peer_bytes
                        .with_label_values(&["received"])
                        .inc_by(chunk.len() as u64);
                }
            })
            .map_err(move |source| PeerError::Unreachable {
                url: name.clone(),
                source,
            })
            .boxed();
        Ok(PeerBody { stream, size })
    }
}
