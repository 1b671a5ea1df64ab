//! Connection tracking (Maglev §3.3): flow hash → backend, shared by every
//! worker without locks.
//!
//! A flow's packets may arrive on any queue (RSS may hash only the outer
//! GRE addresses; veth picks the queue by sending CPU), so one table serves
//! all workers. It is open addressing over atomic words: a bucket is one
//! cache line of eight 64-bit entries, and an entry is a single word, so a
//! reader can never see half of one. Writes race benignly: two workers
//! inserting into the same slot leave one of the two flows untracked until
//! its next packet, and two workers tracking the same flow pick the same
//! backend from the same table.
//!
//! An entry packs
//! `tag (32 bits) | backend id (16 bits) | last seen (16 bits, seconds)`.
//! The tag is the flow hash's upper half with its low bit set, so no live
//! entry is 0 (the empty word). Eviction is LRU within a bucket: a full
//! bucket gives up its least recently seen entry.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Entries per bucket: one 64-byte cache line.
pub const WAYS: usize = 8;
/// Tracking ids are below this: per-backend counters are indexed by id.
pub const MAX_IDS: usize = 4096;
/// Longest flow timeout, in seconds.
pub const MAX_TIMEOUT: u16 = 3600;
/// Largest table accepted: 2^28 entries (2 GiB).
pub const MAX_ENTRIES: usize = 1 << 28;

#[repr(align(64))]
#[derive(Default)]
struct Bucket([AtomicU64; WAYS]);

/// The shared flow table. Allocated once by control code; the data path
/// only reads and writes its atomics.
pub struct Table {
    buckets: Box<[Bucket]>,
    mask: usize,
    timeout: u16,
}

#[inline]
fn tag(hash: u64) -> u64 {
    (hash >> 32) | 1
}

#[inline]
fn pack(tag: u64, id: u16, now: u16) -> u64 {
    tag << 32 | u64::from(id) << 16 | u64::from(now)
}

/// Seconds since the entry was last seen. Signed: a worker whose batch
/// began just before another worker refreshed the entry sees it a second
/// or so in the future, and must still find it.
#[inline]
fn age(entry: u64, now: u16) -> i16 {
    now.wrapping_sub(entry as u16) as i16
}

/// How far in the future an entry may look (clock read once per batch).
const SKEW: i16 = 2;

impl Table {
    /// At least `entries` entries (rounded up to whole power-of-two bucket
    /// counts); an entry not seen for `timeout` seconds is gone.
    pub fn new(entries: usize, timeout: u16) -> Table {
        let buckets = entries
            .clamp(WAYS, MAX_ENTRIES)
            .div_ceil(WAYS)
            .next_power_of_two();
        Table {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets - 1,
            // Ages are i16: keep the timeout far below its range.
            timeout: timeout.clamp(1, MAX_TIMEOUT),
        }
    }

    /// Entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    #[inline]
    fn bucket(&self, hash: u64) -> &Bucket {
        // `mask` is one less than the bucket count, so the index is in range.
        &self.buckets[hash as usize & self.mask]
    }

    #[inline]
    fn live(&self, entry: u64, now: u16) -> bool {
        entry != 0 && (-SKEW..=self.timeout as i16).contains(&age(entry, now))
    }

    /// The backend id tracked for a flow, if any. A hit refreshes the
    /// entry at most once a second, so a busy flow costs no write per packet.
    #[inline]
    pub fn lookup(&self, hash: u64, now: u16) -> Option<u16> {
        let tag = tag(hash);
        for slot in &self.bucket(hash).0 {
            let entry = slot.load(Relaxed);
            if entry >> 32 == tag && self.live(entry, now) {
                if age(entry, now) > 0 {
                    // Losing this race to an insert is fine: the insert is newer.
                    let _ = slot.compare_exchange(
                        entry,
                        entry & !0xffff | u64::from(now),
                        Relaxed,
                        Relaxed,
                    );
                }
                return Some((entry >> 16) as u16);
            }
        }
        None
    }

    /// Tracks a flow on a backend: over its own old entry, else an empty or
    /// expired one, else the bucket's least recently seen.
    #[inline]
    pub fn insert(&self, hash: u64, id: u16, now: u16) {
        let tag = tag(hash);
        let bucket = &self.bucket(hash).0;
        let mut victim = &bucket[0];
        let mut victim_entry = victim.load(Relaxed);
        // Own entry first (no duplicates), then a free slot, then the oldest.
        let mut rank = (0u8, i16::MIN);
        for slot in bucket {
            let entry = slot.load(Relaxed);
            if entry >> 32 == tag {
                victim = slot;
                victim_entry = entry;
                break;
            }
            let r = if self.live(entry, now) {
                (1, age(entry, now))
            } else {
                (2, 0)
            };
            if r > rank {
                rank = r;
                victim = slot;
                victim_entry = entry;
            }
        }
        // A concurrent writer took the slot: keep theirs; this flow is
        // tracked on its next packet.
        let _ = victim.compare_exchange(victim_entry, pack(tag, id, now), Relaxed, Relaxed);
    }

    /// Buckets in the table.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Clears the expired entries of buckets `from..from + n` (wrapping)
    /// and returns how many live ones they hold. Control side: run over
    /// the whole table well within the clock's 18-hour wrap, or an entry
    /// expired for that long would look fresh again.
    pub fn sweep(&self, from: usize, n: usize, now: u16) -> u64 {
        let mut live = 0;
        for i in 0..n.min(self.buckets.len()) {
            let bucket = &self.buckets[(from + i) & self.mask];
            for slot in &bucket.0 {
                let entry = slot.load(Relaxed);
                if self.live(entry, now) {
                    live += 1;
                } else if entry != 0
                    && !(-SKEW..=self.timeout as i16 + SKEW).contains(&age(entry, now))
                {
                    // Past what even a worker a second or two behind
                    // still counts as live.
                    // A worker may have just refreshed it: then keep theirs.
                    let _ = slot.compare_exchange(entry, 0, Relaxed, Relaxed);
                }
            }
        }
        live
    }

