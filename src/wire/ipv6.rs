//! IPv6 (RFC 8200): the fixed header, plus a walk over extension headers to
//! find the upper layer.

use super::bytes::{self, Field};
use super::{Error, Result, ip_proto};
use core::net::Ipv6Addr;

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
    // Within an extension header.
    pub const EXT_NEXT: usize = 0;
    pub const EXT_LEN: usize = 1;
}

pub const HEADER_LEN: usize = field::DST.end;

/// The Fragment header (RFC 8200 4.5).
const FRAG_HEADER_LEN: usize = 8;

/// More extension headers than this is treated as an attack, not a packet.
pub const MAX_EXT_HEADERS: usize = 8;

/// A view of an IPv6 packet. Link padding after the payload is excluded.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Where the upper-layer header starts, after any extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    pub protocol: u8,
    /// Offset into `payload()`.
    pub offset: usize,
    /// A Fragment header was present: only the 3-tuple is usable.
    pub fragment: bool,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks version 6 and that the declared payload fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.version() != 6 {
            return Err(Error::Malformed);
        }
        if HEADER_LEN + usize::from(p.payload_len()) > len {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// For the packet quoted in an ICMPv6 error: checks version 6 and the
    /// fixed header, but not the payload length, since the quote is cut
    /// short. `payload` is then what the quote holds.
    #[inline]
    pub fn new_quoted(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.version() != 6 {
            return Err(Error::Malformed);
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
    fn ver_tc_flow(&self) -> u32 {
        bytes::u32_at(self.buf(), field::VER_TC_FLOW.start)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        bytes::u16_at(self.buf(), field::PAYLOAD_LEN.start)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        bytes::u8_at(self.buf(), field::NEXT_HEADER)
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        bytes::u8_at(self.buf(), field::HOP_LIMIT)
    }

    #[inline]
    pub fn src_bytes(&self) -> [u8; 16] {
        bytes::get(self.buf(), field::SRC)
    }

    #[inline]
    pub fn dst_bytes(&self) -> [u8; 16] {
        bytes::get(self.buf(), field::DST)
    }

    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_bytes())
    }

    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_bytes())
    }

    /// The payload without link padding (for a quoted packet, up to the
    /// end of the quote).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(buf.len());
        bytes::slice(buf, HEADER_LEN..end)
    }

    /// Skips Hop-by-Hop, Routing, Destination Options and AH headers, and
    /// stops at a Fragment header. `Unsupported` when the chain is longer than
    /// `MAX_EXT_HEADERS`; `Truncated` when a header overruns the payload.
    #[inline]
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let payload = self.payload();
        let mut protocol = self.next_header();
        let mut offset = 0usize;
        for _ in 0..=MAX_EXT_HEADERS {
            let len = match protocol {
                ip_proto::HOPOPT | ip_proto::IPV6_ROUTE | ip_proto::IPV6_OPTS => {
                    (usize::from(bytes::u8_at(payload, offset + field::EXT_LEN)) + 1) * 8
                }
                ip_proto::AH => {
                    (usize::from(bytes::u8_at(payload, offset + field::EXT_LEN)) + 2) * 4
                }
                // Past a Fragment header, only the first fragment holds
                // headers; the rest hold data. Stop here so every fragment
                // of a datagram yields the same protocol.
                ip_proto::IPV6_FRAG => {
                    if offset + FRAG_HEADER_LEN > payload.len() {
                        return Err(Error::Truncated);
                    }
                    return Ok(UpperLayer {
                        protocol: bytes::u8_at(payload, offset + field::EXT_NEXT),
                        offset: offset + FRAG_HEADER_LEN,
                        fragment: true,
                    });
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        fragment: false,
                    });
                }
            };
            // The length byte itself must be inside the payload.
            if offset + 2 > payload.len() || offset + len > payload.len() {
                return Err(Error::Truncated);
            }
            protocol = bytes::u8_at(payload, offset + field::EXT_NEXT);
            offset += len;
        }
        Err(Error::Unsupported)
    }

    /// The fragment offset in bytes when `upper_layer` finds a Fragment
    /// header; None when there is none, or the chain is broken.
    pub fn frag_offset(&self) -> Option<u16> {
        let upper = self.upper_layer().ok().filter(|u| u.fragment)?;
        // The offset field is the top 13 bits of bytes 2-3, in 8-byte units.
        let at = upper.offset.checked_sub(FRAG_HEADER_LEN)? + 2;
        Some(bytes::u16_at(self.payload(), at) & 0xfff8)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src(&mut self, addr: [u8; 16]) {
        bytes::set(self.buffer.as_mut(), field::SRC.start, addr);
    }

    #[inline]
    pub fn set_dst(&mut self, addr: [u8; 16]) {
        bytes::set(self.buffer.as_mut(), field::DST.start, addr);
    }

    #[inline]
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        bytes::set_u8(self.buffer.as_mut(), field::HOP_LIMIT, hop_limit);
    }
}

