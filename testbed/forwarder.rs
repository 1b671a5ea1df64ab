//! The forwarder for real: `rusty_rail` runs in a network namespace on one
//! end of a veth pair, on a bridge with a traffic source and three backend
//! namespaces. Frames are built and checked with etherparse, an independent
//! packet library; the expected backend comes from the pure Maglev table.
//!
//! Every test needs root (namespaces, XDP, AF_XDP) and says so when it
//! skips. They run one at a time: they share two cores.

#[path = "netns/mod.rs"]
mod netns;
#[path = "world/mod.rs"]
mod world;

use etherparse::{PacketBuilder, SlicedPacket};
use netns::RawPort;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use world::*;

#[test]
fn gre_frames_reach_the_maglev_backend_with_rewritten_outer_headers_and_stay_there() {
    let Some((_serial, world)) = world_for("gre_frames_reach_the_maglev_backend", "fw", 1) else {
        return;
    };
    let node = world.start(0, &[]);
    // The first frames to each backend may wait for ARP: warm up.
    let _ = send_and_collect(&world, 0, &flows(30), 1);

    let flows = flows(300);
    let seen = send_and_collect(&world, 0, &flows, 3);
    let mut per_backend = [0usize; 3];
    for flow in &flows {
        let got = seen
            .get(flow)
            .unwrap_or_else(|| panic!("{flow:?} never arrived"));
        assert_eq!(got.len(), 3, "{flow:?}: {got:?}; {}", last_stats(&node));
        assert!(got.iter().all(|b| *b == got[0]), "{flow:?} moved: {got:?}");
        assert_eq!(BACKENDS[got[0]], expected_backend(*flow), "{flow:?}");
        per_backend[got[0]] += 1;
    }
    assert!(
        per_backend.iter().all(|n| *n > 50),
        "uneven: {per_backend:?}"
    );
    let stats = wait_for_stats(&node, |s| s["tx"].as_u64() >= Some(900));
    assert!(stats["tx"].as_u64() >= Some(900), "{stats}");

    stop_cleanly(node);
}

#[test]
fn two_nodes_with_the_same_configuration_pick_the_same_backend_for_every_flow() {
    let Some((_serial, world)) = world_for("two_nodes_pick_the_same_backend", "two", 2) else {
        return;
    };
    let a = world.start(0, &[]);
    let b = world.start(1, &[("RR_XDP_MODE", "generic")]);
    let _ = send_and_collect(&world, 0, &flows(30), 1);
    let _ = send_and_collect(&world, 1, &flows(30), 1);

    let flows = flows(200);
    let via_a = send_and_collect(&world, 0, &flows, 1);
    let via_b = send_and_collect(&world, 1, &flows, 1);
    for flow in &flows {
        let (x, y) = (via_a.get(flow), via_b.get(flow));
        assert!(
            x.is_some() && x == y,
            "{flow:?}: node a {x:?}, node b {y:?}"
        );
    }
    for node in [a, b] {
        stop_cleanly(node);
    }
}

/// An ICMP echo request from the source to node 0, built by etherparse.
fn ping_frame(seq: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(GEN_MAC, LB_MACS[0])
        .ipv4(GEN_IP.octets(), LB_IPS[0].octets(), 64)
        .icmpv4_echo_request(0x7272, seq)
        .write(&mut frame, b"ping")
        .unwrap();
    frame
}

fn is_echo_reply(frame: &[u8]) -> bool {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    matches!(
        p.transport,
        Some(etherparse::TransportSlice::Icmpv4(icmp))
            if matches!(icmp.icmp_type(), etherparse::Icmpv4Type::EchoReply(_))
    )
}

