//! An AF_PACKET port: `recvmmsg`/`sendmmsg` in batches on a raw packet
//! socket bound to one device. The throughput run's peer: the classic
//! way to forward from user space, without XDP. The host stack keeps its
//! own copy of every frame, so `ToHost` needs nothing done.

use crate::dataplane::Verdict;
use crate::dataplane::worker::{Port, PortCounts};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The most frames one call moves.
pub const MAX_BATCH: usize = 64;
const FRAME: usize = 2048;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

pub struct Socket {
    fd: OwnedFd,
    bufs: Vec<[u8; FRAME]>,
    drops: PortCounts,
}

impl Socket {
    /// Opens a raw packet socket on the device with index `ifindex`.
    pub fn open(ifindex: u32) -> io::Result<Socket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero bytes are a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size we pass.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int of the size we pass.
        // Without it we would read back every frame we send.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket {
            fd,
            bufs: vec![[0; FRAME]; MAX_BATCH],
            drops: PortCounts::default(),
        })
    }
}

fn iovec(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

fn mmsghdr(iov: &mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: all-zero bytes are a valid `msghdr` (null name and control).
    let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
    hdr.msg_hdr.msg_iov = iov;
    hdr.msg_hdr.msg_iovlen = 1;
    hdr
}

impl Port for Socket {
    fn poll<F: FnMut(&mut [u8], usize) -> (Verdict, usize)>(
        &mut self,
        max: usize,
        mut decide: F,
    ) -> usize {
        let max = max.min(MAX_BATCH);
        let mut iovs: [libc::iovec; MAX_BATCH] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        for (iov, buf) in iovs.iter_mut().zip(self.bufs.iter_mut()).take(max) {
            *iov = iovec(buf);
        }
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = std::array::from_fn(|i| mmsghdr(&mut iovs[i]));
        // SAFETY: `hdrs[..max]` each point at one iovec over a live buffer
        // of ours; the kernel writes at most `iov_len` bytes into each and
        // fills `msg_len`. Nothing else touches them during the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                max as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return 0;
        };
        let lens: [usize; MAX_BATCH] = std::array::from_fn(|i| hdrs[i].msg_len as usize);
        let mut out: [libc::iovec; MAX_BATCH] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        let mut forward = 0;
        for (i, buf) in self.bufs.iter_mut().enumerate().take(n) {
            // The whole buffer: an encapsulated frame grows into it.
            let (verdict, len) = decide(buf, lens[i].min(FRAME));
            if verdict.transmits() {
                out[forward] = iovec(&mut buf[..len.min(FRAME)]);
                forward += 1;
            }
        }
        if forward > 0 {
            let mut tx: [libc::mmsghdr; MAX_BATCH] = std::array::from_fn(|i| mmsghdr(&mut out[i]));
            // SAFETY: `tx[..forward]` point at iovecs over frames in our
            // buffers, live for the call; a bound packet socket needs no
            // address. The kernel only reads them.
            let sent =
                unsafe { libc::sendmmsg(self.fd.as_raw_fd(), tx.as_mut_ptr(), forward as u32, 0) };
            let sent = usize::try_from(sent).unwrap_or(0);
            self.drops.tx_full += (forward - sent.min(forward)) as u64;
        }
        n
    }

    fn wait(&mut self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one live pollfd, count 1.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    fn take_counts(&mut self) -> PortCounts {
        std::mem::take(&mut self.drops)
    }
}
