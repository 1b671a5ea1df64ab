//! Backend health: active TCP/HTTP checks, plus a passive check that reads
//! ICMP destination-unreachable errors about the GRE packets we send, so a
//! dead backend leaves the tables without waiting for `fall` failed probes.
//! Probes are blocking std sockets bounded by the timeout, one thread per
//! backend: simple, and it only runs on the control side, never on workers.

use crate::wire::{icmp, ip_proto, ipv4, ipv6};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How the active check probes each backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub port: u16,
    /// `Some("/healthz")`: HTTP GET, healthy on 2xx or 3xx. `None`: TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy backend back.
    pub rise: u32,
    /// Consecutive failures that take a healthy backend out.
    pub fall: u32,
}

/// Checker threads and passive reads sleep in steps this short so a stop is
/// seen promptly.
const STEP: Duration = Duration::from_millis(50);
/// Upper bound of the random delay before a checker's first probe.
const MAX_JITTER_MS: u64 = 100;
/// A zero interval from a bad config would spin against the backend.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Caps config durations so `Instant` arithmetic cannot overflow.
const LONGEST: Duration = Duration::from_secs(24 * 3600);
/// Enough for any status line we accept, small enough to bound the read.
const MAX_STATUS_LINE: usize = 512;
/// Read timeout of the raw ICMP sockets.
const PASSIVE_WAIT: Duration = Duration::from_millis(100);
/// Datagrams read per socket per `Passive::poll`, so a flood cannot hold it.
const MAX_READS: usize = 64;
const PACKET_BUF: usize = 2048;

/// Health of one backend, from active results and passive failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results against the current state: failures while
    /// healthy, passes while unhealthy.
    run: u32,
    reason: Option<String>,
}

impl Tracker {
    /// Starts healthy, so traffic flows at start-up. A `rise` or `fall` of
    /// zero acts as one.
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: true,
            run: 0,
            reason: None,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// One active check result; returns `Some(new_state)` when health flips.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            // Agrees with the current state: any run towards a flip is broken.
            self.run = 0;
            return None;
        }
        self.run = self.run.saturating_add(1);
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.run < needed {
            return None;
        }
        self.healthy = ok;
        self.run = 0;
        if ok {
            self.reason = None;
        }
        Some(ok)
    }

    /// A failed active check with its reason; see `record`.
    pub fn record_failure(&mut self, reason: &str) -> Option<bool> {
        self.reason = Some(reason.to_string());
        self.record(false)
    }

    /// A probe result as `probe` returns it; see `record`.
    pub fn record_result(&mut self, result: &Result<(), String>) -> Option<bool> {
        match result {
            Ok(()) => self.record(true),
            Err(reason) => self.record_failure(reason),
        }
    }

    /// Passive failure (ICMP unreachable): unhealthy at once, and `rise`
    /// consecutive passes from now on to return. `Some(false)` if it was
    /// healthy.
    pub fn mark_down(&mut self) -> Option<bool> {
        let was_healthy = self.healthy;
        self.healthy = false;
        self.run = 0;
        self.reason = Some("ICMP destination unreachable".to_string());
        was_healthy.then_some(false)
    }

    /// Why the backend last failed; cleared when it comes back.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

/// One active check of `addr`, TCP or HTTP per `settings`, the whole of it
/// (connect, write and read) bounded by `settings.timeout`. The error is a
/// short human reason.
pub fn probe(addr: IpAddr, settings: &Settings) -> Result<(), String> {
    let deadline = later(settings.timeout);
    let target = SocketAddr::new(addr, settings.port);
    let mut stream = TcpStream::connect_timeout(&target, remaining(deadline)?)
        .map_err(|e| describe("connect", &e))?;
    let Some(path) = settings.path.as_deref() else {
        return Ok(());
    };
    if !valid_path(path) {
        return Err("bad path".to_string());
    }
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| describe("write", &e))?;
    stream
        .write_all(request(addr, path).as_bytes())
        .map_err(|e| describe("write", &e))?;
    let line = read_status_line(&mut stream, deadline)?;
    match status_code(&line) {
        Some(code) if (200..=399).contains(&code) => Ok(()),
        Some(code) => Err(format!("HTTP {code}")),
        None => Err("bad status line".to_string()),
    }
}

/// A path we can put in a request line without letting it add headers.
fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())
}

fn request(addr: IpAddr, path: &str) -> String {
    let host = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: rusty_rail\r\nConnection: close\r\n\r\n"
    )
}

