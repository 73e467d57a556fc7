//! A connection made through a SYN cookie answered in XDP lives with the options its
//! client asked for, as one made by the kernel does: window scaling, SACK, timestamps,
//! the MSS of the cookie; so a download over a long round trip is as fast. Real
//! `synguard run` on a veth link with a 50 ms round trip (a relaying namespace: see
//! `synguard_tests::kit::delay`), and each end's `TCP_INFO` (what `ss -ti` shows).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use synguard::bpf::Maps;
use synguard_common::stat::*;
use synguard_tests::{
    kit::{
        delay::{Relay, prepare_end},
        netns::{Bpffs, Netns, TempDir, veth},
        topo::{Lab, xdp_peer},
    },
    require_root,
};

const SERVER4: &str = "192.0.2.1";
const SERVER6: &str = "2001:db8:2::1";
const PORT: u16 = 9000;
/// Bytes of each download: long enough to leave slow start behind at 50 ms.
const BULK: usize = 16 << 20;

/// A server that, on each connection, reads one byte: `b` sends [`BULK`] bytes and
/// closes; anything else holds the connection until the client closes it.
struct BulkServer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl BulkServer {
    fn start(ns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = ns.spawn(move || {
            // Both families on one socket.
            let listener = TcpListener::bind(("::", PORT)).expect("bind the bulk server");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        thread::spawn(move || serve(conn));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().expect("bulk server ready");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let mut cmd = [0u8; 1];
    if conn.read_exact(&mut cmd).is_err() {
        return;
    }
    if cmd[0] == b'b' {
        let chunk = vec![0x5au8; 64 << 10];
        let mut left = BULK;
        while left > 0 {
            let n = left.min(chunk.len());
            if conn.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    } else {
        // Its own view of the connection, then hold it until the client closes it.
        let _ = conn.write_all(&tcp_info(&conn));
        let _ = conn.read(&mut cmd);
    }
}

/// What `ss -ti` shows of a connection, from `TCP_INFO` (`struct tcp_info`, stable
/// layout): the options in use (byte 5: `TCPI_OPT_*`), the window scales (byte 6: send
/// in the low 4 bits, receive in the high 4) and the MSS it sends with (bytes 16-19).
/// (The `ss` of Debian 12's iproute2 does not print `ts` and `sack` for any connection
/// on this machine's 6.18 kernel, though the kernel reports them.)
fn tcp_info(s: &TcpStream) -> [u8; 8] {
    let mut info = [0u8; 104];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is valid for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    let mut out = [0u8; 8];
    out[..2].copy_from_slice(&info[5..7]);
    out[4..].copy_from_slice(&info[16..20]);
    out
}

/// A connection's options as [`tcp_info`] gives them.
#[derive(Debug)]
struct View {
    timestamps: bool,
    sack: bool,
    wscale: Option<(u8, u8)>,
    snd_mss: u32,
}

fn view(b: [u8; 8]) -> View {
    View {
        timestamps: b[0] & 1 != 0,
        sack: b[0] & 2 != 0,
        wscale: (b[0] & 4 != 0).then_some((b[1] & 0xf, b[1] >> 4)),
        snd_mss: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connect from `from` to `to` and send `cmd`.
fn connect(from: IpAddr, to: IpAddr, cmd: u8) -> TcpStream {
    let target = SocketAddr::new(to, PORT);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    sock.bind(&SocketAddr::new(from, 0).into()).expect("bind");
    sock.connect_timeout(&target.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {from} -> {target}: {e}"));
    let mut s = TcpStream::from(sock);
    s.write_all(&[cmd]).expect("send the command");
    s
}

/// Download [`BULK`] bytes from `from` (in the client's namespace); Mbit/s.
fn download(client: &Netns, from: &str) -> f64 {
    let from: IpAddr = from.parse().expect("addr");
    client
        .spawn(move || {
            let start = Instant::now();
            let mut s = connect(from, SERVER4.parse().expect("addr"), b'b');
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => panic!("download from {from}: {e} after {got} bytes"),
                }
            }
            assert_eq!(got, BULK, "the whole download");
            (BULK * 8) as f64 / start.elapsed().as_secs_f64() / 1e6
        })
        .join()
        .expect("client thread")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn cookie_connections_keep_window_scaling_sack_and_speed_over_a_50ms_round_trip() {
    require_root!();
    // client (eth0) -- relay (r0 | r1), 25 ms each way -- server (eth0)
    let server = Netns::new("osrv");
    let client = Netns::new("ocli");
    let relay = Netns::new("orly");
    veth(&client, "eth0", "192.0.2.50/24", &relay, "r0", "");
    veth(&relay, "r1", "", &server, "eth0", &format!("{SERVER4}/24"));
    client.ip(&["addr", "add", "2001:db8:2::50/64", "dev", "eth0", "nodad"]);
    server.ip(&[
        "addr",
        "add",
        &format!("{SERVER6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    // Addresses of the employee's host that connect only while cookies are answered.
    for last in [51, 52, 53, 60] {
        client.ip(&["addr", "add", &format!("192.0.2.{last}/24"), "dev", "eth0"]);
    }
    client.ip(&["addr", "add", "2001:db8:2::60/64", "dev", "eth0", "nodad"]);
    // The server knows every client address's MAC from the start: a connection from an
    // address it has not yet resolved would wait a round trip for ARP before its first
    // data, which is not what is measured here.
    let out = client.exec(&["cat", "/sys/class/net/eth0/address"]);
    let mac = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for last in [50, 51, 52, 53, 60] {
        let addr = format!("192.0.2.{last}");
        server.ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    prepare_end(&client, "eth0");
    prepare_end(&server, "eth0");
    // The cookie SYN-ACK leaves the server with XDP_TX: on veth it arrives only where the
    // peer runs an XDP program.
    let _peer_xdp = xdp_peer(&relay, "r1").expect("attaching the relay's XDP program");
    let link = Relay::start(&relay, "r0", "r1", Duration::from_millis(25));
    let _bulk = BulkServer::start(&server);

    // The link's speed before synguard, for the record.
    let unprotected: Vec<f64> = (0..2).map(|_| download(&client, "192.0.2.50")).collect();

    // The relayed namespace stands where `topo::Lab` has the attacker's.
    let lab = Lab {
        server,
        client,
        attacker: relay,
        bpffs: Bpffs::new(),
        state: TempDir::new("state"),
    };
    let mut daemon = lab.daemon(&["run", "--iface", "eth0", "--syn-cookies", "always"]);
    let maps = Maps::from_pins(&lab.pin_dir()).expect("open the pinned maps");
    let slot = lab.server.ifindex("eth0");
    let sent = || maps.counters(slot).expect("counters")[R_COOKIE_SENT];

    // Each connection below comes from an address not seen before, so it is made through
    // a cookie answered in XDP.
    for (from, to, mss) in [
        ("192.0.2.60", SERVER4, 1448),
        ("2001:db8:2::60", SERVER6, 1428),
    ] {
        let before = sent();
        let (f, t): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
        // Each end's view of the connection: the server sends its own first.
        let (server_view, client_view) = lab
            .client
            .spawn(move || {
                let mut s = connect(f, t, b'h');
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut theirs = [0u8; 8];
                s.read_exact(&mut theirs).expect("the server's view");
                (view(theirs), view(tcp_info(&s)))
            })
            .join()
            .expect("client thread");
        assert_eq!(sent(), before + 1, "{from}: answered in XDP");
        for (side, v) in [("server", &server_view), ("client", &client_view)] {
            assert!(v.timestamps, "{from}: timestamps on the {side}: {v:?}");
            assert!(v.sack, "{from}: SACK on the {side}: {v:?}");
        }
        let (Some((s_snd, s_rcv)), Some((c_snd, c_rcv))) = (server_view.wscale, client_view.wscale)
        else {
            panic!("{from}: window scaling on both ends: {server_view:?} {client_view:?}");
        };
        // Each end scales by what the other says it scales by.
        assert_eq!(
            (s_snd, s_rcv),
            (c_rcv, c_snd),
            "{from}: {server_view:?} {client_view:?}"
        );
        // The cookie carried the client's MSS (1460 over IPv4, 1440 over IPv6; less the
        // 12 bytes of timestamps).
        assert_eq!(server_view.snd_mss, mss, "{from}: {server_view:?}");
    }

    // Downloads through cookies as fast as normal ones (without window scaling, the
    // client's 64 KiB window would allow 10 Mbit/s at 50 ms). Both with the program
    // attached, whose cost on veth is not the question here; interleaved, so the link's
    // moods fall on both: `syn-cookies = off` for a normal handshake (the kernel's,
    // `tcp_syncookies` back to 1), `always` for a cookie from XDP.
    let syncookies = || {
        let out = lab
            .server
            .exec(&["cat", "/proc/sys/net/ipv4/tcp_syncookies"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let set_cookies = |value: &str, sysctl: &str| {
        lab.ok(&["config", "set", "syn-cookies", value]);
        let start = Instant::now();
        while syncookies() != sysctl {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "syn-cookies {value}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    let (mut normal, mut cookie, mut kernel) = (Vec::new(), Vec::new(), Vec::new());
    for from in ["192.0.2.51", "192.0.2.52", "192.0.2.53"] {
        set_cookies("off", "1");
        let before = sent();
        normal.push(download(&lab.client, "192.0.2.50"));
        set_cookies("always", "2");
        kernel.push(download(&lab.client, "192.0.2.50"));
        cookie.push(download(&lab.client, from));
        assert_eq!(sent(), before + 1, "{from}: answered in XDP, the other not");
    }
    let (n, c) = (median(normal.clone()), median(cookie.clone()));
    eprintln!(
        "50 ms round trip, {BULK} bytes: without synguard {unprotected:.0?} Mbit/s; with it, \
         normal {normal:.0?} Mbit/s, through XDP cookies {cookie:.0?} Mbit/s ({:.0} %), kernel cookies {kernel:.0?}; \
         relayed {} frames ({} unsent)",
        100.0 * c / n,
        link.frames(),
        link.unsent()
    );
    assert!(
        c >= 0.9 * n,
        "through cookies {c:.0} Mbit/s, normal {n:.0} Mbit/s: below 90 %"
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(10)), Some(0));
}
