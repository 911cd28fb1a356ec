//! Why a cache operation failed, classified once here so that the HTTP
//! edge, the metrics and stale serving all read the same kinds.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::freshness::MAX_MANIFEST_SIZE;
use super::storage::index::IndexError;
use crate::registry::Digest;
use crate::upstream::UpstreamError;

/// Cloneable, because one fill's failure is delivered to every client
/// attached to it; causes are shared, not flattened to text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream {upstream} answered {status} for the {what}")]
    UpstreamStatus {
        upstream: String,
        status: StatusCode,
        what: &'static str,
        retry_after: Option<String>,
    },
    #[error("upstream body failed: {0}")]
    UpstreamBody(String),
    #[error("upstream sent no data for {0:?}")]
    Stalled(Duration),
    #[error("upstream content has digest {actual}, not the requested {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream content is {actual} bytes, not the announced {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("manifest is larger than {MAX_MANIFEST_SIZE} bytes")]
    ManifestTooLarge,
    #[error("upstream manifest answer has no usable digest or media type")]
    BadManifestAnswer,
    /// The content store failed; the `io::Error` keeps its kind, so a full
    /// disk is told from a permission problem or a bug.
    #[error("cache storage: {0}")]
    Storage(#[source] Arc<io::Error>),
    #[error("cache storage: {0}")]
    Index(#[source] Arc<IndexError>),
    /// The index belongs to another process.
    #[error("{0}")]
    Locked(String),
    /// A task of the cache's own ended without an answer (it panicked or
    /// was cancelled): a bug, not a property of the content.
    #[error("{0}")]
    Internal(String),
}

impl CacheError {
    pub fn from_upstream_status(
        upstream: &str,
        response: &crate::upstream::Response,
        what: &'static str,
    ) -> CacheError {
        CacheError::UpstreamStatus {
            upstream: upstream.to_owned(),
            status: response.status(),
            what,
            retry_after: response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// Failures that say the upstream is down, slow or rate-limiting — the
    /// ones a stale answer may cover — as opposed to answers about the
    /// content itself (404, 401, a digest mismatch).
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            CacheError::Upstream(_) | CacheError::UpstreamBody(_) | CacheError::Stalled(_) => true,
            CacheError::UpstreamStatus { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CacheError::UpstreamStatus { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// A manifest body that could not be read whole: too large is the
    /// manifest's fault (MANIFEST_INVALID), the rest the upstream's.
    pub fn manifest_body(e: crate::upstream::ReadError) -> CacheError {
        match e {
            crate::upstream::ReadError::TooLarge => CacheError::ManifestTooLarge,
            crate::upstream::ReadError::Stalled(d) => CacheError::Stalled(d),
            crate::upstream::ReadError::Transport(t) => CacheError::UpstreamBody(t),
        }
    }

    /// The storage error's kind, if this is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            CacheError::Storage(e) => Some(e.kind()),
            CacheError::Index(e) => match e.as_ref() {
                IndexError::Io(e) => Some(e.kind()),
                IndexError::Sled(sled::Error::Io(e)) => Some(e.kind()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The disk (or quota) is full: the client is told so, not "error".
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self.io_kind(),
            Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        )
    }

    pub(crate) fn fill_result_label(&self) -> &'static str {
        match self {
            CacheError::DigestMismatch { .. } => "digest_mismatch",
            CacheError::SizeMismatch { .. } => "size_mismatch",
            CacheError::UpstreamStatus { .. } => "upstream_status",
            CacheError::Stalled(_) => "stalled",
            CacheError::Storage(_)
            | CacheError::Index(_)
            | CacheError::Locked(_)
            | CacheError::Internal(_) => "storage_error",
            _ => "upstream_error",
        }
    }
}

impl From<io::Error> for CacheError {
    fn from(e: io::Error) -> Self {
        CacheError::Storage(Arc::new(e))
    }
}

impl From<tokio::task::JoinError> for CacheError {
    fn from(e: tokio::task::JoinError) -> Self {
        CacheError::Internal(format!("background task failed: {e}"))
    }
}

impl From<IndexError> for CacheError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Locked(_) => CacheError::Locked(e.to_string()),
            e => CacheError::Index(Arc::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_their_kind() {
        let full = CacheError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert!(full.is_storage_full());
        assert_eq!(full.fill_result_label(), "storage_error");
        let denied = CacheError::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!denied.is_storage_full());
        assert_eq!(denied.io_kind(), Some(io::ErrorKind::PermissionDenied));
        let index = CacheError::from(IndexError::Io(io::Error::from(io::ErrorKind::StorageFull)));
        assert!(index.is_storage_full());
        assert!(!index.is_upstream_failure());
    }
}
