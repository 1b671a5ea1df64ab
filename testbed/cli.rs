//! The `rusty_rail` binary as an operator meets it: `--help` and
//! `--version` with no environment, one-line errors with exit status 2 for
//! bad configuration, and a one-line error with status 1 without the
//! privileges to forward.

use std::process::{Command, Output};

const KEY: &str = "000102030405060708090a0b0c0d0e0f";

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rusty_rail"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// Runs the binary without any capability: as root through `setpriv` to
/// uid/gid 65534 with every capability dropped, otherwise as we are.
fn run_unprivileged(env: &[(&str, &str)]) -> Output {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_rusty_rail"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_rusty_rail"))
    };
    cmd.env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// Every stderr line, each of which must be one JSON object with a
/// level and a message.
fn log_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v["level"].is_string() && v["msg"].is_string(), "{l}");
            v
        })
        .collect()
}

/// The messages of the log lines at `level`.
fn messages(lines: &[serde_json::Value], level: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v["level"] == level)
        .map(|v| v["msg"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The last line must be the fatal error: its message.
fn fatal(lines: &[serde_json::Value]) -> String {
    let last = lines.last().expect("a fatal error line");
    assert_eq!(last["fatal"], true, "{lines:?}");
    assert_eq!(last["level"], "ERROR", "{lines:?}");
    last["msg"].as_str().unwrap_or_default().to_string()
}

/// Exit status 2 and exactly one stderr line, the fatal error, whose
/// message contains every `needle`.
fn assert_config_error(env: &[(&str, &str)], needles: &[&str]) {
    let out = run(&[], env);
    let lines = log_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{env:?}: {lines:?}");
    assert_eq!(lines.len(), 1, "{env:?}: {lines:?}");
    let msg = fatal(&lines);
    for n in needles {
        assert!(msg.contains(n), "{env:?}: {msg:?} lacks {n:?}");
    }
}

#[test]
fn help_and_version_work_with_no_environment() {
    let help = run(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for var in [
        "RR_DEVICE",
        "RR_TARGET_IPS",
        "RR_VIPS",
        "RR_HASH_KEY",
        "RR_TABLE_SIZE",
        "RR_VLAN",
    ] {
        assert!(text.contains(var), "--help lacks {var}");
    }
    let version = run(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("rusty_rail {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_argument_is_one_line_and_status_2() {
    let out = run(&["--bogus"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let lines = log_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(fatal(&lines), "unknown argument \"--bogus\" (try --help)");
}

#[test]
fn bad_configuration_is_one_line_naming_variable_and_value() {
    assert_config_error(&[], &["RR_DEVICE"]);
    assert_config_error(&[("RR_DEVICE", "lo")], &["RR_TARGET_IPS", "RR_VIPS"]);
    assert_config_error(
        &[("RR_DEVICE", "lo"), ("RR_TARGET_IPS", "10.1.0.1;x")],
        &["RR_TARGET_IPS=\"10.1.0.1;x\"", "\"x\""],
    );
    assert_config_error(
        &[
            ("RR_DEVICE", "lo"),
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_TABLE_SIZE", "65536"),
        ],
        &["RR_TABLE_SIZE=\"65536\"", "prime"],
    );
    assert_config_error(
        &[
            ("RR_DEVICE", "lo"),
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_HASH_KEY", "abc"),
        ],
        &["RR_HASH_KEY=\"abc\"", "32 hex digits"],
    );
    assert_config_error(
        &[
            ("RR_DEVICE", "lo"),
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_VLAN", "4095"),
        ],
        &["RR_VLAN=\"4095\""],
    );
    assert_config_error(
        &[
            ("RR_DEVICE", "lo"),
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_ANNOUNCE", "192.168.77.100/33"),
        ],
        &["RR_ANNOUNCE=\"192.168.77.100/33\"", "ADDR/PREFIX"],
    );
    assert_config_error(
        &[
            ("RR_DEVICE", "lo"),
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_ANNOUNCE", "192.168.77.100/24"),
            ("RR_WATCH", "flap"),
        ],
        &["RR_WATCH=\"flap\"", "standby"],
    );
}

#[test]
fn missing_device_is_named_with_status_2() {
    assert_config_error(
        &[
            ("RR_DEVICE", "rr-no-such-dev0"),
            ("RR_TARGET_IPS", "10.1.0.1"),
            ("RR_HASH_KEY", KEY),
        ],
        &["RR_DEVICE=\"rr-no-such-dev0\"", "no such network device"],
    );
}

/// The XDP backend's privilege check (netmap's is opening /dev/netmap).
#[cfg(feature = "xdp")]
#[test]
fn valid_configuration_without_privileges_builds_tables_then_fails_in_one_line() {
    let out = run_unprivileged(&[
        ("RR_DEVICE", "lo"),
        ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2"),
        ("RR_HASH_KEY", KEY),
    ]);
    let lines = log_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    assert!(
        messages(&lines, "INFO")
            .iter()
            .any(|l| l.contains("backend set default (IPv4): 2 backends in 65537 slots")),
        "{lines:?}"
    );
    assert!(
        fatal(&lines).starts_with(
            "missing privileges: rusty_rail needs root, or CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF"
        ),
        "{lines:?}"
    );
    assert!(
        messages(&lines, "WARN").is_empty(),
        "no warning expected with a key set: {lines:?}"
    );
}

#[test]
fn default_hash_key_is_warned_about() {
    let out = run_unprivileged(&[("RR_DEVICE", "lo"), ("RR_TARGET_IPS", "10.1.0.1")]);
    let lines = log_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    assert!(
        messages(&lines, "WARN")
            .iter()
            .any(|l| l.contains("RR_HASH_KEY")),
        "{lines:?}"
    );
}

/// `RR_BACKEND=netmap`: in a build with the feature, it gets as far as
/// opening /dev/netmap, which this machine lacks, and says so in one
/// line with status 1 (nothing left behind); without the feature it is a
/// configuration error naming the feature.
#[test]
fn netmap_backend_without_netmap_fails_in_one_line() {
    let env = [
        ("RR_DEVICE", "lo"),
        ("RR_TARGET_IPS", "127.0.0.1"),
        ("RR_HASH_KEY", KEY),
        ("RR_BACKEND", "netmap"),
        ("RR_API", "off"),
    ];
    if !cfg!(feature = "netmap") {
        assert_config_error(&env, &["RR_BACKEND", "--features netmap"]);
        return;
    }
    if std::path::Path::new("/dev/netmap").exists() {
        eprintln!("skipped: this host has /dev/netmap, so rusty_rail may start");
        return;
    }
    let out = run(&[], &env);
    let lines = log_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    let msg = fatal(&lines);
    assert!(
        msg.starts_with("cannot open /dev/netmap: No such file or directory"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}
