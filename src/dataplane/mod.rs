//! One frame in, one verdict out.
//!
//! `process` is a pure function of a mutable frame and a read-only
//! `Context`. It never allocates, locks, logs or makes a syscall; callers
//! count its verdicts in `Counters`. Everything is decided before the frame
//! is touched, so a frame that is not forwarded is left byte-identical.

pub mod conntrack;
pub mod flow;
pub mod neighbours;
pub mod tables;
pub mod worker;

use crate::wire::{self, ethernet, gre, icmp, ip_proto, ipv4, ipv6, tcp, udp};
use core::net::IpAddr;
pub use neighbours::Neighbours;
pub use tables::{Service, Tables};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place; send it back out of the same device.
    Forward,
    /// Not load-balanced traffic: hand it to the host stack unchanged.
    ToHost,
    /// Ours, but it cannot be forwarded.
    Drop(DropReason),
}

/// Why a frame addressed to us was dropped. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The outer IP header is a fragment; we do not reassemble.
    OuterFragment,
    /// Outer TTL or hop limit was 0 or 1.
    TtlExpired,
    /// GRE header shorter than its flags announce.
    MalformedGre,
    /// The encapsulated IP or transport header is invalid or truncated.
    MalformedInner,
    /// More IPv6 extension headers than we walk.
    Ipv6ExtHeaders,
    /// Inner destination is no VIP and there is no default set.
    UnknownVip,
    /// The service has no backend (of the outer family) with weight > 0.
    NoBackend,
    /// The backend's next hop has no neighbour entry yet.
    NoNeighbour,
}

impl DropReason {
    pub const COUNT: usize = 8;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::OuterFragment,
        DropReason::TtlExpired,
        DropReason::MalformedGre,
        DropReason::MalformedInner,
        DropReason::Ipv6ExtHeaders,
        DropReason::UnknownVip,
        DropReason::NoBackend,
        DropReason::NoNeighbour,
    ];

    /// Stable label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::OuterFragment => "outer_fragment",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::MalformedGre => "malformed_gre",
            DropReason::MalformedInner => "malformed_inner",
            DropReason::Ipv6ExtHeaders => "ipv6_ext_headers",
            DropReason::UnknownVip => "unknown_vip",
            DropReason::NoBackend => "no_backend",
            DropReason::NoNeighbour => "no_neighbour",
        }
    }
}

/// A verdict, plus the backend chosen: set for `Forward`, and for
/// `Drop(NoNeighbour)` so the caller can ask for the next hop to be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub backend: Option<IpAddr>,
    /// The backend's tracking id, when its service is tracked.
    pub id: Option<u16>,
    pub track: Track,
}

/// What connection tracking did for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Not looked up: not a flow of ours, tracking off, or an untracked service.
    Off,
    /// The flow was tracked on a backend that is still listed.
    Hit,
    /// New (or its backend is down or gone): picked from the Maglev table.
    Miss,
}

impl Outcome {
    pub const TO_HOST: Outcome = Outcome::of(Verdict::ToHost, None);

    /// An untracked outcome.
    pub const fn of(verdict: Verdict, backend: Option<IpAddr>) -> Outcome {
        Outcome {
            verdict,
            backend,
            id: None,
            track: Track::Off,
        }
    }

    const fn drop(reason: DropReason) -> Outcome {
        Outcome::of(Verdict::Drop(reason), None)
    }
}

/// Per-worker counters. Plain integers: each worker owns its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx: u64,
    pub forwarded: u64,
    pub to_host: u64,
    pub dropped: [u64; DropReason::COUNT],
    pub flow_hits: u64,
    pub flow_misses: u64,
}

