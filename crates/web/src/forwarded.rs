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

/// Which header the trusted proxies maintain. Only that one is read: proxies pass the other one
/// through as the client sent it, so reading both would let a client write its own address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` plus `X-Forwarded-Proto` (nginx, HAProxy, AWS ALB, Caddy, Traefik).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, with `proto=` taken from the same element as the client's `for=`.
    Forwarded,
}

/// The client as far as the trusted chain can vouch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedInfo {
    /// The client's address.
    pub client_ip: IpAddr,
    /// Whether the trusted proxy that saw the client says it used https (`None` when no trusted
    /// proxy said anything).
    pub forwarded_https: Option<bool>,
}

/// One entry of the forwarding chain: the address a proxy recorded and, for `Forwarded`, the
/// scheme it recorded in the same element.
#[derive(Debug, Clone, Copy)]
struct Hop {
    ip: Option<IpAddr>,
    https: Option<bool>,
}

/// Resolves the client address from the socket peer and the request headers.
pub fn resolve_client(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> ForwardedInfo {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer) {
        return ForwardedInfo { client_ip: peer, forwarded_https: None };
    }

    let (hops, mut https) = match header {
        ForwardedHeader::XForwardedFor => (x_forwarded_for(headers), x_forwarded_proto(headers)),
        ForwardedHeader::Forwarded => (forwarded(headers), None),
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        match hop.ip {
            Some(ip) => {
                client = canonical(ip);
                if header == ForwardedHeader::Forwarded {
                    // The scheme counts only from the element the trusted proxy wrote for this
                    // hop, never from one further left that the client may have written.
                    https = hop.https;
                }
            }
            // An entry we cannot parse ("unknown", an obfuscated name, garbage) written by a
            // trusted proxy ends the chain: the last address we could vouch for stands.
            None => break,
        }
    }
    ForwardedInfo { client_ip: client, forwarded_https: https }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as seen on dual-stack sockets) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The comma-separated elements of every instance of a header, in order. Each element is decoded on
/// its own, so a client's non-ASCII bytes spoil only the elements the client wrote, not the ones a
/// proxy appended to the same line.
fn elements<'a>(headers: &'a HeaderMap, name: &'static str) -> impl Iterator<Item = Option<&'a str>> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|element| std::str::from_utf8(element).ok().map(str::trim))
}

/// The `X-Forwarded-For` chain.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Hop> {
    elements(headers, "x-forwarded-for")
        .map(|element| Hop { ip: element.and_then(parse_node), https: None })
        .collect()
}

/// The last `X-Forwarded-Proto` value. Proxies must set (not append to) this header; a proxy that
/// passes the client's value through makes the scheme spoofable, which the docs warn about.
fn x_forwarded_proto(headers: &HeaderMap) -> Option<bool> {
    elements(headers, "x-forwarded-proto").last().flatten().map(|p| p.eq_ignore_ascii_case("https"))
}

