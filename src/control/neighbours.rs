//! Next-hop resolution for the backends, from the kernel's tables.
//!
//! For every backend the kernel's route says which next hop it takes (the
//! backend itself when on-link, else a gateway); the neighbour table says
//! that hop's MAC. A backend whose hop has no entry yet gets a probe (one
//! empty UDP datagram to its discard port, through the host stack), which
//! makes the kernel resolve the hop; workers count its frames as
//! `no_neighbour` meanwhile and never wait.
//!
//! Linux reads rtnetlink; FreeBSD the routing socket and the link-layer
//! sysctl (`route_socket.rs`); elsewhere every pass fails and every
//! backend stays unresolved (see `no_netlink.rs`).

use super::netlink;
use crate::dataplane::Tables;
use crate::dataplane::neighbours::Static;
use crate::wire::ethernet::Address;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::time::{Duration, Instant};

/// How often one backend may be probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Every backend of every set in the snapshot, once.
pub fn backends(tables: &Tables) -> Vec<IpAddr> {
    let mut all = BTreeSet::new();
    for service in tables.services() {
        for table in [service.v4(), service.v6()] {
            all.extend(table.backends().iter().map(|b| b.addr));
        }
    }
    all.into_iter().collect()
}

/// What one resolution pass found.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// Backend → MAC of its next hop on our device.
    pub entries: Vec<(IpAddr, Address)>,
    /// Backends whose next hop has no usable neighbour entry.
    pub unresolved: Vec<IpAddr>,
    /// Backends the kernel routes out of another device, with its index.
    pub elsewhere: Vec<(IpAddr, u32)>,
}

impl Resolution {
    pub fn view(&self) -> Static {
        Static::new(self.entries.clone(), None)
    }
}

/// Resolves the backends' next hops on the device with index `index`.
pub struct Resolver {
    index: u32,
    last_probe: HashMap<IpAddr, Instant>,
}

impl Resolver {
    pub fn new(index: u32) -> Resolver {
        Resolver {
            index,
            last_probe: HashMap::new(),
        }
    }

    /// One pass over the kernel's routes and neighbours.
    pub fn resolve(&self, backends: &[IpAddr]) -> Result<Resolution, netlink::Error> {
        let neighbours: HashMap<IpAddr, [u8; 6]> =
            netlink::neighbours(self.index)?.into_iter().collect();
        let mut r = Resolution {
            entries: Vec::new(),
            unresolved: Vec::new(),
            elsewhere: Vec::new(),
        };
        for &backend in backends {
            let (hop, oif) = match netlink::next_hop(backend) {
                Ok(hop) => hop,
                // No route at all: nothing to resolve, counted by workers.
                Err(_) => {
                    r.unresolved.push(backend);
                    continue;
                }
            };
            if oif != self.index {
                r.elsewhere.push((backend, oif));
                continue;
            }
            match neighbours.get(&hop) {
                Some(mac) => r.entries.push((backend, Address(*mac))),
                None => r.unresolved.push(backend),
            }
        }
        Ok(r)
    }

    /// Makes the kernel resolve `backend`'s next hop, at most once a
    /// second per backend. Returns whether a probe was sent.
    pub fn probe(&mut self, backend: IpAddr, now: Instant) -> bool {
        if let Some(last) = self.last_probe.get(&backend)
            && now.duration_since(*last) < PROBE_EVERY
        {
            return false;
        }
        self.last_probe.insert(backend, now);
        let bind: IpAddr = match backend {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        // Port 9 is discard: the datagram itself is harmless.
        UdpSocket::bind((bind, 0))
            .and_then(|s| s.send_to(&[], (backend, 9)))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::control;

    #[test]
    fn backends_lists_every_set_once_in_order() {
        let config = Config::from_vars(
            [
                ("RR_DEVICE", "lo"),
                ("RR_TARGET_IPS", "10.0.0.2;10.0.0.1;2001:db8::1"),
                ("RR_VIPS", "192.0.2.1=10.0.0.1,10.0.0.3"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let (_, tables) = control::tables(&config).unwrap();
        let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(backends(&tables), want);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_backend_is_resolved_elsewhere_or_on_lo() {
        // 127.0.0.1 is routed out of lo: with lo as our device it has no
        // neighbour entry (lo has none), so it is unresolved, never an entry.
        let lo = netlink::device("lo").unwrap();
        let r = Resolver::new(lo.index)
            .resolve(&["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert!(r.entries.is_empty(), "{r:?}");
        assert_eq!(r.unresolved, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let other = Resolver::new(lo.index + 100_000)
            .resolve(&["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert_eq!(
            other.elsewhere,
            vec![("127.0.0.1".parse().unwrap(), lo.index)]
        );
    }

    #[test]
    fn probes_are_rate_limited_per_backend() {
        let mut r = Resolver::new(1);
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(r.probe(a, now));
        assert!(!r.probe(a, now + Duration::from_millis(500)));
        assert!(r.probe(b, now + Duration::from_millis(500)));
        assert!(r.probe(a, now + PROBE_EVERY));
    }
}
