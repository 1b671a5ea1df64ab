//! An in-memory netmap for the tests. The memory is laid out as
//! netmap_mem2.c lays it out (a `netmap_if` with its ring offset table,
//! rings with a 256-byte header and 16-byte slots, one buffer pool that
//! every ring addresses by index from its `buf_ofs`; buffers 0 and 1
//! reserved), and the kernel side keeps netmap.c's rules: the user owns
//! `head..tail`, a sync takes the slots from the kernel's `hwcur` up to
//! `head`, an RX ring is filled up to one slot short of `hwcur`, a slot
//! whose buffer changed must say `NS_BUF_CHANGED`. Breaking a rule is
//! recorded in `errors`, where the real kernel would reset the ring.

use super::*;
use std::collections::VecDeque;

/// The shape of a fake device.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// NIC ring pairs (one host pair is always there).
    pub pairs: u32,
    pub slots: u32,
    pub buf_size: u32,
}

/// A frame that left through a ring, with the buffer it left in (None
/// when the kernel copied it up from an `NS_FORWARD` slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub buf_idx: Option<u32>,
    pub frame: Vec<u8>,
}

/// The memory of a fake device.
pub struct Device {
    pub map: Arc<Mapping>,
    pub nifp_at: usize,
    /// Buffers in the pool, the two reserved ones included.
    pub buffers: u32,
    pub spec: Spec,
}

const RESERVED: u32 = 2;

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Writes `value` at byte `at` of the mapping.
fn put<T: Copy>(map: &Mapping, at: usize, value: T) {
    let p = map.at(at, size_of::<T>()).expect("inside the fake mapping");
    // SAFETY: `at` lies inside the mapping (checked by `Mapping::at`);
    // unaligned writes are allowed for any `T: Copy`.
    unsafe { p.cast::<T>().write_unaligned(value) };
}

impl Device {
    /// Lays out a device with every slot holding its own buffer: TX rings
    /// empty (tail = slots - 1), RX rings with nothing received.
    pub fn new(spec: Spec) -> Device {
        let rings = 2 * (spec.pairs + 1);
        let nifp_at = 64;
        let ring_size = align(SLOTS_AT + spec.slots as usize * SLOT_SIZE, 128);
        let first_ring = align(nifp_at + RING_OFS_AT + rings as usize * 8, 128);
        let bufs_at = align(first_ring + rings as usize * ring_size, 4096);
        let buffers = RESERVED + rings * spec.slots;
        let len = bufs_at + buffers as usize * spec.buf_size as usize;
        let map = Mapping::zeroed(len);
        put(&map, nifp_at, *b"fake0\0\0\0\0\0\0\0\0\0\0\0");
        put(&map, nifp_at + 16, API);
        put(&map, nifp_at + 24, spec.pairs);
        put(&map, nifp_at + 28, spec.pairs);
        put(&map, nifp_at + 36, 1u32);
        put(&map, nifp_at + 40, 1u32);
        let mut next_buf = RESERVED;
        // Table order: NIC TX, host TX, NIC RX, host RX.
        for n in 0..rings {
            let at = first_ring + n as usize * ring_size;
            let tx = n <= spec.pairs;
            let id = if tx { n } else { n - spec.pairs - 1 };
            put(
                &map,
                nifp_at + RING_OFS_AT + n as usize * 8,
                (at - nifp_at) as i64,
            );
            put(&map, at, (bufs_at - at) as i64);
            put(&map, at + 8, spec.slots);
            put(&map, at + 12, spec.buf_size);
            put(&map, at + 16, id as u16);
            put(&map, at + 18, u16::from(!tx));
            put(&map, at + 28, if tx { spec.slots - 1 } else { 0 });
            for s in 0..spec.slots as usize {
                put(&map, at + SLOTS_AT + s * SLOT_SIZE, next_buf);
                next_buf += 1;
            }
        }
        Device {
            map: Arc::new(map),
            nifp_at,
            buffers,
            spec,
        }
    }

    pub fn interface(&self) -> Interface {
        Interface::new(Arc::clone(&self.map), self.nifp_at).expect("the fake layout is valid")
    }

    /// The buffer index of every slot of every ring.
    pub fn slot_buffers(&self) -> Vec<u32> {
        let nifp = self.interface();
        let mut rings = Vec::new();
        for i in 0..self.spec.pairs {
            rings.push(nifp.tx_ring(i).unwrap());
            rings.push(nifp.rx_ring(i).unwrap());
        }
        rings.push(nifp.host_tx_ring().unwrap());
        rings.push(nifp.host_rx_ring().unwrap());
        rings
            .iter()
            .flat_map(|r| (0..r.num_slots()).map(|i| r.slot(i).unwrap().buf_idx))
            .collect()
    }

