//! The example policies (switch/examples) run from their documented commands
//! and change traffic as they claim.

use e2e::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn fault_injector_drops_every_nth_frame() {
    if !require_root("fault_injector_drops_every_nth_frame") {
        return;
    }
    let id = uniq();
    let (toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth], "");
    let topo = TopoGuard::new(&toml);
    let mut cmd = Command::new(example("fault_injector"));
    cmd.arg(&topo.path).arg(&m[0].ns).arg("4");
    let sw = SwitchProc::spawn(&topo, cmd, switch::control::default_socket(&topo.topo.name));
    let loss = ping_loss(&m[0].ns, &m[1].ip, 40);
    assert!(
        (10.0..=45.0).contains(&loss),
        "every 4th frame dropped should lose about 25% of pings, lost {loss}%"
    );
    let st = sw.cli_json("stats");
    let (dropped, seen) = (
        st["policy"]["faults:dropped"].as_u64().unwrap(),
        st["policy"]["faults:seen"].as_u64().unwrap(),
    );
    assert_eq!(dropped, seen / 4, "{}", st["policy"]);
    assert!(dropped >= 10);
}

#[test]
fn flow_lb_spreads_connections_over_two_backends() {
    if !require_root("flow_lb_spreads_connections_over_two_backends") {
        return;
    }
    let id = uniq();
    let (toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth, Kind::Veth], "");
    let topo = TopoGuard::new(&toml);
    let vip = "192.168.15.100";
    let (client, a, b) = (&m[0], &m[1], &m[2]);
    let mut cmd = Command::new(example("flow_lb"));
    cmd.arg(&topo.path).arg(vip).arg(&a.ns).arg(&b.ns);
    let sw = SwitchProc::spawn(&topo, cmd, switch::control::default_socket(&topo.topo.name));
    // Backends own the VIP and share one MAC; the client reaches the VIP through
    // a static neighbour entry for that MAC.
    let vmac = "02:00:00:00:10:00";
    for be in [a, b] {
        for args in [
            vec!["ip", "link", "set", "dev", &be.ifname, "address", vmac],
            vec!["ip", "addr", "add", "192.168.15.100/32", "dev", &be.ifname],
        ] {
            let o = ns_exec(&be.ns, &args, Duration::from_secs(10));
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let o = ns_exec(
        &client.ns,
        &[
            "ip",
            "neigh",
            "replace",
            vip,
            "lladdr",
            vmac,
            "dev",
            &client.ifname,
            "nud",
            "permanent",
        ],
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let addr: SocketAddr = format!("{vip}:8080").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    let mut counts = Vec::new();
    for be in [a, b] {
        let l = in_ns(&be.ns, || TcpListener::bind(addr)).expect("bind the VIP in a backend");
        l.set_nonblocking(true).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let (n2, stop2) = (n.clone(), stop.clone());
        servers.push(std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((mut c, _)) = l.accept() {
                    use std::io::Write;
                    let _ = c.set_nonblocking(false);
                    let _ = c.write_all(b"hello from a backend\n");
                    n2.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }));
        counts.push(n);
    }
    let mut ok = 0;
    for _ in 0..24 {
        let got = in_ns(&client.ns, || -> std::io::Result<String> {
            use std::io::Read;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        });
        if got.is_ok_and(|b| b.contains("hello")) {
            ok += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    let (na, nb) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    assert_eq!(
        ok, 24,
        "every connection through the VIP completes (a: {na}, b: {nb})"
    );
    assert_eq!(na + nb, 24, "each connection reached exactly one backend");
    assert!(
        na >= 3 && nb >= 3,
        "connections spread over both backends: {na} / {nb}"
    );
    let st = sw.cli_json("stats");
    assert!(
        st["policy"]["lb:backend-a"].as_u64().unwrap() > 0
            && st["policy"]["lb:backend-b"].as_u64().unwrap() > 0,
        "{}",
        st["policy"]
    );
}

#[test]
fn vlan_tagger_pushes_and_pops_tags() {
    if !require_root("vlan_tagger_pushes_and_pops_tags") {
        return;
    }
    let id = uniq();
    let (toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth], "");
    let topo = TopoGuard::new(&toml);
    let mut cmd = Command::new(example("vlan_tagger"));
    cmd.arg(&topo.path).arg(&m[0].ns).arg("100").arg(&m[1].ns);
    let _sw = SwitchProc::spawn(&topo, cmd, switch::control::default_socket(&topo.topo.name));
    let mac = |h: &Member| mac_bytes_of(&h.ns, &h.ifname);
    let (rm, bm) = (mac(&m[0]), mac(&m[1]));
    let plain = [
        &[0xffu8; 6][..],
        &rm,
        &[0x88, 0xb5],
        b"TAGGER-1",
        &[0u8; 38],
    ]
    .concat();
    let mut red = packet_socket(&m[0].ns, &m[0].ifname);
    let mut blue = packet_socket(&m[1].ns, &m[1].ifname);
    assert_eq!(send_frames(&mut red, std::slice::from_ref(&plain)), 1);
    let got = recv_frames(&mut blue, Duration::from_millis(500));
    let pushed = [&plain[..12], &[0x81, 0x00, 0x00, 100][..], &plain[12..]].concat();
    assert!(
        got.contains(&pushed),
        "blue should get red's frame tagged with VLAN 100"
    );
    let tagged = [
        &[0xffu8; 6][..],
        &bm,
        &[0x81, 0x00, 0x00, 100],
        &[0x88, 0xb5],
        b"TAGGER-2",
        &[0u8; 38],
    ]
    .concat();
    assert_eq!(send_frames(&mut blue, std::slice::from_ref(&tagged)), 1);
    let got = recv_frames(&mut red, Duration::from_millis(500));
    let popped = [&tagged[..12], &tagged[16..]].concat();
    assert!(
        got.contains(&popped),
        "red should get blue's frame with the tag removed"
    );
}