impl Counters {
    #[inline]
    pub fn record(&mut self, verdict: Verdict) {
        self.rx += 1;
        match verdict {
            Verdict::Forward => self.forwarded += 1,
            Verdict::ToHost => self.to_host += 1,
            Verdict::Drop(r) => self.dropped[r as usize] += 1,
        }
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    #[inline]
    pub fn record_track(&mut self, track: Track) {
        match track {
            Track::Off => {}
            Track::Hit => self.flow_hits += 1,
            Track::Miss => self.flow_misses += 1,
        }
    }
}

/// What the data path reads: who we are, the tables, the neighbours.
pub struct Context<'a, N: Neighbours> {
    pub mac: ethernet::Address,
    /// This node's addresses: GRE to any of them is ours.
    pub local_v4: &'a [[u8; 4]],
    pub local_v6: &'a [[u8; 16]],
    /// The 802.1Q VLAN GRE traffic arrives on; None for untagged.
    pub vlan: Option<u16>,
    pub hasher: &'a flow::Hasher,
    pub tables: &'a Tables,
    pub neighbours: &'a N,
    /// Connection tracking; None when off.
    pub flows: Option<&'a conntrack::Table>,
    /// The tracking clock, in seconds (see `conntrack::clock`).
    pub now: u16,
}

/// A frame that is ours, parsed and hashed, waiting for its backend.
struct Flow<'t> {
    /// Offset of the outer IP header.
    l3: usize,
    /// The node address it was sent to: the new outer source.
    local: Addr,
    service: &'t Service,
    /// Outer family: which of the service's tables applies.
    v6: bool,
    hash: u64,
}

/// An address as the header holds it.
#[derive(Clone, Copy)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Decides the fate of one frame and, for `Forward`, rewrites it in place.
#[inline]
pub fn process<N: Neighbours>(frame: &mut [u8], ctx: &Context<'_, N>) -> Outcome {
    match classify(frame, ctx) {
        Ok(flow) => match choose(&flow, ctx) {
            Some((backend, id, track)) => {
                let mut out = forward(frame, &flow, backend, ctx);
                out.id = id;
                out.track = track;
                out
            }
            None => Outcome {
                track: if ctx.flows.is_some() && flow.service.tracked() {
                    Track::Miss
                } else {
                    Track::Off
                },
                ..Outcome::drop(DropReason::NoBackend)
            },
        },
        Err(outcome) => outcome,
    }
}

/// The tracked backend while it is still listed (up or draining), else
/// the Maglev pick, which is then tracked.
#[inline(always)]
fn choose<N: Neighbours>(
    flow: &Flow<'_>,
    ctx: &Context<'_, N>,
) -> Option<(IpAddr, Option<u16>, Track)> {
    let tracking = ctx.flows.filter(|_| flow.service.tracked());
    if let Some(flows) = tracking
        && let Some(id) = flows.lookup(flow.hash, ctx.now)
        && let Some(addr) = flow.service.tracked_backend(flow.v6, id)
    {
        return Some((addr, Some(id), Track::Hit));
    }
    let (addr, id) = flow.service.pick(flow.v6, flow.hash)?;
    match (tracking, id) {
        (Some(flows), Some(id)) => {
            flows.insert(flow.hash, id, ctx.now);
            Some((addr, Some(id), Track::Miss))
        }
        _ => Some((addr, id, Track::Off)),
    }
}

/// Is the frame ours, and if so its flow hash and table.
#[inline(always)]
fn classify<'t, N: Neighbours>(frame: &[u8], ctx: &Context<'t, N>) -> Result<Flow<'t>, Outcome> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| Outcome::TO_HOST)?;
    // VID 0 is a priority tag only (802.1p): the frame is untagged.
    if eth.vlan_id().filter(|&id| id != 0) != ctx.vlan {
        return Err(Outcome::TO_HOST);
    }
    let l3 = eth.header_len();
    match eth.ethertype() {
        ethernet::ethertype::IPV4 => {
            // A broken outer header is not provably ours: the host decides.
            let ip = ipv4::Packet::new_checked(eth.payload()).map_err(|_| Outcome::TO_HOST)?;
            let local = ip.dst_bytes();
            if ip.protocol() != ip_proto::GRE || !ctx.local_v4.contains(&local) {
                return Err(Outcome::TO_HOST);
            }
            if ip.is_fragment() {
                return Err(Outcome::drop(DropReason::OuterFragment));
            }
            let (hash, dst) = inner(ip.payload(), ip.ttl(), ctx.hasher)?;
            Ok(Flow {
                l3,
                local: Addr::V4(local),
                service: service(ctx.tables, dst)?,
                v6: false,
                hash,
            })
        }
        ethernet::ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(eth.payload()).map_err(|_| Outcome::TO_HOST)?;
            let local = ip.dst_bytes();
            // GRE directly after the fixed header; outer extension headers
            // are the host's business.
            if ip.next_header() != ip_proto::GRE || !ctx.local_v6.contains(&local) {
                return Err(Outcome::TO_HOST);
            }
            let (hash, dst) = inner(ip.payload(), ip.hop_limit(), ctx.hasher)?;
            Ok(Flow {
                l3,
                local: Addr::V6(local),
                service: service(ctx.tables, dst)?,
                v6: true,
                hash,
            })
        }
        _ => Err(Outcome::TO_HOST),
    }
}

