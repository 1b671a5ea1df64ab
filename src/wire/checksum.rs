//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of `data` as big-endian 16-bit words, not folded.
/// An odd trailing byte is padded with zero.
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold a wide one's-complement sum into 16 bits with end-around carry.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for data summing to `acc`.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u64 {
    sum(src) + sum(dst) + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(next_header)
}

/// An incremental checksum update, RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
///
/// A 32-bit word can be added whole: 2^16 ≡ 1 mod 0xffff, so its halves fold
/// together correctly.
#[derive(Debug, Clone, Copy)]
pub struct Update(u64);

impl Update {
    #[inline]
    pub fn new(checksum: u16) -> Self {
        Update(u64::from(!checksum))
    }

    #[inline]
    pub fn replace16(self, old: u16, new: u16) -> Self {
        Update(self.0 + u64::from(!old) + u64::from(new))
    }

    #[inline]
    pub fn replace32(self, old: u32, new: u32) -> Self {
        Update(self.0 + u64::from(!old) + u64::from(new))
    }

    #[inline]
    pub fn finish(self) -> u16 {
        finish(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 §3 worked example.
    #[test]
    fn sum_matches_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_update_equals_full_recompute() {
        let mut data = [
            0x45u8, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 47, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c0 = finish(sum(&data));
        let old_dst = u32::from_be_bytes([data[16], data[17], data[18], data[19]]);
        let old_ttl = u16::from_be_bytes([data[8], data[9]]);
        let new_dst: u32 = 0xc0a8_0101;
        data[16..20].copy_from_slice(&new_dst.to_be_bytes());
        data[8] -= 1;
        let new_ttl = u16::from_be_bytes([data[8], data[9]]);
        let inc = Update::new(c0)
            .replace32(old_dst, new_dst)
            .replace16(old_ttl, new_ttl)
            .finish();
        assert_eq!(inc, finish(sum(&data)));
    }
}
