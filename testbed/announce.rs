//! Announcing addresses for real: two rusty_rail nodes and a peer on a
//! bridge of namespaces (the forwarder tests' world, plus IPv6). The peer
//! has `arp_accept=1`; its neighbour table, read with `ip -j neigh`, says
//! who holds an address. Announcements are captured on the peer and read
//! with pnet_packet; GRE'd VIP traffic is checked with etherparse.
//!
//! Every test needs root (namespaces, XDP, AF_XDP) and says so when it
//! skips. They run one at a time: they share two cores.

#[path = "netns/mod.rs"]
mod netns;
#[path = "world/mod.rs"]
mod world;

use netns::{ChildGuard, Netns, RawPort, mac_string};
use nix::sys::signal::Signal;
use pnet_packet::Packet as _;
use pnet_packet::arp::{ArpOperations, ArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
use pnet_packet::icmpv6::ndp::{NeighborAdvertPacket, NeighborSolicitPacket};
use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types};
use pnet_packet::ipv6::Ipv6Packet;
use rusty_rail::dataplane::flow::Hasher;
use rusty_rail::maglev::{Backend, Table};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use world::*;

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0, 0, 0, 0, 0, 0, 0x100);
const PEER6: &str = "fd61::10/64";
const LB6: [&str; 2] = ["fd61::1/64", "fd61::2/64"];
const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd61, 0, 0, 0, 0, 0, 0, 0x21),
    Ipv6Addr::new(0xfd61, 0, 0, 0, 0, 0, 0, 0x22),
    Ipv6Addr::new(0xfd61, 0, 0, 0, 0, 0, 0, 0x23),
];
/// The announcement interval the tests run with, in seconds.
const INTERVAL: f64 = 0.5;
/// The takeover target: 3 intervals + 1 s.
const TAKEOVER_BOUND: Duration = Duration::from_millis(2500);

/// The world with IPv6 on the LAN and a peer that accepts gratuitous ARP.
fn announce_world(test: &str, tag: &str) -> Option<(std::sync::MutexGuard<'static, ()>, World)> {
    let (serial, world) = world_for(test, tag, 2)?;
    netns::add_addrs(&world.gen_ns, "g0", &[PEER6]);
    for (ns, addr) in world.lbs.iter().zip(LB6) {
        netns::add_addrs(ns, "l0", &[addr]);
    }
    for (ns, addr) in world.backends.iter().zip(BACKENDS6) {
        netns::add_addrs(ns, "b0", &[&format!("{addr}/64")]);
    }
    world.gen_ns.sysctl("net.ipv4.conf.all.arp_accept", "1");
    world.gen_ns.sysctl("net.ipv4.conf.g0.arp_accept", "1");
    Some((serial, world))
}

/// A state directory of this test process's own, per node.
fn state_dir(test: &str, node: usize) -> PathBuf {
    std::env::temp_dir().join(format!("rr-announce-{test}-{}-{node}", std::process::id()))
}

/// Starts node `i` announcing both VIPs with `RR_WATCH=watch`; waits
/// until it forwards (the announcer starts right after).
fn start(world: &World, i: usize, watch: &str, state: &std::path::Path) -> ChildGuard {
    start_with(world, i, watch, state, &[])
}

/// `start`, with more variables.
fn start_with(
    world: &World,
    i: usize,
    watch: &str,
    state: &std::path::Path,
    extra: &[(&str, &str)],
) -> ChildGuard {
    let announce = format!("{VIP4}/24;{VIP6}/64");
    let interval = INTERVAL.to_string();
    let state = state.display().to_string();
    let mut env = vec![
        ("RR_ANNOUNCE", announce.as_str()),
        ("RR_ANNOUNCE_INTERVAL", interval.as_str()),
        ("RR_WATCH", watch),
        ("RR_STATE_DIR", state.as_str()),
        ("RR_STATS_INTERVAL", "0"),
    ];
    env.extend_from_slice(extra);
    world.start(i, &env)
}

