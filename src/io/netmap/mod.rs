//! The netmap port (cargo feature `netmap`, `RR_BACKEND=netmap`).
//!
//! Each worker owns one NIC ring pair. The worker that owns the host
//! rings as well bridges them the way the original rusty rail ran "in
//! full passthrough mode": `ToHost` frames move to the host TX ring,
//! frames from the host RX ring move to the NIC TX ring. `Forward` and
//! `Reply` frames move to the NIC TX ring. Every move is zero-copy: the
//! RX slot and the TX slot swap buffer indices and both are flagged
//! `NS_BUF_CHANGED`. A worker without the host rings (ring pairs after
//! the first on a multi-queue NIC) flags its `ToHost` slots `NS_FORWARD`
//! on a ring marked `NR_FORWARD`, and the kernel copies them up at the
//! next RX sync. A full TX ring never holds RX back: the frame is dropped
//! and counted.
//!
//! # Which netmap API
//!
//! netmap_sys 0.1.4 describes the legacy control API: `struct nmreq`
//! with `NIOCGINFO`/`NIOCREGIF`, and `NETMAP_API` 11. Current netmap
//! (FreeBSD 12 and later, and netmap on Linux) speaks API 14
//! (`nmreq_header`, `NIOCCTRL`) and still converts legacy requests
//! (`netmap_legacy.c`), but refuses any `nr_version` below 14. So we
//! send netmap_sys's `nmreq` with `nr_version` 14: the one request
//! layout both systems accept, and the one netmap_sys defines. The
//! shared-memory structs (`netmap_if`, `netmap_ring`, `netmap_slot`) did
//! not move between the two APIs; the assertions below pin netmap_sys's
//! offsets to those of netmap.h. API 14 put the host ring counts in
//! what netmap_sys calls `ni_spare1[0..2]`; we read them there (zero,
//! from an older kernel, means one).
//!
//! netmap_user.h's inline helpers are reimplemented in [`Ring`] and
//! [`Interface`], checked against the mapping's bounds, so nothing outside
//! this module touches a raw pointer. The ioctl and poll layer is the
//! [`Kernel`] trait: [`Fds`] on a real device, an in-memory kernel with
//! the same ring rules in the tests.

use crate::dataplane::Verdict;
use crate::dataplane::worker::{self, PortCounts};
use netmap_sys::netmap::{
    NR_EXCLUSIVE, NR_FORWARD, NR_REG_NIC_SW, NR_REG_ONE_NIC, NR_REG_SW, NS_BUF_CHANGED, NS_FORWARD,
    NS_MOREFRAG, netmap_if, netmap_ring, netmap_slot, nmreq,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

/// The `nr_version` we send: the oldest current kernels accept.
pub const API: u32 = 14;

/// Where the slots start in a ring: after the header and the 128-byte
/// aligned `sem` (netmap.h).
const SLOTS_AT: usize = 256;
const SLOT_SIZE: usize = core::mem::size_of::<netmap_slot>();
/// `ring_ofs[]` in `netmap_if`.
const RING_OFS_AT: usize = core::mem::offset_of!(netmap_if, ring_ofs);

// netmap_sys's structs against netmap.h (API 11 through 14, LP64).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<netmap_slot>() == 16);
    assert!(offset_of!(netmap_slot, buf_idx) == 0);
    assert!(offset_of!(netmap_slot, len) == 4);
    assert!(offset_of!(netmap_slot, flags) == 6);
    assert!(offset_of!(netmap_slot, ptr) == 8);
    assert!(offset_of!(netmap_ring, buf_ofs) == 0);
    assert!(offset_of!(netmap_ring, num_slots) == 8);
    assert!(offset_of!(netmap_ring, nr_buf_size) == 12);
    assert!(offset_of!(netmap_ring, ringid) == 16);
    assert!(offset_of!(netmap_ring, dir) == 18);
    assert!(offset_of!(netmap_ring, head) == 20);
    assert!(offset_of!(netmap_ring, cur) == 24);
    assert!(offset_of!(netmap_ring, tail) == 28);
    assert!(offset_of!(netmap_ring, flags) == 32);
    assert!(offset_of!(netmap_ring, ts) == 40);
    assert!(offset_of!(netmap_ring, sem) == 128);
    assert!(offset_of!(netmap_ring, slot) == SLOTS_AT);
    assert!(offset_of!(netmap_if, ni_version) == 16);
    assert!(offset_of!(netmap_if, ni_tx_rings) == 24);
    assert!(offset_of!(netmap_if, ni_rx_rings) == 28);
    assert!(offset_of!(netmap_if, ni_bufs_head) == 32);
    assert!(offset_of!(netmap_if, ni_spare1) == 36);
    assert!(offset_of!(netmap_if, ring_ofs) == 56);
    assert!(size_of::<nmreq>() == 60);
};

