//! A harness for privileged integration tests in network namespaces.
//!
//! Include it from a test crate with
//!
//! ```ignore
//! #[path = "netns/mod.rs"]
//! mod netns;
//! ```
//!
//! and start every test with `if netns::skip_unless_root("name") { return; }`.
//!
//! What it gives:
//!
//! - [`Netns`]: a network namespace with a unique name (`rr-<tag>-<pid>-<n>`),
//!   made with `ip netns add` and removed with `ip netns delete <that name>`
//!   when dropped, also while a test unwinds from a panic. Commands run in it
//!   ([`Netns::ip`], [`Netns::exec`], [`Netns::spawn`]), and so does Rust code
//!   ([`Netns::run`], on a thread that has entered it with `setns`).
//! - [`veth`]: a veth pair between two namespaces.
//! - [`Lan`]: a star, a "switch" namespace holding a bridge, and one veth port
//!   per attached host namespace.
//! - [`RawPort`]: raw Ethernet frames in and out of one interface in a
//!   namespace (`AF_PACKET` through `pnet_datalink`).
//! - [`ChildGuard`]: kills a spawned process (by its own pid) when dropped and
//!   collects its stderr.
//!
//! Every namespace and every link the harness names itself carries the
//! process id and a per-process counter, so parallel tests and concurrent test
//! binaries never collide. Links live inside those namespaces only (they are
//! created there directly, never in the caller's namespace), so deleting the
//! namespaces deletes the links; nothing is left in the root namespace.
//!
//! The harness uses no `unsafe`: `setns` is nix's safe wrapper.

#![allow(dead_code)]

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};
use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest interface name Linux accepts (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// True when the effective uid is 0, read from the `Uid:` line of
/// `/proc/self/status` (real, effective, saved, filesystem).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Prints `skipped: <test>: needs root (network namespaces, AF_XDP)` and
/// returns true when not root; returns false (and prints nothing) as root.
/// Under CI (`CI=true`) these tests must run, so not being root fails.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI runs as root and must run this test"
    );
    eprintln!("skipped: {test}: needs root (network namespaces, AF_XDP)");
    true
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh interface name `<prefix><pid>-<n>`, unique in this process and
/// across processes; panics if it would exceed [`IFNAME_MAX`] (keep `prefix`
/// to two or three characters).
pub fn unique_ifname(prefix: &str) -> String {
    let name = format!("{prefix}{}-{}", std::process::id(), next_id());
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name:?} is longer than {IFNAME_MAX}"
    );
    name
}

