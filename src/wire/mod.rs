//! Zero-copy packet views, in smoltcp's `wire` style.
//!
//! Each protocol has a `Packet<T: AsRef<[u8]>>` (or `Frame`) view whose only
//! constructor, `new_checked`, validates lengths once. Field offsets live in a
//! private `field` module per protocol. Accessors read through the total
//! helpers in `bytes`, so no accessor can panic on any input, even if the
//! checked invariants were somehow broken. `Repr`s build headers.

pub mod arp;
pub(crate) mod bytes;
pub mod checksum;
pub mod ethernet;
pub mod gre;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod ndp;
pub mod tcp;
pub mod udp;

/// Why a view could not be constructed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header or the length it declares.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the protocol forbids.
    #[error("malformed")]
    Malformed,
    /// Valid, but a variant we do not handle.
    #[error("unsupported")]
    Unsupported,
}

pub type Result<T> = core::result::Result<T, Error>;

/// IP protocol numbers we look at.
pub mod ip_proto {
    pub const HOPOPT: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTE: u8 = 43;
    pub const IPV6_FRAG: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_NONXT: u8 = 59;
    pub const IPV6_OPTS: u8 = 60;
}

/// Source and destination ports of TCP, UDP, SCTP or DCCP, which all
/// start with them. For the 8-byte quotes in ICMP errors, where a whole
/// transport header may not be present.
#[inline]
pub fn ports(l4: &[u8]) -> Option<(u16, u16)> {
    let b = l4.first_chunk::<4>()?;
    Some((
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_reads_the_first_four_bytes_or_nothing() {
        assert_eq!(
            super::ports(&[0x9c, 0x40, 0x00, 0x50, 9]),
            Some((40000, 80))
        );
        assert_eq!(super::ports(&[0x9c, 0x40, 0x00]), None);
    }
}
