//! Which hosts an upstream may make the mirror contact besides itself: the
//! host of a token realm (which gets the upstream's credentials) and
//! redirect targets (which could point the mirror at its own network).
//!
//! A realm must be on the host and port that challenged or in
//! `auth_hosts`: another port of the same host is another service (a
//! listener any local user may have started), so a registry whose token
//! service has a port of its own lists it (`auth_hosts = ["host:5001"]`). A redirect may go to any public address; to a loopback,
//! link-local, private or unspecified one only when the upstream itself is
//! on that kind of address, or the target is in `redirect_hosts`. Names are
//! checked where they are resolved, so a public-looking name that resolves
//! to an internal address is refused too. URLs carrying `user:password@`
//! are refused in both roles.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use crate::config::HostPattern;

/// Why a host was not contacted. Also the error the resolver returns, so
/// that it can be found again in a transport error's causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused to contact {host}: {reason}")]
pub struct Refusal {
    pub host: String,
    pub reason: String,
}

/// The kinds of address that are not the public internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
    Loopback = 1,
    LinkLocal = 2,
    Private = 4,
    Unspecified = 8,
}

impl Internal {
    /// With its article, for messages.
    fn name(self) -> &'static str {
        match self {
            Internal::Loopback => "a loopback",
            Internal::LinkLocal => "a link-local",
            Internal::Private => "a private",
            Internal::Unspecified => "an unspecified",
        }
    }
}

/// The internal kind of an address, None for a public one.
fn internal_kind(ip: IpAddr) -> Option<Internal> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_kind(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            return if v6.is_loopback() {
                Some(Internal::Loopback)
            } else if v6.is_unspecified() {
                Some(Internal::Unspecified)
            } else if first & 0xffc0 == 0xfe80 {
                Some(Internal::LinkLocal)
            } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
                // Unique local, and the deprecated site-local.
                Some(Internal::Private)
            } else {
                None
            };
        }
    };
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some(Internal::Loopback)
    } else if a == 0 {
        // 0.0.0.0/8: Linux connects 0.0.0.0 to the local host.
        Some(Internal::Unspecified)
    } else if v4.is_link_local() {
        Some(Internal::LinkLocal)
    } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
        // RFC 1918, and the carrier-grade NAT range that is private in
        // practice.
        Some(Internal::Private)
    } else {
        None
    }
}

/// The internal kind a URL host names by itself: an address literal, or
/// `localhost`. Other names are judged when resolved.
fn literal_kind(host: &str) -> Option<Internal> {
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return internal_kind(ip);
    }
    let name = bare.trim_end_matches('.');
    (name == "localhost" || name.ends_with(".localhost")).then_some(Internal::Loopback)
}

