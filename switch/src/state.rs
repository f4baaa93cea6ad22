//! The switch's tables saved across a restart: the state file.
//!
//! Contract:
//! - [`SwitchState`] holds plain copies of the FDB, the switch's ARP and
//!   ND tables, the gateway's neighbour caches (LAN and uplink, both
//!   families), the NAT44 and NAT66 states ([`nat::snapshot`]) and the
//!   connections the ACL tracks for `state` rules, taken by the worker
//!   between batches
//!   ([`capture`]). Ages and timeouts are
//!   relative to the capture; the wall-clock time of the capture is stored,
//!   so a restore shifts every timer by the time that passed.
//! - Entries refer to ports by name (an index into [`SwitchState::ports`]),
//!   never by the port index of the run that saved them.
//! - [`encode`] writes `magic, version, body length, CRC-32, body`
//!   (version 2: version 1's tables, then the IPv6 ones; version 1 when
//!   there is no IPv6 state, so a vswitch from before IPv6 reads it too);
//!   [`decode`] reads both versions (a version-1 file restores without IPv6
//!   state, so `vswitch upgrade` from an older vswitch keeps the rest) and
//!   refuses anything else with a [`StateError`] that says what
//!   is wrong (not a state file, another version, truncated, corrupt, saved
//!   for another topology), and never panics.
//! - [`write_atomic`] writes a temporary file, fsyncs it and renames it over
//!   the old one (then fsyncs the directory): a crash leaves the old file or
//!   the new one, never a mix.

use crate::wire::MacAddr;
use nat::family::Family;
use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Version of the file format written (3 when a MAC is behind a remote
/// VTEP, else 2 with IPv6 state, else 1, so older readers keep working).
pub const VERSION: u32 = 3;
/// The oldest version read.
pub const OLDEST: u32 = 1;
const MAGIC: &[u8; 8] = b"VSWSTATE";
const HEADER: usize = 8 + 4 + 8 + 4;

/// Default directory of state files.
pub const STATE_DIR: &str = "/var/lib/vswitch";

/// Default state file of topology `name`.
pub fn default_path(topology: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{topology}.state"))
}

/// One learned MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedMac {
    /// The address.
    pub mac: MacAddr,
    /// VLAN (0: VLAN-unaware).
    pub vlan: u16,
    /// Index into [`SwitchState::ports`].
    pub port: u16,
    /// Time since it was last seen, at capture (ms); [`STATIC_AGE`] for a
    /// static entry (`vswitch fdb add`), restored as static whatever the time down.
    pub age_ms: u64,
    /// Behind a tunnel port: the remote VTEP.
    pub vtep: Option<Ipv4Addr>,
}

/// [`SavedMac::age_ms`] of a static entry.
pub const STATIC_AGE: u64 = u64::MAX;

/// One IP→MAC binding (switch ARP or ND table, or a gateway neighbour cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedNeigh<A = Ipv4Addr> {
    /// The address.
    pub ip: A,
    /// Its MAC.
    pub mac: MacAddr,
    /// Index into [`SwitchState::ports`].
    pub port: u16,
    /// Time since it was last heard, at capture (ms).
    pub age_ms: u64,
    /// Confirmed by an ARP reply.
    pub confirmed: bool,
}

/// Everything a restart keeps.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SwitchState {
    /// Topology name (a file saved for another topology is refused).
    pub topology: String,
    /// Wall-clock time of the capture (ms since the Unix epoch).
    pub saved_unix_ms: u64,
    /// Port names, in the saving run's order.
    pub ports: Vec<String>,
    /// MAC table.
    pub fdb: Vec<SavedMac>,
    /// The switch's ARP table (ARP suppression).
    pub arp: Vec<SavedNeigh>,
    /// The gateway's LAN neighbour cache.
    pub neigh_lan: Vec<SavedNeigh>,
    /// The gateway's uplink neighbour cache.
    pub neigh_wan: Vec<SavedNeigh>,
    /// The NAT's state.
    pub nat: Option<nat::snapshot::NatSnapshot>,
    /// Connections the ACL tracks for `state` rules.
    pub flows: Vec<crate::policy::SavedFlow>,
    /// The switch's ND table (ND suppression).
    pub nd: Vec<SavedNeigh<Ipv6Addr>>,
    /// The gateway's IPv6 LAN neighbour cache.
    pub neigh6_lan: Vec<SavedNeigh<Ipv6Addr>>,
    /// The gateway's IPv6 uplink neighbour cache.
    pub neigh6_wan: Vec<SavedNeigh<Ipv6Addr>>,
    /// The NAT66 state.
    pub nat6: Option<nat::snapshot::NatSnapshot<Ipv6Addr>>,
    /// Flood VTEPs added at run time (`fdb add 00:00:00:00:00:00 dst`), by
    /// tunnel port index (configured `remotes` come from the topology).
    pub flood: Vec<(u16, Ipv4Addr)>,
}

