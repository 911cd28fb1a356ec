//! The shared tier: verified content in an S3-compatible bucket that
//! several replicas read and fill together. Each replica keeps its local
//! disk as today; a local miss asks the bucket before the upstream, and a
//! blob nobody has is fetched from the upstream by one replica — the
//! holder of its fill lease — while the others stream it from that holder.
//!
//! Correctness never rests on this module: every byte that arrives from
//! the bucket or a peer is hashed by the fill that receives it, exactly as
//! an upstream's are, and a final key in the bucket is written only by a
//! replica that verified the bytes. What the tier saves is upstream
//! fetches, and what it costs when the store fails is only that saving:
//! calls are bounded by `request_timeout`, and while the store is down the
//! request paths skip it ([`bucket::Observer::worth_asking`]).

pub mod peer;
mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::storage::bucket::lease::Holder;
use super::storage::bucket::{self, Bucket, BucketError};
use super::storage::{Kind, TagRecord};
use crate::config::{Coordination, OnHolderUnreachable};
use crate::metrics::Metrics;
use crate::registry::Digest;

pub use peer::{PeerBody, PeerClient, PeerError};
pub use route::{LeaseKeeper, Plan};

/// What `[cache.s3]` and `[cluster]` are built into (in `daemon`).
#[derive(Debug, Clone)]
pub struct TierSettings {
    pub replica_id: String,
    /// How the others reach this replica's peer endpoint.
    pub advertise_url: String,
    /// After the startup probe: "none" when the engine ignores conditions.
    pub coordination: Coordination,
    pub lease_ttl: Duration,
    pub on_holder_unreachable: OnHolderUnreachable,
    /// Multipart part size; smaller content goes up in one PUT.
    pub part_size: u64,
    /// Where a lease may send this replica (`peer_networks`, `peer_hosts`).
    pub peer_networks: Vec<ipnet::IpNet>,
    pub peer_hosts: Vec<crate::config::HostPattern>,
}