/// Why a netmap port could not be opened. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open /dev/netmap: {0} (is netmap loaded, and are we root? FreeBSD: `kldload netmap` or a kernel with `device netmap`; Linux: the netmap module)"
    )]
    Open(std::io::Error),
    #[error("{device} is in netmap use by another program (another rusty_rail, pkt-gen?)")]
    Busy { device: String },
    #[error("RR_DEVICE={0:?}: a netmap port name is 1 to 15 bytes without NUL")]
    Name(String),
    #[error("netmap cannot {what} {device}: {source}")]
    Ioctl {
        what: &'static str,
        device: String,
        source: std::io::Error,
    },
    #[error("cannot map the netmap memory of {device}: {source}")]
    Map {
        device: String,
        source: std::io::Error,
    },
    #[error("the netmap memory of {device} is not laid out as expected: {message}")]
    Layout { device: String, message: String },
}

/// Memory holding netmap rings and buffers: the kernel's mapping, or the
/// tests' stand-in for it.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    owner: Owner,
}

enum Owner {
    Mmap,
    #[cfg(test)]
    Heap(std::alloc::Layout),
}

// SAFETY: a `Mapping` is plain memory with no thread affinity. Every
// access goes through `Ring`/`Interface`, whose owners (one worker per
// ring) never share a ring between threads.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read the immutable base/len.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        match self.owner {
            Owner::Mmap => {
                // SAFETY: `base`/`len` are exactly what mmap returned, and
                // no `Ring` is left to use them (each holds an `Arc` to us).
                unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
            }
            #[cfg(test)]
            Owner::Heap(layout) => {
                // SAFETY: allocated in `Mapping::zeroed` with this layout.
                unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
            }
        }
    }
}

