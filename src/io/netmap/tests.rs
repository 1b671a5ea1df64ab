//! The netmap port against the in-memory netmap of `fake`. Every test
//! name starts with `netmap_`, so `cargo test --features netmap netmap`
//! runs them all.

use super::fake::{Device, Spec};
use super::*;
use crate::dataplane::DropReason;
use crate::dataplane::worker::Port as _;
use std::collections::HashSet;

/// A frame whose bytes say which one it is.
fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..4].copy_from_slice(&i.to_be_bytes());
    for (k, b) in f.iter_mut().enumerate().skip(4) {
        *b = (k as u32 ^ i) as u8;
    }
    f
}

fn spec(pairs: u32, slots: u32) -> Spec {
    Spec {
        pairs,
        slots,
        buf_size: 2048,
    }
}

/// Polls until the kernel has nothing left to deliver and the rings are
/// read, at most `limit` times.
fn pump<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
    port: &mut Port<fake::Kernel>,
    max: usize,
    limit: usize,
    mut decide: F,
) {
    // The sync at the end of a poll fills the rings the next one reads:
    // done after two empty polls with nothing left to deliver.
    let mut idle = 0;
    for _ in 0..limit {
        let n = port.poll(max, &mut decide);
        let k = port.kernel_mut();
        idle = if n == 0 && k.wire_in.is_empty() && k.host_out.is_empty() {
            idle + 1
        } else {
            0
        };
        if idle == 2 {
            return;
        }
    }
}

fn forward(_: &mut [u8], len: usize) -> (Verdict, usize) {
    (Verdict::Forward, len)
}

fn to_host(_: &mut [u8], len: usize) -> (Verdict, usize) {
    (Verdict::ToHost, len)
}

fn buffers_of(ring: &Ring) -> HashSet<u32> {
    (0..ring.num_slots())
        .map(|i| ring.slot(i).unwrap().buf_idx)
        .collect()
}

#[test]
fn netmap_interface_finds_rings_in_netmap_if_order() {
    let dev = Device::new(spec(2, 8));
    let nifp = dev.interface();
    assert_eq!((nifp.tx_rings, nifp.rx_rings), (2, 2));
    assert_eq!(nifp.host_tx_rings, 1);
    // Table order NIC TX, host TX, NIC RX, host RX: ring 1 of each
    // kind is told apart by its id and direction fields.
    let header = |r: &Ring| {
        // SAFETY: the ring's header lies inside the fake mapping.
        unsafe {
            (
                (&raw const (*r.header()).ringid).read(),
                (&raw const (*r.header()).dir).read(),
            )
        }
    };
    assert_eq!(header(&nifp.tx_ring(1).unwrap()), (1, 0));
    assert_eq!(header(&nifp.host_tx_ring().unwrap()), (2, 0));
    assert_eq!(header(&nifp.rx_ring(1).unwrap()), (1, 1));
    assert_eq!(header(&nifp.host_rx_ring().unwrap()), (2, 1));
    assert!(nifp.tx_ring(2).is_err());
    assert!(nifp.rx_ring(2).is_err());
    // Every slot starts with a buffer of its own, 0 and 1 reserved.
    let mut all = dev.slot_buffers();
    all.sort_unstable();
    assert_eq!(all, (2..dev.buffers).collect::<Vec<_>>());
}

#[test]
fn netmap_ring_next_and_space_follow_netmap_user_h() {
    let dev = Device::new(spec(1, 8));
    let nifp = dev.interface();
    let mut ring = nifp.rx_ring(0).unwrap();
    assert_eq!(ring.next(0), 1);
    assert_eq!(ring.next(6), 7);
    assert_eq!(ring.next(7), 0);
    assert_eq!(ring.space(), 0, "an RX ring starts empty");
    ring.set_tail(5);
    assert_eq!(ring.space(), 5);
    ring.advance(6);
    assert_eq!((ring.head(), ring.cur()), (6, 6));
    assert_eq!(ring.space(), 7, "tail behind head wraps: 5 + 8 - 6");
    ring.advance(8);
    assert_eq!(ring.head(), 6, "a head outside the ring is ignored");
    ring.set_tail(9);
    assert_eq!(ring.space(), 0, "a tail outside the ring gives no space");
    let tx = nifp.tx_ring(0).unwrap();
    assert_eq!(tx.space(), 7, "a TX ring starts with all but one slot free");
}

