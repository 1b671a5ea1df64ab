//! Self-test of the network-namespace harness in `netns/mod.rs`: namespaces
//! come and go by name, a two-host LAN carries IP traffic and raw frames
//! byte for byte, and names never collide. Needs root; skips otherwise.
#![cfg(target_os = "linux")]

#[path = "netns/mod.rs"]
mod netns;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use netns::*;
use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const MAC_A: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
const MAC_B: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x03];

fn listed(name: &str) -> bool {
    netns_list().iter().any(|n| n == name)
}

#[test]
fn namespace_is_created_and_gone_after_drop() {
    if skip_unless_root("namespace_is_created_and_gone_after_drop") {
        return;
    }
    let ns = Netns::new("life");
    let name = ns.name().to_string();
    assert!(
        name.starts_with(&format!("rr-life-{}-", std::process::id())),
        "{name}"
    );
    assert!(listed(&name), "{name} not in ip netns list");

    // Code run inside sees only the namespace's own loopback, up.
    let ifaces = ns.run(pnet_datalink::interfaces);
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["lo"]);
    assert!(ifaces[0].is_up());

    // sysctl writes land in this namespace and nowhere else.
    ns.sysctl("net.ipv4.ip_forward", "1");
    let out = ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    drop(ns);
    assert!(!listed(&name), "{name} still listed after drop");

    // Also when the test panics while holding it.
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let ns = Netns::new("panic");
        tx.send(ns.name().to_string()).unwrap();
        panic!("on purpose");
    });
    assert!(result.is_err());
    let name = rx.recv().unwrap();
    assert!(!listed(&name), "{name} left behind by a panic");
}

fn udp_round(a: &Netns, b: &Netns, listen: &str, msg: &'static [u8]) {
    let addr: SocketAddr = listen.parse().unwrap();
    let server = b.run(move || UdpSocket::bind(addr).expect("bind in B"));
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    a.run(move || {
        let client = UdpSocket::bind(any).expect("bind in A");
        client.send_to(msg, addr).expect("send from A");
    });
    let mut buf = [0u8; 64];
    let (n, from) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("nothing from A at {addr}: {e}"));
    assert_eq!(&buf[..n], msg);
    assert_eq!(from.is_ipv4(), addr.is_ipv4());
}

fn udp_to_port(frame: &[u8], port: u16) -> bool {
    matches!(
        SlicedPacket::from_ethernet(frame),
        Ok(p) if matches!(&p.transport, Some(TransportSlice::Udp(u)) if u.destination_port() == port)
    )
}

fn is_icmpv4(frame: &[u8]) -> bool {
    matches!(
        SlicedPacket::from_ethernet(frame),
        Ok(p) if matches!(p.transport, Some(TransportSlice::Icmpv4(_)))
    )
}

#[test]
fn lan_hosts_talk_and_raw_frames_arrive_intact() {
    if skip_unless_root("lan_hosts_talk_and_raw_frames_arrive_intact") {
        return;
    }
    let a = Netns::new("host-a");
    let b = Netns::new("host-b");
    let mut lan = Lan::new("lan");
    lan.attach(&a, "eth0", MAC_A, &["10.77.0.2/24", "fd77::2/64"]);
    lan.attach(&b, "eth0", MAC_B, &["10.77.0.3/24", "fd77::3/64"]);

    if have_program("ethtool") {
        for port in lan.ports() {
            let out = lan.switch.exec(&["ethtool", "-k", port]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.lines()
                    .any(|l| l.starts_with("generic-receive-offload: on")),
                "GRO is off on {port}: {text}"
            );
        }
    }
    if have_program("ping") {
        let out = a.exec(&["ping", "-c1", "-W1", "10.77.0.3"]);
        assert!(
            out.status.success(),
            "ping: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    udp_round(&a, &b, "10.77.0.3:7001", b"hello over v4");
    udp_round(&a, &b, "[fd77::3]:7001", b"hello over v6");

    let mut port_a = RawPort::open(&a, "eth0");
    let mut port_b = RawPort::open(&b, "eth0");
    assert_eq!(port_a.mac(), MAC_A);
    assert_eq!(port_b.mac(), MAC_B);

    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 77, 0, 2], [10, 77, 0, 3], 64)
        .udp(40000, 7009)
        .write(&mut frame, b"raw frame through the bridge")
        .unwrap();
    port_a.send(&frame);

    let got = port_b.recv_matching(1, Duration::from_secs(2), |f| udp_to_port(f, 7009));
    assert_eq!(got, [frame.clone()], "B got something else");
    // No one listens on 7009 in B, so B's kernel answers with an ICMP error.
    // A receives that, but never its own frame back. (One call for both:
    // recv_matching discards what its filter rejects.)
    let at_a = port_a.recv_matching(2, Duration::from_millis(500), |f| {
        udp_to_port(f, 7009) || is_icmpv4(f)
    });
    assert_eq!(at_a.len(), 1, "A saw its own frame or no ICMP: {at_a:?}");
    assert!(is_icmpv4(&at_a[0]));
    assert_eq!(at_a[0][6..12], MAC_B);
    // B's port ignores the ICMP error, which is outgoing there.
    let own = port_b.recv_matching(1, Duration::from_millis(300), is_icmpv4);
    assert!(
        own.is_empty(),
        "B's port reported B's outgoing ICMP: {own:?}"
    );
}

