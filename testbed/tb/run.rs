//! `rr-testbed run`: the newcomer's job. Builds the seed's topology in
//! namespaces, starts rusty_rail on every LB node, sends real HTTP
//! requests through the VIP, prints who served what, and tears it all
//! down, also on Ctrl-C.

/// `println!` that ignores a closed stdout (`| head`, a hung-up terminal):
/// its panic would abort and skip the orderly teardown.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use crate::topology::{self, Front, Options, STOP, Shape, Testbed};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: rr-testbed run [--iteration 1|2|3|4] [--requests N] [--concurrency C] [--announce] [--keep]

Builds the seed's testbed in network namespaces (iteration 1: 1 client,
1 LB node, 1 server; 2: 1/1/2; 3: 1/2/2; 4: 2/2/2; default 4), runs
rusty_rail on every LB node, sends N HTTP requests (default 4000, split
over the clients, each on its own connection, C at a time per client,
default 16) through the router to the VIP, prints requests per server
and per LB node, and tears everything down. --announce leaves the router
out: the LB nodes announce a floating VIP on the clients' network
(RR_ANNOUNCE, the lower MAC holds it, the other stands by) and the
clients send plain TCP to it. --keep leaves it up until Ctrl-C, for
poking around. Needs root.";

struct Args {
    iteration: u8,
    requests: u64,
    concurrency: u64,
    keep: bool,
    announce: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        iteration: 4,
        requests: 4000,
        concurrency: 16,
        keep: false,
        announce: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--iteration" => out.iteration = number(arg, &value(arg)?, 1..=4)?,
            "--requests" => out.requests = number(arg, &value(arg)?, 1..=1_000_000)?,
            "--concurrency" => out.concurrency = number(arg, &value(arg)?, 1..=1024)?,
            "--keep" => out.keep = true,
            "--announce" => out.announce = true,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(out)
}

/// `value` of option `name` as a number within `range`.
fn number<T>(name: &str, value: &str, range: RangeInclusive<T>) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display,
{
    value
        .parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{name} {value:?}: expected {}-{}",
                range.start(),
                range.end()
            )
        })
}