#[test]
fn netmap_interface_rejects_rings_outside_the_mapping() {
    let dev = Device::new(spec(1, 8));
    let table = dev.nifp_at + RING_OFS_AT;
    // NIC TX ring 0's offset pointing past the end.
    let write = |at: usize, v: i64| {
        let p = dev.map.at(at, 8).unwrap();
        // SAFETY: inside the fake mapping; unaligned write of an i64.
        unsafe { p.cast::<i64>().write_unaligned(v) };
    };
    let read = |at: usize| {
        let p = dev.map.at(at, 8).unwrap();
        // SAFETY: as above.
        unsafe { p.cast::<i64>().read_unaligned() }
    };
    let saved = read(table);
    write(table, 0);
    let err = dev.interface().tx_ring(0).err().unwrap();
    assert!(err.contains("not in this registration"), "{err}");
    write(table, 1 << 40);
    assert!(dev.interface().tx_ring(0).is_err());
    write(table, -(1 << 20));
    assert!(dev.interface().tx_ring(0).is_err());
    write(table, saved);
    assert!(dev.interface().tx_ring(0).is_ok());
    // A ring claiming more slots than the mapping holds.
    let ring_at = (dev.nifp_at as i64 + saved) as usize;
    let slots = dev.map.at(ring_at + 8, 4).unwrap();
    // SAFETY: inside the fake mapping.
    unsafe { slots.cast::<u32>().write_unaligned(1 << 30) };
    let err = dev.interface().tx_ring(0).err().unwrap();
    assert!(err.contains("outside the mapping"), "{err}");
    // SAFETY: as above.
    unsafe { slots.cast::<u32>().write_unaligned(8) };
    // A head the kernel never gives.
    let head = dev.map.at(ring_at + 20, 4).unwrap();
    // SAFETY: as above.
    unsafe { head.cast::<u32>().write_unaligned(8) };
    let err = dev.interface().tx_ring(0).err().unwrap();
    assert!(err.contains("head 8"), "{err}");
}

#[test]
fn netmap_forward_swaps_buffers_into_the_nic_tx_ring() {
    let dev = Device::new(spec(1, 16));
    let mut port = dev.port(0, true);
    let rx_buffers = buffers_of(&dev.interface().rx_ring(0).unwrap());
    let frames: Vec<Vec<u8>> = (0..10).map(|i| frame(i, 60 + i as usize)).collect();
    port.kernel_mut().wire_in.extend(frames.iter().cloned());
    // Rewrite in place and grow by 4 bytes, as encapsulation does.
    pump(&mut port, 64, 10, |buf, len| {
        buf[4] ^= 0xff;
        buf[len..len + 4].copy_from_slice(b"grew");
        (Verdict::Forward, len + 4)
    });
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    assert!(k.host_in.is_empty());
    assert_eq!(k.wire_out.len(), frames.len());
    for (sent, original) in k.wire_out.iter().zip(&frames) {
        let mut want = original.clone();
        want[4] ^= 0xff;
        want.extend_from_slice(b"grew");
        assert_eq!(sent.frame, want);
        let buf = sent.buf_idx.unwrap();
        assert!(
            rx_buffers.contains(&buf),
            "sent from RX buffer {buf}: no copy"
        );
    }
    assert_eq!(port.take_counts(), PortCounts::default());
    let mut all = dev.slot_buffers();
    all.sort_unstable();
    assert_eq!(all, (2..dev.buffers).collect::<Vec<_>>());
}

#[test]
fn netmap_to_host_frames_go_up_through_the_host_tx_ring() {
    let dev = Device::new(spec(1, 16));
    let mut port = dev.port(0, true);
    let rx_buffers = buffers_of(&dev.interface().rx_ring(0).unwrap());
    let frames: Vec<Vec<u8>> = (0..12).map(|i| frame(i, 100)).collect();
    port.kernel_mut().wire_in.extend(frames.iter().cloned());
    pump(&mut port, 5, 20, to_host);
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    assert!(k.wire_out.is_empty());
    let got: Vec<&Vec<u8>> = k.host_in.iter().map(|s| &s.frame).collect();
    assert_eq!(
        got,
        frames.iter().collect::<Vec<_>>(),
        "unchanged, in order"
    );
    assert!(
        k.host_in
            .iter()
            .all(|s| s.buf_idx.is_some_and(|b| rx_buffers.contains(&b))),
        "each went up in the buffer it arrived in"
    );
    assert_eq!(port.take_counts(), PortCounts::default());
}

