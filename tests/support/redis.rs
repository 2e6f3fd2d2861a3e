//! A real `redis-server` (Debian's package; `.ci/run` installs it) on a
//! loopback port, for the shared-store tests: started, killed and started
//! again on the same port, as a Redis that goes away and comes back.
//!
//! Redis binds the port it is told (port 0 would mean no TCP at all), so a
//! random port is tried and another taken when Redis says it is in use.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// TLS only (`--tls-port`): certificate, key and CA files.
    tls: Option<[PathBuf; 3]>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with_password(None)
    }

    /// With `requirepass`: clients must AUTH (the URL's password).
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        for _ in 0..50 {
            let mut server = RedisServer {
                port: 20_000 + (rand::random::<u16>() % 40_000),
                password: password.map(str::to_owned),
                tls: None,
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("no free port for redis-server in 50 tries");
    }

    /// TLS only, with this certificate and key (PEM); `ca` is written
    /// beside them for clients (`ca_path`).
    pub fn start_tls(cert_pem: &str, key_pem: &str, ca_pem: &str) -> RedisServer {
        for _ in 0..50 {
            let dir = tempfile::tempdir().expect("tempdir");
            let files = ["redis.crt", "redis.key", "ca.crt"].map(|n| dir.path().join(n));
            for (path, text) in files.iter().zip([cert_pem, key_pem, ca_pem]) {
                std::fs::write(path, text).expect("write TLS file");
            }
            let mut server = RedisServer {
                port: 20_000 + (rand::random::<u16>() % 40_000),
                password: None,
                tls: Some(files),
                dir,
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("no free port for redis-server in 50 tries");
    }

    /// The CA file of a TLS server.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts redis-server on `self.port`; false when the port is taken.
    fn spawn(&mut self) -> bool {
        let _ = std::fs::remove_file(self.log_path());
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some([cert, key, ca]) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server; .ci/run does)");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains("Ready to accept connections") {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                let _ = child.wait();
                assert!(
                    log.contains("Address already in use"),
                    "redis-server exited:\n{log}"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "redis-server not ready within 10s:\n{}",
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// SIGKILL, and waits until it is gone: the port refuses from now on.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (its data is gone: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        while !self.spawn() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "port {} stayed taken after redis-server was killed",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cli --tls` against a TLS server.
    pub fn cli_tls(&self, args: &[&str]) -> String {
        let ca = self.ca_path();
        let mut all = vec!["--tls", "--cacert"];
        let ca = ca.to_string_lossy().into_owned();
        all.push(&ca);
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// Runs `redis-cli ARGS` against this server; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