impl Mapping {
    /// `len` zeroed bytes, page aligned, standing in for a kernel mapping.
    #[cfg(test)]
    fn zeroed(len: usize) -> Mapping {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("test layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).expect("test allocation");
        Mapping {
            base,
            len,
            owner: Owner::Heap(layout),
        }
    }

    /// The address of byte `at`, if `at + size` lies inside the mapping.
    fn at(&self, at: usize, size: usize) -> Option<*mut u8> {
        let end = at.checked_add(size)?;
        // SAFETY: `at` is inside the allocation (checked just above).
        (end <= self.len).then(|| unsafe { self.base.as_ptr().add(at) })
    }
}

/// One netmap slot: a buffer index, the frame length and flags.
type Slot = netmap_slot;

/// A netmap ring in a mapping: the netmap_user.h helpers, bounds-checked.
///
/// The user side owns slots `head..tail`; the kernel owns the rest and
/// moves `tail` only inside a sync. Every pointer this hands out was
/// checked against the mapping when the ring was made.
struct Ring {
    map: Arc<Mapping>,
    /// Offset of the `netmap_ring` in the mapping.
    at: usize,
    num_slots: u32,
    buf_size: usize,
    /// Offset of buffer 0 in the mapping (NETMAP_BUF's base).
    bufs_at: usize,
    /// Buffers from `bufs_at` that lie inside the mapping.
    bufs: u32,
}

impl Ring {
    /// The ring at `at` in `map`, checked: header and slots inside the
    /// mapping, sane sizes, and head/cur/tail inside the ring.
    fn new(map: Arc<Mapping>, at: usize) -> Result<Ring, String> {
        if !at.is_multiple_of(8) {
            return Err(format!("ring at {at} is misaligned"));
        }
        let header = map
            .at(at, SLOTS_AT)
            .ok_or_else(|| format!("ring at {at} lies outside the mapping"))?
            .cast::<netmap_ring>();
        // SAFETY: `header` points at SLOTS_AT bytes inside the mapping,
        // 8-byte aligned, which covers every field read here.
        let (num_slots, buf_size, buf_ofs) = unsafe {
            (
                (&raw const (*header).num_slots).read_volatile(),
                (&raw const (*header).nr_buf_size).read_volatile(),
                (&raw const (*header).buf_ofs).read_volatile(),
            )
        };
        if num_slots < 2 || buf_size < 64 {
            return Err(format!(
                "ring at {at} has {num_slots} slots of {buf_size}-byte buffers"
            ));
        }
        let slots = (num_slots as usize)
            .checked_mul(SLOT_SIZE)
            .and_then(|n| n.checked_add(SLOTS_AT))
            .ok_or_else(|| format!("ring at {at} is too large"))?;
        map.at(at, slots)
            .ok_or_else(|| format!("the slots of the ring at {at} lie outside the mapping"))?;
        let bufs_at = i64::try_from(at)
            .ok()
            .and_then(|a| a.checked_add(buf_ofs))
            .and_then(|b| usize::try_from(b).ok())
            .filter(|&b| b <= map.len)
            .ok_or_else(|| format!("the buffers of the ring at {at} lie outside the mapping"))?;
        let buf_size = buf_size as usize;
        let bufs = u32::try_from((map.len - bufs_at) / buf_size).unwrap_or(u32::MAX);
        let ring = Ring {
            map,
            at,
            num_slots,
            buf_size,
            bufs_at,
            bufs,
        };
        let (head, cur, tail) = (ring.head(), ring.cur(), ring.tail());
        if head >= num_slots || cur >= num_slots || tail >= num_slots {
            return Err(format!(
                "ring at {at} has head {head}, cur {cur}, tail {tail} for {num_slots} slots"
            ));
        }
        Ok(ring)
    }

    fn header(&self) -> *mut netmap_ring {
        // SAFETY: checked in `new`: the header lies inside the mapping.
        unsafe { self.map.base.as_ptr().add(self.at).cast() }
    }

    fn num_slots(&self) -> u32 {
        self.num_slots
    }

    fn buf_size(&self) -> usize {
        self.buf_size
    }

    fn head(&self) -> u32 {
        // SAFETY: the header is inside the mapping (see `header`); the
        // kernel writes this word only inside our own syscalls.
        unsafe { (&raw const (*self.header()).head).read_volatile() }
    }

    fn cur(&self) -> u32 {
        // SAFETY: as for `head`.
        unsafe { (&raw const (*self.header()).cur).read_volatile() }
    }

    fn tail(&self) -> u32 {
        // SAFETY: as for `head`.
        unsafe { (&raw const (*self.header()).tail).read_volatile() }
    }

    fn flags(&self) -> u32 {
        // SAFETY: as for `head`.
        unsafe { (&raw const (*self.header()).flags).read_volatile() }
    }

    fn set_flags(&mut self, flags: u32) {
        // SAFETY: as for `head`; `flags` is the user's to write.
        unsafe { (&raw mut (*self.header()).flags).write_volatile(flags) }
    }

    /// Hands slots up to `head` (exclusive) to the kernel: head and cur
    /// move together. Ignored unless `head` is a slot index.
    fn advance(&mut self, head: u32) {
        if head < self.num_slots {
            // SAFETY: as for `head`; head and cur are the user's to write.
            unsafe {
                (&raw mut (*self.header()).head).write_volatile(head);
                (&raw mut (*self.header()).cur).write_volatile(head);
            }
        }
    }

