//! Why a cache operation failed, classified once here so that the HTTP
//! edge, the metrics and stale serving all read the same kinds.

use std::io;
use std::sync::Arc;

use super::freshness::MAX_MANIFEST_SIZE;
use super::storage::index::IndexError;
use crate::registry::{Digest, ManifestError};
use crate::upstream::UpstreamError;

/// Cloneable, because one fill's failure is delivered to every client
/// attached to it; causes are shared, not flattened to text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// Anything the upstream did: unreachable, an unwanted status, a
    /// broken or stalled body ([`UpstreamError`] says which).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream content has digest {actual}, not the requested {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream content is {actual} bytes, not the announced {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    /// A blob past its upstream's `max_blob_size`: announced so, or
    /// streamed past it without a length.
    #[error("the blob is larger than max_blob_size ({limit} bytes) of upstream {upstream}")]
    BlobTooLarge { upstream: String, limit: u64 },
    #[error("manifest is larger than {MAX_MANIFEST_SIZE} bytes")]
    ManifestTooLarge,
    #[error("upstream manifest answer has no usable digest or media type")]
    BadManifestAnswer,
    /// A 200 whose body is no manifest (`{}`, an HTML page): never stored.
    #[error(
        "upstream {upstream} answered {reference} with a body that is not a manifest: {error}"
    )]
    NotAManifest {
        upstream: String,
        reference: String,
        #[source]
        error: ManifestError,
    },
    /// The content store failed; the `io::Error` keeps its kind, so a full
    /// disk is told from a permission problem or a bug.
    #[error("cache storage: {0}")]
    Storage(#[source] Arc<io::Error>),
    #[error("cache storage: {0}")]
    Index(#[source] Arc<IndexError>),
    /// New content would take the store below its free-space floor
    /// (`[cache] min_free`): refused before anything is fetched.
    #[error("no room for new content: {available} bytes free, below the free-space floor of {floor} bytes (cached content is still served)")]
    NoRoom { available: u64, floor: u64 },
    /// Storage cannot take writes now (a failed index waiting to reopen).
    #[error("cache storage is not accepting writes: {0}")]
    Unwritable(String),
    /// The index belongs to another process.
    #[error("{0}")]
    Locked(String),
    /// A task of the cache's own ended without an answer (it panicked or
    /// was cancelled): a bug, not a property of the content.
    #[error("{0}")]
    Internal(String),
    /// The shared tier (the bucket, or the replica being followed) broke
    /// off a blob and no other source could finish it.
    #[error("shared tier: {0}")]
    Shared(String),
    /// The bucket's copy did not hash to its digest: it was removed, and
    /// the blob is filled again from the upstream.
    #[error("the shared tier's copy of {0} does not match its digest; removed, and filled again")]
    SharedCorrupt(Digest),
}

impl CacheError {
    /// Failures that say the upstream is down, slow or rate-limiting — the
    /// ones a stale answer may cover — as opposed to answers about the
    /// content itself (404, 401, a digest mismatch). `upstream` decides.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(self, CacheError::Upstream(e) if e.is_failure())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CacheError::Upstream(e) if e.is_not_found())
    }

    /// A manifest body that could not be read whole: too large is the
    /// manifest's fault (MANIFEST_INVALID, as for cached ones), the rest
    /// the upstream's.
    pub fn manifest_body(e: UpstreamError) -> CacheError {
        match e {
            UpstreamError::TooLarge { .. } => CacheError::ManifestTooLarge,
            e => e.into(),
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
            CacheError::BlobTooLarge { .. } => "too_large",
            CacheError::NoRoom { .. } => "no_room",
            CacheError::Upstream(UpstreamError::Status { .. }) => "upstream_status",
            CacheError::Upstream(UpstreamError::Stalled(_)) => "stalled",
            CacheError::Shared(_) | CacheError::SharedCorrupt(_) => "shared_error",
            CacheError::Storage(_)
            | CacheError::Index(_)
            | CacheError::Unwritable(_)
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
