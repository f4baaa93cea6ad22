//! Table operations over the control socket with real traffic:
//! `vswitch conntrack -D/-F` (entries and their NAT mappings go) and
//! `vswitch fdb add/del/flush` (static entries steer frames and do not move).

use e2e::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

fn entries(v: &Value) -> Vec<Value> {
    v["entries"].as_array().cloned().unwrap_or_default()
}

#[test]
fn conntrack_delete_and_flush_release_entries_and_mappings() {
    if !require_root("conntrack_delete_and_flush_release_entries_and_mappings") {
        return;
    }
    let t = nat_topo("", "");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(ping_loss(&t.red.ns, WAN_HOST, 1), 0.0);
    // UDP: red:5555 -> wan:7000 and red:5556 -> wan:7001, answered by wan.
    let srv = in_ns(&t.wan.ns, || UdpSocket::bind(format!("{WAN_HOST}:7000"))).unwrap();
    let srv2 = in_ns(&t.wan.ns, || UdpSocket::bind(format!("{WAN_HOST}:7001"))).unwrap();
    let c1 = in_ns(&t.red.ns, || UdpSocket::bind("0.0.0.0:5555")).unwrap();
    let c2 = in_ns(&t.red.ns, || UdpSocket::bind("0.0.0.0:5556")).unwrap();
    for s in [&srv, &srv2, &c1, &c2] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let mut buf = [0u8; 64];
    c1.send_to(b"one", format!("{WAN_HOST}:7000")).unwrap();
    c2.send_to(b"two", format!("{WAN_HOST}:7001")).unwrap();
    let (_, from1) = srv.recv_from(&mut buf).expect("wan gets red's datagram");
    let (_, from2) = srv2
        .recv_from(&mut buf)
        .expect("wan gets red's 2nd datagram");
    assert_eq!(from1.ip().to_string(), EXT);
    srv.send_to(b"back", from1).unwrap();
    c1.recv_from(&mut buf)
        .expect("the answer comes back through the mapping");
    // TCP: an established connection red -> wan:8000 (echoed by wan).
    let l = in_ns(&t.wan.ns, || TcpListener::bind(format!("{WAN_HOST}:8000"))).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 16];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 || s.write_all(&b[..n]).is_err() {
                break;
            }
        }
    });
    let addr: SocketAddr = format!("{WAN_HOST}:8000").parse().unwrap();
    let mut tcp = in_ns(&t.red.ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .expect("connect through the NAT");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echoed = |tcp: &mut TcpStream| {
        tcp.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        tcp.read_exact(&mut b)
            .map(|_| b == *b"ping")
            .unwrap_or(false)
    };
    assert!(echoed(&mut tcp));

    // -D --dport 7000: only that entry goes; its mapping with it.
    let v = sw.cli_json_with("conntrack", &["-D", "--dport", "7000"]);
    assert_eq!(v["deleted"], 1, "{v}");
    let left = sw.cli_json("conntrack");
    let ports: Vec<u64> = entries(&left)
        .iter()
        .filter(|e| e["proto"] == "udp")
        .map(|e| e["original"]["dport"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![7001], "{left}");
    assert!(
        entries(&left)
            .iter()
            .any(|e| e["proto"] == "tcp" && e["state"] == "ESTABLISHED"),
        "{left}"
    );
    // The old mapping is gone: wan's datagram to 203.0.113.1:5555 reaches nobody.
    let before = sw.cli_json("stats")["nat"]["drops"]["nat-no-mapping"]
        .as_u64()
        .unwrap();
    srv.send_to(b"late", from1).unwrap();
    assert!(
        c1.recv_from(&mut buf).is_err(),
        "deleted mapping still admits"
    );
    let after = sw.cli_json("stats")["nat"]["drops"]["nat-no-mapping"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1);
    // ... while the other UDP flow still gets its answers.
    srv2.send_to(b"back", from2).unwrap();
    c2.recv_from(&mut buf)
        .expect("the kept mapping still admits");

    // -F: everything goes; the established TCP connection's next segment is
    // picked up as a new entry (its counters start again), the stream goes on.
    let created = sw.cli_json("stats")["nat"]["created"].as_u64().unwrap();
    let v = sw.cli_json_with("conntrack", &["-F"]);
    assert!(v["deleted"].as_u64().unwrap() >= 3, "{v}");
    let st = sw.cli_json("stats");
    assert_eq!(st["nat"]["entries"], 0, "{st}");
    assert_eq!(st["nat"]["mappings"], 0, "{st}");
    assert!(echoed(&mut tcp), "the TCP stream survives a flush");
    let ct = sw.cli_json_with("conntrack", &["-p", "tcp", "--dport", "8000"]);
    let e = entries(&ct);
    assert_eq!(e.len(), 1, "{ct}");
    assert!(
        e[0]["packets"][0].as_u64().unwrap() <= 3,
        "a new entry: {ct}"
    );
    assert!(sw.cli_json("stats")["nat"]["created"].as_u64().unwrap() > created);
    // A filter that matches nothing deletes nothing; text output says how many.
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .args(["conntrack", "-D", "--dport", "1", "--socket"])
            .arg(&sw.socket),
        Duration::from_secs(10),
    );
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0 flow entries have been deleted"), "{err}");
    drop(tcp);
    let _ = echo.join();
}

/// An Ethernet frame of the local experimental EtherType.
fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(src);
    f.extend([0x88, 0xb5]);
    f.extend(b"vswitch fdb test");
    f.resize(60, 0);
    f
}

