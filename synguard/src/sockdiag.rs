//! The kernel's socket table, through `NETLINK_SOCK_DIAG` (`SOCK_DIAG_BY_FAMILY` to
//! list, `SOCK_DESTROY` to remove; the sockets must be in this network namespace).
//!
//! Two uses. Purging a banned source's half-open connections from the server's SYN
//! queues: a flooder gets `syn-burst` SYNs through before its ban; on a server without SYN
//! cookies each one becomes a request socket that sits in the listener's SYN queue through
//! every SYN-ACK retry, about a minute by default, enough with a small backlog to keep
//! real clients out long after the flood itself is dropped. The ban drops the source's
//! SYNs, and the flooder never completes them, so `run` removes them at once, as `ss -K
//! state syn-recv src PREFIX` would (the kernel needs `CONFIG_INET_DIAG_DESTROY`). And
//! finding the peers of connections that completed a handshake: each proves it owns its
//! address (see `crate::proofs`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use ipnet::IpNet;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_SYN_RECV: u32 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`: ports and addresses in network order, then interface and
/// cookie in host order.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` (the part we read).
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// One TCP socket as the kernel identifies it (a half-open connection, for purging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HalfOpen {
    pub family: u8,
    /// The raw `inet_diag_sockid`, echoed back to destroy exactly this socket.
    pub id: [u8; SOCKID_LEN],
    /// The remote (client) address.
    pub peer: IpAddr,
    /// SYN-ACKs sent again for it so far (`idiag_retrans`): a client's handshake
    /// completes within its round trip, before the first resend (1 s); a forged
    /// request's never does.
    pub retrans: u8,
}

fn nl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: u32,
    id: &[u8; SOCKID_LEN],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // idiag_ext
    m.push(0); // pad
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads `msg.len()` bytes from a valid buffer; a zeroed sockaddr_nl
    // addresses the kernel.
    let rc = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into a valid buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Each netlink message in a datagram: (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        out.push((kind, &buf[off + NLMSG_HDRLEN..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn peer_of(family: u8, id: &[u8; SOCKID_LEN]) -> Option<IpAddr> {
    // id: sport(2) dport(2) src(16) dst(16) if(4) cookie(8); "dst" is the remote end.
    let dst = &id[20..36];
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))),
        libc::AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(dst);
            let v6 = Ipv6Addr::from(a);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Every half-open (SYN_RECV) TCP connection in this network namespace.
pub fn half_open() -> io::Result<Vec<HalfOpen>> {
    sockets(1 << TCP_SYN_RECV)
}

/// TCP states of a connection whose handshake completed: established, and every closing
/// state (TIME_WAIT included: a server that closes first keeps one for a minute).
const CONNECTED: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9) | (1 << 11);

/// The peers of every TCP connection in this network namespace whose handshake
/// completed, each once.
pub fn connected_peers() -> io::Result<Vec<IpAddr>> {
    let mut peers: Vec<IpAddr> = sockets(CONNECTED)?.into_iter().map(|s| s.peer).collect();
    peers.sort_unstable();
    peers.dedup();
    Ok(peers)
}

/// Every TCP socket in this network namespace in one of `states` (a bit per state).
fn sockets(states: u32) -> io::Result<Vec<HalfOpen>> {
    let fd = nl_socket()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send(
            &fd,
            &message(
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                family,
                states,
                &[0; SOCKID_LEN],
            ),
        )?;
        'dump: loop {
            let n = recv(&fd, &mut buf)?;
            if n == 0 {
                break;
            }
            for (kind, payload) in messages(&buf[..n]) {
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        break 'dump;
                    }
                    SOCK_DIAG_BY_FAMILY if payload.len() >= MSG_LEN => {
                        let fam = payload[0];
                        let state = u32::from(payload[1]);
                        let retrans = payload[3];
                        let mut id = [0u8; SOCKID_LEN];
                        id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
                        if states & (1 << state) != 0
                            && let Some(peer) = peer_of(fam, &id)
                        {
                            out.push(HalfOpen {
                                family: fam,
                                id,
                                peer,
                                retrans,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// Destroy one half-open connection.
pub fn destroy(h: &HalfOpen) -> io::Result<()> {
    let fd = nl_socket()?;
    send(
        &fd,
        &message(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            h.family,
            1 << TCP_SYN_RECV,
            &h.id,
        ),
    )?;
    let mut buf = [0u8; 512];
    let n = recv(&fd, &mut buf)?;
    for (kind, payload) in messages(&buf[..n]) {
        if kind == NLMSG_ERROR {
            let errno = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            return if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            };
        }
    }
    Ok(())
}

/// Destroy every half-open connection from `net`. Returns how many went; connections that
/// completed or vanished in between are not errors.
pub fn purge(net: &IpNet) -> io::Result<usize> {
    purge_where(|h| net.contains(&h.peer))
}

/// Destroy every half-open connection `doomed` says.
pub fn purge_where(mut doomed: impl FnMut(&HalfOpen) -> bool) -> io::Result<usize> {
    let mut n = 0;
    for h in half_open()?.into_iter().filter(|h| doomed(h)) {
        match destroy(&h) {
            Ok(()) => n += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = message(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            2,
            1 << TCP_SYN_RECV,
            &[9; SOCKID_LEN],
        );
        assert_eq!(m.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 21);
        assert_eq!((m[16], m[17]), (2, 6));
        assert_eq!(u32::from_ne_bytes([m[20], m[21], m[22], m[23]]), 1 << 3);
        assert_eq!(&m[24..], &[9; SOCKID_LEN]);
    }

    #[test]
    fn peers_and_framing() {
        let mut id = [0u8; SOCKID_LEN];
        id[20..24].copy_from_slice(&[203, 0, 113, 7]);
        assert_eq!(
            peer_of(libc::AF_INET as u8, &id),
            Some("203.0.113.7".parse().unwrap())
        );
        let mut id6 = [0u8; SOCKID_LEN];
        id6[20..36].copy_from_slice(&"::ffff:198.51.100.1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            peer_of(libc::AF_INET6 as u8, &id6),
            Some("198.51.100.1".parse().unwrap())
        );
        // Two messages, the first padded to 4 bytes; a truncated third is ignored.
        let mut buf = Vec::new();
        buf.extend_from_slice(&18u32.to_ne_bytes());
        buf.extend_from_slice(&20u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]); // flags, seq, pid
        buf.extend_from_slice(&[0xaa, 0xbb, 0, 0]); // payload and padding
        buf.extend_from_slice(&16u32.to_ne_bytes());
        buf.extend_from_slice(&3u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&[100, 0, 0]);
        let m = messages(&buf);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].0, m[0].1), (20, &[0xaa, 0xbb][..]));
        assert_eq!(m[1].0, 3);
    }
}