#[test]
fn netmap_to_host_without_host_rings_goes_up_through_ns_forward() {
    let dev = Device::new(spec(2, 16));
    // Pair 1 of 2: the host rings belong to pair 0's port.
    let mut port = dev.port(1, false);
    assert!(port.host.is_none());
    let rx_buffers = buffers_of(&dev.interface().rx_ring(1).unwrap());
    let frames: Vec<Vec<u8>> = (0..20).map(|i| frame(i, 80)).collect();
    port.kernel_mut().wire_in.extend(frames.iter().cloned());
    pump(&mut port, 7, 20, to_host);
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    let got: Vec<&Vec<u8>> = k.host_in.iter().map(|s| &s.frame).collect();
    assert_eq!(got, frames.iter().collect::<Vec<_>>());
    assert!(
        k.host_in.iter().all(|s| s.buf_idx.is_none()),
        "the kernel copies NS_FORWARD frames up"
    );
    assert_eq!(
        buffers_of(&dev.interface().rx_ring(1).unwrap()),
        rx_buffers,
        "no buffer left the RX ring"
    );
}

#[test]
fn netmap_host_frames_go_out_of_the_nic_unchanged() {
    let dev = Device::new(spec(1, 16));
    let mut port = dev.port(0, true);
    let host_buffers = buffers_of(&dev.interface().host_rx_ring().unwrap());
    let frames: Vec<Vec<u8>> = (0..25).map(|i| frame(i, 200 + i as usize)).collect();
    port.kernel_mut().host_out.extend(frames.iter().cloned());
    let mut decided = 0;
    pump(&mut port, 8, 20, |_, len| {
        decided += 1;
        (Verdict::Forward, len)
    });
    assert_eq!(decided, 0, "the host's frames skip the pipeline");
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    let got: Vec<&Vec<u8>> = k.wire_out.iter().map(|s| &s.frame).collect();
    assert_eq!(got, frames.iter().collect::<Vec<_>>());
    assert!(
        k.wire_out[..15]
            .iter()
            .all(|s| s.buf_idx.is_some_and(|b| host_buffers.contains(&b))),
        "the first ring's worth left in the host RX ring's own buffers"
    );
    let counts = port.take_counts();
    assert_eq!(counts.from_host, 25);
    assert_eq!(counts.from_host_dropped, 0);
}

#[test]
fn netmap_full_tx_ring_drops_and_keeps_receiving() {
    let dev = Device::new(spec(1, 8));
    let mut port = dev.port(0, true);
    port.kernel_mut().stalled = true;
    let frames: Vec<Vec<u8>> = (0..30).map(|i| frame(i, 64)).collect();
    port.kernel_mut().wire_in.extend(frames.iter().cloned());
    port.kernel_mut()
        .host_out
        .extend((100..103).map(|i| frame(i, 64)));
    pump(&mut port, 4, 100, forward);
    let counts = port.take_counts();
    {
        let k = port.kernel_mut();
        assert_eq!(k.errors, Vec::<String>::new());
        assert!(k.wire_in.is_empty(), "RX went on while TX was full");
        assert!(k.host_out.is_empty(), "so did the host RX ring");
        assert!(k.wire_out.is_empty(), "a stalled NIC sent nothing");
    }
    // 7 of 8 slots take frames; every other frame is dropped and counted.
    assert_eq!(counts.tx_full + counts.from_host_dropped, 30 + 3 - 7);
    assert_eq!(counts.from_host + 30 - counts.tx_full, 7);
    // The NIC comes back: what was queued goes out, new frames follow.
    port.kernel_mut().stalled = false;
    port.kernel_mut()
        .wire_in
        .extend((200..205).map(|i| frame(i, 64)));
    pump(&mut port, 4, 20, forward);
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    assert_eq!(k.wire_out.len(), 7 + 5);
    let last: Vec<&Vec<u8>> = k.wire_out[7..].iter().map(|s| &s.frame).collect();
    let want: Vec<Vec<u8>> = (200..205).map(|i| frame(i, 64)).collect();
    assert_eq!(last, want.iter().collect::<Vec<_>>());
    assert_eq!(port.take_counts().tx_full, 0);
}

