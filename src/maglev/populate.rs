//! Filling the lookup table (Maglev paper, section 3.4).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip128::{Hasher128, SipHasher13};

use super::{Backend, Key};

/// Family tags hashed before the address bytes, so that 10.0.0.1 and
/// ::ffff:10.0.0.1 get unrelated permutations.
const TAG_V4: u8 = 4;
const TAG_V6: u8 = 6;

/// One backend's walk through its preference list:
/// `permutation[j] = (offset + j * skip) mod M`, kept as the next position
/// so each step is an add and a compare instead of a multiply and a divide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Permutation {
    pub(super) next: u32,
    pub(super) skip: u32,
}

impl Permutation {
    /// Derived from the address alone (never the input position), so every
    /// node holding the same key computes the same walk.
    ///
    /// `size` must be at least 2; the caller has checked it is a prime
    /// ≥ `MIN_SIZE` and < 2^24, so every `skip` in 1..size is coprime to it
    /// and the walk visits every slot exactly once per `size` steps.
    pub(super) fn new(addr: &IpAddr, key: &Key, size: u32) -> Permutation {
        let mut hasher = SipHasher13::new_with_key(key);
        match addr {
            IpAddr::V4(a) => {
                hasher.write_u8(TAG_V4);
                hasher.write(&a.octets());
            }
            IpAddr::V6(a) => {
                hasher.write_u8(TAG_V6);
                hasher.write(&a.octets());
            }
        }
        let hash = hasher.finish128();
        let m = u64::from(size);
        // Both results are < size < 2^24, so they fit u32.
        let offset = (hash.h1 % m) as u32;
        let skip = (hash.h2 % (m - 1)) as u32 + 1;
        Permutation { next: offset, skip }
    }
}

/// Slot occupancy as a bitset: 8 KiB at M = 65537, so the probing loop
/// stays in L1 instead of walking the 128 KiB slot array.
struct Filled {
    words: Vec<u64>,
}

impl Filled {
    fn new(size: usize) -> Filled {
        Filled {
            words: vec![0; size.div_ceil(64)],
        }
    }

    /// Advances `perm` to its next free slot, claims it and returns it.
    ///
    /// Terminates as long as one slot is free: the walk is a full cycle.
    #[inline]
    fn claim_next(&mut self, perm: &mut Permutation, size: u32) -> u32 {
        loop {
            let candidate = perm.next;
            perm.next += perm.skip;
            if perm.next >= size {
                perm.next -= size;
            }
            let word = &mut self.words[(candidate >> 6) as usize];
            let bit = 1u64 << (candidate & 63);
            if *word & bit == 0 {
                *word |= bit;
                return candidate;
            }
        }
    }
}

/// Fills all `size` slots with indices into `backends` (canonical order).
///
/// Returns an empty vector when no backend has weight > 0. The caller has
/// checked: `size` is a prime in range, fewer weighted backends than `size`,
/// and `backends.len()` fits the u16 index.
pub(super) fn populate(backends: &[Backend], key: &Key, size: usize) -> Vec<u16> {
    let active = active_backends(backends, key, size);
    let Some(max_weight) = active.iter().map(|a| a.weight).max() else {
        return Vec::new();
    };
    let total: u64 = active.iter().map(|a| a.weight).sum();
    if active.iter().all(|a| a.weight == max_weight) {
        round_robin(active, size)
    } else if active.len() as u64 * max_weight <= ROUNDS_LIMIT * total {
        credit_round_robin(active, size, max_weight)
    } else {
        heap_round_robin(active, size, max_weight)
    }
}

/// Weighted round robin visits all N backends each round but fills only
/// Σw/max slots a round, so it does about N·max/Σw visits per slot. Up to
/// this many it is cheaper than the heap; beyond it (weights as uneven as
/// 1 and 65535) the heap's O(log N) per slot wins.
const ROUNDS_LIMIT: u64 = 8;

/// A backend with weight > 0, its index in canonical order and its walk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Active {
    index: u16,
    weight: u64,
    perm: Permutation,
}

