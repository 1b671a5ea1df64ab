//! The forwarder's test world, shared by the namespace tests: a traffic
//! source, load balancer nodes and three backends on one bridge, plus
//! frames built and checked with etherparse, an independent packet library.
#![allow(dead_code)]

use crate::netns::{self, ChildGuard, Lan, Netns, RawPort};
use etherparse::{IpNumber, PacketBuilder, SlicedPacket};
use nix::sys::signal::Signal;
use rusty_rail::dataplane::flow::Hasher;
use rusty_rail::maglev::{Backend, Table};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub static SERIAL: Mutex<()> = Mutex::new(());

pub const KEY: &str = "000102030405060708090a0b0c0d0e0f";
pub const KEY_BYTES: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
pub const GEN_MAC: [u8; 6] = [0x02, 0x61, 0, 0, 0, 0x10];
pub const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 10);
pub const LB_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 61, 0, 1), Ipv4Addr::new(10, 61, 0, 2)];
pub const LB_MACS: [[u8; 6]; 2] = [[0x02, 0x61, 0, 0, 0, 1], [0x02, 0x61, 0, 0, 0, 2]];
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 61, 0, 21),
    Ipv4Addr::new(10, 61, 0, 22),
    Ipv4Addr::new(10, 61, 0, 23),
];
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);
pub const WAIT: Duration = Duration::from_secs(3);

pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0x61, 0, 0, 0, 0x21 + i as u8]
}

/// The topology: a source, `lbs` load balancer nodes and three backends.
pub struct World {
    pub lan: Lan,
    pub gen_ns: Netns,
    pub lbs: Vec<Netns>,
    pub backends: Vec<Netns>,
}