    /// nm_ring_next.
    #[inline]
    fn next(&self, i: u32) -> u32 {
        // `num_slots` is at least 2 (checked in `new`).
        if i >= self.num_slots - 1 { 0 } else { i + 1 }
    }

    /// nm_ring_space: frames to read on an RX ring, free slots on a TX
    /// ring. Zero if the kernel left `tail` outside the ring.
    #[inline]
    fn space(&self) -> u32 {
        let (head, tail) = (self.head(), self.tail());
        if tail >= self.num_slots || head >= self.num_slots {
            0
        } else if tail >= head {
            tail - head
        } else {
            tail + self.num_slots - head
        }
    }

    fn slot_ptr(&self, i: u32) -> Option<*mut netmap_slot> {
        (i < self.num_slots).then(|| {
            // SAFETY: `new` checked that all `num_slots` slots lie inside
            // the mapping, and `i` is one of them.
            unsafe {
                self.header()
                    .cast::<u8>()
                    .add(SLOTS_AT + i as usize * SLOT_SIZE)
                    .cast::<netmap_slot>()
            }
        })
    }

    /// Slot `i`, or None when the ring has no such slot.
    #[inline]
    fn slot(&self, i: u32) -> Option<Slot> {
        // SAFETY: `slot_ptr` only returns pointers to slots inside the
        // mapping, 8-byte aligned (ring and SLOTS_AT are).
        self.slot_ptr(i).map(|p| unsafe { p.read_volatile() })
    }

    /// Writes slot `i`; false when the ring has no such slot.
    #[inline]
    fn set_slot(&mut self, i: u32, slot: Slot) -> bool {
        match self.slot_ptr(i) {
            Some(p) => {
                // SAFETY: as in `slot`.
                unsafe { p.write_volatile(slot) };
                true
            }
            None => false,
        }
    }

    /// NETMAP_BUF: buffer `index` as bytes, or None when it would lie
    /// outside the mapping. The caller's slot must be on the user side.
    #[inline]
    fn buf(&mut self, index: u32) -> Option<&mut [u8]> {
        if index >= self.bufs {
            return None;
        }
        let at = self.bufs_at + index as usize * self.buf_size;
        // SAFETY: `index < bufs` puts the whole buffer inside the mapping.
        // The slot holding it is on the user side of its ring, so the
        // kernel leaves it alone until the next sync, which needs
        // `&mut self` of the port and so ends this borrow first.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.map.base.as_ptr().add(at), self.buf_size)
        })
    }

    /// The kernel's side, for the in-memory kernel of the tests.
    #[cfg(test)]
    fn set_tail(&mut self, tail: u32) {
        // SAFETY: as for `head`.
        unsafe { (&raw mut (*self.header()).tail).write_volatile(tail) }
    }
}

/// A `netmap_if`: the rings of one registration.
struct Interface {
    map: Arc<Mapping>,
    at: usize,
    tx_rings: u32,
    rx_rings: u32,
    host_tx_rings: u32,
}

impl Interface {
    /// The `netmap_if` at `at` in `map`, with its ring offset table
    /// inside the mapping.
    fn new(map: Arc<Mapping>, at: usize) -> Result<Interface, String> {
        if !at.is_multiple_of(8) {
            return Err(format!("netmap_if at {at} is misaligned"));
        }
        let nifp = map
            .at(at, RING_OFS_AT)
            .ok_or_else(|| format!("netmap_if at {at} lies outside the mapping"))?
            .cast::<netmap_if>();
        // SAFETY: the header (RING_OFS_AT bytes) is inside the mapping and
        // aligned; the kernel does not change it after registration.
        let (tx, rx, spare) = unsafe {
            (
                (&raw const (*nifp).ni_tx_rings).read_volatile(),
                (&raw const (*nifp).ni_rx_rings).read_volatile(),
                (&raw const (*nifp).ni_spare1).read_volatile(),
            )
        };
        // API 14's ni_host_tx_rings and ni_host_rx_rings; older kernels
        // left them zero and had one host ring pair.
        let (host_tx, host_rx) = (spare[0].max(1), spare[1].max(1));
        let total = [tx, rx, host_tx, host_rx]
            .iter()
            .try_fold(0u32, |a, &b| a.checked_add(b))
            .filter(|&n| n <= 4096)
            .ok_or_else(|| format!("netmap_if at {at} lists too many rings"))?;
        map.at(at + RING_OFS_AT, total as usize * 8)
            .ok_or_else(|| format!("the ring table at {at} lies outside the mapping"))?;
        Ok(Interface {
            map,
            at,
            tx_rings: tx,
            rx_rings: rx,
            host_tx_rings: host_tx,
        })
    }

