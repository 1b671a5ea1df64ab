//! The per-core busy-poll loop, generic over the packet I/O backend.
//!
//! A worker loads the current [`Snapshot`] once per batch (lock-free,
//! through `arc-swap`), runs [`process_in`] on every frame of the batch and
//! lets the [`Port`] move each frame by its verdict. It publishes its
//! counters after every batch. It never allocates, locks, logs or blocks,
//! except that an adaptive worker with nothing to do sleeps in the port's
//! `wait` until traffic returns.

use super::{Context, Counters, DropReason, Verdict, conntrack, flow, neighbours, process_in};
use crate::config::Idle;
use crate::dataplane::Tables;
use crate::wire::ethernet;
use arc_swap::ArcSwap;
use core::net::IpAddr;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a worker reads, swapped as one: a worker never sees tables
/// from one generation and neighbours from another.
pub struct Snapshot {
    pub tables: Arc<Tables>,
    pub neighbours: neighbours::Static,
    pub mac: ethernet::Address,
    pub local_v4: Vec<[u8; 4]>,
    pub local_v6: Vec<[u8; 16]>,
    /// Announced VIPs this node holds.
    pub vips_v4: Vec<[u8; 4]>,
    pub vips_v6: Vec<[u8; 16]>,
    /// The outer source for encapsulating plain IP to a VIP.
    pub primary_v4: Option<[u8; 4]>,
    pub primary_v6: Option<[u8; 16]>,
    pub mtu: u16,
    pub vlan: Option<u16>,
    pub hasher: flow::Hasher,
}

impl Snapshot {
    fn context<'a>(
        &'a self,
        flows: Option<&'a conntrack::Table>,
        now: u16,
    ) -> Context<'a, neighbours::Static> {
        Context {
            flows,
            now,
            mac: self.mac,
            local_v4: &self.local_v4,
            local_v6: &self.local_v6,
            vips_v4: &self.vips_v4,
            vips_v6: &self.vips_v6,
            primary_v4: self.primary_v4,
            primary_v6: self.primary_v6,
            mtu: self.mtu,
            vlan: self.vlan,
            hasher: &self.hasher,
            tables: &self.tables,
            neighbours: &self.neighbours,
        }
    }
}

/// What the control thread and the workers share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Set by the control thread to make every worker return.
    pub stop: AtomicBool,
    /// Backends whose next hop was missing; the control thread resolves
    /// them. Full means a resolution is already pending: the miss is
    /// still counted, just not queued twice.
    pub misses: ArrayQueue<IpAddr>,
    /// Connection tracking, kept across snapshots; None when off.
    pub flows: Option<conntrack::Table>,
    /// The tracking clock in seconds, advanced by the control thread so
    /// workers never read a clock themselves.
    pub now: AtomicU16,
}

impl Shared {
    pub fn new(snapshot: Snapshot, flows: Option<conntrack::Table>) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stop: AtomicBool::new(false),
            misses: ArrayQueue::new(256),
            flows,
            now: AtomicU16::new(0),
        }
    }
}

/// What a port counts beside the verdicts: frames it could not place,
/// and the host's own frames it passed to the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// `Forward` and `Reply` frames dropped because the TX ring was full.
    pub tx_full: u64,
    /// `ToHost` frames the host path could not take.
    pub host_failed: u64,
    /// Frames the host stack sent that went out of the device (netmap's
    /// host RX ring).
    pub from_host: u64,
    /// Frames the host stack sent that were dropped: the TX ring was full.
    pub from_host_dropped: u64,
    /// Frames longer than one buffer (netmap's multi-slot frames), dropped
    /// before the pipeline saw them.
    pub too_long: u64,
    /// Failed ring syncs, and slots naming a buffer outside the memory.
    pub ring_errors: u64,
}

/// A packet I/O backend as the worker loop sees it.
pub trait Port {
    /// Takes up to `max` received frames, asks `decide` for each verdict
    /// and queues it: `Forward` and `Reply` to transmit on the same device,
    /// `ToHost` to the host stack, `Drop` back to the free frames. `decide`
    /// gets the frame's whole buffer and its length, and returns the
    /// verdict and the length after it rewrote the frame in place (a
    /// `Forward` frame may have grown into the buffer's spare room, a
    /// `Reply` shrunk). Also reaps transmitted frames and refills the
    /// receive side. Returns how many frames were taken.
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        max: usize,
        decide: F,
    ) -> usize;

    /// Sleeps until frames may have arrived or `timeout` has passed.
    fn wait(&mut self, timeout: Duration);

    /// What the port counted since the last call.
    fn take_counts(&mut self) -> PortCounts;

    /// After the worker stopped: waits up to `timeout` for queued frames
    /// to leave.
    fn drain(&mut self, _timeout: Duration) {}
}