/// Whether `prog` is an executable file on `$PATH`.
pub fn have_program(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(prog))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Runs `cmd` to completion; panics with its stderr unless it exits 0.
fn check(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// The names `ip netns list` shows now.
pub fn netns_list() -> Vec<String> {
    let out = check(Command::new("ip").args(["netns", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A network namespace, deleted (by its exact name) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `rr-<tag>-<pid>-<n>` with `ip netns add` and brings `lo` up in
    /// it. `tag` is free text for people reading `ip netns list`: letters,
    /// digits, `-` and `_`.
    pub fn new(tag: &str) -> Netns {
        assert!(
            !tag.is_empty()
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "bad namespace tag {tag:?}"
        );
        let name = format!("rr-{tag}-{}-{}", std::process::id(), next_id());
        check(Command::new("ip").args(["netns", "add", &name]));
        // From here on Drop deletes it, even if what follows panics.
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the file `setns` and `ip` use.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <name> <args>`; `args` is split on whitespace (no quoting).
    /// Panics with `ip`'s stderr on failure.
    pub fn ip(&self, args: &str) {
        check(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
        );
    }

    /// Runs `argv` in the namespace (`ip netns exec <name> argv...`) and waits
    /// for it; stdout and stderr are captured, the exit status is not checked.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?} in {}: {e}", self.name))
    }

    /// `ip netns exec NAME argv...` with extra environment; waits.
    pub fn exec_env(&self, argv: &[&str], envs: &[(&str, &str)]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {}: {e}", self.name))
    }

    /// Starts `argv` in the namespace in the background, with `envs` added to
    /// the environment, stdin and stdout null and stderr piped. `ip netns
    /// exec` execs `argv` in place, so the child's pid is the program's own:
    /// wrap it in a [`ChildGuard`] so a failing test does not leave it running
    /// (and read stderr, or keep it quiet: an undrained pipe fills up).
    pub fn spawn(&self, argv: &[&str], envs: &[(&str, &str)]) -> Child {
        self.command(argv)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?} in {}: {e}", self.name))
    }

    fn command(&self, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Sets the sysctl `key` (dotted, `net.ipv4.ip_forward`, or a path below
    /// `/proc/sys` with slashes, for keys whose parts contain dots) to
    /// `value` in this namespace, by writing `/proc/sys/...` from a thread
    /// inside it; needs no `sysctl` program.
    pub fn sysctl(&self, key: &str, value: &str) {
        let rel = if key.contains('/') {
            key.trim_start_matches('/').to_string()
        } else {
            key.replace('.', "/")
        };
        let path = Path::new("/proc/sys").join(rel);
        let value = value.to_string();
        self.run(move || {
            std::fs::write(&path, value.as_bytes())
                .unwrap_or_else(|e| panic!("cannot set {}: {e}", path.display()))
        });
    }

    /// Runs `f` on a fresh thread that has entered this namespace
    /// (`setns(/run/netns/<name>, CLONE_NEWNET)`) and returns its result; a
    /// panic in `f` is resumed on the caller's thread. Sockets created in `f`
    /// belong to this namespace for life, whichever thread uses them later.
    /// Only the network namespace is entered: the filesystem (so `/sys`) is
    /// still the caller's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                drop(file);
                f()
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here (a second panic while unwinding aborts): report.
        match Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "netns: cannot delete {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("netns: cannot run ip netns delete {}: {e}", self.name),
        }
    }
}

/// Formats a MAC as `ip` wants it (`02:00:00:00:00:01`).
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes a veth pair with end `a_name` in `a` and end `b_name` in `b`, and
/// brings both ends up (no addresses). The pair is created inside the
/// namespaces directly, so the names only need to be free there; the link
/// goes away with either namespace.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    for n in [a_name, b_name] {
        assert!(n.len() <= IFNAME_MAX, "interface name {n:?} is too long");
    }
    a.ip(&format!(
        "link add {a_name} type veth peer name {b_name} netns {}",
        b.name()
    ));
    a.ip(&format!("link set {a_name} up"));
    b.ip(&format!("link set {b_name} up"));
}

/// Adds `addrs` to `ifname` in `ns`; IPv6 ones (with a `:`) get `nodad`, so
/// they are usable at once.
pub fn add_addrs(ns: &Netns, ifname: &str, addrs: &[&str]) {
    for a in addrs {
        let nodad = if a.contains(':') { " nodad" } else { "" };
        ns.ip(&format!("addr add {a} dev {ifname}{nodad}"));
    }
}

/// A star network: a switch namespace holding a bridge, one veth port per
/// attached host. The switch has IPv6 off, so its ports send nothing of their
/// own. Dropping the `Lan` deletes the switch namespace and with it every
/// port and the host ends of the veths; the hosts themselves belong to the
/// caller.
#[derive(Debug)]
pub struct Lan {
    pub switch: Netns,
    bridge: String,
    ports: Vec<String>,
}

impl Lan {
    /// Creates the switch namespace (`rr-<tag>-sw-<pid>-<n>`) and its bridge
    /// (STP off, multicast snooping off, up).
    pub fn new(tag: &str) -> Lan {
        let switch = Netns::new(&format!("{tag}-sw"));
        switch.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        switch.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        let bridge = unique_ifname("rb");
        switch.ip(&format!(
            "link add {bridge} type bridge stp_state 0 mcast_snooping 0"
        ));
        switch.ip(&format!("link set {bridge} up"));
        Lan {
            switch,
            bridge,
            ports: Vec::new(),
        }
    }

    /// Adds `host` to the LAN through a veth whose host end is named `ifname`
    /// inside `host`, with MAC `mac` and `addrs` ("10.0.0.2/24",
    /// "fd00::2/64"; IPv6 with `nodad`), brought up. The switch end gets a
    /// unique name, joins the bridge, and has GRO turned on (`ethtool -K
    /// <port> gro on`, skipped when there is no `ethtool`): a frame an XDP
    /// program redirects into a veth is only received by the peer when the
    /// peer has NAPI, which GRO gives it. Returns the switch end's name.
    pub fn attach(&mut self, host: &Netns, ifname: &str, mac: [u8; 6], addrs: &[&str]) -> String {
        assert!(
            ifname.len() <= IFNAME_MAX,
            "interface name {ifname:?} is too long"
        );
        let port = unique_ifname("rp");
        host.ip(&format!(
            "link add {ifname} address {} type veth peer name {port} netns {}",
            mac_string(mac),
            self.switch.name()
        ));
        self.ports.push(port.clone());
        self.switch
            .ip(&format!("link set {port} master {} up", self.bridge));
        if have_program("ethtool") {
            let out = self.switch.exec(&["ethtool", "-K", &port, "gro", "on"]);
            assert!(
                out.status.success(),
                "ethtool -K {port} gro on: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        add_addrs(host, ifname, addrs);
        host.ip(&format!("link set {ifname} up"));
        port
    }

    /// The bridge's name (inside the switch namespace).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The switch ends of the attached veths, in attach order.
    pub fn ports(&self) -> &[String] {
        &self.ports
    }
}

/// How long one blocking read of a [`RawPort`] waits before the receive loop
/// looks at its deadline again.
pub const RAW_READ_TIMEOUT: Duration = Duration::from_millis(50);

/// Raw Ethernet access to one interface inside a namespace: an `AF_PACKET`
/// socket (`pnet_datalink` channel, layer 2, all protocols, promiscuous)
/// created on a thread inside the namespace and bound to the interface.
///
/// Outgoing frames: Linux never hands a packet socket the frames that socket
/// sent itself, but it does hand it frames that anything else sends out of
/// the interface (the kernel's ARP, ICMP errors, another process). `pnet`
/// drops the `sll_pkttype` that would tell them apart, so the receiving side
/// treats every frame whose Ethernet source is this interface's own MAC as
/// outgoing and ignores it. A test that forges frames with that source MAC
/// from the peer would not see them here.
pub struct RawPort {
    ifname: String,
    mac: [u8; 6],
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
}

impl RawPort {
    /// Opens `ifname` in `ns`; panics when there is no such interface.
    pub fn open(ns: &Netns, ifname: &str) -> RawPort {
        let (mac, tx, rx) = ns.run(|| {
            let iface = pnet_datalink::interfaces()
                .into_iter()
                .find(|i| i.name == ifname)
                .unwrap_or_else(|| panic!("no interface {ifname} in this namespace"));
            let config = pnet_datalink::Config {
                read_buffer_size: 1 << 16,
                write_buffer_size: 1 << 16,
                read_timeout: Some(RAW_READ_TIMEOUT),
                write_timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            };
            let mac = iface.mac.map(|m| m.octets()).unwrap_or_default();
            match pnet_datalink::channel(&iface, config) {
                Ok(Channel::Ethernet(tx, rx)) => (mac, tx, rx),
                Ok(_) => panic!("{ifname}: not an Ethernet channel"),
                Err(e) => panic!("{ifname}: cannot open a packet socket: {e}"),
            }
        });
        RawPort {
            ifname: ifname.to_string(),
            mac,
            tx,
            rx,
        }
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface's MAC, read when the port was opened.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one whole Ethernet frame as is (no padding is added; veth does
    /// not need any). Panics on error.
    pub fn send(&mut self, frame: &[u8]) {
        match self.tx.send_to(frame, None) {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("{}: send: {e}", self.ifname),
            None => panic!("{}: frame of {} bytes too big", self.ifname, frame.len()),
        }
    }

    /// Receives until `want` frames passing `filter` have arrived, or until
    /// `timeout` has passed since the start or the last such frame, and
    /// returns those frames in arrival order. Frames failing `filter` (ARP,
    /// IPv6 neighbour discovery, ...) and outgoing frames (see the type's
    /// doc) are read and discarded, so one call must select everything the
    /// test wants to see in that window. To check that nothing arrives, ask
    /// for one frame and expect none.
    pub fn recv_matching(
        &mut self,
        want: usize,
        timeout: Duration,
        filter: impl Fn(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut deadline = Instant::now() + timeout;
        while got.len() < want && Instant::now() < deadline {
            if let Some(frame) = self.next_incoming(&filter) {
                got.push(frame);
                deadline = Instant::now() + timeout;
            }
        }
        got
    }

    /// The next frame that is not our own outgoing one and passes
    /// `filter`; None when a read times out or the frame does not pass.
    fn next_incoming(&mut self, filter: &impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        match self.rx.next() {
            Ok(frame) => {
                let outgoing = frame.len() >= 12 && frame[6..12] == self.mac;
                (!outgoing && filter(frame)).then(|| frame.to_vec())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(e) => panic!("{}: receive: {e}", self.ifname),
        }
    }

    /// Every frame that passes `filter` during `duration` (not counting
    /// our own outgoing ones), however few.
    pub fn capture(&mut self, duration: Duration, filter: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        self.capture_timed(duration, filter)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// `capture`, with the time each frame was read.
    pub fn capture_timed(
        &mut self,
        duration: Duration,
        filter: impl Fn(&[u8]) -> bool,
    ) -> Vec<(Instant, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if let Some(frame) = self.next_incoming(&filter) {
                got.push((Instant::now(), frame));
            }
        }
        got
    }
}

/// Owns a spawned child: drains its stderr on a thread (so it can never
/// block on a full pipe) and, if the child is still running when the guard
/// is dropped, kills it by its own pid (SIGKILL) and reaps it.
pub struct ChildGuard {
    child: Option<Child>,
    stderr: Option<JoinHandle<String>>,
    /// What the child has written to stderr so far, line by line.
    live: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ChildGuard {
    pub fn new(mut child: Child) -> ChildGuard {
        let live = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&live);
        let stderr = child.stderr.take().map(|pipe| {
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut all = String::new();
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    all.push_str(&line);
                    all.push('\n');
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
                all
            })
        });
        ChildGuard {
            child: Some(child),
            stderr,
            live,
        }
    }

    /// Everything the child has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.live.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for a stderr line containing `needle`; returns
    /// that line, or None (also when the child exits first).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr_so_far().lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if Instant::now() >= deadline || self.try_wait().is_some() {
                // One last look: the line may have come with the exit.
                std::thread::sleep(Duration::from_millis(50));
                return self
                    .stderr_so_far()
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_string);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("try_wait")
    }

    /// Sends `signal` to the child's pid (unless it already exited), waits
    /// up to `grace` for it to exit, then SIGKILLs it; returns its exit
    /// status and everything it wrote to stderr.
    pub fn stop(mut self, signal: Signal, grace: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("child");
        if child.try_wait().expect("try_wait").is_none() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = kill(pid, signal);
            let deadline = Instant::now() + grace;
            while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
