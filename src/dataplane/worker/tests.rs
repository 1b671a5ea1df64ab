use super::*;
use crate::dataplane::{Service, process};
use crate::maglev::Backend;
use etherparse::{IpNumber, PacketBuilder};
use std::net::Ipv4Addr;
use std::sync::Mutex;

const KEY: [u8; 16] = [3; 16];
pub(crate) const NODE: [u8; 4] = [10, 9, 0, 1];
pub(crate) const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// An announced VIP: the default set serves it.
const VIP: [u8; 4] = [198, 51, 100, 7];
/// The buffer a port hands `decide`: a frame and spare room.
const ROOM: usize = 2048;

/// A GRE frame to the node carrying UDP flow `i`, built with etherparse.
pub(crate) fn frame(i: u32) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ipv4([192, 0, 2, (i % 250) as u8], [198, 51, 100, 7], 64)
        .udp(1024 + (i % 60000) as u16, 443)
        .write(&mut inner, b"payload")
        .unwrap();
    let mut gre = vec![0, 0, 0x08, 0x00];
    gre.extend_from_slice(&inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], NODE_MAC)
        .ipv4([10, 9, 0, 200], NODE, 64)
        .write(&mut out, IpNumber(47), &gre)
        .unwrap();
    out
}

/// The MAC we give each backend's neighbour entry: it names the backend,
/// so a frame readdressed from one snapshot and re-MACed from another
/// would show.
pub(crate) fn mac_of(addr: IpAddr) -> ethernet::Address {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            ethernet::Address([2, 0xbb, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => ethernet::Address([2, 0xbb, 0, 0, 0, 0]),
    }
}

pub(crate) fn snapshot(generation: u64, backends: &[&str]) -> Snapshot {
    let set: Vec<Backend> = backends
        .iter()
        .map(|a| Backend {
            addr: a.parse().unwrap(),
            weight: 1,
        })
        .collect();
    let tables = Tables::new(
        generation,
        Some(Service::build(None, &set, &KEY, 251).unwrap()),
        Vec::new(),
    )
    .unwrap();
    Snapshot {
        tables: Arc::new(tables),
        neighbours: neighbours::Static::new(
            set.iter().map(|b| (b.addr, mac_of(b.addr))).collect(),
            None,
        ),
        mac: ethernet::Address(NODE_MAC),
        local_v4: vec![NODE],
        local_v6: Vec::new(),
        vips_v4: vec![VIP],
        vips_v6: Vec::new(),
        primary_v4: Some(NODE),
        primary_v6: None,
        mtu: 1500,
        vlan: None,
        hasher: flow::Hasher::new(&KEY),
    }
}

/// The backend `snapshot` gives flow `i`.
fn expected(snapshot: &Snapshot, i: u32) -> Ipv4Addr {
    let mut f = frame(i);
    let outcome = process(&mut f, &snapshot.context(None, 0));
    assert_eq!(outcome.verdict, Verdict::Forward);
    match outcome.backend {
        Some(IpAddr::V4(a)) => a,
        other => panic!("flow {i}: {other:?}"),
    }
}

/// An in-memory port: hands out `total` frames cycling over `flows`
/// flows, keeps every forwarded frame with its flow number, and stops the
/// worker when done.
struct MemPort {
    flows: u32,
    next: u32,
    total: u32,
    forwarded: Vec<(u32, Vec<u8>)>,
    to_host: usize,
    dropped: usize,
    shared: Arc<Shared>,
    drops: PortCounts,
}

impl Port for MemPort {
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        max: usize,
        mut decide: F,
    ) -> usize {
        let n = max.min((self.total - self.next) as usize);
        for _ in 0..n {
            let i = self.next % self.flows;
            self.next += 1;
            let mut f = frame(i);
            let len = f.len();
            let (verdict, new_len) = decide(&mut f, len);
            assert_eq!(new_len, len, "a GRE frame changed length");
            match verdict {
                Verdict::Forward | Verdict::Reply(_) => self.forwarded.push((i, f)),
                Verdict::ToHost => self.to_host += 1,
                Verdict::Drop(_) => self.dropped += 1,
            }
        }
        if self.next == self.total {
            self.shared.stop.store(true, Relaxed);
        }
        n
    }

    fn wait(&mut self, _: Duration) {}

    fn take_counts(&mut self) -> PortCounts {
        std::mem::take(&mut self.drops)
    }
}

fn settings() -> Settings {
    Settings {
        batch: 32,
        idle: Idle::Adaptive,
        idle_spin: Duration::from_micros(100),
    }
}

