//! Announcing addresses (`RR_ANNOUNCE`) with gratuitous ARP and unsolicited
//! neighbour advertisements, so that a VIP reaches this node with no router
//! configuration.
//!
//! One thread, `rr-announce`, owns a raw packet socket on the device (never
//! promiscuous; the kernel filters it down to ARP and NS/NA) and one
//! [`claim::Claim`] per address. It probes at start, adds each address it
//! claims (IPv6 with nodad), tells the data path to take its traffic, and
//! announces: a burst, then one per interval. Conflicts are settled by the
//! lower MAC; the loser acts on `RR_WATCH`. On stop it removes what it added
//! and the state file that lists it.

pub mod claim;
pub mod frames;
pub mod state;

use crate::config::Announce;
use crate::control::netlink;
use crate::io::packet;
use claim::{Action, Claim, Timing};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Why announcing could not start. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(
        "{path} lists addresses held by rusty_rail pid {pid}, which is still running on {device}; stop it first"
    )]
    Busy {
        path: String,
        pid: u32,
        device: String,
    },
    #[error(
        "RR_ANNOUNCE: {addr} is already on {device} and rusty_rail did not add it; remove it, or set RR_ANNOUNCE_UNMANAGED=1 to announce it as it is"
    )]
    Present { addr: IpAddr, device: String },
    #[error(
        "RR_ANNOUNCE: {addr} is IPv{family} but {device} has no IPv{family} address of its own to send GRE from"
    )]
    NoSource {
        addr: IpAddr,
        family: u8,
        device: String,
    },
    #[error("cannot read the addresses of {device}: {source}")]
    Netlink {
        device: String,
        source: netlink::Error,
    },
    #[error("cannot remove stale address {addr}/{prefix} from {device}: {source}")]
    Stale {
        addr: IpAddr,
        prefix: u8,
        device: String,
        source: netlink::Error,
    },
    #[error("cannot open a packet socket on {device} to announce from: {source}")]
    Socket {
        device: String,
        source: std::io::Error,
    },
    #[error("cannot start the announcer thread: {0}")]
    Thread(std::io::Error),
}

/// Tells the data path which announced addresses this node holds now;
/// called before announcing one and before removing one.
pub trait Steer: Send + Sync {
    fn held(&self, v4: &[Ipv4Addr], v6: &[Ipv6Addr]);
}

/// The device as the announcer needs it.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// Before anything is attached: removes addresses a crashed run left
/// (from the state file) and refuses addresses someone else put on the
/// device. Returns the device's own addresses afterwards, the announced
/// ones left out.
pub fn prepare(config: &Announce, device: &Device) -> Result<Vec<IpAddr>, Error> {
    let file = state::File::new(&config.state_dir, &device.name);
    if let Some(saved) = file.read()? {
        if state::other_rusty_rail(saved.pid) {
            return Err(Error::Busy {
                path: file.path().display().to_string(),
                pid: saved.pid,
                device: device.name.clone(),
            });
        }
        let present = addresses(device)?;
        for (addr, prefix) in saved.addresses {
            if !present.contains(&addr) {
                continue;
            }
            netlink::delete_address(device.index, addr, prefix).map_err(|source| Error::Stale {
                addr,
                prefix,
                device: device.name.clone(),
                source,
            })?;
            log::warn!(
                "removed {addr}/{prefix} from {}: left behind by rusty_rail pid {} (crashed or killed)",
                device.name,
                saved.pid
            );
        }
        file.remove();
    }
    let present = addresses(device)?;
    if !config.unmanaged
        && let Some((addr, _)) = config.addresses.iter().find(|(a, _)| present.contains(a))
    {
        return Err(Error::Present {
            addr: *addr,
            device: device.name.clone(),
        });
    }
    let announced: Vec<IpAddr> = config.addresses.iter().map(|(a, _)| *a).collect();
    let own: Vec<IpAddr> = present
        .into_iter()
        .filter(|a| !announced.contains(a))
        .collect();
    for addr in &announced {
        let family = if addr.is_ipv4() { 4 } else { 6 };
        if !own.iter().any(|a| a.is_ipv4() == addr.is_ipv4()) {
            return Err(Error::NoSource {
                addr: *addr,
                family,
                device: device.name.clone(),
            });
        }
    }
    if config.unmanaged {
        for addr in announced.iter().filter(|a| !own.contains(a)) {
            log::warn!(
                "RR_ANNOUNCE_UNMANAGED=1: {addr} is not on {}; announcing it anyway",
                device.name
            );
        }
    }
    Ok(own)
}

