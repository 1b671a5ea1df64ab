//! Synchronous rtnetlink queries for the control side: device facts, XDP
//! detach, the neighbour table, next hops, and adding and removing the
//! addresses we announce.
//!
//! Every call opens its own `NETLINK_ROUTE` socket, so it sees the network
//! namespace of the calling thread. Replies are decoded attribute by
//! attribute and only the attributes we use are parsed, so a kernel that adds
//! or changes unrelated attributes cannot break us.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, ErrorBuffer, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer,
    NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeader, AddressHeaderFlags, AddressMessage,
    AddressMessageBuffer, CacheInfo,
};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkHeader, LinkMessage, LinkMessageBuffer, LinkXdp, XdpAttached,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourMessageBuffer,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteMessageBuffer,
    RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink socket itself failed (open, bind, send, receive).
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel answered a request with a negative NLMSG_ERROR (or a
    /// failed dump); `message` is its extended-ack text, when it gave one.
    #[error("{request} failed: {source}{}", suffix(.message))]
    Kernel {
        request: &'static str,
        source: io::Error,
        message: Option<String>,
    },
    #[error("no such network device: {0}")]
    NoSuchDevice(String),
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    #[error("malformed netlink reply: {0}")]
    Protocol(String),
}

impl Error {
    /// The errno behind this error, when the socket or the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io(e) | Error::Kernel { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}

fn suffix(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

/// What we need to know about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub index: u32,
    /// All zeros when the device has no 6-byte link-layer address.
    pub mac: [u8; 6],
    pub mtu: u32,
    /// From IFLA_XDP: None when no program is attached.
    pub xdp: Option<XdpAttachment>,
    /// IPv4 addresses in kernel order: each primary before its secondaries.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses except link-local (fe80::/10), in kernel order.
    pub v6: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttachment {
    /// For `Multi`: the native program, else the generic one, else offload.
    pub prog_id: u32,
    pub mode: XdpMode,
}

/// IFLA_XDP_ATTACHED: XDP_ATTACHED_DRV / SKB / HW / MULTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
    Offload,
    Multi,
}

impl XdpMode {
    /// IFLA_XDP_FLAGS selecting this mode; Multi has none (one mode per request).
    fn flags(self) -> Option<u32> {
        match self {
            XdpMode::Generic => Some(XDP_FLAGS_SKB_MODE),
            XdpMode::Native => Some(XDP_FLAGS_DRV_MODE),
            XdpMode::Offload => Some(XDP_FLAGS_HW_MODE),
            XdpMode::Multi => None,
        }
    }
}

// Kernel UAPI values the crates above do not export.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_HW_MODE: u32 = 1 << 3;
const IFNAMSIZ: usize = 16;
const ALTIFNAMSIZ: usize = 128;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNEIGH: u16 = 28;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_XDP: u16 = 43;
const IFLA_ALT_IFNAME: u16 = 53;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_VIA: u16 = 18;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const RTN_BLACKHOLE: u8 = 6;
const RTN_UNREACHABLE: u8 = 7;
const RTN_PROHIBIT: u8 = 8;
const RTN_THROW: u8 = 9;
const USABLE_NUD: u16 = libc::NUD_REACHABLE
    | libc::NUD_STALE
    | libc::NUD_DELAY
    | libc::NUD_PROBE
    | libc::NUD_PERMANENT
    | libc::NUD_NOARP;
/// Retries of a dump the kernel flagged as changed underneath us.
const DUMP_ATTEMPTS: usize = 3;

/// Looks a device up by name (or altname) and collects its addresses.
pub fn device(name: &str) -> Result<Device, Error> {
    // Names the kernel cannot hold cannot exist; asking would give EINVAL.
    if name.is_empty() || name.len() >= ALTIFNAMSIZ || name.contains('\0') {
        return Err(Error::NoSuchDevice(name.to_string()));
    }
    let mut conn = Conn::open()?;
    let link = conn.link(LinkKey::Name(name))?;
    let (v4, v6) = conn.addresses(link.index)?;
    Ok(Device {
        name: link.name.unwrap_or_else(|| name.to_string()),
        index: link.index,
        mac: link.mac,
        mtu: link.mtu,
        xdp: link.xdp,
        v4,
        v6,
    })
}

/// Detach whatever XDP program is attached to the device through netlink
/// (RTM_SETLINK with IFLA_XDP { IFLA_XDP_FD = -1, IFLA_XDP_FLAGS = flags for the mode }).
/// Used to clear a program left behind by a crashed rusty_rail.
///
/// `Multi` detaches every mode that currently has a program. Detaching a
/// mode with nothing attached succeeds.
pub fn detach_xdp(index: u32, mode: XdpMode) -> Result<(), Error> {
    let mut conn = Conn::open()?;
    let modes = match mode.flags() {
        Some(_) => vec![mode],
        // The kernel takes one mode per request, so ask which are in use.
        None => conn.link(LinkKey::Index(index))?.xdp_modes,
    };
    for mode in modes {
        let Some(flags) = mode.flags() else { continue };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(flags),
        ]));
        conn.request(
            "RTM_SETLINK (XDP detach)",
            RouteNetlinkMessage::SetLink(msg),
            false,
            |_, _| Ok(()),
        )
        .map_err(|e| no_such_device(e, || format!("ifindex {index}")))?;
    }
    Ok(())
}

