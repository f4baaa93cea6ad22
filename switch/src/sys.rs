//! AF_PACKET ports: the only `unsafe` code of the switch crate.
//!
//! Contract: [`PacketPort::open`] binds a raw packet socket to one interface
//! of the calling thread's namespace with `PACKET_VNET_HDR` (frames carry a
//! `virtio_net_hdr`, so GSO super-frames and partial checksums pass whole),
//! `PACKET_AUXDATA` (to restore VLAN tags the kernel strips),
//! `PACKET_IGNORE_OUTGOING` (our own transmits are not received back) and
//! `PACKET_QDISC_BYPASS`. Receive and send use `recvmmsg`/`sendmmsg` over the
//! worker's [`Batch`], with header arrays allocated once per port.

use crate::port::{BATCH, Batch, HEADROOM, PortIo, SLOT, TxOutcome};
use crate::wire::VNET_HDR_LEN;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_OUTGOING: u8 = 4;
const TP_STATUS_VLAN_VALID: u32 = 0x10;
const TP_STATUS_VLAN_TPID_VALID: u32 = 0x40;
const ETH_P_ALL: u16 = 0x0003;

/// `struct tpacket_auxdata` from `linux/if_packet.h`.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code)] // mirrors the kernel struct; not every field is read
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// `struct packet_mreq`.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

const CTRL_LEN: usize = 64;

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; we pass a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setsockopt {what}: {e}")));
    }
    Ok(())
}

/// Interface index of `name` in the calling thread's namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {name}: {e}")));
    }
    Ok(idx)
}

/// A packet socket bound to one interface, with batch I/O.
pub struct PacketPort {
    fd: OwnedFd,
    ifindex: u32,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_ll>,
    ctrl: Vec<[u8; CTRL_LEN]>,
}

// SAFETY: the raw pointers inside `hdrs`/`iovs` are scratch: they are
// rewritten before every recvmmsg/sendmmsg and never dereferenced by us, so
// moving the port to another thread (it is opened on a namespace thread and
// used by the worker) shares nothing.
unsafe impl Send for PacketPort {}

impl PacketPort {
    /// Open and bind a packet socket on interface `name` of the calling thread's namespace.
    pub fn open(name: &str) -> io::Result<PacketPort> {
        let ifindex = if_index(name)?;
        // Protocol 0 at creation: nothing is received until bind() names the
        // interface, so no frame of another interface slips in.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("AF_PACKET socket: {e}")));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_AUXDATA, 1, "PACKET_AUXDATA")?;
        setsockopt_int(
            &fd,
            SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            1,
            "PACKET_IGNORE_OUTGOING",
        )?;
        setsockopt_int(
            &fd,
            SOL_PACKET,
            PACKET_QDISC_BYPASS,
            1,
            "PACKET_QDISC_BYPASS",
        )?;
        // Large buffers absorb bursts between two polls; FORCE needs CAP_NET_ADMIN,
        // fall back to the capped variant.
        for (force, plain, what) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF"),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"),
        ] {
            if setsockopt_int(&fd, libc::SOL_SOCKET, force, 8 << 20, what).is_err() {
                setsockopt_int(&fd, libc::SOL_SOCKET, plain, 8 << 20, what)?;
            }
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid before we fill it.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its exact size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("bind AF_PACKET to {name}: {e}"),
            ));
        }
        let mreq = PacketMreq {
            mr_ifindex: ifindex as i32,
            mr_type: PACKET_MR_PROMISC,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // SAFETY: `mreq` is a live packet_mreq and we pass its exact size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_ADD_MEMBERSHIP,
                &mreq as *const PacketMreq as *const libc::c_void,
                size_of::<PacketMreq>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("promiscuous mode on {name}: {e}"),
            ));
        }
        Ok(PacketPort {
            fd,
            ifindex,
            // SAFETY: mmsghdr, iovec and sockaddr_ll are plain C data for which
            // all-zero bytes are valid; pointers are set before every use.
            hdrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            iovs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            names: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            ctrl: vec![[0; CTRL_LEN]; BATCH],
        })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