impl TierSettings {
    /// Whether a lease holder's URL is one this replica may dial: an
    /// `http(s)` URL whose host is an address in `peer_networks` or a name
    /// in `peer_hosts`, with nothing else in it.
    pub fn may_follow(&self, url: &str) -> bool {
        let Ok(url) = url::Url::parse(url) else {
            return false;
        };
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return false;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self
                .peer_networks
                .iter()
                .any(|n| n.contains(&std::net::IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => self
                .peer_networks
                .iter()
                .any(|n| n.contains(&std::net::IpAddr::V6(ip))),
            Some(url::Host::Domain(name)) => self
                .peer_hosts
                .iter()
                .any(|p| p.matches(name, url.port_or_known_default())),
            None => false,
        }
    }
}

pub struct SharedTier {
    bucket: Bucket,
    settings: TierSettings,
    peer: PeerClient,
    metrics: Arc<Metrics>,
    /// Background writes to the bucket (manifests, tags, links, uploads),
    /// so shutdown waits for them; each is bounded by `request_timeout`.
    tasks: TaskTracker,
    /// Makes each claim's nonce unique within this process.
    claims: AtomicU64,
}

impl SharedTier {
    pub fn new(
        bucket: Bucket,
        settings: TierSettings,
        peer: PeerClient,
        metrics: Arc<Metrics>,
    ) -> SharedTier {
        metrics.shared.init();
        SharedTier {
            bucket,
            settings,
            peer,
            metrics,
            tasks: TaskTracker::new(),
            claims: AtomicU64::new(0),
        }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    pub fn peer(&self) -> &PeerClient {
        &self.peer
    }

    pub fn settings(&self) -> &TierSettings {
        &self.settings
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Whether a request should ask the store now: not while it is down
    /// (then only [`SharedTier::probe`] asks it).
    pub fn worth_asking(&self) -> bool {
        self.bucket.observer().is_up()
    }

    /// Asks the store one cheap question while it is down (the daemon
    /// calls it every few seconds), so it is used again once it answers.
    pub async fn probe(&self) {
        if self.store_up() {
            return;
        }
        let nothing = Digest::sha256_of(b"regcache: the store's liveness probe");
        let _ = self.bucket.stat(Kind::Blob, &nothing).await;
    }

    pub fn store_up(&self) -> bool {
        self.bucket.observer().is_up()
    }

    /// This replica as a lease names it, with a fresh nonce.
    fn holder(&self) -> Holder {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Holder {
            replica: self.settings.replica_id.clone(),
            url: self.settings.advertise_url.clone(),
            nonce: format!(
                "{}-{}-{nanos:x}-{n}",
                self.settings.replica_id,
                std::process::id()
            ),
            done: false,
        }
    }

    pub fn hit(&self, tier: &str, kind: Kind) {
        self.metrics
            .shared
            .tier_hits
            .with_label_values(&[tier, kind.label()])
            .inc();
    }

    /// Runs a write to the bucket in the background: the answer that
    /// caused it never waits on the store.
    fn publish<F>(&self, what: &'static str, write: F)
    where
        F: std::future::Future<Output = Result<(), BucketError>> + Send + 'static,
    {
        if !self.worth_asking() {
            return;
        }
        self.tasks.spawn(async move {
            if let Err(e) = write.await {
                tracing::debug!(what, error = %e, "writing to the shared tier failed");
            }
        });
    }

    /// Shares a verified manifest.
    pub fn publish_manifest(&self, digest: &Digest, bytes: Bytes, media_type: &str) {
        let bucket = self.bucket.clone();
        let d = digest.clone();
        let media_type = media_type.to_owned();
        self.publish("manifest", async move {
            if bucket.stat(Kind::Manifest, &d).await?.is_some() {
                return Ok(());
            }
            bucket
                .put(Kind::Manifest, &d, bytes, Some(&media_type))
                .await
        });
    }

    /// Shares a tag record (last writer wins, as locally).
    pub fn publish_tag(&self, record: TagRecord) {
        let bucket = self.bucket.clone();
        self.publish("tag", async move { bucket.put_tag(&record).await });
    }

    /// Shares that `digest` was learned through `repository`: the
    /// private-content check then passes on every replica.
    pub fn publish_link(&self, upstream: &str, repository: &str, digest: &Digest) {
        let bucket = self.bucket.clone();
        let (u, r, d) = (upstream.to_owned(), repository.to_owned(), digest.clone());
        self.publish("link", async move { bucket.link(&u, &r, &d).await });
    }

    /// A manifest another replica stored, verified; a corrupt one is
    /// removed (and is then a miss).
    pub async fn manifest(&self, digest: &Digest, max_size: u64) -> Option<Bytes> {
        if !self.worth_asking() {
            return None;
        }
        match self
            .bucket
            .read_verified(Kind::Manifest, digest, max_size)
            .await
        {
            Ok(found) => found,
            Err(e @ BucketError::Mismatch { .. }) => {
                self.corrupt(Kind::Manifest, digest, None, &e).await;
                None
            }
            Err(e) => {
                tracing::debug!(%digest, error = %e, "reading a manifest from the shared tier failed");
                None
            }
        }
    }

    /// The tag record another replica wrote.
    pub async fn tag(&self, upstream: &str, repository: &str, tag: &str) -> Option<TagRecord> {
        if !self.worth_asking() {
            return None;
        }
        self.bucket
            .tag(upstream, repository, tag)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(upstream, repository, tag, error = %e, "reading a tag from the shared tier failed");
                None
            })
    }

    /// Whether some replica recorded `digest` under `repository`; `false`
    /// when the store cannot say (the caller then asks the upstream).
    pub async fn is_linked(&self, upstream: &str, repository: &str, digest: &Digest) -> bool {
        if !self.worth_asking() {
            return false;
        }
        self.bucket
            .is_linked(upstream, repository, digest)
            .await
            .unwrap_or(false)
    }

    /// Content in the bucket that failed its digest: counted, logged, and
    /// removed unless it changed since it was read (`seen`; without it,
    /// as it is now), so the next request fills it again.
    pub async fn corrupt(
        &self,
        kind: Kind,
        digest: &Digest,
        seen: Option<bucket::Stored>,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        self.metrics.shared.corrupt.inc();
        let seen = match seen {
            Some(seen) => Some(seen),
            None => self.bucket.stat(kind, digest).await.ok().flatten(),
        };
        let removed = match &seen {
            Some(seen) => self.bucket.remove_if_unchanged(kind, digest, seen).await,
            None => Ok(false),
        };
        tracing::warn!(%digest, kind = kind.label(), %error, removed = ?removed.as_ref().ok(), "content in the shared tier does not match its digest; removed, it is filled again");
    }

    /// Waits up to `grace` for the background writes.
    pub async fn drain(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_may_send_this_replica_only_to_the_configured_peers() {
        let settings = TierSettings {
            replica_id: "r".into(),
            advertise_url: "http://10.1.2.3:5002".into(),
            coordination: Coordination::S3Lease,
            lease_ttl: Duration::from_secs(30),
            on_holder_unreachable: OnHolderUnreachable::Fetch,
            part_size: 16 << 20,
            peer_networks: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            peer_hosts: vec!["*.peers.example".parse().unwrap()],
        };
        for ok in [
            "http://10.9.8.7:5002",
            "https://10.0.0.1",
            "http://[fd00::7]:5002",
            "http://regcache-0.peers.example:5002",
        ] {
            assert!(settings.may_follow(ok), "{ok}");
        }
        for refused in [
            "http://192.168.1.1:5002",
            "http://169.254.169.254/",
            "http://registry.example/",
            "http://u:p@10.1.1.1:5002",
            "ftp://10.1.1.1/",
            "not a url",
            "http://peers.example:5002",
        ] {
            assert!(!settings.may_follow(refused), "{refused}");
        }
    }
}
