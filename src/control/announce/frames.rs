//! The frames that announce an address on a LAN (gratuitous ARP, unsolicited
//! NA) or check whether anyone else holds it (ARP probe, DAD solicitation),
//! and a classifier for the ARP and neighbour-discovery frames we hear.

use crate::wire::ethernet::{self, Address, ethertype};
use crate::wire::{arp, ip_proto, ipv6, ndp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The shortest Ethernet frame without its FCS; ARP frames are padded to it.
pub const MIN_FRAME_LEN: usize = 60;
/// RFC 4861 §7.1: neighbour discovery is only valid from on-link.
const ND_HOP_LIMIT: u8 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A gratuitous ARP request (RFC 5944 §4.6): broadcast, sender and target
/// IP both `addr`, target MAC zero.
pub fn arp_announcement(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    arp_request(mac, addr, addr)
}

/// An ARP probe (RFC 5227 §2.1.1): broadcast request for `addr` from the
/// unspecified sender IP, target MAC zero.
pub fn arp_probe(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    arp_request(mac, Ipv4Addr::UNSPECIFIED, addr)
}

/// An unsolicited Neighbour Advertisement (RFC 4861 §7.2.6) from `addr` to
/// all nodes: R=0 S=0 O=1, with `mac` as the target link-layer address.
pub fn na_announcement(mac: [u8; 6], addr: Ipv6Addr) -> Vec<u8> {
    let na = ndp::Repr {
        kind: ndp::Kind::Advert {
            router: false,
            solicited: false,
            override_flag: true,
        },
        target: addr,
        link_layer: Some(Address(mac)),
    };
    nd_frame(mac, addr, ALL_NODES, na)
}

/// A duplicate-address-detection Neighbour Solicitation (RFC 4862 §5.4.2)
/// for `addr`: from ::, to its solicited-node group, and (as §5.4.2
/// requires with an unspecified source) without a link-layer option.
pub fn ns_probe(mac: [u8; 6], addr: Ipv6Addr) -> Vec<u8> {
    let ns = ndp::Repr {
        kind: ndp::Kind::Solicit,
        target: addr,
        link_layer: None,
    };
    nd_frame(mac, Ipv6Addr::UNSPECIFIED, solicited_node(addr), ns)
}

/// The solicited-node multicast group of `addr`, ff02::1:ffXX:XXXX
/// (RFC 4291 §2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    let mut group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0).octets();
    group[13..].copy_from_slice(&o[13..]);
    Ipv6Addr::from(group)
}

