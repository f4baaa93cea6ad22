//! Ports: the batch buffer and the port I/O trait, with the TAP port.
//!
//! Contract: a [`Batch`] is allocated once per worker and reused for every
//! receive; each slot holds `[headroom][virtio_net_hdr][frame]`. Ports fill
//! it with [`PortIo::rx_batch`] and send chosen slots with
//! [`PortIo::tx_batch`]; neither allocates per frame. Every port speaks the
//! 10-byte `virtio_net_hdr`, so GSO super-frames and partial checksums pass
//! between ports whole, as the kernel handed them to us.
//!
//! An `Err` from a port means the port is gone (device removed): the worker
//! takes it out of service. Transient trouble (a full queue) is a counted drop.

use crate::wire::VNET_HDR_LEN;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

/// Frames per batch.
pub const BATCH: usize = 32;
/// Room in front of each frame to re-insert a VLAN tag the kernel stripped.
pub const HEADROOM: usize = 4;
/// Largest frame (a 64 KiB GSO super-frame plus its headers).
pub const MAX_FRAME: usize = 65_536 + 64;
/// Size of one slot.
pub const SLOT: usize = HEADROOM + VNET_HDR_LEN + MAX_FRAME;

/// A batch of received frames in buffers allocated once.
pub struct Batch {
    mem: Vec<u8>,
    /// Offset within each slot where the vnet header starts.
    start: [usize; BATCH],
    /// Length of vnet header + frame in each slot.
    len: [usize; BATCH],
    /// Frames the kernel cut short (larger than the slot).
    truncated: [bool; BATCH],
    /// Number of filled slots.
    count: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// Allocate a batch (`BATCH * SLOT` bytes, about 2 MiB).
    pub fn new() -> Batch {
        Batch {
            mem: vec![0; BATCH * SLOT],
            start: [HEADROOM; BATCH],
            len: [0; BATCH],
            truncated: [false; BATCH],
            count: 0,
        }
    }

    /// Number of frames in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empty the batch before a receive.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Keep only the first `n` frames.
    pub fn truncate(&mut self, n: usize) {
        self.count = self.count.min(n);
    }

    /// The receive area of slot `i` (after the headroom), for a port to fill.
    pub fn rx_area(&mut self, i: usize) -> &mut [u8] {
        &mut self.mem[i * SLOT + HEADROOM..(i + 1) * SLOT]
    }

    /// Move the first `len` received bytes of slot `from` to slot `to`.
    pub fn move_rx(&mut self, from: usize, to: usize, len: usize) {
        let s = from * SLOT + HEADROOM;
        self.mem.copy_within(s..s + len, to * SLOT + HEADROOM);
    }

    /// Record that slot `i` holds `len` bytes (vnet header + frame) from the headroom on.
    pub fn set_filled(&mut self, i: usize, len: usize, truncated: bool) {
        self.start[i] = HEADROOM;
        self.len[i] = len;
        self.truncated[i] = truncated;
        self.count = self.count.max(i + 1);
    }

    /// Whether the kernel cut frame `i` short, or it lacks a whole vnet header.
    pub fn is_truncated(&self, i: usize) -> bool {
        self.truncated[i] || self.len[i] < VNET_HDR_LEN
    }

    /// Vnet header and frame of slot `i`, as sent on the wire to a port.
    pub fn wire(&self, i: usize) -> &[u8] {
        let s = i * SLOT + self.start[i];
        &self.mem[s..s + self.len[i]]
    }

    /// The vnet header of slot `i`.
    pub fn vnet_mut(&mut self, i: usize) -> &mut [u8] {
        let s = i * SLOT + self.start[i];
        &mut self.mem[s..s + VNET_HDR_LEN]
    }

    /// The Ethernet frame of slot `i`.
    pub fn frame(&self, i: usize) -> &[u8] {
        self.wire(i).get(VNET_HDR_LEN..).unwrap_or(&[])
    }

