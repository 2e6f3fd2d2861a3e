//! kaname's filters: one tower layer per concern, plus the pieces every
//! layer shares (the body type, kaname's own error answers, the request
//! context and the metric families).
#![forbid(unsafe_code)]

pub mod body;
pub mod circuit_breaker;
pub mod claims;
pub mod client_body;
pub mod concurrency_limit;
pub mod context;
pub mod error_response;
pub mod jwt;
pub mod metrics;
pub mod rate_limit;
pub mod registry;
pub mod retry;
pub mod route_service;

pub use body::{Body, BoxError};
pub use context::{RequestContext, UpstreamFailure};
pub use error_response::{grpc_percent_encode, is_grpc, ErrorKind};
pub use registry::{build, BuildContext, BuildError, FilterLayer, JwksFetcher, RouteInfo};

pub use route_service::{RouteFuture, RouteService};