    /// The port for NIC pair `pair`, with the host rings or without, and
    /// the kernel under it.
    pub fn port(&self, pair: u32, host: bool) -> Port<Kernel> {
        let nifp = self.interface();
        let user = |r: Result<Ring, String>| r.expect("the fake layout is valid");
        let host_rings = host.then(|| Host {
            rx: user(nifp.host_rx_ring()),
            tx: user(nifp.host_tx_ring()),
        });
        let kernel = Kernel {
            rx: KRing::new(user(nifp.rx_ring(pair)), true),
            tx: KRing::new(user(nifp.tx_ring(pair)), false),
            host: host.then(|| {
                (
                    KRing::new(user(nifp.host_rx_ring()), false),
                    KRing::new(user(nifp.host_tx_ring()), false),
                )
            }),
            buffers: self.buffers,
            wire_in: VecDeque::new(),
            host_out: VecDeque::new(),
            wire_out: Vec::new(),
            host_in: Vec::new(),
            pending: VecDeque::new(),
            host_pending: VecDeque::new(),
            stalled: false,
            host_stalled: false,
            failing: false,
            errors: Vec::new(),
        };
        Port::new(
            kernel,
            user(nifp.rx_ring(pair)),
            user(nifp.tx_ring(pair)),
            host_rings,
        )
    }
}

/// The kernel's view of one ring.
pub struct KRing {
    ring: Ring,
    /// The user's `head` at the last sync.
    hwcur: u32,
    hwtail: u32,
    /// Buffer of each slot as the kernel last saw it.
    shadow: Vec<u32>,
    /// A NIC RX ring (whose `NS_FORWARD` slots may go up to the host).
    nic_rx: bool,
}

impl KRing {
    fn new(ring: Ring, nic_rx: bool) -> KRing {
        let shadow = (0..ring.num_slots())
            .map(|i| ring.slot(i).unwrap().buf_idx)
            .collect();
        KRing {
            hwcur: ring.head(),
            hwtail: ring.tail(),
            shadow,
            nic_rx,
            ring,
        }
    }

    /// Whether `x` lies on the way from `a` to `b` (both included).
    fn between(&self, a: u32, x: u32, b: u32) -> bool {
        let n = self.ring.num_slots();
        (x + n - a) % n <= (b + n - a) % n
    }

    fn prev(&self, i: u32) -> u32 {
        if i == 0 {
            self.ring.num_slots() - 1
        } else {
            i - 1
        }
    }

    /// The user's head and cur, if they obey the sync prologue's rules.
    fn prologue(&self, what: &str, errors: &mut Vec<String>) -> Option<u32> {
        let (head, cur) = (self.ring.head(), self.ring.cur());
        if head >= self.ring.num_slots()
            || !self.between(self.hwcur, head, self.hwtail)
            || !self.between(head, cur, self.hwtail)
        {
            errors.push(format!(
                "{what}: head {head} cur {cur} outside hwcur {} .. hwtail {}",
                self.hwcur, self.hwtail
            ));
            return None;
        }
        Some(head)
    }

    /// Takes back the slots from `hwcur` to `head`, checking each one;
    /// returns them as (buffer, bytes, flags).
    fn take(
        &mut self,
        head: u32,
        what: &str,
        buffers: u32,
        errors: &mut Vec<String>,
    ) -> Vec<(u32, Vec<u8>, u16)> {
        let mut out = Vec::new();
        let mut k = self.hwcur;
        while k != head {
            let slot = self.ring.slot(k).unwrap();
            if slot.buf_idx != self.shadow[k as usize] && slot.flags & NS_BUF_CHANGED == 0 {
                errors.push(format!(
                    "{what}: slot {k} changed buffer without NS_BUF_CHANGED"
                ));
            }
            if slot.buf_idx < RESERVED || slot.buf_idx >= buffers {
                errors.push(format!("{what}: slot {k} holds buffer {}", slot.buf_idx));
            }
            let len = usize::from(slot.len).min(self.ring.buf_size());
            let bytes = self
                .ring
                .buf(slot.buf_idx)
                .map(|b| b[..len].to_vec())
                .unwrap_or_default();
            out.push((slot.buf_idx, bytes, slot.flags));
            self.shadow[k as usize] = slot.buf_idx;
            // The kernel clears the flags it acted on.
            self.ring.set_slot(
                k,
                Slot {
                    flags: slot.flags & !(NS_BUF_CHANGED | NS_FORWARD),
                    ..slot
                },
            );
            k = self.ring.next(k);
        }
        self.hwcur = head;
        out
    }

