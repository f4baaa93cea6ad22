//! End to end: the `netns-setup` binary on real namespaces.

use e2e::*;
use std::process::Command;
use std::time::Duration;

fn netns_setup(args: &[&str], file: &std::path::Path) -> std::process::Output {
    run_timeout(
        Command::new(bin("netns-setup")).args(args).arg(file),
        Duration::from_secs(60),
    )
}

/// Links (name, index, flags, mac), addresses and routes of a namespace, as text.
fn snapshot(ns: &str) -> String {
    let f = netns_setup::setup::open_netns(ns).unwrap();
    let mut nl = netns_setup::setup::netlink_in(Some(&f)).unwrap();
    let mut links: Vec<String> = nl
        .links()
        .unwrap()
        .into_iter()
        .map(|l| {
            format!(
                "{} {} {:x} {} {}",
                l.name,
                l.index,
                l.flags & 0x1,
                l.mac,
                l.mtu
            )
        })
        .collect();
    links.sort();
    let mut addrs: Vec<String> = nl
        .addrs()
        .unwrap()
        .into_iter()
        .map(|a| format!("{} {}/{}", a.index, a.addr, a.prefix))
        .collect();
    addrs.sort();
    let mut routes: Vec<String> = nl
        .routes()
        .unwrap()
        .into_iter()
        .map(|r| format!("{}/{} {:?} {:?}", r.dst, r.dst_len, r.gateway, r.oif))
        .collect();
    routes.sort();
    format!("{links:?}\n{addrs:?}\n{routes:?}")
}

#[test]
fn pair_example_up_ping_down() {
    if !require_root("pair_example_up_ping_down") {
        return;
    }
    let id = uniq();
    let (red, blue) = (format!("p{id}r"), format!("p{id}b"));
    let text = include_str!("../../examples/pair.toml")
        .replace("\"red\"", &format!("\"{red}\""))
        .replace("\"blue\"", &format!("\"{blue}\""))
        .replace("name = \"pair\"", &format!("name = \"pair{id}\""));
    let topo = TopoGuard::new(&text);
    let o = netns_setup(&["up"], &topo.path);
    assert!(
        o.status.success(),
        "up: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        ip_netns_list().contains(&red),
        "ip netns list does not show {red}"
    );
    assert_eq!(ping_loss(&red, "192.168.15.2", 3), 0.0);
    assert_eq!(ping_loss(&blue, "192.168.15.1", 3), 0.0);
    // `ip netns exec` works and sees the pair end with its address.
    let o = ns_exec(
        &red,
        &["ip", "-o", "addr", "show", &format!("veth-{red}")],
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("192.168.15.1/24"));
    let show = netns_setup(&["show", "--json"], &topo.path);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("show --json");
    assert_eq!(v["links"].as_array().unwrap().len(), 2);

    let o = netns_setup(&["down"], &topo.path);
    assert!(
        o.status.success(),
        "down: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let left = ip_netns_list();
    assert!(
        !left.contains(&red) && !left.contains(&blue),
        "left behind: {left:?}"
    );
    let links = run_timeout(
        Command::new("ip").args(["-o", "link"]),
        Duration::from_secs(10),
    );
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&red) && !links.contains(&blue),
        "links left in the root namespace: {links}"
    );
    assert!(
        !std::path::Path::new(netns_setup::setup::OWNER_DIR)
            .join(&red)
            .exists()
    );
}

