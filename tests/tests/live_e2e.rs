//! Live operation of a running switch (issue 9): ports follow the kernel's
//! links, `vswitch reload` applies the whole topology, `vswitch port add|del`
//! plugs in a namespace made with plain `ip`. Real namespaces, as root.

use e2e::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `ip ARGS`, asserting success.
fn ip(args: &[&str]) {
    let o = run_timeout(Command::new("ip").args(args), Duration::from_secs(10));
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A namespace made with plain `ip netns add`, deleted on drop (with its links).
struct PlainNs(String);

impl Drop for PlainNs {
    fn drop(&mut self) {
        let _ = run_timeout(
            Command::new("ip").args(["netns", "del", &self.0]),
            Duration::from_secs(10),
        );
    }
}

fn port<'a>(stats: &'a Value, name: &str) -> Option<&'a Value> {
    stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
}

/// Poll `vswitch stats` (every 20 ms, at most `limit`) until port `name`
/// is in `state`; the time it took.
fn wait_state(sw: &SwitchProc, name: &str, state: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let st = switch::control::query(&sw.socket, "stats").expect("stats");
        if port(&st, name).is_some_and(|p| p["state"] == state) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `vswitch ARGS --socket S`: exit code, stdout, stderr.
fn vswitch(sw: &SwitchProc, args: &[&str]) -> (i32, String, String) {
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .args(args)
            .arg("--socket")
            .arg(&sw.socket),
        Duration::from_secs(30),
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A TCP stream of `len` pattern bytes from `from` to `to_ip:port` in `to_ns`,
/// written in 64 KiB chunks with `pause` between them (a stream that lasts),
/// sha256-checked at the receiver. Join the handle to get the check.
fn slow_stream(
    from: &str,
    to_ns: &str,
    to_ip: &str,
    port: u16,
    len: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let seed = 0x11fe_0000 + u64::from(port);
    let expected = sha256_of(|w| write_pattern(w, seed, len).unwrap());
    let addr: std::net::SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
    let listener = in_ns(to_ns, || std::net::TcpListener::bind(addr)).expect("listen");
    let from = from.to_string();
    std::thread::spawn(move || {
        let receiver = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = 0usize;
            let sum = sha256_of(|w| {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = c.read(&mut buf).expect("receive (30 s timeout)");
                    if n == 0 {
                        break;
                    }
                    got += n;
                    w.write_all(&buf[..n]).unwrap();
                }
            });
            (got, sum)
        });
        let mut s = in_ns(&from, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        })
        .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut data = Vec::with_capacity(len);
        write_pattern(&mut data, seed, len).unwrap();
        for chunk in data.chunks(1 << 16) {
            s.write_all(chunk).expect("send");
            std::thread::sleep(pause);
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, sum) = receiver.join().expect("receiver");
        assert_eq!(got, len, "bytes received");
        assert_eq!(sum, expected, "sha256 differs");
    })
}

#[test]
fn deleted_link_is_gone_at_once_and_back_without_restart() {
    if !require_root("deleted_link_is_gone_at_once_and_back_without_restart") {
        return;
    }
    let nt = nat_topo("", "");
    let sw = SwitchProc::start(&nt.topo);
    let pid = sw.pid();
    let (red, blue) = (&nt.red, &nt.blue);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 3), 0.0);
    assert_eq!(ping_loss(&blue.ns, WAN_HOST, 2), 0.0);
    let nat_before = sw.cli_json("stats")["nat"]["entries"].as_u64().unwrap();
    assert!(nat_before >= 1);

    // The endpoint's veth goes away: its switch-side peer with it.
    ip(&["-n", &red.ns, "link", "del", &red.ifname]);
    let gone = wait_state(&sw, &red.port, "gone", Duration::from_secs(1));
    assert!(
        gone.is_some(),
        "port not gone within 1 s: {}",
        sw.log_text()
    );
    eprintln!("gone after {:?}", gone.unwrap());

    // Re-created by `netns-setup up` while the switch runs.
    let o = run_timeout(
        Command::new(bin("netns-setup"))
            .arg("up")
            .arg(&nt.topo.path),
        Duration::from_secs(30),
    );
    assert!(
        o.status.success(),
        "netns-setup up: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let back = wait_state(&sw, &red.port, "up", Duration::from_secs(1));
    assert!(
        back.is_some(),
        "port not back within 1 s: {}",
        sw.log_text()
    );
    eprintln!("back {:?} after netns-setup up returned", back.unwrap());

    // Forwarding resumes through the switch, the gateway and the NAT.
    let loss = ping_loss(&red.ns, &blue.ip, 3);
    assert_eq!(
        loss,
        0.0,
        "red -> blue: {} {:?} {}",
        sw.log_text(),
        links_in(&nt.sw_ns),
        sw.cli_json("stats")["ports"]
    );
    assert_eq!(ping_loss(&red.ns, GW, 3), 0.0, "red -> gateway");
    assert_eq!(ping_loss(&red.ns, WAN_HOST, 3), 0.0, "red -> wan via NAT");
    assert_eq!(sw.pid(), pid, "no restart");
    let st = sw.cli_json("stats");
    assert!(
        st["nat"]["entries"].as_u64().unwrap() >= nat_before,
        "NAT table kept: {}",
        st["nat"]
    );
    let log = sw.log_text();
    assert!(log.contains("is gone") && log.contains("is back"), "{log}");
}

