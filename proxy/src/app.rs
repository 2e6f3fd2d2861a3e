//! The running sidecar: binds listeners and the admin port, swaps configs
//! on reload and drains on shutdown.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;
use arc_swap::{ArcSwap, ArcSwapOption};
use kaname_config::Config;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use crate::chain::Runtime;
use crate::drain::Drain;
use crate::listener::{accept_loop, ConnSettings, ListenerShared};
use crate::tls::server::ServerTls;
use crate::{EXIT_INVALID_CONFIG, EXIT_RUNTIME};

/// The addresses a running sidecar is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddrs {
    pub admin: SocketAddr,
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl BoundAddrs {
    /// `{"admin": "…", "listeners": {"name": "…"}}` (the ready file).
    pub fn to_json(&self) -> serde_json::Value {
        let listeners: serde_json::Map<String, serde_json::Value> = self
            .listeners
            .iter()
            .map(|(n, a)| (n.clone(), a.to_string().into()))
            .collect();
        serde_json::json!({ "admin": self.admin.to_string(), "listeners": listeners })
    }
}

/// A bound listener and the switch that stops its accept loop.
struct BoundListener {
    /// `listen:` as configured (port 0 asks the kernel for one).
    addr: SocketAddr,
    /// The address actually bound.
    local: SocketAddr,
    shared: Arc<ListenerShared>,
    stop: watch::Sender<bool>,
}

pub struct App {
    pub file: String,
    pub metrics: Arc<Metrics>,
    pub runtime: ArcSwap<Runtime>,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    listeners: Mutex<HashMap<String, BoundListener>>,
    /// The admin port's accept loop, replaced when a reload moves it.
    admin: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// The admin port's bound address.
    admin_addr: std::sync::Mutex<SocketAddr>,
    /// `--ready-file`: the bound addresses are written here when ready
    /// and after each reload.
    ready_file: Option<PathBuf>,
    drain: Drain,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} (listener \"{name}\"): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Config(_) => ExitCode::from(EXIT_INVALID_CONFIG),
            StartError::Bind { .. } => ExitCode::from(EXIT_RUNTIME),
        }
    }
}

/// `kaname run`.
pub fn run_file(file: &str, ready_file: Option<PathBuf>) -> ExitCode {
    let config = match kaname_config::load(file) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    crate::logging::init(&config.log);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(async move {
        match App::start(file.to_owned(), config, ready_file).await {
            Ok(app) => app.run_until_signalled().await,
            // Said once, plainly: the log (on stderr too) would repeat it.
            Err(e) => {
                eprintln!("kaname: {e}");
                e.exit_code()
            }
        }
    })
}

/// The async runtime. `KANAME_WORKERS` sets its size; the default is one
/// worker per core. With 1 the runtime is tokio's current-thread scheduler:
/// one thread does everything, with no work-stealing or cross-thread
/// wake-ups, as a sidecar given one CPU (or a benchmark pinned to one core,
/// against single-threaded peers) wants.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers: Option<usize> = std::env::var("KANAME_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build()
}

