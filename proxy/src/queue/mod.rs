//! The asynchronous hand-off (async.md): routes with `queue:` store the
//! request and answer 202 ([`accept`]); each queue's dispatcher delivers
//! its jobs to their upstream later ([`deliver`]); `/.kaname/jobs/<id>`
//! reads and cancels them ([`api`]).
//!
//! A queue keeps its jobs in the embedded store ([`local`], one per
//! process, opened when a queue first needs it) or, with `store: <name>`,
//! on a `stores:` entry that sidecars share ([`streams`]).
//!
//! What outlives a reload is in [`QueueShared`]: the embedded store, the forwarders jobs are delivered through (swapped on
//! reload) and each queue's count of deliveries in flight. A queue whose
//! config is unchanged keeps its dispatcher; a changed one gets a new
//! dispatcher (its deliveries in flight finish, counted against the new
//! `concurrency`); a removed one stops, its jobs kept in the store.

pub mod accept;
pub mod api;
pub mod callback;
pub mod deliver;
pub mod job;
pub mod local;
pub mod store;
pub mod streams;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use kaname_config::queue::{Queue, QueueStore};
use kaname_config::Config;
use prometheus::IntCounter;
use tokio::sync::{watch, Notify};

use crate::forward::{AttemptMetrics, Forward};
use crate::metrics::Metrics;
use crate::store::{RedisStore, StoreSet};
use crate::upstream::Upstream;
use store::JobStore;

/// How often finished jobs past `keep_finished` are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A queue's deliveries in flight, counted across reloads.
#[derive(Default)]
pub struct InFlight {
    n: AtomicUsize,
    changed: Notify,
}

impl InFlight {
    pub fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }
}

/// Held by one delivery; its end is counted on drop.
pub struct DeliverySlot(Arc<InFlight>);

impl Drop for DeliverySlot {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// The embedded store, once a queue on it exists.
type LocalSlot = Arc<Mutex<Option<Arc<dyn JobStore>>>>;

pub struct QueueShared {
    pub data_dir: String,
    local: LocalSlot,
    /// Each upstream's forwarder, as the running config has it.
    pub targets: ArcSwap<HashMap<String, Forward>>,
    in_flight: Mutex<HashMap<String, Arc<InFlight>>>,
    pub callbacks: callback::CallbackClient,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for QueueShared {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl QueueShared {
    fn open(data_dir: &str) -> Result<Arc<QueueShared>, String> {
        let local: LocalSlot = Arc::default();
        // Shared stores expire finished jobs themselves; the embedded one
        // is swept.
        let sweeping = local.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let store = sweeping.lock().ok().and_then(|l| l.clone());
                let Some(store) = store else { continue };
                if let Err(e) = store.expire(job::now_ms()).await {
                    tracing::warn!(error = %e, "removing expired jobs failed");
                }
            }
        });
        Ok(Arc::new(QueueShared {
            data_dir: data_dir.to_string(),
            local,
            targets: ArcSwap::from_pointee(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            callbacks: callback::CallbackClient::new()?,
            sweeper,
        }))
    }

    /// The embedded store, opened (in `data_dir`) on first use: sidecars
    /// whose queues are all shared write nothing to disk.
    fn local(&self) -> Result<Arc<dyn JobStore>, String> {
        let mut slot = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let store: Arc<dyn JobStore> = Arc::new(
            local::LocalStore::open(Path::new(&self.data_dir)).map_err(|e| e.to_string())?,
        );
        *slot = Some(store.clone());
        Ok(store)
    }

    fn in_flight(&self, queue: &str) -> Arc<InFlight> {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(queue.to_string()).or_default().clone()
    }

