//! ICMP echo from inside a named network namespace, printed like `ping`.
//!
//! `vswitch demo` checks the seed topology with it, so that the demo needs
//! no `iputils-ping` (nor `ip netns exec`). Contract: the socket is opened
//! inside the namespace (a raw ICMP socket, which needs root or
//! CAP_NET_RAW; else an unprivileged ICMP datagram socket, which
//! `net.ipv4.ping_group_range` must allow) and used from the calling thread;
//! every wait is bounded by `wait` per request; nothing else in the
//! namespace is touched.

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto, socket,
};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// What a [`ping`] run counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u32,
    /// Echo replies received (each request counted once).
    pub received: u32,
}

impl PingStats {
    /// Lost share in percent (100 when nothing was sent).
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 100.0;
        }
        100.0 * f64::from(self.sent - self.received) / f64::from(self.sent)
    }
}

/// Data bytes after the 8-byte ICMP header (as ping's default).
const DATA: usize = 56;

/// Open an ICMP socket in the current namespace: raw if allowed, else datagram.
/// Returns the socket and whether it is raw (replies then carry the IP header).
fn open_icmp() -> io::Result<(OwnedFd, bool)> {
    let raw = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    );
    match raw {
        Ok(fd) => Ok((fd, true)),
        Err(Errno::EPERM | Errno::EACCES) => socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .map(|fd| (fd, false))
        .map_err(|e| {
            io::Error::other(format!(
                "cannot open an ICMP socket: a raw one needs root, a datagram one net.ipv4.ping_group_range ({e})"
            ))
        }),
        Err(e) => Err(e.into()),
    }
}

/// An echo request: type 8, identifier `id`, sequence `seq`, [`DATA`] bytes.
fn echo_request(id: u16, seq: u16) -> [u8; 8 + DATA] {
    let mut p = [0u8; 8 + DATA];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = nat::checksum::checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// A received datagram as an echo reply from `from`: (sequence, TTL if known,
/// ICMP length), or `None` if it is something else. `raw`: it starts with the
/// IP header. A raw socket sees every ICMP packet, so the identifier must be
/// ours; a datagram socket's identifier is the kernel's, and it only delivers
/// this socket's replies.
fn parse_reply(buf: &[u8], raw: bool, id: u16, from: Ipv4Addr) -> Option<(u16, Option<u8>, usize)> {
    let (icmp, ttl) = if raw {
        let ihl = usize::from(*buf.first()? & 0xf) * 4;
        if buf.len() < ihl + 8 || buf.get(12..16)? != from.octets() {
            return None;
        }
        (&buf[ihl..], Some(buf[8]))
    } else {
        (buf, None)
    };
    if icmp.len() < 8 || icmp[0] != 0 {
        return None;
    }
    if raw && u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some((u16::from_be_bytes([icmp[6], icmp[7]]), ttl, icmp.len()))
}

/// Send `count` echo requests to `dst` from inside namespace `netns`, one per
/// `interval`, waiting at most `wait` for each reply; print ping-like lines
/// and the loss summary to `out`.
pub fn ping(
    netns: &str,
    dst: Ipv4Addr,
    count: u16,
    interval: Duration,
    wait: Duration,
    out: &mut dyn Write,
) -> io::Result<PingStats> {
    let ns = netns_setup::setup::open_netns(netns).map_err(io::Error::other)?;
    let (fd, raw) = netns_setup::netns::in_netns(Some(&ns), open_icmp)??;
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let id = (std::process::id() & 0xffff) as u16 ^ 0x5653;
    let mut st = PingStats {
        sent: 0,
        received: 0,
    };
    let mut got = vec![false; usize::from(count) + 1];
    writeln!(out, "PING {dst} from namespace {netns}: {DATA} data bytes")?;
    let mut buf = [0u8; 1500];
    for seq in 1..=count {
        let t0 = Instant::now();
        sendto(
            fd.as_raw_fd(),
            &echo_request(id, seq),
            &to,
            MsgFlags::empty(),
        )?;
        st.sent += 1;
        let deadline = t0 + wait;
        while !got[usize::from(seq)] {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let n = match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
                Ok((n, _)) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some((s, ttl, len)) = parse_reply(&buf[..n], raw, id, dst) else {
                continue;
            };
            let k = usize::from(s);
            if s == 0 || s > seq || got[k] {
                continue;
            }
            got[k] = true;
            st.received += 1;
            let ttl = ttl.map(|t| format!(" ttl={t}")).unwrap_or_default();
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            writeln!(
                out,
                "{len} bytes from {dst}: icmp_seq={s}{ttl} time={ms:.3} ms"
            )?;
        }
        if seq < count {
            std::thread::sleep(interval.saturating_sub(t0.elapsed()));
        }
    }
    writeln!(out, "--- {dst} ping statistics ---")?;
    writeln!(
        out,
        "{} packets transmitted, {} received, {:.0}% packet loss",
        st.sent,
        st.received,
        st.loss_pct()
    )?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_valid_and_replies_are_matched() {
        let p = echo_request(0x1234, 7);
        assert_eq!(nat::checksum::checksum(&p), 0);
        let from = Ipv4Addr::new(192, 168, 15, 2);
        // A raw reply: IP header (TTL 63, from `from`) + echo reply.
        let mut r = vec![
            0x45, 0, 0, 84, 0, 0, 0, 0, 63, 1, 0, 0, 192, 168, 15, 2, 192, 168, 15, 1,
        ];
        let mut icmp = p.to_vec();
        icmp[0] = 0;
        r.extend(&icmp);
        assert_eq!(parse_reply(&r, true, 0x1234, from), Some((7, Some(63), 64)));
        assert_eq!(
            parse_reply(&r, true, 0x4321, from),
            None,
            "another identifier"
        );
        assert_eq!(
            parse_reply(&r, true, 0x1234, Ipv4Addr::new(1, 2, 3, 4)),
            None
        );
        r[20] = 8;
        assert_eq!(parse_reply(&r, true, 0x1234, from), None, "a request");
        assert_eq!(parse_reply(&icmp, false, 0, from), Some((7, None, 64)));
        assert_eq!(parse_reply(&r[..25], true, 0x1234, from), None);
        assert_eq!(
            PingStats {
                sent: 4,
                received: 3
            }
            .loss_pct(),
            25.0
        );
    }
}
