//! The seed's testbed ("Testing" in the original README) in network
//! namespaces on one machine:
//!
//! ```text
//! clients --> router [GRE encap, ECMP] --> LB nodes (rusty_rail) --> servers [GRE decap]
//!    ^                                                                  |
//!    +------------------------- DSR: straight back --------------------+
//! ```
//!
//! Every host is a namespace with one veth (`v0`) on a bridge that lives in
//! a namespace of its own (network V). The kernel here has no GRE devices,
//! so the router's encapsulation and the servers' decapsulation are
//! `rr-testbed gre-router` and `gre-server` over TUN devices; the clients'
//! and servers' kernel TCP stacks talk through them. Shared by the
//! `rr-testbed run` job and the end-to-end tests (`testbed/e2e.rs`), which
//! include this file with `#[path]`.
#![allow(dead_code)]
#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The addressing plan; the salt pillar (`salt/pillar/testbed.sls`) uses
/// the same. V: the hosts' shared network.
pub const ROUTER_V: Ipv4Addr = Ipv4Addr::new(192, 168, 137, 1);
/// T: addresses inside GRE (the router's and each server's tunnel end).
pub const ROUTER_T: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// S: the service VIP behind the router.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const S_PREFIX: &str = "10.1.0.0/24";
/// A floating address on V, claimed and announced by the LB nodes
/// (`RR_ANNOUNCE`): the VIP when there is no router.
pub const FLOATING_VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 137, 100);
pub const HTTP_PORT: u16 = 80;
/// Plain TCP on the servers: sends the server's name, counts bytes to EOF,
/// sends the count.
pub const SINK_PORT: u16 = 9000;
/// The servers' health endpoint (`GET /healthz`), on their V address.
pub const HEALTH_PORT: u16 = 8080;
/// rusty_rail's API, on each LB node's V address.
pub const API_PORT: u16 = 9180;
/// GRE over a 1500-byte network, as a kernel GRE device would have it.
pub const TUNNEL_MTU: u32 = 1476;
/// Shared by every LB node, so they all build the same Maglev table.
pub const HASH_KEY: &str = "5e1ec7ab1e0ddba11c0ffee15900d1e5";

pub fn client_v(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 137, 11 + i as u8)
}
/// C: the client's source address for the service.
pub fn client_c(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1 + i as u8)
}
pub fn lb_v(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 137, 21 + i as u8)
}
/// Lower MAC for lower-numbered nodes, so lb1 wins an announce contest.
pub fn lb_mac(i: usize) -> String {
    format!("02:72:72:00:02:{:02x}", 1 + i)
}
pub fn server_v(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 137, 31 + j as u8)
}
pub fn server_t(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 0, 2 + j as u8)
}
pub fn server_name(j: usize) -> String {
    format!("server{}", j + 1)
}
pub fn lb_name(i: usize) -> String {
    format!("lb{}", i + 1)
}
pub fn client_name(i: usize) -> String {
    format!("client{}", i + 1)
}

/// How many of each host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub clients: usize,
    pub lbs: usize,
    pub servers: usize,
}

impl Shape {
    /// The seed's iterations: 1/1/1, 1/1/2, 1/2/2, 2/2/2 (clients/LBs/servers).
    pub fn iteration(n: u8) -> Option<Shape> {
        let (clients, lbs, servers) = match n {
            1 => (1, 1, 1),
            2 => (1, 1, 2),
            3 => (1, 2, 2),
            4 => (2, 2, 2),
            _ => return None,
        };
        Some(Shape {
            clients,
            lbs,
            servers,
        })
    }
}

/// How clients reach the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// Through the router's GRE and ECMP to [`VIP`].
    Router,
    /// Plain IP to [`FLOATING_VIP`], which the LB nodes announce
    /// (`RR_WATCH=standby`); no router.
    Announce,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Options {
    pub shape: Shape,
    pub front: Front,
    /// Where `rusty_rail` and `rr-testbed` are.
    pub bin_dir: PathBuf,
    /// Extra `RR_*` settings for every node.
    pub rr_env: Vec<(String, String)>,
    /// Servers beyond `shape.servers` that get a namespace and run, but
    /// are not in `RR_TARGET_IPS` (to be added through the API).
    pub spare_servers: usize,
}

