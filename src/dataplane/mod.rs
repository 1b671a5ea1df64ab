//! One frame in, one verdict out.
//!
//! `process` is a pure function of a mutable frame and a read-only
//! `Context`. It never allocates, locks, logs or makes a syscall; callers
//! count its verdicts in `Counters`. Everything is decided before the frame
//! is touched, so a frame that is neither forwarded nor replied to is left
//! byte-identical.
//!
//! GRE to one of our addresses is readdressed in place; plain IP to an
//! announced VIP is wrapped in GRE (`process_in`, which has room for it).
//! Both hash the client's packet alike, so they pick the same backend.
//! Plain IP too big for the MTU once wrapped is answered, in place, with
//! the ICMP error path MTU discovery needs.

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
    /// Rewritten (or encapsulated) in place; send it back out of the
    /// same device.
    Forward,
    /// Not load-balanced traffic: hand it to the host stack unchanged.
    ToHost,
    /// Ours, but it cannot be forwarded.
    Drop(DropReason),
    /// Not delivered, for this reason, and rewritten in place into an
    /// ICMP error to its sender: send it back out of the same device,
    /// like `Forward`. Counted as a drop and as an ICMP error sent.
    Reply(DropReason),
}

impl Verdict {
    /// Whether the frame goes back out of the device it came in on.
    #[inline]
    pub const fn transmits(self) -> bool {
        matches!(self, Verdict::Forward | Verdict::Reply(_))
    }
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
    /// Plain IP to a VIP that, encapsulated, would not fit the buffer or
    /// the MTU. Answered with `Reply` when it is the MTU and ICMP allows.
    TooBig,
}

impl DropReason {
    pub const COUNT: usize = 9;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::OuterFragment,
        DropReason::TtlExpired,
        DropReason::MalformedGre,
        DropReason::MalformedInner,
        DropReason::Ipv6ExtHeaders,
        DropReason::UnknownVip,
        DropReason::NoBackend,
        DropReason::NoNeighbour,
        DropReason::TooBig,
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
            DropReason::TooBig => "too_big",
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
    /// ICMP errors sent back (`Reply`), also counted in `dropped`.
    pub icmp_sent: u64,
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
            Verdict::Reply(r) => {
                self.dropped[r as usize] += 1;
                self.icmp_sent += 1;
            }
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
    /// Announced VIPs this node holds: plain IP to any of them is ours,
    /// and is encapsulated toward its backend.
    pub vips_v4: &'a [[u8; 4]],
    pub vips_v6: &'a [[u8; 16]],
    /// The outer source of that encapsulation, per family. None: such
    /// packets are dropped as `NoBackend`.
    pub primary_v4: Option<[u8; 4]>,
    pub primary_v6: Option<[u8; 16]>,
    /// The device MTU, which no encapsulated packet may exceed.
    pub mtu: u16,
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
    /// Offset of the outer IP header (for a plain packet, of the packet).
    l3: usize,
    /// The new outer source: the node address GRE was sent to, or the
    /// primary address for a plain packet.
    src: Addr,
    service: &'t Service,
    /// Outer family: which of the service's tables applies.
    v6: bool,
    hash: u64,
    /// Set for plain IP to a VIP: encapsulated, not readdressed.
    plain: Option<Plain>,
}

/// A plain packet to encapsulate.
#[derive(Clone, Copy)]
struct Plain {
    /// The IP packet's length, link padding excluded.
    len: usize,
    /// Its DSCP/ECN byte or traffic class, copied to the outer header.
    tos: u8,
}

/// An address as the header holds it.
#[derive(Clone, Copy)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// TTL and hop limit of the outer header we add, and of ICMP errors.
const ENCAP_TTL: u8 = 64;

/// Decides the fate of one frame and, for `Forward` and `Reply`, rewrites
/// it in place. The frame has no spare room, so plain IP to a VIP is
/// `Drop(TooBig)`, or `Reply` when it is too big for the MTU too: the
/// error then fills the front of the frame, up to the Ethernet header and
/// its IP length (what `process_in` returns).
#[inline]
pub fn process<N: Neighbours>(frame: &mut [u8], ctx: &Context<'_, N>) -> Outcome {
    let len = frame.len();
    process_in(frame, len, ctx).0
}