fn has(frames: &[Vec<u8>], f: &[u8]) -> bool {
    frames
        .iter()
        .any(|x| x.starts_with(&f[..14]) && x[14..30] == f[14..30])
}

#[test]
fn static_fdb_entries_steer_frames_and_do_not_move() {
    if !require_root("static_fdb_entries_steer_frames_and_do_not_move") {
        return;
    }
    let id = uniq();
    let (toml, m, _) = star(&id, &[Kind::Veth; 3], "");
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue, green) = (&m[0], &m[1], &m[2]);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0);
    const X: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x42];
    let red_mac = mac_bytes(&mac_of(&red.ns, &red.ifname));
    let mut rp = packet_socket(&red.ns, &red.ifname);
    let mut bp = packet_socket(&blue.ns, &blue.ifname);
    let mut gp = packet_socket(&green.ns, &green.ifname);

    sw.cli_json_with("fdb", &["add", "02:ee:00:00:00:42", "dev", &green.ns]);
    let fdb = sw.cli_json("fdb");
    let e = entries(&fdb)
        .into_iter()
        .find(|e| e["mac"] == "02:ee:00:00:00:42")
        .expect("static entry listed");
    assert_eq!(
        (e["port"].as_str(), e["static"].as_bool()),
        (Some(green.port.as_str()), Some(true)),
        "{fdb}"
    );
    assert!(
        sw.cli_text("fdb")
            .lines()
            .any(|l| l.contains("02:ee:00:00:00:42") && l.contains("static"))
    );
    // A frame to X goes to green only (no flood).
    let f = frame(X, red_mac);
    let _ = recv_frames(&mut gp, Duration::from_millis(100));
    let _ = recv_frames(&mut bp, Duration::from_millis(1));
    assert_eq!(send_frames(&mut rp, std::slice::from_ref(&f)), 1);
    assert!(
        has(&recv_frames(&mut gp, Duration::from_millis(300)), &f),
        "green gets it"
    );
    assert!(
        !has(&recv_frames(&mut bp, Duration::from_millis(50)), &f),
        "blue does not"
    );
    // Blue sends with X as its source: the static entry does not move.
    let spoof = frame([0xff; 6], X);
    assert_eq!(send_frames(&mut bp, &[spoof]), 1);
    std::thread::sleep(Duration::from_millis(200));
    let fdb = sw.cli_json("fdb");
    let e = entries(&fdb)
        .into_iter()
        .find(|e| e["mac"] == "02:ee:00:00:00:42")
        .unwrap();
    assert_eq!(e["port"].as_str(), Some(green.port.as_str()), "{fdb}");
    assert!(
        fdb["counters"]["static_moves_refused"].as_u64().unwrap() >= 1,
        "{fdb}"
    );
    // The text summary shows the same counter (the entry cannot move any more).
    let text = sw.cli_text("fdb");
    let n = fdb["counters"]["static_moves_refused"].as_u64().unwrap();
    assert!(
        text.contains(&format!("static-moves-refused {n}")),
        "{text}"
    );
    assert_eq!(send_frames(&mut rp, std::slice::from_ref(&f)), 1);
    assert!(
        has(&recv_frames(&mut gp, Duration::from_millis(300)), &f),
        "still to green"
    );
    assert!(!has(&recv_frames(&mut bp, Duration::from_millis(50)), &f));

    // flush: the learned entries go, the static one stays.
    assert!(entries(&sw.cli_json("fdb")).len() >= 3);
    let flushed_at = std::time::Instant::now();
    let v = sw.cli_json_with("fdb", &["flush"]);
    assert!(v["flushed"].as_u64().unwrap() >= 2, "{v}");
    let left = entries(&sw.cli_json("fdb"));
    // The static entry stays; a learned entry may only be one that a frame
    // sent after the flush made again (the namespaces' kernels send IPv6
    // neighbour and multicast frames of their own at any time).
    let since = flushed_at.elapsed().as_millis() as u64;
    let stat: Vec<_> = left.iter().filter(|e| e["static"] == true).collect();
    assert_eq!(stat.len(), 1, "{left:?}");
    assert!(
        left.iter()
            .filter(|e| e["static"] == false)
            .all(|e| e["age_ms"].as_u64().unwrap() <= since),
        "learned entries older than the flush ({since} ms ago): {left:?}"
    );
    // del: the frame to X floods again (blue gets it too).
    sw.cli_json_with("fdb", &["del", "02:ee:00:00:00:42"]);
    assert_eq!(send_frames(&mut rp, std::slice::from_ref(&f)), 1);
    assert!(
        has(&recv_frames(&mut bp, Duration::from_millis(300)), &f),
        "flooded after del"
    );
    // Usage errors exit 2 before asking the switch; refusals by the switch exit 1.
    let fdb = |args: &[&str]| {
        run_timeout(
            Command::new(bin("vswitch"))
                .arg("fdb")
                .args(args)
                .arg("--socket")
                .arg(&sw.socket),
            Duration::from_secs(10),
        )
    };
    for bad in [
        &["add", "zz:00", "dev", "x"][..],
        &["add", "02:ee:00:00:00:42"],
        &["del"],
        &["frobnicate"],
        &["add", "02:ee:00:00:00:42", "dev", "x", "vlan", "5000"],
    ] {
        let o = fdb(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
    }
    let o = fdb(&["add", "02:ee:00:00:00:42", "dev", "nosuchport"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no port"),
        "{o:?}"
    );
    let o = fdb(&["del", "02:ee:00:00:00:42"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}
