//! The control thread's state while forwarding: the backend sets, their
//! health and next hops, and the snapshot the workers read.
//!
//! The control loop, the API thread and the health reports all change it
//! under one mutex (control side only); every change that affects
//! forwarding is published as one new snapshot, swapped in atomically.

use super::api::{self, Change, ChangeError, ServiceName};
use super::health::{self, Monitor, Tracker};
use super::metrics;
use super::neighbours::{Resolution, Resolver};
use super::services::{Entry, Services};
use crate::dataplane::worker::{Shared, Snapshot, Stats, Totals};
use crate::dataplane::{DropReason, Tables, conntrack, flow};
use crate::wire::ethernet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often next hops are re-read from the kernel when all resolve.
const REFRESH: Duration = Duration::from_secs(1);
/// How often while some are unresolved.
const REFRESH_PENDING: Duration = Duration::from_millis(100);
/// A worker that has not polled for this long is reported by /healthz.
const STALL: Duration = Duration::from_secs(1);

/// What never changes while forwarding.
pub struct Node {
    pub mac: ethernet::Address,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub vlan: Option<u16>,
    pub hasher: flow::Hasher,
    pub health: Option<health::Settings>,
}

pub struct Controller {
    node: Node,
    shared: Arc<Shared>,
    stats: Arc<Vec<Stats>>,
    started: Instant,
    state: Mutex<State>,
    /// Per worker: polls last seen and when they last advanced.
    liveness: Mutex<Vec<(u64, Instant)>>,
}

struct State {
    services: Services,
    tables: Arc<Tables>,
    resolver: Resolver,
    resolution: Resolution,
    /// Every backend address of every service, down ones included, so a
    /// backend coming back has its next hop ready.
    addresses: Vec<IpAddr>,
    last_refresh: Instant,
    /// Active checks; None when `RR_HEALTH_PORT` is unset.
    monitor: Option<Monitor>,
    trackers: BTreeMap<IpAddr, Tracker>,
    /// The last failure of each unhealthy backend, for /v1/vips.
    reasons: BTreeMap<IpAddr, String>,
}

impl State {
    fn unhealthy(&self) -> BTreeSet<IpAddr> {
        self.trackers
            .iter()
            .filter(|(_, t)| !t.healthy())
            .map(|(a, _)| *a)
            .collect()
    }
}

/// Reads the next hops; on a netlink failure keeps what it had.
pub fn resolve(
    resolver: &Resolver,
    backends: &[IpAddr],
    previous: Option<&Resolution>,
) -> Resolution {
    match resolver.resolve(backends) {
        Ok(r) => {
            if previous.is_none_or(|p| p.elsewhere != r.elsewhere) {
                for (b, oif) in &r.elsewhere {
                    log::warn!(
                        "backend {b} is routed out of another device (index {oif}); its flows are dropped as no_neighbour"
                    );
                }
            }
            r
        }
        Err(e) => {
            log::warn!("cannot read next hops: {e}");
            previous.cloned().unwrap_or(Resolution {
                entries: Vec::new(),
                unresolved: backends.to_vec(),
                elsewhere: Vec::new(),
            })
        }
    }
}

impl Node {
    fn snapshot(&self, tables: &Arc<Tables>, resolution: &Resolution) -> Snapshot {
        Snapshot {
            tables: Arc::clone(tables),
            neighbours: resolution.view(),
            mac: self.mac,
            local_v4: self.v4.iter().map(|a| a.octets()).collect(),
            local_v6: self.v6.iter().map(|a| a.octets()).collect(),
            vlan: self.vlan,
            hasher: self.hasher.clone(),
        }
    }
}

