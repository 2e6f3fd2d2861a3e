//! From a filter's typed config to its built state, which gives every route
//! naming it a tower layer. The match in [`build`] is the one place in this
//! crate that knows every filter kind: adding a kind is a module plus an arm
//! here (docs/architecture.md has a worked example).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kaname_config::authorize::ExternalPolicy;
use kaname_config::types::{Filter, FilterKind, JwksSource};

use crate::authorize::PolicyClient;
use crate::rate_limit::SharedBuckets;

use crate::metrics::Metrics;
use crate::RouteLayer;

/// Where a filter is applied: the names metrics and per-upstream state use.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub upstream: Arc<str>,
}

/// A built filter. Its state (buckets, breaker, budget) lives inside and is
/// shared by every route that names it.
pub trait BuiltFilter: Send + Sync {
    /// The filter's tower layer for one route (its per-route metric series
    /// and per-upstream state resolved once, here).
    fn layer(&self, route: &RouteInfo) -> RouteLayer;
}

/// Fetches a JWKS document. Filters never open files or sockets; the proxy
/// gives them this (reading the file, or GET over HTTP(S)).
pub trait JwksFetcher: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>>;
}

/// Makes the client of an authorize filter's external policy service.
pub type PolicyClientFactory = dyn Fn(&ExternalPolicy) -> Arc<dyn PolicyClient> + Send + Sync;

/// Gives a rate_limit filter with `store: NAME` its shared buckets (None
/// for a local one); an error names what is wrong with the store.
pub type SharedBucketsFactory = dyn Fn(&str, &kaname_config::types::RateLimit) -> Result<Option<Arc<dyn SharedBuckets>>, String>
    + Send
    + Sync;

/// What building a filter may use from the proxy.
pub struct BuildContext<'a> {
    pub metrics: &'a Arc<Metrics>,
    /// Makes the fetcher for a jwt filter's `jwks` source.
    pub jwks_fetcher: &'a (dyn Fn(&JwksSource) -> Arc<dyn JwksFetcher> + Send + Sync),
    /// Makes the client for an authorize filter's `external` service.
    pub policy_client: &'a PolicyClientFactory,
    /// Makes the shared buckets of a rate_limit filter on a store.
    pub shared_buckets: &'a SharedBucketsFactory,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("filter \"{filter}\": filter kind \"{kind}\" is not supported yet")]
    Unsupported { filter: String, kind: &'static str },
    #[error("filter \"{filter}\": {message}")]
    Invalid { filter: String, message: String },
}

/// Builds one filter from its config.
pub fn build(filter: &Filter, ctx: &BuildContext<'_>) -> Result<Arc<dyn BuiltFilter>, BuildError> {
    let name = &filter.name;
    let m = ctx.metrics;
    // Exhaustive, no `_` arm: a new kind does not compile until it is here.
    Ok(match &filter.kind {
        FilterKind::Jwt(cfg) => Arc::new(crate::jwt::Jwt::new(name, cfg, ctx)?),
        FilterKind::RateLimit(cfg) => {
            let limit = crate::rate_limit::RateLimit::new(name, cfg, m)?;
            let shared =
                (ctx.shared_buckets)(name, cfg).map_err(|message| BuildError::Invalid {
                    filter: name.clone(),
                    message,
                })?;
            match shared {
                Some(buckets) => Arc::new(limit.with_store(buckets, cfg.on_store_error)),
                None => Arc::new(limit),
            }
        }
        FilterKind::Retry(cfg) => Arc::new(crate::retry::Retry::new(name, cfg, m)?),
        FilterKind::CircuitBreaker(cfg) => {
            Arc::new(crate::circuit_breaker::CircuitBreaker::new(name, cfg, m))
        }
        FilterKind::ConcurrencyLimit(cfg) => Arc::new(
            crate::concurrency_limit::ConcurrencyLimit::new(name, cfg, m)?,
        ),
        FilterKind::Authorize(cfg) => Arc::new(crate::authorize::Authorize::new(name, cfg, ctx)?),
    })
}

/// For builds without shared stores (tests): every rate limit is local.
pub fn no_shared_buckets(
    _: &str,
    _: &kaname_config::types::RateLimit,
) -> Result<Option<Arc<dyn SharedBuckets>>, String> {
    Ok(None)
}