impl SwitchState {
    /// Number of entries of every table.
    pub fn entries(&self) -> usize {
        self.fdb.len()
            + self.arp.len()
            + self.neigh_lan.len()
            + self.neigh_wan.len()
            + self.nat.as_ref().map_or(0, |n| n.entries.len())
            + self.flows.len()
            + self.nd.len()
            + self.neigh6_lan.len()
            + self.neigh6_wan.len()
            + self.nat6.as_ref().map_or(0, |n| n.entries.len())
    }
}

/// Why a state file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Does not start with the magic.
    NotAStateFile,
    /// Written by another format version.
    Version(u32),
    /// Shorter than its header says.
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header announces.
        want: u64,
    },
    /// The checksum does not match (corrupt).
    Checksum,
    /// The body does not parse (corrupt, with a valid checksum: a bug).
    Body(String),
    /// Saved for another topology.
    Foreign(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::NotAStateFile => write!(f, "not a vswitch state file"),
            StateError::Version(v) => write!(
                f,
                "written by state format version {v}; this vswitch reads versions {OLDEST} to {VERSION}"
            ),
            StateError::Truncated { have, want } => {
                write!(f, "truncated ({have} bytes, the header announces {want})")
            }
            StateError::Checksum => write!(f, "corrupt (checksum mismatch)"),
            StateError::Body(e) => write!(f, "corrupt ({e})"),
            StateError::Foreign(t) => write!(f, "saved for topology {t:?}"),
        }
    }
}

impl std::error::Error for StateError {}

/// CRC-32 (IEEE 802.3, reflected, as zlib), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *v = c;
        }
        t
    });
    !data
        .iter()
        .fold(!0u32, |c, &b| t[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

fn put_neighs<A: Family>(out: &mut Vec<u8>, v: &[SavedNeigh<A>]) {
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for n in v {
        out.extend_from_slice(&n.ip.bytes()[..A::LEN]);
        out.extend_from_slice(&n.mac.0);
        out.extend_from_slice(&n.port.to_le_bytes());
        out.extend_from_slice(&n.age_ms.to_le_bytes());
        out.push(u8::from(n.confirmed));
    }
}

fn put_nat<A: Family>(out: &mut Vec<u8>, n: Option<&nat::snapshot::NatSnapshot<A>>) {
    match n {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            let b = nat::snapshot::encode(n);
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// The file's bytes for `s`.
pub fn encode(s: &SwitchState) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, &s.topology);
    body.extend_from_slice(&s.saved_unix_ms.to_le_bytes());
    body.extend_from_slice(&(s.ports.len() as u16).to_le_bytes());
    for p in &s.ports {
        put_str(&mut body, p);
    }
    body.extend_from_slice(&(s.fdb.len() as u32).to_le_bytes());
    for m in &s.fdb {
        body.extend_from_slice(&m.mac.0);
        body.extend_from_slice(&m.vlan.to_le_bytes());
        body.extend_from_slice(&m.port.to_le_bytes());
        body.extend_from_slice(&m.age_ms.to_le_bytes());
    }
    put_neighs(&mut body, &s.arp);
    put_neighs(&mut body, &s.neigh_lan);
    put_neighs(&mut body, &s.neigh_wan);
    put_nat(&mut body, s.nat.as_ref());
    body.extend_from_slice(&(s.flows.len() as u32).to_le_bytes());
    for f in &s.flows {
        body.push(f.proto);
        for a in [f.src, f.dst] {
            let (fam, b) = match a {
                std::net::IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
                std::net::IpAddr::V6(a) => (6u8, a.octets()),
            };
            body.push(fam);
            body.extend_from_slice(&b);
        }
        body.extend_from_slice(&f.sport.to_le_bytes());
        body.extend_from_slice(&f.dport.to_le_bytes());
        body.extend_from_slice(&f.remaining_ms.to_le_bytes());
    }
    // Without IPv6 state the file is version 1, which a vswitch from before
    // IPv6 reads too (a rollback keeps the tables).
    let remote: Vec<(u32, Ipv4Addr)> = s
        .fdb
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.vtep.map(|v| (i as u32, v)))
        .collect();
    let v6 = !(s.nd.is_empty()
        && s.neigh6_lan.is_empty()
        && s.neigh6_wan.is_empty()
        && s.nat6.is_none());
    let version = if !remote.is_empty() || !s.flood.is_empty() {
        3
    } else if v6 {
        2
    } else {
        OLDEST
    };
    if version >= 2 {
        put_neighs(&mut body, &s.nd);
        put_neighs(&mut body, &s.neigh6_lan);
        put_neighs(&mut body, &s.neigh6_wan);
        put_nat(&mut body, s.nat6.as_ref());
    }
    if version >= 3 {
        body.extend_from_slice(&(remote.len() as u32).to_le_bytes());
        for (i, v) in &remote {
            body.extend_from_slice(&i.to_le_bytes());
            body.extend_from_slice(&v.octets());
        }
        body.extend_from_slice(&(s.flood.len() as u32).to_le_bytes());
        for (p, v) in &s.flood {
            body.extend_from_slice(&p.to_le_bytes());
            body.extend_from_slice(&v.octets());
        }
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Body("a record is cut short".into()));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn str(&mut self) -> Result<String, StateError> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.bytes(n)?.to_vec())
            .map_err(|_| StateError::Body("a name is not UTF-8".into()))
    }
    /// A count of records of `len` bytes, refused if the rest cannot hold them.
    fn count(&mut self, len: usize) -> Result<usize, StateError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(len) > self.0.len() {
            return Err(StateError::Body("a count beyond the end".into()));
        }
        Ok(n)
    }
    fn neighs<A: Family>(&mut self) -> Result<Vec<SavedNeigh<A>>, StateError> {
        let n = self.count(A::LEN + 17)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let mut ip = [0u8; 16];
            ip[..A::LEN].copy_from_slice(self.bytes(A::LEN)?);
            v.push(SavedNeigh {
                ip: A::from_bytes(ip),
                mac: MacAddr(self.arr()?),
                port: self.u16()?,
                age_ms: self.u64()?,
                confirmed: match self.arr::<1>()?[0] {
                    0 => false,
                    1 => true,
                    _ => return Err(StateError::Body("bad confirmed flag".into())),
                },
            });
        }
        Ok(v)
    }
    fn nat<A: Family>(&mut self) -> Result<Option<nat::snapshot::NatSnapshot<A>>, StateError> {
        match self.arr::<1>()?[0] {
            0 => Ok(None),
            1 => {
                let n = self.u64()?;
                let b = self.bytes(usize::try_from(n).unwrap_or(usize::MAX))?;
                nat::snapshot::decode(b)
                    .map(Some)
                    .map_err(|e| StateError::Body(e.to_string()))
            }
            _ => Err(StateError::Body("bad NAT marker".into())),
        }
    }
}

