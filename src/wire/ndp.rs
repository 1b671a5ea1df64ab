//! ICMPv6 Neighbour Solicitation and Advertisement (RFC 4861 §4.3, §4.4),
//! from the ICMPv6 type byte on, with their options (§4.6).

use super::bytes::{self, Field};
use super::checksum;
use super::ethernet::Address;
use super::icmp::v6::{NEIGHBOR_ADVERT, NEIGHBOR_SOLICIT};
use super::{Error, Result, ip_proto};
use core::net::Ipv6Addr;

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// R, S and O in the top bits; the rest is reserved.
    pub const FLAGS: Field = 4..8;
    pub const TARGET: Field = 8..24;
    pub const OPTIONS: usize = 24;
    // Within an option.
    pub const OPT_TYPE: usize = 0;
    pub const OPT_LEN: usize = 1;
    pub const OPT_DATA: usize = 2;
}

pub const HEADER_LEN: usize = field::OPTIONS;
/// Options are counted in units of this many bytes.
pub const OPTION_UNIT: usize = 8;
/// A link-layer address option for Ethernet: one unit (RFC 2464 §6).
pub const LINK_LAYER_OPTION_LEN: usize = OPTION_UNIT;

/// Option types we name.
pub mod option {
    pub const SOURCE_LINK_LAYER: u8 = 1;
    pub const TARGET_LINK_LAYER: u8 = 2;
}

const FLAG_ROUTER: u32 = 1 << 31;
const FLAG_SOLICITED: u32 = 1 << 30;
const FLAG_OVERRIDE: u32 = 1 << 29;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The buffer must be the whole ICMPv6 message (the IPv6 payload
    /// without link padding), since options run to its end.
    ///
    /// `Unsupported` unless type 135 or 136; `Malformed` for a nonzero code
    /// or a zero-length option; `Truncated` when shorter than 24 bytes or
    /// when an option overruns the message.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let b = p.buf();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if !matches!(p.msg_type(), NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT) {
            return Err(Error::Unsupported);
        }
        if p.code() != 0 {
            return Err(Error::Malformed);
        }
        let mut at = field::OPTIONS;
        while at < b.len() {
            // The length byte itself must be inside the message.
            if at + field::OPT_DATA > b.len() {
                return Err(Error::Truncated);
            }
            let len = usize::from(bytes::u8_at(b, at + field::OPT_LEN)) * OPTION_UNIT;
            if len == 0 {
                // RFC 4861 §4.6: nodes MUST silently discard such packets.
                return Err(Error::Malformed);
            }
            if at + len > b.len() {
                return Err(Error::Truncated);
            }
            at += len;
        }
        Ok(p)
    }

    #[inline]
    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// 135 (solicitation) or 136 (advertisement).
    pub fn msg_type(&self) -> u8 {
        bytes::u8_at(self.buf(), field::TYPE)
    }

    pub fn code(&self) -> u8 {
        bytes::u8_at(self.buf(), field::CODE)
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buf(), field::CHECKSUM.start)
    }

    pub fn is_solicit(&self) -> bool {
        self.msg_type() == NEIGHBOR_SOLICIT
    }

    pub fn is_advert(&self) -> bool {
        self.msg_type() == NEIGHBOR_ADVERT
    }

    // A solicitation's flag bits are reserved, so they read as false.
    fn flag(&self, bit: u32) -> bool {
        self.is_advert() && bytes::u32_at(self.buf(), field::FLAGS.start) & bit != 0
    }

    /// NA: the sender is a router.
    pub fn router(&self) -> bool {
        self.flag(FLAG_ROUTER)
    }

    /// NA: sent in answer to a solicitation.
    pub fn solicited(&self) -> bool {
        self.flag(FLAG_SOLICITED)
    }

    /// NA: should replace an existing cache entry.
    pub fn override_flag(&self) -> bool {
        self.flag(FLAG_OVERRIDE)
    }

    pub fn target(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::get::<16>(self.buf(), field::TARGET))
    }

    /// The options, each as (type, bytes after the type and length).
    pub fn options(&self) -> Options<'_> {
        let b = self.buf();
        Options {
            rest: bytes::slice(b, field::OPTIONS..b.len()),
        }
    }

    /// The first Source (NS) or Target (NA) Link-Layer Address option's
    /// address; None without one, or when that one is not Ethernet-sized
    /// (Linux then ignores the address too).
    pub fn link_layer(&self) -> Option<Address> {
        let want = if self.is_solicit() {
            option::SOURCE_LINK_LAYER
        } else {
            option::TARGET_LINK_LAYER
        };
        let (_, data) = self.options().find(|&(ty, _)| ty == want)?;
        let mac: &[u8; 6] = data.try_into().ok()?;
        Some(Address(*mac))
    }

    /// Checks the checksum over the IPv6 pseudo-header and the message.
    pub fn verify_checksum(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        let b = self.buf();
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        let pseudo = checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, len);
        checksum::fold(pseudo + checksum::sum(b)) == 0xffff
    }
}

