//! ARP (RFC 826) for Ethernet and IPv4, the only pairing we announce on.

use super::bytes::{self, Field};
use super::ethernet::Address;
use super::{Error, Result};
use core::net::Ipv4Addr;

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

pub const PACKET_LEN: usize = field::TPA.end;
const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Self {
        match v {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(op: Operation) -> u16 {
        match op {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(v) => v,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// `Truncated` below 28 bytes; `Unsupported` unless Ethernet/IPv4.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let b = p.buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        if bytes::u16_at(b, field::HTYPE.start) != HTYPE_ETHERNET
            || bytes::u16_at(b, field::PTYPE.start) != PTYPE_IPV4
            || bytes::u8_at(b, field::HLEN) != 6
            || bytes::u8_at(b, field::PLEN) != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(p)
    }

    #[inline]
    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn operation(&self) -> Operation {
        Operation::from(bytes::u16_at(self.buf(), field::OPER.start))
    }

    pub fn sender_hw(&self) -> Address {
        Address(bytes::get(self.buf(), field::SHA))
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::get::<4>(self.buf(), field::SPA))
    }

    pub fn target_hw(&self) -> Address {
        Address(bytes::get(self.buf(), field::THA))
    }

    pub fn target_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::get::<4>(self.buf(), field::TPA))
    }
}

/// A high-level ARP message, for building announcements and probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: Operation,
    pub sender_hw: Address,
    pub sender_ip: Ipv4Addr,
    pub target_hw: Address,
    pub target_ip: Ipv4Addr,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            operation: p.operation(),
            sender_hw: p.sender_hw(),
            sender_ip: p.sender_ip(),
            target_hw: p.target_hw(),
            target_ip: p.target_ip(),
        }
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        bytes::set_u16(buf, field::HTYPE.start, HTYPE_ETHERNET);
        bytes::set_u16(buf, field::PTYPE.start, PTYPE_IPV4);
        bytes::set_u8(buf, field::HLEN, 6);
        bytes::set_u8(buf, field::PLEN, 4);
        bytes::set_u16(buf, field::OPER.start, self.operation.into());
        bytes::set(buf, field::SHA.start, self.sender_hw.0);
        bytes::set(buf, field::SPA.start, self.sender_ip.octets());
        bytes::set(buf, field::THA.start, self.target_hw.0);
        bytes::set(buf, field::TPA.start, self.target_ip.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Gratuitous request: who-has 192.0.2.7 tell 192.0.2.7.
    const GARP: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, request
        2, 0, 0, 0, 0, 7, 192, 0, 2, 7, // sender
        0, 0, 0, 0, 0, 0, 192, 0, 2, 7, // target
    ];

    #[test]
    fn parses_gratuitous_request() {
        let p = Packet::new_checked(&GARP[..]).unwrap();
        assert_eq!(p.operation(), Operation::Request);
        assert_eq!(p.sender_hw(), Address([2, 0, 0, 0, 0, 7]));
        assert_eq!(p.sender_ip(), Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(p.target_hw(), Address([0; 6]));
        assert_eq!(p.target_ip(), p.sender_ip());
    }

    #[test]
    fn repr_round_trips() {
        let repr = Repr::parse(&Packet::new_checked(&GARP[..]).unwrap());
        let mut out = [0u8; 28];
        repr.emit(&mut out).unwrap();
        assert_eq!(out, GARP);
        assert_eq!(repr.emit(&mut [0u8; 27]), Err(Error::Truncated));
    }

    #[test]
    fn rejects_short_and_non_ethernet_ipv4() {
        assert_eq!(
            Packet::new_checked(&GARP[..27]).unwrap_err(),
            Error::Truncated
        );
        let mut b = GARP;
        b[5] = 16; // IPv6-sized protocol address
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Unsupported);
    }
}
