//! From a captured frame to the TCP segment in it, with etherparse's lax parsing: it
//! reads what a snap length left of a packet (an IP total length larger than the bytes
//! captured is normal in a capture, not an error), and never reads out of bounds.
//!
//! Link types: Ethernet (with VLAN tags), Linux cooked v1 and v2 (`tcpdump -i any`), raw
//! IP, BSD loopback. Addresses come out as `u128`, IPv4 ones mapped (`::ffff:a.b.c.d`),
//! the form the agent keys its sources with.

use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_parser::{
    Linktype,
    data::{PacketData, get_packetdata},
};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A TCP segment as the analysis needs it.
#[derive(Clone, Copy, Debug)]
pub struct Seg<'a> {
    pub v6: bool,
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    /// FIN, SYN, RST, PSH, ACK, URG, ECE, CWR in the header's bit order.
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// What the snap length left of the payload.
    pub payload: &'a [u8],
}

#[derive(Debug)]
pub enum Decoded<'a> {
    Tcp(Seg<'a>),
    /// Not TCP over IP (ARP, UDP, ICMP, a non-first fragment, ...).
    Other,
    /// TCP over IP, but its header was cut short by the snap length or the packet.
    Truncated,
    /// A link type this reader does not know.
    Unsupported,
}

/// The IPv4-mapped form of an IPv4 address.
pub fn v4(a: [u8; 4]) -> u128 {
    (0xffff_u128 << 32) | u128::from(u32::from_be_bytes(a))
}

pub fn decode(linktype: Linktype, data: &[u8]) -> Decoded<'_> {
    let parsed = match linktype {
        Linktype::ETHERNET => LaxSlicedPacket::from_ethernet(data).ok(),
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => LaxSlicedPacket::from_ip(data).ok(),
        Linktype::LINUX_SLL | Linktype::LINUX_SLL2 | Linktype::NULL => {
            match get_packetdata(data, linktype, data.len()) {
                Some(PacketData::L3(ether_type, rest)) => Some(LaxSlicedPacket::from_ether_type(
                    EtherType(ether_type),
                    rest,
                )),
                Some(PacketData::L2(frame)) => LaxSlicedPacket::from_ethernet(frame).ok(),
                Some(_) => return Decoded::Other,
                None => return Decoded::Truncated,
            }
        }
        _ => return Decoded::Unsupported,
    };
    let Some(p) = parsed else {
        return Decoded::Truncated;
    };
    let (v6, src, dst, ip_payload) = match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (false, v4(h.source()), v4(h.destination()), ip.payload())
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                true,
                u128::from_be_bytes(h.source()),
                u128::from_be_bytes(h.destination()),
                ip.payload(),
            )
        }
        _ => return Decoded::Other,
    };
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let raw = t.header_slice();
            Decoded::Tcp(Seg {
                v6,
                src,
                dst,
                sport: t.source_port(),
                dport: t.destination_port(),
                flags: raw.get(13).copied().unwrap_or(0),
                seq: t.sequence_number(),
                ack: t.acknowledgment_number(),
                payload: t.payload(),
            })
        }
        Some(_) => Decoded::Other,
        None if ip_payload.ip_number == IpNumber::TCP && !ip_payload.fragmented => {
            Decoded::Truncated
        }
        None => Decoded::Other,
    }
}

/// The status code of an HTTP/1.x response starting this payload, if it does.
pub fn http_status(payload: &[u8]) -> Option<u16> {
    let rest = payload.strip_prefix(b"HTTP/1.")?;
    // "HTTP/1.1 504 ...": a minor version digit, a space, three digits.
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 504 Gateway Time-out\r\n"), Some(504));
        assert_eq!(http_status(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(http_status(b"HTTP/1.1 50"), None);
        assert_eq!(http_status(b"HTTP/2 200"), None);
        assert_eq!(http_status(b"GET / HTTP/1.1"), None);
        assert_eq!(http_status(b"HTTP/1.1 5x4 no"), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678_u32;
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for lt in [
                Linktype::ETHERNET,
                Linktype::RAW,
                Linktype::LINUX_SLL,
                Linktype::LINUX_SLL2,
                Linktype::NULL,
                Linktype(12345),
            ] {
                let _ = decode(lt, &data);
            }
        }
    }
}
