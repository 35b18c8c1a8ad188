//! Who the client is: the socket peer, or what trusted proxies say in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For` / `X-Forwarded-Proto`.
//!
//! Headers are believed only hop by hop from the right: starting at the socket peer, each address is
//! accepted as "the next hop closer to the client" only while the current hop is a trusted proxy. A
//! client that sends its own `X-Forwarded-For` can only add entries to the left of what our proxies
//! append, and those are never reached while a trusted proxy sits in between; a client that talks to
//! us directly is not trusted, so its headers are ignored entirely.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client as far as the trusted chain can vouch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedInfo {
    /// The client's address.
    pub client_ip: IpAddr,
    /// Whether the nearest trusted proxy says the client used https (`None` when no trusted proxy
    /// said anything).
    pub forwarded_https: Option<bool>,
}

/// Resolves the client address from the socket peer and the request headers.
pub fn resolve_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ForwardedInfo {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer) {
        return ForwardedInfo { client_ip: peer, forwarded_https: None };
    }

    let (hops, proto) = if headers.contains_key(http::header::FORWARDED) {
        forwarded_header(headers)
    } else {
        x_forwarded(headers)
    };

    let mut client = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        match hop {
            Some(ip) => client = canonical(*ip),
            // An entry we cannot parse ("unknown", an obfuscated name, garbage) ends the chain: we
            // cannot know who sits behind it, so the last address we could vouch for stands.
            None => break,
        }
    }
    let forwarded_https = proto.map(|p| p.eq_ignore_ascii_case("https"));
    ForwardedInfo { client_ip: client, forwarded_https }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as seen on dual-stack sockets) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` chain and the last `proto=` from every `Forwarded` header, in order.
fn forwarded_header(headers: &HeaderMap) -> (Vec<Option<IpAddr>>, Option<String>) {
    let mut hops = Vec::new();
    let mut proto = None;
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            let mut hop = None;
            for pair in element.split(';') {
                let Some((key, val)) = pair.split_once('=') else { continue };
                let val = val.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "for" => hop = Some(parse_node(val)),
                    "proto" => proto = Some(val.to_owned()),
                    _ => {}
                }
            }
            hops.push(hop.flatten());
        }
    }
    (hops, proto)
}

/// The `X-Forwarded-For` chain and the last `X-Forwarded-Proto`.
fn x_forwarded(headers: &HeaderMap) -> (Vec<Option<IpAddr>>, Option<String>) {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(|v| parse_node(v.trim()))),
            Err(_) => hops.push(None),
        }
    }
    let proto = headers
        .get_all("x-forwarded-proto")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .map(|v| v.trim().to_owned());
    (hops, proto)
}

/// A node: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or a bare IPv6 address.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    text.rsplit_once(':').and_then(|(ip, port)| {
        (port.bytes().all(|b| b.is_ascii_digit()) && !ip.contains(':')).then(|| ip.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address_or_scheme() {
        let h = headers(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=8.8.8.8;proto=https"),
        ]);
        let info = resolve_client(ip("203.0.113.5"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info, ForwardedInfo { client_ip: ip("203.0.113.5"), forwarded_https: None });
    }

    #[test]
    fn a_trusted_proxy_is_believed_about_the_client() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info, ForwardedInfo { client_ip: ip("198.51.100.7"), forwarded_https: Some(true) });
    }

    #[test]
    fn entries_a_client_prepends_are_not_reached_past_the_first_untrusted_hop() {
        // The client sent "X-Forwarded-For: 1.1.1.1"; our proxy appended the client's real address.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info.client_ip, ip("198.51.100.7"));
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_to_the_client() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.9"), ("x-forwarded-for", "10.1.1.1")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info.client_ip, ip("198.51.100.7"));
    }

    #[test]
    fn the_rfc_7239_header_is_preferred_and_understands_ports_and_ipv6() {
        let h = headers(&[
            ("forwarded", r#"for="[2001:db8::17]:4711";proto=https, for=10.0.0.3:80"#),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        let info = resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info, ForwardedInfo { client_ip: ip("2001:db8::17"), forwarded_https: Some(true) });
    }

    #[test]
    fn an_unparseable_hop_stops_the_walk_at_the_last_known_address() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info.client_ip, ip("10.0.0.2"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"])).client_ip, ip("10.0.0.2"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxy_ranges() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let info = resolve_client(ip("::ffff:10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(info.client_ip, ip("198.51.100.7"));
    }

    proptest! {
        #[test]
        fn without_trusted_proxies_the_peer_is_always_the_client(xff in "\\PC{0,100}", fwd in "\\PC{0,100}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = xff.parse() { h.insert("x-forwarded-for", v); }
            if let Ok(v) = fwd.parse() { h.insert("forwarded", v); }
            let info = resolve_client(ip("203.0.113.9"), &h, &[]);
            prop_assert_eq!(info.client_ip, ip("203.0.113.9"));
        }

        #[test]
        fn the_resolved_client_is_the_peer_or_an_address_from_the_headers(xff in "[0-9a-f.:, \\[\\]]{0,60}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = xff.parse() { h.insert("x-forwarded-for", v); }
            let info = resolve_client(ip("10.0.0.2"), &h, &nets(&["10.0.0.0/8"]));
            let listed: Vec<IpAddr> = xff.split(',').filter_map(|s| parse_node(s.trim())).map(canonical).collect();
            prop_assert!(info.client_ip == ip("10.0.0.2") || listed.contains(&info.client_ip));
        }
    }
}
