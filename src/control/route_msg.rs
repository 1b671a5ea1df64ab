//! FreeBSD routing messages, built and parsed as bytes: the RTM_GET request
//! and its reply (the next hop), the link-layer table dump (`arp -a`,
//! `ndp -a`) and getifaddrs(3)'s sockaddrs. Pure functions over byte
//! slices, so they build and are tested on every OS; `route_socket.rs`
//! feeds them what `io::route` read from the kernel.
//!
//! Layouts are those of 64-bit FreeBSD 13/14 (`sys/net/route.h`,
//! `sys/net/if_dl.h`), written as offsets here and checked against libc's
//! structs when building for FreeBSD.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall failed, or the kernel refused the request with this errno.
    #[error("routing socket: {0}")]
    Io(#[from] io::Error),
    #[error("no such network device: {0}")]
    NoSuchDevice(String),
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    #[error("malformed routing message: {0}")]
    Protocol(String),
}

/// What we need to know about a device (as in `netlink.rs`, without XDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub index: u32,
    /// All zeros when the device has no 6-byte link-layer address.
    pub mac: [u8; 6],
    pub mtu: u32,
    /// In the interface's list order: the first is the primary.
    pub v4: Vec<Ipv4Addr>,
    /// Except link-local (fe80::/10), in list order.
    pub v6: Vec<Ipv6Addr>,
}

/// `sizeof(struct rt_msghdr)`: 12 bytes, six ints, `u_long rtm_inits` and
/// `struct rt_metrics` (14 `u_long`s).
pub const HEADER_LEN: usize = 152;
/// `sizeof(long)`, what SA_SIZE pads sockaddrs to.
const LONG: usize = 8;
const MSGLEN: usize = 0;
const VERSION: usize = 2;
const TYPE: usize = 3;
const INDEX: usize = 4;
const FLAGS: usize = 8;
const ADDRS: usize = 12;
const PID: usize = 16;
const SEQ: usize = 20;
const ERRNO: usize = 24;

const RTM_VERSION: u8 = 5;
pub const RTM_GET: u8 = 4;
const RTA_DST: i32 = 0x1;
const RTA_GATEWAY: i32 = 0x2;
const RTA_IFP: i32 = 0x10;
/// RTAX_MAX: the sockaddrs a message may carry.
const RTAX_MAX: u32 = 8;
const RTF_UP: i32 = 0x1;
const RTF_GATEWAY: i32 = 0x2;
const RTF_HOST: i32 = 0x4;
const RTF_REJECT: i32 = 0x8;
const RTF_BLACKHOLE: i32 = 0x1000;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 28;
const AF_LINK: u8 = 18;
const SOCKADDR_IN_LEN: u8 = 16;
const SOCKADDR_IN6_LEN: u8 = 28;
const SOCKADDR_DL_LEN: u8 = 54;
/// Where `sdl_data` (name, then link-layer address) starts in a sockaddr_dl.
const SDL_DATA: usize = 8;

// The offsets and values above, checked against libc's FreeBSD definitions.
#[cfg(target_os = "freebsd")]
const _: () = {
    use libc::{rt_msghdr as H, sockaddr_dl as Dl};
    use std::mem::{offset_of as at, size_of};
    assert!(size_of::<H>() == HEADER_LEN && size_of::<libc::c_long>() == LONG);
    assert!(at!(H, rtm_version) == VERSION && at!(H, rtm_type) == TYPE);
    assert!(at!(H, rtm_index) == INDEX && at!(H, rtm_flags) == FLAGS && at!(H, rtm_addrs) == ADDRS);
    assert!(at!(H, rtm_pid) == PID && at!(H, rtm_seq) == SEQ && at!(H, rtm_errno) == ERRNO);
    assert!(libc::RTM_VERSION == RTM_VERSION as i32 && libc::RTM_GET == RTM_GET as i32);
    assert!(libc::RTA_DST == RTA_DST && libc::RTA_GATEWAY == RTA_GATEWAY);
    assert!(libc::RTA_IFP == RTA_IFP && libc::RTF_UP == RTF_UP && libc::RTF_HOST == RTF_HOST);
    assert!(libc::RTF_GATEWAY == RTF_GATEWAY && libc::RTF_REJECT == RTF_REJECT);
    assert!(libc::RTF_BLACKHOLE == RTF_BLACKHOLE && libc::AF_LINK == AF_LINK as i32);
    assert!(libc::AF_INET == AF_INET as i32 && libc::AF_INET6 == AF_INET6 as i32);
    assert!(size_of::<libc::sockaddr_in>() == SOCKADDR_IN_LEN as usize);
    assert!(size_of::<libc::sockaddr_in6>() == SOCKADDR_IN6_LEN as usize);
    assert!(size_of::<Dl>() == SOCKADDR_DL_LEN as usize && at!(Dl, sdl_data) == SDL_DATA);
    assert!(at!(Dl, sdl_index) == 2 && at!(Dl, sdl_nlen) == 5 && at!(Dl, sdl_alen) == 6);
    assert!(at!(libc::sockaddr_in, sin_addr) == 4 && at!(libc::sockaddr_in6, sin6_addr) == 8);
};

