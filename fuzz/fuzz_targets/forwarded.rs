//! Fuzzes `resolve_client`, which reads the client address and scheme from `X-Forwarded-For` /
//! `X-Forwarded-Proto` or RFC 7239 `Forwarded`: arbitrary header bytes, peers and trusted ranges.
//!
//! Invariants: a peer outside the trusted ranges is the client and says nothing about the scheme; the
//! client is always the peer or an address written in the header the configured mode reads; the other
//! header never changes the answer; the answer is canonical (no IPv4-mapped IPv6).
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use portcullis_web::{ForwardedHeader, resolve_client};

const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";
const FORWARDED: &str = "forwarded";

#[derive(Debug, Arbitrary)]
enum Name {
    XForwardedFor,
    XForwardedProto,
    Forwarded,
}

impl Name {
    fn as_str(&self) -> &'static str {
        match self {
            Name::XForwardedFor => XFF,
            Name::XForwardedProto => XFP,
            Name::Forwarded => FORWARDED,
        }
    }
}

/// A trusted range. Most random ranges would never contain the peer, so some are built around it.
#[derive(Debug, Arbitrary)]
enum Net {
    /// Around the peer as the socket reported it (possibly IPv4-mapped IPv6) or in canonical form.
    AroundPeer { prefix: u8, canonical: bool },
    /// Around any address.
    Around(IpAddr, u8),
    /// Every address: the walk goes as far left as the headers parse.
    Everything,
}

#[derive(Debug, Arbitrary)]
struct Input {
    peer: IpAddr,
    rfc7239: bool,
    trusted: Vec<Net>,
    headers: Vec<(Name, Vec<u8>)>,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn net(ip: IpAddr, prefix: u8) -> IpNet {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    IpNet::new(ip, prefix % (max + 1)).unwrap_or_else(|_| IpNet::from(ip))
}

/// Every address written in the values of one header, found without the parser under test: maximal
/// runs of the characters an IP address is made of, with an optional `:port` taken off.
fn addresses_in(headers: &HeaderMap, name: &str) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for value in headers.get_all(name) {
        let is_ip_char = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b'.' | b':');
        for run in value.as_bytes().split(|b| !is_ip_char(b)).filter(|r| !r.is_empty()) {
            let Ok(run) = std::str::from_utf8(run) else { continue };
            if let Ok(ip) = run.parse() {
                found.push(canonical(ip));
            }
            if let Some((host, port)) = run.rsplit_once(':')
                && port.bytes().all(|b| b.is_ascii_digit())
                && let Ok(ip) = host.parse()
            {
                found.push(canonical(ip));
            }
        }
    }
    found
}

fuzz_target!(|input: Input| {
    let peer = canonical(input.peer);
    let trusted: Vec<IpNet> = input
        .trusted
        .iter()
        .flat_map(|n| match n {
            Net::AroundPeer { prefix, canonical: true } => vec![net(peer, *prefix)],
            Net::AroundPeer { prefix, canonical: false } => vec![net(input.peer, *prefix)],
            Net::Around(ip, prefix) => vec![net(*ip, *prefix)],
            Net::Everything => vec![net(IpAddr::from([0u8; 4]), 0), net(IpAddr::from([0u16; 8]), 0)],
        })
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        // Bytes hyper would refuse (control characters) never reach us.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name.as_str()), value);
        }
    }
    let (mode, read) = if input.rfc7239 {
        (ForwardedHeader::Forwarded, &[FORWARDED][..])
    } else {
        (ForwardedHeader::XForwardedFor, &[XFF, XFP][..])
    };

    let info = resolve_client(input.peer, &headers, &trusted, mode);

    assert_eq!(info.client_ip, canonical(info.client_ip), "the client address is not canonical");
    let peer_trusted = trusted.iter().any(|n| n.contains(&peer));
    if !peer_trusted {
        assert_eq!(info.client_ip, peer, "an untrusted peer's headers were believed");
        assert_eq!(info.forwarded_https, None, "an untrusted peer's scheme was believed");
    }
    let written = addresses_in(&headers, if input.rfc7239 { FORWARDED } else { XFF });
    assert!(
        info.client_ip == peer || written.contains(&info.client_ip),
        "client {} is neither the peer {peer} nor written in the headers {written:?}",
        info.client_ip
    );
    if info.forwarded_https.is_some() {
        let said = if input.rfc7239 {
            headers
                .get_all(FORWARDED)
                .iter()
                .any(|v| v.as_bytes().to_ascii_lowercase().windows(5).any(|w| w == b"proto"))
        } else {
            headers.contains_key(XFP)
        };
        assert!(said, "a scheme was reported that no header states");
    }

    // Only the configured header is read: without the other one the answer is the same.
    let mut only_read = HeaderMap::new();
    for (name, value) in &headers {
        if read.contains(&name.as_str()) {
            only_read.append(name.clone(), value.clone());
        }
    }
    assert_eq!(
        resolve_client(input.peer, &only_read, &trusted, mode),
        info,
        "the unread header changed the answer"
    );
});
