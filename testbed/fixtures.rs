//! Packet fixtures for `dataplane::process_in`, in Katran's style: one
//! table of named cases, each an input frame, the expected `Outcome` and
//! the expected output frame (the oracle's rewrite or encapsulation for
//! `Forward`, its ICMP error for `Reply`, the input itself otherwise:
//! `process_in` must not touch what it neither forwards nor answers, spare
//! room included). Each case also runs through `process`, which has no
//! room to encapsulate in.
//!
//! Frames are built with etherparse and pnet_packet only (see
//! `fixtures/build.rs`); no `rusty_rail::wire` encoder is used. Byte-exact
//! `Forward` cases go to services with exactly one backend of the outer
//! family, so the oracle needs no hash. Multi-backend behaviour, fragments
//! across several backends and truncation sweeps have their own tests in
//! `fixtures/multi.rs` and `fixtures/sweeps.rs`.

#[path = "fixtures/build.rs"]
mod build;
#[path = "fixtures/env.rs"]
mod env;
#[path = "fixtures/multi.rs"]
mod multi;
#[path = "fixtures/sweeps.rs"]
mod sweeps;

use build::*;
use env::*;
use etherparse::{EtherType, Ethernet2Header, IpFragOffset, Ipv4Header, Ipv4HeaderSlice};
use rusty_rail::dataplane::{Counters, DropReason, Outcome, Verdict, process, process_in};
use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Range;
use std::rc::Rc;

/// One fixture.
pub struct Case {
    pub description: &'static str,
    pub env: Rc<Env>,
    pub input: Vec<u8>,
    pub expected: Outcome,
    /// The frame after `process`: the oracle's frame for `Forward` and
    /// `Reply`, the input for everything else.
    pub output: Vec<u8>,
    /// Where the GRE packet (header + inner, no padding) sits, when the
    /// input is GRE; used for the "GRE untouched, checksum valid" checks.
    pub gre: Option<Range<usize>>,
    /// What `process`, which has no spare room, returns instead of
    /// `expected` (the frame then comes back as is); None: the same.
    pub without_room: Option<Outcome>,
}

fn gre_range(frame: &Frame) -> Range<usize> {
    let start = frame.payload_offset();
    start..start + frame.payload.len()
}

impl Case {
    /// Forwarded to `backend` via the oracle's next hop for it.
    fn forward(
        description: &'static str,
        env: &Rc<Env>,
        frame: &Frame,
        backend: impl Into<IpAddr>,
    ) -> Case {
        let backend = backend.into();
        let next_hop = env
            .next_hop(backend)
            .unwrap_or_else(|| panic!("fixture bug in {description:?}: no next hop for {backend}"));
        Case {
            description,
            env: Rc::clone(env),
            input: frame.bytes(),
            expected: Outcome::of(Verdict::Forward, Some(backend)),
            output: frame.forwarded(NODE_MAC, next_hop, backend),
            gre: Some(gre_range(frame)),
            without_room: None,
        }
    }

    /// Plain IP to an announced VIP, encapsulated toward `backend` from the
    /// node's primary address of its family.
    fn encap(
        description: &'static str,
        env: &Rc<Env>,
        frame: &Frame,
        backend: impl Into<IpAddr>,
    ) -> Case {
        let backend = backend.into();
        let next_hop = env
            .next_hop(backend)
            .unwrap_or_else(|| panic!("fixture bug in {description:?}: no next hop for {backend}"));
        let (src, label) = match backend {
            IpAddr::V4(_) => (IpAddr::from(env.primary_v4.unwrap()), 0),
            IpAddr::V6(_) => (
                IpAddr::from(env.primary_v6.unwrap()),
                flow_label(env, &frame.packet()),
            ),
        };
        Case {
            description,
            env: Rc::clone(env),
            input: frame.bytes(),
            expected: Outcome::of(Verdict::Forward, Some(backend)),
            output: frame.encapsulated(NODE_MAC, next_hop, src, backend, label),
            gre: None,
            without_room: Some(TOO_BIG),
        }
    }

    /// Plain IP to an announced VIP, too big once encapsulated, answered
    /// in place with the oracle's ICMP error from the node's primary
    /// address of its family, advertising the MTU less the encapsulation.
    /// `process`, without room, answers alike.
    fn reply(description: &'static str, env: &Rc<Env>, frame: &Frame) -> Case {
        let (src, mtu) = match frame.l3 {
            L3::V4(_) => (IpAddr::from(env.primary_v4.unwrap()), env.mtu - 24),
            L3::V6(_) => (IpAddr::from(env.primary_v6.unwrap()), env.mtu - 44),
        };
        Case {
            description,
            env: Rc::clone(env),
            input: frame.bytes(),
            expected: REPLIED,
            output: frame.too_big_reply(NODE_MAC, src, mtu),
            gre: None,
            without_room: None,
        }
    }

    /// Plain IP to an announced VIP, not forwarded. `chosen`: it got as
    /// far as choosing a backend, which comes after the size check, so
    /// without room it is too big.
    fn plain(
        description: &'static str,
        env: &Rc<Env>,
        frame: &Frame,
        verdict: Verdict,
        chosen: bool,
    ) -> Case {
        Case {
            without_room: chosen.then_some(TOO_BIG),
            ..Case::unchanged(description, env, frame.bytes(), verdict)
        }
    }

