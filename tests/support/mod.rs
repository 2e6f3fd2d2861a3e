//! Shared helpers for the end-to-end tests: start the real `kaname` binary
//! on loopback ports, real upstream servers (in `upstream`) and HTTP clients
//! (in `client`).
//!
//! Every wait here is bounded: readiness is polled on the admin port with a
//! deadline, and every loop gives up after a fixed time.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod grpc;
pub mod h2_frames;
pub mod jwt;
pub mod limits;
pub mod request_model;
pub mod resilience;
pub mod tls;
pub mod upstream;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use client::{empty, full, HttpClient, TestResponse};
pub use upstream::{sized_body, Recorded, TestUpstream, WsEchoServer};

/// The kaname binary under test.
pub const KANAME: &str = env!("CARGO_BIN_EXE_kaname");

/// How long kaname may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read,
/// then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// `[127.0.0.1:1, 127.0.0.1:2]`, for an `endpoints:` list.
pub fn endpoints_yaml(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("[{}]", list.join(", "))
}

/// One listener `main` on `port` with one catch-all route to upstream
/// `echo` at `endpoints`.
pub fn simple_config(port: u16, endpoints: &[SocketAddr]) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:{port}
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

/// Three echo servers named a, b and c.
pub async fn three_upstreams() -> Vec<TestUpstream> {
    vec![
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    ]
}

/// `simple_config` over `ups` with `load_balancing: lb`.
pub fn balanced_config(port: u16, ups: &[TestUpstream], lb: &str) -> String {
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    format!("{}    load_balancing: {lb}\n", simple_config(port, &addrs))
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

/// A running `kaname` process, killed on drop. When the test panics its
/// stdout and stderr are printed.
pub struct Kaname {
    child: tokio::process::Child,
    pub pid: u32,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Kaname {
    /// Writes `body` (the YAML without `admin:`, and without `log:` unless
    /// it sets its own: both are added here) to a file, starts `kaname run -c FILE` and waits until the
    /// admin `/ready` answers 200.
    pub async fn start(body: &str) -> Kaname {
        Self::start_with_env(body, &[]).await
    }

    /// As `start`, with extra environment variables for the process.
    pub async fn start_with_env(body: &str, env: &[(&str, &str)]) -> Kaname {
        let mut kaname = Self::spawn(body, env);
        kaname.wait_ready().await;
        kaname
    }

    /// Starts `kaname run` without waiting for readiness.
    pub fn spawn(body: &str, env: &[(&str, &str)]) -> Kaname {
        Self::spawn_under(body, env, &[])
    }

    /// As `start`, with the process's open-file limit (soft and hard) set
    /// to `nofile` by util-linux `prlimit`.
    pub async fn start_with_nofile(body: &str, nofile: u64) -> Kaname {
        let limit = format!("--nofile={nofile}:{nofile}");
        let mut kaname = Self::spawn_under(body, &[], &["prlimit", &limit, "--"]);
        kaname.wait_ready().await;
        kaname
    }

    /// `kaname run`, run by `wrapper` (a command and its arguments) when given.
    fn spawn_under(body: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Kaname {
        let admin_port = free_port();
        // A body with its own top-level `log:` keeps it.
        let log = if body.starts_with("log:") || body.contains("\nlog:") {
            ""
        } else {
            "log:\n  level: info\n  format: text\n"
        };
        let yaml = format!("admin:\n  listen: 127.0.0.1:{admin_port}\n{log}{body}");
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("kaname.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let mut cmd = match wrapper.split_first() {
            None => tokio::process::Command::new(KANAME),
            Some((program, args)) => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).arg(KANAME);
                c
            }
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env_remove("KANAME_CONFIG")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&stderr_path).expect("create stderr file"))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn kaname");
        let pid = child.id().expect("child pid");
        Kaname {
            child,
            pid,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            config_path,
            stdout_path,
            stderr_path,
            _dir: dir,
        }
    }

    /// Starts `kaname demo` and reads the first line of its stdout (within
    /// `READY_DEADLINE`); the rest of stdout is copied to a file. The admin
    /// address is taken from that line; readiness is not waited for.
    pub async fn demo() -> (Kaname, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = tokio::process::Command::new(KANAME)
            .arg("demo")
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env_remove("KANAME_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).expect("create stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kaname demo");
        let pid = child.id().expect("child pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_DEADLINE, lines.next_line()).await;
        let first = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.start_kill();
                panic!(
                    "kaname demo printed no first line within {READY_DEADLINE:?} ({other:?}); stderr:\n{}",
                    read_lossy(&stderr_path)
                )
            }
        };
        let copy_path = stdout_path.clone();
        tokio::spawn(async move {
            let mut rest = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
                let _ = std::fs::write(&copy_path, &rest);
            }
        });
        let admin = first
            .split("admin on http://")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("no admin address in demo's first line {first:?}"));
        let kaname = Kaname {
            child,
            pid,
            admin,
            config_path: PathBuf::new(),
            stdout_path,
            stderr_path,
            _dir: dir,
        };
        (kaname, first)
    }

    /// Polls `GET /ready` until 200, for at most `READY_DEADLINE`. Panics
    /// with the logs if the process exits or the deadline passes.
    pub async fn wait_ready(&mut self) {
        let client = HttpClient::http1();
        let url = self.admin_url("/ready");
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_DEADLINE {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("kaname exited before ready with {status} (its logs follow)");
            }
            match client.try_get(&url, Duration::from_secs(1)).await {
                Ok(resp) if resp.status == 200 => return,
                Ok(resp) => last = format!("status {}", resp.status),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("kaname not ready after {READY_DEADLINE:?} (last: {last}; its logs follow)");
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// What the process wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// What the process wrote so far, stdout then stderr.
    pub fn logs(&self) -> String {
        format!(
            "[stdout]\n{}\n[stderr]\n{}",
            read_lossy(&self.stdout_path),
            self.stderr()
        )
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        send_signal(self.pid, "TERM");
    }

    /// Waits for the process to exit, at most `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.expect("wait for kaname"),
            Err(_) => panic!("kaname still running {deadline:?} later (its logs follow)"),
        }
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// Peak resident memory (since start or the last `reset_peak_rss`), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmHWM")
    }

    /// Resets the peak RSS counter (`VmHWM`); false when the kernel refused.
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }
}

impl Drop for Kaname {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- kaname (pid {}) logs ----\n{}\n---- end of kaname logs ----",
                self.pid,
                self.logs()
            );
        }
        let _ = self.child.start_kill();
    }
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

/// The value of the sample `selector` (`name` or `name{a="x",b="y"}`) in
/// Prometheus text, whatever the order of the labels; None when no sample
/// has exactly these labels.
pub fn metric_value(text: &str, selector: &str) -> Option<f64> {
    let (name, want) = match selector.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
        None => (selector, Vec::new()),
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (got, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((inner, value)) = inner.split_once('}') else {
                continue;
            };
            (parse_labels(inner), value)
        } else if rest.starts_with(' ') {
            (Vec::new(), rest)
        } else {
            continue; // a longer name sharing this prefix
        };
        if got == want {
            return value.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn parse_labels(inner: &str) -> Vec<(String, String)> {
    // Label values in these tests never hold `"` or `,`.
    let mut out: Vec<(String, String)> = inner
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    out.sort();
    out
}