    /// The Ethernet frame of slot `i`, mutable.
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        let s = i * SLOT + self.start[i];
        let e = s + self.len[i];
        self.mem.get_mut(s + VNET_HDR_LEN..e).unwrap_or(&mut [])
    }

    /// The vnet header and the Ethernet frame of slot `i`, both mutable.
    /// Only for slots holding at least a whole vnet header.
    pub fn parts_mut(&mut self, i: usize) -> (&mut [u8], &mut [u8]) {
        let s = i * SLOT + self.start[i];
        let e = s + self.len[i].max(VNET_HDR_LEN);
        self.mem[s..e].split_at_mut(VNET_HDR_LEN)
    }

    /// Append a frame to the batch: `build` writes the vnet header and frame
    /// into the slot and returns their length. `None` when the batch is full.
    pub fn push_with(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Option<usize> {
        if self.count >= BATCH {
            return None;
        }
        let i = self.count;
        let n = build(self.rx_area(i));
        if n < VNET_HDR_LEN {
            return None;
        }
        self.set_filled(i, n, false);
        Some(i)
    }

    /// Remove the outer VLAN tag of frame `i` in place (the frame starts 4 bytes
    /// later); fixes the offsets of a partial checksum and GSO header length.
    pub fn remove_vlan_tag(&mut self, i: usize) {
        if self.len[i] < VNET_HDR_LEN + 16 {
            return;
        }
        let s = i * SLOT + self.start[i];
        self.mem.copy_within(s..s + VNET_HDR_LEN + 12, s + 4);
        self.start[i] += 4;
        self.len[i] -= 4;
        let v = self.vnet_mut(i);
        let hdr_len = u16::from_le_bytes([v[2], v[3]]);
        if hdr_len >= 4 {
            v[2..4].copy_from_slice(&(hdr_len - 4).to_le_bytes());
        }
        if v[0] & crate::wire::VNET_F_NEEDS_CSUM != 0 {
            let cs = u16::from_le_bytes([v[6], v[7]]);
            v[6..8].copy_from_slice(&cs.saturating_sub(4).to_le_bytes());
        }
    }

    /// Whether frame `i` has room in front for one more 4-byte tag.
    pub fn has_headroom(&self, i: usize) -> bool {
        self.start[i] >= 4
    }

    /// Insert an 802.1Q tag (`tpid`, `tci`) after the MAC addresses of frame `i`,
    /// using the headroom; fixes `csum_start` of a partial checksum and the GSO
    /// header length. Returns false, leaving the slot unchanged, when there is
    /// no headroom, the frame is shorter than two MAC addresses, or an offset
    /// would pass 65,535 (a malformed vnet header).
    pub fn insert_vlan_tag(&mut self, i: usize, tpid: u16, tci: u16) -> bool {
        if self.start[i] < 4 || self.len[i] < VNET_HDR_LEN + 12 {
            return false;
        }
        let (csum_start, hdr_len) = {
            let v =
                crate::wire::VnetHdr::new_checked(self.wire(i)).expect("slot holds a vnet header");
            let cs = if v.flags() & crate::wire::VNET_F_NEEDS_CSUM != 0 {
                match v.csum_start().checked_add(4) {
                    Some(x) => Some(x),
                    None => return false,
                }
            } else {
                None
            };
            let hl = match v.hdr_len() {
                0 => None,
                x => match x.checked_add(4) {
                    Some(y) => Some(y),
                    None => return false,
                },
            };
            (cs, hl)
        };
        let s = i * SLOT + self.start[i];
        self.mem.copy_within(s..s + VNET_HDR_LEN + 12, s - 4);
        let t = s - 4 + VNET_HDR_LEN + 12;
        self.mem[t..t + 2].copy_from_slice(&tpid.to_be_bytes());
        self.mem[t + 2..t + 4].copy_from_slice(&tci.to_be_bytes());
        self.start[i] -= 4;
        self.len[i] += 4;
        let v = self.vnet_mut(i);
        if let Some(h) = hdr_len {
            v[2..4].copy_from_slice(&h.to_le_bytes());
        }
        if let Some(cs) = csum_start {
            v[6..8].copy_from_slice(&cs.to_le_bytes());
        }
        true
    }
}

