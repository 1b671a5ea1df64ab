//! Fuzzes `dataplane::process_in`, the pipeline entry point.
//!
//! Beyond "never panics" it checks what must hold for every input: a frame
//! that is neither forwarded nor answered is untouched, spare room
//! included; a forwarded one either keeps its length, its GRE header and
//! inner packet, and a valid outer IPv4 checksum, or (plain IP to a VIP)
//! grows by exactly an outer header and GRE, and carries its IP packet
//! unchanged behind them; an answered one (too big to encapsulate) is an
//! ICMP error back to its sender, no longer than it, with valid checksums,
//! quoting the start of its IP packet.
//!
//! Selector byte: bit 0, the node is on VLAN 100; bit 1, the frame has 128
//! bytes of spare room (else it goes through `process`, which has none).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rusty_rail::dataplane::{self, Context, Service, Tables, Verdict, flow, neighbours};
use rusty_rail::maglev::Backend;
use rusty_rail::wire::{ethernet, icmp, ipv4, ipv6};
use std::sync::OnceLock;

struct World {
    hasher: flow::Hasher,
    tables: Tables,
    neighbours: neighbours::Static,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let key = [0x42; 16];
        let backends: Vec<Backend> = ["10.1.0.1", "10.1.0.2", "2001:db8:1::1", "2001:db8:1::2"]
            .iter()
            .map(|a| Backend { addr: a.parse().unwrap(), weight: 1 })
            .collect();
        let default = Service::build(None, &backends, &key, 251).unwrap();
        let vip = Service::build(Some("192.0.2.10".parse().unwrap()), &backends[..1], &key, 251).unwrap();
        let empty = Service::build(Some("192.0.2.11".parse().unwrap()), &[], &key, 251).unwrap();
        let neighbours = neighbours::Static::new(
            vec![(backends[0].addr, ethernet::Address([2, 0, 0, 0, 1, 1]))],
            Some(ethernet::Address([2, 0, 0, 0, 0, 0xfe])),
        );
        World {
            hasher: flow::Hasher::new(&key),
            tables: Tables::new(1, Some(default), vec![vip, empty]).unwrap(),
            neighbours,
        }
    })
}

const NODE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ROOM: usize = 128;
const SPARE: u8 = 0xee;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let w = world();
    let ctx = Context {
        mac: ethernet::Address([2, 0, 0, 0, 0, 1]),
        local_v4: &[[172, 16, 0, 1]],
        local_v6: &[NODE6],
        vips_v4: &[[192, 0, 2, 10], [192, 0, 2, 11]],
        vips_v6: &[[0x20, 0x01, 0x0d, 0xb8, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]],
        primary_v4: Some([172, 16, 0, 1]),
        primary_v6: Some(NODE6),
        mtu: 1500,
        vlan: (selector & 1 == 1).then_some(100),
        hasher: &w.hasher,
        tables: &w.tables,
        neighbours: &w.neighbours,
        flows: None,
        now: 0,
    };
    let room = if selector & 2 == 2 { ROOM } else { 0 };
    let mut buf = frame.to_vec();
    buf.resize(frame.len() + room, SPARE);
    let (outcome, len) = dataplane::process_in(&mut buf, frame.len(), &ctx);
    if let Verdict::Reply(_) = outcome.verdict {
        check_reply(frame, &buf, len, &ctx);
        return;
    }
    if outcome.verdict != Verdict::Forward {
        assert_eq!(len, frame.len());
        assert_eq!(buf[..len], frame[..], "{outcome:?} changed the frame");
        assert!(buf[len..].iter().all(|&b| b == SPARE), "{outcome:?} wrote past the frame");
        return;
    }
    assert!(buf[len.max(frame.len())..].iter().all(|&b| b == SPARE), "wrote past the frame");
    let out = &buf[..len];
    let eth = ethernet::Frame::new_checked(out).expect("forwarded a non-Ethernet frame");
    assert_eq!(eth.src(), ctx.mac);
    let l3 = eth.header_len();
    if len != frame.len() {
        // Encapsulated: outer header and GRE, then the packet as it came.
        let added = if let Ok(ip) = ipv4::Packet::new_checked(&out[l3..]) {
            assert!(ip.verify_checksum());
            assert_eq!((ip.ttl(), ip.protocol(), ip.header_len()), (64, 47, 20));
            24
        } else {
            let ip = ipv6::Packet::new_checked(&out[l3..]).expect("encapsulated in neither IPv4 nor IPv6");
            assert_eq!((ip.hop_limit(), ip.next_header()), (64, 47));
            44
        };
        assert_eq!(out[l3 + added..], frame[l3..len - added], "the packet changed");
        return;
    }
    if let Ok(ip) = ipv4::Packet::new_checked(&out[l3..]) {
        assert!(ip.verify_checksum() || !ipv4::Packet::new_checked(&frame[l3..]).unwrap().verify_checksum());
        let h = l3 + ip.header_len();
        assert_eq!(out[h..], frame[h..], "GRE or inner bytes changed");
    } else {
        let ip = ipv6::Packet::new_checked(&out[l3..]).expect("forwarded neither IPv4 nor IPv6");
        assert!(ip.hop_limit() >= 1);
        let h = l3 + ipv6::HEADER_LEN;
        assert_eq!(out[h..], frame[h..], "GRE or inner bytes changed");
    }
});

/// An ICMP error answering `frame`, in `buf[..len]`.
fn check_reply(frame: &[u8], buf: &[u8], len: usize, ctx: &Context<'_, neighbours::Static>) {
    assert!(len <= frame.len(), "the error outgrew the packet");
    assert!(buf[frame.len()..].iter().all(|&b| b == SPARE), "wrote past the frame");
    let out = &buf[..len];
    let eth = ethernet::Frame::new_checked(out).expect("answered with a non-Ethernet frame");
    let sent = ethernet::Frame::new_checked(frame).unwrap();
    assert_eq!((eth.src(), eth.dst()), (ctx.mac, sent.src()));
    let l3 = eth.header_len();
    let quote = if let Ok(ip) = ipv4::Packet::new_checked(&out[l3..]) {
        let client = ipv4::Packet::new_checked(&frame[l3..]).unwrap();
        assert!(ip.verify_checksum() && !ip.dont_frag() && ip.total_len() <= 576);
        assert_eq!((ip.src_bytes(), ip.dst_bytes()), (ctx.primary_v4.unwrap(), client.src_bytes()));
        let m = icmp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((m.msg_type(), m.code()), (icmp::v4::DEST_UNREACHABLE, icmp::v4::FRAG_NEEDED));
        assert!(m.verify_checksum_v4());
        ip.payload()[icmp::HEADER_LEN..].to_vec()
    } else {
        let ip = ipv6::Packet::new_checked(&out[l3..]).expect("answered in neither IPv4 nor IPv6");
        let client = ipv6::Packet::new_checked(&frame[l3..]).unwrap();
        assert!(usize::from(ip.payload_len()) + ipv6::HEADER_LEN <= 1280);
        assert_eq!((ip.src_bytes(), ip.dst_bytes()), (ctx.primary_v6.unwrap(), client.src_bytes()));
        let m = icmp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(m.msg_type(), icmp::v6::PACKET_TOO_BIG);
        assert!(m.verify_checksum_v6(&ip.src_bytes(), &ip.dst_bytes()));
        ip.payload()[icmp::HEADER_LEN..].to_vec()
    };
    assert_eq!(quote[..], frame[l3..l3 + quote.len()], "the quote is not the packet");
}