/// Finds the next hop and rewrites the outer headers in place.
#[inline(always)]
fn forward<N: Neighbours>(
    frame: &mut [u8],
    flow: &Flow<'_>,
    backend: IpAddr,
    ctx: &Context<'_, N>,
) -> Outcome {
    let Some(mac) = ctx.neighbours.lookup(backend) else {
        return Outcome::of(Verdict::Drop(DropReason::NoNeighbour), Some(backend));
    };
    // `classify` validated these headers and the tables are per outer
    // family, so the fallbacks cannot happen; they leave the frame as it was
    // rather than send one we could not readdress.
    let l3 = frame.get_mut(flow.l3..).unwrap_or_default();
    match (flow.local, backend) {
        (Addr::V4(src), IpAddr::V4(dst)) => {
            let Ok(mut ip) = ipv4::Packet::new_checked(l3) else {
                return Outcome::TO_HOST;
            };
            ip.rewrite(src, dst.octets());
        }
        (Addr::V6(src), IpAddr::V6(dst)) => {
            let Ok(mut ip) = ipv6::Packet::new_checked(l3) else {
                return Outcome::TO_HOST;
            };
            let hop_limit = ip.hop_limit().wrapping_sub(1);
            ip.set_src(src);
            ip.set_dst(dst.octets());
            ip.set_hop_limit(hop_limit);
        }
        _ => return Outcome::drop(DropReason::NoBackend),
    }
    if let Ok(mut eth) = ethernet::Frame::new_checked(&mut *frame) {
        eth.set_src(ctx.mac);
        eth.set_dst(mac);
    }
    Outcome::of(Verdict::Forward, Some(backend))
}

#[inline]
fn service(tables: &Tables, dst: Addr) -> Result<&Service, Outcome> {
    match dst {
        Addr::V4(a) => tables.service_v4(a),
        Addr::V6(a) => tables.service_v6(a),
    }
    .ok_or(Outcome::drop(DropReason::UnknownVip))
}

/// Parses GRE and the packet inside it; returns the flow hash and the inner
/// destination. Always inlined: returned through memory, the result cost a
/// store-forwarding stall per packet.
#[inline(always)]
fn inner(gre_bytes: &[u8], ttl: u8, hasher: &flow::Hasher) -> Result<(u64, Addr), Outcome> {
    let gre =
        gre::Packet::new_checked(gre_bytes).map_err(|_| Outcome::drop(DropReason::MalformedGre))?;
    if !gre.is_supported() {
        return Err(Outcome::TO_HOST);
    }
    let protocol = gre.protocol();
    if protocol != gre::protocol::IPV4 && protocol != gre::protocol::IPV6 {
        return Err(Outcome::TO_HOST);
    }
    if ttl <= 1 {
        return Err(Outcome::drop(DropReason::TtlExpired));
    }
    let malformed = |_| Outcome::drop(DropReason::MalformedInner);
    if protocol == gre::protocol::IPV4 {
        let ip = ipv4::Packet::new_checked(gre.payload()).map_err(malformed)?;
        let (src, dst) = (ip.src_bytes(), ip.dst_bytes());
        if ip.is_fragment() {
            return Ok((hasher.v4(src, dst, ip.protocol(), 0), Addr::V4(dst)));
        }
        if ip.protocol() == ip_proto::ICMP {
            if let Some(hash) = icmp_error_v4(ip.payload(), dst, hasher) {
                return Ok((hash, Addr::V4(dst)));
            }
        }
        let ports = ports(ip.protocol(), ip.payload())?;
        Ok((hasher.v4(src, dst, ip.protocol(), ports), Addr::V4(dst)))
    } else {
        let ip = ipv6::Packet::new_checked(gre.payload()).map_err(malformed)?;
        let upper = ip.upper_layer().map_err(|e| match e {
            wire::Error::Unsupported => Outcome::drop(DropReason::Ipv6ExtHeaders),
            _ => Outcome::drop(DropReason::MalformedInner),
        })?;
        let (src, dst) = (ip.src_bytes(), ip.dst_bytes());
        if upper.fragment {
            return Ok((hasher.v6(src, dst, upper.protocol, 0), Addr::V6(dst)));
        }
        let l4 = ip.payload().get(upper.offset..).unwrap_or_default();
        if upper.protocol == ip_proto::ICMPV6 {
            if let Some(hash) = icmp_error_v6(l4, dst, hasher) {
                return Ok((hash, Addr::V6(dst)));
            }
        }
        let ports = ports(upper.protocol, l4)?;
        Ok((hasher.v6(src, dst, upper.protocol, ports), Addr::V6(dst)))
    }
}

