//! AF_PACKET ports: the only `unsafe` code of the switch crate.
//!
//! Contract: [`PacketPort::open`] binds a raw packet socket to one interface
//! of the calling thread's namespace with `PACKET_VNET_HDR` (frames carry a
//! `virtio_net_hdr`, so GSO super-frames and partial checksums pass whole),
//! `PACKET_AUXDATA` (to restore VLAN tags the kernel strips),
//! `PACKET_IGNORE_OUTGOING` (our own transmits are not received back) and
//! `PACKET_QDISC_BYPASS`. Receive and send use `recvmmsg`/`sendmmsg` over the
//! worker's [`Batch`], with header arrays allocated once per port.
//!
//! [`RingPort`] is the same port over TPACKET_V2 receive and transmit rings
//! (`[switch] io = "ring"`): see its docs for the geometry, the memory it
//! pins and the slot hand-over rules. Both kinds report the kernel's receive
//! drops ([`PortIo::take_kernel_rx_drops`], from `PACKET_STATISTICS`).

use crate::port::{BATCH, Batch, HEADROOM, PortIo, SLOT, TxOutcome};
use crate::steer::Insn;
use crate::wire::VNET_HDR_LEN;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_COPY_THRESH: libc::c_int = 7;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
const TPACKET_V2: libc::c_int = 1;
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