/// Walks the options of a checked packet; stops at the first one that does
/// not fit, which a checked packet never has.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Options<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let ty = bytes::u8_at(self.rest, field::OPT_TYPE);
        let len = usize::from(bytes::u8_at(self.rest, field::OPT_LEN)) * OPTION_UNIT;
        if len == 0 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let (opt, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some((ty, bytes::slice(opt, field::OPT_DATA..len)))
    }
}

/// What kind of neighbour message a `Repr` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Solicit,
    Advert {
        router: bool,
        solicited: bool,
        override_flag: bool,
    },
}

/// A high-level NS or NA with at most one link-layer address option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub kind: Kind,
    pub target: Ipv6Addr,
    /// Source (NS) or Target (NA) Link-Layer Address.
    pub link_layer: Option<Address>,
}

impl Repr {
    /// Other options than the link-layer address are dropped.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        let kind = if p.is_solicit() {
            Kind::Solicit
        } else {
            Kind::Advert {
                router: p.router(),
                solicited: p.solicited(),
                override_flag: p.override_flag(),
            }
        };
        Repr {
            kind,
            target: p.target(),
            link_layer: p.link_layer(),
        }
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + if self.link_layer.is_some() {
                LINK_LAYER_OPTION_LEN
            } else {
                0
            }
    }

    /// Writes the message into the first `buffer_len()` bytes of `buf`,
    /// with the checksum for an IPv6 header carrying `src` and `dst`.
    pub fn emit(&self, buf: &mut [u8], src: &[u8; 16], dst: &[u8; 16]) -> Result<()> {
        let len = self.buffer_len();
        let buf = buf.get_mut(..len).ok_or(Error::Truncated)?;
        buf.fill(0);
        let (ty, flags, opt) = match self.kind {
            Kind::Solicit => (NEIGHBOR_SOLICIT, 0, option::SOURCE_LINK_LAYER),
            Kind::Advert {
                router,
                solicited,
                override_flag,
            } => {
                let mut flags = 0;
                for (set, bit) in [
                    (router, FLAG_ROUTER),
                    (solicited, FLAG_SOLICITED),
                    (override_flag, FLAG_OVERRIDE),
                ] {
                    if set {
                        flags |= bit;
                    }
                }
                (NEIGHBOR_ADVERT, flags, option::TARGET_LINK_LAYER)
            }
        };
        bytes::set_u8(buf, field::TYPE, ty);
        bytes::set_u32(buf, field::FLAGS.start, flags);
        bytes::set(buf, field::TARGET.start, self.target.octets());
        if let Some(mac) = self.link_layer {
            let at = field::OPTIONS;
            bytes::set_u8(buf, at + field::OPT_TYPE, opt);
            bytes::set_u8(buf, at + field::OPT_LEN, 1);
            bytes::set(buf, at + field::OPT_DATA, mac.0);
        }
        // `len` is at most 32, so it fits.
        let pseudo = checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, len as u32);
        let sum = checksum::finish(pseudo + checksum::sum(buf));
        bytes::set_u16(buf, field::CHECKSUM.start, sum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::Icmpv6Slice;
    use etherparse::icmpv6::{Icmpv6PayloadSlice, NdpOptionSlice};
    use pnet_packet::icmpv6::ndp::{
        MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOption, NdpOptionTypes,
        NeighborAdvertFlags, NeighborAdvertPacket,
    };
    use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Packet, Icmpv6Types};
    use proptest::prelude::*;

    const SRC: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    const DST: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

    fn target() -> Ipv6Addr {
        "2001:db8::7".parse().unwrap()
    }

    /// An NA built by pnet, checksum included.
    fn pnet_na(flags: u8, options: &[NdpOption]) -> Vec<u8> {
        let opt_len: usize = options.iter().map(|o| usize::from(o.length) * 8).sum();
        let mut b = vec![0u8; 24 + opt_len];
        let mut na = MutableNeighborAdvertPacket::new(&mut b).unwrap();
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        na.set_flags(flags);
        na.set_target_addr(target());
        na.set_options(options);
        set_pnet_checksum(&mut b);
        b
    }

    fn set_pnet_checksum(b: &mut [u8]) {
        let sum = pnet_packet::icmpv6::checksum(
            &Icmpv6Packet::new(b).unwrap(),
            &Ipv6Addr::from(SRC),
            &Ipv6Addr::from(DST),
        );
        b[2..4].copy_from_slice(&sum.to_be_bytes());
    }

    fn lladdr(ty: pnet_packet::icmpv6::ndp::NdpOptionType, mac: [u8; 6]) -> NdpOption {
        NdpOption {
            option_type: ty,
            length: 1,
            data: mac.to_vec(),
        }
    }

    #[test]
    fn parses_pnet_advert_flags_target_and_tlla() {
        let b = pnet_na(
            NeighborAdvertFlags::Router | NeighborAdvertFlags::Override,
            &[lladdr(NdpOptionTypes::TargetLLAddr, MAC)],
        );
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), NEIGHBOR_ADVERT);
        assert!(p.router() && !p.solicited() && p.override_flag());
        assert_eq!(p.target(), target());
        assert_eq!(p.link_layer(), Some(Address(MAC)));
        assert!(p.verify_checksum(&SRC, &DST));
        // Swapping the addresses would keep the sum: change one instead.
        assert!(!p.verify_checksum(&SRC, &SRC));
        assert_eq!(
            Repr::parse(&p),
            Repr {
                kind: Kind::Advert {
                    router: true,
                    solicited: false,
                    override_flag: true
                },
                target: target(),
                link_layer: Some(Address(MAC)),
            }
        );
    }

    #[test]
    fn parses_pnet_solicit_with_slla_after_an_unknown_option() {
        let opts = [
            NdpOption {
                option_type: pnet_packet::icmpv6::ndp::NdpOptionType(14),
                length: 2,
                data: vec![9; 14],
            },
            lladdr(NdpOptionTypes::SourceLLAddr, MAC),
        ];
        let mut b = vec![0u8; 24 + 16 + 8];
        let mut ns = MutableNeighborSolicitPacket::new(&mut b).unwrap();
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_target_addr(target());
        ns.set_options(&opts);
        set_pnet_checksum(&mut b);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.is_solicit());
        assert!(!p.router() && !p.solicited() && !p.override_flag());
        assert_eq!(p.target(), target());
        assert_eq!(p.link_layer(), Some(Address(MAC)));
        assert!(p.verify_checksum(&SRC, &DST));
        let types: Vec<u8> = p.options().map(|(t, _)| t).collect();
        assert_eq!(types, [14, option::SOURCE_LINK_LAYER]);
    }

    #[test]
    fn link_layer_is_the_first_of_the_right_type_and_ethernet_sized() {
        let other = [2, 0, 0, 0, 0, 9];
        // An SLLA in an NA is not the target's address.
        let b = pnet_na(
            0,
            &[
                lladdr(NdpOptionTypes::SourceLLAddr, other),
                lladdr(NdpOptionTypes::TargetLLAddr, MAC),
                lladdr(NdpOptionTypes::TargetLLAddr, other),
            ],
        );
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.link_layer(), Some(Address(MAC)));
        // A two-unit TLLA is no Ethernet address.
        let wide = NdpOption {
            option_type: NdpOptionTypes::TargetLLAddr,
            length: 2,
            data: vec![1; 14],
        };
        let b = pnet_na(0, &[wide, lladdr(NdpOptionTypes::TargetLLAddr, MAC)]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().link_layer(), None);
        let b = pnet_na(0, &[]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().link_layer(), None);
    }

    #[test]
    fn emitted_advert_matches_pnet_and_etherparse() {
        let repr = Repr {
            kind: Kind::Advert {
                router: false,
                solicited: true,
                override_flag: true,
            },
            target: target(),
            link_layer: Some(Address(MAC)),
        };
        let mut b = vec![0xffu8; repr.buffer_len() + 3];
        repr.emit(&mut b, &SRC, &DST).unwrap();
        assert_eq!(&b[32..], &[0xff; 3], "nothing past buffer_len");
        let b = &b[..32];
        let expected = pnet_na(
            NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override,
            &[lladdr(NdpOptionTypes::TargetLLAddr, MAC)],
        );
        assert_eq!(b, &expected[..]);

        let na = NeighborAdvertPacket::new(b).unwrap();
        assert_eq!(na.get_options()[0].data, MAC);
        let icmp = Icmpv6Slice::from_slice(b).unwrap();
        assert!(icmp.is_checksum_valid(SRC, DST));
        match icmp.icmp_type() {
            etherparse::Icmpv6Type::NeighborAdvertisement(h) => {
                assert!(!h.router && h.solicited && h.r#override)
            }
            other => panic!("{other:?}"),
        }
        let Ok(Icmpv6PayloadSlice::NeighborAdvertisement(payload)) = icmp.payload_slice() else {
            panic!("not an NA payload");
        };
        assert_eq!(payload.target_address(), target());
        let opts: Vec<_> = payload.options_iterator().collect();
        assert_eq!(opts.len(), 1);
        match &opts[0] {
            Ok(NdpOptionSlice::TargetLinkLayerAddress(o)) => {
                assert_eq!(o.link_layer_address(), MAC)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn emitted_solicit_without_option_matches_etherparse() {
        let repr = Repr {
            kind: Kind::Solicit,
            target: target(),
            link_layer: None,
        };
        assert_eq!(repr.buffer_len(), 24);
        let mut b = [0xffu8; 24];
        repr.emit(&mut b, &SRC, &DST).unwrap();
        let icmp = Icmpv6Slice::from_slice(&b).unwrap();
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::NeighborSolicitation
        );
        assert!(icmp.is_checksum_valid(SRC, DST));
        assert_eq!(&b[4..8], &[0; 4], "reserved is zero");
        let Ok(Icmpv6PayloadSlice::NeighborSolicitation(payload)) = icmp.payload_slice() else {
            panic!("not an NS payload");
        };
        assert_eq!(payload.target_address(), target());
        assert!(payload.options().is_empty());
        assert_eq!(repr.emit(&mut [0u8; 23], &SRC, &DST), Err(Error::Truncated));
    }

    #[test]
    fn repr_round_trips_through_emit_and_parse() {
        for kind in [
            Kind::Solicit,
            Kind::Advert {
                router: true,
                solicited: false,
                override_flag: false,
            },
        ] {
            for link_layer in [None, Some(Address(MAC))] {
                let repr = Repr {
                    kind,
                    target: target(),
                    link_layer,
                };
                let mut b = vec![0u8; repr.buffer_len()];
                repr.emit(&mut b, &SRC, &DST).unwrap();
                let p = Packet::new_checked(&b[..]).unwrap();
                assert!(p.verify_checksum(&SRC, &DST));
                assert_eq!(Repr::parse(&p), repr);
            }
        }
    }

    #[test]
    fn rejects_short_other_types_bad_code_and_bad_options() {
        let good = pnet_na(0, &[lladdr(NdpOptionTypes::TargetLLAddr, MAC)]);
        assert_eq!(
            Packet::new_checked(&good[..23]).unwrap_err(),
            Error::Truncated
        );
        // Cut inside the option: its declared length overruns.
        for n in 25..good.len() {
            assert_eq!(
                Packet::new_checked(&good[..n]).unwrap_err(),
                Error::Truncated,
                "{n}"
            );
        }
        // One stray byte after the last option has no length byte.
        let mut stray = good.clone();
        stray.push(1);
        assert_eq!(
            Packet::new_checked(&stray[..]).unwrap_err(),
            Error::Truncated
        );
        let mut zero = good.clone();
        zero[25] = 0;
        assert_eq!(
            Packet::new_checked(&zero[..]).unwrap_err(),
            Error::Malformed
        );
        let mut long = good.clone();
        long[25] = 2;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::Truncated
        );
        let mut code = good.clone();
        code[1] = 1;
        assert_eq!(
            Packet::new_checked(&code[..]).unwrap_err(),
            Error::Malformed
        );
        for ty in [128, 133, 134, 137] {
            let mut other = good.clone();
            other[0] = ty;
            assert_eq!(
                Packet::new_checked(&other[..]).unwrap_err(),
                Error::Unsupported
            );
        }
    }

    #[test]
    fn solicit_flag_bits_are_reserved() {
        let mut b = [0u8; 24];
        b[0] = NEIGHBOR_SOLICIT;
        b[4] = 0xe0;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(!p.router() && !p.solicited() && !p.override_flag());
    }

    proptest! {
        #[test]
        fn random_messages_never_panic(
            ty in prop_oneof![Just(NEIGHBOR_SOLICIT), Just(NEIGHBOR_ADVERT), any::<u8>()],
            body in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut b = vec![ty, 0];
            b.extend_from_slice(&body);
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = (p.router(), p.solicited(), p.override_flag(), p.target());
                let _ = (p.link_layer(), p.verify_checksum(&SRC, &DST));
                let total: usize = p.options().map(|(_, d)| d.len() + 2).sum();
                prop_assert_eq!(total, b.len() - HEADER_LEN);
                let repr = Repr::parse(&p);
                let mut out = vec![0u8; repr.buffer_len()];
                prop_assert!(repr.emit(&mut out, &SRC, &DST).is_ok());
            }
        }
    }
}