impl World {
    pub fn new(tag: &str, lbs: usize) -> World {
        let mut lan = Lan::new(tag);
        let gen_ns = Netns::new(&format!("{tag}g"));
        lan.attach(&gen_ns, "g0", GEN_MAC, &[&format!("{GEN_IP}/24")]);
        let lbs: Vec<Netns> = (0..lbs)
            .map(|i| {
                let ns = Netns::new(&format!("{tag}l{i}"));
                lan.attach(&ns, "l0", LB_MACS[i], &[&format!("{}/24", LB_IPS[i])]);
                ns
            })
            .collect();
        let backends: Vec<Netns> = BACKENDS
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let ns = Netns::new(&format!("{tag}b{i}"));
                lan.attach(&ns, "b0", backend_mac(i), &[&format!("{ip}/24")]);
                ns
            })
            .collect();
        World {
            lan,
            gen_ns,
            lbs,
            backends,
        }
    }

    /// Starts rusty_rail on node `i` and waits until it forwards.
    pub fn start(&self, i: usize, extra: &[(&str, &str)]) -> ChildGuard {
        let targets = BACKENDS.map(|b| b.to_string()).join(";");
        let mut env = vec![
            ("RR_DEVICE", "l0"),
            ("RR_TARGET_IPS", targets.as_str()),
            ("RR_HASH_KEY", KEY),
            ("RR_STATS_INTERVAL", "0.2"),
        ];
        env.extend_from_slice(extra);
        let mut child =
            ChildGuard::new(self.lbs[i].spawn(&[env!("CARGO_BIN_EXE_rusty_rail")], &env));
        let ready = child.wait_for_line("forwarding on l0", Duration::from_secs(10));
        assert!(
            ready.is_some(),
            "node {i} did not start: {}",
            child.stderr_so_far()
        );
        child
    }

    pub fn xdp_attached(&self, i: usize) -> bool {
        let out = self.lbs[i].exec(&["ip", "link", "show", "dev", "l0"]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    pub fn links(&self, i: usize) -> String {
        let out = self.lbs[i].exec(&["ip", "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A test's world, built while holding [`SERIAL`] (the tests share two
/// cores): None, with the reason printed, when not root (outside CI).
/// Bind as `(_serial, world)` so the world goes before the lock.
pub fn world_for(test: &str, tag: &str, lbs: usize) -> Option<(MutexGuard<'static, ()>, World)> {
    if netns::skip_unless_root(test) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Some((serial, World::new(tag, lbs)))
}

/// SIGTERM: the node must drain and exit 0.
pub fn stop_cleanly(node: ChildGuard) {
    let (status, err) = node.stop(Signal::SIGTERM, WAIT);
    assert_eq!(status.code(), Some(0), "{err}");
}

/// One inner UDP flow to the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub sport: u16,
}

pub fn flows(n: usize) -> Vec<Flow> {
    (0..n)
        .map(|i| Flow {
            src: Ipv4Addr::new(192, 0, 2, 1 + (i % 200) as u8),
            sport: 20_000 + i as u16,
        })
        .collect()
}

/// GRE (no options) + inner IPv4/UDP, built by etherparse.
pub fn gre_payload(flow: Flow) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ipv4(flow.src.octets(), VIP.octets(), 64)
        .udp(flow.sport, 80)
        .write(&mut inner, b"rusty_rail testbed")
        .unwrap();
    let mut gre = vec![0, 0, 0x08, 0x00];
    gre.extend_from_slice(&inner);
    gre
}

/// An Ethernet + IPv4 frame from the source to node `lb`.
pub fn to_node(lb: usize, protocol: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(GEN_MAC, LB_MACS[lb])
        .ipv4(GEN_IP.octets(), LB_IPS[lb].octets(), ttl)
        .write(&mut frame, IpNumber(protocol), payload)
        .unwrap();
    frame
}

/// What the pure Maglev table says about `flow`.
pub fn expected_backend(flow: Flow) -> Ipv4Addr {
    maglev_pick(flow, &BACKENDS)
}

/// The backend the pure Maglev table over `set` (weights 1) picks for `flow`.
pub fn maglev_pick(flow: Flow, set: &[Ipv4Addr]) -> Ipv4Addr {
    let backends: Vec<Backend> = set
        .iter()
        .map(|b| Backend {
            addr: (*b).into(),
            weight: 1,
        })
        .collect();
    let table = Table::build(&backends, &KEY_BYTES, 65537).unwrap();
    let hash = Hasher::new(&KEY_BYTES).v4(
        flow.src.octets(),
        VIP.octets(),
        17,
        u32::from(flow.sport) << 16 | 80,
    );
    match table.lookup(hash).unwrap().addr {
        std::net::IpAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}

pub fn is_gre(frame: &[u8]) -> bool {
    frame.len() > 34 && frame[12..14] == [0x08, 0x00] && frame[23] == 47
}

/// Checks a frame a backend received from node `lb` with etherparse and
/// returns the flow it carries.
pub fn check_forwarded(frame: &[u8], lb: usize, backend: usize) -> Flow {
    let sliced = SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet II");
    };
    assert_eq!(eth.source(), LB_MACS[lb], "Ethernet source is the node");
    assert_eq!(
        eth.destination(),
        backend_mac(backend),
        "Ethernet destination is the backend"
    );
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("not IPv4");
    };
    let h = ip.header();
    assert_eq!(h.source_addr(), LB_IPS[lb], "outer source is the node");
    assert_eq!(
        h.destination_addr(),
        BACKENDS[backend],
        "outer destination is the backend"
    );
    assert_eq!(h.ttl(), 63, "TTL decremented once");
    assert_eq!(h.protocol(), IpNumber(47));
    let header = h.to_header();
    assert_eq!(
        header.header_checksum,
        header.calc_header_checksum(),
        "outer checksum valid"
    );
    let gre = ip.payload().payload;
    assert_eq!(&gre[..4], &[0, 0, 0x08, 0x00], "GRE header untouched");
    let inner = SlicedPacket::from_ip(&gre[4..]).expect("inner packet");
    let Some(etherparse::NetSlice::Ipv4(inner_ip)) = &inner.net else {
        panic!("inner not IPv4");
    };
    let Some(etherparse::TransportSlice::Udp(udp)) = &inner.transport else {
        panic!("inner not UDP");
    };
    let flow = Flow {
        src: inner_ip.header().source_addr(),
        sport: udp.source_port(),
    };
    assert_eq!(
        gre,
        gre_payload(flow).as_slice(),
        "GRE and inner bytes untouched"
    );
    flow
}

/// Sends every flow `copies` times to node `lb` and returns, per flow, the
/// backends it arrived at (checked frame by frame).
pub fn send_and_collect(
    world: &World,
    lb: usize,
    flows: &[Flow],
    copies: usize,
) -> HashMap<Flow, Vec<usize>> {
    let ports: Vec<RawPort> = world
        .backends
        .iter()
        .map(|ns| RawPort::open(ns, "b0"))
        .collect();
    let mut source = RawPort::open(&world.gen_ns, "g0");
    let total = flows.len() * copies;
    std::thread::scope(|s| {
        // Receive while sending, so no socket buffer overflows.
        let receivers: Vec<_> = ports
            .into_iter()
            .map(|mut port| {
                s.spawn(move || port.recv_matching(total, Duration::from_millis(700), is_gre))
            })
            .collect();
        for (i, frame) in (0..copies)
            .flat_map(|_| flows.iter())
            .map(|flow| to_node(lb, 47, 64, &gre_payload(*flow)))
            .enumerate()
        {
            source.send(&frame);
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut seen: HashMap<Flow, Vec<usize>> = HashMap::new();
        for (b, receiver) in receivers.into_iter().enumerate() {
            for frame in receiver.join().unwrap() {
                let flow = check_forwarded(&frame, lb, b);
                seen.entry(flow).or_default().push(b);
            }
        }
        seen
    })
}

/// The latest JSON stats line's totals.
pub fn last_stats(child: &ChildGuard) -> serde_json::Value {
    let text = child.stderr_so_far();
    let Some(line) = text
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"") && l.contains("\"stats\""))
    else {
        return serde_json::Value::Null;
    };
    let v: serde_json::Value = serde_json::from_str(line).expect("stats line is JSON");
    v["stats"].clone()
}

pub fn wait_for_stats(
    child: &ChildGuard,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = last_stats(child);
        if ok(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
