//! Client IP resolution behind proxies, and CIDR allow-lists.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is a trusted proxy
//! (`TRUSTED_PROXIES`); then the client is the rightmost hop that is not
//! itself trusted, because everything left of it was written by the client.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// An IP network such as `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `1.2.3.4`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// How many addresses the network holds, as the bits left free: 0 for
    /// a single address, 32 for all of IPv4.
    pub fn host_bits(&self) -> u8 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        width - self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
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

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client address: the peer, or the rightmost untrusted
/// `X-Forwarded-For` hop when the peer is a trusted proxy.
///
/// Hops are read from the right, where our own proxies wrote them. A hop
/// that cannot be parsed (`unknown`, garbage) ends the walk at the peer
/// rather than being skipped: skipping it would let the walk continue into
/// hops the client wrote itself, and a spoofed address would then pick the
/// rate-limit bucket and pass IP allow-lists.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return ip,
            None => return peer,
        }
    }
    peer
}

/// One `X-Forwarded-For` hop: `1.2.3.4`, `1.2.3.4:5678`, `::1` or
/// `[::1]:5678` (some proxies append the client's port).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_forwarded_for() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(IpNet::parse("1.2.3.4/33").is_none());
        let trusted = [IpNet::parse("127.0.0.1").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip("127.0.0.1".parse().unwrap(), &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("9.9.9.9".parse().unwrap(), &h, &trusted),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_unparsable_hop_stops_the_walk_instead_of_reaching_client_written_hops() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let trusted = [IpNet::parse("127.0.0.1").unwrap()];
        let forwarded = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", value.parse().unwrap());
            client_ip(proxy, &h, &trusted)
        };
        // The client wrote "6.6.6.6"; our proxy appended what it could not
        // resolve. The spoofed hop must not be believed.
        assert_eq!(forwarded("6.6.6.6, unknown"), proxy);
        assert_eq!(
            forwarded("6.6.6.6, 1.2.3.4:5678"),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            forwarded("6.6.6.6, [2001:db8::1]:443"),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            forwarded("6.6.6.6, 1.2.3.4, 127.0.0.1"),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Several header lines: the last line holds the nearest hops.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
