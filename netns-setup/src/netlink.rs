//! A small synchronous rtnetlink client: links, addresses and routes.
//!
//! Contract: one [`Netlink`] socket talks to the network namespace it was
//! opened in (open it inside [`crate::netns::in_netns`] to reach another).
//! Every request carries a fresh sequence number; replies with other sequence
//! numbers are ignored; a kernel error becomes [`NlError`] with the errno and
//! the operation it belongs to. Messages are built and parsed here by hand
//! (the wire format is small and stable: `include/uapi/linux/rtnetlink.h`).

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};
use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_INET_CONF: u16 = 1;
const IPV4_DEVCONF_FORWARDING: u16 = 1;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `IFF_UP`.
pub const IFF_UP: u32 = 0x1;
/// `IFF_NOARP`.
pub const IFF_NOARP: u32 = 0x80;
/// `IFF_LOWER_UP` (carrier).
pub const IFF_LOWER_UP: u32 = 0x10000;

/// A kernel error for one netlink operation.
#[derive(Debug, Clone)]
pub struct NlError {
    /// What we asked for, e.g. `create veth veth-red-br`.
    pub op: String,
    /// The kernel's errno.
    pub errno: Errno,
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = match self.errno {
            Errno::EPERM | Errno::EACCES => " (needs root or CAP_NET_ADMIN)",
            Errno::EEXIST => " (already exists)",
            Errno::ENODEV => " (no such device)",
            _ => "",
        };
        write!(f, "{}: {}{hint}", self.op, self.errno.desc())
    }
}

impl std::error::Error for NlError {}

/// A link as reported by the kernel.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFF_*` flags.
    pub flags: u32,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, `aa:bb:..`.
    pub mac: String,
    /// Link kind (`veth`, `tun`, `bridge`, ...), empty for none.
    pub kind: String,
    /// Interface alias (netns-setup marks its links with it).
    pub alias: String,
    /// Index of the master device (a bridge), if enslaved.
    pub master: Option<u32>,
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Addr {
    /// Interface index.
    pub index: u32,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// An IPv6 address of an interface.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Addr6 {
    /// Interface index.
    pub index: u32,
    /// Address.
    pub addr: std::net::Ipv6Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Scope (0 global, 253 link).
    pub scope: u8,
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Route {
    /// Destination network (0.0.0.0 for default).
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

/// Builder of one netlink message.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // len, patched in finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq, patched
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid
        Msg {
            buf,
            nests: Vec::new(),
        }
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.pad();
        self
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn ifinfo(&mut self, index: u32, flags: u32, change: u32) -> &mut Self {
        let mut h = [0u8; 16];
        h[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        h[8..12].copy_from_slice(&flags.to_ne_bytes());
        h[12..16].copy_from_slice(&change.to_ne_bytes());
        self.bytes(&h)
    }
    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.bytes(data)
    }
    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }
    fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }
    fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

/// Iterate over `(type, payload)` of the attributes in `b`.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((ty, payload))
    })
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn u32_of(b: &[u8]) -> u32 {
    b.get(..4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
        .unwrap_or(0)
}

/// A create request's answer: `Ok(true)` if made, `Ok(false)` if it already existed.
fn created<T>(r: Result<T, NlError>) -> Result<bool, NlError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.errno == Errno::EEXIST => Ok(false),
        Err(e) => Err(e),
    }
}