    /// Live entries; sweeps the whole table, so tests and small tables only.
    pub fn count(&self, now: u16) -> u64 {
        self.sweep(0, self.buckets.len(), now)
    }
}

/// Seconds as the table stores them: a wrapping 16-bit clock.
pub fn clock(since_start: core::time::Duration) -> u16 {
    since_start.as_secs() as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hash(i: u64) -> u64 {
        // Spread like a SipHash output would be.
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7)
    }

    #[test]
    fn inserted_flow_is_found_with_its_backend() {
        let t = Table::new(1024, 60);
        assert_eq!(t.lookup(hash(1), 5), None);
        t.insert(hash(1), 42, 5);
        assert_eq!(t.lookup(hash(1), 5), Some(42));
        assert_eq!(t.lookup(hash(2), 5), None);
        t.insert(hash(1), 7, 6);
        assert_eq!(
            t.lookup(hash(1), 6),
            Some(7),
            "a re-insert replaces, not duplicates"
        );
        assert_eq!(t.count(6), 1);
    }

    #[test]
    fn entries_expire_after_timeout_unless_seen() {
        let t = Table::new(64, 10);
        t.insert(hash(1), 1, 100);
        t.insert(hash(2), 2, 100);
        assert_eq!(t.lookup(hash(1), 108), Some(1), "refreshes to 108");
        assert_eq!(t.lookup(hash(1), 118), Some(1));
        assert_eq!(t.lookup(hash(2), 118), None, "not seen for 18 s");
        assert_eq!(t.count(118), 1);
    }

    #[test]
    fn clock_wraparound_keeps_recent_entries() {
        let t = Table::new(64, 10);
        t.insert(hash(3), 9, u16::MAX - 2);
        assert_eq!(t.lookup(hash(3), 4), Some(9), "7 s later across the wrap");
    }

    #[test]
    fn a_worker_with_an_older_clock_still_finds_a_refreshed_flow() {
        let t = Table::new(64, 10);
        t.insert(hash(1), 1, 100);
        assert_eq!(t.lookup(hash(1), 101), Some(1), "refreshed to 101");
        assert_eq!(t.lookup(hash(1), 100), Some(1), "a batch that began at 100");
        assert_eq!(t.lookup(hash(1), 101), Some(1));
    }

    #[test]
    fn sweeping_clears_expired_entries_so_the_clock_wrap_cannot_revive_them() {
        let t = Table::new(64, 10);
        t.insert(hash(1), 1, 5);
        t.insert(hash(2), 2, 18);
        assert_eq!(t.sweep(0, t.buckets(), 20), 1);
        assert_eq!(t.lookup(hash(1), 5), None, "cleared, not just old");
        assert_eq!(t.lookup(hash(2), 20), Some(2));
    }

    #[test]
    fn insert_reuses_the_flows_own_entry_even_behind_an_expired_one() {
        let t = Table::new(WAYS, 10);
        // Same bucket (one bucket in all): an old flow, then ours.
        t.insert(hash(1), 1, 45);
        t.insert(hash(2), 2, 50);
        // At 60 flow 1 has expired; flow 2's entry comes after it.
        t.insert(hash(2), 3, 60);
        assert_eq!(t.lookup(hash(2), 60), Some(3));
        assert_eq!(t.count(60), 1, "no duplicate of flow 2");
    }

    #[test]
    fn full_bucket_evicts_least_recently_seen() {
        let t = Table::new(WAYS, 60);
        assert_eq!(t.capacity(), WAYS);
        for i in 0..WAYS as u64 {
            t.insert(hash(i), i as u16, 10 + i as u16);
        }
        // Flow 0 is the oldest, but a hit makes flow 1 the oldest instead.
        assert_eq!(t.lookup(hash(0), 30), Some(0));
        t.insert(hash(100), 100, 30);
        assert_eq!(t.lookup(hash(1), 30), None);
        for i in [0u64, 2, 3, 4, 5, 6, 7] {
            assert_eq!(t.lookup(hash(i), 30), Some(i as u16));
        }
        assert_eq!(t.lookup(hash(100), 30), Some(100));
    }

    #[test]
    fn sizes_round_up_to_whole_buckets() {
        assert_eq!(Table::new(0, 1).capacity(), WAYS);
        assert_eq!(Table::new(1000, 1).capacity(), 1024);
        assert_eq!(Table::new(1 << 20, 1).capacity(), 1 << 20);
    }

    /// Two workers track the same flows at once, in opposite orders (as
    /// each would pick the same backend from the same table): no flow's
    /// entry is lost, and each holds that backend.
    #[test]
    fn two_workers_racing_to_track_the_same_flows_lose_none() {
        let t = Arc::new(Table::new(1 << 18, 60));
        let flows = 20_000u64;
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut seen = Vec::with_capacity(flows as usize);
                    for k in 0..flows {
                        // Opposite orders so both race on every flow.
                        let i = if w == 0 { k } else { flows - 1 - k };
                        let id = t.lookup(hash(i), 1).unwrap_or_else(|| {
                            let id = (i % 1000) as u16;
                            t.insert(hash(i), id, 1);
                            id
                        });
                        seen.push((i, id));
                    }
                    seen
                })
            })
            .collect();
        for w in workers {
            for (i, id) in w.join().unwrap() {
                assert_eq!(id, (i % 1000) as u16);
                assert_eq!(t.lookup(hash(i), 1), Some(id), "flow {i}");
            }
        }
    }
}
