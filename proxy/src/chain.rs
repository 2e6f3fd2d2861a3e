//! From a validated config to the stacks requests flow through: one
//! upstream pool per upstream, one built filter per filter (its state
//! shared by the routes naming it), and per listener one stack of layers —
//! the listener's steps around a router, the router over each route's
//! stack — assembled here, in the one order `pipeline::listener_steps` and
//! `pipeline::route_steps` state. On reload, upstreams, filters and metric
//! handles whose config did not change are carried over, so their state
//! survives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use kaname_config::{Config, Filter, Listener, Upstream as UpstreamConfig};
use kaname_filters::concurrency_limit::RoutePriorityLayer;
use kaname_filters::{BuiltFilter, RouteInfo, RouteLayer, RouteService};
use tower::Layer;

use crate::forward::{AttemptMetrics, Forward};
use crate::otel::Tracing;
use crate::pipeline::{self, Step};
use crate::queue::QueueSet;
use crate::request_metrics::RouteMetrics;
use crate::request_model::RequestModel;
use crate::router::{Matcher, RouteIndex, RouteIndexBuilder};
use crate::store::{SharedRateLimit, StoreSet};
use crate::upstream::Upstream;

/// Everything one loaded config runs on.
pub struct Runtime {
    pub config: Arc<Config>,
    pub listeners: HashMap<String, Arc<ListenerRoutes>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    filters: HashMap<String, (Filter, Arc<dyn BuiltFilter>)>,
    route_metrics: HashMap<[String; 3], Arc<RouteMetrics>>,
    /// The `tracing` section's tracer and exporter; kept across reloads
    /// that leave the section as it is.
    pub tracing: Option<Arc<Tracing>>,
    /// The queues, their store and dispatchers.
    pub queues: Arc<QueueSet>,
    /// `stores:`, kept across reloads that leave an entry as it is.
    pub stores: Arc<StoreSet>,
}

/// One listener's pipeline.
pub struct ListenerRoutes {
    pub name: Arc<str>,
    /// The listener's steps around its router: what every request of the
    /// listener is sent to.
    pub pipeline: RouteService,
    /// `request_body_timeout`, for the body wrapper every request gets.
    pub request_body_timeout: Duration,
    /// The route and upstream of a request not routed yet.
    pub unrouted: Arc<str>,
}

/// The routes of one listener, for its router.
pub struct RouteTable {
    pub routes: Vec<RouteEntry>,
    /// The paths of `routes`, indexed (see `find`).
    index: RouteIndex,
    /// Where requests no route takes go: observed, rescued, answered.
    pub no_route: RouteService,
    /// `/.kaname/jobs/<id>`, on a listener with queue routes.
    pub jobs: Option<RouteService>,
}

pub struct RouteEntry {
    pub matcher: Matcher,
    pub name: Arc<str>,
    pub upstream: Arc<str>,
    /// The route's layers, outermost first, ending in its forwarder.
    pub stack: RouteService,
}

/// What a stack is built for: its labels and metric handles.
struct StackTarget<'a> {
    info: RouteInfo,
    metrics: Arc<RouteMetrics>,
    listener: &'a Listener,
}