/// Reads up to the first newline (or the end of the stream), at most
/// `MAX_STATUS_LINE` bytes, each read bounded by what is left of the deadline.
fn read_status_line(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        let got = buf.get(..len).unwrap_or_default();
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            return Ok(got.get(..end).unwrap_or_default().to_vec());
        }
        let Some(free) = buf.get_mut(len..).filter(|free| !free.is_empty()) else {
            return Err("bad status line".to_string());
        };
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| describe("read", &e))?;
        match stream.read(free) {
            Ok(0) if len == 0 => return Err("empty response".to_string()),
            Ok(0) => return Ok(buf.get(..len).unwrap_or_default().to_vec()),
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(describe("read", &e)),
        }
    }
}

/// The status code of `HTTP/1.x NNN[ reason]`, if the line is one.
fn status_code(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let (digits, tail) = rest.split_at_checked(3)?;
    if !minor.is_ascii_digit() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !tail.is_empty() && !tail.starts_with(b" ") {
        return None;
    }
    let code = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait.min(LONGEST)).unwrap_or(now)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| "timed out".to_string())
}

fn describe(stage: &str, e: &io::Error) -> String {
    // A socket timeout shows as EAGAIN on Linux.
    if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
        return format!("{stage}: timed out");
    }
    let text = e.to_string();
    // "Connection refused (os error 111)" reads better without the number.
    let text = text
        .split_once(" (os error ")
        .map_or(text.as_str(), |(t, _)| t);
    format!("{stage}: {text}")
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub addr: IpAddr,
    pub result: Result<(), String>,
    /// The checker that sent it: a removed and re-added address gets a new
    /// checker, and the old one's late reports must not count.
    pub checker: u64,
}

#[derive(Debug)]
struct Checker {
    serial: u64,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Runs active checks for a changing set of backends, one thread each.
#[derive(Debug)]
pub struct Monitor {
    settings: Settings,
    checkers: BTreeMap<IpAddr, Checker>,
    /// Told to stop but maybe still in a probe: joined once finished, or
    /// on drop, so `set_targets` never waits (it runs under the
    /// controller's lock).
    retired: Vec<(IpAddr, Checker)>,
    serials: u64,
    sender: Sender<Report>,
    receiver: Receiver<Report>,
}

impl Monitor {
    pub fn new(settings: Settings) -> Monitor {
        let (sender, receiver) = mpsc::channel();
        Monitor {
            settings,
            checkers: BTreeMap::new(),
            retired: Vec::new(),
            serials: 0,
            sender,
            receiver,
        }
    }

    /// Starts a checker thread ("rr-health") for each new address and stops
    /// those no longer listed. Each probes at once (after under 100 ms of
    /// jitter), then every interval. Never waits: a removed checker ends
    /// after its probe in flight, and its late reports are filtered out.
    pub fn set_targets(&mut self, addrs: &[IpAddr]) {
        let wanted: BTreeSet<IpAddr> = addrs.iter().copied().collect();
        let gone: Vec<IpAddr> = self
            .checkers
            .keys()
            .filter(|addr| !wanted.contains(addr))
            .copied()
            .collect();
        let stopping: Vec<(IpAddr, Checker)> = gone
            .into_iter()
            .filter_map(|addr| self.checkers.remove(&addr).map(|c| (addr, c)))
            .collect();
        for (_, checker) in &stopping {
            checker.stop.store(true, Ordering::Release);
        }
        self.retired.extend(stopping);
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, c)| c.thread.is_finished());
        self.retired = running;
        for (addr, checker) in done {
            join(addr, checker);
        }
        for addr in wanted {
            if self.checkers.contains_key(&addr) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let settings = self.settings.clone();
            let sender = self.sender.clone();
            let flag = Arc::clone(&stop);
            self.serials += 1;
            let serial = self.serials;
            let spawned = thread::Builder::new()
                .name("rr-health".to_string())
                .spawn(move || check_loop(addr, serial, &settings, &flag, &sender));
            match spawned {
                Ok(thread) => {
                    log::debug!("health: checking {addr}");
                    self.checkers.insert(
                        addr,
                        Checker {
                            serial,
                            stop,
                            thread,
                        },
                    );
                }
                // Left out; the next set_targets tries again.
                Err(e) => log::warn!("health: cannot start a checker for {addr}: {e}"),
            }
        }
    }

    /// The addresses being checked, in order.
    pub fn targets(&self) -> Vec<IpAddr> {
        self.checkers.keys().copied().collect()
    }

    /// The next queued report about a current target, if any.
    pub fn try_recv(&self) -> Option<Report> {
        loop {
            let report = self.receiver.try_recv().ok()?;
            if self.current(&report) {
                return Some(report);
            }
        }
    }

    /// Whether the report comes from the address's current checker.
    fn current(&self, report: &Report) -> bool {
        self.checkers
            .get(&report.addr)
            .is_some_and(|c| c.serial == report.checker)
    }

    /// Every queued report about a current target. Reports about removed
    /// targets are dropped.
    pub fn drain(&self) -> Vec<Report> {
        std::iter::from_fn(|| self.try_recv()).collect()
    }
}

