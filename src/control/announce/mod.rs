//! Announcing addresses (`RR_ANNOUNCE`) with gratuitous ARP and unsolicited
//! neighbour advertisements, so that a VIP reaches this node with no router
//! configuration.
//!
//! One thread, `rr-announce`, owns a raw packet socket on the device (never
//! promiscuous; the kernel filters it down to ARP and NS/NA) and one
//! [`claim::Claim`] per address. It probes at start; to claim an address
//! it lists it in the state file, tells the data path to take its traffic,
//! adds it to the device (IPv6 with nodad, deprecated) and announces it: a
//! burst, then one per interval. Conflicts are settled by the lower MAC;
//! the loser acts on `RR_WATCH`. Releasing goes the other way round: off
//! the device first, so the host never sees (and resets) a flow the data
//! path was serving, then out of the data path. On stop it releases
//! everything and removes the state file.

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

/// Tells the data path which announced addresses this node holds now:
/// before one is added to the device, and after one is removed.
pub trait Steer: Send + Sync {
    /// Err: the traffic of these addresses cannot be steered (one line).
    fn held(&self, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Result<(), String>;
}

/// The device as the announcer needs it.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// Before anything is attached: takes the device's lock, removes
/// addresses a crashed run left (from the state file) and refuses
/// addresses someone else put on the device. The lock goes to
/// [`Announcer::start`].
pub fn prepare(config: &Announce, device: &Device) -> Result<state::Lock, Error> {
    let file = state::File::new(&config.state_dir, &device.name);
    let lock = file.lock()?;
    if let Some(saved) = file.read()? {
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
    // GRE goes out from a global address of our own, never link-local.
    let own: Vec<IpAddr> = present
        .into_iter()
        .filter(|a| !announced.contains(a) && !is_link_local(a))
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
    Ok(lock)
}

fn is_link_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
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
    /// Set when an address could not be removed from the device.
    leftover: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcer {
    /// Opens the socket and starts the thread, which probes at once.
    pub fn start(
        config: &Announce,
        device: &Device,
        lock: state::Lock,
        steer: Arc<dyn Steer>,
    ) -> Result<Announcer, Error> {
        let socket = packet::Socket::open(device.index).map_err(|source| Error::Socket {
            device: device.name.clone(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(AtomicU8::new(0));
        let leftover = Arc::new(AtomicBool::new(false));
        let mut run = Run {
            _lock: lock,
            released: false,
            leftover: Arc::clone(&leftover),
            last_check: Instant::now(),
            recv_errors: 0,
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
            leftover,
            thread: Some(thread),
        })
    }

    /// The exit status the announcer asks for (RR_WATCH=fail or quit lost
    /// a conflict, an address could not be added, or the thread died), if
    /// any.
    pub fn exit_code(&self) -> Option<u8> {
        match self.exit.load(Ordering::Relaxed) {
            0 if self.thread.as_ref().is_some_and(|t| t.is_finished()) => {
                log::error!("the announcer stopped unexpectedly; exiting 1");
                Some(1)
            }
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Stops the thread, which removes every address it added. False when
    /// some could not be removed (each was logged).
    pub fn stop(mut self) -> bool {
        self.finish();
        !self.leftover.load(Ordering::Relaxed)
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

/// How often held addresses are checked to still be on the device.
const CHECK: Duration = Duration::from_secs(1);

/// The thread's state.
struct Run {
    /// Held for as long as the thread runs.
    _lock: state::Lock,
    /// True once `release_all` ran.
    released: bool,
    leftover: Arc<AtomicBool>,
    last_check: Instant,
    recv_errors: u64,
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
                    let mac = self.device.mac;
                    if let Some(heard) = buf.get(..n).and_then(|f| frames::parse(f, mac)) {
                        let now = Instant::now();
                        for i in 0..self.claims.len() {
                            let actions = self.claims[i].0.heard(&heard, now);
                            self.apply(i, actions);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    failed(&mut self.recv_errors, "read", &self.device.name, &e);
                    std::thread::sleep(MAX_WAIT);
                }
            }
            if self.managed && self.last_check.elapsed() >= CHECK {
                self.last_check = Instant::now();
                self.restore_missing();
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
                        log::error!("{e}; exiting 1");
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
            failed(&mut self.send_errors, "send", &self.device.name, &e);
        }
    }

    /// Claims address `i`: listed in the state file first (a crash from
    /// here on leaves nothing unlisted), steered, then on the device.
    fn add(&mut self, i: usize) -> Result<(), String> {
        let (claim, prefix, _) = &self.claims[i];
        let (addr, prefix) = (claim.addr(), *prefix);
        if self.managed {
            self.claims[i].2 = true;
            if let Err(e) = self.save() {
                self.claims[i].2 = false;
                return Err(format!("{e}; not claiming {addr}/{prefix} unlisted"));
            }
        }
        if let Err(e) = self.steer_held() {
            self.claims[i].2 = false;
            self.save_or_warn();
            return Err(e);
        }
        if self.managed {
            if let Err(e) = netlink::add_address(self.device.index, addr, prefix) {
                self.claims[i].2 = false;
                self.save_or_warn();
                // Leave nothing steered for an address we do not have.
                self.unsteer(i);
                return Err(format!(
                    "cannot add {addr}/{prefix} to {}: {e}",
                    self.device.name
                ));
            }
            log::info!("added {addr}/{prefix} to {}", self.device.name);
        }
        Ok(())
    }

    /// Releases address `i` (already not held): off the device, then out
    /// of the data path. One that cannot be removed stays steered (the
    /// kernel would answer for it anyway) and the process exits 1.
    fn remove(&mut self, i: usize) {
        if !self.unassign(i) {
            self.request_exit(1);
            return;
        }
        if let Err(e) = self.steer_held() {
            log::error!("{e}");
        }
    }

    /// Steers the held addresses minus `i` (which failed to be added).
    fn unsteer(&self, i: usize) {
        let addr = self.claims[i].0.addr();
        let (v4, v6) = self.held();
        let v4: Vec<Ipv4Addr> = v4.into_iter().filter(|a| IpAddr::V4(*a) != addr).collect();
        let v6: Vec<Ipv6Addr> = v6.into_iter().filter(|a| IpAddr::V6(*a) != addr).collect();
        if let Err(e) = self.steer.held(&v4, &v6) {
            log::error!("{e}");
        }
    }

    /// Removes address `i` from the device, if we added it; false when it
    /// is still there. Such an address stays in the state file, for the
    /// next start to remove.
    fn unassign(&mut self, i: usize) -> bool {
        let (claim, prefix, added) = &self.claims[i];
        let (addr, prefix, added) = (claim.addr(), *prefix, *added);
        if !added {
            return true;
        }
        match netlink::delete_address(self.device.index, addr, prefix) {
            Ok(()) => log::info!("removed {addr}/{prefix} from {}", self.device.name),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => {
                log::error!(
                    "cannot remove {addr}/{prefix} from {}: {e}; the next start removes it",
                    self.device.name
                );
                self.leftover.store(true, Ordering::Relaxed);
                return false;
            }
        }
        self.claims[i].2 = false;
        self.save_or_warn();
        true
    }

    /// Puts back a held address that vanished from the device (removed
    /// by hand, or with the primary of its subnet, or on link down).
    fn restore_missing(&mut self) {
        let Ok(present) = netlink::addresses(self.device.index) else {
            return;
        };
        for (claim, prefix, added) in &self.claims {
            let addr = claim.addr();
            if !claim.holds() || !*added || present.iter().any(|(a, _, _)| *a == addr) {
                continue;
            }
            match netlink::add_address(self.device.index, addr, *prefix) {
                Ok(()) => log::warn!(
                    "{addr}/{prefix} vanished from {}; added it back",
                    self.device.name
                ),
                Err(e) => log::warn!(
                    "{addr}/{prefix} vanished from {} and cannot be added back: {e}",
                    self.device.name
                ),
            }
        }
    }

    /// The addresses held now, by family.
    fn held(&self) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (c, _, _) in self.claims.iter().filter(|(c, _, _)| c.holds()) {
            match c.addr() {
                IpAddr::V4(a) => v4.push(a),
                IpAddr::V6(a) => v6.push(a),
            }
        }
        (v4, v6)
    }

    fn steer_held(&self) -> Result<(), String> {
        let (v4, v6) = self.held();
        self.steer.held(&v4, &v6)
    }

    fn save(&self) -> Result<(), state::Error> {
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
        self.file.write(&saved)
    }

    /// After a removal: a stale entry only makes the next start try to
    /// remove an address that is gone.
    fn save_or_warn(&self) {
        if let Err(e) = self.save() {
            log::warn!("{e}");
        }
    }

    /// On stop: nothing left on the device, then nothing steered.
    fn release_all(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for i in 0..self.claims.len() {
            // A failure is logged and flagged in `leftover`.
            let _ = self.unassign(i);
        }
        if let Err(e) = self.steer.held(&[], &[]) {
            log::error!("{e}");
        }
        if !self.leftover.load(Ordering::Relaxed) {
            self.file.remove();
        }
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

impl Drop for Run {
    /// A thread that unwinds still leaves nothing behind.
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Counts a failed read or send and logs the first and every 100th: a
/// vanished device or a down link fails every call.
fn failed(count: &mut u64, what: &str, device: &str, e: &std::io::Error) {
    *count += 1;
    if *count % 100 == 1 {
        log::warn!("cannot {what} ARP/NDP on {device} ({count} failures so far): {e}");
    }
}

/// A nonzero seed that differs between nodes and runs.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}
