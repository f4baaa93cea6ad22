//! One owner per topology: the lock `vswitch run` holds for its whole life.
//!
//! Contract: the lock of topology `NAME` is an exclusive `flock` on
//! `/run/vswitch/NAME.lock`, whatever control socket the switch uses. The
//! file holds the owner's [`Owner`] record as JSON (PID, socket, topology
//! file, start time), written right after the lock is taken. The kernel
//! releases the lock when the process ends, however it ends (`kill -9`
//! too), so a stale file never blocks a new owner. A clean release removes
//! the file while still holding the lock; [`TopologyLock::acquire_in`]
//! re-checks that the file it locked is still the one at the path, so a
//! lock on a removed file is never mistaken for ownership.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Directory of the lock files (shared with the switch's control sockets).
pub const LOCK_DIR: &str = "/run/vswitch";

/// Who holds a topology's lock: what `vswitch list` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Topology name.
    pub topology: String,
    /// PID of the owning process (0 if its record could not be read).
    pub pid: u32,
    /// Its control socket.
    pub socket: PathBuf,
    /// The topology file it runs (None: the built-in seed).
    pub file: Option<PathBuf>,
    /// When it took the lock, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

impl Owner {
    /// A record for this process, started now.
    pub fn this_process(topology: &str, socket: &Path, file: Option<&Path>) -> Owner {
        Owner {
            topology: topology.to_string(),
            pid: std::process::id(),
            socket: socket.to_path_buf(),
            file: file.map(Path::to_path_buf),
            started_unix_ms: now_unix_ms(),
        }
    }

    /// Milliseconds since it started (0 if the clock went back).
    pub fn uptime_ms(&self) -> u64 {
        now_unix_ms().saturating_sub(self.started_unix_ms)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pid == 0 {
            write!(f, "a process whose record is unreadable")?;
        } else {
            write!(f, "vswitch PID {}", self.pid)?;
        }
        write!(f, " (socket {}", self.socket.display())?;
        if let Some(file) = &self.file {
            write!(f, ", file {}", file.display())?;
        }
        write!(f, ")")
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("topology {name:?} is already served by {0}", name = .0.topology)]
    Held(Owner),
    /// The lock file could not be opened, locked or written.
    #[error("lock {path}: {err}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        err: io::Error,
    },
}

/// Path of topology `name`'s lock file in `dir`.
pub fn lock_path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

/// Environment variable naming the descriptor of a lock handed down across
/// `exec` ([`TopologyLock::keep_across_exec`]).
pub const INHERIT_ENV: &str = "VSWITCH_LOCK_FD";

/// The lock on `path` handed down across exec, if the environment names a
/// descriptor of that very file (same device and inode) that this process
/// can lock (it already holds the lock through it); close-on-exec again.
fn inherited(path: &Path) -> Option<Flock<File>> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let fd: i32 = std::env::var(INHERIT_ENV).ok()?.parse().ok()?;
    let file = crate::sys::inherited_file(fd)?;
    let (a, b) = (file.metadata().ok()?, std::fs::metadata(path).ok()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return None;
    }
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    fcntl(&*lock, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
    Some(lock)
}

/// Replace the owner record in the held lock file.
fn write_owner(lock: &mut Flock<File>, owner: &Owner) -> io::Result<()> {
    let json = serde_json::to_vec(owner).expect("serializable");
    lock.set_len(0)?;
    lock.rewind()?;
    lock.write_all(&json)
}

/// An exclusive lock on a topology, released (and its file removed) on drop.
#[derive(Debug)]
pub struct TopologyLock {
    _lock: Flock<File>,
    path: PathBuf,
    inherited: bool,
}

impl TopologyLock {
    /// Take topology `owner.topology`'s lock in [`LOCK_DIR`] and record `owner` in it.
    pub fn acquire(owner: &Owner) -> Result<TopologyLock, LockError> {
        Self::acquire_in(Path::new(LOCK_DIR), owner)
    }