    /// Not forwarded (no backend reported): the frame must come back as is.
    fn unchanged(
        description: &'static str,
        env: &Rc<Env>,
        input: Vec<u8>,
        verdict: Verdict,
    ) -> Case {
        assert!(!verdict.transmits(), "fixture bug in {description:?}");
        Case {
            description,
            env: Rc::clone(env),
            output: input.clone(),
            input,
            expected: Outcome::of(verdict, None),
            gre: None,
            without_room: None,
        }
    }

    fn frame(description: &'static str, env: &Rc<Env>, frame: &Frame, verdict: Verdict) -> Case {
        Case {
            gre: Some(gre_range(frame)),
            ..Case::unchanged(description, env, frame.bytes(), verdict)
        }
    }

    fn to_host(description: &'static str, env: &Rc<Env>, frame: &Frame) -> Case {
        Case::frame(description, env, frame, Verdict::ToHost)
    }

    fn drop(description: &'static str, env: &Rc<Env>, frame: &Frame, reason: DropReason) -> Case {
        Case::frame(description, env, frame, Verdict::Drop(reason))
    }
}

const TOO_BIG: Outcome = Outcome::of(Verdict::Drop(DropReason::TooBig), None);
const REPLIED: Outcome = Outcome::of(Verdict::Reply(DropReason::TooBig), None);

/// The outer flow label of an encapsulated IPv6 packet: the low 20 bits
/// of its flow hash, over the 5-tuple as etherparse reads it.
fn flow_label(env: &Env, packet: &[u8]) -> u32 {
    let p = etherparse::SlicedPacket::from_ip(packet).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("fixture bug: not IPv6");
    };
    let (src, dst) = (ip.header().source(), ip.header().destination());
    let (protocol, ports) = match &p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => (6, (t.source_port(), t.destination_port())),
        Some(etherparse::TransportSlice::Udp(u)) => (17, (u.source_port(), u.destination_port())),
        _ => panic!("fixture bug: flow label only for TCP and UDP"),
    };
    let ports = u32::from(ports.0) << 16 | u32::from(ports.1);
    env.hasher.v6(src, dst, protocol, ports) as u32 & 0x000f_ffff
}

/// A client's packet sent plain to the node's MAC.
fn plain(packet: Vec<u8>) -> Frame {
    Frame::plain(&packet, NODE_MAC)
}

/// GRE of the family matching the inner packet's version nibble.
fn gre_for(inner: &[u8]) -> Gre {
    if inner[0] >> 4 == 6 {
        Gre::ipv6()
    } else {
        Gre::ipv4()
    }
}

/// IPv4 outer GRE to the node, TTL 64.
fn g4(inner: Vec<u8>) -> Frame {
    g4_with(gre_for(&inner), inner)
}

fn g4_with(gre: Gre, inner: Vec<u8>) -> Frame {
    Frame::gre4(NODE_V4, NODE_MAC, gre.encap(&inner))
}

/// IPv6 outer GRE to the node, hop limit 64.
fn g6(inner: Vec<u8>) -> Frame {
    Frame::gre6(NODE_V6, NODE_MAC, gre_for(&inner).encap(&inner))
}

fn t4() -> Vec<u8> {
    tcp4(CLIENT_V4, VIP_A4, 40000, 443)
}

fn t4_to(vip: std::net::Ipv4Addr) -> Vec<u8> {
    tcp4(CLIENT_V4, vip, 40000, 443)
}

fn t6() -> Vec<u8> {
    tcp6(CLIENT_V6, VIP_A6, 40000, 443)
}

pub struct Envs {
    pub standard: Rc<Env>,
    pub no_default: Rc<Env>,
    pub gateway_only: Rc<Env>,
    pub vlan100: Rc<Env>,
    pub two_addrs: Rc<Env>,
    pub no_primary: Rc<Env>,
}

fn envs() -> Envs {
    let standard = Spec::standard();
    Envs {
        standard: Rc::new(standard.build()),
        no_default: Rc::new(
            Spec {
                name: "no default set",
                default: None,
                ..standard.clone()
            }
            .build(),
        ),
        gateway_only: Rc::new(
            Spec {
                name: "gateway only",
                entries: Vec::new(),
                gateway: Some(GATEWAY_MAC),
                ..standard.clone()
            }
            .build(),
        ),
        vlan100: Rc::new(
            Spec {
                name: "vlan 100",
                vlan: Some(100),
                ..standard.clone()
            }
            .build(),
        ),
        two_addrs: Rc::new(
            Spec {
                name: "two local addresses",
                local_v4: vec![NODE_V4, NODE_V4_B],
                local_v6: vec![NODE_V6, NODE_V6_B],
                ..standard.clone()
            }
            .build(),
        ),
        no_primary: Rc::new(
            Spec {
                name: "no primary address",
                primary_v4: None,
                primary_v6: None,
                ..standard
            }
            .build(),
        ),
    }
}

