//! The `RR_*` environment: everything `rusty_rail` is told at start-up.
//!
//! Configuration comes only from environment variables with the `RR_`
//! prefix. They are read with [`envy`] into strings and then validated
//! here, so that every mistake is reported as one line that names the
//! variable, quotes the offending value and says what was expected.
//!
//! A variable set to the empty string counts as unset (except
//! `RR_DEVICE`, which is then reported as missing). Any other `RR_*`
//! variable is ignored with a warning, since it is most likely a typo.
//!
//! | variable | default | example |
//! | --- | --- | --- |
//! | `RR_DEVICE` | required | `RR_DEVICE=eth0` |
//! | `RR_TARGET_IPS` | unset | `RR_TARGET_IPS="10.1.0.1;10.1.0.2*3;2001:db8::1"` |
//! | `RR_VIPS` | unset | `RR_VIPS="192.0.2.10=10.1.0.1,10.1.0.2*2;2001:db8::10=2001:db8:1::1"` |
//! | `RR_HASH_KEY` | [`DEFAULT_HASH_KEY`] | `RR_HASH_KEY=000102030405060708090a0b0c0d0e0f` |
//! | `RR_TABLE_SIZE` | `65537` | `RR_TABLE_SIZE=655373` |
//! | `RR_VLAN` | unset (untagged) | `RR_VLAN=100` |
//!
//! * `RR_DEVICE` (required): the network interface to serve, 1 to 15
//!   bytes, without `/`, `:`, whitespace or control characters, and not
//!   `.` or `..`. Whether the device exists is checked by the binary, not
//!   here.
//! * `RR_TARGET_IPS`: the default backend set, used for every VIP that
//!   has no set of its own in `RR_VIPS`. Entries are separated by `;`;
//!   each is `ADDR` or `ADDR*WEIGHT`, where `ADDR` is an IPv4 or IPv6
//!   address and `WEIGHT` an integer from 0 to 65535 (default 1; 0 means
//!   the backend gets no new flows). Whitespace around entries is
//!   ignored. An empty entry (`a;;b`, or a trailing `;`), an address that
//!   does not parse, a bad weight and an address listed twice are errors.
//! * `RR_VIPS`: backend sets for single VIPs. Entries are separated by
//!   `;`; each is `VIP=BACKEND[,BACKEND...]` with every `BACKEND` written
//!   as in `RR_TARGET_IPS`. `VIP=` with no backend is allowed: that VIP's
//!   traffic is dropped (and counted as "no backend"). A missing `=`, a
//!   VIP that is not an address, a VIP listed twice, a bad backend and a
//!   backend listed twice for the same VIP are errors.
//! * At least one of `RR_TARGET_IPS` and `RR_VIPS` must be set.
//! * `RR_HASH_KEY`: the 16-byte key of the flow hash and of the Maglev
//!   permutations, written as exactly 32 hex digits (either case). It must
//!   be the same on every node, or nodes disagree on where flows go. The
//!   default is [`DEFAULT_HASH_KEY`], the ASCII bytes of
//!   `rusty_rail/maglv`, i.e. `72757374795f7261696c2f6d61676c76`; it is
//!   public, so a warning is given while it is in use.
//! * `RR_TABLE_SIZE`: the Maglev lookup table size M, a prime from
//!   [`maglev::MIN_SIZE`] (251) to [`maglev::MAX_SIZE`] (16777213),
//!   default [`maglev::DEFAULT_SIZE`] (65537). Each backend set must have
//!   fewer backends of weight > 0 than M; with fewer than 100 table slots
//!   per backend a warning is given, as flows are then spread unevenly.
//! * `RR_VLAN`: the 802.1Q VLAN id (1 to 4094) the GRE traffic arrives
//!   on; unset means untagged.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::IpAddr;

use serde::Deserialize;

use crate::maglev::{self, Backend, Key};

/// The flow-hash key used when `RR_HASH_KEY` is unset: the ASCII bytes of
/// `rusty_rail/maglv`, in hex `72757374795f7261696c2f6d61676c76`.
///
/// It is public, so anyone can predict where a flow lands; set your own.
pub const DEFAULT_HASH_KEY: Key = *b"rusty_rail/maglv";

/// The largest backend weight accepted in `ADDR*WEIGHT`.
pub const MAX_WEIGHT: u32 = 65_535;

/// The longest interface name Linux accepts (`IFNAMSIZ - 1`).
pub const MAX_DEVICE_LEN: usize = 15;

/// The variables this module knows, in the order they are documented.
pub const VARIABLES: [&str; 32] = [
    "RR_DEVICE",
    "RR_TARGET_IPS",
    "RR_VIPS",
    "RR_HASH_KEY",
    "RR_TABLE_SIZE",
    "RR_VLAN",
    "RR_BACKEND",
    "RR_XDP_MODE",
    "RR_CORES",
    "RR_BATCH",
    "RR_RING_SIZE",
    "RR_IDLE",
    "RR_IDLE_SPIN_US",
    "RR_STATS_INTERVAL",
    "RR_API",
    "RR_FLOW_TABLE_SIZE",
    "RR_FLOW_TIMEOUT",
    "RR_HEALTH_PORT",
    "RR_HEALTH_PATH",
    "RR_HEALTH_INTERVAL",
    "RR_HEALTH_TIMEOUT",
    "RR_HEALTH_RISE",
    "RR_HEALTH_FALL",
    "RR_ANNOUNCE",
    "RR_ANNOUNCE_INTERVAL",
    "RR_ANNOUNCE_JITTER",
    "RR_ANNOUNCE_DELAY",
    "RR_ANNOUNCE_COUNT",
    "RR_ANNOUNCE_UNMANAGED",
    "RR_WATCH",
    "RR_WATCH_DELAY",
    "RR_STATE_DIR",
];

const PREFIX: &str = "RR_";