/// The MAC the peer's neighbour table gives for `addr`, if it has a
/// usable entry.
fn neighbour(peer: &Netns, addr: IpAddr) -> Option<[u8; 6]> {
    let out = peer.exec(&["ip", "-j", "neigh", "show", &addr.to_string(), "dev", "g0"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let entry = list.as_array()?.first()?;
    let states = entry["state"].as_array()?;
    if states.iter().any(|s| s == "FAILED" || s == "INCOMPLETE") {
        return None;
    }
    parse_mac(entry["lladdr"].as_str()?)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// How long until the peer's entry for `addr` is `mac`, polled every 10 ms.
fn wait_for_neighbour(
    peer: &Netns,
    addr: IpAddr,
    mac: [u8; 6],
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    while since.elapsed() < timeout {
        if neighbour(peer, addr) == Some(mac) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The addresses on node `i`'s l0.
fn addresses(world: &World, i: usize) -> Vec<IpAddr> {
    let out = world.lbs[i].exec(&["ip", "-j", "addr", "show", "dev", "l0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j addr");
    v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect()
}

fn holds(world: &World, i: usize) -> bool {
    let a = addresses(world, i);
    a.contains(&IpAddr::V4(VIP4)) && a.contains(&IpAddr::V6(VIP6))
}

fn holds_none(world: &World, i: usize) -> bool {
    let a = addresses(world, i);
    !a.contains(&IpAddr::V4(VIP4)) && !a.contains(&IpAddr::V6(VIP6))
}

/// The state files (`<device>.<netns>.json`) in `dir`; the lock files
/// beside them stay.
fn state_files(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

/// Waits up to `timeout` for `ok`.
fn eventually(timeout: Duration, ok: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok()
}

/// The VIP and sender MAC of an announcement: a gratuitous ARP request
/// (sender IP = target IP) or an unsolicited NA with the Override flag,
/// read with pnet_packet.
fn announcement(frame: &[u8]) -> Option<(IpAddr, [u8; 6])> {
    let eth = EthernetPacket::new(frame)?;
    match eth.get_ethertype() {
        EtherTypes::Arp => {
            let arp = ArpPacket::new(eth.payload())?;
            let gratuitous = arp.get_operation() == ArpOperations::Request
                && arp.get_sender_proto_addr() == arp.get_target_proto_addr();
            gratuitous.then(|| {
                (
                    IpAddr::V4(arp.get_sender_proto_addr()),
                    arp.get_sender_hw_addr().octets(),
                )
            })
        }
        EtherTypes::Ipv6 => {
            let ip = Ipv6Packet::new(eth.payload())?;
            let icmp = Icmpv6Packet::new(ip.payload())?;
            if icmp.get_icmpv6_type() != Icmpv6Types::NeighborAdvert
                || ip.get_destination() != Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
            {
                return None;
            }
            let na = NeighborAdvertPacket::new(ip.payload())?;
            // Override set, Solicited clear.
            (na.get_flags() & 0x20 != 0 && na.get_flags() & 0x40 == 0)
                .then(|| (IpAddr::V6(na.get_target_addr()), eth.get_source().octets()))
        }
        _ => None,
    }
}

/// Reads an address and a MAC from a frame, or None.
type Classify = fn(&[u8]) -> Option<(IpAddr, [u8; 6])>;

/// The address and sender MAC of an RFC 5227 probe (ARP request from
/// 0.0.0.0) or a DAD-style solicitation (NS from ::), read with pnet_packet.
fn probe(frame: &[u8]) -> Option<(IpAddr, [u8; 6])> {
    let eth = EthernetPacket::new(frame)?;
    match eth.get_ethertype() {
        EtherTypes::Arp => {
            let arp = ArpPacket::new(eth.payload())?;
            (arp.get_operation() == ArpOperations::Request
                && arp.get_sender_proto_addr().is_unspecified())
            .then(|| {
                (
                    IpAddr::V4(arp.get_target_proto_addr()),
                    arp.get_sender_hw_addr().octets(),
                )
            })
        }
        EtherTypes::Ipv6 => {
            let ip = Ipv6Packet::new(eth.payload())?;
            let icmp = Icmpv6Packet::new(ip.payload())?;
            if icmp.get_icmpv6_type() != Icmpv6Types::NeighborSolicit
                || !ip.get_source().is_unspecified()
            {
                return None;
            }
            let ns = NeighborSolicitPacket::new(ip.payload())?;
            Some((IpAddr::V6(ns.get_target_addr()), eth.get_source().octets()))
        }
        _ => None,
    }
}

/// Announcements of our VIPs the peer sees during `duration`, by sender.
fn announcements(peer: &Netns, duration: Duration) -> Vec<(IpAddr, [u8; 6])> {
    let mut port = RawPort::open(peer, "g0");
    port.capture(duration, |f| announcement(f).is_some())
        .iter()
        .filter_map(|f| announcement(f))
        .filter(|(a, _)| *a == IpAddr::V4(VIP4) || *a == IpAddr::V6(VIP6))
        .collect()
}

/// Makes the peer resolve the IPv6 VIP (a receiver ignores unsolicited
/// NAs until it has an entry): one UDP datagram to it.
fn touch_v6(peer: &Netns) {
    peer.run(|| {
        let socket = std::net::UdpSocket::bind("[fd61::10]:0").expect("bind");
        let _ = socket.send_to(b"hello", (VIP6, 9));
    });
}

/// Stops node `i` with `signal`: it must exit 0 having removed its
/// addresses and its state file.
fn stop_and_check_clean(
    world: &World,
    i: usize,
    node: ChildGuard,
    state: &std::path::Path,
    signal: Signal,
) {
    let (status, err) = node.stop(signal, WAIT);
    assert_eq!(status.code(), Some(0), "node {i}: {err}");
    assert!(
        holds_none(world, i),
        "node {i} left {:?}",
        addresses(world, i)
    );
    assert_eq!(
        state_files(state),
        Vec::<PathBuf>::new(),
        "node {i} left a state file"
    );
}

#[test]
fn the_holder_is_in_the_peers_neighbour_table_within_one_interval_and_leaves_nothing_after_sigterm()
{
    let Some((_serial, world)) = announce_world(
        "the_holder_is_in_the_peers_neighbour_table_within_one_interval_and_leaves_nothing_after_sigterm",
        "an1",
    ) else {
        return;
    };
    let state = state_dir("holder", 0);
    let started = Instant::now();
    // Everything the peer hears of the node's claim, from before it starts.
    let peer = &world.gen_ns;
    let (node, heard) = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            let mut port = RawPort::open(peer, "g0");
            port.capture_timed(Duration::from_secs(4), |f| {
                announcement(f).is_some() || probe(f).is_some()
            })
        });
        let node = start(&world, 0, "fail", &state);
        (node, capture.join().unwrap())
    });
    // Probes first, for both addresses, then announcements.
    let first = |pick: Classify, addr: IpAddr| {
        heard
            .iter()
            .find(|(_, f)| pick(f) == Some((addr, LB_MACS[0])))
            .map(|(t, _)| *t)
    };
    for addr in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let probed = first(probe, addr).unwrap_or_else(|| panic!("no probe for {addr}"));
        let announced =
            first(announcement, addr).unwrap_or_else(|| panic!("no announcement of {addr}"));
        assert!(
            announced >= probed + Duration::from_millis(150),
            "{addr}: probe at {:?}, announcement at {:?}",
            probed - started,
            announced - started
        );
    }
    let v4 = wait_for_neighbour(
        &world.gen_ns,
        IpAddr::V4(VIP4),
        LB_MACS[0],
        started,
        Duration::from_secs(10),
    );
    assert!(v4.is_some(), "{}", node.stderr_so_far());
    assert!(holds(&world, 0), "{:?}", addresses(&world, 0));
    // Within one interval of the claim: it announces as soon as it has
    // the address, so from the "added" line the entry is there at once.
    let claimed = Instant::now();
    world.gen_ns.ip(&format!("neigh flush dev g0 to {VIP4}"));
    let again = wait_for_neighbour(
        &world.gen_ns,
        IpAddr::V4(VIP4),
        LB_MACS[0],
        claimed,
        Duration::from_secs_f64(INTERVAL * 2.0),
    );
    let again = again.expect("a flushed entry comes back with the next announcement");
    assert!(
        again <= Duration::from_secs_f64(INTERVAL) + Duration::from_millis(100),
        "{again:?}"
    );
    touch_v6(&world.gen_ns);
    assert!(
        wait_for_neighbour(
            &world.gen_ns,
            IpAddr::V6(VIP6),
            LB_MACS[0],
            Instant::now(),
            Duration::from_secs(3)
        )
        .is_some()
    );
    // It probed first, in every mode, and said so in JSON lines.
    let log = node.stderr_so_far();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string() || v["stats"].is_object(), "{line}");
    }
    assert!(log.contains("added 10.61.0.100/24 to l0"), "{log}");
    assert!(log.contains("added fd61::100/64 to l0"), "{log}");
    // An address removed behind its back is put back within a second or so.
    world.lbs[0].ip(&format!("addr del {VIP4}/24 dev l0"));
    assert!(
        eventually(Duration::from_secs(3), || holds(&world, 0)),
        "{}",
        node.stderr_so_far()
    );
    assert!(
        node.stderr_so_far()
            .contains("vanished from l0; added it back")
    );
    let files = state_files(&state);
    assert_eq!(files.len(), 1, "{files:?}");
    let saved = std::fs::read_to_string(&files[0]).expect("state file while running");
    assert!(
        saved.contains("10.61.0.100") && saved.contains("fd61::100"),
        "{saved}"
    );
    stop_and_check_clean(&world, 0, node, &state, Signal::SIGTERM);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_standby_stays_silent_then_takes_over_within_three_intervals_and_a_second_of_a_sigkill() {
    let Some((_serial, world)) = announce_world(
        "a_standby_stays_silent_then_takes_over_within_three_intervals_and_a_second_of_a_sigkill",
        "an2",
    ) else {
        return;
    };
    let states = [state_dir("standby", 0), state_dir("standby", 1)];
    let holder = start(&world, 0, "standby", &states[0]);
    assert!(
        eventually(WAIT, || holds(&world, 0)),
        "{}",
        holder.stderr_so_far()
    );
    touch_v6(&world.gen_ns);
    let mut standby = start(&world, 1, "standby", &states[1]);
    assert!(
        standby
            .wait_for_line("standing by silently", Duration::from_secs(5))
            .is_some(),
        "{}",
        standby.stderr_so_far()
    );
    assert!(eventually(WAIT, || holds_none(&world, 1)));
    for addr in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        assert!(
            wait_for_neighbour(&world.gen_ns, addr, LB_MACS[0], Instant::now(), WAIT).is_some(),
            "{addr} at the holder first"
        );
    }

    // Silence: over 3 s the holder announces both VIPs once an interval
    // each (a capture may miss the edges); the standby not once.
    let heard = announcements(&world.gen_ns, Duration::from_secs(3));
    let from = |mac| heard.iter().filter(|(_, m)| *m == mac).count();
    assert_eq!(from(LB_MACS[1]), 0, "the standby announced: {heard:?}");
    let expected = 2 * (3.0 / INTERVAL) as usize;
    assert!(
        from(LB_MACS[0]) >= expected - 2,
        "the holder's announcements (about {expected}): {heard:?}"
    );
    assert!(holds_none(&world, 1));

    // SIGKILL at a random point of the holder's interval leaves a zombie:
    // its kernel keeps the addresses. The peer records the announcements
    // meanwhile, so the takeover is timed from the holder's last one (its
    // death cannot come before it): at most 3 intervals + 1 s.
    let peer = &world.gen_ns;
    let phase = Duration::from_millis(u64::from(std::process::id() % 500));
    let (killed, moved, heard) = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            let mut port = RawPort::open(peer, "g0");
            port.capture_timed(Duration::from_secs(6), |f| announcement(f).is_some())
        });
        std::thread::sleep(Duration::from_secs(1) + phase);
        let killed = Instant::now();
        let (status, _) = holder.stop(Signal::SIGKILL, WAIT);
        assert_eq!(status.code(), None, "killed by a signal");
        let moved: Vec<Instant> = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
            .into_iter()
            .map(|addr| {
                let after =
                    wait_for_neighbour(peer, addr, LB_MACS[1], killed, Duration::from_secs(10))
                        .unwrap_or_else(|| {
                            panic!("{addr} never moved: {}", standby.stderr_so_far())
                        });
                killed + after
            })
            .collect();
        (killed, moved, capture.join().unwrap())
    });
    for (addr, moved) in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)].into_iter().zip(moved) {
        let last = heard
            .iter()
            .filter(|(t, f)| *t <= killed && announcement(f) == Some((addr, LB_MACS[0])))
            .map(|(t, _)| *t)
            .max()
            .unwrap_or_else(|| panic!("no announcement of {addr} before the kill"));
        let from_last = moved - last;
        println!(
            "takeover of {addr}: {:.0} ms after the holder's last announcement, {:.0} ms after the SIGKILL (interval {INTERVAL} s, bound {} ms)",
            from_last.as_secs_f64() * 1e3,
            (moved - killed).as_secs_f64() * 1e3,
            TAKEOVER_BOUND.as_millis()
        );
        assert!(from_last <= TAKEOVER_BOUND, "{addr}: {from_last:?}");
        // And not before 3 silent intervals: the standby waited.
        assert!(
            from_last >= Duration::from_secs_f64(3.0 * INTERVAL),
            "{addr}: {from_last:?}"
        );
    }
    assert!(holds(&world, 1));
    assert!(holds(&world, 0), "the zombie's kernel still has them");
    let log = standby.stderr_so_far();
    let zombie = mac_string(LB_MACS[0]);
    // Since the takeover began: the zombie's kernel answered the probe.
    let takeover = log.find("taking it over").map_or("", |at| &log[at..]);
    let answered = takeover
        .lines()
        .filter(|l| {
            l.contains("answered our probe") && l.contains(&zombie) && l.contains("10.61.0.100")
        })
        .count();
    assert_eq!(answered, 1, "the zombie is logged once for IPv4: {log}");

    // A restart after SIGKILL removes what the killed run left, then
    // claims: the lower MAC takes the addresses back.
    let mut back = start(&world, 0, "standby", &states[0]);
    assert!(
        back.wait_for_line("left behind by rusty_rail pid", WAIT)
            .is_some(),
        "{}",
        back.stderr_so_far()
    );
    assert!(eventually(Duration::from_secs(5), || holds(&world, 0)
        && holds_none(&world, 1)));
    for addr in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        assert!(
            wait_for_neighbour(&world.gen_ns, addr, LB_MACS[0], Instant::now(), WAIT).is_some(),
            "{addr} back at the lower MAC"
        );
    }
    stop_and_check_clean(&world, 1, standby, &states[1], Signal::SIGINT);
    stop_and_check_clean(&world, 0, back, &states[0], Signal::SIGHUP);
    for s in &states {
        let _ = std::fs::remove_dir_all(s);
    }
}

