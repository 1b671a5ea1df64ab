//! Whether this process may do what the forwarder needs: load and attach
//! BPF programs and open AF_XDP sockets.

/// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set, from `/proc/self/status`.
pub fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| std::io::Error::other("no CapEff line"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The capabilities missing from `caps`, by name; empty when all are there.
/// CAP_SYS_ADMIN stands in for CAP_BPF, as on kernels before 5.8.
pub fn missing(caps: u64) -> Vec<&'static str> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    missing
}

/// Whether UMEM pages are exempt from RLIMIT_MEMLOCK.
pub fn has_ipc_lock(caps: u64) -> bool {
    caps & (1 << CAP_IPC_LOCK) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_line_is_parsed_as_hex() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn root_set_misses_nothing_and_empty_set_misses_all_three() {
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing(0), ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"]);
        let sys_admin_instead_of_bpf = 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW | 1 << CAP_SYS_ADMIN;
        assert!(missing(sys_admin_instead_of_bpf).is_empty());
    }
}
