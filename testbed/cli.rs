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

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Exit status 2 and exactly one stderr line, starting `rusty_rail: ` and
/// containing every `needle`.
fn assert_config_error(env: &[(&str, &str)], needles: &[&str]) {
    let out = run(&[], env);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{env:?}: {lines:?}");
    assert_eq!(lines.len(), 1, "{env:?}: {lines:?}");
    assert!(lines[0].starts_with("rusty_rail: "), "{lines:?}");
    for n in needles {
        assert!(lines[0].contains(n), "{env:?}: {:?} lacks {n:?}", lines[0]);
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
    assert_eq!(
        stderr_lines(&out),
        ["rusty_rail: unknown argument \"--bogus\" (try --help)"]
    );
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

#[test]
fn valid_configuration_without_privileges_builds_tables_then_fails_in_one_line() {
    let out = run_unprivileged(&[
        ("RR_DEVICE", "lo"),
        ("RR_TARGET_IPS", "10.1.0.1;10.1.0.2"),
        ("RR_HASH_KEY", KEY),
    ]);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("backend set default (IPv4): 2 backends in 65537 slots")),
        "{lines:?}"
    );
    let last = lines.last().expect("an error line");
    assert!(
        last.starts_with("rusty_rail: missing privileges: rusty_rail needs root, or CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("WARN")),
        "no warning expected with a key set: {lines:?}"
    );
}

#[test]
fn default_hash_key_is_warned_about() {
    let out = run_unprivileged(&[("RR_DEVICE", "lo"), ("RR_TARGET_IPS", "10.1.0.1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("WARN") && l.contains("RR_HASH_KEY")),
        "{err}"
    );
}