/// The fixture table.
pub fn cases() -> Vec<Case> {
    use DropReason::*;
    let e = envs();
    let std = &e.standard;
    let mut c = vec![
        // --- Inner protocols over IPv4-outer GRE: byte-exact forwards. -------
        Case::forward("GRE/IPv4 carrying IPv4 TCP", std, &g4(t4()), BE_A4_V4),
        Case::forward(
            "GRE/IPv4 carrying IPv4 UDP",
            std,
            &g4(udp4(CLIENT_V4, VIP_A4, 40001, 53)),
            BE_A4_V4,
        ),
        Case::forward(
            "GRE/IPv4 carrying IPv4 ICMP echo",
            std,
            &g4(icmp4_echo(CLIENT_V4, VIP_A4)),
            BE_A4_V4,
        ),
        Case::forward("GRE/IPv4 carrying IPv6 TCP", std, &g4(t6()), BE_A6_V4),
        Case::forward(
            "GRE/IPv4 carrying IPv6 UDP",
            std,
            &g4(udp6(CLIENT_V6, VIP_A6, 40001, 53)),
            BE_A6_V4,
        ),
        Case::forward(
            "GRE/IPv4 carrying ICMPv6 echo",
            std,
            &g4(icmp6_echo(CLIENT_V6, VIP_A6)),
            BE_A6_V4,
        ),
    ];

    // --- IPv6 outer. -----------------------------------------------------
    c.push(Case::forward(
        "GRE/IPv6 carrying IPv4 TCP",
        std,
        &g6(t4()),
        BE_A4_V6,
    ));
    c.push(Case::forward(
        "GRE/IPv6 carrying IPv6 UDP",
        std,
        &g6(udp6(CLIENT_V6, VIP_A6, 40001, 53)),
        BE_A6_V6,
    ));
    c.push(Case::forward(
        "GRE/IPv6 hop limit 2 is forwarded with hop limit 1",
        std,
        &g6(t4()).ttl(2),
        BE_A4_V6,
    ));
    c.push(Case::drop(
        "GRE/IPv6 hop limit 1",
        std,
        &g6(t4()).ttl(1),
        TtlExpired,
    ));
    c.push(Case::drop(
        "GRE/IPv6 hop limit 0",
        std,
        &g6(t4()).ttl(0),
        TtlExpired,
    ));
    c.push(Case::to_host(
        "GRE/IPv6 to another host",
        std,
        &Frame::gre6(NODE_V6_B, NODE_MAC, Gre::ipv4().encap(&t4())),
    ));
    {
        // A Destination Options header between IPv6 and GRE: outer
        // extension headers are the host's business.
        let mut f = g6(t4());
        let mut payload =
            etherparse::Ipv6RawExtHeader::new_raw(etherparse::IpNumber::GRE, &[1, 4, 0, 0, 0, 0])
                .unwrap()
                .to_bytes()
                .to_vec();
        payload.extend_from_slice(&f.payload);
        f.payload = payload;
        f.v6().next_header = etherparse::IpNumber::IPV6_DESTINATION_OPTIONS;
        c.push(Case::to_host(
            "GRE/IPv6 behind an outer Destination Options header",
            std,
            &f,
        ));
    }

    // --- Inner fragments (single-backend service; see multi.rs for the
    // same-backend check across several backends). ------------------------
    let (first, rest) = tcp4_fragments(CLIENT_V4, VIP_A4, 40000, 443, 0x7777);
    c.push(Case::forward(
        "inner IPv4 first fragment (MF, carries ports)",
        std,
        &g4(first),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "inner IPv4 non-first fragment (offset 32, no ports)",
        std,
        &g4(rest),
        BE_A4_V4,
    ));
    let (first, rest) = tcp6_fragments(CLIENT_V6, VIP_A6, 40000, 443, 0x7777_7777);
    c.push(Case::forward(
        "inner IPv6 first fragment (Fragment header, M set)",
        std,
        &g4(first),
        BE_A6_V4,
    ));
    c.push(Case::forward(
        "inner IPv6 non-first fragment (offset 32)",
        std,
        &g4(rest),
        BE_A6_V4,
    ));
    let (first, rest) = tcp6_fragments_dest_opts(CLIENT_V6, VIP_A6, 40000, 443, 0x7777_7778);
    c.push(Case::forward(
        "inner IPv6 first fragment, Destination Options after the Fragment header",
        std,
        &g4(first),
        BE_A6_V4,
    ));
    c.push(Case::forward(
        "inner IPv6 non-first fragment whose Fragment header announces Destination Options",
        std,
        &g4(rest),
        BE_A6_V4,
    ));

    // --- Inner IPv6 extension headers. -----------------------------------
    c.push(Case::forward(
        "inner IPv6 with hop-by-hop and destination options",
        std,
        &g4(tcp6_with_ext_headers(CLIENT_V6, VIP_A6, 40000, 443)),
        BE_A6_V4,
    ));
    c.push(Case::forward(
        "inner IPv6 with 8 destination options headers (the walk limit)",
        std,
        &g4(tcp6_with_n_dest_opts(CLIENT_V6, VIP_A6, 8)),
        BE_A6_V4,
    ));
    c.push(Case::drop(
        "inner IPv6 with 9 destination options headers",
        std,
        &g4(tcp6_with_n_dest_opts(CLIENT_V6, VIP_A6, 9)),
        Ipv6ExtHeaders,
    ));

    // --- GRE options. ----------------------------------------------------
    c.push(Case::forward(
        "GRE with key",
        std,
        &g4_with(Gre::ipv4().with_key(0xdead_beef), t4()),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "GRE with sequence",
        std,
        &g4_with(Gre::ipv4().with_sequence(42), t4()),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "GRE with checksum",
        std,
        &g4_with(Gre::ipv4().with_checksum(), t4()),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "GRE with key, sequence and checksum",
        std,
        &g4_with(
            Gre::ipv4()
                .with_checksum()
                .with_key(7)
                .with_sequence(0xffff_fffe),
            t4(),
        ),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "GRE with checksum carrying IPv6 (odd-length inner)",
        std,
        &g4_with(
            Gre::ipv6().with_checksum(),
            udp6_with(CLIENT_V6, VIP_A6, 1, 2, b"odd"),
        ),
        BE_A6_V4,
    ));
    c.push(Case::forward(
        "GRE with reserved bits 6-12 set (ignored on receipt)",
        std,
        &g4_with(
            Gre {
                recursion: 0b011,
                reserved: 0x1f,
                ..Gre::ipv4()
            },
            t4(),
        ),
        BE_A4_V4,
    ));
    c.push(Case::to_host(
        "GRE with the routing bit set",
        std,
        &g4_with(
            Gre {
                routing: true,
                ..Gre::ipv4()
            },
            t4(),
        ),
    ));
    c.push(Case::to_host(
        "GRE version 1",
        std,
        &g4_with(
            Gre {
                version: 1,
                ..Gre::ipv4()
            },
            t4(),
        ),
    ));
    c.push(Case::to_host(
        "GRE with the strict source route bit set",
        std,
        &g4_with(
            Gre {
                strict_source_route: true,
                ..Gre::ipv4()
            },
            t4(),
        ),
    ));
    c.push(Case::to_host(
        "GRE with recursion control 4 (RFC 2784 bit 5)",
        std,
        &g4_with(
            Gre {
                recursion: 4,
                ..Gre::ipv4()
            },
            t4(),
        ),
    ));
    c.push(Case::to_host(
        "GRE addressed to another host",
        std,
        &Frame::gre4(OTHER_V4, NODE_MAC, Gre::ipv4().encap(&t4())),
    ));
    c.push(Case::to_host(
        "GRE carrying transparent Ethernet (0x6558)",
        std,
        &g4_with(Gre::new(0x6558), bridged_ethernet()),
    ));
    {
        // K flag set but the packet ends after the base header.
        let mut gre = Gre::ipv4().with_key(1).encap(&[]);
        gre.truncate(6);
        c.push(Case::drop(
            "GRE header shorter than its flags announce",
            std,
            &Frame::gre4(NODE_V4, NODE_MAC, gre),
            MalformedGre,
        ));
    }

    // --- Not GRE. --------------------------------------------------------
    c.push(Case::unchanged(
        "TCP to the node",
        std,
        plain_tcp4(NODE_V4, NODE_MAC),
        Verdict::ToHost,
    ));
    c.push(Case::unchanged(
        "UDP to the node",
        std,
        plain_udp4(NODE_V4, NODE_MAC),
        Verdict::ToHost,
    ));
    c.push(Case::unchanged(
        "ICMP ping to the node",
        std,
        plain_ping4(NODE_V4, NODE_MAC),
        Verdict::ToHost,
    ));
    c.push(Case::unchanged(
        "ICMPv6 ping to the node",
        std,
        plain_ping6(NODE_V6, NODE_MAC),
        Verdict::ToHost,
    ));
    c.push(Case::unchanged(
        "ARP request for the node",
        std,
        arp_request(NODE_V4),
        Verdict::ToHost,
    ));
    {
        let mut lldp = Ethernet2Header {
            source: ROUTER_MAC,
            destination: [0x01, 0x80, 0xc2, 0, 0, 0x0e],
            ether_type: EtherType(0x88cc),
        }
        .to_bytes()
        .to_vec();
        lldp.extend_from_slice(&[0u8; 46]);
        c.push(Case::unchanged(
            "LLDP (unknown ethertype)",
            std,
            lldp,
            Verdict::ToHost,
        ));
    }

    // --- VLAN. -----------------------------------------------------------
    c.push(Case::to_host(
        "tagged GRE (VID 100) on an untagged node",
        std,
        &g4(t4()).tagged(100, 0),
    ));
    c.push(Case::forward(
        "tagged GRE (VID 100, PCP 5) on VLAN 100 keeps its tag",
        &e.vlan100,
        &g4(t4()).tagged(100, 5),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "tagged GRE/IPv6 (VID 100) on VLAN 100",
        &e.vlan100,
        &g6(t6()).tagged(100, 0),
        BE_A6_V6,
    ));
    c.push(Case::forward(
        "priority-tagged GRE (VID 0, PCP 5) on an untagged node keeps its tag",
        std,
        &g4(t4()).tagged(0, 5),
        BE_A4_V4,
    ));
    c.push(Case::to_host(
        "untagged GRE on VLAN 100",
        &e.vlan100,
        &g4(t4()),
    ));
    c.push(Case::to_host(
        "tagged GRE (VID 200) on VLAN 100",
        &e.vlan100,
        &g4(t4()).tagged(200, 0),
    ));

    // --- Malformed headers. ----------------------------------------------
    {
        let f = g4(t4());
        let mut bytes = f.bytes();
        bytes[f.l3_offset()] = 0x44; // IHL 4, nothing recomputed
        c.push(Case::unchanged(
            "outer IPv4 IHL 4",
            std,
            bytes,
            Verdict::ToHost,
        ));
    }
    {
        let f = g4(t4());
        let mut bytes = f.bytes();
        let at = f.l3_offset() + 2;
        bytes[at..at + 2].copy_from_slice(&19u16.to_be_bytes()); // total length < IHL
        c.push(Case::unchanged(
            "outer IPv4 total length below its header",
            std,
            bytes,
            Verdict::ToHost,
        ));
    }
    {
        let mut inner = t4();
        inner[0] = 0x44; // IHL 4
        c.push(Case::drop(
            "inner IPv4 IHL 4",
            std,
            &g4(inner),
            MalformedInner,
        ));
    }
    c.push(Case::drop(
        "inner IPv6 packet in GRE protocol 0x0800",
        std,
        &g4_with(Gre::ipv4(), t6()),
        MalformedInner,
    ));
    c.push(Case::drop(
        "inner TCP header truncated",
        std,
        &g4(truncated_tcp_v4()),
        MalformedInner,
    ));

    // --- TTL. ------------------------------------------------------------
    c.push(Case::drop("outer TTL 1", std, &g4(t4()).ttl(1), TtlExpired));
    c.push(Case::drop("outer TTL 0", std, &g4(t4()).ttl(0), TtlExpired));
    c.push(Case::forward(
        "outer TTL 2 is forwarded with TTL 1",
        std,
        &g4(t4()).ttl(2),
        BE_A4_V4,
    ));

    // --- Outer fragments. ------------------------------------------------
    {
        let mut f = g4(t4());
        f.v4().dont_fragment = false;
        f.v4().more_fragments = true;
        c.push(Case::drop(
            "outer IPv4 first fragment (MF)",
            std,
            &f,
            OuterFragment,
        ));
        let mut f = g4(t4());
        f.v4().dont_fragment = false;
        f.v4().fragment_offset = IpFragOffset::try_new(185).unwrap();
        c.push(Case::drop(
            "outer IPv4 last fragment (offset 1480)",
            std,
            &f,
            OuterFragment,
        ));
    }

    // --- Service selection. ----------------------------------------------
    c.push(Case::forward(
        "known VIP wins over the default set",
        std,
        &g4(udp4(CLIENT_V4, VIP_A4, 5000, 5001)),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "unknown IPv4 VIP goes to the default set",
        std,
        &g4(t4_to(VIP_UNKNOWN4)),
        BE_DEFAULT_V4,
    ));
    c.push(Case::forward(
        "unknown IPv6 VIP goes to the default set (IPv6 outer)",
        std,
        &g6(tcp6(CLIENT_V6, VIP_UNKNOWN6, 1, 2)),
        BE_DEFAULT_V6,
    ));
    c.push(Case::drop(
        "unknown IPv4 VIP without a default set",
        &e.no_default,
        &g4(t4_to(VIP_UNKNOWN4)),
        UnknownVip,
    ));
    c.push(Case::drop(
        "unknown IPv6 VIP without a default set",
        &e.no_default,
        &g4(tcp6(CLIENT_V6, VIP_UNKNOWN6, 1, 2)),
        UnknownVip,
    ));
    c.push(Case::forward(
        "known VIP without a default set",
        &e.no_default,
        &g4(t4()),
        BE_A4_V4,
    ));

    // --- Backends. -------------------------------------------------------
    c.push(Case::drop(
        "VIP with no backends",
        std,
        &g4(t4_to(VIP_EMPTY)),
        NoBackend,
    ));
    c.push(Case::drop(
        "VIP whose backends all have weight 0",
        std,
        &g4(t4_to(VIP_DRAINED)),
        NoBackend,
    ));
    c.push(Case::drop(
        "IPv4 outer to a VIP with only IPv6 backends",
        std,
        &g4(t4_to(VIP_V6_ONLY)),
        NoBackend,
    ));
    c.push(Case::drop(
        "IPv6 outer to a VIP with only IPv4 backends",
        std,
        &g6(tcp6(CLIENT_V6, VIP6_V4_ONLY, 1, 2)),
        NoBackend,
    ));

    // --- Neighbours. -----------------------------------------------------
    {
        let f = g4(t4_to(VIP_UNRESOLVED));
        c.push(Case {
            expected: Outcome::of(Verdict::Drop(NoNeighbour), Some(BE_UNRESOLVED.into())),
            ..Case::drop(
                "backend with no neighbour entry and no gateway",
                std,
                &f,
                NoNeighbour,
            )
        });
    }
    c.push(Case::forward(
        "no on-link entry: via the gateway",
        &e.gateway_only,
        &g4(t4()),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "no on-link entry: IPv6 outer via the gateway",
        &e.gateway_only,
        &g6(t6()),
        BE_A6_V6,
    ));

    // --- Outer header details the rewrite must preserve. ------------------
    {
        let mut f = g4(t4());
        f.v4().options = [0x01, 0x01, 0x01, 0x00].into(); // NOP NOP NOP EOL
        c.push(Case::forward(
            "outer IPv4 with options (IHL 6)",
            std,
            &f,
            BE_A4_V4,
        ));
    }
    {
        let mut f = g4(icmp4_echo(CLIENT_V4, VIP_A4));
        f.padding = 6;
        c.push(Case::forward(
            "link padding after the outer packet is kept",
            std,
            &f,
            BE_A4_V4,
        ));
    }
    c.push(Case::forward(
        "outer DSCP 46 is kept",
        std,
        &g4(t4()).dscp(46),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "GRE to the node's second IPv4 address is sourced from it",
        &e.two_addrs,
        &Frame::gre4(NODE_V4_B, NODE_MAC, Gre::ipv4().encap(&t4())),
        BE_A4_V4,
    ));
    c.push(Case::forward(
        "GRE to the node's second IPv6 address is sourced from it",
        &e.two_addrs,
        &Frame::gre6(NODE_V6_B, NODE_MAC, Gre::ipv6().encap(&t6())),
        BE_A6_V6,
    ));

    // --- Plain IP to an announced VIP: encapsulated in GRE. --------------
    c.push(Case::encap(
        "plain IPv4 TCP to an announced VIP is encapsulated in GRE/IPv4",
        std,
        &plain(t4()),
        BE_A4_V4,
    ));
    c.push(Case::encap(
        "plain IPv4 UDP with DSCP 46 to an announced VIP: the outer header copies it",
        std,
        &plain(udp4(CLIENT_V4, VIP_A4, 40001, 53)).dscp(46),
        BE_A4_V4,
    ));
    c.push(Case::encap(
        "plain ICMP echo to an announced IPv4 VIP",
        std,
        &plain(icmp4_echo(CLIENT_V4, VIP_A4)),
        BE_A4_V4,
    ));
    c.push(Case::encap(
        "plain IPv4 first fragment to an announced VIP",
        std,
        &plain(tcp4_fragments(CLIENT_V4, VIP_A4, 40000, 443, 0x4242).0),
        BE_A4_V4,
    ));
    c.push(Case::encap(
        "plain IPv6 UDP to an announced VIP is encapsulated in GRE/IPv6",
        std,
        &plain(udp6(CLIENT_V6, VIP_A6, 40001, 53)),
        BE_A6_V6,
    ));
    {
        let mut f = plain(t6());
        f.v6().traffic_class = 0xb8;
        c.push(Case::encap(
            "plain IPv6 TCP with traffic class 0xb8 to an announced VIP: the outer header copies it",
            std,
            &f,
            BE_A6_V6,
        ));
    }
    {
        let mut f = plain(udp4(CLIENT_V4, VIP_A4, 40002, 53));
        f.padding = 6;
        c.push(Case::encap(
            "plain IPv4 with link padding: encapsulated without the padding",
            std,
            &f,
            BE_A4_V4,
        ));
    }
    c.push(Case::encap(
        "tagged plain IPv4 (VID 100, PCP 5) on VLAN 100 keeps its tag",
        &e.vlan100,
        &plain(t4()).tagged(100, 5),
        BE_A4_V4,
    ));
    c.push(Case::encap(
        "plain IPv4 to an announced VIP via the gateway",
        &e.gateway_only,
        &plain(t4()),
        BE_A4_V4,
    ));
    {
        // 1500 bytes: 1524 once in GRE/IPv4, over the 1500-byte MTU.
        let big = udp4_with(CLIENT_V4, VIP_A4, 40003, 53, &[0x5a; 1472]);
        assert_eq!(big.len(), 1500, "fixture bug");
        c.push(Case::reply(
            "plain IPv4 UDP of 1500 bytes with DF to an announced VIP: answered with \
             fragmentation needed, MTU 1476, quoting 548 bytes",
            std,
            &plain(big.clone()),
        ));
        let mut f = plain(big.clone());
        f.v4().dont_fragment = false;
        c.push(Case::plain(
            "plain IPv4 UDP of 1500 bytes without DF to an announced VIP: too big, not answered",
            std,
            &f,
            Verdict::Drop(TooBig),
            false,
        ));
        c.push(Case::reply(
            "tagged plain IPv4 of 1500 bytes with DF on VLAN 100: answered with its tag kept",
            &e.vlan100,
            &plain(big).tagged(100, 5),
        ));
        let big6 = udp6_with(CLIENT_V6, VIP_A6, 40003, 53, &[0x5a; 1452]);
        assert_eq!(big6.len(), 1500, "fixture bug");
        c.push(Case::reply(
            "plain IPv6 UDP of 1500 bytes to an announced VIP: answered with packet too big, \
             MTU 1456, quoting 1232 bytes",
            std,
            &plain(big6),
        ));
        c.push(Case::plain(
            "ICMP fragmentation needed of 1500 bytes to an announced VIP: too big, an error \
             is never answered",
            std,
            &plain(icmp4_frag_needed_of_len(CLIENT_V4, VIP_A4, 1500)),
            Verdict::Drop(TooBig),
            false,
        ));
        c.push(Case::plain(
            "ICMPv6 packet too big of 1500 bytes to an announced VIP: too big, an error is \
             never answered",
            std,
            &plain(icmp6_too_big_of_len(CLIENT_V6, VIP_A6, 1500)),
            Verdict::Drop(TooBig),
            false,
        ));
        let fits = udp4_with(CLIENT_V4, VIP_A4, 40003, 53, &[0x5a; 1448]);
        c.push(Case::encap(
            "plain IPv4 UDP of 1476 bytes to an announced VIP: exactly the MTU once encapsulated",
            std,
            &plain(fits),
            BE_A4_V4,
        ));
    }
    c.push(Case::unchanged(
        "ICMPv6 neighbour solicitation to an announced VIP goes to the host",
        std,
        neighbour_solicitation(VIP_A6, NODE_MAC),
        Verdict::ToHost,
    ));
    c.push(Case::plain(
        "plain IPv4 TCP to a VIP this node does not announce",
        std,
        &plain(t4_to(VIP_UNKNOWN4)),
        Verdict::ToHost,
        false,
    ));
    c.push(Case::plain(
        "untagged plain IPv4 to an announced VIP on VLAN 100",
        &e.vlan100,
        &plain(t4()),
        Verdict::ToHost,
        false,
    ));
    c.push(Case::plain(
        "plain IPv4 to an announced VIP with no backends",
        std,
        &plain(t4_to(VIP_EMPTY)),
        Verdict::Drop(NoBackend),
        true,
    ));
    c.push(Case::plain(
        "plain IPv4 to an announced VIP on a node without an IPv4 address",
        &e.no_primary,
        &plain(t4()),
        Verdict::Drop(NoBackend),
        false,
    ));
    c.push(Case {
        expected: Outcome::of(Verdict::Drop(NoNeighbour), Some(BE_UNRESOLVED.into())),
        ..Case::plain(
            "plain IPv4 to an announced VIP whose backend has no neighbour entry",
            std,
            &plain(t4_to(VIP_UNRESOLVED)),
            Verdict::Drop(NoNeighbour),
            true,
        )
    });
    c.push(Case::plain(
        "plain IPv4 to an announced VIP with its TCP header truncated",
        std,
        &plain(truncated_tcp_v4()),
        Verdict::Drop(MalformedInner),
        false,
    ));
    c.push(Case::plain(
        "plain IPv6 to an announced VIP behind 9 destination options headers",
        std,
        &plain(tcp6_with_n_dest_opts(CLIENT_V6, VIP_A6, 9)),
        Verdict::Drop(Ipv6ExtHeaders),
        false,
    ));

    c
}