    /// Ring `n` of the offset table: NIC TX, host TX, NIC RX, host RX.
    fn ring(&self, n: u32) -> Result<Ring, String> {
        let entry = self.at + RING_OFS_AT + n as usize * 8;
        // SAFETY: `new` checked that the whole table is inside the
        // mapping; callers pass `n` below its length.
        let ofs = unsafe {
            self.map
                .base
                .as_ptr()
                .add(entry)
                .cast::<i64>()
                .read_volatile()
        };
        if ofs == 0 {
            // The kernel leaves rings outside a registration at offset 0.
            return Err(format!("ring {n} is not in this registration"));
        }
        let at = i64::try_from(self.at)
            .ok()
            .and_then(|a| a.checked_add(ofs))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or_else(|| format!("ring {n} has offset {ofs}"))?;
        Ring::new(Arc::clone(&self.map), at)
    }

    /// NETMAP_TXRING.
    fn tx_ring(&self, i: u32) -> Result<Ring, String> {
        if i >= self.tx_rings {
            return Err(format!("no NIC TX ring {i}"));
        }
        self.ring(i)
    }

    /// NETMAP_RXRING.
    fn rx_ring(&self, i: u32) -> Result<Ring, String> {
        if i >= self.rx_rings {
            return Err(format!("no NIC RX ring {i}"));
        }
        self.ring(self.tx_rings + self.host_tx_rings + i)
    }

    /// The first host TX ring (to the host stack).
    fn host_tx_ring(&self) -> Result<Ring, String> {
        self.ring(self.tx_rings)
    }

    /// The first host RX ring (from the host stack).
    fn host_rx_ring(&self) -> Result<Ring, String> {
        self.ring(self.tx_rings + self.host_tx_rings + self.rx_rings)
    }
}

/// The ioctl and poll layer under a port.
pub trait Kernel {
    /// NIOCTXSYNC: sends what the TX rings hold up to `head` and gives
    /// back the slots already sent. False when a sync failed.
    fn txsync(&mut self) -> bool;
    /// NIOCRXSYNC: takes back the RX slots before `head` and fills more.
    /// False when a sync failed.
    fn rxsync(&mut self) -> bool;
    /// Sleeps until a ring has work or `timeout` passes.
    fn wait(&mut self, timeout: Duration);
}

/// The host ring pair.
struct Host {
    rx: Ring,
    tx: Ring,
}

/// One worker's rings: a NIC ring pair, and maybe the host rings.
pub struct Port<K> {
    kernel: K,
    rx: Ring,
    tx: Ring,
    host: Option<Host>,
    counts: PortCounts,
    /// Inside a multi-slot frame that is being dropped, on the NIC RX
    /// ring and on the host RX ring.
    skipping: bool,
    host_skipping: bool,
}

impl<K: Kernel> Port<K> {
    /// A port over rings the caller checked. Without host rings, `ToHost`
    /// frames go up through `NS_FORWARD`, which needs `NR_FORWARD` on the
    /// RX ring.
    fn new(kernel: K, rx: Ring, tx: Ring, host: Option<Host>) -> Port<K> {
        let mut rx = rx;
        if host.is_none() {
            let flags = rx.flags();
            rx.set_flags(flags | NR_FORWARD);
        }
        Port {
            kernel,
            rx,
            tx,
            host,
            counts: PortCounts::default(),
            skipping: false,
            host_skipping: false,
        }
    }