    /// Waits until no delivery of any queue is in flight, within `grace`.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all: Vec<Arc<InFlight>> = self
            .in_flight
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let wait = async {
            for f in all {
                loop {
                    let changed = f.changed.notified();
                    if f.get() == 0 {
                        break;
                    }
                    changed.await;
                }
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }
}

/// A queue's counters, resolved once.
pub struct QueueCounters {
    pub accepted: IntCounter,
    pub duplicate: IntCounter,
    pub rejected_full: IntCounter,
    pub done: IntCounter,
    pub failed: IntCounter,
    pub cancelled: IntCounter,
    pub callback_success: IntCounter,
    pub callback_failure: IntCounter,
}

impl QueueCounters {
    fn new(m: &Metrics, queue: &str) -> Self {
        let jobs = |r: &str| m.jobs_total.with_label_values(&[queue, r]);
        let cb = |r: &str| m.job_callbacks_total.with_label_values(&[queue, r]);
        QueueCounters {
            accepted: jobs("accepted"),
            duplicate: jobs("duplicate"),
            rejected_full: jobs("rejected_full"),
            done: jobs("done"),
            failed: jobs("failed"),
            cancelled: jobs("cancelled"),
            callback_success: cb("success"),
            callback_failure: cb("failure"),
        }
    }
}

/// One queue of the running config.
pub struct QueueRuntime {
    pub config: Queue,
    pub shared: Arc<QueueShared>,
    /// Where this queue's jobs are.
    pub store: Arc<dyn JobStore>,
    /// The shared store under `store`, if any: a reload that rebuilds it
    /// rebuilds the queue.
    backing: Option<Arc<RedisStore>>,
    /// Told of every accepted job, so an idle dispatcher looks at once.
    pub wake: Arc<Notify>,
    pub counters: Arc<QueueCounters>,
    stop: watch::Sender<bool>,
}

impl QueueRuntime {
    /// The finished job to its caller's callback URL, when it named one.
    pub fn call_back(&self, id: job::JobId, job: &job::Job) {
        call_back(&self.shared, &self.config, &self.counters, id, job);
    }

    fn new(
        q: &Queue,
        shared: &Arc<QueueShared>,
        (store, backing): (Arc<dyn JobStore>, Option<Arc<RedisStore>>),
        metrics: &Metrics,
    ) -> QueueRuntime {
        QueueRuntime {
            config: q.clone(),
            shared: shared.clone(),
            store,
            backing,
            wake: Arc::new(Notify::new()),
            counters: Arc::new(QueueCounters::new(metrics, &q.name)),
            stop: watch::channel(false).0,
        }
    }

    /// No new delivery starts; those in flight finish.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for QueueRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The queues of one loaded config.
#[derive(Default)]
pub struct QueueSet {
    pub shared: Option<Arc<QueueShared>>,
    pub queues: HashMap<String, Arc<QueueRuntime>>,
    /// Each upstream's forwarder, for the deliveries (given to `shared`
    /// when this set becomes the running one).
    targets: Arc<HashMap<String, Forward>>,
}

impl QueueSet {
    /// The queues of `cfg`, reusing from `previous` the store and every
    /// queue whose config did not change. Nothing runs until [`activate`].
    ///
    /// [`activate`]: QueueSet::activate
    pub fn build(
        cfg: &Config,
        previous: Option<&QueueSet>,
        upstreams: &HashMap<String, Arc<Upstream>>,
        stores: &StoreSet,
        metrics: &Arc<Metrics>,
    ) -> Result<QueueSet, String> {
        let needs_local = cfg.queues.iter().any(|q| q.store == QueueStore::Local);
        let old_shared = previous.and_then(|p| p.shared.clone());
        let shared = match old_shared {
            Some(s) if s.data_dir == cfg.data_dir => Some(s),
            Some(s) if needs_local => {
                return Err(format!(
                    "data_dir changed from {:?} to {:?}: the job store moves only with a restart",
                    s.data_dir, cfg.data_dir
                ))
            }
            Some(s) => Some(s),
            None if cfg.queues.is_empty() => None,
            None => Some(QueueShared::open(&cfg.data_dir)?),
        };
        let Some(shared) = shared else {
            return Ok(QueueSet::default());
        };
        let targets: HashMap<String, Forward> = upstreams
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    Forward::new(u.clone(), AttemptMetrics::new(metrics, name)),
                )
            })
            .collect();
        let mut queues = HashMap::new();
        for q in &cfg.queues {
            let backing = match &q.store {
                QueueStore::Local => None,
                QueueStore::Shared(name) => Some(
                    stores
                        .get(name)
                        .cloned()
                        .ok_or_else(|| format!("queue {:?}: no store named {name:?}", q.name))?,
                ),
            };
            let same_backing = |old: &QueueRuntime| match (&old.backing, &backing) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            let kept = previous
                .and_then(|p| p.queues.get(&q.name))
                .filter(|old| old.config == *q && same_backing(old))
                .cloned();
            let runtime = match kept {
                Some(r) => r,
                None => {
                    let store: Arc<dyn JobStore> = match &backing {
                        None => shared.local()?,
                        Some(b) => Arc::new(streams::StreamStore::new(b.clone(), q)),
                    };
                    Arc::new(QueueRuntime::new(q, &shared, (store, backing), metrics))
                }
            };
            queues.insert(q.name.clone(), runtime);
        }
        Ok(QueueSet {
            shared: Some(shared),
            queues,
            targets: Arc::new(targets),
        })
    }

