//! IPv4 (RFC 791). Options are allowed; IHL and total length are checked.

use super::bytes::{self, Field};
use super::checksum;
use super::{Error, Result};
use core::net::Ipv4Addr;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// The header without options.
pub const HEADER_LEN: usize = field::DST.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet. The buffer may carry link padding after
/// `total_len`; `payload` excludes it.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks version 4, IHL ≥ 5, and that the header and the declared total
    /// length fit the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.version() != 4 {
            return Err(Error::Malformed);
        }
        let header_len = p.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        let total_len = usize::from(p.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if header_len > len || total_len > len {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// For the packet quoted in an ICMP error: checks version 4 and that
    /// the header fits, but not the total length, since the quote is cut
    /// short. `payload` is then what the quote holds.
    #[inline]
    pub fn new_quoted(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.version() != 4 || p.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if p.header_len() > len {
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
    pub fn version(&self) -> u8 {
        bytes::u8_at(self.buf(), field::VER_IHL) >> 4
    }

    /// IHL in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(bytes::u8_at(self.buf(), field::VER_IHL) & 0x0f) * 4
    }

    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        bytes::u8_at(self.buf(), field::DSCP_ECN)
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        bytes::u16_at(self.buf(), field::LENGTH.start)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        bytes::u16_at(self.buf(), field::IDENT.start)
    }

    #[inline]
    fn flags_frag(&self) -> u16 {
        bytes::u16_at(self.buf(), field::FLAGS_FRAG.start)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_frag() & FRAG_OFFSET_MASK) << 3
    }

    /// Any fragment, the first included: only the first carries ports.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        bytes::u8_at(self.buf(), field::TTL)
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        bytes::u8_at(self.buf(), field::PROTOCOL)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buf(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn src_bytes(&self) -> [u8; 4] {
        bytes::get(self.buf(), field::SRC)
    }

    #[inline]
    pub fn dst_bytes(&self) -> [u8; 4] {
        bytes::get(self.buf(), field::DST)
    }

    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_bytes())
    }

    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_bytes())
    }

    pub fn options(&self) -> &[u8] {
        bytes::slice(self.buf(), HEADER_LEN..self.header_len())
    }

    /// The payload up to `total_len`, without link padding (for a quoted
    /// packet, up to the end of the quote).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        let end = usize::from(self.total_len()).min(buf.len());
        bytes::slice(buf, self.header_len()..end)
    }

    pub fn verify_checksum(&self) -> bool {
        let header = bytes::slice(self.buf(), 0..self.header_len());
        checksum::fold(checksum::sum(header)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_src(&mut self, addr: [u8; 4]) {
        bytes::set(self.buf_mut(), field::SRC.start, addr);
    }

    #[inline]
    pub fn set_dst(&mut self, addr: [u8; 4]) {
        bytes::set(self.buf_mut(), field::DST.start, addr);
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        bytes::set_u8(self.buf_mut(), field::TTL, ttl);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        bytes::set_u16(self.buf_mut(), field::CHECKSUM.start, value);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let sum = checksum::sum(bytes::slice(self.buf(), 0..header_len));
        self.set_checksum(checksum::finish(sum));
    }

    /// Readdresses the packet and decrements the TTL, updating the checksum
    /// incrementally (RFC 1624) instead of re-summing the header.
    #[inline]
    pub fn rewrite(&mut self, src: [u8; 4], dst: [u8; 4]) {
        let old_src = u32::from_be_bytes(self.src_bytes());
        let old_dst = u32::from_be_bytes(self.dst_bytes());
        let ttl = self.ttl();
        let proto = self.protocol();
        let new_ttl = ttl.wrapping_sub(1);
        let sum = checksum::Update::new(self.checksum())
            .replace32(old_src, u32::from_be_bytes(src))
            .replace32(old_dst, u32::from_be_bytes(dst))
            .replace16(
                u16::from_be_bytes([ttl, proto]),
                u16::from_be_bytes([new_ttl, proto]),
            )
            .finish();
        self.set_src(src);
        self.set_dst(dst);
        self.set_ttl(new_ttl);
        self.set_checksum(sum);
    }
}

/// A high-level IPv4 header without options, for building packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub payload_len: usize,
    pub ttl: u8,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            payload_len: p.payload().len(),
            ttl: p.ttl(),
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with DF set and a valid checksum at the start
    /// of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        self.emit_with_dscp_ecn(buf, 0)
    }

    /// `emit` with the DSCP/ECN byte set, e.g. copied from an encapsulated
    /// packet.
    pub fn emit_with_dscp_ecn(&self, buf: &mut [u8], dscp_ecn: u8) -> Result<()> {
        self.emit_with(buf, dscp_ecn, FLAG_DF)
    }

    /// `emit` with DF clear: an ICMP error may be fragmented on its way.
    pub fn emit_without_df(&self, buf: &mut [u8]) -> Result<()> {
        self.emit_with(buf, 0, 0)
    }

    fn emit_with(&self, buf: &mut [u8], dscp_ecn: u8, flags: u16) -> Result<()> {
        let total = HEADER_LEN + self.payload_len;
        let total = u16::try_from(total).map_err(|_| Error::Malformed)?;
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        bytes::set_u8(buf, field::VER_IHL, 0x45);
        bytes::set_u8(buf, field::DSCP_ECN, dscp_ecn);
        bytes::set_u16(buf, field::LENGTH.start, total);
        bytes::set_u16(buf, field::IDENT.start, 0);
        bytes::set_u16(buf, field::FLAGS_FRAG.start, flags);
        bytes::set_u8(buf, field::TTL, self.ttl);
        bytes::set_u8(buf, field::PROTOCOL, self.protocol);
        bytes::set(buf, field::SRC.start, self.src.octets());
        bytes::set(buf, field::DST.start, self.dst.octets());
        bytes::set_u16(buf, field::CHECKSUM.start, 0);
        let sum = checksum::finish(checksum::sum(bytes::slice(buf, 0..HEADER_LEN)));
        bytes::set_u16(buf, field::CHECKSUM.start, sum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 10.0.0.1 -> 10.0.0.2, GRE, TTL 64, one NOP option word, 4 payload bytes,
    // 2 bytes of link padding.
    fn with_option() -> Vec<u8> {
        let mut b = vec![
            0x46, 0x00, 0x00, 28, 0x12, 0x34, 0x40, 0x00, 64, 47, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
            1, 1, 1, 0, // options: NOP NOP NOP EOL
            0xde, 0xad, 0xbe, 0xef, // payload
            0, 0, // padding
        ];
        Packet::new_checked(&mut b[..]).unwrap().fill_checksum();
        b
    }

    #[test]
    fn parses_header_with_options_and_padding() {
        let b = with_option();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(p.protocol(), 47);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.src(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert!(p.verify_checksum());
    }

    #[test]
    fn rejects_bad_version_ihl_and_lengths() {
        let good = with_option();
        let mut b = good.clone();
        b[0] = 0x66;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        b[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        b[0] = 0x4f; // IHL 60 > buffer
        b[3] = 60;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Truncated);
        let mut b = good.clone();
        b[3] = 20; // total < IHL
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        b[3] = 31; // total > buffer
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Truncated);
        for n in 0..28 {
            assert!(
                Packet::new_checked(&good[..n]).is_err(),
                "accepted {n} bytes"
            );
        }
    }

    #[test]
    fn quoted_packet_needs_only_its_header() {
        let b = with_option();
        assert!(Packet::new_checked(&b[..26]).is_err());
        let p = Packet::new_quoted(&b[..26]).unwrap();
        assert_eq!(p.payload(), &[0xde, 0xad]);
        assert_eq!(p.dst(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(Packet::new_quoted(&b[..23]).unwrap_err(), Error::Truncated);
        let mut bad = b.clone();
        bad[0] = 0x44;
        assert_eq!(Packet::new_quoted(&bad[..]).unwrap_err(), Error::Malformed);
    }

    #[test]
    fn fragments_are_recognised() {
        let mut b = with_option();
        b[6] = 0x20; // MF, offset 0: first fragment
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.more_frags() && p.is_fragment() && p.frag_offset() == 0);
        b[6] = 0x00;
        b[7] = 0x03; // last fragment at byte 24
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 24);
    }

    #[test]
    fn repr_emits_valid_header() {
        let repr = Repr {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            protocol: 17,
            payload_len: 8,
            ttl: 9,
        };
        let mut b = [0u8; 28];
        repr.emit(&mut b).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p), repr);
        assert_eq!(repr.emit(&mut [0u8; 19]), Err(Error::Truncated));
    }

    #[test]
    fn repr_emits_dscp_ecn_under_its_checksum() {
        let repr = Repr {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            protocol: 47,
            payload_len: 8,
            ttl: 64,
        };
        let mut b = [0u8; 28];
        repr.emit_with_dscp_ecn(&mut b, 0xb9).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.dscp_ecn(), 0xb9);
        assert!(p.verify_checksum());
        assert!(p.dont_frag());
    }

    #[test]
    fn repr_emits_without_df_under_its_checksum() {
        let repr = Repr {
            src: Ipv4Addr::new(172, 16, 0, 1),
            dst: Ipv4Addr::new(198, 51, 100, 7),
            protocol: 1,
            payload_len: 8,
            ttl: 64,
        };
        let mut b = [0xffu8; 28];
        repr.emit_without_df(&mut b).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.dont_frag() && !p.is_fragment());
        assert_eq!((p.dscp_ecn(), p.ident()), (0, 0));
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p), repr);
    }

    proptest! {
        #[test]
        fn rewrite_checksum_equals_full_recompute(
            header in proptest::collection::vec(any::<u8>(), 20),
            ttl in 2u8..=255,
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
        ) {
            let mut b = header;
            b[0] = 0x45;
            b[2] = 0;
            b[3] = 20;
            b[8] = ttl;
            let mut p = Packet::new_checked(&mut b[..]).unwrap();
            p.fill_checksum();
            p.rewrite(src, dst);
            let incremental = p.checksum();
            prop_assert!(p.verify_checksum());
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
            prop_assert_eq!(p.ttl(), ttl - 1);
            prop_assert_eq!(p.src_bytes(), src);
            prop_assert_eq!(p.dst_bytes(), dst);
        }

        #[test]
        fn accessors_never_panic(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = (p.header_len(), p.payload(), p.options(), p.verify_checksum());
                prop_assert!(p.payload().len() + p.header_len() <= data.len());
            }
        }
    }
}
