//! GRE (RFC 2784) with the key and sequence extensions (RFC 2890).
//!
//! The checksum, key and sequence bits each add a 4-byte field and are
//! honoured when finding the payload. A set routing bit (RFC 1701), strict
//! source route or recursion bit, or a version other than 0, is not GRE we
//! handle: `is_supported` says no and the frame goes to the host.

use super::bytes::{self, Field};
use super::checksum;
use super::{Error, Result};

mod field {
    use super::Field;
    pub const FLAGS_VERSION: Field = 0..2;
    pub const PROTOCOL: Field = 2..4;
}

pub const BASE_LEN: usize = field::PROTOCOL.end;

const FLAG_CHECKSUM: u16 = 0x8000;
const FLAG_ROUTING: u16 = 0x4000;
const FLAG_KEY: u16 = 0x2000;
const FLAG_SEQUENCE: u16 = 0x1000;
/// RFC 2784 §2.3: a receiver discards packets with bits 1–5 set, less the
/// key and sequence bits that RFC 2890 gave meaning to.
const NOT_SUPPORTED: u16 = FLAG_ROUTING | 0x0800 | 0x0400;
const VERSION_MASK: u16 = 0x0007;

/// Protocol types carried in GRE (ethertypes).
pub mod protocol {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
}

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the base header and every optional field it announces fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < BASE_LEN || len < p.header_len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    fn flags(&self) -> u16 {
        bytes::u16_at(self.buf(), field::FLAGS_VERSION.start)
    }

    #[inline]
    pub fn checksum_present(&self) -> bool {
        self.flags() & FLAG_CHECKSUM != 0
    }

    #[inline]
    pub fn routing_present(&self) -> bool {
        self.flags() & FLAG_ROUTING != 0
    }

    #[inline]
    pub fn key_present(&self) -> bool {
        self.flags() & FLAG_KEY != 0
    }

    #[inline]
    pub fn sequence_present(&self) -> bool {
        self.flags() & FLAG_SEQUENCE != 0
    }

    #[inline]
    pub fn version(&self) -> u8 {
        (self.flags() & VERSION_MASK) as u8
    }

    /// Plain RFC 2784/2890 GRE, version 0, no source routing.
    #[inline]
    pub fn is_supported(&self) -> bool {
        self.flags() & (NOT_SUPPORTED | VERSION_MASK) == 0
    }

    #[inline]
    pub fn protocol(&self) -> u16 {
        bytes::u16_at(self.buf(), field::PROTOCOL.start)
    }

    /// Base header plus the checksum/offset, key and sequence words present.
    /// A routing list (RFC 1701) is not counted: such packets are unsupported.
    #[inline]
    pub fn header_len(&self) -> usize {
        let f = self.flags();
        let words = usize::from(f & (FLAG_CHECKSUM | FLAG_ROUTING) != 0)
            + usize::from(f & FLAG_KEY != 0)
            + usize::from(f & FLAG_SEQUENCE != 0);
        BASE_LEN + 4 * words
    }

    #[inline]
    fn key_offset(&self) -> usize {
        BASE_LEN + 4 * usize::from(self.flags() & (FLAG_CHECKSUM | FLAG_ROUTING) != 0)
    }

    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present()
            .then(|| bytes::u16_at(self.buf(), BASE_LEN))
    }

    pub fn key(&self) -> Option<u32> {
        self.key_present()
            .then(|| bytes::u32_at(self.buf(), self.key_offset()))
    }

    pub fn sequence(&self) -> Option<u32> {
        let at = self.key_offset() + 4 * usize::from(self.key_present());
        self.sequence_present()
            .then(|| bytes::u32_at(self.buf(), at))
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        bytes::slice(buf, self.header_len()..buf.len())
    }

    /// True when there is no checksum, or it covers header and payload
    /// correctly. Not called per packet: we never change the bytes it covers,
    /// so the decapsulating server checks it.
    pub fn verify_checksum(&self) -> bool {
        !self.checksum_present() || checksum::fold(checksum::sum(self.buf())) == 0xffff
    }
}

/// A high-level GRE header, for building packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub protocol: u16,
    pub checksum: bool,
    pub key: Option<u32>,
    pub sequence: Option<u32>,
}