impl Options {
    pub fn new(shape: Shape, bin_dir: PathBuf) -> Options {
        Options {
            shape,
            front: Front::Router,
            bin_dir,
            rr_env: Vec::new(),
            spare_servers: 0,
        }
    }
}

/// A process we started, in a namespace, logging to files in the run
/// directory.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<std::process::ExitStatus>,
}

impl Proc {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
    /// Sends `signal` to this process (only while it has not been reaped,
    /// so the pid is still ours).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet,
            // so it cannot have been reused by another process.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }
    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(2))
    }
    /// Waits until stderr contains `needle`; Err with the log when the
    /// process exits or `timeout` passes first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before {needle:?}: {}",
                    self.name,
                    tail(&self.stderr())
                ));
            }
            if STOP.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not say {needle:?} within {timeout:?}: {}",
                    self.name,
                    tail(&self.stderr())
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The last lines of a log, for error messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Every namespace made and not yet deleted, for [`delete_leftovers`].
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Deletes every namespace this process made and has not deleted: for a
/// panic hook that aborts (so Drop does not run). The processes die with
/// us (PR_SET_PDEATHSIG).
pub fn delete_leftovers() {
    let names = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    for ns in names.iter().rev() {
        let _ = run(Command::new("ip").args(["netns", "delete", ns]));
    }
}

/// Set by a signal handler (Ctrl-C): waits give up, so the caller can
/// tear down.
pub static STOP: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The built topology. Dropping it stops every process it started and
/// deletes every namespace it made, by exact name.
#[derive(Debug)]
pub struct Testbed {
    pub opts: Options,
    /// `rrtb<pid>x<n>`: the prefix of every namespace name.
    pub tag: String,
    /// Logs, state files; removed at teardown unless kept.
    pub dir: PathBuf,
    namespaces: Vec<String>,
    pub procs: Vec<Proc>,
    pub keep_dir: bool,
}

impl Testbed {
    /// Builds the namespaces, links and addresses, and starts every
    /// process; returns once all of them are ready.
    pub fn up(opts: Options) -> Result<Testbed, String> {
        let tag = format!(
            "rrtb{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut bed = Testbed {
            opts,
            tag,
            dir,
            namespaces: Vec::new(),
            procs: Vec::new(),
            // For a failing test: its processes' logs stay in the directory.
            keep_dir: std::env::var_os("RR_TESTBED_KEEP_LOGS").is_some_and(|v| !v.is_empty()),
        };
        bed.build()?;
        bed.start()?;
        Ok(bed)
    }

    pub fn shape(&self) -> Shape {
        self.opts.shape
    }
    /// Every server namespace, spares included.
    pub fn server_count(&self) -> usize {
        self.opts.shape.servers + self.opts.spare_servers
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    fn add_ns(&mut self, host: &str) -> Result<String, String> {
        let name = self.ns(host);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        CREATED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        self.ip(&name, "link set lo up")?;
        Ok(name)
    }

    /// `ip -n NS ARGS` (split on whitespace).
    pub fn ip(&self, ns: &str, args: &str) -> Result<(), String> {
        run(Command::new("ip")
            .args(["-n", ns])
            .args(args.split_whitespace()))
        .map(|_| ())
    }

    /// Sets `/proc/sys/<key>` (slashes) in `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<(), String> {
        let path = Path::new("/proc/sys").join(key);
        in_netns(ns, || std::fs::write(&path, value))
            .and_then(|r| r.map_err(|e| format!("{}: {e}", path.display())))
    }