/// An ICMP error about a packet a backend sent from the VIP, such as
/// "fragmentation needed" on the way back to the client, must reach that
/// backend or path MTU discovery breaks. Its quote holds the reply
/// (VIP -> client), so hash the flow as the client sent it: addresses and
/// ports swapped. None when it is not such an error: hash it as it is.
#[inline]
fn icmp_error_v4(l4: &[u8], vip: [u8; 4], hasher: &flow::Hasher) -> Option<u64> {
    let msg = icmp::Packet::new_checked(l4).ok()?;
    let t = msg.msg_type();
    if t != icmp::v4::DEST_UNREACHABLE
        && t != icmp::v4::TIME_EXCEEDED
        && t != icmp::v4::PARAMETER_PROBLEM
    {
        return None;
    }
    let quoted = ipv4::Packet::new_quoted(msg.payload()).ok()?;
    if quoted.src_bytes() != vip {
        return None;
    }
    let ports = quoted_ports(quoted.protocol(), quoted.is_fragment(), quoted.payload())?;
    Some(hasher.v4(quoted.dst_bytes(), vip, quoted.protocol(), ports))
}

/// `icmp_error_v4` for ICMPv6: unreachable, packet too big, time exceeded
/// and parameter problem.
#[inline]
fn icmp_error_v6(l4: &[u8], vip: [u8; 16], hasher: &flow::Hasher) -> Option<u64> {
    let msg = icmp::Packet::new_checked(l4).ok()?;
    if !(icmp::v6::DEST_UNREACHABLE..=icmp::v6::PARAMETER_PROBLEM).contains(&msg.msg_type()) {
        return None;
    }
    let quoted = ipv6::Packet::new_quoted(msg.payload()).ok()?;
    if quoted.src_bytes() != vip {
        return None;
    }
    let upper = quoted.upper_layer().ok()?;
    let l4 = quoted.payload().get(upper.offset..).unwrap_or_default();
    let ports = quoted_ports(upper.protocol, upper.fragment, l4)?;
    Some(hasher.v6(quoted.dst_bytes(), vip, upper.protocol, ports))
}

/// The client's ports for a quoted reply, as `ports` orders them; 0 (the
/// 3-tuple) for fragments and protocols without ports.
#[inline]
fn quoted_ports(protocol: u8, fragment: bool, l4: &[u8]) -> Option<u32> {
    match protocol {
        ip_proto::TCP | ip_proto::UDP if !fragment => {
            let (reply_src, reply_dst) = wire::ports(l4)?;
            Some(u32::from(reply_dst) << 16 | u32::from(reply_src))
        }
        _ => Some(0),
    }
}

