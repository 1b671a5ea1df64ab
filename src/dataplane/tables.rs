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
    #[error("{0}: a backend has no connection-tracking id")]
    MissingId(String),
    #[error("more than {0} backends in all sets: each needs one of {0} tracking ids")]
    TooManyIds(usize),
}

/// One backend set. A frame that arrived in an IPv4 outer header can only be
/// sent to an IPv4 backend, so each family gets its own table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    vip: Option<IpAddr>,
    v4: Table,
    v6: Table,
    ids_v4: Ids,
    ids_v6: Ids,
}

/// Connection-tracking ids of one table's backends. Ids are stable across
/// rebuilds (control code hands them out), so a tracked flow finds its
/// backend again in a new table. Empty when the service is not tracked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ids {
    /// Indexed like the table's `backends()`.
    by_index: Vec<u16>,
    /// (id, index into `backends()`), sorted by id.
    by_id: Vec<(u16, u16)>,
}

impl Ids {
    fn new(table: &Table, id: &impl Fn(IpAddr) -> Option<u16>) -> Option<Ids> {
        let by_index = table
            .backends()
            .iter()
            .map(|b| id(b.addr))
            .collect::<Option<Vec<u16>>>()?;
        let mut by_id: Vec<(u16, u16)> = by_index
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u16))
            .collect();
        by_id.sort_unstable();
        Some(Ids { by_index, by_id })
    }
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
            ids_v4: Ids::default(),
            ids_v6: Ids::default(),
        })
    }

    /// `build`, with every backend's connection-tracking id from `id`.
    /// A backend without an id is an error: tracking is all or nothing.
    pub fn build_tracked(
        vip: Option<IpAddr>,
        backends: &[Backend],
        key: &Key,
        size: usize,
        id: impl Fn(IpAddr) -> Option<u16>,
    ) -> Result<Service, Error> {
        let mut s = Service::build(vip, backends, key, size)?;
        let missing = |s: &Service| Error::MissingId(s.name());
        s.ids_v4 = Ids::new(&s.v4, &id).ok_or_else(|| missing(&s))?;
        s.ids_v6 = Ids::new(&s.v6, &id).ok_or_else(|| missing(&s))?;
        Ok(s)
    }

    /// Whether flows of this service are tracked.
    #[inline]
    pub fn tracked(&self) -> bool {
        !self.ids_v4.by_index.is_empty() || !self.ids_v6.by_index.is_empty()
    }

    /// The backend a new flow goes to, with its tracking id if tracked.
    #[inline]
    pub fn pick(&self, v6: bool, hash: u64) -> Option<(IpAddr, Option<u16>)> {
        let (table, ids) = self.family(v6);
        let (index, b) = table.pick(hash)?;
        Some((b.addr, ids.by_index.get(index).copied()))
    }

    /// The backend a tracked flow is on, if it is still listed (up or
    /// draining) in this service and family.
    #[inline]
    pub fn tracked_backend(&self, v6: bool, id: u16) -> Option<IpAddr> {
        let (table, ids) = self.family(v6);
        let i = ids.by_id.binary_search_by_key(&id, |e| e.0).ok()?;
        let index = ids.by_id.get(i)?.1;
        table.backends().get(usize::from(index)).map(|b| b.addr)
    }

    /// Every (tracking id, backend) of both families.
    pub fn ids(&self) -> impl Iterator<Item = (u16, IpAddr)> + '_ {
        let family = |t: &'_ Table, ids: &'_ Ids| {
            ids.by_index
                .iter()
                .zip(t.backends())
                .map(|(&id, b)| (id, b.addr))
                .collect::<Vec<_>>()
        };
        family(&self.v4, &self.ids_v4)
            .into_iter()
            .chain(family(&self.v6, &self.ids_v6))
    }

    #[inline]
    fn family(&self, v6: bool) -> (&Table, &Ids) {
        if v6 {
            (&self.v6, &self.ids_v6)
        } else {
            (&self.v4, &self.ids_v4)
        }
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
