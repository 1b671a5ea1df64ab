//! The backend sets as the operator manages them: each backend's weight,
//! administrative state and tracking id, per service (`default` and each
//! VIP). Every change yields one new [`Tables`], built here and swapped in
//! whole by the caller.
//!
//! A backend is in its service's Maglev table when it is `up` (with its
//! weight) or `drain` (weight 0: no new flows, tracked flows stay), and
//! healthy. `down`, unhealthy and removed backends are not listed at all,
//! so their tracked flows are picked anew.

use super::api::{Change, ChangeError, ServiceName, State};
use crate::config::{Config, MAX_WEIGHT};
use crate::dataplane::conntrack::MAX_IDS;
use crate::dataplane::tables::{self, Service, Tables};
use crate::maglev::{Backend, Key};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One backend of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub weight: u32,
    pub state: State,
    /// Connection-tracking id, unique across services.
    pub id: u16,
}

/// Every service's backends, and the ids handed out to them.
#[derive(Debug, Clone)]
pub struct Services {
    sets: BTreeMap<ServiceName, BTreeMap<IpAddr, Entry>>,
    ids: Ids,
    key: Key,
    size: usize,
    generation: u64,
}

impl Services {
    /// The sets from `RR_TARGET_IPS` and `RR_VIPS`, all `up`. A freed id
    /// is not reused for `quarantine` (the flow timeout), so a flow still
    /// tracked on a removed backend never lands on a new one.
    pub fn from_config(config: &Config, quarantine: Duration) -> Result<Services, tables::Error> {
        let mut s = Services {
            sets: BTreeMap::new(),
            ids: Ids::new(quarantine),
            key: config.hash_key,
            size: config.table_size,
            generation: 0,
        };
        let sets = config
            .default_set
            .iter()
            .map(|b| (ServiceName::Default, b.as_slice()))
            .chain(
                config
                    .vips
                    .iter()
                    .map(|v| (ServiceName::Vip(v.addr), v.backends.as_slice())),
            );
        let now = Instant::now();
        for (name, backends) in sets {
            let mut set = BTreeMap::new();
            // Ids in address order, so the order of the list does not matter.
            let mut sorted = backends.to_vec();
            sorted.sort_unstable();
            for b in &sorted {
                let Some(id) = s.ids.take(now) else {
                    return Err(tables::Error::TooManyIds(MAX_IDS));
                };
                set.insert(
                    b.addr,
                    Entry {
                        weight: b.weight,
                        state: State::Up,
                        id,
                    },
                );
            }
            s.sets.insert(name, set);
        }
        // Check it builds, as start-up must fail on a bad set.
        s.build(&BTreeSet::new(), 0)?;
        Ok(s)
    }