fn addresses(device: &Device) -> Result<Vec<IpAddr>, Error> {
    netlink::addresses(device.index)
        .map(|list| list.into_iter().map(|(a, _, _)| a).collect())
        .map_err(|source| Error::Netlink {
            device: device.name.clone(),
            source,
        })
}

/// The running announcer.
pub struct Announcer {
    stop: Arc<AtomicBool>,
    /// 0: running; otherwise the exit status + 1 it asked for.
    exit: Arc<AtomicU8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcer {
    /// Opens the socket and starts the thread, which probes at once.
    pub fn start(
        config: &Announce,
        device: &Device,
        steer: Arc<dyn Steer>,
    ) -> Result<Announcer, Error> {
        let socket = packet::Socket::open(device.index).map_err(|source| Error::Socket {
            device: device.name.clone(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(AtomicU8::new(0));
        let mut run = Run {
            socket,
            device: device.clone(),
            managed: !config.unmanaged,
            file: state::File::new(&config.state_dir, &device.name),
            claims: config
                .addresses
                .iter()
                .map(|(addr, prefix)| {
                    (
                        Claim::new(*addr, device.mac, timing(config)),
                        *prefix,
                        false,
                    )
                })
                .collect(),
            steer,
            jitter: config.jitter,
            rng: seed(),
            send_errors: 0,
            exit: Arc::clone(&exit),
        };
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rr-announce".to_string())
            .spawn(move || run.run(&flag))
            .map_err(Error::Thread)?;
        log::info!(
            "announcing {} on {} every {:.3} s (RR_WATCH={})",
            config
                .addresses
                .iter()
                .map(|(a, p)| format!("{a}/{p}"))
                .collect::<Vec<_>>()
                .join(", "),
            device.name,
            config.interval.as_secs_f64(),
            config.watch.name()
        );
        Ok(Announcer {
            stop,
            exit,
            thread: Some(thread),
        })
    }

    /// The exit status the announcer asks for (RR_WATCH=fail or quit lost
    /// a conflict, or an address could not be added), if any.
    pub fn exit_code(&self) -> Option<u8> {
        match self.exit.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Stops the thread, which removes every address it added.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the announcer thread panicked");
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn timing(config: &Announce) -> Timing {
    Timing {
        interval: config.interval,
        jitter: config.jitter,
        delay: config.delay,
        count: config.count,
        watch: config.watch,
        watch_delay: config.watch_delay,
    }
}

/// The longest the thread sleeps, so a stop is noticed.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// The thread's state.
struct Run {
    socket: packet::Socket,
    device: Device,
    managed: bool,
    file: state::File,
    /// Each claim with its prefix length and whether we added it to the device.
    claims: Vec<(Claim, u8, bool)>,
    steer: Arc<dyn Steer>,
    jitter: Duration,
    rng: u64,
    send_errors: u64,
    exit: Arc<AtomicU8>,
}

impl Run {
    fn run(&mut self, stop: &AtomicBool) {
        let now = Instant::now();
        for i in 0..self.claims.len() {
            let actions = self.claims[i].0.start(now);
            self.apply(i, actions);
        }
        let mut buf = [0u8; 1600];
        while !stop.load(Ordering::Relaxed) && self.exit.load(Ordering::Relaxed) == 0 {
            let now = Instant::now();
            let wait = self
                .claims
                .iter()
                .filter_map(|(c, _, _)| c.deadline())
                .min()
                .map_or(MAX_WAIT, |d| d.saturating_duration_since(now))
                .min(MAX_WAIT);
            match self.socket.recv(&mut buf, wait) {
                Ok(Some(n)) => {
                    if let Some(heard) = buf.get(..n).and_then(frames::parse) {
                        let now = Instant::now();
                        for i in 0..self.claims.len() {
                            let actions = self.claims[i].0.heard(&heard, now);
                            self.apply(i, actions);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("reading ARP/NDP on {}: {e}", self.device.name);
                    std::thread::sleep(MAX_WAIT);
                }
            }
            let now = Instant::now();
            for i in 0..self.claims.len() {
                let jitter = self.draw_jitter();
                let actions = self.claims[i].0.tick(now, jitter);
                self.apply(i, actions);
            }
        }
        self.release_all();
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for action in actions {
            let addr = self.claims[i].0.addr();
            match action {
                Action::Probe => {
                    let frame = match addr {
                        IpAddr::V4(a) => frames::arp_probe(self.device.mac, a),
                        IpAddr::V6(a) => frames::ns_probe(self.device.mac, a),
                    };
                    self.send(&frame);
                }
                Action::Announce => {
                    let frame = match addr {
                        IpAddr::V4(a) => frames::arp_announcement(self.device.mac, a),
                        IpAddr::V6(a) => frames::na_announcement(self.device.mac, a),
                    };
                    self.send(&frame);
                }
                Action::Add => {
                    if let Err(e) = self.add(i) {
                        log::error!("{e}");
                        self.request_exit(1);
                        return;
                    }
                }
                Action::Remove => self.remove(i),
                Action::Exit(code) => self.request_exit(code),
                Action::Log(level, line) => log::log!(level, "{line}"),
            }
        }
    }

    fn request_exit(&self, code: u8) {
        self.exit.store(code.saturating_add(1), Ordering::Relaxed);
    }

    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.socket.send(frame) {
            self.send_errors += 1;
            // The first, then every 100th: a down link fails every send.
            if self.send_errors % 100 == 1 {
                log::warn!(
                    "cannot send ARP/NDP on {} ({} failures so far): {e}",
                    self.device.name,
                    self.send_errors
                );
            }
        }
    }

    /// Adds the address (when managed), records it, then steers its traffic.
    fn add(&mut self, i: usize) -> Result<(), String> {
        let (claim, prefix, _) = &self.claims[i];
        let (addr, prefix) = (claim.addr(), *prefix);
        if self.managed {
            netlink::add_address(self.device.index, addr, prefix).map_err(|e| {
                format!(
                    "cannot add {addr}/{prefix} to {}: {e}; exiting 1",
                    self.device.name
                )
            })?;
            self.claims[i].2 = true;
            self.save();
            log::info!("added {addr}/{prefix} to {}", self.device.name);
        }
        self.steer_held();
        Ok(())
    }

    /// Stops steering its traffic, then removes the address (when added).
    fn remove(&mut self, i: usize) {
        self.steer_held();
        self.unassign(i);
    }

    /// Removes the address from the device, if we added it.
    fn unassign(&mut self, i: usize) {
        let (claim, prefix, added) = &self.claims[i];
        let (addr, prefix, added) = (claim.addr(), *prefix, *added);
        if !added {
            return;
        }
        match netlink::delete_address(self.device.index, addr, prefix) {
            Ok(()) => log::info!("removed {addr}/{prefix} from {}", self.device.name),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => log::error!(
                "cannot remove {addr}/{prefix} from {}: {e}",
                self.device.name
            ),
        }
        self.claims[i].2 = false;
        self.save();
    }

    fn steer_held(&self) {
        let held = self.claims.iter().filter(|(c, _, _)| c.holds());
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (c, _, _) in held {
            match c.addr() {
                IpAddr::V4(a) => v4.push(a),
                IpAddr::V6(a) => v6.push(a),
            }
        }
        self.steer.held(&v4, &v6);
    }

    fn save(&self) {
        let saved = state::Saved {
            pid: std::process::id(),
            device: self.device.name.clone(),
            addresses: self
                .claims
                .iter()
                .filter(|(_, _, added)| *added)
                .map(|(c, p, _)| (c.addr(), *p))
                .collect(),
        };
        if let Err(e) = self.file.write(&saved) {
            log::warn!("{e}; a crash now would leave the address for the next start to miss");
        }
    }

    /// On stop: nothing steered, nothing left on the device.
    fn release_all(&mut self) {
        self.steer.held(&[], &[]);
        for i in 0..self.claims.len() {
            self.unassign(i);
        }
        self.file.remove();
    }

    /// A uniform draw from [0, jitter].
    fn draw_jitter(&mut self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        // xorshift64: jitter needs spread, not secrecy.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        self.jitter.mul_f64(unit)
    }
}

/// A nonzero seed that differs between nodes and runs.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}