#[test]
fn host_tcp_and_ping_keep_working_while_the_node_forwards() {
    let Some((_serial, world)) = world_for("host_tcp_and_ping_keep_working", "host", 1) else {
        return;
    };
    let node = world.start(0, &[]);
    let _ = send_and_collect(&world, 0, &flows(30), 1);
    let tx_before = wait_for_stats(&node, |s| s["tx"].as_u64() >= Some(30))["tx"]
        .as_u64()
        .unwrap_or(0);

    // GRE load in the background for the whole test.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut source = RawPort::open(&world.gen_ns, "g0");
            let flows = flows(64);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for flow in &flows {
                    source.send(&to_node(0, 47, 64, &gre_payload(*flow)));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });

        // Ping: the node's kernel answers through XDP_PASS.
        let mut port = RawPort::open(&world.gen_ns, "g0");
        for seq in 0..3 {
            port.send(&ping_frame(seq));
        }
        let replies = port.recv_matching(3, WAIT, is_echo_reply);
        assert_eq!(replies.len(), 3, "echo replies");

        // TCP: a listener in the node's namespace, a client in the source's.
        let listener = world.lbs[0].run(|| TcpListener::bind((LB_IPS[0], 8080)).unwrap());
        let server = s.spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 1 << 20];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(b"done").unwrap();
            buf.iter().map(|b| u64::from(*b)).sum::<u64>()
        });
        let mut client = world
            .gen_ns
            .run(|| TcpStream::connect_timeout(&(LB_IPS[0], 8080).into(), WAIT).unwrap());
        client.set_read_timeout(Some(WAIT)).unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).unwrap();
        let mut done = [0u8; 4];
        client.read_exact(&mut done).unwrap();
        assert_eq!(&done, b"done");
        let sum = server.join().unwrap();
        assert_eq!(sum, data.iter().map(|b| u64::from(*b)).sum::<u64>());
        stop.store(true, Ordering::Relaxed);
    });
    let stats = wait_for_stats(&node, |s| s["tx"].as_u64() > Some(tx_before));
    assert!(
        stats["tx"].as_u64() > Some(tx_before),
        "it forwarded meanwhile: {stats}"
    );
    stop_cleanly(node);
}

#[test]
fn malformed_frames_are_dropped_and_counted_and_forwarding_carries_on() {
    let Some((_serial, world)) = world_for("malformed_frames_are_dropped_and_counted", "bad", 1)
    else {
        return;
    };
    let node = world.start(0, &[]);
    let _ = send_and_collect(&world, 0, &flows(30), 1);

    let mut source = RawPort::open(&world.gen_ns, "g0");
    let good = gre_payload(flows(1)[0]);
    // GRE whose inner IPv4 header is cut short.
    let truncated = &good[..4 + 12];
    // GRE announcing a key it does not carry.
    let short_gre = [0x20u8, 0, 0x08, 0x00, 0, 0];
    for _ in 0..100 {
        source.send(&to_node(0, 47, 64, truncated));
        source.send(&to_node(0, 47, 64, &short_gre));
        source.send(&to_node(0, 47, 1, &good));
    }
    let flows = flows(100);
    let seen = send_and_collect(&world, 0, &flows, 1);
    assert_eq!(seen.len(), 100, "forwarding carried on after the burst");
    let stats = wait_for_stats(&node, |s| {
        s["dropped"]["ttl_expired"].as_u64() >= Some(100)
            && s["dropped"]["malformed_inner"].as_u64() >= Some(100)
            && s["dropped"]["malformed_gre"].as_u64() >= Some(100)
    });
    assert_eq!(
        stats["dropped"]["malformed_inner"].as_u64(),
        Some(100),
        "{stats}"
    );
    assert_eq!(
        stats["dropped"]["malformed_gre"].as_u64(),
        Some(100),
        "{stats}"
    );
    assert_eq!(
        stats["dropped"]["ttl_expired"].as_u64(),
        Some(100),
        "{stats}"
    );
    stop_cleanly(node);
}

/// Builds the XDP program in `source` (a path) with clang into a temp dir.
fn xdp_object(name: &str, source: &std::path::Path) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-xdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = dir.join(format!("{name}.o"));
    let status = std::process::Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(source)
        .arg("-o")
        .arg(&o)
        .status()
        .expect("clang runs");
    assert!(status.success());
    o
}

