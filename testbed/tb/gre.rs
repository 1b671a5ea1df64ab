//! The GRE endpoints: `gre-router` (the router's encapsulation and ECMP)
//! and `gre-server` (a server's decapsulation), both over TUN devices the
//! topology created, since this kernel has no GRE devices.

use crate::{Result, handle_signals, help, value};
use serde_json::{Value, json};
use siphasher::sip::SipHasher13;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const IPPROTO_GRE: i32 = 47;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const OUTER_LEN: usize = 20;
const GRE_LEN: usize = 4;
/// Room for any IP packet a tun or raw socket can hand us.
const BUFFER: usize = 65_536;

// ---------------------------------------------------------------------------
// TUN

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` with just the members TUNSETIFF reads, fully
/// initialised so no union has to be zeroed.
#[repr(C)]
struct TunRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(size_of::<TunRequest>() == size_of::<libc::ifreq>());

/// Reads one packet, retrying interrupted reads and, 10 ms apart so as not
/// to spin, failed ones (counted in `failed`).
fn read_one(mut reader: impl Read, buf: &mut [u8], failed: &AtomicU64) -> usize {
    loop {
        match reader.read(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The decapsulator's socket buffers.
const RECEIVE_BUFFER: libc::c_int = 16 << 20;

/// Seen on Linux 6.18: GRE that our raw socket has no room for is answered
/// with ICMP protocol unreachable (a full socket does not count as taking
/// the packet), which rusty_rail's passive health
/// check rightly reads as "no GRE endpoint here". A large buffer keeps a
/// briefly descheduled decapsulator from looking dead. Needs CAP_NET_ADMIN
/// to exceed net.core.rmem_max; failing that, the default stays.
fn force_receive_buffer(socket: &Socket, bytes: libc::c_int) {
    // SAFETY: setsockopt(2) on a socket we own, reading one c_int that
    // lives across the call, with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!(
            "receive buffer stays at the default: {}",
            io::Error::last_os_error()
        );
    }
}

/// Attaches to the existing persistent tun device `name`: one IP packet
/// per read and write, no packet-information prefix.
fn open_tun(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // TUNSETIFF would create a missing device; we only attach.
    if !std::path::Path::new(&format!("/sys/class/net/{name}/tun_flags")).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no tun device {name}"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = TunRequest {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `file` is an open /dev/net/tun descriptor and `request` a
    // live, initialised struct laid out as the `struct ifreq` TUNSETIFF
    // reads (name, then flags), which outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request as *mut TunRequest) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("tun {name}: {e}")));
    }
    Ok(file)
}

// ---------------------------------------------------------------------------
// Pure packet functions

/// Why a received packet could not be decapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an IPv4 header, or than its own header or total length.
    ShortOuter,
    /// Outer version not 4, or a header length under 20 bytes.
    BadOuter,
    /// Outer protocol not GRE.
    NotGre,
    /// Shorter than the GRE header its flags announce.
    ShortGre,
    /// GRE version other than 0.
    GreVersion,
    /// Routing present (RFC 1701 source routing, which nobody sends).
    GreRouting,
    /// Protocol type other than IPv4 or IPv6.
    GreProtocol,
    /// No inner packet, or one whose version does not match the protocol.
    Inner,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::ShortOuter,
        Malformed::BadOuter,
        Malformed::NotGre,
        Malformed::ShortGre,
        Malformed::GreVersion,
        Malformed::GreRouting,
        Malformed::GreProtocol,
        Malformed::Inner,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Malformed::ShortOuter => "short_outer",
            Malformed::BadOuter => "bad_outer",
            Malformed::NotGre => "not_gre",
            Malformed::ShortGre => "short_gre",
            Malformed::GreVersion => "gre_version",
            Malformed::GreRouting => "gre_routing",
            Malformed::GreProtocol => "gre_protocol",
            Malformed::Inner => "inner",
        }
    }
}

/// What an IPv4 GRE packet carried.
#[derive(Debug, PartialEq, Eq)]
pub struct Decapsulated<'a> {
    pub inner: &'a [u8],
    pub dont_fragment: bool,
}

/// Strips the outer IPv4 header (as a raw IPv4 socket delivers it) and
/// the GRE header.
pub fn decapsulate(packet: &[u8]) -> std::result::Result<Decapsulated<'_>, Malformed> {
    if packet.len() < OUTER_LEN {
        return Err(Malformed::ShortOuter);
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if packet[0] >> 4 != 4 || header_len < OUTER_LEN {
        return Err(Malformed::BadOuter);
    }
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total_len < header_len || total_len > packet.len() {
        return Err(Malformed::ShortOuter);
    }
    if packet[9] != IPPROTO_GRE as u8 {
        return Err(Malformed::NotGre);
    }
    let dont_fragment = packet[6] & 0x40 != 0;
    let inner = decapsulate_gre(&packet[header_len..total_len])?;
    Ok(Decapsulated {
        inner,
        dont_fragment,
    })
}

/// Strips a GRE header (RFC 2784 with the RFC 2890 key and sequence
/// number), returning the inner IPv4 or IPv6 packet.
pub fn decapsulate_gre(gre: &[u8]) -> std::result::Result<&[u8], Malformed> {
    if gre.len() < GRE_LEN {
        return Err(Malformed::ShortGre);
    }
    let (flags, version) = (gre[0], gre[1] & 0x07);
    if version != 0 {
        return Err(Malformed::GreVersion);
    }
    if flags & 0x40 != 0 {
        return Err(Malformed::GreRouting);
    }
    // Checksum (with its reserved half), key, sequence number: 4 bytes each.
    let optional = [0x80u8, 0x20, 0x10]
        .iter()
        .filter(|bit| flags & **bit != 0)
        .count()
        * 4;
    let start = GRE_LEN + optional;
    if gre.len() < start {
        return Err(Malformed::ShortGre);
    }
    let wanted = match u16::from_be_bytes([gre[2], gre[3]]) {
        ETHERTYPE_IPV4 => 4,
        ETHERTYPE_IPV6 => 6,
        _ => return Err(Malformed::GreProtocol),
    };
    let inner = &gre[start..];
    match inner.first() {
        Some(first) if first >> 4 == wanted => Ok(inner),
        _ => Err(Malformed::Inner),
    }
}

/// Writes outer IPv4 (DF set, TTL 64, protocol GRE), a 4-byte GRE header
/// and `inner` into `buf`; the length written, or None when `inner` is
/// not IPv4 or IPv6 or the result does not fit `buf` or an IPv4 packet.
pub fn encapsulate(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    inner: &[u8],
    buf: &mut [u8],
) -> Option<usize> {
    let protocol = match inner.first()? >> 4 {
        4 => ETHERTYPE_IPV4,
        6 => ETHERTYPE_IPV6,
        _ => return None,
    };
    let total = OUTER_LEN + GRE_LEN + inner.len();
    let total_field = u16::try_from(total).ok()?;
    let out = buf.get_mut(..total)?;
    let header = &mut out[..OUTER_LEN];
    header[0] = 0x45;
    header[1] = 0;
    header[2..4].copy_from_slice(&total_field.to_be_bytes());
    // Identification 0: the kernel picks one for raw sends.
    header[4..6].fill(0);
    // Don't fragment, offset 0: a router must not fragment the tunnel.
    header[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    header[8] = 64;
    header[9] = IPPROTO_GRE as u8;
    header[10..12].fill(0);
    header[12..16].copy_from_slice(&source.octets());
    header[16..20].copy_from_slice(&destination.octets());
    let checksum = ipv4_checksum(header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    out[OUTER_LEN..OUTER_LEN + 2].fill(0);
    out[OUTER_LEN + 2..OUTER_LEN + 4].copy_from_slice(&protocol.to_be_bytes());
    out[OUTER_LEN + GRE_LEN..].copy_from_slice(inner);
    Some(total)
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An inner packet's ECMP hash and whether it opens a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub hash: u64,
    pub syn: bool,
}

/// A fixed key, so a flow maps to the same LB in every run.
const HASH_KEY: (u64, u64) = (0x7275_7374_795f_7261, 0x696c_5f65_636d_7021);

/// Hashes the 5-tuple of an IPv4 or IPv6 packet (the 3-tuple for
/// protocols without ports and for fragments after the first); None
/// for anything that is not an IP packet.
pub fn flow(packet: &[u8]) -> Option<Flow> {
    let (source, destination, protocol, transport) = match packet.first()? >> 4 {
        4 => {
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            if header_len < 20 || packet.len() < header_len {
                return None;
            }
            let first_fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff == 0;
            let transport = first_fragment.then(|| &packet[header_len..]);
            (&packet[12..16], &packet[16..20], packet[9], transport)
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let (protocol, transport) = ipv6_transport(packet);
            (&packet[8..24], &packet[24..40], protocol, transport)
        }
        _ => return None,
    };
    let mut hasher = SipHasher13::new_with_keys(HASH_KEY.0, HASH_KEY.1);
    hasher.write(source);
    hasher.write(destination);
    hasher.write_u8(protocol);
    let mut syn = false;
    if let Some(transport) = transport
        && (protocol == 6 || protocol == 17)
        && transport.len() >= 4
    {
        hasher.write(&transport[..4]);
        // SYN without ACK.
        syn = protocol == 6 && transport.get(13).is_some_and(|f| f & 0x12 == 0x02);
    }
    Some(Flow {
        hash: hasher.finish(),
        syn,
    })
}

/// Walks IPv6 extension headers to the transport protocol; the transport
/// bytes are None for a fragment after the first or a chain we cannot
/// follow.
fn ipv6_transport(packet: &[u8]) -> (u8, Option<&[u8]>) {
    let mut next = packet[6];
    let mut offset = 40;
    // A bound on the chain, so a crafted packet cannot keep us walking.
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                let Some(header) = packet.get(offset..offset + 2) else {
                    return (next, None);
                };
                next = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            // Fragment.
            44 => {
                let Some(header) = packet.get(offset..offset + 8) else {
                    return (next, None);
                };
                next = header[0];
                offset += 8;
                if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                    return (next, None);
                }
            }
            _ => return (next, packet.get(offset..)),
        }
    }
    (next, None)
}

/// The router's ECMP choice: `hash % live count` over the live LBs, in the
/// order given.
pub fn choose(hash: u64, live: &[bool]) -> Option<usize> {
    let count = live.iter().filter(|up| **up).count();
    if count == 0 {
        return None;
    }
    let pick = (hash % count as u64) as usize;
    live.iter()
        .enumerate()
        .filter(|(_, up)| **up)
        .nth(pick)
        .map(|(index, _)| index)
}

/// One LB's liveness with hysteresis: two results in a row against the
/// current state change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub up: bool,
    against: u8,
}

impl Liveness {
    pub fn new(up: bool) -> Liveness {
        Liveness { up, against: 0 }
    }

    /// Records a check; the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.against = 0;
            return None;
        }
        self.against += 1;
        if self.against < 2 {
            return None;
        }
        self.up = ok;
        self.against = 0;
        Some(ok)
    }
}

// ---------------------------------------------------------------------------
// gre-router

const ROUTER_HELP: &str = "\
usage: rr-testbed gre-router --tun NAME --source ADDR --lb ADDR [--lb ADDR ...]
                             [--check-port PORT] [--check-interval-ms MS]

Reads IP packets the kernel routes into the tun NAME, picks a live LB by a
5-tuple hash (hash % live count, LBs in the order given) and sends each
GRE-encapsulated from ADDR (outer IPv4, DF set) to that LB.

  --tun NAME             existing persistent tun device (ip tuntap add dev NAME mode tun)
  --source ADDR          local IPv4 address for the outer header
  --lb ADDR              an LB node's IPv4 address; repeat for each, order matters
  --check-port PORT      check each LB with HTTP GET /healthz on ADDR:PORT; two
                         failures in a row take it out, two successes bring it back
                         (without it every LB is always live)
  --check-interval-ms MS time between checks and each check's timeout (default 100)

Prints `ready` on stderr once serving, `lb ADDR down` / `lb ADDR up` on each
change, one JSON line of counters on stdout at SIGUSR1 (and carries on), and a
last one at SIGTERM or SIGINT.";

struct RouterOptions {
    tun: String,
    source: Ipv4Addr,
    lbs: Vec<Ipv4Addr>,
    check_port: Option<u16>,
    check_interval: Duration,
}

fn router_options(args: Vec<OsString>) -> Result<RouterOptions> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let (mut tun, mut source, mut lbs, mut check_port, mut interval) =
        (None, None, Vec::new(), None, 100u64);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("tun") => tun = Some(value::<String>(&mut parser, "--tun")?),
            Long("source") => source = Some(value(&mut parser, "--source")?),
            Long("lb") => lbs.push(value(&mut parser, "--lb")?),
            Long("check-port") => check_port = Some(value(&mut parser, "--check-port")?),
            Long("check-interval-ms") => interval = value(&mut parser, "--check-interval-ms")?,
            Short('h') | Long("help") => help(ROUTER_HELP),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if lbs.is_empty() {
        return Err("at least one --lb is needed".into());
    }
    if interval == 0 {
        return Err("--check-interval-ms must be above 0".into());
    }
    Ok(RouterOptions {
        tun: tun.ok_or("--tun is needed")?,
        source: source.ok_or("--source is needed")?,
        lbs,
        check_port,
        check_interval: Duration::from_millis(interval),
    })
}

#[derive(Default)]
struct LbCounters {
    packets: AtomicU64,
    syns: AtomicU64,
}

#[derive(Default)]
struct RouterCounters {
    received: AtomicU64,
    malformed: AtomicU64,
    no_live_lb: AtomicU64,
    too_big: AtomicU64,
    send_failed: AtomicU64,
    read_failed: AtomicU64,
}

pub fn router_main(args: Vec<OsString>) -> Result<()> {
    let options = router_options(args)?;
    let tun = open_tun(&options.tun)?;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_GRE)))?;
    // We write the outer header ourselves: that is the one way to have DF
    // on every packet without setsockopt(IP_MTU_DISCOVER), which socket2
    // does not offer. The kernel still fills in the checksum and an ID,
    // and refuses (EMSGSIZE) rather than fragments what does not fit.
    socket.set_header_included_v4(true)?;
    socket
        .bind(&SocketAddrV4::new(options.source, 0).into())
        .map_err(|e| format!("bind to {}: {e}", options.source))?;
    // The socket also receives every GRE packet for this host; we never
    // read them, so keep that queue small.
    let _ = socket.set_recv_buffer_size(4096);

    let lbs: Arc<Vec<Ipv4Addr>> = Arc::new(options.lbs.clone());
    let live: Arc<Vec<AtomicBool>> = Arc::new(lbs.iter().map(|_| AtomicBool::new(true)).collect());
    let per_lb: Arc<Vec<LbCounters>> =
        Arc::new(lbs.iter().map(|_| LbCounters::default()).collect());
    let counters = Arc::new(RouterCounters::default());

    {
        let (lbs, live, per_lb, counters) =
            (lbs.clone(), live.clone(), per_lb.clone(), counters.clone());
        let report = move || router_report(&lbs, &live, &per_lb, &counters);
        let on_usr1 = report.clone();
        // SIGUSR1: the counters so far, on stdout, and carry on.
        handle_signals(&[libc::SIGUSR1], report, move |_| {
            println!("{}", on_usr1());
        })?;
    }

    if let Some(port) = options.check_port {
        start_checks(&lbs, &live, port, options.check_interval)?;
    }
    eprintln!("ready");
    route(
        &tun,
        &socket,
        options.source,
        &lbs,
        &live,
        &per_lb,
        &counters,
    );
    Ok(())
}

fn router_report(
    lbs: &[Ipv4Addr],
    live: &[AtomicBool],
    per_lb: &[LbCounters],
    counters: &RouterCounters,
) -> Value {
    let mut by_lb = serde_json::Map::new();
    for ((lb, up), c) in lbs.iter().zip(live).zip(per_lb) {
        by_lb.insert(
            lb.to_string(),
            json!({
                "packets": c.packets.load(Ordering::Relaxed),
                "syns": c.syns.load(Ordering::Relaxed),
                "live": up.load(Ordering::Relaxed),
            }),
        );
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "received": load(&counters.received),
        "lbs": by_lb,
        "drops": {
            "malformed": load(&counters.malformed),
            "no_live_lb": load(&counters.no_live_lb),
            "too_big": load(&counters.too_big),
            "send_failed": load(&counters.send_failed),
        },
        "read_failed": load(&counters.read_failed),
    })
}

/// The forwarding loop; runs until the signal thread exits the process.
fn route(
    tun: &File,
    socket: &Socket,
    source: Ipv4Addr,
    lbs: &[Ipv4Addr],
    live: &[AtomicBool],
    per_lb: &[LbCounters],
    counters: &RouterCounters,
) {
    let mut packet = vec![0u8; BUFFER];
    let mut out = vec![0u8; BUFFER + OUTER_LEN + GRE_LEN];
    let mut snapshot = Vec::with_capacity(lbs.len());
    let destinations: Vec<SockAddr> = lbs
        .iter()
        .map(|lb| SocketAddrV4::new(*lb, 0).into())
        .collect();
    let mut reader = tun;
    loop {
        let n = read_one(&mut reader, &mut packet, &counters.read_failed);
        counters.received.fetch_add(1, Ordering::Relaxed);
        let inner = &packet[..n];
        let Some(flow) = flow(inner) else {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        snapshot.clear();
        snapshot.extend(live.iter().map(|up| up.load(Ordering::Relaxed)));
        let Some(index) = choose(flow.hash, &snapshot) else {
            counters.no_live_lb.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(len) = encapsulate(source, lbs[index], inner, &mut out) else {
            counters.too_big.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match socket.send_to(&out[..len], &destinations[index]) {
            Ok(_) => {
                per_lb[index].packets.fetch_add(1, Ordering::Relaxed);
                if flow.syn {
                    per_lb[index].syns.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                counters.too_big.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.send_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Checks each LB on a thread of its own (a slow one must not delay the
/// others). The first check sets the initial state, so at `ready` the
/// live set reflects what answered.
fn start_checks(
    lbs: &Arc<Vec<Ipv4Addr>>,
    live: &Arc<Vec<AtomicBool>>,
    port: u16,
    interval: Duration,
) -> Result<()> {
    let first: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = lbs
            .iter()
            .map(|lb| scope.spawn(move || check(SocketAddr::from((*lb, port)), interval)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    });
    for (index, ok) in first.into_iter().enumerate() {
        live[index].store(ok, Ordering::Relaxed);
        eprintln!("lb {} {}", lbs[index], if ok { "up" } else { "down" });
        let (lbs, live) = (lbs.clone(), live.clone());
        std::thread::Builder::new()
            .name(format!("check-{}", lbs[index]))
            .spawn(move || {
                let target = SocketAddr::from((lbs[index], port));
                let mut state = Liveness::new(ok);
                let mut next = Instant::now() + interval;
                loop {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += interval;
                    if let Some(up) = state.record(check(target, interval)) {
                        live[index].store(up, Ordering::Relaxed);
                        eprintln!("lb {} {}", lbs[index], if up { "up" } else { "down" });
                    }
                    // After a stall, resume from now instead of catching up.
                    if next < Instant::now() {
                        next = Instant::now() + interval;
                    }
                }
            })?;
    }
    Ok(())
}

/// One HTTP/1.0 `GET /healthz`: true for a 200 within `timeout`.
fn check(target: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let attempt = || -> io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(io::Error::from(io::ErrorKind::TimedOut))
        };
        stream.set_write_timeout(Some(left()?))?;
        stream.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            stream.set_read_timeout(Some(left()?))?;
            match stream.read(&mut chunk)? {
                0 => break,
                n => response.extend_from_slice(&chunk[..n]),
            }
            if response.len() > 16 * 1024 {
                break;
            }
        }
        Ok(status_is_200(&response))
    };
    attempt().unwrap_or(false)
}

/// True for an HTTP/1.x status line with status 200.
pub fn status_is_200(response: &[u8]) -> bool {
    response.starts_with(b"HTTP/1.")
        && response
            .splitn(3, |b| *b == b' ')
            .nth(1)
            .is_some_and(|code| code == b"200")
}

// ---------------------------------------------------------------------------
// gre-server

const SERVER_HELP: &str = "\
usage: rr-testbed gre-server --tun NAME

Receives GRE addressed to this host on raw sockets (IPv4 outer, and IPv6
outer when the host has IPv6), strips the outer and GRE headers and writes
the inner IPv4 or IPv6 packet into the tun NAME.

  --tun NAME   existing persistent tun device, configured and up

Prints `ready` on stderr once serving and one JSON line of counters on
stdout at SIGTERM or SIGINT.";

#[derive(Default)]
struct ServerCounters {
    decapsulated: AtomicU64,
    decapsulated_ipv6_outer: AtomicU64,
    outer_without_df: AtomicU64,
    malformed: [AtomicU64; Malformed::ALL.len()],
    write_failed: AtomicU64,
    read_failed: AtomicU64,
}

pub fn server_main(args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut tun = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("tun") => tun = Some(value::<String>(&mut parser, "--tun")?),
            Short('h') | Long("help") => help(SERVER_HELP),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let tun = Arc::new(open_tun(&tun.ok_or("--tun is needed")?)?);
    let v4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_GRE)))?;
    force_receive_buffer(&v4, RECEIVE_BUFFER);
    // Optional: a host without IPv6 still serves IPv4 outer.
    let v6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(IPPROTO_GRE)));
    if let Ok(v6) = &v6 {
        force_receive_buffer(v6, RECEIVE_BUFFER);
    }
    let counters = Arc::new(ServerCounters::default());
    {
        let counters = counters.clone();
        let has_v6 = v6.is_ok();
        handle_signals(&[], move || server_report(&counters, has_v6), |_| {})?;
    }
    match v6 {
        Ok(v6) => {
            let (tun, counters) = (tun.clone(), counters.clone());
            std::thread::Builder::new()
                .name("gre-v6".into())
                .spawn(move || decapsulate_loop(&v6, &tun, &counters, true))?;
        }
        Err(e) => eprintln!("no IPv6 outer: {e}"),
    }
    eprintln!("ready");
    decapsulate_loop(&v4, &tun, &counters, false);
    Ok(())
}

fn server_report(counters: &ServerCounters, has_v6: bool) -> Value {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let malformed: serde_json::Map<String, Value> = Malformed::ALL
        .iter()
        .zip(&counters.malformed)
        .map(|(m, c)| (m.name().to_string(), load(c).into()))
        .collect();
    json!({
        "decapsulated": load(&counters.decapsulated),
        "decapsulated_ipv6_outer": load(&counters.decapsulated_ipv6_outer),
        "outer_without_df": load(&counters.outer_without_df),
        "malformed": malformed,
        "write_failed": load(&counters.write_failed),
        "read_failed": load(&counters.read_failed),
        "ipv6_outer": has_v6,
    })
}

/// Receives until the signal thread exits the process. A raw IPv4 socket
/// delivers the outer header; a raw IPv6 one only what follows it.
fn decapsulate_loop(socket: &Socket, tun: &File, counters: &ServerCounters, ipv6: bool) {
    let mut packet = vec![0u8; BUFFER];
    let mut reader = socket;
    let mut writer = tun;
    loop {
        let n = read_one(&mut reader, &mut packet, &counters.read_failed);
        let result = if ipv6 {
            decapsulate_gre(&packet[..n])
        } else {
            decapsulate(&packet[..n]).map(|d| {
                if !d.dont_fragment {
                    counters.outer_without_df.fetch_add(1, Ordering::Relaxed);
                }
                d.inner
            })
        };
        let inner = match result {
            Ok(inner) => inner,
            Err(reason) => {
                let index = Malformed::ALL.iter().position(|m| *m == reason);
                if let Some(counter) = index.and_then(|i| counters.malformed.get(i)) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        // A tun takes a packet whole or not at all.
        match writer.write(inner) {
            Ok(n) if n == inner.len() => {
                counters.decapsulated.fetch_add(1, Ordering::Relaxed);
                if ipv6 {
                    counters
                        .decapsulated_ipv6_outer
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) | Err(_) => {
                counters.write_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const LB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn tcp4(source_port: u16, syn: bool) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([192, 0, 2, 7], [198, 51, 100, 1], 64).tcp(
            source_port,
            80,
            1,
            1000,
        );
        let builder = if syn { builder.syn() } else { builder.ack(5) };
        let mut out = Vec::new();
        builder.write(&mut out, b"hello").unwrap();
        out
    }

    fn udp6(source_port: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6([0x20; 16], [0x30; 16], 64)
            .udp(source_port, 53)
            .write(&mut out, b"query")
            .unwrap();
        out
    }

    /// An outer IPv4 header built by etherparse around `gre`.
    fn outer(gre: &[u8], dont_fragment: bool) -> Vec<u8> {
        let mut header = Ipv4Header::new(
            gre.len() as u16,
            64,
            IpNumber::GRE,
            LB.octets(),
            SOURCE.octets(),
        )
        .unwrap();
        header.dont_fragment = dont_fragment;
        header.header_checksum = header.calc_header_checksum();
        let mut out = Vec::new();
        header.write(&mut out).unwrap();
        out.extend_from_slice(gre);
        out
    }

    fn gre(flags: u8, version: u8, protocol: u16, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![flags, version];
        out.extend_from_slice(&protocol.to_be_bytes());
        for bit in [0x80u8, 0x20, 0x10] {
            if flags & bit != 0 {
                out.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
            }
        }
        out.extend_from_slice(inner);
        out
    }

    #[test]
    fn encapsulate_writes_a_valid_df_ipv4_gre_header_around_the_inner_packet() {
        for inner in [tcp4(40000, true), udp6(5353)] {
            let mut buf = [0u8; 2048];
            let len = encapsulate(SOURCE, LB, &inner, &mut buf).unwrap();
            assert_eq!(len, 24 + inner.len());
            let (header, rest) = Ipv4Header::from_slice(&buf[..len]).unwrap();
            assert!(header.dont_fragment);
            assert_eq!(header.protocol, IpNumber::GRE);
            assert_eq!(header.source, SOURCE.octets());
            assert_eq!(header.destination, LB.octets());
            assert_eq!(usize::from(header.total_len), len);
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let protocol = if inner[0] >> 4 == 4 {
                0x0800u16
            } else {
                0x86dd
            };
            assert_eq!(&rest[..2], &[0, 0], "no flags, version 0");
            assert_eq!(&rest[2..4], &protocol.to_be_bytes());
            assert_eq!(&rest[4..], &inner[..]);
            // And back again.
            let back = decapsulate(&buf[..len]).unwrap();
            assert_eq!(back.inner, &inner[..]);
            assert!(back.dont_fragment);
        }
    }

    #[test]
    fn encapsulate_refuses_non_ip_and_what_does_not_fit() {
        let mut buf = [0u8; 64];
        assert_eq!(encapsulate(SOURCE, LB, &[], &mut buf), None);
        assert_eq!(encapsulate(SOURCE, LB, &[0x50; 20], &mut buf), None);
        assert_eq!(encapsulate(SOURCE, LB, &tcp4(1, true), &mut buf), None);
        let mut big = vec![0u8; 70_000];
        let mut jumbo = vec![0x45u8; 65_515];
        assert_eq!(encapsulate(SOURCE, LB, &jumbo, &mut big), None);
        jumbo.truncate(65_511);
        assert_eq!(encapsulate(SOURCE, LB, &jumbo, &mut big), Some(65_535));
    }

    #[test]
    fn decapsulate_skips_checksum_key_and_sequence_fields() {
        let inner = tcp4(1234, false);
        for flags in [0x00, 0x80, 0x20, 0x10, 0xb0, 0x30] {
            let packet = outer(&gre(flags, 0, 0x0800, &inner), true);
            let out = decapsulate(&packet).unwrap();
            assert_eq!(out.inner, &inner[..], "flags {flags:#x}");
            let sliced = SlicedPacket::from_ip(out.inner).unwrap();
            assert!(matches!(sliced.transport, Some(TransportSlice::Tcp(_))));
        }
        let inner = udp6(9);
        assert_eq!(
            decapsulate_gre(&gre(0x20, 0, 0x86dd, &inner)),
            Ok(&inner[..])
        );
    }

    #[test]
    fn decapsulate_reports_each_malformation() {
        let inner = tcp4(1234, false);
        let cases: [(Vec<u8>, Malformed); 9] = [
            (vec![0x45; 10], Malformed::ShortOuter),
            (
                outer(&gre(0, 0, 0x0800, &inner), true)[..30].to_vec(),
                Malformed::ShortOuter,
            ),
            (
                {
                    let mut p = outer(&gre(0, 0, 0x0800, &inner), true);
                    p[0] = 0x65;
                    p
                },
                Malformed::BadOuter,
            ),
            (
                {
                    let mut p = outer(&gre(0, 0, 0x0800, &inner), true);
                    p[9] = 17;
                    p
                },
                Malformed::NotGre,
            ),
            (outer(&[0, 0, 8], true), Malformed::ShortGre),
            (
                outer(&gre(0xb0, 0, 0x0800, &[])[..10], true),
                Malformed::ShortGre,
            ),
            (
                outer(&gre(0, 1, 0x0800, &inner), true),
                Malformed::GreVersion,
            ),
            (
                outer(&gre(0, 0, 0x6558, &inner), true),
                Malformed::GreProtocol,
            ),
            (outer(&gre(0, 0, 0x86dd, &inner), true), Malformed::Inner),
        ];
        for (packet, expected) in cases {
            assert_eq!(decapsulate(&packet), Err(expected));
        }
        assert_eq!(
            decapsulate_gre(&gre(0x40, 0, 0x0800, &inner)),
            Err(Malformed::GreRouting)
        );
        assert_eq!(
            decapsulate_gre(&gre(0, 0, 0x0800, &[])),
            Err(Malformed::Inner)
        );
        // The outer total length bounds the inner packet: trailing bytes go.
        let mut padded = outer(&gre(0, 0, 0x0800, &inner), false);
        padded.extend_from_slice(&[0; 6]);
        let out = decapsulate(&padded).unwrap();
        assert_eq!(out.inner, &inner[..]);
        assert!(!out.dont_fragment);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decapsulate(&bytes);
            let _ = decapsulate_gre(&bytes);
            let _ = flow(&bytes);
            let mut buf = [0u8; 256];
            let _ = encapsulate(SOURCE, LB, &bytes, &mut buf);
        }

        #[test]
        fn truncated_packets_never_panic(cut in 0usize..120, flags in any::<u8>()) {
            let packet = outer(&gre(flags & 0xb0, 0, 0x0800, &tcp4(9, true)), true);
            let cut = cut.min(packet.len());
            let _ = decapsulate(&packet[..cut]);
            let _ = flow(&tcp4(9, true)[..cut.min(45)]);
            let _ = flow(&udp6(9)[..cut.min(53)]);
        }
    }

    #[test]
    fn flow_hash_is_stable_per_flow_and_sees_ports_and_syns() {
        let first = flow(&tcp4(40000, true)).unwrap();
        assert!(first.syn);
        let later = flow(&tcp4(40000, false)).unwrap();
        assert!(!later.syn, "SYN-ACK or ACK is no new connection");
        assert_eq!(first.hash, later.hash);
        assert_ne!(first.hash, flow(&tcp4(40001, true)).unwrap().hash);
        assert_eq!(flow(&udp6(7)), flow(&udp6(7)));
        assert_ne!(flow(&udp6(7)).unwrap().hash, flow(&udp6(8)).unwrap().hash);
        assert_eq!(flow(&[0x50; 40]), None);
    }

    #[test]
    fn later_fragments_hash_on_the_three_tuple() {
        let mut a = tcp4(1000, false);
        let mut b = tcp4(2000, false);
        for packet in [&mut a, &mut b] {
            packet[6] = 0x00;
            packet[7] = 0x10; // offset 16 * 8 bytes
        }
        assert_eq!(flow(&a), flow(&b));
        assert_ne!(flow(&tcp4(1000, false)), flow(&a));
    }

    #[test]
    fn a_thousand_flows_spread_evenly_over_two_lbs() {
        let mut counts = [0usize; 2];
        for port in 0..1000u16 {
            let f = flow(&tcp4(30000 + port, true)).unwrap();
            counts[choose(f.hash, &[true, true]).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (400..=600).contains(c)), "{counts:?}");
    }

    #[test]
    fn ecmp_moves_flows_only_to_live_lbs() {
        assert_eq!(choose(5, &[false, false]), None);
        for hash in 0..100u64 {
            assert_eq!(choose(hash, &[false, true, false]), Some(1));
            let pick = choose(hash, &[true, false, true]).unwrap();
            assert!(pick == 0 || pick == 2);
            assert_eq!(choose(hash, &[true, true, true]), Some((hash % 3) as usize));
        }
    }

    #[test]
    fn liveness_changes_after_two_results_in_a_row() {
        let mut state = Liveness::new(true);
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(true), None, "one failure is forgiven");
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(false), Some(false));
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(true), None);
        assert_eq!(state.record(true), Some(true));
        assert!(state.up);
    }

    #[test]
    fn only_a_200_status_line_counts_as_healthy() {
        assert!(status_is_200(b"HTTP/1.0 200 OK\r\n\r\nok"));
        assert!(status_is_200(b"HTTP/1.1 200 OK\r\n"));
        assert!(!status_is_200(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_200(b"HTTP/1.1 2000"));
        assert!(!status_is_200(b""));
    }
}
