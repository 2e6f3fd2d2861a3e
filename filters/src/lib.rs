//! kaname's filters: one tower layer per concern, plus the pieces every
//! layer shares (the body type, kaname's own error answers, the request
//! context and the metric families).
#![forbid(unsafe_code)]

pub mod authorize;
pub mod body;
pub mod circuit_breaker;
pub mod claims;
pub mod client_body;
pub mod concurrency_limit;
pub mod context;
pub mod error;
pub mod error_response;
pub mod jwt;
pub mod metrics;
pub mod per_upstream;
pub mod rate_limit;
pub mod registry;
pub mod retry;
pub mod route_service;
pub mod time;

pub use body::{Body, BoxError};
pub use context::{RequestContext, UpstreamFailure};
pub use error::{ProxyError, Rescued};
pub use error_response::{grpc_percent_encode, is_grpc, ErrorKind};
pub use registry::{
    build, BuildContext, BuildError, BuiltFilter, JwksFetcher, PolicyClientFactory, RouteInfo,
};

pub use route_service::{call_async, ready_call, RouteFuture, RouteLayer, RouteService};