    /// This set is now the running one: deliveries go through its
    /// upstreams, its new queues start, and the queues of `previous` it
    /// replaced or removed stop taking jobs.
    pub fn activate(&self, previous: Option<&QueueSet>, metrics: &Arc<Metrics>) {
        let Some(shared) = &self.shared else { return };
        shared.targets.store(self.targets.clone());
        let kept = |r: &Arc<QueueRuntime>| self.queues.values().any(|q| Arc::ptr_eq(q, r));
        if let Some(p) = previous {
            for old in p.queues.values().filter(|r| !kept(r)) {
                old.stop();
            }
        }
        let was = |r: &Arc<QueueRuntime>| {
            previous.is_some_and(|p| p.queues.values().any(|q| Arc::ptr_eq(q, r)))
        };
        for r in self.queues.values().filter(|r| !was(r)) {
            tokio::spawn(deliver::dispatch(
                deliver::Dispatcher {
                    queue: Arc::new(r.config.clone()),
                    shared: shared.clone(),
                    store: r.store.clone(),
                    wake: r.wake.clone(),
                    counters: r.counters.clone(),
                    in_flight: shared.in_flight(&r.config.name),
                    metrics: metrics.clone(),
                },
                r.stop.subscribe(),
            ));
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<QueueRuntime>> {
        self.queues.get(name)
    }

    /// SIGTERM: no new delivery starts; those in flight get `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        for q in self.queues.values() {
            q.stop();
        }
        if let Some(s) = &self.shared {
            if !s.drain(grace).await {
                tracing::warn!("deliveries still in flight at the end of shutdown_grace; they will be delivered again after a restart");
            }
        }
    }
}

/// The finished `job` to its caller's callback URL, when it named one.
fn call_back(
    shared: &QueueShared,
    q: &Queue,
    counters: &QueueCounters,
    id: job::JobId,
    job: &job::Job,
) {
    if let (Some(cb), Some(url)) = (&q.callback, &job.callback) {
        shared.callbacks.send(
            cb,
            url.clone(),
            job.view(id).to_string(),
            counters.callback_success.clone(),
            counters.callback_failure.clone(),
        );
    }
}

/// A queue's settings in config words, for `kaname explain`.
pub fn describe(q: &Queue) -> String {
    use kaname_config::{duration_words, size_words};
    let d = &q.delivery;
    format!(
        "{{max_depth: {}, max_body_bytes: {}, delivery: {{concurrency: {}, attempts: {}, per_try_timeout: {}, backoff: {{base: {}, max: {}}}}}, keep_finished: {}, max_result_bytes: {}{}}}",
        q.max_depth,
        size_words(q.max_body_bytes),
        d.concurrency,
        d.attempts,
        duration_words(d.per_try_timeout),
        duration_words(d.backoff_base),
        duration_words(d.backoff_max),
        duration_words(q.keep_finished),
        size_words(q.max_result_bytes),
        match &q.callback {
            Some(c) => format!(", callback: {{header: {}, allowed_hosts: [{}], secret: \"<redacted>\"}}", c.header, c.allowed_hosts.join(", ")),
            None => String::new(),
        }
    )
}
