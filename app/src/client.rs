//! Who the client is: the address rate limits key on, WAF `blockedClients` match and
//! read-your-writes remembers.
//!
//! By default the TCP peer. `X-Forwarded-For` is believed only from a peer trusted to have
//! written it ([`ForwardedTrust`]):
//! - the edge (phase 3 up): a connection that presented, in its TLS handshake, a client
//!   certificate signed by the CA the app trusts (`--tls-ca`) whose subject common name is
//!   `--edge-client-name`. Open-source Varnish cannot present one; the TLS sidecar in its pod
//!   does, and the VCL sets the header from the connection (see docs/edge.md);
//! - a trusted proxy (phase 2's ingress): a peer address inside `--trusted-proxies`.
//!
//! From such a peer the client is the **last** address of the header, the one that peer wrote;
//! whatever stands left of it came from the client and is ignored. A last entry that is not an
//! IP address falls back to the peer. Only one hop is trusted: a client inside a trusted
//! network (a pod calling through the ingress) cannot send its own entries one hop further.
//!
//! The rate-limit key groups IPv6 clients by /64 (what one host usually gets), so rotating
//! through a prefix does not mint fresh buckets; IPv4-mapped IPv6 addresses count as IPv4.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::http::request::Parts;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;

/// What the app knows of a connection: the peer address and, over TLS, the subject common
/// name of the client certificate it presented (already verified against the CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub certificate: Option<Arc<str>>,
}

impl Peer {
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            certificate: None,
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer::plain(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        Peer {
            addr: *stream.remote_addr(),
            certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf)),
        }
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<Arc<str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr = canonical(
            addr.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP network (a.b.c.d/n or an IPv6 CIDR)"))?,
        );
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Which peers may name the client in `X-Forwarded-For`. The default trusts none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedTrust {
    /// Subject common name of the edge's client certificate.
    pub edge_client_name: Option<String>,
    /// Networks of the proxies in front of the app.
    pub proxies: Vec<IpNet>,
}

impl ForwardedTrust {
    /// Whether `peer` wrote the `X-Forwarded-For` it sends.
    pub fn trusts(&self, peer: &Peer) -> bool {
        let edge = match (&self.edge_client_name, &peer.certificate) {
            (Some(want), Some(got)) => want.as_str() == &**got,
            _ => false,
        };
        edge || self.proxies.iter().any(|n| n.contains(peer.addr.ip()))
    }

    /// The client's address: the peer's, or the last `X-Forwarded-For` entry from a trusted
    /// peer (every header line counts, in order, as one comma-separated list).
    pub fn client_ip(&self, peer: &Peer, headers: &axum::http::HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.addr.ip());
        if !self.trusts(peer) {
            return peer_ip;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .unwrap_or(peer_ip)
    }
}

/// Who the client is. An explicit `x-ladder-client` header (opaque id) takes precedence for
/// read-your-writes only; it never changes the rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The client's IP address, canonical text form.
    pub addr: String,
    pub session: Option<String>,
    rate: String,
}

impl ClientKey {
    pub fn new(ip: IpAddr, session: Option<String>) -> ClientKey {
        let ip = canonical(ip);
        let rate = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let net = Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64));
                format!("{net}/64")
            }
        };
        ClientKey {
            addr: ip.to_string(),
            session,
            rate,
        }
    }

    /// The key of the read-your-writes table.
    pub fn ryw_key(&self) -> &str {
        self.session.as_deref().unwrap_or(&self.addr)
    }

    /// The rate-limit bucket: the address, or an IPv6 address' /64.
    pub fn rate_key(&self) -> &str {
        &self.rate
    }
}

