//! End to end: the seed's testbed in namespaces (`tb/topology.rs`), with
//! the clients' and servers' kernel TCP stacks talking through the
//! router's GRE and ECMP, rusty_rail on the LB nodes, and the servers'
//! decapsulation, answers going straight back (DSR). Needs root; skipped
//! with a reason otherwise (never in CI).

mod netns;
#[path = "tb/topology.rs"]
mod topology;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use topology::*;

/// The tests share two cores and a lot of processes: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_rusty_rail"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    assert_eq!(
        PathBuf::from(env!("CARGO_BIN_EXE_rr-testbed")).parent(),
        Some(dir.as_path())
    );
    dir
}

/// The testbed for `test`, built under the lock; None (with the reason
/// printed) when not root, which CI never is.
fn bed(test: &str, opts: impl FnOnce(&mut Options)) -> Option<(MutexGuard<'static, ()>, Testbed)> {
    if netns::skip_unless_root(test) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = Options::new(Shape::iteration(4).expect("shape"), bin_dir());
    opts(&mut o);
    let bed = Testbed::up(o).unwrap_or_else(|e| panic!("{test}: testbed: {e}"));
    Some((serial, bed))
}

/// `rr-testbed http-load` from client `i` to `target`: its JSON result.
fn load(bed: &Testbed, i: usize, target: SocketAddr, requests: u32) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.ns(&client_name(i))])
        .arg(bed.bin("rr-testbed"))
        .args(["http-load", "--target", &target.to_string()])
        .args(["--requests", &requests.to_string(), "--concurrency", "8"])
        .output()
        .expect("http-load");
    assert!(out.status.success(), "http-load: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("http-load output: {e}: {out:?}"))
}

fn served(result: &Value, server: usize) -> u64 {
    result["by_server"][server_name(server)]
        .as_u64()
        .unwrap_or(0)
}

fn errors(result: &Value) -> u64 {
    sum(&result["errors"])
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(VIP, port))
}

/// A long-lived connection to the servers' sink: the server's name
/// arrives first; at the end, the byte count it read.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    server: String,
    sent: u64,
}

impl Conn {
    fn open(bed: &Testbed, client: usize, to: SocketAddr) -> Conn {
        let stream = in_netns(&bed.ns(&client_name(client)), || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        // A stalled connection fails the test instead of hanging it. TCP
        // backs off exponentially through an outage of a second or so (a
        // node dying), and its next retransmission may come seconds after
        // the path is back: allow for a few doublings.
        for set in [TcpStream::set_read_timeout, TcpStream::set_write_timeout] {
            set(&stream, Some(Duration::from_secs(30))).expect("timeout");
        }
        stream.set_nodelay(true).expect("nodelay");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut server = String::new();
        reader.read_line(&mut server).expect("server name");
        Conn {
            stream,
            reader,
            server: server.trim().to_string(),
            sent: 0,
        }
    }

    fn send(&mut self, bytes: usize) -> std::io::Result<()> {
        let chunk = vec![0x5a; bytes];
        self.stream.write_all(&chunk)?;
        self.sent += bytes as u64;
        Ok(())
    }

    /// Ends the upload; Ok(count) when the server read every byte.
    fn finish(mut self) -> Result<u64, String> {
        self.stream
            .shutdown(Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_to_string(&mut line)
            .map_err(|e| format!("{}: {e}", self.server))?;
        let count: u64 = line
            .trim()
            .parse()
            .map_err(|_| format!("{}: answered {line:?}", self.server))?;
        if count == self.sent {
            Ok(count)
        } else {
            Err(format!("{}: read {count} of {}", self.server, self.sent))
        }
    }
}

/// `n` connections from client 0, each with a first few bytes through.
fn open_many(bed: &Testbed, n: usize, to: SocketAddr) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut c = Conn::open(bed, 0, to);
            c.send(1000).expect("first bytes");
            c
        })
        .collect()
}

/// Uploads on every connection at once, 8 KiB every 20 ms for
/// `duration`, calling `during` once a third of the way in; the results
/// of `finish`.
fn transfer(
    conns: Vec<Conn>,
    duration: Duration,
    during: impl FnOnce(),
) -> Vec<(String, Result<u64, String>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    let end = Instant::now() + duration;
                    while Instant::now() < end {
                        if let Err(e) = c.send(8 * 1024) {
                            return (c.server.clone(), Err(format!("{}: {e}", c.server)));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (c.server.clone(), c.finish())
                })
            })
            .collect();
        std::thread::sleep(duration / 3);
        during();
        handles
            .into_iter()
            .map(|h| h.join().expect("transfer thread"))
            .collect()
    })
}