/// A high-level IPv6 fixed header, for building packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            src: p.src(),
            dst: p.dst(),
            next_header: p.next_header(),
            payload_len: usize::from(p.payload_len()),
            hop_limit: p.hop_limit(),
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        self.emit_with_flow(buf, 0, 0)
    }

    /// `emit` with a traffic class and the low 20 bits of `flow_label`.
    pub fn emit_with_flow(&self, buf: &mut [u8], traffic_class: u8, flow_label: u32) -> Result<()> {
        let payload_len = u16::try_from(self.payload_len).map_err(|_| Error::Malformed)?;
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let first = 6 << 28 | u32::from(traffic_class) << 20 | flow_label & 0x000f_ffff;
        bytes::set_u32(buf, field::VER_TC_FLOW.start, first);
        bytes::set_u16(buf, field::PAYLOAD_LEN.start, payload_len);
        bytes::set_u8(buf, field::NEXT_HEADER, self.next_header);
        bytes::set_u8(buf, field::HOP_LIMIT, self.hop_limit);
        bytes::set(buf, field::SRC.start, self.src.octets());
        bytes::set(buf, field::DST.start, self.dst.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let repr = Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header,
            payload_len: payload.len(),
            hop_limit: 64,
        };
        let mut b = vec![0u8; HEADER_LEN];
        repr.emit(&mut b).unwrap();
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn parses_fixed_header() {
        let mut b = packet(ip_proto::UDP, &[1, 2, 3, 4, 5, 6, 7, 8]);
        b[1] = 0x23; // traffic class low nibble 2, flow label 0x3....
        b.extend_from_slice(&[0, 0]); // padding
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.flow_label(), 0x30000);
        assert_eq!(p.traffic_class(), 0x02);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.dst(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: ip_proto::UDP,
                offset: 0,
                fragment: false
            })
        );
    }

    #[test]
    fn repr_emits_traffic_class_and_flow_label() {
        let repr = Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header: ip_proto::GRE,
            payload_len: 0,
            hop_limit: 64,
        };
        let mut b = [0u8; HEADER_LEN];
        repr.emit_with_flow(&mut b, 0xb8, 0xfff1_2345).unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.version(), p.traffic_class()), (6, 0xb8));
        assert_eq!(p.flow_label(), 0x1_2345);
        assert_eq!(Repr::parse(&p), repr);
    }

    #[test]
    fn rejects_bad_version_and_truncation() {
        let b = packet(ip_proto::UDP, &[0; 8]);
        let mut bad = b.clone();
        bad[0] = 0x40;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        for n in 0..b.len() {
            assert_eq!(Packet::new_checked(&b[..n]).unwrap_err(), Error::Truncated);
        }
    }

    #[test]
    fn skips_extension_headers_to_upper_layer() {
        // Hop-by-Hop (8) -> Destination Options (16) -> Fragment (8) -> TCP.
        let mut payload = vec![ip_proto::IPV6_OPTS, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[
            ip_proto::IPV6_FRAG,
            1,
            1,
            12,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        payload.extend_from_slice(&[ip_proto::TCP, 0, 0x00, 0x01, 0, 0, 0, 7]);
        payload.extend_from_slice(&[0; 20]);
        let b = packet(ip_proto::HOPOPT, &payload);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: ip_proto::TCP,
                offset: 32,
                fragment: true
            })
        );
    }

    #[test]
    fn quoted_packet_needs_only_the_fixed_header() {
        let b = packet(
            ip_proto::TCP,
            &[0x01, 0xbb, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 0],
        );
        assert!(Packet::new_checked(&b[..48]).is_err());
        let p = Packet::new_quoted(&b[..48]).unwrap();
        assert_eq!(p.payload(), &b[40..48]);
        assert_eq!(p.upper_layer().unwrap().protocol, ip_proto::TCP);
        assert_eq!(Packet::new_quoted(&b[..39]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn stops_at_fragment_header_so_all_fragments_agree() {
        // A non-first fragment: the Fragment header names Destination
        // Options, but what follows is data, not a header.
        let mut payload = vec![ip_proto::IPV6_OPTS, 0, 0x01, 0x00, 0, 0, 0, 7];
        payload.extend_from_slice(&[0xff; 24]);
        let b = packet(ip_proto::IPV6_FRAG, &payload);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: ip_proto::IPV6_OPTS,
                offset: 8,
                fragment: true
            })
        );
        let b = packet(ip_proto::IPV6_FRAG, &payload[..7]);
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().upper_layer(),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn frag_offset_reads_the_fragment_header_found_by_the_walk() {
        let b = packet(ip_proto::UDP, &[0; 8]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().frag_offset(), None);
        // Destination Options, then a Fragment header at offset 1480, M set.
        let mut payload = vec![ip_proto::IPV6_FRAG, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[ip_proto::UDP, 0, 0x05, 0xc9, 0, 0, 0, 7]);
        payload.extend_from_slice(&[0; 8]);
        let b = packet(ip_proto::IPV6_OPTS, &payload);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.frag_offset(), Some(1480));
        // The first fragment: offset 0, M set.
        let b = packet(ip_proto::IPV6_FRAG, &[ip_proto::UDP, 0, 0, 1, 0, 0, 0, 7]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().frag_offset(), Some(0));
        // A broken chain has no offset to read.
        let b = packet(ip_proto::IPV6_FRAG, &[ip_proto::UDP, 0, 0x05]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().frag_offset(), None);
    }

    #[test]
    fn rejects_overrunning_and_overlong_chains() {
        let b = packet(ip_proto::IPV6_OPTS, &[ip_proto::TCP, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().upper_layer(),
            Err(Error::Truncated)
        );
        let b = packet(ip_proto::IPV6_OPTS, &[ip_proto::TCP]);
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().upper_layer(),
            Err(Error::Truncated)
        );
        let mut chain = Vec::new();
        for _ in 0..=MAX_EXT_HEADERS {
            chain.extend_from_slice(&[ip_proto::IPV6_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        }
        let b = packet(ip_proto::IPV6_OPTS, &chain);
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().upper_layer(),
            Err(Error::Unsupported)
        );
    }

    proptest! {
        #[test]
        fn upper_layer_never_panics_and_stays_in_bounds(
            next in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let b = packet(next, &payload);
            let p = Packet::new_checked(&b[..]).unwrap();
            if let Ok(ul) = p.upper_layer() {
                prop_assert!(ul.offset <= payload.len());
            }
        }
    }
}