/// `setsockopt` with a plain C value `val` (an int, `packet_mreq`,
/// `tpacket_req`); `what` names the option in the error.
fn setsockopt_val<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: &T,
    what: &dyn std::fmt::Display,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; we pass a pointer to a live `T` and
    // its exact size, and the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
    what: &str,
) -> io::Result<()> {
    setsockopt_val(fd, level, opt, &val, &format_args!("setsockopt {what}"))
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

// ---- VXLAN underlay ----

/// Largest number of datagrams one [`Underlay::send`] call takes.
pub const UNDERLAY_MSGS: usize = 512;

/// What [`Underlay::recv`] learned of one datagram.
#[derive(Debug, Clone, Copy)]
pub struct RxDatagram {
    /// UDP payload length (VXLAN header + inner frame).
    pub len: usize,
    /// Outer source address (the sending VTEP).
    pub src: std::net::Ipv4Addr,
    /// Longer than the slot: cut short.
    pub truncated: bool,
    /// The kernel coalesced datagrams of one flow (`UDP_GRO`): each is this
    /// long, the last possibly shorter (0: one datagram).
    pub gro: usize,
}

impl Default for RxDatagram {
    fn default() -> Self {
        RxDatagram {
            len: 0,
            src: std::net::Ipv4Addr::UNSPECIFIED,
            truncated: false,
            gro: 0,
        }
    }
}

/// The underlay sockets of a VXLAN port: a UDP socket bound to the local
/// address and port receives; a raw IPv4 socket (`IPPROTO_RAW`, receives
/// nothing) sends datagrams whose outer IPv4/UDP headers we write, so the
/// UDP source port can follow each inner flow and the DF bit the
/// configuration. The kernel routes them and resolves the next hop.
pub struct Underlay {
    udp: OwnedFd,
    raw: OwnedFd,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<[libc::iovec; 3]>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<[u8; CTRL_LEN]>,
    /// UDP sockets bound to the local address, one source port each, for
    /// UDP GSO sends (`UDP_SEGMENT`), with the DF setting each has.
    pool: Vec<(OwnedFd, u16, Option<bool>)>,
    giov: Vec<libc::iovec>,
}

/// UDP sockets of an underlay's send pool: a flow hash picks one, and its
/// port is the outer source port of the flow's datagrams.
pub const UNDERLAY_POOL: usize = 16;
/// Most segments of one `UDP_SEGMENT` send.
pub const GSO_MAX_SEGS: usize = 64;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

// SAFETY: as for `PacketPort`: the raw pointers in `hdrs`/`iovs` are scratch,
// rewritten before every call and never dereferenced by us.
unsafe impl Send for Underlay {}

fn sockaddr_in(a: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the returned descriptor is owned by the OwnedFd.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Underlay {
    /// Bind UDP `local:port` and open the raw sender, in the calling
    /// thread's namespace. Errors name the address (in use, not local).
    pub fn open(local: std::net::Ipv4Addr, port: u16) -> io::Result<Underlay> {
        let udp = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        // Bursts of a 64 KiB super-frame's segments: room for several.
        let _ = setsockopt_int(
            &udp,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            8 << 20,
            "SO_RCVBUFFORCE",
        );
        let sa = sockaddr_in(local, port);
        // SAFETY: `sa` is a valid sockaddr_in of the size given, alive for the call.
        let rc = unsafe {
            libc::bind(
                udp.as_raw_fd(),
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("bind UDP {local}:{port}: {e}"),
            ));
        }
        // Coalesced receive where the kernel can (a GSO sender on this
        // machine, GRO on a NIC); without it datagrams come one by one.
        let _ = setsockopt_int(&udp, SOL_UDP, UDP_GRO, 1, "UDP_GRO");
        let raw = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("raw IPv4 socket (needs CAP_NET_RAW): {e}"),
            )
        })?;
        let _ = setsockopt_int(
            &raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            8 << 20,
            "SO_SNDBUFFORCE",
        );
        let n = BATCH.max(UNDERLAY_MSGS);
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs for which all-zero is valid.
        let (hdrs, iovs, names) =
            unsafe { (vec![zeroed(); n], vec![[zeroed(); 3]; n], vec![zeroed(); n]) };
        let mut pool = Vec::with_capacity(UNDERLAY_POOL);
        for _ in 0..UNDERLAY_POOL {
            let u = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
            let _ = setsockopt_int(
                &u,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                1 << 20,
                "SO_SNDBUFFORCE",
            );
            let sa = sockaddr_in(local, 0);
            let mut got = sockaddr_in(local, 0);
            let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: bind reads `sa`; getsockname writes at most `len`
            // bytes into `got`; both live for the calls.
            let rc = unsafe {
                let r = libc::bind(
                    u.as_raw_fd(),
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if r == 0 {
                    libc::getsockname(
                        u.as_raw_fd(),
                        &mut got as *mut libc::sockaddr_in as *mut libc::sockaddr,
                        &mut len,
                    )
                } else {
                    r
                }
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("bind a UDP send socket to {local}: {e}"),
                ));
            }
            pool.push((u, u16::from_be(got.sin_port), None));
        }
        Ok(Underlay {
            udp,
            raw,
            hdrs,
            iovs,
            names,
            ctrl: vec![[0; CTRL_LEN]; BATCH],
            pool,
            giov: Vec::with_capacity(2 * GSO_MAX_SEGS),
        })
    }

    /// Receive up to `BATCH - from` datagrams, datagram `i` into `batch`'s
    /// slot `from + i` from byte `off` of its receive area; `meta[i]` says
    /// what came. Returns how many (0: none waiting). Slots are not marked filled.
    pub fn recv(
        &mut self,
        batch: &mut Batch,
        off: usize,
        from: usize,
        meta: &mut [RxDatagram; BATCH],
    ) -> io::Result<usize> {
        let want = BATCH.saturating_sub(from);
        if want == 0 {
            return Ok(0);
        }
        for i in 0..want {
            let area = &mut batch.rx_area(from + i)[off..];
            self.iovs[i][0] = libc::iovec {
                iov_base: area.as_mut_ptr() as *mut libc::c_void,
                iov_len: area.len(),
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = &mut self.names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = self.iovs[i].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_controllen = CTRL_LEN;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at buffers alive for the call (iovec →
        // batch slot, name → self.names) with the lengths given; BATCH entries exist.
        let n = unsafe {
            libc::recvmmsg(
                self.udp.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                want as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        for (i, m) in meta.iter_mut().enumerate().take(n as usize) {
            let h = &self.hdrs[i];
            *m = RxDatagram {
                len: h.msg_len as usize,
                src: std::net::Ipv4Addr::from(u32::from_be(self.names[i].sin_addr.s_addr)),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                gro: gro_size(&self.ctrl[i], h.msg_hdr.msg_controllen),
            };
        }
        Ok(n as usize)
    }

    /// Send `n` (at most [`UNDERLAY_MSGS`]) IPv4 datagrams; `msg(i)` gives
    /// datagram `i`'s destination and its bytes in up to three parts (outer
    /// headers first). Returns (sent, refused): a full queue or an
    /// unreachable VTEP refuses that datagram, the rest go on.
    pub fn send<'a>(
        &mut self,
        n: usize,
        msg: impl Fn(usize) -> (std::net::Ipv4Addr, [&'a [u8]; 3]),
    ) -> (usize, usize) {
        let n = n.min(UNDERLAY_MSGS);
        for i in 0..n {
            let (dst, parts) = msg(i);
            self.names[i] = sockaddr_in(dst, 0);
            for (j, p) in parts.iter().enumerate() {
                self.iovs[i][j] = libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                };
            }
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = &mut self.names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = self.iovs[i].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 3;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        let (mut off, mut refused) = (0, 0);
        while off < n {
            // SAFETY: headers [off, n) point at iovecs and names in `self`,
            // which point at the caller's slices (lifetime 'a, alive for the
            // call); the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    self.raw.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(off),
                    (n - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                off += r as usize;
                continue;
            }
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            refused += 1;
            off += 1;
        }
        (n - refused, refused)
    }

    /// The receive socket, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.udp.as_fd()
    }

    /// The outer source port of pool socket `i` (of [`UNDERLAY_POOL`]).
    pub fn pool_port(&self, i: usize) -> u16 {
        self.pool[i % self.pool.len()].1
    }

    /// Send `n` parts (`part(i)`; concatenated: datagrams of `seg` bytes
    /// each, the last possibly shorter, at most [`GSO_MAX_SEGS`]) to `dst:port` in one
    /// `UDP_SEGMENT` send from pool socket `i`, with DF as given: the kernel
    /// cuts them (or the NIC does). `Err` when the kernel refuses.
    pub fn send_gso<'a>(
        &mut self,
        i: usize,
        (dst, port): (std::net::Ipv4Addr, u16),
        df: bool,
        seg: u16,
        n: usize,
        part: impl Fn(usize) -> &'a [u8],
    ) -> io::Result<()> {
        let i = i % self.pool.len();
        if self.pool[i].2 != Some(df) {
            let v = if df {
                libc::IP_PMTUDISC_DO
            } else {
                libc::IP_PMTUDISC_DONT
            };
            setsockopt_int(
                &self.pool[i].0,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                v,
                "IP_MTU_DISCOVER",
            )?;
            self.pool[i].2 = Some(df);
        }
        self.giov.clear();
        for p in (0..n).map(part) {
            self.giov.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        let mut name = sockaddr_in(dst, port);
        // One cmsg: UDP_SEGMENT with the segment size (a u16).
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; },
        // data after it: CMSG_LEN(2) = header + 2, CMSG_SPACE(2) rounds up.
        let mut ctrl = [0u8; 24];
        let (hdr, w) = (size_of::<libc::cmsghdr>(), size_of::<usize>());
        ctrl[..w].copy_from_slice(&(hdr + 2).to_ne_bytes());
        ctrl[w..w + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
        ctrl[w + 4..w + 8].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
        ctrl[hdr..hdr + 2].copy_from_slice(&seg.to_ne_bytes());
        let space = (hdr + 2).next_multiple_of(w);
        // SAFETY: msghdr is a plain C struct; all-zero is valid before we fill it.
        let mut m: libc::msghdr = unsafe { zeroed() };
        m.msg_name = &mut name as *mut libc::sockaddr_in as *mut libc::c_void;
        m.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        m.msg_iov = self.giov.as_mut_ptr();
        m.msg_iovlen = self.giov.len();
        m.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        m.msg_controllen = space as _;
        loop {
            // SAFETY: `m` points at `name`, `self.giov` (→ the caller's
            // slices) and `ctrl`, all alive for the call; the kernel only reads them.
            let r = unsafe { libc::sendmsg(self.pool[i].0.as_raw_fd(), &m, libc::MSG_DONTWAIT) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

/// The segment size of a `UDP_GRO` control message (0: none).
fn gro_size(ctrl: &[u8], len: usize) -> usize {
    let hdr = size_of::<libc::cmsghdr>();
    if len < hdr + 4 {
        return 0;
    }
    let w = size_of::<usize>();
    let level = i32::from_ne_bytes(ctrl[w..w + 4].try_into().expect("4 bytes"));
    let ty = i32::from_ne_bytes(ctrl[w + 4..w + 8].try_into().expect("4 bytes"));
    if level != SOL_UDP || ty != UDP_GRO {
        return 0;
    }
    i32::from_ne_bytes(ctrl[hdr..hdr + 4].try_into().expect("4 bytes")).max(0) as usize
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

/// A non-blocking raw packet socket for interface `name`, not yet bound,
/// with the options both port kinds share: `PACKET_IGNORE_OUTGOING`,
/// `PACKET_QDISC_BYPASS`, 8 MiB socket buffers, and the steering program
/// of its worker (`steer`, [`crate::steer`]), attached before the bind so
/// that no frame is received unfiltered.
fn packet_socket(name: &str, steer: Option<&[Insn]>) -> io::Result<(OwnedFd, u32)> {
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
    if let Some(prog) = steer {
        attach_filter(&fd, prog)?;
    }
    Ok((fd, ifindex))
}

/// Attach a classic BPF program to a socket (`SO_ATTACH_FILTER`).
fn attach_filter(fd: &OwnedFd, prog: &[Insn]) -> io::Result<()> {
    let mut insns: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let len = u16::try_from(insns.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: insns.as_mut_ptr(),
    };
    // The kernel copies the program during the call; `insns` outlives it.
    setsockopt_val(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &fprog,
        &"SO_ATTACH_FILTER (worker steering)",
    )
}

/// Bind `fd` to `ifindex` for every protocol and join it in promiscuous mode.
fn bind_promisc(fd: &OwnedFd, ifindex: u32, name: &str) -> io::Result<()> {
    bind_to(fd, ifindex, ETH_P_ALL, name)?;
    let mreq = PacketMreq {
        mr_ifindex: ifindex as i32,
        mr_type: PACKET_MR_PROMISC,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt_val(
        fd,
        SOL_PACKET,
        PACKET_ADD_MEMBERSHIP,
        &mreq,
        &format_args!("promiscuous mode on {name}"),
    )
}

/// Bind `fd` to `ifindex` for `protocol` (host order; 0: receive nothing).
fn bind_to(fd: &OwnedFd, ifindex: u32, protocol: u16, name: &str) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid before we fill it.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
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
    Ok(())
}

/// `struct tpacket_stats`: what `PACKET_STATISTICS` returns for V1/V2 and
/// sockets without a ring.
#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

/// Frames the kernel dropped on receive since the last call (the socket's
/// queue or ring was full). `getsockopt(PACKET_STATISTICS)` resets the
/// kernel's counters, so each call returns a delta; errors count as none.
fn packet_rx_drops(fd: &OwnedFd) -> u64 {
    let mut st = TpacketStats::default();
    let mut len = size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: `st` is a live tpacket_stats and `len` holds its exact size;
    // the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            &mut st as *mut TpacketStats as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 { 0 } else { u64::from(st.tp_drops) }
}

/// The pending error of socket `fd` (`SO_ERROR`, cleared by reading it).
fn socket_error(fd: &OwnedFd) -> Option<libc::c_int> {
    let mut e: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `e` is a live c_int and `len` its exact size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut e as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && e != 0).then_some(e)
}

impl PacketPort {
    /// Open and bind a packet socket on interface `name` of the calling thread's namespace.
    pub fn open(name: &str) -> io::Result<PacketPort> {
        Self::open_steered(name, None)
    }

    /// [`PacketPort::open`] with a worker's steering program (`[switch] workers > 1`).
    pub fn open_steered(name: &str, steer: Option<&[Insn]>) -> io::Result<PacketPort> {
        let (fd, ifindex) = packet_socket(name, steer)?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_AUXDATA, 1, "PACKET_AUXDATA")?;
        bind_promisc(&fd, ifindex, name)?;
        Ok(Self::with_fd(fd, ifindex))
    }

    /// A port over the bound socket `fd`, with its header arrays allocated once.
    fn with_fd(fd: OwnedFd, ifindex: u32) -> PacketPort {
        PacketPort {
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
        }
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// A send-only port on `name`: bound to the interface with protocol 0,
    /// so the kernel hooks no receive handler and nothing is ever queued
    /// on it (its `rx_batch` always finds nothing). The ring port sends
    /// super-frames through one ([`RingPort`]).
    pub fn open_tx_only(name: &str) -> io::Result<PacketPort> {
        let (fd, ifindex) = packet_socket(name, None)?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        bind_to(&fd, ifindex, 0, name)?;
        Ok(Self::with_fd(fd, ifindex))
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

    fn take_kernel_rx_drops(&mut self) -> u64 {
        packet_rx_drops(&self.fd)
    }
}

// ---- TPACKET_V2 rings ----

/// RX slot owned by the kernel / handed to us (`tp_status`).
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
/// RX: the frame did not fit the slot; a whole copy waits in the socket queue.
const TP_STATUS_COPY: u32 = 2;
/// TX slot free / queued by us / being sent by the kernel / refused.
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_SENDING: u32 = 2;
/// `TPACKET_ALIGNMENT`: frame sizes and header offsets are multiples of it.
const TPACKET_ALIGNMENT: usize = 16;
/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where the `sockaddr_ll` of
/// an RX frame starts.
const TPACKET2_HDR_ALIGNED: usize = 32;
/// `TPACKET2_HDRLEN`: the aligned header plus the `sockaddr_ll`.
const TPACKET2_HDRLEN: usize = TPACKET2_HDR_ALIGNED + size_of::<libc::sockaddr_ll>();
/// Where a TX frame's data (our vnet header) starts without
/// `PACKET_TX_HAS_OFF`: `tp_hdrlen - sizeof(struct sockaddr_ll)`.
const TX_DATA_OFF: usize = TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>();
/// Where the kernel puts an Ethernet frame in an RX slot with a vnet header:
/// `TPACKET_ALIGN(tp_hdrlen + 16) + vnet header - 14` (`tpacket_rcv`).
const RX_MAC_OFF: usize =
    (TPACKET2_HDRLEN + 16).next_multiple_of(TPACKET_ALIGNMENT) + VNET_HDR_LEN - 14;
/// RX slot: 2 KiB holds a 1518-byte frame (a tagged MTU-size frame) at the
/// kernel's offset; larger frames take the `TP_STATUS_COPY` path.
const RX_SLOT: usize = 2048;
const _: () = assert!(RX_SLOT >= RX_MAC_OFF + 1518);
/// Smallest TX slot: the largest vnet header + frame the ring sends (longer
/// ones go through the port's bulk socket, [`BULK_MIN`]).
const TX_MIN_FRAME: usize = TX_DATA_OFF + BULK_MIN;
/// Ring block size: 1 MiB holds 512 RX slots, or 254 TX slots of 4,128 bytes.
const RING_BLOCK: usize = 1 << 20;
/// RX ring: 4 blocks, 2,048 slots (4 MiB per port).
const RX_BLOCKS: usize = 4;
/// TX ring: 1 block, 254 slots (1 MiB per port), several batches.
const TX_BLOCKS: usize = 1;

/// Geometry of one TPACKET_V2 ring, as passed to `PACKET_RX_RING` /
/// `PACKET_TX_RING` (`struct tpacket_req`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per block: one kernel allocation (physically contiguous pages,
    /// or `vzalloc` memory when no such run is free).
    pub block_size: u32,
    /// Number of blocks.
    pub block_nr: u32,
    /// Bytes per slot; slots never span blocks.
    pub frame_size: u32,
    /// Number of slots: `block_nr × (block_size / frame_size)`.
    pub frame_nr: u32,
}

impl RingGeometry {
    /// `blocks` blocks of `block_size` bytes, each cut into as many slots
    /// of at least `min_frame` bytes as fit, spread evenly (the slot size is
    /// the block divided by the slot count, rounded down to 16). `None` when
    /// the kernel would refuse it ([`RingGeometry::is_valid`]).
    pub fn new(min_frame: usize, block_size: usize, blocks: usize, page: usize) -> Option<Self> {
        let min = min_frame
            .max(TPACKET2_HDRLEN)
            .next_multiple_of(TPACKET_ALIGNMENT);
        let per_block = block_size / min;
        if per_block == 0 {
            return None;
        }
        let frame_size = (block_size / per_block) & !(TPACKET_ALIGNMENT - 1);
        let g = RingGeometry {
            block_size: u32::try_from(block_size).ok()?,
            block_nr: u32::try_from(blocks).ok()?,
            frame_size: u32::try_from(frame_size).ok()?,
            frame_nr: u32::try_from(per_block.checked_mul(blocks)?).ok()?,
        };
        g.is_valid(page).then_some(g)
    }

    /// The kernel's rules (`packet_set_ring`): a block is a positive multiple
    /// of the page size below 2 GiB; a slot is a multiple of 16 and holds at
    /// least the V2 header; at least one slot per block (slots never span
    /// blocks); `frame_nr` is exactly blocks × slots per block; at least one
    /// block, and the whole ring's size fits in 32 bits.
    pub fn is_valid(&self, page: usize) -> bool {
        let (bs, fs) = (self.block_size as usize, self.frame_size as usize);
        bs > 0
            && bs <= i32::MAX as usize
            && page > 0
            && bs.is_multiple_of(page)
            && fs >= TPACKET2_HDRLEN
            && fs.is_multiple_of(TPACKET_ALIGNMENT)
            && fs <= bs
            && self.block_nr > 0
            && self.block_size.checked_mul(self.block_nr).is_some()
            && (self.block_size / self.frame_size).checked_mul(self.block_nr) == Some(self.frame_nr)
    }

    /// Slots per block.
    pub fn frames_per_block(&self) -> u32 {
        self.block_size / self.frame_size
    }

    /// Bytes of the ring in the mapping.
    pub fn bytes(&self) -> usize {
        self.block_size as usize * self.block_nr as usize
    }

    /// Byte offset of slot `i` (`i < frame_nr`) from the start of the ring,
    /// as the kernel's `packet_lookup_frame` finds it.
    pub fn offset(&self, i: u32) -> usize {
        let fpb = self.frames_per_block();
        (i / fpb) as usize * self.block_size as usize
            + (i % fpb) as usize * self.frame_size as usize
    }
}

/// The fields of `struct tpacket2_hdr` that we read, from its 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tpacket2Hdr {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
}

impl Tpacket2Hdr {
    fn parse(b: &[u8; TPACKET2_HDR_ALIGNED]) -> Tpacket2Hdr {
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Tpacket2Hdr {
            status: u32_at(0),
            len: u32_at(4),
            snaplen: u32_at(8),
            mac: u16_at(12),
            vlan_tci: u16_at(24),
            vlan_tpid: u16_at(26),
        }
    }
}

/// What one [`Ring::rx_into`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RxPass {
    /// Frames put in the batch.
    kept: usize,
    /// Frames lost: cut to the slot without a whole copy queued, or whose
    /// copy could not be received.
    lost: u64,
    /// Slots handed back to the kernel (kept, lost or skipped).
    seen: usize,
    /// Queued copies dropped because they belonged to no slot we know of
    /// (not this slot's frame, nor a copy left behind by a failed `recv`).
    stray: u64,
}

/// What receiving a super-frame's queued copy gave (the `fetch` of
/// [`Ring::rx_into`]; [`recv_copy`] on a real socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// A copy whose full length (vnet header included) is this; only the
    /// part that fits the area was written.
    Copy(usize),
    /// Nothing queued (`EAGAIN`).
    Empty,
    /// The kernel took a copy off the queue but failed to hand it over
    /// (`EINVAL`, `EFAULT`): that copy is gone.
    Dropped,
    /// Every try returned a pending socket error, which `recv` reports
    /// before it looks at the queue: the copy is still queued.
    Left,
}

/// Queued copies [`Ring::rx_into`] drops at most per super-frame slot while
/// it looks for the slot's own copy.
const MAX_STALE: usize = 8;
/// Frame bytes (after the vnet header) compared between a slot and a queued
/// copy to tell that the copy is the slot's frame: Ethernet, IP and TCP
/// headers (addresses, IP ID, sequence numbers).
const COPY_ID_BYTES: usize = 128;
/// Consecutive empty wake-ups with something queued after which the queue
/// is drained as stray ([`Ring::rx_idle`]). Far more than the time the kernel
/// takes between queueing a copy and publishing its slot (a few µs), far
/// less than a second of a spinning worker.
const IDLE_STRIKES: u32 = 1000;
/// Copies drained at most per [`Ring::rx_idle`] call.
const MAX_DRAIN: usize = 1024;

/// One ring inside a mapping: slot `i` starts at `base + geo.offset(i)`; its
/// first word is `tp_status`, the hand-over word shared with the kernel.
struct Ring {
    base: *mut u8,
    geo: RingGeometry,
    /// Next slot to read (RX) or fill (TX); the kernel's own head follows
    /// the same order.
    head: u32,
    /// RX: copies still queued on the socket whose slots were handed back
    /// without them (a `recv` that kept failing: [`Fetched::Left`]). They
    /// precede the copy of any slot not yet read.
    orphans: u32,
    /// RX: consecutive empty wake-ups with something queued ([`Ring::rx_idle`]).
    idle_strikes: u32,
}

impl Ring {
    /// A view of the ring at `base`.
    ///
    /// # Safety
    /// `base` must be aligned to 16 and valid for reads and writes of
    /// `geo.bytes()` bytes for as long as the `Ring` is used, with `geo` valid.
    unsafe fn new(base: *mut u8, geo: RingGeometry) -> Ring {
        Ring {
            base,
            geo,
            head: 0,
            orphans: 0,
            idle_strikes: 0,
        }
    }

    fn slot(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.geo.frame_nr);
        // SAFETY: `offset(i) + frame_size <= bytes()` for `i < frame_nr`
        // (geometry checked), inside the region `new` was given.
        unsafe { self.base.add(self.geo.offset(i)) }
    }

    /// The status word of slot `i`.
    fn status(&self, i: u32) -> &AtomicU32 {
        // SAFETY: slot starts are multiples of 16 from a 16-aligned base, so
        // the word is aligned; it lives as long as the region (`new`'s
        // contract). The kernel writes it with a plain aligned 32-bit store
        // (`__packet_set_status`, followed by `smp_wmb`; an RX slot's
        // contents are ordered before it by `smp_mb` in `tpacket_rcv`) and
        // reads it after `smp_rmb` (`__packet_get_status`). An aligned word
        // store is single-copy atomic on every architecture Linux supports,
        // so our atomics see whole values, and acquire (taking a slot) and
        // release (handing it back) on our side pair with those barriers.
        unsafe { AtomicU32::from_ptr(self.slot(i) as *mut u32) }
    }

    fn next(&self, i: u32) -> u32 {
        if i + 1 == self.geo.frame_nr { 0 } else { i + 1 }
    }

    /// Copy up to [`BATCH`] received frames into `batch` and hand their
    /// slots back to the kernel. A frame larger than a slot (a GSO
    /// super-frame) is marked `TP_STATUS_COPY`: the kernel queued it whole on
    /// the socket when it reserved the slot, so copies are queued in slot
    /// order, and `fetch` receives the one at the head of the queue into the
    /// area it is given ([`Ring::take_copy`] checks it is this slot's). If
    /// the slot says the frame was cut but no copy was queued (the socket
    /// buffer was full), or its copy cannot be received, the frame is lost:
    /// counted in the result, for `kernel-rx-dropped`. Outgoing frames
    /// (`PACKET_OUTGOING`, should `PACKET_IGNORE_OUTGOING` let one through)
    /// are skipped; frames larger than a batch slot, or in a layout the kernel
    /// never writes, are marked truncated (a counted drop); a stripped VLAN
    /// tag is restored from `tp_vlan_tci`.
    fn rx_into(
        &mut self,
        batch: &mut Batch,
        mut fetch: impl FnMut(&mut [u8]) -> Fetched,
    ) -> RxPass {
        batch.clear();
        let mut pass = RxPass::default();
        while pass.kept < BATCH {
            let i = self.head;
            let st = self.status(i).load(Ordering::Acquire);
            if st & TP_STATUS_USER == 0 {
                break;
            }
            let k = pass.kept;
            let p = self.slot(i);
            let mut hb = [0u8; TPACKET2_HDR_ALIGNED];
            // SAFETY: the slot is ours (status USER, acquired) and at least
            // TPACKET2_HDRLEN bytes long; `hb` is a distinct local buffer.
            unsafe { std::ptr::copy_nonoverlapping(p, hb.as_mut_ptr(), hb.len()) };
            let h = Tpacket2Hdr::parse(&hb);
            // SAFETY: as above; sll_pkttype is byte 10 of the sockaddr_ll
            // that follows the aligned header.
            let outgoing = unsafe { p.add(TPACKET2_HDR_ALIGNED + 10).read() } == PACKET_OUTGOING;
            let (mac, snap) = (usize::from(h.mac), h.snaplen as usize);
            // The kernel's layout: vnet header right before the frame, both
            // inside the slot.
            let in_slot =
                mac >= TPACKET2_HDRLEN + VNET_HDR_LEN && mac + snap <= self.geo.frame_size as usize;
            let filled = if st & TP_STATUS_COPY != 0 {
                // Received even when outgoing, to keep the queue in step.
                let area = batch.rx_area(k);
                let cap = area.len();
                match self.take_copy(p, &h, in_slot, area, &mut fetch, &mut pass) {
                    Some(n) if !outgoing => {
                        batch.set_filled(k, n.min(cap), n > cap);
                        true
                    }
                    Some(_) => false,
                    None => {
                        pass.lost += 1;
                        false
                    }
                }
            } else if outgoing {
                false
            } else if h.snaplen < h.len {
                pass.lost += 1;
                false
            } else if !in_slot {
                // Not a layout the kernel writes: a counted drop.
                batch.set_filled(k, 0, true);
                true
            } else {
                let area = batch.rx_area(k);
                let n = (VNET_HDR_LEN + snap).min(area.len());
                // SAFETY: [mac - 10, mac - 10 + n) lies inside the slot
                // (checked above: mac >= 10 and mac + snaplen <= frame size);
                // `area` is a distinct buffer of at least `n` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.add(mac - VNET_HDR_LEN), area.as_mut_ptr(), n)
                };
                batch.set_filled(k, n, n < VNET_HDR_LEN + snap);
                true
            };
            if filled {
                if st & TP_STATUS_VLAN_VALID != 0 && !batch.is_truncated(k) {
                    let tpid = if st & TP_STATUS_VLAN_TPID_VALID != 0 {
                        h.vlan_tpid
                    } else {
                        0x8100
                    };
                    batch.insert_vlan_tag(k, tpid, h.vlan_tci);
                }
                pass.kept += 1;
            }
            self.status(i).store(TP_STATUS_KERNEL, Ordering::Release);
            self.head = self.next(i);
            pass.seen += 1;
        }
        if pass.seen > 0 {
            self.idle_strikes = 0;
        }
        pass
    }

    /// Receive the queued copy of the super-frame in slot `p` (header `h`)
    /// into `area`; its full length, or `None` if it cannot be had (counted
    /// lost by the caller). A copy is this frame's if it has the frame's
    /// length (`VNET_HDR_LEN + tp_len`) and starts with the vnet header and
    /// the first [`COPY_ID_BYTES`] bytes the slot holds (length only when
    /// the slot's layout is not the kernel's). Any other copy at the head of
    /// the queue belongs to a slot already handed back: it is dropped
    /// (a known orphan, or `stray`) and the next one tried, at most
    /// [`MAX_STALE`] times. A copy a failing `recv` left queued becomes an
    /// orphan.
    fn take_copy(
        &mut self,
        p: *const u8,
        h: &Tpacket2Hdr,
        in_slot: bool,
        area: &mut [u8],
        fetch: &mut impl FnMut(&mut [u8]) -> Fetched,
        pass: &mut RxPass,
    ) -> Option<usize> {
        let want = VNET_HDR_LEN + h.len as usize;
        let id = if in_slot {
            (VNET_HDR_LEN + (h.snaplen as usize).min(COPY_ID_BYTES)).min(area.len())
        } else {
            0
        };
        // SAFETY: the slot is ours (status USER, acquired by the caller) and
        // the kernel does not write it until we hand it back; with `in_slot`,
        // [mac - 10, mac + snaplen) lies inside it and `id` is at most
        // 10 + snaplen (else `id` is 0 and nothing is read).
        let head = unsafe {
            std::slice::from_raw_parts(p.add(usize::from(h.mac).saturating_sub(VNET_HDR_LEN)), id)
        };
        for _ in 0..=MAX_STALE {
            match fetch(area) {
                Fetched::Copy(n) => {
                    if n == want && area[..id] == *head {
                        return Some(n);
                    }
                    if self.orphans > 0 {
                        self.orphans -= 1;
                    } else {
                        pass.stray += 1;
                    }
                }
                Fetched::Empty | Fetched::Dropped => return None,
                Fetched::Left => {
                    self.orphans += 1;
                    return None;
                }
            }
        }
        None
    }

    /// After a wake-up that found no slot to read, with `queued` telling
    /// whether a copy waits on the socket (`FIONREAD`). Known orphans are
    /// received into `scratch` and dropped at once (they precede the copy of
    /// any slot the kernel is still filling, so this takes nothing of a
    /// frame to come); with nothing queued there are none. Otherwise a copy
    /// whose slot is not yet published is normal for a few µs, but after
    /// [`IDLE_STRIKES`] such wake-ups in a row the queue holds copies of no
    /// slot (they would keep the socket readable and the worker spinning):
    /// up to [`MAX_DRAIN`] are dropped and their number returned (stray).
    fn rx_idle(
        &mut self,
        queued: bool,
        scratch: &mut [u8],
        mut fetch: impl FnMut(&mut [u8]) -> Fetched,
    ) -> u64 {
        if !queued {
            self.orphans = 0;
            self.idle_strikes = 0;
            return 0;
        }
        while self.orphans > 0 {
            match fetch(scratch) {
                Fetched::Copy(_) => self.orphans -= 1,
                _ => self.orphans = 0,
            }
        }
        self.idle_strikes += 1;
        if self.idle_strikes < IDLE_STRIKES {
            return 0;
        }
        self.idle_strikes = 0;
        let mut stray = 0;
        for _ in 0..MAX_DRAIN {
            match fetch(scratch) {
                Fetched::Copy(_) => stray += 1,
                _ => break,
            }
        }
        stray
    }

    /// Queue the frames of `batch` at `idx` in free slots from the head on
    /// (status `SEND_REQUEST`), recording each one's Ethernet length in
    /// `lens`. Stops at the first slot still in use: the ring is full.
    /// Returns how many were queued; a frame that does not fit a slot, or
    /// lacks a vnet header and an Ethernet header (the kernel would skip its
    /// slot), is left out (the caller counts every frame not queued as
    /// failed).
    fn tx_fill(&mut self, batch: &Batch, idx: &[u16], lens: &mut [u32; BATCH]) -> usize {
        let mut queued = 0;
        let cap = self.geo.frame_size as usize - TX_DATA_OFF;
        for &k in idx.iter().take(BATCH) {
            let i = self.head;
            let st = self.status(i).load(Ordering::Acquire);
            if st & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING) != 0 {
                break;
            }
            let w = batch.wire(usize::from(k));
            if w.len() > cap || w.len() < VNET_HDR_LEN + 14 {
                continue;
            }
            let p = self.slot(i);
            // SAFETY: the slot is free (AVAILABLE or WRONG_FORMAT, acquired):
            // the kernel does not read it until we publish SEND_REQUEST.
            // [TX_DATA_OFF, TX_DATA_OFF + len) fits the slot (checked); tp_len
            // is the aligned word at byte 4.
            unsafe {
                std::ptr::copy_nonoverlapping(w.as_ptr(), p.add(TX_DATA_OFF), w.len());
                (p.add(4) as *mut u32).write(w.len() as u32);
            }
            self.status(i)
                .store(TP_STATUS_SEND_REQUEST, Ordering::Release);
            lens[queued] = (w.len() - VNET_HDR_LEN) as u32;
            queued += 1;
            self.head = self.next(i);
        }
        queued
    }

    /// The slot `k` places after `start`.
    fn nth(&self, start: u32, k: usize) -> u32 {
        ((start as usize + k) % self.geo.frame_nr as usize) as u32
    }

    /// How many of the `queued` slots from `start` the kernel has taken (no
    /// longer `SEND_REQUEST`: `SENDING`, or `AVAILABLE` once sent or skipped).
    /// It takes them in order, so this is a prefix.
    fn tx_taken(&self, start: u32, queued: usize) -> usize {
        (0..queued)
            .take_while(|&k| {
                self.status(self.nth(start, k)).load(Ordering::Acquire) != TP_STATUS_SEND_REQUEST
            })
            .count()
    }

    /// Send the slots queued from `start`, whose frames have the Ethernet
    /// lengths `lens`, with `kick` (a `sendto`; given the ring, for tests
    /// that play the kernel); take back the slots the kernel did not take
    /// ([`Ring::tx_revert`]). Returns what was sent (the slots taken) and
    /// failed (the rest), with the error of a kick that found the device gone
    /// (ENXIO, ENODEV).
    ///
    /// A kick sends from the kernel's head until a frame it cannot send
    /// (`tpacket_snd`). A transmit the device refused after freeing the
    /// packet (`NET_XMIT_DROP`, e.g. a full veth backlog) puts that slot back
    /// to `SEND_REQUEST` and fails the kick with ENOBUFS, even after earlier
    /// frames went out; a full socket buffer stops it with the slot still
    /// `SEND_REQUEST` (an error if nothing went out). Either way the failed
    /// frame is the first one not taken, and the next kick tries it again:
    /// kick while kicks make progress. Bounded: each kick that goes on takes
    /// at least one slot (EINTR aside, retried twice).
    fn tx_send(
        &mut self,
        start: u32,
        lens: &[u32],
        mut kick: impl FnMut(&Ring) -> io::Result<()>,
    ) -> (TxOutcome, Option<io::Error>) {
        let queued = lens.len();
        let (mut taken, mut interrupted) = (0, 0);
        let mut gone = None;
        loop {
            let r = kick(self);
            let before = taken;
            taken = self.tx_taken(start, queued);
            if taken == queued {
                break;
            }
            match r.as_ref().map_err(|e| e.raw_os_error()) {
                Err(Some(libc::ENXIO)) | Err(Some(libc::ENODEV)) => {
                    gone = r.err();
                    break;
                }
                Err(Some(libc::EINTR)) if interrupted < 2 => interrupted += 1,
                _ if taken > before => {}
                // No progress: link down, device or socket buffer full.
                _ => break,
            }
        }
        self.tx_revert(start, taken, queued);
        // A slot the kernel skipped as malformed (`PACKET_LOSS`) also looks
        // taken and counts as sent: `tx_fill` queues only frames with a vnet
        // header and an Ethernet header, so only a vnet header the kernel
        // refuses (`hdr_len` past the frame, an unknown GSO type) gets there.
        let o = TxOutcome {
            sent: taken,
            failed: queued - taken,
            bytes: lens[..taken].iter().map(|&l| u64::from(l)).sum(),
        };
        (o, gone)
    }

    /// Take back the slots the kernel left (`taken..queued` from `start`),
    /// which become free again, and move the head back to the kernel's own
    /// head. Outside `sendto` the kernel writes only slots it has taken: the
    /// skb destructor (`tpacket_destruct_skb`) marks a `SENDING` slot
    /// `AVAILABLE` when the device is done with it, possibly later and on
    /// another CPU. A slot still `SEND_REQUEST` after the kick is one it
    /// never took, or one whose transmit failed and was put back (the
    /// destructor had already run), so nothing else writes these.
    fn tx_revert(&mut self, start: u32, taken: usize, queued: usize) {
        for k in taken..queued {
            self.status(self.nth(start, k))
                .store(TP_STATUS_AVAILABLE, Ordering::Release);
        }
        self.head = self.nth(start, taken);
    }
}

/// The shared mapping of a port's rings; unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and the rings
        // that point into it belong to the same port and die with it.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// An AF_PACKET port over TPACKET_V2 RX and TX rings (`[switch] io = "ring"`).
///
/// Set-up order (the kernel refuses it otherwise, `EBUSY`): `PACKET_VERSION`
/// (V2: each frame is handed over at once; V3 hands over whole blocks, on a
/// millisecond timer), `PACKET_VNET_HDR`, `PACKET_LOSS` (a malformed TX slot
/// is skipped instead of stalling the ring), then the rings, one mmap for
/// both (RX first), then bind and promiscuous membership.
///
/// Receive: 2,048 slots of 2 KiB (4 MiB) hold frames up to a tagged MTU
/// frame; each is copied from its slot into the worker's [`Batch`] and the
/// slot handed straight back, without a system call. A larger frame (a GSO
/// super-frame) does not fit: with `PACKET_COPY_THRESH` the kernel marks its
/// slot `TP_STATUS_COPY` and queues the whole frame on the socket, which one
/// `recv` takes straight into the batch slot (one copy, as with `mmsg`). That
/// `recv` is retried after a pending socket error (a link that went down),
/// and a copy is taken only if it is the slot's own frame (length and first
/// bytes), so a copy left queued never shifts later ones onto the wrong
/// slots; copies that belong to no slot are dropped, not left to keep the
/// socket readable. The pipeline is unchanged (VLAN tags the kernel stripped
/// are restored from `tp_vlan_tci`, NAT rewrites happen in place in the
/// batch).
///
/// Transmit: frames up to [`BULK_MIN`] bytes (vnet header included) go
/// through a TX ring of 254 slots of 4,128 bytes (1 MiB); longer ones (GSO
/// super-frames) through a second, receive-less socket with `sendmmsg`,
/// straight from the batch: on veth the kernel copies a ring slot's pages
/// again (`skb_orphan_frags`), so through the ring a super-frame would be
/// copied twice, and once this way (the profile in `docs/bench/profile.txt`
/// shows `skb_copy_ubufs` and our memmove gone). Runs of each kind are sent
/// in batch order, each before the next starts, so nothing is reordered.
/// Ring frames are copied into free slots, marked
/// `SEND_REQUEST`, and one `sendto(MSG_DONTWAIT)` kick sends the batch
/// (kicked again while kicks make progress: a frame the device refused is
/// retried); a full ring, device queue or socket buffer is a counted drop,
/// never a wait, and slots the kernel did not take are taken back, so
/// nothing is sent late.
///
/// **Memory: 5 MiB of kernel memory per port**, allocated and pinned at open
/// (the `mmsg` port's 8 MiB buffers are limits, not allocations), plus queued
/// super-frame copies: the kernel queues one while the socket's receive
/// memory is below `sk_rcvbuf`, which is twice the 8 MiB we set
/// (`SO_RCVBUF`), so up to about 16 MiB (each copy counted at its truesize).
pub struct RingPort {
    // Declared before `fd`: unmapped before the socket closes.
    map: Mapping,
    fd: OwnedFd,
    ifindex: u32,
    rx: Ring,
    tx: Ring,
    lens: [u32; BATCH],
    /// Sends super-frames (wire length above [`BULK_MIN`]) from the batch
    /// with `sendmmsg`: one copy into the skb. Through the TX ring they
    /// cost two on veth (ours into the slot, then the kernel's
    /// `skb_copy_ubufs` of the ring's pages, `skb_orphan_frags`).
    bulk: PacketPort,
    /// Super-frames lost since the last [`PortIo::take_kernel_rx_drops`]
    /// (cut to a slot without a whole copy, or their copy not received) and
    /// stray copies dropped.
    rx_lost: u64,
}

// SAFETY: the rings' raw pointers point into `map`, which the port owns
// alone; moving the port to the worker thread moves that ownership with it.
unsafe impl Send for RingPort {}

fn set_ring(fd: &OwnedFd, opt: libc::c_int, g: &RingGeometry, what: &str) -> io::Result<()> {
    setsockopt_val(
        fd,
        SOL_PACKET,
        opt,
        g,
        &format_args!("setsockopt {what} {g:?}"),
    )
}

impl RingPort {
    /// Open a packet socket with RX and TX rings on interface `name` of the
    /// calling thread's namespace, and bind it.
    pub fn open(name: &str) -> io::Result<RingPort> {
        Self::open_steered(name, None)
    }

    /// [`RingPort::open`] with a worker's steering program (`[switch] workers > 1`).
    pub fn open_steered(name: &str, steer: Option<&[Insn]>) -> io::Result<RingPort> {
        let (fd, ifindex) = packet_socket(name, steer)?;
        setsockopt_int(
            &fd,
            SOL_PACKET,
            PACKET_VERSION,
            TPACKET_V2,
            "PACKET_VERSION",
        )?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_LOSS, 1, "PACKET_LOSS")?;
        setsockopt_int(&fd, SOL_PACKET, PACKET_COPY_THRESH, 1, "PACKET_COPY_THRESH")?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).unwrap_or(4096);
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "no valid ring geometry");
        let rg = RingGeometry::new(RX_SLOT, RING_BLOCK, RX_BLOCKS, page).ok_or_else(bad)?;
        let tg = RingGeometry::new(TX_MIN_FRAME, RING_BLOCK, TX_BLOCKS, page).ok_or_else(bad)?;
        set_ring(&fd, PACKET_RX_RING, &rg, "PACKET_RX_RING")?;
        set_ring(&fd, PACKET_TX_RING, &tg, "PACKET_TX_RING")?;
        let len = rg.bytes() + tg.bytes();
        // SAFETY: a fresh shared mapping of the socket's rings (the kernel
        // checks `len` against them); the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mmap packet rings: {e}")));
        }
        let map = Mapping {
            ptr: ptr as *mut u8,
            len,
        };
        // SAFETY: the mapping is page-aligned and `len` = both rings' bytes;
        // RX takes the first `rg.bytes()`, TX the rest (the kernel's layout);
        // both live as long as `map`, which the port owns.
        let (rx, tx) = unsafe {
            (
                Ring::new(map.ptr, rg),
                Ring::new(map.ptr.add(rg.bytes()), tg),
            )
        };
        bind_promisc(&fd, ifindex, name)?;
        let bulk = PacketPort::open_tx_only(name)?;
        if bulk.ifindex() != ifindex {
            return Err(io::Error::other(format!(
                "{name} was replaced while its port opened (ifindex {ifindex}, then {})",
                bulk.ifindex()
            )));
        }
        Ok(RingPort {
            map,
            fd,
            ifindex,
            rx,
            tx,
            lens: [0; BATCH],
            bulk,
            rx_lost: 0,
        })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Kernel memory pinned by the rings of one port, in bytes.
    pub fn ring_bytes(&self) -> usize {
        self.map.len
    }
}

