//! Control-side code: builds what the data path reads. May allocate, log
//! and return typed errors; never runs on a worker thread.

#[cfg(target_os = "linux")]
pub mod announce;
pub mod api;
pub mod controller;
#[cfg(any(feature = "xdp", feature = "netmap"))]
pub mod forwarder;
pub mod health;
pub mod metrics;
pub mod neighbours;
/// rtnetlink on Linux; the routing socket and sysctls on FreeBSD
/// (`route_socket.rs`); elsewhere a stand-in whose calls fail.
#[cfg_attr(target_os = "freebsd", path = "route_socket.rs")]
#[cfg_attr(
    not(any(target_os = "linux", target_os = "freebsd")),
    path = "no_netlink.rs"
)]
pub mod netlink;
#[cfg(target_os = "linux")]
pub mod privileges;
/// FreeBSD's routing messages, parsed: built off Linux (its `Device` is
/// the stand-in's too), and everywhere for the tests.
#[cfg(any(test, not(target_os = "linux")))]
pub mod route_msg;
pub mod services;

/// The namespace test harness, shared with the testbed.
#[cfg(all(test, target_os = "linux"))]
#[path = "../../testbed/netns/mod.rs"]
pub(crate) mod netns;

use crate::config::Config;
use crate::dataplane::tables::{Error, Tables};
use services::Services;
use std::collections::BTreeSet;

/// The backend sets of a configuration, all up, and their first tables
/// (generation 1): the default set (if any) and every VIP, each with one
/// Maglev table per address family.
pub fn tables(config: &Config) -> Result<(Services, Tables), Error> {
    // An entry lives while its age is ≤ the timeout, and workers' clocks
    // lag by up to a tick: wait a little longer before reusing an id.
    let quarantine = std::time::Duration::from_secs(u64::from(config.forwarder.flow_timeout) + 2);
    let mut services = Services::from_config(config, quarantine)?;
    let tables = services.tables(&BTreeSet::new())?;
    Ok((services, tables))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn builds_default_set_and_vips_by_family() {
        let c = config(&[
            ("RR_DEVICE", "eth0"),
            ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2;2001:db8::1"),
            ("RR_VIPS", "192.0.2.10=10.2.0.1*3;2001:db8::10="),
        ]);
        let (_, t) = tables(&c).unwrap();
        assert_eq!(t.generation(), 1);
        let default = t.default_service().unwrap();
        assert_eq!(default.v4().backends().len(), 2);
        assert_eq!(default.v6().backends().len(), 1);
        assert_eq!(default.v4().size(), 65537);
        let vip = t.service_v4([192, 0, 2, 10]).unwrap();
        assert_eq!(vip.name(), "192.0.2.10");
        assert_eq!(vip.v4().backends()[0].weight, 3);
        let v6: std::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
        assert!(t.service_v6(v6.octets()).unwrap().v6().slots().is_empty());
        assert_eq!(t.services().count(), 3);
    }

    #[test]
    fn same_config_in_any_order_gives_identical_tables() {
        let a = config(&[
            ("RR_DEVICE", "eth0"),
            ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2*2;10.1.0.3"),
        ]);
        let b = config(&[
            ("RR_DEVICE", "eth1"),
            ("RR_TARGET_IPS", "10.1.0.3;10.1.0.1;10.1.0.2*2"),
        ]);
        assert_eq!(tables(&a).unwrap().1, tables(&b).unwrap().1);
    }
}
