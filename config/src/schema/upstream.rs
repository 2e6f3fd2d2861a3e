//! `upstreams:`: endpoints, protocol, pool, health checks, outlier detection, TLS.

use schemars::JsonSchema;
use serde_json::json;

use super::values::{choice, or_env, scalar, Count, Duration, List1, NonEmpty, Path, Uint};
use crate::parse::upstream::{LOAD_BALANCING, PROTOCOLS};

/// An upstream: where requests go, and how.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` list; DNS names are resolved at start and every
    /// `dns_refresh`.
    endpoints: List1<Endpoint>,
    /// `http1`, or `http2` (h2c, or h2 over TLS; gRPC needs it). Default
    /// `http1`.
    protocol: Option<UpstreamProtocol>,
    /// A failed or slow connect is a `connect_failure`. Default `1s`.
    connect_timeout: Option<Duration>,
    /// `round_robin`, `least_request` or `p2c_ewma`. Default `p2c_ewma`.
    load_balancing: Option<LoadBalancing>,
    /// The connection pool. Default `{ idle_timeout: 90s,
    /// max_idle_per_endpoint: 64, max_connections_per_endpoint: 1024 }`.
    pool: Option<Pool>,
    /// How often DNS names are resolved again. Default `30s`.
    dns_refresh: Option<Duration>,
    /// Active health checks. Default: none.
    health_check: Option<HealthCheck>,
    /// Passive health: endpoints that keep failing are ejected for a while.
    /// Default: none.
    outlier_detection: Option<OutlierDetection>,
    /// Originate TLS; with `cert` and `key`, mutual TLS.
    tls: Option<UpstreamTls>,
}

scalar! {
    /// An endpoint, `host:port`: `orders.shop.svc:3000`, `10.0.0.1:8080`,
    /// `[::1]:80`.
    Endpoint = json!({"type": "string", "pattern": or_env(r":[0-9]+$")});
}

scalar! {
    /// The protocol spoken to an upstream.
    UpstreamProtocol = choice(PROTOCOLS);
}

scalar! {
    /// How an endpoint is picked for each request.
    LoadBalancing = choice(LOAD_BALANCING);
}

/// The connection pool of an upstream.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Pool {
    /// Pooled connections idle this long are closed. Default `90s`.
    idle_timeout: Option<Duration>,
    /// Idle HTTP/1.1 connections kept per endpoint. Default `64`.
    max_idle_per_endpoint: Option<Uint>,
    /// HTTP/1.1 requests in flight per endpoint; more wait up to
    /// `connect_timeout`, then get 503. Default `1024` (also for 0).
    max_connections_per_endpoint: Option<Uint>,
}

/// Active health checks of each endpoint.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HealthCheck {
    /// The path requested.
    path: Path,
    /// How often. Default `5s`.
    interval: Option<Duration>,
    /// How long a check may take. Default `1s`.
    timeout: Option<Duration>,
    /// Failed checks in a row that make an endpoint unhealthy. Default `3`.
    unhealthy_after: Option<Count>,
    /// Passed checks in a row that make it healthy again. Default `2`.
    healthy_after: Option<Count>,
}

/// Passive health checks: ejecting endpoints that keep failing.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint. Default `5`.
    consecutive_failures: Option<Count>,
    /// How long an endpoint stays ejected. Default `30s`.
    eject_for: Option<Duration>,
    /// At most this percentage of endpoints ejected at once. Default `50`.
    #[schemars(extend("maximum" = 100))]
    max_ejected_percent: Option<Uint>,
}

/// TLS to an upstream; with `cert` and `key`, mutual TLS.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("dependentRequired" = {"cert": ["key"], "key": ["cert"]}))]
pub struct UpstreamTls {
    /// CA certificates to verify the upstream with (a PEM file). Default:
    /// the Mozilla (webpki) roots.
    ca: Option<NonEmpty>,
    /// The name to verify and send as SNI. Default: the endpoints' host
    /// name.
    server_name: Option<NonEmpty>,
    /// A client certificate chain (a PEM file), for mutual TLS.
    cert: Option<NonEmpty>,
    /// The client certificate's private key (a PEM file).
    key: Option<NonEmpty>,
}
