//! The cross-replica fill lease: `leases/fill/<64hex>`, created with
//! `If-None-Match: *` by the replica that fills a digest from the upstream,
//! renewed with `If-Match` every `lease_ttl / 3`. The others read who holds
//! it and follow that replica's fill instead of asking the upstream again.
//!
//! Correctness never depends on the lease (a commit of a digest is the same
//! bytes whoever writes it); it only saves upstream fetches. So every rule
//! here leans towards "fetch again" when in doubt:
//! * a lease is stale when the *store's* clock says it was last written
//!   more than `ttl` + [`CLOCK_MARGIN`] ago (`Last-Modified` has one-second
//!   resolution; replicas' clocks are never compared);
//! * a renewal or take-over that meets another version has lost, and says
//!   so; the loser may still finish and commit its fill, which is harmless;
//! * the body carries a nonce, so a create whose answer was lost (and whose
//!   retry then met the key) is recognised as one's own.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutResult, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{is_already_there, is_lost, is_not_found, Bucket, BucketError, Result};
use crate::registry::Digest;

/// Added to the TTL before a lease counts as stale: `Last-Modified` is
/// whole seconds, and a renewal in flight should not be overtaken.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(2);

/// Who holds a lease, as its body says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub replica: String,
    /// Where followers stream the fill from (`[cluster] advertise_url`).
    pub url: String,
    /// Random per claim: tells one's own create from another replica's.
    pub nonce: String,
    /// Set when the holder finished (committed or gave up): the next
    /// claimant may take over at once. S3 has no conditional delete, so a
    /// lease is ended by a conditional overwrite.
    #[serde(default)]
    pub done: bool,
}

/// A lease this replica holds.
#[derive(Debug)]
pub struct Lease {
    pub(super) key: Path,
    pub(super) version: UpdateVersion,
    pub holder: Holder,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    Won(Lease),
    /// Another replica holds it and renewed it within the TTL.
    Held {
        holder: Holder,
        age: Duration,
    },
    /// The holder stopped renewing or finished: [`Bucket::take_over`] with
    /// `seen` may replace it.
    Stale {
        holder: Holder,
        age: Duration,
        seen: UpdateVersion,
    },
}

impl Bucket {
    pub(super) fn lease_key(&self, digest: &Digest) -> Path {
        self.key(["leases", "fill", digest.hex()])
    }

    fn write_opts(mode: PutMode) -> PutOptions {
        PutOptions::from(mode)
    }

    async fn put_lease(&self, key: &Path, holder: &Holder, mode: PutMode) -> Result<PutResult> {
        let body = serde_json::to_vec(holder).map_err(|e| BucketError::Settings(e.to_string()))?;
        self.bounded(
            "put",
            key,
            self.store
                .put_opts(key, Bytes::from(body).into(), Self::write_opts(mode)),
        )
        .await
    }

    /// Tries to become the one replica that fills `digest`.
    pub async fn claim(&self, digest: &Digest, me: &Holder, ttl: Duration) -> Result<Claim> {
        self.claim_key(self.lease_key(digest), me, ttl).await
    }

    /// [`Bucket::claim`] of the lease at any key (the janitor's is
    /// `leases/janitor`, see `listing.rs`).
    pub(super) async fn claim_key(&self, key: Path, me: &Holder, ttl: Duration) -> Result<Claim> {
        // A lease removed between our create and our read (a janitor) sends
        // us round again; twice more is plenty.
        for _ in 0..3 {
            match self.put_lease(&key, me, PutMode::Create).await {
                Ok(put) => return Ok(Claim::Won(lease(key, put, me.clone()))),
                Err(e) if is_already_there(&e) => {}
                Err(e) => return Err(e),
            }
            let got = match self.bounded("get", &key, self.store.get(&key)).await {
                Ok(got) => got,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            let meta = got.meta.clone();
            let body = self.bounded("get", &key, got.bytes()).await?;
            let seen = UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            };
            let Ok(holder) = serde_json::from_slice::<Holder>(&body) else {
                // Unreadable: nobody can follow it, so it is as good as stale.
                let holder = Holder {
                    replica: String::new(),
                    url: String::new(),
                    nonce: String::new(),
                    done: true,
                };
                return Ok(Claim::Stale {
                    holder,
                    age: Duration::ZERO,
                    seen,
                });
            };
            if holder.nonce == me.nonce && !holder.done {
                return Ok(Claim::Won(Lease {
                    key,
                    version: seen,
                    holder,
                }));
            }
            let now = self.store_now(&me.replica).await?;
            let age = now
                .duration_since(SystemTime::from(meta.last_modified))
                .unwrap_or(Duration::ZERO);
            return Ok(if holder.done || age > ttl + CLOCK_MARGIN {
                Claim::Stale { holder, age, seen }
            } else {
                Claim::Held { holder, age }
            });
        }
        Err(BucketError::LeaseVanished(key.to_string()))
    }

    /// Replaces a stale lease; `None` when someone else was quicker.
    pub async fn take_over(
        &self,
        digest: &Digest,
        me: &Holder,
        seen: UpdateVersion,
    ) -> Result<Option<Lease>> {
        self.take_over_key(self.lease_key(digest), me, seen).await
    }

    /// [`Bucket::take_over`] of the lease at any key.
    pub(super) async fn take_over_key(
        &self,
        key: Path,
        me: &Holder,
        seen: UpdateVersion,
    ) -> Result<Option<Lease>> {
        match self.put_lease(&key, me, PutMode::Update(seen)).await {
            Ok(put) => Ok(Some(lease(key, put, me.clone()))),
            Err(e) if is_lost(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Rewrites the lease so its `Last-Modified` moves on; `false`: it was
    /// taken over (or removed), so this replica no longer holds it.
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool> {
        match self
            .put_lease(
                &lease.key,
                &lease.holder,
                PutMode::Update(lease.version.clone()),
            )
            .await
        {
            Ok(put) => {
                lease.version = version(put);
                Ok(true)
            }
            Err(e) if is_lost(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Marks the lease done, if it is still ours.
    pub async fn release(&self, mut lease: Lease) -> Result<bool> {
        lease.holder.done = true;
        self.renew(&mut lease).await
    }

    /// The store's idea of now: the `Last-Modified` of a key this replica
    /// just wrote. Two requests, paid only when a claim meets a lease.
    pub async fn store_now(&self, replica: &str) -> Result<SystemTime> {
        let key = self.key(["leases", "clock", replica_part(replica)]);
        self.bounded(
            "put",
            &key,
            self.store.put(&key, Bytes::from_static(b"").into()),
        )
        .await?;
        let meta = self.bounded("head", &key, self.store.head(&key)).await?;
        Ok(meta.last_modified.into())
    }
}

/// A replica id as one key segment (an empty one would vanish).
fn replica_part(replica: &str) -> &str {
    if replica.is_empty() {
        "unnamed"
    } else {
        replica
    }
}

fn version(put: PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: put.e_tag,
        version: put.version,
    }
}

fn lease(key: Path, put: PutResult, holder: Holder) -> Lease {
    Lease {
        key,
        version: version(put),
        holder,
    }
}