/// The configuration part of `rusty_rail --help`.
pub const HELP: &str = "\
Configuration is read from these environment variables (an empty value counts as unset):

  RR_DEVICE      required. The network interface to serve: 1 to 15 bytes, without
                 '/', ':' or whitespace.
                 Example: RR_DEVICE=eth0

  RR_TARGET_IPS  The default backend set, for every VIP without a set in RR_VIPS.
                 ';'-separated entries, each ADDR or ADDR*WEIGHT: ADDR an IPv4 or
                 IPv6 address, WEIGHT an integer 0..65535 (default 1; 0 = no new
                 flows). Each address at most once. Default: unset.
                 Example: RR_TARGET_IPS=\"10.1.0.1;10.1.0.2*3;2001:db8::1\"

  RR_VIPS        Backend sets for single VIPs: ';'-separated entries, each
                 VIP=BACKEND[,BACKEND...] with BACKEND written as in RR_TARGET_IPS.
                 VIP= (no backend) drops that VIP's traffic. Default: unset.
                 Example: RR_VIPS=\"192.0.2.10=10.1.0.1,10.1.0.2*2;2001:db8::10=2001:db8:1::1\"

                 At least one of RR_TARGET_IPS and RR_VIPS must be set; together
                 they list at most 4096 backends.

  RR_HASH_KEY    The 16-byte flow-hash key as exactly 32 hex digits; must be the
                 same on every node. Default: 72757374795f7261696c2f6d61676c76
                 (\"rusty_rail/maglv\", public: a warning is logged while it is used).
                 Example: RR_HASH_KEY=$(openssl rand -hex 16)

  RR_TABLE_SIZE  The Maglev table size: a prime from 251 to 16777213, larger than
                 the number of backends (weight > 0) of every set; at least 100
                 slots per backend is recommended. Default: 65537.
                 Example: RR_TABLE_SIZE=655373

  RR_VLAN        The 802.1Q VLAN id (1..4094) the GRE traffic arrives on.
                 Default: unset (untagged).
                 Example: RR_VLAN=100

  RR_BACKEND     How frames reach the workers: xdp (an XDP program steers them to
                 AF_XDP sockets) or netmap (netmap rings, with the host rings
                 bridged; only in builds with the `netmap` cargo feature). xdp
                 only in builds with the `xdp` feature (the default; Linux).
                 Default: xdp (netmap in builds without xdp).

  RR_XDP_MODE    How the XDP program is attached: auto (native, else generic),
                 native or generic. Zero-copy is used where the driver has it.
                 Default: auto. Unused with netmap.

  RR_CORES       The cores the workers are pinned to, ','-separated numbers below
                 4096; one worker per RX queue (netmap: per ring pair), queue i
                 on the i-th listed core (wrapping).
                 Default: unset (queue i on core i, wrapping).
                 Example: RR_CORES=2,3

  RR_BATCH       Frames a worker takes from its ring at a time: 1..1024.
                 Default: 64.

  RR_RING_SIZE   Descriptors in each AF_XDP ring (RX, TX, fill, completion): a
                 power of two from 64 to 16384. Default: 2048. Unused with
                 netmap, whose driver sizes its rings.

  RR_IDLE        What an idle worker does: adaptive (spin RR_IDLE_SPIN_US, then
                 sleep in poll() until traffic returns) or spin (never sleep).
                 Default: adaptive.

  RR_IDLE_SPIN_US  Microseconds an adaptive worker spins on empty rings before it
                 sleeps: 0..1000000. Default: 200.

  RR_STATS_INTERVAL  Seconds between the JSON counter lines in the log, up to
                 86400 (fractions allowed); 0 turns them off. Default: 10.

  RR_API         Where the HTTP control API listens (/healthz, /metrics,
                 /v1/vips), as ADDR:PORT, or off. Default: 127.0.0.1:9180.

  RR_FLOW_TABLE_SIZE  Connection-tracking entries shared by all workers (8 bytes
                 each, rounded up to a power of two), 0 for no tracking, at most
                 268435456. Default: 1048576.

  RR_FLOW_TIMEOUT  Seconds an idle flow stays tracked: 1..3600. Default: 120.

  RR_HEALTH_PORT  The TCP port active health checks connect to on every backend;
                 unset means no active checks (and no passive ICMP check).
                 Example: RR_HEALTH_PORT=80

  RR_HEALTH_PATH  With RR_HEALTH_PORT: check with HTTP GET on this path instead of
                 a bare connect; 2xx and 3xx are healthy. Example: RR_HEALTH_PATH=/healthz

  RR_HEALTH_INTERVAL  Seconds between checks of a backend (fractions allowed):
                 0.05..3600. Default: 2.

  RR_HEALTH_TIMEOUT  Seconds a check may take, at most RR_HEALTH_INTERVAL. Default: 1
                 (or the interval, if shorter).

  RR_HEALTH_RISE  Consecutive passing checks that bring a backend back: 1..100.
                 Default: 2.

  RR_HEALTH_FALL  Consecutive failing checks that take a backend out: 1..100.
                 Default: 3.

  RR_ANNOUNCE    Addresses to add to RR_DEVICE and announce with gratuitous ARP
                 (IPv4) and unsolicited neighbour advertisements (IPv6), as
                 ';'-separated ADDR/PREFIX (ADDR alone means /32 or /128), at
                 most 64. Plain IP to them is load-balanced like GRE'd traffic
                 (their set in RR_VIPS, else RR_TARGET_IPS). Not with RR_VLAN.
                 Linux only.
                 Example: RR_ANNOUNCE=\"192.168.77.100/24;fd00::100/64\"

  RR_ANNOUNCE_INTERVAL  Seconds between announcements: 0.05..3600 (fractions
                 allowed). Default: 1.

  RR_ANNOUNCE_JITTER  Seconds of random jitter added to each interval: 0..3600.
                 Default: 0.

  RR_ANNOUNCE_DELAY  Seconds to wait at start before probing, claiming and the
                 first announcement (not at a takeover): 0..86400. Default: 0.

  RR_ANNOUNCE_COUNT  Stop announcing after this many announcements (the address
                 stays until rusty_rail stops): 1..4294967295. Default: unset
                 (announce until stopped).

  RR_ANNOUNCE_UNMANAGED  1: the addresses are managed by someone else; announce
                 them but never add or remove them. Default: 0.

  RR_WATCH       What the loser of a conflict does (the lower MAC keeps an
                 address): fail (remove it, exit 1), quit (remove it, exit 0),
                 log (log it, keep announcing), standby (remove it, stay silent
                 and take over once the holder is silent for 3 intervals; not
                 with RR_ANNOUNCE_UNMANAGED=1), or no (no watcher at all).
                 Default: fail.

  RR_WATCH_DELAY  Seconds after the first announcement before conflicts are acted
                 on: 0..86400. Default: 0.

  RR_STATE_DIR   Where rusty_rail keeps the list of addresses it added, so that a
                 restart after a crash removes them. Default: /run/rusty_rail.

Log verbosity follows RUST_LOG (default: info).
";

/// A configuration mistake. Its `Display` is one line that names the
/// variable, quotes the value and says what was expected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// `RR_DEVICE` is unset or empty.
    #[error(
        "RR_DEVICE is not set: expected the name of the interface to serve, e.g. RR_DEVICE=eth0"
    )]
    MissingDevice,

    /// `RR_DEVICE` cannot be an interface name.
    #[error(
        "RR_DEVICE={value:?}: expected an interface name of 1 to {MAX_DEVICE_LEN} bytes \
         without '/', ':', whitespace or control characters, e.g. RR_DEVICE=eth0"
    )]
    InvalidDevice { value: String },

    /// Neither `RR_TARGET_IPS` nor `RR_VIPS` is set.
    #[error(
        "neither RR_TARGET_IPS nor RR_VIPS is set: expected at least one backend set, \
         e.g. RR_TARGET_IPS=\"10.1.0.1;10.1.0.2\""
    )]
    NoBackendSet,

    /// An entry of a list is empty (`a;;b`, a trailing `;`, `VIP=a,,b`).
    #[error("{var}={value:?}: {at} is empty; expected {expected}")]
    EmptyEntry {
        var: &'static str,
        value: String,
        /// Which entry, e.g. `entry 2` or `backend 2 of VIP 192.0.2.10`.
        at: String,
        expected: &'static str,
    },

    /// A backend address does not parse.
    #[error("{var}={value:?}: {at} is not an IPv4 or IPv6 address")]
    BadAddress {
        var: &'static str,
        value: String,
        /// The address as written, e.g. `entry "x"`.
        at: String,
    },

    /// A backend weight is not an integer from 0 to [`MAX_WEIGHT`].
    #[error("{var}={value:?}: weight {weight:?} of {at} is not an integer from 0 to {MAX_WEIGHT}")]
    BadWeight {
        var: &'static str,
        value: String,
        at: String,
        weight: String,
    },

    /// The same backend address appears twice in one set.
    #[error(
        "{var}={value:?}: backend {addr} is listed twice in {set}; expected each address once per set"
    )]
    DuplicateBackend {
        var: &'static str,
        value: String,
        addr: IpAddr,
        set: String,
    },

    /// An `RR_VIPS` entry has no `=`.
    #[error("RR_VIPS={value:?}: entry {entry:?} has no '='; expected VIP=BACKEND[,BACKEND...]")]
    MissingEquals { value: String, entry: String },

    /// An `RR_VIPS` VIP does not parse.
    #[error("RR_VIPS={value:?}: VIP {vip:?} is not an IPv4 or IPv6 address")]
    BadVip { value: String, vip: String },

    /// The same VIP appears twice in `RR_VIPS`.
    #[error("RR_VIPS={value:?}: VIP {vip} is listed twice; expected each VIP once")]
    DuplicateVip { value: String, vip: IpAddr },

    /// `RR_HASH_KEY` is not 32 hex digits.
    #[error(
        "RR_HASH_KEY={value:?}: expected exactly 32 hex digits (16 bytes), the same on every node"
    )]
    BadHashKey { value: String },

    /// `RR_TABLE_SIZE` is not a prime in range.
    #[error(
        "RR_TABLE_SIZE={value:?}: expected a prime between {} and {}",
        maglev::MIN_SIZE,
        maglev::MAX_SIZE
    )]
    BadTableSize { value: String },

    /// A backend set has at least as many backends (weight > 0) as the
    /// table has slots.
    #[error(
        "RR_TABLE_SIZE=\"{size}\": {set} has {backends} backends with weight > 0; \
         expected a table size larger than that (100 slots per backend or more is best)"
    )]
    TableTooSmall {
        /// e.g. `the default set (RR_TARGET_IPS)`.
        set: String,
        backends: usize,
        size: usize,
    },

    /// `RR_VLAN` is not a VLAN id.
    #[error(
        "RR_VLAN={value:?}: expected an 802.1Q VLAN id between 1 and 4094, or unset for untagged"
    )]
    BadVlan { value: String },

    /// A forwarder setting is out of range or not one of its words.
    #[error("{var}={value:?}: expected {expected}")]
    BadValue {
        var: &'static str,
        value: String,
        expected: &'static str,
    },

    /// A known variable's value is not valid UTF-8 (only from the real environment).
    #[error("{var}={value:?}: expected valid UTF-8 text")]
    NotUnicode { var: &'static str, value: String },

    /// envy failed; cannot happen with all-string fields, kept so no error is lost.
    #[error("cannot read the RR_* environment: {message}")]
    Env { message: String },
}

/// One VIP with a backend set of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    pub addr: IpAddr,
    /// In the order given; may be empty (traffic to the VIP is dropped).
    pub backends: Vec<Backend>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `RR_DEVICE`.
    pub device: String,
    /// `RR_TARGET_IPS`, in the order given; `None` when unset.
    pub default_set: Option<Vec<Backend>>,
    /// `RR_VIPS`, in the order given.
    pub vips: Vec<Vip>,
    /// `RR_HASH_KEY`, or [`DEFAULT_HASH_KEY`].
    pub hash_key: Key,
    /// True when `hash_key` is [`DEFAULT_HASH_KEY`] (unset, or set to it).
    pub hash_key_is_default: bool,
    /// `RR_TABLE_SIZE`, or [`maglev::DEFAULT_SIZE`].
    pub table_size: usize,
    /// `RR_VLAN`; `None` for untagged.
    pub vlan: Option<u16>,
    /// How the forwarder runs: XDP mode, cores, batching, idling, stats.
    pub forwarder: Forwarder,
    /// `RR_ANNOUNCE` and its settings; `None` when unset.
    pub announce: Option<Announce>,
    /// Names of `RR_*` variables that are not in [`VARIABLES`], sorted;
    /// ignored, but reported by [`Config::warnings`].
    pub unknown_vars: Vec<String>,
}

/// The most addresses `RR_ANNOUNCE` may list.
pub const MAX_ANNOUNCED: usize = 64;

/// Addresses to announce (`RR_ANNOUNCE*`, `RR_WATCH*`, `RR_STATE_DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// `(address, prefix length)`, in the order given.
    pub addresses: Vec<(IpAddr, u8)>,
    pub interval: std::time::Duration,
    pub jitter: std::time::Duration,
    pub delay: std::time::Duration,
    /// `None`: announce until stopped.
    pub count: Option<u32>,
    /// `RR_ANNOUNCE_UNMANAGED=1`: never add or remove the addresses.
    pub unmanaged: bool,
    pub watch: Watch,
    pub watch_delay: std::time::Duration,
    pub state_dir: std::path::PathBuf,
}

/// `RR_WATCH`: what the loser of a conflict does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Remove the address and exit 1.
    Fail,
    /// Remove the address and exit 0.
    Quit,
    /// Log and carry on announcing.
    Log,
    /// Remove the address and wait silently to take it over.
    Standby,
    /// No watcher at all.
    No,
}

impl Watch {
    pub fn name(self) -> &'static str {
        match self {
            Watch::Fail => "fail",
            Watch::Quit => "quit",
            Watch::Log => "log",
            Watch::Standby => "standby",
            Watch::No => "no",
        }
    }
}

/// `RR_STATE_DIR` when unset.
pub const DEFAULT_STATE_DIR: &str = "/run/rusty_rail";

/// `RR_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// An XDP program steers frames to AF_XDP sockets.
    Xdp,
    /// netmap rings, the host rings bridged (cargo feature `netmap`).
    Netmap,
}

/// `RR_XDP_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode where the driver has it, else generic.
    Auto,
    Native,
    Generic,
}

/// `RR_IDLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Spin a while on empty rings, then sleep in poll() until traffic returns.
    Adaptive,
    /// Never sleep, as DPDK does.
    Spin,
}