/// A sockaddr, reduced to what we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockaddr {
    Ip(IpAddr),
    /// sockaddr_dl: the interface index, and its address when 6 bytes long.
    Link(u16, Option<[u8; 6]>),
    /// Another family (or an empty sockaddr, family 0).
    Other(u8),
}

fn take<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Parses one sockaddr of exactly its `sa_len` bytes.
pub fn sockaddr(sa: &[u8]) -> Result<Sockaddr, Error> {
    let short = || Error::Protocol(format!("sockaddr of {} bytes", sa.len()));
    Ok(match sa.get(1).copied().unwrap_or(0) {
        AF_INET => Sockaddr::Ip(Ipv4Addr::from(take::<4>(sa, 4).ok_or_else(short)?).into()),
        AF_INET6 => {
            let mut a = take::<16>(sa, 8).ok_or_else(short)?;
            // KAME embeds the scope (interface index) in bytes 2-3 of link-local
            // unicast and multicast addresses; drop it, as ndp(8) does.
            if (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || (a[0] == 0xff && a[1] & 0x0f <= 2) {
                a[2..4].fill(0);
            }
            Sockaddr::Ip(Ipv6Addr::from(a).into())
        }
        AF_LINK => {
            let [_, _, i0, i1, _, nlen, alen, _] = take::<SDL_DATA>(sa, 0).ok_or_else(short)?;
            let mac = match alen {
                6 => Some(take::<6>(sa, SDL_DATA + usize::from(nlen)).ok_or_else(short)?),
                _ => None,
            };
            Sockaddr::Link(u16::from_ne_bytes([i0, i1]), mac)
        }
        other => Sockaddr::Other(other),
    })
}

/// SA_SIZE: `sa_len` rounded up to `sizeof(long)`, and `sizeof(long)` for 0.
fn sa_size(sa_len: usize) -> usize {
    sa_len.max(1).next_multiple_of(LONG)
}

/// One `rt_msghdr` with the sockaddrs we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub index: u16,
    pub flags: i32,
    pub errno: i32,
    pub dst: Option<Sockaddr>,
    pub gateway: Option<Sockaddr>,
    pub ifp: Option<Sockaddr>,
}

fn i32_at(h: &[u8], at: usize) -> i32 {
    take::<4>(h, at).map_or(0, i32::from_ne_bytes)
}

impl Message {
    /// The message at the start of `buf`, and its length (`rtm_msglen`).
    pub fn parse(buf: &[u8]) -> Result<(Message, usize), Error> {
        let len = take::<2>(buf, MSGLEN).map_or(0, |b| u16::from_ne_bytes(b).into());
        if len < HEADER_LEN || len > buf.len() || buf[VERSION] != RTM_VERSION {
            return Err(Error::Protocol(format!(
                "{} bytes, rtm_msglen {len}, rtm_version {:?}",
                buf.len(),
                buf.get(VERSION)
            )));
        }
        let h = &buf[..len];
        let mut m = Message {
            index: u16::from_ne_bytes([h[INDEX], h[INDEX + 1]]),
            flags: i32_at(h, FLAGS),
            errno: i32_at(h, ERRNO),
            dst: None,
            gateway: None,
            ifp: None,
        };
        let addrs = i32_at(h, ADDRS);
        let mut rest = &h[HEADER_LEN..];
        for bit in (0..RTAX_MAX).map(|i| 1 << i).filter(|bit| addrs & bit != 0) {
            let sa_len = rest.first().map(|&l| usize::from(l));
            let sa = sa_len.and_then(|l| rest.get(..l)).ok_or_else(|| {
                Error::Protocol(format!("rtm_addrs {addrs:#x}: sockaddr past the end"))
            })?;
            rest = rest.get(sa_size(sa.len())..).unwrap_or_default();
            let slot = match bit {
                RTA_DST => &mut m.dst,
                RTA_GATEWAY => &mut m.gateway,
                RTA_IFP => &mut m.ifp,
                _ => continue,
            };
            *slot = Some(sockaddr(sa)?);
        }
        Ok((m, len))
    }
}