/// Spare room after each input, and what fills it.
const ROOM: usize = 256;
const SPARE: u8 = 0xee;

/// Runs one case through `process_in` with `ROOM` bytes of spare room;
/// returns its outcome, its frame and whether the spare room past both the
/// input and the frame is untouched.
fn run(case: &Case) -> (Outcome, Vec<u8>, bool) {
    let len = case.input.len();
    let mut buf = case.input.clone();
    buf.resize(len + ROOM, SPARE);
    let (outcome, new_len) = process_in(&mut buf, len, &case.env.ctx());
    let spare = buf[len.max(new_len)..].iter().all(|&b| b == SPARE);
    buf.truncate(new_len);
    (outcome, buf, spare)
}

/// What `process` must do with the exact-size input: see `without_room`.
fn check_without_room(case: &Case) -> Option<String> {
    let mut frame = case.input.clone();
    let outcome = process(&mut frame, &case.env.ctx());
    let (expected, output) = match case.without_room {
        Some(outcome) => (outcome, &case.input),
        None => (case.expected, &case.output),
    };
    // `process` gives no length: an error fills the front of the frame.
    if let Verdict::Reply(_) = expected.verdict {
        frame.truncate(output.len());
    }
    (outcome != expected || frame != *output).then(|| {
        format!(
            "[{}] without room: {outcome:?}, expected {expected:?}; {}",
            case.description,
            if frame == *output {
                "frame as expected".to_string()
            } else {
                first_difference(output, &frame)
            }
        )
    })
}

