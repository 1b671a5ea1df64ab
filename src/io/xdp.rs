//! The XDP steering program (`ffi/xdp/steer.c`): loading, attaching and
//! its maps.
//!
//! We load our own program instead of libxdp's default, whose dispatcher
//! does not load on every kernel and which leaves no room for our
//! filtering. It is attached through a BPF link, so the kernel detaches it
//! when the last descriptor goes, even after SIGKILL.

use super::chain;
use crate::config::XdpMode;
use aya::Ebpf;
use aya::Pod;
use aya::maps::{Array, HashMap, MapData, XskMap};
use aya::programs::{Xdp, XdpFlags};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// The program's name in the kernel: how a leftover is recognised as ours.
pub const PROGRAM_NAME: &str = "rr_steer";

/// The most queues, and local addresses or VIPs of one family, the
/// program's maps hold (`MAX_QUEUES`, `MAX_ADDRS` in steer.c).
pub const MAX_QUEUES: u32 = 256;
pub const MAX_ADDRS: usize = 256;

// The ELF parser wants the object 8-byte aligned.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.o")));
static BENCH_OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bench.o")));

/// The throughput run's XDP programs (`ffi/xdp/bench.c`), as an ELF object.
pub fn bench_object() -> &'static [u8] {
    &BENCH_OBJECT.0
}

/// Why steering could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the XDP program: {0}")]
    Load(String),
    #[error("cannot attach the XDP program to {device} in {mode} mode: {message}")]
    Attach {
        device: String,
        mode: &'static str,
        message: String,
    },
    #[error("cannot fill the XDP program's {map} map: {message}")]
    Map { map: &'static str, message: String },
    #[error("{0} local addresses or VIPs of one family; the XDP program holds at most {MAX_ADDRS}")]
    TooManyAddresses(usize),
}

/// The mode the program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    fn flags(self) -> XdpFlags {
        match self {
            Mode::Native => XdpFlags::DRV_MODE,
            Mode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

/// The attached program. Dropping it detaches the program.
pub struct Steering {
    ebpf: Ebpf,
    mode: Mode,
}

impl Steering {
    /// Loads the program, fills its maps and attaches it to `device`.
    /// In `Auto` mode a device without native XDP gets generic mode, and
    /// one line is logged saying so.
    pub fn attach(
        device: &str,
        index: u32,
        mode: XdpMode,
        vlan: Option<u16>,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
    ) -> Result<Steering, Error> {
        let (v4, v6) = (keys_v4(v4)?, keys_v6(v6)?);
        let mut ebpf = Ebpf::load(&OBJECT.0).map_err(|e| Error::Load(chain(&e)))?;
        {
            let map_err = |e: aya::maps::MapError| Error::Map {
                map: "rr_conf",
                message: chain(&e),
            };
            let mut conf: Array<&mut MapData, u32> = ebpf
                .map_mut("rr_conf")
                .ok_or_else(|| Error::Load("no rr_conf map in the object".to_string()))?
                .try_into()
                .map_err(map_err)?;
            conf.set(0, u32::from(vlan.unwrap_or(0)), 0)
                .map_err(map_err)?;
        }
        sync(&mut ebpf, "rr_local4", &v4)?;
        sync(&mut ebpf, "rr_local6", &v6)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| Error::Load(format!("no {PROGRAM_NAME} program in the object")))?
            .try_into()
            .map_err(|e| Error::Load(chain(&e)))?;
        program.load().map_err(|e| Error::Load(chain(&e)))?;
        let attach = |program: &mut Xdp, mode: Mode| {
            program
                .attach_to_if_index(index, mode.flags())
                .map(|_| mode)
                .map_err(|e| Error::Attach {
                    device: device.to_string(),
                    mode: mode.name(),
                    message: chain(&e),
                })
        };
        let mode = match mode {
            XdpMode::Native => attach(program, Mode::Native)?,
            XdpMode::Generic => attach(program, Mode::Generic)?,
            XdpMode::Auto => match attach(program, Mode::Native) {
                Ok(mode) => mode,
                Err(e) => {
                    log::info!("{e}; falling back to generic mode");
                    attach(program, Mode::Generic)?
                }
            },
        };
        Ok(Steering { ebpf, mode })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Makes the program steer GRE to exactly these local addresses and
    /// plain IP to exactly these VIPs. Each map is checked before any
    /// changes, and loses its stale entries before it gains new ones.
    pub fn set_addresses(
        &mut self,
        local_v4: &[Ipv4Addr],
        local_v6: &[Ipv6Addr],
        vips_v4: &[Ipv4Addr],
        vips_v6: &[Ipv6Addr],
    ) -> Result<(), Error> {
        let (local4, local6) = (keys_v4(local_v4)?, keys_v6(local_v6)?);
        let (vip4, vip6) = (keys_v4(vips_v4)?, keys_v6(vips_v6)?);
        sync(&mut self.ebpf, "rr_local4", &local4)?;
        sync(&mut self.ebpf, "rr_local6", &local6)?;
        sync(&mut self.ebpf, "rr_vip4", &vip4)?;
        sync(&mut self.ebpf, "rr_vip6", &vip6)
    }

    /// Steers `queue`'s frames to the AF_XDP socket `fd`.
    pub fn register(&mut self, queue: u32, fd: RawFd) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Map {
            map: "rr_xsks",
            message: chain(&e),
        };
        let mut xsks: XskMap<&mut MapData> = self
            .ebpf
            .map_mut("rr_xsks")
            .ok_or_else(|| Error::Load("no rr_xsks map in the object".to_string()))?
            .try_into()
            .map_err(map_err)?;
        xsks.set(queue, fd, 0).map_err(map_err)
    }
}