/// One `sendto(MSG_DONTWAIT)` on `fd`: the kernel sends every
/// `SEND_REQUEST` slot from its head on, in order, until one it cannot send.
fn kick(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: a send of zero bytes with no buffer and no address: the
    // kernel takes the data from the TX ring.
    let r = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receive the copy at the head of `fd`'s queue into `area` (`MSG_TRUNC`:
/// the result is the copy's full length). `recv` reports a pending socket
/// error (`sk_err`, ENETDOWN when the device went down or was removed) before
/// it looks at the queue, and clears it: the copy is still there, so try
/// again (twice at most). `EINVAL`/`EFAULT` come after the copy was taken off
/// the queue (its vnet header could not be built, or the copy out failed).
fn recv_copy(fd: libc::c_int, area: &mut [u8]) -> Fetched {
    for _ in 0..3 {
        // SAFETY: `area` is a live, writable buffer of `area.len()` bytes;
        // MSG_TRUNC makes the kernel return the frame's full length.
        let n = unsafe {
            libc::recv(
                fd,
                area.as_mut_ptr() as *mut libc::c_void,
                area.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Fetched::Copy(n);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return Fetched::Empty,
            Some(libc::EINVAL) | Some(libc::EFAULT) => return Fetched::Dropped,
            _ => {}
        }
    }
    Fetched::Left
}

/// Length of the frame at the head of `fd`'s receive queue (`FIONREAD`,
/// `SIOCINQ` on a packet socket); 0 when empty or on error.
fn queued_bytes(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which is live.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc < 0 {
        0
    } else {
        usize::try_from(n).unwrap_or(0)
    }
}

impl PortIo for RingPort {
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let pass = self.rx.rx_into(batch, |area| recv_copy(fd, area));
        self.rx_lost += pass.lost + pass.stray;
        if pass.seen == 0 {
            // Woken with no slot to read: perhaps a socket error (EPOLLERR,
            // level-triggered), which reading SO_ERROR clears. The kernel sets
            // ENETDOWN when the device goes down or is removed; the port
            // stays (as with recvmmsg), a removed device is taken out of
            // service by the link monitor (RTM_DELLINK) or by the next send
            // (ENXIO). Any other error is reported.
            match socket_error(&self.fd) {
                Some(e) if e != libc::ENETDOWN => return Err(io::Error::from_raw_os_error(e)),
                _ => {}
            }
            // Or a copy is queued: its slot is being filled, or it belongs to
            // no slot any more (then it would keep the socket readable).
            let queued = queued_bytes(&self.fd) > 0;
            let stray = self
                .rx
                .rx_idle(queued, batch.rx_area(0), |area| recv_copy(fd, area));
            if stray > 0 {
                tracing::warn!(
                    "ring port (ifindex {}): dropped {stray} queued frame copies that belonged to no ring slot",
                    self.ifindex
                );
                self.rx_lost += stray;
            }
        }
        Ok(pass.kept)
    }

    fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
        // Runs of small frames through the ring, runs of super-frames
        // through the bulk socket, in order (each call sends before it
        // returns), so no flow is reordered.
        let mut o = TxOutcome::default();
        let bulk = |i: &u16| batch.wire(usize::from(*i)).len() > BULK_MIN;
        let mut rest = idx;
        while let Some(first) = rest.first() {
            let big = bulk(first);
            let n = rest
                .iter()
                .position(|i| bulk(i) != big)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(n);
            let r = if big {
                self.bulk.tx_batch(batch, run)
            } else {
                self.tx_ring(batch, run)
            };
            match r {
                Ok(r) => {
                    o.sent += r.sent;
                    o.bytes += r.bytes;
                    o.failed += r.failed;
                }
                // The device is gone: an error only if nothing went out,
                // else what did is counted and the next call reports it.
                Err(e) if o.sent == 0 => return Err(e),
                Err(_) => {
                    o.failed += rest.len();
                    return Ok(o);
                }
            }
            rest = tail;
        }
        Ok(o)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn take_kernel_rx_drops(&mut self) -> u64 {
        packet_rx_drops(&self.fd) + std::mem::take(&mut self.rx_lost)
    }
}

/// Wire length (vnet header + frame) above which the ring port sends a
/// frame with `sendmmsg` instead of its TX ring: anything longer than a
/// tagged jumbo-less MTU frame, i.e. GSO super-frames.
pub const BULK_MIN: usize = 4096;

impl RingPort {
    /// Send frames `idx` of `batch` through the TX ring (one kick).
    fn tx_ring(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
        let mut o = TxOutcome::default();
        let start = self.tx.head;
        let queued = self.tx.tx_fill(batch, idx, &mut self.lens);
        o.failed = idx.len() - queued;
        if queued == 0 {
            return Ok(o);
        }
        let fd = self.fd.as_raw_fd();
        let (sent, gone) = self.tx.tx_send(start, &self.lens[..queued], |_| kick(fd));
        o.sent = sent.sent;
        o.bytes = sent.bytes;
        o.failed += sent.failed;
        match gone {
            Some(e) => Err(e),
            None => Ok(o),
        }
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
    use crate::port::MAX_FRAME;

    /// A ring over 16-aligned heap memory, standing in for the mapping.
    fn test_ring(g: RingGeometry) -> (Vec<u128>, Ring) {
        let mut mem = vec![0u128; g.bytes() / 16];
        // SAFETY: `mem` is 16-aligned, `g.bytes()` long, and outlives the
        // ring in every test (returned together, dropped together).
        let r = unsafe { Ring::new(mem.as_mut_ptr() as *mut u8, g) };
        (mem, r)
    }

    /// Play the kernel's `tpacket_rcv`: write `wire` (vnet header + frame)
    /// into slot `i` at the kernel's offsets and publish it.
    fn kernel_rx(r: &Ring, i: u32, wire: &[u8], st: u32, tci: u16, pkttype: u8, len: u32) {
        let p = r.slot(i);
        let snap = wire.len() - VNET_HDR_LEN;
        // SAFETY: test memory; the slot is large enough for these frames.
        unsafe {
            (p.add(4) as *mut u32).write(len);
            (p.add(8) as *mut u32).write(snap as u32);
            (p.add(12) as *mut u16).write(RX_MAC_OFF as u16);
            (p.add(24) as *mut u16).write(tci);
            (p.add(26) as *mut u16).write(0x88a8);
            p.add(TPACKET2_HDR_ALIGNED + 10).write(pkttype);
            std::ptr::copy_nonoverlapping(
                wire.as_ptr(),
                p.add(RX_MAC_OFF - VNET_HDR_LEN),
                wire.len(),
            );
        }
        r.status(i).store(TP_STATUS_USER | st, Ordering::Release);
    }

    /// A batch of `n` frames: frame k is `wire(60 + k, k)`.
    fn batch_of(n: usize) -> Batch {
        let mut b = Batch::new();
        for k in 0..n {
            b.push_with(|a| {
                let w = wire(60 + k, k as u8);
                a[..w.len()].copy_from_slice(&w);
                w.len()
            })
            .unwrap();
        }
        b
    }

    fn wire(n: usize, fill: u8) -> Vec<u8> {
        let mut w = vec![0u8; VNET_HDR_LEN];
        w.extend(std::iter::repeat_n(fill, n));
        w
    }

    #[test]
    fn ring_geometry_follows_the_kernel_rules_and_holds_a_super_frame() {
        assert_eq!(size_of::<RingGeometry>(), 16, "struct tpacket_req");
        assert_eq!(TPACKET2_HDRLEN, 52);
        assert_eq!(TX_DATA_OFF, 32);
        assert_eq!(RX_MAC_OFF, 76, "TPACKET_ALIGN(52 + 16) + 10 - 14");
        let rx = RingGeometry::new(RX_SLOT, RING_BLOCK, RX_BLOCKS, 4096).unwrap();
        assert_eq!(
            rx,
            RingGeometry {
                block_size: 1 << 20,
                block_nr: 4,
                frame_size: 2048,
                frame_nr: 2048
            }
        );
        assert!(
            rx.frame_size as usize - RX_MAC_OFF >= 1518,
            "a tagged MTU frame"
        );
        let tx = RingGeometry::new(TX_MIN_FRAME, RING_BLOCK, TX_BLOCKS, 4096).unwrap();
        assert_eq!(
            tx,
            RingGeometry {
                block_size: 1 << 20,
                block_nr: 1,
                frame_size: 4_128,
                frame_nr: 254
            }
        );
        assert!(tx.frame_nr as usize >= 4 * BATCH);
        assert!(
            tx.frame_size as usize - TX_DATA_OFF >= BULK_MIN,
            "every frame the ring sends"
        );
        assert_eq!(
            rx.bytes() + tx.bytes(),
            5 << 20,
            "the documented 5 MiB per port"
        );
        // Slots never span blocks.
        assert!(tx.offset(253) + tx.frame_size as usize <= tx.block_size as usize);
        assert_eq!(rx.offset(513), (1 << 20) + 2048);
        for i in 0..tx.frame_nr {
            assert!(tx.offset(i).is_multiple_of(16));
        }
        let big = tx;
        // What the kernel refuses, we refuse.
        assert!(RingGeometry::new(TX_MIN_FRAME, (1 << 20) + 100, 1, 4096).is_none());
        assert!(
            RingGeometry::new(70_000, 65_536, 1, 4096).is_none(),
            "frame > block"
        );
        assert!(RingGeometry::new(TX_MIN_FRAME, RING_BLOCK, 0, 4096).is_none());
        assert!(
            !RingGeometry {
                frame_nr: 255,
                ..big
            }
            .is_valid(4096)
        );
        assert!(
            !RingGeometry {
                frame_size: 69_900,
                ..big
            }
            .is_valid(4096)
        );
        assert!(
            !RingGeometry {
                frame_size: 40,
                frame_nr: 8 * 26_214,
                ..big
            }
            .is_valid(4096)
        );
        assert!(
            !RingGeometry {
                block_nr: 1 << 13,
                frame_nr: 15 << 13,
                ..big
            }
            .is_valid(4096)
        );
        // Small frames pack a block; the slot size spreads the block evenly.
        let small = RingGeometry::new(2048, 4096, 2, 4096).unwrap();
        assert_eq!((small.frame_size, small.frame_nr), (2048, 4));
        let odd = RingGeometry::new(3000, 8192, 1, 4096).unwrap();
        assert_eq!((odd.frame_size, odd.frame_nr), (4096, 2));
    }

    /// `rx_into` with nothing queued on the socket.
    fn rx(r: &mut Ring, b: &mut Batch) -> RxPass {
        r.rx_into(b, |_| Fetched::Empty)
    }

    /// A socket queue of frame copies, as `recv_copy` would return them.
    fn queue(frames: Vec<Vec<u8>>) -> impl FnMut(&mut [u8]) -> Fetched {
        let mut q = frames.into_iter();
        move |area| match q.next() {
            Some(f) => {
                let n = f.len().min(area.len());
                area[..n].copy_from_slice(&f[..n]);
                Fetched::Copy(f.len())
            }
            None => Fetched::Empty,
        }
    }

    #[test]
    fn rx_ring_hands_frames_over_in_order_and_returns_slots() {
        let g = RingGeometry::new(RX_SLOT, RING_BLOCK, 1, 4096).unwrap();
        let (_mem, mut r) = test_ring(g);
        let mut b = Batch::new();
        assert_eq!(rx(&mut r, &mut b).kept, 0, "all slots are the kernel's");
        let plain = wire(60, 0xaa);
        kernel_rx(&r, 0, &plain, 0, 0, 0, 60);
        // An outgoing frame is skipped, but its slot is returned.
        kernel_rx(&r, 1, &wire(60, 0xbb), 0, 0, PACKET_OUTGOING, 60);
        // A stripped 802.1ad tag comes back in front of the EtherType.
        let tagged = wire(60, 0xcc);
        kernel_rx(
            &r,
            2,
            &tagged,
            TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID,
            0x2005,
            0,
            60,
        );
        // A super-frame: cut to the slot, the whole copy waits on the socket.
        let big = wire(MAX_FRAME, 0xee);
        kernel_rx(&r, 3, &big[..1000], TP_STATUS_COPY, 0, 0, MAX_FRAME as u32);
        // Cut without a copy (the socket buffer was full): lost, counted.
        kernel_rx(&r, 4, &wire(100, 0xdd), 0, 0, 0, 70_000);
        // A tagged super-frame, larger than a batch slot once whole: truncated.
        let huge = wire(70_000, 0xff);
        kernel_rx(
            &r,
            5,
            &huge[..1000],
            TP_STATUS_COPY | TP_STATUS_VLAN_VALID,
            7,
            0,
            70_000,
        );
        // Slot 6 stays the kernel's: reading stops there.
        let mut taken = 0;
        let mut q = queue(vec![big.clone(), huge.clone()]);
        let pass = r.rx_into(&mut b, |area| {
            let f = q(area);
            taken += usize::from(matches!(f, Fetched::Copy(_)));
            f
        });
        assert_eq!(
            pass,
            RxPass {
                kept: 4,
                lost: 1,
                seen: 6,
                stray: 0
            }
        );
        assert_eq!(taken, 2, "every copy was taken, in order");
        assert_eq!(b.wire(0), &plain[..]);
        assert!(!b.is_truncated(0));
        let f = b.frame(1);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[12..16], &[0x88, 0xa8, 0x20, 0x05]);
        assert_eq!(b.wire(2), &big[..], "the super-frame whole");
        assert!(!b.is_truncated(2));
        assert!(b.is_truncated(3));
        for i in 0..6 {
            assert_eq!(r.status(i).load(Ordering::Relaxed), TP_STATUS_KERNEL);
        }
        assert_eq!(r.head, 6);
        // An outgoing copy is received and dropped, and leaves no frame in
        // the batch; a copy announced but not queued (the kernel queues it
        // before it publishes the slot, so only if something else took it) is
        // lost, not a stale frame.
        let mid = wire(3000, 0xaa);
        kernel_rx(&r, 6, &mid[..70], TP_STATUS_COPY, 0, PACKET_OUTGOING, 3000);
        kernel_rx(&r, 7, &mid[..70], TP_STATUS_COPY, 0, 0, 3000);
        let mut taken = 0;
        let mut q = queue(vec![mid.clone()]);
        let pass = r.rx_into(&mut b, |area| {
            let f = q(area);
            taken += usize::from(matches!(f, Fetched::Copy(_)));
            f
        });
        assert_eq!((pass.kept, pass.lost, pass.stray), (0, 1, 0));
        assert_eq!(b.len(), 0, "the outgoing copy is not in the batch");
        assert_eq!(taken, 1, "the outgoing slot took its copy");
        kernel_rx(&r, 8, &mid[..70], TP_STATUS_COPY, 0, 0, 3000);
        assert_eq!(rx(&mut r, &mut b).lost, 1);
        // Headers the kernel never writes (tp_mac inside the header, or
        // tp_snaplen past the slot) are truncated frames, not bad reads.
        kernel_rx(&r, 9, &plain, 0, 0, 0, 60);
        kernel_rx(&r, 10, &plain, 0, 0, 0, 60);
        // SAFETY: test memory.
        unsafe {
            (r.slot(9).add(12) as *mut u16).write(20);
            (r.slot(10).add(4) as *mut u32).write(u32::MAX);
            (r.slot(10).add(8) as *mut u32).write(u32::MAX);
        }
        assert_eq!(rx(&mut r, &mut b).kept, 2);
        assert!(b.is_truncated(0) && b.is_truncated(1));
        // Wrap-around: the last slot, then slot 0 again; at most BATCH per call.
        r.head = g.frame_nr - 1;
        kernel_rx(&r, g.frame_nr - 1, &plain, 0, 0, 0, 60);
        kernel_rx(&r, 0, &wire(61, 1), 0, 0, 0, 61);
        assert_eq!(rx(&mut r, &mut b).kept, 2);
        assert_eq!(b.frame(1).len(), 61);
        assert_eq!(r.head, 1);
        for i in 1..41 {
            kernel_rx(&r, i, &plain, 0, 0, 0, 60);
        }
        assert_eq!(rx(&mut r, &mut b).kept, BATCH);
        assert_eq!(rx(&mut r, &mut b).kept, 40 - BATCH);
    }

    /// What the kernel does after a link went down with copies queued:
    /// `recv` kept failing (`Left`), so the copy stayed queued. The next
    /// super-frame slot must get its own copy, not the one left behind, and
    /// the queue must end up empty.
    #[test]
    fn rx_ring_takes_each_slot_its_own_copy_after_a_failed_receive() {
        let g = RingGeometry::new(RX_SLOT, RING_BLOCK, 1, 4096).unwrap();
        let (_mem, mut r) = test_ring(g);
        let mut b = Batch::new();
        // Three super-frames of the same length, told apart by their bytes
        // (as TCP segments are by their sequence numbers).
        let f: Vec<Vec<u8>> = (1..=3).map(|k| wire(20_000, k)).collect();
        for (i, w) in f.iter().enumerate() {
            kernel_rx(&r, i as u32, &w[..1500], TP_STATUS_COPY, 0, 0, 20_000);
        }
        let mut q = std::collections::VecDeque::from(f.clone());
        let mut fail_first = true;
        let pass = r.rx_into(&mut b, |area| {
            if std::mem::take(&mut fail_first) {
                // A pending socket error each time: the copy stays queued.
                return Fetched::Left;
            }
            let c = q.pop_front().unwrap();
            area[..c.len()].copy_from_slice(&c);
            Fetched::Copy(c.len())
        });
        assert_eq!(
            pass,
            RxPass {
                kept: 2,
                lost: 1,
                seen: 3,
                stray: 0
            },
            "the first frame lost (counted once), its copy dropped as an orphan"
        );
        assert_eq!(b.wire(0), &f[1][..], "slot 1 got its own copy");
        assert_eq!(b.wire(1), &f[2][..], "slot 2 got its own copy");
        assert!(q.is_empty(), "nothing left queued");
        assert_eq!(r.orphans, 0);

        // A queued copy of no slot we know of (same length, other bytes) is
        // dropped and counted as stray; the slot gets the copy after it.
        let g4 = wire(20_000, 4);
        kernel_rx(&r, 3, &g4[..1500], TP_STATUS_COPY, 0, 0, 20_000);
        let pass = r.rx_into(&mut b, queue(vec![f[0].clone(), g4.clone()]));
        assert_eq!((pass.kept, pass.lost, pass.stray), (1, 0, 1));
        assert_eq!(b.wire(0), &g4[..]);
        // A copy of another length is not the slot's either; after
        // MAX_STALE wrong copies the frame is lost.
        kernel_rx(&r, 4, &g4[..1500], TP_STATUS_COPY, 0, 0, 20_000);
        let pass = r.rx_into(&mut b, queue(vec![wire(3000, 4); MAX_STALE + 2]));
        assert_eq!(
            (pass.kept, pass.lost, pass.stray),
            (0, 1, MAX_STALE as u64 + 1)
        );
        // A copy the kernel took off the queue but could not hand over is
        // gone: lost, nothing left behind.
        kernel_rx(&r, 5, &g4[..1500], TP_STATUS_COPY, 0, 0, 20_000);
        let pass = r.rx_into(&mut b, |_| Fetched::Dropped);
        assert_eq!((pass.kept, pass.lost, r.orphans), (0, 1, 0));
    }

    /// Wake-ups that find no slot while something is queued: known orphans
    /// are dropped at once; anything else only after many such wake-ups in a
    /// row (a copy whose slot is still being filled is not taken).
    #[test]
    fn rx_idle_drops_orphans_at_once_and_stray_copies_only_when_stuck() {
        let g = RingGeometry::new(RX_SLOT, RING_BLOCK, 1, 4096).unwrap();
        let (_mem, mut r) = test_ring(g);
        let mut b = Batch::new();
        let mut scratch = vec![0u8; SLOT];
        // A copy left behind by a failing receive, then a copy of a slot the
        // kernel is still filling: only the first goes.
        kernel_rx(&r, 0, &wire(5000, 1)[..1500], TP_STATUS_COPY, 0, 0, 5000);
        assert_eq!(r.rx_into(&mut b, |_| Fetched::Left).lost, 1);
        assert_eq!(r.orphans, 1);
        let mut fetch = queue(vec![wire(5000, 1), wire(5000, 2)]);
        assert_eq!(r.rx_idle(true, &mut scratch, &mut fetch), 0);
        assert_eq!(r.orphans, 0);
        // The slot is published: it gets its copy, and nothing is left.
        kernel_rx(&r, 1, &wire(5000, 2)[..1500], TP_STATUS_COPY, 0, 0, 5000);
        let pass = r.rx_into(&mut b, &mut fetch);
        assert_eq!((pass.kept, pass.lost, pass.stray), (1, 0, 0));
        assert_eq!(b.wire(0), &wire(5000, 2)[..]);
        assert_eq!(fetch(&mut scratch), Fetched::Empty);

        // Something queued that belongs to no slot: left alone for
        // IDLE_STRIKES - 1 wake-ups, dropped (and counted) at the next.
        let stuck = vec![wire(3000, 9); 3];
        let mut fetch = queue(stuck);
        for _ in 0..IDLE_STRIKES - 1 {
            assert_eq!(r.rx_idle(true, &mut scratch, &mut fetch), 0);
        }
        assert_eq!(r.rx_idle(true, &mut scratch, &mut fetch), 3);
        // A wake-up that reads a slot, or finds the queue empty, starts the
        // count again.
        let mut never = |_: &mut [u8]| -> Fetched { panic!("nothing may be received") };
        for _ in 0..IDLE_STRIKES - 1 {
            assert_eq!(r.rx_idle(true, &mut scratch, &mut never), 0);
        }
        kernel_rx(&r, 2, &wire(60, 3), 0, 0, 0, 60);
        assert_eq!(rx(&mut r, &mut b).kept, 1);
        for _ in 0..IDLE_STRIKES - 1 {
            assert_eq!(r.rx_idle(true, &mut scratch, &mut never), 0);
        }
        assert_eq!(r.rx_idle(false, &mut scratch, &mut never), 0);
        for _ in 0..IDLE_STRIKES - 1 {
            assert_eq!(r.rx_idle(true, &mut scratch, &mut never), 0);
        }
    }

    #[test]
    fn tx_ring_queues_in_order_stops_when_full_and_takes_back_what_was_not_sent() {
        // 15 slots of a whole batch slot each: a small ring to fill.
        let g = RingGeometry::new(TX_DATA_OFF + SLOT, RING_BLOCK, 1, 4096).unwrap();
        assert_eq!(g.frame_nr, 15);
        let (_mem, mut r) = test_ring(g);
        let b = batch_of(3);
        let mut lens = [0u32; BATCH];
        assert_eq!(r.tx_fill(&b, &[0, 1, 2], &mut lens), 3);
        assert_eq!(&lens[..3], &[60, 61, 62]);
        for k in 0..3u32 {
            assert_eq!(r.status(k).load(Ordering::Relaxed), TP_STATUS_SEND_REQUEST);
            let p = r.slot(k);
            // SAFETY: test memory.
            let (len, data) = unsafe {
                (
                    (p.add(4) as *const u32).read(),
                    std::slice::from_raw_parts(p.add(TX_DATA_OFF), 70 + k as usize),
                )
            };
            assert_eq!(len, 70 + k);
            assert_eq!(data, b.wire(k as usize));
        }
        // The kernel sent two (one still SENDING), then stopped.
        r.status(0).store(TP_STATUS_AVAILABLE, Ordering::Release);
        r.status(1).store(TP_STATUS_SENDING, Ordering::Release);
        assert_eq!(r.tx_taken(0, 3), 2);
        r.tx_revert(0, 2, 3);
        assert_eq!(r.status(2).load(Ordering::Relaxed), TP_STATUS_AVAILABLE);
        assert_eq!(r.head, 2, "back at the kernel's head");
        // Fill the ring: 13 free slots from 2 to 14, then slot 0; slot 1 is
        // still SENDING, so the ring is full there.
        let idx = [0u16; 20];
        assert_eq!(r.tx_fill(&b, &idx, &mut lens), 14);
        assert_eq!(r.head, 1);
        assert_eq!(r.tx_fill(&b, &idx, &mut lens), 0, "full: nothing waits");
        r.tx_revert(2, 0, 14);
        assert_eq!(r.head, 2);
        // Too short for an Ethernet header: not queued (the kernel would
        // skip its slot and it would look sent).
        let mut short = Batch::new();
        short
            .push_with(|a| {
                a[..VNET_HDR_LEN + 13].fill(0);
                VNET_HDR_LEN + 13
            })
            .unwrap();
        assert_eq!(r.tx_fill(&short, &[0], &mut lens), 0);
        assert_eq!(r.head, 2);
    }

    /// Play `tpacket_snd` for one kick: send `SEND_REQUEST` slots from
    /// `*khead` on; the `fail`th transmit of the run (counting from 1) is
    /// refused by the device, which freed the packet: the slot goes back to
    /// `SEND_REQUEST`, the kernel's head stays, the kick fails (ENOBUFS).
    fn kernel_kick(r: &Ring, khead: &mut u32, fail: &mut Vec<bool>) -> io::Result<()> {
        loop {
            let st = r.status(*khead);
            if st.load(Ordering::Acquire) != TP_STATUS_SEND_REQUEST {
                return Ok(());
            }
            st.store(TP_STATUS_SENDING, Ordering::Release);
            if !fail.is_empty() && fail.remove(0) {
                st.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
                return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
            }
            // Sent; the destructor frees the slot later.
            *khead = r.next(*khead);
        }
    }

    #[test]
    fn tx_kicks_count_the_frame_the_device_refused_not_the_one_before() {
        let g = RingGeometry::new(TX_MIN_FRAME, RING_BLOCK, 1, 4096).unwrap();
        let (_mem, mut r) = test_ring(g);
        let b = batch_of(5);
        let mut lens = [0u32; BATCH];
        let idx = [0, 1, 2, 3, 4];
        let mut khead = 0;
        // The third transmit fails once, then goes out on the next kick:
        // all five are sent.
        assert_eq!(r.tx_fill(&b, &idx, &mut lens), 5);
        let mut fail = vec![false, false, true];
        let (o, gone) = r.tx_send(0, &lens[..5], |r| kernel_kick(r, &mut khead, &mut fail));
        assert!(gone.is_none());
        assert_eq!((o.sent, o.failed, o.bytes), (5, 0, 60 + 61 + 62 + 63 + 64));
        assert_eq!((r.head, khead), (5, 5));
        // The third fails for good (the device stays full): two sent, the
        // refused frame and the two after it taken back, not sent late.
        for i in 5..10 {
            r.status(i).store(TP_STATUS_AVAILABLE, Ordering::Release);
        }
        assert_eq!(r.tx_fill(&b, &idx, &mut lens), 5);
        let mut fail = vec![false, false, true, true, true];
        let mut kicks = 0;
        let (o, gone) = r.tx_send(5, &lens[..5], |r| {
            kicks += 1;
            kernel_kick(r, &mut khead, &mut fail)
        });
        assert!(gone.is_none());
        assert_eq!((o.sent, o.failed, o.bytes, kicks), (2, 3, 60 + 61, 2));
        assert_eq!((r.head, khead), (7, 7), "our head is back at the kernel's");
        for i in 7..10 {
            assert_eq!(r.status(i).load(Ordering::Relaxed), TP_STATUS_AVAILABLE);
        }
        // A device gone: nothing taken, the error handed on.
        assert_eq!(r.tx_fill(&b, &idx[..1], &mut lens), 1);
        let (o, gone) = r.tx_send(7, &lens[..1], |_| {
            Err(io::Error::from_raw_os_error(libc::ENXIO))
        });
        assert_eq!((o.sent, o.failed), (0, 1));
        assert_eq!(gone.and_then(|e| e.raw_os_error()), Some(libc::ENXIO));
        assert_eq!(r.status(7).load(Ordering::Relaxed), TP_STATUS_AVAILABLE);
    }

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

/// The kernel fast path's objects: the eBPF programs and maps of
/// `bpf/fastpath.bpf.c`, loaded with aya. The key and value layouts here
/// must match that file's (`repr(C)`, same field order and padding).
///
/// Contract: [`Loaded`] owns the programs, their attachments and the maps.
/// tc programs are attached as tcx links, owned by file descriptors and
/// never pinned, so they detach when the process exits, crash included;
/// nothing is left in bpffs for a next start to clean up.
pub mod bpf {
    use aya::maps::{HashMap, MapData, PerCpuArray};
    use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
    use aya::programs::{LinkOrder, SchedClassifier, SocketFilter, TcAttachType};
    use std::os::fd::BorrowedFd;

    /// Action flag: the out port is a veth; use `bpf_redirect_peer`.
    pub const FP_PEER: u8 = 0x01;
    /// Action flag: a routed flow; decrement the TTL.
    pub const FP_TTL: u8 = 0x02;
    /// Port counter slots in `fp_ports`.
    pub const MAX_PORTS: usize = 256;
    /// Capacity of `fp_flows`.
    pub const MAX_FLOWS: usize = 65_536;

    /// `struct fp_key`: the in-port's ifindex and the IPv4 5-tuple as received
    /// (addresses and ports in network byte order).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FpKey {
        /// Ingress device.
        pub ifindex: u32,
        /// Source address, network order.
        pub saddr: u32,
        /// Destination address, network order.
        pub daddr: u32,
        /// Source port, network order.
        pub sport: u16,
        /// Destination port, network order.
        pub dport: u16,
        /// IP protocol.
        pub proto: u8,
        /// Zero.
        pub pad: [u8; 3],
    }

    /// `struct fp_action`: what the fast path does with a hit.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct FpAction {
        /// Egress device.
        pub out_ifindex: u32,
        /// Source address as sent, network order.
        pub saddr: u32,
        /// Destination address as sent, network order.
        pub daddr: u32,
        /// Source port as sent, network order.
        pub sport: u16,
        /// Destination port as sent, network order.
        pub dport: u16,
        /// Destination MAC as sent.
        pub dmac: [u8; 6],
        /// Source MAC as sent.
        pub smac: [u8; 6],
        /// Destination MAC a frame must carry to hit.
        pub match_dmac: [u8; 6],
        /// Source MAC a frame must carry to hit.
        pub match_smac: [u8; 6],
        /// Largest IP packet (or GSO segment) the out port takes.
        pub mtu: u16,
        /// Switch port index of the ingress (for `fp_ports`).
        pub port_in: u16,
        /// Switch port index of the egress.
        pub port_out: u16,
        /// `FP_*` flags.
        pub flags: u8,
        /// Zero.
        pub pad: [u8; 9],
    }

    /// `struct fp_value`: an action and the fast path's counters for it.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct FpValue {
        /// The action.
        pub act: FpAction,
        /// Frames forwarded (a GSO super-frame counts once).
        pub packets: u64,
        /// Bytes forwarded.
        pub bytes: u64,
        /// Last hit, CLOCK_MONOTONIC ns (0: none).
        pub last_seen: u64,
    }

    /// `struct fp_port_counters`, summed over CPUs.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct FpPortCounters {
        /// Frames received on the port and forwarded by the fast path.
        pub rx_packets: u64,
        /// Their bytes.
        pub rx_bytes: u64,
        /// Frames the fast path sent out of the port.
        pub tx_packets: u64,
        /// Their bytes.
        pub tx_bytes: u64,
    }

    // SAFETY: plain `repr(C)` structs of integers and byte arrays with
    // explicit padding fields: every bit pattern is valid and no byte is
    // uninitialised padding, which is what `aya::Pod` requires.
    unsafe impl aya::Pod for FpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FpValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FpPortCounters {}

    const _: () = assert!(std::mem::size_of::<FpKey>() == 20);
    const _: () = assert!(std::mem::size_of::<FpAction>() == 56);
    const _: () = assert!(std::mem::size_of::<FpValue>() == 80);

    /// Names of the programs' counters (`fp_stats`, same order).
    pub const STAT_NAMES: [&str; 8] = [
        "hit",
        "miss",
        "slow_mac",
        "slow_ttl",
        "slow_mtu",
        "forwarded",
        "tc_not_ours",
        "rewrite_failed",
    ];

    /// The loaded fast path: programs, attachments and maps.
    pub struct Loaded {
        stats: PerCpuArray<MapData, u64>,
        ebpf: aya::Ebpf,
        flows: HashMap<MapData, FpKey, FpValue>,
        ports: PerCpuArray<MapData, FpPortCounters>,
        links: Vec<(u32, SchedClassifierLinkId)>,
    }

    /// An error's message, with a verifier log cut to its last lines (the
    /// verdict; the whole log is thousands of lines).
    fn err(what: &str, e: impl std::fmt::Display) -> String {
        let e = e.to_string();
        let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() <= 4 {
            return format!("{what}: {e}");
        }
        let first = lines[0]
            .split(". Verifier output")
            .next()
            .unwrap_or(lines[0]);
        let tail = lines[lines.len().saturating_sub(4)..lines.len() - 1].join(" / ");
        format!("{what}: {first} ({tail})")
    }

    impl Loaded {
        /// Load the object (verifier included), without attaching anything.
        pub fn load(object: &[u8]) -> Result<Loaded, String> {
            if object.is_empty() {
                return Err("not built (clang was missing when vswitch was built)".into());
            }
            let mut ebpf = aya::Ebpf::load(object).map_err(|e| err("load", e))?;
            let p: &mut SchedClassifier = ebpf
                .program_mut("fp_tc")
                .ok_or("no fp_tc program")?
                .try_into()
                .map_err(|e| err("fp_tc", e))?;
            p.load().map_err(|e| err("verifier (fp_tc)", e))?;
            let p: &mut SocketFilter = ebpf
                .program_mut("fp_sock")
                .ok_or("no fp_sock program")?
                .try_into()
                .map_err(|e| err("fp_sock", e))?;
            p.load().map_err(|e| err("verifier (fp_sock)", e))?;
            let flows = HashMap::try_from(ebpf.take_map("fp_flows").ok_or("no fp_flows map")?)
                .map_err(|e| err("fp_flows", e))?;
            let ports = PerCpuArray::try_from(ebpf.take_map("fp_ports").ok_or("no fp_ports map")?)
                .map_err(|e| err("fp_ports", e))?;
            let stats = PerCpuArray::try_from(ebpf.take_map("fp_stats").ok_or("no fp_stats map")?)
                .map_err(|e| err("fp_stats", e))?;
            Ok(Loaded {
                stats,
                ebpf,
                flows,
                ports,
                links: Vec::new(),
            })
        }

        /// Attach the tc program (a tcx link; needs kernel 6.6) to ingress of
        /// device `ifname` (index `ifindex`) of the calling thread's namespace.
        pub fn attach_tc(&mut self, ifname: &str, ifindex: u32) -> Result<(), String> {
            self.detach(ifindex);
            let p: &mut SchedClassifier = self
                .ebpf
                .program_mut("fp_tc")
                .ok_or("no fp_tc program")?
                .try_into()
                .map_err(|e| err("fp_tc", e))?;
            let link = p
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    // First: a frame the socket filter withheld must reach this program.
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|e| err("tcx attach", e))?;
            self.links.push((ifindex, link));
            Ok(())
        }

        /// Attach the socket filter to the switch's AF_PACKET socket `sock`
        /// of a port whose device has the tc program.
        pub fn attach_socket(&mut self, sock: BorrowedFd<'_>) -> Result<(), String> {
            let s: &mut SocketFilter = self
                .ebpf
                .program_mut("fp_sock")
                .ok_or("no fp_sock program")?
                .try_into()
                .map_err(|e| err("fp_sock", e))?;
            s.attach(sock).map_err(|e| err("SO_ATTACH_BPF", e))
        }

        /// Detach the tc program from device `ifindex` (a device that is
        /// gone took its link with it).
        pub fn detach(&mut self, ifindex: u32) {
            if let Some(i) = self.links.iter().position(|(x, _)| *x == ifindex) {
                let (_, id) = self.links.swap_remove(i);
                if let Ok(p) = <&mut SchedClassifier>::try_from(
                    self.ebpf.program_mut("fp_tc").expect("loaded"),
                ) {
                    let _ = p.detach(id);
                }
            }
        }

        /// Install or replace a flow.
        pub fn insert(&mut self, k: &FpKey, v: &FpValue) -> Result<(), String> {
            self.flows
                .insert(k, v, 0)
                .map_err(|e| err("fp_flows insert", e))
        }

        /// Remove a flow (absent: nothing to do).
        pub fn remove(&mut self, k: &FpKey) {
            let _ = self.flows.remove(k);
        }

        /// A flow's value as the kernel has it.
        pub fn get(&self, k: &FpKey) -> Option<FpValue> {
            self.flows.get(k, 0).ok()
        }

        /// The programs' counters ([`STAT_NAMES`]), summed over CPUs.
        pub fn stats(&self) -> [u64; STAT_NAMES.len()] {
            let mut out = [0; STAT_NAMES.len()];
            for (i, o) in out.iter_mut().enumerate() {
                if let Ok(v) = self.stats.get(&(i as u32), 0) {
                    *o = v.iter().sum();
                }
            }
            out
        }

        /// Port `i`'s fast-path counters, summed over CPUs.
        pub fn port(&self, i: usize) -> FpPortCounters {
            let mut sum = FpPortCounters::default();
            if let Ok(v) = self.ports.get(&(i as u32), 0) {
                for c in v.iter() {
                    sum.rx_packets += c.rx_packets;
                    sum.rx_bytes += c.rx_bytes;
                    sum.tx_packets += c.tx_packets;
                    sum.tx_bytes += c.tx_bytes;
                }
            }
            sum
        }
    }

    /// How many tcx ingress programs device `ifname` of the calling thread's
    /// namespace has (an operator's and a test's check that nothing is left
    /// attached).
    pub fn tcx_ingress_programs(ifname: &str) -> Result<usize, String> {
        SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
            .map(|(_, progs)| progs.len())
            .map_err(|e| err("query tcx", e))
    }

    /// CLOCK_MONOTONIC in ns: the clock of `FpValue::last_seen`.
    pub fn monotonic_ns() -> u64 {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    }
}