/// First differing byte, for failure messages.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: expected {:#04x}, got {:#04x}",
            a[i], b[i]
        ),
        None => format!("lengths differ: expected {}, got {}", a.len(), b.len()),
    }
}

/// Every way `case` fails, described.
fn mismatches(case: &Case) -> Vec<String> {
    let mut out = Vec::new();
    let d = case.description;
    let env = case.env.name;
    let (outcome, frame, spare) = run(case);
    if !spare {
        out.push(format!("[{d}] ({env}) bytes past the frame changed"));
    }
    out.extend(check_without_room(case));
    if outcome != case.expected {
        out.push(format!(
            "[{d}] ({env}) outcome: expected {:?}, got {:?}",
            case.expected, outcome
        ));
    }
    if frame != case.output {
        let what = match (case.expected.verdict, outcome.verdict) {
            (Verdict::Forward, Verdict::Forward) => "forwarded frame differs from the oracle",
            (Verdict::Forward, _) => "frame is not the oracle's rewrite",
            (Verdict::Reply(_), Verdict::Reply(_)) => "ICMP error differs from the oracle",
            (Verdict::Reply(_), _) => "frame is not the oracle's ICMP error",
            _ => "frame was modified although neither forwarded nor answered",
        };
        out.push(format!(
            "[{d}] ({env}) {what}: {}",
            first_difference(&case.output, &frame)
        ));
    }
    if outcome.verdict.transmits() {
        // Whatever the expectation, a forwarded frame must carry GRE and
        // the inner packet untouched, and a sent frame a valid IPv4
        // header checksum.
        if let Some(gre) = &case.gre {
            if frame.get(gre.clone()) != case.input.get(gre.clone()) {
                out.push(format!("[{d}] GRE or inner bytes changed"));
            } else if !gre_checksum_ok(&frame[gre.clone()]) {
                out.push(format!("[{d}] GRE checksum invalid after forwarding"));
            }
        }
        if let Some(msg) = outer_ipv4_checksum_problem(&frame) {
            out.push(format!("[{d}] {msg}"));
        }
    }
    out
}

