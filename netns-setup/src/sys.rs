//! TAP device ioctls: the only `unsafe` code of this crate.
//!
//! Contract: [`tap_open`] opens `/dev/net/tun` and attaches it to the TAP
//! device `name` (creating it if missing) in the calling thread's network
//! namespace. The returned `File` owns the queue fd (non-blocking, close-on-exec).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const TUNSETPERSIST: libc::Ioctl = 0x4004_54cb;
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;

/// `IFF_TAP`: Ethernet frames.
pub const IFF_TAP: i16 = 0x0002;
/// `IFF_NO_PI`: no packet-information prefix.
pub const IFF_NO_PI: i16 = 0x1000;
/// `IFF_VNET_HDR`: frames carry a `virtio_net_hdr`.
pub const IFF_VNET_HDR: i16 = 0x4000;
/// `TUN_F_CSUM`: we accept partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: we accept TCPv4 GSO frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: we accept TCPv6 GSO frames.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: we accept TSO frames with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;

fn ifreq(name: &str, flags: i16) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is a plain C struct (name array + union of integers/pointers)
    // for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    Ok(req)
}

/// Open a queue of TAP device `name` with `IFF_TAP | IFF_NO_PI | extra_flags`.
pub fn tap_open(name: &str, extra_flags: i16) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")))?;
    let mut req = ifreq(name, IFF_TAP | IFF_NO_PI | extra_flags)?;
    // SAFETY: the fd is open and owned by `file`; TUNSETIFF reads and writes a
    // `struct ifreq`, and `req` is a valid, exclusively borrowed ifreq.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut libc::ifreq) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    Ok(file)
}

fn ioctl_int(file: &File, req: libc::Ioctl, arg: libc::c_ulong, what: &str) -> io::Result<()> {
    // SAFETY: the fd is open and owned by `file`; these TUN ioctls take their
    // argument by value (an integer), so no memory is shared with the kernel.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req, arg) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Make the TAP device outlive its last queue fd (or not).
pub fn tap_set_persist(file: &File, persist: bool) -> io::Result<()> {
    ioctl_int(
        file,
        TUNSETPERSIST,
        persist as libc::c_ulong,
        "TUNSETPERSIST",
    )
}

/// Tell the kernel which offloads we accept in frames read from the TAP.
pub fn tap_set_offload(file: &File, flags: u32) -> io::Result<()> {
    ioctl_int(file, TUNSETOFFLOAD, flags as libc::c_ulong, "TUNSETOFFLOAD")
}

/// Set the `virtio_net_hdr` size (10 bytes for the plain header).
pub fn tap_set_vnet_hdr_size(file: &File, size: i32) -> io::Result<()> {
    let v: libc::c_int = size;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `v` lives on
    // the stack for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &v as *const libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Take ownership of descriptor `fd` handed down across `exec` by this
/// program's predecessor (`vswitch upgrade` keeps the topology lock that
/// way), if it is an open descriptor of a regular file; `None` otherwise.
/// The caller must check that the file is the one it expects (its inode).
pub fn inherited_file(fd: i32) -> Option<File> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return None;
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF
    // (no undefined behaviour) when `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process
    // for it to own (the environment variable naming it is set only by our
    // own `exec`, and read once); nothing else in this process uses it, so
    // the `File` is its only owner and closes it once.
    let f = unsafe { File::from_raw_fd(fd) };
    match f.metadata() {
        Ok(m) if m.is_file() => Some(f),
        _ => {
            // Not ours after all: give the descriptor back unclosed.
            let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
            None
        }
    }
}