fn ipv4_of(b: &[u8]) -> Option<Ipv4Addr> {
    b.get(..4).map(|s| Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

fn parse_link(p: &[u8]) -> Option<Link> {
    if p.len() < 16 {
        return None;
    }
    let mut l = Link {
        index: i32::from_ne_bytes(p[4..8].try_into().unwrap()) as u32,
        flags: u32::from_ne_bytes(p[8..12].try_into().unwrap()),
        ..Link::default()
    };
    for (ty, v) in attrs(&p[16..]) {
        match ty {
            IFLA_IFNAME => l.name = cstr(v),
            IFLA_MTU => l.mtu = u32_of(v),
            IFLA_ADDRESS => {
                l.mac = v
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            IFLA_IFALIAS => l.alias = cstr(v),
            IFLA_MASTER => l.master = Some(u32_of(v)),
            IFLA_LINKINFO => {
                for (t, k) in attrs(v) {
                    if t == IFLA_INFO_KIND {
                        l.kind = cstr(k);
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// A synchronous rtnetlink socket bound to the namespace it was opened in.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open an rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NlError> {
        let e = |errno| NlError {
            op: "open netlink socket".into(),
            errno,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(e)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(e)?;
        Ok(Netlink {
            fd,
            seq: 1,
            buf: vec![0; 1 << 16],
        })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Send `m`, then collect reply payloads (without the netlink header) until ACK or DONE.
    fn request(&mut self, op: &str, mut m: Msg) -> Result<Vec<Vec<u8>>, NlError> {
        let fail = |errno| NlError {
            op: op.to_string(),
            errno,
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = m.buf.len() as u32;
        m.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        m.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        let fd = self.raw();
        loop {
            match send(fd, &m.buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(fail(e)),
                Ok(_) => break,
            }
        }
        let mut out = Vec::new();
        loop {
            let n = match recv(fd, &mut self.buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(fail(e)),
                Ok(n) => n,
            };
            let mut b = &self.buf[..n];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                if mlen < 16 || mlen > b.len() {
                    return Err(fail(Errno::EBADMSG));
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
                let payload = &b[16..mlen];
                b = &b[mlen.next_multiple_of(4).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|s| i32::from_ne_bytes(s.try_into().unwrap()))
                            .unwrap_or(-libc::EBADMSG);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(fail(Errno::from_raw(-code)));
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }

    /// Look a link up by name; `None` if it does not exist.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_ACK);
        m.ifinfo(0, 0, 0).attr_str(IFLA_IFNAME, name);
        match self.request(&format!("get link {name}"), m) {
            Ok(v) => Ok(v.first().and_then(|p| parse_link(p))),
            Err(e) if e.errno == Errno::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All links of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_DUMP);
        m.ifinfo(0, 0, 0);
        Ok(self
            .request("dump links", m)?
            .iter()
            .filter_map(|p| parse_link(p))
            .collect())
    }

    /// Create a veth pair: `name` here, `peer` in the namespace `peer_ns` (this one if `None`).
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: Option<RawFd>,
    ) -> Result<(), NlError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
        m.ifinfo(0, 0, 0).attr_str(IFLA_IFNAME, name);
        m.begin(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "veth");
        m.begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, peer);
        if let Some(fd) = peer_ns {
            m.attr(IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes());
        }
        m.end().end().end();
        self.request(&format!("create veth {name} (peer {peer})"), m)
            .map(drop)
    }

    /// Delete a link by index.
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<(), NlError> {
        let mut m = Msg::new(RTM_DELLINK, NLM_F_ACK);
        m.ifinfo(index, 0, 0);
        self.request(&format!("delete link {name}"), m).map(drop)
    }

    /// Change link settings; `None` fields are left as they are.
    pub fn set_link(&mut self, index: u32, name: &str, s: &LinkSettings) -> Result<(), NlError> {
        let mut flags = 0;
        let mut change = 0;
        if let Some(up) = s.up {
            change |= IFF_UP;
            if up {
                flags |= IFF_UP;
            }
        }
        if let Some(noarp) = s.noarp {
            change |= IFF_NOARP;
            if noarp {
                flags |= IFF_NOARP;
            }
        }
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK);
        m.ifinfo(index, flags, change);
        if let Some(mtu) = s.mtu {
            m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        if let Some(alias) = &s.alias {
            m.attr_str(IFLA_IFALIAS, alias);
        }
        if s.quiet {
            // No IPv4 forwarding from this device and no IPv6 link-local address
            // (so no DAD, router or MLD solicitations from the kernel).
            m.begin(IFLA_AF_SPEC);
            m.begin(AF_INET as u16).begin(IFLA_INET_CONF);
            m.attr(IPV4_DEVCONF_FORWARDING, &0u32.to_ne_bytes());
            m.end().end();
            m.begin(AF_INET6 as u16)
                .attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE])
                .end();
            m.end();
        }
        self.request(&format!("configure link {name}"), m).map(drop)
    }

    /// Add an IPv4 address; `Ok(false)` if it was already there.
    pub fn add_addr(
        &mut self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NlError> {
        self.new_addr(
            AF_INET,
            0,
            index,
            &addr.octets(),
            prefix,
            &format!("add address {addr}/{prefix} to {name}"),
        )
    }

    /// Remove an IPv4 address; `Ok(false)` if it was not there.
    pub fn del_addr(
        &mut self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NlError> {
        let mut m = Msg::new(RTM_DELADDR, NLM_F_ACK);
        let mut h = [0u8; 8];
        h[0] = AF_INET;
        h[1] = prefix;
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        m.bytes(&h)
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        match self.request(&format!("remove address {addr}/{prefix} from {name}"), m) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == nix::errno::Errno::EADDRNOTAVAIL => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Add an IPv6 address without duplicate address detection
    /// (`IFA_F_NODAD`: usable at once, as the topology owns the prefix);
    /// `Ok(false)` if it was already there.
    pub fn add_addr6(
        &mut self,
        index: u32,
        name: &str,
        addr: std::net::Ipv6Addr,
        prefix: u8,
    ) -> Result<bool, NlError> {
        const IFA_F_NODAD: u8 = 0x02;
        self.new_addr(
            AF_INET6,
            IFA_F_NODAD,
            index,
            &addr.octets(),
            prefix,
            &format!("add address {addr}/{prefix} to {name}"),
        )
    }

    /// `RTM_NEWADDR` of `octets` (either family) on `index`; `what` names it
    /// in the error; `Ok(false)` on EEXIST.
    fn new_addr(
        &mut self,
        family: u8,
        flags: u8,
        index: u32,
        octets: &[u8],
        prefix: u8,
        what: &str,
    ) -> Result<bool, NlError> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
        let mut h = [0u8; 8];
        h[0] = family;
        h[1] = prefix;
        h[2] = flags;
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        m.bytes(&h)
            .attr(IFA_LOCAL, octets)
            .attr(IFA_ADDRESS, octets);
        created(self.request(what, m))
    }

    /// IPv4 addresses of this namespace.
    pub fn addrs(&mut self) -> Result<Vec<Addr>, NlError> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
        m.bytes(&[AF_INET, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        for p in self.request("dump addresses", m)? {
            if p.len() < 8 || p[0] != AF_INET {
                continue;
            }
            let index = u32::from_ne_bytes(p[4..8].try_into().unwrap());
            let mut addr = None;
            for (ty, v) in attrs(&p[8..]) {
                if ty == IFA_LOCAL || (ty == IFA_ADDRESS && addr.is_none()) {
                    addr = ipv4_of(v);
                }
            }
            if let Some(addr) = addr {
                out.push(Addr {
                    index,
                    addr,
                    prefix: p[1],
                });
            }
        }
        Ok(out)
    }

    /// IPv6 addresses of this namespace.
    pub fn addrs6(&mut self) -> Result<Vec<Addr6>, NlError> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
        m.bytes(&[AF_INET6, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        for p in self.request("dump IPv6 addresses", m)? {
            if p.len() < 8 || p[0] != AF_INET6 {
                continue;
            }
            let index = u32::from_ne_bytes(p[4..8].try_into().unwrap());
            let addr = attrs(&p[8..])
                .filter(|(ty, _)| *ty == IFA_ADDRESS || *ty == IFA_LOCAL)
                .find_map(|(_, v)| <[u8; 16]>::try_from(v.get(..16)?).ok());
            if let Some(a) = addr {
                out.push(Addr6 {
                    index,
                    addr: a.into(),
                    prefix: p[1],
                    scope: p[3],
                });
            }
        }
        Ok(out)
    }

    /// The next hop of the IPv6 default route of the main table, if any.
    pub fn default_route6(&mut self) -> Result<Option<std::net::Ipv6Addr>, NlError> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        m.bytes(&[AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for p in self.request("dump IPv6 routes", m)? {
            if p.len() < 12 || p[0] != AF_INET6 || p[4] != RT_TABLE_MAIN || p[1] != 0 {
                continue;
            }
            let gw = attrs(&p[12..])
                .filter(|(ty, _)| *ty == RTA_GATEWAY)
                .find_map(|(_, v)| <[u8; 16]>::try_from(v.get(..16)?).ok());
            if let Some(g) = gw {
                return Ok(Some(g.into()));
            }
        }
        Ok(None)
    }

    /// Add a default route via `gw`; `Ok(false)` if one was already there.
    pub fn add_default_route(&mut self, gw: Ipv4Addr) -> Result<bool, NlError> {
        let m = Self::default_route_msg(AF_INET, &gw.octets());
        created(self.request(&format!("add default route via {gw}"), m))
    }

    /// Add an IPv6 default route via `gw` out of interface `oif` (a
    /// link-local next hop needs it); `Ok(false)` if one was already there.
    pub fn add_default_route6(
        &mut self,
        gw: std::net::Ipv6Addr,
        oif: u32,
    ) -> Result<bool, NlError> {
        let mut m = Self::default_route_msg(AF_INET6, &gw.octets());
        m.attr(RTA_OIF, &oif.to_ne_bytes());
        created(self.request(&format!("add IPv6 default route via {gw}"), m))
    }

    /// `RTM_NEWROUTE` of a main-table unicast default route via `gw`.
    fn default_route_msg(family: u8, gw: &[u8]) -> Msg {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
        let mut h = [0u8; 12];
        h[0] = family;
        h[4] = RT_TABLE_MAIN;
        h[5] = RTPROT_BOOT;
        h[6] = 0; // RT_SCOPE_UNIVERSE
        h[7] = RTN_UNICAST;
        m.bytes(&h).attr(RTA_GATEWAY, gw);
        m
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NlError> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        m.bytes(&[AF_INET, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        for p in self.request("dump routes", m)? {
            if p.len() < 12 || p[0] != AF_INET || p[4] != RT_TABLE_MAIN {
                continue;
            }
            let mut r = Route {
                dst: Ipv4Addr::UNSPECIFIED,
                dst_len: p[1],
                gateway: None,
                oif: None,
            };
            for (ty, v) in attrs(&p[12..]) {
                match ty {
                    RTA_DST => r.dst = ipv4_of(v).unwrap_or(r.dst),
                    RTA_GATEWAY => r.gateway = ipv4_of(v),
                    RTA_OIF => r.oif = Some(u32_of(v)),
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// Link changes for [`Netlink::set_link`].
#[derive(Debug, Default, Clone)]
pub struct LinkSettings {
    /// Bring the link up or down.
    pub up: Option<bool>,
    /// Set or clear `IFF_NOARP`.
    pub noarp: Option<bool>,
    /// Set the MTU.
    pub mtu: Option<u32>,
    /// Set the alias.
    pub alias: Option<String>,
    /// Keep the kernel quiet on this link: no IPv4 forwarding, no IPv6 addresses.
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layout of `ip link add veth-a type veth peer name veth-b` as iproute2
    /// builds it (nested LINKINFO / INFO_DATA / VETH_INFO_PEER with an ifinfomsg).
    #[test]
    fn veth_message_layout() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE);
        m.ifinfo(0, 0, 0).attr_str(IFLA_IFNAME, "veth-a");
        m.begin(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "veth");
        m.begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, "veth-b");
        m.end().end().end();
        let body = &m.buf[16 + 16..];
        let v: Vec<_> = attrs(body).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], (IFLA_IFNAME, &b"veth-a\0"[..]));
        let (ty, li) = v[1];
        assert_eq!(ty, IFLA_LINKINFO);
        let inner: Vec<_> = attrs(li).collect();
        assert_eq!(inner[0], (IFLA_INFO_KIND, &b"veth\0"[..]));
        let data: Vec<_> = attrs(inner[1].1).collect();
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer = data[0].1;
        assert_eq!(peer.len(), 16 + 4 + 8); // ifinfomsg + "veth-b\0" padded
        let pa: Vec<_> = attrs(&peer[16..]).collect();
        assert_eq!(pa[0], (IFLA_IFNAME, &b"veth-b\0"[..]));
    }

    #[test]
    fn attrs_stop_on_garbage() {
        assert_eq!(attrs(&[0xff, 0xff, 1, 0, 1, 2]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }
}