/// Result of sending some frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Frames the port accepted.
    pub sent: usize,
    /// Their Ethernet bytes.
    pub bytes: u64,
    /// Frames it refused (queue full or similar).
    pub failed: usize,
}

/// Frame I/O of one port.
pub trait PortIo {
    /// Receive up to [`BATCH`] frames into `batch` (cleared first); 0 when none are waiting.
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize>;
    /// Send the frames of `batch` at the slot indices `idx`.
    fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome>;
    /// The fd to poll for readability.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Frames the kernel dropped on receive for this port since the last call
    /// (its queue or ring was full: the worker did not read in time). The
    /// worker adds them to the port's `kernel-rx-dropped` counter at its 1 s
    /// sweep and before answering `stats`. Default 0: a TAP queue has no such
    /// counter (the TAP device counts its own `tx_dropped`).
    fn take_kernel_rx_drops(&mut self) -> u64 {
        0
    }
    /// Send with the MAC table at hand (`fdb` at `now`): a tunnel port
    /// finds each destination's VTEP there. Default: [`PortIo::tx_batch`].
    fn tx_batch_via(
        &mut self,
        batch: &Batch,
        idx: &[u16],
        fdb: &crate::fdb::Fdb,
        now: u64,
    ) -> io::Result<TxOutcome> {
        let _ = (fdb, now);
        self.tx_batch(batch, idx)
    }
    /// Frames already received and waiting for the next [`PortIo::rx_batch`]
    /// (a tunnel taking a coalesced receive apart): the worker comes back
    /// without waiting for the fd.
    fn rx_pending(&self) -> bool {
        false
    }
    /// The remote VTEP frame `i` of the last received batch came from (tunnel ports).
    fn rx_vtep(&self, i: usize) -> Option<std::net::Ipv4Addr> {
        let _ = i;
        None
    }
    /// Drops the port counted itself since the last call, by reason (the
    /// worker adds them to the port's counters, as kernel drops).
    fn take_drops(&mut self, add: &mut dyn FnMut(crate::stats::DropReason, u64)) {
        let _ = add;
    }
    /// The tunnel behind this port, if it is one.
    fn tunnel(&mut self) -> Option<&mut crate::tunnel::VxlanPort> {
        None
    }
    /// The tunnel behind this port, if it is one (read only).
    fn tunnel_ref(&self) -> Option<&crate::tunnel::VxlanPort> {
        None
    }
}

/// Whether an I/O error means the device is gone rather than busy.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV)
            | Some(libc::ENXIO)
            | Some(libc::EBADFD)
            | Some(libc::EIO)
            | Some(libc::EBADF)
    )
}

/// A TAP queue opened with `IFF_VNET_HDR`: one read or write per frame.
pub struct TapPort {
    file: File,
}

impl TapPort {
    /// Attach to TAP `name` in the calling thread's namespace, with vnet headers
    /// and TSO/checksum offload accepted.
    pub fn open(name: &str) -> io::Result<TapPort> {
        use netns_setup::sys;
        let file = sys::tap_open(name, sys::IFF_VNET_HDR)?;
        sys::tap_set_vnet_hdr_size(&file, VNET_HDR_LEN as i32)?;
        sys::tap_set_offload(
            &file,
            sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6 | sys::TUN_F_TSO_ECN,
        )?;
        Ok(TapPort { file })
    }
}

