//! The shared tier: verified content on an S3-compatible object store that
//! several replicas read and fill together.
//!
//! The bucket mirrors the local layout (under an optional prefix):
//! `blobs/sha256/<2hex>/<64hex>`, `manifests/sha256/<2hex>/<64hex>` (its
//! Content-Type is the media type), `links/<upstream>/<repository>/sha256/<64hex>`
//! (zero-byte markers: which repository a digest was learned through, so the
//! private-content check holds on every replica) and `leases/...` (the fill
//! leases, see [`lease`]). Everything in it can be fetched again from an
//! upstream, so an object the store lost is a miss, never an error.
//!
//! Unlike [`super::ContentStore`], every call here is async: the store is
//! across a network, and each call is bounded by `request_timeout` as a
//! whole, retries included, so nothing waits on the store for longer.

pub mod lease;
pub mod multipart;
mod observe;
pub mod tags;

pub use observe::Observer;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::path::{Path, PathPart};
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

use super::Kind;
use crate::registry::Digest;

/// How to reach the store: what `[cache.s3]` is built into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `None`: AWS itself, by region.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Every key starts with it; several deployments can share a bucket.
    pub prefix: String,
    /// `http://endpoint/bucket/key` rather than `http://bucket.endpoint/key`;
    /// what self-hosted engines expect.
    pub path_style: bool,
    /// A plain-HTTP endpoint is refused unless this is set.
    pub allow_http: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Bounds each call as a whole, retries included.
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("object store {op} {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object store {op} {key}: no answer within {timeout:?}")]
    Timeout {
        op: &'static str,
        key: String,
        timeout: Duration,
    },
    #[error("{key}: the bytes hash to {actual}, not to the digest they are stored under")]
    Mismatch { key: String, actual: Digest },
    #[error("object store settings: {0}")]
    Settings(String),
    #[error("{key} is {size} bytes, over the {max}-byte bound")]
    TooLarge { key: String, size: u64, max: u64 },
    /// Reading the local copy of what is being uploaded failed.
    #[error("reading the local copy: {0}")]
    Local(String),
    #[error("{0}: the lease kept vanishing between create and read")]
    LeaseVanished(String),
}

impl BucketError {
    /// The status label of `regcache_object_store_requests_total`.
    pub fn status_label(&self) -> &'static str {
        match self {
            BucketError::Store { source, .. } => match source {
                object_store::Error::NotFound { .. } => "not_found",
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. } => "precondition",
                _ => "error",
            },
            BucketError::Timeout { .. } => "timeout",
            _ => "error",
        }
    }

    /// Whether the store itself failed (down, slow, refusing), as opposed
    /// to a question it answered.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BucketError::Store {
                source: object_store::Error::Generic { .. }
                    | object_store::Error::JoinError { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::PermissionDenied { .. },
                ..
            } | BucketError::Timeout { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, BucketError>;

/// What a stored object's listing entry or HEAD says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// Guards a delete of exactly this version ([`Bucket::remove_if_unchanged`]).
    pub e_tag: Option<String>,
}

