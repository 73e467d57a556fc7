//! Synthetic captures for `synguard analyze`: pcap files written directly, as tcpdump
//! would have recorded them on the server, of employees fetching a page and (optionally)
//! a SYN flood, forged or from one source. Used where a capture must be larger or more
//! exactly known than a recorded fixture: the benchmark (millions of packets) and tests
//! of exact counts.
//!
//! Addresses follow the lab: server 192.0.2.1 (2001:db8:2::1), employees from
//! 198.51.100.10 (2001:db8:5::10), the attacker 203.0.113.0, forged sources only from
//! 198.18.0.0/15 and 2001:db8::/32.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fs::File,
    io::{self, BufWriter, Write as _},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use ipnet::IpNet;

use crate::kit::flood::{Rng, random_in};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The capture's first time stamp: 2026-11-24T19:27:53Z.
pub const T0_NS: u64 = 1_795_548_473_000_000_000;

/// A pcap writer (microsecond time stamps, Ethernet), buffered.
pub struct PcapWriter {
    w: BufWriter<File>,
    frame: Vec<u8>,
    pub packets: u64,
}

impl PcapWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
        w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        w.write_all(&[0; 8])?; // thiszone, sigfigs
        w.write_all(&262_144u32.to_le_bytes())?;
        w.write_all(&1u32.to_le_bytes())?; // LINKTYPE_ETHERNET
        Ok(Self {
            w,
            frame: Vec::with_capacity(2048),
            packets: 0,
        })
    }

    /// One TCP segment (checksums left at zero: the analysis does not check them).
    #[expect(clippy::too_many_arguments, reason = "one argument per header field")]
    pub fn tcp(
        &mut self,
        ts_ns: u64,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let f = &mut self.frame;
        f.clear();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        let tcp_len = 20 + payload.len();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => return Err(io::Error::other("mixed address families")),
        }
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        let secs = (ts_ns / 1_000_000_000) as u32;
        let usecs = ((ts_ns % 1_000_000_000) / 1000) as u32;
        self.w.write_all(&secs.to_le_bytes())?;
        self.w.write_all(&usecs.to_le_bytes())?;
        self.w.write_all(&(f.len() as u32).to_le_bytes())?;
        self.w.write_all(&(f.len() as u32).to_le_bytes())?;
        self.w.write_all(f)?;
        self.packets += 1;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<u64> {
        self.w.flush()?;
        Ok(self.packets)
    }
}

/// The flood in a scenario.
/// One step of a connection after its SYN: (delay in ns, sent by the client, flags,
/// sequence, acknowledgment, payload).
type Step = (u64, bool, u8, u32, u32, &'static [u8]);

#[derive(Clone, Debug)]
pub enum Attack {
    None,
    /// One address (hping3-like: no retransmissions, never answers).
    Single(IpAddr),
    /// A random address of this prefix for every SYN (198.18.0.0/15 or in 2001:db8::/32).
    Forged(IpNet),
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub employees: u8,
    /// Requests per second per employee.
    pub requests_per_sec: f64,
    pub v6: bool,
    pub attack: Attack,
    /// SYNs per second of the flood.
    pub attack_rate: u64,
    /// When the flood starts and how long it lasts, from the start of the capture.
    pub attack_from: Duration,
    pub attack_for: Duration,
    pub duration: Duration,
    /// During the flood: the share of employees' first SYNs the server never answers
    /// (retransmitted 1 s later), and of their requests answered with a 504.
    pub loss: f64,
    pub errors: f64,
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            employees: 20,
            requests_per_sec: 5.0,
            v6: false,
            attack: Attack::None,
            attack_rate: 0,
            attack_from: Duration::from_secs(2),
            attack_for: Duration::from_secs(5),
            duration: Duration::from_secs(10),
            loss: 0.0,
            errors: 0.0,
            seed: 1,
        }
    }
}

/// A packet due at a time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &'static [u8],
}

/// Packets to send, in time order (then in the order they were scheduled).
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, Due)>>,
    n: u64,
}

impl Queue {
    fn push(&mut self, at: u64, d: Due) {
        self.heap.push(Reverse((at, self.n, d)));
        self.n += 1;
    }