#[test]
fn each_watch_mode_gives_its_exit_code_and_the_higher_mac_always_loses() {
    let Some((_serial, world)) = announce_world(
        "each_watch_mode_gives_its_exit_code_and_the_higher_mac_always_loses",
        "an3",
    ) else {
        return;
    };
    let states = [state_dir("watch", 0), state_dir("watch", 1)];
    let mut holder = start(&world, 0, "fail", &states[0]);
    assert!(eventually(WAIT, || holds(&world, 0)));
    // The higher MAC (node 1) challenges the holder in every mode.
    for watch in ["fail", "quit", "log", "standby", "no"] {
        let mut node = start(&world, 1, watch, &states[1]);
        match watch {
            "fail" | "quit" => {
                let deadline = Instant::now() + Duration::from_secs(5);
                while node.try_wait().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let (status, err) = node.stop(Signal::SIGKILL, WAIT);
                let code = if watch == "fail" { 1 } else { 0 };
                assert_eq!(status.code(), Some(code), "RR_WATCH={watch}: {err}");
                assert!(err.contains(&format!("RR_WATCH={watch}")), "{err}");
                assert!(
                    holds_none(&world, 1),
                    "RR_WATCH={watch} left {:?}",
                    addresses(&world, 1)
                );
            }
            "log" => {
                assert!(
                    node.wait_for_line("RR_WATCH=log", Duration::from_secs(5))
                        .is_some()
                );
                // The loser goes on announcing, as noodle does.
                let heard = announcements(&world.gen_ns, Duration::from_secs(2));
                assert!(heard.iter().any(|(_, m)| *m == LB_MACS[1]), "{heard:?}");
                stop_and_check_clean(&world, 1, node, &states[1], Signal::SIGHUP);
            }
            "standby" => {
                assert!(
                    node.wait_for_line("standing by", Duration::from_secs(5))
                        .is_some()
                );
                assert!(eventually(WAIT, || holds_none(&world, 1)));
                stop_and_check_clean(&world, 1, node, &states[1], Signal::SIGINT);
            }
            _ => {
                // No watcher: it holds and announces regardless.
                std::thread::sleep(Duration::from_secs_f64(INTERVAL * 3.0));
                assert!(holds(&world, 1));
                assert!(
                    !node.stderr_so_far().contains("conflict"),
                    "{}",
                    node.stderr_so_far()
                );
                stop_and_check_clean(&world, 1, node, &states[1], Signal::SIGTERM);
            }
        }
        assert!(holder.try_wait().is_none(), "the holder runs on");
        assert!(
            holds(&world, 0),
            "the lower MAC keeps it after RR_WATCH={watch}"
        );
    }
    stop_and_check_clean(&world, 0, holder, &states[0], Signal::SIGTERM);

    // Order does not matter: the higher MAC holding first still loses.
    let mut high = start(&world, 1, "fail", &states[1]);
    assert!(eventually(WAIT, || holds(&world, 1)));
    let low = start(&world, 0, "fail", &states[0]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while high.try_wait().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, err) = high.stop(Signal::SIGKILL, WAIT);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(eventually(WAIT, || holds(&world, 0) && holds_none(&world, 1)));
    stop_and_check_clean(&world, 0, low, &states[0], Signal::SIGTERM);
    for s in &states {
        let _ = std::fs::remove_dir_all(s);
    }
}