/// The kernel's neighbour table for one device (RTM_GETNEIGH dump, both families),
/// only entries with a link-layer address and in a usable state
/// (NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP).
pub fn neighbours(index: u32) -> Result<Vec<(IpAddr, [u8; 6])>, Error> {
    let mut msg = NeighbourMessage::default();
    // Lets the kernel filter the dump; we filter again for kernels that don't.
    msg.attributes.push(NeighbourAttribute::IfIndex(index));
    Conn::open()?.dump(
        "RTM_GETNEIGH",
        RouteNetlinkMessage::GetNeighbour(msg),
        |ty, payload| {
            if ty == RTM_NEWNEIGH {
                parse_neighbour(payload, index)
            } else {
                Ok(None)
            }
        },
    )
}

/// The next hop the kernel would use to reach `dst` (RTM_GETROUTE request for that single
/// destination, like `ip route get`): the gateway if the route has one (RTA_GATEWAY / RTA_VIA), else
/// `dst` itself (on-link), together with the output interface index (RTA_OIF).
pub fn next_hop(dst: IpAddr) -> Result<(IpAddr, u32), Error> {
    let (family, prefix_len) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.destination_prefix_length = prefix_len;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let mut found = None;
    let result = Conn::open()?.request(
        "RTM_GETROUTE",
        RouteNetlinkMessage::GetRoute(msg),
        false,
        |ty, payload| {
            if ty == RTM_NEWROUTE {
                found = Some(parse_route(payload, dst)?);
            }
            Ok(())
        },
    );
    match result {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
            ) =>
        {
            return Err(Error::NoRoute(dst));
        }
        Err(e) => return Err(e),
    }
    found.ok_or_else(|| Error::Protocol(format!("RTM_GETROUTE for {dst}: no route in reply")))
}

/// Adds `addr/prefix` to the device (RTM_NEWADDR, NLM_F_CREATE |
/// NLM_F_EXCL). IPv6 addresses skip duplicate address detection
/// (IFA_F_NODAD), so they are usable at once, and are deprecated (preferred
/// lifetime 0), so the host never sources its own traffic from them; IPv4
/// ones get the subnet's broadcast address below /31, as `ip addr add`
/// gives them.
///
/// An address the device already has is an error with errno EEXIST.
pub fn add_address(index: u32, addr: IpAddr, prefix: u8) -> Result<(), Error> {
    let mut msg = address_message(index, addr, prefix);
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    match addr {
        IpAddr::V4(v4) if prefix < 31 => {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let broadcast = Ipv4Addr::from(u32::from(v4) | host_bits);
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        IpAddr::V4(_) => {}
        IpAddr::V6(_) => {
            // The header holds the old 8-bit flags; IFA_FLAGS the full set,
            // which the kernel prefers when present.
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            // Preferred lifetime 0: the address answers neighbour
            // solicitations and takes traffic, but source selection never
            // picks it for the host's own connections (RFC 6724 rule 3).
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = u32::MAX;
            msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
        }
    }
    Conn::open()?
        .request_flags(
            "RTM_NEWADDR",
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            |_, _| Ok(()),
        )
        .map(drop)
        .map_err(|e| no_such_device(e, || format!("ifindex {index}")))
}

/// Removes `addr/prefix` from the device (RTM_DELADDR). An address the
/// device does not have is an error with errno EADDRNOTAVAIL.
///
/// Removing an IPv4 primary also removes its secondaries unless the
/// device's `promote_secondaries` sysctl is set.
pub fn delete_address(index: u32, addr: IpAddr, prefix: u8) -> Result<(), Error> {
    let mut msg = address_message(index, addr, prefix);
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    Conn::open()?
        .request(
            "RTM_DELADDR",
            RouteNetlinkMessage::DelAddress(msg),
            false,
            |_, _| Ok(()),
        )
        .map(drop)
        .map_err(|e| no_such_device(e, || format!("ifindex {index}")))
}

/// Every address on the device, both families and link-local included, as
/// (address, prefix length, secondary) in the kernel's order: for IPv4,
/// the primaries, then the secondaries.
pub fn addresses(index: u32) -> Result<Vec<(IpAddr, u8, bool)>, Error> {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    Conn::open()?.dump(
        "RTM_GETADDR",
        RouteNetlinkMessage::GetAddress(msg),
        |ty, payload| {
            if ty == RTM_NEWADDR {
                parse_address_entry(payload, index)
            } else {
                Ok(None)
            }
        },
    )
}

fn address_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg
}