/// The forwarder's tuning knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarder {
    pub backend: Io,
    pub xdp_mode: XdpMode,
    /// `RR_CORES`; `None` means queue i on core i.
    pub cores: Option<Vec<usize>>,
    pub batch: usize,
    pub ring_size: u32,
    pub idle: Idle,
    pub idle_spin: std::time::Duration,
    /// `None` when `RR_STATS_INTERVAL=0`.
    pub stats_interval: Option<std::time::Duration>,
    /// `RR_API`; `None` when `off`.
    pub api: Option<std::net::SocketAddr>,
    /// `RR_FLOW_TABLE_SIZE`; 0 turns connection tracking off.
    pub flow_table_size: usize,
    /// `RR_FLOW_TIMEOUT`, in seconds.
    pub flow_timeout: u16,
    /// `None` unless `RR_HEALTH_PORT` is set.
    pub health: Option<HealthCheck>,
}

/// Active health checks (`RR_HEALTH_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// HTTP GET on this path; `None` for a bare TCP connect.
    pub path: Option<String>,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub rise: u32,
    pub fall: u32,
}

/// `RR_API` when unset.
pub const DEFAULT_API: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9180),
);

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder {
            backend: if cfg!(feature = "xdp") {
                Io::Xdp
            } else {
                Io::Netmap
            },
            xdp_mode: XdpMode::Auto,
            cores: None,
            batch: 64,
            ring_size: 2048,
            idle: Idle::Adaptive,
            idle_spin: std::time::Duration::from_micros(200),
            stats_interval: Some(std::time::Duration::from_secs(10)),
            api: Some(DEFAULT_API),
            flow_table_size: 1 << 20,
            flow_timeout: 120,
            health: None,
        }
    }
}

/// The variables as envy reads them; every field a string so that all
/// validation (and every error message) happens here.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    device: Option<String>,
    target_ips: Option<String>,
    vips: Option<String>,
    hash_key: Option<String>,
    table_size: Option<String>,
    vlan: Option<String>,
    backend: Option<String>,
    xdp_mode: Option<String>,
    cores: Option<String>,
    batch: Option<String>,
    ring_size: Option<String>,
    idle: Option<String>,
    idle_spin_us: Option<String>,
    stats_interval: Option<String>,
    api: Option<String>,
    flow_table_size: Option<String>,
    flow_timeout: Option<String>,
    health_port: Option<String>,
    health_path: Option<String>,
    health_interval: Option<String>,
    health_timeout: Option<String>,
    health_rise: Option<String>,
    health_fall: Option<String>,
    announce: Option<String>,
    announce_interval: Option<String>,
    announce_jitter: Option<String>,
    announce_delay: Option<String>,
    announce_count: Option<String>,
    announce_unmanaged: Option<String>,
    watch: Option<String>,
    watch_delay: Option<String>,
    state_dir: Option<String>,
}

const EXPECT_TARGET_ENTRY: &str = "ADDR or ADDR*WEIGHT, separated by ';'";
const EXPECT_VIP_ENTRY: &str = "VIP=BACKEND[,BACKEND...], separated by ';'";
const EXPECT_VIP_BACKEND: &str = "ADDR or ADDR*WEIGHT, separated by ','";

impl Config {
    /// Reads the process environment.
    ///
    /// Unlike `std::env::vars()` this does not panic on variables that are
    /// not UTF-8: such a value of a known `RR_*` variable is an error, any
    /// other is ignored.
    ///
    /// # Errors
    ///
    /// The first mistake found, as described by [`Error`].
    pub fn from_env() -> Result<Config, Error> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            let value = match value.into_string() {
                Ok(value) => value,
                Err(raw) => match known(&name) {
                    Some(var) => return Err(not_unicode(var, &raw)),
                    None => raw.to_string_lossy().into_owned(),
                },
            };
            vars.push((name, value));
        }
        Config::from_vars(vars)
    }

    /// Reads the given `(name, value)` pairs as if they were the
    /// environment; names without the `RR_` prefix are ignored. When a
    /// name appears twice, the last value counts.
    ///
    /// # Errors
    ///
    /// The first mistake found, as described by [`Error`].
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Config, Error> {
        // Hand envy only the exact known names (envy would also accept
        // `RR_device` or `RR_RR_DEVICE`, and reject duplicates with its own
        // message); collect every other `RR_*` name as unknown.
        let mut ours = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        for (name, value) in vars {
            if !name.starts_with(PREFIX) {
                continue;
            }
            if known(&name).is_some() {
                ours.insert(name, value);
            } else {
                unknown.insert(name);
            }
        }
        let raw: Raw = envy::prefixed(PREFIX)
            .from_iter(ours)
            .map_err(|e| Error::Env {
                message: e.to_string().replace(['\r', '\n'], " "),
            })?;
        let mut config = Config::from_raw(raw)?;
        config.unknown_vars = unknown.into_iter().collect();
        Ok(config)
    }

    fn from_raw(mut raw: Raw) -> Result<Config, Error> {
        let device = match set(raw.device.take()) {
            None => return Err(Error::MissingDevice),
            Some(value) => parse_device(value)?,
        };
        let default_set = match set(raw.target_ips.take()) {
            None => None,
            Some(value) => Some(parse_target_ips(&value)?),
        };
        let vips = match set(raw.vips.take()) {
            None => None,
            Some(value) => Some(parse_vips(&value)?),
        };
        if default_set.is_none() && vips.is_none() {
            return Err(Error::NoBackendSet);
        }
        let hash_key = match set(raw.hash_key.take()) {
            None => DEFAULT_HASH_KEY,
            Some(value) => parse_hash_key(value)?,
        };
        let table_size = match set(raw.table_size.take()) {
            None => maglev::DEFAULT_SIZE,
            Some(value) => parse_table_size(value)?,
        };
        let vlan = match set(raw.vlan.take()) {
            None => None,
            Some(value) => Some(parse_vlan(value)?),
        };
        let forwarder = parse_forwarder(&raw)?;
        let announce = parse_announce(&raw)?;
        if announce.is_some()
            && let Some(id) = vlan
        {
            return Err(Error::BadValue {
                var: "RR_VLAN",
                value: id.to_string(),
                expected: "RR_VLAN unset with RR_ANNOUNCE (addresses are announced untagged on RR_DEVICE)",
            });
        }
        let config = Config {
            announce,
            forwarder,
            device,
            default_set,
            vips: vips.unwrap_or_default(),
            hash_key,
            hash_key_is_default: hash_key == DEFAULT_HASH_KEY,
            table_size,
            vlan,
            unknown_vars: Vec::new(),
        };
        for (set, backends) in config.sets() {
            let n = active(backends);
            if n >= config.table_size {
                return Err(Error::TableTooSmall {
                    set,
                    backends: n,
                    size: config.table_size,
                });
            }
        }
        Ok(config)
    }

    /// Every backend set with a description for messages, e.g.
    /// `the default set (RR_TARGET_IPS)` or
    /// `the set of VIP 192.0.2.10 (RR_VIPS)`.
    fn sets(&self) -> impl Iterator<Item = (String, &[Backend])> {
        let default = self
            .default_set
            .as_deref()
            .map(|b| ("the default set (RR_TARGET_IPS)".to_string(), b));
        let vips = self.vips.iter().map(|vip| {
            (
                format!("the set of VIP {} (RR_VIPS)", vip.addr),
                vip.backends.as_slice(),
            )
        });
        default.into_iter().chain(vips)
    }

    /// Things that are allowed but probably not meant, one line each:
    /// the public default hash key, sets with too few table slots per
    /// backend, sets that drop all traffic, and unknown `RR_*` variables.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.hash_key_is_default {
            warnings.push(
                "RR_HASH_KEY is the built-in default key, which is public: set the same \
                 random 32-hex-digit key on every node, e.g. from `openssl rand -hex 16`"
                    .to_string(),
            );
        }
        for (set, backends) in self.sets() {
            let n = active(backends);
            if backends.is_empty() {
                warnings.push(format!("{set} has no backends: its traffic is dropped"));
            } else if n == 0 {
                warnings.push(format!(
                    "{set} has no backend with weight > 0: its new flows are dropped"
                ));
            } else if self.table_size / 100 < n {
                warnings.push(format!(
                    "RR_TABLE_SIZE={}: {set} has {n} backends with weight > 0, fewer than \
                     100 table slots each, so flows may be spread unevenly; a prime of at \
                     least {} is better",
                    self.table_size,
                    suggested_size(n)
                ));
            }
        }
        if let Some(announce) = &self.announce
            && self.default_set.is_none()
        {
            for (addr, _) in &announce.addresses {
                if !self.vips.iter().any(|v| v.addr == *addr) {
                    warnings.push(format!(
                        "RR_ANNOUNCE: {addr} has no set in RR_VIPS and RR_TARGET_IPS is unset: \
                         plain IP to it is dropped as unknown_vip"
                    ));
                }
            }
        }
        for name in &self.unknown_vars {
            let hint = match closest_known(name) {
                Some(known) => format!(" (did you mean {known}?)"),
                None => String::new(),
            };
            warnings.push(format!(
                "{name:?} is not a rusty_rail variable and is ignored{hint}; known: {}",
                VARIABLES.join(", ")
            ));
        }
        warnings
    }
}

/// `Some(&'static name)` when `name` is one of [`VARIABLES`].
fn known(name: &str) -> Option<&'static str> {
    VARIABLES.iter().copied().find(|v| *v == name)
}

fn not_unicode(var: &'static str, raw: &OsStr) -> Error {
    Error::NotUnicode {
        var,
        value: raw.to_string_lossy().into_owned(),
    }
}

/// An empty value counts as unset.
fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// The number of backends that take new flows.
fn active(backends: &[Backend]) -> usize {
    backends.iter().filter(|b| b.weight > 0).count()
}

/// The smallest prime >= 100·n, capped at [`maglev::MAX_SIZE`].
fn suggested_size(n: usize) -> usize {
    let mut m = n.saturating_mul(100).max(maglev::MIN_SIZE);
    while m < maglev::MAX_SIZE {
        if maglev::is_prime(m as u64) {
            return m;
        }
        m += 1;
    }
    maglev::MAX_SIZE
}

/// The known variable within edit distance 2 of `name`, if any.
fn closest_known(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    VARIABLES
        .iter()
        .map(|v| (edit_distance(&upper, v), *v))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn parse_device(value: String) -> Result<String, Error> {
    let ok = (1..=MAX_DEVICE_LEN).contains(&value.len())
        && value != "."
        && value != ".."
        && !value
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(value)
    } else {
        Err(Error::InvalidDevice { value })
    }
}

