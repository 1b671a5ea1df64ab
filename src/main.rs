//! The `rusty_rail` binary: reads the `RR_*` environment, checks the
//! device, builds every Maglev table and forwards until SIGINT, SIGTERM or
//! SIGHUP. Every line it logs is one JSON object, fatal errors included.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use rusty_rail::config::{self, Config};
use rusty_rail::control::services::Services;
use rusty_rail::dataplane::Tables;
use rusty_rail::{control, io, maglev};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const USAGE: &str = "\
rusty_rail: a Maglev-style L4 load balancer

Usage: rusty_rail [--help | --version]

Options:
  -h, --help     print this help and exit
  -V, --version  print the version and exit
";

/// How `run` ends when it does not forward: the process exit code and,
/// for configuration mistakes, the one line to print.
enum Failure {
    /// A configuration mistake: logged as a fatal error, exit 2.
    Config(String),
    /// The forwarder could not start: logged as a fatal error, with this
    /// exit status.
    Start(String, u8),
}

fn main() -> ExitCode {
    match command_line() {
        Ok(Some(text)) => {
            // A closed stdout (e.g. `| head -0`) is no reason to panic.
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(None) => {}
        Err(line) => {
            fatal(&line);
            return ExitCode::from(2);
        }
    }
    init_logging();
    // A panic is fatal too: it says so in a JSON line and aborts, in every
    // build, so no worker dies alone (the next start removes announced
    // addresses). Not the profile's `panic = "abort"`: netmap_sys is also
    // built as a dylib, which that setting cannot build.
    std::panic::set_hook(Box::new(|info| {
        fatal(&format!("panic: {info}"));
        std::process::abort();
    }));
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Config(line)) => {
            fatal(&line);
            ExitCode::from(2)
        }
        Err(Failure::Start(line, code)) => {
            fatal(&line);
            ExitCode::from(code)
        }
    }
}

/// One log line: `{"ts":"…","level":"INFO","msg":"…"}`, plus
/// `"fatal":true` for the error that ends the process.
fn json_line(level: log::Level, msg: &str, fatal: bool) -> String {
    let ts = format!("{:.3}", jiff::Timestamp::now());
    let mut line = serde_json::json!({"ts": ts, "level": level.as_str(), "msg": msg});
    if fatal {
        line["fatal"] = serde_json::Value::Bool(true);
    }
    line.to_string()
}

fn fatal(msg: &str) {
    // A closed stderr leaves nothing else to tell.
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}",
        json_line(log::Level::Error, msg, true)
    );
}

/// `Ok(Some(text))` for `--help`/`--version` (print it, exit 0),
/// `Ok(None)` to go on, `Err(line)` for an unknown argument.
fn command_line() -> Result<Option<String>, String> {
    if let Some(arg) = std::env::args_os().nth(1) {
        let arg = arg.to_string_lossy();
        return match arg.as_ref() {
            "-h" | "--help" => Ok(Some(format!("{USAGE}\n{}", config::HELP))),
            "-V" | "--version" => Ok(Some(format!("rusty_rail {}\n", env!("CARGO_PKG_VERSION")))),
            other => Err(format!("unknown argument {other:?} (try --help)")),
        };
    }
    Ok(None)
}

/// JSON lines on stderr; `info` unless `RUST_LOG` says otherwise.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .format(|buf, record| {
            let msg = record.args().to_string();
            writeln!(buf, "{}", json_line(record.level(), &msg, false))
        })
        .init();
}

fn run() -> Result<u8, Failure> {
    let config = Config::from_env().map_err(|e| Failure::Config(e.to_string()))?;
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    if io::device_index(&config.device).is_none() {
        return Err(Failure::Config(format!(
            "RR_DEVICE={:?}: no such network device",
            config.device
        )));
    }

    let (services, tables) = control::tables(&config)
        .map_err(|e| Failure::Config(format!("cannot build the Maglev tables: {e}")))?;
    for service in tables.services() {
        let name = service.name();
        let families = [("IPv4", service.v4()), ("IPv6", service.v6())];
        for (family, table) in families.iter().filter(|(_, t)| !t.backends().is_empty()) {
            log::info!("backend set {name} ({family}): {}", describe(table));
        }
        if families.iter().all(|(_, t)| t.backends().is_empty()) {
            log::info!("backend set {name}: no backends, its traffic is dropped");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::Start(format!("cannot handle signal {signal}: {e}"), 1))?;
    }
    forward(&config, services, tables, &stop)
}

/// Forwards until `stop`.
#[cfg(any(feature = "xdp", feature = "netmap"))]
fn forward(
    config: &Config,
    services: Services,
    tables: Tables,
    stop: &AtomicBool,
) -> Result<u8, Failure> {
    control::forwarder::run(config, services, tables, stop)
        .map_err(|e| Failure::Start(e.to_string(), e.exit_code()))
}

/// A build with neither backend feature has no data path.
#[cfg(not(any(feature = "xdp", feature = "netmap")))]
fn forward(
    _config: &Config,
    _services: Services,
    _tables: Tables,
    _stop: &AtomicBool,
) -> Result<u8, Failure> {
    Err(Failure::Start(
        "this build has no data path: build with --features xdp (Linux) or netmap".to_string(),
        1,
    ))
}

/// e.g. `2 backends in 65537 slots: 10.1.0.1 (weight 1) 32768 slots, ...`.
fn describe(table: &maglev::Table) -> String {
    let backends = table.backends();
    let plural = if backends.len() == 1 { "" } else { "s" };
    let mut line = format!(
        "{} backend{plural} in {} slots",
        backends.len(),
        table.size()
    );
    for (i, (backend, slots)) in backends.iter().zip(table.slot_counts()).enumerate() {
        let sep = if i == 0 { ": " } else { ", " };
        // Writing to a String cannot fail.
        let _ = write!(
            line,
            "{sep}{} (weight {}) {slots} slots",
            backend.addr, backend.weight
        );
    }
    line
}