/// The exit status: 0 when every request succeeded, 1 when not or on an
/// error, 2 for bad arguments.
pub fn main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        say!("{USAGE}");
        return 0;
    }
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("rr-testbed run: needs root (network namespaces, XDP)");
        return 2;
    }
    // A panic tears down here and aborts, so no Drop tears down twice.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        topology::delete_leftovers();
        std::process::abort();
    }));
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&STOP)) {
            eprintln!("rr-testbed run: cannot handle signals: {e}");
            return 1;
        }
    }
    match job(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("rr-testbed run: {e}");
            1
        }
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Ok(true) when every request succeeded.
fn job(args: &Args) -> Result<bool, String> {
    let shape = Shape::iteration(args.iteration).ok_or("bad iteration")?;
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .ok_or("cannot find my own directory")?;
    if !bin_dir.join("rusty_rail").exists() {
        return Err(format!(
            "no rusty_rail beside me in {} (cargo build --release --bins)",
            bin_dir.display()
        ));
    }
    let (front, vip) = if args.announce {
        (Front::Announce, topology::FLOATING_VIP)
    } else {
        (Front::Router, topology::VIP)
    };
    say!(
        "rusty_rail testbed, iteration {}: {} client{}, {}, {} LB node{} (rusty_rail), {} server{}",
        args.iteration,
        shape.clients,
        plural(shape.clients),
        if args.announce {
            "no router (the LB nodes announce the VIP)"
        } else {
            "a router (GRE, ECMP)"
        },
        shape.lbs,
        plural(shape.lbs),
        shape.servers,
        plural(shape.servers),
    );
    let started = Instant::now();
    let mut opts = Options::new(shape, bin_dir);
    opts.front = front;
    let mut bed = Testbed::up(opts)?;
    say!(
        "up in {:.1} s: namespaces {}-*, VIP {}:{}",
        started.elapsed().as_secs_f64(),
        bed.tag,
        vip,
        topology::HTTP_PORT
    );

    let mut loads = Vec::new();
    let mut left = args.requests;
    for i in 0..shape.clients {
        let share = left / (shape.clients - i) as u64;
        left -= share;
        if share == 0 {
            continue;
        }
        let ns = bed.ns(&topology::client_name(i));
        let mut argv = vec![
            bed.bin("rr-testbed"),
            "http-load".into(),
            "--target".into(),
            format!("{vip}:{}", topology::HTTP_PORT),
            "--requests".into(),
            share.to_string(),
            "--concurrency".into(),
            args.concurrency.to_string(),
            "--raw".into(),
        ];
        if !args.announce {
            argv.extend(["--source".into(), topology::client_c(i).to_string()]);
        }
        let name = format!("{}-load", topology::client_name(i));
        loads.push(bed.spawn(&name, &ns, &argv, &[])?);
    }
    // Bounded: each request may take http-load's 2 s timeout, C at a time.
    let per_client = args.requests.div_ceil(shape.clients as u64);
    let deadline =
        Instant::now() + Duration::from_secs(30 + 2 * per_client.div_ceil(args.concurrency));
    for &i in &loads {
        loop {
            if bed.procs[i].try_wait().is_some() {
                break;
            }
            if stopped() {
                bed.down();
                say!("interrupted; torn down");
                return Ok(false);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not finish in time", bed.procs[i].name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let mut total = Load::default();
    for &i in &loads {
        let out = bed.procs[i].stdout();
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| format!("{}: bad output {out:?}: {e}", bed.procs[i].name))?;
        total.add(&v);
    }
    // Per LB node: connections (SYNs) the router sent it, when there is a
    // router; else new flows in its connection tracking (a reused source
    // port counts once). And the frames it forwarded.
    let syns = if args.announce {
        None
    } else {
        Some(router_syns(&mut bed)?)
    };
    let mut per_lb = Vec::new();
    for n in 0..shape.lbs {
        let connections = match &syns {
            Some(syns) => syns[n],
            None => bed.metric(n, "rr_flow_table_misses_total")?,
        };
        per_lb.push((connections, bed.metric(n, "rr_tx_packets_total")?));
    }
    let ok = total.ok == args.requests && total.errors() == 0;
    say!("{}", report(shape, args, total, &per_lb).trim_end());

    if args.keep && !stopped() {
        say!(
            "\nkept up; poke with e.g.\n  ip netns exec {} curl -s http://{}/\n  ip netns exec {} curl -s http://{}:{}/metrics\nlogs in {}; Ctrl-C tears it down",
            bed.ns(&topology::client_name(0)),
            vip,
            bed.ns(&topology::lb_name(0)),
            topology::lb_v(0),
            topology::API_PORT,
            bed.dir.display()
        );
        while !stopped() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if !ok {
        // Failed requests: the hosts' logs are what tells why.
        bed.keep_dir = true;
        say!("logs kept in {}", bed.dir.display());
    }
    bed.down();
    say!("torn down");
    Ok(ok)
}

/// The SYNs the router sent each LB node so far (its SIGUSR1 counters).
fn router_syns(bed: &mut Testbed) -> Result<Vec<f64>, String> {
    let router = bed.proc("router");
    let before = router.stdout().lines().count();
    router.signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(2);
    let line = loop {
        // Only a whole line: the router may be writing it still.
        let out = router.stdout();
        if let Some(line) = out.split_inclusive('\n').nth(before)
            && line.ends_with('\n')
        {
            break line.to_string();
        }
        if Instant::now() > deadline {
            return Err("the router did not report its counters".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("router counters: {e}"))?;
    Ok((0..bed.shape().lbs)
        .map(|n| {
            v["lbs"][topology::lb_v(n).to_string()]["syns"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .collect())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The clients' results, summed.
#[derive(Default)]
struct Load {
    ok: u64,
    errors: BTreeMap<String, u64>,
    by_server: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    elapsed_s: f64,
}

impl Load {
    fn add(&mut self, v: &Value) {
        self.ok += v["ok"].as_u64().unwrap_or(0);
        if let Some(errors) = v["errors"].as_object() {
            for (k, n) in errors {
                *self.errors.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        if let Some(servers) = v["by_server"].as_object() {
            for (k, n) in servers {
                *self.by_server.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        if let Some(l) = v["latencies_us"].as_array() {
            self.latencies_us.extend(l.iter().filter_map(Value::as_u64));
        }
        // The clients ran at the same time: the slowest sets the pace.
        self.elapsed_s = self.elapsed_s.max(v["elapsed_s"].as_f64().unwrap_or(0.0));
    }

    fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Needs `latencies_us` sorted.
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1] as f64 / 1000.0
    }
}

fn report(shape: Shape, args: &Args, mut load: Load, per_lb: &[(f64, f64)]) -> String {
    let mut out = String::new();
    let rps = if load.elapsed_s > 0.0 {
        (load.ok + load.errors()) as f64 / load.elapsed_s
    } else {
        0.0
    };
    let errors = load.errors();
    let detail: Vec<String> = load
        .errors
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    load.latencies_us.sort_unstable();
    let p50 = load.percentile(50.0);
    let p99 = load.percentile(99.0);
    let _ = writeln!(
        out,
        "\n{} requests ({} at a time per client): {} ok, {} error{}{}, {:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms\n",
        args.requests,
        args.concurrency,
        load.ok,
        errors,
        plural(errors as usize),
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", detail.join(", "))
        },
        rps,
        p50,
        p99
    );
    let _ = writeln!(out, "  {:<10} {:>9} {:>7}", "server", "requests", "share");
    let served: u64 = load.by_server.values().sum();
    for j in 0..shape.servers {
        let name = topology::server_name(j);
        let n = load.by_server.get(&name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {name:<10} {n:>9} {:>6.1}%",
            pct(n as f64, served as f64)
        );
    }
    for (name, n) in &load.by_server {
        if !(0..shape.servers).any(|j| topology::server_name(j) == *name) {
            let _ = writeln!(out, "  {name:<10} {n:>9} (unexpected)");
        }
    }
    let total_conns: f64 = per_lb.iter().map(|f| f.0).sum();
    let _ = writeln!(
        out,
        "\n  {:<20} {:>9} {:>7} {:>12}",
        "LB node", "requests", "share", "packets out"
    );
    for (n, (c, tx)) in per_lb.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<20} {:>9} {:>6.1}% {:>12}",
            format!("{} {}", topology::lb_name(n), topology::lb_v(n)),
            c,
            pct(*c, total_conns),
            tx
        );
    }
    let _ = writeln!(
        out,
        "  {}",
        if args.announce {
            "(per LB node: new flows in its connection tracking; the standby has none)"
        } else {
            "(per LB node: connections the router's ECMP sent it; packets out: forwarded by rusty_rail)"
        }
    );
    out
}

fn pct(n: f64, total: f64) -> f64 {
    if total > 0.0 { 100.0 * n / total } else { 0.0 }
}
