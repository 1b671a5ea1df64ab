//! Prometheus text exposition (format 0.0.4) of the load balancer's
//! counters. A pure renderer: the caller copies the worker counters into a
//! [`Sample`], so nothing here touches the data path.

use std::fmt::Write as _;
use std::net::IpAddr;

/// One scrape's worth of numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Per receive queue; the index is the queue number.
    pub queues: Vec<Queue>,
    /// Frames passed to the host stack.
    pub to_host: u64,
    /// Frames the host stack sent out through us (netmap's host rings).
    pub from_host: u64,
    /// Dropped frames by reason label.
    pub dropped: Vec<(&'static str, u64)>,
    /// ICMP errors sent back (those packets are in `dropped` too).
    pub icmp_sent: u64,
    pub backends: Vec<BackendSample>,
    pub table_generation: u64,
    pub flow_hits: u64,
    pub flow_misses: u64,
    /// `None` when connection tracking is off.
    pub flow_entries: Option<u64>,
}

/// Frame counts of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queue {
    pub rx: u64,
    pub tx: u64,
}

/// One backend of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSample {
    /// `default` or the VIP's address.
    pub vip: String,
    pub backend: IpAddr,
    pub packets: u64,
    pub up: bool,
}

/// The Prometheus text for `s`: every family has its `# HELP` and `# TYPE`
/// lines even when it has no samples, so dashboards see it exists.
pub fn render(s: &Sample) -> String {
    let mut out = String::with_capacity(1024 + 160 * s.backends.len());
    let queues = || s.queues.iter().enumerate();

    family(
        &mut out,
        "rr_rx_packets_total",
        "counter",
        "Frames received, by queue.",
    );
    for (i, q) in queues() {
        sample(
            &mut out,
            "rr_rx_packets_total",
            &[("queue", &i.to_string())],
            q.rx,
        );
    }
    family(
        &mut out,
        "rr_tx_packets_total",
        "counter",
        "Frames transmitted, by queue.",
    );
    for (i, q) in queues() {
        sample(
            &mut out,
            "rr_tx_packets_total",
            &[("queue", &i.to_string())],
            q.tx,
        );
    }

    family(
        &mut out,
        "rr_to_host_packets_total",
        "counter",
        "Frames passed to the host network stack.",
    );
    sample(&mut out, "rr_to_host_packets_total", &[], s.to_host);
    family(
        &mut out,
        "rr_from_host_packets_total",
        "counter",
        "Frames from the host network stack sent out of the device (netmap).",
    );
    sample(&mut out, "rr_from_host_packets_total", &[], s.from_host);

    family(
        &mut out,
        "rr_dropped_packets_total",
        "counter",
        "Frames dropped, by reason.",
    );
    for (reason, n) in &s.dropped {
        sample(
            &mut out,
            "rr_dropped_packets_total",
            &[("reason", reason)],
            *n,
        );
    }
    family(
        &mut out,
        "rr_icmp_sent_total",
        "counter",
        "ICMP errors sent back for packets too big to encapsulate.",
    );
    sample(&mut out, "rr_icmp_sent_total", &[], s.icmp_sent);

    family(
        &mut out,
        "rr_backend_packets_total",
        "counter",
        "Frames forwarded to a backend.",
    );
    for b in &s.backends {
        let backend = b.backend.to_string();
        let labels = [("vip", b.vip.as_str()), ("backend", backend.as_str())];
        sample(&mut out, "rr_backend_packets_total", &labels, b.packets);
    }
    family(
        &mut out,
        "rr_backend_up",
        "gauge",
        "1 while the backend is in the table (up or drain, and healthy), else 0.",
    );
    for b in &s.backends {
        let backend = b.backend.to_string();
        let labels = [("vip", b.vip.as_str()), ("backend", backend.as_str())];
        sample(&mut out, "rr_backend_up", &labels, u64::from(b.up));
    }

    family(
        &mut out,
        "rr_table_generation",
        "gauge",
        "Generation of the Maglev tables in use.",
    );
    sample(&mut out, "rr_table_generation", &[], s.table_generation);

    family(
        &mut out,
        "rr_flow_table_hits_total",
        "counter",
        "Flow table lookups that found a flow.",
    );
    sample(&mut out, "rr_flow_table_hits_total", &[], s.flow_hits);
    family(
        &mut out,
        "rr_flow_table_misses_total",
        "counter",
        "Flow table lookups that found no flow, or one whose backend has left the table.",
    );
    sample(&mut out, "rr_flow_table_misses_total", &[], s.flow_misses);
    if let Some(entries) = s.flow_entries {
        family(
            &mut out,
            "rr_flow_table_entries",
            "gauge",
            "Live flows in the flow table, as of the last sweep (every 10 s).",
        );
        sample(&mut out, "rr_flow_table_entries", &[], entries);
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape exactly backslash, double quote and newline.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn small() -> Sample {
        Sample {
            queues: vec![Queue { rx: 10, tx: 7 }, Queue { rx: 3, tx: 0 }],
            to_host: 2,
            from_host: 8,
            dropped: vec![("no_service", 4), ("ttl", 1)],
            icmp_sent: 3,
            backends: vec![
                BackendSample {
                    vip: "default".into(),
                    backend: "10.1.0.1".parse().unwrap(),
                    packets: 9,
                    up: true,
                },
                BackendSample {
                    vip: "2001:db8::10".into(),
                    backend: "2001:db8::1".parse().unwrap(),
                    packets: 0,
                    up: false,
                },
            ],
            table_generation: 5,
            flow_hits: 100,
            flow_misses: 6,
            flow_entries: Some(42),
        }
    }

    #[test]
    fn renders_small_sample_exactly() {
        let expected = "\
# HELP rr_rx_packets_total Frames received, by queue.
# TYPE rr_rx_packets_total counter
rr_rx_packets_total{queue=\"0\"} 10
rr_rx_packets_total{queue=\"1\"} 3
# HELP rr_tx_packets_total Frames transmitted, by queue.
# TYPE rr_tx_packets_total counter
rr_tx_packets_total{queue=\"0\"} 7
rr_tx_packets_total{queue=\"1\"} 0
# HELP rr_to_host_packets_total Frames passed to the host network stack.
# TYPE rr_to_host_packets_total counter
rr_to_host_packets_total 2
# HELP rr_from_host_packets_total Frames from the host network stack sent out of the device (netmap).
# TYPE rr_from_host_packets_total counter
rr_from_host_packets_total 8
# HELP rr_dropped_packets_total Frames dropped, by reason.
# TYPE rr_dropped_packets_total counter
rr_dropped_packets_total{reason=\"no_service\"} 4
rr_dropped_packets_total{reason=\"ttl\"} 1
# HELP rr_icmp_sent_total ICMP errors sent back for packets too big to encapsulate.
# TYPE rr_icmp_sent_total counter
rr_icmp_sent_total 3
# HELP rr_backend_packets_total Frames forwarded to a backend.
# TYPE rr_backend_packets_total counter
rr_backend_packets_total{vip=\"default\",backend=\"10.1.0.1\"} 9
rr_backend_packets_total{vip=\"2001:db8::10\",backend=\"2001:db8::1\"} 0
# HELP rr_backend_up 1 while the backend is in the table (up or drain, and healthy), else 0.
# TYPE rr_backend_up gauge
rr_backend_up{vip=\"default\",backend=\"10.1.0.1\"} 1
rr_backend_up{vip=\"2001:db8::10\",backend=\"2001:db8::1\"} 0
# HELP rr_table_generation Generation of the Maglev tables in use.
# TYPE rr_table_generation gauge
rr_table_generation 5
# HELP rr_flow_table_hits_total Flow table lookups that found a flow.
# TYPE rr_flow_table_hits_total counter
rr_flow_table_hits_total 100
# HELP rr_flow_table_misses_total Flow table lookups that found no flow, or one whose backend has left the table.
# TYPE rr_flow_table_misses_total counter
rr_flow_table_misses_total 6
# HELP rr_flow_table_entries Live flows in the flow table, as of the last sweep (every 10 s).
# TYPE rr_flow_table_entries gauge
rr_flow_table_entries 42
";
        assert_eq!(render(&small()), expected);
    }

    #[test]
    fn escapes_backslash_quote_and_newline_in_label_values() {
        let s = Sample {
            dropped: vec![("a\\b\"c\nd", 1)],
            backends: vec![BackendSample {
                vip: "x\"\n\\".into(),
                backend: "10.0.0.1".parse().unwrap(),
                packets: 3,
                up: true,
            }],
            ..Sample::default()
        };
        let text = render(&s);
        assert!(text.contains("rr_dropped_packets_total{reason=\"a\\\\b\\\"c\\nd\"} 1\n"));
        assert!(text.contains("rr_backend_up{vip=\"x\\\"\\n\\\\\",backend=\"10.0.0.1\"} 1\n"));
        check_exposition(&text);
        let line = text
            .lines()
            .find(|l| l.starts_with("rr_backend_up{"))
            .unwrap();
        let (_, labels, _) = parse_sample(line);
        assert_eq!(labels[0], ("vip".to_string(), "x\"\n\\".to_string()));
    }

    #[test]
    fn empty_sample_keeps_help_and_type_and_omits_flow_entries() {
        let text = render(&Sample::default());
        for name in [
            "rr_rx_packets_total",
            "rr_dropped_packets_total",
            "rr_backend_packets_total",
            "rr_backend_up",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(
                !text.contains(&format!("\n{name}{{")),
                "{name} has a sample"
            );
        }
        assert!(!text.contains("rr_flow_table_entries"));
        assert!(text.contains("\nrr_flow_table_hits_total 0\n"));
        assert!(text.contains("\nrr_icmp_sent_total 0\n"));
        check_exposition(&text);
    }

    #[test]
    fn icmp_errors_sent_are_one_unlabelled_counter() {
        let text = render(&Sample {
            icmp_sent: 12,
            ..Sample::default()
        });
        assert!(text.contains(
            "# HELP rr_icmp_sent_total ICMP errors sent back for packets too big to encapsulate.\n\
             # TYPE rr_icmp_sent_total counter\n\
             rr_icmp_sent_total 12\n"
        ));
        check_exposition(&text);
    }

    #[test]
    fn every_line_is_a_comment_or_a_parseable_sample() {
        let families = check_exposition(&render(&small()));
        assert_eq!(families.len(), 12);
    }

    /// Checks the 0.0.4 grammar we emit: HELP then TYPE once per family,
    /// before its samples; samples are `name{k="v",...} value`. Returns
    /// the family names.
    fn check_exposition(text: &str) -> Vec<String> {
        assert!(text.ends_with('\n'));
        let mut helped = HashSet::new();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(valid_name(name) && !help.is_empty(), "{line}");
                assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert!(!typed.iter().any(|t| t == name), "TYPE twice: {line}");
                typed.push(name.to_string());
            } else {
                let (name, labels, value) = parse_sample(line);
                assert_eq!(
                    Some(&name),
                    typed.last(),
                    "sample outside its family: {line}"
                );
                for (key, _) in &labels {
                    assert!(valid_name(key) && !key.contains(':'), "{line}");
                }
                value.parse::<f64>().unwrap();
            }
        }
        typed
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Splits a sample line, unescaping label values; panics if malformed.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, String) {
        let end = line.find(['{', ' ']).unwrap();
        let name = &line[..end];
        assert!(valid_name(name), "{line}");
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                let (key, after) = inner.split_once("=\"").unwrap();
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next().unwrap() {
                        (_, '\\') => match chars.next().unwrap().1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                let after = &after[close + 1..];
                if let Some(next) = after.strip_prefix(',') {
                    inner = next;
                } else {
                    rest = after.strip_prefix('}').unwrap();
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').unwrap();
        assert!(!value.is_empty() && !value.contains(' '), "{line}");
        (name.to_string(), labels, value.to_string())
    }
}