/// How a worker runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch: usize,
    pub idle: Idle,
    /// How long an adaptive worker spins on empty rings before sleeping.
    pub idle_spin: Duration,
}

/// How long one idle sleep lasts at most, so a stop is noticed.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// One worker's counters, readable by the control thread. Each worker is
/// the only writer of its own, and they sit on their own cache lines so
/// workers never contend.
#[derive(Debug)]
pub struct Stats {
    inner: CachePadded<StatsInner>,
    /// Frames forwarded per backend tracking id.
    backends: Box<[AtomicU64]>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            inner: CachePadded::default(),
            backends: (0..conntrack::MAX_IDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

#[derive(Debug, Default)]
struct StatsInner {
    rx: AtomicU64,
    tx: AtomicU64,
    to_host: AtomicU64,
    dropped: [AtomicU64; DropReason::COUNT],
    icmp_sent: AtomicU64,
    tx_full: AtomicU64,
    host_failed: AtomicU64,
    from_host: AtomicU64,
    from_host_dropped: AtomicU64,
    too_long: AtomicU64,
    ring_errors: AtomicU64,
    flow_hits: AtomicU64,
    flow_misses: AtomicU64,
    /// Batches polled, busy or idle: advances while the worker is alive.
    polls: AtomicU64,
}

/// A copy of one worker's counters (or their sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub rx: u64,
    /// Frames handed to the TX ring: forwarded, and ICMP errors.
    pub tx: u64,
    pub to_host: u64,
    /// Dropped frames by reason, those answered with an ICMP error too.
    pub dropped: [u64; DropReason::COUNT],
    /// ICMP errors sent back for packets too big to encapsulate.
    pub icmp_sent: u64,
    pub tx_full: u64,
    pub host_failed: u64,
    /// Frames from the host stack sent out of the device (netmap only).
    pub from_host: u64,
    pub from_host_dropped: u64,
    pub too_long: u64,
    pub ring_errors: u64,
    pub flow_hits: u64,
    pub flow_misses: u64,
    pub polls: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.to_host += other.to_host;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        self.icmp_sent += other.icmp_sent;
        self.tx_full += other.tx_full;
        self.host_failed += other.host_failed;
        self.from_host += other.from_host;
        self.from_host_dropped += other.from_host_dropped;
        self.too_long += other.too_long;
        self.ring_errors += other.ring_errors;
        self.flow_hits += other.flow_hits;
        self.flow_misses += other.flow_misses;
        self.polls += other.polls;
    }

    /// One JSON object, e.g. for the periodic stats line.
    pub fn to_json(&self) -> serde_json::Value {
        let dropped: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), self.dropped[*r as usize].into()))
            .chain([
                ("tx_ring_full".to_string(), self.tx_full.into()),
                ("to_host_failed".to_string(), self.host_failed.into()),
                (
                    "from_host_tx_full".to_string(),
                    self.from_host_dropped.into(),
                ),
                ("too_long".to_string(), self.too_long.into()),
            ])
            .collect();
        serde_json::json!({
            "rx": self.rx,
            "tx": self.tx,
            "icmp_sent": self.icmp_sent,
            "to_host": self.to_host,
            "from_host": self.from_host,
            "ring_errors": self.ring_errors,
            "dropped": dropped,
            "flows": {"hits": self.flow_hits, "misses": self.flow_misses},
        })
    }
}

impl Stats {
    /// Adds a batch. Single writer, so a plain load and store suffice
    /// (no locked read-modify-write on the hot path).
    #[inline]
    pub(crate) fn publish(&self, batch: &Counters, port: PortCounts) {
        let s = &*self.inner;
        let bump = |counter: &AtomicU64, n: u64| {
            if n != 0 {
                counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
            }
        };
        bump(&s.rx, batch.rx);
        let transmitted = batch.forwarded + batch.icmp_sent;
        bump(&s.tx, transmitted.saturating_sub(port.tx_full));
        bump(&s.to_host, batch.to_host);
        for (counter, n) in s.dropped.iter().zip(batch.dropped) {
            bump(counter, n);
        }
        bump(&s.icmp_sent, batch.icmp_sent);
        bump(&s.tx_full, port.tx_full);
        bump(&s.host_failed, port.host_failed);
        bump(&s.from_host, port.from_host);
        bump(&s.from_host_dropped, port.from_host_dropped);
        bump(&s.too_long, port.too_long);
        bump(&s.ring_errors, port.ring_errors);
        bump(&s.flow_hits, batch.flow_hits);
        bump(&s.flow_misses, batch.flow_misses);
        bump(&s.polls, 1);
    }

