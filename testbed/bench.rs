//! `rr-bench`: the pieces of the end-to-end throughput run
//! (`testbed/throughput`), each running for a number of seconds:
//!
//! ```text
//! rr-bench gen DEV DST_MAC DST_IP SECONDS [CORE]   GRE over 4096 flows, XDP live frames
//! rr-bench sink DEV SECONDS                        count GRE arriving on DEV, one line a second
//! rr-bench bounce DEV SECONDS                      in-kernel XDP_TX bounce of GRE
//! rr-bench xsk-hairpin DEV SECONDS [CORE]          AF_XDP rx -> tx, MACs swapped, nothing else
//! rr-bench afpacket DEV SECONDS [CORE]             AF_PACKET recvmmsg -> sendmmsg, MACs swapped
//! ```

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{Xdp, XdpFlags};
use rusty_rail::config::XdpMode;
use rusty_rail::control::netlink;
use rusty_rail::dataplane::Verdict;
use rusty_rail::dataplane::worker::Port;
use rusty_rail::io::{afpacket, bpf, xdp, xsk};
use rusty_rail::wire::checksum;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Must match GEN_FLOWS in ffi/xdp/bench.c.
const GEN_FLOWS: u32 = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rr-bench: {e}");
            ExitCode::from(1)
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Result<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing {what}; see the usage in testbed/bench.rs"))
}

fn seconds(args: &[String], i: usize) -> Result<Duration> {
    let s = arg(args, i, "SECONDS")?;
    s.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("SECONDS {s:?}: expected a number of seconds"))
}

fn pin(args: &[String], i: usize) -> Result<()> {
    if let Some(core) = args.get(i) {
        let id = core
            .parse()
            .map_err(|_| format!("CORE {core:?}: expected a core number"))?;
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            return Err(format!("cannot pin to core {id}"));
        }
    }
    Ok(())
}

fn device(name: &str) -> Result<netlink::Device> {
    netlink::device(name).map_err(|e| format!("{name}: {e}"))
}

/// SIGINT/SIGTERM end a run early, cleanly.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    Ok(stop)
}

fn run(args: &[String]) -> Result<()> {
    let stop = stop_flag()?;
    match arg(args, 0, "a command")? {
        "gen" => generate(args, &stop),
        "sink" => sink(args, &stop),
        "bounce" => bounce(args, &stop),
        "xsk-hairpin" => xsk_hairpin(args, &stop),
        "afpacket" => afpacket_hairpin(args, &stop),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn load_program(name: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(xdp::bench_object()).map_err(|e| format!("load: {e}"))?;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    program.load().map_err(|e| format!("{name}: load: {e}"))?;
    Ok(ebpf)
}

fn attach(ebpf: &mut Ebpf, name: &str, index: u32) -> Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    program
        .attach_to_if_index(index, XdpFlags::DRV_MODE)
        .map(|_| ())
        .map_err(|e| format!("{name}: attach: {e}"))
}

fn count(ebpf: &mut Ebpf) -> Result<u64> {
    let map: PerCpuArray<&mut MapData, u64> = ebpf
        .map_mut("rr_bench_count")
        .ok_or("no count map")?
        .try_into()
        .map_err(|e| format!("count map: {e}"))?;
    let values = map.get(&0, 0).map_err(|e| format!("count map: {e}"))?;
    Ok(values.iter().sum())
}

fn mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("MAC {text:?}"))?;
    bytes.try_into().map_err(|_| format!("MAC {text:?}"))
}