    /// The tables for the current sets, with a new generation.
    pub fn tables(&mut self, unhealthy: &BTreeSet<IpAddr>) -> Result<Tables, tables::Error> {
        let t = self.build(unhealthy, self.generation + 1)?;
        self.generation += 1;
        Ok(t)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn build(
        &self,
        unhealthy: &BTreeSet<IpAddr>,
        generation: u64,
    ) -> Result<Tables, tables::Error> {
        let mut default = None;
        let mut vips = Vec::new();
        for (name, set) in &self.sets {
            let service = self.service(*name, set, unhealthy)?;
            match name {
                ServiceName::Default => default = Some(service),
                ServiceName::Vip(_) => vips.push(service),
            }
        }
        Tables::new(generation, default, vips)
    }

    /// One service's tables.
    fn service(
        &self,
        name: ServiceName,
        set: &BTreeMap<IpAddr, Entry>,
        unhealthy: &BTreeSet<IpAddr>,
    ) -> Result<Service, tables::Error> {
        let listed: Vec<Backend> = set
            .iter()
            .filter(|(addr, e)| e.state != State::Down && !unhealthy.contains(addr))
            .map(|(&addr, e)| Backend {
                addr,
                weight: if e.state == State::Drain { 0 } else { e.weight },
            })
            .collect();
        let vip = match name {
            ServiceName::Default => None,
            ServiceName::Vip(a) => Some(a),
        };
        let id = |addr| set.get(&addr).map(|e| e.id);
        Service::build_tracked(vip, &listed, &self.key, self.size, id)
    }

    /// Adds a backend (weight 1, `up` unless told otherwise) or changes
    /// one, and returns the new tables and whether it was added. Nothing
    /// changes on error.
    pub fn put(
        &mut self,
        service: ServiceName,
        addr: IpAddr,
        change: &Change,
        unhealthy: &BTreeSet<IpAddr>,
    ) -> Result<(Tables, Entry, bool), ChangeError> {
        if let Some(w) = change.weight
            && w > MAX_WEIGHT
        {
            return Err(ChangeError::Invalid {
                field: "weight",
                message: format!("weight {w} is above {MAX_WEIGHT}"),
            });
        }
        let set = self
            .sets
            .get(&service)
            .ok_or(ChangeError::UnknownVip(service))?;
        let old = set.get(&addr).copied();
        let now = Instant::now();
        let id = match old {
            Some(e) => e.id,
            None => self.ids.take(now).ok_or_else(|| ChangeError::Invalid {
                field: "addr",
                message: format!(
                    "no tracking id free: at most {MAX_IDS} backends in all, and a removed one's id is reused only after the flow timeout"
                ),
            })?,
        };
        let entry = Entry {
            weight: change.weight.or(old.map(|e| e.weight)).unwrap_or(1),
            state: change.state.or(old.map(|e| e.state)).unwrap_or(State::Up),
            id,
        };
        let mut next = self.clone();
        if let Some(set) = next.sets.get_mut(&service) {
            set.insert(addr, entry);
        }
        // It must also build once every backend is healthy again, or a
        // recovery could not be applied.
        let all_healthy = match (unhealthy.is_empty(), next.sets.get(&service)) {
            (false, Some(set)) => next.service(service, set, &BTreeSet::new()).map(|_| ()),
            _ => Ok(()),
        };
        match all_healthy.and_then(|()| next.tables(unhealthy)) {
            Ok(t) => {
                *self = next;
                Ok((t, entry, old.is_none()))
            }
            Err(e) => {
                if old.is_none() {
                    self.ids.give_back(id);
                }
                Err(ChangeError::Invalid {
                    field: "addr",
                    message: e.to_string(),
                })
            }
        }
    }

    /// Removes a backend and returns the new tables.
    pub fn delete(
        &mut self,
        service: ServiceName,
        addr: IpAddr,
        unhealthy: &BTreeSet<IpAddr>,
    ) -> Result<(Tables, Entry), ChangeError> {
        let set = self
            .sets
            .get(&service)
            .ok_or(ChangeError::UnknownVip(service))?;
        let Some(&entry) = set.get(&addr) else {
            return Err(ChangeError::UnknownBackend { service, addr });
        };
        let mut next = self.clone();
        let removed = next
            .sets
            .get_mut(&service)
            .and_then(|set| set.remove(&addr));
        let tables = next.tables(unhealthy).map_err(|e| ChangeError::Invalid {
            field: "addr",
            message: e.to_string(),
        })?;
        if let Some(e) = removed {
            next.ids.free(e.id, Instant::now());
        }
        *self = next;
        Ok((tables, entry))
    }

    /// Every service and its backends, in order.
    pub fn list(&self) -> impl Iterator<Item = (ServiceName, &BTreeMap<IpAddr, Entry>)> {
        self.sets.iter().map(|(n, s)| (*n, s))
    }

    /// Every backend address of every service, once.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let all: BTreeSet<IpAddr> = self.sets.values().flat_map(|s| s.keys().copied()).collect();
        all.into_iter().collect()
    }
}

/// Tracking ids: never-used ones first, then freed ones once their
/// quarantine has passed.
#[derive(Debug, Clone)]
struct Ids {
    next: usize,
    freed: VecDeque<(u16, Instant)>,
    quarantine: Duration,
}

impl Ids {
    fn new(quarantine: Duration) -> Ids {
        Ids {
            next: 0,
            freed: VecDeque::new(),
            quarantine,
        }
    }