/// For an IPv4 frame (tagged or not), checks the header checksum against
/// etherparse's full recompute.
fn outer_ipv4_checksum_problem(frame: &[u8]) -> Option<String> {
    let (eth, rest) = Ethernet2Header::from_slice(frame).ok()?;
    let (ether_type, l3) = if eth.ether_type == EtherType::VLAN_TAGGED_FRAME {
        let (vlan, rest) = etherparse::SingleVlanHeader::from_slice(rest).ok()?;
        (vlan.ether_type, rest)
    } else {
        (eth.ether_type, rest)
    };
    if ether_type != EtherType::IPV4 {
        return None;
    }
    let ip = Ipv4HeaderSlice::from_slice(l3).ok()?.to_header();
    let full = ip.calc_header_checksum();
    (full != ip.header_checksum).then(|| {
        format!(
            "outer IPv4 checksum {:#06x}, full recompute gives {full:#06x}",
            ip.header_checksum
        )
    })
}

#[test]
fn fixture_table() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut seen = HashSet::new();
    for case in &cases {
        if !seen.insert(case.description) {
            failures.push(format!("[{}] duplicate description", case.description));
        }
        // Fixture self-checks: frames neither forwarded nor answered are
        // expected back unchanged; GRE checksums in inputs are valid.
        if !case.expected.verdict.transmits() && case.output != case.input {
            failures.push(format!(
                "[{}] fixture bug: output differs from input",
                case.description
            ));
        }
        if let Some(gre) = &case.gre
            && case.input.len() >= gre.end
            && gre.len() >= 4
            && !gre_checksum_ok(&case.input[gre.clone()])
        {
            failures.push(format!(
                "[{}] fixture bug: input GRE checksum invalid",
                case.description
            ));
        }
        failures.extend(mismatches(case));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) across {} fixtures:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

