//! A packet socket for address announcements: sends whole Ethernet frames
//! on one device and receives only untagged ARP and ICMPv6 neighbour
//! solicitations and advertisements, filtered in the kernel so the rest of
//! the device's traffic never reaches user space.
//!
//! It never sets promiscuous mode or joins multicast groups: what it hears
//! is what the device accepts anyway (broadcast, frames to its MAC, and the
//! groups the host stack joined).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const SO_ATTACH_FILTER: libc::c_int = 26;

const ETHERTYPE_ARP: u32 = 0x0806;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const ICMPV6: u32 = 58;
const NEIGHBOR_SOLICIT: u32 = 135;
const NEIGHBOR_ADVERT: u32 = 136;
/// Offsets in an untagged Ethernet frame.
const AT_ETHERTYPE: u32 = 12;
const AT_IPV6_NEXT_HEADER: u32 = 14 + 6;
const AT_ICMPV6_TYPE: u32 = 14 + 40;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// `jt`/`jf` count instructions skipped after this one.
fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The classic BPF program: accept untagged ARP, and untagged IPv6 whose
/// next header is ICMPv6 with type 135 or 136; drop everything else.
///
/// The receive path moves an 802.1Q tag out of the frame into metadata
/// before packet sockets see it, so "untagged" is the `vlan_avail`
/// ancillary load, not a look at the ethertype.
fn filter() -> [libc::sock_filter; 12] {
    const LD: u32 = libc::BPF_LD | libc::BPF_ABS;
    const ACCEPT: u32 = u32::MAX;
    let vlan_avail = (libc::SKF_AD_OFF + libc::SKF_AD_VLAN_TAG_PRESENT) as u32;
    [
        /* 0 */ stmt(LD | libc::BPF_W, vlan_avail),
        /* 1 */ jeq(0, 0, 9), // tagged: drop
        /* 2 */ stmt(LD | libc::BPF_H, AT_ETHERTYPE),
        /* 3 */ jeq(ETHERTYPE_ARP, 6, 0), // ARP: accept
        /* 4 */ jeq(ETHERTYPE_IPV6, 0, 6),
        /* 5 */ stmt(LD | libc::BPF_B, AT_IPV6_NEXT_HEADER),
        /* 6 */ jeq(ICMPV6, 0, 4),
        /* 7 */ stmt(LD | libc::BPF_B, AT_ICMPV6_TYPE),
        /* 8 */ jeq(NEIGHBOR_SOLICIT, 1, 0),
        /* 9 */ jeq(NEIGHBOR_ADVERT, 0, 1),
        /* 10 */ stmt(libc::BPF_RET | libc::BPF_K, ACCEPT),
        /* 11 */ stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

/// A raw packet socket bound to one device; see the module doc.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens the socket on the device with index `ifindex`. Needs
    /// CAP_NET_RAW.
    pub fn open(ifindex: u32) -> io::Result<Socket> {
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        // Protocol 0 until bind: an unbound ETH_P_ALL socket would already
        // queue every frame of every device, unfiltered.
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = Socket { fd };

        // Otherwise we would read back every frame the device sends,
        // our own announcements included.
        let one: libc::c_int = 1;
        sock.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &one)?;
        let mut program = filter();
        let fprog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_mut_ptr(),
        };
        // The kernel copies the program during the call.
        sock.setsockopt(libc::SOL_SOCKET, SO_ATTACH_FILTER, &fprog)?;

        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: all-zero bytes are a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a live sockaddr_ll of the size we pass; the
        // kernel only reads it.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Anything queued before the filter applied is not ours to read.
        sock.drain()?;
        Ok(sock)
    }

    fn setsockopt<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` is a live `T` of the size we pass, and the kernel
        // only reads it (copying what it keeps) during the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Discards every queued frame.
    fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 1];
        loop {
            match self.recv_now(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One nonblocking recv(2); a longer frame is cut to `buf`.
    fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`,
        // which we borrow mutably for the call.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Sends one whole Ethernet frame out of the device, as is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: the kernel reads `frame.len()` bytes from `frame`,
            // borrowed for the call; a bound packet socket needs no address.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            match usize::try_from(n) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "sent {n} of {} bytes",
                        frame.len()
                    )));
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for a frame and copies it into `buf` (cut to
    /// its length); returns how many bytes were copied, or None when the
    /// time ran out.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_now(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                Err(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Round up, so a sub-millisecond remainder does not spin.
            let ms = i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // Readable, an error to collect, or time up: the next recv or
            // deadline check tells which.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::announce::frames;
    use crate::control::netns::{self, Netns, RawPort};
    use etherparse::{Icmpv6Type, PacketBuilder, VlanId};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 1];
    const WAIT: Duration = Duration::from_secs(2);

    /// A veth pair between two fresh namespaces: a sender whose kernel is
    /// kept quiet (IPv6 off, no addresses, so no DAD, RS or MLD of its
    /// own) and a receiver. Returns (sender ns, its ifname, receiver ns,
    /// its ifname, its ifindex).
    fn pair(test: &str) -> Option<(Netns, String, Netns, String, u32)> {
        if netns::skip_unless_root(test) {
            return None;
        }
        let tx = Netns::new("pkt-tx");
        tx.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        tx.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        let rx = Netns::new("pkt-rx");
        let (tx_if, rx_if) = (netns::unique_ifname("pt"), netns::unique_ifname("pr"));
        netns::veth(&tx, &tx_if, &rx, &rx_if);
        tx.ip(&format!(
            "link set {tx_if} address {}",
            netns::mac_string(PEER_MAC)
        ));
        let index = rx
            .run(|| crate::io::device_index(&rx_if))
            .expect("rx ifindex");
        Some((tx, tx_if, rx, rx_if, index))
    }

    fn open_in(ns: &Netns, index: u32) -> Socket {
        ns.run(|| Socket::open(index)).expect("open packet socket")
    }

    fn recv_one(sock: &Socket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf, WAIT).expect("recv")?;
        Some(buf[..n].to_vec())
    }

    fn udp_v4() -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER_MAC, [0xff; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 255], 64)
            .udp(9, 9)
            .write_to_vec(&mut f, &[0; 32])
            .unwrap();
        f
    }

    fn echo_v6() -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER_MAC, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                "fe80::1".parse::<Ipv6Addr>().unwrap().octets(),
                "ff02::1".parse::<Ipv6Addr>().unwrap().octets(),
                255,
            )
            .icmpv6(Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader {
                id: 1,
                seq: 1,
            }))
            .write_to_vec(&mut f, &[0; 16])
            .unwrap();
        f
    }

    fn tagged_arp() -> Vec<u8> {
        let arp = etherparse::ArpEthIpv4Packet {
            operation: etherparse::ArpOperation::REQUEST,
            sender_mac: PEER_MAC,
            sender_ipv4: [10, 0, 0, 7],
            target_mac: [0; 6],
            target_ipv4: [10, 0, 0, 7],
        };
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER_MAC, [0xff; 6])
            .single_vlan(VlanId::try_new(7).unwrap())
            .arp(arp.into())
            .write_to_vec(&mut f)
            .unwrap();
        f.resize(64, 0);
        f
    }

    #[test]
    fn arp_and_neighbour_frames_arrive_byte_identical() {
        let Some((tx, tx_if, rx, _, index)) = pair("arp_and_neighbour_frames_arrive") else {
            return;
        };
        let sock = open_in(&rx, index);
        let mut port = RawPort::open(&tx, &tx_if);
        let sent = [
            frames::arp_announcement(PEER_MAC, Ipv4Addr::new(10, 0, 0, 7)),
            frames::na_announcement(PEER_MAC, "2001:db8::7".parse().unwrap()),
            frames::ns_probe(PEER_MAC, "2001:db8::8".parse().unwrap()),
        ];
        for frame in &sent {
            port.send(frame);
        }
        for frame in &sent {
            assert_eq!(recv_one(&sock).as_ref(), Some(frame));
        }
    }

    #[test]
    fn other_traffic_is_dropped_in_the_kernel() {
        let Some((tx, tx_if, rx, _, index)) = pair("other_traffic_is_dropped") else {
            return;
        };
        let sock = open_in(&rx, index);
        let mut port = RawPort::open(&tx, &tx_if);
        let mut not_nd = echo_v6();
        not_nd[54] = 134; // router advertisement: ICMPv6, but not NS/NA
        for frame in [udp_v4(), echo_v6(), not_nd, tagged_arp()] {
            port.send(&frame);
        }
        // The veth keeps order: if any of those got through, it would come
        // before this one.
        let sentinel = frames::arp_probe(PEER_MAC, Ipv4Addr::new(10, 0, 0, 8));
        port.send(&sentinel);
        assert_eq!(recv_one(&sock), Some(sentinel));
        let mut buf = [0u8; 2048];
        let quiet = sock.recv(&mut buf, Duration::from_millis(200)).unwrap();
        assert_eq!(quiet, None, "{:02x?}", &buf[..quiet.unwrap_or(0)]);
    }

    #[test]
    fn sent_frames_reach_the_peer_and_are_not_read_back() {
        let Some((tx, tx_if, rx, rx_if, index)) = pair("sent_frames_reach_the_peer") else {
            return;
        };
        let sock = open_in(&rx, index);
        let mut port = RawPort::open(&tx, &tx_if);
        let mac = rx.run(|| {
            crate::control::netlink::device(&rx_if)
                .expect("rx device")
                .mac
        });
        let frame = frames::na_announcement(mac, "2001:db8::9".parse().unwrap());
        sock.send(&frame).unwrap();
        let got = port.recv_matching(1, WAIT, |f| f == frame.as_slice());
        assert_eq!(got, [frame]);
        let mut buf = [0u8; 2048];
        assert_eq!(
            sock.recv(&mut buf, Duration::from_millis(200)).unwrap(),
            None,
            "own frame read back"
        );
        let out = rx.exec(&["ip", "-d", "-j", "link", "show", "dev", &rx_if]);
        let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(link[0]["promiscuity"], 0, "{link}");
    }

    #[test]
    fn recv_times_out_with_none() {
        let Some((_tx, _, rx, _, index)) = pair("recv_times_out_with_none") else {
            return;
        };
        let sock = open_in(&rx, index);
        let mut buf = [0u8; 64];
        let start = Instant::now();
        assert_eq!(
            sock.recv(&mut buf, Duration::from_millis(150)).unwrap(),
            None
        );
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn open_on_a_missing_device_fails() {
        if netns::skip_unless_root("open_on_a_missing_device_fails") {
            return;
        }
        let ns = Netns::new("pkt-none");
        let err = ns.run(|| Socket::open(999_999)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }
}