/// The client of a request. A request without connection info (an in-process `oneshot`)
/// is the unspecified address.
pub fn client_key(parts: &Parts, trust: &ForwardedTrust) -> ClientKey {
    let ip = match parts.extensions.get::<ConnectInfo<Peer>>() {
        Some(ConnectInfo(peer)) => trust.client_ip(peer, &parts.headers),
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let session = parts
        .headers
        .get("x-ladder-client")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_owned);
    ClientKey::new(ip, session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn peer(addr: &str, cert: Option<&str>) -> Peer {
        Peer {
            addr: SocketAddr::new(addr.parse().expect("ip"), 40000),
            certificate: cert.map(Arc::from),
        }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.244.0.0/16".parse().expect("cidr");
        assert!(n.contains(ip("10.244.3.4")));
        assert!(n.contains(ip("::ffff:10.244.3.4")), "IPv4-mapped counts");
        assert!(!n.contains(ip("10.245.0.1")));
        assert!(!n.contains(ip("fd00::1")));
        let one: IpNet = "127.0.0.1".parse().expect("bare address");
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(!one.contains(ip("127.0.0.2")));
        let all: IpNet = "0.0.0.0/0".parse().expect("everything");
        assert!(all.contains(ip("203.0.113.9")));
        let v6: IpNet = "fd00:1::/32".parse().expect("v6");
        assert!(v6.contains(ip("fd00:1:ffff::1")));
        assert!(!v6.contains(ip("fd00:2::1")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x/8", "fd00::/129", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    /// Spoofed headers from an untrusted peer change nothing; a trusted peer's last entry is
    /// the client, never an entry the client wrote before it.
    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let none = ForwardedTrust::default();
        let proxies = ForwardedTrust {
            edge_client_name: None,
            proxies: vec!["10.244.0.0/16".parse().expect("cidr")],
        };
        let edge = ForwardedTrust {
            edge_client_name: Some("ladder-edge".into()),
            proxies: vec![],
        };
        let spoof = xff(&["6.6.6.6"]);
        let appended = xff(&["6.6.6.6, 7.7.7.7", "198.51.100.7"]);

        // Untrusted: the peer, whatever the header says.
        assert_eq!(
            none.client_ip(&peer("203.0.113.9", None), &spoof),
            ip("203.0.113.9")
        );
        assert_eq!(
            proxies.client_ip(&peer("203.0.113.9", None), &spoof),
            ip("203.0.113.9")
        );
        assert_eq!(
            edge.client_ip(&peer("10.244.1.1", Some("ladder-redis")), &spoof),
            ip("10.244.1.1"),
            "another certificate of the CA is not the edge"
        );
        assert_eq!(
            edge.client_ip(&peer("10.244.1.1", None), &spoof),
            ip("10.244.1.1")
        );
        assert_eq!(
            proxies.client_ip(&peer("10.244.1.1", Some("ladder-edge")), &spoof),
            ip("6.6.6.6"),
            "a trusted proxy needs no certificate"
        );

        // Trusted: the last entry of the last header line.
        assert_eq!(
            proxies.client_ip(&peer("10.244.0.5", None), &appended),
            ip("198.51.100.7")
        );
        assert_eq!(
            edge.client_ip(&peer("10.9.9.9", Some("ladder-edge")), &appended),
            ip("198.51.100.7")
        );
        assert_eq!(
            edge.client_ip(
                &peer("10.9.9.9", Some("ladder-edge")),
                &xff(&["2001:db8::1"])
            ),
            ip("2001:db8::1")
        );
        // Junk in the trusted hop, or no header: the peer.
        for junk in [xff(&["6.6.6.6, not-an-ip"]), xff(&[""]), HeaderMap::new()] {
            assert_eq!(
                proxies.client_ip(&peer("10.244.0.5", None), &junk),
                ip("10.244.0.5")
            );
        }
    }

    #[test]
    fn rate_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a = ClientKey::new(ip("2001:db8:1:2:aaaa::1"), None);
        let b = ClientKey::new(ip("2001:db8:1:2:bbbb::9"), None);
        let c = ClientKey::new(ip("2001:db8:1:3::1"), None);
        assert_eq!(a.rate_key(), "2001:db8:1:2::/64");
        assert_eq!(a.rate_key(), b.rate_key());
        assert_ne!(a.rate_key(), c.rate_key());
        assert_eq!(a.addr, "2001:db8:1:2:aaaa::1");
        let mapped = ClientKey::new(ip("::ffff:192.0.2.1"), Some("s".into()));
        assert_eq!(
            (mapped.addr.as_str(), mapped.rate_key()),
            ("192.0.2.1", "192.0.2.1")
        );
        assert_eq!(mapped.ryw_key(), "s");
    }
}
