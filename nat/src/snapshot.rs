//! The NAT's state as plain structs and bytes, for a restart.
//!
//! Contract:
//! - [`Nat::export`](crate::Nat::export) copies the live entries (tuples,
//!   translation, TCP state, assured flag, remaining timeout), the per-host
//!   accounting and the port allocator's position into a [`NatSnapshot`]:
//!   plain structs, so the caller can encode them off the forwarding thread.
//! - [`encode`] / [`decode`] turn a snapshot into versioned bytes and back.
//!   [`decode`] never panics and never allocates more than the input can
//!   describe: garbage, truncation, trailing bytes, an unknown version or an
//!   unknown enum value are a [`SnapshotError`].
//! - [`Nat::import`](crate::Nat::import) restores a snapshot into an empty
//!   engine at `now`, `elapsed_ms` after it was taken: entries whose
//!   remaining time has run out are not restored, the others keep what was
//!   left of theirs. EIM mappings, their reference counts, the port bitmap
//!   and the address-dependent filter records are not stored: they are
//!   functions of the entries and are rebuilt from them, so a snapshot
//!   cannot carry inconsistent ones. An entry whose translation contradicts
//!   another one's (an external port held twice, a port published by a DNAT
//!   rule, a tuple clash) or the configuration (another external address)
//!   is skipped and counted, never half-restored.
//!
//! Not kept: fragments waiting for their first fragment (5 s), the per-host
//! new-flow token buckets (they start full), the engine's counters.

use crate::conntrack::{Dir, MapRef, TcpState, Tuple};
use crate::family::Family;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Version of the byte format written by [`encode`].
pub const FORMAT_VERSION: u16 = 1;
/// The magic of a snapshot of family `A` (NAT44 and NAT66 states cannot be
/// taken for one another).
fn magic<A: Family>() -> &'static [u8; 4] {
    if A::LEN == 4 { b"VNAT" } else { b"VNA6" }
}

/// One connection as saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedEntry<A = Ipv4Addr> {
    /// Tuple of the first packet, as the initiator sent it.
    pub orig: Tuple<A>,
    /// Tuple of replies, as they arrive (before translation).
    pub reply: Tuple<A>,
    /// Time left before it expires, at export (ms).
    pub remaining_ms: u64,
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Packets per direction.
    pub packets: [u32; 2],
    /// The EIM mapping(s) it refers to.
    pub map: MapRef,
    /// TCP state (TCP only).
    pub tcp: TcpState,
    /// Direction of the first FIN.
    pub fin_dir: Option<Dir>,
    /// A reply was seen.
    pub seen_reply: bool,
    /// Picked up mid-stream.
    pub pickup: bool,
    /// Assured (never evicted early).
    pub assured: bool,
    /// The internal host it is charged to (the unspecified address for
    /// connections opened from outside; NAT66: the ingress port's subscriber).
    pub host: Option<A>,
}

/// A host's counters as saved (its entries and mappings are counted again on import).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedHost<A = Ipv4Addr> {
    /// The internal address.
    pub addr: A,
    /// Its entries evicted to make room.
    pub evicted: u64,
    /// Its drops by cause (`nat-host-limit`, `nat-table-full`, `nat-ports-exhausted`, `nat-host-rate`).
    pub drops: [u64; 4],
}

/// The NAT's state at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSnapshot<A = Ipv4Addr> {
    /// The external address the translations use.
    pub external: A,
    /// Live entries.
    pub entries: Vec<SavedEntry<A>>,
    /// Live host records.
    pub hosts: Vec<SavedHost<A>>,
    /// Random port allocator state.
    pub rng: u64,
    /// Sequential port allocator positions (ports < 1024, ≥ 1024, ICMP ids).
    pub seq: [u16; 3],
}

/// What [`Nat::import`](crate::Nat::import) restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Entries restored.
    pub restored: usize,
    /// Entries whose time ran out while the switch was down.
    pub expired: usize,
    /// Entries that contradict another entry or the configuration.
    pub inconsistent: usize,
    /// Entries that did not fit (a smaller table or host limit now).
    pub no_room: usize,
    /// EIM mappings rebuilt.
    pub mappings: usize,
}

