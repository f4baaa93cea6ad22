//! End to end: the switch's state survives a restart. A paced TCP stream
//! through the NAT (red → wan, sha256-checked, over 20 s) and a DNAT'd
//! connection (wan → blue, used both ways before and after) survive
//! `SIGTERM` of `vswitch run --keep` followed by a new `vswitch run`, and a
//! `kill -9` followed by a new run (from the last periodic save); `vswitch
//! upgrade` re-executes in place at the same PID with the connections kept;
//! a corrupt state file is refused with a message and the switch starts
//! empty and works; the ACL's tracked connections survive too.

use e2e::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A state file path for this test, removed on drop.
struct StateFile(PathBuf);

impl StateFile {
    fn new(t: &NatTopo) -> StateFile {
        StateFile(std::env::temp_dir().join(format!("vswitch-e2e-{}.state", t.topo.topo.name)))
    }
    fn args(&self) -> Vec<String> {
        vec![
            "--keep".into(),
            "--state-file".into(),
            self.0.display().to_string(),
            "--save-interval".into(),
            "1".into(),
        ]
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start(t: &NatTopo, st: &StateFile) -> SwitchProc {
    let args = st.args();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    SwitchProc::start_with(&t.topo, &a)
}

/// Save every second through the topology's `[switch] state_save_interval`
/// instead of `--save-interval`.
fn start_keyed(t: &NatTopo, st: &StateFile) -> SwitchProc {
    let toml = std::fs::read_to_string(&t.topo.path).unwrap();
    if !toml.contains("state_save_interval") {
        let toml = toml.replacen("[switch]\n", "[switch]\nstate_save_interval = 1\n", 1);
        assert!(toml.contains("state_save_interval"), "{toml}");
        std::fs::write(&t.topo.path, toml).unwrap();
    }
    let args = st.args();
    let a: Vec<&str> = args[..args.len() - 2].iter().map(String::as_str).collect();
    SwitchProc::start_with(&t.topo, &a)
}

fn listen(ns: &str, addr: &str) -> TcpListener {
    let a: SocketAddr = addr.parse().unwrap();
    let l = in_ns(ns, || TcpListener::bind(a)).expect("listen in namespace");
    l.set_nonblocking(true).unwrap();
    l
}

fn accept(l: &TcpListener) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match l.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                return c;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection within 20 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Connect from `ns` to `to`, from source port `sport` if given.
fn connect(ns: &str, to: &str, sport: Option<u16>) -> TcpStream {
    let to: SocketAddr = to.parse().unwrap();
    let s = in_ns(ns, || -> std::io::Result<TcpStream> {
        match sport {
            None => TcpStream::connect_timeout(&to, Duration::from_secs(10)),
            Some(p) => {
                // std has no bind-before-connect.
                use nix::sys::socket::{
                    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt,
                    socket, sockopt,
                };
                let SocketAddr::V4(t4) = to else {
                    unreachable!("IPv4 only")
                };
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &SockaddrIn::from(std::net::SocketAddrV4::new(
                        std::net::Ipv4Addr::UNSPECIFIED,
                        p,
                    )),
                )?;
                connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(t4))?;
                Ok(TcpStream::from(fd))
            }
        }
    })
    .expect("connect from namespace");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// The paced stream: `chunks` of `chunk` bytes, one every `every`, from red
/// (source port `sport`) to wan's port 5001. Returns (client, receiver) threads.
struct Stream {
    client: JoinHandle<()>,
    receiver: JoinHandle<(usize, String)>,
    expected: String,
    len: usize,
}

fn paced_stream(t: &NatTopo, sport: u16, chunk: usize, chunks: usize, every: Duration) -> Stream {
    let len = chunk * chunks;
    let seed = 0x07e5_7a77;
    let mut data = Vec::with_capacity(len);
    write_pattern(&mut data, seed, len).unwrap();
    let expected = sha256_of(|w| w.write_all(&data).unwrap());
    let l = listen(&t.wan.ns, &format!("{WAN_HOST}:5001"));
    let receiver = std::thread::spawn(move || {
        let mut c = accept(&l);
        let mut got = 0usize;
        let sum = sha256_of(|w| {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = c.read(&mut buf).expect("receive (60 s timeout)");
                if n == 0 {
                    break;
                }
                got += n;
                w.write_all(&buf[..n]).unwrap();
            }
        });
        (got, sum)
    });
    let mut s = connect(&t.red.ns, &format!("{WAN_HOST}:5001"), Some(sport));
    let client = std::thread::spawn(move || {
        let t0 = Instant::now();
        for (i, c) in data.chunks(chunk).enumerate() {
            let at = t0 + every * i as u32;
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            s.write_all(c).expect("send (60 s timeout)");
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    Stream {
        client,
        receiver,
        expected,
        len,
    }
}

impl Stream {
    fn check(self) {
        let t0 = Instant::now();
        self.client.join().expect("stream client");
        let (got, sum) = self.receiver.join().expect("stream receiver");
        eprintln!(
            "stream: {got} bytes, finished {:?} after the client",
            t0.elapsed()
        );
        assert_eq!(got, self.len, "stream length");
        assert_eq!(sum, self.expected, "stream sha256 differs");
    }
}

/// An open DNAT'd connection: wan connects to 203.0.113.1:80, blue (the
/// DNAT target) answers each line with it upper-cased.
struct Dnat {
    client: BufReader<TcpStream>,
    server: JoinHandle<()>,
}

fn dnat_conn(t: &NatTopo) -> Dnat {
    let l = listen(&t.blue.ns, &format!("{}:80", t.blue.ip));
    let server = std::thread::spawn(move || {
        let c = accept(&l);
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut w = c;
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if w.write_all(line.to_uppercase().as_bytes()).is_err() {
                return;
            }
            line.clear();
        }
    });
    let c = connect(&t.wan.ns, &format!("{EXT}:80"), None);
    Dnat {
        client: BufReader::new(c),
        server,
    }
}

impl Dnat {
    /// A line there and its answer back (bounded by the 60 s socket timeouts).
    fn exchange(&mut self, msg: &str) {
        let t0 = Instant::now();
        self.client
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .expect("write on the DNAT'd connection");
        let mut back = String::new();
        self.client
            .read_line(&mut back)
            .expect("read on the DNAT'd connection");
        assert_eq!(
            back.trim_end(),
            msg.to_uppercase(),
            "answer on the DNAT'd connection"
        );
        eprintln!("dnat: {msg:?} answered in {:?}", t0.elapsed());
    }
    fn close(self) {
        drop(self.client);
        self.server.join().unwrap();
    }
}

/// Blue holds TCP source port `p` towards wan, so red's stream from the same
/// port gets another external port: after a restart without the saved
/// state, a mid-stream pickup would preserve `p` and wan would see another
/// peer (the test would fail).
fn hold_port(t: &NatTopo, p: u16) -> (TcpStream, TcpStream) {
    let l = listen(&t.wan.ns, &format!("{WAN_HOST}:5002"));
    let c = connect(&t.blue.ns, &format!("{WAN_HOST}:5002"), Some(p));
    (c, accept(&l))
}

fn stream_entry(sw: &SwitchProc, sport: u16) -> Value {
    let ct = sw.cli_json("conntrack");
    ct["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["original"]["src"] == "192.168.15.1"
                && e["original"]["sport"] == sport
                && e["original"]["dport"] == 5001
        })
        .cloned()
        .unwrap_or_else(|| panic!("no conntrack entry for the stream: {ct}"))
}

/// Run the stream and the DNAT'd connection across one restart done by `restart`.
fn survive(test: &str, keyed: bool, restart: impl FnOnce(&mut SwitchProc)) {
    if !require_root(test) {
        return;
    }
    let t = nat_topo("", "");
    let st = StateFile::new(&t);
    let start = if keyed { start_keyed } else { start };
    let mut sw = start(&t, &st);
    const SPORT: u16 = 40123;
    let _held = hold_port(&t, SPORT);
    // 24 s: 32 KiB every 40 ms (800 KB/s).
    let stream = paced_stream(&t, SPORT, 32 * 1024, 600, Duration::from_millis(40));
    let mut dnat = dnat_conn(&t);
    dnat.exchange("before the restart");
    std::thread::sleep(Duration::from_secs(3));
    let before = stream_entry(&sw, SPORT);
    assert_ne!(
        before["reply"]["dport"], SPORT,
        "precondition: the stream's external port is not its own port: {before}"
    );
    assert_eq!(before["assured"], true, "{before}");
    restart(&mut sw);
    let mut sw = start(&t, &st);
    let log = sw.log_text();
    assert!(log.contains("state restored from"), "{log}");
    let after = stream_entry(&sw, SPORT);
    assert_eq!(after["reply"], before["reply"], "the same translation");
    assert_eq!(after["assured"], true, "{after}");
    dnat.exchange("after the restart");
    dnat.exchange("and once more");
    stream.check();
    dnat.close();
    assert!(sw.stop(), "clean exit");
}

#[test]
fn connections_survive_sigterm_and_a_new_run() {
    survive("connections_survive_sigterm_and_a_new_run", false, |sw| {
        assert!(sw.stop(), "SIGTERM: clean exit");
        let log = sw.log_text();
        assert!(log.contains("state saved to"), "{log}");
    });
}

#[test]
fn connections_survive_kill9_from_the_last_periodic_save() {
    survive(
        "connections_survive_kill9_from_the_last_periodic_save",
        true,
        |sw| {
            // Past at least one save (every second, set by the topology's
            // `state_save_interval`) since the connections were set up.
            std::thread::sleep(Duration::from_millis(1500));
            sw.kill9();
        },
    );
}

#[test]
fn upgrade_reexecutes_in_place_and_keeps_connections() {
    if !require_root("upgrade_reexecutes_in_place_and_keeps_connections") {
        return;
    }
    let t = nat_topo("", "");
    let st = StateFile::new(&t);
    let sw = start(&t, &st);
    let pid = sw.pid();
    let mut dnat = dnat_conn(&t);
    dnat.exchange("before the upgrade");
    // The topology has an owner at every moment of the upgrade: the lock is
    // handed down across exec (else another `vswitch run` could take it).
    let name = t.topo.topo.name.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut polls, mut free) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                polls += 1;
                if !matches!(netns_setup::lock::holder(&name), Ok(Some(_))) {
                    free += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (polls, free)
        })
    };
    let o = run_timeout(
        std::process::Command::new(bin("vswitch"))
            .args(["upgrade", "--socket"])
            .arg(&sw.socket),
        Duration::from_secs(40),
    );
    // Until the new binary answers (its lock is taken before its socket).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::process::Command::new(bin("vswitch"))
        .args(["stats", "--socket"])
        .arg(&sw.socket)
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no answer after the upgrade");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (polls, free) = watcher.join().unwrap();
    eprintln!("lock polled {polls} times during the upgrade, free {free} times");
    assert!(polls > 10, "{polls} polls");
    assert_eq!(
        free, 0,
        "the topology was without an owner during the upgrade"
    );
    assert!(
        sw.log_text()
            .contains("lock taken over from the previous binary"),
        "{}",
        sw.log_text()
    );
    assert!(
        o.status.success(),
        "vswitch upgrade: {}{}",
        String::from_utf8_lossy(&o.stderr),
        sw.log_text()
    );
    let stats = sw.cli_json("stats");
    assert_eq!(stats["pid"], pid, "the same process: {stats}");
    assert!(
        sw.log_text().contains("state restored from"),
        "{}",
        sw.log_text()
    );
    dnat.exchange("after the upgrade");
    dnat.close();
    // A binary that does not exist is refused before anything changes.
    let o = run_timeout(
        std::process::Command::new(bin("vswitch"))
            .args(["upgrade", "--binary", "/nonexistent/vswitch", "--socket"])
            .arg(&sw.socket),
        Duration::from_secs(20),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(sw.cli_json("stats")["pid"], pid);
}

