//! `rr-testbed`: the userspace pieces of the end-to-end testbed.
//!
//! This kernel has no GRE devices, so the router's encapsulation and the
//! servers' decapsulation are small tools over TUN devices; real kernel TCP
//! stacks in network namespaces talk through them.
//!
//! ```text
//! rr-testbed gre-router   encapsulate what the kernel routes into a tun, ECMP over live LBs
//! rr-testbed gre-server   decapsulate GRE addressed to this host into a tun
//! rr-testbed http-server  answer GET with the server's name; /healthz; a byte-counting sink
//! rr-testbed http-load    N requests, each on a new connection, one JSON summary
//! ```
//!
//! Every tool prints `ready` on stderr once it serves, and on SIGTERM or
//! SIGINT prints one JSON line of counters on stdout and exits 0.

mod gre;
mod http;
mod run;
mod topology;

use serde_json::Value;
use std::error::Error;
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str = "\
usage: rr-testbed SUBCOMMAND [OPTIONS]

subcommands:
  run           the whole testbed: build it, serve HTTP through rusty_rail, report, tear down
  gre-router    encapsulate packets from a tun in GRE and spread them over live LBs
  gre-server    decapsulate GRE addressed to this host into a tun
  http-server   answer GET with the server's name; health endpoint; byte sink
  http-load     HTTP/1.0 load, one new connection per request, JSON summary

`rr-testbed SUBCOMMAND --help` describes each.";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let command = args.next().unwrap_or_default();
    match dispatch(&command.to_string_lossy(), args.collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rr-testbed {}: {e}", command.to_string_lossy());
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: &str, rest: Vec<OsString>) -> Result<()> {
    match command {
        "gre-router" => gre::router_main(rest),
        "gre-server" => gre::server_main(rest),
        "http-server" => http::server_main(rest),
        "http-load" => http::load_main(rest),
        "run" => {
            let rest: Vec<String> = rest
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            // Everything of the run is dropped (torn down) by now.
            std::process::exit(run::main(&rest))
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "" => Err("a subcommand is needed (try --help)".into()),
        other => Err(format!("unknown subcommand {other:?} (try --help)").into()),
    }
}

/// Set once the final line is out, so a signal racing a normal exit
/// cannot print a second one.
static PRINTED: AtomicBool = AtomicBool::new(false);

/// Prints the final counters line unless one was printed already.
pub fn print_final(counters: &Value) -> bool {
    if PRINTED.swap(true, Ordering::SeqCst) {
        return false;
    }
    println!("{counters}");
    true
}

/// Watches signals on a thread of its own: SIGTERM and SIGINT print
/// `counters()` and exit 0; any signal in `extra` goes to `other`.
/// Registered before the caller says `ready`, so no early signal is lost.
pub fn handle_signals(
    extra: &[libc::c_int],
    counters: impl Fn() -> Value + Send + 'static,
    other: impl Fn(libc::c_int) + Send + 'static,
) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut wanted = vec![SIGTERM, SIGINT];
    wanted.extend_from_slice(extra);
    let mut signals = signal_hook::iterator::Signals::new(&wanted)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGTERM || signal == SIGINT {
                    if print_final(&counters()) {
                        std::process::exit(0);
                    }
                    // The normal path printed already and is exiting.
                    return;
                }
                other(signal);
            }
        })?;
    Ok(())
}

/// Prints a subcommand's `--help` text on stdout and exits 0.
pub fn help(text: &str) -> ! {
    println!("{text}");
    std::process::exit(0)
}

/// Parses an option's value, naming the option in the error.
pub fn value<T>(parser: &mut lexopt::Parser, option: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let raw = parser.value()?;
    let text = raw.to_str().ok_or_else(|| format!("{option}: not UTF-8"))?;
    text.parse()
        .map_err(|e| format!("{option} {text:?}: {e}").into())
}
