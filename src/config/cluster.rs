//! The shared tier: `[cache] backend`, `[cache.s3]` (where the bucket is)
//! and `[cluster]` (how replicas find and trust each other). With the
//! default `backend = "fs"` none of it is read: a single replica needs
//! nothing new.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// Where verified content is shared, besides the local disk.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The local disk only.
    #[default]
    Fs,
    /// The local disk, and an S3-compatible bucket shared by replicas.
    S3,
}

/// Whether the store must honour `If-None-Match`/`If-Match` writes, which
/// the cross-replica fill lease depends on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConditionalWritesMode {
    /// Checked at startup; an engine that ignores them runs uncoordinated.
    #[default]
    Probe,
    /// Checked at startup; an engine that ignores them stops the start.
    Require,
    /// Not checked: trusted to honour them.
    Off,
}

/// `[cache.s3]`: the bucket of the shared tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http(s)://host:port` of a self-hosted engine; unset means AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Every key starts with it, so deployments can share a bucket.
    pub prefix: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key`.
    pub path_style: bool,
    /// A plain-HTTP endpoint is refused unless this is set.
    pub allow_http: bool,
    /// Static keys; empty means `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: String,
    /// A file holding the secret key (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// Large blobs go up as multipart uploads of parts this large.
    pub part_size: ByteSize,
    /// Bounds every store call as a whole, retries included.
    pub request_timeout: HumanDuration,
    pub conditional_writes: ConditionalWritesMode,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: "regcache".into(),
            prefix: String::new(),
            path_style: true,
            allow_http: false,
            access_key_id: String::new(),
            secret_access_key_file: None,
            part_size: ByteSize(16 << 20),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            conditional_writes: ConditionalWritesMode::Probe,
        }
    }
}

/// How replicas share one fill.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Coordination {
    /// A lease object per fill; the others stream from its holder.
    #[default]
    S3Lease,
    /// Every replica fills on its own (still verified, still shared
    /// through the bucket): duplicate upstream fetches are possible.
    None,
}

/// What a follower does when the lease holder's peer endpoint cannot be
/// reached.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnHolderUnreachable {
    /// Fetch from the upstream itself, verified as always.
    #[default]
    Fetch,
    /// Wait for the blob to land in the bucket (or the lease to go stale).
    Wait,
}

/// `[cluster]`: this replica among the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This replica's name in leases and logs; empty means the host name.
    pub replica_id: String,
    /// Where the peer endpoint listens.
    pub peer_listen: SocketAddr,
    /// How the other replicas reach `peer_listen`.
    pub advertise_url: String,
    /// A file with the bearer token every replica presents and expects on
    /// the peer endpoint; unset means no token (a trusted network only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_token_file: Option<PathBuf>,
    pub coordination: Coordination,
    /// A lease not renewed for this long (by the store's clock) is stale.
    pub lease_ttl: HumanDuration,
    pub on_holder_unreachable: OnHolderUnreachable,
    /// Where a lease may send this replica to follow a fill: a holder's
    /// `advertise_url` must be an IP address in one of these networks, or
    /// a name in `peer_hosts`. Anything else a lease names is not dialled
    /// (the bucket's writers are trusted with content hashes, not with
    /// where this replica connects). Default: loopback and private ranges.
    pub peer_networks: Vec<ipnet::IpNet>,
    /// Host names (`name`, `name:port`, `*.domain`) a lease may name.
    pub peer_hosts: Vec<String>,
}

/// Loopback, RFC 1918, carrier-grade NAT (some pod networks), and IPv6
/// unique-local and link-local.
fn default_peer_networks() -> Vec<ipnet::IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replica_id: String::new(),
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 5002)),
            advertise_url: "http://127.0.0.1:5002".into(),
            peer_token_file: None,
            coordination: Coordination::S3Lease,
            lease_ttl: HumanDuration(Duration::from_secs(30)),
            on_holder_unreachable: OnHolderUnreachable::Fetch,
            peer_networks: default_peer_networks(),
            peer_hosts: Vec::new(),
        }
    }
}