/// IPv4 map keys: the address bytes as they sit in the header.
fn keys_v4(addrs: &[Ipv4Addr]) -> Result<BTreeSet<u32>, Error> {
    limit(
        addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect(),
    )
}

fn keys_v6(addrs: &[Ipv6Addr]) -> Result<BTreeSet<[u8; 16]>, Error> {
    limit(addrs.iter().map(|a| a.octets()).collect())
}

fn limit<K>(keys: BTreeSet<K>) -> Result<BTreeSet<K>, Error> {
    if keys.len() > MAX_ADDRS {
        return Err(Error::TooManyAddresses(keys.len()));
    }
    Ok(keys)
}

/// Makes the address map `name` hold exactly `want`.
fn sync<K: Pod + Ord>(
    ebpf: &mut Ebpf,
    name: &'static str,
    want: &BTreeSet<K>,
) -> Result<(), Error> {
    let map_err = |e: aya::maps::MapError| Error::Map {
        map: name,
        message: chain(&e),
    };
    let mut map: HashMap<&mut MapData, K, u8> = ebpf
        .map_mut(name)
        .ok_or_else(|| Error::Load(format!("no {name} map in the object")))?
        .try_into()
        .map_err(map_err)?;
    let have = map
        .keys()
        .collect::<Result<BTreeSet<K>, _>>()
        .map_err(map_err)?;
    for stale in have.difference(want) {
        map.remove(stale).map_err(map_err)?;
    }
    for key in want.difference(&have) {
        map.insert(key, 1, 0).map_err(map_err)?;
    }
    Ok(())
}

