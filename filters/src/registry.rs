//! From a filter's typed config to a layer. This match is the one place
//! that knows every filter kind: adding a kind is a module plus an arm here.

use std::sync::Arc;

use kaname_config::types::Filter;

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

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("filter \"{filter}\": filter kind \"{kind}\" is not supported yet")]
    Unsupported { filter: String, kind: &'static str },
}

/// Builds one filter from its config.
pub fn build(filter: &Filter, metrics: &Arc<Metrics>) -> Result<Arc<dyn FilterLayer>, BuildError> {
    let _ = metrics;
    match &filter.kind {
        kind => Err(BuildError::Unsupported {
            filter: filter.name.clone(),
            kind: kind.kind_name(),
        }),
    }
}
