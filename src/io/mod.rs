//! Packet I/O backends. The only place besides ffi/ where `unsafe` is allowed.
#![allow(unsafe_code)]

use std::ffi::CString;

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

#[cfg(test)]
mod tests {
    use super::*;

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
