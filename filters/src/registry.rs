//! From a filter's typed config to a layer. This match is the one place
//! that knows every filter kind: adding a kind is a module plus an arm here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kaname_config::types::{Filter, FilterKind, JwksSource};

use crate::metrics::Metrics;
use crate::RouteService;

/// Where a filter is applied: the names metrics and per-upstream state use.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub upstream: Arc<str>,
}

/// A built filter. Its state (buckets, breaker, budget) lives inside and is
/// shared by every route that names it.
pub trait FilterLayer: Send + Sync {
    /// Wraps a route's inner service.
    fn wrap(&self, route: &RouteInfo, inner: RouteService) -> RouteService;
}

/// Fetches a JWKS document. Filters never open files or sockets; the proxy
/// gives them this (reading the file, or GET over HTTP(S)).
pub trait JwksFetcher: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>>;
}

/// What building a filter may use from the proxy.
pub struct BuildContext<'a> {
    pub metrics: &'a Arc<Metrics>,
    /// Makes the fetcher for a jwt filter's `jwks` source.
    pub jwks_fetcher: &'a (dyn Fn(&JwksSource) -> Arc<dyn JwksFetcher> + Send + Sync),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("filter \"{filter}\": filter kind \"{kind}\" is not supported yet")]
    Unsupported { filter: String, kind: &'static str },
    #[error("filter \"{filter}\": {message}")]
    Invalid { filter: String, message: String },
}

/// Builds one filter from its config.
pub fn build(filter: &Filter, ctx: &BuildContext<'_>) -> Result<Arc<dyn FilterLayer>, BuildError> {
    let _ = ctx;
    #[allow(clippy::match_single_binding)] // one arm per filter kind lands here
    match &filter.kind {
        FilterKind::Retry(cfg) => Ok(Arc::new(crate::retry::RetryLayer::new(
            &filter.name,
            cfg,
            ctx.metrics,
        )?)),
        FilterKind::CircuitBreaker(cfg) => Ok(Arc::new(crate::circuit_breaker::BreakerLayer::new(
            &filter.name,
            cfg,
            ctx.metrics,
        ))),
        FilterKind::Jwt(cfg) => Ok(Arc::new(crate::jwt::JwtLayer::new(&filter.name, cfg, ctx)?)),
        FilterKind::RateLimit(cfg) => Ok(Arc::new(crate::rate_limit::RateLimitLayer::new(
            &filter.name,
            cfg,
            ctx.metrics,
        )?)),
        FilterKind::ConcurrencyLimit(cfg) => Ok(Arc::new(
            crate::concurrency_limit::ConcurrencyLayer::new(&filter.name, cfg, ctx.metrics)?,
        )),
    }
}
