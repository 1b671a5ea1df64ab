//! Frames per second through the per-frame pipeline, on one core.
//!
//! Realistic GRE frames (inner TCP/UDP packets of 64–128 bytes, 10k distinct
//! flows) go through `dataplane::process` in batches of 64, against 3 and
//! 100 backends. `parse` (header views only) and `parse_hash` (plus the flow
//! hash) run in the same process for comparison. Each iteration is one lap
//! over all 10k frames (2.5 MB, so they come from L3, not L1); the rewrites
//! are undone between laps, outside the timed region. `process_in/plain_vip`
//! sends the same inner packets plain to an announced VIP, so each is
//! encapsulated (moved 24 bytes into its slot's spare room).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use rusty_rail::dataplane::{self, Context, Service, Tables, Verdict, conntrack, flow, neighbours};
use rusty_rail::maglev::{Backend, DEFAULT_SIZE, Key};
use rusty_rail::wire::{ethernet, gre, ipv4, tcp, udp};

const KEY: Key = *b"rusty_rail_bench";
const FLOWS: usize = 10_000;
const BATCH: usize = 64;
const STRIDE: usize = 256;
const NODE: [u8; 4] = [172, 16, 0, 1];
const NODE_MAC: ethernet::Address = ethernet::Address([2, 0, 0, 0, 0, 1]);

const VIP: [u8; 4] = [192, 0, 2, 10];

/// Flow `i`'s packet: client 10.0.x.y:port -> VIP 192.0.2.10:80 (TCP) or
/// :53 (UDP), its size cycling through 64..=128 bytes.
fn inner(i: usize) -> Vec<u8> {
    let client = [10, 0, (i >> 8) as u8, i as u8];
    let sport = 1024 + i as u16;
    let inner_len = 64 + (i % 65);
    let builder = PacketBuilder::ipv4(client, VIP, 64);
    let mut inner = Vec::new();
    if i % 4 == 3 {
        let payload = vec![0u8; inner_len - 28];
        builder.udp(sport, 53).write(&mut inner, &payload).unwrap();
    } else {
        let payload = vec![0u8; inner_len - 40];
        builder
            .tcp(sport, 80, i as u32, 65535)
            .ack(1)
            .write(&mut inner, &payload)
            .unwrap();
    }
    inner
}

/// Flow `i`'s packet sent plain to the VIP.
fn plain_frames() -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let mut f = vec![0u8; 14];
            ethernet::Repr {
                dst: NODE_MAC,
                src: ethernet::Address([2, 0, 0, 0, 0, 0xfe]),
                vlan: None,
                ethertype: ethernet::ethertype::IPV4,
            }
            .emit(&mut f)
            .unwrap();
            f.extend_from_slice(&inner(i));
            assert!(f.len() + 24 <= STRIDE);
            f
        })
        .collect()
}

/// One GRE frame per flow, carrying its packet.
fn frames() -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let inner = inner(i);
            let gre = gre::Repr {
                protocol: gre::protocol::IPV4,
                checksum: false,
                key: None,
                sequence: None,
            };
            let outer = ipv4::Repr {
                src: Ipv4Addr::new(198, 51, 100, 1),
                dst: Ipv4Addr::from(NODE),
                protocol: 47,
                payload_len: gre.header_len() + inner.len(),
                ttl: 64,
            };
            let eth = ethernet::Repr {
                dst: NODE_MAC,
                src: ethernet::Address([2, 0, 0, 0, 0, 0xfe]),
                vlan: None,
                ethertype: ethernet::ethertype::IPV4,
            };
            let mut f = vec![0u8; eth.header_len() + outer.header_len() + gre.header_len()];
            eth.emit(&mut f).unwrap();
            outer.emit(&mut f[14..]).unwrap();
            gre.emit(&mut f[34..]).unwrap();
            f.extend_from_slice(&inner);
            assert!(f.len() <= STRIDE);
            f
        })
        .collect()
}

/// All frames in fixed-stride slots, as a ring would hold them, plus a
/// pristine copy to undo the rewrites between laps.
struct Pool {
    data: Vec<u8>,
    pristine: Vec<u8>,
    lens: Vec<usize>,
}

impl Pool {
    fn new(frames: &[Vec<u8>]) -> Pool {
        let mut data = vec![0; frames.len() * STRIDE];
        for (i, f) in frames.iter().enumerate() {
            data[i * STRIDE..i * STRIDE + f.len()].copy_from_slice(f);
        }
        Pool {
            pristine: data.clone(),
            data,
            lens: frames.iter().map(Vec::len).collect(),
        }
    }

    /// Times `iters` laps over all 10k frames, in batches of 64; only the
    /// processing is timed, not the restore between laps.
    fn laps(&mut self, iters: u64, mut f: impl FnMut(&mut [u8])) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.data.copy_from_slice(&self.pristine);
            let start = Instant::now();
            for batch in 0..self.lens.len() / BATCH {
                for i in batch * BATCH..(batch + 1) * BATCH {
                    f(&mut self.data[i * STRIDE..i * STRIDE + self.lens[i]]);
                }
            }
            total += start.elapsed();
        }
        total
    }

    /// `laps`, handing `f` each frame's whole slot and its length.
    fn laps_in(&mut self, iters: u64, mut f: impl FnMut(&mut [u8], usize)) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.data.copy_from_slice(&self.pristine);
            let start = Instant::now();
            for batch in 0..self.lens.len() / BATCH {
                for i in batch * BATCH..(batch + 1) * BATCH {
                    f(&mut self.data[i * STRIDE..(i + 1) * STRIDE], self.lens[i]);
                }
            }
            total += start.elapsed();
        }
        total
    }
}