    /// RX: hands back the slots the user released, then fills frames
    /// from `source` up to one slot short of `hwcur`, splitting frames
    /// longer than a buffer over slots marked `NS_MOREFRAG`.
    fn rxsync(
        &mut self,
        what: &str,
        source: &mut VecDeque<Vec<u8>>,
        buffers: u32,
        errors: &mut Vec<String>,
        up: &mut Vec<Sent>,
    ) {
        let Some(head) = self.prologue(what, errors) else {
            return;
        };
        let forward = self.ring.flags() & NR_FORWARD != 0;
        for (_, bytes, flags) in self.take(head, what, buffers, errors) {
            if self.nic_rx && forward && flags & NS_FORWARD != 0 {
                up.push(Sent {
                    buf_idx: None,
                    frame: bytes,
                });
            }
        }
        let size = self.ring.buf_size();
        while let Some(frame) = source.front() {
            let parts = frame.len().div_ceil(size).max(1) as u32;
            let n = self.ring.num_slots();
            let free = (self.hwcur + n - 1 - self.hwtail) % n;
            if parts > free {
                break;
            }
            let frame = source.pop_front().unwrap();
            for (p, chunk) in frame.chunks(size).enumerate() {
                let k = self.hwtail;
                let slot = self.ring.slot(k).unwrap();
                self.ring.buf(slot.buf_idx).unwrap()[..chunk.len()].copy_from_slice(chunk);
                let more = (p as u32) + 1 < parts;
                self.ring.set_slot(
                    k,
                    Slot {
                        len: chunk.len() as u16,
                        flags: if more { NS_MOREFRAG } else { 0 },
                        ..slot
                    },
                );
                self.hwtail = self.ring.next(k);
            }
        }
        self.ring.set_tail(self.hwtail);
    }

    /// TX: takes the slots the user queued into `queued`; unless
    /// `stalled`, sends everything queued and gives all slots back.
    fn txsync(
        &mut self,
        what: &str,
        queued: &mut VecDeque<Sent>,
        out: &mut Vec<Sent>,
        stalled: bool,
        buffers: u32,
        errors: &mut Vec<String>,
    ) {
        let Some(head) = self.prologue(what, errors) else {
            return;
        };
        for (buf_idx, frame, flags) in self.take(head, what, buffers, errors) {
            if frame.is_empty() || flags & NS_MOREFRAG != 0 {
                errors.push(format!("{what}: queued an empty or partial frame"));
            }
            queued.push_back(Sent {
                buf_idx: Some(buf_idx),
                frame,
            });
        }
        if !stalled {
            out.extend(queued.drain(..));
            self.hwtail = self.prev(self.hwcur);
            self.ring.set_tail(self.hwtail);
        }
    }
}

/// The in-memory kernel under one port.
pub struct Kernel {
    rx: KRing,
    tx: KRing,
    /// Host RX and host TX.
    host: Option<(KRing, KRing)>,
    buffers: u32,
    /// Frames arriving at the NIC.
    pub wire_in: VecDeque<Vec<u8>>,
    /// Frames the host stack sends.
    pub host_out: VecDeque<Vec<u8>>,
    /// Frames the NIC sent.
    pub wire_out: Vec<Sent>,
    /// Frames the host stack received.
    pub host_in: Vec<Sent>,
    /// Frames on the NIC TX ring that a stalled NIC has not sent.
    pending: VecDeque<Sent>,
    host_pending: VecDeque<Sent>,
    /// The NIC sends nothing: its TX ring fills up.
    pub stalled: bool,
    /// The host stack takes nothing: the host TX ring fills up.
    pub host_stalled: bool,
    /// Every sync fails and changes nothing (the device went away).
    pub failing: bool,
    pub errors: Vec<String>,
}

impl super::Kernel for Kernel {
    fn txsync(&mut self) -> bool {
        if self.failing {
            return false;
        }
        self.tx.txsync(
            "NIC TX",
            &mut self.pending,
            &mut self.wire_out,
            self.stalled,
            self.buffers,
            &mut self.errors,
        );
        if let Some((_, tx)) = self.host.as_mut() {
            tx.txsync(
                "host TX",
                &mut self.host_pending,
                &mut self.host_in,
                self.host_stalled,
                self.buffers,
                &mut self.errors,
            );
        }
        true
    }

    fn rxsync(&mut self) -> bool {
        if self.failing {
            return false;
        }
        self.rx.rxsync(
            "NIC RX",
            &mut self.wire_in,
            self.buffers,
            &mut self.errors,
            &mut self.host_in,
        );
        if let Some((rx, _)) = self.host.as_mut() {
            rx.rxsync(
                "host RX",
                &mut self.host_out,
                self.buffers,
                &mut self.errors,
                &mut self.host_in,
            );
        }
        true
    }

    fn wait(&mut self, _timeout: Duration) {}
}
