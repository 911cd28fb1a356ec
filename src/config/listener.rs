//! How the listeners treat connections: TLS, per-connection limits, the
//! audit log and the log format.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::HumanDuration;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open client connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one client address (the TCP peer), so one
    /// host cannot take every slot; more are closed at once.
    pub max_connections_per_client: usize,
    /// A client must send its request headers within this time (slowloris);
    /// a new connection must complete its first request head within it
    /// from accept.
    pub header_read_timeout: HumanDuration,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_connections_per_client: 256,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            max_header_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// "stdout", or a file path to append to; unset turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A listen address as distribution and zot accept it: `127.0.0.1:5000`,
/// `[::1]:5000`, `:5000` (every interface) or `localhost:5000` (a name,
/// resolved once at startup, IPv4 preferred).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: &str| {
        format!(
            "{s:?} is not a listen address ({why}): write 127.0.0.1:5000, :5000 or localhost:5000"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("{host}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| bad(&format!("{host} resolves to no address")))
}

pub(super) fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_listen(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// [`listen_address`] for an optional listener (`metrics_listen`).
pub(super) fn optional_listen_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(s) => parse_listen(&s).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_written_as_other_registries_accept_them() {
        let p = |s: &str| parse_listen(s).map(|a| a.to_string());
        assert_eq!(p("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(p("[::1]:5000").unwrap(), "[::1]:5000");
        assert_eq!(p(":5000").unwrap(), "0.0.0.0:5000");
        assert_eq!(p("localhost:5000").unwrap(), "127.0.0.1:5000");
        for bad in ["5000", "localhost", ":port", "host:99999"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(":5000"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_optional_listener_takes_the_same_forms() {
        #[derive(Deserialize)]
        struct L {
            #[serde(default, deserialize_with = "optional_listen_address")]
            at: Option<SocketAddr>,
        }
        let at = |t: &str| toml::from_str::<L>(t).map(|l| l.at.map(|a| a.to_string()));
        assert_eq!(
            at("at = \":9091\"").unwrap().as_deref(),
            Some("0.0.0.0:9091")
        );
        assert_eq!(at("").unwrap(), None);
        assert!(at("at = \"9091\"").is_err());
    }
}