#[test]
fn stop_leaves_the_device_clean_and_leftovers_are_cleared_or_refused() {
    let Some((_serial, world)) = world_for("stop_leaves_the_device_clean", "stop", 1) else {
        return;
    };
    let before = world.links(0);

    // SIGTERM and SIGINT: exit 0, no XDP program, no TAP device.
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let node = world.start(0, &[]);
        assert!(world.xdp_attached(0));
        assert!(world.links(0).contains("rrh-l0"), "{}", world.links(0));
        let (status, err) = node.stop(signal, WAIT);
        assert_eq!(status.code(), Some(0), "{signal}: {err}");
        assert!(!world.xdp_attached(0), "{signal}: XDP program left behind");
        assert_eq!(world.links(0), before, "{signal}: the links changed");
    }

    // SIGKILL: the next start succeeds and the device ends clean.
    let node = world.start(0, &[]);
    let (status, _) = node.stop(Signal::SIGKILL, WAIT);
    assert_eq!(status.code(), None);
    // The BPF link and the TAP device die with the process.
    assert!(!world.xdp_attached(0), "XDP program left after SIGKILL");
    assert_eq!(world.links(0), before, "links left after SIGKILL");
    let node = world.start(0, &[]);
    let seen = send_and_collect(&world, 0, &flows(20), 1);
    assert_eq!(seen.len(), 20, "forwards after a SIGKILLed run");
    stop_cleanly(node);
    assert_eq!(world.links(0), before);

    // A leftover attached the old way (netlink, no link): recognised by
    // its name and cleared.
    let ours = xdp_object(
        "steer",
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/ffi/xdp/steer.c")),
    );
    world.lbs[0].ip(&format!(
        "link set dev l0 xdpgeneric obj {} sec xdp",
        ours.display()
    ));
    assert!(world.xdp_attached(0));
    let mut node = world.start(0, &[]);
    assert!(
        node.wait_for_line("removed a leftover rusty_rail XDP program", WAIT)
            .is_some(),
        "{}",
        node.stderr_so_far()
    );
    stop_cleanly(node);
    assert!(!world.xdp_attached(0));

    // Someone else's program: refused in one line, left in place.
    let other_c = std::env::temp_dir().join(format!("rr-other-{}.c", std::process::id()));
    std::fs::write(
        &other_c,
        "int other_prog(void *ctx) __attribute__((section(\"xdp\"), used));\n\
         int other_prog(void *ctx) { return 2; }\n\
         char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
    )
    .unwrap();
    let other = xdp_object("other", &other_c);
    let _ = std::fs::remove_file(&other_c);
    world.lbs[0].ip(&format!(
        "link set dev l0 xdpgeneric obj {} sec xdp",
        other.display()
    ));
    let targets = BACKENDS[0].to_string();
    let out = world.lbs[0].exec_env(
        &[env!("CARGO_BIN_EXE_rusty_rail")],
        &[
            ("RR_DEVICE", "l0"),
            ("RR_TARGET_IPS", &targets),
            ("RR_HASH_KEY", KEY),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last: serde_json::Value =
        serde_json::from_str(err.lines().last().unwrap_or_default()).expect("a JSON line");
    assert_eq!(last["fatal"], true, "{err}");
    assert!(
        last["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("l0 already runs XDP program \"other_prog\"")),
        "{err}"
    );
    assert!(world.xdp_attached(0), "the foreign program was left alone");
    world.lbs[0].ip("link set dev l0 xdpgeneric off");
    let _ = std::fs::remove_dir_all(ours.parent().unwrap());
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The share of one core the process used over `span`.
fn cpu_share(pid: u32, span: Duration) -> f64 {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    (cpu_ticks(pid) - before) as f64 / ticks_per_s / span.as_secs_f64()
}

#[test]
fn idle_adaptive_node_uses_almost_no_cpu_and_keeps_the_first_frame_after_idling() {
    let Some((_serial, world)) = world_for("idle_adaptive_node_uses_almost_no_cpu", "idle", 1)
    else {
        return;
    };
    let node = world.start(0, &[("RR_STATS_INTERVAL", "0")]);
    let _ = send_and_collect(&world, 0, &flows(10), 1);
    std::thread::sleep(Duration::from_millis(500));
    let share = cpu_share(node.id(), Duration::from_secs(2));
    eprintln!("adaptive idle CPU: {:.1}% of a core", share * 100.0);
    assert!(
        share < 0.05,
        "an idle adaptive node used {:.1}% of a core",
        share * 100.0
    );

    // After the idle spell, the very first frame goes through.
    let seen = send_and_collect(&world, 0, &flows(1), 1);
    assert_eq!(seen.len(), 1, "the first frame after idling was lost");
    stop_cleanly(node);

    // The contrast: a spinning node burns its core while idle.
    let node = world.start(0, &[("RR_STATS_INTERVAL", "0"), ("RR_IDLE", "spin")]);
    let share = cpu_share(node.id(), Duration::from_secs(1));
    eprintln!("spin idle CPU: {:.1}% of a core", share * 100.0);
    assert!(
        share > 0.3,
        "a spinning node used only {:.1}% of a core",
        share * 100.0
    );
    stop_cleanly(node);
}

fn is_protocol_unreachable(frame: &[u8]) -> bool {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    matches!(
        p.transport,
        Some(etherparse::TransportSlice::Icmpv4(icmp))
            if matches!(
                icmp.icmp_type(),
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Protocol
                )
            )
    )
}

