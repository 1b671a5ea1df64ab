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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often next hops are re-read from the kernel when all resolve.
const REFRESH: Duration = Duration::from_secs(1);
/// How often while some are unresolved.
const REFRESH_PENDING: Duration = Duration::from_millis(100);
/// A worker that has not polled for this long is reported by /healthz.
const STALL: Duration = Duration::from_secs(1);
/// Ticks per full sweep of the flow table: 10 s at 50 ms a tick, far
/// inside the tracking clock's 18-hour wrap.
const SWEEP_TICKS: usize = 200;

/// What never changes while forwarding.
pub struct Node {
    pub mac: ethernet::Address,
    /// The device's own addresses (announced ones not included).
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// The outer source for plain IP to a held VIP: the device's primary
    /// address of each family.
    pub primary_v4: Option<Ipv4Addr>,
    pub primary_v6: Option<Ipv6Addr>,
    /// The device MTU: what an encapsulated packet must fit.
    pub mtu: u16,
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
    /// Per worker: polls last seen and when they last advanced, updated
    /// every tick.
    liveness: Mutex<Vec<(u64, Instant)>>,
    /// The flow table sweep: next bucket, live entries so far this pass.
    sweep: Mutex<(usize, u64)>,
    /// Live flow entries found by the last full sweep.
    flow_entries: AtomicU64,
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
    /// Per tracking id, the packets counted before its current backend
    /// got it (ids are reused), subtracted in /metrics.
    baselines: BTreeMap<u16, u64>,
    /// Announced addresses held now.
    held: Held,
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

/// The announced addresses this node holds now (`RR_ANNOUNCE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Node {
    /// What the workers read: the tables, the next hops, and this node.
    /// A held address takes GRE like the node's own, and its plain IP is
    /// encapsulated.
    pub fn snapshot(&self, tables: &Arc<Tables>, resolution: &Resolution, held: &Held) -> Snapshot {
        let v4 = |list: &[Ipv4Addr]| list.iter().map(|a| a.octets()).collect::<Vec<_>>();
        let v6 = |list: &[Ipv6Addr]| list.iter().map(|a| a.octets()).collect::<Vec<_>>();
        let mut local_v4 = v4(&self.v4);
        local_v4.extend(v4(&held.v4));
        let mut local_v6 = v6(&self.v6);
        local_v6.extend(v6(&held.v6));
        Snapshot {
            tables: Arc::clone(tables),
            neighbours: resolution.view(),
            mac: self.mac,
            local_v4,
            local_v6,
            vips_v4: v4(&held.v4),
            vips_v6: v6(&held.v6),
            primary_v4: self.primary_v4.map(|a| a.octets()),
            primary_v6: self.primary_v6.map(|a| a.octets()),
            mtu: self.mtu,
            vlan: self.vlan,
            hasher: self.hasher.clone(),
        }
    }
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
                baselines: BTreeMap::new(),
                held: Held::default(),
            }),
            liveness: Mutex::new(liveness),
            sweep: Mutex::new((0, 0)),
            flow_entries: AtomicU64::new(0),
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
        self.shared.snapshot.store(Arc::new(self.node.snapshot(
            &s.tables,
            &s.resolution,
            &s.held,
        )));
    }

    /// A new table from the sets as they are now (after a health change).
    fn rebuild(&self, s: &mut State) {
        let unhealthy = s.unhealthy();
        match s.services.tables(&unhealthy) {
            Ok(t) => {
                s.tables = Arc::new(t);
                self.publish(s);
            }
            // `Services::put` checked the sets build with every backend
            // healthy, so this cannot happen.
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
            }
        }
        self.publish(s);
    }

    /// One pass of the control loop: the tracking clock, next-hop misses
    /// and refreshes, health reports. `unreachable` are backends a
    /// passive check saw answer our GRE with ICMP unreachable.
    pub fn tick(&self, unreachable: &[IpAddr]) {
        let clock = conntrack::clock(self.started.elapsed());
        self.shared.now.store(clock, Relaxed);
        self.watch_workers();
        if let Some(flows) = &self.shared.flows {
            self.sweep(flows, clock);
        }
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
            let Some(t) = s.trackers.get_mut(&r.addr) else {
                continue;
            };
            if let Some(healthy) = t.record_result(&r.result) {
                flipped = true;
                if healthy {
                    log::info!("backend {} is healthy again", r.addr);
                } else {
                    log::warn!(
                        "backend {} failed its health checks ({}); it leaves the tables",
                        r.addr,
                        t.reason().unwrap_or_default()
                    );
                }
            }
        }
        for addr in unreachable {
            if let Some(t) = s.trackers.get_mut(addr)
                && t.mark_down() == Some(false)
            {
                flipped = true;
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

    /// Notes which workers' poll counts advanced, for /healthz.
    fn watch_workers(&self) {
        let now = Instant::now();
        let mut live = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
        for (stats, seen) in self.stats.iter().zip(live.iter_mut()) {
            let polls = stats.read().polls;
            if polls != seen.0 {
                *seen = (polls, now);
            }
        }
    }

    /// One step of the sweep that clears expired flows and counts the
    /// live ones; outside the state lock, as it reads up to 2 GiB a pass.
    fn sweep(&self, flows: &conntrack::Table, clock: u16) {
        let mut sweep = self.sweep.lock().unwrap_or_else(|e| e.into_inner());
        let (next, live) = *sweep;
        let step = flows
            .buckets()
            .div_ceil(SWEEP_TICKS)
            .min(flows.buckets() - next);
        let live = live + flows.sweep(next, step, clock);
        *sweep = if next + step >= flows.buckets() {
            self.flow_entries.store(live, Relaxed);
            (0, 0)
        } else {
            (next + step, live)
        };
    }

    /// Whether passive checks apply: only with active checks to bring a
    /// backend back.
    /// The announced addresses held now.
    pub fn held(&self) -> Held {
        self.lock().held.clone()
    }

    /// Publishes a snapshot in which `held` are this node's too.
    pub fn set_held(&self, held: Held) {
        let mut s = self.lock();
        if s.held != held {
            s.held = held;
            self.publish(&s);
        }
    }

    pub fn passive(&self) -> bool {
        self.node.health.is_some()
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    fn backend_json(&self, s: &State, addr: IpAddr, e: &Entry) -> serde_json::Value {
        let tracker = s.trackers.get(&addr);
        let health = match tracker {
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
        let reason = tracker.filter(|t| !t.healthy()).and_then(Tracker::reason);
        if let (Some(reason), Some(obj)) = (reason, v.as_object_mut()) {
            obj.insert("reason".to_string(), reason.into());
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
        if created {
            // The id may have counted for a removed backend before.
            let counted = self
                .stats
                .iter()
                .map(|st| st.backend_packets(entry.id))
                .sum();
            s.baselines.insert(entry.id, counted);
        }
        let generation = tables.generation();
        self.install(&mut s, tables);
        Ok((generation, self.backend_json(&s, addr, &entry), created))
    }

    fn delete_backend(&self, service: ServiceName, addr: IpAddr) -> Result<u64, ChangeError> {
        let mut s = self.lock();
        let unhealthy = s.unhealthy();
        let (tables, _) = s.services.delete(service, addr, &unhealthy)?;
        let generation = tables.generation();
        self.install(&mut s, tables);
        Ok(generation)
    }

    fn healthz(&self) -> Result<(), String> {
        // Here too, not only in `tick`: a tick can wait behind a long
        // change, and workers must not look stalled meanwhile.
        self.watch_workers();
        let now = Instant::now();
        let live = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
        let stalled: Vec<String> = live
            .iter()
            .enumerate()
            .filter(|(_, seen)| now.duration_since(seen.1) > STALL)
            .map(|(i, seen)| {
                format!(
                    "worker {i} has not polled for {} ms",
                    now.duration_since(seen.1).as_millis()
                )
            })
            .collect();
        drop(live);
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
        dropped.push(("from_host_tx_full", total.from_host_dropped));
        dropped.push(("too_long", total.too_long));
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
                packets: self
                    .stats
                    .iter()
                    .map(|st| st.backend_packets(e.id))
                    .sum::<u64>()
                    .saturating_sub(s.baselines.get(&e.id).copied().unwrap_or(0)),
                up: e.state != api::State::Down && listed.contains(&e.id),
            })
            .collect();
        let sample = metrics::Sample {
            queues: per_queue
                .iter()
                .map(|q| metrics::Queue { rx: q.rx, tx: q.tx })
                .collect(),
            to_host: total.to_host,
            from_host: total.from_host,
            dropped,
            icmp_sent: total.icmp_sent,
            backends,
            table_generation: s.tables.generation(),
            flow_hits: total.flow_hits,
            flow_misses: total.flow_misses,
            flow_entries: self
                .shared
                .flows
                .as_ref()
                .map(|_| self.flow_entries.load(Relaxed)),
        };
        drop(s);
        metrics::render(&sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::control::api::{Control, State as Admin};

    fn controller(workers: usize) -> Controller {
        let config = Config::from_vars(
            [
                ("RR_DEVICE", "lo"),
                ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2"),
                ("RR_TABLE_SIZE", "251"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let (services, tables) = crate::control::tables(&config).unwrap();
        let node = Node {
            mac: ethernet::Address([2, 0, 0, 0, 0, 1]),
            v4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            v6: Vec::new(),
            primary_v4: None,
            primary_v6: None,
            mtu: 1500,
            vlan: None,
            hasher: flow::Hasher::new(&config.hash_key),
            health: None,
        };
        let resolution = Resolution {
            entries: Vec::new(),
            unresolved: Vec::new(),
            elsewhere: Vec::new(),
        };
        let tables = Arc::new(tables);
        let shared = Arc::new(Shared::new(
            node.snapshot(&tables, &resolution, &Held::default()),
            None,
        ));
        let stats = Arc::new((0..workers).map(|_| Stats::default()).collect());
        // Index 1 is loopback: resolving reads the kernel's tables only.
        Controller::new(
            node,
            services,
            tables,
            Resolver::new(1),
            resolution,
            shared,
            stats,
        )
    }

    fn generation_in_use(c: &Controller) -> u64 {
        c.shared.snapshot.load().tables.generation()
    }

    #[test]
    fn every_change_is_published_as_one_new_generation_and_answered_with_it() {
        let c = controller(1);
        assert_eq!(generation_in_use(&c), 1);
        let addr: IpAddr = "10.1.0.3".parse().unwrap();
        let change = Change {
            weight: Some(4),
            state: None,
        };
        let (g, backend, created) = c.put_backend(ServiceName::Default, addr, change).unwrap();
        assert_eq!((g, created, generation_in_use(&c)), (2, true, 2));
        assert_eq!(backend["weight"], 4);
        assert_eq!(backend["health"], "unchecked");
        let drain = Change {
            weight: None,
            state: Some(Admin::Drain),
        };
        let (g, backend, created) = c.put_backend(ServiceName::Default, addr, drain).unwrap();
        assert_eq!((g, created, generation_in_use(&c)), (3, false, 3));
        assert_eq!(backend["state"], "drain");
        assert_eq!(c.delete_backend(ServiceName::Default, addr), Ok(4));
        assert_eq!(generation_in_use(&c), 4);
        let unknown = c.delete_backend(ServiceName::Default, addr).unwrap_err();
        assert!(matches!(unknown, ChangeError::UnknownBackend { .. }));
        assert_eq!(
            generation_in_use(&c),
            4,
            "a refused change publishes nothing"
        );
        let v = c.vips();
        assert_eq!(v["generation"], 4);
        assert_eq!(v["vips"][0]["backends"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn healthz_reports_a_worker_that_stopped_polling() {
        let c = controller(2);
        assert_eq!(c.healthz(), Ok(()));
        std::thread::sleep(STALL + Duration::from_millis(100));
        c.watch_workers();
        let err = c.healthz().unwrap_err();
        assert!(
            err.contains("worker 0 has not polled") && err.contains("worker 1"),
            "{err}"
        );
        // Polls advancing (as a live worker's do) make it healthy again.
        for s in c.stats.iter() {
            s.publish(&crate::dataplane::Counters::default(), Default::default());
        }
        c.watch_workers();
        assert_eq!(c.healthz(), Ok(()));
        c.shared.stop.store(true, Relaxed);
        assert_eq!(c.healthz(), Err("stopping".to_string()));
    }

    #[test]
    fn healthz_stays_ok_while_a_long_change_holds_the_state() {
        let c = controller(1);
        std::thread::scope(|s| {
            let held = c.lock();
            s.spawn(|| {
                // Workers keep polling while the state is locked.
                let end = Instant::now() + STALL + Duration::from_millis(300);
                while Instant::now() < end {
                    c.stats[0].publish(&crate::dataplane::Counters::default(), Default::default());
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert_eq!(c.healthz(), Ok(()));
            });
            std::thread::sleep(STALL + Duration::from_millis(400));
            drop(held);
        });
    }

    #[test]
    fn metrics_name_every_backend_with_its_state() {
        let c = controller(1);
        let down = Change {
            weight: None,
            state: Some(Admin::Down),
        };
        c.put_backend(ServiceName::Default, "10.1.0.2".parse().unwrap(), down)
            .unwrap();
        let text = c.metrics();
        assert!(
            text.contains("rr_backend_up{vip=\"default\",backend=\"10.1.0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("rr_backend_up{vip=\"default\",backend=\"10.1.0.2\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("rr_table_generation 2\n"), "{text}");
        assert!(
            text.contains("rr_rx_packets_total{queue=\"0\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("rr_flow_table_entries"),
            "tracking is off: {text}"
        );
    }
}
