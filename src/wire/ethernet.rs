//! Ethernet II, with at most one 802.1Q tag.

use super::bytes::{self, Field};
use super::{Error, Result};
use core::fmt;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Address(pub [u8; 6]);

impl Address {
    pub const BROADCAST: Address = Address([0xff; 6]);

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set: multicast or broadcast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const VLAN_TCI: Field = 14..16;
    pub const VLAN_ETHERTYPE: Field = 16..18;
}

pub const HEADER_LEN: usize = field::ETHERTYPE.end;
pub const VLAN_HEADER_LEN: usize = field::VLAN_ETHERTYPE.end;

/// A view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks that the header (and the tag, if any) fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Frame { buffer };
        let len = frame.buffer.as_ref().len();
        if len < HEADER_LEN || len < frame.header_len() {
            return Err(Error::Truncated);
        }
        Ok(frame)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn outer_ethertype(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    #[inline]
    pub fn is_tagged(&self) -> bool {
        self.outer_ethertype() == ethertype::VLAN
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    #[inline]
    pub fn dst(&self) -> Address {
        Address(bytes::get(self.buffer.as_ref(), field::DST))
    }

    #[inline]
    pub fn src(&self) -> Address {
        Address(bytes::get(self.buffer.as_ref(), field::SRC))
    }

    /// The 12-bit VLAN id of the 802.1Q tag, if there is one.
    #[inline]
    pub fn vlan_id(&self) -> Option<u16> {
        self.is_tagged()
            .then(|| bytes::u16_at(self.buffer.as_ref(), field::VLAN_TCI.start) & 0x0fff)
    }

    /// The ethertype of the payload, after the tag if there is one.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        if self.is_tagged() {
            bytes::u16_at(self.buffer.as_ref(), field::VLAN_ETHERTYPE.start)
        } else {
            self.outer_ethertype()
        }
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        bytes::slice(buf, self.header_len()..buf.len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline]
    pub fn set_dst(&mut self, addr: Address) {
        bytes::set(self.buffer.as_mut(), field::DST.start, addr.0);
    }

    #[inline]
    pub fn set_src(&mut self, addr: Address) {
        bytes::set(self.buffer.as_mut(), field::SRC.start, addr.0);
    }

    /// Sets the payload's ethertype: the tag's inner one on a tagged frame.
    #[inline]
    pub fn set_ethertype(&mut self, value: u16) {
        let at = if self.is_tagged() {
            field::VLAN_ETHERTYPE.start
        } else {
            field::ETHERTYPE.start
        };
        bytes::set_u16(self.buffer.as_mut(), at, value);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let buf = self.buffer.as_mut();
        let end = buf.len();
        bytes::slice_mut(buf, start..end)
    }
}

/// A high-level Ethernet header, for building frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub dst: Address,
    pub src: Address,
    /// 802.1Q VLAN id (12 bits), priority 0.
    pub vlan: Option<u16>,
    pub ethertype: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Repr {
        Repr {
            dst: frame.dst(),
            src: frame.src(),
            vlan: frame.vlan_id(),
            ethertype: frame.ethertype(),
        }
    }

    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header at the start of `buf`; the payload follows it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < self.header_len() {
            return Err(Error::Truncated);
        }
        bytes::set(buf, field::DST.start, self.dst.0);
        bytes::set(buf, field::SRC.start, self.src.0);
        match self.vlan {
            Some(id) => {
                bytes::set_u16(buf, field::ETHERTYPE.start, ethertype::VLAN);
                bytes::set_u16(buf, field::VLAN_TCI.start, id & 0x0fff);
                bytes::set_u16(buf, field::VLAN_ETHERTYPE.start, self.ethertype);
            }
            None => bytes::set_u16(buf, field::ETHERTYPE.start, self.ethertype),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED: [u8; 16] = [
        0x02, 0, 0, 0, 0, 1, // dst
        0x02, 0, 0, 0, 0, 2, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, // payload
    ];

    const TAGGED: [u8; 20] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x02, 0, 0, 0, 0, 2, // src
        0x81, 0x00, 0x20, 0x64, // 802.1Q, PCP 1, VID 100
        0x86, 0xdd, // IPv6
        0xcc, 0xdd,
    ];

    #[test]
    fn parses_untagged_frame() {
        let f = Frame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst(), Address([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.src(), Address([2, 0, 0, 0, 0, 2]));
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn parses_one_vlan_tag() {
        let f = Frame::new_checked(&TAGGED[..]).unwrap();
        assert!(f.dst().is_broadcast());
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.ethertype(), ethertype::IPV6);
        assert_eq!(f.payload(), &[0xcc, 0xdd]);
    }

    #[test]
    fn rejects_truncated_headers() {
        assert_eq!(
            Frame::new_checked(&UNTAGGED[..13]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Frame::new_checked(&TAGGED[..17]).unwrap_err(),
            Error::Truncated
        );
        assert!(
            Frame::new_checked(&TAGGED[..18])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn repr_round_trips_tagged_and_untagged() {
        for bytes in [&UNTAGGED[..], &TAGGED[..]] {
            let repr = Repr::parse(&Frame::new_checked(bytes).unwrap());
            let mut out = bytes.to_vec();
            out[..repr.header_len()].fill(0);
            repr.emit(&mut out).unwrap();
            // PCP bits are not represented, so compare the parsed forms.
            assert_eq!(Repr::parse(&Frame::new_checked(&out[..]).unwrap()), repr);
        }
        let untagged = Repr::parse(&Frame::new_checked(&UNTAGGED[..]).unwrap());
        let mut out = UNTAGGED;
        out[..14].fill(0);
        untagged.emit(&mut out).unwrap();
        assert_eq!(out, UNTAGGED);
    }

    #[test]
    fn setters_rewrite_addresses_only() {
        let mut b = UNTAGGED;
        let mut f = Frame::new_checked(&mut b[..]).unwrap();
        f.set_dst(Address([9; 6]));
        f.set_src(Address([8; 6]));
        assert_eq!(&b[..12], &[9, 9, 9, 9, 9, 9, 8, 8, 8, 8, 8, 8]);
        assert_eq!(&b[12..], &UNTAGGED[12..]);
    }

    #[test]
    fn set_ethertype_writes_the_tags_inner_type_on_a_tagged_frame() {
        let mut b = TAGGED;
        Frame::new_checked(&mut b[..])
            .unwrap()
            .set_ethertype(ethertype::IPV4);
        assert_eq!(&b[12..18], &[0x81, 0x00, 0x20, 0x64, 0x08, 0x00]);
        assert_eq!(b[18..], TAGGED[18..]);
        let mut b = UNTAGGED;
        Frame::new_checked(&mut b[..])
            .unwrap()
            .set_ethertype(ethertype::IPV6);
        assert_eq!(&b[12..14], &[0x86, 0xdd]);
        assert_eq!(b[14..], UNTAGGED[14..]);
    }

    #[test]
    fn address_kinds() {
        assert!(Address::BROADCAST.is_multicast());
        assert!(Address([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(Address([0x02, 0, 0, 0, 0, 1]).is_unicast());
        assert_eq!(
            Address([0xde, 0xad, 0xbe, 0xef, 0, 1]).to_string(),
            "de:ad:be:ef:00:01"
        );
    }
}