#[test]
fn an_address_someone_else_put_on_the_device_stops_the_start_unless_unmanaged() {
    let Some((_serial, world)) = announce_world(
        "an_address_someone_else_put_on_the_device_stops_the_start_unless_unmanaged",
        "an5",
    ) else {
        return;
    };
    let state = state_dir("foreign", 0);
    let state_text = state.display().to_string();
    world.lbs[0].ip(&format!("addr add {VIP4}/24 dev l0"));
    let targets = BACKENDS.map(|b| b.to_string()).join(";");
    let announce = format!("{VIP4}/24");
    let env = [
        ("RR_DEVICE", "l0"),
        ("RR_TARGET_IPS", targets.as_str()),
        ("RR_HASH_KEY", KEY),
        ("RR_ANNOUNCE", announce.as_str()),
        ("RR_STATE_DIR", state_text.as_str()),
    ];
    let out = world.lbs[0].exec_env(&[env!("CARGO_BIN_EXE_rusty_rail")], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last: serde_json::Value =
        serde_json::from_str(err.lines().last().unwrap_or_default()).expect("a JSON line");
    assert_eq!(last["fatal"], true, "{err}");
    let msg = last["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("10.61.0.100 is already on l0") && msg.contains("RR_ANNOUNCE_UNMANAGED=1"),
        "{msg}"
    );
    assert!(
        addresses(&world, 0).contains(&IpAddr::V4(VIP4)),
        "left alone"
    );
    assert!(!world.xdp_attached(0), "nothing attached");

    // Unmanaged: announced and steered, never removed.
    let state_env = state.display().to_string();
    let node = world.start(
        0,
        &[
            ("RR_ANNOUNCE", &announce),
            ("RR_ANNOUNCE_UNMANAGED", "1"),
            ("RR_ANNOUNCE_INTERVAL", "0.5"),
            ("RR_STATE_DIR", &state_env),
        ],
    );
    assert!(
        wait_for_neighbour(
            &world.gen_ns,
            IpAddr::V4(VIP4),
            LB_MACS[0],
            Instant::now(),
            WAIT
        )
        .is_some(),
        "{}",
        node.stderr_so_far()
    );
    let (status, err) = node.stop(Signal::SIGTERM, WAIT);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        addresses(&world, 0).contains(&IpAddr::V4(VIP4)),
        "unmanaged stays"
    );
    assert_eq!(state_files(&state), Vec::<PathBuf>::new());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn plain_tcp_to_the_vip_reaches_the_maglev_backend_gre_encapsulated_from_the_nodes_own_address() {
    let Some((_serial, world)) = announce_world(
        "plain_tcp_to_the_vip_reaches_the_maglev_backend_gre_encapsulated_from_the_nodes_own_address",
        "an4",
    ) else {
        return;
    };
    let state = state_dir("plain", 0);
    let node = start(&world, 0, "fail", &state);
    assert!(eventually(WAIT, || holds(&world, 0)));
    let sports: Vec<u16> = (0..12).map(|i| 41_000 + i).collect();
    // Real SYNs from the peer's kernel, from known ports.
    let seen = through_backends(&world, is_gre, check_plain, || {
        for &sport in &sports {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(&std::net::SocketAddr::from((GEN_IP, sport)).into())
                .unwrap();
            socket.set_nonblocking(true).unwrap();
            let _ = socket.connect(&std::net::SocketAddr::from((VIP4, 80)).into());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        sports,
        "every SYN arrived"
    );
    let set = BACKENDS.map(IpAddr::V4);
    let hasher = Hasher::new(&KEY_BYTES);
    for (sport, b) in &seen {
        let hash = hasher.v4(
            GEN_IP.octets(),
            VIP4.octets(),
            6,
            u32::from(*sport) << 16 | 80,
        );
        assert_eq!(set[*b], maglev(&set, hash), "port {sport}");
    }
    assert!(
        seen.values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "12 flows spread: {seen:?}"
    );
    stop_and_check_clean(&world, 0, node, &state, Signal::SIGTERM);
    let _ = std::fs::remove_dir_all(&state);
}

/// Runs `send` in the peer's namespace while every backend captures the
/// frames `filter` passes for 1.5 s; returns, per client port (as `check`
/// reads it from a frame backend `b` got), the backend.
fn through_backends(
    world: &World,
    filter: fn(&[u8]) -> bool,
    check: fn(&[u8], usize) -> u16,
    send: impl FnOnce() + Send,
) -> std::collections::BTreeMap<u16, usize> {
    let ports: Vec<RawPort> = world
        .backends
        .iter()
        .map(|ns| RawPort::open(ns, "b0"))
        .collect();
    let frames = std::thread::scope(|s| {
        let receivers: Vec<_> = ports
            .into_iter()
            .map(|mut port| s.spawn(move || port.capture(Duration::from_millis(1500), filter)))
            .collect();
        world.gen_ns.run(send);
        receivers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut seen = std::collections::BTreeMap::new();
    for (b, list) in frames.iter().enumerate() {
        for frame in list {
            seen.entry(check(frame, b)).or_insert(b);
        }
    }
    seen
}

/// The pure Maglev table's pick over `set` (weights 1) for `hash`.
fn maglev(set: &[IpAddr], hash: u64) -> IpAddr {
    let backends: Vec<Backend> = set
        .iter()
        .map(|b| Backend {
            addr: *b,
            weight: 1,
        })
        .collect();
    let table = Table::build(&backends, &KEY_BYTES, 65537).unwrap();
    table.lookup(hash).unwrap().addr
}

/// Checks, with etherparse, a GRE frame backend `b` got for a plain SYN
/// to the VIP; returns the client's port.
fn check_plain(frame: &[u8], b: usize) -> u16 {
    use etherparse::{IpNumber, LinkSlice, NetSlice, SlicedPacket, TransportSlice};
    let sliced = SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet II");
    };
    assert_eq!(eth.source(), LB_MACS[0]);
    assert_eq!(eth.destination(), backend_mac(b));
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("outer not IPv4");
    };
    let h = ip.header();
    assert_eq!(
        h.source_addr(),
        LB_IPS[0],
        "outer source is the node's own address"
    );
    assert_eq!(h.destination_addr(), BACKENDS[b]);
    assert_eq!(h.protocol(), IpNumber(47));
    assert!(h.dont_fragment());
    let header = h.to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    let gre = ip.payload().payload;
    assert_eq!(&gre[..4], &[0, 0, 0x08, 0x00], "plain GRE carrying IPv4");
    let inner = SlicedPacket::from_ip(&gre[4..]).expect("inner packet");
    let Some(NetSlice::Ipv4(inner_ip)) = &inner.net else {
        panic!("inner not IPv4");
    };
    let ih = inner_ip.header();
    assert_eq!((ih.source_addr(), ih.destination_addr()), (GEN_IP, VIP4));
    assert_eq!(ih.ttl(), 64, "the inner packet is unchanged");
    let ihdr = ih.to_header();
    assert_eq!(ihdr.header_checksum, ihdr.calc_header_checksum());
    let Some(TransportSlice::Tcp(tcp)) = &inner.transport else {
        panic!("inner not TCP");
    };
    assert!(tcp.syn() && !tcp.ack());
    assert_eq!(tcp.destination_port(), 80);
    tcp.source_port()
}

#[test]
fn plain_udp_to_an_ipv6_vip_reaches_its_backend_in_gre_over_ipv6_and_the_host_never_sources_from_the_vip()
 {
    let Some((_serial, world)) = announce_world(
        "plain_udp_to_an_ipv6_vip_reaches_its_backend_in_gre_over_ipv6_and_the_host_never_sources_from_the_vip",
        "an6",
    ) else {
        return;
    };
    let state = state_dir("plain6", 0);
    let vips = format!("{VIP6}={}", BACKENDS6.map(|b| b.to_string()).join(","));
    let node = start_with(&world, 0, "fail", &state, &[("RR_VIPS", &vips)]);
    assert!(eventually(WAIT, || holds(&world, 0)));
    // The VIP is deprecated on the device: the host's own traffic keeps
    // its own source address.
    let out = world.lbs[0].exec(&["ip", "-6", "route", "get", "fd61::10"]);
    let route = String::from_utf8_lossy(&out.stdout);
    assert!(route.contains("src fd61::1 "), "{route}");
    let sports: Vec<u16> = (0..12).map(|i| 42_000 + i).collect();
    let seen = through_backends(&world, is_gre6, check_plain6, || {
        for &sport in &sports {
            let socket = std::net::UdpSocket::bind(("fd61::10", sport)).expect("bind");
            socket
                .send_to(b"rusty_rail v6", (VIP6, 5000))
                .expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        sports,
        "every datagram arrived"
    );
    let set = BACKENDS6.map(IpAddr::V6);
    let peer: Ipv6Addr = "fd61::10".parse().unwrap();
    let hasher = Hasher::new(&KEY_BYTES);
    for (sport, b) in &seen {
        let hash = hasher.v6(
            peer.octets(),
            VIP6.octets(),
            17,
            u32::from(*sport) << 16 | 5000,
        );
        assert_eq!(set[*b], maglev(&set, hash), "port {sport}");
    }
    stop_and_check_clean(&world, 0, node, &state, Signal::SIGTERM);
    let _ = std::fs::remove_dir_all(&state);
}

fn is_gre6(frame: &[u8]) -> bool {
    frame.len() > 54 && frame[12..14] == [0x86, 0xdd] && frame[20] == 47
}

/// Checks, with etherparse, a GRE-over-IPv6 frame backend `b` got for a
/// plain datagram to the IPv6 VIP; returns the client's port.
fn check_plain6(frame: &[u8], b: usize) -> u16 {
    use etherparse::{IpNumber, LinkSlice, NetSlice, SlicedPacket, TransportSlice};
    let sliced = SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet II");
    };
    assert_eq!(eth.source(), LB_MACS[0]);
    assert_eq!(eth.destination(), backend_mac(b));
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!("outer not IPv6");
    };
    let h = ip.header();
    let own: Ipv6Addr = "fd61::1".parse().unwrap();
    assert_eq!(
        h.source_addr(),
        own,
        "outer source is the node's own address"
    );
    assert_eq!(h.destination_addr(), BACKENDS6[b]);
    assert_eq!(h.next_header(), IpNumber(47));
    assert_eq!(h.hop_limit(), 64);
    let gre = ip.payload().payload;
    assert_eq!(&gre[..4], &[0, 0, 0x86, 0xdd], "plain GRE carrying IPv6");
    let inner = SlicedPacket::from_ip(&gre[4..]).expect("inner packet");
    let Some(NetSlice::Ipv6(inner_ip)) = &inner.net else {
        panic!("inner not IPv6");
    };
    let peer: Ipv6Addr = "fd61::10".parse().unwrap();
    let ih = inner_ip.header();
    assert_eq!((ih.source_addr(), ih.destination_addr()), (peer, VIP6));
    let Some(TransportSlice::Udp(udp)) = &inner.transport else {
        panic!("inner not UDP");
    };
    assert_eq!(udp.destination_port(), 5000);
    assert_eq!(udp.payload(), b"rusty_rail v6");
    udp.source_port()
}
