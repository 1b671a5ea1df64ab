//! The AF_XDP port: one socket, its own UMEM, bound to one RX queue.
//!
//! Frames move without copies: RX descriptor → `decide` (rewrites in the
//! UMEM, growing into the rest of the frame's segment when it
//! encapsulates) → TX ring for `Forward`, or back to the free list.
//! Transmitted frames come back through the completion ring and are reused
//! for the fill ring. All descriptor storage is allocated up front.

use super::tap::Tap;
use crate::dataplane::Verdict;
use crate::dataplane::worker::{Port, PortCounts};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// Why a socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad AF_XDP setting: {0}")]
    Setting(String),
    #[error("cannot create the UMEM for queue {queue}: {message}")]
    Umem { queue: u32, message: String },
    #[error("cannot bind an AF_XDP socket to {device} queue {queue} ({mode}): {message}")]
    Bind {
        device: String,
        queue: u32,
        mode: &'static str,
        message: String,
        /// The OS error, when there was one.
        errno: Option<i32>,
    },
}

/// Whether the socket copies frames or shares pages with the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    ZeroCopy,
    Copy,
}

impl Error {
    /// True when the bind failed because the driver cannot do zero-copy
    /// (as opposed to a busy queue, memory limits and the like).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Error::Bind {
                errno: Some(libc::EOPNOTSUPP | libc::EINVAL),
                ..
            }
        )
    }
}

impl Copy {
    pub fn name(self) -> &'static str {
        match self {
            Copy::ZeroCopy => "zero-copy",
            Copy::Copy => "copy",
        }
    }
}

/// One bound AF_XDP socket.
pub struct Socket {
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames owned by us and not in any ring.
    free: Vec<FrameDesc>,
    /// Scratch for one batch of RX, TX and completion descriptors.
    rx_batch: Vec<FrameDesc>,
    tx_batch: Vec<FrameDesc>,
    comp_batch: Vec<FrameDesc>,
    host: Option<Tap>,
    drops: PortCounts,
    /// Frames on the TX ring not yet back through completion.
    in_flight: usize,
    ring_size: u32,
    fd: RawFd,
}

/// Frames waiting on the TX ring that make a kick worth its syscall.
const KICK_AT: u32 = 32;

/// The most TX kicks (syscalls) per batch.
const KICKS: usize = 8;

/// The UMEM frame size, and the longest frame a socket can receive in it
/// (the kernel keeps 256 bytes of XDP headroom); `ffi/xdp/steer.c` passes
/// longer frames to the host.
pub const FRAME_SIZE: u32 = 2048;
pub const MAX_FRAME: u32 = FRAME_SIZE - 256;

/// The largest batch a socket handles at once.
pub const MAX_BATCH: usize = 1024;

