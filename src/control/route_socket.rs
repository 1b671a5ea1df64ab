//! `netlink.rs` for FreeBSD: the device facts, the neighbour table and
//! next hops the forwarder and the next-hop resolver use, from getifaddrs(3)
//! (AF_LINK for the MAC, its `if_data` for the MTU), one PF_ROUTE RTM_GET
//! per next hop, and the NET_RT_FLAGS/RTF_LLINFO sysctl (what `arp -a` and
//! `ndp -a` read). Adding and removing addresses (announcing) is Linux only.
//!
//! Compiled for x86_64-unknown-freebsd, and its parsers (`route_msg.rs`)
//! unit-tested on Linux against hand-built FreeBSD messages, but never run
//! on FreeBSD: no FreeBSD machine was at hand.

use super::route_msg::{self, Message};
use crate::io::route as sys;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI32, Ordering};

pub use route_msg::{Device, Error};

/// The device's MAC, MTU and addresses (IPv4 in list order, the primary
/// first; IPv6 without link-local).
pub fn device(name: &str) -> Result<Device, Error> {
    let gone = || Error::NoSuchDevice(name.to_string());
    let index = crate::io::device_index(name).ok_or_else(gone)?;
    let entries = sys::ifaddrs(name)?;
    let entries = entries.iter().map(|(sa, mtu)| (sa.as_slice(), *mtu));
    route_msg::device(name, index, entries)?.ok_or_else(gone)
}

/// The kernel's ARP and NDP entries on the device with a 6-byte link-layer
/// address (incomplete entries have none).
pub fn neighbours(index: u32) -> Result<Vec<(IpAddr, [u8; 6])>, Error> {
    let mut all = route_msg::neighbours(&sys::llinfo(route_msg::AF_INET.into())?, index)?;
    all.extend(route_msg::neighbours(
        &sys::llinfo(route_msg::AF_INET6.into())?,
        index,
    )?);
    Ok(all)
}

static SEQ: AtomicI32 = AtomicI32::new(0);

/// The next hop the kernel would use to reach `dst` (as `route get`): the
/// gateway, or `dst` itself when on-link, and the outgoing interface index.
pub fn next_hop(dst: IpAddr) -> Result<(IpAddr, u32), Error> {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let pid = std::process::id() as i32;
    let reply = sys::request(&route_msg::get_request(dst, seq), |m| {
        route_msg::is_reply(m, pid, seq)
    })
    .map_err(|e| route_msg::kernel_error(e, dst))?;
    route_msg::next_hop(&Message::parse(&reply)?.0, dst)
}