/// Tallies of the table's expected verdicts, counted by hand: received,
/// forwarded, to the host, ICMP errors sent, and drops by reason (an
/// answered packet is dropped too).
type Tallies = (u64, u64, u64, u64, Vec<(DropReason, u64)>);

fn expected_tallies(cases: &[Case]) -> Tallies {
    let count = |v: Verdict| cases.iter().filter(|c| c.expected.verdict == v).count() as u64;
    let replies = DropReason::ALL.iter().map(|&r| count(Verdict::Reply(r)));
    (
        cases.len() as u64,
        count(Verdict::Forward),
        count(Verdict::ToHost),
        replies.sum(),
        DropReason::ALL
            .iter()
            .map(|&r| (r, count(Verdict::Drop(r)) + count(Verdict::Reply(r))))
            .collect(),
    )
}

fn compare_counters(what: &str, counters: &Counters, cases: &[Case]) -> Vec<String> {
    let (rx, forwarded, to_host, icmp_sent, dropped) = expected_tallies(cases);
    let mut problems = Vec::new();
    let mut check = |name: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("{what}: {name} = {got}, the table says {want}"));
        }
    };
    check("rx", counters.rx, rx);
    check("forwarded", counters.forwarded, forwarded);
    check("to_host", counters.to_host, to_host);
    check("icmp_sent", counters.icmp_sent, icmp_sent);
    for (reason, want) in dropped {
        check(
            &format!("dropped[{}]", reason.name()),
            counters.dropped(reason),
            want,
        );
    }
    problems
}