fn auxdata(ctrl: &[u8], len: usize) -> Option<TpacketAuxdata> {
    // A cmsghdr (len: usize, level: i32, type: i32) followed by the data; we
    // asked for one kind of cmsg only, so the first one is it.
    let hdr = size_of::<libc::cmsghdr>();
    if len < hdr + size_of::<TpacketAuxdata>() {
        return None;
    }
    let level = i32::from_ne_bytes(ctrl[8..12].try_into().ok()?);
    let ty = i32::from_ne_bytes(ctrl[12..16].try_into().ok()?);
    if level != SOL_PACKET || ty != PACKET_AUXDATA {
        return None;
    }
    let d = &ctrl[hdr..hdr + size_of::<TpacketAuxdata>()];
    let u32_at = |i: usize| u32::from_ne_bytes(d[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_ne_bytes(d[i..i + 2].try_into().unwrap());
    Some(TpacketAuxdata {
        tp_status: u32_at(0),
        tp_len: u32_at(4),
        tp_snaplen: u32_at(8),
        tp_mac: u16_at(12),
        tp_net: u16_at(14),
        tp_vlan_tci: u16_at(16),
        tp_vlan_tpid: u16_at(18),
    })
}

impl PortIo for PacketPort {
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        batch.clear();
        for i in 0..BATCH {
            let area = batch.rx_area(i);
            self.iovs[i] = libc::iovec {
                iov_base: area.as_mut_ptr() as *mut libc::c_void,
                iov_len: area.len(),
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = &mut self.names[i] as *mut libc::sockaddr_ll as *mut libc::c_void;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_controllen = CTRL_LEN;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at buffers that live in `self` or `batch`
        // for the duration of the call (iovec → batch slot, name → self.names,
        // control → self.ctrl) with the lengths given; BATCH entries exist.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                // The link went down: nothing to read now; the port stays.
                Some(libc::ENETDOWN) => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        let mut kept = 0;
        for i in 0..n {
            let h = self.hdrs[i];
            if self.names[i].sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            let len = h.msg_len as usize;
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > SLOT - HEADROOM;
            if kept != i {
                // Compact: move the frame to slot `kept` (rare: only after a skipped outgoing frame).
                batch.move_rx(i, kept, len.min(SLOT - HEADROOM));
            }
            batch.set_filled(kept, len.min(SLOT - HEADROOM), truncated);
            if let Some(aux) = auxdata(&self.ctrl[i], h.msg_hdr.msg_controllen)
                && aux.tp_status & TP_STATUS_VLAN_VALID != 0
                && len >= VNET_HDR_LEN + 12
            {
                let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    0x8100
                };
                batch.insert_vlan_tag(kept, tpid, aux.tp_vlan_tci);
            }
            kept += 1;
        }
        Ok(kept)
    }

    fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
        let mut o = TxOutcome::default();
        let count = idx.len().min(BATCH);
        for (k, &i) in idx[..count].iter().enumerate() {
            let w = batch.wire(i as usize);
            self.iovs[k] = libc::iovec {
                iov_base: w.as_ptr() as *mut libc::c_void,
                iov_len: w.len(),
            };
            let h = &mut self.hdrs[k];
            h.msg_len = 0;
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        let mut off = 0;
        while off < count {
            // SAFETY: headers [off, count) point at iovecs in `self` that point
            // at frames in `batch`, all alive for the call; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(off),
                    (count - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                for k in off..off + r as usize {
                    o.bytes += (self.iovs[k].iov_len - VNET_HDR_LEN) as u64;
                }
                o.sent += r as usize;
                off += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENXIO) | Some(libc::ENODEV) => return Err(e),
                // Full queue, link down, frame refused: drop this one, go on.
                _ => {
                    o.failed += 1;
                    off += 1;
                }
            }
        }
        o.failed += idx.len() - count;
        Ok(o)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A link event from the kernel (`RTM_NEWLINK` / `RTM_DELLINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    /// True for `RTM_NEWLINK` (created or changed), false for `RTM_DELLINK`.
    pub new: bool,
    /// Interface index.
    pub index: u32,
    /// Interface name (empty if the message carried none).
    pub name: String,
    /// Hardware address, if the message carried a 6-byte one.
    pub mac: Option<[u8; 6]>,
}

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const RTMGRP_LINK: u32 = 1;

/// Parse the link events in one netlink datagram `b`; other message types
/// and malformed messages are skipped (never a panic).
pub fn parse_link_events(mut b: &[u8], out: &mut Vec<LinkEvent>) {
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            return;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let msg = &b[16..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        if (ty != RTM_NEWLINK && ty != RTM_DELLINK) || msg.len() < 16 {
            continue;
        }
        let mut ev = LinkEvent {
            new: ty == RTM_NEWLINK,
            index: u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]),
            name: String::new(),
            mac: None,
        };
        let mut a = &msg[16..];
        while a.len() >= 4 {
            let alen = usize::from(u16::from_ne_bytes([a[0], a[1]]));
            let aty = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
            if alen < 4 || alen > a.len() {
                break;
            }
            let v = &a[4..alen];
            match aty {
                IFLA_IFNAME => {
                    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                    ev.name = String::from_utf8_lossy(&v[..end]).into_owned();
                }
                IFLA_ADDRESS => ev.mac = v.try_into().ok(),
                _ => {}
            }
            a = &a[alen.next_multiple_of(4).min(a.len())..];
        }
        out.push(ev);
    }
}

/// An rtnetlink socket subscribed to link events (`RTMGRP_LINK`) of the
/// namespace it was opened in (open it inside `in_netns` for another one).
/// Non-blocking: the worker polls its fd with the ports.
pub struct LinkMonitor {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribe to link events of the calling thread's namespace.
    pub fn open() -> io::Result<LinkMonitor> {
        use nix::sys::socket::{
            AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
        Ok(LinkMonitor {
            fd,
            buf: vec![0; 1 << 16],
        })
    }

    /// Read every pending event into `out`. `Err` with `ENOBUFS` means events
    /// were lost (the socket overflowed): the caller must re-check its links.
    pub fn read(&mut self, out: &mut Vec<LinkEvent>) -> io::Result<()> {
        use nix::sys::socket::{MsgFlags, recv};
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Ok(()),
                Ok(n) => parse_link_events(&self.buf[..n], out),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The port of a removed slot: never readable, refuses to send.
pub struct Detached {
    fd: OwnedFd,
}

impl Detached {
    /// A detached placeholder (an eventfd that is never written).
    pub fn new() -> io::Result<Detached> {
        let e = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )?;
        Ok(Detached { fd: e.into() })
    }
}

impl PortIo for Detached {
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        batch.clear();
        Ok(0)
    }
    fn tx_batch(&mut self, _: &Batch, _: &[u16]) -> io::Result<TxOutcome> {
        Err(io::Error::from_raw_os_error(libc::ENODEV))
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Put the calling thread in the `SCHED_IDLE` class: it runs only when a CPU
/// would otherwise idle, so background work (the state writer) never takes
/// a core from the forwarding thread. Errors are returned, not fatal.
pub fn set_thread_idle_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param that
    // outlives the call; SCHED_IDLE requires priority 0.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auxdata_layout_matches_the_kernel() {
        // struct tpacket_auxdata is 20 bytes (linux/if_packet.h).
        assert_eq!(size_of::<TpacketAuxdata>(), 20);
        let mut ctrl = [0u8; CTRL_LEN];
        let hdr = size_of::<libc::cmsghdr>();
        ctrl[..8].copy_from_slice(&((hdr + 20) as u64).to_ne_bytes());
        ctrl[8..12].copy_from_slice(&SOL_PACKET.to_ne_bytes());
        ctrl[12..16].copy_from_slice(&PACKET_AUXDATA.to_ne_bytes());
        ctrl[hdr..hdr + 4].copy_from_slice(&(TP_STATUS_VLAN_VALID).to_ne_bytes());
        ctrl[hdr + 16..hdr + 18].copy_from_slice(&10u16.to_ne_bytes());
        let a = auxdata(&ctrl, hdr + 20).unwrap();
        assert_eq!(a.tp_status, TP_STATUS_VLAN_VALID);
        assert_eq!(a.tp_vlan_tci, 10);
        assert!(auxdata(&ctrl, 4).is_none());
    }

    #[test]
    fn link_events_are_parsed_and_malformed_ones_skipped() {
        // RTM_DELLINK, index 7, IFLA_IFNAME "veth-red-br", IFLA_ADDRESS.
        let mut m = Vec::new();
        let name = b"veth-red-br\0";
        let attrs_len = (4 + name.len()).next_multiple_of(4) + 12;
        let len = 16 + 16 + attrs_len;
        m.extend((len as u32).to_ne_bytes());
        m.extend(RTM_DELLINK.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([0u8; 4]);
        m.extend(7i32.to_ne_bytes());
        m.extend([0u8; 8]);
        m.extend(((4 + name.len()) as u16).to_ne_bytes());
        m.extend(IFLA_IFNAME.to_ne_bytes());
        m.extend(name);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m.extend(10u16.to_ne_bytes());
        m.extend(IFLA_ADDRESS.to_ne_bytes());
        m.extend([2, 0, 0, 0, 0, 9, 0, 0]);
        assert_eq!(m.len(), len);
        let mut out = Vec::new();
        parse_link_events(&m, &mut out);
        assert_eq!(
            out,
            vec![LinkEvent {
                new: false,
                index: 7,
                name: "veth-red-br".into(),
                mac: Some([2, 0, 0, 0, 0, 9]),
            }]
        );
        // Every truncation and a lying length: no panic, nothing bogus.
        for cut in 0..m.len() {
            let mut o = Vec::new();
            parse_link_events(&m[..cut], &mut o);
            assert!(o.iter().all(|e| e.index == 7));
        }
        let mut bad = m.clone();
        bad[32..34].copy_from_slice(&200u16.to_ne_bytes());
        let mut o = Vec::new();
        parse_link_events(&bad, &mut o);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].name, "");
    }
}
