//! A link with a long round trip, for tests of what a connection can do over distance.
//!
//! The kernel's delay emulator (netem) is not in every kernel (this machine's has neither
//! netem nor fq, which delays by departure time), so the delay is made here: a namespace
//! between two others relays every Ethernet frame from one of its interfaces to the other
//! through packet sockets, each after the same fixed delay. The two ends see one link
//! with a round trip of twice the delay; TCP runs end to end across it, untouched.
//!
//! The relay sends frames as they came, so the ends must send frames no larger than the
//! MTU with their checksums filled in: [`prepare_end`] turns off segmentation and
//! checksum offloads on an end's interface, and [`Relay::unsent`] counts what could not
//! be sent.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::kit::netns::{Netns, enter};

/// Frames relayed, in both directions, and frames the relay could not send (too big, or the device queue full).
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    unsent: AtomicU64,
}

/// Relaying between two interfaces of a namespace until dropped.
pub struct Relay {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Turn off what makes an interface hand packet sockets frames larger than its MTU (TSO,
/// GSO, GRO) or without checksums (checksum offload).
pub fn prepare_end(ns: &Netns, ifname: &str) {
    ns.exec(&[
        "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off",
    ]);
}

impl Relay {
    /// Relay between `a` and `b` of `ns` (up, without addresses), each frame `one_way`
    /// after it came.
    pub fn start(ns: &Netns, a: &str, b: &str, one_way: Duration) -> Self {
        // The relay's own kernel stays quiet on the link.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        for ifname in [a, b] {
            ns.exec(&["ethtool", "-K", ifname, "gro", "off"]);
        }
        let (ia, ib) = (ns.ifindex(a), ns.ifindex(b));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let threads = [(ia, ib), (ib, ia)]
            .into_iter()
            .map(|(from, to)| {
                let (stop, counts, path) = (stop.clone(), counts.clone(), ns.path());
                let (tx, rx) = std::sync::mpsc::channel();
                let t = thread::spawn(move || {
                    enter(&path);
                    let socks = (packet_socket(from, true), packet_socket(to, false));
                    let ready = socks.0.is_ok() && socks.1.is_ok();
                    tx.send(ready).expect("signal");
                    if let (Ok(rx_sock), Ok(tx_sock)) = socks {
                        relay(&rx_sock, &tx_sock, one_way, &stop, &counts);
                    }
                });
                assert!(rx.recv().unwrap_or(false), "packet sockets for the relay");
                t
            })
            .collect();
        Self {
            stop,
            counts,
            threads,
        }
    }

    pub fn frames(&self) -> u64 {
        self.counts.frames.load(Ordering::Relaxed)
    }

    pub fn unsent(&self) -> u64 {
        self.counts.unsent.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A packet socket on `ifindex`: receiving every frame (`rx`), or only sending.
fn packet_socket(ifindex: u32, rx: bool) -> io::Result<OwnedFd> {
    let proto = if rx {
        (libc::ETH_P_ALL as u16).to_be()
    } else {
        // Protocol 0: the socket receives nothing.
        0
    };
    // SAFETY: plain system calls on values we own; the descriptor is owned at once.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if rx {
            // Room for a round trip's worth of a fast transfer.
            let size: libc::c_int = 64 << 20;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(fd)
    }
}

fn relay(rx: &OwnedFd, tx: &OwnedFd, delay: Duration, stop: &AtomicBool, counts: &Counts) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let wait = queue.front().map_or(Duration::from_millis(20), |(at, _)| {
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20))
        });
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd and timespec.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        loop {
            // SAFETY: `buf` and `sll` are valid for the lengths given.
            let (n, sll) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::addr_of_mut!(sll).cast(),
                    &mut len,
                );
                (n, sll)
            };
            if n <= 0 {
                break;
            }
            // What this interface sends (our own relayed frames among them) is seen too.
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            queue.push_back((Instant::now() + delay, buf[..n as usize].to_vec()));
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(at, _)| *at <= now) {
            let (_, frame) = queue.pop_front().expect("a frame");
            // SAFETY: `frame` is valid for its length.
            let sent = unsafe { libc::send(tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if sent < 0 {
                counts.unsent.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