impl Socket {
    /// Opens a socket on `device` queue `queue` with rings of `ring_size`
    /// descriptors. The XDP program is ours, so libxdp is told not to load
    /// its own.
    pub fn open(
        device: &str,
        queue: u32,
        ring_size: u32,
        copy: Copy,
        host: Option<Tap>,
    ) -> Result<Socket, Error> {
        let size = |n: u32| QueueSize::new(n).map_err(|e| Error::Setting(e.to_string()));
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| Error::Setting(e.to_string()))?)
            .fill_queue_size(size(ring_size)?)
            .comp_queue_size(size(ring_size)?)
            .build()
            .map_err(|e| Error::Setting(e.to_string()))?;
        // Enough frames to keep the fill ring full while a whole TX ring
        // is in flight.
        let frames = NonZeroU32::new(ring_size * 2).unwrap_or(NonZeroU32::MIN);
        let (umem, descs) = Umem::new(umem_config, frames, false).map_err(|e| Error::Umem {
            queue,
            message: super::chain(&e),
        })?;
        let bind = match copy {
            Copy::ZeroCopy => BindFlags::XDP_ZEROCOPY,
            Copy::Copy => BindFlags::XDP_COPY,
        } | BindFlags::XDP_USE_NEED_WAKEUP;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(size(ring_size)?)
            .tx_queue_size(size(ring_size)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .xdp_flags(XdpFlags::empty())
            .bind_flags(bind)
            .build();
        let name: Interface = device.parse().map_err(|_| Error::Bind {
            device: device.to_string(),
            queue,
            mode: copy.name(),
            message: "the name holds a NUL byte".to_string(),
            errno: None,
        })?;
        // SAFETY: this UMEM is new and used by no other socket, so the
        // shared-UMEM precondition of `Socket::new` (the inhibit flag when
        // the pair is already bound from this UMEM) does not arise; we set
        // the inhibit flag anyway since the XDP program is ours.
        let (tx, rx, rings) = unsafe { xsk_rs::Socket::new(socket_config, &umem, &name, queue) }
            .map_err(|e| Error::Bind {
                device: device.to_string(),
                queue,
                mode: copy.name(),
                message: super::chain(&e),
                errno: std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(std::io::Error::raw_os_error),
            })?;
        let Some((mut fill, comp)) = rings else {
            return Err(Error::Bind {
                device: device.to_string(),
                queue,
                mode: copy.name(),
                message: "libxdp returned no fill and completion rings".to_string(),
                errno: None,
            });
        };
        let mut free = descs;
        // Every frame can be on the free list at once: never reallocates.
        free.reserve(free.len());
        let ring = ring_size as usize;
        // SAFETY: every descriptor came from this UMEM and none is in any
        // ring yet, so handing these to the kernel gives it sole use.
        let from = free.len() - ring.min(free.len());
        let filled = unsafe { fill.produce(&free[from..]) };
        // produce took a prefix of that slice: forget exactly those.
        free.drain(from..from + filled);
        let fd = tx.fd().as_raw_fd();
        let spare = free.first().copied();
        let scratch = |n| spare.map_or_else(Vec::new, |d| vec![d; n]);
        Ok(Socket {
            umem,
            rx,
            tx,
            fill,
            comp,
            rx_batch: scratch(MAX_BATCH),
            tx_batch: Vec::with_capacity(MAX_BATCH),
            comp_batch: scratch(ring),
            free,
            host,
            drops: PortCounts::default(),
            in_flight: 0,
            ring_size,
            fd,
        })
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Tells the kernel to transmit while frames wait on the TX ring. In
    /// copy mode each kick sends a bounded number of frames, so this runs
    /// every batch while any are outstanding, not only after new ones.
    #[inline]
    fn kick(&mut self) {
        // In copy mode each kick sends a bounded number synchronously (32
        // on Linux): kick again while that drains the ring, a few times at
        // most. In zero-copy mode a kick only schedules the driver, so one
        // that drained nothing ends the loop.
        let mut queued = self.ring_size - self.tx.nb_free_exact();
        for _ in 0..KICKS {
            if queued == 0 || !self.tx.needs_wakeup() {
                break;
            }
            let _ = self.tx.wakeup();
            let left = self.ring_size - self.tx.nb_free_exact();
            if left >= queued {
                break;
            }
            queued = left;
        }
    }

    /// Takes transmitted frames back and tops up the fill ring.
    fn recycle(&mut self) {
        // SAFETY: the completion ring only returns descriptors of frames
        // we put on this socket's TX ring, all from this UMEM, which the
        // kernel has finished with.
        let done = unsafe { self.comp.consume(&mut self.comp_batch) };
        self.in_flight = self.in_flight.saturating_sub(done);
        self.free.extend_from_slice(&self.comp_batch[..done]);
        if self.free.is_empty() {
            return;
        }
        let want = self.fill.nb_free(self.free.len() as u32) as usize;
        let from = self.free.len() - want.min(self.free.len());
        // SAFETY: frames on the free list are ours alone (not in any
        // ring, no live reference into them); produce hands the first
        // `n` of them to the kernel and we forget exactly those.
        let n = unsafe { self.fill.produce(&self.free[from..]) };
        // produce took a prefix of that slice: forget exactly those.
        self.free.drain(from..from + n);
    }
}

