//! An upstream: its endpoints (re-resolved by DNS), its load balancer and
//! its connection pool.

mod balancer;
mod endpoint;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kaname_config::{Upstream as UpstreamConfig, UpstreamProtocol};
use kaname_filters::Body;

pub use balancer::Balancer;
pub use endpoint::Endpoint;

pub type HttpClient = Client<HttpConnector, Body>;

pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub client: HttpClient,
    balancer: Balancer,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
}

impl Upstream {
    /// Builds the pool and resolves the endpoints once; names that do not
    /// resolve yet are retried by the DNS refresh task.
    pub async fn build(config: &UpstreamConfig) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(config.pool.idle_timeout)
            .pool_max_idle_per_host(config.pool.max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if config.protocol == UpstreamProtocol::Http2 {
            builder.http2_only(true);
        }
        let up = Arc::new(Upstream {
            name: config.name.as_str().into(),
            config: config.clone(),
            client: builder.build(connector),
            balancer: Balancer::new(config.load_balancing),
            endpoints: ArcSwap::from_pointee(Vec::new()),
        });
        up.resolve().await;
        if config
            .endpoints
            .iter()
            .any(|e| e.host.parse::<std::net::IpAddr>().is_err())
        {
            tokio::spawn(refresh_dns(Arc::downgrade(&up), config.dns_refresh));
        }
        up
    }

    /// Picks an endpoint for one try.
    pub fn pick(&self, avoid: Option<&Endpoint>) -> Option<Arc<Endpoint>> {
        self.balancer.pick(&self.endpoints.load(), avoid)
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
                next.push(kept.unwrap_or_else(|| Arc::new(Endpoint::new(addr))));
            }
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
