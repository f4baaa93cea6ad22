//! A port without a socket: frames are queued in memory, sends are counted.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use switch::port::{BATCH, Batch, HEADROOM, PortIo, SLOT, TxOutcome};
use switch::stats::PortStats;
use switch::worker::Port;

/// Frames waiting to be received (vnet header + frame each).
pub type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// Frames sent, with the port they left by (vnet header + frame each).
pub type Sent = Rc<RefCell<Vec<(usize, Vec<u8>)>>>;

/// An in-memory port.
pub struct FakePort {
    rx: Queue,
    /// Where sent frames are recorded, if anywhere, and this port's id.
    sent: Option<(Sent, usize)>,
    /// A descriptor that never becomes readable (for `fd()`).
    fd: io::PipeReader,
    _w: io::PipeWriter,
}

impl FakePort {
    /// A port receiving from `rx`.
    pub fn new(rx: Queue) -> io::Result<FakePort> {
        let (fd, w) = io::pipe()?;
        Ok(FakePort {
            rx,
            sent: None,
            fd,
            _w: w,
        })
    }
}

impl PortIo for FakePort {
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        batch.clear();
        let mut q = self.rx.borrow_mut();
        for i in 0..BATCH {
            let Some(f) = q.pop_front() else { break };
            let area = batch.rx_area(i);
            let n = f.len().min(area.len());
            area[..n].copy_from_slice(&f[..n]);
            batch.set_filled(i, n, f.len() >= SLOT - HEADROOM);
        }
        Ok(batch.len())
    }

    fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
        let mut o = TxOutcome::default();
        for &k in idx {
            if let Some((s, p)) = &self.sent {
                s.borrow_mut()
                    .push((*p, batch.wire(usize::from(k)).to_vec()));
            }
            o.sent += 1;
            o.bytes += batch.frame(usize::from(k)).len() as u64;
        }
        Ok(o)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A worker port named `name` over an in-memory queue.
pub fn port(name: &str, netns: &str, lan: bool, rx: Queue) -> Port {
    recording_port(name, netns, lan, rx, None)
}

/// A worker port that also records what it sends into `sent` as port `id`.
pub fn recording_port(
    name: &str,
    netns: &str,
    lan: bool,
    rx: Queue,
    sent: Option<(Sent, usize)>,
) -> Port {
    let mut io = FakePort::new(rx).expect("pipe");
    io.sent = sent;
    Port {
        name: name.to_string(),
        netns: netns.to_string(),
        kind: if lan { "veth" } else { "uplink" },
        io: Box::new(io),
        up: true,
        lan,
        isolated: false,
        stats: PortStats::default(),
    }
}
