//! Where a fill's bytes come from when the local disk misses: the bucket
//! when some replica stored the blob, else the one replica that wins the
//! blob's fill lease fetches it from the upstream and the others follow
//! that replica. The lease is kept renewed by a [`LeaseKeeper`] for as
//! long as its holder fills and uploads.

use std::time::Duration;

use tokio::sync::oneshot;

use super::SharedTier;
use crate::cache::storage::bucket::lease::{Claim, Holder, Lease, CLOCK_MARGIN};
use crate::cache::storage::bucket::{Bucket, Stored};
use crate::cache::storage::Kind;
use crate::config::Coordination;
use crate::registry::Digest;

/// What a fill does first.
pub enum Plan {
    /// Another replica stored the blob: stream it from the bucket.
    Bucket(Stored),
    /// This replica fetches from the upstream; with a lease when it won
    /// one (without: the store is down or coordination is off).
    Upstream(Option<LeaseKeeper>),
    /// Another replica holds the lease: stream from it.
    Follow(Holder),
}

impl SharedTier {
    /// The plan for a blob that is neither on the local disk nor (as a
    /// GET of it just said) in the bucket.
    pub async fn plan(&self, digest: &Digest) -> Plan {
        if !self.worth_asking() || self.settings.coordination == Coordination::None {
            return Plan::Upstream(None);
        }
        self.claim(digest).await
    }

    /// Claims the blob's fill lease: won or taken over, this replica
    /// fetches; held by a live replica, it follows that one.
    pub async fn claim(&self, digest: &Digest) -> Plan {
        let me = self.holder();
        // A stale lease that someone else replaced first sends us round
        // again, to follow the new holder.
        for _ in 0..3 {
            match self
                .bucket
                .claim(digest, &me, self.settings.lease_ttl)
                .await
            {
                Ok(Claim::Won(lease)) => {
                    self.lease_outcome("won");
                    return Plan::Upstream(Some(self.keep(lease)));
                }
                // A lease of this replica's own address is one a previous
                // run left: there is no fill to follow behind it.
                Ok(Claim::Held { holder, .. }) if holder.url == self.settings.advertise_url => {
                    tracing::debug!(%digest, "the fill lease is a previous run's of this replica; filling alone");
                    return Plan::Upstream(None);
                }
                Ok(Claim::Held { holder, .. }) if !self.settings.may_follow(&holder.url) => {
                    tracing::warn!(%digest, holder = %holder.replica, url = %holder.url, "a fill lease names a peer outside cluster.peer_networks and cluster.peer_hosts; not dialling it, filling alone");
                    return Plan::Upstream(None);
                }
                Ok(Claim::Held { holder, .. }) => return Plan::Follow(holder),
                Ok(Claim::Stale { holder, age, seen }) => {
                    // A holder that finished (or died after its upload)
                    // while this claim was on its way left the blob in the
                    // bucket: read it there rather than fetch it again.
                    if let Ok(Some(stored)) = self.bucket.stat(Kind::Blob, digest).await {
                        return Plan::Bucket(stored);
                    }
                    match self.bucket.take_over(digest, &me, seen).await {
                        // A finished holder's lease (the blob was filled
                        // once, then left the bucket): an ordinary win.
                        Ok(Some(lease)) if holder.done => {
                            self.lease_outcome("won");
                            return Plan::Upstream(Some(self.keep(lease)));
                        }
                        Ok(Some(lease)) => {
                            tracing::warn!(%digest, previous = %holder.replica, age_s = age.as_secs(), "took over a stale fill lease");
                            self.lease_outcome("taken_over");
                            return Plan::Upstream(Some(self.keep(lease)));
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::debug!(%digest, error = %e, "taking over a fill lease failed");
                            return Plan::Upstream(None);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "claiming a fill lease failed; filling alone");
                    return Plan::Upstream(None);
                }
            }
        }
        Plan::Upstream(None)
    }

    pub(crate) fn lease_outcome(&self, outcome: &str) {
        self.metrics
            .shared
            .leases
            .with_label_values(&[outcome])
            .inc();
    }

    /// How long a follower waits, after its holder's stream broke, for the
    /// lease to go stale (or the blob to land) before it fetches alone.
    pub fn takeover_wait(&self) -> Duration {
        self.settings.lease_ttl + CLOCK_MARGIN + Duration::from_secs(3)
    }

    /// Starts renewing `lease` every `lease_ttl / 3` until the keeper is
    /// dropped, which marks the lease done (the next claimant may take over
    /// at once).
    fn keep(&self, lease: Lease) -> LeaseKeeper {
        let (stop, stopped) = oneshot::channel::<()>();
        let bucket = self.bucket.clone();
        let every = self.settings.lease_ttl / 3;
        let metrics = self.metrics.clone();
        self.tasks
            .spawn(renew(bucket, lease, every, stopped, metrics));
        LeaseKeeper { _stop: stop }
    }
}

/// Holds a fill lease: renewed while this lives, released when dropped.
pub struct LeaseKeeper {
    /// Dropping it ends the renewal task, which then releases the lease.
    _stop: oneshot::Sender<()>,
}

async fn renew(
    bucket: Bucket,
    mut lease: Lease,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tokio::time::sleep(every) => {}
        }
        match bucket.renew(&mut lease).await {
            Ok(true) => {}
            Ok(false) => {
                // Harmless: the fill goes on and its commit is the same
                // bytes as the new holder's.
                metrics.shared.leases.with_label_values(&["lost"]).inc();
                tracing::warn!(key = %lease.holder.nonce, "a fill lease was taken over while this replica still filled");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "renewing a fill lease failed; trying again"),
        }
    }
    if let Err(e) = bucket.release(lease).await {
        tracing::debug!(error = %e, "releasing a fill lease failed; it goes stale instead");
    }
}