fn parse_target_ips(value: &str) -> Result<Vec<Backend>, Error> {
    let var = "RR_TARGET_IPS";
    let mut backends = Vec::new();
    for (i, entry) in value.split(';').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(Error::EmptyEntry {
                var,
                value: value.to_string(),
                at: format!("entry {}", i + 1),
                expected: EXPECT_TARGET_ENTRY,
            });
        }
        let backend = parse_backend(var, value, entry, |text| format!("entry {text:?}"))?;
        push_unique(var, value, &mut backends, backend, || {
            "the default set".to_string()
        })?;
    }
    Ok(backends)
}

fn parse_vips(value: &str) -> Result<Vec<Vip>, Error> {
    let var = "RR_VIPS";
    let mut vips: Vec<Vip> = Vec::new();
    for (i, entry) in value.split(';').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(Error::EmptyEntry {
                var,
                value: value.to_string(),
                at: format!("entry {}", i + 1),
                expected: EXPECT_VIP_ENTRY,
            });
        }
        let Some((vip_text, list)) = entry.split_once('=') else {
            return Err(Error::MissingEquals {
                value: value.to_string(),
                entry: entry.to_string(),
            });
        };
        let vip_text = vip_text.trim();
        let addr: IpAddr = vip_text.parse().map_err(|_| Error::BadVip {
            value: value.to_string(),
            vip: vip_text.to_string(),
        })?;
        if vips.iter().any(|v| v.addr == addr) {
            return Err(Error::DuplicateVip {
                value: value.to_string(),
                vip: addr,
            });
        }
        let mut backends = Vec::new();
        let list = list.trim();
        if !list.is_empty() {
            for (j, item) in list.split(',').enumerate() {
                let item = item.trim();
                if item.is_empty() {
                    return Err(Error::EmptyEntry {
                        var,
                        value: value.to_string(),
                        at: format!("backend {} of VIP {addr}", j + 1),
                        expected: EXPECT_VIP_BACKEND,
                    });
                }
                let backend = parse_backend(var, value, item, |text| {
                    format!("backend {text:?} of VIP {addr}")
                })?;
                push_unique(var, value, &mut backends, backend, || {
                    format!("the set of VIP {addr}")
                })?;
            }
        }
        vips.push(Vip { addr, backends });
    }
    Ok(vips)
}

/// Parses `ADDR` or `ADDR*WEIGHT` (already trimmed and non-empty);
/// `describe` names the entry for messages.
fn parse_backend(
    var: &'static str,
    value: &str,
    entry: &str,
    describe: impl Fn(&str) -> String,
) -> Result<Backend, Error> {
    let (addr_text, weight_text) = match entry.split_once('*') {
        Some((addr, weight)) => (addr.trim(), Some(weight.trim())),
        None => (entry, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| Error::BadAddress {
        var,
        value: value.to_string(),
        at: describe(addr_text),
    })?;
    let weight = match weight_text {
        None => 1,
        Some(text) => parse_weight(text).ok_or_else(|| Error::BadWeight {
            var,
            value: value.to_string(),
            at: describe(entry),
            weight: text.to_string(),
        })?,
    };
    Ok(Backend { addr, weight })
}

fn parse_weight(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|w| *w <= MAX_WEIGHT)
}

fn push_unique(
    var: &'static str,
    value: &str,
    backends: &mut Vec<Backend>,
    backend: Backend,
    set: impl Fn() -> String,
) -> Result<(), Error> {
    if backends.iter().any(|b| b.addr == backend.addr) {
        return Err(Error::DuplicateBackend {
            var,
            value: value.to_string(),
            addr: backend.addr,
            set: set(),
        });
    }
    backends.push(backend);
    Ok(())
}

fn parse_hash_key(value: String) -> Result<Key, Error> {
    let bytes = value.as_bytes();
    let mut key = [0u8; 16];
    if bytes.len() != 2 * key.len() {
        return Err(Error::BadHashKey { value });
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => key[i] = hi << 4 | lo,
            _ => return Err(Error::BadHashKey { value }),
        }
    }
    Ok(key)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Digits only (no sign, no whitespace), parsed as `u64`.
fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_table_size(value: String) -> Result<usize, Error> {
    match parse_decimal(&value).and_then(|n| usize::try_from(n).ok()) {
        Some(m)
            if (maglev::MIN_SIZE..=maglev::MAX_SIZE).contains(&m) && maglev::is_prime(m as u64) =>
        {
            Ok(m)
        }
        _ => Err(Error::BadTableSize { value }),
    }
}

fn parse_vlan(value: String) -> Result<u16, Error> {
    match parse_decimal(&value).and_then(|id| u16::try_from(id).ok()) {
        Some(id @ 1..=4094) => Ok(id),
        _ => Err(Error::BadVlan { value }),
    }
}

fn parse_forwarder(raw: &Raw) -> Result<Forwarder, Error> {
    fn value(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|v| !v.is_empty())
    }
    let bad = |var, value: &str, expected| Error::BadValue {
        var,
        value: value.to_string(),
        expected,
    };
    let mut f = Forwarder::default();
    if let Some(v) = value(&raw.backend) {
        f.backend = match v {
            "xdp" if cfg!(feature = "xdp") => Io::Xdp,
            "xdp" => {
                return Err(bad(
                    "RR_BACKEND",
                    v,
                    "netmap (this build has no XDP backend: build with --features xdp, on Linux)",
                ));
            }
            "netmap" if cfg!(feature = "netmap") => Io::Netmap,
            "netmap" => {
                return Err(bad(
                    "RR_BACKEND",
                    v,
                    "xdp (this build has no netmap backend: build with --features netmap)",
                ));
            }
            _ => return Err(bad("RR_BACKEND", v, "xdp or netmap")),
        };
    }
    if let Some(v) = value(&raw.xdp_mode) {
        f.xdp_mode = match v {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            _ => return Err(bad("RR_XDP_MODE", v, "auto, native or generic")),
        };
    }
    if let Some(v) = value(&raw.cores) {
        const EXPECTED: &str = "','-separated core numbers, e.g. RR_CORES=0,1";
        let cores = v
            .split(',')
            .map(|c| parse_decimal(c.trim()).and_then(|n| usize::try_from(n).ok()))
            .collect::<Option<Vec<usize>>>()
            .filter(|c| c.iter().all(|&n| n < 4096))
            .ok_or_else(|| bad("RR_CORES", v, EXPECTED))?;
        f.cores = Some(cores);
    }
    if let Some(v) = value(&raw.batch) {
        f.batch = parse_decimal(v)
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| bad("RR_BATCH", v, "an integer from 1 to 1024"))?
            as usize;
    }
    if let Some(v) = value(&raw.ring_size) {
        f.ring_size = parse_decimal(v)
            .filter(|n| (64..=16384).contains(n) && n.is_power_of_two())
            .ok_or_else(|| bad("RR_RING_SIZE", v, "a power of two from 64 to 16384"))?
            as u32;
    }
    if let Some(v) = value(&raw.idle) {
        f.idle = match v {
            "adaptive" => Idle::Adaptive,
            "spin" => Idle::Spin,
            _ => return Err(bad("RR_IDLE", v, "adaptive or spin")),
        };
    }
    if let Some(v) = value(&raw.idle_spin_us) {
        let us = parse_decimal(v)
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| bad("RR_IDLE_SPIN_US", v, "microseconds from 0 to 1000000"))?;
        f.idle_spin = std::time::Duration::from_micros(us);
    }
    if let Some(v) = value(&raw.stats_interval) {
        let secs = parse_seconds(v).ok_or_else(|| {
            bad(
                "RR_STATS_INTERVAL",
                v,
                "seconds from 0 to 86400 (fractions allowed; 0 = off)",
            )
        })?;
        f.stats_interval = (!secs.is_zero()).then_some(secs);
    }
    if let Some(v) = value(&raw.api) {
        f.api = match v {
            "off" => None,
            _ => Some(v.parse().map_err(|_| {
                bad(
                    "RR_API",
                    v,
                    "ADDR:PORT (e.g. 127.0.0.1:9180 or [::1]:9180) or off",
                )
            })?),
        };
    }
    if let Some(v) = value(&raw.flow_table_size) {
        f.flow_table_size = parse_decimal(v)
            .filter(|n| *n <= crate::dataplane::conntrack::MAX_ENTRIES as u64)
            .ok_or_else(|| bad("RR_FLOW_TABLE_SIZE", v, "entries from 0 (off) to 268435456"))?
            as usize;
    }
    if let Some(v) = value(&raw.flow_timeout) {
        f.flow_timeout = parse_decimal(v)
            .filter(|n| (1..=3600).contains(n))
            .ok_or_else(|| bad("RR_FLOW_TIMEOUT", v, "seconds from 1 to 3600"))?
            as u16;
    }
    f.health = parse_health(raw)?;
    Ok(f)
}

fn parse_health(raw: &Raw) -> Result<Option<HealthCheck>, Error> {
    fn value(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|v| !v.is_empty())
    }
    let bad = |var, value: &str, expected| Error::BadValue {
        var,
        value: value.to_string(),
        expected,
    };
    let count = |var, v: Option<&str>, default| match v {
        None => Ok(default),
        Some(v) => parse_decimal(v)
            .filter(|n| (1..=100).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| bad(var, v, "a count from 1 to 100")),
    };
    let Some(port) = value(&raw.health_port) else {
        let others = [
            ("RR_HEALTH_PATH", &raw.health_path),
            ("RR_HEALTH_INTERVAL", &raw.health_interval),
            ("RR_HEALTH_TIMEOUT", &raw.health_timeout),
            ("RR_HEALTH_RISE", &raw.health_rise),
            ("RR_HEALTH_FALL", &raw.health_fall),
        ];
        if let Some((var, v)) = others.iter().find_map(|(n, v)| Some((*n, value(v)?))) {
            return Err(bad(
                var,
                v,
                "RR_HEALTH_PORT to be set as well (it turns checks on)",
            ));
        }
        return Ok(None);
    };
    let port = parse_decimal(port)
        .filter(|n| (1..=65535).contains(n))
        .ok_or_else(|| bad("RR_HEALTH_PORT", port, "a TCP port from 1 to 65535"))?
        as u16;
    let path = match value(&raw.health_path) {
        None => None,
        Some(p) if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) => {
            Some(p.to_string())
        }
        Some(p) => {
            return Err(bad(
                "RR_HEALTH_PATH",
                p,
                "an HTTP path starting with '/', without spaces or control characters",
            ));
        }
    };
    let interval = match value(&raw.health_interval) {
        None => std::time::Duration::from_secs(2),
        Some(v) => parse_seconds(v)
            .filter(|d| d.as_secs_f64() >= 0.05 && d.as_secs() <= 3600)
            .ok_or_else(|| bad("RR_HEALTH_INTERVAL", v, "seconds from 0.05 to 3600"))?,
    };
    let timeout = match value(&raw.health_timeout) {
        None => interval.min(std::time::Duration::from_secs(1)),
        Some(v) => parse_seconds(v)
            .filter(|d| !d.is_zero() && *d <= interval)
            .ok_or_else(|| {
                bad(
                    "RR_HEALTH_TIMEOUT",
                    v,
                    "seconds above 0 and at most RR_HEALTH_INTERVAL",
                )
            })?,
    };
    Ok(Some(HealthCheck {
        port,
        path,
        interval,
        timeout,
        rise: count("RR_HEALTH_RISE", value(&raw.health_rise), 2)?,
        fall: count("RR_HEALTH_FALL", value(&raw.health_fall), 3)?,
    }))
}