    /// A host on V: namespace `host`, veth `v0` (with `mac` when given) to
    /// the bridge, `addr/24` on it, up.
    fn attach(
        &mut self,
        host: &str,
        port: &str,
        mac: Option<&str>,
        addr: Ipv4Addr,
    ) -> Result<String, String> {
        let ns = self.add_ns(host)?;
        let sw = self.ns("v");
        let mac = mac.map(|m| format!(" address {m}")).unwrap_or_default();
        self.ip(
            &ns,
            &format!("link add v0{mac} type veth peer name {port} netns {sw}"),
        )?;
        self.ip(&sw, &format!("link set {port} master br0 up"))?;
        // An XDP program's frames reach the peer of a veth only when the
        // peer has NAPI; GRO gives it that.
        let _ = run(
            Command::new("ip").args(["netns", "exec", &sw, "ethtool", "-K", port, "gro", "on"])
        );
        self.ip(&ns, &format!("addr add {addr}/24 dev v0"))?;
        self.ip(&ns, "link set v0 up")?;
        // No IPv6 here: keeps router solicitations and DAD off the wire.
        self.sysctl(&ns, "net/ipv6/conf/all/disable_ipv6", "1")?;
        Ok(ns)
    }

    fn build(&mut self) -> Result<(), String> {
        let shape = self.opts.shape;
        let sw = self.add_ns("v")?;
        self.sysctl(&sw, "net/ipv6/conf/all/disable_ipv6", "1")?;
        self.ip(
            &sw,
            "link add br0 type bridge stp_state 0 mcast_snooping 0 forward_delay 0",
        )?;
        self.ip(&sw, "link set br0 up")?;

        for i in 0..shape.clients {
            let ns = self.attach(&client_name(i), &format!("c{}", i + 1), None, client_v(i))?;
            // Answers come from S unencapsulated, not from where S is routed.
            self.sysctl(&ns, "net/ipv4/conf/all/rp_filter", "0")?;
            self.sysctl(&ns, "net/ipv4/conf/v0/rp_filter", "0")?;
            // Learn the announced VIP from gratuitous ARP.
            self.sysctl(&ns, "net/ipv4/conf/v0/arp_accept", "1")?;
            // Full checksums on the wire, as a real NIC sends them: veth
            // would otherwise pass TCP with only the pseudo-header sum,
            // which XDP hands over as it is and a server behind GRE
            // (plain VIP traffic) rejects.
            run(
                Command::new("ip").args(["netns", "exec", &ns, "ethtool", "-K", "v0", "tx", "off"])
            )?;
            self.ip(&ns, &format!("addr add {}/32 dev v0", client_c(i)))?;
            if self.opts.front == Front::Router {
                self.ip(
                    &ns,
                    &format!("route add {S_PREFIX} via {ROUTER_V} src {}", client_c(i)),
                )?;
            }
        }

        if self.opts.front == Front::Router {
            let ns = self.attach("router", "r", None, ROUTER_V)?;
            self.sysctl(&ns, "net/ipv4/ip_forward", "1")?;
            self.sysctl(&ns, "net/ipv4/conf/all/rp_filter", "0")?;
            self.tun(&ns, ROUTER_T)?;
            self.ip(&ns, &format!("route add {S_PREFIX} dev rrtun0"))?;
            // The way back to the clients, for the ICMP "fragmentation
            // needed" that path MTU discovery through the tunnel relies on.
            for i in 0..shape.clients {
                self.ip(
                    &ns,
                    &format!("route add {}/32 via {}", client_c(i), client_v(i)),
                )?;
            }
        }

        for i in 0..shape.lbs {
            self.attach(
                &lb_name(i),
                &format!("l{}", i + 1),
                Some(&lb_mac(i)),
                lb_v(i),
            )?;
        }

        for j in 0..self.server_count() {
            let ns = self.attach(&server_name(j), &format!("s{}", j + 1), None, server_v(j))?;
            for key in ["all", "default", "v0"] {
                self.sysctl(&ns, &format!("net/ipv4/conf/{key}/rp_filter"), "0")?;
            }
            // The VIP sits on lo: never answer ARP for it, never use it
            // as an ARP source.
            for key in ["all", "v0"] {
                self.sysctl(&ns, &format!("net/ipv4/conf/{key}/arp_ignore"), "1")?;
                self.sysctl(&ns, &format!("net/ipv4/conf/{key}/arp_announce"), "2")?;
            }
            self.ip(&ns, &format!("addr add {VIP}/32 dev lo"))?;
            self.ip(&ns, &format!("addr add {FLOATING_VIP}/32 dev lo"))?;
            self.tun(&ns, server_t(j))?;
            self.sysctl(&ns, "net/ipv4/conf/rrtun0/rp_filter", "0")?;
            // DSR: answers go straight to the clients, not into a tunnel.
            for i in 0..shape.clients {
                self.ip(
                    &ns,
                    &format!("route add {}/32 via {}", client_c(i), client_v(i)),
                )?;
            }
        }
        Ok(())
    }

