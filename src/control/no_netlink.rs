//! The stand-in for `netlink.rs` on OSes with neither rtnetlink nor the
//! FreeBSD routing messages of `route_socket.rs`: the calls the forwarder
//! and the next-hop resolver make, each failing.

use std::net::IpAddr;

pub use super::route_msg::Device;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such network device: {0}")]
    NoSuchDevice(String),
    #[error("{0} is not implemented on this OS")]
    Unsupported(&'static str),
}

pub fn device(name: &str) -> Result<Device, Error> {
    match crate::io::device_index(name) {
        None => Err(Error::NoSuchDevice(name.to_string())),
        Some(_) => Err(Error::Unsupported(
            "reading a device's MAC, MTU and addresses",
        )),
    }
}

pub fn neighbours(_index: u32) -> Result<Vec<(IpAddr, [u8; 6])>, Error> {
    Err(Error::Unsupported("reading the neighbour table"))
}

pub fn next_hop(_dst: IpAddr) -> Result<(IpAddr, u32), Error> {
    Err(Error::Unsupported("looking up a route"))
}
