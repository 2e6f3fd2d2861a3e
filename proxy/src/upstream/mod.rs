//! An upstream: its endpoints (re-resolved by DNS), its load balancer and
//! its connection pool.

mod balancer;
mod connector;
mod endpoint;
mod h2_conn;
mod health;
mod outlier;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::metrics::Metrics;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kaname_config::{Upstream as UpstreamConfig, UpstreamProtocol};
use kaname_filters::Body;
use prometheus::{IntGauge, IntGaugeVec};

pub use balancer::Balancer;
/// Why a try got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    #[error(transparent)]
    Pooled(hyper_util::client::legacy::Error),
    #[error(transparent)]
    H2(H2Error),
}

impl TryError {
    /// No connection could be made.
    pub fn is_connect(&self) -> bool {
        match self {
            TryError::Pooled(e) => e.is_connect(),
            TryError::H2(e) => e.is_connect(),
        }
    }
}

pub use endpoint::{Endpoint, InFlight};
pub use h2_conn::H2Error;
pub use outlier::OutlierDetector;

pub type HttpClient = Client<connector::Connector, Body>;

pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    /// HTTP/1.1 tries (and health checks) go through this pool.
    pub client: HttpClient,
    /// HTTP/2 tries connect through this, one connection per endpoint.
    connector: connector::Connector,
    balancer: Balancer,
    /// Shared with the connector, which dials the pool keys by it.
    endpoints: connector::EndpointList,
    outlier: Option<OutlierDetector>,
    /// `kaname_upstream_endpoint_healthy`, for endpoints as they appear.
    healthy_gauge: IntGaugeVec,
    /// Every endpoint is out, so all get traffic (logged on the change).
    panicking: AtomicBool,
    /// `kaname_upstream_panic_mode{upstream}`: `panicking` as a metric.
    panic_gauge: IntGauge,
}

impl Upstream {
    /// Builds the pool and resolves the endpoints once; names that do not
    /// resolve yet are retried by the DNS refresh task.
    pub async fn build(config: &UpstreamConfig, metrics: &Metrics) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(config.pool.idle_timeout)
            .pool_max_idle_per_host(config.pool.max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Flat writes, as the listeners (bench/README.md).
            .http1_writev(false)
            // The URI's authority is a pool key, not a name to show:
            // kaname sets Host itself (forward.rs).
            .set_host(false);
        if config.protocol == UpstreamProtocol::Http2 {
            builder.http2_only(true);
        }
        // TLS files were checked before this build; if they broke since,
        // the connector refuses to connect rather than send plain text.
        let endpoints = connector::EndpointList::default();
        let connector = connector::Connector::new(
            connector,
            crate::tls::client::ClientTls::build(config),
            endpoints.clone(),
        );
        let up = Arc::new(Upstream {
            name: config.name.as_str().into(),
            config: config.clone(),
            client: builder.build(connector.clone()),
            connector,
            balancer: Balancer::new(config.load_balancing),
            endpoints,
            outlier: config.outlier_detection.clone().map(|o| {
                let ejections = metrics
                    .upstream_ejections_total
                    .with_label_values(&[&config.name]);
                OutlierDetector::new(config.name.as_str().into(), o, ejections)
            }),
            healthy_gauge: metrics.upstream_endpoint_healthy.clone(),
            panicking: AtomicBool::new(false),
            panic_gauge: {
                let g = metrics
                    .upstream_panic_mode
                    .with_label_values(&[&config.name]);
                g.set(0); // a rebuilt upstream (reload) starts out of panic mode
                g
            },
        });
        up.resolve().await;
        if let Some(hc) = &config.health_check {
            health::spawn(Arc::downgrade(&up), hc.clone());
        }
        if config
            .endpoints
            .iter()
            .any(|e| e.host.parse::<std::net::IpAddr>().is_err())
        {
            tokio::spawn(refresh_dns(Arc::downgrade(&up), config.dns_refresh));
        }
        up
    }

