//! FreeBSD's network facts as raw bytes: getifaddrs(3), one request on a
//! PF_ROUTE socket, and the routing sysctl's link-layer table.
//! `control::route_msg` parses what these return. Compiled (for
//! x86_64-unknown-freebsd) but never run: no FreeBSD machine was at hand.

use socket2::{Domain, Socket, Type};
use std::ffi::CStr;
use std::io::{self, Read, Write};
use std::ptr;
use std::time::{Duration, Instant};

/// How long to wait for the kernel's answer on a routing socket.
const WAIT: Duration = Duration::from_secs(2);
/// Retries of a sysctl whose table outgrew the buffer.
const ATTEMPTS: usize = 4;

/// The addresses of interface `name` in getifaddrs(3)'s order, each as
/// its sockaddr's bytes (`sa_len` of them) and, for the AF_LINK entry,
/// the MTU from the `struct if_data` its `ifa_data` points at.
pub fn ifaddrs(name: &str) -> io::Result<Vec<(Vec<u8>, Option<u32>)>> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: getifaddrs writes the head of a list it allocated into the
    // live local we pass; we free that list below, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut node = head;
    while !node.is_null() {
        // SAFETY: `node` is a non-null node of the list getifaddrs built,
        // which stays valid and unmodified until freeifaddrs below.
        let ifa = unsafe { &*node };
        node = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null `ifa_name` is a NUL-terminated string in the list.
        if unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and points at a sockaddr (alignment
        // 1) of `sa_len` bytes, all copied into the list by getifaddrs.
        let sa = unsafe {
            let len = usize::from((*ifa.ifa_addr).sa_len);
            std::slice::from_raw_parts(ifa.ifa_addr.cast::<u8>(), len)
        };
        let link = sa.get(1).is_some_and(|&f| i32::from(f) == libc::AF_LINK);
        let mtu = (link && !ifa.ifa_data.is_null()).then(|| {
            let data = ifa.ifa_data.cast::<libc::if_data>();
            // SAFETY: for an AF_LINK entry `ifa_data` points at the
            // interface's `struct if_data` (getifaddrs(3)); it is read
            // unaligned, as it sits in getifaddrs's byte buffer.
            unsafe { ptr::addr_of!((*data).ifi_mtu).read_unaligned() }
        });
        out.push((sa.to_vec(), mtu));
    }
    // SAFETY: frees the list getifaddrs returned, once; everything kept
    // from it was copied above.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The kernel's link-layer table (ARP for AF_INET, NDP for AF_INET6) as
/// `arp -a` and `ndp -a` read it: the rt_msghdr stream of sysctl
/// {CTL_NET, PF_ROUTE, 0, family, NET_RT_FLAGS, RTF_LLINFO}.
pub fn llinfo(family: i32) -> io::Result<Vec<u8>> {
    use libc::{CTL_NET, NET_RT_FLAGS, PF_ROUTE, RTF_LLINFO};
    let mib = [CTL_NET, PF_ROUTE, 0, family, NET_RT_FLAGS, RTF_LLINFO];
    // Fills `buf` and says how much it wrote; with an empty `buf`, how much it would.
    let sysctl = |buf: &mut [u8]| {
        let mut len = buf.len();
        let old = if len == 0 {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        // SAFETY: `mib` holds the 6 ints we name; the kernel writes at most
        // `len` bytes to `old` (none when null: a size query), which has
        // that many, then stores the count in the live `len`.
        let rc = unsafe { libc::sysctl(mib.as_ptr(), 6, old, &mut len, ptr::null(), 0) };
        if rc == 0 {
            Ok(len)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    for _ in 0..ATTEMPTS {
        let len = sysctl(&mut [])?;
        // Room for entries added meanwhile.
        let mut buf = vec![0; len + len / 4 + 1024];
        match sysctl(&mut buf) {
            Ok(got) => {
                buf.truncate(got);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOMEM) => return Err(e),
            Err(_) => {}
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Writes `request` to a fresh PF_ROUTE socket and returns the first
/// message read back for which `ours` holds; the socket also hears every
/// other routing message. A request the kernel refuses fails the write
/// with its errno (ESRCH: no such route).
pub fn request(request: &[u8], ours: impl Fn(&[u8]) -> bool) -> io::Result<Vec<u8>> {
    let socket = Socket::new(Domain::from(libc::PF_ROUTE), Type::RAW, None)?;
    socket.set_read_timeout(Some(WAIT))?;
    if (&socket).write(request)? != request.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0; 8192];
    loop {
        match (&socket).read(&mut buf) {
            Ok(n) if ours(&buf[..n]) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
    }
}