#[test]
fn names_are_unique_across_lans() {
    if skip_unless_root("names_are_unique_across_lans") {
        return;
    }
    let pid = std::process::id().to_string();
    let hosts: Vec<Netns> = (0..4).map(|_| Netns::new("uniq")).collect();
    let mut lans = [Lan::new("uniq"), Lan::new("uniq")];
    for (i, h) in hosts.iter().enumerate() {
        let mac = [0x02, 0x77, 1, 0, 0, i as u8 + 2];
        let addr = format!("10.77.1.{}/24", i + 2);
        lans[i % 2].attach(h, "eth0", mac, &[&addr]);
    }

    let mut ns_names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
    ns_names.extend(lans.iter().map(|l| l.switch.name().to_string()));
    let mut links: Vec<String> = Vec::new();
    for l in &lans {
        links.push(l.bridge().to_string());
        links.extend(l.ports().iter().cloned());
    }
    assert_eq!(links.len(), 6);

    let all: Vec<&String> = ns_names.iter().chain(&links).collect();
    let distinct: HashSet<&&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "duplicate names: {all:?}");
    for n in &all {
        assert!(n.contains(&pid), "{n} lacks the pid");
    }
    for l in &links {
        assert!(l.len() <= IFNAME_MAX, "{l} too long");
    }
    let list = netns_list();
    for n in &ns_names {
        assert!(list.contains(n), "{n} not listed");
    }
    // Each port sits in its own switch, enslaved to that switch's bridge.
    for l in &lans {
        for p in l.ports() {
            let out = l.switch.exec(&["ip", "-o", "link", "show", p]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("master {}", l.bridge())), "{text}");
        }
    }

    drop(lans);
    drop(hosts);
    let list = netns_list();
    for n in &ns_names {
        assert!(!list.contains(n), "{n} left behind");
    }
}

#[test]
fn spawned_process_runs_inside_and_is_killed_by_its_guard() {
    if skip_unless_root("spawned_process_runs_inside_and_is_killed_by_its_guard") {
        return;
    }
    let ns = Netns::new("spawn");
    let guard = ChildGuard::new(ns.spawn(&["sleep", "30"], &[("RR_TEST", "1")]));
    let pid = guard.id();
    // `ip netns exec` execs in place: the pid is sleep's, in the namespace.
    let mut comm = String::new();
    for _ in 0..100 {
        comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(comm.trim(), "sleep");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(theirs, ours);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.split(|&b| b == 0).any(|kv| kv == b"RR_TEST=1"));

    let (status, _stderr) = guard.stop(Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(Signal::SIGTERM as i32)
    );

    // Dropping a guard kills a child that is still running.
    let guard = ChildGuard::new(ns.spawn(&["sleep", "30"], &[]));
    let pid = guard.id();
    drop(guard);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !stat.contains("(sleep)"),
        "sleep {pid} survived its guard: {stat}"
    );
}