#[test]
fn netmap_full_host_tx_ring_counts_to_host_failed() {
    let dev = Device::new(spec(1, 8));
    let mut port = dev.port(0, true);
    port.kernel_mut().host_stalled = true;
    port.kernel_mut()
        .wire_in
        .extend((0..20).map(|i| frame(i, 64)));
    pump(&mut port, 4, 100, to_host);
    let counts = port.take_counts();
    assert_eq!(counts.host_failed, 20 - 7, "7 of 8 slots took frames");
    assert!(port.kernel_mut().wire_in.is_empty());
    port.kernel_mut().host_stalled = false;
    pump(&mut port, 4, 10, to_host);
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    let got: Vec<&Vec<u8>> = k.host_in.iter().map(|s| &s.frame).collect();
    let want: Vec<Vec<u8>> = (0..7).map(|i| frame(i, 64)).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>());
}

#[test]
fn netmap_fake_kernel_catches_a_buffer_swap_without_ns_buf_changed() {
    // The tests above trust `errors`: check that it sees a broken swap.
    let dev = Device::new(spec(1, 8));
    let mut port = dev.port(0, true);
    let slot = port.tx.slot(0).unwrap();
    port.tx.set_slot(
        0,
        Slot {
            buf_idx: slot.buf_idx + 1,
            len: 60,
            ..slot
        },
    );
    port.tx.advance(1);
    port.kernel_mut().txsync();
    let errors = &port.kernel_mut().errors;
    assert!(
        errors.iter().any(|e| e.contains("without NS_BUF_CHANGED")),
        "{errors:?}"
    );
}

#[test]
fn netmap_failed_syncs_are_counted_and_lose_nothing() {
    let dev = Device::new(spec(1, 8));
    let mut port = dev.port(0, true);
    port.kernel_mut()
        .wire_in
        .extend((0..5).map(|i| frame(i, 64)));
    port.kernel_mut().failing = true;
    for _ in 0..10 {
        assert_eq!(port.poll(8, forward), 0);
    }
    assert_eq!(
        port.take_counts().ring_errors,
        10,
        "one failed RX sync per poll"
    );
    port.kernel_mut().failing = false;
    pump(&mut port, 8, 10, forward);
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    assert_eq!(
        k.wire_out.len(),
        5,
        "the device came back and nothing was lost"
    );
}

#[test]
fn netmap_rings_wrap_around_many_times() {
    // Four slots: three usable, so indices wrap every few frames.
    let dev = Device::new(spec(1, 4));
    let mut port = dev.port(0, true);
    let mut sent_out = Vec::new();
    let mut sent_up = Vec::new();
    let mut decisions = 0u32;
    let (mut last_head, mut wraps) = (0, 0);
    for round in 0..500u32 {
        let n = 1 + round % 5;
        for j in 0..n {
            port.kernel_mut()
                .wire_in
                .push_back(frame(round * 8 + j, 60));
        }
        pump(&mut port, 1 + (round % 3) as usize, 50, |buf, len| {
            decisions += 1;
            if buf[3] % 2 == 0 {
                (Verdict::Forward, len)
            } else {
                (Verdict::ToHost, len)
            }
        });
        let head = port.rx.head();
        if head < last_head {
            wraps += 1;
        }
        last_head = head;
        let k = port.kernel_mut();
        sent_out.append(&mut k.wire_out);
        sent_up.append(&mut k.host_in);
    }
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    let all: Vec<u32> = (0..500u32)
        .flat_map(|r| (0..1 + r % 5).map(move |j| r * 8 + j))
        .collect();
    assert_eq!(decisions as usize, all.len());
    let even: Vec<Vec<u8>> = all
        .iter()
        .filter(|i| *i % 2 == 0)
        .map(|&i| frame(i, 60))
        .collect();
    let odd: Vec<Vec<u8>> = all
        .iter()
        .filter(|i| *i % 2 == 1)
        .map(|&i| frame(i, 60))
        .collect();
    assert_eq!(
        sent_out.iter().map(|s| s.frame.clone()).collect::<Vec<_>>(),
        even
    );
    assert_eq!(
        sent_up.iter().map(|s| s.frame.clone()).collect::<Vec<_>>(),
        odd
    );
    assert!(wraps > 100, "the RX ring's head went round {wraps} times");
    assert_eq!(port.take_counts(), PortCounts::default());
}