/// Parse a state file; `topology`: the running topology's name (a file
/// saved for another one is refused).
pub fn decode(bytes: &[u8], topology: &str) -> Result<SwitchState, StateError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(StateError::NotAStateFile);
    }
    if bytes.len() < HEADER {
        return Err(StateError::Truncated {
            have: bytes.len(),
            want: HEADER as u64,
        });
    }
    let v = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(OLDEST..=VERSION).contains(&v) {
        return Err(StateError::Version(v));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let body = &bytes[HEADER..];
    if (body.len() as u64) < len {
        return Err(StateError::Truncated {
            have: bytes.len(),
            want: HEADER as u64 + len,
        });
    }
    if body.len() as u64 != len {
        return Err(StateError::Body(format!(
            "{} stray bytes at the end",
            body.len() as u64 - len
        )));
    }
    if crc32(body) != crc {
        return Err(StateError::Checksum);
    }
    let mut r = Reader(body);
    let name = r.str()?;
    if name != topology {
        return Err(StateError::Foreign(name));
    }
    let saved_unix_ms = r.u64()?;
    let np = usize::from(r.u16()?);
    let mut ports = Vec::with_capacity(np.min(r.0.len() / 2));
    for _ in 0..np {
        ports.push(r.str()?);
    }
    let n = r.count(18)?;
    let mut fdb = Vec::with_capacity(n);
    for _ in 0..n {
        fdb.push(SavedMac {
            mac: MacAddr(r.arr()?),
            vlan: r.u16()?,
            port: r.u16()?,
            age_ms: r.u64()?,
            vtep: None,
        });
    }
    let arp = r.neighs()?;
    let neigh_lan = r.neighs()?;
    let neigh_wan = r.neighs()?;
    let nat = r.nat()?;
    let n = r.count(47)?;
    let mut flows = Vec::with_capacity(n);
    for _ in 0..n {
        let proto = r.arr::<1>()?[0];
        let mut addr = || -> Result<std::net::IpAddr, StateError> {
            let fam = r.arr::<1>()?[0];
            let a = std::net::Ipv6Addr::from(r.arr::<16>()?);
            match (fam, a.to_ipv4_mapped()) {
                (4, Some(v4)) => Ok(v4.into()),
                (6, _) => Ok(a.into()),
                _ => Err(StateError::Body("bad address family".into())),
            }
        };
        let (src, dst) = (addr()?, addr()?);
        flows.push(crate::policy::SavedFlow {
            proto,
            src,
            dst,
            sport: r.u16()?,
            dport: r.u16()?,
            remaining_ms: r.u64()?,
        });
    }
    let (mut nd, mut neigh6_lan, mut neigh6_wan, mut nat6) = Default::default();
    if v >= 2 {
        nd = r.neighs()?;
        neigh6_lan = r.neighs()?;
        neigh6_wan = r.neighs()?;
        nat6 = r.nat()?;
    }
    let mut flood = Vec::new();
    if v >= 3 {
        let n = r.count(8)?;
        for _ in 0..n {
            let i = r.u32()? as usize;
            let a = Ipv4Addr::from(r.arr::<4>()?);
            let m = fdb
                .get_mut(i)
                .ok_or_else(|| StateError::Body("a remote VTEP of no MAC".into()))?;
            m.vtep = Some(a);
        }
        let n = r.count(6)?;
        for _ in 0..n {
            let p = r.u16()?;
            flood.push((p, Ipv4Addr::from(r.arr::<4>()?)));
        }
    }
    if !r.0.is_empty() {
        return Err(StateError::Body("stray bytes after the last table".into()));
    }
    Ok(SwitchState {
        topology: name,
        saved_unix_ms,
        ports,
        fdb,
        arp,
        neigh_lan,
        neigh_wan,
        nat,
        flows,
        nd,
        neigh6_lan,
        neigh6_wan,
        nat6,
        flood,
    })
}