    /// Like [`TopologyLock::acquire`], in `dir` (created if missing).
    pub fn acquire_in(dir: &Path, owner: &Owner) -> Result<TopologyLock, LockError> {
        let path = lock_path_in(dir, &owner.topology);
        let io_err = |err| LockError::Io {
            path: path.clone(),
            err,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        // Handed down by `vswitch upgrade` across exec: the lock is already ours.
        if let Some(mut lock) = inherited(&path) {
            write_owner(&mut lock, owner).map_err(io_err)?;
            return Ok(TopologyLock {
                _lock: lock,
                path,
                inherited: true,
            });
        }
        // A reader (`list`, `netns-setup down`) holds a shared lock for an
        // instant: retry briefly before calling the lock taken.
        let mut tries = 0;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(io_err)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // Locked a file that a clean release just removed? Take the new one.
                    let ours = lock.metadata().map_err(io_err)?.ino();
                    match std::fs::metadata(&path) {
                        Ok(m) if m.ino() == ours => {}
                        _ => continue,
                    }
                    write_owner(&mut lock, owner).map_err(io_err)?;
                    return Ok(TopologyLock {
                        _lock: lock,
                        path,
                        inherited: false,
                    });
                }
                Err((file, Errno::EWOULDBLOCK)) => {
                    tries += 1;
                    if tries >= 5 {
                        return Err(LockError::Held(read_owner(file, &owner.topology)));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, e)) => return Err(io_err(e.into())),
            }
        }
    }

    /// Keep the lock held across the next `exec` (`vswitch upgrade`): the
    /// descriptor stops being close-on-exec; returns the variable and value
    /// to put in the new program's environment, so that its
    /// [`TopologyLock::acquire`] takes the lock over instead of finding it
    /// taken (no moment without an owner).
    pub fn keep_across_exec(&self) -> io::Result<(&'static str, String)> {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        use std::os::fd::AsRawFd;
        fcntl(&*self._lock, FcntlArg::F_SETFD(FdFlag::empty()))?;
        Ok((INHERIT_ENV, self._lock.as_raw_fd().to_string()))
    }

    /// Whether the lock was handed down across exec by the previous binary.
    pub fn inherited(&self) -> bool {
        self.inherited
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TopologyLock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the fd afterwards.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The owner record in a held lock file; a writer may be between taking the
/// lock and writing it, so an empty or partial record is read again briefly.
fn read_owner(mut file: File, topology: &str) -> Owner {
    for _ in 0..20 {
        let mut s = String::new();
        if file.rewind().is_ok()
            && file.read_to_string(&mut s).is_ok()
            && let Ok(o) = serde_json::from_str::<Owner>(&s)
        {
            return o;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Owner {
        topology: topology.to_string(),
        pid: 0,
        socket: PathBuf::new(),
        file: None,
        started_unix_ms: 0,
    }
}

/// Who holds topology `name`'s lock in [`LOCK_DIR`], if anyone.
pub fn holder(name: &str) -> io::Result<Option<Owner>> {
    holder_in(Path::new(LOCK_DIR), name)
}

/// Like [`holder`], in `dir`.
pub fn holder_in(dir: &Path, name: &str) -> io::Result<Option<Owner>> {
    holder_at(&lock_path_in(dir, name), name)
}

fn holder_at(path: &Path, name: &str) -> io::Result<Option<Owner>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => Ok(None), // nobody holds it (a stale file); released at once
        Err((file, Errno::EWOULDBLOCK)) => Ok(Some(read_owner(file, name))),
        Err((_, e)) => Err(e.into()),
    }
}

/// Every topology whose lock is held in [`LOCK_DIR`], sorted by name.
pub fn running() -> io::Result<Vec<Owner>> {
    running_in(Path::new(LOCK_DIR))
}

/// Like [`running`], in `dir` (a missing directory means none).
pub fn running_in(dir: &Path) -> io::Result<Vec<Owner>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e?.path();
        let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
        else {
            continue;
        };
        if let Some(o) = holder_at(&p, name)? {
            out.push(o);
        }
    }
    out.sort_by(|a, b| a.topology.cmp(&b.topology));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(test: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("netns-setup-lock-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn second_owner_is_refused_with_the_first_named_and_release_frees_it() {
        let d = dir("second");
        let a = Owner::this_process("lab", Path::new("/tmp/a.sock"), Some(Path::new("/x.toml")));
        let l = TopologyLock::acquire_in(&d, &a).expect("first");
        let b = Owner::this_process("lab", Path::new("/tmp/b.sock"), None);
        // flock locks belong to the open file description: a second open conflicts even in-process.
        match TopologyLock::acquire_in(&d, &b) {
            Err(LockError::Held(o)) => assert_eq!(o, a),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(holder_in(&d, "lab").unwrap(), Some(a.clone()));
        assert_eq!(running_in(&d).unwrap(), vec![a.clone()]);
        let msg = LockError::Held(a.clone()).to_string();
        assert!(msg.contains(&format!("PID {}", a.pid)), "{msg}");
        assert!(msg.contains("/tmp/a.sock"), "{msg}");
        drop(l);
        assert!(!lock_path_in(&d, "lab").exists());
        assert_eq!(holder_in(&d, "lab").unwrap(), None);
        let l2 = TopologyLock::acquire_in(&d, &b).expect("free again");
        assert_eq!(holder_in(&d, "lab").unwrap(), Some(b));
        drop(l2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_stale_file_is_not_an_owner() {
        let d = dir("stale");
        let p = lock_path_in(&d, "old");
        std::fs::write(&p, b"{\"garbage\"").unwrap();
        assert_eq!(holder_in(&d, "old").unwrap(), None);
        assert!(running_in(&d).unwrap().is_empty());
        let o = Owner::this_process("old", Path::new("/s"), None);
        let l = TopologyLock::acquire_in(&d, &o).expect("stale file taken over");
        assert_eq!(holder_in(&d, "old").unwrap(), Some(o));
        drop(l);
        let _ = std::fs::remove_dir_all(&d);
    }
}