#[test]
fn a_corrupt_state_file_is_refused_and_the_switch_starts_empty() {
    if !require_root("a_corrupt_state_file_is_refused_and_the_switch_starts_empty") {
        return;
    }
    let t = nat_topo("", "");
    let st = StateFile::new(&t);
    let mut sw = start(&t, &st);
    assert_eq!(ping_loss(&t.red.ns, WAN_HOST, 2), 0.0);
    let before = sw.cli_json("stats");
    assert_eq!(before["gateway"]["neighbours_lan"], 1, "{before}");
    assert_eq!(before["nat"]["entries"], 1, "{before}");
    assert!(sw.stop());
    let mut b = std::fs::read(&st.0).expect("state saved on SIGTERM");
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&st.0, &b).unwrap();
    let sw = start(&t, &st);
    let log = sw.log_text();
    assert!(
        log.contains("refused: corrupt (checksum mismatch); starting with empty tables"),
        "{log}"
    );
    let stats = sw.cli_json("stats");
    // (The FDB may already have learned a frame of the hosts' own IPv6 chatter.)
    assert_eq!(stats["gateway"]["neighbours_lan"], 0, "{stats}");
    assert_eq!(stats["nat"]["entries"], 0, "{stats}");
    assert_eq!(
        ping_loss(&t.red.ns, WAN_HOST, 3),
        0.0,
        "works after refusing"
    );
    assert!(
        !sw.cli_json("conntrack")["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A run that removes the topology on exit removes the state file too.
    drop(sw);
    assert!(st.0.exists(), "saved again on SIGTERM with --keep");
    let path = st.0.display().to_string();
    let mut sw = SwitchProc::start_with(&t.topo, &["--state-file", &path]);
    assert!(sw.stop());
    assert!(!st.0.exists(), "state file left behind: {}", sw.log_text());
}

/// The ACL's connection table for `state` rules survives a restart too:
/// blue may only answer (its new IPv4 flows are dropped); after the restart
/// blue speaks first on a connection red opened before it, which passes only
/// if the switch still knows the connection.
#[test]
fn acl_tracked_connections_survive_a_restart() {
    if !require_root("acl_tracked_connections_survive_a_restart") {
        return;
    }
    let t = nat_topo("", "");
    let acl = format!(
        "[[acl]]\nname = \"blue-answers\"\nin_port = \"{b}\"\nstate = \"established\"\naction = \"allow\"\n[[acl]]\nname = \"blue-opens-nothing\"\nin_port = \"{b}\"\nethertype = \"ipv4\"\naction = \"drop\"\n",
        b = t.blue.ns
    );
    // Appended to the test's own topology file before the switch reads it.
    let toml = std::fs::read_to_string(&t.topo.path).unwrap() + &acl;
    std::fs::write(&t.topo.path, toml).unwrap();
    let st = StateFile::new(&t);
    let sw = start(&t, &st);
    // Blue cannot open anything.
    assert_eq!(ping_loss(&t.blue.ns, &t.red.ip, 1), 100.0, "the ACL is on");
    let l = listen(&t.blue.ns, &format!("{}:7000", t.blue.ip));
    let (to_blue, rx) = std::sync::mpsc::channel::<String>();
    let server = std::thread::spawn(move || {
        let c = accept(&l);
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut w = c;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        w.write_all(line.to_uppercase().as_bytes()).unwrap();
        // After the restart: blue speaks first.
        let msg = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        w.write_all(msg.as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        w.write_all(line.to_uppercase().as_bytes()).unwrap();
    });
    let c = connect(&t.red.ns, &format!("{}:7000", t.blue.ip), None);
    let mut c = BufReader::new(c);
    let mut line = String::new();
    c.get_mut().write_all(b"before\n").unwrap();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, "BEFORE\n");
    let mut sw = sw;
    assert!(sw.stop());
    let sw2 = start(&t, &st);
    let log = sw2.log_text();
    assert!(log.contains("ACL-tracked connections"), "{log}");
    to_blue.send("blue first\n".into()).unwrap();
    line.clear();
    c.read_line(&mut line)
        .expect("blue's first words after the restart (60 s timeout)");
    assert_eq!(line, "blue first\n");
    c.get_mut().write_all(b"after\n").unwrap();
    line.clear();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, "AFTER\n");
    server.join().unwrap();
}