    fn take(&mut self, now: Instant) -> Option<u16> {
        if self.next < MAX_IDS {
            self.next += 1;
            return u16::try_from(self.next - 1).ok();
        }
        let &(id, at) = self.freed.front()?;
        if now.duration_since(at) < self.quarantine {
            return None;
        }
        self.freed.pop_front();
        Some(id)
    }

    fn free(&mut self, id: u16, now: Instant) {
        self.freed.push_back((id, now));
    }

    /// An id taken for a change that failed: never used, so no quarantine.
    fn give_back(&mut self, id: u16) {
        if usize::from(id) + 1 == self.next {
            self.next -= 1;
        } else {
            self.freed
                .push_front((id, Instant::now() - self.quarantine));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(vars: &[(&str, &str)]) -> Services {
        let mut all = vec![("RR_DEVICE", "eth0")];
        all.extend_from_slice(vars);
        let config =
            Config::from_vars(all.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        Services::from_config(&config, Duration::from_secs(60)).unwrap()
    }

    fn addr(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    const NONE: &BTreeSet<IpAddr> = &BTreeSet::new();

    #[test]
    fn config_sets_become_up_backends_with_unique_ids() {
        let s = services(&[
            ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2*3"),
            ("RR_VIPS", "192.0.2.10=10.1.0.1"),
        ]);
        let list: Vec<_> = s.list().collect();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, ServiceName::Default);
        let e = list[0].1[&addr("10.1.0.2")];
        assert_eq!((e.weight, e.state), (3, State::Up));
        let mut ids: Vec<u16> = list
            .iter()
            .flat_map(|(_, s)| s.values().map(|e| e.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "the same address in two services has two ids");
        assert_eq!(s.addresses(), vec![addr("10.1.0.1"), addr("10.1.0.2")]);
    }

    #[test]
    fn put_adds_with_defaults_then_changes_only_given_fields() {
        let mut s = services(&[("RR_TARGET_IPS", "10.1.0.1")]);
        let g = s.generation();
        let (t, e, created) = s
            .put(
                ServiceName::Default,
                addr("10.1.0.2"),
                &Change {
                    weight: None,
                    state: None,
                },
                NONE,
            )
            .unwrap();
        assert!(created);
        assert_eq!((e.weight, e.state), (1, State::Up));
        assert_eq!(t.generation(), g + 1);
        assert_eq!(t.default_service().unwrap().v4().backends().len(), 2);
        let change = Change {
            weight: Some(5),
            state: None,
        };
        let (_, e2, created) = s
            .put(ServiceName::Default, addr("10.1.0.2"), &change, NONE)
            .unwrap();
        assert!(!created);
        assert_eq!((e2.weight, e2.state, e2.id), (5, State::Up, e.id));
        let drain = Change {
            weight: None,
            state: Some(State::Drain),
        };
        let (t, e3, _) = s
            .put(ServiceName::Default, addr("10.1.0.2"), &drain, NONE)
            .unwrap();
        assert_eq!((e3.weight, e3.state), (5, State::Drain));
        let listed = t.default_service().unwrap().v4().backends().to_vec();
        assert_eq!(
            listed,
            vec![
                Backend {
                    addr: addr("10.1.0.1"),
                    weight: 1
                },
                Backend {
                    addr: addr("10.1.0.2"),
                    weight: 0
                },
            ],
            "drain is listed with weight 0"
        );
    }

    #[test]
    fn down_and_unhealthy_backends_are_not_listed() {
        let mut s = services(&[("RR_TARGET_IPS", "10.1.0.1;10.1.0.2;10.1.0.3")]);
        let down = Change {
            weight: None,
            state: Some(State::Down),
        };
        let unhealthy: BTreeSet<IpAddr> = [addr("10.1.0.3")].into();
        let (t, _, _) = s
            .put(ServiceName::Default, addr("10.1.0.2"), &down, &unhealthy)
            .unwrap();
        let listed: Vec<IpAddr> = t
            .default_service()
            .unwrap()
            .v4()
            .backends()
            .iter()
            .map(|b| b.addr)
            .collect();
        assert_eq!(listed, vec![addr("10.1.0.1")]);
    }

    #[test]
    fn unknown_vip_and_backend_are_errors_that_change_nothing() {
        let mut s = services(&[("RR_VIPS", "192.0.2.10=10.1.0.1")]);
        let g = s.generation();
        let any = Change {
            weight: None,
            state: None,
        };
        assert_eq!(
            s.put(ServiceName::Default, addr("10.1.0.2"), &any, NONE)
                .unwrap_err(),
            ChangeError::UnknownVip(ServiceName::Default)
        );
        let vip = ServiceName::Vip(addr("192.0.2.10"));
        assert_eq!(
            s.delete(vip, addr("10.1.0.9"), NONE).unwrap_err(),
            ChangeError::UnknownBackend {
                service: vip,
                addr: addr("10.1.0.9")
            }
        );
        let heavy = Change {
            weight: Some(MAX_WEIGHT + 1),
            state: None,
        };
        assert!(matches!(
            s.put(vip, addr("10.1.0.2"), &heavy, NONE),
            Err(ChangeError::Invalid {
                field: "weight",
                ..
            })
        ));
        assert_eq!(s.generation(), g);
        assert_eq!(s.addresses(), vec![addr("10.1.0.1")]);
    }

    /// 250 backends 10.1.0.1..=250 in 251 slots: one fewer than too many.
    fn full_small_table() -> (Services, Change) {
        let mut s = services(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_TABLE_SIZE", "251")]);
        let any = Change {
            weight: None,
            state: None,
        };
        for i in 2..=250u8 {
            s.put(
                ServiceName::Default,
                IpAddr::from([10, 1, 0, i]),
                &any,
                NONE,
            )
            .unwrap();
        }
        (s, any)
    }

    #[test]
    fn a_set_too_large_for_the_table_is_refused_whole() {
        let (mut s, any) = full_small_table();
        let g = s.generation();
        let err = s
            .put(ServiceName::Default, addr("10.1.1.1"), &any, NONE)
            .unwrap_err();
        assert!(
            matches!(err, ChangeError::Invalid { field: "addr", .. }),
            "{err:?}"
        );
        assert_eq!(s.generation(), g);
        assert_eq!(s.addresses().len(), 250);
    }

    #[test]
    fn a_change_that_would_not_fit_once_all_are_healthy_again_is_refused() {
        let (mut s, any) = full_small_table();
        // 250 backends, one unhealthy: 249 listed. A 251st would fit now,
        // but not once the sick one recovers (251 slots).
        let sick: BTreeSet<IpAddr> = [addr("10.1.0.1")].into();
        let err = s
            .put(ServiceName::Default, addr("10.1.1.1"), &any, &sick)
            .unwrap_err();
        assert!(
            matches!(err, ChangeError::Invalid { field: "addr", .. }),
            "{err:?}"
        );
        assert_eq!(s.addresses().len(), 250);
    }

    #[test]
    fn removed_ids_are_reused_only_after_quarantine() {
        let mut ids = Ids::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_IDS {
            assert_eq!(ids.take(t0), Some(i as u16));
        }
        assert_eq!(ids.take(t0), None);
        ids.free(7, t0);
        assert_eq!(ids.take(t0 + Duration::from_secs(59)), None);
        assert_eq!(ids.take(t0 + Duration::from_secs(60)), Some(7));
        assert_eq!(ids.take(t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn delete_removes_and_frees_the_id() {
        let mut s = services(&[("RR_TARGET_IPS", "10.1.0.1;10.1.0.2")]);
        let (t, removed) = s
            .delete(ServiceName::Default, addr("10.1.0.1"), NONE)
            .unwrap();
        assert_eq!(removed.weight, 1);
        assert_eq!(t.default_service().unwrap().v4().backends().len(), 1);
        assert_eq!(s.ids.freed.len(), 1);
        assert_eq!(s.addresses(), vec![addr("10.1.0.2")]);
    }
}