/// Write `bytes` to `path` atomically: a temporary file in the same
/// directory (created if needed), fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Wall-clock ms since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- capture, restore and the saver thread --------------------------------

use crate::arp::{Heard, NeighAddr, NeighTable};
use crate::policy::{Policy, Reload};
use crate::worker::Worker;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Copy the worker's tables at `now` (its clock), between batches. Cost: one
/// pass over each table (the NAT's slots included); nothing is changed. The
/// periodic save uses [`PagedCapture`] instead, which does not pause
/// forwarding for a whole pass over a large NAT table.
pub fn capture<P: Policy + Reload>(w: &Worker<P>, now: u64) -> SwitchState {
    capture_parts(w, now, true)
}

/// NAT entries copied per step of a [`PagedCapture`]: about the cost of one
/// page of a `conntrack` listing, a fraction of a millisecond.
pub const SAVE_PAGE: usize = 1024;

/// A copy of the tables taken in steps between batches: everything but the
/// NAT's entries at [`PagedCapture::begin`] (the small tables, whole), then
/// the NAT's entries [`SAVE_PAGE`] at a time with [`PagedCapture::step`],
/// their remaining times counted from the beginning (the file's one save
/// time). An entry created or removed meanwhile may be in or out of the copy;
/// each entry is whole and the restore skips contradictions.
#[derive(Debug)]
pub struct PagedCapture {
    st: SwitchState,
    base: u64,
    cursor: Option<usize>,
    /// The NAT66 table's cursor, paged after the NAT44 one.
    cursor6: Option<usize>,
}

impl PagedCapture {
    /// Begin a copy at `now` (the worker's clock).
    pub fn begin<P: Policy + Reload>(w: &Worker<P>, now: u64) -> PagedCapture {
        let st = capture_parts(w, now, false);
        let cursor = st.nat.as_ref().map(|_| 0);
        let cursor6 = st.nat6.as_ref().map(|_| 0);
        PagedCapture {
            st,
            base: now,
            cursor,
            cursor6,
        }
    }

    /// Copy the next page of NAT entries at `now`; true once the copy is
    /// complete (then take it with [`PagedCapture::finish`]).
    pub fn step<P: Policy + Reload>(&mut self, w: &Worker<P>, now: u64) -> bool {
        let (_, p) = w.parts();
        let gw = p.gateway.as_ref();
        if self.cursor.is_some() {
            let nat = gw.and_then(|g| g.nat.as_ref());
            match (self.cursor, nat, self.st.nat.as_mut()) {
                (Some(c), Some(n), Some(snap)) => {
                    self.cursor = n.export_page(now, self.base, c, SAVE_PAGE, &mut snap.entries);
                }
                _ => self.cursor = None,
            }
            return false;
        }
        let nat6 = gw.and_then(|g| g.v6()).and_then(|v| v.nat.as_ref());
        match (self.cursor6, nat6, self.st.nat6.as_mut()) {
            (Some(c), Some(n), Some(snap)) => {
                self.cursor6 = n.export_page(now, self.base, c, SAVE_PAGE, &mut snap.entries);
            }
            _ => self.cursor6 = None,
        }
        self.cursor6.is_none()
    }

    /// The complete copy.
    pub fn finish(self) -> SwitchState {
        self.st
    }
}

/// The entries of a neighbour table of either family at `now`.
fn neighs<A: NeighAddr>(t: &NeighTable<A>, now: u64) -> Vec<SavedNeigh<A>> {
    t.entries(now)
        .into_iter()
        .map(|(ip, e)| SavedNeigh {
            ip,
            mac: e.mac,
            port: e.port as u16,
            age_ms: now.saturating_sub(e.last_seen),
            confirmed: e.confirmed,
        })
        .collect()
}