    /// A persistent TUN device `rrtun0` (not `gre0`: `ip_gre`, where loaded, makes that in every namespace) with `addr/22` (network T), up.
    fn tun(&self, ns: &str, addr: Ipv4Addr) -> Result<(), String> {
        self.ip(ns, "tuntap add dev rrtun0 mode tun")?;
        self.ip(ns, &format!("link set rrtun0 mtu {TUNNEL_MTU}"))?;
        self.ip(ns, &format!("addr add {addr}/22 dev rrtun0"))?;
        self.ip(ns, "link set rrtun0 up")
    }

    pub fn bin(&self, name: &str) -> String {
        self.opts.bin_dir.join(name).to_string_lossy().into_owned()
    }

    /// Starts `argv` in `ns` (stdout and stderr to files in the run
    /// directory, its own process group so a terminal's Ctrl-C reaches only
    /// us and we stop things in order); returns its index in `procs`.
    pub fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<usize, String> {
        let stdout = self.dir.join(format!("{name}.out"));
        let stderr = self.dir.join(format!("{name}.err"));
        let open = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut cmd = Command::new("ip");
        // Only the settings given here: an RR_* variable in the caller's
        // environment must not change the testbed.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RR_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["netns", "exec", ns])
            .args(argv)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?)
            .process_group(0);
        // SAFETY: only prctl(2) runs between fork and exec, which is
        // async-signal-safe. If we die without tearing down (SIGKILL, a
        // crashed test), the kernel kills what we started.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            exited: None,
        });
        Ok(self.procs.len() - 1)
    }

    pub fn proc(&mut self, name: &str) -> &mut Proc {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        &mut self.procs[i]
    }

    fn start(&mut self) -> Result<(), String> {
        let shape = self.opts.shape;
        let tb = self.bin("rr-testbed");
        for j in 0..self.server_count() {
            let ns = self.ns(&server_name(j));
            let name = server_name(j);
            let i = self.spawn(
                &format!("{name}-decap"),
                &ns,
                &[
                    tb.clone(),
                    "gre-server".into(),
                    "--tun".into(),
                    "rrtun0".into(),
                ],
                &[],
            )?;
            self.procs[i].wait_for("ready", Duration::from_secs(5))?;
            let mut argv = vec![
                tb.clone(),
                "http-server".into(),
                "--name".into(),
                name.clone(),
            ];
            for vip in [VIP, FLOATING_VIP] {
                argv.extend(["--listen".into(), format!("{vip}:{HTTP_PORT}")]);
                argv.extend(["--sink".into(), format!("{vip}:{SINK_PORT}")]);
            }
            argv.extend(["--health".into(), format!("{}:{HEALTH_PORT}", server_v(j))]);
            let i = self.spawn(&format!("{name}-http"), &ns, &argv, &[])?;
            self.procs[i].wait_for("ready", Duration::from_secs(5))?;
        }

        for i in 0..shape.lbs {
            self.start_lb(i)?;
        }

        if self.opts.front == Front::Announce {
            // lb1 (the lower MAC) holds the VIP once any contest is over.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !(self.holds(0) && (1..shape.lbs).all(|i| !self.holds(i))) {
                if STOP.load(Ordering::Relaxed) {
                    return Err("interrupted".into());
                }
                if Instant::now() > deadline {
                    return Err(format!("{} never held {FLOATING_VIP} alone", lb_name(0)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        if self.opts.front == Front::Router {
            let ns = self.ns("router");
            let mut argv = vec![
                tb.clone(),
                "gre-router".into(),
                "--tun".into(),
                "rrtun0".into(),
                "--source".into(),
                ROUTER_V.to_string(),
                "--check-port".into(),
                API_PORT.to_string(),
                // Two missed checks take a node out: not too eager on a
                // busy two-core machine running debug builds.
                "--check-interval-ms".into(),
                "250".into(),
            ];
            for i in 0..shape.lbs {
                argv.extend(["--lb".into(), lb_v(i).to_string()]);
            }
            let i = self.spawn("router", &ns, &argv, &[])?;
            self.procs[i].wait_for("ready", Duration::from_secs(5))?;
            // Every node passes its first liveness checks before traffic.
            for n in 0..shape.lbs {
                self.procs[i].wait_for(&format!("lb {} up", lb_v(n)), Duration::from_secs(5))?;
            }
        }
        Ok(())
    }

    /// Whether node `i` has the floating VIP on its device.
    pub fn holds(&self, i: usize) -> bool {
        let ns = self.ns(&lb_name(i));
        run(Command::new("ip").args(["-n", &ns, "-o", "addr", "show", "dev", "v0"])).is_ok_and(
            |out| String::from_utf8_lossy(&out.stdout).contains(&format!("{FLOATING_VIP}/")),
        )
    }

    /// The `RR_*` environment of node `i`.
    pub fn lb_env(&self, i: usize) -> Vec<(String, String)> {
        let targets: Vec<String> = (0..self.opts.shape.servers)
            .map(|j| server_v(j).to_string())
            .collect();
        let mut env: Vec<(String, String)> = vec![
            ("RR_DEVICE".into(), "v0".into()),
            ("RR_TARGET_IPS".into(), targets.join(";")),
            ("RR_HASH_KEY".into(), HASH_KEY.into()),
            ("RR_API".into(), format!("{}:{API_PORT}", lb_v(i))),
            ("RR_HEALTH_PORT".into(), HEALTH_PORT.to_string()),
            ("RR_HEALTH_PATH".into(), "/healthz".into()),
            ("RR_HEALTH_INTERVAL".into(), "0.2".into()),
            ("RR_STATS_INTERVAL".into(), "0".into()),
            (
                "RR_STATE_DIR".into(),
                self.dir.join("state").to_string_lossy().into_owned(),
            ),
        ];
        if self.opts.front == Front::Announce {
            env.push(("RR_ANNOUNCE".into(), format!("{FLOATING_VIP}/24")));
            env.push(("RR_WATCH".into(), "standby".into()));
            env.push(("RR_ANNOUNCE_INTERVAL".into(), "0.2".into()));
        }
        for (k, v) in &self.opts.rr_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Starts rusty_rail on node `i` and waits until it forwards.
    pub fn start_lb(&mut self, i: usize) -> Result<(), String> {
        let ns = self.ns(&lb_name(i));
        let env = self.lb_env(i);
        let argv = vec![self.bin("rusty_rail")];
        let idx = self.spawn(&lb_name(i), &ns, &argv, &env)?;
        self.procs[idx].wait_for("forwarding on v0", Duration::from_secs(20))
    }

    /// One HTTP/1.0 request to node `i`'s API, from inside its namespace:
    /// (status, body).
    pub fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let addr = SocketAddr::V4(SocketAddrV4::new(lb_v(i), API_PORT));
        let ns = self.ns(&lb_name(i));
        in_netns(&ns, || http(addr, method, path, body))?
    }

    /// The sum of every sample of `metric` in node `i`'s /metrics.
    pub fn metric(&self, i: usize, metric: &str) -> Result<f64, String> {
        let (status, text) = self.api(i, "GET", "/metrics", "")?;
        if status != 200 {
            return Err(format!("{}: /metrics answered {status}", lb_name(i)));
        }
        Ok(sum_metric(&text, metric))
    }

    /// Stops everything and deletes the namespaces.
    pub fn down(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.stop(Duration::from_secs(3));
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "delete", &ns])) {
                eprintln!("testbed: {e}");
            }
            CREATED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|n| *n != ns);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.down();
    }
}

/// The sum of the samples of `metric` (any labels) in Prometheus text.
pub fn sum_metric(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let base = name.split('{').next()?;
            (base == metric).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Runs a command; Err with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `f` on a fresh thread inside network namespace `ns`. Sockets made
/// in `f` stay in `ns` whichever thread uses them later.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns(2) on an open namespace file we own, for this
            // thread only; the result is checked.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A minimal HTTP/1.0 client: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    let mut req = String::new();
    let _ = write!(
        req,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: bad response {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