#[test]
fn every_frame_forwarded_during_swaps_matches_one_whole_snapshot() {
    const FLOWS: u32 = 512;
    const TOTAL: u32 = 300_000;
    let a = snapshot(1, &["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    let b = snapshot(2, &["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"]);
    let want_a: Vec<Ipv4Addr> = (0..FLOWS).map(|i| expected(&a, i)).collect();
    let want_b: Vec<Ipv4Addr> = (0..FLOWS).map(|i| expected(&b, i)).collect();
    let (a, b) = (Arc::new(a), Arc::new(b));

    let shared = Arc::new(Shared::new(
        snapshot(1, &["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        None,
    ));
    let stats = Arc::new(Stats::default());
    let port = Arc::new(Mutex::new(MemPort {
        flows: FLOWS,
        next: 0,
        total: TOTAL,
        forwarded: Vec::new(),
        to_host: 0,
        dropped: 0,
        shared: Arc::clone(&shared),
        drops: PortCounts::default(),
    }));
    let worker = {
        let (shared, stats, port) = (Arc::clone(&shared), Arc::clone(&stats), Arc::clone(&port));
        std::thread::spawn(move || {
            let mut port = port.lock().unwrap();
            run(&mut *port, &shared, &stats, settings());
        })
    };
    // The control side: whole-snapshot swaps, as fast as it can, until the
    // worker has seen every frame.
    let mut swaps = 0u64;
    while !shared.stop.load(Relaxed) {
        let next = if swaps.is_multiple_of(2) { &b } else { &a };
        shared.snapshot.store(Arc::clone(next));
        swaps += 1;
        std::thread::yield_now();
    }
    worker.join().unwrap();

    let port = port.lock().unwrap();
    assert_eq!(port.forwarded.len(), TOTAL as usize);
    assert_eq!((port.to_host, port.dropped), (0, 0));
    let (mut from_a, mut from_b) = (0, 0);
    for (i, f) in &port.forwarded {
        let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
        let in_a = dst == want_a[*i as usize];
        let in_b = dst == want_b[*i as usize];
        assert!(in_a || in_b, "flow {i} went to {dst}: in neither table");
        assert_eq!(
            &f[0..6],
            &mac_of(dst.into()).0,
            "flow {i}: MAC of another snapshot"
        );
        from_a += usize::from(in_a);
        from_b += usize::from(in_b);
    }
    assert!(swaps > 10, "only {swaps} swaps");
    assert!(
        from_a > 0 && from_b > 0,
        "a {from_a}, b {from_b}: the swap was not seen"
    );
    let totals = stats.read();
    assert_eq!((totals.rx, totals.tx), (TOTAL as u64, TOTAL as u64));
}

#[test]
fn counters_add_up_per_verdict_and_port_drops() {
    let stats = Stats::default();
    let mut batch = Counters::default();
    batch.record(Verdict::Forward);
    batch.record(Verdict::Forward);
    batch.record(Verdict::Forward);
    batch.record(Verdict::ToHost);
    batch.record(Verdict::Drop(DropReason::NoBackend));
    batch.record(Verdict::Reply(DropReason::TooBig));
    stats.publish(
        &batch,
        PortCounts {
            tx_full: 1,
            host_failed: 1,
            from_host: 4,
            from_host_dropped: 5,
            too_long: 6,
            ring_errors: 7,
        },
    );
    stats.publish(&batch, PortCounts::default());
    let t = stats.read();
    // Replies are transmitted: tx = forwarded + replies - tx_full.
    assert_eq!((t.rx, t.tx, t.to_host, t.icmp_sent), (12, 7, 2, 2));
    assert_eq!(t.dropped[DropReason::NoBackend as usize], 2);
    assert_eq!(t.dropped[DropReason::TooBig as usize], 2);
    assert_eq!((t.tx_full, t.host_failed, t.polls), (1, 1, 2));
    assert_eq!((t.from_host, t.from_host_dropped, t.too_long), (4, 5, 6));
    assert_eq!(t.ring_errors, 7);
    let mut sum = Totals::default();
    sum.add(&t);
    sum.add(&t);
    assert_eq!(sum.icmp_sent, 4);
    let json = t.to_json();
    assert_eq!(json["dropped"]["tx_ring_full"], 1);
    assert_eq!(json["dropped"]["no_backend"], 2);
    assert_eq!(json["dropped"]["too_big"], 2);
    assert_eq!((&json["tx"], &json["icmp_sent"]), (&7.into(), &2.into()));
}

#[test]
fn missing_next_hop_queues_the_backend_and_counts_no_neighbour() {
    let mut s = snapshot(1, &["10.1.0.1"]);
    s.neighbours = neighbours::Static::new(Vec::new(), None);
    let shared = Arc::new(Shared::new(s, None));
    let stats = Stats::default();
    let mut port = MemPort {
        flows: 4,
        next: 0,
        total: 8,
        forwarded: Vec::new(),
        to_host: 0,
        dropped: 0,
        shared: Arc::clone(&shared),
        drops: PortCounts::default(),
    };
    run(&mut port, &shared, &stats, settings());
    assert_eq!(port.dropped, 8);
    assert_eq!(stats.read().dropped[DropReason::NoNeighbour as usize], 8);
    assert_eq!(shared.misses.pop(), Some("10.1.0.1".parse().unwrap()));
}

/// A port that has nothing for a while, then one frame; counts its sleeps.
struct IdlePort {
    empty_polls: u32,
    sleeps: u32,
    got: Option<Vec<u8>>,
    shared: Arc<Shared>,
}

impl Port for IdlePort {
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        _: usize,
        mut decide: F,
    ) -> usize {
        if self.empty_polls > 0 {
            self.empty_polls -= 1;
            return 0;
        }
        let mut f = frame(1);
        let len = f.len();
        assert_eq!(decide(&mut f, len), (Verdict::Forward, len));
        self.got = Some(f);
        self.shared.stop.store(true, Relaxed);
        1
    }

    fn wait(&mut self, _: Duration) {
        self.sleeps += 1;
    }

    fn take_counts(&mut self) -> PortCounts {
        PortCounts::default()
    }
}

#[test]
fn adaptive_worker_sleeps_when_idle_and_spin_worker_never_does() {
    for (idle, slept) in [(Idle::Adaptive, true), (Idle::Spin, false)] {
        let shared = Arc::new(Shared::new(snapshot(1, &["10.1.0.1"]), None));
        let mut port = IdlePort {
            empty_polls: 20_000,
            sleeps: 0,
            got: None,
            shared: Arc::clone(&shared),
        };
        let settings = Settings {
            batch: 64,
            idle,
            idle_spin: Duration::ZERO,
        };
        run(&mut port, &shared, &Stats::default(), settings);
        assert_eq!(port.sleeps > 0, slept, "{idle:?}: {} sleeps", port.sleeps);
        assert!(
            port.got.is_some(),
            "{idle:?}: the frame after the idle spell was lost"
        );
    }
}

/// Plain UDP flow `i` from a client straight to the VIP, built with
/// etherparse.
fn plain(i: u32) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], NODE_MAC)
        .ipv4([192, 0, 2, (i % 250) as u8], VIP, 64)
        .udp(1024 + (i % 60000) as u16, 443)
        .write(&mut out, b"payload")
        .unwrap();
    out
}