fn capture_parts<P: Policy + Reload>(w: &Worker<P>, now: u64, entries: bool) -> SwitchState {
    let (ports, p) = w.parts();
    let gw = p.gateway.as_ref();
    let v6 = gw.and_then(|g| g.v6());
    SwitchState {
        topology: w.saver().map(|s| s.topology.clone()).unwrap_or_default(),
        saved_unix_ms: unix_ms(),
        ports: ports.iter().map(|p| p.name.clone()).collect(),
        fdb: p
            .fdb
            .entries(now)
            .into_iter()
            .map(|(mac, e)| SavedMac {
                mac,
                vlan: e.vlan,
                port: e.port as u16,
                vtep: e.vtep,
                age_ms: if e.is_static {
                    STATIC_AGE
                } else {
                    now.saturating_sub(e.last_seen)
                },
            })
            .collect(),
        arp: neighs(&p.arp, now),
        neigh_lan: gw.map(|g| neighs(&g.neigh_lan, now)).unwrap_or_default(),
        neigh_wan: gw.map(|g| neighs(&g.neigh_wan, now)).unwrap_or_default(),
        nat: gw.and_then(|g| g.nat.as_ref()).map(|n| {
            if entries {
                n.export(now)
            } else {
                n.export_meta()
            }
        }),
        flows: p.policy.saved_flows(now),
        nd: neighs(&p.nd, now),
        neigh6_lan: v6.map(|v| neighs(&v.neigh_lan, now)).unwrap_or_default(),
        neigh6_wan: v6.map(|v| neighs(&v.neigh_wan, now)).unwrap_or_default(),
        nat6: v6.and_then(|v| v.nat.as_ref()).map(|n| {
            if entries {
                n.export(now)
            } else {
                n.export_meta()
            }
        }),
        flood: ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.io.tunnel_ref().map(|t| (i, t.flood_added())))
            .flat_map(|(i, v)| v.into_iter().map(move |a| (i as u16, a)))
            .collect(),
    }
}

/// What [`restore`] put back.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// Time between the save and the restore (ms, wall clock).
    pub elapsed_ms: u64,
    /// MAC table entries restored.
    pub fdb: usize,
    /// ARP and neighbour entries restored (switch table and gateway caches).
    pub neighbours: usize,
    /// Entries aged out while the switch was down, or on ports that no longer exist.
    pub dropped: usize,
    /// The NAT's report, or why its state was refused.
    pub nat: Option<Result<nat::snapshot::ImportReport, String>>,
    /// NAT66's report, or why its state was refused.
    pub nat6: Option<Result<nat::snapshot::ImportReport, String>>,
    /// Connections tracked again for the ACL's `state` rules.
    pub flows: usize,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "saved {:.1} s ago: {} MAC, {} ARP/neighbour entries restored, {} aged out or on missing ports",
            self.elapsed_ms as f64 / 1000.0,
            self.fdb,
            self.neighbours,
            self.dropped
        )?;
        if self.flows > 0 {
            write!(f, "; {} ACL-tracked connections", self.flows)?;
        }
        for (name, n) in [("NAT", &self.nat), ("NAT66", &self.nat6)] {
            match n {
                None => {}
                Some(Ok(r)) => write!(
                    f,
                    "; {name}: {} connections restored ({} mappings), {} expired, {} inconsistent, {} without room",
                    r.restored, r.mappings, r.expired, r.inconsistent, r.no_room
                )?,
                Some(Err(e)) => write!(f, "; {name} state refused: {e}")?,
            }
        }
        Ok(())
    }
}