impl Repr {
    /// `None` for unsupported variants.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Option<Repr> {
        p.is_supported().then(|| Repr {
            protocol: p.protocol(),
            checksum: p.checksum_present(),
            key: p.key(),
            sequence: p.sequence(),
        })
    }

    pub fn header_len(&self) -> usize {
        BASE_LEN
            + 4 * (usize::from(self.checksum)
                + usize::from(self.key.is_some())
                + usize::from(self.sequence.is_some()))
    }

    /// Writes the header at the start of `buf`. With `checksum`, the payload
    /// must already follow the header in `buf`: the checksum covers both.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < self.header_len() {
            return Err(Error::Truncated);
        }
        let mut flags = 0;
        let mut at = BASE_LEN;
        if self.checksum {
            flags |= FLAG_CHECKSUM;
            bytes::set_u32(buf, at, 0);
            at += 4;
        }
        if let Some(key) = self.key {
            flags |= FLAG_KEY;
            bytes::set_u32(buf, at, key);
            at += 4;
        }
        if let Some(seq) = self.sequence {
            flags |= FLAG_SEQUENCE;
            bytes::set_u32(buf, at, seq);
        }
        bytes::set_u16(buf, field::FLAGS_VERSION.start, flags);
        bytes::set_u16(buf, field::PROTOCOL.start, self.protocol);
        if self.checksum {
            let sum = checksum::finish(checksum::sum(buf));
            bytes::set_u16(buf, BASE_LEN, sum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // C, K and S set: checksum/reserved, key 0x01020304, sequence 7.
    const ALL_OPTIONS: [u8; 18] = [
        0xb0, 0x00, 0x08, 0x00, // C K S, version 0, IPv4
        0x00, 0x00, 0x00, 0x00, // checksum (filled in by the test), reserved
        0x01, 0x02, 0x03, 0x04, // key
        0x00, 0x00, 0x00, 0x07, // sequence
        0xab, 0xcd, // payload
    ];

    #[test]
    fn plain_header_is_four_bytes() {
        let b = [0x00, 0x00, 0x86, 0xdd, 0x60];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.is_supported());
        assert_eq!(p.header_len(), 4);
        assert_eq!(p.protocol(), protocol::IPV6);
        assert_eq!((p.checksum(), p.key(), p.sequence()), (None, None, None));
        assert_eq!(p.payload(), &[0x60]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn honours_checksum_key_and_sequence() {
        let mut b = ALL_OPTIONS;
        let sum = checksum::finish(checksum::sum(&b));
        b[4..6].copy_from_slice(&sum.to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 16);
        assert_eq!(p.checksum(), Some(sum));
        assert_eq!(p.key(), Some(0x0102_0304));
        assert_eq!(p.sequence(), Some(7));
        assert_eq!(p.payload(), &[0xab, 0xcd]);
        assert!(p.verify_checksum());
        b[17] ^= 1;
        assert!(!Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }

    #[test]
    fn sequence_without_key_follows_base_header() {
        let b = [0x10, 0x00, 0x08, 0x00, 0, 0, 0, 9];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.key(), p.sequence()), (None, Some(9)));
    }

    #[test]
    fn routing_strict_route_recursion_and_version_are_unsupported() {
        for flags in [0x4000u16, 0x0800, 0x0400, 0x0001, 0x0007] {
            let mut b = [0u8; 12];
            b[..2].copy_from_slice(&flags.to_be_bytes());
            let p = Packet::new_checked(&b[..]).unwrap();
            assert!(!p.is_supported(), "{flags:#06x}");
            assert_eq!(Repr::parse(&p), None);
        }
        // Reserved bits 6-12 are ignored on receipt (RFC 2784 §2.3).
        let b = [0x02, 0xf8, 0x08, 0x00];
        assert!(Packet::new_checked(&b[..]).unwrap().is_supported());
    }

    #[test]
    fn rejects_truncated_optional_fields() {
        for n in 0..16 {
            assert_eq!(
                Packet::new_checked(&ALL_OPTIONS[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        assert!(Packet::new_checked(&ALL_OPTIONS[..16]).is_ok());
    }

    #[test]
    fn repr_emits_parseable_header_with_valid_checksum() {
        let repr = Repr {
            protocol: protocol::IPV4,
            checksum: true,
            key: Some(42),
            sequence: Some(1),
        };
        let mut b = vec![0u8; repr.header_len()];
        b.extend_from_slice(&[1, 2, 3]);
        repr.emit(&mut b).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p), Some(repr));
        assert_eq!(p.payload(), &[1, 2, 3]);
    }
}
