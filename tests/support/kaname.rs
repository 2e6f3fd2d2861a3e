//! The `kaname` binary under test, as a child process.
//!
//! Every listener and the admin port are bound by kaname itself on a port
//! the kernel picks (`listen: 127.0.0.1:0`); `--ready-file` tells the test
//! which ones. No port is chosen in advance, so tests running in parallel
//! never race for one.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::client::HttpClient;
use super::{proc_status_kib, read_lossy, send_signal, KANAME, READY_DEADLINE};

/// How often the ready file is looked at while waiting for it.
const READY_POLL: Duration = Duration::from_millis(10);

/// The addresses a running kaname is bound to, as its ready file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddrs {
    pub admin: SocketAddr,
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl BoundAddrs {
    /// `{"admin":"127.0.0.1:P","listeners":{"main":"127.0.0.1:Q",...}}`.
    fn parse(text: &str) -> Result<BoundAddrs, String> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text:?}"))?;
        let addr = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .ok_or_else(|| format!("not an address: {v} in {text:?}"))
        };
        let listeners = json["listeners"]
            .as_object()
            .ok_or_else(|| format!("no listeners object in {text:?}"))?
            .iter()
            .map(|(name, a)| Ok((name.clone(), addr(a)?)))
            .collect::<Result<_, String>>()?;
        Ok(BoundAddrs {
            admin: addr(&json["admin"])?,
            listeners,
        })
    }
}

/// The whole config file as `Kaname::spawn` writes it for `body`: an admin
/// port the kernel picks, then `log:` (unless `body` sets its own), then
/// `body`. A test rewriting the file for a reload writes this too, so the
/// admin port stays where it is.
pub fn config_file(body: &str) -> String {
    let log = if body.starts_with("log:") || body.contains("\nlog:") {
        ""
    } else {
        "log:\n  level: info\n  format: text\n"
    };
    format!("admin:\n  listen: 127.0.0.1:0\n{log}{body}")
}

/// A running `kaname` process, killed on drop. When the test panics its
/// stdout and stderr are printed.
pub struct Kaname {
    child: tokio::process::Child,
    pub pid: u32,
    pub config_path: PathBuf,
    /// `--ready-file`; None for `kaname demo`, which prints its ports.
    ready_path: Option<PathBuf>,
    /// What the ready file said when last read.
    addrs: Mutex<BoundAddrs>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Kaname {
    /// Writes `config_file(body)` (`body` is the YAML without `admin:`, and
    /// without `log:` unless it sets its own) to a file, starts
    /// `kaname run -c FILE --ready-file …` and waits until it is ready.
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
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("kaname.yaml");
        std::fs::write(&config_path, config_file(body)).expect("write config");
        // Not named like the config (the file watcher looks at that name only).
        let ready_path = dir.path().join("ready.json");
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
            .arg("--ready-file")
            .arg(&ready_path)
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
            config_path,
            ready_path: Some(ready_path),
            addrs: Mutex::new(BoundAddrs {
                admin: SocketAddr::from(([0, 0, 0, 0], 0)),
                listeners: BTreeMap::new(),
            }),
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
            config_path: PathBuf::new(),
            ready_path: None,
            addrs: Mutex::new(BoundAddrs {
                admin,
                listeners: BTreeMap::new(),
            }),
            stdout_path,
            stderr_path,
            _dir: dir,
        };
        (kaname, first)
    }

    /// Waits, at most `READY_DEADLINE`, until kaname is ready: its ready
    /// file exists (written once every listener is bound and the config
    /// loaded), then `GET /ready` answers 200. Panics with the logs if the
    /// process exits first or the deadline passes.
    pub async fn wait_ready(&mut self) {
        self.wait_ready_within(READY_DEADLINE).await;
    }

    /// `wait_ready` with another deadline (a config that takes long to load).
    pub async fn wait_ready_within(&mut self, deadline: Duration) {
        let Some(ready_path) = self.ready_path.clone() else {
            return self.poll_ready_endpoint(deadline).await;
        };
        let start = Instant::now();
        let text = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("kaname exited before ready with {status} (its logs follow)");
            }
            // Written whole under another name, then renamed: never half a file.
            if let Ok(text) = std::fs::read_to_string(&ready_path) {
                break text;
            }
            assert!(
                start.elapsed() < deadline,
                "kaname wrote no ready file within {deadline:?} (its logs follow)"
            );
            tokio::time::sleep(READY_POLL).await;
        };
        self.keep(&text);
        let ready = HttpClient::http1_no_pool()
            .try_get(&self.admin_url("/ready"), Duration::from_secs(5))
            .await;
        match ready {
            Ok(resp) if resp.status == 200 => {}
            other => {
                panic!("ready file written but GET /ready answered {other:?} (its logs follow)")
            }
        }
    }

    /// `kaname demo` has no ready file: polls `GET /ready` until 200.
    async fn poll_ready_endpoint(&mut self, deadline: Duration) {
        let client = HttpClient::http1_no_pool();
        let url = self.admin_url("/ready");
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < deadline {
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
        panic!("kaname not ready after {deadline:?} (last: {last}; its logs follow)");
    }

    fn keep(&self, text: &str) -> BoundAddrs {
        let addrs = BoundAddrs::parse(text).unwrap_or_else(|e| panic!("ready file: {e}"));
        *self.addrs.lock().expect("lock") = addrs.clone();
        addrs
    }

    fn read_ready_file(&self) -> Option<String> {
        let path = self
            .ready_path
            .as_ref()
            .expect("kaname demo has no ready file");
        std::fs::read_to_string(path).ok()
    }

    /// Reads the ready file again and keeps what it says: after a reload
    /// that moved a listener or the admin port. `POST /reload` answers only
    /// once the file is written, so call this after its answer.
    pub fn reload_addrs(&self) -> BoundAddrs {
        let text = self.read_ready_file().expect("ready file gone");
        self.keep(&text)
    }

    /// After a reload by SIGHUP or the file watcher that moves a listener
    /// or the admin port: waits (at most `READY_DEADLINE`) until the ready
    /// file says something else than when last read, and keeps it. A reload
    /// that moves nothing leaves the file as it was: wait for what the
    /// reload changes instead (an answer, a metric).
    pub async fn wait_addrs_change(&self) -> BoundAddrs {
        let before = self.addrs();
        let start = Instant::now();
        loop {
            if let Some(text) = self.read_ready_file() {
                if BoundAddrs::parse(&text).is_ok_and(|a| a != before) {
                    return self.keep(&text);
                }
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "the ready file still says {before:?} {READY_DEADLINE:?} later"
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The addresses as last read from the ready file.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs.lock().expect("lock").clone()
    }

    /// The admin port's address.
    pub fn admin(&self) -> SocketAddr {
        self.addrs.lock().expect("lock").admin
    }

    /// Listener `name`'s bound address.
    pub fn addr(&self, name: &str) -> SocketAddr {
        let addrs = self.addrs.lock().expect("lock");
        *addrs.listeners.get(name).unwrap_or_else(|| {
            panic!(
                "no listener {name:?} in the ready file (listeners: {:?})",
                addrs.listeners.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Listener `name`'s bound port.
    pub fn port(&self, name: &str) -> u16 {
        self.addr(name).port()
    }

    /// `http://ADDR{path}` on listener `name`.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin(), path)
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

    /// SIGKILL, and waits for the process to be gone: a crash at any moment.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
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