    /// Sends one try to `endpoint`: through the pool (HTTP/1.1) or on the
    /// endpoint's HTTP/2 connection.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, TryError> {
        match self.config.protocol {
            UpstreamProtocol::Http1 => self.client.request(req).await.map_err(TryError::Pooled),
            UpstreamProtocol::Http2 => endpoint
                .h2
                .send(&self.connector, &endpoint.connect_uri, req)
                .await
                .map_err(TryError::H2),
        }
    }

    /// Picks an endpoint for one try. When every endpoint is unhealthy or
    /// ejected the balancer uses them all (panic mode, as Envoy): that is
    /// logged when it starts and when it ends, and shown by the
    /// `kaname_upstream_panic_mode` gauge.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let panic = !endpoints.is_empty() && !endpoints.iter().any(|e| e.is_healthy());
        if panic != self.panicking.load(Ordering::Relaxed)
            && panic != self.panicking.swap(panic, Ordering::Relaxed)
        {
            self.panic_gauge.set(i64::from(panic));
            if panic {
                tracing::warn!(upstream = %self.name, "every endpoint is unhealthy or ejected; sending to all of them (panic mode)");
            } else {
                tracing::info!(upstream = %self.name, "an endpoint is healthy again; panic mode over");
            }
        }
        self.balancer.pick(&endpoints, avoid)
    }

    /// The endpoints now.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// One try's outcome on `endpoint`, for outlier detection.
    pub fn report(&self, endpoint: &Arc<Endpoint>, failed: bool) {
        if let Some(o) = &self.outlier {
            o.report(endpoint, &self.endpoints.load(), failed);
        }
    }

    /// Resolves every endpoint; keeps the `Endpoint` (and its load figures)
    /// of addresses that did not change. A name that fails to resolve keeps
    /// its previous addresses.
    async fn resolve(&self) {
        let old = self.endpoints.load_full();
        let mut next: Vec<Arc<Endpoint>> = Vec::new();
        for ep in &self.config.endpoints {
            let addrs: Vec<SocketAddr> = match ep.host.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, ep.port)],
                Err(_) => match tokio::net::lookup_host((ep.host.as_str(), ep.port)).await {
                    Ok(a) => a.collect(),
                    Err(e) => {
                        tracing::warn!(upstream = %self.name, endpoint = %ep.host, error = %e, "DNS lookup failed; keeping previous addresses");
                        old.iter()
                            .filter(|o| o.addr.port() == ep.port)
                            .map(|o| o.addr)
                            .collect()
                    }
                },
            };
            for addr in addrs {
                if next.iter().any(|e| e.addr == addr) {
                    continue;
                }
                let kept = old.iter().find(|o| o.addr == addr).cloned();
                next.push(kept.unwrap_or_else(|| {
                    let ep = Endpoint::with_connection_cap(
                        addr,
                        self.config.pool.max_connections_per_endpoint,
                    );
                    let endpoint = addr.to_string();
                    ep.attach_gauge(
                        self.healthy_gauge
                            .with_label_values(&[&*self.name, &endpoint]),
                    );
                    Arc::new(ep)
                }));
            }
        }
        // An address DNS no longer gives leaves no stale healthy series.
        for gone in old
            .iter()
            .filter(|o| !next.iter().any(|n| n.addr == o.addr))
        {
            let _ = self
                .healthy_gauge
                .remove_label_values(&[&*self.name, &gone.addr.to_string()]);
        }
        self.endpoints.store(Arc::new(next));
    }
}

async fn refresh_dns(up: Weak<Upstream>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match up.upgrade() {
            Some(up) => up.resolve().await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panic_mode_is_shown_by_its_gauge() {
        let yaml = "listeners:
  main:
    listen: 127.0.0.1:1
    routes:
      - match: { path_prefix: / }
        upstream: up
upstreams:
  up:
    endpoints: [127.0.0.1:1, 127.0.0.1:2]
";
        let config = kaname_config::parse("<test>", yaml).expect("config");
        let metrics = Metrics::new();
        let gauge = metrics.upstream_panic_mode.with_label_values(&["up"]);
        gauge.set(1); // left over from a previous build: the build resets it
        let up = Upstream::build(&config.upstreams[0], &metrics).await;
        assert_eq!(gauge.get(), 0, "a new upstream is not in panic mode");

        let eps = up.endpoints();
        assert_eq!(eps.len(), 2);
        eps[0].set_healthy(false);
        assert!(up.pick(None).is_some());
        assert_eq!(gauge.get(), 0, "one endpoint still takes traffic");

        eps[1].set_ejected(true);
        assert!(up.pick(None).is_some(), "panic mode still picks one");
        assert_eq!(gauge.get(), 1, "every endpoint out: panic mode");

        eps[1].set_ejected(false);
        assert_eq!(up.pick(None).map(|e| e.addr), Some(eps[1].addr));
        assert_eq!(gauge.get(), 0, "panic mode over");
    }
}