#[test]
fn reload_applies_namespaces_and_dnat_keeps_streams_and_refuses_the_rest() {
    if !require_root("reload_applies_namespaces_and_dnat_keeps_streams_and_refuses_the_rest") {
        return;
    }
    let nt = nat_topo("", "");
    let base = std::fs::read_to_string(&nt.topo.path).unwrap();
    let sw = SwitchProc::start(&nt.topo);
    let (red, blue, wan) = (&nt.red, &nt.blue, &nt.wan);
    // red's names are vs{id}n0 / e{id}n0 / b{id}n0: the new namespace follows them.
    let id = red
        .ns
        .strip_prefix("vs")
        .and_then(|s| s.strip_suffix("n0"))
        .unwrap()
        .to_string();
    let green = format!("vs{id}n2");
    let green_ip = "192.168.15.3";
    let pcap = std::env::temp_dir().join(format!("vswitch-e2e-live-{id}.pcap"));
    let added = format!(
        "{base}\n[[namespace]]\nname = \"{green}\"\naddress = \"{green_ip}/24\"\ngateway = \"{GW}\"\nifname = \"e{id}n2\"\nswitch_ifname = \"b{id}n2\"\n\n[[dnat]]\nprotocol = \"tcp\"\nport = 8080\nto = \"{green_ip}:8080\"\n\n[[mirror]]\nfrom = \"{green}\"\npcap = \"{}\"\n",
        pcap.display()
    );

    // A stream through the NAT that lasts across the reloads (~6 s).
    let stream = slow_stream(
        &red.ns,
        &wan.ns,
        WAN_HOST,
        5301,
        24 << 20,
        Duration::from_millis(15),
    );
    std::thread::sleep(Duration::from_millis(500));

    std::fs::write(&nt.topo.path, &added).unwrap();
    let (code, out, err) = vswitch(&sw, &["reload"]);
    assert_eq!(code, 0, "reload: {out} {err}");
    assert!(out.contains(&format!("namespace {green} added")), "{out}");
    assert!(
        out.contains("dnat added: tcp 8080 -> 192.168.15.3:8080"),
        "{out}"
    );
    assert!(out.contains("pcap mirror of"), "{out}");
    let st = sw.cli_json("stats");
    assert_eq!(port(&st, &format!("b{id}n2")).unwrap()["state"], "up");

    // The new namespace reaches the others, the gateway and the outside.
    assert_eq!(ping_loss(&green, &red.ip, 3), 0.0, "green -> red");
    assert_eq!(ping_loss(&green, &blue.ip, 3), 0.0, "green -> blue");
    assert_eq!(ping_loss(&red.ns, green_ip, 3), 0.0, "red -> green");
    assert_eq!(ping_loss(&green, WAN_HOST, 3), 0.0, "green -> wan via NAT");
    // The pcap mirror added by the reload records green's frames (header 24
    // bytes, then at least the 12 echo requests and replies above).
    let pcap_len = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
    assert!(pcap_len > 24 + 12 * 98, "pcap mirror: {pcap_len} bytes");

    // The new DNAT rule works from wan.
    let srv = in_ns(&green, || {
        std::net::TcpListener::bind(format!("{green_ip}:8080"))
    })
    .expect("listen in green");
    let acceptor = std::thread::spawn(move || {
        let (mut c, peer) = srv.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        (peer, b)
    });
    let mut c = in_ns(&wan.ns, || {
        std::net::TcpStream::connect_timeout(
            &format!("{EXT}:8080").parse().unwrap(),
            Duration::from_secs(5),
        )
    })
    .expect("connect to the new DNAT port from wan");
    c.write_all(b"hello").unwrap();
    let (peer, b) = acceptor.join().unwrap();
    assert_eq!(&b, b"hello");
    assert_eq!(
        peer.ip().to_string(),
        WAN_HOST,
        "green sees the real client"
    );

    // A change that cannot be made live is refused, named, and nothing changes.
    let reloads = sw.cli_json("stats")["reloads"].clone();
    let bad = added.replace(
        &format!("address = \"{GW}/24\""),
        "address = \"192.168.15.6/24\"",
    );
    assert_ne!(bad, added);
    let bad = format!(
        "{bad}\n[[namespace]]\nname = \"vs{id}n3\"\naddress = \"192.168.15.4/24\"\nifname = \"e{id}n3\"\nswitch_ifname = \"b{id}n3\"\n"
    );
    std::fs::write(&nt.topo.path, &bad).unwrap();
    let (code, out, err) = vswitch(&sw, &["reload"]);
    assert_eq!(code, 2, "refused: {out} {err}");
    assert!(err.contains("[gateway]"), "{err}");
    let st = sw.cli_json("stats");
    assert_eq!(st["reloads"], reloads, "nothing applied");
    assert!(port(&st, &format!("b{id}n3")).is_none());
    assert!(
        !ip_netns_list().contains(&format!("vs{id}n3")),
        "nothing created"
    );
    assert_eq!(ping_loss(&green, GW, 2), 0.0);

    stream
        .join()
        .expect("the stream across the reloads (sha256 checked)");

    // Back to the first file: green is detached and its namespace removed.
    std::fs::write(&nt.topo.path, &base).unwrap();
    let (code, out, err) = vswitch(&sw, &["reload", "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let changes: Vec<String> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(
        changes.contains(&format!("namespace {green} removed")),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c.starts_with("dnat removed")),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c.starts_with("pcap mirror to")),
        "{changes:?}"
    );
    let _ = std::fs::remove_file(&pcap);
    assert!(!ip_netns_list().contains(&green), "namespace removed");
    let st = sw.cli_json("stats");
    assert!(port(&st, &format!("b{id}n2")).is_none());
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0);
}

