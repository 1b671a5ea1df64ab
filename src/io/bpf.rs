//! BPF_PROG_RUN with "live frames" (Linux 5.18+): runs an XDP program
//! `repeat` times over copies of one frame, and frames it returns XDP_TX
//! for really leave through the given device. The throughput run's
//! traffic generator; nothing on the forwarding path uses it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The BPF_PROG_TEST_RUN member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md`, the context handed in: which device and queue the
/// frame "arrived" on, so XDP_TX knows where to send it.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs `prog` `repeat` times in live-frame mode on device `ifindex`,
/// `batch` frames at a time.
pub fn run_live_frames(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    batch: u32,
) -> io::Result<()> {
    let len =
        u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ctx = XdpMd {
        data_end: len,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: len,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..TestRunAttr::default()
    };
    // SAFETY: bpf(2) reads `attr` (a live, correctly laid out
    // BPF_PROG_TEST_RUN attribute of the size we pass) and, through it,
    // `frame` and `ctx`, which outlive the call. It writes back into
    // `attr` only (retval, duration, the size fields), which we own
    // mutably here; data_out and ctx_out are null, so nothing else.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