/// Why a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a NAT snapshot.
    BadMagic,
    /// Written by another format version.
    Version(u16),
    /// Ends in the middle of a record.
    Truncated,
    /// Bytes after the last record.
    Trailing(usize),
    /// A field holds a value no version of the format writes.
    BadValue(&'static str),
    /// The engine already holds state (import only into an empty one).
    NotEmpty,
    /// Saved for another external address.
    ForeignExternal {
        /// In the snapshot.
        saved: IpAddr,
        /// Configured now.
        configured: IpAddr,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::BadMagic => write!(f, "not a NAT state (bad magic)"),
            SnapshotError::Version(v) => write!(
                f,
                "NAT state format version {v}, this build reads {FORMAT_VERSION}"
            ),
            SnapshotError::Truncated => write!(f, "NAT state truncated"),
            SnapshotError::Trailing(n) => write!(f, "{n} stray bytes after the NAT state"),
            SnapshotError::BadValue(what) => write!(f, "NAT state: invalid {what}"),
            SnapshotError::NotEmpty => write!(f, "the NAT already holds connections"),
            SnapshotError::ForeignExternal { saved, configured } => write!(
                f,
                "NAT state saved for external address {saved}, configured {configured}"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// Bytes of one encoded entry of family `A`: protocol, two tuples,
/// remaining time, bytes, packets, four flag bytes, host.
fn entry_len<A: Family>() -> usize {
    1 + 2 * (2 * A::LEN + 4) + 8 + 16 + 8 + 4 + A::LEN
}

/// Bytes of one encoded host record: address, evictions, four drop counters.
fn host_len<A: Family>() -> usize {
    A::LEN + 8 + 32
}

fn put_addr<A: Family>(out: &mut Vec<u8>, a: A) {
    out.extend_from_slice(&a.bytes()[..A::LEN]);
}

fn put_tuple<A: Family>(out: &mut Vec<u8>, t: &Tuple<A>) {
    put_addr(out, t.src);
    put_addr(out, t.dst);
    out.extend_from_slice(&t.sport.to_le_bytes());
    out.extend_from_slice(&t.dport.to_le_bytes());
}

fn state_code(s: TcpState) -> u8 {
    TcpState::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// The bytes of `s` (format [`FORMAT_VERSION`], little-endian; addresses of
/// [`Family::LEN`] bytes, and a magic of the family's own).
pub fn encode<A: Family>(s: &NatSnapshot<A>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        40 + s.entries.len() * entry_len::<A>() + s.hosts.len() * host_len::<A>(),
    );
    out.extend_from_slice(magic::<A>());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    put_addr(&mut out, s.external);
    out.extend_from_slice(&s.rng.to_le_bytes());
    for q in s.seq {
        out.extend_from_slice(&q.to_le_bytes());
    }
    out.extend_from_slice(&(s.entries.len() as u32).to_le_bytes());
    for e in &s.entries {
        out.push(e.orig.proto);
        put_tuple(&mut out, &e.orig);
        put_tuple(&mut out, &e.reply);
        out.extend_from_slice(&e.remaining_ms.to_le_bytes());
        for b in e.bytes {
            out.extend_from_slice(&b.to_le_bytes());
        }
        for p in e.packets {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.push(match e.map {
            MapRef::None => 0,
            MapRef::Outbound => 1,
            MapRef::Inbound => 2,
            MapRef::Hairpin => 3,
        });
        out.push(state_code(e.tcp));
        out.push(match e.fin_dir {
            None => 0,
            Some(Dir::Original) => 1,
            Some(Dir::Reply) => 2,
        });
        out.push(
            u8::from(e.seen_reply)
                | u8::from(e.pickup) << 1
                | u8::from(e.assured) << 2
                | u8::from(e.host.is_some()) << 3,
        );
        put_addr(&mut out, e.host.unwrap_or(A::UNSPECIFIED));
    }
    out.extend_from_slice(&(s.hosts.len() as u32).to_le_bytes());
    for h in &s.hosts {
        put_addr(&mut out, h.addr);
        out.extend_from_slice(&h.evicted.to_le_bytes());
        for d in h.drops {
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
    out
}

/// A bounds-checked reader.
struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let (h, t) = self
            .b
            .split_first_chunk::<N>()
            .ok_or(SnapshotError::Truncated)?;
        self.b = t;
        Ok(*h)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn ip<A: Family>(&mut self) -> Result<A, SnapshotError> {
        let mut b = [0u8; 16];
        let (h, t) = self
            .b
            .split_at_checked(A::LEN)
            .ok_or(SnapshotError::Truncated)?;
        b[..A::LEN].copy_from_slice(h);
        self.b = t;
        Ok(A::from_bytes(b))
    }
    fn tuple<A: Family>(&mut self, proto: u8) -> Result<Tuple<A>, SnapshotError> {
        Ok(Tuple {
            proto,
            src: self.ip()?,
            dst: self.ip()?,
            sport: self.u16()?,
            dport: self.u16()?,
        })
    }
    /// A record count, refused if the rest cannot hold that many records.
    fn count(&mut self, record: usize) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(record) > self.b.len() {
            return Err(SnapshotError::Truncated);
        }
        Ok(n)
    }
}

/// Parse bytes written by [`encode`] for family `A`.
pub fn decode<A: Family>(bytes: &[u8]) -> Result<NatSnapshot<A>, SnapshotError> {
    let mut r = Reader { b: bytes };
    if &r.take::<4>().map_err(|_| SnapshotError::BadMagic)? != magic::<A>() {
        return Err(SnapshotError::BadMagic);
    }
    let v = r.u16()?;
    if v != FORMAT_VERSION {
        return Err(SnapshotError::Version(v));
    }
    let external = r.ip()?;
    let rng = r.u64()?;
    let seq = [r.u16()?, r.u16()?, r.u16()?];
    let n = r.count(entry_len::<A>())?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let proto = r.u8()?;
        let orig = r.tuple(proto)?;
        let reply = r.tuple(proto)?;
        let remaining_ms = r.u64()?;
        let bytes = [r.u64()?, r.u64()?];
        let packets = [r.u32()?, r.u32()?];
        let map = match r.u8()? {
            0 => MapRef::None,
            1 => MapRef::Outbound,
            2 => MapRef::Inbound,
            3 => MapRef::Hairpin,
            _ => return Err(SnapshotError::BadValue("mapping kind")),
        };
        let tcp = *TcpState::ALL
            .get(usize::from(r.u8()?))
            .ok_or(SnapshotError::BadValue("TCP state"))?;
        let fin_dir = match r.u8()? {
            0 => None,
            1 => Some(Dir::Original),
            2 => Some(Dir::Reply),
            _ => return Err(SnapshotError::BadValue("FIN direction")),
        };
        let flags = r.u8()?;
        if flags >> 4 != 0 {
            return Err(SnapshotError::BadValue("entry flags"));
        }
        let host = r.ip()?;
        entries.push(SavedEntry {
            orig,
            reply,
            remaining_ms,
            bytes,
            packets,
            map,
            tcp,
            fin_dir,
            seen_reply: flags & 1 != 0,
            pickup: flags & 2 != 0,
            assured: flags & 4 != 0,
            host: (flags & 8 != 0).then_some(host),
        });
    }
    let n = r.count(host_len::<A>())?;
    let mut hosts = Vec::with_capacity(n);
    for _ in 0..n {
        hosts.push(SavedHost {
            addr: r.ip()?,
            evicted: r.u64()?,
            drops: [r.u64()?, r.u64()?, r.u64()?, r.u64()?],
        });
    }
    if !r.b.is_empty() {
        return Err(SnapshotError::Trailing(r.b.len()));
    }
    Ok(NatSnapshot {
        external,
        entries,
        hosts,
        rng,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NatSnapshot {
        let t = Tuple {
            proto: 6,
            src: Ipv4Addr::new(192, 168, 15, 1),
            dst: Ipv4Addr::new(203, 0, 113, 10),
            sport: 40000,
            dport: 80,
        };
        let mut r = t.inv();
        r.dst = Ipv4Addr::new(203, 0, 113, 1);
        NatSnapshot {
            external: Ipv4Addr::new(203, 0, 113, 1),
            entries: vec![SavedEntry {
                orig: t,
                reply: r,
                remaining_ms: 7_000_000,
                bytes: [1, u64::MAX],
                packets: [3, 4],
                map: MapRef::Outbound,
                tcp: TcpState::CloseWait,
                fin_dir: Some(Dir::Reply),
                seen_reply: true,
                pickup: false,
                assured: true,
                host: Some(t.src),
            }],
            hosts: vec![SavedHost {
                addr: t.src,
                evicted: 9,
                drops: [1, 2, 3, 4],
            }],
            rng: 77,
            seq: [1, 2, 3],
        }
    }

    #[test]
    fn bytes_round_trip() {
        let s = sample();
        assert_eq!(decode::<Ipv4Addr>(&encode(&s)), Ok(s));
    }

    #[test]
    fn every_truncation_and_bad_header_is_refused() {
        let b = encode(&sample());
        for n in 0..b.len() {
            assert!(
                decode::<Ipv4Addr>(&b[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        let mut x = b.clone();
        x.push(0);
        assert_eq!(decode::<Ipv4Addr>(&x), Err(SnapshotError::Trailing(1)));
        let mut x = b.clone();
        x[4] = 9;
        assert_eq!(decode::<Ipv4Addr>(&x), Err(SnapshotError::Version(9)));
        let mut x = b.clone();
        x[0] = b'X';
        assert_eq!(decode::<Ipv4Addr>(&x), Err(SnapshotError::BadMagic));
        // A count far beyond the bytes is refused before anything is allocated.
        let mut x = b[..24].to_vec();
        x.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode::<Ipv4Addr>(&x), Err(SnapshotError::Truncated));
    }
}