/// How long a drop waits for checkers to end: those still in a long
/// probe are left to finish it alone, so a stop is never held up by
/// `RR_HEALTH_TIMEOUT`.
const DROP_WAIT: Duration = Duration::from_millis(200);

impl Drop for Monitor {
    fn drop(&mut self) {
        for checker in self.checkers.values() {
            checker.stop.store(true, Ordering::Release);
        }
        let all: Vec<(IpAddr, Checker)> = std::mem::take(&mut self.checkers)
            .into_iter()
            .chain(std::mem::take(&mut self.retired))
            .collect();
        let deadline = later(DROP_WAIT);
        while all.iter().any(|(_, c)| !c.thread.is_finished()) && remaining(deadline).is_ok() {
            thread::sleep(Duration::from_millis(5));
        }
        for (addr, checker) in all {
            if checker.thread.is_finished() {
                join(addr, checker);
            }
        }
    }
}

fn join(addr: IpAddr, checker: Checker) {
    if checker.thread.join().is_err() {
        log::error!("health: checker for {addr} panicked");
    }
    log::debug!("health: stopped checking {addr}");
}

fn check_loop(
    addr: IpAddr,
    checker: u64,
    settings: &Settings,
    stop: &AtomicBool,
    reports: &Sender<Report>,
) {
    let interval = settings.interval.clamp(MIN_INTERVAL, LONGEST);
    // Spreads the first probes of backends added together.
    let jitter = Duration::from_millis(RandomState::new().hash_one(addr) % MAX_JITTER_MS);
    if !sleep_until(later(jitter.min(interval)), stop) {
        return;
    }
    loop {
        let next = later(interval);
        let result = probe(addr, settings);
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Err(reason) = &result {
            log::debug!("health: {addr}: {reason}");
        }
        let report = Report {
            addr,
            result,
            checker,
        };
        if reports.send(report).is_err() {
            return;
        }
        if !sleep_until(next, stop) {
            return;
        }
    }
}

/// Sleeps until `until` in steps of `STEP`; false if `stop` was set.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let Ok(left) = remaining(until) else {
            return true;
        };
        thread::sleep(left.min(STEP));
    }
}

/// An ICMPv4 packet as a raw IPPROTO_ICMP socket delivers it (IPv4 header
/// first). If it is a destination unreachable about a GRE packet we sent
/// (quoted protocol 47, quoted source one of `ours`), the quoted
/// destination: the backend. "Fragmentation needed" is path MTU, not a dead
/// backend, so it is ignored.
pub fn unreachable_v4(packet: &[u8], ours: &[Ipv4Addr]) -> Option<IpAddr> {
    // Quoted rather than checked: a long error may be cut by our buffer.
    let outer = ipv4::Packet::new_quoted(packet).ok()?;
    if outer.protocol() != ip_proto::ICMP || outer.frag_offset() != 0 {
        return None;
    }
    let message = icmp::Packet::new_checked(outer.payload()).ok()?;
    if message.msg_type() != icmp::v4::DEST_UNREACHABLE
        || message.code() == icmp::v4::FRAG_NEEDED
        // Raw sockets get ICMP before the kernel checks the checksum.
        || !message.verify_checksum_v4()
    {
        return None;
    }
    let quoted = ipv4::Packet::new_quoted(message.payload()).ok()?;
    if quoted.protocol() != ip_proto::GRE || !ours.contains(&quoted.src()) {
        return None;
    }
    Some(IpAddr::V4(quoted.dst()))
}

/// The ICMPv6 message as a raw IPPROTO_ICMPV6 socket delivers it (ICMPv6
/// header first; Linux has checked its checksum). If it is a destination
/// unreachable quoting a packet whose next header is GRE directly, from one
/// of `ours`, the quoted destination: the backend.
pub fn unreachable_v6(message: &[u8], ours: &[Ipv6Addr]) -> Option<IpAddr> {
    let message = icmp::Packet::new_checked(message).ok()?;
    // A host without GRE answers "unrecognised next header" (parameter
    // problem, code 1) rather than unreachable.
    let no_gre = message.msg_type() == icmp::v6::PARAMETER_PROBLEM && message.code() == 1;
    if message.msg_type() != icmp::v6::DEST_UNREACHABLE && !no_gre {
        return None;
    }
    let quoted = ipv6::Packet::new_quoted(message.payload()).ok()?;
    if quoted.next_header() != ip_proto::GRE || !ours.contains(&quoted.src()) {
        return None;
    }
    Some(IpAddr::V6(quoted.dst()))
}