fn ipv4_header(src: [u8; 4], dst: [u8; 4], protocol: u8, payload_len: usize) -> [u8; 20] {
    let total = (20 + payload_len) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = checksum::finish(checksum::sum(&h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// Ethernet + IPv4 + GRE + inner IPv4/UDP (checksum 0) with 18 bytes of
/// payload; the generator program varies the inner source per flow.
fn template(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = b"rusty_rail bench!!";
    let mut udp = Vec::new();
    udp.extend_from_slice(&10000u16.to_be_bytes());
    udp.extend_from_slice(&80u16.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let inner = ipv4_header([192, 0, 2, 1], [198, 51, 100, 80], 17, udp.len());
    let mut gre = vec![0, 0, 0x08, 0x00];
    gre.extend_from_slice(&inner);
    gre.extend_from_slice(&udp);
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ipv4_header(src.octets(), dst.octets(), 47, gre.len()));
    frame.extend_from_slice(&gre);
    frame
}

fn generate(args: &[String], stop: &AtomicBool) -> Result<()> {
    let dev = device(arg(args, 1, "DEV")?)?;
    let dst_mac = mac(arg(args, 2, "DST_MAC")?)?;
    let dst: Ipv4Addr = arg(args, 3, "DST_IP")?
        .parse()
        .map_err(|_| "DST_IP: expected an IPv4 address".to_string())?;
    let duration = seconds(args, 4)?;
    pin(args, 5)?;
    let src = *dev.v4.first().ok_or("DEV has no IPv4 address")?;
    let frame = template(dev.mac, dst_mac, src, dst);
    let mut ebpf = load_program("rr_gen")?;
    let program: &mut Xdp = ebpf
        .program_mut("rr_gen")
        .ok_or("no rr_gen")?
        .try_into()
        .map_err(|e| format!("rr_gen: {e}"))?;
    let fd = program.fd().map_err(|e| format!("rr_gen: {e}"))?;
    let start = Instant::now();
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        match bpf::run_live_frames(fd.as_fd(), &frame, dev.index, 1 << 16, 64) {
            Ok(()) => {}
            // A signal (e.g. SIGTERM, checked above) cuts a run short.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("BPF_PROG_RUN live frames on {}: {e}", dev.name)),
        }
    }
    eprintln!(
        "rr-bench gen: {} flows for {:?}",
        GEN_FLOWS,
        start.elapsed()
    );
    Ok(())
}

fn sink(args: &[String], stop: &AtomicBool) -> Result<()> {
    let dev = device(arg(args, 1, "DEV")?)?;
    let duration = seconds(args, 2)?;
    let mut ebpf = load_program("rr_sink")?;
    attach(&mut ebpf, "rr_sink", dev.index)?;
    let start = Instant::now();
    let mut last = count(&mut ebpf)?;
    let mut tick = start;
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        tick += Duration::from_secs(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = count(&mut ebpf)?;
        println!("{}", now - last);
        last = now;
    }
    Ok(())
}

fn bounce(args: &[String], stop: &AtomicBool) -> Result<()> {
    let dev = device(arg(args, 1, "DEV")?)?;
    let duration = seconds(args, 2)?;
    let mut ebpf = load_program("rr_bounce")?;
    attach(&mut ebpf, "rr_bounce", dev.index)?;
    let start = Instant::now();
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Swaps the Ethernet addresses, so the frame goes back to its sender
/// addressed to it, as any forwarder's frames are addressed to their next
/// hop; nothing else is read or written.
fn swap_macs(f: &mut [u8]) {
    if f.len() >= 12 {
        let (dst, rest) = f.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
    }
}

/// Runs `port` with `decide` until the time is up, idling as rusty_rail's
/// workers do by default (spin 200 µs on empty rings, then sleep in the
/// port's wait), so the comparison is of the per-frame work alone.
fn hairpin<P: Port>(
    port: &mut P,
    duration: Duration,
    stop: &AtomicBool,
    decide: fn(&mut [u8]) -> Verdict,
) -> u64 {
    let start = Instant::now();
    let mut frames = 0u64;
    let mut polls = 0u32;
    let mut idle_since: Option<Instant> = None;
    loop {
        let n = port.poll(64, |buf, len| {
            let len = len.min(buf.len());
            (decide(&mut buf[..len]), len)
        });
        frames += n as u64;
        if n > 0 {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_SPIN {
            port.wait(Duration::from_millis(100));
        }
        polls = polls.wrapping_add(1);
        // Look at the clock now and then, not every poll.
        if polls.is_multiple_of(1024)
            && (start.elapsed() >= duration || stop.load(Ordering::Relaxed))
        {
            return frames;
        }
    }
}

/// rusty_rail's default RR_IDLE_SPIN_US.
const IDLE_SPIN: Duration = Duration::from_micros(200);

fn xsk_hairpin(args: &[String], stop: &AtomicBool) -> Result<()> {
    let dev = device(arg(args, 1, "DEV")?)?;
    let duration = seconds(args, 2)?;
    pin(args, 3)?;
    let mut steering = xdp::Steering::attach(
        &dev.name,
        dev.index,
        XdpMode::Native,
        None,
        &dev.v4,
        &dev.v6,
    )
    .map_err(|e| e.to_string())?;
    let mut socket =
        xsk::Socket::open(&dev.name, 0, 2048, xsk::Copy::Copy, None).map_err(|e| e.to_string())?;
    steering
        .register(0, socket.fd())
        .map_err(|e| e.to_string())?;
    let frames = hairpin(&mut socket, duration, stop, |f| {
        swap_macs(f);
        Verdict::Forward
    });
    eprintln!("rr-bench xsk-hairpin: {frames} frames");
    Ok(())
}

fn afpacket_hairpin(args: &[String], stop: &AtomicBool) -> Result<()> {
    let dev = device(arg(args, 1, "DEV")?)?;
    let duration = seconds(args, 2)?;
    pin(args, 3)?;
    let mut socket = afpacket::Socket::open(dev.index).map_err(|e| format!("AF_PACKET: {e}"))?;
    let gre = |f: &mut [u8]| {
        if f.len() > 23 && f[12..14] == [0x08, 0x00] && f[23] == 47 {
            swap_macs(f);
            Verdict::Forward
        } else {
            Verdict::ToHost
        }
    };
    let frames = hairpin(&mut socket, duration, stop, gre);
    eprintln!("rr-bench afpacket: {frames} frames");
    Ok(())
}