/// A port that hands out plain frames to the VIP in buffers with spare
/// room, and keeps what it would transmit: the first `len` bytes.
struct GrowPort {
    frames: u32,
    sent: Vec<(u32, Vec<u8>)>,
    shared: Arc<Shared>,
}

impl Port for GrowPort {
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        _: usize,
        mut decide: F,
    ) -> usize {
        for i in 0..self.frames {
            let mut buf = plain(i);
            let len = buf.len();
            buf.resize(ROOM, 0xee);
            let (verdict, len) = decide(&mut buf, len);
            assert_eq!(verdict, Verdict::Forward, "flow {i}");
            buf.truncate(len);
            self.sent.push((i, buf));
        }
        self.shared.stop.store(true, Relaxed);
        self.frames as usize
    }

    fn wait(&mut self, _: Duration) {}

    fn take_counts(&mut self) -> PortCounts {
        PortCounts::default()
    }
}

#[test]
fn a_port_with_room_transmits_plain_frames_encapsulated_at_their_grown_length() {
    let snapshot = snapshot(1, &["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    let want: Vec<Ipv4Addr> = (0..64)
        .map(|i| {
            let mut buf = plain(i);
            let len = buf.len();
            buf.resize(ROOM, 0);
            match process_in(&mut buf, len, &snapshot.context(None, 0))
                .0
                .backend
            {
                Some(IpAddr::V4(a)) => a,
                other => panic!("flow {i}: {other:?}"),
            }
        })
        .collect();
    let shared = Arc::new(Shared::new(snapshot, None));
    let mut port = GrowPort {
        frames: 64,
        sent: Vec::new(),
        shared: Arc::clone(&shared),
    };
    let stats = Stats::default();
    run(&mut port, &shared, &stats, settings());
    assert_eq!(port.sent.len(), 64);
    for (i, f) in &port.sent {
        let input = plain(*i);
        // Ethernet, then IPv4 and a 4-byte GRE header, then the packet.
        assert_eq!(f.len(), input.len() + 24, "flow {i}");
        let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("flow {i}: no outer IPv4");
        };
        let h = ip.header();
        assert_eq!(h.source(), NODE, "flow {i}");
        assert_eq!(h.destination_addr(), want[*i as usize], "flow {i}");
        assert_eq!(h.protocol(), IpNumber::GRE);
        assert_eq!(&f[34..38], &[0, 0, 0x08, 0x00], "flow {i}: GRE header");
        assert_eq!(&f[38..], &input[14..], "flow {i}: inner packet");
    }
    assert_eq!(stats.read().tx, 64);
}

/// Plain UDP to the VIP, `len` bytes of IP with DF set (etherparse's
/// default): too big to encapsulate at 1500 once over 1476.
fn plain_of_len(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], NODE_MAC)
        .ipv4([192, 0, 2, 9], VIP, 64)
        .udp(40000, 443)
        .write(&mut out, &vec![0x5a; len - 28])
        .unwrap();
    out
}