fn parse_announce(raw: &Raw) -> Result<Option<Announce>, Error> {
    fn value(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|v| !v.is_empty())
    }
    let bad = |var, value: &str, expected| Error::BadValue {
        var,
        value: value.to_string(),
        expected,
    };
    let seconds = |var, v: Option<&str>, min: f64, max: f64, default, expected| match v {
        None => Ok(default),
        Some(v) => parse_seconds(v)
            .filter(|d| d.as_secs_f64() >= min && d.as_secs_f64() <= max)
            .ok_or_else(|| bad(var, v, expected)),
    };
    let Some(list) = value(&raw.announce) else {
        let others = [
            ("RR_ANNOUNCE_INTERVAL", &raw.announce_interval),
            ("RR_ANNOUNCE_JITTER", &raw.announce_jitter),
            ("RR_ANNOUNCE_DELAY", &raw.announce_delay),
            ("RR_ANNOUNCE_COUNT", &raw.announce_count),
            ("RR_ANNOUNCE_UNMANAGED", &raw.announce_unmanaged),
            ("RR_WATCH", &raw.watch),
            ("RR_WATCH_DELAY", &raw.watch_delay),
        ];
        if let Some((var, v)) = others.iter().find_map(|(n, v)| Some((*n, value(v)?))) {
            return Err(bad(var, v, "RR_ANNOUNCE to be set as well"));
        }
        return Ok(None);
    };
    if cfg!(not(target_os = "linux")) {
        return Err(bad(
            "RR_ANNOUNCE",
            list,
            "it unset (announcing needs Linux: rtnetlink and packet sockets)",
        ));
    }
    let mut addresses: Vec<(IpAddr, u8)> = Vec::new();
    for entry in list.split(';') {
        let entry = entry.trim();
        let expected = "';'-separated ADDR/PREFIX entries of unicast addresses, \
                        e.g. RR_ANNOUNCE=\"192.168.77.100/24;fd00::100/64\"";
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("RR_ANNOUNCE", list, expected))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => parse_decimal(p)
                .filter(|n| (1..=u64::from(max)).contains(n))
                .ok_or_else(|| bad("RR_ANNOUNCE", list, expected))? as u8,
        };
        let unicast = match addr {
            IpAddr::V4(a) => {
                !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
            }
            IpAddr::V6(a) => {
                !(a.is_unspecified() || a.is_loopback() || a.is_multicast())
                    && (a.segments()[0] & 0xffc0) != 0xfe80
            }
        };
        if !unicast {
            return Err(bad(
                "RR_ANNOUNCE",
                list,
                "unicast addresses (not loopback, multicast, broadcast, link-local or unspecified)",
            ));
        }
        if addresses.iter().any(|(a, _)| *a == addr) {
            return Err(bad("RR_ANNOUNCE", list, "each address once"));
        }
        addresses.push((addr, prefix));
    }
    if addresses.len() > MAX_ANNOUNCED {
        return Err(bad("RR_ANNOUNCE", list, "at most 64 addresses"));
    }
    let interval = seconds(
        "RR_ANNOUNCE_INTERVAL",
        value(&raw.announce_interval),
        0.05,
        3600.0,
        std::time::Duration::from_secs(1),
        "seconds from 0.05 to 3600",
    )?;
    let jitter = seconds(
        "RR_ANNOUNCE_JITTER",
        value(&raw.announce_jitter),
        0.0,
        3600.0,
        std::time::Duration::ZERO,
        "seconds from 0 to 3600",
    )?;
    let delay = seconds(
        "RR_ANNOUNCE_DELAY",
        value(&raw.announce_delay),
        0.0,
        86_400.0,
        std::time::Duration::ZERO,
        "seconds from 0 to 86400",
    )?;
    let watch_delay = seconds(
        "RR_WATCH_DELAY",
        value(&raw.watch_delay),
        0.0,
        86_400.0,
        std::time::Duration::ZERO,
        "seconds from 0 to 86400",
    )?;
    let count = match value(&raw.announce_count) {
        None => None,
        Some(v) => Some(
            parse_decimal(v)
                .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                .ok_or_else(|| {
                    bad(
                        "RR_ANNOUNCE_COUNT",
                        v,
                        "a count from 1 to 4294967295 (unset: announce until stopped)",
                    )
                })? as u32,
        ),
    };
    let unmanaged = match value(&raw.announce_unmanaged) {
        None | Some("0") => false,
        Some("1") => true,
        Some(v) => return Err(bad("RR_ANNOUNCE_UNMANAGED", v, "0 or 1")),
    };
    let watch = match value(&raw.watch) {
        None | Some("fail") => Watch::Fail,
        Some("quit") => Watch::Quit,
        Some("log") => Watch::Log,
        Some("standby") => Watch::Standby,
        Some("no") => Watch::No,
        Some(v) => return Err(bad("RR_WATCH", v, "fail, quit, log, standby or no")),
    };
    if unmanaged && watch == Watch::Standby {
        return Err(bad(
            "RR_WATCH",
            "standby",
            "fail, quit, log or no with RR_ANNOUNCE_UNMANAGED=1 (a standby must remove the address, and an unmanaged one is not ours to remove)",
        ));
    }
    let state_dir = match value(&raw.state_dir) {
        None => std::path::PathBuf::from(DEFAULT_STATE_DIR),
        Some(v) if v.starts_with('/') && !v.chars().any(char::is_control) => {
            std::path::PathBuf::from(v)
        }
        Some(v) => return Err(bad("RR_STATE_DIR", v, "an absolute directory path")),
    };
    Ok(Some(Announce {
        addresses,
        interval,
        jitter,
        delay,
        count,
        unmanaged,
        watch,
        watch_delay,
        state_dir,
    }))
}