/// The name of the loaded BPF program with this id, if it still exists.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::netlink;
    use crate::control::netns::{self, Netns, RawPort};
    use crate::dataplane::worker::Port;
    use crate::dataplane::{
        Context, DropReason, Service, Tables, Verdict, flow, neighbours, process_in,
    };
    use crate::io::xsk;
    use crate::maglev::Backend;
    use crate::wire::ethernet;
    use etherparse::{IpNumber, PacketBuilder, SlicedPacket};
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
    const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 1, 0, 0, 0, 1);
    const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 2);
    const CLIENT4: [u8; 4] = [192, 0, 2, 9];
    const CLIENT6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
    ];

    #[test]
    fn address_sets_count_each_address_once_and_at_most_max_addrs() {
        let one = [Ipv4Addr::new(10, 0, 0, 1); MAX_ADDRS + 1];
        assert_eq!(keys_v4(&one).unwrap().len(), 1);
        let many: Vec<Ipv6Addr> = (0..=MAX_ADDRS as u16)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))
            .collect();
        assert!(matches!(
            keys_v6(&many),
            Err(Error::TooManyAddresses(n)) if n == MAX_ADDRS + 1
        ));
        assert_eq!(keys_v6(&many[..MAX_ADDRS]).unwrap().len(), MAX_ADDRS);
    }

    /// A namespace with a veth pair: lb0 (LOCAL4, LOCAL6), where the
    /// program and the socket go, and pe0, where frames come from.
    fn setup(test: &str) -> Option<Netns> {
        if netns::skip_unless_root(test) {
            return None;
        }
        let ns = Netns::new("xdp");
        ns.ip("link add lb0 type veth peer name pe0");
        ns.ip(&format!("addr add {LOCAL4}/24 dev lb0"));
        ns.ip(&format!("addr add {LOCAL6}/64 dev lb0 nodad"));
        ns.ip("link set lb0 up");
        ns.ip("link set pe0 up");
        Some(ns)
    }

    /// Attaches the program to lb0 (generic mode) with a copy-mode socket
    /// on queue 0; call inside the namespace.
    fn attach() -> (Steering, xsk::Socket) {
        let dev = netlink::device("lb0").unwrap();
        let mut steering = Steering::attach(
            "lb0",
            dev.index,
            XdpMode::Generic,
            None,
            &[LOCAL4],
            &[LOCAL6],
        )
        .unwrap();
        let socket = xsk::Socket::open("lb0", 0, 256, xsk::Copy::Copy, None).unwrap();
        steering.register(0, socket.fd()).unwrap();
        (steering, socket)
    }

    /// Plain UDP from the client to `dst`, port `port`, built by etherparse.
    fn udp(to: [u8; 6], dst: IpAddr, port: u16) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], to);
        let mut out = Vec::new();
        match dst {
            IpAddr::V4(d) => eth
                .ipv4(CLIENT4, d.octets(), 64)
                .udp(port, 53)
                .write(&mut out, b"rusty"),
            IpAddr::V6(d) => eth
                .ipv6(CLIENT6, d.octets(), 64)
                .udp(port, 53)
                .write(&mut out, b"rusty"),
        }
        .unwrap();
        out
    }

    /// Plain UDP from the client at `from` to VIP4, port `port`, 1500
    /// bytes of IPv4 with DF set (etherparse's default): 24 bytes too big
    /// for a 1500-byte MTU once encapsulated.
    fn too_big(from: [u8; 6], to: [u8; 6], port: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(from, to)
            .ipv4(CLIENT4, VIP4.octets(), 64)
            .udp(port, 53)
            .write(&mut out, &[0x5a; 1500 - 28])
            .unwrap();
        out
    }

    /// GRE to LOCAL4 carrying plain UDP to VIP4 from `port`.
    fn gre(to: [u8; 6], port: u16) -> Vec<u8> {
        let mut inner = Vec::new();
        PacketBuilder::ipv4(CLIENT4, VIP4.octets(), 64)
            .udp(port, 53)
            .write(&mut inner, b"rusty")
            .unwrap();
        let mut payload = vec![0, 0, 0x08, 0x00];
        payload.extend_from_slice(&inner);
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], to)
            .ipv4([10, 77, 0, 9], LOCAL4.octets(), 64)
            .write(&mut out, IpNumber::GRE, &payload)
            .unwrap();
        out
    }

    /// A neighbour solicitation for VIP6, sent to VIP6.
    fn solicitation(to: [u8; 6]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], to)
            .ipv6(CLIENT6, VIP6.octets(), 255)
            .icmpv6(etherparse::Icmpv6Type::NeighborSolicitation)
            .write(&mut out, &VIP6.octets())
            .unwrap();
        out
    }

    /// UDP source ports of the frames the socket is handed within `wait`,
    /// each dropped, or `decide`d when given.
    fn received(
        socket: &mut xsk::Socket,
        wait: Duration,
        mut decide: impl FnMut(&mut [u8], usize) -> (Verdict, usize),
    ) -> Vec<u16> {
        let mut ports = Vec::new();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            socket.poll(64, |buf, len| {
                if let Ok(p) = SlicedPacket::from_ethernet(&buf[..len]) {
                    // The innermost UDP header: etherparse stops at GRE,
                    // whose UDP ports sit 8 bytes from the packet's end.
                    let port = match p.transport {
                        Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
                        _ => u16::from_be_bytes([buf[len - 13], buf[len - 12]]),
                    };
                    ports.push(port);
                }
                decide(buf, len)
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        ports.sort_unstable();
        ports
    }

    #[test]
    fn steering_sends_gre_to_local_addresses_and_plain_ip_to_held_vips_but_not_neighbour_discovery()
    {
        let Some(ns) = setup("steering_sends_plain_ip_to_held_vips") else {
            return;
        };
        let mut peer = RawPort::open(&ns, "pe0");
        ns.run(move || {
            let (mut steering, mut socket) = attach();
            let to = netlink::device("lb0").unwrap().mac;
            let drop = |_: &mut [u8], len| (Verdict::Drop(DropReason::NoBackend), len);
            let send_all = |peer: &mut RawPort| {
                peer.send(&gre(to, 1001));
                peer.send(&udp(to, VIP4.into(), 1002));
                peer.send(&udp(to, VIP6.into(), 1003));
                peer.send(&udp(to, LOCAL4.into(), 1004));
                peer.send(&solicitation(to));
            };
            // VIPs not held yet: only GRE.
            send_all(&mut peer);
            assert_eq!(
                received(&mut socket, Duration::from_millis(300), drop),
                [1001]
            );
            steering
                .set_addresses(&[LOCAL4], &[LOCAL6], &[VIP4], &[VIP6])
                .unwrap();
            // Twice is the same as once.
            steering
                .set_addresses(&[LOCAL4], &[LOCAL6], &[VIP4], &[VIP6])
                .unwrap();
            send_all(&mut peer);
            assert_eq!(
                received(&mut socket, Duration::from_millis(300), drop),
                [1001, 1002, 1003]
            );
            // VIPs released, and the local address moved: nothing of it.
            steering
                .set_addresses(&[Ipv4Addr::new(10, 77, 0, 3)], &[], &[], &[VIP6])
                .unwrap();
            send_all(&mut peer);
            assert_eq!(
                received(&mut socket, Duration::from_millis(300), drop),
                [1003]
            );
            let too_many: Vec<Ipv4Addr> = (0..=MAX_ADDRS as u32).map(Ipv4Addr::from).collect();
            assert!(matches!(
                steering.set_addresses(&[], &[], &too_many, &[]),
                Err(Error::TooManyAddresses(_))
            ));
        });
    }

    #[test]
    fn a_socket_sends_plain_frames_encapsulated_at_their_grown_length_and_answers_a_too_big_one() {
        let Some(ns) = setup("a_socket_sends_encapsulated_frames_and_answers_a_too_big_one") else {
            return;
        };
        let mut peer = RawPort::open(&ns, "pe0");
        let peer_mac = peer.mac();
        ns.run(move || {
            let (mut steering, mut socket) = attach();
            steering
                .set_addresses(&[LOCAL4], &[LOCAL6], &[VIP4], &[VIP6])
                .unwrap();
            let dev = netlink::device("lb0").unwrap();
            let key = [7; 16];
            let backends = [IpAddr::V4(BACKEND4), IpAddr::V6(BACKEND6)]
                .map(|addr| Backend { addr, weight: 1 });
            let tables = Tables::new(
                1,
                Some(Service::build(None, &backends, &key, 251).unwrap()),
                Vec::new(),
            )
            .unwrap();
            let entries = backends
                .iter()
                .map(|b| (b.addr, ethernet::Address(peer_mac)))
                .collect();
            let neighbours = neighbours::Static::new(entries, None);
            let hasher = flow::Hasher::new(&key);
            let ctx = Context {
                mac: ethernet::Address(dev.mac),
                local_v4: &[LOCAL4.octets()],
                local_v6: &[LOCAL6.octets()],
                vips_v4: &[VIP4.octets()],
                vips_v6: &[VIP6.octets()],
                primary_v4: Some(LOCAL4.octets()),
                primary_v6: Some(LOCAL6.octets()),
                mtu: 1500,
                vlan: None,
                hasher: &hasher,
                tables: &tables,
                neighbours: &neighbours,
                flows: None,
                now: 0,
            };
            let sent = [
                gre(dev.mac, 2001),
                udp(dev.mac, VIP4.into(), 2002),
                udp(dev.mac, VIP6.into(), 2003),
                too_big(peer_mac, dev.mac, 2004),
            ];
            for f in &sent {
                peer.send(f);
            }
            let ports = received(&mut socket, Duration::from_millis(300), |buf, len| {
                let (out, len) = process_in(buf, len, &ctx);
                (out.verdict, len)
            });
            assert_eq!(ports, [2001, 2002, 2003, 2004]);
            let is_gre = |f: &[u8]| match SlicedPacket::from_ethernet(f).map(|p| p.net) {
                Ok(Some(etherparse::NetSlice::Ipv4(ip))) => {
                    ip.header().protocol() == IpNumber::GRE
                        && ip.header().destination_addr() == BACKEND4
                }
                Ok(Some(etherparse::NetSlice::Ipv6(ip))) => {
                    ip.header().next_header() == IpNumber::GRE
                        && ip.header().destination_addr() == BACKEND6
                }
                _ => false,
            };
            let is_error = |f: &[u8]| match SlicedPacket::from_ethernet(f) {
                Ok(p) => matches!(
                    (p.net, p.transport),
                    (
                        Some(etherparse::NetSlice::Ipv4(_)),
                        Some(etherparse::TransportSlice::Icmpv4(_))
                    )
                ),
                Err(_) => false,
            };
            let (errors, got): (Vec<_>, Vec<_>) = peer
                .recv_matching(4, Duration::from_secs(1), |f| is_gre(f) || is_error(f))
                .into_iter()
                .partition(|f| is_error(f));
            // The too-big packet comes back to its sender as "fragmentation
            // needed", from the node, quoting the packet's first 548 bytes.
            let [error] = &errors[..] else {
                panic!("{} ICMP errors", errors.len());
            };
            assert_eq!(error.len(), 14 + 576);
            assert_eq!((&error[..6], &error[6..12]), (&peer_mac[..], &dev.mac[..]));
            let p = SlicedPacket::from_ethernet(error).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                unreachable!();
            };
            let h = ip.header();
            assert_eq!((h.source_addr(), h.destination()), (LOCAL4, CLIENT4));
            let Some(etherparse::TransportSlice::Icmpv4(icmp)) = &p.transport else {
                unreachable!();
            };
            let frag_needed = etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1476,
            };
            assert_eq!(
                icmp.icmp_type(),
                etherparse::Icmpv4Type::DestinationUnreachable(frag_needed)
            );
            assert_eq!(
                icmp.checksum(),
                icmp.icmp_type().calc_checksum(icmp.payload())
            );
            assert_eq!(icmp.payload(), &sent[3][14..14 + 548]);
            let mut lens: Vec<usize> = got.iter().map(Vec::len).collect();
            lens.sort_unstable();
            // GRE readdressed in place; plain IPv4 and IPv6 grown by their
            // outer header and GRE.
            let mut want = vec![sent[0].len(), sent[1].len() + 24, sent[2].len() + 44];
            want.sort_unstable();
            assert_eq!(lens, want);
            for f in &got {
                // Each ends with the client's UDP packet as it was sent.
                let tail = &f[f.len() - 13..];
                assert_eq!(&tail[8..], b"rusty");
            }
        });
    }
}
