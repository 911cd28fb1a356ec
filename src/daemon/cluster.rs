//! `[cache] backend = "s3"`: the shared tier built from `[cache.s3]` and
//! `[cluster]` — the bucket client (with its secret from a file or the
//! `AWS_*` environment), the startup probe of conditional writes, and the
//! peer client and token. Built once at startup; a reload does not change
//! it (a new bucket is a new deployment).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cache::shared::{PeerClient, SharedTier, TierSettings};
use crate::cache::storage::bucket::{Bucket, ConditionalWrites, S3Settings};
use crate::config::{Backend, ConditionalWritesMode, Config, Coordination};
use crate::metrics::Metrics;
use crate::policy::AdminToken;

/// What the daemon runs the shared tier with.
pub struct Cluster {
    pub tier: Arc<SharedTier>,
    pub peer_listen: SocketAddr,
    /// What the peer endpoint asks of other replicas.
    pub peer_token: Option<AdminToken>,
}

/// `None` for `backend = "fs"`.
pub async fn build(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Option<Cluster>> {
    if config.cache.backend != Backend::S3 {
        return Ok(None);
    }
    let s3 = &config.cache.s3;
    let cluster = &config.cluster;
    let access_key_id = non_empty(s3.access_key_id.clone())
        .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok().and_then(non_empty))
        .context("cache.s3.access_key_id is empty and AWS_ACCESS_KEY_ID is not set")?;
    let secret_access_key = match &s3.secret_access_key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cache.s3.secret_access_key_file {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
    };
    if secret_access_key.is_empty() {
        bail!("no S3 secret key: set cache.s3.secret_access_key_file or AWS_SECRET_ACCESS_KEY");
    }
    let settings = S3Settings {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        prefix: s3.prefix.clone(),
        path_style: s3.path_style,
        allow_http: s3.allow_http,
        access_key_id,
        secret_access_key,
        request_timeout: s3.request_timeout.get(),
    };
    let bucket = Bucket::connect(&settings)
        .context("[cache.s3]")?
        .with_metrics(metrics.shared.clone());
    let replica_id = non_empty(cluster.replica_id.clone()).unwrap_or_else(host_name);
    let coordination = probe(
        &bucket,
        s3.conditional_writes,
        cluster.coordination,
        &replica_id,
    )
    .await?;
    let token = match &cluster.peer_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cluster.peer_token_file {}", path.display()))?
                .trim()
                .to_owned(),
        )
        .filter(|t| !t.is_empty())
        .map(Some)
        .with_context(|| format!("cluster.peer_token_file {} holds no token", path.display()))?,
        None => None,
    };
    let peer_token = token.as_deref().and_then(AdminToken::new);
    let peer = PeerClient::new(
        token,
        config.connect_timeout.get(),
        // The holder may itself be waiting for its upstream's headers.
        config.header_timeout.get() + Duration::from_secs(10),
        Some(metrics.shared.clone()),
    )
    .context("building the peer client")?;
    let tier = SharedTier::new(
        bucket,
        TierSettings {
            replica_id: replica_id.clone(),
            advertise_url: cluster.advertise_url.clone(),
            coordination,
            lease_ttl: cluster.lease_ttl.get(),
            on_holder_unreachable: cluster.on_holder_unreachable,
            part_size: s3.part_size.0,
            peer_networks: cluster.peer_networks.clone(),
            // Checked by the config's validation.
            peer_hosts: cluster
                .peer_hosts
                .iter()
                .filter_map(|h| h.parse().ok())
                .collect(),
        },
        peer,
        metrics.clone(),
    );
    tracing::info!(
        replica = %replica_id,
        bucket = %s3.bucket,
        prefix = %s3.prefix,
        coordination = ?coordination,
        peer_listen = %cluster.peer_listen,
        advertise_url = %cluster.advertise_url,
        "shared tier on"
    );
    Ok(Some(Cluster {
        tier: Arc::new(tier),
        peer_listen: cluster.peer_listen,
        peer_token,
    }))
}

/// The coordination the store allows: a store that ignores conditional
/// writes cannot hold a lease, so replicas then fill on their own.
async fn probe(
    bucket: &Bucket,
    mode: ConditionalWritesMode,
    wanted: Coordination,
    replica_id: &str,
) -> anyhow::Result<Coordination> {
    if mode == ConditionalWritesMode::Off || wanted == Coordination::None {
        return Ok(wanted);
    }
    let nonce = format!("{replica_id}-{}", std::process::id());
    match (bucket.probe_conditional_writes(&nonce).await, mode) {
        (Ok(ConditionalWrites::Honoured), _) => Ok(wanted),
        (Ok(ConditionalWrites::Ignored(why)), ConditionalWritesMode::Require) => bail!(
            "the object store ignores conditional writes ({why}), and cache.s3.conditional_writes = \"require\": not starting"
        ),
        (Ok(ConditionalWrites::Ignored(why)), _) => {
            tracing::error!(why, "the object store ignores conditional writes: replicas cannot share fills and run with coordination = \"none\" (duplicate upstream fetches are possible; nothing unverified is served). Set cache.s3.conditional_writes = \"require\" to refuse to start instead");
            Ok(Coordination::None)
        }
        (Err(e), ConditionalWritesMode::Require) => Err(anyhow::Error::new(e).context(
            "probing the object store's conditional writes (cache.s3.conditional_writes = \"require\")",
        )),
        (Err(e), _) => {
            tracing::warn!(error = %e, "the object store did not answer the conditional-write probe; assuming it honours them");
            Ok(wanted)
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    let s = s.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// The kernel's host name (a pod's name in Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(non_empty)
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .unwrap_or_else(|| "regcache".into())
}