/// Turns the kernel's ENODEV into `NoSuchDevice`.
fn no_such_device(e: Error, what: impl FnOnce() -> String) -> Error {
    if e.raw_os_error() == Some(libc::ENODEV) {
        Error::NoSuchDevice(what())
    } else {
        e
    }
}

fn malformed(what: &'static str) -> impl FnOnce(DecodeError) -> Error {
    move |e| Error::Protocol(format!("{what}: {e}"))
}

#[derive(Clone, Copy)]
enum LinkKey<'a> {
    Name(&'a str),
    Index(u32),
}

/// One RTM_NEWLINK, reduced to what we use.
struct Link {
    index: u32,
    name: Option<String>,
    mac: [u8; 6],
    mtu: u32,
    xdp: Option<XdpAttachment>,
    /// Every mode that has a program, from the per-mode prog ids.
    xdp_modes: Vec<XdpMode>,
}

fn parse_link(payload: &[u8]) -> Result<Link, Error> {
    let buf = LinkMessageBuffer::new_checked(payload).map_err(malformed("RTM_NEWLINK"))?;
    let header = LinkHeader::parse(&buf).map_err(malformed("RTM_NEWLINK header"))?;
    let mut link = Link {
        index: header.index,
        name: None,
        mac: [0; 6],
        mtu: 0,
        xdp: None,
        xdp_modes: Vec::new(),
    };
    for nla in buf.attributes() {
        let nla = nla.map_err(malformed("RTM_NEWLINK attributes"))?;
        if !matches!(nla.kind(), IFLA_ADDRESS | IFLA_IFNAME | IFLA_MTU | IFLA_XDP) {
            continue;
        }
        match LinkAttribute::parse_with_param(&nla, header.interface_family)
            .map_err(malformed("RTM_NEWLINK attribute"))?
        {
            LinkAttribute::IfName(name) => link.name = Some(name),
            LinkAttribute::Address(addr) => {
                if let Ok(mac) = <[u8; 6]>::try_from(addr.as_slice()) {
                    link.mac = mac;
                }
            }
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Xdp(xdp) => (link.xdp, link.xdp_modes) = parse_xdp(&xdp)?,
            _ => {}
        }
    }
    Ok(link)
}

fn parse_xdp(attrs: &[LinkXdp]) -> Result<(Option<XdpAttachment>, Vec<XdpMode>), Error> {
    let (mut attached, mut prog, mut drv, mut skb, mut hw) = (None, None, None, None, None);
    for attr in attrs {
        match *attr {
            LinkXdp::Attached(a) => attached = Some(a),
            LinkXdp::ProgId(id) => prog = Some(id),
            LinkXdp::DrvProgId(id) => drv = Some(id),
            LinkXdp::SkbProgId(id) => skb = Some(id),
            LinkXdp::HwProgId(id) => hw = Some(id),
            _ => {}
        }
    }
    let modes = [
        (drv, XdpMode::Native),
        (skb, XdpMode::Generic),
        (hw, XdpMode::Offload),
    ]
    .into_iter()
    .filter_map(|(id, mode)| id.filter(|&id| id != 0).map(|_| mode))
    .collect();
    let (mode, id) = match attached {
        None | Some(XdpAttached::None) => return Ok((None, modes)),
        Some(XdpAttached::Driver) => (XdpMode::Native, prog.or(drv)),
        Some(XdpAttached::SocketBuffer) => (XdpMode::Generic, prog.or(skb)),
        Some(XdpAttached::Hardware) => (XdpMode::Offload, prog.or(hw)),
        Some(XdpAttached::Multiple) => (XdpMode::Multi, drv.or(skb).or(hw)),
        Some(other) => {
            return Err(Error::Protocol(format!(
                "unknown IFLA_XDP_ATTACHED mode {other:?}"
            )));
        }
    };
    Ok((
        Some(XdpAttachment {
            prog_id: id.unwrap_or(0),
            mode,
        }),
        modes,
    ))
}

/// One RTM_NEWADDR on `index`, if it is one `device` reports.
fn parse_address(payload: &[u8], index: u32) -> Result<Option<IpAddr>, Error> {
    // Secondaries too: GRE to any of the node's addresses is ours.
    Ok(parse_address_entry(payload, index)?
        .map(|(ip, _, _)| ip)
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())))
}