/// A port that hands out one frame of each of `lens` (plain to the VIP,
/// IP lengths) once, and keeps what it would transmit with its verdict.
struct ListPort {
    lens: Vec<usize>,
    sent: Vec<(Verdict, Vec<u8>)>,
    shared: Arc<Shared>,
}

impl Port for ListPort {
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        _: usize,
        mut decide: F,
    ) -> usize {
        for &n in &self.lens {
            let mut buf = plain_of_len(n);
            let len = buf.len();
            buf.resize(ROOM, 0xee);
            let (verdict, len) = decide(&mut buf, len);
            if verdict.transmits() {
                buf.truncate(len);
                self.sent.push((verdict, buf));
            }
        }
        self.shared.stop.store(true, Relaxed);
        self.lens.len()
    }

    fn wait(&mut self, _: Duration) {}

    fn take_counts(&mut self) -> PortCounts {
        PortCounts::default()
    }
}

#[test]
fn a_reply_is_transmitted_and_counted_as_icmp_sent_and_too_big_not_as_forwarded() {
    let set = [Backend {
        addr: "10.1.0.1".parse().unwrap(),
        weight: 1,
    }];
    let tracked = Service::build_tracked(None, &set, &KEY, 251, |_| Some(1)).unwrap();
    let snapshot = Snapshot {
        tables: Arc::new(Tables::new(1, Some(tracked), Vec::new()).unwrap()),
        ..snapshot(1, &["10.1.0.1"])
    };
    let shared = Arc::new(Shared::new(snapshot, None));
    let mut port = ListPort {
        lens: vec![1476, 1500],
        sent: Vec::new(),
        shared: Arc::clone(&shared),
    };
    let stats = Stats::default();
    run(&mut port, &shared, &stats, settings());
    let verdicts: Vec<Verdict> = port.sent.iter().map(|s| s.0).collect();
    assert_eq!(
        verdicts,
        [Verdict::Forward, Verdict::Reply(DropReason::TooBig)]
    );
    // The error goes back to the client: 576 bytes of IPv4.
    let reply = &port.sent[1].1;
    assert_eq!(reply.len(), 14 + 576);
    assert_eq!(&reply[0..6], &[2, 0, 0, 0, 0, 9]);
    assert_eq!(&reply[30..34], &[192, 0, 2, 9]);
    let t = stats.read();
    assert_eq!((t.rx, t.tx, t.icmp_sent), (2, 2, 1));
    assert_eq!(t.dropped[DropReason::TooBig as usize], 1);
    assert_eq!(t.dropped.iter().sum::<u64>(), 1);
    // Only the forwarded frame counts for its backend.
    assert_eq!(stats.backend_packets(1), 1);
}

#[test]
fn a_worker_sends_at_most_icmp_per_second_errors_a_second_and_drops_the_rest_as_too_big() {
    let shared = Arc::new(Shared::new(snapshot(1, &["10.1.0.1"]), None));
    let over = 5;
    let mut port = ListPort {
        lens: vec![1500; ICMP_PER_SECOND as usize + over],
        sent: Vec::new(),
        shared: Arc::clone(&shared),
    };
    let stats = Stats::default();
    run(&mut port, &shared, &stats, settings());
    assert_eq!(port.sent.len(), ICMP_PER_SECOND as usize);
    let t = stats.read();
    assert_eq!(t.icmp_sent, u64::from(ICMP_PER_SECOND));
    assert_eq!(
        t.dropped[DropReason::TooBig as usize],
        u64::from(ICMP_PER_SECOND) + over as u64
    );
}

#[test]
fn the_icmp_budget_refills_when_the_second_changes() {
    let mut budget = IcmpBudget::default();
    budget.refill(7);
    for _ in 0..ICMP_PER_SECOND {
        assert!(budget.take());
    }
    assert!(!budget.take());
    budget.refill(7);
    assert!(!budget.take(), "the same second gives nothing more");
    budget.refill(8);
    assert!(budget.take());
}