/// The shared tier's handle: cheap to clone, one HTTP connection pool.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Vec<String>,
    timeout: Duration,
    /// Counts every call and knows whether the store is up.
    observer: Arc<Observer>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Bucket {
    /// Builds the S3 client; dials nothing yet.
    pub fn connect(settings: &S3Settings) -> Result<Bucket> {
        if settings.bucket.is_empty() {
            return Err(BucketError::Settings("bucket is empty".into()));
        }
        if settings.access_key_id.is_empty() || settings.secret_access_key.is_empty() {
            // Without static keys the AWS client would ask the instance
            // metadata service: a host nobody configured.
            return Err(BucketError::Settings(
                "access_key_id and a secret access key are required".into(),
            ));
        }
        let client = ClientOptions::new()
            .with_allow_http(settings.allow_http)
            .with_timeout(settings.request_timeout)
            .with_connect_timeout(settings.request_timeout.min(Duration::from_secs(5)));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: settings.request_timeout,
        };
        let mut builder = AmazonS3Builder::new()
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_allow_http(settings.allow_http)
            // The store checks each PUT against this sha256 and refuses a
            // body damaged on the way (BadDigest).
            .with_checksum_algorithm(Checksum::SHA256)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder
            .build()
            .map_err(|e| BucketError::Settings(e.to_string()))?;
        Ok(Bucket::over(
            Arc::new(store),
            &settings.prefix,
            settings.request_timeout,
        ))
    }

    /// A bucket over any store: tests use `object_store::memory::InMemory`.
    pub fn over(store: Arc<dyn ObjectStore>, prefix: &str, timeout: Duration) -> Bucket {
        Bucket {
            store,
            prefix: prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            timeout,
            observer: Arc::new(Observer::default()),
        }
    }

    /// Counts every call into these metrics from now on.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::SharedTierMetrics>) -> Bucket {
        self.observer = Arc::new(Observer::new(Some(metrics)));
        self
    }

    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// Each call's bound (`request_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The key of `parts` under the prefix. Each part is one path segment,
    /// percent-encoded where S3 keys need it, so a repository name can never
    /// climb out of its place.
    fn key<'a>(&self, parts: impl IntoIterator<Item = &'a str>) -> Path {
        self.prefix
            .iter()
            .map(|p| PathPart::from(p.clone()))
            .chain(parts.into_iter().map(|p| PathPart::from(p.to_owned())))
            .collect()
    }

    fn content_key(&self, kind: Kind, digest: &Digest) -> Path {
        let top = match kind {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        };
        let hex = digest.hex();
        self.key([top, "sha256", &hex[..2], hex])
    }

    fn link_key(&self, upstream: &str, repository: &str, digest: &Digest) -> Path {
        self.key(
            ["links", upstream]
                .into_iter()
                .chain(repository.split('/'))
                .chain(["sha256", digest.hex()]),
        )
    }

    /// Runs one store call under the whole-call timeout.
    async fn bounded<T>(
        &self,
        op: &'static str,
        key: &Path,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let result = self.unobserved(op, key, call).await;
        self.observer.call(op, started, &result);
        result
    }

    async fn unobserved<T>(
        &self,
        op: &'static str,
        key: &Path,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(BucketError::Store {
                op,
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(BucketError::Timeout {
                op,
                key: key.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    /// Stores verified content in one PUT. The bytes are hashed here first:
    /// a final key only ever holds what its digest names. Writing the same
    /// digest twice writes the same bytes, so a race between replicas
    /// needs no coordination.
    pub async fn put(
        &self,
        kind: Kind,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
    ) -> Result<()> {
        let key = self.content_key(kind, digest);
        let actual = Digest::sha256_of(&bytes);
        if &actual != digest {
            return Err(BucketError::Mismatch {
                key: key.to_string(),
                actual,
            });
        }
        let mut attributes = Attributes::new();
        if let Some(media_type) = media_type {
            attributes.insert(Attribute::ContentType, media_type.to_owned().into());
        }
        let opts = PutOptions {
            attributes,
            ..Default::default()
        };
        self.observer.bytes_to_store(bytes.len());
        self.bounded("put", &key, self.store.put_opts(&key, bytes.into(), opts))
            .await
            .map(drop)
    }

    /// HEAD of a content object; `None` when the store does not have it.
    pub async fn stat(&self, kind: Kind, digest: &Digest) -> Result<Option<Stored>> {
        let key = self.content_key(kind, digest);
        match self.bounded("head", &key, self.store.head(&key)).await {
            Ok(meta) => Ok(Some(Stored {
                size: meta.size,
                e_tag: meta.e_tag,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bytes of a content object from `offset`, as they arrive. The
    /// caller hashes them (a stream cannot be verified before it ends) and
    /// holds back its last byte until the digest matches. `None`: absent.
    ///
    /// Only the start is bounded by `request_timeout`; the caller bounds
    /// the gaps between chunks as it does for an upstream body.
    pub async fn read_from(
        &self,
        kind: Kind,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<(Stored, BoxStream<'static, Result<Bytes>>)>> {
        let key = self.content_key(kind, digest);
        let opts = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = match self
            .bounded("get", &key, self.store.get_opts(&key, opts))
            .await
        {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let stored = Stored {
            size: got.meta.size,
            e_tag: got.meta.e_tag.clone(),
        };
        let name = key.to_string();
        let observer = self.observer.clone();
        let body = got
            .into_stream()
            .inspect_ok(move |chunk| observer.bytes_from_store(chunk.len()))
            .map_err(move |source| BucketError::Store {
                op: "get",
                key: name.clone(),
                source,
            })
            .boxed();
        Ok(Some((stored, body)))
    }

    /// A whole small object (a manifest), verified against its digest. A
    /// mismatch is an error the caller answers by removing the object.
    pub async fn read_verified(
        &self,
        kind: Kind,
        digest: &Digest,
        max_size: u64,
    ) -> Result<Option<Bytes>> {
        let key = self.content_key(kind, digest);
        let Some((stored, body)) = self.read_from(kind, digest, 0).await? else {
            return Ok(None);
        };
        if stored.size > max_size {
            return Err(BucketError::TooLarge {
                key: key.to_string(),
                size: stored.size,
                max: max_size,
            });
        }
        // Bounded by what arrives, not by what the HEAD claimed: a store
        // that sends more than it announced is cut off at the bound.
        let name = key.to_string();
        let collect = body.try_fold(Vec::new(), |mut acc: Vec<u8>, chunk| {
            let name = name.clone();
            async move {
                if (acc.len() + chunk.len()) as u64 > max_size {
                    return Err(BucketError::TooLarge {
                        key: name,
                        size: (acc.len() + chunk.len()) as u64,
                        max: max_size,
                    });
                }
                acc.extend_from_slice(&chunk);
                Ok(acc)
            }
        });
        let parts = tokio::time::timeout(self.timeout, collect)
            .await
            .map_err(|_| BucketError::Timeout {
                op: "get",
                key: key.to_string(),
                timeout: self.timeout,
            })??;
        let bytes = Bytes::from(parts);
        let actual = Digest::sha256_of(&bytes);
        if &actual != digest {
            return Err(BucketError::Mismatch {
                key: key.to_string(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// Removes a content object found corrupt, unless it changed since it
    /// was read: a replica that stored the right bytes meanwhile keeps
    /// them. S3 has no conditional DELETE, so this asks first; the window
    /// left can only delete a good copy, which is a miss, never a wrong byte.
    pub async fn remove_if_unchanged(
        &self,
        kind: Kind,
        digest: &Digest,
        seen: &Stored,
    ) -> Result<bool> {
        let key = self.content_key(kind, digest);
        let now = self.stat(kind, digest).await?;
        if now.as_ref() != Some(seen) {
            return Ok(false);
        }
        self.bounded("delete", &key, self.store.delete(&key))
            .await
            .map(|()| true)
    }

    /// Records that `digest` was learned through `repository` of `upstream`.
    pub async fn link(&self, upstream: &str, repository: &str, digest: &Digest) -> Result<()> {
        let key = self.link_key(upstream, repository, digest);
        self.bounded("put", &key, self.store.put(&key, PutPayload::new()))
            .await
            .map(drop)
    }

    /// Whether some replica recorded `digest` under `repository`.
    pub async fn is_linked(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool> {
        let key = self.link_key(upstream, repository, digest);
        match self.bounded("head", &key, self.store.head(&key)).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Checks at startup that the store honours conditional writes, which
    /// the fill lease depends on: a second create of one key must fail, and
    /// so must an update naming a version that is not there. Garage, for
    /// one, accepts both silently.
    pub async fn probe_conditional_writes(&self, nonce: &str) -> Result<ConditionalWrites> {
        let key = self.key(["leases", "probe", nonce]);
        let create = PutOptions::from(PutMode::Create);
        self.bounded(
            "put",
            &key,
            self.store
                .put_opts(&key, Bytes::from_static(b"1").into(), create.clone()),
        )
        .await?;
        let verdict = match self
            .bounded(
                "put",
                &key,
                self.store
                    .put_opts(&key, Bytes::from_static(b"2").into(), create),
            )
            .await
        {
            Err(e) if is_already_there(&e) => {
                let bogus = PutOptions::from(PutMode::Update(UpdateVersion {
                    e_tag: Some("\"regcache-probe-no-such-version\"".into()),
                    version: None,
                }));
                match self
                    .bounded(
                        "put",
                        &key,
                        self.store
                            .put_opts(&key, Bytes::from_static(b"3").into(), bogus),
                    )
                    .await
                {
                    Err(e) if is_lost(&e) => ConditionalWrites::Honoured,
                    Err(e) => return Err(e),
                    Ok(_) => ConditionalWrites::Ignored(
                        "an If-Match update of a version that is not there succeeded",
                    ),
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {
                ConditionalWrites::Ignored("a second If-None-Match create of one key succeeded")
            }
        };
        // Best effort: a probe key left behind is a few bytes.
        let _ = self.bounded("delete", &key, self.store.delete(&key)).await;
        Ok(verdict)
    }
}

/// What [`Bucket::probe_conditional_writes`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalWrites {
    Honoured,
    /// The store accepted a write it should have refused; says which.
    Ignored(&'static str),
}

fn is_not_found(e: &BucketError) -> bool {
    matches!(
        e,
        BucketError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }
    )
}

/// A conditional create found the key taken.
fn is_already_there(e: &BucketError) -> bool {
    matches!(
        e,
        BucketError::Store {
            source: object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ..
        }
    )
}

/// A conditional update found another version, or none: AWS answers 404
/// for a missing key, SeaweedFS 412.
fn is_lost(e: &BucketError) -> bool {
    matches!(
        e,
        BucketError::Store {
            source: object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ..
        }
    )
}

#[cfg(test)]
mod tests;