fn has_userinfo(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// `host[:port]` as the URL has it, for messages (never its userinfo).
fn shown(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// One upstream's rules, shared by its client's resolver and its requests.
pub(super) struct HostPolicy {
    /// The upstream's own host, as `Url::host_str` spells it.
    home: String,
    lists: RwLock<Lists>,
    /// Bits of the internal kinds the upstream itself is on: from an address
    /// in its URL, and learned each time its name is resolved.
    home_kinds: AtomicU8,
    /// The proxies the environment names (`HTTPS_PROXY`...), which the
    /// client resolves to reach them: the operator's choice, often internal.
    /// Behind a proxy, the names it resolves for us are not screened.
    proxies: Vec<String>,
}

/// The hosts of the proxies reqwest takes from the environment.
fn proxy_hosts() -> Vec<String> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .filter_map(|var| std::env::var(var).ok())
    .filter_map(|v| {
        let v = v.trim();
        let with_scheme = if v.contains("://") {
            v.to_owned()
        } else {
            format!("http://{v}")
        };
        Url::parse(&with_scheme).ok()?.host_str().map(str::to_owned)
    })
    .collect()
}

struct Lists {
    auth_hosts: Vec<HostPattern>,
    redirect_hosts: Vec<HostPattern>,
}

impl HostPolicy {
    pub(super) fn new(
        base: &Url,
        auth_hosts: Vec<HostPattern>,
        redirect_hosts: Vec<HostPattern>,
    ) -> HostPolicy {
        let home = base.host_str().unwrap_or_default().to_owned();
        let kinds = literal_kind(&home).map_or(0, |k| k as u8);
        HostPolicy {
            home,
            lists: RwLock::new(Lists {
                auth_hosts,
                redirect_hosts,
            }),
            home_kinds: AtomicU8::new(kinds),
            proxies: proxy_hosts(),
        }
    }

    /// Takes a reloaded config's lists.
    pub(super) fn set_lists(&self, auth_hosts: Vec<HostPattern>, redirect_hosts: Vec<HostPattern>) {
        *self.lists.write() = Lists {
            auth_hosts,
            redirect_hosts,
        };
    }

    fn home_is(&self, kind: Internal) -> bool {
        self.home_kinds.load(Ordering::Relaxed) & kind as u8 != 0
    }

    /// Whether the token realm a challenge from `challenger` names may be
    /// asked for a token (with credentials, when `challenger` is home).
    pub(super) fn check_realm(&self, realm: &Url, challenger: &Url) -> Result<(), Refusal> {
        let host = realm.host_str().unwrap_or_default();
        let refuse = |reason: &str| {
            Err(Refusal {
                host: shown(realm),
                reason: reason.to_owned(),
            })
        };
        if has_userinfo(realm) {
            return refuse("the token realm carries credentials in its URL");
        }
        let port = realm.port_or_known_default();
        if challenger.host_str() == Some(host) && challenger.port_or_known_default() == port {
            return Ok(());
        }
        if self
            .lists
            .read()
            .auth_hosts
            .iter()
            .any(|p| p.matches(host, port))
        {
            return Ok(());
        }
        refuse("the token realm is neither on the upstream's host nor in its auth_hosts")
    }

    /// Whether a redirect to `target` may be followed.
    pub(super) fn check_redirect(&self, target: &Url) -> Result<(), Refusal> {
        let host = target.host_str().unwrap_or_default();
        let refuse = |reason: String| {
            Err(Refusal {
                host: shown(target),
                reason,
            })
        };
        if !matches!(target.scheme(), "http" | "https") {
            return refuse(format!("a redirect to a {} URL", target.scheme()));
        }
        if has_userinfo(target) {
            return refuse("the redirect carries credentials in its URL (user:password@)".into());
        }
        if host == self.home {
            return Ok(());
        }
        let port = target.port_or_known_default();
        if self
            .lists
            .read()
            .redirect_hosts
            .iter()
            .any(|p| p.matches(host, port))
        {
            return Ok(());
        }
        match literal_kind(host) {
            Some(kind) if !self.home_is(kind) => refuse(format!(
                "a redirect to {} address, and the host is not in redirect_hosts",
                kind.name()
            )),
            _ => Ok(()),
        }
    }

    /// The resolved addresses of `name` the client may dial: all of them for
    /// the upstream's own host and listed hosts; otherwise the public ones
    /// and those of a kind the upstream is on itself.
    fn screen(&self, name: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        if name == self.home {
            let kinds = addrs
                .iter()
                .filter_map(|a| internal_kind(a.ip()))
                .fold(0, |bits, k| bits | k as u8);
            self.home_kinds.fetch_or(kinds, Ordering::Relaxed);
            return Ok(addrs);
        }
        let listed = {
            let lists = self.lists.read();
            let matches = |p: &HostPattern| p.matches_name(name);
            lists.auth_hosts.iter().any(matches) || lists.redirect_hosts.iter().any(matches)
        };
        if listed || self.proxies.iter().any(|p| p == name) {
            return Ok(addrs);
        }
        let (kept, refused): (Vec<_>, Vec<_>) = addrs
            .into_iter()
            .partition(|a| internal_kind(a.ip()).is_none_or(|k| self.home_is(k)));
        match refused.first() {
            Some(first) if kept.is_empty() => Err(Refusal {
                host: name.to_owned(),
                reason: format!(
                    "it resolves only to internal addresses ({}), and it is not in redirect_hosts",
                    first.ip()
                ),
            }),
            _ => Ok(kept),
        }
    }
}

/// The upstream client's DNS resolver: the system's, screened by the
/// upstream's [`HostPolicy`].
pub(super) struct ScreeningResolver(pub(super) Arc<HostPolicy>);

impl Resolve for ScreeningResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let name = name.as_str().to_owned();
            // getaddrinfo, on tokio's blocking pool.
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept = policy.screen(&name, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The refusal behind a transport error, when the resolver made one.
pub(super) fn refusal_in(e: &reqwest::Error) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refusal>() {
            return Some(r.clone());
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn patterns(list: &[&str]) -> Vec<HostPattern> {
        list.iter().map(|h| h.parse().unwrap()).collect()
    }

    fn policy(base: &str, auth: &[&str], redirect: &[&str]) -> HostPolicy {
        HostPolicy::new(&url(base), patterns(auth), patterns(redirect))
    }

    #[test]
    fn address_kinds() {
        let kind = |s: &str| internal_kind(s.parse().unwrap());
        assert_eq!(kind("127.0.0.1"), Some(Internal::Loopback));
        assert_eq!(kind("::1"), Some(Internal::Loopback));
        assert_eq!(kind("::ffff:127.0.0.1"), Some(Internal::Loopback));
        assert_eq!(kind("169.254.169.254"), Some(Internal::LinkLocal));
        assert_eq!(kind("fe80::1"), Some(Internal::LinkLocal));
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert_eq!(kind(private), Some(Internal::Private), "{private}");
        }
        assert_eq!(kind("0.0.0.0"), Some(Internal::Unspecified));
        assert_eq!(kind("::"), Some(Internal::Unspecified));
        for public in ["192.0.2.1", "8.8.8.8", "172.32.0.1", "2001:db8::1"] {
            assert_eq!(kind(public), None, "{public}");
        }
        assert_eq!(literal_kind("localhost"), Some(Internal::Loopback));
        assert_eq!(literal_kind("api.localhost."), Some(Internal::Loopback));
        assert_eq!(literal_kind("[::1]"), Some(Internal::Loopback));
        assert_eq!(literal_kind("cdn.example"), None);
    }

    #[test]
    fn a_realm_must_be_on_the_challenging_host_or_in_auth_hosts() {
        let p = policy(
            "https://registry.example",
            &["auth.example", "*.tokens.example"],
            &[],
        );
        let home = url("https://registry.example/v2/app/manifests/1");
        for ok in [
            "https://registry.example/token",
            "https://registry.example:443/token",
            "https://auth.example/token",
            "https://eu.tokens.example/token",
        ] {
            assert_eq!(p.check_realm(&url(ok), &home), Ok(()), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:20999/token",
            "http://registry.example:5001/token",
            "https://tokens.example/token",
            "https://auth.example.evil.example/token",
            "https://bot:pw@registry.example/token",
        ] {
            let e = p.check_realm(&url(bad), &home).unwrap_err();
            assert!(bad.contains(&e.host), "{bad}: {e}");
        }
        // A redirect target that challenges may name a realm on itself.
        let cdn = url("https://cdn.example/blob");
        assert_eq!(
            p.check_realm(&url("https://cdn.example/token"), &cdn),
            Ok(())
        );
        // auth_hosts with a port match only that port.
        let p = policy("https://registry.example", &["auth.example:8443"], &[]);
        assert!(p
            .check_realm(&url("https://auth.example:8443/t"), &home)
            .is_ok());
        assert!(p
            .check_realm(&url("https://auth.example/t"), &home)
            .is_err());
    }

    #[test]
    fn redirects_to_internal_addresses_need_the_upstream_there_or_a_listing() {
        let public = policy(
            "https://registry.example",
            &[],
            &["minio.example:9000", "10.0.0.9"],
        );
        for ok in [
            "https://cdn.example/blob",
            "https://192.0.2.7/blob",
            "http://registry.example:8080/blob",
            "http://10.0.0.9:1234/blob",
        ] {
            assert_eq!(public.check_redirect(&url(ok)), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("http://127.0.0.1:20999/blob", "loopback"),
            ("http://localhost/blob", "loopback"),
            ("http://[::1]/blob", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://10.0.0.8/blob", "private"),
            ("http://0.0.0.0:5000/blob", "unspecified"),
            ("https://user:pw@cdn.example/blob", "credentials"),
            ("file:///etc/passwd", "file"),
        ] {
            let e = public.check_redirect(&url(bad)).unwrap_err();
            assert!(e.reason.contains(says), "{bad}: {e}");
        }
        // An upstream on loopback may redirect to loopback, not elsewhere
        // internal.
        let local = policy("http://127.0.0.1:5000", &[], &[]);
        assert_eq!(
            local.check_redirect(&url("http://127.0.0.1:6000/b")),
            Ok(())
        );
        assert_eq!(
            local.check_redirect(&url("http://localhost:6000/b")),
            Ok(())
        );
        assert!(local.check_redirect(&url("http://0.0.0.0:6000/b")).is_err());
        assert!(local
            .check_redirect(&url("http://169.254.169.254/"))
            .is_err());
        assert!(local
            .check_redirect(&url("http://u:p@127.0.0.1:6000/b"))
            .is_err());
    }

    #[test]
    fn resolved_names_are_screened_and_the_upstreams_own_addresses_learned() {
        let addr = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let p = policy(
            "https://registry.example",
            &["auth.example"],
            &["minio.example"],
        );
        let mixed = vec![addr("10.0.0.1"), addr("192.0.2.1")];
        assert_eq!(p.screen("cdn.example", mixed), Ok(vec![addr("192.0.2.1")]));
        let e = p
            .screen("cdn.example", vec![addr("127.0.0.1")])
            .unwrap_err();
        assert_eq!(e.host, "cdn.example");
        assert!(e.reason.contains("127.0.0.1"), "{e}");
        for listed in ["auth.example", "minio.example"] {
            assert_eq!(
                p.screen(listed, vec![addr("10.0.0.1")]),
                Ok(vec![addr("10.0.0.1")])
            );
        }
        // The upstream's own name resolves to a private address: then so may
        // its redirect targets (on-premises object storage).
        assert!(p.check_redirect(&url("http://10.0.0.2/b")).is_err());
        assert_eq!(
            p.screen("registry.example", vec![addr("10.0.0.1")])
                .map(|a| a.len()),
            Ok(1)
        );
        assert_eq!(p.check_redirect(&url("http://10.0.0.2/b")), Ok(()));
        assert_eq!(
            p.screen("s3.example", vec![addr("10.0.0.3")])
                .map(|a| a.len()),
            Ok(1)
        );
        assert!(
            p.screen("s3.example", vec![addr("127.0.0.1")]).is_err(),
            "not loopback"
        );
        // A proxy from the environment is the operator's, wherever it is.
        let mut p = policy("https://registry.example", &[], &[]);
        p.proxies = vec!["proxy.internal".into()];
        assert!(p.screen("proxy.internal", vec![addr("10.0.0.1")]).is_ok());
        assert!(p.screen("other.internal", vec![addr("10.0.0.1")]).is_err());
    }

    #[tokio::test]
    async fn a_refusal_by_the_resolver_is_found_in_the_transport_error() {
        let p = Arc::new(policy("https://registry.example", &[], &[]));
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(ScreeningResolver(p)))
            .no_proxy()
            .build()
            .unwrap();
        let e = http.get("http://localhost:9/").send().await.unwrap_err();
        let refusal = refusal_in(&e).expect("the refusal is among the causes");
        assert_eq!(refusal.host, "localhost");
    }
}