    /// The size of a netmap buffer: the longest frame that fits a slot.
    pub fn buf_size(&self) -> usize {
        self.rx.buf_size()
    }

    #[cfg(test)]
    fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// TX slots handed to the kernel and not yet given back.
    fn in_flight(ring: &Ring) -> u32 {
        (ring.num_slots() - 1).saturating_sub(ring.space())
    }
}

/// Moves the frame in `from` slot `i` to `to` slot `j` by swapping their
/// buffers: zero copy. Both slots are flagged so the kernel reloads them.
#[inline]
fn swap(from: &mut Ring, i: u32, to: &mut Ring, j: u32, len: u16) -> bool {
    let (Some(a), Some(b)) = (from.slot(i), to.slot(j)) else {
        return false;
    };
    to.set_slot(
        j,
        Slot {
            buf_idx: a.buf_idx,
            len,
            flags: NS_BUF_CHANGED,
            ptr: 0,
        },
    ) && from.set_slot(
        i,
        Slot {
            buf_idx: b.buf_idx,
            len: 0,
            flags: NS_BUF_CHANGED,
            ptr: 0,
        },
    )
}

impl<K: Kernel> worker::Port for Port<K> {
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        max: usize,
        mut decide: F,
    ) -> usize {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let take = self.rx.space().min(max);
        let mut i = self.rx.head();
        let mut t = self.tx.head();
        let mut room = self.tx.space();
        let mut h = self.host.as_ref().map_or(0, |h| h.tx.head());
        let mut host_room = self.host.as_ref().map_or(0, |h| h.tx.space());
        for _ in 0..take {
            let Some(slot) = self.rx.slot(i) else { break };
            let more = slot.flags & NS_MOREFRAG != 0;
            // Every slot goes back clean unless it is marked below.
            let plain = Slot { flags: 0, ..slot };
            self.rx.set_slot(i, plain);
            if self.skipping || more {
                // A frame longer than a buffer: drop all its slots, count
                // it once, at its first slot.
                if !self.skipping {
                    self.counts.too_long += 1;
                }
                self.skipping = more;
                i = self.rx.next(i);
                continue;
            }
            let buf_size = self.rx.buf_size();
            let Some(buf) = self.rx.buf(slot.buf_idx) else {
                // A buffer index outside the memory: nothing to read.
                self.counts.ring_errors += 1;
                i = self.rx.next(i);
                continue;
            };
            let (verdict, len) = decide(buf, usize::from(slot.len).min(buf_size));
            let len = u16::try_from(len.min(buf_size)).unwrap_or(0);
            match verdict {
                Verdict::Forward | Verdict::Reply(_) => {
                    if room > 0 && len > 0 && swap(&mut self.rx, i, &mut self.tx, t, len) {
                        t = self.tx.next(t);
                        room -= 1;
                    } else {
                        self.counts.tx_full += 1;
                    }
                }
                Verdict::ToHost => match self.host.as_mut() {
                    Some(host) => {
                        if host_room > 0 && len > 0 && swap(&mut self.rx, i, &mut host.tx, h, len) {
                            h = host.tx.next(h);
                            host_room -= 1;
                        } else {
                            self.counts.host_failed += 1;
                        }
                    }
                    None => {
                        self.rx.set_slot(
                            i,
                            Slot {
                                flags: NS_FORWARD,
                                ..plain
                            },
                        );
                    }
                },
                Verdict::Drop(_) => {}
            }
            i = self.rx.next(i);
        }
        self.rx.advance(i);
        let mut moved = take;
        if let Some(host) = self.host.as_mut() {
            host.tx.advance(h);
            // The host's own frames go out of the NIC as they are.
            let from_host = host.rx.space().min(max);
            let mut j = host.rx.head();
            for _ in 0..from_host {
                let Some(slot) = host.rx.slot(j) else { break };
                let more = slot.flags & NS_MOREFRAG != 0;
                let fits = slot.len > 0 && usize::from(slot.len) <= host.rx.buf_size();
                if self.host_skipping || more || !fits {
                    if !self.host_skipping {
                        self.counts.too_long += 1;
                    }
                    self.host_skipping = more;
                    host.rx.set_slot(j, Slot { flags: 0, ..slot });
                } else if room > 0 && swap(&mut host.rx, j, &mut self.tx, t, slot.len) {
                    t = self.tx.next(t);
                    room -= 1;
                    self.counts.from_host += 1;
                } else {
                    host.rx.set_slot(j, Slot { flags: 0, ..slot });
                    self.counts.from_host_dropped += 1;
                }
                j = host.rx.next(j);
            }
            host.rx.advance(j);
            moved += from_host;
        }
        self.tx.advance(t);
        let host_busy = self
            .host
            .as_ref()
            .is_some_and(|host| Self::in_flight(&host.tx) > 0);
        if (Self::in_flight(&self.tx) > 0 || host_busy) && !self.kernel.txsync() {
            self.counts.ring_errors += 1;
        }
        // Hands back what was read (and what goes up) and fetches more.
        if !self.kernel.rxsync() {
            self.counts.ring_errors += 1;
        }
        moved as usize
    }

    fn wait(&mut self, timeout: Duration) {
        self.kernel.wait(timeout);
    }

    fn take_counts(&mut self) -> PortCounts {
        std::mem::take(&mut self.counts)
    }

    fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.kernel.txsync();
            let host_busy = self
                .host
                .as_ref()
                .is_some_and(|host| Self::in_flight(&host.tx) > 0);
            if (Self::in_flight(&self.tx) == 0 && !host_busy) || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The real kernel: the port's netmap file descriptors.