impl Port for Socket {
    #[inline]
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        max: usize,
        mut decide: F,
    ) -> usize {
        self.recycle();
        // Take no more than the TX ring can hold: frames left on the RX
        // ring wait there (the kernel counts it if that overflows)
        // instead of being taken only to be dropped.
        let room = self.tx.nb_free(max as u32) as usize;
        let max = max.min(room).min(self.rx_batch.len());
        // SAFETY: the RX ring only hands out descriptors of frames in this
        // UMEM that the kernel has filled and given up.
        let n = unsafe { self.rx.consume(&mut self.rx_batch[..max]) };
        if n == 0 {
            if self.fill.needs_wakeup() {
                // The kernel waits for a syscall before it takes the fill
                // ring again; a zero-timeout poll is that syscall.
                let _ = self.rx.poll(0);
            }
            self.kick();
            return 0;
        }
        self.tx_batch.clear();
        for i in 0..n {
            let mut desc = self.rx_batch[i];
            // SAFETY: `desc` came from this UMEM's RX ring, so the kernel
            // is done with the frame and nothing else refers to it until
            // we put it on a ring again below.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let len = data.contents().len();
            // The contents run to the cursor: at the segment's end, they
            // are the whole segment, spare room included.
            let room = {
                let mut cursor = data.cursor();
                let room = cursor.buf_len();
                cursor.set_pos(room);
                room
            };
            let (verdict, len) = decide(data.contents_mut(), len);
            // Back to the frame's length, which the TX descriptor carries.
            data.cursor().set_pos(len.min(room));
            match verdict {
                // A reply goes back out as a forwarded frame does.
                Verdict::Forward | Verdict::Reply(_) => self.tx_batch.push(desc),
                Verdict::ToHost => {
                    let frame = data.contents();
                    let sent = self.host.as_mut().is_some_and(|h| h.send(frame));
                    if !sent {
                        self.drops.host_failed += 1;
                    }
                    self.free.push(desc);
                }
                Verdict::Drop(_) => self.free.push(desc),
            }
        }
        if !self.tx_batch.is_empty() {
            // SAFETY: these frames came off the RX ring of this UMEM and
            // are in no other ring; the kernel owns them until they come
            // back through the completion ring.
            let sent = unsafe { self.tx.produce(&self.tx_batch) };
            self.in_flight += sent;
            if sent < self.tx_batch.len() {
                self.drops.tx_full += (self.tx_batch.len() - sent) as u64;
                self.free.extend_from_slice(&self.tx_batch[sent..]);
            }
        }
        // Kick once enough frames wait; an empty poll (above) kicks the
        // rest. A syscall for every few frames would cost more than them.
        if self.ring_size - self.tx.nb_free_exact() >= KICK_AT {
            self.kick();
        }
        n
    }

    fn wait(&mut self, timeout: Duration) {
        // Nothing may sit on the TX ring unsent while we sleep.
        self.kick();
        self.recycle();
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        if self.tx.nb_free(1) == 0 {
            // Not idle but blocked: the TX ring is full, and RX is left
            // alone until it has room. Sleep until it has.
            let _ = self.tx.poll(ms);
            return;
        }
        // Sleeps until the RX ring has frames; the fill ring is topped up
        // above, so the first frame after an idle spell has a buffer.
        let _ = self.rx.poll(ms);
    }

    fn drain(&mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.in_flight > 0 && std::time::Instant::now() < deadline {
            let _ = self.tx.wakeup();
            self.recycle();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn take_counts(&mut self) -> PortCounts {
        std::mem::take(&mut self.drops)
    }
}

/// The kernel's counters for one AF_XDP socket (`struct xdp_statistics`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Frames the kernel dropped for this socket (e.g. no fill buffer).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl Statistics {
    pub fn add(&mut self, o: &Statistics) {
        self.rx_dropped += o.rx_dropped;
        self.rx_invalid_descs += o.rx_invalid_descs;
        self.tx_invalid_descs += o.tx_invalid_descs;
        self.rx_ring_full += o.rx_ring_full;
        self.rx_fill_ring_empty_descs += o.rx_fill_ring_empty_descs;
        self.tx_ring_empty_descs += o.tx_ring_empty_descs;
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_dropped": self.rx_dropped,
            "rx_ring_full": self.rx_ring_full,
            "rx_fill_ring_empty": self.rx_fill_ring_empty_descs,
            "rx_invalid_descs": self.rx_invalid_descs,
            "tx_invalid_descs": self.tx_invalid_descs,
        })
    }
}

const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;

/// Reads the kernel's counters of the AF_XDP socket `fd`. The caller must
/// know the socket is still open (the control thread reads only while the
/// workers that own the sockets run).
pub fn statistics(fd: RawFd) -> std::io::Result<Statistics> {
    let mut stats = Statistics::default();
    let mut len = std::mem::size_of::<Statistics>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `stats`, a live
    // repr(C) struct of six u64 as the kernel's `struct xdp_statistics`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_STATISTICS,
            (&mut stats as *mut Statistics).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stats)
}
