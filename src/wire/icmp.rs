//! ICMP (RFC 792) and ICMPv6 (RFC 4443) share one layout: type, code,
//! checksum, four bytes of message-specific data, then the body.

use super::bytes::{self, Field};
use super::checksum;
use super::{Error, Result, ip_proto};

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const SEQ: Field = 6..8;
}

pub const HEADER_LEN: usize = 8;

/// ICMPv4 types we name.
pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Code of DEST_UNREACHABLE: fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;

    /// An error message, which no error may answer (RFC 1812 4.3.2.7).
    pub fn is_error(msg_type: u8) -> bool {
        matches!(
            msg_type,
            DEST_UNREACHABLE | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM
        )
    }
}

/// ICMPv6 types we name.
pub mod v6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// Neighbour Discovery (RFC 4861) runs from here to REDIRECT.
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const REDIRECT: u8 = 137;

    /// Types below 128 are errors (RFC 4443 2.1), which no error may
    /// answer (2.4(e)).
    pub fn is_error(msg_type: u8) -> bool {
        msg_type < ECHO_REQUEST
    }
}

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    #[inline]
    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        bytes::u8_at(self.buf(), field::TYPE)
    }

    #[inline]
    pub fn code(&self) -> u8 {
        bytes::u8_at(self.buf(), field::CODE)
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buf(), field::CHECKSUM.start)
    }

    /// Echo identifier.
    pub fn ident(&self) -> u16 {
        bytes::u16_at(self.buf(), field::IDENT.start)
    }

    /// Echo sequence number.
    pub fn seq(&self) -> u16 {
        bytes::u16_at(self.buf(), field::SEQ.start)
    }

    /// The body: echo data, or the leading bytes of the packet an error
    /// message is about.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        bytes::slice(buf, HEADER_LEN..buf.len())
    }

    /// ICMPv4: the checksum covers the message alone.
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::fold(checksum::sum(self.buf())) == 0xffff
    }

    /// ICMPv6: the checksum also covers the IPv6 pseudo-header.
    pub fn verify_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        let len = u32::try_from(self.buf().len()).unwrap_or(u32::MAX);
        let pseudo = checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, len);
        checksum::fold(pseudo + checksum::sum(self.buf())) == 0xffff
    }
}

/// An error message's 8-byte header, for building; the quoted packet
/// follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRepr {
    pub msg_type: u8,
    pub code: u8,
    /// The word after the checksum: the MTU of "fragmentation needed"
    /// (low 16 bits; RFC 1191) and of "packet too big".
    pub word: u32,
}

impl ErrorRepr {
    /// Writes the header into `header` with the ICMPv4 checksum of the
    /// header followed by `quote`, which may still sit elsewhere.
    pub fn emit_v4(&self, header: &mut [u8], quote: &[u8]) -> Result<()> {
        self.emit_unsummed(header)?;
        // The header is 8 bytes, so summing the quote apart is the same.
        let sum = checksum::sum(bytes::slice(header, 0..HEADER_LEN)) + checksum::sum(quote);
        bytes::set_u16(header, field::CHECKSUM.start, checksum::finish(sum));
        Ok(())
    }

    /// `emit_v4` for ICMPv6: the checksum also covers the pseudo-header
    /// of `src` and `dst`.
    pub fn emit_v6(
        &self,
        header: &mut [u8],
        quote: &[u8],
        src: &[u8; 16],
        dst: &[u8; 16],
    ) -> Result<()> {
        let len = u32::try_from(HEADER_LEN + quote.len()).map_err(|_| Error::Malformed)?;
        self.emit_unsummed(header)?;
        let sum = checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, len)
            + checksum::sum(bytes::slice(header, 0..HEADER_LEN))
            + checksum::sum(quote);
        bytes::set_u16(header, field::CHECKSUM.start, checksum::finish(sum));
        Ok(())
    }

    fn emit_unsummed(&self, header: &mut [u8]) -> Result<()> {
        if header.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        bytes::set_u8(header, field::TYPE, self.msg_type);
        bytes::set_u8(header, field::CODE, self.code);
        bytes::set_u16(header, field::CHECKSUM.start, 0);
        bytes::set_u32(header, field::IDENT.start, self.word);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_echo_request_and_verifies_v4_checksum() {
        let mut b = [8, 0, 0, 0, 0x12, 0x34, 0x00, 0x01, b'h', b'i'];
        let sum = checksum::finish(checksum::sum(&b));
        b[2..4].copy_from_slice(&sum.to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.code()), (v4::ECHO_REQUEST, 0));
        assert_eq!((p.ident(), p.seq()), (0x1234, 1));
        assert_eq!(p.payload(), b"hi");
        assert!(p.verify_checksum_v4());
        b[9] = 0;
        assert!(!Packet::new_checked(&b[..]).unwrap().verify_checksum_v4());
    }

    #[test]
    fn verifies_v6_checksum_with_pseudo_header() {
        let src = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut b = [128, 0, 0, 0, 0, 7, 0, 1];
        let sum = checksum::finish(
            checksum::pseudo_header_v6(&src, &dst, ip_proto::ICMPV6, 8) + checksum::sum(&b),
        );
        b[2..4].copy_from_slice(&sum.to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum_v6(&src, &dst));
        assert!(!p.verify_checksum_v6(&dst, &dst));
    }

    #[test]
    fn error_repr_sums_the_header_and_a_quote_held_apart() {
        let repr = ErrorRepr {
            msg_type: v4::DEST_UNREACHABLE,
            code: v4::FRAG_NEEDED,
            word: 1476,
        };
        let quote = [0x45, 0, 0x05, 0xdc, 1, 2, 3];
        let mut header = [0xffu8; HEADER_LEN];
        repr.emit_v4(&mut header, &quote).unwrap();
        let mut message = header.to_vec();
        message.extend_from_slice(&quote);
        let p = Packet::new_checked(&message[..]).unwrap();
        assert_eq!((p.msg_type(), p.code()), (3, 4));
        assert_eq!(&message[4..8], &[0, 0, 0x05, 0xc4]);
        assert_eq!(p.payload(), &quote);
        assert!(p.verify_checksum_v4());

        let (src, dst) = ([0x20; 16], [0x30; 16]);
        let repr = ErrorRepr {
            msg_type: v6::PACKET_TOO_BIG,
            code: 0,
            word: 1456,
        };
        repr.emit_v6(&mut header, &quote, &src, &dst).unwrap();
        message[..HEADER_LEN].copy_from_slice(&header);
        let p = Packet::new_checked(&message[..]).unwrap();
        assert_eq!(&message[4..8], &1456u32.to_be_bytes());
        assert!(p.verify_checksum_v6(&src, &dst));
        assert!(!p.verify_checksum_v6(&src, &[0x31; 16]));
        assert_eq!(repr.emit_v4(&mut [0; 7], &quote), Err(Error::Truncated));
    }

    #[test]
    fn error_types_are_the_ones_no_error_may_answer() {
        let v4_errors: Vec<u8> = (0..=255).filter(|&t| v4::is_error(t)).collect();
        assert_eq!(v4_errors, [3, 4, 5, 11, 12]);
        assert!(v6::is_error(v6::PACKET_TOO_BIG) && v6::is_error(127));
        assert!(!v6::is_error(v6::ECHO_REQUEST) && !v6::is_error(v6::NEIGHBOR_SOLICIT));
    }

    #[test]
    fn rejects_short_header() {
        assert_eq!(
            Packet::new_checked(&[3u8, 4, 0, 0][..]).unwrap_err(),
            Error::Truncated
        );
    }
}
