//! Crafted frames for `TestRun`, built with etherparse so the headers (and checksums) are
//! right unless a test breaks them on purpose.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6Header,
    Ipv6RawExtHeader, PacketBuilder, TcpHeader, VlanId,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// A TCP segment in an Ethernet frame, with optional VLAN tags, IPv4 options or an IPv6
/// hop-by-hop header, and TCP options.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub vlans: Vec<u16>,
    pub ipv4_options: Vec<u8>,
    pub ipv6_hop_by_hop: bool,
    /// TCP options (MSS, window scale, SACK permitted, timestamps) on SYNs.
    pub syn_options: bool,
    /// Raw TCP options, in place of the above (a multiple of 4 bytes, at most 40).
    pub tcp_options: Option<Vec<u8>>,
    /// The IP header's ECN field (0: not ECN-capable).
    pub ip_ecn: u8,
}

impl Tcp {
    /// A plain SYN from `src` to `dst:80`.
    pub fn syn(src: &str, dst: &str) -> Self {
        Self {
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            sport: 40000,
            dport: 80,
            flags: SYN,
            seq: 0x1000_0000,
            ack: 0,
            vlans: Vec::new(),
            ipv4_options: Vec::new(),
            ipv6_hop_by_hop: false,
            syn_options: false,
            tcp_options: None,
            ip_ecn: 0,
        }
    }

    /// The IP header's ECN field (2 bits).
    pub fn ip_ecn(mut self, ecn: u8) -> Self {
        self.ip_ecn = ecn & 3;
        self
    }

    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    pub fn dport(mut self, port: u16) -> Self {
        self.dport = port;
        self
    }

    pub fn sport(mut self, port: u16) -> Self {
        self.sport = port;
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack_number(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    pub fn hop_by_hop(mut self) -> Self {
        self.ipv6_hop_by_hop = true;
        self
    }

    pub fn with_syn_options(mut self) -> Self {
        self.syn_options = true;
        self
    }

    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = Some(options.to_vec());
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut tcp = TcpHeader::new(self.sport, self.dport, self.seq, 64240);
        tcp.fin = self.flags & FIN != 0;
        tcp.syn = self.flags & SYN != 0;
        tcp.rst = self.flags & RST != 0;
        tcp.psh = self.flags & PSH != 0;
        tcp.ack = self.flags & ACK != 0;
        tcp.ece = self.flags & ECE != 0;
        tcp.cwr = self.flags & CWR != 0;
        tcp.acknowledgment_number = self.ack;
        if self.syn_options {
            // MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
            let opts = [
                2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
            ];
            tcp.set_options_raw(&opts).expect("options fit");
        }
        if let Some(opts) = &self.tcp_options {
            tcp.set_options_raw(opts)
                .expect("TCP options: up to 40 bytes, a multiple of 4");
        }

        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h =
                    Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).expect("header");
                h.ecn = etherparse::IpEcn::try_new(self.ip_ecn).expect("2 bits");
                h.options = Ipv4Options::try_from(self.ipv4_options.as_slice())
                    .expect("IPv4 options: up to 40 bytes, a multiple of 4");
                IpHeaders::Ipv4(h, Ipv4Extensions::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = Ipv6Header {
                    traffic_class: self.ip_ecn,
                    flow_label: Default::default(),
                    payload_length: 0,
                    next_header: IpNumber::TCP,
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                };
                let mut ext = Ipv6Extensions::default();
                if self.ipv6_hop_by_hop {
                    // PadN to fill the 8-byte header.
                    ext.hop_by_hop_options = Some(
                        Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0])
                            .expect("hop-by-hop"),
                    );
                }
                IpHeaders::Ipv6(h, ext)
            }
            _ => panic!("source and destination must be the same family"),
        };

        let eth = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
        let mut out = Vec::new();
        match self.vlans.as_slice() {
            [] => eth
                .ip(ip)
                .tcp_header(tcp)
                .write(&mut out, &[])
                .expect("write"),
            [one] => eth
                .single_vlan(VlanId::try_new(*one).expect("vlan id"))
                .ip(ip)
                .tcp_header(tcp)
                .write(&mut out, &[])
                .expect("write"),
            [outer, inner] => eth
                .double_vlan(
                    VlanId::try_new(*outer).expect("vlan id"),
                    VlanId::try_new(*inner).expect("vlan id"),
                )
                .ip(ip)
                .tcp_header(tcp)
                .write(&mut out, &[])
                .expect("write"),
            _ => panic!("at most two VLAN tags"),
        }
        out
    }
}

/// A UDP datagram (a non-TCP IP packet).
pub fn udp(src: &str, dst: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    match (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) {
        (Ok(IpAddr::V4(s)), Ok(IpAddr::V4(d))) => b
            .ipv4(s.octets(), d.octets(), 64)
            .udp(5353, 53)
            .write(&mut out, b"hello")
            .expect("write"),
        (Ok(IpAddr::V6(s)), Ok(IpAddr::V6(d))) => b
            .ipv6(s.octets(), d.octets(), 64)
            .udp(5353, 53)
            .write(&mut out, b"hello")
            .expect("write"),
        _ => panic!("bad test addresses"),
    }
    out
}

/// An ARP request (not IP at all).
pub fn arp() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[192, 0, 2, 10]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 0, 2, 1]);
    f
}

/// Byte offset of the first byte after the link-layer headers.
pub fn l3_offset(frame: &[u8]) -> usize {
    let mut off = 12;
    loop {
        let t = u16::from_be_bytes([frame[off], frame[off + 1]]);
        if t == 0x8100 || t == 0x88a8 {
            off += 4;
        } else {
            return off + 2;
        }
    }
}

/// `frame` (an untagged IPv6 frame without extension headers) with raw extension headers
/// inserted before its transport header: each `(kind, units)` is a header of that type
/// (0 hop-by-hop, 43 routing, 44 fragment, 60 destination options) of `8 * (units + 1)`
/// bytes, padded with PadN (the routing header's fields are zero: segments left 0).
pub fn with_v6_ext(frame: &[u8], headers: &[(u8, u8)]) -> Vec<u8> {
    const L3: usize = 14;
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "an untagged IPv6 frame");
    let transport = frame[L3 + 6];
    let mut ext = Vec::new();
    for (i, &(kind, units)) in headers.iter().enumerate() {
        let next = headers.get(i + 1).map_or(transport, |h| h.0);
        let len = 8 * (usize::from(units) + 1);
        let mut h = vec![0u8; len];
        h[0] = next;
        h[1] = if kind == 44 { 0 } else { units };
        if kind == 0 || kind == 60 {
            // PadN over the rest.
            h[2] = 1;
            h[3] = (len - 4) as u8;
        }
        ext.extend_from_slice(&h);
    }
    let mut out = frame[..L3 + 40].to_vec();
    if let Some(&(first, _)) = headers.first() {
        out[L3 + 6] = first;
    }
    let payload = u16::from_be_bytes([out[L3 + 4], out[L3 + 5]]) as usize + ext.len();
    out[L3 + 4..L3 + 6].copy_from_slice(&(payload as u16).to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&frame[L3 + 40..]);
    out
}