#[test]
fn up_twice_is_a_no_op() {
    if !require_root("up_twice_is_a_no_op") {
        return;
    }
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Tap], "");
    let topo = TopoGuard::new(&toml);
    let o = netns_setup(&["up"], &topo.path);
    assert!(
        o.status.success(),
        "up: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let before: Vec<String> = [&m[0].ns, &m[1].ns, &sw_ns]
        .iter()
        .map(|n| snapshot(n))
        .collect();
    let o = netns_setup(&["up"], &topo.path);
    assert!(
        o.status.success(),
        "second up: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing changed"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let after: Vec<String> = [&m[0].ns, &m[1].ns, &sw_ns]
        .iter()
        .map(|n| snapshot(n))
        .collect();
    assert_eq!(before, after);
    // `show --json`: objects with named fields; the TAP endpoint is a `tap`, not `tun`.
    let show = netns_setup(&["show", "--json"], &topo.path);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("show --json");
    for ns in [&m[0].ns, &m[1].ns, &sw_ns] {
        let n = v["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == ns.as_str())
            .unwrap_or_else(|| panic!("{ns} not in {v}"));
        assert_eq!(n["exists"], true, "{n}");
        assert_eq!(n["owner"], topo.topo.name.as_str(), "{n}");
    }
    let kind_of = |ifname: &str| {
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["link"]["name"] == ifname)
            .unwrap_or_else(|| panic!("{ifname} not in {v}"))["link"]["kind"]
            .clone()
    };
    assert_eq!(kind_of(&m[1].ifname), "tap");
    assert_eq!(kind_of(&m[0].ifname), "veth");
    let text = String::from_utf8_lossy(&netns_setup(&["show"], &topo.path).stdout).into_owned();
    let tap_row = text
        .lines()
        .find(|l| l.contains(&m[1].ifname))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(tap_row.split_whitespace().any(|w| w == "tap"), "{text}");
    assert!(!text.split_whitespace().any(|w| w == "tun"), "{text}");
    // The switch-side end carries no address and the kernel sends nothing on it.
    let sw_links = links_in(&sw_ns);
    let br = sw_links
        .iter()
        .find(|l| l.name == m[0].port)
        .expect("switch side");
    assert!(snapshot(&sw_ns).contains(&br.name));
    let f = netns_setup::setup::open_netns(&sw_ns).unwrap();
    let addrs = netns_setup::setup::netlink_in(Some(&f))
        .unwrap()
        .addrs()
        .unwrap();
    assert!(
        addrs.iter().all(|a| a.index != br.index),
        "switch side has an address"
    );
    std::thread::sleep(Duration::from_secs(2));
    let o = ns_exec(
        &sw_ns,
        &[
            "cat",
            &format!("/sys/class/net/{}/statistics/tx_packets", br.name),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "the kernel sent frames on the switch side"
    );
}

#[test]
fn clashing_namespace_fails_without_half_built_topology() {
    if !require_root("clashing_namespace_fails_without_half_built_topology") {
        return;
    }
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Veth], "");
    let topo = TopoGuard::new(&toml);
    // Someone else's namespace with the name of our second one.
    struct Foreign(String);
    impl Drop for Foreign {
        fn drop(&mut self) {
            let _ = netns_setup::netns::delete(&self.0);
        }
    }
    netns_setup::netns::create(&m[1].ns).unwrap();
    let _foreign = Foreign(m[1].ns.clone());
    let o = netns_setup(&["up"], &topo.path);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already exists") && err.contains(&m[1].ns),
        "{err}"
    );
    let left = ip_netns_list();
    assert!(
        !left.contains(&m[0].ns) && !left.contains(&sw_ns),
        "half-built topology left: {left:?}"
    );
    // `down` leaves the foreign namespace alone.
    let o = netns_setup(&["down"], &topo.path);
    assert!(o.status.success());
    assert!(ip_netns_list().contains(&m[1].ns));
}

#[test]
fn bad_topologies_name_the_key_and_exit_2() {
    // Needs no root: validation happens before anything touches the system.
    let cases = invalid_fixtures();
    assert!(cases.len() >= 10, "fixtures missing: {cases:?}");
    for (path, key) in &cases {
        for b in ["netns-setup", "vswitch"] {
            let args: &[&str] = if b == "vswitch" { &["run"] } else { &["up"] };
            let o = run_timeout(
                Command::new(bin(b)).args(args).arg(path),
                Duration::from_secs(20),
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{b} {}: {err}", path.display());
            assert!(
                err.contains(key.as_str()),
                "{b}: {err:?} does not name {key}"
            );
        }
    }
}
