//! The next-hop (MAC) view the data path consults.

use crate::wire::ethernet::Address;
use core::net::IpAddr;

/// Maps a backend address to the MAC of its next hop: the backend itself
/// when on-link, otherwise the gateway. Must not block or allocate.
pub trait Neighbours {
    fn lookup(&self, addr: IpAddr) -> Option<Address>;
}

/// A fixed neighbour set: on-link entries, then an optional gateway for
/// everything else.
///
/// Open addressing with linear probing, at most half full: a lookup is one
/// multiply and usually one probe, where a binary search over 100 entries
/// costs several mispredicted branches per packet.
#[derive(Debug, Clone)]
pub struct Static {
    slots: Vec<Option<(IpAddr, Address)>>,
    shift: u32,
    gateway: Option<Address>,
}

impl Static {
    /// Later entries for the same address replace earlier ones.
    pub fn new(entries: Vec<(IpAddr, Address)>, gateway: Option<Address>) -> Self {
        let capacity = (entries.len() * 2).next_power_of_two().max(2);
        let mut table = Static {
            slots: vec![None; capacity],
            shift: 64 - capacity.trailing_zeros(),
            gateway,
        };
        for (addr, mac) in entries {
            let mut i = table.home(addr);
            loop {
                match &mut table.slots[i] {
                    Some((a, m)) if *a == addr => {
                        *m = mac;
                        break;
                    }
                    Some(_) => i = (i + 1) & (capacity - 1),
                    empty => {
                        *empty = Some((addr, mac));
                        break;
                    }
                }
            }
        }
        table
    }

    #[inline]
    fn home(&self, addr: IpAddr) -> usize {
        let key = match addr {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            IpAddr::V6(a) => {
                let v = a.to_bits();
                (v >> 64) as u64 ^ v as u64 ^ 1 << 63
            }
        };
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }
}

impl Neighbours for Static {
    #[inline]
    fn lookup(&self, addr: IpAddr) -> Option<Address> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(addr);
        // At most half full, so an empty slot ends every probe sequence.
        for _ in 0..self.slots.len() {
            match self.slots.get(i)? {
                Some((a, mac)) if *a == addr => return Some(*mac),
                Some(_) => i = (i + 1) & mask,
                None => break,
            }
        }
        self.gateway
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_entries_win_over_gateway() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let n = Static::new(
            vec![(b, Address([2; 6])), (a, Address([1; 6]))],
            Some(Address([9; 6])),
        );
        assert_eq!(n.lookup(a), Some(Address([1; 6])));
        assert_eq!(n.lookup(b), Some(Address([2; 6])));
        assert_eq!(n.lookup("10.9.9.9".parse().unwrap()), Some(Address([9; 6])));
        assert_eq!(
            Static::new(vec![(a, Address([1; 6]))], None).lookup(b),
            None
        );
        assert_eq!(Static::new(Vec::new(), None).lookup(a), None);
    }

    #[test]
    fn finds_every_entry_of_a_large_mixed_set() {
        let entries: Vec<(IpAddr, Address)> = (0..1000u32)
            .map(|i| {
                let addr = if i % 2 == 0 {
                    IpAddr::from(core::net::Ipv4Addr::from_bits(0x0a00_0000 + i))
                } else {
                    IpAddr::from(core::net::Ipv6Addr::from_bits(
                        0x2001_0db8_u128 << 96 | u128::from(i),
                    ))
                };
                (addr, Address([2, 0, 0, 0, (i >> 8) as u8, i as u8]))
            })
            .collect();
        let n = Static::new(entries.clone(), None);
        for (addr, mac) in &entries {
            assert_eq!(n.lookup(*addr), Some(*mac), "{addr}");
        }
        assert_eq!(n.lookup("10.255.0.1".parse().unwrap()), None);
    }

    #[test]
    fn later_entry_for_same_address_wins() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let n = Static::new(vec![(a, Address([1; 6])), (a, Address([2; 6]))], None);
        assert_eq!(n.lookup(a), Some(Address([2; 6])));
    }
}