    #[inline]
    fn count_backend(&self, id: u16) {
        if let Some(counter) = self.backends.get(usize::from(id)) {
            counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
        }
    }

    /// Frames sent to the backend with this tracking id.
    pub fn backend_packets(&self, id: u16) -> u64 {
        self.backends
            .get(usize::from(id))
            .map_or(0, |c| c.load(Relaxed))
    }

    pub fn read(&self) -> Totals {
        let s = &*self.inner;
        let mut dropped = [0; DropReason::COUNT];
        for (d, counter) in dropped.iter_mut().zip(&s.dropped) {
            *d = counter.load(Relaxed);
        }
        Totals {
            rx: s.rx.load(Relaxed),
            tx: s.tx.load(Relaxed),
            to_host: s.to_host.load(Relaxed),
            dropped,
            icmp_sent: s.icmp_sent.load(Relaxed),
            tx_full: s.tx_full.load(Relaxed),
            host_failed: s.host_failed.load(Relaxed),
            from_host: s.from_host.load(Relaxed),
            from_host_dropped: s.from_host_dropped.load(Relaxed),
            too_long: s.too_long.load(Relaxed),
            ring_errors: s.ring_errors.load(Relaxed),
            flow_hits: s.flow_hits.load(Relaxed),
            flow_misses: s.flow_misses.load(Relaxed),
            polls: s.polls.load(Relaxed),
        }
    }
}

/// ICMP errors one worker may send in a second of the control clock:
/// RFC 4443 2.4(f) asks for a limit, and Linux's default is 1000 a second.
pub const ICMP_PER_SECOND: u32 = 1000;

/// The worker's ICMP error allowance for the current second.
#[derive(Debug, Default)]
struct IcmpBudget {
    second: Option<u16>,
    left: u32,
}

impl IcmpBudget {
    #[inline]
    fn refill(&mut self, now: u16) {
        if self.second != Some(now) {
            self.second = Some(now);
            self.left = ICMP_PER_SECOND;
        }
    }

    /// False once the second's allowance is spent.
    #[inline]
    fn take(&mut self) -> bool {
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }
}

/// Runs until `shared.stop` is set.
pub fn run<P: Port>(port: &mut P, shared: &Shared, stats: &Stats, settings: Settings) {
    let batch = settings.batch.max(1);
    let mut idle_since: Option<Instant> = None;
    let mut icmp = IcmpBudget::default();
    while !shared.stop.load(Relaxed) {
        let snapshot = shared.snapshot.load();
        let now = shared.now.load(Relaxed);
        let ctx = snapshot.context(shared.flows.as_ref(), now);
        icmp.refill(now);
        let mut counters = Counters::default();
        let mut last_miss = None;
        let n = port.poll(batch, |buf, len| {
            let (mut outcome, len) = process_in(buf, len, &ctx);
            if let Verdict::Reply(reason) = outcome.verdict
                && !icmp.take()
            {
                outcome.verdict = Verdict::Drop(reason);
            }
            counters.record(outcome.verdict);
            counters.record_track(outcome.track);
            if let (Verdict::Forward, Some(id)) = (outcome.verdict, outcome.id) {
                stats.count_backend(id);
            }
            if let (Verdict::Drop(DropReason::NoNeighbour), Some(backend)) =
                (outcome.verdict, outcome.backend)
                && last_miss != Some(backend)
            {
                // Once per backend in a row, not per frame: the queue is
                // shared by all workers. Never blocks: a full queue means
                // resolutions are pending anyway.
                last_miss = Some(backend);
                let _ = shared.misses.push(backend);
            }
            (outcome.verdict, len)
        });
        stats.publish(&counters, port.take_counts());
        drop(snapshot);
        if n > 0 {
            idle_since = None;
            continue;
        }
        match settings.idle {
            Idle::Spin => core::hint::spin_loop(),
            Idle::Adaptive => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settings.idle_spin {
                    port.wait(MAX_SLEEP);
                } else {
                    core::hint::spin_loop();
                }
            }
        }
    }
}

/// Shared with the netmap port's tests, which run this loop on its rings.
#[cfg(test)]
pub(crate) mod tests;