#[test]
fn steered_frames_the_pipeline_declines_reach_the_host_stack() {
    let Some((_serial, world)) = world_for(
        "steered_frames_the_pipeline_declines_reach_the_host",
        "th",
        1,
    ) else {
        return;
    };
    let node = world.start(0, &[]);
    // GRE version 1 (PPTP) to the node: steered by XDP (GRE to a local
    // address), declined by the pipeline, handed to the host through the
    // TAP device. This kernel has no GRE, so its stack answers "protocol
    // unreachable": proof the frame got there.
    let mut pptp = gre_payload(flows(1)[0]);
    pptp[1] = 0x01;
    let mut port = RawPort::open(&world.gen_ns, "g0");
    port.send(&to_node(0, 47, 64, &pptp));
    let replies = port.recv_matching(1, WAIT, is_protocol_unreachable);
    assert_eq!(replies.len(), 1, "no answer from the host stack");
    let stats = wait_for_stats(&node, |s| s["to_host"].as_u64() >= Some(1));
    assert_eq!(stats["to_host"].as_u64(), Some(1), "{stats}");
    assert_eq!(
        stats["dropped"]["to_host_failed"].as_u64(),
        Some(0),
        "{stats}"
    );
    stop_cleanly(node);
}

#[test]
fn unresolved_next_hops_are_counted_probed_and_forwarding_resumes_once_they_answer() {
    let Some((_serial, world)) = world_for("unresolved_next_hops_are_counted_probed", "nh", 1)
    else {
        return;
    };
    let node = world.start(0, &[]);
    let _ = send_and_collect(&world, 0, &flows(30), 1);

    // Backend 0 goes silent and the node forgets its MAC: within the 1 s
    // refresh its flows become no_neighbour drops (and probes), the other
    // backends' flows still go through.
    world.backends[0].ip("link set dev b0 arp off");
    world.lbs[0].ip("neigh flush dev l0");
    std::thread::sleep(Duration::from_millis(1500));
    let flows = flows(60);
    let to_backend0 = flows
        .iter()
        .filter(|f| expected_backend(**f) == BACKENDS[0])
        .count();
    assert!(to_backend0 > 0);
    let seen = send_and_collect(&world, 0, &flows, 1);
    assert_eq!(seen.len(), flows.len() - to_backend0, "{seen:?}");
    let stats = wait_for_stats(&node, |s| {
        s["dropped"]["no_neighbour"].as_u64() >= Some(to_backend0 as u64)
    });
    assert!(
        stats["dropped"]["no_neighbour"].as_u64() >= Some(to_backend0 as u64),
        "{stats}"
    );

    // It answers again: the next probe resolves it and its flows return.
    world.backends[0].ip("link set dev b0 arp on");
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen = send_and_collect(&world, 0, &flows, 1);
    while seen.len() < flows.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        seen = send_and_collect(&world, 0, &flows, 1);
    }
    assert_eq!(
        seen.len(),
        flows.len(),
        "forwarding to backend 0 did not resume"
    );
    stop_cleanly(node);
}

#[test]
fn every_rx_queue_gets_a_socket_and_a_worker() {
    let Some((_serial, world)) = world_for("every_rx_queue_gets_a_socket_and_a_worker", "mq", 1)
    else {
        return;
    };
    // Both ends get two queues, so the switch side spreads flows over
    // the node's two RX queues by hash.
    let out = world.lbs[0].exec(&["ethtool", "-L", "l0", "rx", "2", "tx", "2"]);
    assert!(out.status.success(), "{out:?}");
    let port = &world.lan.ports()[1];
    let out = world
        .lan
        .switch
        .exec(&["ethtool", "-L", port, "rx", "2", "tx", "2"]);
    assert!(out.status.success(), "{out:?}");
    let mut node = world.start(0, &[]);
    assert!(
        node.wait_for_line("2 queues", WAIT).is_some(),
        "{}",
        node.stderr_so_far()
    );
    let _ = send_and_collect(&world, 0, &flows(30), 1);
    let seen = send_and_collect(&world, 0, &flows(200), 1);
    assert_eq!(seen.len(), 200);
    let queues = || -> serde_json::Value {
        let text = node.stderr_so_far();
        let line = text.lines().rev().find(|l| l.contains("\"queues\""));
        line.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["queues"].clone())
            .unwrap_or_default()
    };
    let both = |q: &serde_json::Value| (0..2).all(|i| q[i]["tx"].as_u64() > Some(0));
    let deadline = Instant::now() + WAIT;
    while !both(&queues()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let q = queues();
    assert_eq!(q.as_array().map(Vec::len), Some(2), "{q}");
    assert!(both(&q), "a queue forwarded nothing: {q}");
    stop_cleanly(node);
}