/// Put `st` back into the worker's (empty) tables at `now` (its clock),
/// `st.saved_unix_ms` → `now_unix_ms` later: ages grow and timeouts shrink
/// by that much, what ran out is left out, and entries of ports that no
/// longer exist (by name) are dropped.
pub fn restore<P: Policy + Reload>(
    w: &mut Worker<P>,
    st: &SwitchState,
    now: u64,
    now_unix_ms: u64,
) -> Restored {
    let elapsed = now_unix_ms.saturating_sub(st.saved_unix_ms);
    let (ports, p) = w.parts_mut();
    let port_of = |i: u16| {
        // (A removed port's slot has no name: nothing maps to it.)
        let name = st.ports.get(usize::from(i)).filter(|n| !n.is_empty())?;
        ports
            .iter()
            .position(|p| &p.name == name && !p.is_removed())
    };
    let mut r = Restored {
        elapsed_ms: elapsed,
        ..Restored::default()
    };
    // Oldest first, so the tables' recency order is kept.
    let mut fdb: Vec<&SavedMac> = st.fdb.iter().collect();
    fdb.sort_by_key(|m| std::cmp::Reverse(m.age_ms));
    let ageing = p.fdb.ageing_ms();
    let mut allow = Vec::new();
    for m in fdb {
        if m.age_ms == STATIC_AGE {
            let added = port_of(m.port)
                .map(|port| (port, p.fdb.add_static_via(m.vlan, m.mac, port, m.vtep, now)));
            match added {
                Some((port, Ok(()))) => {
                    r.fdb += 1;
                    if let Some(v) = m.vtep {
                        allow.push((port, v));
                    }
                }
                _ => r.dropped += 1,
            }
            continue;
        }
        let age = m.age_ms.saturating_add(elapsed);
        match port_of(m.port) {
            Some(port) if age < ageing && now >= age => {
                p.fdb.learn_via(m.vlan, m.mac, port, m.vtep, now - age);
                r.fdb += 1;
            }
            _ => r.dropped += 1,
        }
    }
    let mut put = Put {
        port_of: &port_of,
        now,
        elapsed,
        r: &mut r,
    };
    put.neighs(&mut p.arp, &st.arp, false);
    put.neighs(&mut p.nd, &st.nd, false);
    if let Some(g) = p.gateway.as_mut() {
        put.neighs(&mut g.neigh_lan, &st.neigh_lan, true);
        put.neighs(&mut g.neigh_wan, &st.neigh_wan, true);
        if let (Some(n), Some(snap)) = (g.nat.as_mut(), &st.nat) {
            r.nat = Some(n.import(snap, now, elapsed).map_err(|e| e.to_string()));
        }
        if let Some(v6) = g.v6_mut() {
            let mut put = Put {
                port_of: &port_of,
                now,
                elapsed,
                r: &mut r,
            };
            put.neighs(&mut v6.neigh_lan, &st.neigh6_lan, true);
            put.neighs(&mut v6.neigh_wan, &st.neigh6_wan, true);
            if let (Some(n), Some(snap)) = (v6.nat.as_mut(), &st.nat6) {
                let snap = resubscribe(snap, &port_of, &mut r.dropped);
                r.nat6 = Some(n.import(&snap, now, elapsed).map_err(|e| e.to_string()));
            }
        }
    }
    r.flows = p.policy.restore_flows(&st.flows, now, elapsed);
    // Static entries behind a VTEP: their tunnel accepts it again; flood
    // VTEPs added at run time are flooded to again.
    for (port, v) in allow {
        w.allow_vtep(port, v);
    }
    for &(i, v) in &st.flood {
        let port = {
            let (ports, _) = w.parts();
            let name = st.ports.get(usize::from(i)).filter(|n| !n.is_empty());
            name.and_then(|n| ports.iter().position(|p| &p.name == n && !p.is_removed()))
        };
        match port {
            Some(p) => w.add_flood(p, v),
            None => r.dropped += 1,
        }
    }
    r
}

/// `snap` with its NAT66 subscribers (`100::<port index>` of the saving
/// run, [`crate::gateway::v6::port_subscriber`]) renumbered to this run's
/// port of the same name; connections and host records of ports that no
/// longer exist are left out (counted in `dropped`).
fn resubscribe(
    snap: &nat::snapshot::NatSnapshot<Ipv6Addr>,
    port_of: &impl Fn(u16) -> Option<usize>,
    dropped: &mut usize,
) -> nat::snapshot::NatSnapshot<Ipv6Addr> {
    use crate::gateway::v6::{port_subscriber, subscriber_port};
    let map = |a: Ipv6Addr| match subscriber_port(a) {
        Some(i) => u16::try_from(i).ok().and_then(port_of).map(port_subscriber),
        None => Some(a),
    };
    let mut s = snap.clone();
    let before = s.entries.len();
    s.entries.retain_mut(|e| match e.host.map(map) {
        Some(None) => false,
        Some(Some(h)) => {
            e.host = Some(h);
            true
        }
        None => true,
    });
    *dropped += before - s.entries.len();
    s.hosts.retain_mut(|h| match map(h.addr) {
        Some(a) => {
            h.addr = a;
            true
        }
        None => false,
    });
    s
}

/// Neighbour entries put back by [`restore`], counted into its report.
struct Put<'a, F: Fn(u16) -> Option<usize>> {
    port_of: &'a F,
    now: u64,
    elapsed: u64,
    r: &'a mut Restored,
}

impl<F: Fn(u16) -> Option<usize>> Put<'_, F> {
    /// Put `v` back into `t` (either family), oldest first so the table's
    /// recency order is kept; what aged out or lost its port is dropped.
    fn neighs<A: NeighAddr>(
        &mut self,
        t: &mut NeighTable<A>,
        v: &[SavedNeigh<A>],
        on_link_only: bool,
    ) {
        let mut v: Vec<&SavedNeigh<A>> = v.iter().collect();
        v.sort_by_key(|n| std::cmp::Reverse(n.age_ms));
        for n in v {
            let age = n.age_ms.saturating_add(self.elapsed);
            match (self.port_of)(n.port) {
                Some(port) if age < t.ageing_ms() && self.now >= age => {
                    let how = if n.confirmed {
                        Heard::Reply
                    } else {
                        Heard::Hint
                    };
                    t.observe(n.ip, n.mac, port, self.now - age, how, on_link_only);
                    self.r.neighbours += 1;
                }
                _ => self.r.dropped += 1,
            }
        }
    }
}