impl S3Config {
    /// What the config's own validation can tell; `Err((key, message))`.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: &str| Err((format!("cache.s3.{key}"), message.into()));
        if self.bucket.trim().is_empty() {
            return invalid("bucket", "must not be empty");
        }
        if let Some(endpoint) = &self.endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if u.scheme() == "http" && !self.allow_http => {
                    return invalid(
                        "endpoint",
                        "is plain http: set allow_http = true to allow it",
                    )
                }
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => return invalid("endpoint", "must be an http:// or https:// URL with a host"),
            }
        }
        // S3's multipart minimum is 5 MiB a part.
        if self.part_size.0 < (5 << 20) || self.part_size.0 > (5 << 30) {
            return invalid("part_size", "must be between 5MiB and 5GiB");
        }
        if self.request_timeout.0.is_zero() {
            return invalid("request_timeout", "must be greater than zero");
        }
        Ok(())
    }
}

impl ClusterConfig {
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        match url::Url::parse(&self.advertise_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err((
                    "cluster.advertise_url".into(),
                    "must be an http:// or https:// URL with a host".into(),
                ))
            }
        }
        if let Some(e) = self
            .peer_hosts
            .iter()
            .find_map(|h| h.parse::<super::HostPattern>().err())
        {
            return Err(("cluster.peer_hosts".into(), e.to_string()));
        }
        if self.lease_ttl.0 < Duration::from_secs(3) {
            return Err((
                "cluster.lease_ttl".into(),
                "must be at least 3s (the store's clock has one-second steps)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Format;

    use crate::config::{
        Backend, ByteSize, ClusterConfig, ConditionalWritesMode, Config, Coordination,
        OnHolderUnreachable,
    };

    #[test]
    fn the_issue_s_keys_parse_and_fs_stays_the_default() {
        assert_eq!(Config::default().cache.backend, Backend::Fs);
        let c: Config =
            figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
                .merge(figment::providers::Toml::string(
                    r#"
            [cache]
            backend = "s3"
            [cache.s3]
            endpoint = "http://seaweedfs:8333"
            bucket = "mirror"
            prefix = "site-a"
            allow_http = true
            access_key_id = "id"
            secret_access_key_file = "/run/secrets/s3"
            part_size = "32MiB"
            request_timeout = "10s"
            conditional_writes = "require"
            [cluster]
            replica_id = "r1"
            peer_listen = "0.0.0.0:5002"
            advertise_url = "http://10.0.0.7:5002"
            peer_token_file = "/run/secrets/peer"
            coordination = "none"
            lease_ttl = "45s"
            on_holder_unreachable = "wait"
            "#,
                ))
                .extract()
                .unwrap();
        assert_eq!(c.cache.backend, Backend::S3);
        assert_eq!(c.cache.s3.bucket, "mirror");
        assert_eq!(c.cache.s3.part_size, ByteSize(32 << 20));
        assert_eq!(
            c.cache.s3.conditional_writes,
            ConditionalWritesMode::Require
        );
        assert_eq!(c.cluster.coordination, Coordination::None);
        assert_eq!(c.cluster.on_holder_unreachable, OnHolderUnreachable::Wait);
        assert_eq!(c.cluster.lease_ttl.get().as_secs(), 45);
        c.validate().unwrap();
        assert_eq!(ClusterConfig::default().coordination, Coordination::S3Lease);
    }

    #[test]
    fn a_bad_shared_tier_setting_names_its_key() {
        let check = |edit: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            c.cache.backend = Backend::S3;
            edit(&mut c);
            c.validate().map_err(|e| e.to_string())
        };
        assert!(check(&|_| {}).is_ok());
        let plain = check(&|c| c.cache.s3.endpoint = Some("http://s3.example:8333".into()));
        assert!(plain.unwrap_err().contains("cache.s3.endpoint"));
        let small = check(&|c| c.cache.s3.part_size = ByteSize(1 << 20));
        assert!(small.unwrap_err().contains("cache.s3.part_size"));
        let ttl = check(&|c| {
            c.cluster.lease_ttl = crate::config::HumanDuration(std::time::Duration::from_secs(1))
        });
        assert!(ttl.unwrap_err().contains("cluster.lease_ttl"));
        let url = check(&|c| c.cluster.advertise_url = "peer:5002".into());
        assert!(url.unwrap_err().contains("cluster.advertise_url"));
        // None of it is read while the backend is the local disk.
        let mut c = Config::default();
        c.cache.s3.part_size = ByteSize(1);
        assert!(c.validate().is_ok());
    }
}