#[test]
fn netmap_frames_longer_than_a_buffer_are_dropped_and_counted() {
    let dev = Device::new(Spec {
        pairs: 1,
        slots: 16,
        buf_size: 256,
    });
    let mut port = dev.port(0, true);
    let k = port.kernel_mut();
    k.wire_in.push_back(frame(1, 100));
    k.wire_in.push_back(frame(2, 600)); // three slots
    k.wire_in.push_back(frame(3, 100));
    k.host_out.push_back(frame(4, 513)); // three slots
    k.host_out.push_back(frame(5, 90));
    k.wire_in.push_back(frame(6, 256)); // exactly one buffer: fits
    let mut seen = Vec::new();
    pump(&mut port, 2, 20, |buf, len| {
        seen.push(buf[3]);
        (Verdict::Forward, len)
    });
    assert_eq!(
        seen,
        vec![1, 3, 6],
        "the long frame never reached the pipeline"
    );
    let counts = port.take_counts();
    assert_eq!(counts.too_long, 2, "one from the wire, one from the host");
    assert_eq!((counts.from_host, counts.from_host_dropped), (1, 0));
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    let out: HashSet<u8> = k.wire_out.iter().map(|s| s.frame[3]).collect();
    assert_eq!(out, HashSet::from([1, 3, 5, 6]));
}

#[test]
fn netmap_million_frames_lose_and_duplicate_no_buffer() {
    let dev = Device::new(spec(1, 64));
    let mut port = dev.port(0, true);
    let shapes: Vec<Vec<u8>> = (0..8).map(|i| frame(i, 60 + 190 * i as usize)).collect();
    const FRAMES: u64 = 1_000_000;
    let (mut pushed, mut host_pushed) = (0u64, 0u64);
    let (mut out, mut up) = (0u64, 0u64);
    let mut decided = [0u64; 4];
    let mut counts = PortCounts::default();
    let mut seq = 0u64;
    let mut decide = |buf: &mut [u8], len: usize| {
        seq += 1;
        let v = match seq % 7 {
            0..=2 => Verdict::Forward,
            3 | 4 => Verdict::ToHost,
            5 => Verdict::Drop(DropReason::NoBackend),
            _ => Verdict::Reply(DropReason::TooBig),
        };
        decided[match v {
            Verdict::Forward => 0,
            Verdict::ToHost => 1,
            Verdict::Drop(_) => 2,
            Verdict::Reply(_) => 3,
        }] += 1;
        buf[0] = buf[0].wrapping_add(1);
        (v, len)
    };
    let mut round = 0u64;
    while pushed < FRAMES || !port.kernel_mut().wire_in.is_empty() {
        round += 1;
        let k = port.kernel_mut();
        // Bursts larger than the ring now and then, host traffic, and a
        // NIC that stalls for a while every so often.
        let burst = if round.is_multiple_of(97) { 150 } else { 40 };
        for _ in 0..burst {
            if pushed < FRAMES {
                k.wire_in.push_back(shapes[(pushed % 8) as usize].clone());
                pushed += 1;
            }
        }
        if round.is_multiple_of(3) {
            k.host_out.push_back(shapes[(round % 8) as usize].clone());
            host_pushed += 1;
        }
        k.stalled = round % 500 < 20;
        port.poll(32, &mut decide);
        let c = port.take_counts();
        counts.tx_full += c.tx_full;
        counts.host_failed += c.host_failed;
        counts.from_host += c.from_host;
        counts.from_host_dropped += c.from_host_dropped;
        counts.too_long += c.too_long;
        let k = port.kernel_mut();
        assert!(k.errors.is_empty(), "round {round}: {:?}", k.errors);
        out += k.wire_out.len() as u64;
        up += k.host_in.len() as u64;
        k.wire_out.clear();
        k.host_in.clear();
    }
    // Let everything queued leave.
    port.kernel_mut().stalled = false;
    pump(&mut port, 32, 100, &mut decide);
    port.drain(Duration::from_millis(10));
    let c = port.take_counts();
    counts.from_host += c.from_host;
    counts.from_host_dropped += c.from_host_dropped;
    counts.tx_full += c.tx_full;
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    out += k.wire_out.len() as u64;
    up += k.host_in.len() as u64;

    assert_eq!(
        decided.iter().sum::<u64>(),
        FRAMES,
        "every frame decided once"
    );
    assert_eq!(counts.too_long, 0);
    assert!(counts.tx_full > 0, "the stalls filled the TX ring");
    assert_eq!(
        out,
        decided[0] + decided[3] - counts.tx_full + counts.from_host
    );
    assert_eq!(up, decided[1] - counts.host_failed);
    assert_eq!(counts.from_host + counts.from_host_dropped, host_pushed);
    // Every buffer is in exactly one slot.
    let mut all = dev.slot_buffers();
    all.sort_unstable();
    assert_eq!(all, (2..dev.buffers).collect::<Vec<_>>());
}

