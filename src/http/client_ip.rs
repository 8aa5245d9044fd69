//! Which IP address a request comes from.
//!
//! The socket peer, unless that peer is a trusted proxy: then `X-Forwarded-For`
//! is read from the right, skipping trusted proxies, and the first address not
//! trusted is the client. Reading from the left would let any client choose
//! its own address by sending the header itself.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A garbled entry: stop at the last address we could vouch for.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &headers("1.2.3.4"), &[]), peer);
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let ip = client_ip(
            peer,
            &headers("6.6.6.6, 198.51.100.7, 10.0.0.1"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_garbled_hop_stops_the_walk() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let ip = client_ip(
            peer,
            &headers("198.51.100.7, not-an-ip"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, peer);
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(peer, &HeaderMap::new(), &nets(&["10.0.0.0/8"])),
            peer
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn ip() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
            ]
        }

        proptest! {
            #[test]
            fn an_untrusted_peer_is_the_client_whatever_the_header_says(
                peer in ip(),
                xff in "[ -~]{0,200}",
            ) {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    h.insert("x-forwarded-for", v);
                }
                let trusted = nets(&["10.0.0.0/8"]);
                let peer = if trusted.iter().any(|n| n.contains(&peer.to_canonical())) {
                    IpAddr::from([192, 0, 2, 1])
                } else {
                    peer
                };
                prop_assert_eq!(client_ip(peer, &h, &trusted), peer.to_canonical());
            }

            #[test]
            fn behind_a_proxy_the_client_is_the_peer_or_a_hop_the_header_names(
                hops in proptest::collection::vec(ip(), 0..6),
                junk in "[ -~]{0,40}",
            ) {
                let peer: IpAddr = "10.0.0.1".parse().unwrap();
                let mut listed: Vec<String> = hops.iter().map(ToString::to_string).collect();
                listed.insert(0, junk);
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&listed.join(",")) {
                    h.insert("x-forwarded-for", v);
                }
                let client = client_ip(peer, &h, &nets(&["10.0.0.0/8"]));
                prop_assert!(
                    client == peer || hops.iter().any(|hop| hop.to_canonical() == client)
                        || listed[0].trim().parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical() == client),
                    "{} is neither the peer nor a listed hop", client
                );
            }
        }
    }
}