/// `Counters::record` over every case: first over the table's expected
/// verdicts (checks the counters' own bookkeeping), then over what
/// `process` actually returned (fails with the table if a case fails).
#[test]
fn counters_match_the_table() {
    let cases = cases();
    let mut problems = Vec::new();
    for (reason, n) in expected_tallies(&cases).4 {
        if n == 0 {
            problems.push(format!("the table has no {} case", reason.name()));
        }
    }
    let mut expected = Counters::default();
    let mut actual = Counters::default();
    for case in &cases {
        expected.record(case.expected.verdict);
        actual.record(run(case).0.verdict);
    }
    problems.extend(compare_counters("expected verdicts", &expected, &cases));
    problems.extend(compare_counters("actual verdicts", &actual, &cases));
    assert!(
        problems.is_empty(),
        "counter mismatches:\n  {}",
        problems.join("\n  ")
    );
}

/// The oracle and the builders agree with an independent parser: every
/// Forward and Reply case's input and output parse with etherparse, and
/// the output is addressed as the oracle says: to the backend, or back to
/// the packet's source.
#[test]
fn fixture_frames_parse_with_etherparse() {
    let mut problems = Vec::new();
    for case in cases() {
        if !case.expected.verdict.transmits() {
            continue;
        }
        for (which, bytes) in [("input", &case.input), ("output", &case.output)] {
            match etherparse::SlicedPacket::from_ethernet(bytes) {
                Ok(p) => {
                    let ok = matches!(
                        p.net,
                        Some(etherparse::NetSlice::Ipv4(_)) | Some(etherparse::NetSlice::Ipv6(_))
                    );
                    if !ok {
                        problems.push(format!("[{}] {which}: no IP layer", case.description));
                    }
                }
                Err(err) => problems.push(format!("[{}] {which}: {err}", case.description)),
            }
        }
        let addresses = |frame: &[u8]| {
            let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
            match &p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => Some((
                    IpAddr::from(ip.header().source_addr()),
                    IpAddr::from(ip.header().destination_addr()),
                )),
                Some(etherparse::NetSlice::Ipv6(ip)) => Some((
                    IpAddr::from(ip.header().source_addr()),
                    IpAddr::from(ip.header().destination_addr()),
                )),
                _ => None,
            }
        };
        let (Some((sender, _)), Some((_, dst))) = (addresses(&case.input), addresses(&case.output))
        else {
            continue;
        };
        let want = match case.expected.verdict {
            Verdict::Reply(_) => Some(sender),
            _ => case.expected.backend,
        };
        if Some(dst) != want {
            problems.push(format!(
                "[{}] oracle output addressed to {dst}",
                case.description
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A consistent IPv4 packet from the client to VIP A carrying only the
/// first 12 bytes of a TCP header.
fn truncated_tcp_v4() -> Vec<u8> {
    let tcp = tcp_segment(CLIENT_V4.into(), VIP_A4.into(), 40000, 443, &[], &[]);
    let h = Ipv4Header::new(
        0,
        64,
        etherparse::IpNumber::TCP,
        CLIENT_V4.octets(),
        VIP_A4.octets(),
    )
    .unwrap();
    ipv4_packet(h, &tcp[..12])
}
