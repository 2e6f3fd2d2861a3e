//! Shared helpers for the end-to-end tests: the real `kaname` binary (in
//! `kaname`: every port it binds is picked by the kernel and read back from
//! its ready file), real upstream servers (in `upstream`), HTTP clients (in
//! `client`), `/metrics` (in `metrics`) and sockets (in `net`).
//!
//! Every wait here is bounded, and waits for the event itself: a file, an
//! answer, a sample.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod grpc;
pub mod h2_frames;
pub mod jobs;
pub mod jwt;
pub mod kaname;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod otlp;
pub mod redis;
pub mod request_model;
pub mod resilience;
pub mod schema;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use client::{empty, full, HttpClient, TestResponse};
pub use kaname::{config_file, BoundAddrs, Kaname};
pub use metrics::{
    eventually, limit_hits, metric, metric_value, metrics, metrics_with_token, poll_metric,
    wait_metric, wait_metric_at_least, METRIC_DEADLINE,
};
pub use net::{accept_each, bind_loopback, ClosedPort};
pub use upstream::{sized_body, Recorded, TestUpstream, WsEchoServer};

/// The kaname binary under test.
pub const KANAME: &str = env!("CARGO_BIN_EXE_kaname");

/// How long kaname may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);

/// `[127.0.0.1:1, 127.0.0.1:2]`, for an `endpoints:` list.
pub fn endpoints_yaml(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("[{}]", list.join(", "))
}

/// One listener `main` on a port the kernel picks, with one catch-all route
/// to upstream `echo` at `endpoints`.
pub fn simple_config(endpoints: &[SocketAddr]) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    protocol: auto
    routes:
      - match: {{ path_prefix: / }}
        upstream: echo
upstreams:
  echo:
    endpoints: {}
",
        endpoints_yaml(endpoints)
    )
}

/// Listener `main` on a port the kernel picks (`listener_extra` under it,
/// each line indented by four spaces), one catch-all route to upstream `up`
/// at `upstream` (`upstream_extra` under it).
pub fn one_route_config(
    upstream: SocketAddr,
    listener_extra: &str,
    upstream_extra: &str,
) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
{listener_extra}    routes:
      - match: {{ path_prefix: / }}
        upstream: up
upstreams:
  up:
    endpoints: [{upstream}]
{upstream_extra}"
    )
}

/// Three echo servers named a, b and c.
pub async fn three_upstreams() -> Vec<TestUpstream> {
    vec![
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    ]
}

/// `simple_config` over `ups` with `load_balancing: lb`.
pub fn balanced_config(ups: &[TestUpstream], lb: &str) -> String {
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    format!("{}    load_balancing: {lb}\n", simple_config(&addrs))
}

/// Sends `n` sequential GETs; returns the `x-upstream` of each answer.
pub async fn sequential_gets(port: u16, n: usize) -> Vec<String> {
    let client = HttpClient::http1();
    let mut served = Vec::with_capacity(n);
    for i in 0..n {
        let resp = client.get(&format!("http://127.0.0.1:{port}/lb/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {:?}", resp.text());
        served.push(resp.header("x-upstream").expect("x-upstream").to_string());
    }
    served
}

/// `kill -SIG PID`.
pub fn send_signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// A `kB` field of `/proc/PID/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