pub struct Fds {
    fds: Vec<OwnedFd>,
}

impl Kernel for Fds {
    fn txsync(&mut self) -> bool {
        let mut ok = true;
        for fd in &self.fds {
            // SAFETY: NIOCTXSYNC takes no argument; `fd` is our open,
            // registered netmap descriptor. A failure leaves the rings as
            // they were; the port counts it and the next batch tries again.
            ok &= unsafe { libc::ioctl(fd.as_raw_fd(), netmap_sys::netmap::NIOCTXSYNC as _) } == 0;
        }
        ok
    }

    fn rxsync(&mut self) -> bool {
        let mut ok = true;
        for fd in &self.fds {
            // SAFETY: as in `txsync`, for NIOCRXSYNC.
            ok &= unsafe { libc::ioctl(fd.as_raw_fd(), netmap_sys::netmap::NIOCRXSYNC as _) } == 0;
        }
        ok
    }

    fn wait(&mut self, timeout: Duration) {
        let mut polled = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; 2];
        for (p, fd) in polled.iter_mut().zip(&self.fds) {
            p.fd = fd.as_raw_fd();
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `polled` is a live array of pollfd; entries past our
        // descriptors have fd -1, which poll(2) skips.
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
    }
}

/// A device's ring counts, from NIOCGINFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub tx_rings: u32,
    pub rx_rings: u32,
}

impl Info {
    /// The ring pairs a port per worker can use.
    pub fn pairs(&self) -> u32 {
        self.tx_rings.min(self.rx_rings).max(1)
    }
}

fn request(device: &str) -> Result<nmreq, Error> {
    let name = device.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(Error::Name(device.to_string()));
    }
    // SAFETY: `nmreq` is a plain C struct; all zeroes is its empty request.
    let mut req: nmreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.nr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.nr_version = API;
    Ok(req)
}