/// Raw ICMP and ICMPv6 sockets, read for unreachables about our GRE.
/// Anyone who can send us ICMP can mark a backend down this way; active
/// checks bring it back after `rise` passes.
#[derive(Debug)]
pub struct Passive {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl Passive {
    /// Opens both sockets with a 100 ms read timeout. Either family failing
    /// alone is logged and the other carries on; both failing is the IPv4
    /// error. Needs CAP_NET_RAW.
    pub fn open() -> io::Result<Passive> {
        let v4 = raw_socket(Domain::IPV4, Protocol::ICMPV4);
        let v6 = raw_socket(Domain::IPV6, Protocol::ICMPV6);
        match (v4, v6) {
            (Err(e), Err(e6)) => {
                log::warn!("health: no raw ICMPv6 socket either: {e6}");
                Err(e)
            }
            (v4, v6) => {
                let v4 = v4
                    .inspect_err(|e| log::warn!("health: no passive IPv4 check: {e}"))
                    .ok();
                let v6 = v6
                    .inspect_err(|e| log::warn!("health: no passive IPv6 check: {e}"))
                    .ok();
                Ok(Passive { v4, v6 })
            }
        }
    }

    /// Reads what is queued, waiting up to 100 ms for the first datagram and
    /// not at all after, at most 64 datagrams per socket. Returns the
    /// backends reported unreachable about our GRE, sorted, each once.
    pub fn poll(&mut self, ours_v4: &[Ipv4Addr], ours_v6: &[Ipv6Addr]) -> Vec<IpAddr> {
        let mut found = Vec::new();
        let mut wait = true;
        if let Some(socket) = &self.v4 {
            read_socket(socket, wait, |p| unreachable_v4(p, ours_v4), &mut found);
            wait = false;
        }
        if let Some(socket) = &self.v6 {
            read_socket(socket, wait, |m| unreachable_v6(m, ours_v6), &mut found);
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

fn raw_socket(domain: Domain, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    socket.set_read_timeout(Some(PASSIVE_WAIT))?;
    Ok(socket)
}

fn read_socket(
    socket: &Socket,
    wait: bool,
    parse: impl Fn(&[u8]) -> Option<IpAddr>,
    found: &mut Vec<IpAddr>,
) {
    let mut buf = [0u8; PACKET_BUF];
    let mut blocking = wait;
    if let Err(e) = socket.set_nonblocking(!blocking) {
        log::warn!("health: raw ICMP socket: {e}");
        return;
    }
    for _ in 0..MAX_READS {
        let mut reader = socket;
        match reader.read(&mut buf) {
            Ok(n) => found.extend(buf.get(..n).and_then(&parse)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return,
            Err(e) => {
                log::warn!("health: raw ICMP socket: {e}");
                // Not in a tight loop if it keeps failing.
                std::thread::sleep(PASSIVE_WAIT);
                return;
            }
        }
        if blocking {
            blocking = false;
            if let Err(e) = socket.set_nonblocking(true) {
                log::warn!("health: raw ICMP socket: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_os = "linux")]
    use crate::control::netns;
    #[cfg(target_os = "linux")]
    use etherparse::Icmpv4Header;
    use etherparse::{
        Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder,
        icmpv4, icmpv4::DestUnreachableHeader, icmpv6,
    };
    use proptest::prelude::*;
    use std::net::TcpListener;
    use std::sync::mpsc::channel;

    // --- Tracker ---

    #[test]
    fn tracker_starts_healthy() {
        let t = Tracker::new(2, 3);
        assert!(t.healthy());
        assert_eq!(t.reason(), None);
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert!(t.healthy());
        assert_eq!(t.record(false), Some(false));
        assert!(!t.healthy());
        assert_eq!(t.record(false), None, "already down: no second flip");
    }

    #[test]
    fn success_resets_the_failure_run() {
        let mut t = Tracker::new(2, 3);
        t.record(false);
        t.record(false);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert!(t.healthy());
        assert_eq!(t.record(false), Some(false));
    }

    #[test]
    fn comes_back_after_rise_consecutive_successes() {
        let mut t = Tracker::new(2, 1);
        assert_eq!(t.record_failure("connect: Connection refused"), Some(false));
        assert_eq!(t.reason(), Some("connect: Connection refused"));
        assert_eq!(t.record(true), None);
        assert!(!t.healthy());
        assert_eq!(t.record(true), Some(true));
        assert!(t.healthy());
        assert_eq!(t.reason(), None);
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn failure_resets_the_success_run() {
        let mut t = Tracker::new(3, 1);
        t.record(false);
        t.record(true);
        t.record(true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert!(!t.healthy());
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn mark_down_is_immediate_and_needs_rise_passes_to_return() {
        let mut t = Tracker::new(2, 5);
        t.record(false); // a failure run in progress does not matter
        assert_eq!(t.mark_down(), Some(false));
        assert!(!t.healthy());
        assert_eq!(t.reason(), Some("ICMP destination unreachable"));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert!(t.healthy());
    }

    #[test]
    fn mark_down_while_down_restarts_the_rise_run() {
        let mut t = Tracker::new(2, 1);
        t.record(false);
        assert_eq!(t.record(true), None);
        assert_eq!(t.mark_down(), None);
        assert_eq!(
            t.record(true),
            None,
            "the pass before mark_down no longer counts"
        );
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn zero_rise_and_fall_act_as_one() {
        let mut t = Tracker::new(0, 0);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn record_result_takes_the_probe_error_as_reason() {
        let mut t = Tracker::new(1, 1);
        assert_eq!(t.record_result(&Err("HTTP 503".into())), Some(false));
        assert_eq!(t.reason(), Some("HTTP 503"));
        assert_eq!(t.record_result(&Ok(())), Some(true));
    }

    // --- Probes ---

    fn settings(port: u16, path: Option<&str>, timeout_ms: u64) -> Settings {
        Settings {
            port,
            path: path.map(str::to_string),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(timeout_ms),
            rise: 2,
            fall: 3,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A one-shot HTTP server: reads the request head, answers `reply`,
    /// and hands back what it read.
    fn http_server(reply: &'static str) -> (u16, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = channel();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            conn.write_all(reply.as_bytes()).unwrap();
            tx.send(String::from_utf8(head).unwrap()).unwrap();
        });
        (port, rx)
    }

    fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[test]
    fn tcp_probe_passes_on_a_listening_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(probe(LOCAL, &settings(port, None, 500)), Ok(()));
    }

    #[test]
    fn tcp_probe_fails_on_a_closed_port() {
        let err = probe(LOCAL, &settings(closed_port(), None, 500)).unwrap_err();
        assert_eq!(err, "connect: Connection refused");
    }

    #[test]
    fn http_probe_sends_get_and_passes_on_200() {
        let (port, request) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            probe(LOCAL, &settings(port, Some("/healthz"), 1000)),
            Ok(())
        );
        assert_eq!(
            request.recv().unwrap(),
            "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: rusty_rail\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn http_probe_passes_on_redirect() {
        let (port, _request) = http_server("HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n");
        assert_eq!(probe(LOCAL, &settings(port, Some("/"), 1000)), Ok(()));
    }

    #[test]
    fn http_probe_fails_with_the_status_on_503() {
        let (port, _request) = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = probe(LOCAL, &settings(port, Some("/healthz"), 1000)).unwrap_err();
        assert_eq!(err, "HTTP 503");
    }

    #[test]
    fn http_probe_rejects_a_garbage_status_line() {
        let (port, _request) = http_server("SSH-2.0-OpenSSH_9.6\r\n");
        let err = probe(LOCAL, &settings(port, Some("/healthz"), 1000)).unwrap_err();
        assert_eq!(err, "bad status line");
    }

    #[test]
    fn http_probe_fails_on_an_empty_response() {
        let (port, _request) = http_server("");
        let err = probe(LOCAL, &settings(port, Some("/healthz"), 1000)).unwrap_err();
        assert_eq!(err, "empty response");
    }

    #[test]
    fn http_probe_gives_up_at_the_timeout_when_the_server_never_answers() {
        // The kernel completes the handshake from the backlog; nobody reads.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = probe(LOCAL, &settings(port, Some("/healthz"), 300)).unwrap_err();
        let elapsed = started.elapsed();
        assert!(err.contains("timed out"), "{err}");
        assert!(elapsed >= timeout / 2, "{elapsed:?}");
        assert!(elapsed < timeout + Duration::from_secs(1), "{elapsed:?}");
        drop(listener);
    }

    #[test]
    fn http_probe_refuses_a_path_that_could_add_headers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for path in ["/x\r\nEvil: 1", "no-slash", "/a b", ""] {
            let err = probe(LOCAL, &settings(port, Some(path), 500)).unwrap_err();
            assert_eq!(err, "bad path", "{path:?}");
        }
    }

    #[test]
    fn request_puts_ipv6_host_in_brackets() {
        let r = request(IpAddr::V6(Ipv6Addr::LOCALHOST), "/h");
        assert!(r.starts_with("GET /h HTTP/1.0\r\nHost: [::1]\r\n"), "{r}");
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 302"), Some(302));
        assert_eq!(status_code(b"HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(status_code(b"HTTP/2 200"), None);
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"HTTP/1.1 200OK"), None);
        assert_eq!(status_code(b"HTTP/1.1 999 x"), None);
        assert_eq!(status_code(b"HTTP/1.x 200"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn describe_drops_the_os_error_number() {
        let e = io::Error::from_raw_os_error(111);
        assert_eq!(describe("connect", &e), "connect: Connection refused");
        let e = io::Error::from(ErrorKind::WouldBlock);
        assert_eq!(describe("read", &e), "read: timed out");
    }

    // --- Monitor ---

    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    fn reports_until(
        monitor: &Monitor,
        within: Duration,
        done: impl Fn(&[Report]) -> bool,
    ) -> Vec<Report> {
        let deadline = Instant::now() + within;
        let mut all = Vec::new();
        while !done(&all) && Instant::now() < deadline {
            all.extend(monitor.drain());
            thread::sleep(Duration::from_millis(20));
        }
        all
    }

    fn has(reports: &[Report], addr: IpAddr, ok: bool) -> bool {
        reports
            .iter()
            .any(|r| r.addr == addr && r.result.is_ok() == ok)
    }

    #[test]
    fn monitor_reports_up_and_down_backends() {
        // Bound to 127.0.0.1 only, so the same port on 127.0.0.2 refuses.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut monitor = Monitor::new(settings(port, None, 100));
        monitor.set_targets(&[OTHER, LOCAL, LOCAL]);
        assert_eq!(monitor.targets(), [LOCAL, OTHER]);
        let seen = reports_until(&monitor, Duration::from_millis(400), |r| {
            has(r, LOCAL, true) && has(r, OTHER, false)
        });
        assert!(has(&seen, LOCAL, true), "{seen:?}");
        assert!(has(&seen, OTHER, false), "{seen:?}");
        assert!(
            !has(&seen, LOCAL, false) && !has(&seen, OTHER, true),
            "{seen:?}"
        );
    }

    #[test]
    fn monitor_probes_every_interval() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut monitor = Monitor::new(settings(port, None, 100));
        monitor.set_targets(&[LOCAL]);
        let seen = reports_until(&monitor, Duration::from_millis(1000), |r| r.len() >= 3);
        assert!(seen.len() >= 3, "{seen:?}");
    }

    #[test]
    fn removed_target_stops_reporting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut monitor = Monitor::new(settings(port, None, 100));
        monitor.set_targets(&[LOCAL, OTHER]);
        reports_until(&monitor, Duration::from_millis(400), |r| {
            has(r, LOCAL, true) && has(r, OTHER, false)
        });
        let started = std::time::Instant::now();
        monitor.set_targets(&[LOCAL]);
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "set_targets waited"
        );
        assert_eq!(monitor.targets(), [LOCAL]);
        // Read the channel itself, past drain's filter: the removed checker
        // must have ended (within its probe), not merely be hidden.
        thread::sleep(Duration::from_millis(150));
        let _queued: Vec<Report> = monitor.receiver.try_iter().collect();
        thread::sleep(Duration::from_millis(350));
        let after: Vec<Report> = monitor.receiver.try_iter().collect();
        assert!(!after.is_empty(), "the kept target still reports");
        assert!(after.iter().all(|r| r.addr == LOCAL), "{after:?}");
    }

    #[test]
    fn a_re_added_address_ignores_its_old_checkers_reports() {
        let mut monitor = Monitor::new(settings(closed_port(), None, 100));
        monitor.set_targets(&[OTHER]);
        let old = monitor.checkers[&OTHER].serial;
        monitor.set_targets(&[]);
        monitor.set_targets(&[OTHER]);
        assert_ne!(monitor.checkers[&OTHER].serial, old);
        let late = Report {
            addr: OTHER,
            result: Err("late".to_string()),
            checker: old,
        };
        monitor.sender.send(late).unwrap();
        assert!(monitor.drain().iter().all(|r| r.checker != old));
    }

    #[test]
    fn drain_drops_reports_about_addresses_not_checked() {
        let monitor = Monitor::new(settings(closed_port(), None, 100));
        let stale = Report {
            addr: OTHER,
            result: Ok(()),
            checker: 1,
        };
        monitor.sender.send(stale.clone()).unwrap();
        monitor.sender.send(stale).unwrap();
        assert_eq!(monitor.drain(), []);
        assert!(monitor.receiver.try_recv().is_err(), "drain consumed them");
    }

    #[test]
    fn drop_stops_checkers_promptly() {
        // Probes that hang until their timeout, and a long interval.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A probe far longer than the drop may wait.
        let mut s = settings(port, Some("/"), 10_000);
        s.interval = Duration::from_secs(60);
        let mut monitor = Monitor::new(s);
        monitor.set_targets(&[LOCAL, OTHER]);
        thread::sleep(Duration::from_millis(150));
        let started = Instant::now();
        drop(monitor);
        assert!(
            started.elapsed() < DROP_WAIT + Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    // --- Passive parsing ---

    const OURS4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 7);
    const OURS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);

    /// What an ICMP error quotes: the IPv4 header and 8 bytes (GRE header
    /// and the start of the inner packet).
    fn quote_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Vec<u8> {
        let mut ip =
            Ipv4Header::new(84, 64, IpNumber(protocol), src.octets(), dst.octets()).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let mut b = ip.to_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0x08, 0x00, 0x45, 0, 0, 80]);
        b
    }

    /// As a raw IPPROTO_ICMP socket delivers it: outer IPv4 header first.
    fn icmp_v4(kind: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 1, 0, 254], OURS4.octets(), 64).icmpv4(kind);
        let mut out = Vec::with_capacity(builder.size(quote.len()));
        builder.write(&mut out, quote).unwrap();
        out
    }

    fn unreachable(code: DestUnreachableHeader) -> Icmpv4Type {
        Icmpv4Type::DestinationUnreachable(code)
    }

    fn quote_v6(src: Ipv6Addr, dst: Ipv6Addr, next: u8) -> Vec<u8> {
        let ip = Ipv6Header {
            payload_length: 84,
            next_header: IpNumber(next),
            hop_limit: 64,
            source: src.octets(),
            destination: dst.octets(),
            ..Default::default()
        };
        let mut b = ip.to_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0x86, 0xdd, 0x60, 0, 0, 0]);
        b
    }

    /// As a raw IPPROTO_ICMPV6 socket delivers it: no IPv6 header.
    fn icmp_v6(kind: Icmpv6Type, quote: &[u8]) -> Vec<u8> {
        let router = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
        let header =
            Icmpv6Header::with_checksum(kind, router.octets(), OURS6.octets(), quote).unwrap();
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(quote);
        out
    }

    fn v6_unreachable() -> Icmpv6Type {
        Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Address)
    }

    #[test]
    fn v4_protocol_unreachable_about_our_gre_names_the_backend() {
        let p = icmp_v4(
            unreachable(DestUnreachableHeader::Protocol),
            &quote_v4(OURS4, BACKEND4, 47),
        );
        assert_eq!(unreachable_v4(&p, &[OURS4]), Some(IpAddr::V4(BACKEND4)));
        let other = Ipv4Addr::new(192, 0, 2, 2);
        assert_eq!(
            unreachable_v4(&p, &[other, OURS4]),
            Some(IpAddr::V4(BACKEND4))
        );
    }

    #[test]
    fn v4_host_unreachable_counts_but_fragmentation_needed_does_not() {
        let quote = quote_v4(OURS4, BACKEND4, 47);
        let host = icmp_v4(unreachable(DestUnreachableHeader::Host), &quote);
        assert_eq!(unreachable_v4(&host, &[OURS4]), Some(IpAddr::V4(BACKEND4)));
        let pmtu = DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 };
        let pmtu = icmp_v4(unreachable(pmtu), &quote);
        assert_eq!(unreachable_v4(&pmtu, &[OURS4]), None);
    }

    #[test]
    fn v4_time_exceeded_is_ignored() {
        let kind = Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit);
        let p = icmp_v4(kind, &quote_v4(OURS4, BACKEND4, 47));
        assert_eq!(p[20], 11);
        assert_eq!(unreachable_v4(&p, &[OURS4]), None);
    }

    #[test]
    fn v4_quoted_tcp_is_ignored() {
        let p = icmp_v4(
            unreachable(DestUnreachableHeader::Protocol),
            &quote_v4(OURS4, BACKEND4, 6),
        );
        assert_eq!(unreachable_v4(&p, &[OURS4]), None);
    }

    #[test]
    fn v4_quoted_source_not_ours_is_ignored() {
        let p = icmp_v4(
            unreachable(DestUnreachableHeader::Protocol),
            &quote_v4(Ipv4Addr::new(192, 0, 2, 99), BACKEND4, 47),
        );
        assert_eq!(unreachable_v4(&p, &[OURS4]), None);
        assert_eq!(unreachable_v4(&p, &[]), None);
    }

    #[test]
    fn v4_bad_icmp_checksum_is_ignored() {
        let mut p = icmp_v4(
            unreachable(DestUnreachableHeader::Protocol),
            &quote_v4(OURS4, BACKEND4, 47),
        );
        let last = p.len() - 1;
        p[last] ^= 0xff;
        assert_eq!(unreachable_v4(&p, &[OURS4]), None);
    }

    #[test]
    fn v4_every_truncation_is_rejected_without_panic() {
        let p = icmp_v4(
            unreachable(DestUnreachableHeader::Protocol),
            &quote_v4(OURS4, BACKEND4, 47),
        );
        // The ICMP checksum covers the whole message, so any cut fails it.
        for n in 0..p.len() {
            assert_eq!(unreachable_v4(&p[..n], &[OURS4]), None, "{n} bytes");
        }
    }

    #[test]
    fn v6_unreachable_about_our_gre_names_the_backend() {
        let m = icmp_v6(v6_unreachable(), &quote_v6(OURS6, BACKEND6, 47));
        assert_eq!(unreachable_v6(&m, &[OURS6]), Some(IpAddr::V6(BACKEND6)));
    }

    #[test]
    fn v6_unrecognised_next_header_about_our_gre_names_the_backend() {
        let quote = quote_v6(OURS6, BACKEND6, 47);
        let no_gre = Icmpv6Type::ParameterProblem(icmpv6::ParameterProblemHeader {
            code: icmpv6::ParameterProblemCode::UnrecognizedNextHeader,
            pointer: 6,
        });
        assert_eq!(
            unreachable_v6(&icmp_v6(no_gre, &quote), &[OURS6]),
            Some(IpAddr::V6(BACKEND6))
        );
        let bad_header = Icmpv6Type::ParameterProblem(icmpv6::ParameterProblemHeader {
            code: icmpv6::ParameterProblemCode::ErroneousHeaderField,
            pointer: 6,
        });
        assert_eq!(unreachable_v6(&icmp_v6(bad_header, &quote), &[OURS6]), None);
    }

    #[test]
    fn v6_other_types_are_ignored() {
        let quote = quote_v6(OURS6, BACKEND6, 47);
        let exceeded = Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded);
        assert_eq!(unreachable_v6(&icmp_v6(exceeded, &quote), &[OURS6]), None);
        let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
        assert_eq!(unreachable_v6(&icmp_v6(too_big, &quote), &[OURS6]), None);
    }

    #[test]
    fn v6_quoted_udp_or_foreign_source_is_ignored() {
        let udp = icmp_v6(v6_unreachable(), &quote_v6(OURS6, BACKEND6, 17));
        assert_eq!(unreachable_v6(&udp, &[OURS6]), None);
        let foreign = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 99);
        let other = icmp_v6(v6_unreachable(), &quote_v6(foreign, BACKEND6, 47));
        assert_eq!(unreachable_v6(&other, &[OURS6]), None);
    }