/// Read and check the state file at `path` for `topology`.
/// `Ok(None)`: there is none.
pub fn load(path: &Path, topology: &str) -> Result<Option<SwitchState>, String> {
    match std::fs::read(path) {
        Ok(b) => decode(&b, topology).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

type Job = (SwitchState, Option<SyncSender<Result<usize, String>>>);

/// Writes state files on a thread of its own, so the worker only copies.
pub struct Saver {
    /// Topology name written into the file.
    pub topology: String,
    /// The state file.
    pub path: PathBuf,
    /// Periodic save interval (ms; 0: only on exit and upgrade).
    pub interval_ms: u64,
    tx: SyncSender<Job>,
}

impl Saver {
    /// A saver of `topology`'s state to `path`, every `interval_ms` (0: never periodically).
    pub fn new(topology: &str, path: PathBuf, interval_ms: u64) -> std::io::Result<Saver> {
        // One job waits at most: a save that finds the writer busy is skipped
        // (the next one is as good), a blocking save waits its turn, in order.
        let (tx, rx) = sync_channel::<Job>(1);
        let p = path.clone();
        std::thread::Builder::new()
            .name("vswitch-state".into())
            .spawn(move || writer(&p, &rx))?;
        Ok(Saver {
            topology: topology.to_string(),
            path,
            interval_ms,
            tx,
        })
    }

    /// Hand `st` to the writer unless it is still busy with the previous one.
    pub fn offer(&self, st: SwitchState) {
        match self.tx.try_send((st, None)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("state: the previous save is still being written; this one skipped")
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("state: the writer thread is gone; no periodic saves")
            }
        }
    }

    /// Write `st` (after any save in progress) and wait for the result:
    /// the number of entries saved.
    pub fn save_blocking(&self, st: SwitchState) -> Result<usize, String> {
        let (tx, rx) = sync_channel(1);
        self.tx
            .send((st, Some(tx)))
            .map_err(|_| "the writer thread is gone".to_string())?;
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .map_err(|_| "the write did not finish within 60 s".to_string())?
    }
}

fn writer(path: &Path, rx: &Receiver<Job>) {
    // Encoding a full NAT table takes tens of milliseconds of CPU: on a
    // small machine it must not be taken from the forwarding thread.
    if let Err(e) = crate::sys::set_thread_idle_priority() {
        tracing::debug!("state: writer thread keeps normal priority: {e}");
    }
    while let Ok((st, reply)) = rx.recv() {
        let n = st.entries();
        let t = std::time::Instant::now();
        let res = write_atomic(path, &encode(&st))
            .map(|()| n)
            .map_err(|e| format!("{}: {e}", path.display()));
        match &res {
            Ok(n) => tracing::debug!(
                "state: {n} entries saved to {} in {} ms",
                path.display(),
                t.elapsed().as_millis()
            ),
            Err(e) => tracing::warn!("state not saved: {e}"),
        }
        if let Some(tx) = reply {
            let _ = tx.send(res);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SwitchState {
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        let n = SavedNeigh {
            ip: Ipv4Addr::new(192, 168, 15, 1),
            mac: m,
            port: 1,
            age_ms: 5,
            confirmed: true,
        };
        let n6 = SavedNeigh {
            ip: "fd00:15::1".parse().unwrap(),
            mac: m,
            port: 0,
            age_ms: 7,
            confirmed: false,
        };
        SwitchState {
            topology: "seed".into(),
            saved_unix_ms: 1_800_000_000_000,
            ports: vec!["veth-red-br".into(), "veth-blue-br".into()],
            fdb: vec![SavedMac {
                vtep: None,
                mac: m,
                vlan: 0,
                port: 0,
                age_ms: 1234,
            }],
            arp: vec![n.clone()],
            neigh_lan: vec![n.clone(), n.clone()],
            neigh_wan: vec![],
            flood: vec![],
            nat: Some(nat::Nat::new(nat::NatConfig::new(Ipv4Addr::new(203, 0, 113, 1))).export(0)),
            flows: vec![
                crate::policy::SavedFlow {
                    proto: 6,
                    src: Ipv4Addr::new(10, 0, 0, 1).into(),
                    dst: Ipv4Addr::new(10, 0, 0, 2).into(),
                    sport: 1,
                    dport: 2,
                    remaining_ms: 3,
                },
                crate::policy::SavedFlow {
                    proto: 17,
                    src: "fe80::1".parse().unwrap(),
                    dst: "fe80::2".parse().unwrap(),
                    sport: 1,
                    dport: 2,
                    remaining_ms: 3,
                },
            ],
            nd: vec![n6.clone()],
            neigh6_lan: vec![n6.clone(), n6.clone()],
            neigh6_wan: vec![n6],
            nat6: Some(
                nat::Nat::new(nat::NatConfig::new("2001:db8:113::1".parse().unwrap())).export(0),
            ),
        }
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = sample();
        let b = encode(&s);
        assert_eq!(decode(&b, "seed"), Ok(s));
        assert_eq!(decode(&b, "lab"), Err(StateError::Foreign("seed".into())));
        assert_eq!(decode(b"garbage", "seed"), Err(StateError::NotAStateFile));
        for n in 0..b.len() {
            assert!(decode(&b[..n], "seed").is_err(), "prefix {n} accepted");
        }
        let mut x = b.clone();
        x[8] = 4;
        assert_eq!(decode(&x, "seed"), Err(StateError::Version(4)));
        // A MAC behind a remote VTEP: version 3, the VTEP kept.
        let mut r = sample();
        r.fdb[0].vtep = Some(Ipv4Addr::new(10, 200, 0, 3));
        r.flood = vec![(1, Ipv4Addr::new(10, 200, 0, 9))];
        let rb = encode(&r);
        assert_eq!(rb[8], 3);
        assert_eq!(decode(&rb, "seed"), Ok(r));
        // Any flipped body byte is caught by the checksum.
        for i in HEADER..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x40;
            assert_eq!(decode(&x, "seed"), Err(StateError::Checksum), "byte {i}");
        }
    }

    /// Without IPv6 state the file is version 1, the format a vswitch from
    /// before IPv6 wrote and reads (version 2's body is version 1's with the
    /// IPv6 tables after it): an upgrade from it, or a rollback to it, keeps
    /// the tables.
    #[test]
    fn without_ipv6_state_the_file_is_version_1() {
        let mut s = sample();
        s.nd.clear();
        s.neigh6_lan.clear();
        s.neigh6_wan.clear();
        s.nat6 = None;
        let v1 = encode(&s);
        assert_eq!(v1[8..12], 1u32.to_le_bytes());
        assert_eq!(decode(&v1, "seed"), Ok(s.clone()));
        // With IPv6 state: version 2, whose body starts with version 1's.
        let v2 = encode(&sample());
        assert_eq!(v2[8..12], 2u32.to_le_bytes());
        let body1 = &v1[HEADER..];
        assert_eq!(&v2[HEADER..HEADER + body1.len()], body1);
    }

    /// NAT66 subscribers are port indices of the saving run: renumbered by
    /// port name, and those of vanished ports left out.
    #[test]
    fn nat66_subscribers_follow_their_port_by_name() {
        use crate::gateway::v6::port_subscriber;
        let mut n = nat::Nat::new({
            let mut c = nat::NatConfig::new("2001:db8:113::1".parse().unwrap());
            c.masquerade = vec!["fd00:15::/64".parse().unwrap()];
            c
        });
        let route = |a: Ipv6Addr| {
            if a.segments()[0] == 0xfd00 {
                nat::Side::Lan
            } else {
                nat::Side::Wan
            }
        };
        let pkt = |src: &str, sport: u16| {
            let mut p = vec![0u8; 48];
            nat::wire::ipv6::emit_header(
                &mut p,
                src.parse().unwrap(),
                "2001:db8:113::10".parse().unwrap(),
                17,
                64,
                8,
            );
            p[40..42].copy_from_slice(&sport.to_be_bytes());
            p[42..44].copy_from_slice(&53u16.to_be_bytes());
            p[44..46].copy_from_slice(&8u16.to_be_bytes());
            p[46..48].copy_from_slice(&0xffffu16.to_be_bytes());
            p
        };
        // Saved: red on port 0, blue on port 1.
        for (src, port) in [("fd00:15::1", 0), ("fd00:15::2", 1)] {
            let mut p = pkt(src, 5000);
            n.process_as(
                0,
                nat::Side::Lan,
                &mut p,
                false,
                &route,
                port_subscriber(port),
            );
        }
        let snap = n.export(0);
        assert_eq!(snap.entries.len(), 2);
        // Now: blue's port is index 3, red's port is gone.
        let port_of = |i: u16| (i == 1).then_some(3);
        let mut dropped = 0;
        let s = resubscribe(&snap, &port_of, &mut dropped);
        assert_eq!(dropped, 1);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].host, Some(port_subscriber(3)));
        assert!(
            s.hosts.iter().all(|h| h.addr == port_subscriber(3)),
            "{:?}",
            s.hosts
        );
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("vsw-state-{}", std::process::id()));
        let p = dir.join("t.state");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.join("t.state.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