#[test]
fn port_add_plugs_in_a_plain_namespace_and_port_del_unplugs_it() {
    if !require_root("port_add_plugs_in_a_plain_namespace_and_port_del_unplugs_it") {
        return;
    }
    let nt = nat_topo("", "");
    let sw = SwitchProc::start(&nt.topo);
    let id = uniq();
    let c = PlainNs(format!("vsc{id}"));
    let (outer, inner) = (format!("pa{id}"), format!("pb{id}"));
    // What a container runtime does: a namespace, a veth pair with one end
    // in it (address, default route) and the other where the switch's ports live.
    ip(&["netns", "add", &c.0]);
    ip(&[
        "-n", &nt.sw_ns, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns",
        &c.0,
    ]);
    ip(&["-n", &c.0, "addr", "add", "192.168.15.4/24", "dev", &inner]);
    ip(&["-n", &c.0, "link", "set", "lo", "up"]);
    ip(&["-n", &c.0, "link", "set", &inner, "up"]);
    ip(&["-n", &c.0, "route", "add", "default", "via", GW]);
    ip(&["-n", &nt.sw_ns, "link", "set", &outer, "up"]);

    let (code, out, err) = vswitch(&sw, &["port", "add", &outer, "--netns", &c.0]);
    assert_eq!(code, 0, "port add: {out} {err}");
    let st = sw.cli_json("stats");
    let p = port(&st, &outer).expect("port listed");
    assert_eq!(
        (p["netns"].as_str(), p["state"].as_str()),
        (Some(c.0.as_str()), Some("up"))
    );
    assert_eq!(
        ping_loss(&c.0, GW, 3),
        0.0,
        "the plugged namespace pings the gateway"
    );
    assert_eq!(ping_loss(&c.0, &nt.red.ip, 3), 0.0, "and red");
    assert_eq!(ping_loss(&c.0, WAN_HOST, 3), 0.0, "and wan through the NAT");

    // Twice is refused; a topology port cannot be unplugged this way.
    assert_eq!(vswitch(&sw, &["port", "add", &outer]).0, 2);
    let (code, _, err) = vswitch(&sw, &["port", "del", &nt.red.ns]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("topology file"), "{err}");

    let (code, out, err) = vswitch(&sw, &["port", "del", &c.0]);
    assert_eq!(code, 0, "port del: {out} {err}");
    assert!(port(&sw.cli_json("stats"), &outer).is_none());
    assert_eq!(ping_loss(&c.0, GW, 2), 100.0, "unplugged");
    assert!(
        links_in(&nt.sw_ns).iter().any(|l| l.name == outer),
        "the link is the runtime's: left alone"
    );
    // Plugged in again, it reuses the freed slot and works again.
    assert_eq!(vswitch(&sw, &["port", "add", &outer, "--netns", &c.0]).0, 0);
    assert_eq!(ping_loss(&c.0, GW, 3), 0.0);
    assert_eq!(ping_loss(&nt.red.ns, &nt.blue.ip, 2), 0.0);
}