/// `src_port << 16 | dst_port` for TCP and UDP; 0 (the 3-tuple) otherwise.
#[inline(always)]
fn ports(protocol: u8, l4: &[u8]) -> Result<u32, Outcome> {
    let malformed = |_| Outcome::drop(DropReason::MalformedInner);
    match protocol {
        ip_proto::TCP => {
            let t = tcp::Packet::new_checked(l4).map_err(malformed)?;
            Ok(u32::from(t.src_port()) << 16 | u32::from(t.dst_port()))
        }
        ip_proto::UDP => {
            let u = udp::Packet::new_checked(l4).map_err(malformed)?;
            Ok(u32::from(u.src_port()) << 16 | u32::from(u.dst_port()))
        }
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::Backend;
    use crate::wire::gre;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;

    const NODE: [u8; 4] = [172, 16, 0, 1];
    const MAC: ethernet::Address = ethernet::Address([2, 0, 0, 0, 0, 1]);
    const BACKEND_MAC: ethernet::Address = ethernet::Address([2, 0, 0, 0, 0, 2]);

    struct World {
        hasher: flow::Hasher,
        tables: Tables,
        neighbours: neighbours::Static,
    }

    /// Backends from (address, weight) pairs.
    fn set(backends: &[(&str, u32)]) -> Vec<Backend> {
        backends
            .iter()
            .map(|(a, w)| Backend {
                addr: a.parse().unwrap(),
                weight: *w,
            })
            .collect()
    }

    fn world(backends: &[&str]) -> World {
        let key = [1; 16];
        let weighted: Vec<(&str, u32)> = backends.iter().map(|a| (*a, 1)).collect();
        let set = set(&weighted);
        let entries = set.iter().map(|b| (b.addr, BACKEND_MAC)).collect();
        World {
            hasher: flow::Hasher::new(&key),
            tables: Tables::new(
                1,
                Some(Service::build(None, &set, &key, 251).unwrap()),
                Vec::new(),
            )
            .unwrap(),
            neighbours: neighbours::Static::new(entries, None),
        }
    }

    fn ctx(w: &World) -> Context<'_, neighbours::Static> {
        Context {
            mac: MAC,
            local_v4: &[NODE],
            local_v6: &[],
            vlan: None,
            hasher: &w.hasher,
            tables: &w.tables,
            neighbours: &w.neighbours,
            flows: None,
            now: 0,
        }
    }

    /// GRE to NODE carrying an inner IPv4/UDP datagram 10.0.0.9:1234 -> 192.0.2.1:53.
    fn gre_frame(ttl: u8) -> Vec<u8> {
        gre_flow(ttl, 1234)
    }

    /// `gre_frame` from inner source port `port`.
    fn gre_flow(ttl: u8, port: u16) -> Vec<u8> {
        let mut inner = vec![0u8; 28];
        ipv4::Repr {
            src: Ipv4Addr::new(10, 0, 0, 9),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            protocol: ip_proto::UDP,
            payload_len: 8,
            ttl: 64,
        }
        .emit(&mut inner)
        .unwrap();
        let [p0, p1] = port.to_be_bytes();
        inner[20..28].copy_from_slice(&[p0, p1, 0, 53, 0, 8, 0, 0]);
        let g = gre::Repr {
            protocol: gre::protocol::IPV4,
            checksum: false,
            key: Some(9),
            sequence: None,
        };
        let mut f = vec![0u8; 14 + 20 + g.header_len()];
        ethernet::Repr {
            dst: MAC,
            src: BACKEND_MAC,
            vlan: None,
            ethertype: ethernet::ethertype::IPV4,
        }
        .emit(&mut f)
        .unwrap();
        ipv4::Repr {
            src: Ipv4Addr::new(198, 51, 100, 1),
            dst: Ipv4Addr::from(NODE),
            protocol: ip_proto::GRE,
            payload_len: g.header_len() + inner.len(),
            ttl,
        }
        .emit(&mut f[14..])
        .unwrap();
        g.emit(&mut f[34..]).unwrap();
        f.extend_from_slice(&inner);
        f
    }

    #[test]
    fn forwards_gre_to_backend_rewriting_outer_headers_only() {
        let w = world(&["10.1.0.1"]);
        let input = gre_frame(64);
        let mut f = input.clone();
        let out = process(&mut f, &ctx(&w));
        assert_eq!(
            out,
            Outcome::of(Verdict::Forward, Some("10.1.0.1".parse().unwrap()))
        );
        let eth = ethernet::Frame::new_checked(&f[..]).unwrap();
        assert_eq!((eth.src(), eth.dst()), (MAC, BACKEND_MAC));
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.src_bytes(), NODE);
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(ip.ttl(), 63);
        assert!(ip.verify_checksum());
        assert_eq!(f[34..], input[34..]);
    }

    #[test]
    fn ttl_one_is_dropped_and_frame_left_alone() {
        let w = world(&["10.1.0.1"]);
        let input = gre_frame(1);
        let mut f = input.clone();
        assert_eq!(
            process(&mut f, &ctx(&w)).verdict,
            Verdict::Drop(DropReason::TtlExpired)
        );
        assert_eq!(f, input);
    }

    #[test]
    fn missing_neighbour_names_the_backend_to_resolve() {
        let mut w = world(&["10.1.0.1"]);
        w.neighbours = neighbours::Static::new(Vec::new(), None);
        let mut f = gre_frame(64);
        assert_eq!(
            process(&mut f, &ctx(&w)),
            Outcome::of(
                Verdict::Drop(DropReason::NoNeighbour),
                Some("10.1.0.1".parse().unwrap())
            )
        );
    }

    #[test]
    fn counters_count_each_verdict_and_reason() {
        let mut c = Counters::default();
        c.record(Verdict::Forward);
        c.record(Verdict::ToHost);
        c.record(Verdict::Drop(DropReason::NoBackend));
        c.record(Verdict::Drop(DropReason::NoBackend));
        c.record(Verdict::Drop(DropReason::NoNeighbour));
        assert_eq!((c.rx, c.forwarded, c.to_host), (5, 1, 1));
        assert_eq!(c.dropped(DropReason::NoBackend), 2);
        assert_eq!(c.dropped(DropReason::NoNeighbour), 1);
        assert_eq!(c.dropped(DropReason::TtlExpired), 0);
    }

    #[test]
    fn drop_reasons_are_listed_once_in_index_order_with_unique_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    /// The default set with tracking ids: a backend's id is its last octet.
    fn tracked(backends: &[(&str, u32)]) -> Tables {
        let set = set(backends);
        let id = |a: IpAddr| match a {
            IpAddr::V4(v4) => Some(u16::from(v4.octets()[3])),
            IpAddr::V6(_) => None,
        };
        let s = Service::build_tracked(None, &set, &[1; 16], 251, id).unwrap();
        Tables::new(1, Some(s), Vec::new()).unwrap()
    }

    const FLOWS: u16 = 2000;

    /// Each flow's backend (None when not forwarded) and the tracking counts.
    fn run_flows(
        tables: &Tables,
        flows: Option<&conntrack::Table>,
        ports: core::ops::Range<u16>,
    ) -> (Vec<Option<IpAddr>>, Counters) {
        let addrs = ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"];
        let entries = addrs
            .iter()
            .map(|a| (a.parse().unwrap(), BACKEND_MAC))
            .collect();
        let w = World {
            hasher: flow::Hasher::new(&[1; 16]),
            tables: tables.clone(),
            neighbours: neighbours::Static::new(entries, None),
        };
        let mut c = ctx(&w);
        c.flows = flows;
        c.now = 10;
        let mut counters = Counters::default();
        let picks = ports
            .map(|port| {
                let out = process(&mut gre_flow(64, port), &c);
                counters.record(out.verdict);
                counters.record_track(out.track);
                (out.verdict == Verdict::Forward)
                    .then_some(out.backend)
                    .flatten()
            })
            .collect();
        (picks, counters)
    }

    fn moved(a: &[Option<IpAddr>], b: &[Option<IpAddr>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn adding_a_backend_moves_no_tracked_flow() {
        let three = tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
        let four = tracked(&[
            ("10.1.0.1", 1),
            ("10.1.0.2", 1),
            ("10.1.0.3", 1),
            ("10.1.0.4", 1),
        ]);
        let flows = conntrack::Table::new(1 << 16, 60);
        let (before, c) = run_flows(&three, Some(&flows), 0..FLOWS);
        assert_eq!((c.flow_misses, c.flow_hits, c.forwarded), (2000, 0, 2000));
        let (after, c) = run_flows(&four, Some(&flows), 0..FLOWS);
        assert_eq!(moved(&before, &after), 0);
        assert_eq!((c.flow_hits, c.flow_misses), (2000, 0));
        // Without tracking the new backend would have taken about a quarter.
        let (untracked, _) = run_flows(&four, None, 0..FLOWS);
        assert!(
            moved(&before, &untracked) > 300,
            "{}",
            moved(&before, &untracked)
        );
        // New flows do reach the new backend.
        let (new, _) = run_flows(&four, Some(&flows), FLOWS..2 * FLOWS);
        let on_new = new
            .iter()
            .filter(|b| **b == Some("10.1.0.4".parse().unwrap()))
            .count();
        assert!(on_new > 300, "{on_new}");
    }

    #[test]
    fn removing_a_backend_moves_exactly_its_own_flows() {
        let three = tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
        let two = tracked(&[("10.1.0.1", 1), ("10.1.0.3", 1)]);
        let flows = conntrack::Table::new(1 << 16, 60);
        let gone: IpAddr = "10.1.0.2".parse().unwrap();
        let (before, _) = run_flows(&three, Some(&flows), 0..FLOWS);
        let (after, c) = run_flows(&two, Some(&flows), 0..FLOWS);
        let own = before.iter().filter(|b| **b == Some(gone)).count();
        assert!(own > 400, "{own}");
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(gone) {
                assert_ne!(*a, Some(gone));
                assert!(a.is_some());
            } else {
                assert_eq!(a, b);
            }
        }
        assert_eq!(moved(&before, &after), own);
        assert_eq!(c.flow_misses as usize, own, "the moved flows are re-picked");
        // Re-picked flows are tracked on their new backend.
        let (again, c) = run_flows(&two, Some(&flows), 0..FLOWS);
        assert_eq!((moved(&after, &again), c.flow_hits), (0, 2000));
    }

    #[test]
    fn draining_keeps_existing_flows_and_sends_new_ones_elsewhere() {
        let up = tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
        let drain = tracked(&[("10.1.0.1", 1), ("10.1.0.2", 0), ("10.1.0.3", 1)]);
        let draining: IpAddr = "10.1.0.2".parse().unwrap();
        let flows = conntrack::Table::new(1 << 16, 60);
        let (before, _) = run_flows(&up, Some(&flows), 0..FLOWS);
        let (after, _) = run_flows(&drain, Some(&flows), 0..FLOWS);
        assert!(before.contains(&Some(draining)));
        assert_eq!(moved(&before, &after), 0);
        let (new, c) = run_flows(&drain, Some(&flows), FLOWS..2 * FLOWS);
        assert!(!new.contains(&Some(draining)));
        assert_eq!((c.forwarded, c.flow_misses), (2000, 2000));
    }

    #[test]
    fn untracked_services_never_touch_the_flow_table() {
        let w = world(&["10.1.0.1"]);
        let flows = conntrack::Table::new(64, 60);
        let mut c = ctx(&w);
        c.flows = Some(&flows);
        let out = process(&mut gre_frame(64), &c);
        assert_eq!(
            (out.verdict, out.track, out.id),
            (Verdict::Forward, Track::Off, None)
        );
        assert_eq!(flows.count(0), 0);
    }

    proptest! {
        /// Corrupt any bytes of a valid frame: no panic, an unforwarded
        /// frame is untouched, a forwarded one keeps GRE and inner bytes and
        /// gets a correct outer checksum.
        #[test]
        fn mutated_frames_never_panic_and_only_forwards_change_bytes(
            edits in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            cut in 0usize..100,
            track in any::<bool>(),
        ) {
            let mut w = world(&["10.1.0.1", "10.1.0.2"]);
            let flows = conntrack::Table::new(64, 60);
            if track {
                w.tables = tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1)]);
            }
            let mut input = gre_frame(64);
            for (at, v) in edits {
                if let Some(b) = input.get_mut(at) {
                    *b = v;
                }
            }
            input.truncate(cut.max(1));
            let mut f = input.clone();
            let mut c = ctx(&w);
            c.flows = track.then_some(&flows);
            let out = process(&mut f, &c);
            if out.verdict == Verdict::Forward {
                prop_assert_eq!(&f[34..], &input[34..]);
                let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
                let was_valid = ipv4::Packet::new_checked(&input[14..]).unwrap().verify_checksum();
                prop_assert_eq!(ip.verify_checksum(), was_valid);
            } else {
                prop_assert_eq!(f, input);
            }
        }
    }
}