    fn pop_before(&mut self, horizon: u64) -> Option<(u64, Due)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at < horizon => {
                self.heap.pop().map(|Reverse((at, _, d))| (at, d))
            }
            _ => None,
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: sales.example\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 120\r\n\r\n";
const GATEWAY: &[u8] = b"HTTP/1.1 504 Gateway Time-out\r\nServer: nginx\r\n\r\n";

/// Write a scenario's capture to `path`; returns the packets written.
pub fn write(path: &Path, sc: &Scenario) -> io::Result<u64> {
    let mut out = PcapWriter::create(path)?;
    let mut rng = Rng(sc.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let server: IpAddr = if sc.v6 {
        "2001:db8:2::1".parse().expect("literal")
    } else {
        "192.0.2.1".parse().expect("literal")
    };
    let employee = |i: u8| -> IpAddr {
        if sc.v6 {
            format!("2001:db8:5::{:x}", 0x10 + u32::from(i))
                .parse()
                .expect("address")
        } else {
            format!("198.51.100.{}", 10 + u32::from(i))
                .parse()
                .expect("address")
        }
    };
    let mut q = Queue::default();
    let end = T0_NS + sc.duration.as_nanos() as u64;
    let a_from = T0_NS + sc.attack_from.as_nanos() as u64;
    let a_to = a_from + sc.attack_for.as_nanos() as u64;
    let tick = 1_000_000u64; // 1 ms
    let gap = if sc.requests_per_sec > 0.0 {
        (1e9 / sc.requests_per_sec) as u64
    } else {
        u64::MAX
    };
    let mut next_request: Vec<u64> = (0..sc.employees)
        .map(|i| T0_NS + gap / u64::from(sc.employees.max(1)) * u64::from(i))
        .collect();
    let mut port = 20_000u16;
    let mut sent_attack = 0u64;
    let mut t = T0_NS;
    while t < end || !q.heap.is_empty() {
        if t < end {
            // The flood's SYNs due by now, each answered by the server.
            if t >= a_from && t < a_to && sc.attack_rate > 0 {
                let should = ((t + tick - a_from) as u128 * u128::from(sc.attack_rate)
                    / 1_000_000_000) as u64;
                while sent_attack < should {
                    let at = t + (sent_attack * 7919) % tick;
                    let src = match &sc.attack {
                        Attack::None => break,
                        Attack::Single(a) => *a,
                        Attack::Forged(net) => random_in(net, &mut rng),
                    };
                    let r = rng.next_u64();
                    let (sport, isn) = ((r as u16) | 1024, (r >> 32) as u32);
                    q.push(
                        at,
                        Due {
                            src,
                            dst: server,
                            sport,
                            dport: 80,
                            flags: SYN,
                            seq: isn,
                            ack: 0,
                            payload: &[],
                        },
                    );
                    q.push(
                        at + 20_000,
                        Due {
                            src: server,
                            dst: src,
                            sport: 80,
                            dport: sport,
                            flags: SYN | ACK,
                            seq: r as u32,
                            ack: isn.wrapping_add(1),
                            payload: &[],
                        },
                    );
                    sent_attack += 1;
                }
            }
            // Employees' requests due by now: a whole connection each.
            for i in 0..sc.employees {
                let slot = &mut next_request[usize::from(i)];
                if *slot > t {
                    continue;
                }
                *slot = slot.saturating_add(gap);
                let c = employee(i);
                port = if port >= 60_000 { 20_000 } else { port + 1 };
                let isn = rng.next_u64() as u32;
                let sisn = rng.next_u64() as u32;
                let flooded = !matches!(sc.attack, Attack::None) && t >= a_from && t < a_to;
                let lost = flooded && rng.chance(sc.loss);
                let error = flooded && rng.chance(sc.errors);
                let syn = Due {
                    src: c,
                    dst: server,
                    sport: port,
                    dport: 80,
                    flags: SYN,
                    seq: isn,
                    ack: 0,
                    payload: &[],
                };
                // A SYN the server never answered is sent again a second later.
                let start = if lost { t + 1_000_000_000 } else { t };
                if lost {
                    q.push(t, syn);
                }
                q.push(start, syn);
                let after_get = isn.wrapping_add(1 + GET.len() as u32);
                let answer = if error { GATEWAY } else { OK };
                let steps: [Step; 7] = [
                    (100_000, false, SYN | ACK, sisn, isn.wrapping_add(1), &[]),
                    (
                        200_000,
                        true,
                        ACK,
                        isn.wrapping_add(1),
                        sisn.wrapping_add(1),
                        &[],
                    ),
                    (
                        300_000,
                        true,
                        ACK | PSH,
                        isn.wrapping_add(1),
                        sisn.wrapping_add(1),
                        GET,
                    ),
                    (
                        600_000,
                        false,
                        ACK | PSH,
                        sisn.wrapping_add(1),
                        after_get,
                        answer,
                    ),
                    (
                        700_000,
                        false,
                        ACK | FIN,
                        sisn.wrapping_add(200),
                        after_get,
                        &[],
                    ),
                    (
                        800_000,
                        true,
                        ACK | FIN,
                        after_get,
                        sisn.wrapping_add(201),
                        &[],
                    ),
                    (
                        900_000,
                        false,
                        ACK,
                        sisn.wrapping_add(201),
                        after_get.wrapping_add(1),
                        &[],
                    ),
                ];
                for (dt, from_client, flags, seq, ack, payload) in steps {
                    let (src, dst, sport, dport) = if from_client {
                        (c, server, port, 80)
                    } else {
                        (server, c, 80, port)
                    };
                    q.push(
                        start + dt,
                        Due {
                            src,
                            dst,
                            sport,
                            dport,
                            flags,
                            seq,
                            ack,
                            payload,
                        },
                    );
                }
            }
        }
        // Everything due before the next tick goes out in time order.
        let horizon = if t < end { t + tick } else { u64::MAX };
        while let Some((at, d)) = q.pop_before(horizon) {
            out.tcp(
                at, d.src, d.dst, d.sport, d.dport, d.flags, d.seq, d.ack, d.payload,
            )?;
        }
        t += tick;
    }
    out.finish()
}