/// `process` for a frame in `buf[..len]` with spare room in `buf[len..]`,
/// which an encapsulated frame grows into. Returns the outcome and the
/// frame's length afterwards: `len` unless encapsulated or replied to.
#[inline]
pub fn process_in<N: Neighbours>(
    buf: &mut [u8],
    len: usize,
    ctx: &Context<'_, N>,
) -> (Outcome, usize) {
    let len = len.min(buf.len());
    let flow = match classify(buf.get(..len).unwrap_or_default(), ctx) {
        Ok(flow) => flow,
        Err(outcome) => return (outcome, len),
    };
    // Before a backend is chosen: a packet that cannot go is not tracked.
    if let Some(plain) = flow.plain
        && !fits(&flow, plain, buf.len(), ctx.mtu)
    {
        // Too big for the link, not just the buffer: the sender can learn
        // to send smaller packets (path MTU discovery).
        if encapsulated_len(&flow, plain) > usize::from(ctx.mtu)
            && let Some(len) = reply_too_big(buf, len, &flow, plain, ctx)
        {
            let reply = Verdict::Reply(DropReason::TooBig);
            return (Outcome::of(reply, None), len);
        }
        return (Outcome::drop(DropReason::TooBig), len);
    }
    match choose(&flow, ctx) {
        Some((backend, id, track)) => {
            let (mut out, len) = match flow.plain {
                None => {
                    let frame = buf.get_mut(..len).unwrap_or_default();
                    (forward(frame, &flow, backend, ctx), len)
                }
                Some(plain) => encapsulate(buf, len, &flow, plain, backend, ctx),
            };
            out.id = id;
            out.track = track;
            (out, len)
        }
        None => (
            Outcome {
                track: if ctx.flows.is_some() && flow.service.tracked() {
                    Track::Miss
                } else {
                    Track::Off
                },
                ..Outcome::drop(DropReason::NoBackend)
            },
            len,
        ),
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
    let no_primary = Outcome::drop(DropReason::NoBackend);
    match eth.ethertype() {
        ethernet::ethertype::IPV4 => {
            // A broken outer header is not provably ours: the host decides.
            let ip = ipv4::Packet::new_checked(eth.payload()).map_err(|_| Outcome::TO_HOST)?;
            let dst = ip.dst_bytes();
            if ip.protocol() == ip_proto::GRE && ctx.local_v4.contains(&dst) {
                if ip.is_fragment() {
                    return Err(Outcome::drop(DropReason::OuterFragment));
                }
                let (hash, inner_dst) = inner(ip.payload(), ip.ttl(), ctx.hasher)?;
                return Ok(Flow {
                    l3,
                    src: Addr::V4(dst),
                    service: service(ctx.tables, inner_dst)?,
                    v6: false,
                    hash,
                    plain: None,
                });
            }
            if !ctx.vips_v4.contains(&dst) {
                return Err(Outcome::TO_HOST);
            }
            let hash = hash_v4(&ip, ctx.hasher)?;
            let service = service(ctx.tables, Addr::V4(dst))?;
            Ok(Flow {
                l3,
                src: Addr::V4(ctx.primary_v4.ok_or(no_primary)?),
                service,
                v6: false,
                hash,
                plain: Some(Plain {
                    len: usize::from(ip.total_len()),
                    tos: ip.dscp_ecn(),
                }),
            })
        }
        ethernet::ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(eth.payload()).map_err(|_| Outcome::TO_HOST)?;
            let dst = ip.dst_bytes();
            // GRE directly after the fixed header; outer extension headers
            // are the host's business.
            if ip.next_header() == ip_proto::GRE && ctx.local_v6.contains(&dst) {
                let (hash, inner_dst) = inner(ip.payload(), ip.hop_limit(), ctx.hasher)?;
                return Ok(Flow {
                    l3,
                    src: Addr::V6(dst),
                    service: service(ctx.tables, inner_dst)?,
                    v6: true,
                    hash,
                    plain: None,
                });
            }
            if !ctx.vips_v6.contains(&dst) {
                return Err(Outcome::TO_HOST);
            }
            let upper = upper_layer(&ip)?;
            // The host answers Neighbour Solicitations for the VIP.
            if is_neighbour_discovery(&ip, upper) {
                return Err(Outcome::TO_HOST);
            }
            let hash = hash_v6(&ip, upper, ctx.hasher)?;
            let service = service(ctx.tables, Addr::V6(dst))?;
            Ok(Flow {
                l3,
                src: Addr::V6(ctx.primary_v6.ok_or(no_primary)?),
                service,
                v6: true,
                hash,
                plain: Some(Plain {
                    len: ipv6::HEADER_LEN + usize::from(ip.payload_len()),
                    tos: ip.traffic_class(),
                }),
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
    match (flow.src, backend) {
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

/// The outer IP and GRE headers an encapsulation adds.
#[inline(always)]
fn encap_len(v6: bool) -> usize {
    let ip = if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    ip + gre::BASE_LEN
}

/// A plain packet's IP length once encapsulated.
#[inline(always)]
fn encapsulated_len(flow: &Flow<'_>, plain: Plain) -> usize {
    encap_len(flow.v6) + plain.len
}

/// Whether a plain packet, encapsulated, fits the buffer and the MTU.
#[inline(always)]
fn fits(flow: &Flow<'_>, plain: Plain, room: usize, mtu: u16) -> bool {
    let outer = encapsulated_len(flow, plain);
    outer <= usize::from(mtu) && flow.l3 + outer <= room
}

/// The most an ICMP error's IP packet may be: RFC 1812 4.3.2.3 for IPv4,
/// RFC 4443 2.4(c) (the IPv6 minimum MTU) for IPv6.
const ICMP_ERROR_MAX_V4: usize = 576;
const ICMP_ERROR_MAX_V6: usize = 1280;

/// Rewrites the plain packet in `buf[..len]`, too big for the MTU once
/// encapsulated, into "fragmentation needed" (IPv4, DF set) or "packet
/// too big" (IPv6) to its sender, advertising the MTU less our overhead;
/// returns the frame's new length. None, the frame untouched, when ICMP
/// forbids an error (RFC 1812 4.3.2.7, RFC 4443 2.4(e)) or DF is clear.
///
/// No rate limit: the error is never longer than the packet it answers
/// (576 or 1280 bytes against at least the MTU less 23 or 43; with a tiny
/// MTU the quote is cut to make sure), one per packet, and only to the
/// packet's own source, so it cannot amplify.
#[cold]
#[inline(never)]
fn reply_too_big<N: Neighbours>(
    buf: &mut [u8],
    len: usize,
    flow: &Flow<'_>,
    plain: Plain,
    ctx: &Context<'_, N>,
) -> Option<usize> {
    let mtu = u32::from(ctx.mtu).saturating_sub(encap_len(flow.v6) as u32);
    // Headers are built aside and the quote's checksum read in place, so
    // the frame changes only once nothing can fail.
    let mut headers = [0u8; ipv6::HEADER_LEN + icmp::HEADER_LEN];
    let (client_mac, ip_len, quote) = {
        let eth = ethernet::Frame::new_checked(buf.get(..len)?).ok()?;
        // Never about a link-layer broadcast or multicast, nor to one.
        if eth.dst().is_multicast() || eth.src().is_multicast() {
            return None;
        }
        let packet = eth.payload();
        let (ip_len, quote) = match flow.src {
            Addr::V4(node) => {
                let ip = ipv4::Packet::new_checked(packet).ok()?;
                let src = ip.src_bytes();
                if !ip.dont_frag() || ip.frag_offset() != 0 || !one_host_v4(src) {
                    return None;
                }
                if ip.protocol() == ip_proto::ICMP
                    && ip.payload().first().is_none_or(|&t| icmp::v4::is_error(t))
                {
                    return None;
                }
                let added = ipv4::HEADER_LEN + icmp::HEADER_LEN;
                let quote = quote_len(plain.len, added, ICMP_ERROR_MAX_V4, ip.header_len())?;
                let quote = packet.get(..quote)?;
                ipv4::Repr {
                    src: node.into(),
                    dst: src.into(),
                    protocol: ip_proto::ICMP,
                    payload_len: icmp::HEADER_LEN + quote.len(),
                    ttl: ENCAP_TTL,
                }
                .emit_without_df(&mut headers)
                .ok()?;
                let error = icmp::ErrorRepr {
                    msg_type: icmp::v4::DEST_UNREACHABLE,
                    code: icmp::v4::FRAG_NEEDED,
                    word: mtu,
                };
                let icmp_header = headers.get_mut(ipv4::HEADER_LEN..)?;
                error.emit_v4(icmp_header, quote).ok()?;
                (ipv4::HEADER_LEN, quote.len())
            }
            Addr::V6(node) => {
                let ip = ipv6::Packet::new_checked(packet).ok()?;
                let src = ip.src_bytes();
                let upper = ip.upper_layer().ok()?;
                if ip.frag_offset().is_some_and(|o| o != 0) || !one_host_v6(src) {
                    return None;
                }
                if upper.protocol == ip_proto::ICMPV6
                    && ip
                        .payload()
                        .get(upper.offset)
                        .is_none_or(|&t| icmp::v6::is_error(t))
                {
                    return None;
                }
                let added = ipv6::HEADER_LEN + icmp::HEADER_LEN;
                let quote = quote_len(plain.len, added, ICMP_ERROR_MAX_V6, ipv6::HEADER_LEN)?;
                let quote = packet.get(..quote)?;
                ipv6::Repr {
                    src: node.into(),
                    dst: src.into(),
                    next_header: ip_proto::ICMPV6,
                    payload_len: icmp::HEADER_LEN + quote.len(),
                    hop_limit: ENCAP_TTL,
                }
                .emit(&mut headers)
                .ok()?;
                let error = icmp::ErrorRepr {
                    msg_type: icmp::v6::PACKET_TOO_BIG,
                    code: 0,
                    word: mtu,
                };
                let icmp_header = headers.get_mut(ipv6::HEADER_LEN..)?;
                error.emit_v6(icmp_header, quote, &node, &src).ok()?;
                (ipv6::HEADER_LEN, quote.len())
            }
        };
        (eth.src(), ip_len, quote)
    };
    let headers = headers.get(..ip_len + icmp::HEADER_LEN)?;
    let at = flow.l3 + headers.len();
    let new_len = at + quote;
    // The quote moves toward the end of a frame that does not grow (see
    // `quote_len`); a memmove reads nothing after overwriting it.
    if new_len > len {
        return None;
    }
    buf.copy_within(flow.l3..flow.l3 + quote, at);
    let frame = buf.get_mut(..new_len)?;
    if let Some(to) = frame.get_mut(flow.l3..at) {
        to.copy_from_slice(headers);
    }
    if let Ok(mut eth) = ethernet::Frame::new_checked(frame) {
        eth.set_dst(client_mac);
        eth.set_src(ctx.mac);
    }
    Some(new_len)
}

/// How much of a `packet_len`-byte packet an error with `headers` bytes
/// of IP and ICMP header quotes: enough to make it `max` bytes long, or
/// as long as the packet if that is shorter (only with a tiny MTU). None
/// when that leaves less than the packet's IP header and 8 bytes, which
/// its sender needs to match the error to a connection (RFC 792).
#[inline]
fn quote_len(packet_len: usize, headers: usize, max: usize, ip_header: usize) -> Option<usize> {
    let quote = packet_len.min(max).checked_sub(headers)?;
    (quote >= ip_header + 8).then_some(quote)
}

/// Whether an IPv4 source names one host: not 0/8 ("this network"),
/// loopback, multicast, class E or broadcast (RFC 1812 4.3.2.7).
#[inline]
fn one_host_v4(src: [u8; 4]) -> bool {
    src[0] != 0 && src[0] != 127 && src[0] < 224
}

/// The same for IPv6: not unspecified, loopback or multicast.
#[inline]
fn one_host_v6(src: [u8; 16]) -> bool {
    let a = core::net::Ipv6Addr::from(src);
    !a.is_unspecified() && !a.is_loopback() && !a.is_multicast()
}

/// Finds the next hop and wraps the plain packet in `buf[..len]` in GRE
/// toward `backend`, in place; returns the new frame length. The inner
/// packet is moved, not changed; link padding is dropped.
#[inline(always)]
fn encapsulate<N: Neighbours>(
    buf: &mut [u8],
    len: usize,
    flow: &Flow<'_>,
    plain: Plain,
    backend: IpAddr,
    ctx: &Context<'_, N>,
) -> (Outcome, usize) {
    let Some(mac) = ctx.neighbours.lookup(backend) else {
        return (
            Outcome::of(Verdict::Drop(DropReason::NoNeighbour), Some(backend)),
            len,
        );
    };
    // The headers are built aside first, so the frame changes only once
    // nothing can fail. `fits` checked the lengths, so the fallbacks
    // cannot happen; they leave the frame as it was.
    let mut header = [0u8; ipv6::HEADER_LEN + gre::BASE_LEN];
    let payload_len = gre::BASE_LEN + plain.len;
    let (built, ethertype, protocol) = match (flow.src, backend) {
        (Addr::V4(src), IpAddr::V4(dst)) => {
            let ip = ipv4::Repr {
                src: src.into(),
                dst,
                protocol: ip_proto::GRE,
                payload_len,
                ttl: ENCAP_TTL,
            };
            (
                ip.emit_with_dscp_ecn(&mut header, plain.tos),
                ethernet::ethertype::IPV4,
                gre::protocol::IPV4,
            )
        }
        (Addr::V6(src), IpAddr::V6(dst)) => {
            let ip = ipv6::Repr {
                src: src.into(),
                dst,
                next_header: ip_proto::GRE,
                payload_len,
                hop_limit: ENCAP_TTL,
            };
            // The hash's low bits label the flow for routers on the way.
            (
                ip.emit_with_flow(&mut header, plain.tos, flow.hash as u32),
                ethernet::ethertype::IPV6,
                gre::protocol::IPV6,
            )
        }
        _ => return (Outcome::drop(DropReason::NoBackend), len),
    };
    let added = encap_len(flow.v6);
    let gre = gre::Repr {
        protocol,
        checksum: false,
        key: None,
        sequence: None,
    };
    let (inner, new_len) = (flow.l3..flow.l3 + plain.len, flow.l3 + added + plain.len);
    let Some(header) = header.get_mut(..added) else {
        return (Outcome::drop(DropReason::TooBig), len);
    };
    let gre_at = added - gre::BASE_LEN;
    if built.is_err()
        || gre
            .emit(header.get_mut(gre_at..).unwrap_or_default())
            .is_err()
        || inner.end > len
        || new_len > buf.len()
    {
        return (Outcome::drop(DropReason::TooBig), len);
    }
    buf.copy_within(inner, flow.l3 + added);
    let frame = buf.get_mut(..new_len).unwrap_or_default();
    if let Some(at) = frame.get_mut(flow.l3..flow.l3 + added) {
        at.copy_from_slice(header);
    }
    if let Ok(mut eth) = ethernet::Frame::new_checked(frame) {
        eth.set_src(ctx.mac);
        eth.set_dst(mac);
        eth.set_ethertype(ethertype);
    }
    (Outcome::of(Verdict::Forward, Some(backend)), new_len)
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
        Ok((hash_v4(&ip, hasher)?, Addr::V4(ip.dst_bytes())))
    } else {
        let ip = ipv6::Packet::new_checked(gre.payload()).map_err(malformed)?;
        let upper = upper_layer(&ip)?;
        Ok((hash_v6(&ip, upper, hasher)?, Addr::V6(ip.dst_bytes())))
    }
}

/// The flow hash of a client's IPv4 packet, inside GRE or sent plain to a
/// VIP: both must pick the same backend.
#[inline(always)]
fn hash_v4(ip: &ipv4::Packet<&[u8]>, hasher: &flow::Hasher) -> Result<u64, Outcome> {
    let (src, dst, protocol) = (ip.src_bytes(), ip.dst_bytes(), ip.protocol());
    // Only the first fragment has ports: every fragment gets the 3-tuple.
    if ip.is_fragment() {
        return Ok(hasher.v4(src, dst, protocol, 0));
    }
    if protocol == ip_proto::ICMP
        && let Some(hash) = icmp_error_v4(ip.payload(), dst, hasher)
    {
        return Ok(hash);
    }
    let ports = ports(protocol, ip.payload())?;
    Ok(hasher.v4(src, dst, protocol, ports))
}

/// Where a client's IPv6 packet has its upper layer.
#[inline(always)]
fn upper_layer(ip: &ipv6::Packet<&[u8]>) -> Result<ipv6::UpperLayer, Outcome> {
    ip.upper_layer().map_err(|e| match e {
        wire::Error::Unsupported => Outcome::drop(DropReason::Ipv6ExtHeaders),
        _ => Outcome::drop(DropReason::MalformedInner),
    })
}

/// `hash_v4` for IPv6, given where the upper layer starts.
#[inline(always)]
fn hash_v6(
    ip: &ipv6::Packet<&[u8]>,
    upper: ipv6::UpperLayer,
    hasher: &flow::Hasher,
) -> Result<u64, Outcome> {
    let (src, dst) = (ip.src_bytes(), ip.dst_bytes());
    if upper.fragment {
        return Ok(hasher.v6(src, dst, upper.protocol, 0));
    }
    let l4 = ip.payload().get(upper.offset..).unwrap_or_default();
    if upper.protocol == ip_proto::ICMPV6
        && let Some(hash) = icmp_error_v6(l4, dst, hasher)
    {
        return Ok(hash);
    }
    let ports = ports(upper.protocol, l4)?;
    Ok(hasher.v6(src, dst, upper.protocol, ports))
}

/// Router and neighbour solicitations and advertisements, and redirects.
#[inline]
fn is_neighbour_discovery(ip: &ipv6::Packet<&[u8]>, upper: ipv6::UpperLayer) -> bool {
    if upper.protocol != ip_proto::ICMPV6 || upper.fragment {
        return false;
    }
    let l4 = ip.payload().get(upper.offset..).unwrap_or_default();
    icmp::Packet::new_checked(l4)
        .is_ok_and(|m| (icmp::v6::ROUTER_SOLICIT..=icmp::v6::REDIRECT).contains(&m.msg_type()))
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
    const NODE6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    /// Announced VIPs, served by the default set.
    const VIP4: [u8; 4] = [192, 0, 2, 1];
    const VIP6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
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
            local_v6: &[NODE6],
            vips_v4: &[VIP4],
            vips_v6: &[VIP6],
            primary_v4: Some(NODE),
            primary_v6: Some(NODE6),
            mtu: 1500,
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
        c.record(Verdict::Drop(DropReason::TooBig));
        c.record(Verdict::Reply(DropReason::TooBig));
        assert_eq!((c.rx, c.forwarded, c.to_host), (7, 1, 1));
        assert_eq!(c.dropped(DropReason::NoBackend), 2);
        assert_eq!(c.dropped(DropReason::NoNeighbour), 1);
        assert_eq!(c.dropped(DropReason::TtlExpired), 0);
        // A reply is a packet not delivered, and an error sent.
        assert_eq!((c.dropped(DropReason::TooBig), c.icmp_sent), (2, 1));
    }

    #[test]
    fn only_forward_and_reply_transmit() {
        assert!(Verdict::Forward.transmits());
        assert!(Verdict::Reply(DropReason::TooBig).transmits());
        assert!(!Verdict::ToHost.transmits());
        assert!(!Verdict::Drop(DropReason::TooBig).transmits());
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

    // --- Plain IP to an announced VIP. Frames and the expected
    // encapsulations are built with etherparse, the GRE header by hand.

    const CLIENT4: [u8; 4] = [10, 0, 0, 9];
    const CLIENT6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7,
    ];
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
    /// Spare room after each frame handed to `process_in`.
    const ROOM: usize = 128;
    const SPARE: u8 = 0xee;

    fn v4_and_v6(backends: &[&str]) -> World {
        let mut all = backends.to_vec();
        all.extend(["2001:db8:1::1", "2001:db8:1::2"]);
        world(&all)
    }

    /// The client's IPv4 packet to `dst`: TCP with `dscp_ecn`, or UDP.
    fn packet4(dst: [u8; 4], tcp: bool, port: u16, dscp_ecn: u8) -> Vec<u8> {
        let protocol = if tcp {
            etherparse::IpNumber::TCP
        } else {
            etherparse::IpNumber::UDP
        };
        let mut h = etherparse::Ipv4Header::new(0, 64, protocol, CLIENT4, dst).unwrap();
        h.dscp = etherparse::IpDscp::try_new(dscp_ecn >> 2).unwrap();
        h.ecn = etherparse::IpEcn::try_new(dscp_ecn & 3).unwrap();
        let ip = etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(h, Default::default()));
        let mut out = Vec::new();
        if tcp {
            ip.tcp(port, 443, 1, 64240)
                .syn()
                .write(&mut out, b"hello")
                .unwrap();
        } else {
            ip.udp(port, 53).write(&mut out, b"hello").unwrap();
        }
        out
    }

    /// The client's IPv6 UDP packet to `dst` with `traffic_class`.
    fn packet6(dst: [u8; 16], port: u16, traffic_class: u8) -> Vec<u8> {
        let h = etherparse::Ipv6Header {
            traffic_class,
            flow_label: Default::default(),
            payload_length: 0,
            next_header: etherparse::IpNumber::UDP,
            hop_limit: 64,
            source: CLIENT6,
            destination: dst,
        };
        let mut out = Vec::new();
        etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv6(h, Default::default()))
            .udp(port, 53)
            .write(&mut out, b"hello, v6")
            .unwrap();
        out
    }

    fn ethertype_of(packet: &[u8]) -> etherparse::EtherType {
        if packet[0] >> 4 == 6 {
            etherparse::EtherType::IPV6
        } else {
            etherparse::EtherType::IPV4
        }
    }

    /// An Ethernet header from `src` to `dst`, with an 802.1Q tag
    /// (VID, PCP) if given, in front of `payload`.
    fn ethernet(src: [u8; 6], dst: [u8; 6], tag: Option<(u16, u8)>, payload: &[u8]) -> Vec<u8> {
        let ether_type = ethertype_of(payload);
        let mut out = etherparse::Ethernet2Header {
            source: src,
            destination: dst,
            ether_type: match tag {
                Some(_) => etherparse::EtherType::VLAN_TAGGED_FRAME,
                None => ether_type,
            },
        }
        .to_bytes()
        .to_vec();
        if let Some((id, pcp)) = tag {
            let vlan = etherparse::SingleVlanHeader {
                pcp: etherparse::VlanPcp::try_new(pcp).unwrap(),
                drop_eligible_indicator: false,
                vlan_id: etherparse::VlanId::try_new(id).unwrap(),
                ether_type,
            };
            out.extend_from_slice(&vlan.to_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// `packet` sent plain from the client to the node's MAC.
    fn plain(packet: &[u8]) -> Vec<u8> {
        ethernet(CLIENT_MAC, MAC.0, None, packet)
    }

    /// `packet` in GRE to the node, IPv6 outer if `v6`.
    fn in_gre(packet: &[u8], v6: bool) -> Vec<u8> {
        let mut gre = vec![0, 0];
        gre.extend_from_slice(&ethertype_of(packet).0.to_be_bytes());
        gre.extend_from_slice(packet);
        let eth = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, MAC.0);
        let mut out = Vec::new();
        if v6 {
            eth.ipv6(CLIENT6, NODE6, 64)
                .write(&mut out, etherparse::IpNumber::GRE, &gre)
        } else {
            eth.ipv4([198, 51, 100, 1], NODE, 64)
                .write(&mut out, etherparse::IpNumber::GRE, &gre)
        }
        .unwrap();
        out
    }

    /// The oracle: `packet` in GRE from the node's primary address to
    /// `backend`, via BACKEND_MAC, the tag kept. Outer IPv4: DSCP/ECN of
    /// the packet, id 0, DF, TTL 64. Outer IPv6: its traffic class,
    /// `flow_label`, hop limit 64.
    fn encapsulated(
        packet: &[u8],
        backend: IpAddr,
        tag: Option<(u16, u8)>,
        flow_label: u32,
    ) -> Vec<u8> {
        let mut gre = vec![0, 0];
        gre.extend_from_slice(&ethertype_of(packet).0.to_be_bytes());
        let len = u16::try_from(gre.len() + packet.len()).unwrap();
        let mut outer = Vec::new();
        match backend {
            IpAddr::V4(b) => {
                let inner = etherparse::Ipv4HeaderSlice::from_slice(packet)
                    .unwrap()
                    .to_header();
                let mut h = etherparse::Ipv4Header::new(
                    len,
                    64,
                    etherparse::IpNumber::GRE,
                    NODE,
                    b.octets(),
                )
                .unwrap();
                h.dscp = inner.dscp;
                h.ecn = inner.ecn;
                h.write(&mut outer).unwrap();
            }
            IpAddr::V6(b) => {
                let inner = etherparse::Ipv6HeaderSlice::from_slice(packet).unwrap();
                etherparse::Ipv6Header {
                    traffic_class: inner.traffic_class(),
                    flow_label: etherparse::Ipv6FlowLabel::try_new(flow_label).unwrap(),
                    payload_length: len,
                    next_header: etherparse::IpNumber::GRE,
                    hop_limit: 64,
                    source: NODE6,
                    destination: b.octets(),
                }
                .write(&mut outer)
                .unwrap();
            }
        }
        outer.extend_from_slice(&gre);
        outer.extend_from_slice(packet);
        ethernet(MAC.0, BACKEND_MAC.0, tag, &outer)
    }

    /// The flow label for a UDP `packet6`: the low 20 bits of its hash.
    fn label(w: &World, packet: &[u8]) -> u32 {
        let ip = etherparse::Ipv6HeaderSlice::from_slice(packet).unwrap();
        let udp = etherparse::UdpHeaderSlice::from_slice(&packet[40..]).unwrap();
        let ports = u32::from(udp.source_port()) << 16 | u32::from(udp.destination_port());
        let hash = w.hasher.v6(ip.source(), ip.destination(), 17, ports);
        hash as u32 & 0x000f_ffff
    }

    /// Runs `frame` through `process_in` with `room` spare bytes; returns
    /// the outcome, the frame after it and the whole buffer.
    fn run_in(
        frame: &[u8],
        room: usize,
        c: &Context<'_, neighbours::Static>,
    ) -> (Outcome, Vec<u8>, Vec<u8>) {
        let mut buf = frame.to_vec();
        buf.resize(frame.len() + room, SPARE);
        let (out, len) = process_in(&mut buf, frame.len(), c);
        (out, buf[..len].to_vec(), buf)
    }

    fn untouched(frame: &[u8], room: usize) -> Vec<u8> {
        let mut buf = frame.to_vec();
        buf.resize(frame.len() + room, SPARE);
        buf
    }

    #[test]
    fn plain_tcp_and_udp_to_an_ipv4_vip_are_encapsulated_exactly_as_the_oracle_says() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let backend: IpAddr = "10.1.0.1".parse().unwrap();
        for packet in [
            packet4(VIP4, true, 40000, 0xb9),
            packet4(VIP4, false, 40001, 0),
        ] {
            let (out, frame, buf) = run_in(&plain(&packet), ROOM, &ctx(&w));
            assert_eq!(out, Outcome::of(Verdict::Forward, Some(backend)));
            assert_eq!(frame, encapsulated(&packet, backend, None, 0));
            assert!(buf[frame.len()..].iter().all(|&b| b == SPARE));
        }
    }

    #[test]
    fn plain_udp_to_an_ipv6_vip_is_encapsulated_exactly_as_the_oracle_says() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let backends: [IpAddr; 2] = [
            "2001:db8:1::1".parse().unwrap(),
            "2001:db8:1::2".parse().unwrap(),
        ];
        let mut seen = Vec::new();
        for port in 40000..40016 {
            let packet = packet6(VIP6, port, 0x2e);
            let (out, frame, _) = run_in(&plain(&packet), ROOM, &ctx(&w));
            let backend = out.backend.unwrap();
            assert!(backends.contains(&backend), "{backend}");
            assert_eq!(out.verdict, Verdict::Forward);
            assert_eq!(
                frame,
                encapsulated(&packet, backend, None, label(&w, &packet))
            );
            seen.push(backend);
        }
        // Otherwise the flow label and the pick could be constants.
        assert!(seen.iter().any(|b| *b != seen[0]), "{seen:?}");
    }

    #[test]
    fn a_plain_packet_picks_the_backend_gre_to_the_node_would_pick_for_it() {
        let w = v4_and_v6(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
        let c = ctx(&w);
        // ICMP "fragmentation needed" about the VIP's reply to the flow
        // of `port`, and a first fragment: both hashed as GRE hashes them.
        let icmp_error = |port: u16| {
            let reply = etherparse::PacketBuilder::ipv4(VIP4, CLIENT4, 64).udp(53, port);
            let mut quote = Vec::new();
            reply.write(&mut quote, b"").unwrap();
            let error = etherparse::PacketBuilder::ipv4([203, 0, 113, 1], VIP4, 64).icmpv4(
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: 1400,
                    },
                ),
            );
            let mut out = Vec::new();
            error.write(&mut out, &quote).unwrap();
            out
        };
        let fragment = |port: u16| {
            let mut p = packet4(VIP4, false, port, 0);
            p[6] = 0x20; // MF
            let mut h = etherparse::Ipv4HeaderSlice::from_slice(&p)
                .unwrap()
                .to_header();
            h.header_checksum = h.calc_header_checksum();
            p[..20].copy_from_slice(&h.to_bytes());
            p
        };
        let mut picked = std::collections::BTreeSet::new();
        for port in 30000..30100 {
            let packets = [
                (packet4(VIP4, true, port, 0), false),
                (packet4(VIP4, false, port, 0), false),
                (icmp_error(port), false),
                (fragment(port), false),
                (packet6(VIP6, port, 0), true),
            ];
            for (packet, v6) in packets {
                let (gre, _, _) = run_in(&in_gre(&packet, v6), ROOM, &c);
                let (direct, _, _) = run_in(&plain(&packet), ROOM, &c);
                assert_eq!(gre.verdict, Verdict::Forward);
                assert_eq!(direct, gre, "port {port}");
                picked.insert(direct.backend);
            }
        }
        assert!(picked.len() >= 4, "{picked:?}");
    }

    #[test]
    fn a_tracked_plain_flow_hits_on_its_second_frame() {
        let w = World {
            tables: tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1)]),
            ..world(&["10.1.0.1", "10.1.0.2"])
        };
        let flows = conntrack::Table::new(64, 60);
        let mut c = ctx(&w);
        c.flows = Some(&flows);
        let frame = plain(&packet4(VIP4, true, 40000, 0));
        let (first, _, _) = run_in(&frame, ROOM, &c);
        let (second, _, _) = run_in(&frame, ROOM, &c);
        assert_eq!(
            (first.verdict, first.track),
            (Verdict::Forward, Track::Miss)
        );
        assert_eq!(
            (second.verdict, second.track),
            (Verdict::Forward, Track::Hit)
        );
        assert_eq!((second.backend, second.id), (first.backend, first.id));
    }

    /// The client's IPv4 UDP packet from `src` to VIP4, `len` bytes long,
    /// DF as given.
    fn udp4_of_len(src: [u8; 4], len: usize, df: bool) -> Vec<u8> {
        let mut h =
            etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, VIP4).unwrap();
        h.dont_fragment = df;
        let mut out = Vec::new();
        etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
            .udp(40000, 53)
            .write(&mut out, &vec![0x5a; len - 28])
            .unwrap();
        out
    }

    /// The client's IPv6 UDP packet from `src` to VIP6, `len` bytes long.
    fn udp6_of_len(src: [u8; 16], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv6(src, VIP6, 64)
            .udp(40000, 53)
            .write(&mut out, &vec![0x5a; len - 48])
            .unwrap();
        out
    }

    /// The oracle for an answered too-big packet, built with etherparse:
    /// back to the client's MAC from ours, the tag kept; from the node's
    /// primary address to the packet's source; "fragmentation needed"
    /// (IPv4: TTL 64, id 0, DF clear) or "packet too big" (IPv6: hop
    /// limit 64) advertising `mtu`, quoting the packet's first `quote`
    /// bytes.
    fn too_big_reply(packet: &[u8], tag: Option<(u16, u8)>, mtu: u16, quote: usize) -> Vec<u8> {
        let quote = &packet[..quote];
        let mut ip = Vec::new();
        if packet[0] >> 4 == 4 {
            let client = etherparse::Ipv4HeaderSlice::from_slice(packet)
                .unwrap()
                .source();
            let icmp = etherparse::Icmpv4Header::with_checksum(
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    },
                ),
                quote,
            );
            let len = u16::try_from(icmp.header_len() + quote.len()).unwrap();
            let mut h =
                etherparse::Ipv4Header::new(len, 64, etherparse::IpNumber::ICMP, NODE, client)
                    .unwrap();
            h.dont_fragment = false;
            h.identification = 0;
            h.write(&mut ip).unwrap();
            icmp.write(&mut ip).unwrap();
        } else {
            let client = etherparse::Ipv6HeaderSlice::from_slice(packet)
                .unwrap()
                .source();
            let icmp = etherparse::Icmpv6Header::with_checksum(
                etherparse::Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                },
                NODE6,
                client,
                quote,
            )
            .unwrap();
            etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: u16::try_from(icmp.header_len() + quote.len()).unwrap(),
                next_header: etherparse::IpNumber::IPV6_ICMP,
                hop_limit: 64,
                source: NODE6,
                destination: client,
            }
            .write(&mut ip)
            .unwrap();
            icmp.write(&mut ip).unwrap();
        }
        ip.extend_from_slice(quote);
        ethernet(MAC.0, CLIENT_MAC, tag, &ip)
    }

    const REPLIED: Outcome = Outcome::of(Verdict::Reply(DropReason::TooBig), None);
    const TOO_BIG: Outcome = Outcome::of(Verdict::Drop(DropReason::TooBig), None);

    #[test]
    fn a_plain_packet_that_fits_the_mtu_once_encapsulated_is_still_encapsulated() {
        let w = world(&["10.1.0.1"]);
        // 1500 less the 24 bytes of outer IPv4 and GRE fits exactly.
        let packet = udp4_of_len(CLIENT4, 1476, true);
        let (out, frame, _) = run_in(&plain(&packet), ROOM, &ctx(&w));
        let backend = "10.1.0.1".parse().unwrap();
        assert_eq!(out, Outcome::of(Verdict::Forward, Some(backend)));
        assert_eq!(frame, encapsulated(&packet, backend, None, 0));
        assert_eq!(frame.len(), 14 + 1500);
    }

    #[test]
    fn an_ipv4_df_packet_one_byte_too_big_gets_the_exact_icmp_frag_needed_frame() {
        let w = world(&["10.1.0.1"]);
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4(CLIENT4, VIP4, 64)
            .tcp(40000, 443, 1, 64240)
            .ack(7)
            .write(&mut packet, &[0x5a; 1477 - 40])
            .unwrap();
        assert_eq!(packet.len(), 1477);
        let input = plain(&packet);
        let (out, frame, buf) = run_in(&input, ROOM, &ctx(&w));
        assert_eq!(out, REPLIED);
        // The largest packet that fits once encapsulated: 1500 - 24.
        assert_eq!(frame, too_big_reply(&packet, None, 1476, 548));
        assert!(buf[input.len()..].iter().all(|&b| b == SPARE));
    }

    #[test]
    fn a_1500_byte_packet_quotes_exactly_548_bytes_so_the_error_is_576() {
        let w = world(&["10.1.0.1"]);
        let packet = udp4_of_len(CLIENT4, 1500, true);
        let (out, frame, _) = run_in(&plain(&packet), ROOM, &ctx(&w));
        assert_eq!(out, REPLIED);
        assert_eq!(frame.len(), 14 + 576);
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().total_len(), 576);
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!("not ICMP");
        };
        assert_eq!(icmp.payload(), &packet[..548]);
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
        assert_eq!(frame, too_big_reply(&packet, None, 1476, 548));
    }

    #[test]
    fn an_ipv4_packet_too_big_without_df_is_dropped_untouched() {
        let w = world(&["10.1.0.1"]);
        let input = plain(&udp4_of_len(CLIENT4, 1500, false));
        let (out, _, buf) = run_in(&input, ROOM, &ctx(&w));
        assert_eq!(out, TOO_BIG);
        assert_eq!(buf, untouched(&input, ROOM));
    }

    #[test]
    fn an_ipv6_packet_too_big_gets_the_exact_packet_too_big_frame() {
        let w = v4_and_v6(&[]);
        let packet = udp6_of_len(CLIENT6, 1500);
        let input = plain(&packet);
        let (out, frame, buf) = run_in(&input, ROOM, &ctx(&w));
        assert_eq!(out, REPLIED);
        // 1500 - 44, quoting up to the 1280 bytes of the IPv6 minimum MTU.
        assert_eq!(frame, too_big_reply(&packet, None, 1456, 1232));
        assert_eq!(frame.len(), 14 + 1280);
        assert!(buf[input.len()..].iter().all(|&b| b == SPARE));
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6");
        };
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6");
        };
        let (src, dst) = (ip.header().source(), ip.header().destination());
        let sum = icmp.icmp_type().calc_checksum(src, dst, icmp.payload());
        assert_eq!(Ok(icmp.checksum()), sum);
        assert_eq!((src, dst), (NODE6, CLIENT6));
    }

    #[test]
    fn process_without_spare_room_replies_in_the_frame_it_has() {
        let w = v4_and_v6(&["10.1.0.1"]);
        for (packet, want) in [
            (udp4_of_len(CLIENT4, 1500, true), 548),
            (udp6_of_len(CLIENT6, 1500), 1232),
        ] {
            let mut f = plain(&packet);
            assert_eq!(process(&mut f, &ctx(&w)), REPLIED);
            let mtu = if want == 548 { 1476 } else { 1456 };
            let reply = too_big_reply(&packet, None, mtu, want);
            assert_eq!(f[..reply.len()], reply[..]);
        }
    }

    #[test]
    fn a_tagged_too_big_frame_is_answered_with_its_tag_kept() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let mut c = ctx(&w);
        c.vlan = Some(100);
        for (packet, mtu, quote) in [
            (udp4_of_len(CLIENT4, 1500, true), 1476, 548),
            (udp6_of_len(CLIENT6, 1500), 1456, 1232),
        ] {
            let input = ethernet(CLIENT_MAC, MAC.0, Some((100, 5)), &packet);
            let (out, frame, _) = run_in(&input, ROOM, &c);
            assert_eq!(out, REPLIED);
            assert_eq!(frame, too_big_reply(&packet, Some((100, 5)), mtu, quote));
        }
    }

    #[test]
    fn a_small_mtu_cuts_the_quote_so_the_error_is_no_longer_than_the_packet() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let mut c = ctx(&w);
        c.mtu = 400;
        let packet = udp4_of_len(CLIENT4, 400, true);
        let (out, frame, _) = run_in(&plain(&packet), ROOM, &c);
        assert_eq!(out, REPLIED);
        assert_eq!(frame, too_big_reply(&packet, None, 376, 400 - 28));
        c.mtu = 1300;
        let packet = udp6_of_len(CLIENT6, 1270);
        let (out, frame, _) = run_in(&plain(&packet), ROOM, &c);
        assert_eq!(out, REPLIED);
        assert_eq!(frame, too_big_reply(&packet, None, 1256, 1270 - 48));
        // Too little left to quote the header and 8 bytes: no reply.
        c.mtu = 60;
        let input = plain(&udp4_of_len(CLIENT4, 55, true));
        let (out, _, buf) = run_in(&input, ROOM, &c);
        assert_eq!(out, TOO_BIG);
        assert_eq!(buf, untouched(&input, ROOM));
        let (out, _, _) = run_in(&plain(&udp4_of_len(CLIENT4, 56, true)), ROOM, &c);
        assert_eq!(out, REPLIED);
    }

    /// Asserts that `packet`, sent plain, is dropped as too big with the
    /// frame untouched.
    fn assert_unanswered(packet: &[u8], c: &Context<'_, neighbours::Static>, what: &str) {
        let input = plain(packet);
        let (out, _, buf) = run_in(&input, ROOM, c);
        assert_eq!(out, TOO_BIG, "{what}");
        assert!(buf == untouched(&input, ROOM), "{what}: frame changed");
    }

    #[test]
    fn no_reply_to_an_icmp_error_but_to_an_echo() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let c = ctx(&w);
        let icmp4 = |t: etherparse::Icmpv4Type| {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ipv4(CLIENT4, VIP4, 64)
                .icmpv4(t)
                .write(&mut out, &[0x5a; 1500 - 28])
                .unwrap();
            out
        };
        let icmp6 = |t: etherparse::Icmpv6Type| {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ipv6(CLIENT6, VIP6, 64)
                .icmpv6(t)
                .write(&mut out, &[0x5a; 1500 - 48])
                .unwrap();
            out
        };
        for type_u8 in [3, 4, 5, 11, 12] {
            let t = etherparse::Icmpv4Type::Unknown {
                type_u8,
                code_u8: 0,
                bytes5to8: [0; 4],
            };
            assert_unanswered(&icmp4(t), &c, &format!("ICMP type {type_u8}"));
        }
        for type_u8 in [1, 2, 3, 4, 127] {
            let t = etherparse::Icmpv6Type::Unknown {
                type_u8,
                code_u8: 0,
                bytes5to8: [0; 4],
            };
            assert_unanswered(&icmp6(t), &c, &format!("ICMPv6 type {type_u8}"));
        }
        let echo = etherparse::IcmpEchoHeader { id: 1, seq: 1 };
        let ping = icmp4(etherparse::Icmpv4Type::EchoRequest(echo));
        assert_eq!(run_in(&plain(&ping), ROOM, &c).0, REPLIED);
        let ping = icmp6(etherparse::Icmpv6Type::EchoRequest(echo));
        assert_eq!(run_in(&plain(&ping), ROOM, &c).0, REPLIED);
    }

    #[test]
    fn no_reply_to_a_non_first_fragment_but_to_a_first_one() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let c = ctx(&w);
        let data = [0x5a; 1480];
        // IPv4 with DF set, so only the offset stands in the way.
        let fragment4 = |offset: u16, more: bool| {
            let mut h = etherparse::Ipv4Header::new(
                data.len() as u16,
                64,
                etherparse::IpNumber::UDP,
                CLIENT4,
                VIP4,
            )
            .unwrap();
            h.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
            h.more_fragments = more;
            let mut out = Vec::new();
            h.write(&mut out).unwrap();
            out.extend_from_slice(&data);
            out
        };
        let fragment6 = |offset: u16, more: bool| {
            let fh = etherparse::Ipv6FragmentHeader::new(
                etherparse::IpNumber::UDP,
                etherparse::IpFragOffset::try_new(offset).unwrap(),
                more,
                7,
            );
            let mut out = Vec::new();
            etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: (8 + data.len() - 28) as u16,
                next_header: etherparse::IpNumber::IPV6_FRAGMENTATION_HEADER,
                hop_limit: 64,
                source: CLIENT6,
                destination: VIP6,
            }
            .write(&mut out)
            .unwrap();
            out.extend_from_slice(&fh.to_bytes());
            out.extend_from_slice(&data[28..]);
            out
        };
        assert_unanswered(&fragment4(185, false), &c, "IPv4 at 1480");
        assert_unanswered(&fragment4(1, true), &c, "IPv4 at 8");
        assert_unanswered(&fragment6(185, false), &c, "IPv6 at 1480");
        assert_unanswered(&fragment6(1, true), &c, "IPv6 at 8");
        assert_eq!(run_in(&plain(&fragment4(0, true)), ROOM, &c).0, REPLIED);
        assert_eq!(run_in(&plain(&fragment6(0, true)), ROOM, &c).0, REPLIED);
    }

    #[test]
    fn no_reply_to_a_source_that_is_not_one_host() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let c = ctx(&w);
        for src in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [239, 255, 255, 250],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert_unanswered(&udp4_of_len(src, 1500, true), &c, &format!("{src:?}"));
        }
        for src in ["::", "::1", "ff02::1", "ff0e::1234"] {
            let a: core::net::Ipv6Addr = src.parse().unwrap();
            assert_unanswered(&udp6_of_len(a.octets(), 1500), &c, src);
        }
    }

    #[test]
    fn no_reply_to_a_link_layer_broadcast_or_multicast_or_from_a_group_mac() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let c = ctx(&w);
        let packet = udp4_of_len(CLIENT4, 1500, true);
        for (src, dst) in [
            (CLIENT_MAC, [0xff; 6]),
            (CLIENT_MAC, [0x01, 0, 0x5e, 0, 0, 1]),
            ([0x01, 0, 0x5e, 0, 0, 1], MAC.0),
        ] {
            let input = ethernet(src, dst, None, &packet);
            let (out, _, buf) = run_in(&input, ROOM, &c);
            assert_eq!(out, TOO_BIG, "{src:?} -> {dst:?}");
            assert_eq!(buf, untouched(&input, ROOM));
        }
    }

    #[test]
    fn no_reply_without_a_primary_address_of_the_family() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let mut c = ctx(&w);
        c.primary_v4 = None;
        c.primary_v6 = None;
        for packet in [udp4_of_len(CLIENT4, 1500, true), udp6_of_len(CLIENT6, 1500)] {
            let input = plain(&packet);
            let (out, _, buf) = run_in(&input, ROOM, &c);
            // No source for the encapsulation, nor for an error.
            assert_eq!(out, Outcome::of(Verdict::Drop(DropReason::NoBackend), None));
            assert_eq!(buf, untouched(&input, ROOM));
        }
    }

    #[test]
    fn a_reply_tracks_no_flow() {
        let w = World {
            tables: tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1)]),
            ..world(&["10.1.0.1", "10.1.0.2"])
        };
        let flows = conntrack::Table::new(64, 60);
        let mut c = ctx(&w);
        c.flows = Some(&flows);
        let (out, _, _) = run_in(&plain(&udp4_of_len(CLIENT4, 1500, true)), ROOM, &c);
        assert_eq!(
            (out.verdict, out.track, out.id),
            (REPLIED.verdict, Track::Off, None)
        );
        assert_eq!(flows.count(0), 0);
    }

    #[test]
    fn a_plain_frame_without_room_to_grow_is_too_big() {
        let w = world(&["10.1.0.1"]);
        let c = ctx(&w);
        let frame = plain(&packet4(VIP4, true, 40000, 0));
        let mut f = frame.clone();
        assert_eq!(
            process(&mut f, &c),
            Outcome::of(Verdict::Drop(DropReason::TooBig), None)
        );
        assert_eq!(f, frame);
        let (out, _, buf) = run_in(&frame, 23, &c);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::TooBig));
        assert_eq!(buf, untouched(&frame, 23));
        assert_eq!(run_in(&frame, 24, &c).0.verdict, Verdict::Forward);
    }

    #[test]
    fn a_plain_frame_with_link_padding_is_encapsulated_without_it() {
        let w = world(&["10.1.0.1"]);
        let packet = packet4(VIP4, false, 40000, 0);
        let mut frame = plain(&packet);
        frame.extend_from_slice(&[0; 6]);
        let (out, f, _) = run_in(&frame, ROOM, &ctx(&w));
        assert_eq!(out.verdict, Verdict::Forward);
        assert_eq!(f, encapsulated(&packet, out.backend.unwrap(), None, 0));
    }

    #[test]
    fn neighbour_discovery_to_an_ipv6_vip_goes_to_the_host() {
        let w = v4_and_v6(&[]);
        for t in [
            etherparse::Icmpv6Type::NeighborSolicitation,
            etherparse::Icmpv6Type::Unknown {
                type_u8: 137,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
        ] {
            let mut ns = Vec::new();
            etherparse::PacketBuilder::ethernet2(CLIENT_MAC, MAC.0)
                .ipv6(CLIENT6, VIP6, 255)
                .icmpv6(t)
                .write(&mut ns, &VIP6)
                .unwrap();
            let (out, _, buf) = run_in(&ns, ROOM, &ctx(&w));
            assert_eq!(out, Outcome::TO_HOST);
            assert_eq!(buf, untouched(&ns, ROOM));
        }
        // An echo request is the service's, not the host's.
        let mut ping = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, MAC.0)
            .ipv6(CLIENT6, VIP6, 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut ping, b"ping")
            .unwrap();
        assert_eq!(run_in(&ping, ROOM, &ctx(&w)).0.verdict, Verdict::Forward);
    }

    #[test]
    fn plain_ip_to_an_address_that_is_not_announced_goes_to_the_host() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let mut other6 = VIP6;
        other6[15] = 0x11;
        for frame in [
            plain(&packet4([192, 0, 2, 2], true, 40000, 0)),
            plain(&packet4(NODE, true, 40000, 0)),
            plain(&packet6(other6, 40000, 0)),
        ] {
            let (out, _, buf) = run_in(&frame, ROOM, &ctx(&w));
            assert_eq!(out, Outcome::TO_HOST);
            assert_eq!(buf, untouched(&frame, ROOM));
        }
    }

    #[test]
    fn gre_to_a_local_address_is_readdressed_in_place_not_encapsulated() {
        let w = world(&["10.1.0.1"]);
        let input = gre_frame(64);
        let mut exact = input.clone();
        let want = process(&mut exact, &ctx(&w));
        let (out, frame, buf) = run_in(&input, ROOM, &ctx(&w));
        assert_eq!(out, want);
        assert_eq!(out.verdict, Verdict::Forward);
        assert_eq!(frame, exact);
        assert!(buf[input.len()..].iter().all(|&b| b == SPARE));
    }

    #[test]
    fn a_tagged_plain_frame_keeps_its_tag() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let mut c = ctx(&w);
        c.vlan = Some(100);
        let backend: IpAddr = "10.1.0.1".parse().unwrap();
        let packet = packet4(VIP4, true, 40000, 0);
        let frame = ethernet(CLIENT_MAC, MAC.0, Some((100, 5)), &packet);
        let (out, f, _) = run_in(&frame, ROOM, &c);
        assert_eq!(out, Outcome::of(Verdict::Forward, Some(backend)));
        assert_eq!(f, encapsulated(&packet, backend, Some((100, 5)), 0));
        // Untagged on a tagged node: not ours.
        assert_eq!(run_in(&plain(&packet), ROOM, &c).0, Outcome::TO_HOST);
    }

    #[test]
    fn a_plain_frame_whose_backend_has_no_neighbour_names_it_and_is_left_alone() {
        let mut w = world(&["10.1.0.1"]);
        w.neighbours = neighbours::Static::new(Vec::new(), None);
        let frame = plain(&packet4(VIP4, true, 40000, 0));
        let (out, _, buf) = run_in(&frame, ROOM, &ctx(&w));
        assert_eq!(
            out,
            Outcome::of(
                Verdict::Drop(DropReason::NoNeighbour),
                Some("10.1.0.1".parse().unwrap())
            )
        );
        assert_eq!(buf, untouched(&frame, ROOM));
    }

    #[test]
    fn a_plain_frame_without_a_primary_address_of_its_family_has_no_backend() {
        let w = v4_and_v6(&["10.1.0.1"]);
        let mut c = ctx(&w);
        c.primary_v4 = None;
        let frame = plain(&packet4(VIP4, true, 40000, 0));
        let (out, _, buf) = run_in(&frame, ROOM, &c);
        assert_eq!(out, Outcome::of(Verdict::Drop(DropReason::NoBackend), None));
        assert_eq!(buf, untouched(&frame, ROOM));
        // The other family still has its primary.
        let frame = plain(&packet6(VIP6, 40000, 0));
        assert_eq!(run_in(&frame, ROOM, &c).0.verdict, Verdict::Forward);
    }

    #[test]
    fn a_malformed_plain_packet_gets_the_inner_packets_drop_reason() {
        let w = world(&["10.1.0.1"]);
        let mut tcp = packet4(VIP4, true, 40000, 0);
        tcp.truncate(20 + 12);
        let mut h = etherparse::Ipv4HeaderSlice::from_slice(&tcp)
            .unwrap()
            .to_header();
        h.set_payload_len(12).unwrap();
        h.header_checksum = h.calc_header_checksum();
        tcp[..20].copy_from_slice(&h.to_bytes());
        let frame = plain(&tcp);
        let (out, _, buf) = run_in(&frame, ROOM, &ctx(&w));
        assert_eq!(out.verdict, Verdict::Drop(DropReason::MalformedInner));
        assert_eq!(buf, untouched(&frame, ROOM));
        let (gre, _, _) = run_in(&in_gre(&tcp, false), ROOM, &ctx(&w));
        assert_eq!(gre.verdict, out.verdict);
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

        /// The same for plain frames to a VIP through `process_in`, with
        /// any spare room: a buffer neither forwarded nor replied to is
        /// untouched, spare room included; an encapsulated frame carries
        /// the packet unchanged behind a valid outer header, and nothing
        /// past it changes; a reply is a valid error (`check_reply`).
        #[test]
        fn mutated_plain_frames_to_a_vip_never_panic_and_only_forwards_and_replies_change_bytes(
            v6 in any::<bool>(),
            edits in proptest::collection::vec((0usize..100, any::<u8>()), 0..4),
            cut in 0usize..120,
            room in 0usize..80,
            track in any::<bool>(),
        ) {
            let mut w = v4_and_v6(&["10.1.0.1", "10.1.0.2"]);
            let flows = conntrack::Table::new(64, 60);
            if track {
                w.tables = tracked(&[("10.1.0.1", 1), ("10.1.0.2", 1)]);
            }
            let mut input = plain(&if v6 {
                packet6(VIP6, 40000, 0)
            } else {
                packet4(VIP4, true, 40000, 0)
            });
            for (at, v) in edits {
                if let Some(b) = input.get_mut(at) {
                    *b = v;
                }
            }
            input.truncate(cut.max(1));
            let mut c = ctx(&w);
            c.flows = track.then_some(&flows);
            let (out, f, buf) = run_in(&input, room, &c);
            if let Verdict::Reply(_) = out.verdict {
                return check_reply(&input, &f, &buf, &c);
            }
            if out.verdict != Verdict::Forward {
                prop_assert_eq!(buf, untouched(&input, room));
                return Ok(());
            }
            let end = f.len().max(input.len());
            prop_assert!(buf[end..].iter().all(|&b| b == SPARE));
            let l3 = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
            let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            let added = match p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    let h = ip.header().to_header();
                    prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
                    24
                }
                Some(etherparse::NetSlice::Ipv6(_)) => 44,
                _ => return Err(TestCaseError::fail("forwarded neither IPv4 nor IPv6")),
            };
            if f.len() != input.len() {
                let len = f.len() - l3 - added;
                prop_assert_eq!(&f[l3 + added..], &input[l3..l3 + len]);
            }
        }

        /// Plain frames too big for any MTU, mutated in their headers and
        /// cut anywhere: no panic; a frame not replied to is untouched
        /// unless forwarded, and a reply is a valid error (`check_reply`).
        #[test]
        fn mutated_too_big_plain_frames_never_panic_and_only_replies_change_bytes(
            v6 in any::<bool>(),
            len in 60usize..1600,
            mtu in 0u16..1700,
            edits in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            cut in 0usize..1700,
            room in 0usize..80,
        ) {
            let w = v4_and_v6(&["10.1.0.1", "10.1.0.2"]);
            let mut input = plain(&if v6 {
                udp6_of_len(CLIENT6, len)
            } else {
                udp4_of_len(CLIENT4, len, true)
            });
            for (at, v) in edits {
                if let Some(b) = input.get_mut(at) {
                    *b = v;
                }
            }
            input.truncate(cut.max(1));
            let mut c = ctx(&w);
            c.mtu = mtu;
            let (out, f, buf) = run_in(&input, room, &c);
            match out.verdict {
                Verdict::Reply(reason) => {
                    prop_assert_eq!(reason, DropReason::TooBig);
                    check_reply(&input, &f, &buf, &c)?;
                }
                Verdict::Forward => {
                    let end = f.len().max(input.len());
                    prop_assert!(buf[end..].iter().all(|&b| b == SPARE));
                }
                _ => prop_assert_eq!(buf, untouched(&input, room)),
            }
        }
    }

    /// A reply to `input` (`frame`, in `buf` after it) is an ICMP error
    /// as etherparse reads it: back to the sender's MAC and address from
    /// ours, no longer than the input and within 576 or 1280 bytes, with
    /// valid checksums, the MTU less our overhead, and a quote of the
    /// input's IP packet. Nothing past the input changed.
    fn check_reply(
        input: &[u8],
        frame: &[u8],
        buf: &[u8],
        c: &Context<'_, neighbours::Static>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(frame.len() <= input.len());
        prop_assert!(buf[input.len()..].iter().all(|&b| b == SPARE));
        let l3 = if input[12..14] == [0x81, 0x00] {
            18
        } else {
            14
        };
        prop_assert_eq!(&frame[..6], &input[6..12]);
        prop_assert_eq!(&frame[6..12], &MAC.0);
        prop_assert_eq!(&frame[12..l3], &input[12..l3]);
        // Only the sender's IP header: the rest may be mutated past
        // what etherparse accepts.
        let sent = &input[l3..];
        let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let quote = match (&p.net, &p.transport) {
            (
                Some(etherparse::NetSlice::Ipv4(ip)),
                Some(etherparse::TransportSlice::Icmpv4(icmp)),
            ) => {
                let sent = etherparse::Ipv4HeaderSlice::from_slice(sent).unwrap();
                let h = ip.header().to_header();
                prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
                prop_assert_eq!((h.source, h.destination), (NODE, sent.source()));
                prop_assert!(!h.dont_fragment && h.time_to_live == 64);
                prop_assert!(usize::from(h.total_len) <= 576);
                prop_assert!(sent.dont_fragment());
                let want = etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: c.mtu.saturating_sub(24),
                };
                prop_assert_eq!(
                    icmp.icmp_type(),
                    etherparse::Icmpv4Type::DestinationUnreachable(want)
                );
                prop_assert_eq!(
                    icmp.checksum(),
                    icmp.icmp_type().calc_checksum(icmp.payload())
                );
                icmp.payload()
            }
            (
                Some(etherparse::NetSlice::Ipv6(ip)),
                Some(etherparse::TransportSlice::Icmpv6(icmp)),
            ) => {
                let sent = etherparse::Ipv6HeaderSlice::from_slice(sent).unwrap();
                let h = ip.header();
                let (src, dst) = (h.source(), h.destination());
                prop_assert_eq!((src, dst), (NODE6, sent.source()));
                prop_assert_eq!(h.hop_limit(), 64);
                prop_assert!(40 + usize::from(h.payload_length()) <= 1280);
                let want = etherparse::Icmpv6Type::PacketTooBig {
                    mtu: u32::from(c.mtu.saturating_sub(44)),
                };
                prop_assert_eq!(icmp.icmp_type(), want);
                let sum = icmp.icmp_type().calc_checksum(src, dst, icmp.payload());
                prop_assert_eq!(Ok(icmp.checksum()), sum);
                icmp.payload()
            }
            _ => return Err(TestCaseError::fail("a reply that is no ICMP error")),
        };
        prop_assert_eq!(quote, &input[l3..l3 + quote.len()]);
        Ok(())
    }
}