/// An RTM_GET for the route to `dst` (longest match, as `route get`):
/// RTA_DST, and an empty RTA_IFP so the reply names the interface.
pub fn get_request(dst: IpAddr, seq: i32) -> Vec<u8> {
    let mut sa = match dst {
        IpAddr::V4(a) => [&[SOCKADDR_IN_LEN, AF_INET, 0, 0][..], &a.octets()].concat(),
        IpAddr::V6(a) => [
            &[SOCKADDR_IN6_LEN, AF_INET6, 0, 0, 0, 0, 0, 0][..],
            &a.octets(),
        ]
        .concat(),
    };
    sa.resize(sa_size(sa[0].into()), 0);
    let mut m = vec![0; HEADER_LEN];
    let len = HEADER_LEN + sa.len() + sa_size(SOCKADDR_DL_LEN.into());
    m[MSGLEN..MSGLEN + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    m[VERSION] = RTM_VERSION;
    m[TYPE] = RTM_GET;
    m[FLAGS..FLAGS + 4].copy_from_slice(&(RTF_UP | RTF_HOST).to_ne_bytes());
    m[ADDRS..ADDRS + 4].copy_from_slice(&(RTA_DST | RTA_IFP).to_ne_bytes());
    m[SEQ..SEQ + 4].copy_from_slice(&seq.to_ne_bytes());
    m.extend(sa);
    m.extend([SOCKADDR_DL_LEN, AF_LINK]);
    m.resize(len, 0);
    m
}

/// Whether `buf` is the kernel's answer to our request `seq` (the kernel
/// stamps our pid); a routing socket also hears everyone else's messages.
pub fn is_reply(buf: &[u8], pid: i32, seq: i32) -> bool {
    buf.len() >= HEADER_LEN
        && buf[VERSION] == RTM_VERSION
        && buf[TYPE] == RTM_GET
        && i32_at(buf, PID) == pid
        && i32_at(buf, SEQ) == seq
}

/// ESRCH (no matching route) and the unreachables are `NoRoute`.
pub fn kernel_error(e: io::Error, dst: IpAddr) -> Error {
    match e.raw_os_error() {
        Some(libc::ESRCH | libc::ENETUNREACH | libc::EHOSTUNREACH) => Error::NoRoute(dst),
        _ => Error::Io(e),
    }
}

/// The next hop in an RTM_GET reply for `dst`: the gateway when the route
/// has one (RTF_GATEWAY and an IP gateway), else `dst` itself (on-link:
/// an AF_LINK gateway, or an interface's own address), with the interface
/// index (`rtm_index`, else the RTA_IFP sockaddr_dl's).
pub fn next_hop(reply: &Message, dst: IpAddr) -> Result<(IpAddr, u32), Error> {
    if reply.errno != 0 {
        return Err(kernel_error(io::Error::from_raw_os_error(reply.errno), dst));
    }
    if reply.flags & (RTF_REJECT | RTF_BLACKHOLE) != 0 {
        return Err(Error::NoRoute(dst));
    }
    let index = match (reply.index, reply.ifp) {
        (0, Some(Sockaddr::Link(index, _))) => index,
        (index, _) => index,
    };
    let hop = match reply.gateway {
        Some(Sockaddr::Ip(gw)) if reply.flags & RTF_GATEWAY != 0 => Some(gw),
        None | Some(Sockaddr::Ip(_) | Sockaddr::Link(..)) => Some(dst),
        Some(Sockaddr::Other(_)) => None,
    };
    match hop {
        Some(hop) if index != 0 => Ok((hop, index.into())),
        _ => Err(Error::Protocol(format!("route to {dst}: {reply:?}"))),
    }
}

/// The complete entries (6-byte link-layer address) on interface `index`
/// in a link-layer table dump: a stream of RTM_GET messages, each with
/// RTA_DST (the neighbour) and RTA_GATEWAY (a sockaddr_dl with its MAC).
pub fn neighbours(mut dump: &[u8], index: u32) -> Result<Vec<(IpAddr, [u8; 6])>, Error> {
    let mut out = Vec::new();
    while !dump.is_empty() {
        let (m, len) = Message::parse(dump)?;
        dump = &dump[len..];
        if let (Some(Sockaddr::Ip(ip)), Some(Sockaddr::Link(on, Some(mac)))) = (m.dst, m.gateway)
            && u32::from(if m.index != 0 { m.index } else { on }) == index
        {
            out.push((ip, mac));
        }
    }
    Ok(out)
}

/// A device from getifaddrs(3)'s entries for it, each a sockaddr and, for
/// the AF_LINK one, the MTU from its `if_data`. None without an AF_LINK
/// entry (the device went away).
pub fn device<'a>(
    name: &str,
    index: u32,
    entries: impl IntoIterator<Item = (&'a [u8], Option<u32>)>,
) -> Result<Option<Device>, Error> {
    let (mut v4, mut v6, mut link) = (Vec::new(), Vec::new(), None);
    for (sa, mtu) in entries {
        match sockaddr(sa)? {
            Sockaddr::Link(_, mac) => link = Some((mac.unwrap_or_default(), mtu.unwrap_or(0))),
            Sockaddr::Ip(IpAddr::V4(a)) => v4.push(a),
            Sockaddr::Ip(IpAddr::V6(a)) if !a.is_unicast_link_local() => v6.push(a),
            _ => {}
        }
    }
    Ok(link.map(|(mac, mtu)| Device {
        name: name.to_string(),
        index,
        mac,
        mtu,
        v4,
        v6,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures, written field by field from the C definitions (amd64).

    /// struct rt_msghdr.
    fn rt_msghdr(len: u16, index: u16, flags: i32, addrs: i32, seq: i32) -> Vec<u8> {
        let mut h = len.to_ne_bytes().to_vec(); // rtm_msglen
        h.extend([5, 4]); // rtm_version (RTM_VERSION), rtm_type (RTM_GET)
        h.extend(index.to_ne_bytes()); // rtm_index
        h.extend([0, 0]); // _rtm_spare1
        h.extend(flags.to_ne_bytes()); // rtm_flags
        h.extend(addrs.to_ne_bytes()); // rtm_addrs
        h.extend(4242i32.to_ne_bytes()); // rtm_pid
        h.extend(seq.to_ne_bytes()); // rtm_seq
        h.extend([0; 4 + 4 + 8]); // rtm_errno, rtm_fmask, rtm_inits (u_long)
        h.extend([0; 14 * 8]); // rtm_rmx: 14 u_long
        h
    }

    /// struct sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes, scope 0).
    fn sa(ip: &str) -> Vec<u8> {
        match ip.parse().unwrap() {
            // sin_len, sin_family (AF_INET), sin_port, sin_addr, sin_zero
            IpAddr::V4(a) => [&[16, 2, 0, 0][..], &a.octets(), &[0; 8]].concat(),
            // sin6_len, sin6_family (AF_INET6), sin6_port, sin6_flowinfo,
            // sin6_addr, sin6_scope_id
            IpAddr::V6(a) => [&[28, 28, 0, 0, 0, 0, 0, 0][..], &a.octets(), &[0; 4]].concat(),
        }
    }

    /// struct sockaddr_dl (54 bytes) of an Ethernet interface.
    fn sdl(index: u16, name: &[u8], mac: &[u8]) -> Vec<u8> {
        let mut s = vec![54, 18]; // sdl_len, sdl_family (AF_LINK)
        s.extend(index.to_ne_bytes()); // sdl_index
        // sdl_type (IFT_ETHER), sdl_nlen, sdl_alen, sdl_slen
        s.extend([6, name.len() as u8, mac.len() as u8, 0]);
        s.extend([name, mac].concat()); // sdl_data[46]: name, then address
        s.resize(54, 0);
        s
    }

    /// struct sockaddr_dl_short (16 bytes): a route's on-link gateway.
    fn sdl_short(index: u16) -> Vec<u8> {
        let mut s = vec![16, 18]; // sdl_len, sdl_family (AF_LINK)
        s.extend(index.to_ne_bytes()); // sdl_index
        s.extend([6, 0, 0, 0]); // sdl_type, sdl_nlen, sdl_alen, sdl_slen
        s.extend([0; 8]); // sdl_data[8]
        s
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
    const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An RTM_GET reply (seq 7) as the kernel writes it: sockaddrs DST,
    /// GATEWAY, NETMASK, IFP (em0, index 2), IFA, each padded to 8 bytes.
    fn reply(flags: i32, dst: &str, gw: Vec<u8>) -> Vec<u8> {
        let (mask, ifa) = match ip(dst) {
            IpAddr::V4(_) => (sa("255.255.255.0"), sa("192.0.2.5")),
            IpAddr::V6(_) => (sa("ffff:ffff::"), sa("2001:db8::5")),
        };
        let mut body = Vec::new();
        for mut s in [sa(dst), gw, mask, sdl(2, b"em0", &MAC), ifa] {
            s.resize(s.len().next_multiple_of(8), 0);
            body.extend(s);
        }
        let mut m = rt_msghdr(
            (152 + body.len()) as u16,
            2,
            flags,
            0x1 | 0x2 | 0x4 | 0x10 | 0x20,
            7,
        );
        m.extend(body);
        m
    }

    fn next_hop_of(buf: &[u8], dst: &str) -> Result<(IpAddr, u32), Error> {
        let (m, len) = Message::parse(buf)?;
        assert_eq!(len, buf.len());
        next_hop(&m, ip(dst))
    }

    #[test]
    fn get_request_is_header_then_padded_dst_then_empty_ifp() {
        for (dst, len) in [("192.0.2.7", 224), ("2001:db8::7", 240)] {
            // RTF_UP | RTF_HOST; RTA_DST | RTA_IFP; sockaddr_dl 54 padded to 56
            let mut want = rt_msghdr(len, 0, 0x1 | 0x4, 0x1 | 0x10, -3);
            want[16..20].fill(0); // rtm_pid: the kernel fills it in
            want.extend(sa(dst));
            want.resize(want.len().next_multiple_of(8), 0);
            want.extend([54, 18]);
            want.resize(len.into(), 0);
            assert_eq!(get_request(ip(dst), -3), want, "{dst}");
        }
    }

    #[test]
    fn reply_with_inet_gateway_gives_the_gateway_and_rtm_index() {
        // RTF_UP | RTF_GATEWAY | RTF_DONE | RTF_STATIC
        let buf = reply(0x1 | 0x2 | 0x40 | 0x800, "198.51.100.9", sa("192.0.2.1"));
        assert!(is_reply(&buf, 4242, 7) && !is_reply(&buf, 4242, 8) && !is_reply(&buf, 1, 7));
        assert_eq!(
            Message::parse(&buf).unwrap().0.ifp,
            Some(Sockaddr::Link(2, Some(MAC)))
        );
        assert_eq!(
            next_hop_of(&buf, "198.51.100.9").unwrap(),
            (ip("192.0.2.1"), 2)
        );
    }

    #[test]
    fn reply_with_link_gateway_is_on_link_so_the_hop_is_dst() {
        let buf = reply(0x1 | 0x40, "192.0.2.0", sdl_short(2));
        assert_eq!(
            next_hop_of(&buf, "192.0.2.7").unwrap(),
            (ip("192.0.2.7"), 2)
        );
        // An interface route by the interface's own address: no RTF_GATEWAY.
        let buf = reply(0x1 | 0x40, "192.0.2.0", sa("192.0.2.5"));
        assert_eq!(
            next_hop_of(&buf, "192.0.2.7").unwrap(),
            (ip("192.0.2.7"), 2)
        );
    }

    #[test]
    fn ipv6_reply_gives_the_link_local_gateway_without_embedded_scope() {
        let mut gw = sa("fe80:2::1"); // scope 2 embedded in bytes 2-3 (KAME)
        gw[24..28].copy_from_slice(&2u32.to_ne_bytes()); // and in sin6_scope_id
        let buf = reply(0x1 | 0x2 | 0x40, "2001:db8:1::", gw);
        assert_eq!(
            next_hop_of(&buf, "2001:db8:1::9").unwrap(),
            (ip("fe80::1"), 2)
        );
    }

    #[test]
    fn reject_blackhole_and_esrch_are_no_route() {
        let dst = ip("192.0.2.7");
        for flags in [0x1 | 0x8, 0x1 | 0x1000] {
            let buf = reply(flags, "0.0.0.0", sa("127.0.0.1"));
            assert!(matches!(next_hop_of(&buf, "192.0.2.7"), Err(Error::NoRoute(d)) if d == dst));
        }
        let esrch = io::Error::from_raw_os_error(libc::ESRCH);
        assert!(matches!(kernel_error(esrch, dst), Error::NoRoute(d) if d == dst));
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(matches!(kernel_error(eperm, dst), Error::Io(_)));
        let mut buf = reply(0x1, "0.0.0.0", sdl_short(2));
        buf[24..28].copy_from_slice(&libc::ESRCH.to_ne_bytes()); // rtm_errno
        assert!(matches!(
            next_hop_of(&buf, "192.0.2.7"),
            Err(Error::NoRoute(_))
        ));
    }

    /// One entry of the sysctl dump as `in_lltable_dump_entry` and
    /// `in6_lltable_dump_entry` write it: a struct of rt_msghdr, the
    /// sockaddr (IPv6: then a 4-byte pad), sockaddr_dl, padded to 8.
    fn llentry(index: u16, dst: &str, mac: &[u8]) -> Vec<u8> {
        let (len, pad) = if ip(dst).is_ipv4() {
            (224, 0)
        } else {
            (240, 4)
        };
        // RTF_UP | RTF_HOST | RTF_LLDATA; RTA_DST | RTA_GATEWAY
        let mut m = rt_msghdr(len, index, 0x1 | 0x4 | 0x400, 0x1 | 0x2, 0);
        m.extend([sa(dst), vec![0; pad], sdl(index, b"", mac)].concat());
        m.resize(len.into(), 0);
        m
    }

    #[test]
    fn llinfo_dump_keeps_complete_entries_on_the_interface() {
        let dump = [
            llentry(2, "192.0.2.1", &GW),
            llentry(3, "198.51.100.1", &MAC),
            llentry(2, "192.0.2.2", &[]), // incomplete
            llentry(2, "fe80:2::1", &GW),
        ]
        .concat();
        let on_2 = [(ip("192.0.2.1"), GW), (ip("fe80::1"), GW)];
        assert_eq!(neighbours(&dump, 2).unwrap(), on_2);
        assert_eq!(neighbours(&dump, 3).unwrap(), [(ip("198.51.100.1"), MAC)]);
        assert_eq!(neighbours(&[], 2).unwrap(), []);
    }

    #[test]
    fn device_takes_mac_mtu_and_addresses_in_order_without_link_local() {
        let entries = [
            (sdl(2, b"em0", &MAC), Some(9000)),
            (sa("192.0.2.5"), None),
            (sa("fe80:2::5"), None),
            (sa("2001:db8::5"), None),
            (sa("192.0.2.6"), None),
        ];
        let dev = device("em0", 2, entries.iter().map(|(s, mtu)| (&s[..], *mtu)));
        let want = Device {
            name: "em0".into(),
            index: 2,
            mac: MAC,
            mtu: 9000,
            v4: vec![[192, 0, 2, 5].into(), [192, 0, 2, 6].into()],
            v6: vec!["2001:db8::5".parse().unwrap()],
        };
        assert_eq!(dev.unwrap(), Some(want));
        let gone = device("em0", 2, [(&sa("192.0.2.5")[..], None)]);
        assert_eq!(gone.unwrap(), None);
    }

    #[test]
    fn truncated_or_garbled_messages_are_errors_not_panics() {
        let good = reply(0x1 | 0x2, "0.0.0.0", sa("192.0.2.1"));
        for cut in 1..good.len() {
            assert!(Message::parse(&good[..cut]).is_err(), "cut at {cut}");
            assert!(neighbours(&good[..cut], 2).is_err(), "cut at {cut}");
        }
        // rtm_msglen below the header (little-endian), rtm_version 4, RTA_DST's sa_len
        for (at, value) in [(1, 0), (2, 4), (152, 255)] {
            let mut bad = good.clone();
            bad[at] = value;
            assert!(Message::parse(&bad).is_err(), "byte {at} = {value}");
        }
        assert!(sockaddr(&[6, 2, 0, 0, 1]).is_err());
        assert!(sockaddr(&[10, 18, 0, 0, 6, 0, 6, 0, 1, 2]).is_err()); // alen 6, 2 bytes
        assert_eq!(sockaddr(&[]).unwrap(), Sockaddr::Other(0));
        assert_eq!([0, 1, 16, 28].map(sa_size), [8, 8, 16, 32]);
    }

    proptest::proptest! {
        #[test]
        fn edited_or_cut_messages_never_panic(
            edits in proptest::collection::vec((0..500usize, proptest::num::u8::ANY), 0..8),
            cut in 0..500usize,
        ) {
            let mut buf = reply(0x1 | 0x2, "2001:db8::", sa("fe80::1"));
            buf.extend(llentry(2, "2001:db8::1", &GW));
            for (at, value) in edits {
                if let Some(b) = buf.get_mut(at) {
                    *b = value;
                }
            }
            buf.truncate(cut);
            let _ = neighbours(&buf, 2);
            let _ = is_reply(&buf, 4242, 7);
            if let Ok((m, _)) = Message::parse(&buf) {
                let _ = next_hop(&m, IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
        }
    }
}
