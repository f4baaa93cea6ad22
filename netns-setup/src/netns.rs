//! Named network namespaces, made exactly as `ip netns add` makes them.
//!
//! Contract: a namespace `NAME` is a bind mount of a namespace file onto
//! `/run/netns/NAME`, with `/run/netns` a shared mount, so `ip netns list` and
//! `ip netns exec` see it. The calling thread never changes namespace: work in
//! another namespace runs on a short-lived thread ([`in_netns`]).

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether the named namespace exists (its file is a mounted namespace).
pub fn exists(name: &str) -> bool {
    open(name).is_ok()
}

/// Open the named namespace, failing unless it really is a network namespace.
pub fn open(name: &str) -> io::Result<File> {
    let f = File::open(path(name))?;
    // A leftover plain file (not a bind mount) is not a namespace: setns tells.
    // NS_GET_NSTYPE would need an ioctl; comparing the st_dev of nsfs is enough.
    let meta = f.metadata()?;
    let own = std::fs::metadata("/proc/self/ns/net")?;
    use std::os::unix::fs::MetadataExt;
    if meta.dev() != own.dev() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a mounted namespace", path(name).display()),
        ));
    }
    Ok(f)
}

fn make_run_dir_shared() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    let mut bound = false;
    loop {
        match mount(
            Some(""),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if !bound => {
                // Not a mount point yet: bind it onto itself, as iproute2 does.
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
                bound = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Create the named namespace `name`; fails with `AlreadyExists` if it exists.
pub fn create(name: &str) -> io::Result<()> {
    make_run_dir_shared()?;
    let p = path(name);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&p)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if exists(name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("namespace {name} already exists"),
                ));
            }
            // A stale file from an interrupted `ip netns add`/crash: reuse it.
        }
        Err(e) => return Err(e),
    }
    let target = p.clone();
    let res = std::thread::scope(|s| {
        s.spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&p);
    }
    res
}

/// Delete the named namespace. Devices in it go away with it once no process holds it.
pub fn delete(name: &str) -> io::Result<()> {
    let p = path(name);
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Run `f` on a thread inside namespace `ns` (or the caller's namespace for `None`).
pub fn in_netns<T: Send>(ns: Option<&File>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    match ns {
        None => Ok(f()),
        Some(file) => std::thread::scope(|s| {
            s.spawn(move || -> io::Result<T> {
                setns(file, CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread in namespace panicked")))
        }),
    }
}
