//! Packet I/O backends. The only place besides ffi/ where `unsafe` is allowed.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod afpacket;
#[cfg(feature = "xdp")]
pub mod bpf;
#[cfg(feature = "netmap")]
pub mod netmap;
#[cfg(target_os = "linux")]
pub mod packet;
#[cfg(target_os = "freebsd")]
pub mod route;
#[cfg(target_os = "linux")]
pub mod tap;
#[cfg(feature = "xdp")]
pub mod xdp;
#[cfg(feature = "xdp")]
pub mod xsk;

use std::ffi::CString;

/// `error: cause: cause` on one line.
#[cfg(feature = "xdp")]
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line.replace('\n', " ")
}

/// The kernel's index for an interface name, or None when there is no such device.
///
/// A name containing a NUL byte cannot name a device and gives `None`.
#[must_use]
pub fn device_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `if_nametoindex` only reads the string behind the pointer up
    // to its terminating NUL. `name` is a `CString`, so that pointer is
    // valid, NUL-terminated and without interior NULs, and it stays alive
    // (borrowed, not moved) for the whole call; the function keeps no
    // reference to it afterwards and has no other preconditions. Over-long
    // or unknown names make it return 0, which we map to `None`.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The device's active RX queues: RX-only plus combined channels from
/// the ethtool channel query, else the `rx-*` entries in sysfs, else 1.
///
/// Netlink's IFLA_NUM_RX_QUEUES is the most the device could have, not
/// what is active, and AF_XDP binds only to active queues.
#[cfg(target_os = "linux")]
#[must_use]
pub fn rx_queues(name: &str) -> u32 {
    ethtool_rx_channels(name)
        .or_else(|| {
            let dir = std::fs::read_dir(format!("/sys/class/net/{name}/queues")).ok()?;
            let n = dir
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count();
            u32::try_from(n).ok().filter(|&n| n > 0)
        })
        .unwrap_or(1)
}

/// The soft RLIMIT_MEMLOCK in bytes, or None when unlimited or unknown.
/// What AF_XDP UMEMs count against (FreeBSD's `rlim_t` is signed).
#[cfg(feature = "xdp")]
#[must_use]
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the live local we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(target_os = "linux")]
const SIOCETHTOOL: libc::c_ulong = 0x8946;
#[cfg(target_os = "linux")]
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// `struct ethtool_channels` from linux/ethtool.h.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

#[cfg(target_os = "linux")]
fn ethtool_rx_channels(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return None;
    }
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    // SAFETY: `ifreq` is a plain C struct for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: `sock` is our open socket; `req` names the device and points
    // at `channels`, a live `ethtool_channels` the kernel fills in.
    let rc = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req as *mut libc::ifreq) };
    // SAFETY: closing the socket opened above, once.
    unsafe { libc::close(sock) };
    let n = channels.rx_count.saturating_add(channels.combined_count);
    (rc == 0 && n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_has_one_rx_queue_and_unknown_devices_default_to_one() {
        assert_eq!(rx_queues("lo"), 1);
        assert_eq!(rx_queues("rr-no-such-dev0"), 1);
    }

    #[test]
    fn loopback_has_a_positive_index() {
        let index = device_index("lo").expect("every Linux host has lo");
        assert!(index > 0);
    }

    #[test]
    fn made_up_device_is_none() {
        assert_eq!(device_index("rr-no-such-dev0"), None);
    }

    #[test]
    fn name_with_nul_is_none() {
        assert_eq!(device_index("lo\0"), None);
        assert_eq!(device_index("l\0o"), None);
    }

    #[test]
    fn empty_and_over_long_names_are_none() {
        assert_eq!(device_index(""), None);
        assert_eq!(device_index("lolololololololololo"), None);
    }
}
