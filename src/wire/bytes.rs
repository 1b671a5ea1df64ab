//! Total (never panicking) big-endian field access.
//!
//! Views check their lengths at construction, so the fallbacks here are never
//! taken in practice; they exist so that no accessor can panic even if a
//! buffer's `AsRef` misbehaves.

use core::ops::Range;

pub(crate) type Field = Range<usize>;

#[inline(always)]
pub(crate) fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    match buf.get(at..).and_then(|s| s.first_chunk::<N>()) {
        Some(a) => *a,
        None => [0; N],
    }
}

#[inline(always)]
pub(crate) fn get<const N: usize>(buf: &[u8], field: Field) -> [u8; N] {
    debug_assert_eq!(field.len(), N);
    array(buf, field.start)
}

#[inline(always)]
pub(crate) fn u8_at(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(buf, at))
}

#[inline(always)]
pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(buf, at))
}

#[inline(always)]
pub(crate) fn set<const N: usize>(buf: &mut [u8], at: usize, value: [u8; N]) {
    if let Some(dst) = buf.get_mut(at..).and_then(|s| s.first_chunk_mut::<N>()) {
        *dst = value;
    }
}

#[inline(always)]
pub(crate) fn set_u8(buf: &mut [u8], at: usize, value: u8) {
    if let Some(b) = buf.get_mut(at) {
        *b = value;
    }
}

#[inline(always)]
pub(crate) fn set_u16(buf: &mut [u8], at: usize, value: u16) {
    set(buf, at, value.to_be_bytes());
}

#[inline(always)]
pub(crate) fn set_u32(buf: &mut [u8], at: usize, value: u32) {
    set(buf, at, value.to_be_bytes());
}

/// `buf[range]`, or empty when out of bounds.
#[inline(always)]
pub(crate) fn slice(buf: &[u8], range: Range<usize>) -> &[u8] {
    buf.get(range).unwrap_or(&[])
}

#[inline(always)]
pub(crate) fn slice_mut(buf: &mut [u8], range: Range<usize>) -> &mut [u8] {
    buf.get_mut(range).unwrap_or(&mut [])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_in_bounds() {
        let b = [1, 2, 3, 4, 5];
        assert_eq!(u8_at(&b, 4), 5);
        assert_eq!(u16_at(&b, 1), 0x0203);
        assert_eq!(u32_at(&b, 1), 0x0203_0405);
        assert_eq!(get::<2>(&b, 3..5), [4, 5]);
    }

    #[test]
    fn out_of_bounds_reads_are_zero_and_writes_are_ignored() {
        let mut b = [0xffu8; 3];
        assert_eq!(u8_at(&b, 3), 0);
        assert_eq!(u16_at(&b, 2), 0);
        assert_eq!(u32_at(&b, usize::MAX), 0);
        assert!(slice(&b, 2..9).is_empty());
        set_u32(&mut b, 1, 0);
        set_u8(&mut b, 7, 0);
        assert_eq!(b, [0xff; 3]);
        assert!(slice_mut(&mut b, 4..5).is_empty());
    }
}
