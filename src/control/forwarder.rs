//! Starting, running and stopping the forwarder on one device.
//!
//! Start: check the device (and, for XDP, the privileges), remove
//! addresses a crashed run announced, then per backend: XDP clears a
//! leftover program of ours, attaches the steering program and opens one
//! AF_XDP socket per RX queue; netmap registers one port per NIC ring pair,
//! once the next hops are resolved (it takes the device from the host
//! stack until its workers bridge the host rings). Then one pinned worker
//! per socket or port, then the announcer. Run: keep the next hops
//! resolved and swap in a new snapshot when they change; log the counters.
//! Stop: remove the announced addresses, stop the workers, drain their TX
//! rings, close the sockets or ports and detach the program, so the device
//! is left as it was found.

#[cfg(target_os = "linux")]
use super::announce::{self, Announcer};
use super::controller::{self, Controller, Held, Node};
#[cfg(feature = "xdp")]
use super::privileges;
use super::services::Services;
use super::{api, health, neighbours, netlink};
use crate::config::{Config, Io};
use crate::dataplane::worker::{self, Port, Shared, Stats, Totals};
use crate::dataplane::{Tables, conntrack, flow};
#[cfg(feature = "netmap")]
use crate::io::netmap;
#[cfg(feature = "xdp")]
use crate::io::tap::{self, Tap};
#[cfg(feature = "xdp")]
use crate::io::xdp::{self, Mode, Steering};
#[cfg(feature = "xdp")]
use crate::io::xsk::{self, Socket};
use crate::wire::ethernet;
use std::io::Write as _;
use std::net::IpAddr;
#[cfg(target_os = "linux")]
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
#[cfg(feature = "xdp")]
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the forwarder could not start. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RR_DEVICE={0:?}: no such network device")]
    NoDevice(String),
    #[error("cannot read device {device}: {source}")]
    Netlink {
        device: String,
        source: netlink::Error,
    },
    #[cfg(feature = "xdp")]
    #[error(
        "missing privileges: rusty_rail needs root, or {missing} (it loads an XDP program and opens AF_XDP sockets)"
    )]
    Privileges { missing: String },
    #[cfg(feature = "xdp")]
    #[error(
        "{device} already runs XDP program {name:?} (id {id}) that is not rusty_rail's; remove it first, e.g. `ip link set dev {device} xdp off`"
    )]
    ForeignProgram {
        device: String,
        name: String,
        id: u32,
    },
    #[cfg(feature = "xdp")]
    #[error(
        "{device} already runs rusty_rail's XDP program (id {id}) through a live link: is another rusty_rail running on it? ({message})"
    )]
    Busy {
        device: String,
        id: u32,
        message: String,
    },
    #[cfg(feature = "xdp")]
    #[error(
        "{device} runs XDP program id {id}, which cannot be identified (reading its name needs CAP_SYS_ADMIN); remove it or run as root"
    )]
    Unidentified { device: String, id: u32 },
    #[cfg(feature = "xdp")]
    #[error(
        "{device} runs XDP programs in several modes; remove them first, e.g. `ip link set dev {device} xdp off xdpgeneric off`"
    )]
    SeveralPrograms { device: String },
    #[cfg(feature = "xdp")]
    #[error(transparent)]
    Steering(#[from] xdp::Error),
    #[cfg(feature = "xdp")]
    #[error(transparent)]
    Socket(#[from] xsk::Error),
    #[cfg(feature = "netmap")]
    #[error(transparent)]
    Netmap(#[from] netmap::Error),
    #[error(transparent)]
    Api(#[from] api::Error),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Announce(#[from] announce::Error),
    #[error("RR_BACKEND=netmap: this build has no netmap backend (build with --features netmap)")]
    NoNetmap,
    #[error("RR_BACKEND=xdp: this build has no XDP backend (build with --features xdp, on Linux)")]
    NoXdp,
    #[error("cannot start worker {queue}: {message}")]
    Worker { queue: u32, message: String },
}

impl Error {
    /// Exit status: 2 for configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NoDevice(_) => 2,
            _ => 1,
        }
    }
}

/// How often the control loop wakes.
const TICK: Duration = Duration::from_millis(50);
/// How long start-up waits for next hops to resolve.
const START_RESOLVE: Duration = Duration::from_secs(1);

/// Runs until `stop` is set (by a signal) or the announcer asks to exit,
/// then cleans up; returns the exit status (0, or what `RR_WATCH` asked
/// for). `tables` is the first table built from `services` (the caller
/// logs it).
pub fn run(
    config: &Config,
    services: Services,
    tables: Tables,
    stop: &AtomicBool,
) -> Result<u8, Error> {
    let read_device = || {
        netlink::device(&config.device).map_err(|e| match e {
            netlink::Error::NoSuchDevice(_) => Error::NoDevice(config.device.clone()),
            source => Error::Netlink {
                device: config.device.clone(),
                source,
            },
        })
    };
    let mut device = read_device()?;
    let xdp = config.forwarder.backend == Io::Xdp;
    // netmap needs /dev/netmap, whose open says what is wrong.
    #[cfg(feature = "xdp")]
    if xdp && let Ok(caps) = privileges::effective() {
        let missing = privileges::missing(caps);
        if !missing.is_empty() {
            return Err(Error::Privileges {
                missing: missing.join(", "),
            });
        }
        warn_memlock(caps, config);
    }
    let announced: Vec<IpAddr> = config
        .announce
        .iter()
        .flat_map(|a| a.addresses.iter().map(|(addr, _)| *addr))
        .collect();
    // Config refuses RR_ANNOUNCE elsewhere.
    #[cfg(target_os = "linux")]
    let lock = match &config.announce {
        Some(a) => {
            let lock = announce::prepare(a, &announce_device(&device))?;
            // Stale addresses may be gone now.
            device = read_device()?;
            Some(lock)
        }
        None => None,
    };
    // Announced addresses are added to the snapshot while held, never
    // before: the node's own are the rest.
    device.v4.retain(|a| !announced.contains(&IpAddr::V4(*a)));
    device.v6.retain(|a| !announced.contains(&IpAddr::V6(*a)));
    let tables = Arc::new(tables);
    if device.v4.is_empty() && device.v6.is_empty() {
        log::warn!(
            "{} has no IPv4 or IPv6 address: no GRE can be addressed to this node",
            device.name
        );
    }
    // netmap takes the device from the host stack when it registers it,
    // until a worker bridges the host rings: it opens just before the
    // workers start, once next hops have been resolved (by the host).
    let xdp_path = if xdp {
        Some(open_xdp(config, &device)?)
    } else {
        None
    };

    let node = Node {
        mac: ethernet::Address(device.mac),
        v4: device.v4.clone(),
        v6: device.v6.clone(),
        // The kernel lists primary addresses first.
        primary_v4: device.v4.first().copied(),
        primary_v6: device.v6.first().copied(),
        mtu: u16::try_from(device.mtu).unwrap_or(u16::MAX),
        vlan: config.vlan,
        hasher: flow::Hasher::new(&config.hash_key),
        health: config.forwarder.health.as_ref().map(|h| health::Settings {
            port: h.port,
            path: h.path.clone(),
            interval: h.interval,
            timeout: h.timeout,
            rise: h.rise,
            fall: h.fall,
        }),
    };
    // Give the kernel a moment to resolve the next hops, so the first
    // flows are not dropped as no_neighbour for want of an ARP reply.
    let mut resolver = neighbours::Resolver::new(device.index);
    let addresses = services.addresses();
    let mut resolution = controller::resolve(&resolver, &addresses, None);
    let deadline = Instant::now() + START_RESOLVE;
    while !resolution.unresolved.is_empty() && Instant::now() < deadline {
        for &b in &resolution.unresolved {
            resolver.probe(b, Instant::now());
        }
        std::thread::sleep(TICK);
        resolution = controller::resolve(&resolver, &addresses, Some(&resolution));
    }
    if !resolution.unresolved.is_empty() {
        log::warn!(
            "no next hop yet for {:?}; their flows are dropped as no_neighbour until resolved",
            resolution.unresolved
        );
    }
    for &b in &resolution.unresolved {
        resolver.probe(b, Instant::now());
    }
    let flows = (config.forwarder.flow_table_size > 0).then(|| {
        conntrack::Table::new(
            config.forwarder.flow_table_size,
            config.forwarder.flow_timeout,
        )
    });
    if let Some(f) = &flows {
        log::info!(
            "connection tracking: {} entries, idle flows expire after {} s",
            f.capacity(),
            config.forwarder.flow_timeout
        );
    }
    let shared = Arc::new(Shared::new(
        node.snapshot(&tables, &resolution, &Held::default()),
        flows,
    ));
    let (ports, path) = match xdp_path {
        Some(opened) => opened,
        None => open_netmap(&device)?,
    };
    let queues = ports.len() as u32;
    let stats: Arc<Vec<Stats>> = Arc::new((0..queues).map(|_| Stats::default()).collect());
    let control = Arc::new(Controller::new(
        node,
        services,
        Arc::clone(&tables),
        resolver,
        resolution,
        Arc::clone(&shared),
        Arc::clone(&stats),
    ));
    let api = match config.forwarder.api {
        Some(addr) => {
            let server = api::Server::start(addr, Arc::clone(&control) as Arc<dyn api::Control>)?;
            log::info!("control API on http://{}", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let passive = if control.passive() {
        match Passive::start(&control, Arc::clone(&shared)) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("no passive health check (cannot open raw ICMP sockets: {e})");
                None
            }
        }
    } else {
        None
    };

    let workers = match ports {
        #[cfg(feature = "xdp")]
        Ports::Xdp(sockets) => start_workers(config, sockets, &shared, &stats)?,
        #[cfg(feature = "netmap")]
        Ports::Netmap(ports) => start_workers(config, ports, &shared, &stats)?,
    };
    log::info!(
        "forwarding on {} (index {}): {}, {} queue{}, addresses {:?} {:?}",
        device.name,
        device.index,
        path.describe(),
        queues,
        if queues == 1 { "" } else { "s" },
        device.v4,
        device.v6
    );
    #[cfg(target_os = "linux")]
    let announcer = match (&config.announce, lock) {
        (Some(a), Some(lock)) => {
            let steer = Arc::new(Steer {
                control: Arc::clone(&control),
                #[cfg(feature = "xdp")]
                steering: path.steering(),
                #[cfg(feature = "xdp")]
                own_v4: device.v4.clone(),
                #[cfg(feature = "xdp")]
                own_v6: device.v6.clone(),
            });
            match Announcer::start(a, &announce_device(&device), lock, steer) {
                Ok(announcer) => Some(announcer),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    for handle in workers {
                        let _ = handle.join();
                    }
                    return Err(e.into());
                }
            }
        }
        _ => None,
    };
    let mut last_stats = Instant::now();
    let mut kernel: Option<serde_json::Value>;
    // Only the announcer changes it.
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut exit = 0;
    while !stop.load(Ordering::Relaxed) {
        #[cfg(target_os = "linux")]
        if let Some(code) = announcer.as_ref().and_then(Announcer::exit_code) {
            exit = code;
            break;
        }
        std::thread::sleep(TICK);
        let unreachable: Vec<IpAddr> = passive
            .as_ref()
            .map(|p| p.reports.try_iter().collect())
            .unwrap_or_default();
        control.tick(&unreachable);
        if let Some(interval) = config.forwarder.stats_interval
            && last_stats.elapsed() >= interval
        {
            last_stats = Instant::now();
            kernel = path.kernel_stats();
            log_stats(&stats, kernel, &control.tables());
        }
    }

    // Addresses first: nothing may be left steered or on the device.
    #[cfg(target_os = "linux")]
    if let Some(announcer) = announcer
        && !announcer.stop()
        && exit == 0
    {
        exit = 1;
    }
    log::info!("stopping: draining {} worker(s)", workers.len());
    // No changes while stopping.
    drop(api);
    drop(passive);
    // The sockets close with their workers: read their counters first.
    kernel = path.kernel_stats();
    shared.stop.store(true, Ordering::Relaxed);
    for (queue, handle) in workers.into_iter().enumerate() {
        if handle.join().is_err() {
            log::error!("worker {queue} panicked");
        }
    }
    log_stats(&stats, kernel, &control.tables());
    // Sockets went with their workers; now the program and the TAP device.
    #[cfg_attr(not(feature = "xdp"), allow(clippy::drop_non_drop))]
    drop(path);
    log::info!("stopped; {} left as it was found", device.name);
    Ok(exit)
}

#[cfg(target_os = "linux")]
fn announce_device(device: &netlink::Device) -> announce::Device {
    announce::Device {
        name: device.name.clone(),
        index: device.index,
        mac: device.mac,
    }
}

/// Points the data path and the XDP program at the held addresses.
#[cfg(target_os = "linux")]
struct Steer {
    control: Arc<Controller>,
    /// None with netmap: the workers see every frame.
    #[cfg(feature = "xdp")]
    steering: Option<Arc<Mutex<Steering>>>,
    #[cfg(feature = "xdp")]
    own_v4: Vec<Ipv4Addr>,
    #[cfg(feature = "xdp")]
    own_v6: Vec<Ipv6Addr>,
}

#[cfg(target_os = "linux")]
impl Steer {
    #[cfg(not(feature = "xdp"))]
    fn program(&self, _held: &Held) -> Result<(), String> {
        Ok(())
    }

    #[cfg(feature = "xdp")]
    fn program(&self, held: &Held) -> Result<(), String> {
        let mut local_v4 = self.own_v4.clone();
        local_v4.extend(&held.v4);
        let mut local_v6 = self.own_v6.clone();
        local_v6.extend(&held.v6);
        let Some(steering) = &self.steering else {
            return Ok(());
        };
        let mut steering = steering.lock().unwrap_or_else(|e| e.into_inner());
        steering
            .set_addresses(&local_v4, &local_v6, &held.v4, &held.v6)
            .map_err(|e| format!("cannot steer the announced addresses: {e}"))
    }
}

#[cfg(target_os = "linux")]
impl announce::Steer for Steer {
    /// Workers learn of an address before the XDP program sends them its
    /// frames, and forget it only after the program has stopped.
    fn held(&self, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Result<(), String> {
        let old = self.control.held();
        let new = Held {
            v4: v4.to_vec(),
            v6: v6.to_vec(),
        };
        let both = Held {
            v4: old.v4.iter().filter(|a| v4.contains(a)).copied().collect(),
            v6: old.v6.iter().filter(|a| v6.contains(a)).copied().collect(),
        };
        // On failure the workers still learn the new set: the program may
        // be half updated, and frames it steers must be served.
        let first = self.program(&both);
        self.control.set_held(new.clone());
        first.and(self.program(&new))
    }
}

/// The passive health check: a thread reading ICMP errors about our GRE.
struct Passive {
    reports: std::sync::mpsc::Receiver<IpAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Passive {
    fn start(control: &Controller, shared: Arc<Shared>) -> std::io::Result<Passive> {
        let mut icmp = health::Passive::open()?;
        let (tx, reports) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (v4, v6) = (control.node().v4.clone(), control.node().v6.clone());
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rr-icmp".to_string())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) && !shared.stop.load(Ordering::Relaxed) {
                    for backend in icmp.poll(&v4, &v6) {
                        if tx.send(backend).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(Passive {
            reports,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Passive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The workers' ports, by backend.
enum Ports {
    #[cfg(feature = "xdp")]
    Xdp(Vec<Socket>),
    #[cfg(feature = "netmap")]
    Netmap(Vec<netmap::Port<netmap::Fds>>),
}

impl Ports {
    fn len(&self) -> usize {
        match self {
            #[cfg(feature = "xdp")]
            Ports::Xdp(s) => s.len(),
            #[cfg(feature = "netmap")]
            Ports::Netmap(p) => p.len(),
        }
    }
}

/// What a backend set up on the device beside its ports; dropping it
/// takes it away again.
enum Path {
    #[cfg(feature = "xdp")]
    Xdp {
        steering: Arc<Mutex<Steering>>,
        /// The TAP device `ToHost` frames go through; held until the
        /// program is gone (fields drop in order).
        _host: Option<Tap>,
        fds: Vec<std::os::fd::RawFd>,
        copy: xsk::Copy,
    },
    #[cfg(feature = "netmap")]
    Netmap,
}

impl Path {
    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "xdp")]
            Path::Xdp { steering, copy, .. } => {
                let mode = steering.lock().unwrap_or_else(|e| e.into_inner()).mode();
                format!("XDP {} mode, AF_XDP {} mode", mode.name(), copy.name())
            }
            #[cfg(feature = "netmap")]
            Path::Netmap => "netmap, host rings bridged".to_string(),
        }
    }

    #[cfg(feature = "xdp")]
    fn steering(&self) -> Option<Arc<Mutex<Steering>>> {
        match self {
            Path::Xdp { steering, .. } => Some(Arc::clone(steering)),
            #[cfg(feature = "netmap")]
            Path::Netmap => None,
        }
    }

    /// The AF_XDP sockets' kernel counters, summed.
    fn kernel_stats(&self) -> Option<serde_json::Value> {
        match self {
            #[cfg(feature = "xdp")]
            Path::Xdp { fds, .. } => {
                let mut total = xsk::Statistics::default();
                for fd in fds {
                    total.add(&xsk::statistics(*fd).unwrap_or_default());
                }
                Some(total.to_json())
            }
            #[cfg(feature = "netmap")]
            Path::Netmap => None,
        }
    }
}

/// Clears a leftover program, attaches ours, creates the TAP device and
/// opens one AF_XDP socket per RX queue.
#[cfg(feature = "xdp")]
fn open_xdp(config: &Config, device: &netlink::Device) -> Result<(Ports, Path), Error> {
    clear_leftover(device)?;
    let longest = device
        .mtu
        .saturating_add(if config.vlan.is_some() { 18 } else { 14 });
    if longest > xsk::MAX_FRAME {
        log::warn!(
            "{} has MTU {}: frames longer than {} bytes do not fit an AF_XDP frame; \
             they go to the host unforwarded",
            device.name,
            device.mtu,
            xsk::MAX_FRAME
        );
    }
    let mut steering = Steering::attach(
        &device.name,
        device.index,
        config.forwarder.xdp_mode,
        config.vlan,
        &device.v4,
        &device.v6,
    )?;
    let host = match Tap::open(&tap::name_for(&device.name), device.mac) {
        Ok(tap) => Some(tap),
        Err(e) => {
            log::warn!(
                "cannot create the TAP device {} for frames the host must see: {e}; \
                 such frames are dropped and counted as to_host_failed",
                tap::name_for(&device.name)
            );
            None
        }
    };
    let queues = crate::io::rx_queues(&device.name).clamp(1, xdp::MAX_QUEUES);
    let (sockets, copy) = open_sockets(config, device, &mut steering, queues, host.as_ref())?;
    let fds = sockets.iter().map(Socket::fd).collect();
    Ok((
        Ports::Xdp(sockets),
        Path::Xdp {
            steering: Arc::new(Mutex::new(steering)),
            _host: host,
            fds,
            copy,
        },
    ))
}

/// One netmap port per NIC ring pair; the first also bridges the host
/// rings.
#[cfg(feature = "netmap")]
fn open_netmap(device: &netlink::Device) -> Result<(Ports, Path), Error> {
    let info = netmap::info(&device.name)?;
    let pairs = info.pairs();
    if info.tx_rings != info.rx_rings {
        log::warn!(
            "{} has {} TX and {} RX rings: only {pairs} pair(s) are served, frames on the other \
             rings are not read",
            device.name,
            info.tx_rings,
            info.rx_rings
        );
    }
    let ports = (0..pairs)
        .map(|pair| netmap::open(&device.name, pair, &info))
        .collect::<Result<Vec<_>, _>>()?;
    let longest = device.mtu.saturating_add(18) as usize;
    if let Some(size) = ports.first().map(netmap::Port::buf_size)
        && longest > size
    {
        log::warn!(
            "{} has MTU {}: frames longer than a {size}-byte netmap buffer are dropped \
             and counted as too_long",
            device.name,
            device.mtu
        );
    }
    Ok((Ports::Netmap(ports), Path::Netmap))
}

/// Config refuses `RR_BACKEND=netmap` in such builds already.
#[cfg(not(feature = "netmap"))]
fn open_netmap(_: &netlink::Device) -> Result<(Ports, Path), Error> {
    Err(Error::NoNetmap)
}

/// Config refuses `RR_BACKEND=xdp` in such builds already.
#[cfg(not(feature = "xdp"))]
fn open_xdp(_: &Config, _: &netlink::Device) -> Result<(Ports, Path), Error> {
    Err(Error::NoXdp)
}

/// A program of ours left by a crash is removed; anyone else's is an error.
#[cfg(feature = "xdp")]
fn clear_leftover(device: &netlink::Device) -> Result<(), Error> {
    let Some(attached) = device.xdp else {
        return Ok(());
    };
    if attached.mode == netlink::XdpMode::Multi {
        return Err(Error::SeveralPrograms {
            device: device.name.clone(),
        });
    }
    let Some(name) = xdp::program_name(attached.prog_id) else {
        return Err(Error::Unidentified {
            device: device.name.clone(),
            id: attached.prog_id,
        });
    };
    if name != xdp::PROGRAM_NAME {
        return Err(Error::ForeignProgram {
            device: device.name.clone(),
            name,
            id: attached.prog_id,
        });
    }
    netlink::detach_xdp(device.index, attached.mode).map_err(|e| Error::Busy {
        device: device.name.clone(),
        id: attached.prog_id,
        message: e.to_string(),
    })?;
    log::info!(
        "removed a leftover rusty_rail XDP program (id {}) from {}",
        attached.prog_id,
        device.name
    );
    Ok(())
}

/// One socket per queue. Native mode tries zero-copy first (in `auto`),
/// and says once when it has to copy.
#[cfg(feature = "xdp")]
fn open_sockets(
    config: &Config,
    device: &netlink::Device,
    steering: &mut Steering,
    queues: u32,
    host: Option<&Tap>,
) -> Result<(Vec<Socket>, xsk::Copy), Error> {
    let ring = config.forwarder.ring_size;
    let mut copy = match steering.mode() {
        Mode::Native => xsk::Copy::ZeroCopy,
        Mode::Generic => xsk::Copy::Copy,
    };
    let mut sockets = Vec::new();
    let mut queue = 0;
    while queue < queues {
        let tap = host.and_then(|t| t.try_clone().ok());
        match Socket::open(&device.name, queue, ring, copy, tap) {
            Ok(socket) => {
                steering.register(queue, socket.fd())?;
                sockets.push(socket);
                queue += 1;
            }
            Err(e) if copy == xsk::Copy::ZeroCopy && e.is_unsupported() => {
                log::info!(
                    "{e}; {} has no zero-copy AF_XDP, using copy mode",
                    device.name
                );
                // Every queue in one mode: start over in copy mode.
                copy = xsk::Copy::Copy;
                sockets.clear();
                queue = 0;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((sockets, copy))
}

fn start_workers<P: Port + Send + 'static>(
    config: &Config,
    sockets: Vec<P>,
    shared: &Arc<Shared>,
    stats: &Arc<Vec<Stats>>,
) -> Result<Vec<std::thread::JoinHandle<()>>, Error> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let settings = worker::Settings {
        batch: config.forwarder.batch,
        idle: config.forwarder.idle,
        idle_spin: config.forwarder.idle_spin,
    };
    let mut handles = Vec::new();
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let queue = i as u32;
        let core = match &config.forwarder.cores {
            Some(list) if !list.is_empty() => Some(list[i % list.len()]),
            _ => (!cores.is_empty()).then(|| cores[i % cores.len()].id),
        };
        let worker_shared = Arc::clone(shared);
        let stats = Arc::clone(stats);
        let handle = std::thread::Builder::new()
            .name(format!("rr-worker-{queue}"))
            .spawn(move || {
                if let Some(id) = core
                    && !core_affinity::set_for_current(core_affinity::CoreId { id })
                {
                    log::warn!("worker {queue}: cannot pin to core {id}; running unpinned");
                }
                worker::run(&mut socket, &worker_shared, &stats[i], settings);
                socket.drain(Duration::from_millis(200));
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Leave nothing running behind the error.
                shared.stop.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(Error::Worker {
                    queue,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(handles)
}

/// One JSON line on stderr: the totals, then each queue, then the
/// sockets' kernel counters (drops before a worker saw the frame; AF_XDP
/// only).
fn log_stats(stats: &[Stats], kernel: Option<serde_json::Value>, tables: &Tables) {
    let per_queue: Vec<Totals> = stats.iter().map(Stats::read).collect();
    let mut total = Totals::default();
    for q in &per_queue {
        total.add(q);
    }
    let mut line = serde_json::json!({
        "stats": total.to_json(),
        "queues": per_queue.iter().map(Totals::to_json).collect::<Vec<_>>(),
        "table_generation": tables.generation(),
    });
    if let Some(kernel) = kernel {
        line["xsk"] = kernel;
    }
    // A closed stderr is no reason to stop forwarding.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Without CAP_IPC_LOCK the UMEMs count against RLIMIT_MEMLOCK; say so
/// when they will not fit, since the bind error would not.
#[cfg(feature = "xdp")]
fn warn_memlock(caps: u64, config: &Config) {
    if privileges::has_ipc_lock(caps) {
        return;
    }
    let Some(limit) = crate::io::memlock_limit() else {
        return;
    };
    let per_queue = u64::from(config.forwarder.ring_size) * 2 * u64::from(xsk::FRAME_SIZE);
    if per_queue > limit {
        log::warn!(
            "without CAP_IPC_LOCK each queue's {} KiB UMEM counts against the memlock limit of {} KiB; \
             raise it (ulimit -l) or grant CAP_IPC_LOCK",
            per_queue / 1024,
            limit / 1024
        );
    }
}
