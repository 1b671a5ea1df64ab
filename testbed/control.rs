//! Runtime control of a running node, for real: the HTTP API in the node's
//! namespace, connection tracking across table changes, active and passive
//! health checks, and how fast a change reaches the workers. The world is
//! the forwarder tests' (a source, a node and three backends on a bridge);
//! frames are built and checked with etherparse.
//!
//! Every test needs root (namespaces, XDP, AF_XDP) and says so when it
//! skips. They run one at a time: they share two cores.

#[path = "netns/mod.rs"]
mod netns;
#[path = "world/mod.rs"]
mod world;

use netns::{Netns, RawPort};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use world::*;

/// One HTTP/1.1 request to the node's API (127.0.0.1:9180 in its
/// namespace); returns the status and the body.
fn http(ns: &Netns, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = ns
        .run(|| TcpStream::connect(("127.0.0.1", 9180)))
        .expect("API connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// The backend entry of `/v1/vips` for `addr` in the default set.
fn backend_state(ns: &Netns, addr: Ipv4Addr) -> serde_json::Value {
    let (status, body) = http(ns, "GET", "/v1/vips", None);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    v["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["vip"] == "default")
        .and_then(|s| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["addr"] == addr.to_string())
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

/// Polls `/v1/vips` until `addr`'s health is `want`; returns how long it took.
fn wait_for_health(ns: &Netns, addr: Ipv4Addr, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let b = backend_state(ns, addr);
        if b["health"] == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{addr} not {want} after {limit:?}: {b}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one metric line, e.g. `rr_table_generation` or
/// `rr_backend_up{vip="default",backend="10.61.0.21"}`.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A TCP listener in a backend's namespace that accepts and closes, until
/// dropped: what the active health check connects to.
struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    fn start(ns: &Netns, addr: Ipv4Addr, port: u16) -> Service {
        let listener = ns.run(|| TcpListener::bind((addr, port))).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Service {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw IPPROTO_GRE socket in a backend's namespace: with it open, the
/// kernel counts our GRE as delivered and sends no "protocol unreachable"
/// (which the passive check would act on).
fn gre_sink(ns: &Netns) -> socket2::Socket {
    ns.run(|| {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(47)),
        )
    })
    .expect("raw GRE socket")
}

/// Each flow's backend (an index into BACKENDS), sent once to node 0.
fn placement(world: &World, flows: &[Flow]) -> HashMap<Flow, usize> {
    let seen = send_and_collect(world, 0, flows, 1);
    assert_eq!(seen.len(), flows.len(), "not every flow was forwarded");
    seen.into_iter()
        .map(|(flow, got)| {
            assert_eq!(got.len(), 1, "{flow:?}: {got:?}");
            (flow, got[0])
        })
        .collect()
}

fn flows_from(first: usize, n: usize) -> Vec<Flow> {
    flows(first + n).split_off(first)
}

#[test]
fn api_serves_health_metrics_and_vips_and_applies_changes_as_new_tables() {
    let Some((_serial, world)) = world_for("api_serves_health_metrics_and_vips", "api", 1) else {
        return;
    };
    let node = world.start(0, &[]);
    let ns = &world.lbs[0];

    assert_eq!(http(ns, "GET", "/healthz", None), (200, "ok\n".to_string()));
    let (status, body) = http(ns, "GET", "/v1/vips", None);
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["vips"][0]["vip"], "default");
    let backends = v["vips"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3);
    for (b, want) in backends.iter().zip(BACKENDS) {
        assert_eq!(b["addr"], want.to_string());
        assert_eq!(
            (b["weight"].as_u64(), b["state"].as_str()),
            (Some(1), Some("up"))
        );
        assert_eq!(b["health"], "unchecked");
    }

    let sent = flows(60);
    let seen = placement(&world, &sent);
    assert_eq!(seen.len(), 60);
    let (status, text) = http(ns, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "rr_rx_packets_total{queue=\"0\"}"),
        Some(60.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "rr_tx_packets_total{queue=\"0\"}"),
        Some(60.0)
    );
    assert_eq!(metric(&text, "rr_flow_table_misses_total"), Some(60.0));
    assert_eq!(metric(&text, "rr_flow_table_hits_total"), Some(0.0));
    assert_eq!(metric(&text, "rr_table_generation"), Some(1.0));
    assert_eq!(
        metric(&text, "rr_dropped_packets_total{reason=\"no_backend\"}"),
        Some(0.0)
    );
    for (i, b) in BACKENDS.iter().enumerate() {
        let labels = format!("{{vip=\"default\",backend=\"{b}\"}}");
        let on_b = seen.values().filter(|x| **x == i).count() as f64;
        assert_eq!(
            metric(&text, &format!("rr_backend_packets_total{labels}")),
            Some(on_b)
        );
        assert_eq!(metric(&text, &format!("rr_backend_up{labels}")), Some(1.0));
    }

    let path = "/v1/vips/default/backends/10.61.0.24";
    let (status, body) = http(ns, "PUT", path, Some(r#"{"weight": 2}"#));
    assert_eq!(status, 201, "{body}");
    let v = json(&body);
    assert_eq!(v["generation"], 2);
    assert_eq!(
        (
            v["backend"]["weight"].as_u64(),
            v["backend"]["state"].as_str()
        ),
        (Some(2), Some("up"))
    );
    let (status, body) = http(ns, "PUT", path, Some(r#"{"state": "drain"}"#));
    assert_eq!(
        (status, json(&body)["generation"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    assert_eq!(
        backend_state(ns, Ipv4Addr::new(10, 61, 0, 24))["state"],
        "drain"
    );

    for (method, path, body, want, field) in [
        ("PUT", path, r#"{"weight": "x"}"#, 400, Some("weight")),
        ("PUT", path, r#"{"state": "sideways"}"#, 400, Some("state")),
        ("PUT", path, "{not json", 400, Some("body")),
        (
            "PUT",
            "/v1/vips/default/backends/10.61.0.999",
            "{}",
            400,
            Some("addr"),
        ),
        (
            "PUT",
            "/v1/vips/nope/backends/10.61.0.25",
            "{}",
            400,
            Some("vip"),
        ),
        (
            "PUT",
            "/v1/vips/198.51.100.99/backends/10.61.0.25",
            "{}",
            404,
            Some("vip"),
        ),
        (
            "DELETE",
            "/v1/vips/default/backends/10.61.0.99",
            "",
            404,
            Some("addr"),
        ),
    ] {
        let (status, text) = http(ns, method, path, Some(body));
        assert_eq!(status, want, "{method} {path} {body}: {text}");
        if let Some(field) = field {
            assert_eq!(json(&text)["field"], field, "{method} {path} {body}");
        }
    }
    let big = format!("{{\"weight\": 1{}}}", " ".repeat(10_000));
    assert_eq!(http(ns, "PUT", path, Some(&big)).0, 413);

    let (status, body) = http(ns, "DELETE", path, None);
    assert_eq!(
        (status, json(&body)["generation"].as_u64()),
        (200, Some(4)),
        "{body}"
    );
    let (_, text) = http(ns, "GET", "/metrics", None);
    assert_eq!(metric(&text, "rr_table_generation"), Some(4.0));
    assert_eq!(
        backend_state(ns, Ipv4Addr::new(10, 61, 0, 24)),
        serde_json::Value::Null
    );
    stop_cleanly(node);
}

#[test]
fn tracked_flows_stay_put_when_backends_are_added_or_drained_and_move_only_off_a_down_or_removed_one()
 {
    let Some((_serial, world)) = world_for("tracked_flows_stay_put", "ct", 1) else {
        return;
    };
    let two = format!("{};{}", BACKENDS[0], BACKENDS[1]);
    let node = world.start(0, &[("RR_TARGET_IPS", &two)]);
    let ns = &world.lbs[0];
    let _ = send_and_collect(&world, 0, &flows(20), 1); // next hops warm

    let old = flows_from(1000, 300);
    let before = placement(&world, &old);
    for (flow, b) in &before {
        assert_eq!(BACKENDS[*b], maglev_pick(*flow, &BACKENDS[..2]), "{flow:?}");
    }

    // Add the third backend: no tracked flow moves; new flows use it.
    let (status, body) = http(
        ns,
        "PUT",
        &format!("/v1/vips/default/backends/{}", BACKENDS[2]),
        None,
    );
    assert_eq!(status, 201, "{body}");
    let after_add = placement(&world, &old);
    assert_eq!(
        after_add, before,
        "a tracked flow moved when a backend was added"
    );
    let would_move = old
        .iter()
        .filter(|f| maglev_pick(**f, &BACKENDS) != maglev_pick(**f, &BACKENDS[..2]))
        .count();
    assert!(would_move > 50, "the test must matter: {would_move}");
    let new = flows_from(2000, 300);
    for (flow, b) in placement(&world, &new) {
        assert_eq!(BACKENDS[b], maglev_pick(flow, &BACKENDS), "{flow:?}");
    }

    // Drain the second: its flows stay, new flows avoid it.
    let (status, _) = http(
        ns,
        "PUT",
        &format!("/v1/vips/default/backends/{}", BACKENDS[1]),
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(status, 200);
    assert_eq!(placement(&world, &old), before, "draining moved a flow");
    let newer = placement(&world, &flows_from(3000, 300));
    assert_eq!(newer.len(), 300);
    assert!(
        newer.values().all(|b| *b != 1),
        "a new flow went to the draining backend"
    );

    // Take the second down: exactly its flows move, to what Maglev says
    // over the other two.
    let (status, _) = http(
        ns,
        "PUT",
        &format!("/v1/vips/default/backends/{}", BACKENDS[1]),
        Some(r#"{"state":"down"}"#),
    );
    assert_eq!(status, 200);
    let after_down = placement(&world, &old);
    let mut moved_down = 0;
    for (flow, b) in &before {
        let now = after_down[flow];
        if *b == 1 {
            moved_down += 1;
            assert_eq!(
                BACKENDS[now],
                maglev_pick(*flow, &[BACKENDS[0], BACKENDS[2]]),
                "{flow:?}"
            );
        } else {
            assert_eq!(now, *b, "{flow:?} was not on the down backend but moved");
        }
    }
    assert!(moved_down > 100, "{moved_down}");

    // Remove the first: exactly the flows now on it move, to the third,
    // the only one left up.
    let (status, _) = http(
        ns,
        "DELETE",
        &format!("/v1/vips/default/backends/{}", BACKENDS[0]),
        None,
    );
    assert_eq!(status, 200);
    let after_remove = placement(&world, &old);
    let mut moved = 0;
    for (flow, b) in &after_down {
        let now = after_remove[flow];
        if *b == 0 {
            moved += 1;
            assert_eq!(now, 2, "{flow:?} left the removed backend for {now}");
        } else {
            assert_eq!(now, *b, "{flow:?} was not on the removed backend but moved");
        }
    }
    assert!(moved > 100, "{moved}");
    let (_, text) = http(ns, "GET", "/metrics", None);
    // Four re-sends of the old flows hit, except each move's; misses are
    // the first sight of 20 + 4 × 300 flows, and the moved.
    let hits = metric(&text, "rr_flow_table_hits_total");
    let misses = metric(&text, "rr_flow_table_misses_total");
    assert_eq!(hits, Some((1200 - moved_down - moved) as f64), "{text}");
    assert_eq!(misses, Some((920 + moved_down + moved) as f64), "{text}");
    stop_cleanly(node);
}

#[test]
fn failing_health_checks_take_a_backend_out_within_fall_intervals_and_passing_ones_bring_it_back() {
    let Some((_serial, world)) = world_for("failing_health_checks_take_a_backend_out", "hc", 1)
    else {
        return;
    };
    let _sinks: Vec<_> = world.backends.iter().map(gre_sink).collect();
    let mut services: Vec<Option<Service>> = world
        .backends
        .iter()
        .zip(BACKENDS)
        .map(|(ns, addr)| Some(Service::start(ns, addr, 8080)))
        .collect();
    let (interval, rise, fall) = (Duration::from_millis(200), 2u32, 3u32);
    let node = world.start(
        0,
        &[
            ("RR_HEALTH_PORT", "8080"),
            ("RR_HEALTH_INTERVAL", "0.2"),
            ("RR_HEALTH_TIMEOUT", "0.1"),
            ("RR_HEALTH_RISE", "2"),
            ("RR_HEALTH_FALL", "3"),
        ],
    );
    let ns = &world.lbs[0];
    // Backends start healthy; give every checker a few rounds to agree.
    std::thread::sleep(interval * 3);
    for addr in BACKENDS {
        assert_eq!(backend_state(ns, addr)["health"], "healthy", "{addr}");
    }
    // The death falls anywhere in an interval: `fall` failures take
    // between (fall - 1) and fall intervals, plus the control tick (50 ms)
    // and this poll (20 ms), on two shared cores.
    let slack = Duration::from_millis(250);

    services[1] = None;
    let out = wait_for_health(ns, BACKENDS[1], "unhealthy", interval * fall + slack);
    assert!(
        out >= interval * (fall - 1),
        "out after {out:?}: fewer than {fall} checks"
    );
    eprintln!(
        "dead backend out after {} ms (interval × fall = {} ms)",
        out.as_millis(),
        (interval * fall).as_millis()
    );
    let b = backend_state(ns, BACKENDS[1]);
    assert!(b["reason"].as_str().is_some_and(|r| !r.is_empty()), "{b}");
    let (_, text) = http(ns, "GET", "/metrics", None);
    let labels = format!("{{vip=\"default\",backend=\"{}\"}}", BACKENDS[1]);
    assert_eq!(
        metric(&text, &format!("rr_backend_up{labels}")),
        Some(0.0),
        "{text}"
    );
    for (flow, b) in placement(&world, &flows_from(500, 200)) {
        assert_ne!(b, 1, "{flow:?} went to the dead backend");
        assert_eq!(BACKENDS[b], maglev_pick(flow, &[BACKENDS[0], BACKENDS[2]]));
    }

    services[1] = Some(Service::start(&world.backends[1], BACKENDS[1], 8080));
    let back = wait_for_health(ns, BACKENDS[1], "healthy", interval * rise + slack);
    assert!(
        back >= interval * (rise - 1),
        "back after {back:?}: fewer than {rise} checks"
    );
    eprintln!(
        "backend back after {} ms (interval × rise = {} ms)",
        back.as_millis(),
        (interval * rise).as_millis()
    );
    let fresh = placement(&world, &flows_from(5000, 200));
    assert!(
        fresh.values().any(|b| *b == 1),
        "no new flow reached the recovered backend"
    );
    stop_cleanly(node);
}

#[test]
fn icmp_unreachable_from_a_backend_marks_it_down_at_once_until_active_checks_pass() {
    let Some((_serial, world)) = world_for("icmp_unreachable_from_a_backend", "pc", 1) else {
        return;
    };
    // Backends 0 and 2 take GRE; backend 1's kernel answers it with ICMP
    // protocol unreachable.
    let _sinks = [gre_sink(&world.backends[0]), gre_sink(&world.backends[2])];
    let _services: Vec<Service> = world
        .backends
        .iter()
        .zip(BACKENDS)
        .map(|(ns, addr)| Service::start(ns, addr, 8080))
        .collect();
    // Active checks alone would need 5 s to take it out (and it passes them).
    let node = world.start(
        0,
        &[
            ("RR_HEALTH_PORT", "8080"),
            ("RR_HEALTH_INTERVAL", "0.5"),
            ("RR_HEALTH_RISE", "3"),
            ("RR_HEALTH_FALL", "10"),
        ],
    );
    let ns = &world.lbs[0];
    let flow = flows_from(7000, 200)
        .into_iter()
        .find(|f| expected_backend(*f) == BACKENDS[1])
        .unwrap();
    let mut source = RawPort::open(&world.gen_ns, "g0");
    // Resent every 100 ms, in case the first waits for ARP or the
    // kernel's ICMP rate limit.
    let frame = to_node(0, 47, 64, &gre_payload(flow));
    let sent = Instant::now();
    for i in 0.. {
        if backend_state(ns, BACKENDS[1])["health"] == "unhealthy" {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "still healthy 1 s after GRE drew ICMP unreachable"
        );
        if i % 10 == 0 {
            source.send(&frame);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "ICMP unreachable took the backend out {} ms after the frame (active checks alone: 5000 ms)",
        sent.elapsed().as_millis()
    );
    let b = backend_state(ns, BACKENDS[1]);
    assert!(
        b["reason"].as_str().is_some_and(|r| r.contains("ICMP")),
        "{b}"
    );
    // It answers TCP, so rise (3) passing checks, 0.5 s apart, bring it
    // back: not before the third (a report queued before the ICMP may
    // count as the first).
    let back = wait_for_health(
        ns,
        BACKENDS[1],
        "healthy",
        Duration::from_millis(1500 + 250),
    );
    assert!(
        back >= Duration::from_millis(900),
        "back after {back:?}: before 3 checks"
    );
    eprintln!(
        "back after {} ms (interval × rise = 1500 ms)",
        back.as_millis()
    );
    stop_cleanly(node);
}

#[test]
fn a_put_reaches_the_workers_at_once_measured_to_the_first_frame_forwarded_with_the_new_table() {
    let Some((_serial, world)) = world_for("a_put_reaches_the_workers_at_once", "sw", 1) else {
        return;
    };
    let node = world.start(0, &[]);
    let ns = &world.lbs[0];
    let _ = send_and_collect(&world, 0, &flows(20), 1);
    // Flows on backend 1 that Maglev moves to backend 0 once 1 is down.
    let moving: Vec<Flow> = flows_from(10_000, 3000)
        .into_iter()
        .filter(|f| {
            expected_backend(*f) == BACKENDS[1]
                && maglev_pick(*f, &[BACKENDS[0], BACKENDS[2]]) == BACKENDS[0]
        })
        .take(16)
        .collect();
    assert_eq!(moving.len(), 16);
    let frames: Vec<Vec<u8>> = moving
        .iter()
        .map(|f| to_node(0, 47, 64, &gre_payload(*f)))
        .collect();
    let mut receiver = RawPort::open(&world.backends[0], "b0");
    let mut source = RawPort::open(&world.gen_ns, "g0");
    let stop = AtomicBool::new(false);
    let (put_at, first_at, put_took) = std::thread::scope(|s| {
        s.spawn(|| {
            // A steady stream, one frame every 100 µs, bounded in time.
            let end = Instant::now() + Duration::from_secs(10);
            for frame in frames.iter().cycle() {
                if stop.load(Ordering::Relaxed) || Instant::now() > end {
                    break;
                }
                source.send(frame);
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        // Before the change none of these reach backend 0.
        let early = receiver.recv_matching(1, Duration::from_millis(300), is_gre);
        assert!(
            early.is_empty(),
            "a frame reached backend 0 before the change"
        );
        let put_at = Instant::now();
        let (status, body) = http(
            ns,
            "PUT",
            &format!("/v1/vips/default/backends/{}", BACKENDS[1]),
            Some(r#"{"state":"down"}"#),
        );
        let put_took = put_at.elapsed();
        assert_eq!(status, 200, "{body}");
        let got = receiver.recv_matching(1, Duration::from_secs(2), is_gre);
        let first_at = Instant::now();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(got.len(), 1, "no frame reached the new backend");
        check_forwarded(&got[0], 0, 0);
        (put_at, first_at, put_took)
    });
    eprintln!(
        "swap latency: PUT sent → first frame on the new backend {} µs; PUT answered (table built and swapped) → first frame {} µs; frames every 100 µs",
        first_at.duration_since(put_at).as_micros(),
        first_at.duration_since(put_at + put_took).as_micros()
    );
    assert!(first_at.duration_since(put_at) < Duration::from_millis(500));
    stop_cleanly(node);
}