impl App {
    /// Builds the config's chains, binds the admin port and every listener.
    pub async fn start(
        file: String,
        config: Config,
        ready_file: Option<PathBuf>,
    ) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let tls = build_tls(&config, &metrics).map_err(|e| StartError::Config(e.join("\n")))?;
        let runtime = Runtime::build(config.clone(), &metrics, None)
            .await
            .map_err(|e| StartError::Config(format!("{file}: {e}")))?;
        runtime.queues.activate(None, &metrics);
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: config.admin.listen,
                source,
            })?;
        let admin_addr = admin.local_addr().unwrap_or(config.admin.listen);
        metrics
            .config_last_reload_success_timestamp_seconds
            .set(crate::tls::files::unix_now());
        let app = Arc::new(App {
            file,
            metrics,
            runtime: ArcSwap::from_pointee(runtime),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            listeners: Mutex::new(HashMap::new()),
            admin: std::sync::Mutex::new(None),
            admin_addr: std::sync::Mutex::new(admin_addr),
            ready_file,
            drain: Drain::new(),
        });
        {
            let mut bound = app.listeners.lock().await;
            let rt = app.runtime.load_full();
            let fresh = Self::bind_new(&rt, &bound).await?;
            app.apply(&rt, &mut bound, fresh, tls);
        }
        app.serve_admin(admin);
        app.ready.store(true, Ordering::SeqCst);
        let addrs = app.addresses().await;
        tracing::info!(admin = %addrs.admin, listeners = %addrs.to_json(), "kaname ready");
        app.write_ready_file(&addrs);
        Ok(app)
    }

    /// The addresses bound now: the admin port and each listener.
    pub async fn addresses(&self) -> BoundAddrs {
        let listeners = self.listeners.lock().await;
        BoundAddrs {
            admin: self
                .admin_addr
                .lock()
                .map_or(self.runtime.load().config.admin.listen, |a| *a),
            listeners: listeners
                .iter()
                .map(|(name, b)| (name.clone(), b.local))
                .collect(),
        }
    }

    /// `--ready-file`: written whole to a temporary name, then renamed, so a
    /// reader never sees half a file.
    fn write_ready_file(&self, addrs: &BoundAddrs) {
        let Some(path) = &self.ready_file else { return };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, addrs.to_json().to_string())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the ready file");
        }
    }

    /// Serves the admin port on `listener`, in place of any earlier one
    /// (connections already open on the old port finish, as a reload's own
    /// `POST /reload` answer must).
    fn serve_admin(self: &Arc<Self>, listener: TcpListener) {
        let task = tokio::spawn(crate::admin::serve(listener, self.clone()));
        let old = match self.admin.lock() {
            Ok(mut slot) => slot.replace(task.abort_handle()),
            Err(_) => None,
        };
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Binds the listeners of `rt` that are not bound at their address yet.
    /// Nothing changes if one cannot be bound.
    async fn bind_new(
        rt: &Runtime,
        bound: &HashMap<String, BoundListener>,
    ) -> Result<HashMap<String, TcpListener>, StartError> {
        let mut fresh = HashMap::new();
        for l in &rt.config.listeners {
            if bound.get(&l.name).is_some_and(|b| b.addr == l.listen) {
                continue;
            }
            let tcp = TcpListener::bind(l.listen)
                .await
                .map_err(|source| StartError::Bind {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
            fresh.insert(l.name.clone(), tcp);
        }
        Ok(fresh)
    }

    /// Makes the bound listeners match `rt`: kept ones get the new routes,
    /// new and moved ones start accepting on `fresh` sockets, removed and
    /// moved-away ones stop accepting (their open connections finish).
    fn apply(
        &self,
        rt: &Runtime,
        bound: &mut HashMap<String, BoundListener>,
        mut fresh: HashMap<String, TcpListener>,
        mut tls: HashMap<String, Option<Arc<ServerTls>>>,
    ) {
        let stale: Vec<String> = bound
            .keys()
            .filter(|name| !rt.listeners.contains_key(*name) || fresh.contains_key(*name))
            .cloned()
            .collect();
        for name in stale {
            if let Some(b) = bound.remove(&name) {
                let _ = b.stop.send(true);
                b.shared.retire_connections();
                tracing::info!(listener = %name, addr = %b.local, "listener closed");
            }
        }
        for l in &rt.config.listeners {
            let Some(routes) = rt.listeners.get(&l.name) else {
                continue;
            };
            let listener_tls = tls.remove(&l.name).flatten();
            if let Some(b) = bound.get(&l.name) {
                b.shared.routes.store(routes.clone());
                b.shared.tls.store(listener_tls);
                if b.shared.conn.load().key != ConnSettings::key_of(l) {
                    b.shared
                        .conn
                        .store(Arc::new(ConnSettings::of(l, &self.metrics)));
                    b.shared.retire_connections();
                    tracing::info!(listener = %l.name, "listener settings changed; open connections retired");
                }
                continue;
            }
            let Some(tcp) = fresh.remove(&l.name) else {
                continue;
            };
            let shared = Arc::new(ListenerShared {
                routes: ArcSwap::new(routes.clone()),
                in_flight: self
                    .metrics
                    .requests_in_flight
                    .with_label_values(&[&l.name]),
                connections: self.metrics.connections_open.with_label_values(&[&l.name]),
                tls: ArcSwapOption::new(listener_tls),
                conn: ArcSwap::from_pointee(ConnSettings::of(l, &self.metrics)),
                fd_refused: self
                    .metrics
                    .limits_hit_total
                    .with_label_values(&["file_descriptors"]),
                stream_idle_hit: self
                    .metrics
                    .limits_hit_total
                    .with_label_values(&["stream_idle_timeout"]),
                epoch: watch::channel(0).0,
            });
            let (stop, stop_rx) = watch::channel(false);
            let local = tcp.local_addr().unwrap_or(l.listen);
            tokio::spawn(accept_loop(
                tcp,
                shared.clone(),
                self.drain.clone(),
                stop_rx,
            ));
            tracing::info!(listener = %l.name, addr = %local, "listening");
            bound.insert(
                l.name.clone(),
                BoundListener {
                    addr: l.listen,
                    local,
                    shared,
                    stop,
                },
            );
        }
    }

    /// Loads the file again; a valid file replaces the running config.
    pub async fn reload(self: &Arc<Self>) -> Result<String, Vec<String>> {
        let result = self.try_reload().await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(msg) => tracing::info!("{msg}"),
            Err(errors) => {
                for e in errors {
                    tracing::error!(error = %e, "config reload failed; the running config is kept");
                }
            }
        }
        result
    }

    async fn try_reload(self: &Arc<Self>) -> Result<String, Vec<String>> {
        // One reload at a time: the listener table lock is held throughout.
        let mut bound = self.listeners.lock().await;
        if self.draining.load(Ordering::SeqCst) {
            return Err(vec!["draining: reload refused".into()]);
        }
        let file = self.file.clone();
        let parsed = tokio::task::spawn_blocking(move || kaname_config::load(&file))
            .await
            .map_err(|e| vec![format!("reload task failed: {e}")])?;
        let config = Arc::new(parsed.map_err(|errs| {
            // config_depth / config_expansion refused the file (limits.md).
            if let Some(limit) = errs.limit() {
                self.metrics.limit_hit(limit.name());
            }
            errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        })?);
        // TLS files are loaded again, so a reload picks up changed files too.
        let tls = build_tls(&config, &self.metrics)?;
        let previous = self.runtime.load_full();
        let next = Runtime::build(config, &self.metrics, Some(&previous))
            .await
            .map_err(|e| vec![format!("{}: {e}", self.file)])?;
        let fresh = Self::bind_new(&next, &bound)
            .await
            .map_err(|e| vec![e.to_string()])?;
        let (old, new) = (&previous.config, &next.config);
        let admin = if old.admin.listen == new.admin.listen {
            None
        } else {
            let addr = new.admin.listen;
            Some(TcpListener::bind(addr).await.map_err(|e| {
                vec![format!(
                    "{}: cannot move the admin port to {addr}: {e}",
                    self.file
                )]
            })?)
        };
        let mut notes = String::new();
        if old.log.level != new.log.level {
            crate::logging::set_level(&new.log.level);
        }
        if old.log.format != new.log.format {
            notes.push_str("; log.format applies at the next start");
        }
        self.apply(&next, &mut bound, fresh, tls);
        if let Some(admin) = admin {
            let addr = admin.local_addr().unwrap_or(new.admin.listen);
            tracing::info!(admin = %addr, "admin port moved");
            if let Ok(mut a) = self.admin_addr.lock() {
                *a = addr;
            }
            self.serve_admin(admin);
        }
        let admin_listen = new.admin.listen;
        next.prune_gauges(&self.metrics);
        next.queues.activate(Some(&previous.queues), &self.metrics);
        self.runtime.store(Arc::new(next));
        self.metrics
            .config_last_reload_success_timestamp_seconds
            .set(crate::tls::files::unix_now());
        let addrs = BoundAddrs {
            admin: self.admin_addr.lock().map_or(admin_listen, |a| *a),
            listeners: bound.iter().map(|(n, b)| (n.clone(), b.local)).collect(),
        };
        drop(bound);
        self.write_ready_file(&addrs);
        Ok(format!("{}: config reloaded{notes}", self.file))
    }

    /// Serves until SIGTERM/SIGINT, reloading on SIGHUP; then drains.
    pub async fn run_until_signalled(self: Arc<Self>) -> ExitCode {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => {
                tracing::error!("cannot install signal handlers");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        // Reload when the file changes; the watcher lives as long as we serve.
        let _watcher = crate::watch::spawn(self.clone());
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => { let _ = self.reload().await; }
            }
        }
        self.shutdown().await;
        ExitCode::SUCCESS
    }

    /// `/ready` turns 503, listeners stop accepting, requests in flight get
    /// up to `shutdown_grace` to finish.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let grace = self.runtime.load().config.shutdown_grace;
        tracing::info!(?grace, "draining");
        for b in self.listeners.lock().await.values() {
            let _ = b.stop.send(true);
        }
        // Deliveries in flight finish within the same grace; no new one
        // starts, and the jobs not delivered stay stored.
        let queues = self.runtime.load().queues.clone();
        let requests = async {
            if tokio::time::timeout(grace, self.drain.drain())
                .await
                .is_err()
            {
                tracing::warn!("shutdown grace elapsed with requests still in flight");
            }
        };
        tokio::join!(requests, queues.shutdown(grace));
        // The spans of the last requests, exported before the process goes.
        if let Some(t) = self.runtime.load().tracing.clone() {
            t.finish(std::time::Duration::from_secs(2)).await;
        }
        tracing::info!("stopped");
    }
}

/// Checks every TLS file of the config (with `kaname check`'s messages),
/// then loads each listener's TLS termination.
fn build_tls(
    config: &Config,
    metrics: &Metrics,
) -> Result<HashMap<String, Option<Arc<ServerTls>>>, Vec<String>> {
    let problems = crate::tls::files::check_report(config);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut out = HashMap::new();
    for l in &config.listeners {
        let tls =
            ServerTls::build(l, metrics).map_err(|e| vec![format!("{}: {e}", config.file)])?;
        out.insert(l.name.clone(), tls);
    }
    Ok(out)
}