/// The router never took a node out: a flow that moved between nodes
/// right after a backend change could change servers, which is not what
/// these tests are about.
fn assert_no_node_flapped(bed: &mut Testbed) {
    let log = bed.proc("router").stderr();
    assert!(!log.contains(" down"), "the router took a node out: {log}");
}

/// On a failure: the TCP sockets of the client and the servers, and the
/// client's neighbours, for the log.
fn dump_tcp(bed: &Testbed) {
    let mut hosts = vec![client_name(0)];
    hosts.extend((0..bed.server_count()).map(server_name));
    for host in hosts {
        let ns = bed.ns(&host);
        if let Ok(out) = Command::new("ip")
            .args(["netns", "exec", &ns, "ss", "-tin"])
            .output()
        {
            eprintln!("{host}: ss -tin\n{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-n", &bed.ns(&client_name(0)), "neigh"])
        .output()
    {
        eprintln!(
            "{}: neighbours\n{}",
            client_name(0),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backend_health(bed: &Testbed, lb: usize, addr: Ipv4Addr) -> String {
    let (status, body) = bed.api(lb, "GET", "/v1/vips", "").expect("api");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|vip| vip["backends"].as_array().into_iter().flatten())
        .find(|b| b["addr"] == addr.to_string())
        .map(|b| b["health"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| "absent".into())
}

#[test]
fn tcp_through_the_vip_succeeds_on_every_iteration() {
    for n in 1..=4 {
        let test = format!("tcp_through_the_vip_succeeds_on_every_iteration ({n})");
        let Some((_serial, bed)) = bed(&test, |o| o.shape = Shape::iteration(n).expect("shape"))
        else {
            return;
        };
        let shape = bed.shape();
        for i in 0..shape.clients {
            let r = load(&bed, i, vip(HTTP_PORT), 200);
            assert_eq!(r["ok"], 200, "iteration {n}, {}: {r}", client_name(i));
            assert_eq!(errors(&r), 0, "iteration {n}: {r}");
            for j in 0..shape.servers {
                assert!(
                    served(&r, j) > 0,
                    "iteration {n}: {} got nothing: {r}",
                    server_name(j)
                );
            }
        }
        for lb in 0..shape.lbs {
            let flows = bed
                .metric(lb, "rr_flow_table_misses_total")
                .expect("metrics");
            assert!(flows > 0.0, "iteration {n}: {} saw no flow", lb_name(lb));
        }
        // The GRE tools' own counters: nothing dropped or malformed, DF
        // on every outer header, a SYN per connection.
        let mut bed = bed;
        let router = final_counters(bed.proc("router"));
        assert_eq!(sum(&router["drops"]), 0, "iteration {n}: router {router}");
        let syns: u64 = (0..shape.lbs)
            .map(|lb| {
                router["lbs"][lb_v(lb).to_string()]["syns"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        assert!(
            syns >= 200 * shape.clients as u64,
            "iteration {n}: router {router}"
        );
        for j in 0..shape.servers {
            let decap = final_counters(bed.proc(&format!("{}-decap", server_name(j))));
            assert!(decap["decapsulated"].as_u64() > Some(0), "{decap}");
            assert_eq!(decap["outer_without_df"], 0, "{decap}");
            assert_eq!(sum(&decap["malformed"]), 0, "{decap}");
            assert_eq!(decap["read_failed"], 0, "{decap}");
            assert_eq!(decap["write_failed"], 0, "{decap}");
        }
    }
}

/// The sum of a JSON object's numbers.
fn sum(v: &Value) -> u64 {
    v.as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(u64::MAX)
}

/// Stops a GRE tool and returns its last JSON line of counters.
fn final_counters(p: &mut Proc) -> Value {
    let status = p.stop(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}: {status:?}",
        p.name
    );
    let out = p.stdout();
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {out:?}", p.name))
}

#[test]
fn a_transfer_survives_killing_the_lb_node_it_went_through() {
    let Some((_serial, mut bed)) = bed(
        "a_transfer_survives_killing_the_lb_node_it_went_through",
        |o| o.shape = Shape::iteration(3).expect("shape"),
    ) else {
        return;
    };
    let conns = open_many(&bed, 16, vip(SINK_PORT));
    let before = [0, 1].map(|lb| {
        bed.metric(lb, "rr_flow_table_misses_total")
            .expect("metrics")
    });
    // With 16 flows over two nodes, both carry some (all on one: 2^-15).
    assert!(
        before[0] > 0.0 && before[1] > 0.0,
        "flows per node: {before:?}"
    );
    let bed_ref = &mut bed;
    let results = transfer(conns, Duration::from_secs(3), || {
        bed_ref.proc(&lb_name(0)).signal(libc::SIGKILL);
    });
    if results.iter().any(|(_, r)| r.is_err()) {
        dump_tcp(&bed);
    }
    for (server, r) in &results {
        assert!(r.is_ok(), "a connection to {server} broke: {r:?}");
    }
    assert!(
        bed.proc("router")
            .stderr()
            .contains(&format!("lb {} down", lb_v(0))),
        "the router never took lb1 out: {}",
        bed.proc("router").stderr()
    );
    let after = bed
        .metric(1, "rr_flow_table_misses_total")
        .expect("metrics");
    assert!(
        after > before[1],
        "lb2 took over no flow ({} -> {after})",
        before[1]
    );
}

#[test]
fn removing_a_server_breaks_only_the_connections_on_it() {
    let Some((_serial, mut bed)) =
        bed("removing_a_server_breaks_only_the_connections_on_it", |o| {
            o.shape = Shape {
                clients: 1,
                lbs: 2,
                servers: 3,
            }
        })
    else {
        return;
    };
    let mut conns = open_many(&bed, 30, vip(SINK_PORT));
    let gone = server_name(1);
    assert!(
        conns.iter().any(|c| c.server == gone),
        "no connection on {gone}"
    );
    for lb in 0..2 {
        let path = format!("/v1/vips/default/backends/{}", server_v(1));
        let (status, body) = bed.api(lb, "DELETE", &path, "").expect("api");
        assert_eq!(status, 200, "DELETE on {}: {body}", lb_name(lb));
    }
    for c in &mut conns {
        // A broken connection may fail here already; finish tells.
        let _ = c.send(10_000);
    }
    for c in conns {
        let server = c.server.clone();
        let r = c.finish();
        if server == gone {
            assert!(r.is_err(), "a connection on the removed {server} survived");
        } else {
            assert!(r.is_ok(), "a connection on {server} broke: {r:?}");
        }
    }
    assert_no_node_flapped(&mut bed);
}

#[test]
fn adding_a_server_moves_no_established_connection() {
    let Some((_serial, mut bed)) = bed("adding_a_server_moves_no_established_connection", |o| {
        o.shape = Shape {
            clients: 1,
            lbs: 2,
            servers: 2,
        };
        o.spare_servers = 1;
    }) else {
        return;
    };
    let conns = open_many(&bed, 30, vip(SINK_PORT));
    for lb in 0..2 {
        let path = format!("/v1/vips/default/backends/{}", server_v(2));
        let (status, body) = bed.api(lb, "PUT", &path, "{}").expect("api");
        assert_eq!(status, 201, "PUT on {}: {body}", lb_name(lb));
    }
    let results = transfer(conns, Duration::from_millis(600), || {});
    for (server, r) in &results {
        assert!(r.is_ok(), "a connection on {server} moved or broke: {r:?}");
    }
    assert_no_node_flapped(&mut bed);
    // The new server does take new connections.
    let r = load(&bed, 0, vip(HTTP_PORT), 200);
    assert_eq!(r["ok"], 200, "{r}");
    assert!(served(&r, 2) > 0, "the added server got nothing: {r}");
}

#[test]
fn a_server_failing_health_checks_gets_no_new_connections() {
    let Some((_serial, mut bed)) = bed(
        "a_server_failing_health_checks_gets_no_new_connections",
        |o| {
            o.shape = Shape {
                clients: 1,
                lbs: 2,
                servers: 3,
            }
        },
    ) else {
        return;
    };
    let r = load(&bed, 0, vip(HTTP_PORT), 150);
    assert!(served(&r, 1) > 0, "server2 got nothing while healthy: {r}");

    bed.proc(&format!("{}-http", server_name(1)))
        .signal(libc::SIGUSR1);
    for lb in 0..2 {
        wait_until("server2 to be unhealthy", Duration::from_secs(5), || {
            backend_health(&bed, lb, server_v(1)) == "unhealthy"
        });
    }
    let r = load(&bed, 0, vip(HTTP_PORT), 300);
    assert_eq!(r["ok"], 300, "{r}");
    assert_eq!(
        served(&r, 1),
        0,
        "the unhealthy server2 got connections: {r}"
    );
    assert!(served(&r, 0) > 0 && served(&r, 2) > 0, "{r}");

    bed.proc(&format!("{}-http", server_name(1)))
        .signal(libc::SIGUSR2);
    for lb in 0..2 {
        wait_until(
            "server2 to be healthy again",
            Duration::from_secs(5),
            || backend_health(&bed, lb, server_v(1)) == "healthy",
        );
    }
    let r = load(&bed, 0, vip(HTTP_PORT), 150);
    assert!(
        served(&r, 1) > 0,
        "server2 got nothing once healthy again: {r}"
    );
}

fn floating(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(FLOATING_VIP, port))
}

/// Two nodes announcing the floating VIP, lb1 holding it and serving.
fn announced(test: &str) -> Option<(MutexGuard<'static, ()>, Testbed)> {
    let (serial, bed) = bed(test, |o| {
        o.shape = Shape {
            clients: 1,
            lbs: 2,
            servers: 2,
        };
        o.front = Front::Announce;
    })?;
    // Testbed::up has waited for lb1 to hold it alone.
    assert!(
        bed.holds(0) && !bed.holds(1),
        "lb1 does not hold the VIP alone"
    );
    let r = load(&bed, 0, floating(HTTP_PORT), 100);
    assert_eq!(r["ok"], 100, "{r}");
    Some((serial, bed))
}

#[test]
fn an_announced_vip_survives_the_death_of_the_active_node() {
    let Some((_serial, mut bed)) =
        announced("an_announced_vip_survives_the_death_of_the_active_node")
    else {
        return;
    };
    let conns = open_many(&bed, 8, floating(SINK_PORT));
    let lb1 = bed.ns(&lb_name(0));
    let bed_ref = &mut bed;
    let results = transfer(conns, Duration::from_secs(4), || {
        // The node dies: its process, and its link with it.
        bed_ref.proc(&lb_name(0)).signal(libc::SIGKILL);
        let down = Command::new("ip")
            .args(["-n", &lb1, "link", "set", "v0", "down"])
            .status()
            .expect("ip");
        assert!(down.success());
    });
    if results.iter().any(|(_, r)| r.is_err()) {
        dump_tcp(&bed);
    }
    for (server, r) in &results {
        assert!(r.is_ok(), "a connection to {server} broke: {r:?}");
    }
    assert!(bed.holds(1), "lb2 did not take the VIP over");
    let r = load(&bed, 0, floating(HTTP_PORT), 100);
    assert_eq!(r["ok"], 100, "after the takeover: {r}");
}

/// A crashed process on a live host leaves the VIP on the device, and
/// that kernel resets the connections reaching it until the standby takes
/// over (README, "HA without router configuration"); new connections
/// work again from then on.
#[test]
fn an_announced_vip_serves_new_connections_after_the_active_process_dies() {
    let Some((_serial, mut bed)) =
        announced("an_announced_vip_serves_new_connections_after_the_active_process_dies")
    else {
        return;
    };
    bed.proc(&lb_name(0)).signal(libc::SIGKILL);
    wait_until("lb2 to take the VIP over", Duration::from_secs(5), || {
        bed.holds(1)
    });
    let client = bed.ns(&client_name(0));
    wait_until(
        "the client to follow lb2's announcement",
        Duration::from_secs(2),
        || {
            let out = Command::new("ip")
                .args(["-n", &client, "neigh", "show", &FLOATING_VIP.to_string()])
                .output()
                .expect("ip");
            String::from_utf8_lossy(&out.stdout).contains(&lb_mac(1))
        },
    );
    let r = load(&bed, 0, floating(HTTP_PORT), 100);
    assert_eq!(r["ok"], 100, "after the takeover: {r}");
}