impl PortIo for TapPort {
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        batch.clear();
        for i in 0..BATCH {
            match self.file.read(batch.rx_area(i)) {
                Ok(n) => batch.set_filled(i, n, n == SLOT - HEADROOM),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) => return Err(e),
            }
        }
        Ok(batch.len())
    }

    fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
        let mut o = TxOutcome::default();
        for &i in idx {
            let w = batch.wire(i as usize);
            match self.file.write(w) {
                Ok(_) => {
                    o.sent += 1;
                    o.bytes += (w.len() - VNET_HDR_LEN) as u64;
                }
                Err(e) if is_gone(&e) && e.raw_os_error() != Some(libc::EIO) => return Err(e),
                // EIO: the TAP is down; EAGAIN/EINVAL: refused frame. Counted, not fatal.
                Err(_) => o.failed += 1,
            }
        }
        Ok(o)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_tag_removal_in_place() {
        let mut b = Batch::new();
        let mut frame: Vec<u8> = vec![crate::wire::VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 38, 0, 16, 0];
        frame.extend((1..=12u8).chain([0x81, 0x00, 0x00, 0x0a]).chain(13..=30u8));
        b.rx_area(0)[..frame.len()].copy_from_slice(&frame);
        b.set_filled(0, frame.len(), false);
        b.remove_vlan_tag(0);
        let f = b.frame(0);
        assert_eq!(&f[..12], &(1..=12u8).collect::<Vec<_>>()[..]);
        assert_eq!(&f[12..], &(13..=30u8).collect::<Vec<_>>()[..]);
        assert_eq!(
            crate::wire::VnetHdr::new_checked(b.wire(0))
                .unwrap()
                .csum_start(),
            34
        );
        assert!(b.has_headroom(0));
    }

    #[test]
    fn vlan_tag_insertion_uses_headroom() {
        let mut b = Batch::new();
        let frame: Vec<u8> = (0..VNET_HDR_LEN as u8).map(|_| 0).chain(1..=20u8).collect();
        b.rx_area(0)[..frame.len()].copy_from_slice(&frame);
        b.set_filled(0, frame.len(), false);
        b.vnet_mut(0)[0] = crate::wire::VNET_F_NEEDS_CSUM;
        b.vnet_mut(0)[6] = 34;
        assert!(b.insert_vlan_tag(0, 0x8100, 0x200a));
        let f = b.frame(0);
        assert_eq!(&f[..12], &(1..=12u8).collect::<Vec<_>>()[..]);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x20, 0x0a]);
        assert_eq!(&f[16..], &(13..=20u8).collect::<Vec<_>>()[..]);
        let v = crate::wire::VnetHdr::new_checked(b.wire(0)).unwrap();
        assert_eq!(v.csum_start(), 38);
    }

    #[test]
    fn vlan_tag_insertion_refuses_offsets_that_would_overflow() {
        // Fuzz finding (issue 8): csum_start or hdr_len >= 65532 overflowed `cs + 4`.
        for (flags, hdr_len, csum_start) in [
            (crate::wire::VNET_F_NEEDS_CSUM, 0u16, 65_532u16),
            (crate::wire::VNET_F_NEEDS_CSUM, 0, u16::MAX),
            (0, 65_532, 0),
            (0, u16::MAX, 0),
        ] {
            let mut b = Batch::new();
            let mut frame = vec![flags, 0];
            frame.extend(hdr_len.to_le_bytes());
            frame.extend([0, 0]);
            frame.extend(csum_start.to_le_bytes());
            frame.extend([0, 0]);
            frame.extend(1..=20u8);
            b.rx_area(0)[..frame.len()].copy_from_slice(&frame);
            b.set_filled(0, frame.len(), false);
            assert!(!b.insert_vlan_tag(0, 0x8100, 10));
            assert_eq!(b.wire(0), &frame[..], "slot unchanged");
        }
        // hdr_len is shifted with the tag, like csum_start.
        let mut b = Batch::new();
        let mut frame = vec![0u8, 1, 54, 0, 0, 0, 0, 0, 0, 0];
        frame.extend(1..=20u8);
        b.rx_area(0)[..frame.len()].copy_from_slice(&frame);
        b.set_filled(0, frame.len(), false);
        assert!(b.insert_vlan_tag(0, 0x8100, 10));
        assert_eq!(
            crate::wire::VnetHdr::new_checked(b.wire(0))
                .unwrap()
                .hdr_len(),
            58
        );
        assert!(!b.insert_vlan_tag(0, 0x8100, 10), "no headroom left");
    }
}