/// The `Forwarded` chain: `for=` and `proto=` of each element.
fn forwarded(headers: &HeaderMap) -> Vec<Hop> {
    elements(headers, "forwarded")
        .map(|element| {
            let mut hop = Hop { ip: None, https: None };
            for pair in element.unwrap_or("").split(';') {
                let Some((key, value)) = pair.split_once('=') else { continue };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "for" => hop.ip = parse_node(value),
                    "proto" => hop.https = Some(value.eq_ignore_ascii_case("https")),
                    _ => {}
                }
            }
            hop
        })
        .collect()
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

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const RFC: ForwardedHeader = ForwardedHeader::Forwarded;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    fn proxies() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address_or_scheme() {
        let h = headers(&[
            ("x-forwarded-for", b"9.9.9.9"),
            ("x-forwarded-proto", b"https"),
            ("forwarded", b"for=8.8.8.8;proto=https"),
        ]);
        for mode in [XFF, RFC] {
            let info = resolve_client(ip("203.0.113.5"), &h, &proxies(), mode);
            assert_eq!(info, ForwardedInfo { client_ip: ip("203.0.113.5"), forwarded_https: None });
        }
    }

    #[test]
    fn a_trusted_proxy_is_believed_about_the_client() {
        let h = headers(&[("x-forwarded-for", b"198.51.100.7"), ("x-forwarded-proto", b"https")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF);
        assert_eq!(info, ForwardedInfo { client_ip: ip("198.51.100.7"), forwarded_https: Some(true) });
    }

    #[test]
    fn entries_a_client_prepends_are_not_reached_past_the_first_untrusted_hop() {
        // The client sent "X-Forwarded-For: 1.1.1.1"; our proxy appended the client's real address.
        let h = headers(&[("x-forwarded-for", b"1.1.1.1, 198.51.100.7")]);
        assert_eq!(resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF).client_ip, ip("198.51.100.7"));
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_to_the_client() {
        let h = headers(&[("x-forwarded-for", b"198.51.100.7, 10.0.0.9"), ("x-forwarded-for", b"10.1.1.1")]);
        assert_eq!(resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF).client_ip, ip("198.51.100.7"));
    }

    #[test]
    fn a_forwarded_header_the_client_sent_through_an_x_forwarded_for_proxy_is_ignored() {
        // nginx appends to X-Forwarded-For and passes the client's own Forwarded header through.
        let h = headers(&[("forwarded", b"for=6.6.6.6;proto=https"), ("x-forwarded-for", b"198.51.100.7")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF);
        assert_eq!(info, ForwardedInfo { client_ip: ip("198.51.100.7"), forwarded_https: None });
    }

    #[test]
    fn in_forwarded_mode_the_rfc_7239_header_is_read_with_ports_and_ipv6() {
        let h = headers(&[
            ("forwarded", br#"for="[2001:db8::17]:4711";proto=https, for=10.0.0.3:80"#),
            ("x-forwarded-for", b"6.6.6.6"),
        ]);
        let info = resolve_client(ip("10.0.0.2"), &h, &proxies(), RFC);
        assert_eq!(info, ForwardedInfo { client_ip: ip("2001:db8::17"), forwarded_https: Some(true) });
    }

    #[test]
    fn a_scheme_the_client_wrote_into_its_own_forwarded_element_is_not_believed() {
        // The client's element claims https; the proxy's element (for the real client) says nothing.
        let h = headers(&[("forwarded", b"for=1.1.1.1;proto=https, for=198.51.100.7")]);
        let info = resolve_client(ip("10.0.0.2"), &h, &proxies(), RFC);
        assert_eq!(info, ForwardedInfo { client_ip: ip("198.51.100.7"), forwarded_https: None });
    }

    #[test]
    fn non_ascii_garbage_from_the_client_spoils_only_its_own_element() {
        // A proxy that appends to the client's line keeps the client's bytes on the left.
        let h = headers(&[("x-forwarded-for", b"\xff\xfe, 198.51.100.7")]);
        assert_eq!(resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF).client_ip, ip("198.51.100.7"));
    }

    #[test]
    fn an_unparseable_hop_from_a_trusted_proxy_stops_the_walk_at_the_last_known_address() {
        let h = headers(&[("x-forwarded-for", b"198.51.100.7, garbage")]);
        assert_eq!(resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF).client_ip, ip("10.0.0.2"));
        let h = headers(&[("forwarded", b"for=unknown")]);
        assert_eq!(resolve_client(ip("10.0.0.2"), &h, &proxies(), RFC).client_ip, ip("10.0.0.2"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxy_ranges() {
        let h = headers(&[("x-forwarded-for", b"198.51.100.7")]);
        let info = resolve_client(ip("::ffff:10.0.0.2"), &h, &proxies(), XFF);
        assert_eq!(info.client_ip, ip("198.51.100.7"));
    }

    proptest! {
        #[test]
        fn without_trusted_proxies_the_peer_is_always_the_client(xff in proptest::collection::vec(any::<u8>(), 0..100), fwd in "\\PC{0,100}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&xff) { h.insert("x-forwarded-for", v); }
            if let Ok(v) = fwd.parse() { h.insert("forwarded", v); }
            for mode in [XFF, RFC] {
                prop_assert_eq!(resolve_client(ip("203.0.113.9"), &h, &[], mode).client_ip, ip("203.0.113.9"));
            }
        }

        #[test]
        fn the_resolved_client_is_the_peer_or_an_address_from_the_headers(xff in "[0-9a-f.:, \\[\\]]{0,60}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = xff.parse() { h.insert("x-forwarded-for", v); }
            let info = resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF);
            let listed: Vec<IpAddr> = xff.split(',').filter_map(|s| parse_node(s.trim())).map(canonical).collect();
            prop_assert!(info.client_ip == ip("10.0.0.2") || listed.contains(&info.client_ip));
        }

        #[test]
        fn whatever_a_client_prepends_the_proxy_appended_address_wins(prefix in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut value = prefix.clone();
            value.extend_from_slice(b", 198.51.100.7");
            if let Ok(v) = http::HeaderValue::from_bytes(&value) {
                let mut h = HeaderMap::new();
                h.insert("x-forwarded-for", v);
                prop_assert_eq!(resolve_client(ip("10.0.0.2"), &h, &proxies(), XFF).client_ip, ip("198.51.100.7"));
            }
        }
    }
}
