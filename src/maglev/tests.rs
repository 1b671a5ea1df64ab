use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::populate::{
    Permutation, active_backends, credit_round_robin, heap_round_robin, round_robin,
};
use super::*;

const KEY: Key = *b"rusty_rail_key!!";

/// splitmix64: a tiny deterministic generator so tests need no rand crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))
}

fn v6(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        0,
        0,
        (i >> 16) as u16,
        i as u16,
    ))
}

fn equal(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<Backend> {
    addrs
        .into_iter()
        .map(|addr| Backend { addr, weight: 1 })
        .collect()
}

/// 10.0.0.1, 10.0.0.2, ... with weight 1.
fn v4_set(n: u32) -> Vec<Backend> {
    equal((1..=n).map(v4))
}

/// Alternating IPv4 and IPv6 addresses with weight 1.
fn mixed_set(n: u32) -> Vec<Backend> {
    equal((1..=n).map(|i| if i % 2 == 0 { v4(i) } else { v6(i) }))
}

fn build(backends: &[Backend], size: usize) -> Table {
    match Table::build(backends, &KEY, size) {
        Ok(t) => t,
        Err(e) => panic!("build failed: {e}"),
    }
}

/// Slot → owner address, so tables over different sets can be compared.
fn owners(table: &Table) -> Vec<IpAddr> {
    table
        .slots()
        .iter()
        .map(|&i| table.backends()[usize::from(i)].addr)
        .collect()
}

fn trial_division(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[test]
fn is_prime_known_primes() {
    for p in [
        2,
        3,
        5,
        37,
        41,
        251,
        257,
        65537,
        655_373,
        16_777_213,
        2_147_483_647,
        (1 << 61) - 1,
        18_446_744_073_709_551_557, // largest prime below 2^64
    ] {
        assert!(is_prime(p), "{p} is prime");
    }
}

#[test]
fn is_prime_known_composites() {
    for c in [
        0,
        1,
        4,
        9,
        249,
        561, // Carmichael number
        65536,
        65535,
        655_371, // 3 · 218457
        16_777_215,
        3_215_031_751, // strong pseudoprime to bases 2, 3, 5, 7
        4_294_967_297, // 641 · 6700417
        1_000_000_007 * 998_244_353,
        u64::MAX,
    ] {
        assert!(!is_prime(c), "{c} is composite");
    }
}

#[test]
fn is_prime_agrees_with_trial_division_below_100_000() {
    for n in 0..100_000 {
        assert_eq!(is_prime(n), trial_division(n), "n = {n}");
    }
}

#[test]
fn size_bounds_are_primes_and_max_is_largest_below_2_pow_24() {
    assert!(is_prime(MIN_SIZE as u64));
    assert!(is_prime(DEFAULT_SIZE as u64));
    assert!(trial_division(MAX_SIZE as u64));
    assert!(((MAX_SIZE as u64 + 1)..(1 << 24)).all(|n| !trial_division(n)));
}

#[test]
fn build_accepts_prime_sizes_in_range() {
    let backends = v4_set(3);
    for size in [251, 65537, 655_373] {
        let table = build(&backends, size);
        assert_eq!(table.size(), size);
        assert_eq!(table.slots().len(), size);
        assert_eq!(table.slot_counts().iter().sum::<usize>(), size);
    }
}

#[test]
fn build_rejects_non_prime_size() {
    let backends = v4_set(3);
    for size in [65535, 65536, 655_371, 1000] {
        assert_eq!(
            Table::build(&backends, &KEY, size),
            Err(Error::SizeNotPrime(size))
        );
    }
}

#[test]
fn build_rejects_size_out_of_range() {
    let backends = v4_set(3);
    // 241 and 16_777_259 are prime but outside the bounds.
    for size in [0, 1, 2, 3, 241, 250, 16_777_259, usize::MAX] {
        assert_eq!(
            Table::build(&backends, &KEY, size),
            Err(Error::SizeOutOfRange(size))
        );
    }
}

#[test]
fn slots_identical_across_input_orders() {
    let backends = mixed_set(100);
    let reference = build(&backends, DEFAULT_SIZE);

    let mut reversed = backends.clone();
    reversed.reverse();
    assert_eq!(build(&reversed, DEFAULT_SIZE).slots(), reference.slots());

    let mut rng = Rng(42);
    for _ in 0..5 {
        let mut shuffled = backends.clone();
        rng.shuffle(&mut shuffled);
        let table = build(&shuffled, DEFAULT_SIZE);
        assert_eq!(table.slots(), reference.slots());
        assert_eq!(table.backends(), reference.backends());
        assert_eq!(table, reference);
    }
}

#[test]
fn backends_listed_sorted_by_address() {
    let mut backends = mixed_set(20);
    backends.reverse();
    let table = build(&backends, 251);
    assert!(table.backends().windows(2).all(|p| p[0].addr < p[1].addr));
    assert_eq!(table.backends().len(), 20);
}

#[test]
fn permutation_derives_from_address_not_position() {
    let base = mixed_set(50);
    let extra = Backend {
        addr: v4(999),
        weight: 1,
    };
    let mut at_back = base.clone();
    at_back.push(extra);
    let mut at_front = vec![extra];
    at_front.extend_from_slice(&base);
    assert_eq!(
        build(&at_front, DEFAULT_SIZE),
        build(&at_back, DEFAULT_SIZE)
    );
    // The walk itself depends only on the address and key.
    assert_eq!(
        Permutation::new(&extra.addr, &KEY, 65537),
        Permutation::new(&v4(999), &KEY, 65537)
    );
}

#[test]
fn v4_and_v4_mapped_v6_get_different_permutations() {
    let plain = Ipv4Addr::new(10, 0, 0, 1);
    let mapped = IpAddr::V6(plain.to_ipv6_mapped());
    assert_ne!(
        Permutation::new(&IpAddr::V4(plain), &KEY, 65537),
        Permutation::new(&mapped, &KEY, 65537)
    );
}

#[test]
fn permutation_stays_in_range() {
    for i in 0..1000 {
        let p = Permutation::new(&v6(i), &KEY, 251);
        assert!(p.next < 251);
        assert!((1..251).contains(&p.skip));
    }
}

#[test]
fn same_key_same_table_different_key_different_table() {
    let backends = mixed_set(20);
    let a = build(&backends, DEFAULT_SIZE);
    let b = build(&backends, DEFAULT_SIZE);
    assert_eq!(a, b);

    let mut other_key = KEY;
    other_key[0] ^= 1;
    let c = match Table::build(&backends, &other_key, DEFAULT_SIZE) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_ne!(c.slots(), a.slots());
    let differing = a
        .slots()
        .iter()
        .zip(c.slots())
        .filter(|(x, y)| x != y)
        .count();
    // Unrelated tables over 20 backends agree on about 1/20 of the slots.
    assert!(
        differing > DEFAULT_SIZE / 2,
        "only {differing} slots differ"
    );
}

#[test]
fn equal_weights_split_slots_within_one_of_m_over_n() {
    let m = DEFAULT_SIZE;
    for n in [1, 3, 10, 100, 650] {
        let table = build(&v4_set(n), m);
        let counts = table.slot_counts();
        let n = n as usize;
        assert_eq!(counts.len(), n);
        assert_eq!(counts.iter().sum::<usize>(), m);
        let (lo, hi) = (m / n, m.div_ceil(n));
        for &c in &counts {
            assert!(c == lo || c == hi, "n={n}: count {c} not in {lo}..={hi}");
        }
    }
}

#[test]
fn equal_weights_balance_holds_for_other_sizes_and_mixed_families() {
    for (n, m) in [(2, 251), (7, 4099), (100, 655_373)] {
        let counts = build(&mixed_set(n), m).slot_counts();
        let n = n as usize;
        assert_eq!(counts.iter().sum::<usize>(), m);
        assert!(counts.iter().all(|&c| c == m / n || c == m.div_ceil(n)));
    }
}

/// Removes one backend and reports (slots it held, other slots that moved).
fn disruption(n: u32, remove: usize) -> (usize, usize) {
    let m = DEFAULT_SIZE;
    let before = build(&v4_set(n), m);
    let gone = before.backends()[remove].addr;
    let rest: Vec<Backend> = before
        .backends()
        .iter()
        .copied()
        .filter(|b| b.addr != gone)
        .collect();
    let after = build(&rest, m);
    let (old, new) = (owners(&before), owners(&after));
    let mut held = 0;
    let mut moved = 0;
    for (o, n) in old.iter().zip(&new) {
        assert_ne!(*n, gone, "a removed backend still owns a slot");
        if *o == gone {
            held += 1;
        } else if o != n {
            moved += 1;
        }
    }
    (held, moved)
}

#[test]
fn removing_one_backend_moves_few_other_slots() {
    let m = DEFAULT_SIZE;
    // Other slots moved, measured with KEY for the three removals below:
    //   N=10: 151, 130, 172;  N=100: 382, 380, 408;  N=1000: 407, 401, 373.
    // Over 8 keys × 10 removals each the worst was 348, 420 and 421
    // (0.64% of M). The 1% bound (655 slots) leaves about 1.5× margin.
    for n in [10, 100, 1000] {
        for remove in [0, n as usize / 2, n as usize - 1] {
            let (held, moved) = disruption(n, remove);
            println!(
                "N={n} remove #{remove}: removed backend held {held} slots ({:.3}% of M), \
                 {moved} other slots moved ({:.3}% of M)",
                100.0 * held as f64 / m as f64,
                100.0 * moved as f64 / m as f64,
            );
            let n = n as usize;
            assert!(held == m / n || held == m.div_ceil(n));
            assert!(moved < m / 100, "N={n}: {moved} other slots moved");
        }
    }
}

fn assert_shares_within_one_percent(backends: &[Backend], m: usize) {
    let table = build(backends, m);
    let total: u64 = table.backends().iter().map(|b| u64::from(b.weight)).sum();
    let counts = table.slot_counts();
    assert_eq!(counts.iter().sum::<usize>(), m);
    for (b, &count) in table.backends().iter().zip(&counts) {
        let ideal = m as f64 * b.weight as f64 / total as f64;
        let error = (count as f64 - ideal).abs();
        assert!(
            error <= 0.01 * m as f64,
            "{} weight {}: {count} slots, ideal {ideal:.1}",
            b.addr,
            b.weight
        );
    }
}

#[test]
fn weights_1_2_3_4_get_proportional_shares() {
    let backends: Vec<Backend> = (1..=4)
        .map(|w| Backend {
            addr: v4(w),
            weight: w,
        })
        .collect();
    assert_shares_within_one_percent(&backends, DEFAULT_SIZE);
    assert_shares_within_one_percent(&backends, 251);
    // 10 weight units: weight 1 ideally holds 6553.7 slots.
    let counts = build(&backends, DEFAULT_SIZE).slot_counts();
    assert!((6553..=6555).contains(&counts[0]), "{counts:?}");
}

#[test]
fn random_weights_get_proportional_shares() {
    let mut rng = Rng(7);
    let backends: Vec<Backend> = (1..=100)
        .map(|i| Backend {
            addr: if i % 3 == 0 { v6(i) } else { v4(i) },
            weight: 1 + rng.below(100) as u32,
        })
        .collect();
    assert_shares_within_one_percent(&backends, DEFAULT_SIZE);
    assert_shares_within_one_percent(&backends, 655_373);
}

#[test]
fn very_uneven_weights_get_proportional_shares() {
    let pair = [
        Backend {
            addr: v4(1),
            weight: 1,
        },
        Backend {
            addr: v4(2),
            weight: 65535,
        },
    ];
    assert_shares_within_one_percent(&pair, DEFAULT_SIZE);
    let counts = build(&pair, DEFAULT_SIZE).slot_counts();
    // Ideal share of weight 1 is 65537/65536 ≈ 1 slot.
    assert!(counts[0] <= 2, "{counts:?}");

    let mut skewed = v4_set(1000);
    skewed[0].weight = u32::MAX;
    assert_shares_within_one_percent(&skewed, DEFAULT_SIZE);

    let ramp: Vec<Backend> = (1..=1000)
        .map(|w| Backend {
            addr: v4(w),
            weight: w,
        })
        .collect();
    assert_shares_within_one_percent(&ramp, DEFAULT_SIZE);
}

#[test]
fn weighted_populates_match_round_robin_for_equal_weights() {
    for (n, m) in [(3, 251), (100, 65537), (17, 4099)] {
        let backends = mixed_set(n);
        let active = active_backends(&backends, &KEY, m);
        let plain = round_robin(active.clone(), m);
        assert_eq!(plain.len(), m);
        assert_eq!(credit_round_robin(active.clone(), m, 1), plain);
        assert_eq!(heap_round_robin(active.clone(), m, 1), plain);
    }
}

#[test]
fn heap_populate_matches_credit_populate_for_any_weights() {
    let mut rng = Rng(21);
    for case in 0..20 {
        let n = 1 + rng.below(60) as u32;
        // Alternate gentle and wildly uneven weights.
        let spread = if case % 2 == 0 { 10 } else { 1 << 20 };
        let backends: Vec<Backend> = (1..=n)
            .map(|i| Backend {
                addr: v6(i),
                weight: 1 + rng.below(spread) as u32,
            })
            .collect();
        let m = [251, 4099, 65537][case % 3];
        let active = active_backends(&backends, &KEY, m);
        let max = backends
            .iter()
            .map(|b| u64::from(b.weight))
            .max()
            .unwrap_or(1);
        assert_eq!(
            heap_round_robin(active.clone(), m, max),
            credit_round_robin(active, m, max),
            "case {case}"
        );
    }
}

#[test]
fn scaling_every_weight_gives_the_same_table() {
    let backends: Vec<Backend> = (1..=4)
        .map(|w| Backend {
            addr: v6(w),
            weight: w,
        })
        .collect();
    let scaled: Vec<Backend> = backends
        .iter()
        .map(|b| Backend {
            weight: b.weight * 1000,
            ..*b
        })
        .collect();
    assert_eq!(build(&backends, 4099).slots(), build(&scaled, 4099).slots());
}

#[test]
fn zero_weight_backend_holds_no_slots_and_is_never_returned() {
    let mut backends = v4_set(10);
    backends[3].weight = 0;
    let drained = backends[3].addr;
    let table = build(&backends, DEFAULT_SIZE);
    assert_eq!(table.backends().len(), 10);
    let index = table
        .backends()
        .iter()
        .position(|b| b.addr == drained)
        .unwrap_or(usize::MAX);
    assert_eq!(table.backends()[index].weight, 0);
    let counts = table.slot_counts();
    assert_eq!(counts[index], 0);
    // The other nine split the table evenly.
    assert!(
        counts
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != index)
            .all(|(_, &c)| c == DEFAULT_SIZE / 9 || c == DEFAULT_SIZE.div_ceil(9))
    );
    let mut rng = Rng(3);
    for _ in 0..10_000 {
        let b = table.lookup(rng.next());
        assert!(b.is_some_and(|b| b.addr != drained));
    }
}

#[test]
fn draining_a_backend_matches_removing_it() {
    // Weight 0 keeps the backend listed, but the slots are the same owners
    // as if it were gone.
    let backends = mixed_set(30);
    let mut drained = backends.clone();
    drained[7].weight = 0;
    let removed: Vec<Backend> = backends
        .iter()
        .copied()
        .filter(|b| b.addr != backends[7].addr)
        .collect();
    assert_eq!(
        owners(&build(&drained, 4099)),
        owners(&build(&removed, 4099))
    );
}

fn assert_lookup_always_none(table: &Table) {
    let mut rng = Rng(11);
    for hash in [0, 1, u64::MAX, u64::MAX / 2] {
        assert_eq!(table.lookup(hash), None);
    }
    for _ in 0..10_000 {
        assert_eq!(table.lookup(rng.next()), None);
    }
}

#[test]
fn empty_set_lookup_returns_none() {
    let table = build(&[], DEFAULT_SIZE);
    assert!(table.slots().is_empty());
    assert!(table.backends().is_empty());
    assert!(table.slot_counts().is_empty());
    assert_eq!(table.size(), DEFAULT_SIZE);
    assert_lookup_always_none(&table);
}

#[test]
fn all_zero_weights_lookup_returns_none() {
    let mut backends = mixed_set(5);
    for b in &mut backends {
        b.weight = 0;
    }
    let table = build(&backends, 251);
    assert!(table.slots().is_empty());
    assert_eq!(table.backends().len(), 5);
    assert_eq!(table.slot_counts(), vec![0; 5]);
    assert_lookup_always_none(&table);
}

#[test]
fn lookup_matches_fast_range_over_slots() {
    let table = build(&mixed_set(100), DEFAULT_SIZE);
    let m = DEFAULT_SIZE as u128;
    let mut rng = Rng(5);
    let hashes = (0..100_000)
        .map(|_| rng.next())
        .chain([0, 1, u64::MAX, 1 << 63]);
    for hash in hashes {
        let slot = ((u128::from(hash) * m) >> 64) as usize;
        let expected = &table.backends()[usize::from(table.slots()[slot])];
        assert_eq!(table.lookup(hash), Some(expected));
    }
    // The extremes hit the first and last slot.
    assert_eq!(fast_range(0, DEFAULT_SIZE), 0);
    assert_eq!(fast_range(u64::MAX, DEFAULT_SIZE), DEFAULT_SIZE - 1);
}

#[test]
fn lookup_spreads_hashes_like_the_slot_shares() {
    let table = build(&v4_set(4), DEFAULT_SIZE);
    let mut hits = [0usize; 4];
    let mut rng = Rng(9);
    let draws = 400_000;
    for _ in 0..draws {
        if let Some(b) = table.lookup(rng.next()) {
            let i = table.backends().iter().position(|x| x == b).unwrap_or(0);
            hits[i] += 1;
        }
    }
    assert_eq!(hits.iter().sum::<usize>(), draws);
    // Each quarter expects 100_000 hits; binomial sd ≈ 274.
    assert!(
        hits.iter().all(|&h| h.abs_diff(draws / 4) < 2_000),
        "{hits:?}"
    );
}

#[test]
fn too_many_weighted_backends_for_size_rejected() {
    assert_eq!(
        Table::build(&v4_set(251), &KEY, 251),
        Err(Error::TooManyForSize {
            count: 251,
            size: 251
        })
    );
    assert_eq!(
        Table::build(&v4_set(300), &KEY, 251),
        Err(Error::TooManyForSize {
            count: 300,
            size: 251
        })
    );
    // N = M - 1 fits: each backend holds one slot, except one that holds two.
    let counts = build(&v4_set(250), 251).slot_counts();
    assert_eq!(counts.iter().filter(|&&c| c == 1).count(), 249);
    assert_eq!(counts.iter().filter(|&&c| c == 2).count(), 1);
    // Drained backends do not count against the size.
    let mut drained = v4_set(260);
    for b in &mut drained[250..] {
        b.weight = 0;
    }
    assert_eq!(build(&drained, 251).backends().len(), 260);
}

#[test]
fn more_backends_than_u16_indices_rejected() {
    let backends = equal((0..=u16::MAX as u32).map(v6));
    assert_eq!(backends.len(), MAX_BACKENDS + 1);
    assert_eq!(
        Table::build(&backends, &KEY, 655_373),
        Err(Error::TooManyBackends(MAX_BACKENDS + 1))
    );
}

#[test]
fn duplicate_addresses_rejected() {
    let mut backends = mixed_set(10);
    backends.push(backends[4]);
    assert_eq!(
        Table::build(&backends, &KEY, 251),
        Err(Error::DuplicateBackend(backends[4].addr))
    );
    // Same address with a different weight is still a duplicate.
    let mut reweighted = mixed_set(10);
    reweighted.push(Backend {
        weight: 9,
        ..reweighted[2]
    });
    assert_eq!(
        Table::build(&reweighted, &KEY, 251),
        Err(Error::DuplicateBackend(reweighted[2].addr))
    );
}

#[test]
fn errors_have_clear_messages() {
    assert_eq!(
        Error::SizeNotPrime(65536).to_string(),
        "table size 65536 is not prime (Maglev permutations need a prime size)"
    );
    assert_eq!(
        Error::SizeOutOfRange(7).to_string(),
        "table size 7 is out of range 251..=16777213"
    );
    assert_eq!(
        Error::DuplicateBackend(v4(1)).to_string(),
        "backend address 10.0.0.1 is listed more than once"
    );
    assert_eq!(
        Error::TooManyForSize {
            count: 300,
            size: 251
        }
        .to_string(),
        "300 backends with weight > 0 need a table larger than 251 slots"
    );
}

#[test]
fn debug_prints_summary_not_slots() {
    let table = build(&v4_set(2), DEFAULT_SIZE);
    let text = format!("{table:?}");
    assert!(text.contains("size: 65537"), "{text}");
    assert!(text.contains("filled_slots: 65537"), "{text}");
    assert!(text.contains("10.0.0.1"), "{text}");
    assert!(text.len() < 300, "{text}");
}

fn arb_backend() -> impl Strategy<Value = Backend> {
    let addr = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        // Small pools make duplicates likely, to exercise that error too.
        (0u32..64).prop_map(v4),
    ];
    let weight = prop_oneof![0u32..4, Just(u32::MAX), any::<u32>()];
    (addr, weight).prop_map(|(addr, weight)| Backend { addr, weight })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn build_never_panics_and_ignores_input_order(
        backends in prop::collection::vec(arb_backend(), 0..40),
        size in prop_oneof![Just(251usize), Just(257), Just(4099), 0usize..600],
        key in any::<Key>(),
        hashes in prop::collection::vec(any::<u64>(), 16),
    ) {
        let built = Table::build(&backends, &key, size);
        let mut reversed = backends.clone();
        reversed.reverse();
        prop_assert_eq!(&Table::build(&reversed, &key, size), &built);
        if let Ok(table) = built {
            let weighted = backends.iter().filter(|b| b.weight > 0).count();
            let filled: usize = table.slot_counts().iter().sum();
            prop_assert_eq!(filled, if weighted == 0 { 0 } else { size });
            for hash in hashes {
                match table.lookup(hash) {
                    Some(b) => prop_assert!(b.weight > 0),
                    None => prop_assert_eq!(weighted, 0),
                }
            }
        }
    }
}
