//! UDP (RFC 768): the fields a load balancer reads.

use super::bytes::{self, Field};
use super::{Error, Result};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the 8-byte header. The length field is not enforced: a
    /// balancer forwards, it does not police datagrams.
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
    pub fn src_port(&self) -> u16 {
        bytes::u16_at(self.buf(), field::SRC_PORT.start)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        bytes::u16_at(self.buf(), field::DST_PORT.start)
    }

    pub fn len(&self) -> u16 {
        bytes::u16_at(self.buf(), field::LENGTH.start)
    }

    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buf(), field::CHECKSUM.start)
    }

    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        bytes::slice(buf, HEADER_LEN..buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_fields() {
        let b = [0x00, 0x35, 0xc0, 0x00, 0x00, 0x0a, 0xbe, 0xef, 1, 2];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (53, 49152));
        assert_eq!(p.len(), 10);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0xbeef);
        assert_eq!(p.payload(), &[1, 2]);
    }

    #[test]
    fn rejects_short_header() {
        assert_eq!(
            Packet::new_checked(&[0u8; 7][..]).unwrap_err(),
            Error::Truncated
        );
    }
}
