//! memroute's operational interfaces as the tests read them: the routing generation and the
//! per-backend counters of `stats`, and the admin HTTP listener (`/metrics` in Prometheus text
//! exposition, `/health`).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{num_stat, poll, text, Client, WAIT};

/// memroute's routing generation, from `stats`.
pub fn generation(c: &mut Client) -> u64 {
    num_stat(&c.stats_map(""), "generation")
}

/// Polls `stats` until `generation` passes `above`; returns it.
pub fn wait_generation(c: &mut Client, above: u64) -> u64 {
    poll(
        &format!("generation > {above}"),
        WAIT,
        || match generation(c) {
            g if g > above => Ok(g),
            g => Err(format!("generation {g}")),
        },
    )
}

/// `stats backends` value `<pool>:<addr>:<field>`.
pub fn backend_stat(map: &HashMap<String, String>, pool: &str, port: u16, field: &str) -> String {
    let name = format!("{pool}:127.0.0.1:{port}:{field}");
    map.get(&name)
        .unwrap_or_else(|| panic!("no {name} in stats backends: {map:?}"))
        .clone()
}

/// A numeric `stats backends` value `<pool>:<addr>:<field>`.
pub fn backend_num(map: &HashMap<String, String>, pool: &str, port: u16, field: &str) -> u64 {
    let v = backend_stat(map, pool, port, field);
    v.parse()
        .unwrap_or_else(|_| panic!("{pool}:{port}:{field} = {v:?} is not a number"))
}

/// `GET <path>` on the admin listener: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read admin response");
    let raw = text(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status_line = head.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("HTTP/1."),
        "status line {status_line:?}"
    );
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    if let Some(len) = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_string())
    }) {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length");
    }
    (code, body.to_string())
}

/// One Prometheus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses Prometheus text exposition (comments skipped; every other line must parse).
pub fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("metric value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels in {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("label {pair:?} in {line:?}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// `GET /metrics` on the admin listener on `admin`, parsed; asserts it is served.
pub fn scrape(admin: u16) -> Vec<Sample> {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    parse_metrics(&body)
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?} matches several series: {found:?}"
    );
    found.first().map(|s| s.value)
}

/// The sum of every sample named `name`.
pub fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}