fn backends(n: u32) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend {
            addr: IpAddr::V4(Ipv4Addr::from(0x0A01_0000 + i)),
            weight: 1,
        })
        .collect()
}

/// The header walk `process` does, without hashing or lookup.
fn parse(frame: &[u8]) -> Option<(u32, [u8; 4])> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let outer = ipv4::Packet::new_checked(eth.payload()).ok()?;
    let g = gre::Packet::new_checked(outer.payload()).ok()?;
    let inner = ipv4::Packet::new_checked(g.payload()).ok()?;
    let ports = match inner.protocol() {
        6 => {
            let t = tcp::Packet::new_checked(inner.payload()).ok()?;
            u32::from(t.src_port()) << 16 | u32::from(t.dst_port())
        }
        _ => {
            let u = udp::Packet::new_checked(inner.payload()).ok()?;
            u32::from(u.src_port()) << 16 | u32::from(u.dst_port())
        }
    };
    Some((
        ports ^ u32::from_be_bytes(inner.src_bytes()),
        inner.dst_bytes(),
    ))
}

fn pipeline(c: &mut Criterion) {
    let mut pool = Pool::new(&frames());
    let hasher = flow::Hasher::new(&KEY);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements((FLOWS - FLOWS % BATCH) as u64));

    group.bench_function("parse", |b| {
        b.iter_custom(|iters| {
            pool.laps(iters, |f| {
                black_box(parse(f));
            })
        })
    });
    group.bench_function("parse_hash", |b| {
        b.iter_custom(|iters| {
            pool.laps(iters, |f| {
                if let Some((x, dst)) = parse(f) {
                    black_box(hasher.v4([10, 0, 0, 1], dst, 6, x));
                }
            })
        })
    });

    // Tracked: established flows, as at steady state (the check lap below
    // inserts them all; the timed laps hit).
    let flows = conntrack::Table::new(1 << 20, 60);
    for (n, tracked) in [(3u32, false), (100, false), (3, true)] {
        let set = backends(n);
        let service = if tracked {
            let id = |a: IpAddr| set.iter().position(|b| b.addr == a).map(|i| i as u16);
            Service::build_tracked(None, &set, &KEY, DEFAULT_SIZE, id).unwrap()
        } else {
            Service::build(None, &set, &KEY, DEFAULT_SIZE).unwrap()
        };
        let tables = Tables::new(1, Some(service), Vec::new()).unwrap();
        let entries = set
            .iter()
            .enumerate()
            .map(|(i, b)| (b.addr, ethernet::Address([2, 0, 0, 1, 0, i as u8])))
            .collect();
        let neighbours = neighbours::Static::new(entries, None);
        let local_v4 = [NODE];
        let ctx = Context {
            mac: NODE_MAC,
            local_v4: &local_v4,
            local_v6: &[],
            vips_v4: &[],
            vips_v6: &[],
            primary_v4: Some(NODE),
            primary_v6: None,
            mtu: 1500,
            vlan: None,
            hasher: &hasher,
            tables: &tables,
            neighbours: &neighbours,
            flows: tracked.then_some(&flows),
            now: 0,
        };
        // Every frame must really be forwarded, or the figure is meaningless.
        let mut forwarded = 0;
        pool.laps(1, |f| {
            forwarded += usize::from(dataplane::process(f, &ctx).verdict == Verdict::Forward);
        });
        assert_eq!(forwarded, FLOWS - FLOWS % BATCH);
        let name = if tracked {
            "process_tracked"
        } else {
            "process"
        };
        group.bench_function(BenchmarkId::new(name, format!("{n}_backends")), |b| {
            b.iter_custom(|iters| {
                pool.laps(iters, |f| {
                    black_box(dataplane::process(f, &ctx));
                })
            })
        });
    }

    // The same packets sent plain to the announced VIP, 3 backends.
    let mut plain = Pool::new(&plain_frames());
    let set = backends(3);
    let tables = Tables::new(
        1,
        Some(Service::build(None, &set, &KEY, DEFAULT_SIZE).unwrap()),
        Vec::new(),
    )
    .unwrap();
    let entries = set
        .iter()
        .map(|b| (b.addr, ethernet::Address([2, 0, 0, 1, 0, 1])))
        .collect();
    let neighbours = neighbours::Static::new(entries, None);
    let ctx = Context {
        mac: NODE_MAC,
        local_v4: &[NODE],
        local_v6: &[],
        vips_v4: &[VIP],
        vips_v6: &[],
        primary_v4: Some(NODE),
        primary_v6: None,
        mtu: 1500,
        vlan: None,
        hasher: &hasher,
        tables: &tables,
        neighbours: &neighbours,
        flows: None,
        now: 0,
    };
    let mut forwarded = 0;
    plain.laps_in(1, |buf, len| {
        let (out, _) = dataplane::process_in(buf, len, &ctx);
        forwarded += usize::from(out.verdict == Verdict::Forward);
    });
    assert_eq!(forwarded, FLOWS - FLOWS % BATCH);
    group.bench_function(BenchmarkId::new("process_in", "plain_vip"), |b| {
        b.iter_custom(|iters| {
            plain.laps_in(iters, |buf, len| {
                black_box(dataplane::process_in(buf, len, &ctx));
            })
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