/// The first snapshot, and the resolution it was built from.
pub fn first_snapshot(node: &Node, tables: &Arc<Tables>, resolution: &Resolution) -> Snapshot {
    node.snapshot(tables, resolution)
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Node,
        services: Services,
        tables: Arc<Tables>,
        resolver: Resolver,
        resolution: Resolution,
        shared: Arc<Shared>,
        stats: Arc<Vec<Stats>>,
    ) -> Controller {
        let addresses = services.addresses();
        let monitor = node.health.clone().map(|settings| {
            let mut m = Monitor::new(settings);
            m.set_targets(&addresses);
            m
        });
        let trackers = match &node.health {
            Some(h) => addresses
                .iter()
                .map(|a| (*a, Tracker::new(h.rise, h.fall)))
                .collect(),
            None => BTreeMap::new(),
        };
        let now = Instant::now();
        let liveness = stats.iter().map(|s| (s.read().polls, now)).collect();
        Controller {
            node,
            shared,
            stats,
            started: now,
            state: Mutex::new(State {
                services,
                tables,
                resolver,
                resolution,
                addresses,
                last_refresh: now,
                monitor,
                trackers,
                reasons: BTreeMap::new(),
            }),
            liveness: Mutex::new(liveness),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves consistent data: every
        // change is built aside and swapped in whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tables(&self) -> Arc<Tables> {
        Arc::clone(&self.lock().tables)
    }

    fn publish(&self, s: &State) {
        self.shared
            .snapshot
            .store(Arc::new(self.node.snapshot(&s.tables, &s.resolution)));
    }

    /// A new table from the sets as they are now (after a health change).
    fn rebuild(&self, s: &mut State) {
        let unhealthy = s.unhealthy();
        match s.services.tables(&unhealthy) {
            Ok(t) => {
                s.tables = Arc::new(t);
                self.publish(s);
            }
            // Only removals happen here, which cannot make a set too large.
            Err(e) => log::error!("cannot rebuild the tables: {e}"),
        }
    }

    /// Takes new tables after an API change; new backends get their next
    /// hops and health checks before the snapshot goes out.
    fn install(&self, s: &mut State, tables: Tables) {
        s.tables = Arc::new(tables);
        let addresses = s.services.addresses();
        if addresses != s.addresses {
            s.addresses = addresses;
            let now = Instant::now();
            s.resolution = resolve(&s.resolver, &s.addresses, Some(&s.resolution));
            for b in s.resolution.unresolved.clone() {
                s.resolver.probe(b, now);
            }
            if let (Some(m), Some(h)) = (s.monitor.as_mut(), self.node.health.as_ref()) {
                m.set_targets(&s.addresses);
                s.trackers.retain(|a, _| s.addresses.contains(a));
                for a in &s.addresses {
                    s.trackers
                        .entry(*a)
                        .or_insert_with(|| Tracker::new(h.rise, h.fall));
                }
                s.reasons.retain(|a, _| s.addresses.contains(a));
            }
        }
        self.publish(s);
    }

    /// One pass of the control loop: the tracking clock, next-hop misses
    /// and refreshes, health reports. `unreachable` are backends a
    /// passive check saw answer our GRE with ICMP unreachable.
    pub fn tick(&self, unreachable: &[IpAddr]) {
        self.shared
            .now
            .store(conntrack::clock(self.started.elapsed()), Relaxed);
        let mut s = self.lock();
        let mut missed = false;
        while let Some(backend) = self.shared.misses.pop() {
            missed = true;
            s.resolver.probe(backend, Instant::now());
        }
        let every = if s.resolution.unresolved.is_empty() && !missed {
            REFRESH
        } else {
            REFRESH_PENDING
        };
        if s.last_refresh.elapsed() >= every {
            s.last_refresh = Instant::now();
            let next = resolve(&s.resolver, &s.addresses, Some(&s.resolution));
            if next != s.resolution {
                s.resolution = next;
                self.publish(&s);
            }
            let now = Instant::now();
            for b in s.resolution.unresolved.clone() {
                s.resolver.probe(b, now);
            }
        }
        let mut flipped = false;
        let reports = s.monitor.as_ref().map(Monitor::drain).unwrap_or_default();
        for r in reports {
            let s = &mut *s;
            let Some(t) = s.trackers.get_mut(&r.addr) else {
                continue;
            };
            if let Err(reason) = &r.result {
                s.reasons.insert(r.addr, reason.clone());
            }
            if let Some(healthy) = t.record(r.result.is_ok()) {
                flipped = true;
                if healthy {
                    s.reasons.remove(&r.addr);
                    log::info!("backend {} is healthy again", r.addr);
                } else {
                    log::warn!(
                        "backend {} failed its health checks ({}); it leaves the tables",
                        r.addr,
                        s.reasons.get(&r.addr).map_or("", String::as_str)
                    );
                }
            }
        }
        for addr in unreachable {
            let s = &mut *s;
            if let Some(t) = s.trackers.get_mut(addr)
                && t.mark_down() == Some(false)
            {
                flipped = true;
                s.reasons
                    .insert(*addr, "ICMP destination unreachable".to_string());
                log::warn!(
                    "backend {addr} answered our GRE with ICMP destination unreachable; \
                     down until it passes its health checks"
                );
            }
        }
        if flipped {
            self.rebuild(&mut s);
        }
    }

    /// Whether passive checks apply: only with active checks to bring a
    /// backend back.
    pub fn passive(&self) -> bool {
        self.node.health.is_some()
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    fn backend_json(&self, s: &State, addr: IpAddr, e: &Entry) -> serde_json::Value {
        let health = match s.trackers.get(&addr) {
            None => "unchecked",
            Some(t) if t.healthy() => "healthy",
            Some(_) => "unhealthy",
        };
        let mut v = serde_json::json!({
            "addr": addr.to_string(),
            "weight": e.weight,
            "state": e.state.name(),
            "health": health,
        });
        if let (Some(reason), Some(obj)) = (s.reasons.get(&addr), v.as_object_mut())
            && health == "unhealthy"
        {
            obj.insert("reason".to_string(), reason.clone().into());
        }
        v
    }
}

impl api::Control for Controller {
    fn vips(&self) -> serde_json::Value {
        let s = self.lock();
        let vips: Vec<serde_json::Value> = s
            .services
            .list()
            .map(|(name, set)| {
                let backends: Vec<_> = set
                    .iter()
                    .map(|(addr, e)| self.backend_json(&s, *addr, e))
                    .collect();
                serde_json::json!({"vip": name.to_string(), "backends": backends})
            })
            .collect();
        serde_json::json!({"generation": s.tables.generation(), "vips": vips})
    }

    fn put_backend(
        &self,
        service: ServiceName,
        addr: IpAddr,
        change: Change,
    ) -> Result<(u64, serde_json::Value, bool), ChangeError> {
        let mut s = self.lock();
        let unhealthy = s.unhealthy();
        let (tables, entry, created) = s.services.put(service, addr, &change, &unhealthy)?;
        let generation = tables.generation();
        self.install(&mut s, tables);
        Ok((generation, self.backend_json(&s, addr, &entry), created))
    }

    fn delete_backend(&self, service: ServiceName, addr: IpAddr) -> Result<u64, ChangeError> {
        let mut s = self.lock();
        let unhealthy = s.unhealthy();
        let tables = s.services.delete(service, addr, &unhealthy)?;
        let generation = tables.generation();
        self.install(&mut s, tables);
        Ok(generation)
    }

    fn healthz(&self) -> Result<(), String> {
        let now = Instant::now();
        let mut live = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
        let mut stalled = Vec::new();
        for (i, (stats, seen)) in self.stats.iter().zip(live.iter_mut()).enumerate() {
            let polls = stats.read().polls;
            if polls != seen.0 {
                *seen = (polls, now);
            } else if now.duration_since(seen.1) > STALL {
                stalled.push(format!(
                    "worker {i} has not polled for {} ms",
                    now.duration_since(seen.1).as_millis()
                ));
            }
        }
        if self.shared.stop.load(Relaxed) {
            return Err("stopping".to_string());
        }
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join("; "))
        }
    }

    fn metrics(&self) -> String {
        let per_queue: Vec<Totals> = self.stats.iter().map(Stats::read).collect();
        let mut total = Totals::default();
        for q in &per_queue {
            total.add(q);
        }
        let mut dropped: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.name(), total.dropped[*r as usize]))
            .collect();
        dropped.push(("tx_ring_full", total.tx_full));
        dropped.push(("to_host_failed", total.host_failed));
        let s = self.lock();
        let listed: BTreeSet<u16> = s
            .tables
            .services()
            .flat_map(|svc| svc.ids().map(|(id, _)| id).collect::<Vec<_>>())
            .collect();
        let backends = s
            .services
            .list()
            .flat_map(|(name, set)| set.iter().map(move |(addr, e)| (name, *addr, *e)))
            .map(|(name, addr, e)| metrics::BackendSample {
                vip: name.to_string(),
                backend: addr,
                packets: self.stats.iter().map(|st| st.backend_packets(e.id)).sum(),
                up: e.state != api::State::Down && listed.contains(&e.id),
            })
            .collect();
        let sample = metrics::Sample {
            queues: per_queue
                .iter()
                .map(|q| metrics::Queue { rx: q.rx, tx: q.tx })
                .collect(),
            to_host: total.to_host,
            dropped,
            backends,
            table_generation: s.tables.generation(),
            flow_hits: total.flow_hits,
            flow_misses: total.flow_misses,
            flow_entries: self
                .shared
                .flows
                .as_ref()
                .map(|f| f.count(self.shared.now.load(Relaxed))),
        };
        drop(s);
        metrics::render(&sample)
    }
}
