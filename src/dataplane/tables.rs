//! The table snapshot the data path reads: one Maglev table per service
//! (the default set and each VIP) and outer address family.
//!
//! Built by control code, which may allocate; read-only on the hot path.

use crate::maglev::{self, Backend, Key, Table};
use core::net::IpAddr;

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{service}: {source}")]
    Table {
        service: String,
        source: maglev::Error,
    },
    #[error("VIP {0} is listed more than once")]
    DuplicateVip(IpAddr),
}

/// One backend set. A frame that arrived in an IPv4 outer header can only be
/// sent to an IPv4 backend, so each family gets its own table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    vip: Option<IpAddr>,
    v4: Table,
    v6: Table,
}

impl Service {
    /// `vip` is None for the default set.
    pub fn build(
        vip: Option<IpAddr>,
        backends: &[Backend],
        key: &Key,
        size: usize,
    ) -> Result<Service, Error> {
        let wrap = |source| Error::Table {
            service: vip.map_or_else(|| "default".to_string(), |v| v.to_string()),
            source,
        };
        let (v4, v6): (Vec<Backend>, Vec<Backend>) =
            backends.iter().partition(|b| b.addr.is_ipv4());
        Ok(Service {
            vip,
            v4: Table::build(&v4, key, size).map_err(wrap)?,
            v6: Table::build(&v6, key, size).map_err(wrap)?,
        })
    }

    pub fn vip(&self) -> Option<IpAddr> {
        self.vip
    }

    /// "default" or the VIP, for logs and metrics.
    pub fn name(&self) -> String {
        self.vip
            .map_or_else(|| "default".to_string(), |v| v.to_string())
    }

    pub fn v4(&self) -> &Table {
        &self.v4
    }

    pub fn v6(&self) -> &Table {
        &self.v6
    }
}

/// Every service, looked up by the inner destination address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    generation: u64,
    default: Option<Service>,
    vips_v4: Vec<([u8; 4], Service)>,
    vips_v6: Vec<([u8; 16], Service)>,
}

impl Tables {
    pub fn new(
        generation: u64,
        default: Option<Service>,
        vips: Vec<Service>,
    ) -> Result<Tables, Error> {
        let mut vips_v4 = Vec::new();
        let mut vips_v6 = Vec::new();
        for s in vips {
            match s.vip {
                Some(IpAddr::V4(a)) => vips_v4.push((a.octets(), s)),
                Some(IpAddr::V6(a)) => vips_v6.push((a.octets(), s)),
                None => {}
            }
        }
        vips_v4.sort_by_key(|e| e.0);
        vips_v6.sort_by_key(|e| e.0);
        if let Some(w) = vips_v4.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::DuplicateVip(
                w[0].1.vip.unwrap_or(IpAddr::from(w[0].0)),
            ));
        }
        if let Some(w) = vips_v6.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::DuplicateVip(
                w[0].1.vip.unwrap_or(IpAddr::from(w[0].0)),
            ));
        }
        Ok(Tables {
            generation,
            default,
            vips_v4,
            vips_v6,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn default_service(&self) -> Option<&Service> {
        self.default.as_ref()
    }

    /// Every service, the default set first.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.default
            .iter()
            .chain(self.vips_v4.iter().map(|e| &e.1))
            .chain(self.vips_v6.iter().map(|e| &e.1))
    }

    /// The VIP's service, else the default set.
    #[inline]
    pub fn service_v4(&self, dst: [u8; 4]) -> Option<&Service> {
        match self.vips_v4.binary_search_by_key(&dst, |e| e.0) {
            Ok(i) => self.vips_v4.get(i).map(|e| &e.1),
            Err(_) => self.default.as_ref(),
        }
    }

    #[inline]
    pub fn service_v6(&self, dst: [u8; 16]) -> Option<&Service> {
        match self.vips_v6.binary_search_by_key(&dst, |e| e.0) {
            Ok(i) => self.vips_v6.get(i).map(|e| &e.1),
            Err(_) => self.default.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = [7; 16];

    fn backends(addrs: &[&str]) -> Vec<Backend> {
        addrs
            .iter()
            .map(|a| Backend {
                addr: a.parse().unwrap(),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn service_splits_backends_by_family() {
        let s = Service::build(
            None,
            &backends(&["10.0.0.1", "2001:db8::1", "10.0.0.2"]),
            &KEY,
            251,
        )
        .unwrap();
        assert_eq!(s.v4().backends().len(), 2);
        assert_eq!(s.v6().backends().len(), 1);
        assert!(s.v4().backends().iter().all(|b| b.addr.is_ipv4()));
        assert_eq!(s.name(), "default");
    }

    #[test]
    fn vip_lookup_falls_back_to_default_set() {
        let vip4 = Service::build(
            Some("192.0.2.1".parse().unwrap()),
            &backends(&["10.0.0.1"]),
            &KEY,
            251,
        )
        .unwrap();
        let vip6 = Service::build(
            Some("2001:db8::10".parse().unwrap()),
            &backends(&["2001:db8::1"]),
            &KEY,
            251,
        )
        .unwrap();
        let default = Service::build(None, &backends(&["10.0.0.9"]), &KEY, 251).unwrap();
        let t = Tables::new(3, Some(default.clone()), vec![vip4.clone(), vip6.clone()]).unwrap();
        assert_eq!(t.generation(), 3);
        assert_eq!(t.service_v4([192, 0, 2, 1]), Some(&vip4));
        assert_eq!(t.service_v4([192, 0, 2, 2]), Some(&default));
        let v6: core::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
        assert_eq!(t.service_v6(v6.octets()), Some(&vip6));
        assert_eq!(t.services().count(), 3);
        let no_default = Tables::new(1, None, vec![vip4]).unwrap();
        assert_eq!(no_default.service_v4([192, 0, 2, 2]), None);
    }

    #[test]
    fn duplicate_vips_and_bad_sizes_are_errors() {
        let vip = Service::build(Some("192.0.2.1".parse().unwrap()), &[], &KEY, 251).unwrap();
        assert_eq!(
            Tables::new(1, None, vec![vip.clone(), vip]),
            Err(Error::DuplicateVip("192.0.2.1".parse().unwrap()))
        );
        let err = Service::build(Some("192.0.2.1".parse().unwrap()), &[], &KEY, 256).unwrap_err();
        assert!(err.to_string().starts_with("192.0.2.1: "), "{err}");
    }
}
