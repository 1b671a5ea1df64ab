//! Maglev table build and lookup speed.
//!
//! The paper reports 1.8 ms to build N = 1000 at M = 65537; `maglev_build`
//! checks we beat that, and `maglev_lookup` measures the per-packet cost.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rusty_rail::maglev::{Backend, Key, Table};

const KEY: Key = *b"rusty_rail_bench";

/// 10.x.y.z with weight 1.
fn backends(n: u32) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend {
            addr: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)),
            weight: 1,
        })
        .collect()
}

/// splitmix64, so the hashes are the same on every run.
fn hashes(count: usize) -> Vec<u64> {
    let mut state = 0x1234_5678_u64;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    // Flat sampling: the M = 655373 builds take ~20 ms each, and linear
    // sampling would stretch them well past the measurement time.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for m in [65537, 655_373] {
        for n in [3, 100, 1000] {
            let set = backends(n);
            group.bench_with_input(
                BenchmarkId::from_parameter(format!("n{n}/m{m}")),
                &set,
                |b, set| b.iter(|| Table::build(black_box(set), &KEY, m)),
            );
        }
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let table = match Table::build(&backends(100), &KEY, 65537) {
        Ok(t) => t,
        Err(e) => panic!("bench table: {e}"),
    };
    let batch = hashes(1024);
    let mut group = c.benchmark_group("maglev_lookup");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("n100/m65537", |b| {
        b.iter(|| {
            for &hash in black_box(&batch) {
                black_box(table.lookup(hash));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
