//! The host path for frames a worker classifies `ToHost`.
//!
//! The XDP program passes everything that is not ours straight to the host
//! stack, so only frames it steered but the pipeline declined (GRE we do
//! not handle, a broken outer header) come here. They are written into a
//! TAP device that carries the device's MAC, so the host stack receives
//! them as if they had arrived normally. The TAP device is not persistent:
//! it disappears when rusty_rail exits, however it exits.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// `rrh-` plus the device name, cut to the 15 bytes Linux allows.
pub fn name_for(device: &str) -> String {
    let mut name = format!("rrh-{device}");
    while name.len() > 15 {
        name.pop();
    }
    name
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: `ifreq` is a plain C struct of integers and arrays, for
    // which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// Runs one interface ioctl on a throwaway datagram socket.
fn if_ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is an open socket we own; `req` is a valid, live
    // `ifreq` for the duration of the call, as these requests expect.
    let rc = unsafe { libc::ioctl(sock, request, req as *mut libc::ifreq) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the socket we opened above, exactly once.
    unsafe { libc::close(sock) };
    if rc < 0 { Err(err) } else { Ok(()) }
}

impl Tap {
    /// Creates the TAP device `name` with `mac`, and brings it up.
    pub fn open(name: &str, mac: [u8; 6]) -> io::Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let fd = OwnedFd::from(file);
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` a valid
        // `ifreq` naming the device, as TUNSETIFF expects.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Best effort: no IPv6 link-local address of its own (it would
        // copy the device's), and no reverse-path check on what we inject.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"), "1");
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0");

        let mut req = ifreq(name)?;
        let mut data = [0 as libc::c_char; 14];
        for (d, m) in data.iter_mut().zip(mac) {
            *d = m as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = libc::sockaddr {
            sa_family: libc::ARPHRD_ETHER,
            sa_data: data,
        };
        if_ioctl(libc::SIOCSIFHWADDR, &mut req)?;

        let mut req = ifreq(name)?;
        if_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        if_ioctl(libc::SIOCSIFFLAGS, &mut req)?;
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands one frame to the host stack; false if it was not taken.
    #[inline]
    pub fn send(&mut self, frame: &[u8]) -> bool {
        // SAFETY: `frame` is a live slice of `frame.len()` bytes and the
        // descriptor is our open TAP device; write(2) only reads them.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast::<libc::c_void>(),
                frame.len(),
            )
        };
        usize::try_from(n).is_ok_and(|n| n == frame.len())
    }

    /// Another handle on the same device, for another worker.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
        })
    }
}