fn open_dev() -> Result<OwnedFd, Error> {
    // SAFETY: a constant NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/netmap".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Open(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(
    fd: &OwnedFd,
    what: &'static str,
    cmd: libc::c_ulong,
    req: &mut nmreq,
    device: &str,
) -> Result<(), Error> {
    // SAFETY: NIOCGINFO and NIOCREGIF read and write one `struct nmreq`,
    // which `req` is (size pinned above), for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, req as *mut nmreq) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EBUSY) {
            return Err(Error::Busy {
                device: device.to_string(),
            });
        }
        return Err(Error::Ioctl {
            what,
            device: device.to_string(),
            source,
        });
    }
    Ok(())
}

/// The device's rings, without registering it.
pub fn info(device: &str) -> Result<Info, Error> {
    let fd = open_dev()?;
    let mut req = request(device)?;
    ioctl(&fd, "read", netmap_sys::netmap::NIOCGINFO, &mut req, device)?;
    Ok(Info {
        tx_rings: u32::from(req.nr_tx_rings),
        rx_rings: u32::from(req.nr_rx_rings),
    })
}

/// Registers `device` in `mode` (an NR_REG_* value), alone, and maps its
/// memory; returns the memory allocator's id too.
fn register(device: &str, mode: u32, ring: u32) -> Result<(OwnedFd, Interface, u16), Error> {
    let fd = open_dev()?;
    let mut req = request(device)?;
    // Exclusive: a second program on the same rings would fight over
    // head, cur and the buffers.
    req.nr_flags = mode | NR_EXCLUSIVE;
    req.nr_ringid = u16::try_from(ring).unwrap_or(0);
    ioctl(
        &fd,
        "register",
        netmap_sys::netmap::NIOCREGIF,
        &mut req,
        device,
    )?;
    let len = req.nr_memsize as usize;
    // SAFETY: maps the region the kernel just sized for this descriptor;
    // the result is checked before use and owned by the `Mapping`.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Map {
            device: device.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::Map {
        device: device.to_string(),
        source: std::io::Error::other("mmap returned NULL"),
    })?;
    let map = Arc::new(Mapping {
        base,
        len,
        owner: Owner::Mmap,
    });
    let nifp = Interface::new(map, req.nr_offset as usize).map_err(|message| Error::Layout {
        device: device.to_string(),
        message,
    })?;
    Ok((fd, nifp, req.nr_arg2))
}

/// Opens the port for NIC ring pair `pair`. Pair 0 also bridges the host
/// rings: in the same registration when the NIC has one ring each way,
/// else in a second one (which must share the first one's memory, for
/// the buffer swaps).
pub fn open(device: &str, pair: u32, info: &Info) -> Result<Port<Fds>, Error> {
    let layout = |message: String| Error::Layout {
        device: device.to_string(),
        message,
    };
    if info.tx_rings == 1 && info.rx_rings == 1 {
        let (fd, nifp, _) = register(device, NR_REG_NIC_SW, 0)?;
        let host = Host {
            rx: nifp.host_rx_ring().map_err(layout)?,
            tx: nifp.host_tx_ring().map_err(layout)?,
        };
        let (rx, tx) = (
            nifp.rx_ring(0).map_err(layout)?,
            nifp.tx_ring(0).map_err(layout)?,
        );
        return Ok(Port::new(Fds { fds: vec![fd] }, rx, tx, Some(host)));
    }
    let (fd, nifp, mem) = register(device, NR_REG_ONE_NIC, pair)?;
    let (rx, tx) = (
        nifp.rx_ring(pair).map_err(layout)?,
        nifp.tx_ring(pair).map_err(layout)?,
    );
    let mut fds = vec![fd];
    let host = if pair == 0 {
        let (fd, nifp, host_mem) = register(device, NR_REG_SW, 0)?;
        if host_mem != mem {
            return Err(layout(format!(
                "the host rings are in memory {host_mem}, the NIC rings in {mem}"
            )));
        }
        fds.push(fd);
        Some(Host {
            rx: nifp.host_rx_ring().map_err(layout)?,
            tx: nifp.host_tx_ring().map_err(layout)?,
        })
    } else {
        None
    };
    Ok(Port::new(Fds { fds }, rx, tx, host))
}