#[test]
fn netmap_drain_gives_up_on_a_stalled_nic_and_empties_a_live_one() {
    let dev = Device::new(spec(1, 8));
    let mut port = dev.port(0, true);
    port.kernel_mut().stalled = true;
    port.kernel_mut()
        .wire_in
        .extend((0..5).map(|i| frame(i, 64)));
    pump(&mut port, 8, 5, forward);
    let started = Instant::now();
    port.drain(Duration::from_millis(30));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(30), "it waited: {waited:?}");
    assert!(waited < Duration::from_secs(2), "and gave up: {waited:?}");
    assert!(port.kernel_mut().wire_out.is_empty());
    port.kernel_mut().stalled = false;
    port.drain(Duration::from_secs(1));
    assert_eq!(port.kernel_mut().wire_out.len(), 5);
    assert_eq!(Port::<fake::Kernel>::in_flight(&port.tx), 0);
}

#[test]
fn netmap_open_without_netmap_says_so_in_one_line() {
    if std::path::Path::new("/dev/netmap").exists() {
        eprintln!("skipped: this host has /dev/netmap, so opening it may succeed");
        return;
    }
    let one = Info {
        tx_rings: 1,
        rx_rings: 1,
    };
    let err = open("lo", 0, &one).err().expect("no /dev/netmap here");
    assert!(matches!(err, Error::Open(_)), "{err}");
    let line = err.to_string();
    assert!(
        line.contains("/dev/netmap") && line.contains("kldload netmap"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    assert!(matches!(info("lo"), Err(Error::Open(_))));
}

#[test]
fn netmap_names_are_checked_before_any_ioctl() {
    for bad in ["", "sixteen-bytes-xx", "a\0b"] {
        assert!(matches!(request(bad), Err(Error::Name(_))), "{bad:?}");
    }
    let req = request("vtnet0").unwrap();
    assert_eq!(req.nr_version, API);
    assert_eq!(
        req.nr_name[..7]
            .iter()
            .map(|&c| c as u8)
            .collect::<Vec<_>>(),
        b"vtnet0\0"
    );
}

#[test]
fn netmap_port_runs_the_worker_pipeline() {
    use crate::config::Idle;
    use crate::dataplane::worker::tests::{NODE, NODE_MAC, frame as gre, mac_of, snapshot};
    use crate::dataplane::worker::{self, Settings, Shared, Stats};
    use etherparse::{LinkHeader, NetSlice, SlicedPacket};
    use std::net::{IpAddr, Ipv4Addr};

    let backend = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    let shared = Shared::new(snapshot(1, &["10.1.0.1"]), None);
    let stats = Stats::default();
    let dev = Device::new(spec(1, 32));
    let mut port = dev.port(0, true);
    let gre: Vec<Vec<u8>> = (0..50).map(gre).collect();
    // An ARP request is the host's business.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 10, 9, 0, 200]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 9, 0, 1]);
    arp.resize(60, 0);
    let host_frame = frame(7, 90);
    {
        let k = port.kernel_mut();
        k.wire_in.extend(gre.iter().cloned());
        k.wire_in.push_back(arp.clone());
        k.host_out.push_back(host_frame.clone());
    }
    let settings = Settings {
        batch: 16,
        idle: Idle::Spin,
        idle_spin: Duration::ZERO,
    };
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| worker::run(&mut port, &shared, &stats, settings));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let t = stats.read();
            if t.rx == 51 && t.from_host == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        worker.join().unwrap();
    });
    let t = stats.read();
    assert_eq!((t.rx, t.tx, t.to_host, t.from_host), (51, 50, 1, 1));
    let k = port.kernel_mut();
    assert_eq!(k.errors, Vec::<String>::new());
    assert_eq!(k.host_in.len(), 1);
    assert_eq!(k.host_in[0].frame, arp, "the ARP request went up unchanged");
    assert_eq!(k.wire_out.len(), 51);
    let mut out = 0;
    for sent in &k.wire_out {
        if sent.frame == host_frame {
            continue;
        }
        out += 1;
        let p = SlicedPacket::from_ethernet(&sent.frame).unwrap();
        let Some(LinkHeader::Ethernet2(eth)) = p.link.as_ref().unwrap().to_header() else {
            panic!("not Ethernet II")
        };
        assert_eq!(eth.destination, mac_of(backend).0);
        assert_eq!(eth.source, NODE_MAC);
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination(), [10, 1, 0, 1]);
        assert_eq!(ip.header().source(), NODE);
    }
    assert_eq!(out, 50, "every GRE frame went to the backend");
}