/// The Ethernet group an IPv6 multicast address maps to: 33:33 and its low
/// 32 bits (RFC 2464 §7).
fn multicast_mac(group: Ipv6Addr) -> Address {
    let o = group.octets();
    Address([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Every emit below writes into a buffer sized from its own repr, so none
/// can fail; a failure would be a bug here, not bad input.
fn emitted(result: crate::wire::Result<()>) {
    result.expect("frame buffer sized from its reprs");
}

fn arp_request(mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let eth = ethernet::Repr {
        dst: Address::BROADCAST,
        src: Address(mac),
        vlan: None,
        ethertype: ethertype::ARP,
    };
    let arp = arp::Repr {
        operation: arp::Operation::Request,
        sender_hw: Address(mac),
        sender_ip,
        target_hw: Address([0; 6]),
        target_ip,
    };
    // The padding stays zero.
    let mut frame = vec![0; MIN_FRAME_LEN.max(eth.header_len() + arp::PACKET_LEN)];
    emitted(eth.emit(&mut frame));
    emitted(arp.emit(&mut frame[eth.header_len()..]));
    frame
}

fn nd_frame(mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, nd: ndp::Repr) -> Vec<u8> {
    let eth = ethernet::Repr {
        dst: multicast_mac(dst),
        src: Address(mac),
        vlan: None,
        ethertype: ethertype::IPV6,
    };
    let ip = ipv6::Repr {
        src,
        dst,
        next_header: ip_proto::ICMPV6,
        payload_len: nd.buffer_len(),
        hop_limit: ND_HOP_LIMIT,
    };
    let l3 = eth.header_len();
    let l4 = l3 + ip.header_len();
    let mut frame = vec![0; (l4 + nd.buffer_len()).max(MIN_FRAME_LEN)];
    emitted(eth.emit(&mut frame));
    emitted(ip.emit(&mut frame[l3..]));
    emitted(nd.emit(&mut frame[l4..], &src.octets(), &dst.octets()));
    frame
}

/// An ARP or neighbour-discovery message heard on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// The address the message is about (see `Kind`).
    pub addr: IpAddr,
    /// The link-layer address claiming or asking for it.
    pub mac: [u8; 6],
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Someone tells the whole LAN it holds `addr`: gratuitous ARP, or an
    /// unsolicited NA to a multicast group.
    Announcement,
    /// Someone answers for `addr`, which it holds.
    Reply,
    /// Someone answers our ARP probe for `addr`: a reply to 0.0.0.0
    /// addressed to our MAC.
    ProbeAnswer,
    /// Someone holding `addr` asks about another address.
    Request,
    /// Someone checks whether `addr` is free before taking it: an ARP probe
    /// or a DAD solicitation.
    Probe,
}

/// Classifies an untagged Ethernet frame carrying ARP (Ethernet/IPv4) or an
/// ICMPv6 NS/NA directly after the IPv6 header; None for anything else,
/// including tagged frames, bad checksums, hop limits other than 255,
/// multicast NS/NA targets and ARP probes for 0.0.0.0.
pub fn parse(frame: &[u8], ours: [u8; 6]) -> Option<Heard> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.is_tagged() {
        return None;
    }
    match eth.ethertype() {
        ethertype::ARP => parse_arp(&eth, ours),
        ethertype::IPV6 => parse_nd(&eth),
        _ => None,
    }
}

fn parse_arp(eth: &ethernet::Frame<&[u8]>, ours: [u8; 6]) -> Option<Heard> {
    let p = arp::Packet::new_checked(eth.payload()).ok()?;
    let (sender, target) = (p.sender_ip(), p.target_ip());
    let op = p.operation();
    if let arp::Operation::Unknown(_) = op {
        return None;
    }
    if sender.is_unspecified() {
        return (!target.is_unspecified()).then_some(Heard {
            addr: IpAddr::V4(target),
            mac: p.sender_hw().0,
            kind: Kind::Probe,
        });
    }
    // A unicast reply with sender == target is a host answering our
    // gratuitous request, not an announcement of its own.
    let kind = if eth.dst().is_multicast() && sender == target {
        Kind::Announcement
    } else if op == arp::Operation::Reply && target.is_unspecified() && eth.dst().0 == ours {
        // Flooded to us, it answers someone else's probe: a plain reply.
        Kind::ProbeAnswer
    } else if op == arp::Operation::Reply {
        Kind::Reply
    } else {
        Kind::Request
    };
    Some(Heard {
        addr: IpAddr::V4(sender),
        mac: p.sender_hw().0,
        kind,
    })
}

fn parse_nd(eth: &ethernet::Frame<&[u8]>) -> Option<Heard> {
    let ip = ipv6::Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != ip_proto::ICMPV6 || ip.hop_limit() != ND_HOP_LIMIT {
        return None;
    }
    let nd = ndp::Packet::new_checked(ip.payload()).ok()?;
    let (src, dst) = (ip.src(), ip.dst());
    // RFC 4861 §7.1.1, §7.1.2: a multicast target is invalid.
    if !nd.verify_checksum(&src.octets(), &dst.octets()) || nd.target().is_multicast() {
        return None;
    }
    let lladdr = nd.link_layer().unwrap_or(eth.src()).0;
    let heard = if nd.is_advert() {
        let unsolicited = dst.is_multicast() && !nd.solicited();
        Heard {
            addr: IpAddr::V6(nd.target()),
            mac: lladdr,
            kind: if unsolicited {
                Kind::Announcement
            } else {
                Kind::Reply
            },
        }
    } else if src.is_unspecified() {
        Heard {
            addr: IpAddr::V6(nd.target()),
            mac: eth.src().0,
            kind: Kind::Probe,
        }
    } else {
        Heard {
            addr: IpAddr::V6(src),
            mac: lladdr,
            kind: Kind::Request,
        }
    };
    Some(heard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::icmpv6::{Icmpv6PayloadSlice, NdpOptionSlice, NeighborAdvertisementHeader};
    use etherparse::{
        ArpEthIpv4Packet, ArpOperation, EtherType, Icmpv6Slice, Icmpv6Type, IpNumber, LinkSlice,
        NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId,
    };
    use proptest::prelude::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const PEER: [u8; 6] = [0x02, 0x66, 0x77, 0x88, 0x99, 0xaa];
    const OTHER: [u8; 6] = [0x02, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb];
    const BROADCAST: [u8; 6] = [0xff; 6];

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// The oracle's view of an Ethernet/ARP frame: (dst, src, ARP).
    fn oracle_arp(frame: &[u8]) -> ([u8; 6], [u8; 6], ArpEthIpv4Packet) {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = p.link else {
            panic!("no Ethernet II header");
        };
        assert_eq!(eth.ether_type(), EtherType::ARP);
        assert!(p.link_exts.is_empty(), "untagged");
        let Some(NetSlice::Arp(arp)) = p.net else {
            panic!("no ARP");
        };
        let arp = arp.to_packet().try_eth_ipv4().unwrap();
        (eth.destination(), eth.source(), arp)
    }

    /// The oracle's view of an Ethernet/IPv6/ICMPv6 frame.
    struct OracleNd<'a> {
        eth_dst: [u8; 6],
        eth_src: [u8; 6],
        ip_src: Ipv6Addr,
        ip_dst: Ipv6Addr,
        hop_limit: u8,
        icmp: Icmpv6Slice<'a>,
    }

    fn oracle_nd(frame: &[u8]) -> OracleNd<'_> {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = p.link else {
            panic!("no Ethernet II header");
        };
        assert_eq!(eth.ether_type(), EtherType::IPV6);
        let Some(NetSlice::Ipv6(ip)) = p.net else {
            panic!("no IPv6");
        };
        assert_eq!(ip.header().next_header(), IpNumber::IPV6_ICMP);
        assert!(ip.extensions().is_empty());
        let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("no ICMPv6");
        };
        OracleNd {
            eth_dst: eth.destination(),
            eth_src: eth.source(),
            ip_src: ip.header().source_addr(),
            ip_dst: ip.header().destination_addr(),
            hop_limit: ip.header().hop_limit(),
            icmp,
        }
    }

    #[test]
    fn arp_announcement_is_a_padded_broadcast_gratuitous_request() {
        let addr = v4("192.0.2.10");
        let f = arp_announcement(MAC, addr);
        assert_eq!(f.len(), 60);
        assert!(f[42..].iter().all(|&b| b == 0), "zero padding");
        let (dst, src, arp) = oracle_arp(&f);
        assert_eq!((dst, src), (BROADCAST, MAC));
        assert_eq!(arp.operation, ArpOperation::REQUEST);
        assert_eq!(arp.sender_mac, MAC);
        assert_eq!(arp.sender_ipv4_addr(), addr);
        assert_eq!(arp.target_mac, [0; 6]);
        assert_eq!(arp.target_ipv4_addr(), addr);
    }

    #[test]
    fn arp_probe_is_a_padded_broadcast_request_from_0_0_0_0() {
        let addr = v4("192.0.2.11");
        let f = arp_probe(MAC, addr);
        assert_eq!(f.len(), 60);
        assert!(f[42..].iter().all(|&b| b == 0), "zero padding");
        let (dst, src, arp) = oracle_arp(&f);
        assert_eq!((dst, src), (BROADCAST, MAC));
        assert_eq!(arp.operation, ArpOperation::REQUEST);
        assert_eq!(arp.sender_mac, MAC);
        assert_eq!(arp.sender_ipv4_addr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(arp.target_mac, [0; 6]);
        assert_eq!(arp.target_ipv4_addr(), addr);
    }

    #[test]
    fn na_announcement_is_unsolicited_override_to_all_nodes_with_tlla() {
        let addr = v6("2001:db8::10");
        let f = na_announcement(MAC, addr);
        assert_eq!(f.len(), 14 + 40 + 32);
        let o = oracle_nd(&f);
        assert_eq!(o.eth_dst, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(o.eth_src, MAC);
        assert_eq!((o.ip_src, o.ip_dst), (addr, v6("ff02::1")));
        assert_eq!(o.hop_limit, 255);
        assert!(o.icmp.is_checksum_valid(addr.octets(), ALL_NODES.octets()));
        let Icmpv6Type::NeighborAdvertisement(h) = o.icmp.icmp_type() else {
            panic!("{:?}", o.icmp.icmp_type());
        };
        assert!(!h.router && !h.solicited && h.r#override);
        let Ok(Icmpv6PayloadSlice::NeighborAdvertisement(na)) = o.icmp.payload_slice() else {
            panic!("no NA payload");
        };
        assert_eq!(na.target_address(), addr);
        let opts: Vec<_> = na.options_iterator().collect();
        assert_eq!(opts.len(), 1, "{opts:?}");
        let Ok(NdpOptionSlice::TargetLinkLayerAddress(tlla)) = &opts[0] else {
            panic!("{opts:?}");
        };
        assert_eq!(tlla.link_layer_address(), MAC);
        // A second oracle for the checksum.
        let icmp = pnet_packet::icmpv6::Icmpv6Packet::new(&f[54..]).unwrap();
        assert_eq!(
            pnet_packet::icmpv6::checksum(&icmp, &addr, &ALL_NODES),
            icmp.get_checksum()
        );
    }

    #[test]
    fn ns_probe_is_a_dad_solicitation_to_the_solicited_node_group() {
        let addr = v6("2001:db8::abcd:1234:5678");
        let f = ns_probe(MAC, addr);
        assert_eq!(f.len(), 14 + 40 + 24);
        let o = oracle_nd(&f);
        let group = v6("ff02::1:ff34:5678");
        assert_eq!(o.eth_dst, [0x33, 0x33, 0xff, 0x34, 0x56, 0x78]);
        assert_eq!(o.eth_src, MAC);
        assert_eq!((o.ip_src, o.ip_dst), (Ipv6Addr::UNSPECIFIED, group));
        assert_eq!(o.hop_limit, 255);
        assert!(
            o.icmp
                .is_checksum_valid(Ipv6Addr::UNSPECIFIED.octets(), group.octets())
        );
        assert_eq!(o.icmp.icmp_type(), Icmpv6Type::NeighborSolicitation);
        assert_eq!(o.icmp.bytes5to8(), [0; 4], "reserved is zero");
        let Ok(Icmpv6PayloadSlice::NeighborSolicitation(ns)) = o.icmp.payload_slice() else {
            panic!("no NS payload");
        };
        assert_eq!(ns.target_address(), addr);
        assert!(ns.options().is_empty(), "no SLLA from ::");
        let icmp = pnet_packet::icmpv6::Icmpv6Packet::new(&f[54..]).unwrap();
        assert_eq!(
            pnet_packet::icmpv6::checksum(&icmp, &Ipv6Addr::UNSPECIFIED, &group),
            icmp.get_checksum()
        );
    }

    #[test]
    fn our_own_frames_parse_as_announcements_and_probes() {
        let a4 = v4("192.0.2.12");
        let a6 = v6("2001:db8::12");
        let heard = |addr, kind| {
            Some(Heard {
                addr,
                mac: MAC,
                kind,
            })
        };
        assert_eq!(
            parse(&arp_announcement(MAC, a4), MAC),
            heard(IpAddr::V4(a4), Kind::Announcement)
        );
        assert_eq!(
            parse(&arp_probe(MAC, a4), MAC),
            heard(IpAddr::V4(a4), Kind::Probe)
        );
        assert_eq!(
            parse(&na_announcement(MAC, a6), MAC),
            heard(IpAddr::V6(a6), Kind::Announcement)
        );
        assert_eq!(
            parse(&ns_probe(MAC, a6), MAC),
            heard(IpAddr::V6(a6), Kind::Probe)
        );
    }

    // Frames built by the oracle, for parse().

    fn arp_frame(
        eth_dst: [u8; 6],
        op: ArpOperation,
        sender: (&[u8; 6], &str),
        target: (&[u8; 6], &str),
    ) -> Vec<u8> {
        let arp = ArpEthIpv4Packet {
            operation: op,
            sender_mac: *sender.0,
            sender_ipv4: v4(sender.1).octets(),
            target_mac: *target.0,
            target_ipv4: v4(target.1).octets(),
        };
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER, eth_dst)
            .arp(arp.into())
            .write_to_vec(&mut f)
            .unwrap();
        f.resize(60, 0);
        f
    }

    fn lladdr_option(ty: u8, mac: [u8; 6]) -> Vec<u8> {
        let mut o = vec![ty, 1];
        o.extend_from_slice(&mac);
        o
    }

    fn icmpv6_frame(
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        ty: Icmpv6Type,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER, eth_dst)
            .ipv6(src.octets(), dst.octets(), hop_limit)
            .icmpv6(ty)
            .write_to_vec(&mut f, payload)
            .unwrap();
        f
    }

    fn na_frame(
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        solicited: bool,
        target: Ipv6Addr,
        tlla: Option<[u8; 6]>,
    ) -> Vec<u8> {
        let mut payload = target.octets().to_vec();
        if let Some(mac) = tlla {
            payload.extend(lladdr_option(2, mac));
        }
        let h = NeighborAdvertisementHeader {
            router: false,
            solicited,
            r#override: true,
        };
        icmpv6_frame(
            eth_dst,
            src,
            dst,
            255,
            Icmpv6Type::NeighborAdvertisement(h),
            &payload,
        )
    }

    fn ns_frame(
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        slla: Option<[u8; 6]>,
    ) -> Vec<u8> {
        let mut payload = target.octets().to_vec();
        if let Some(mac) = slla {
            payload.extend(lladdr_option(1, mac));
        }
        icmpv6_frame(
            eth_dst,
            src,
            dst,
            255,
            Icmpv6Type::NeighborSolicitation,
            &payload,
        )
    }

    fn heard(addr: &str, mac: [u8; 6], kind: Kind) -> Option<Heard> {
        Some(Heard {
            addr: addr.parse().unwrap(),
            mac,
            kind,
        })
    }

    #[test]
    fn arp_from_the_oracle_is_classified() {
        let z = [0u8; 6];
        let cases = [
            (
                "probe",
                arp_frame(
                    BROADCAST,
                    ArpOperation::REQUEST,
                    (&PEER, "0.0.0.0"),
                    (&z, "10.0.0.5"),
                ),
                heard("10.0.0.5", PEER, Kind::Probe),
            ),
            (
                "gratuitous request",
                arp_frame(
                    BROADCAST,
                    ArpOperation::REQUEST,
                    (&PEER, "10.0.0.6"),
                    (&z, "10.0.0.6"),
                ),
                heard("10.0.0.6", PEER, Kind::Announcement),
            ),
            (
                "gratuitous reply",
                arp_frame(
                    BROADCAST,
                    ArpOperation::REPLY,
                    (&PEER, "10.0.0.6"),
                    (&PEER, "10.0.0.6"),
                ),
                heard("10.0.0.6", PEER, Kind::Announcement),
            ),
            (
                "unicast reply to our gratuitous request",
                arp_frame(
                    MAC,
                    ArpOperation::REPLY,
                    (&PEER, "10.0.0.6"),
                    (&MAC, "10.0.0.6"),
                ),
                heard("10.0.0.6", PEER, Kind::Reply),
            ),
            (
                "reply",
                arp_frame(
                    MAC,
                    ArpOperation::REPLY,
                    (&PEER, "10.0.0.7"),
                    (&MAC, "10.0.0.1"),
                ),
                heard("10.0.0.7", PEER, Kind::Reply),
            ),
            (
                "Linux's reply to our probe, addressed to 0.0.0.0",
                arp_frame(
                    MAC,
                    ArpOperation::REPLY,
                    (&PEER, "10.0.0.7"),
                    (&MAC, "0.0.0.0"),
                ),
                heard("10.0.0.7", PEER, Kind::ProbeAnswer),
            ),
            (
                "a reply to someone else's probe, flooded to us",
                arp_frame(
                    PEER,
                    ArpOperation::REPLY,
                    (&PEER, "10.0.0.7"),
                    (&PEER, "0.0.0.0"),
                ),
                heard("10.0.0.7", PEER, Kind::Reply),
            ),
            (
                "request",
                arp_frame(
                    BROADCAST,
                    ArpOperation::REQUEST,
                    (&PEER, "10.0.0.8"),
                    (&z, "10.0.0.1"),
                ),
                heard("10.0.0.8", PEER, Kind::Request),
            ),
            (
                "unicast request (a refresh)",
                arp_frame(
                    MAC,
                    ArpOperation::REQUEST,
                    (&PEER, "10.0.0.8"),
                    (&MAC, "10.0.0.1"),
                ),
                heard("10.0.0.8", PEER, Kind::Request),
            ),
            (
                "unknown operation",
                arp_frame(
                    BROADCAST,
                    ArpOperation(3),
                    (&PEER, "10.0.0.8"),
                    (&z, "10.0.0.8"),
                ),
                None,
            ),
        ];
        for (what, frame, want) in cases {
            assert_eq!(parse(&frame, MAC), want, "{what}");
        }
    }

    #[test]
    fn neighbour_discovery_from_the_oracle_is_classified() {
        let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
        let peer = v6("2001:db8::2");
        let target = v6("2001:db8::20");
        let us = v6("2001:db8::1");
        let cases = [
            (
                "unsolicited NA to all nodes",
                na_frame(all_nodes_mac, target, ALL_NODES, false, target, Some(OTHER)),
                heard("2001:db8::20", OTHER, Kind::Announcement),
            ),
            (
                "unsolicited NA without TLLA: Ethernet source",
                na_frame(all_nodes_mac, target, ALL_NODES, false, target, None),
                heard("2001:db8::20", PEER, Kind::Announcement),
            ),
            (
                "solicited NA to us",
                na_frame(MAC, peer, us, true, target, Some(OTHER)),
                heard("2001:db8::20", OTHER, Kind::Reply),
            ),
            (
                "solicited NA to all nodes (an answer to DAD)",
                na_frame(all_nodes_mac, peer, ALL_NODES, true, target, Some(OTHER)),
                heard("2001:db8::20", OTHER, Kind::Reply),
            ),
            (
                "unsolicited NA to us, unicast",
                na_frame(MAC, peer, us, false, target, None),
                heard("2001:db8::20", PEER, Kind::Reply),
            ),
            (
                "DAD solicitation",
                ns_frame(
                    [0x33, 0x33, 0xff, 0, 0, 0x20],
                    Ipv6Addr::UNSPECIFIED,
                    solicited_node(target),
                    target,
                    None,
                ),
                heard("2001:db8::20", PEER, Kind::Probe),
            ),
            (
                "address resolution with SLLA",
                ns_frame(
                    [0x33, 0x33, 0xff, 0, 0, 0x20],
                    peer,
                    solicited_node(target),
                    target,
                    Some(OTHER),
                ),
                heard("2001:db8::2", OTHER, Kind::Request),
            ),
            (
                "unicast NUD solicitation without SLLA",
                ns_frame(MAC, peer, us, us, None),
                heard("2001:db8::2", PEER, Kind::Request),
            ),
        ];
        for (what, frame, want) in cases {
            assert_eq!(parse(&frame, MAC), want, "{what}");
        }
    }

    #[test]
    fn invalid_or_foreign_frames_are_none() {
        let target = v6("2001:db8::20");
        let good = na_frame(
            [0x33, 0x33, 0, 0, 0, 1],
            target,
            ALL_NODES,
            false,
            target,
            Some(OTHER),
        );
        assert!(parse(&good, MAC).is_some());

        let mut hop = Vec::new();
        PacketBuilder::ethernet2(PEER, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(target.octets(), ALL_NODES.octets(), 254)
            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                NeighborAdvertisementHeader {
                    router: false,
                    solicited: false,
                    r#override: true,
                },
            ))
            .write_to_vec(&mut hop, &target.octets())
            .unwrap();
        assert_eq!(parse(&hop, MAC), None, "hop limit 254");

        let mut bad_sum = good.clone();
        bad_sum[56] ^= 1;
        assert_eq!(parse(&bad_sum, MAC), None, "checksum");

        let multicast_target = na_frame(
            [0x33, 0x33, 0, 0, 0, 1],
            target,
            ALL_NODES,
            false,
            ALL_NODES,
            None,
        );
        assert_eq!(parse(&multicast_target, MAC), None, "multicast target");

        let echo = icmpv6_frame(
            [0x33, 0x33, 0, 0, 0, 1],
            target,
            ALL_NODES,
            255,
            Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 }),
            &[0; 16],
        );
        assert_eq!(parse(&echo, MAC), None, "echo request");

        let mut udp = Vec::new();
        PacketBuilder::ethernet2(PEER, BROADCAST)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 255], 64)
            .udp(1, 2)
            .write_to_vec(&mut udp, &[0; 32])
            .unwrap();
        assert_eq!(parse(&udp, MAC), None, "IPv4 UDP");

        // A Hop-by-Hop header before the ICMPv6 (as MLD has) is not ours.
        let mut hbh = good.clone();
        let icmp = hbh.split_off(54);
        hbh.extend_from_slice(&[ip_proto::ICMPV6, 0, 5, 2, 0, 0, 1, 0]);
        hbh.extend_from_slice(&icmp);
        hbh[20] = ip_proto::HOPOPT;
        hbh[18..20].copy_from_slice(&((icmp.len() + 8) as u16).to_be_bytes());
        assert_eq!(parse(&hbh, MAC), None, "extension header");

        for n in 0..good.len() {
            assert_eq!(parse(&good[..n], MAC), None, "cut at {n}");
        }
        let arp = arp_announcement(MAC, v4("10.0.0.9"));
        for n in 0..42 {
            assert_eq!(parse(&arp[..n], MAC), None, "cut at {n}");
        }
    }

    #[test]
    fn vlan_tagged_frames_are_none() {
        let arp = ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: PEER,
            sender_ipv4: [10, 0, 0, 6],
            target_mac: [0; 6],
            target_ipv4: [10, 0, 0, 6],
        };
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER, BROADCAST)
            .single_vlan(VlanId::try_new(100).unwrap())
            .arp(arp.into())
            .write_to_vec(&mut f)
            .unwrap();
        assert_eq!(&f[12..14], &[0x81, 0x00]);
        assert_eq!(parse(&f, MAC), None);
        let target = v6("2001:db8::20");
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER, [0x33, 0x33, 0, 0, 0, 1])
            .single_vlan(VlanId::try_new(100).unwrap())
            .ipv6(target.octets(), ALL_NODES.octets(), 255)
            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                NeighborAdvertisementHeader {
                    router: false,
                    solicited: false,
                    r#override: true,
                },
            ))
            .write_to_vec(&mut f, &target.octets())
            .unwrap();
        assert_eq!(parse(&f, MAC), None);
    }

    #[test]
    fn solicited_node_keeps_the_low_24_bits() {
        assert_eq!(
            solicited_node(v6("fe80::1234:5678:9abc")),
            v6("ff02::1:ff78:9abc")
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes, MAC);
        }

        // Mutations of valid frames get past the early checks far more often.
        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let mut f = match which {
                0 => arp_announcement(MAC, v4("10.0.0.9")),
                1 => arp_probe(MAC, v4("10.0.0.9")),
                2 => na_announcement(MAC, v6("2001:db8::9")),
                _ => ns_probe(MAC, v6("2001:db8::9")),
            };
            for (at, byte) in edits {
                let n = f.len();
                f[at % n] = byte;
            }
            f.truncate(cut % (f.len() + 1));
            let _ = parse(&f, MAC);
        }
    }
}
