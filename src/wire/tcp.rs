//! TCP (RFC 9293): the fields a load balancer reads.

use super::bytes::{self, Field};
use super::{Error, Result};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ: Field = 4..8;
    pub const ACK: Field = 8..12;
    pub const OFFSET_FLAGS: Field = 12..14;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
}

pub const HEADER_LEN: usize = 20;

pub mod flags {
    pub const FIN: u16 = 0x01;
    pub const SYN: u16 = 0x02;
    pub const RST: u16 = 0x04;
    pub const ACK: u16 = 0x10;
}

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the fixed header and that the data offset is 5..=15 words and
    /// fits the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if p.header_len() > len {
            return Err(Error::Truncated);
        }
        Ok(p)
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

    pub fn seq_number(&self) -> u32 {
        bytes::u32_at(self.buf(), field::SEQ.start)
    }

    pub fn ack_number(&self) -> u32 {
        bytes::u32_at(self.buf(), field::ACK.start)
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(bytes::u8_at(self.buf(), field::OFFSET_FLAGS.start) >> 4) * 4
    }

    /// The nine flag bits, FIN in bit 0.
    pub fn flags(&self) -> u16 {
        bytes::u16_at(self.buf(), field::OFFSET_FLAGS.start) & 0x01ff
    }

    pub fn window(&self) -> u16 {
        bytes::u16_at(self.buf(), field::WINDOW.start)
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buf(), field::CHECKSUM.start)
    }

    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        bytes::slice(buf, self.header_len()..buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: [u8; 24] = [
        0x30, 0x39, 0x00, 0x50, // 12345 -> 80
        0, 0, 0, 1, 0, 0, 0, 0, // seq 1, ack 0
        0x60, 0x02, 0xff, 0xff, // offset 6, SYN, window
        0x12, 0x34, 0, 0, // checksum, urgent
        2, 4, 5, 0xb4, // MSS 1460
    ];

    #[test]
    fn reads_ports_flags_and_options_length() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (12345, 80));
        assert_eq!(p.seq_number(), 1);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), flags::SYN);
        assert_eq!(p.window(), 0xffff);
        assert_eq!(p.checksum(), 0x1234);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn rejects_short_and_bad_offsets() {
        for n in 0..24 {
            assert_eq!(
                Packet::new_checked(&SYN[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut b = SYN;
        b[12] = 0x40;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
    }
}