/// The backends that take slots, in canonical order, each with its walk.
pub(super) fn active_backends(backends: &[Backend], key: &Key, size: usize) -> Vec<Active> {
    // size ≤ MAX_SIZE < 2^24 (checked by the caller), so it fits u32.
    let size32 = size as u32;
    backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| Active {
            // i < backends.len() ≤ u16::MAX (checked by the caller).
            index: i as u16,
            weight: u64::from(b.weight),
            perm: Permutation::new(&b.addr, key, size32),
        })
        .collect()
}

/// The paper's populate: each backend in turn claims its next free slot.
/// With N backends every one ends with ⌊M/N⌋ or ⌈M/N⌉ slots.
pub(super) fn round_robin(mut active: Vec<Active>, size: usize) -> Vec<u16> {
    if active.is_empty() {
        return Vec::new();
    }
    let size32 = size as u32;
    let mut filled = Filled::new(size);
    let mut slots = vec![0u16; size];
    let mut left = size;
    loop {
        for a in &mut active {
            let slot = filled.claim_next(&mut a.perm, size32);
            slots[slot as usize] = a.index;
            left -= 1;
            if left == 0 {
                return slots;
            }
        }
    }
}

/// Weighted round robin, as Katran and Cilium do: each round every backend
/// adds its weight to a credit and claims a slot when the credit reaches
/// `max_weight` (then pays `max_weight`). Since weight ≤ `max_weight`, a
/// backend claims at most one slot a round, and after `r` rounds it holds
/// `⌊r·w/max⌋` slots, so shares stay proportional to weight. With equal
/// weights this is exactly `round_robin`.
pub(super) fn credit_round_robin(
    mut active: Vec<Active>,
    size: usize,
    max_weight: u64,
) -> Vec<u16> {
    if active.is_empty() || max_weight == 0 {
        return Vec::new();
    }
    let size32 = size as u32;
    let mut filled = Filled::new(size);
    let mut slots = vec![0u16; size];
    let mut credit = vec![0u64; active.len()];
    let mut left = size;
    // The backend with `max_weight` claims every round, so this ends.
    loop {
        for (a, credit) in active.iter_mut().zip(&mut credit) {
            *credit += a.weight;
            if *credit < max_weight {
                continue;
            }
            *credit -= max_weight;
            let slot = filled.claim_next(&mut a.perm, size32);
            slots[slot as usize] = a.index;
            left -= 1;
            if left == 0 {
                return slots;
            }
        }
    }
}

/// The same order as `credit_round_robin`, without the empty visits.
///
/// When weights are as uneven as 1 and 65535, rounds fill about one slot
/// each and visiting all N backends per round costs N·M. Instead this
/// jumps straight to the next claim: a backend's k-th claim falls in round
/// `⌈k·max/w⌉`, and a heap ordered by (round, canonical index) replays the
/// round-by-round order exactly in O(M log N).
pub(super) fn heap_round_robin(mut active: Vec<Active>, size: usize, max_weight: u64) -> Vec<u16> {
    let size32 = size as u32;
    let mut filled = Filled::new(size);
    let mut slots = vec![0u16; size];
    // (round of the next claim, position in `active`); a backend's
    // k-th claim needs k·max < 2^24·2^32, far from overflowing u64.
    let mut turns: BinaryHeap<Reverse<(u64, u32)>> = active
        .iter()
        .enumerate()
        .map(|(pos, a)| Reverse((max_weight.div_ceil(a.weight), pos as u32)))
        .collect();
    let mut claims = vec![0u64; active.len()];
    let mut left = size;
    while left > 0 {
        let Some(mut top) = turns.peek_mut() else {
            return Vec::new();
        };
        let Reverse((_, pos)) = *top;
        let pos = pos as usize;
        let a = &mut active[pos];
        let slot = filled.claim_next(&mut a.perm, size32);
        slots[slot as usize] = a.index;
        left -= 1;
        claims[pos] += 1;
        let next_round = ((claims[pos] + 1) * max_weight).div_ceil(a.weight);
        // Dropping `top` sifts the entry down to its new place.
        *top = Reverse((next_round, pos as u32));
    }
    slots
}