/// One RTM_NEWADDR on `index` as (address, prefix length, secondary).
fn parse_address_entry(payload: &[u8], index: u32) -> Result<Option<(IpAddr, u8, bool)>, Error> {
    let buf = AddressMessageBuffer::new_checked(payload).map_err(malformed("RTM_NEWADDR"))?;
    let header = AddressHeader::parse(&buf).map_err(malformed("RTM_NEWADDR header"))?;
    if header.index != index || !matches!(header.family, AddressFamily::Inet | AddressFamily::Inet6)
    {
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    let mut secondary = header.flags.contains(AddressHeaderFlags::Secondary);
    for nla in buf.attributes() {
        let nla = nla.map_err(malformed("RTM_NEWADDR attributes"))?;
        if !matches!(nla.kind(), IFA_ADDRESS | IFA_LOCAL | IFA_FLAGS) {
            continue;
        }
        match AddressAttribute::parse(&nla).map_err(malformed("RTM_NEWADDR attribute"))? {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            AddressAttribute::Flags(flags) => {
                secondary = flags.contains(AddressFlags::Secondary);
            }
            _ => {}
        }
    }
    // IFA_LOCAL is ours; IFA_ADDRESS is the peer on point-to-point links.
    Ok(local
        .or(address)
        .map(|ip| (ip, header.prefix_len, secondary)))
}

/// One RTM_NEWNEIGH on `index`, if usable and with an Ethernet address.
fn parse_neighbour(payload: &[u8], index: u32) -> Result<Option<(IpAddr, [u8; 6])>, Error> {
    let buf = NeighbourMessageBuffer::new_checked(payload).map_err(malformed("RTM_NEWNEIGH"))?;
    let family = AddressFamily::from(buf.family());
    if buf.ifindex() != index
        || buf.state() & USABLE_NUD == 0
        || !matches!(family, AddressFamily::Inet | AddressFamily::Inet6)
    {
        return Ok(None);
    }
    let (mut ip, mut mac) = (None, None);
    for nla in buf.attributes() {
        let nla = nla.map_err(malformed("RTM_NEWNEIGH attributes"))?;
        if !matches!(nla.kind(), NDA_DST | NDA_LLADDR) {
            continue;
        }
        match NeighbourAttribute::parse_with_param(&nla, family)
            .map_err(malformed("RTM_NEWNEIGH attribute"))?
        {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(IpAddr::V6(a)),
            NeighbourAttribute::LinkLocalAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Ok(ip.zip(mac))
}

/// The RTM_NEWROUTE answering a route get for `dst`.
fn parse_route(payload: &[u8], dst: IpAddr) -> Result<(IpAddr, u32), Error> {
    let buf = RouteMessageBuffer::new_checked(payload).map_err(malformed("RTM_NEWROUTE"))?;
    let header = RouteHeader::parse(&buf).map_err(malformed("RTM_NEWROUTE header"))?;
    if matches!(
        buf.kind(),
        RTN_BLACKHOLE | RTN_UNREACHABLE | RTN_PROHIBIT | RTN_THROW
    ) {
        return Err(Error::NoRoute(dst));
    }
    let (mut oif, mut gateway) = (None, None);
    for nla in buf.attributes() {
        let nla = nla.map_err(malformed("RTM_NEWROUTE attributes"))?;
        if !matches!(nla.kind(), RTA_OIF | RTA_GATEWAY | RTA_VIA) {
            continue;
        }
        let param = (header.address_family, header.kind, RouteLwEnCapType::None);
        match RouteAttribute::parse_with_param(&nla, param)
            .map_err(malformed("RTM_NEWROUTE attribute"))?
        {
            RouteAttribute::Oif(index) => oif = Some(index),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(a)),
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(a)),
            other => {
                return Err(Error::Protocol(format!(
                    "route to {dst}: unusable gateway {other:?}"
                )));
            }
        }
    }
    let oif = oif.ok_or_else(|| Error::Protocol(format!("route to {dst} has no RTA_OIF")))?;
    Ok((gateway.unwrap_or(dst), oif))
}

/// A NETLINK_ROUTE socket talking to the kernel only.
struct Conn {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// How far one received datagram got us.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    More,
    /// NLMSG_DONE or the ACK arrived.
    Finished,
}

impl Conn {
    fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Best effort: errors echo only the header, plus the kernel's text.
        if let Err(e) = socket
            .set_cap_ack(true)
            .and_then(|()| socket.set_ext_ack(true))
        {
            log::debug!("netlink extended ack unavailable: {e}");
        }
        Ok(Conn {
            socket,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        })
    }

    fn link(&mut self, key: LinkKey<'_>) -> Result<Link, Error> {
        let mut msg = LinkMessage::default();
        match key {
            LinkKey::Index(index) => msg.header.index = index,
            LinkKey::Name(name) if name.len() < IFNAMSIZ => {
                msg.attributes.push(LinkAttribute::IfName(name.to_string()))
            }
            // Only an altname can be this long; the kernel looks those up
            // by a top-level IFLA_ALT_IFNAME, which the crate has no variant for.
            LinkKey::Name(name) => {
                let mut value = name.as_bytes().to_vec();
                value.push(0);
                msg.attributes.push(LinkAttribute::Other(DefaultNla::new(
                    IFLA_ALT_IFNAME,
                    value,
                )));
            }
        }
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let mut link = None;
        self.request(
            "RTM_GETLINK",
            RouteNetlinkMessage::GetLink(msg),
            false,
            |ty, payload| {
                if ty == RTM_NEWLINK {
                    link = Some(parse_link(payload)?);
                }
                Ok(())
            },
        )
        .map_err(|e| {
            no_such_device(e, || match key {
                LinkKey::Name(name) => name.to_string(),
                LinkKey::Index(index) => format!("ifindex {index}"),
            })
        })?;
        link.ok_or_else(|| Error::Protocol("RTM_GETLINK: no link in reply".into()))
    }

    fn addresses(&mut self, index: u32) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), Error> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        let all = self.dump(
            "RTM_GETADDR",
            RouteNetlinkMessage::GetAddress(msg),
            |ty, payload| {
                if ty == RTM_NEWADDR {
                    parse_address(payload, index)
                } else {
                    Ok(None)
                }
            },
        )?;
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for ip in all {
            match ip {
                IpAddr::V4(a) => v4.push(a),
                IpAddr::V6(a) => v6.push(a),
            }
        }
        Ok((v4, v6))
    }

    /// Runs a dump, retrying when the kernel says it changed underneath us.
    fn dump<T>(
        &mut self,
        request: &'static str,
        msg: RouteNetlinkMessage,
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut attempt = 1;
        loop {
            let mut out = Vec::new();
            let interrupted = self.request(request, msg.clone(), true, |ty, payload| {
                out.extend(parse(ty, payload)?);
                Ok(())
            })?;
            if !interrupted || attempt == DUMP_ATTEMPTS {
                if interrupted {
                    log::warn!(
                        "{request}: table kept changing during the dump; using the last one"
                    );
                }
                return Ok(out);
            }
            attempt += 1;
        }
    }

    /// Sends one request and hands each reply to `each` until NLMSG_DONE
    /// (dump) or the ACK. Returns whether the kernel flagged the dump as
    /// interrupted.
    fn request(
        &mut self,
        request: &'static str,
        msg: RouteNetlinkMessage,
        dump: bool,
        each: impl FnMut(u16, &[u8]) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let flags = if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.request_flags(request, msg, flags, each)
    }

    /// `request` with the header flags (besides NLM_F_REQUEST) given:
    /// NLM_F_DUMP, or NLM_F_ACK with any of NLM_F_CREATE and the like.
    fn request_flags(
        &mut self,
        request: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut each: impl FnMut(u16, &[u8]) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        let sent = retry_eintr(|| self.socket.send(&out, 0))?;
        if sent != out.len() {
            return Err(Error::Protocol(format!(
                "{request}: sent {sent} of {} bytes",
                out.len()
            )));
        }
        let mut interrupted = false;
        loop {
            self.recv()?;
            if walk(&self.buf, self.seq, request, &mut interrupted, &mut each)? == Flow::Finished {
                return Ok(interrupted);
            }
        }
    }

    /// Receives one whole datagram into `self.buf`.
    fn recv(&mut self) -> Result<(), Error> {
        self.buf.clear();
        // Peek first so a datagram larger than the buffer is never cut short.
        let len = retry_eintr(|| {
            self.socket
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
        })?;
        self.buf.clear();
        self.buf.reserve(len);
        let got = retry_eintr(|| self.socket.recv(&mut self.buf, 0))?;
        if got != self.buf.len() {
            return Err(Error::Protocol(format!(
                "datagram of {got} bytes truncated to {}",
                self.buf.len()
            )));
        }
        Ok(())
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Walks the netlink messages of one datagram, passing ours (by `seq`) to
/// `each` until the reply ends.
fn walk(
    mut rest: &[u8],
    seq: u32,
    request: &'static str,
    interrupted: &mut bool,
    each: &mut impl FnMut(u16, &[u8]) -> Result<(), Error>,
) -> Result<Flow, Error> {
    while !rest.is_empty() {
        let msg = NetlinkBuffer::new_checked(rest).map_err(malformed("netlink message"))?;
        // new_checked guarantees NLMSG_HDRLEN <= length <= rest.len().
        let len = msg.length() as usize;
        let payload = msg.payload();
        if msg.sequence_number() == seq {
            *interrupted |= msg.flags() & NLM_F_DUMP_INTR != 0;
            match msg.message_type() {
                NLMSG_NOOP => {}
                NLMSG_ERROR => {
                    let err =
                        ErrorBuffer::new_checked(payload).map_err(malformed("NLMSG_ERROR"))?;
                    return match err.code() {
                        None => Ok(Flow::Finished),
                        Some(code) => Err(Error::Kernel {
                            request,
                            source: io::Error::from_raw_os_error(code.get().saturating_abs()),
                            message: ext_ack(err.payload(), msg.flags()),
                        }),
                    };
                }
                NLMSG_DONE => {
                    // A dump that failed midway carries a negative errno here.
                    let code = payload
                        .first_chunk::<4>()
                        .map_or(0, |b| i32::from_ne_bytes(*b));
                    if code < 0 {
                        let message = payload
                            .get(4..)
                            .and_then(|tlvs| ext_ack_tlvs(tlvs, msg.flags()));
                        return Err(Error::Kernel {
                            request,
                            source: io::Error::from_raw_os_error(code.saturating_abs()),
                            message,
                        });
                    }
                    return Ok(Flow::Finished);
                }
                NLMSG_OVERRUN => {
                    return Err(Error::Protocol(format!("{request}: NLMSG_OVERRUN")));
                }
                ty => each(ty, payload)?,
            }
        } else {
            log::debug!(
                "{request}: ignoring netlink message with seq {} (want {seq})",
                msg.sequence_number()
            );
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(Flow::More)
}

/// The extended-ack text of an NLMSG_ERROR payload after its errno: the
/// echoed request (just its header when NLM_F_CAPPED), then TLVs.
fn ext_ack(echoed: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        NetlinkBuffer::new_checked(echoed).ok()?.length() as usize
    };
    ext_ack_tlvs(echoed.get(len.next_multiple_of(4)..)?, flags)
}

fn ext_ack_tlvs(tlvs: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::netns;

    fn lo_index() -> u32 {
        device("lo").expect("lo exists").index
    }

    #[test]
    fn loopback_has_an_index_mtu_127_0_0_1_and_no_xdp() {
        let lo = device("lo").unwrap();
        assert_eq!(lo.name, "lo");
        assert!(lo.index > 0);
        assert!(lo.mtu > 0);
        assert!(lo.v4.contains(&Ipv4Addr::LOCALHOST), "{lo:?}");
        assert_eq!(lo.xdp, None);
    }

    #[test]
    fn unknown_names_are_no_such_device() {
        let long = "x".repeat(200);
        for name in [
            "rrnl-no-such",
            "rrnl-no-such-altname-0123",
            "",
            &long,
            "a\0b",
        ] {
            match device(name) {
                Err(Error::NoSuchDevice(n)) => assert_eq!(n, name),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn next_hop_of_127_0_0_1_is_itself_via_lo() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(next_hop(lo).unwrap(), (lo, lo_index()));
    }

    #[test]
    fn neighbours_of_lo_is_ok() {
        neighbours(lo_index()).unwrap();
    }

    // Synthetic replies: the walker must turn anything into a result, not a panic.

    fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    fn walk_all(buf: &[u8], seq: u32) -> (Result<Flow, Error>, Vec<u16>) {
        let mut seen = Vec::new();
        let mut interrupted = false;
        let flow = walk(buf, seq, "test", &mut interrupted, &mut |ty, _| {
            seen.push(ty);
            Ok(())
        });
        (flow, seen)
    }

    #[test]
    fn negative_nlmsg_error_becomes_kernel_error_with_errno_and_ext_ack() {
        let mut payload = (-libc::EBUSY).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let text = b"Can't replace active BPF XDP link\0";
        let nla_len = 4 + text.len();
        payload.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let buf = message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 7, &payload);
        let (flow, _) = walk_all(&buf, 7);
        let err = flow.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        match err {
            Error::Kernel { message, .. } => {
                assert_eq!(
                    message.as_deref(),
                    Some("Can't replace active BPF XDP link")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_nlmsg_error_is_an_ack_and_ends_the_reply() {
        let mut buf = message(RTM_NEWLINK, 0, 3, &[0; 16]);
        buf.extend(message(NLMSG_ERROR, 0, 3, &[0; 4 + NLMSG_HDRLEN]));
        let (flow, seen) = walk_all(&buf, 3);
        assert_eq!(flow.unwrap(), Flow::Finished);
        assert_eq!(seen, [RTM_NEWLINK]);
    }

    #[test]
    fn other_sequence_numbers_are_ignored_and_done_ends_a_dump() {
        let mut buf = message(RTM_NEWADDR, 0, 1, &[0; 8]);
        buf.extend(message(RTM_NEWADDR, 0, 2, &[0; 8]));
        let (flow, seen) = walk_all(&buf, 2);
        assert_eq!(flow.unwrap(), Flow::More);
        assert_eq!(seen, [RTM_NEWADDR]);
        let (flow, _) = walk_all(&message(NLMSG_DONE, 0, 2, &[0; 4]), 2);
        assert_eq!(flow.unwrap(), Flow::Finished);
        let (flow, _) = walk_all(&message(NLMSG_DONE, 0, 2, &(-libc::EINTR).to_ne_bytes()), 2);
        assert_eq!(flow.unwrap_err().raw_os_error(), Some(libc::EINTR));
    }

    #[test]
    fn truncated_or_garbled_replies_are_errors_not_panics() {
        let good = message(RTM_NEWLINK, 0, 1, &[0; 16]);
        for cut in 1..good.len() {
            let _ = walk_all(&good[..cut], 1);
        }
        let mut lying = good.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(walk_all(&lying, 1).0, Err(Error::Protocol(_))));
        assert!(matches!(walk_all(&[0xff; 3], 1).0, Err(Error::Protocol(_))));
        assert!(matches!(
            walk_all(&message(NLMSG_ERROR, 0, 1, &[1]), 1).0,
            Err(Error::Protocol(_))
        ));
        // Payload parsers on short or junk input.
        for payload in [&[][..], &[0; 3], &[0xff; 40]] {
            let _ = parse_link(payload);
            let _ = parse_address(payload, 1);
            let _ = parse_neighbour(payload, 1);
            let _ = parse_route(payload, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
    }

    // Namespace tests: everything is created inside a namespace the test
    // made, with the testbed's harness.

    /// None (after printing why) when not root.
    fn namespace(test: &str) -> Option<netns::Netns> {
        (!netns::skip_unless_root(test)).then(|| netns::Netns::new("nl"))
    }

    /// A veth pair rr0/rr1, both up, 10.99.0.1/24 (+ secondary 10.99.0.3)
    /// and 2001:db8:99::1/64 on rr0.
    fn veth(ns: &netns::Netns) {
        ns.ip("link add rr0 type veth peer name rr1");
        ns.ip("addr add 10.99.0.1/24 dev rr0");
        ns.ip("addr add 10.99.0.3/24 dev rr0");
        ns.ip("addr add 2001:db8:99::1/64 dev rr0 nodad");
        ns.ip("link set rr0 up");
        ns.ip("link set rr1 up");
        ns.ip("link property add dev rr0 altname rr0-long-alternative");
    }

    #[test]
    fn veth_in_namespace_shows_addresses_neighbours_and_next_hops() {
        let Some(ns) = namespace("veth_in_namespace_shows_addresses") else {
            return;
        };
        veth(&ns);
        let mac = "02:00:00:00:00:02";
        ns.ip(&format!(
            "neigh add 10.99.0.2 lladdr {mac} dev rr0 nud permanent"
        ));
        ns.ip(&format!(
            "neigh add 2001:db8:99::2 lladdr {mac} dev rr0 nud permanent"
        ));
        ns.ip("route add 10.98.0.0/16 via 10.99.0.2");
        ns.ip("route add 2001:db8:98::/48 via 2001:db8:99::2");
        ns.run(|| {
            let dev = device("rr0").unwrap();
            assert_eq!(
                dev.v4,
                [Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 3)],
                "the primary, then its secondary"
            );
            let v6: Ipv6Addr = "2001:db8:99::1".parse().unwrap();
            assert_eq!(dev.v6, [v6], "link-local is left out");
            assert_ne!(dev.mac, [0; 6]);
            assert_eq!(dev.mtu, 1500);
            assert_eq!(dev.xdp, None);
            let by_altname = device("rr0-long-alternative").unwrap();
            assert_eq!(
                (by_altname.index, by_altname.name.as_str()),
                (dev.index, "rr0")
            );
            let peer = device("rr1").unwrap();
            assert_ne!(peer.index, dev.index);
            assert!(peer.v4.is_empty());

            let mac = [2, 0, 0, 0, 0, 2];
            let gw4 = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
            let gw6 = IpAddr::V6("2001:db8:99::2".parse().unwrap());
            let neigh = neighbours(dev.index).unwrap();
            assert!(neigh.contains(&(gw4, mac)), "{neigh:?}");
            assert!(neigh.contains(&(gw6, mac)), "{neigh:?}");
            // rr1 may hold NOARP multicast entries, but not rr0's neighbours.
            let other = neighbours(peer.index).unwrap();
            assert!(other.iter().all(|(ip, _)| ip.is_multicast()), "{other:?}");

            let far4 = IpAddr::V4(Ipv4Addr::new(10, 98, 1, 1));
            assert_eq!(next_hop(far4).unwrap(), (gw4, dev.index));
            assert_eq!(next_hop(gw4).unwrap(), (gw4, dev.index));
            let far6 = IpAddr::V6("2001:db8:98::1".parse().unwrap());
            assert_eq!(next_hop(far6).unwrap(), (gw6, dev.index));
            assert_eq!(next_hop(gw6).unwrap(), (gw6, dev.index));
            // No default route in a fresh namespace.
            let nowhere = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
            assert!(matches!(next_hop(nowhere), Err(Error::NoRoute(ip)) if ip == nowhere));
        });
    }

    /// A veth pair with unique names in `ns`, both ends up (so IPv6 DAD
    /// would run); returns the first end's name and index.
    fn up_veth(ns: &netns::Netns) -> (String, u32) {
        let (a, b) = (netns::unique_ifname("na"), netns::unique_ifname("nb"));
        ns.ip(&format!("link add {a} type veth peer name {b}"));
        ns.ip(&format!("link set {a} up"));
        ns.ip(&format!("link set {b} up"));
        let index = ns.run(|| device(&a).unwrap().index);
        (a, index)
    }

    /// `ip -j addr show dev <ifname>`'s entry for `local`.
    fn ip_addr_info(ns: &netns::Netns, ifname: &str, local: &str) -> serde_json::Value {
        let out = ns.exec(&["ip", "-j", "addr", "show", "dev", ifname]);
        assert!(out.status.success(), "{out:?}");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        links[0]["addr_info"]
            .as_array()
            .and_then(|infos| infos.iter().find(|i| i["local"] == local))
            .unwrap_or_else(|| panic!("{local} not on {ifname}: {links}"))
            .clone()
    }

    #[test]
    fn add_and_delete_addresses_with_eexist_and_eaddrnotavail() {
        let Some(ns) = namespace("add_and_delete_addresses") else {
            return;
        };
        let (ifname, index) = up_veth(&ns);
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));
        let v6: IpAddr = "2001:db8:77::1".parse().unwrap();
        ns.run(|| {
            add_address(index, v4, 24).unwrap();
            add_address(index, v6, 64).unwrap();
            let listed = addresses(index).unwrap();
            assert!(listed.contains(&(v4, 24, false)), "{listed:?}");
            assert!(listed.contains(&(v6, 64, false)), "{listed:?}");
        });
        // DAD would keep the address tentative for a second or more.
        let info = ip_addr_info(&ns, &ifname, "2001:db8:77::1");
        assert_eq!(info["prefixlen"], 64, "{info}");
        assert_eq!(info.get("tentative"), None, "{info}");
        assert_eq!(info.get("dadfailed"), None, "{info}");
        // Deprecated, so never a source for the host's own traffic.
        assert_eq!(info["preferred_life_time"], 0, "{info}");
        assert_eq!(info["valid_life_time"], u32::MAX, "{info}");
        assert_eq!(info["nodad"], true, "{info}");
        let info = ip_addr_info(&ns, &ifname, "10.77.0.1");
        assert_eq!(info["broadcast"], "10.77.0.255", "{info}");

        ns.run(|| {
            for (addr, prefix) in [(v4, 24), (v6, 64)] {
                let err = add_address(index, addr, prefix).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{addr}: {err}");
            }
            for (addr, prefix) in [(v4, 24), (v6, 64)] {
                delete_address(index, addr, prefix).unwrap();
                let err = delete_address(index, addr, prefix).unwrap_err();
                assert_eq!(
                    err.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL),
                    "{addr}: {err}"
                );
            }
            let listed = addresses(index).unwrap();
            assert!(
                listed.iter().all(|&(ip, _, _)| ip != v4 && ip != v6),
                "{listed:?}"
            );
            assert!(matches!(
                add_address(999_999, v4, 24),
                Err(Error::NoSuchDevice(_))
            ));
        });
    }

    #[test]
    fn a_second_address_in_a_subnet_is_listed_as_secondary() {
        let Some(ns) = namespace("a_second_address_in_a_subnet") else {
            return;
        };
        let (ifname, index) = up_veth(&ns);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        ns.run(|| {
            add_address(index, ip("10.78.0.1"), 24).unwrap();
            add_address(index, ip("10.79.0.1"), 24).unwrap();
            add_address(index, ip("10.78.0.2"), 24).unwrap();
            add_address(index, ip("10.78.0.3"), 32).unwrap();
            let v4: Vec<_> = addresses(index)
                .unwrap()
                .into_iter()
                .filter(|(a, _, _)| a.is_ipv4())
                .collect();
            assert_eq!(
                v4,
                [
                    (ip("10.78.0.1"), 24, false),
                    (ip("10.79.0.1"), 24, false),
                    (ip("10.78.0.3"), 32, false),
                    (ip("10.78.0.2"), 24, true),
                ],
                "primaries in the order added, then secondaries"
            );
            let link_local = addresses(index).unwrap().into_iter().any(
                |(a, p, _)| matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local() && p == 64),
            );
            assert!(link_local, "link-local addresses are listed too");
        });
        let info = ip_addr_info(&ns, &ifname, "10.78.0.2");
        assert_eq!(info["secondary"], true, "{info}");
        let info = ip_addr_info(&ns, &ifname, "10.78.0.3");
        assert_eq!(
            info.get("broadcast"),
            None,
            "no broadcast for a /32: {info}"
        );
    }

    #[test]
    fn detach_xdp_without_a_program_succeeds() {
        let Some(ns) = namespace("detach_xdp_without_a_program_succeeds") else {
            return;
        };
        veth(&ns);
        ns.run(|| {
            let index = device("rr0").unwrap().index;
            for mode in [XdpMode::Native, XdpMode::Generic, XdpMode::Multi] {
                detach_xdp(index, mode).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            }
            assert_eq!(device("rr0").unwrap().xdp, None);
            // An index nothing has in this fresh namespace.
            for mode in [XdpMode::Native, XdpMode::Multi] {
                assert!(matches!(
                    detach_xdp(999_999, mode),
                    Err(Error::NoSuchDevice(_))
                ));
            }
        });
    }
}