    #[test]
    fn v6_truncation_is_rejected_until_the_quoted_header_is_whole() {
        let m = icmp_v6(v6_unreachable(), &quote_v6(OURS6, BACKEND6, 47));
        for n in 0..=m.len() {
            let expected = (n >= 8 + 40).then_some(IpAddr::V6(BACKEND6));
            assert_eq!(unreachable_v6(&m[..n], &[OURS6]), expected, "{n} bytes");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = unreachable_v4(&data, &[OURS4]);
            let _ = unreachable_v6(&data, &[OURS6]);
        }
    }

    // --- Passive sockets ---

    #[cfg(target_os = "linux")]
    #[test]
    fn passive_reports_a_backend_from_icmp_over_loopback() {
        if netns::skip_unless_root("passive_reports_a_backend_from_icmp_over_loopback") {
            return;
        }
        let mut passive = Passive::open().unwrap();
        let ours = Ipv4Addr::LOCALHOST;
        let backend = Ipv4Addr::new(127, 0, 0, 9);
        let quote = quote_v4(ours, backend, 47);
        let kind = unreachable(DestUnreachableHeader::Protocol);
        let mut message = Icmpv4Header::with_checksum(kind, &quote)
            .to_bytes()
            .to_vec();
        message.extend_from_slice(&quote);
        // Without IP_HDRINCL the kernel adds the outer IPv4 header.
        let sender = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        let to = SocketAddr::from((ours, 0));
        sender.send_to(&message, &to.into()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut found = Vec::new();
        while !found.contains(&IpAddr::V4(backend)) && Instant::now() < deadline {
            found.extend(passive.poll(&[ours], &[]));
        }
        assert!(found.contains(&IpAddr::V4(backend)), "{found:?}");
        assert!(found.iter().all(|a| *a == IpAddr::V4(backend)), "{found:?}");
    }
}
