//! From a validated config to the services requests flow through: one
//! upstream pool per upstream, one layer per filter (state shared by the
//! routes naming it) and, per route, its filters around `Forward`.
//! On reload, upstreams, filters and metric handles whose config did not
//! change are carried over, so their state survives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kaname_config::{Config, Filter, Listener, Upstream as UpstreamConfig};
use kaname_filters::metrics::Metrics;
use kaname_filters::{FilterLayer, RouteInfo, RouteService};

use crate::forward::{AttemptMetrics, Forward};
use crate::request_metrics::RouteMetrics;
use crate::request_model::RequestModel;
use crate::router::{Matcher, RouteIndex, RouteIndexBuilder};
use crate::upstream::Upstream;

/// Everything one loaded config runs on.
pub struct Runtime {
    pub config: Arc<Config>,
    pub listeners: HashMap<String, Arc<ListenerRoutes>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    filters: HashMap<String, (Filter, Arc<dyn FilterLayer>)>,
    route_metrics: HashMap<[String; 3], Arc<RouteMetrics>>,
}

/// The routes of one listener.
pub struct ListenerRoutes {
    pub name: Arc<str>,
    pub routes: Vec<RouteEntry>,
    /// The paths of `routes`, indexed (see `find`).
    index: RouteIndex,
    /// Labels a request that matched no route (empty route and upstream).
    pub no_route_metrics: Arc<RouteMetrics>,
    pub access_log: bool,
    /// `tracing.start_traces`.
    pub start_traces: bool,
    /// Path, authority and upgrade rules applied before routing.
    pub model: RequestModel,
    /// `request_body_timeout`.
    pub request_body_timeout: Duration,
}

pub struct RouteEntry {
    pub matcher: Matcher,
    pub name: Arc<str>,
    pub upstream: Arc<str>,
    pub timeout: Option<Duration>,
    pub max_request_body: Option<u64>,
    pub service: RouteService,
    pub metrics: Arc<RouteMetrics>,
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
        let jwks_fetcher = |source: &kaname_config::JwksSource| crate::jwks::fetcher(source);
        let ctx = kaname_filters::BuildContext {
            metrics,
            jwks_fetcher: &jwks_fetcher,
        };
        let mut filters = HashMap::new();
        for f in &config.filters {
            let kept = previous
                .and_then(|p| p.filters.get(&f.name))
                .filter(|(old, _)| old == f)
                .map(|(_, layer)| layer.clone());
            let layer = match kept {
                Some(l) => l,
                None => kaname_filters::build(f, &ctx)?,
            };
            filters.insert(f.name.clone(), (f.clone(), layer));
        }
        let mut rt = Runtime {
            config: config.clone(),
            listeners: HashMap::new(),
            upstreams,
            filters,
            route_metrics: HashMap::new(),
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
        let mut routes = Vec::with_capacity(l.routes.len());
        let mut index = RouteIndexBuilder::default();
        let listener: Arc<str> = l.name.as_str().into();
        // Per upstream, shared by its routes: its name and the `Forward`
        // (its handles are per upstream), so a route costs no copy of them.
        let mut forwards: HashMap<&str, (Arc<str>, RouteService)> = HashMap::new();
        for r in &l.routes {
            let unknown = |what, name: &str| BuildError::Unknown {
                route: r.name.clone(),
                what,
                name: name.to_owned(),
            };
            let (upstream_name, forward) = match forwards.get(r.upstream.as_str()) {
                Some(f) => f.clone(),
                None => {
                    let upstream = self
                        .upstreams
                        .get(&r.upstream)
                        .cloned()
                        .ok_or_else(|| unknown("upstream", &r.upstream))?;
                    let forward = Forward::new(upstream, AttemptMetrics::new(metrics, &r.upstream));
                    let f = (
                        Arc::<str>::from(r.upstream.as_str()),
                        RouteService::from_boxed(forward),
                    );
                    forwards.insert(&r.upstream, f.clone());
                    f
                }
            };
            let info = RouteInfo {
                listener: listener.clone(),
                route: r.name.as_str().into(),
                upstream: upstream_name,
            };
            let mut service = forward;
            // Outermost first in the file, so wrap from the innermost out.
            for name in r.filters.iter().rev() {
                let (_, layer) = self
                    .filters
                    .get(name)
                    .ok_or_else(|| unknown("filter", name))?;
                service = layer.wrap(&info, service);
            }
            if let Some(p) = r.priority {
                // A route's own priority class, for its concurrency limits.
                service = kaname_filters::concurrency_limit::with_route_priority(service, p);
            }
            let matcher = Matcher::compile(&r.matcher).map_err(|source| BuildError::Match {
                route: r.name.clone(),
                source,
            })?;
            index.push(
                r.matcher.path.as_ref(),
                r.case_sensitive,
                matcher.is_unconditional(),
            );
            let route_metrics =
                self.route_metrics(metrics, previous, [&l.name, &r.name, &r.upstream]);
            routes.push(RouteEntry {
                matcher,
                name: info.route,
                upstream: info.upstream,
                timeout: r.timeout,
                max_request_body: r.max_request_body.or(l.max_request_body),
                service,
                metrics: route_metrics,
            });
        }
        let index = index.build().map_err(|e| BuildError::Match {
            route: l.routes[e.route].name.clone(),
            source: e.source,
        })?;
        Ok(ListenerRoutes {
            name: listener,
            routes,
            index,
            no_route_metrics: self.route_metrics(metrics, previous, [&l.name, "", ""]),
            access_log: self.config.log.access_log,
            start_traces: self.config.tracing.start_traces,
            model: RequestModel::of(l),
            request_body_timeout: l.request_body_timeout,
        })
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

impl ListenerRoutes {
    /// The first route in config order that matches: the index yields
    /// the routes whose path matches, the matcher checks the rest.
    pub fn find(&self, req: &http::request::Parts) -> Option<&RouteEntry> {
        let i = self
            .index
            .first(req.uri.path(), |i| self.routes[i].matcher.matches(req))?;
        Some(&self.routes[i])
    }
}