/// `1`, `0.5`, `2.25`: decimal seconds up to a day, without sign or exponent.
fn parse_seconds(value: &str) -> Option<std::time::Duration> {
    let ok = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.bytes().filter(|&b| b == b'.').count() <= 1
        && value.bytes().any(|b| b.is_ascii_digit());
    let secs: f64 = value.parse().ok().filter(|_| ok)?;
    (secs <= 86_400.0).then(|| std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        Config::from_vars(vars(pairs))
    }

    /// Parses with `RR_DEVICE=eth0` added.
    fn with_device(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let mut all = vec![("RR_DEVICE", "eth0")];
        all.extend_from_slice(pairs);
        parse(&all)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// Asserts the error is one line naming `var` and containing `bad`.
    fn assert_message(err: &Error, var: &str, bad: &str) {
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "not one line: {msg}");
        assert!(msg.contains(var), "{msg:?} does not name {var}");
        assert!(msg.contains(bad), "{msg:?} does not contain {bad:?}");
    }

    #[test]
    fn readme_example_gives_two_weight_one_ipv4_backends() {
        let config = parse(&[
            ("RR_DEVICE", "eth0"),
            ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2"),
        ])
        .expect("the documented example must parse");
        assert_eq!(config.device, "eth0");
        assert_eq!(
            config.default_set,
            Some(vec![
                Backend {
                    addr: v4(10, 1, 0, 1),
                    weight: 1
                },
                Backend {
                    addr: v4(10, 1, 0, 2),
                    weight: 1
                },
            ])
        );
        assert!(config.vips.is_empty());
    }

    #[test]
    fn weights_ipv6_and_whitespace_parse() {
        let config = with_device(&[(
            "RR_TARGET_IPS",
            " 10.1.0.1 ; 10.1.0.2*3;2001:db8::1 ; 10.1.0.3*0;10.1.0.4*65535 ",
        )])
        .unwrap();
        assert_eq!(
            config.default_set.unwrap(),
            vec![
                Backend {
                    addr: v4(10, 1, 0, 1),
                    weight: 1
                },
                Backend {
                    addr: v4(10, 1, 0, 2),
                    weight: 3
                },
                Backend {
                    addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                    weight: 1
                },
                Backend {
                    addr: v4(10, 1, 0, 3),
                    weight: 0
                },
                Backend {
                    addr: v4(10, 1, 0, 4),
                    weight: 65535
                },
            ]
        );
    }

    #[test]
    fn defaults_are_public_key_65537_and_untagged() {
        let config = with_device(&[("RR_TARGET_IPS", "10.1.0.1")]).unwrap();
        assert_eq!(config.hash_key, DEFAULT_HASH_KEY);
        assert_eq!(config.hash_key, *b"rusty_rail/maglv");
        assert!(config.hash_key_is_default);
        assert_eq!(config.table_size, 65537);
        assert_eq!(config.table_size, maglev::DEFAULT_SIZE);
        assert_eq!(config.vlan, None);
        assert!(config.unknown_vars.is_empty());
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("RR_HASH_KEY"));
    }

    #[test]
    fn default_key_hex_form_is_documented_correctly() {
        let config = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_HASH_KEY", "72757374795f7261696c2f6d61676c76"),
        ])
        .unwrap();
        assert_eq!(config.hash_key, DEFAULT_HASH_KEY);
        assert!(config.hash_key_is_default);
    }

    #[test]
    fn hash_key_table_size_and_vlan_parse() {
        let config = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_HASH_KEY", "000102030405060708090A0B0c0d0E0F"),
            ("RR_TABLE_SIZE", "251"),
            ("RR_VLAN", "4094"),
        ])
        .unwrap();
        assert_eq!(
            config.hash_key,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        assert!(!config.hash_key_is_default);
        assert_eq!(config.table_size, 251);
        assert_eq!(config.vlan, Some(4094));
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }

    #[test]
    fn vips_parse_several_including_an_empty_one() {
        let config = with_device(&[(
            "RR_VIPS",
            "192.0.2.10=10.1.0.1,10.1.0.2*2; 2001:db8::10 = 2001:db8:1::1 ;192.0.2.11=",
        )])
        .unwrap();
        assert_eq!(config.default_set, None);
        assert_eq!(
            config.vips,
            vec![
                Vip {
                    addr: v4(192, 0, 2, 10),
                    backends: vec![
                        Backend {
                            addr: v4(10, 1, 0, 1),
                            weight: 1
                        },
                        Backend {
                            addr: v4(10, 1, 0, 2),
                            weight: 2
                        },
                    ],
                },
                Vip {
                    addr: ip("2001:db8::10"),
                    backends: vec![Backend {
                        addr: ip("2001:db8:1::1"),
                        weight: 1
                    }],
                },
                Vip {
                    addr: v4(192, 0, 2, 11),
                    backends: vec![]
                },
            ]
        );
        let warnings = config.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("VIP 192.0.2.11") && w.contains("no backends")),
            "{warnings:?}"
        );
    }

    #[test]
    fn same_backend_may_serve_several_vips_and_the_default_set() {
        let config = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_VIPS", "192.0.2.10=10.1.0.1;192.0.2.11=10.1.0.1"),
        ])
        .unwrap();
        assert_eq!(config.vips.len(), 2);
        assert_eq!(config.default_set.unwrap().len(), 1);
    }

    #[test]
    fn missing_device_is_an_error_even_when_empty() {
        for pairs in [
            vec![("RR_TARGET_IPS", "10.1.0.1")],
            vec![("RR_DEVICE", ""), ("RR_TARGET_IPS", "10.1.0.1")],
        ] {
            let err = parse(&pairs).unwrap_err();
            assert_eq!(err, Error::MissingDevice);
            assert_eq!(
                err.to_string(),
                "RR_DEVICE is not set: expected the name of the interface to serve, e.g. RR_DEVICE=eth0"
            );
        }
    }

    #[test]
    fn invalid_device_names_are_rejected() {
        for bad in ["a/b", "eth 0", "eth0:1", "abcdefghijklmnop", "..", "eth\n0"] {
            let err = parse(&[("RR_DEVICE", bad), ("RR_TARGET_IPS", "10.1.0.1")]).unwrap_err();
            assert_eq!(
                err,
                Error::InvalidDevice {
                    value: bad.to_string()
                }
            );
            assert_message(&err, "RR_DEVICE", &format!("{bad:?}"));
        }
        let ok = parse(&[
            ("RR_DEVICE", "abcdefghijklmno"),
            ("RR_TARGET_IPS", "10.1.0.1"),
        ]);
        assert_eq!(ok.unwrap().device, "abcdefghijklmno");
    }

    #[test]
    fn no_backend_set_names_both_variables() {
        for pairs in [vec![], vec![("RR_TARGET_IPS", ""), ("RR_VIPS", "")]] {
            let err = with_device(&pairs).unwrap_err();
            assert_eq!(err, Error::NoBackendSet);
            assert_message(&err, "RR_TARGET_IPS", "RR_VIPS");
        }
    }

    #[test]
    fn bad_target_address_message_matches_the_documented_form() {
        let err = with_device(&[("RR_TARGET_IPS", "10.1.0.1;x")]).unwrap_err();
        assert_eq!(
            err,
            Error::BadAddress {
                var: "RR_TARGET_IPS",
                value: "10.1.0.1;x".into(),
                at: "entry \"x\"".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#"RR_TARGET_IPS="10.1.0.1;x": entry "x" is not an IPv4 or IPv6 address"#
        );
    }

    #[test]
    fn empty_target_entries_are_errors() {
        for bad in [
            "10.1.0.1;;10.1.0.2",
            "10.1.0.1;",
            ";10.1.0.1",
            " ",
            "10.1.0.1; ;10.1.0.2",
        ] {
            let err = with_device(&[("RR_TARGET_IPS", bad)]).unwrap_err();
            assert!(
                matches!(&err, Error::EmptyEntry { var: "RR_TARGET_IPS", value, .. } if value == bad),
                "{bad:?}: {err:?}"
            );
            assert_message(&err, "RR_TARGET_IPS", &format!("{bad:?}"));
        }
    }

    #[test]
    fn bad_weights_are_errors() {
        for (bad, weight) in [
            ("10.1.0.1*x", "x"),
            ("10.1.0.1*65536", "65536"),
            ("10.1.0.1*-1", "-1"),
            ("10.1.0.1*+1", "+1"),
            ("10.1.0.1*", ""),
            ("10.1.0.1*1*2", "1*2"),
            ("10.1.0.1*99999999999999999999", "99999999999999999999"),
        ] {
            let err = with_device(&[("RR_TARGET_IPS", bad)]).unwrap_err();
            assert_eq!(
                err,
                Error::BadWeight {
                    var: "RR_TARGET_IPS",
                    value: bad.into(),
                    at: format!("entry {bad:?}"),
                    weight: weight.into()
                }
            );
            assert_message(&err, "RR_TARGET_IPS", &format!("{weight:?}"));
        }
    }

    #[test]
    fn bad_addresses_are_errors() {
        for (bad, addr) in [
            ("10.1.0.256", "10.1.0.256"),
            ("2001:db8::g", "2001:db8::g"),
            ("[2001:db8::1]", "[2001:db8::1]"),
            ("host.example*2", "host.example"),
            ("10.1.0.1,10.1.0.2", "10.1.0.1,10.1.0.2"),
        ] {
            let err = with_device(&[("RR_TARGET_IPS", bad)]).unwrap_err();
            assert_eq!(
                err,
                Error::BadAddress {
                    var: "RR_TARGET_IPS",
                    value: bad.into(),
                    at: format!("entry {addr:?}")
                }
            );
        }
    }

    #[test]
    fn duplicate_target_is_an_error_even_with_other_weight() {
        let err = with_device(&[("RR_TARGET_IPS", "10.1.0.1;10.1.0.2;10.1.0.1*3")]).unwrap_err();
        assert_eq!(
            err,
            Error::DuplicateBackend {
                var: "RR_TARGET_IPS",
                value: "10.1.0.1;10.1.0.2;10.1.0.1*3".into(),
                addr: v4(10, 1, 0, 1),
                set: "the default set".into()
            }
        );
        assert_message(&err, "RR_TARGET_IPS", "10.1.0.1 is listed twice");
        // Two spellings of one IPv6 address are the same backend.
        let err = with_device(&[("RR_TARGET_IPS", "2001:db8::1;2001:DB8:0::0:1")]).unwrap_err();
        assert!(matches!(err, Error::DuplicateBackend { .. }), "{err:?}");
    }

    #[test]
    fn vip_errors_have_their_own_variants() {
        let cases: Vec<(&str, Error)> = vec![
            (
                "192.0.2.10",
                Error::MissingEquals {
                    value: "192.0.2.10".into(),
                    entry: "192.0.2.10".into(),
                },
            ),
            (
                "vip=10.1.0.1",
                Error::BadVip {
                    value: "vip=10.1.0.1".into(),
                    vip: "vip".into(),
                },
            ),
            (
                "192.0.2.10=10.1.0.1;192.0.2.10=10.1.0.2",
                Error::DuplicateVip {
                    value: "192.0.2.10=10.1.0.1;192.0.2.10=10.1.0.2".into(),
                    vip: v4(192, 0, 2, 10),
                },
            ),
            (
                "192.0.2.10=10.1.0.1,x",
                Error::BadAddress {
                    var: "RR_VIPS",
                    value: "192.0.2.10=10.1.0.1,x".into(),
                    at: "backend \"x\" of VIP 192.0.2.10".into(),
                },
            ),
            (
                "192.0.2.10=10.1.0.1*y",
                Error::BadWeight {
                    var: "RR_VIPS",
                    value: "192.0.2.10=10.1.0.1*y".into(),
                    at: "backend \"10.1.0.1*y\" of VIP 192.0.2.10".into(),
                    weight: "y".into(),
                },
            ),
            (
                "192.0.2.10=10.1.0.1,10.1.0.1*2",
                Error::DuplicateBackend {
                    var: "RR_VIPS",
                    value: "192.0.2.10=10.1.0.1,10.1.0.1*2".into(),
                    addr: v4(10, 1, 0, 1),
                    set: "the set of VIP 192.0.2.10".into(),
                },
            ),
            (
                "192.0.2.10=10.1.0.1,,10.1.0.2",
                Error::EmptyEntry {
                    var: "RR_VIPS",
                    value: "192.0.2.10=10.1.0.1,,10.1.0.2".into(),
                    at: "backend 2 of VIP 192.0.2.10".into(),
                    expected: EXPECT_VIP_BACKEND,
                },
            ),
            (
                "192.0.2.10=;;192.0.2.11=",
                Error::EmptyEntry {
                    var: "RR_VIPS",
                    value: "192.0.2.10=;;192.0.2.11=".into(),
                    at: "entry 2".into(),
                    expected: EXPECT_VIP_ENTRY,
                },
            ),
        ];
        for (bad, want) in cases {
            let err = with_device(&[("RR_VIPS", bad)]).unwrap_err();
            assert_eq!(err, want, "{bad:?}");
            assert_message(&err, "RR_VIPS", &format!("{bad:?}"));
        }
    }

    #[test]
    fn bad_hash_keys_are_errors() {
        for bad in [
            "00",
            "000102030405060708090a0b0c0d0e0",
            "000102030405060708090a0b0c0d0e0f0",
            "000102030405060708090a0b0c0d0e0g",
            "0x0102030405060708090a0b0c0d0e0f",
            "00010203040506070809 a0b0c0d0e0f",
            "é00102030405060708090a0b0c0d0e0",
        ] {
            let err =
                with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_HASH_KEY", bad)]).unwrap_err();
            assert_eq!(err, Error::BadHashKey { value: bad.into() });
            assert_message(&err, "RR_HASH_KEY", &format!("{bad:?}"));
        }
    }

    #[test]
    fn bad_table_sizes_are_errors() {
        for bad in [
            "65536",
            "0",
            "241",
            "16777259",
            "abc",
            "+65537",
            " 65537",
            "1e6",
            "99999999999999999999999",
        ] {
            let err =
                with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_TABLE_SIZE", bad)]).unwrap_err();
            assert_eq!(err, Error::BadTableSize { value: bad.into() });
            assert_message(&err, "RR_TABLE_SIZE", &format!("{bad:?}"));
        }
        let err =
            with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_TABLE_SIZE", "65536")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"RR_TABLE_SIZE="65536": expected a prime between 251 and 16777213"#
        );
    }

    #[test]
    fn largest_table_size_is_accepted() {
        let config =
            with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_TABLE_SIZE", "16777213")]).unwrap();
        assert_eq!(config.table_size, maglev::MAX_SIZE);
    }

    fn many_backends(n: usize, weight: u32) -> String {
        (0..n)
            .map(|i| format!("10.1.{}.{}*{weight}", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(";")
    }

    #[test]
    fn set_with_as_many_backends_as_slots_is_an_error_naming_the_set() {
        let list = many_backends(251, 1);
        let err = with_device(&[("RR_TARGET_IPS", &list), ("RR_TABLE_SIZE", "251")]).unwrap_err();
        assert_eq!(
            err,
            Error::TableTooSmall {
                set: "the default set (RR_TARGET_IPS)".into(),
                backends: 251,
                size: 251
            }
        );
        assert_message(&err, "RR_TABLE_SIZE", "\"251\"");
        assert_message(&err, "RR_TARGET_IPS", "251 backends");

        let vips = format!("192.0.2.10={}", list.replace(';', ","));
        let err = with_device(&[("RR_VIPS", &vips), ("RR_TABLE_SIZE", "251")]).unwrap_err();
        assert_eq!(
            err,
            Error::TableTooSmall {
                set: "the set of VIP 192.0.2.10 (RR_VIPS)".into(),
                backends: 251,
                size: 251
            }
        );
    }

    #[test]
    fn zero_weight_backends_do_not_count_against_the_table_size() {
        let mut list = many_backends(251, 0);
        list.push_str(";192.168.0.1");
        let config = with_device(&[("RR_TARGET_IPS", &list), ("RR_TABLE_SIZE", "251")]).unwrap();
        assert_eq!(config.default_set.unwrap().len(), 252);
    }

    #[test]
    fn fewer_than_100_slots_per_backend_is_a_warning_with_a_prime_suggestion() {
        let list = many_backends(3, 1);
        let config = with_device(&[
            ("RR_TARGET_IPS", &list),
            ("RR_TABLE_SIZE", "251"),
            ("RR_HASH_KEY", "000102030405060708090a0b0c0d0e0f"),
        ])
        .unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("RR_TABLE_SIZE=251"), "{warnings:?}");
        assert!(warnings[0].contains("default set"), "{warnings:?}");
        // 307 is the smallest prime >= 300.
        assert!(warnings[0].contains("at least 307"), "{warnings:?}");
    }

    #[test]
    fn all_zero_weight_set_is_a_warning() {
        let config = with_device(&[("RR_TARGET_IPS", "10.1.0.1*0")]).unwrap();
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("default set") && w.contains("weight > 0")),
            "{:?}",
            config.warnings()
        );
    }

    #[test]
    fn bad_vlans_are_errors() {
        for bad in ["0", "4095", "65536", "-1", "x", "10 "] {
            let err = with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_VLAN", bad)]).unwrap_err();
            assert_eq!(err, Error::BadVlan { value: bad.into() });
            assert_message(&err, "RR_VLAN", &format!("{bad:?}"));
        }
        let config = with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_VLAN", "1")]).unwrap();
        assert_eq!(config.vlan, Some(1));
    }

    #[test]
    fn empty_strings_count_as_unset() {
        let config = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_VIPS", ""),
            ("RR_HASH_KEY", ""),
            ("RR_TABLE_SIZE", ""),
            ("RR_VLAN", ""),
        ])
        .unwrap();
        assert!(config.vips.is_empty());
        assert_eq!(config.hash_key, DEFAULT_HASH_KEY);
        assert_eq!(config.table_size, 65537);
        assert_eq!(config.vlan, None);

        let config =
            with_device(&[("RR_TARGET_IPS", ""), ("RR_VIPS", "192.0.2.1=10.1.0.1")]).unwrap();
        assert_eq!(config.default_set, None);
        assert_eq!(config.vips.len(), 1);
    }

    #[test]
    fn unknown_rr_variables_are_warnings_not_errors() {
        let config = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_TARGETS_IPS", "10.9.9.9"),
            ("RR_device", "eth1"),
            ("RR_RR_DEVICE", "eth2"),
            ("RR_FOO", ""),
            ("PATH", "/bin"),
            ("XRR_VLAN", "7"),
        ])
        .unwrap();
        // The misspelt names are ignored, not half-read by envy.
        assert_eq!(config.device, "eth0");
        assert_eq!(config.default_set.as_ref().unwrap().len(), 1);
        assert_eq!(
            config.unknown_vars,
            vec!["RR_FOO", "RR_RR_DEVICE", "RR_TARGETS_IPS", "RR_device"]
        );
        let warnings = config.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("\"RR_TARGETS_IPS\"")
                    && w.contains("did you mean RR_TARGET_IPS?")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("\"RR_device\"") && w.contains("did you mean RR_DEVICE?")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("\"RR_FOO\"")),
            "{warnings:?}"
        );
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("\"PATH\"") || w.contains("XRR_"))
        );
        assert!(warnings.iter().all(|w| !w.contains('\n')));
    }

    #[test]
    fn last_duplicate_variable_wins() {
        let config = parse(&[
            ("RR_DEVICE", "eth0"),
            ("RR_DEVICE", "eth1"),
            ("RR_TARGET_IPS", "10.1.0.1"),
        ])
        .unwrap();
        assert_eq!(config.device, "eth1");
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        let err = with_device(&[("RR_TARGET_IPS", "10.1.0.1;\n\u{1b}[31mx")]).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg:?}");
        assert!(msg.contains(r"\n"), "{msg:?}");
    }

    #[test]
    fn control_settings_default_and_parse() {
        let c = with_device(&[("RR_TARGET_IPS", "10.1.0.1")]).unwrap();
        assert_eq!(c.forwarder.api, Some(DEFAULT_API));
        assert_eq!(
            (c.forwarder.flow_table_size, c.forwarder.flow_timeout),
            (1 << 20, 120)
        );
        assert_eq!(c.forwarder.health, None);
        let c = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_API", "[::1]:8080"),
            ("RR_FLOW_TABLE_SIZE", "0"),
            ("RR_FLOW_TIMEOUT", "30"),
            ("RR_HEALTH_PORT", "80"),
            ("RR_HEALTH_PATH", "/ready"),
            ("RR_HEALTH_INTERVAL", "0.5"),
            ("RR_HEALTH_RISE", "1"),
            ("RR_HEALTH_FALL", "4"),
        ])
        .unwrap();
        assert_eq!(c.forwarder.api, Some("[::1]:8080".parse().unwrap()));
        assert_eq!(
            (c.forwarder.flow_table_size, c.forwarder.flow_timeout),
            (0, 30)
        );
        assert_eq!(
            c.forwarder.health,
            Some(HealthCheck {
                port: 80,
                path: Some("/ready".to_string()),
                interval: std::time::Duration::from_millis(500),
                timeout: std::time::Duration::from_millis(500),
                rise: 1,
                fall: 4,
            })
        );
        let off = with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_API", "off")]).unwrap();
        assert_eq!(off.forwarder.api, None);
    }

    #[test]
    fn health_settings_without_a_health_port_are_an_error() {
        let err = with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_HEALTH_RISE", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RR_HEALTH_PORT"), "{err}");
    }

    #[test]
    fn help_mentions_every_variable() {
        for var in VARIABLES {
            assert!(HELP.contains(var), "HELP lacks {var}");
        }
        assert!(HELP.contains("72757374795f7261696c2f6d61676c76"));
        assert!(HELP.contains("65537"));
    }

    fn value() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            any::<String>().prop_map(Some),
            "[0-9a-fA-F:.;=,* x\\[\\]/\n-]{0,40}".prop_map(Some),
            "([0-9]{1,3}\\.){3}[0-9]{1,3}(\\*[0-9]{1,6})?(;([0-9]{1,3}\\.){3}[0-9]{1,3}){0,3}"
                .prop_map(Some),
            "((192\\.0\\.2\\.[0-9]{1,2}|2001:db8::[0-9]{1,2})=([0-9]{1,3}\\.){3}[0-9]{1,3}(\\*[0-9]{1,2})?(,10\\.1\\.0\\.[0-9])?;?){1,3}"
                .prop_map(Some),
            "[0-9]{1,9}".prop_map(Some),
        ]
    }

    #[test]
    fn forwarder_defaults_are_auto_64_2048_adaptive_200us_10s() {
        let c = parse(&[("RR_DEVICE", "eth0"), ("RR_TARGET_IPS", "10.0.0.1")]).unwrap();
        assert_eq!(c.forwarder, Forwarder::default());
        assert_eq!(c.forwarder.xdp_mode, XdpMode::Auto);
        assert_eq!(c.forwarder.batch, 64);
        assert_eq!(c.forwarder.ring_size, 2048);
        assert_eq!(c.forwarder.idle, Idle::Adaptive);
        assert_eq!(c.forwarder.idle_spin, std::time::Duration::from_micros(200));
        assert_eq!(
            c.forwarder.stats_interval,
            Some(std::time::Duration::from_secs(10))
        );
    }

    #[test]
    fn forwarder_variables_parse() {
        let c = parse(&[
            ("RR_DEVICE", "eth0"),
            ("RR_TARGET_IPS", "10.0.0.1"),
            ("RR_XDP_MODE", "generic"),
            ("RR_CORES", "1, 0,3"),
            ("RR_BATCH", "256"),
            ("RR_RING_SIZE", "4096"),
            ("RR_IDLE", "spin"),
            ("RR_IDLE_SPIN_US", "0"),
            ("RR_STATS_INTERVAL", "0.25"),
        ])
        .unwrap();
        let f = c.forwarder;
        assert_eq!(f.xdp_mode, XdpMode::Generic);
        assert_eq!(f.cores, Some(vec![1, 0, 3]));
        assert_eq!((f.batch, f.ring_size, f.idle), (256, 4096, Idle::Spin));
        assert_eq!(f.idle_spin, std::time::Duration::ZERO);
        assert_eq!(
            f.stats_interval,
            Some(std::time::Duration::from_millis(250))
        );
        let off = parse(&[
            ("RR_DEVICE", "eth0"),
            ("RR_TARGET_IPS", "10.0.0.1"),
            ("RR_STATS_INTERVAL", "0"),
        ])
        .unwrap();
        assert_eq!(off.forwarder.stats_interval, None);
    }

    #[test]
    fn backend_is_xdp_by_default_and_netmap_only_in_netmap_builds() {
        let config = with_device(&[("RR_TARGET_IPS", "10.0.0.1")]).unwrap();
        let default = if cfg!(feature = "xdp") {
            Io::Xdp
        } else {
            Io::Netmap
        };
        assert_eq!(config.forwarder.backend, default);
        let xdp = with_device(&[("RR_TARGET_IPS", "10.0.0.1"), ("RR_BACKEND", "xdp")]);
        if cfg!(feature = "xdp") {
            assert_eq!(xdp.unwrap().forwarder.backend, Io::Xdp);
        } else {
            let err = xdp.unwrap_err();
            assert_message(&err, "RR_BACKEND", "xdp");
            assert!(err.to_string().contains("--features xdp"), "{err}");
        }
        let netmap = with_device(&[("RR_TARGET_IPS", "10.0.0.1"), ("RR_BACKEND", "netmap")]);
        if cfg!(feature = "netmap") {
            assert_eq!(netmap.unwrap().forwarder.backend, Io::Netmap);
        } else {
            let err = netmap.unwrap_err();
            assert_message(&err, "RR_BACKEND", "netmap");
            assert!(err.to_string().contains("--features netmap"), "{err}");
        }
    }

    #[test]
    fn bad_forwarder_values_are_one_line_errors_naming_the_variable() {
        for (var, bad) in [
            ("RR_BACKEND", "dpdk"),
            ("RR_XDP_MODE", "fast"),
            ("RR_CORES", "0,,1"),
            ("RR_CORES", "-1"),
            ("RR_BATCH", "0"),
            ("RR_BATCH", "1025"),
            ("RR_RING_SIZE", "1000"),
            ("RR_RING_SIZE", "32"),
            ("RR_IDLE", "sleep"),
            ("RR_IDLE_SPIN_US", "1000001"),
            ("RR_STATS_INTERVAL", "-1"),
            ("RR_STATS_INTERVAL", "1e3"),
            ("RR_STATS_INTERVAL", "."),
            ("RR_STATS_INTERVAL", "86401"),
            ("RR_API", "localhost"),
            ("RR_API", "127.0.0.1"),
            ("RR_FLOW_TABLE_SIZE", "268435457"),
            ("RR_FLOW_TABLE_SIZE", "-1"),
            ("RR_FLOW_TIMEOUT", "0"),
            ("RR_HEALTH_PORT", "0"),
            ("RR_HEALTH_PORT", "70000"),
            ("RR_HEALTH_PATH", "ready"),
            ("RR_HEALTH_INTERVAL", "0.01"),
            ("RR_HEALTH_TIMEOUT", "5"),
            ("RR_HEALTH_RISE", "0"),
            ("RR_HEALTH_FALL", "101"),
        ] {
            let mut vars = vec![("RR_TARGET_IPS", "10.0.0.1"), (var, bad)];
            // The other RR_HEALTH_* settings need checks turned on.
            if var != "RR_HEALTH_PORT" {
                vars.push(("RR_HEALTH_PORT", "80"));
            }
            let err = with_device(&vars).unwrap_err();
            assert_message(&err, var, bad);
            assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
        }
    }

    #[test]
    fn announce_settings_default_and_parse() {
        let c = with_device(&[("RR_TARGET_IPS", "10.1.0.1")]).unwrap();
        assert_eq!(c.announce, None);
        let c = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            (
                "RR_ANNOUNCE",
                "192.168.77.100/24; fd00::100/64;192.168.77.101",
            ),
        ])
        .unwrap();
        let a = c.announce.unwrap();
        assert_eq!(
            a.addresses,
            vec![
                (ip("192.168.77.100"), 24),
                (ip("fd00::100"), 64),
                (ip("192.168.77.101"), 32)
            ]
        );
        assert_eq!(a.interval, std::time::Duration::from_secs(1));
        assert_eq!((a.jitter, a.delay, a.watch_delay), Default::default());
        assert_eq!((a.count, a.unmanaged, a.watch), (None, false, Watch::Fail));
        assert_eq!(a.state_dir, std::path::PathBuf::from(DEFAULT_STATE_DIR));
        let c = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_ANNOUNCE", "2001:db8::7/128"),
            ("RR_ANNOUNCE_INTERVAL", "0.25"),
            ("RR_ANNOUNCE_JITTER", "0.1"),
            ("RR_ANNOUNCE_DELAY", "2"),
            ("RR_ANNOUNCE_COUNT", "3"),
            ("RR_ANNOUNCE_UNMANAGED", "1"),
            ("RR_WATCH", "log"),
            ("RR_WATCH_DELAY", "1.5"),
            ("RR_STATE_DIR", "/tmp/rr"),
        ])
        .unwrap();
        let a = c.announce.unwrap();
        assert_eq!(a.interval, std::time::Duration::from_millis(250));
        assert_eq!(a.jitter, std::time::Duration::from_millis(100));
        assert_eq!(a.delay, std::time::Duration::from_secs(2));
        assert_eq!((a.count, a.unmanaged, a.watch), (Some(3), true, Watch::Log));
        assert_eq!(a.watch_delay, std::time::Duration::from_millis(1500));
        assert_eq!(a.state_dir, std::path::PathBuf::from("/tmp/rr"));
        for (word, watch) in [
            ("fail", Watch::Fail),
            ("quit", Watch::Quit),
            ("log", Watch::Log),
            ("no", Watch::No),
        ] {
            let c = with_device(&[
                ("RR_TARGET_IPS", "10.1.0.1"),
                ("RR_ANNOUNCE", "10.9.0.1"),
                ("RR_WATCH", word),
            ])
            .unwrap();
            assert_eq!(c.announce.unwrap().watch, watch);
            assert_eq!(watch.name(), word);
        }
    }

    #[test]
    fn bad_announce_values_are_one_line_errors_naming_the_variable() {
        for (var, bad) in [
            ("RR_ANNOUNCE", "192.168.77.100/33"),
            ("RR_ANNOUNCE", "fd00::1/0"),
            ("RR_ANNOUNCE", "192.168.77.100/24;"),
            ("RR_ANNOUNCE", "host.example"),
            ("RR_ANNOUNCE", "10.0.0.1;10.0.0.1/24"),
            ("RR_ANNOUNCE", "127.0.0.1"),
            ("RR_ANNOUNCE", "224.0.0.1"),
            ("RR_ANNOUNCE", "fe80::1/64"),
            ("RR_ANNOUNCE", "0.0.0.0"),
            ("RR_ANNOUNCE_INTERVAL", "0"),
            ("RR_ANNOUNCE_INTERVAL", "3601"),
            ("RR_ANNOUNCE_JITTER", "-1"),
            ("RR_ANNOUNCE_DELAY", "1e3"),
            ("RR_ANNOUNCE_COUNT", "0"),
            ("RR_ANNOUNCE_COUNT", "4294967296"),
            ("RR_ANNOUNCE_UNMANAGED", "yes"),
            ("RR_WATCH", "exit"),
            ("RR_WATCH_DELAY", "x"),
            ("RR_STATE_DIR", "run/rr"),
        ] {
            let mut vars = vec![("RR_TARGET_IPS", "10.0.0.1"), (var, bad)];
            if var != "RR_ANNOUNCE" {
                vars.push(("RR_ANNOUNCE", "10.9.0.1/24"));
            }
            let err = with_device(&vars).unwrap_err();
            assert_message(&err, var, bad);
            assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
        }
        let many: Vec<String> = (1..=65).map(|i| format!("10.9.0.{i}")).collect();
        let many = many.join(";");
        let err =
            with_device(&[("RR_TARGET_IPS", "10.0.0.1"), ("RR_ANNOUNCE", &many)]).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
    }

    #[test]
    fn a_standby_cannot_be_unmanaged() {
        let err = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_ANNOUNCE", "10.9.0.1"),
            ("RR_ANNOUNCE_UNMANAGED", "1"),
            ("RR_WATCH", "standby"),
        ])
        .unwrap_err();
        assert_message(&err, "RR_WATCH", "standby");
    }

    #[test]
    fn announce_settings_without_rr_announce_or_with_a_vlan_are_errors() {
        let err = with_device(&[("RR_TARGET_IPS", "10.1.0.1"), ("RR_WATCH", "standby")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RR_WATCH=\"standby\"") && err.contains("RR_ANNOUNCE"),
            "{err}"
        );
        let err = with_device(&[
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_ANNOUNCE", "10.9.0.1"),
            ("RR_VLAN", "100"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("RR_VLAN=\"100\"") && err.contains("untagged"),
            "{err}"
        );
    }

    #[test]
    fn an_announced_address_with_no_set_is_a_warning() {
        let c = with_device(&[
            ("RR_VIPS", "10.9.0.1=10.1.0.1"),
            ("RR_ANNOUNCE", "10.9.0.1;10.9.0.2"),
        ])
        .unwrap();
        let warnings = c.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("10.9.0.2") && w.contains("unknown_vip")),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("10.9.0.1 has")),
            "{warnings:?}"
        );
    }

    proptest! {
        #[test]
        fn from_vars_never_panics_and_errors_are_one_line(
            device in value(),
            target_ips in value(),
            vips in value(),
            hash_key in value(),
            table_size in value(),
            vlan in value(),
            other_name in "RR_[A-Za-z_]{0,12}",
            other_value in any::<String>(),
        ) {
            let mut pairs = vec![(other_name, other_value)];
            for (name, value) in VARIABLES.iter().zip([device, target_ips, vips, hash_key, table_size, vlan]) {
                if let Some(value) = value {
                    pairs.push((name.to_string(), value));
                }
            }
            match Config::from_vars(pairs) {
                Ok(config) => {
                    prop_assert!(config.default_set.is_some() || !config.vips.is_empty());
                    for warning in config.warnings() {
                        prop_assert!(!warning.contains('\n'), "{:?}", warning);
                    }
                }
                Err(err) => {
                    let msg = err.to_string();
                    prop_assert!(!msg.contains('\n'), "{:?}", msg);
                }
            }
        }
    }
}