/// A step built: a layer, or the service a stack ends in.
enum Built {
    Layer(RouteLayer),
    Terminal(RouteService),
    /// Nothing to do here after all.
    Skip,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Filter(#[from] kaname_filters::BuildError),
    #[error("route \"{route}\": {source}")]
    Match {
        route: String,
        source: crate::router::MatcherError,
    },
    #[error(transparent)]
    Tracing(#[from] crate::otel::TracingError),
    #[error("queues: {0}")]
    Queues(String),
    #[error("stores: {0}")]
    Stores(String),
    #[error("route \"{route}\" names unknown {what} \"{name}\"")]
    Unknown {
        route: String,
        what: &'static str,
        name: String,
    },
}

impl Runtime {
    /// Builds a runtime, reusing from `previous` what did not change.
    pub async fn build(
        config: Arc<Config>,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, BuildError> {
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            upstreams.insert(
                u.name.clone(),
                reuse_or_build_upstream(u, metrics, previous).await,
            );
        }
        let stores = Arc::new(
            StoreSet::build(&config, previous.map(|p| &*p.stores), metrics)
                .map_err(BuildError::Stores)?,
        );
        let in_stores = stores.clone();
        let shared_buckets = move |filter: &str, cfg: &kaname_config::types::RateLimit| {
            let Some(name) = &cfg.store else {
                return Ok(None);
            };
            let store = in_stores
                .get(name)
                .ok_or_else(|| format!("no store named {name:?}"))?;
            let buckets: Arc<dyn kaname_filters::rate_limit::SharedBuckets> =
                Arc::new(SharedRateLimit::new(store.clone(), filter, cfg));
            Ok(Some(buckets))
        };
        let jwks_fetcher = |source: &kaname_config::JwksSource| crate::jwks::fetcher(source);
        let policy_client =
            |cfg: &kaname_config::authorize::ExternalPolicy| crate::policy::client(cfg);
        let ctx = kaname_filters::BuildContext {
            metrics: &metrics.filters,
            jwks_fetcher: &jwks_fetcher,
            policy_client: &policy_client,
            shared_buckets: &shared_buckets,
        };
        let mut filters = HashMap::new();
        for f in &config.filters {
            // A filter on a store is rebuilt when its store is: it holds it.
            let kept = previous
                .and_then(|p| p.filters.get(&f.name).map(|old| (p, old)))
                .filter(|(p, (old, _))| old == f && same_store(f, &p.config, &config))
                .map(|(_, (_, layer))| layer.clone());
            let layer = match kept {
                Some(l) => l,
                None => kaname_filters::build(f, &ctx)?,
            };
            filters.insert(f.name.clone(), (f.clone(), layer));
        }
        let tracing = match previous.map(|p| &p.tracing) {
            Some(Some(t)) if t.config == config.tracing => Some(t.clone()),
            _ => Tracing::build(&config.tracing, metrics)?,
        };
        let queues = QueueSet::build(
            &config,
            previous.map(|p| &*p.queues),
            &upstreams,
            &stores,
            metrics,
        )
        .map_err(BuildError::Queues)?;
        let mut rt = Runtime {
            config: config.clone(),
            listeners: HashMap::new(),
            upstreams,
            filters,
            route_metrics: HashMap::new(),
            tracing,
            queues: Arc::new(queues),
            stores: stores.clone(),
        };
        for l in &config.listeners {
            let routes = rt.build_listener(l, metrics, previous)?;
            rt.listeners.insert(l.name.clone(), Arc::new(routes));
        }
        Ok(rt)
    }

    fn route_metrics(
        &mut self,
        metrics: &Metrics,
        previous: Option<&Runtime>,
        labels: [&str; 3],
    ) -> Arc<RouteMetrics> {
        let key = labels.map(str::to_owned);
        let m = previous
            .and_then(|p| p.route_metrics.get(&key).cloned())
            .unwrap_or_else(|| {
                Arc::new(RouteMetrics::new(metrics, labels[0], labels[1], labels[2]))
            });
        self.route_metrics.insert(key, m.clone());
        m
    }

    fn build_listener(
        &mut self,
        l: &Listener,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Result<ListenerRoutes, BuildError> {
        let cfg = self.config.clone();
        let listener: Arc<str> = l.name.as_str().into();
        let unrouted: Arc<str> = "".into();
        // One forwarder per upstream, shared by its routes.
        let mut forwards: HashMap<String, RouteService> = HashMap::new();
        let mut routes = Vec::with_capacity(l.routes.len());
        let mut index = RouteIndexBuilder::default();
        for r in &l.routes {
            let steps = pipeline::route_steps(&cfg, l, r).ok_or_else(|| BuildError::Unknown {
                route: r.name.clone(),
                what: "filter or upstream",
                name: format!("{:?} {:?}", r.filters, r.upstream),
            })?;
            let target = StackTarget {
                info: RouteInfo {
                    listener: listener.clone(),
                    route: r.name.as_str().into(),
                    upstream: r.upstream.as_str().into(),
                },
                metrics: self.route_metrics(metrics, previous, [&l.name, &r.name, &r.upstream]),
                listener: l,
            };
            let stack = self.stack(&steps, &target, metrics, &mut forwards)?;
            let matcher = Matcher::compile(&r.matcher).map_err(|source| BuildError::Match {
                route: r.name.clone(),
                source,
            })?;
            index.push(
                r.matcher.path.as_ref(),
                r.case_sensitive,
                matcher.is_unconditional(),
            );
            routes.push(RouteEntry {
                matcher,
                name: target.info.route,
                upstream: target.info.upstream,
                stack,
            });
        }
        let index = index.build().map_err(|e| BuildError::Match {
            route: l.routes[e.route].name.clone(),
            source: e.source,
        })?;
        let no_route_target = StackTarget {
            info: RouteInfo {
                listener: listener.clone(),
                route: unrouted.clone(),
                upstream: unrouted.clone(),
            },
            metrics: self.route_metrics(metrics, previous, [&l.name, "", ""]),
            listener: l,
        };
        let no_route = self.stack(
            &pipeline::no_route_steps(),
            &no_route_target,
            metrics,
            &mut forwards,
        )?;
        let jobs = match pipeline::jobs_steps(l) {
            Some(steps) => {
                let target = StackTarget {
                    info: RouteInfo {
                        listener: listener.clone(),
                        route: crate::queue::api::ROUTE.into(),
                        upstream: unrouted.clone(),
                    },
                    metrics: self.route_metrics(
                        metrics,
                        previous,
                        [&l.name, crate::queue::api::ROUTE, ""],
                    ),
                    listener: l,
                };
                Some(self.stack(&steps, &target, metrics, &mut forwards)?)
            }
            None => None,
        };
        let table = Arc::new(RouteTable {
            routes,
            index,
            no_route,
            jobs,
        });
        let router = RouteService::from_boxed(pipeline::Router(table));
        let pipeline = pipeline::listener_steps(l)
            .iter()
            .rev()
            .filter_map(|step| match step {
                Step::RequestModel(l) => Some(RouteLayer::boxed(pipeline::RequestModelLayer(
                    Arc::new(RequestModel::of(l)),
                ))),
                Step::RequestId => Some(RouteLayer::boxed(pipeline::RequestIdLayer)),
                Step::PeerIdentity(_) => Some(RouteLayer::boxed(pipeline::PeerIdentityLayer)),
                // The terminal, made above.
                _ => None,
            })
            .fold(router, |inner, layer| layer.layer(inner));
        Ok(ListenerRoutes {
            name: listener,
            pipeline,
            request_body_timeout: l.request_body_timeout,
            unrouted,
        })
    }

    /// A route's (or the no-route) stack from its steps: the terminal
    /// first, then each layer around it, innermost out.
    fn stack(
        &self,
        steps: &[Step<'_>],
        target: &StackTarget<'_>,
        metrics: &Arc<Metrics>,
        forwards: &mut HashMap<String, RouteService>,
    ) -> Result<RouteService, BuildError> {
        let mut service: Option<RouteService> = None;
        let mut outward = steps.iter().rev().peekable();
        while let Some(step) = outward.next() {
            // Rescue right inside observe is built by observe itself (one
            // service, one boxed future).
            if matches!(step, Step::Rescue) && matches!(outward.peek(), Some(Step::Observe)) {
                continue;
            }
            match self.build_step(step, target, metrics, forwards)? {
                Built::Terminal(t) => service = Some(t),
                Built::Skip => {}
                Built::Layer(layer) => {
                    if let Some(inner) = service.take() {
                        service = Some(layer.layer(inner));
                    }
                }
            }
        }
        service.ok_or_else(|| BuildError::Unknown {
            route: target.info.route.to_string(),
            what: "terminal step",
            name: "forward".into(),
        })
    }

    fn observe_layer(&self, t: &StackTarget<'_>, metrics: &Metrics) -> pipeline::ObserveLayer {
        pipeline::ObserveLayer {
            metrics: t.metrics.clone(),
            in_flight: metrics
                .requests_in_flight
                .with_label_values(&[&*t.info.listener]),
            access_log: self.config.log.access_log,
            route: t.info.route.clone(),
            upstream: t.info.upstream.clone(),
        }
    }

    fn build_step(
        &self,
        step: &Step<'_>,
        t: &StackTarget<'_>,
        metrics: &Arc<Metrics>,
        forwards: &mut HashMap<String, RouteService>,
    ) -> Result<Built, BuildError> {
        let info = &t.info;
        Ok(Built::Layer(match step {
            // With the rescue layer inside it (see `stack`).
            Step::Observe => RouteLayer::boxed(self.observe_layer(t, metrics)),
            Step::Rescue => RouteLayer::new(pipeline::RescueLayer),
            Step::IdentityCheck(_) => RouteLayer::boxed(pipeline::IdentityCheckLayer {
                listener: info.listener.clone(),
            }),
            Step::Forwarded => RouteLayer::boxed(pipeline::ForwardedLayer),
            Step::Trace(_) => match &self.tracing {
                Some(tracing) => RouteLayer::boxed(pipeline::TraceLayer {
                    tracing: tracing.clone(),
                    access_log: self.config.log.access_log,
                    listener: info.listener.clone(),
                    route: info.route.clone(),
                }),
                None => return Ok(Built::Skip),
            },
            Step::BodyLimit(limit) => RouteLayer::boxed(pipeline::BodyLimitLayer { limit: *limit }),
            Step::Deadline(timeout) => RouteLayer::boxed(pipeline::DeadlineLayer {
                timeout: *timeout,
                upstream: info.upstream.clone(),
            }),
            Step::Priority(p) => RouteLayer::boxed(RoutePriorityLayer(*p)),
            Step::Filter(f) => {
                let (_, built) = self
                    .filters
                    .get(&f.name)
                    .ok_or_else(|| BuildError::Unknown {
                        route: info.route.to_string(),
                        what: "filter",
                        name: f.name.clone(),
                    })?;
                built.layer(info)
            }
            Step::Forward(u) => {
                let forward = match forwards.get(&u.name) {
                    Some(f) => f.clone(),
                    None => {
                        let upstream = self.upstreams.get(&u.name).cloned().ok_or_else(|| {
                            BuildError::Unknown {
                                route: info.route.to_string(),
                                what: "upstream",
                                name: u.name.clone(),
                            }
                        })?;
                        let f = RouteService::from_boxed(Forward::new(
                            upstream,
                            AttemptMetrics::new(metrics, &u.name),
                        ));
                        forwards.insert(u.name.clone(), f.clone());
                        f
                    }
                };
                return Ok(Built::Terminal(forward));
            }
            Step::Enqueue(q, u) => {
                let queue =
                    self.queues
                        .get(&q.name)
                        .cloned()
                        .ok_or_else(|| BuildError::Unknown {
                            route: info.route.to_string(),
                            what: "queue",
                            name: q.name.clone(),
                        })?;
                return Ok(Built::Terminal(RouteService::from_boxed(
                    crate::queue::accept::Enqueue {
                        queue,
                        upstream: u.name.as_str().into(),
                    },
                )));
            }
            Step::Jobs(names) => {
                return Ok(Built::Terminal(RouteService::from_boxed(
                    crate::queue::api::JobsApi {
                        queues: self.queues.clone(),
                        names: names.iter().map(|n| n.to_string()).collect(),
                    },
                )))
            }
            Step::Unrouted => {
                return Ok(Built::Terminal(RouteService::from_boxed(
                    pipeline::Unrouted {
                        listener: t.listener.name.as_str().into(),
                    },
                )))
            }
            // The listener's steps are built in `build_listener`.
            Step::RequestModel(_) | Step::RequestId | Step::PeerIdentity(_) | Step::Router(_) => {
                return Err(BuildError::Unknown {
                    route: info.route.to_string(),
                    what: "step in a route stack",
                    name: "listener step".into(),
                })
            }
        }))
    }
}

async fn reuse_or_build_upstream(
    u: &UpstreamConfig,
    metrics: &Metrics,
    previous: Option<&Runtime>,
) -> Arc<Upstream> {
    if let Some(old) = previous.and_then(|p| p.upstreams.get(&u.name)) {
        if &old.config == u {
            return old.clone();
        }
    }
    Upstream::build(u, metrics).await
}

impl Runtime {
    /// Drops gauge series of what this runtime no longer has (after a
    /// reload or a DNS change); see `Metrics::retain_gauges`.
    pub fn prune_gauges(&self, metrics: &Metrics) {
        let cfg = &self.config;
        let mut breakers = std::collections::HashSet::new();
        for l in &cfg.listeners {
            for r in &l.routes {
                for f in &r.filters {
                    if let Some(Filter {
                        kind: kaname_config::FilterKind::CircuitBreaker(_),
                        ..
                    }) = cfg.filter(f)
                    {
                        breakers.insert((f.as_str(), r.upstream.as_str()));
                    }
                }
            }
        }
        metrics.retain_gauges(
            |u| self.upstreams.contains_key(u),
            |u, addr| {
                self.upstreams
                    .get(u)
                    .is_some_and(|up| up.endpoints().iter().any(|e| e.addr.to_string() == addr))
            },
            |f, u| breakers.contains(&(f, u)),
        );
    }
}

impl RouteTable {
    /// The first route in config order that matches: the index yields
    /// the routes whose path matches, the matcher checks the rest.
    pub fn find(&self, req: &http::request::Parts) -> Option<&RouteEntry> {
        let i = self
            .index
            .first(req.uri.path(), |i| self.routes[i].matcher.matches(req))?;
        Some(&self.routes[i])
    }
}

/// Whether the store a rate_limit filter names has the same settings in
/// both configs (a filter on no store: trivially).
fn same_store(f: &Filter, old: &Config, new: &Config) -> bool {
    match &f.kind {
        kaname_config::FilterKind::RateLimit(r) => match &r.store {
            Some(name) => old.store(name) == new.store(name),
            None => true,
        },
        _ => true,
    }
}
