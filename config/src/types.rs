//! The typed, validated configuration. Everything here has been checked:
//! names resolve, durations are positive, regexes compile.

use std::net::SocketAddr;
use std::time::Duration;

/// A whole kaname configuration file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from (as given on the command line).
    pub file: String,
    pub admin: Admin,
    /// How long requests in flight may finish after SIGTERM. Default 30s.
    pub shutdown_grace: Duration,
    pub log: Log,
    pub tracing: Tracing,
    /// In file order.
    pub listeners: Vec<Listener>,
    /// In file order.
    pub upstreams: Vec<Upstream>,
    /// In file order.
    pub filters: Vec<Filter>,
    /// Where embedded stores keep their files. Default `./kaname-data`.
    pub data_dir: String,
    /// In file order.
    pub queues: Vec<crate::queue::Queue>,
    /// `stores:`, in file order.
    pub stores: Vec<crate::store::Store>,
    /// The running config rendered as YAML with secrets and every `${VAR}`
    /// value replaced by `<redacted>` (for the admin `/config` endpoint).
    pub redacted_yaml: String,
    /// Each listener, route, upstream and filter in config words, redacted
    /// the same way (for `kaname explain`).
    pub words: crate::words::ConfigWords,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
    pub fn filter(&self, name: &str) -> Option<&Filter> {
        self.filters.iter().find(|f| f.name == name)
    }
    pub fn store(&self, name: &str) -> Option<&crate::store::Store> {
        self.stores.iter().find(|s| s.name == name)
    }
}

#[derive(Clone, PartialEq)]
pub struct Admin {
    /// Default 127.0.0.1:9901.
    pub listen: SocketAddr,
    /// `admin.token`: when set, `/config`, `/reload` and `/metrics` need
    /// `Authorization: Bearer <token>`. Printable ASCII, no spaces. Never
    /// printed (Debug shows `<redacted>`).
    pub token: Option<String>,
    /// `admin.header_timeout`: how long a client may take to send a request
    /// head on the admin port (also bounds an idle keep-alive connection).
    /// Default 10s.
    pub header_timeout: Duration,
    /// `admin.allowed_hosts`: names this admin port may be reached by,
    /// beyond loopback and its listen address (the `Host` guard): host
    /// names without a port, lower-cased, matched exactly. Default none.
    pub allowed_hosts: Vec<String>,
}

impl Admin {
    /// Default 10s (limits.md, `admin_header_timeout`).
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("header_timeout", &self.header_timeout)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// Default "info".
    pub level: String,
    /// Default Json.
    pub format: LogFormat,
    /// Default true.
    pub access_log: bool,
}

/// W3C trace context and spans (tracing.md). A `traceparent` the client
/// sent is always passed on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tracing {
    /// A request without a valid `traceparent` starts a trace. Default:
    /// true when `otlp` is set, false otherwise.
    pub start_traces: bool,
    /// Absent: no spans exported (propagation still works).
    pub otlp: Option<Otlp>,
}

/// Where and how spans are exported.
#[derive(Clone, PartialEq)]
pub struct Otlp {
    /// `http://host:4317` for gRPC; for HTTP the full URL
    /// (`…:4318/v1/traces`; `/v1/traces` is added when the path is empty).
    pub endpoint: String,
    /// Default gRPC.
    pub protocol: OtlpProtocol,
    /// Sent with every export (lower-case names), e.g. an authorization.
    pub headers: Vec<(String, String)>,
    /// One export call. Default 5s.
    pub timeout: Duration,
    /// The `service.name` resource attribute. Default "kaname".
    pub service_name: String,
    /// More resource attributes, in file order.
    pub resource: Vec<(String, String)>,
    /// Ratio of new traces recorded, 0..=1. Default 1.0. A request whose
    /// `traceparent` says sampled is always recorded, one that says not
    /// sampled never is.
    pub sampling: f64,
    /// Spans waiting for export; beyond it spans are dropped and counted.
    /// Default 2048.
    pub max_queue: usize,
}

/// Header values are credentials: never printed.
impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("service_name", &self.service_name)
            .field("resource", &self.resource)
            .field("sampling", &self.sampling)
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn word(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) on one port. The default.
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    /// Default Auto.
    pub protocol: ListenerProtocol,
    /// Default 10s.
    pub header_read_timeout: Duration,
    /// Default 64 KiB.
    pub max_header_bytes: u64,
    /// None = no limit.
    pub max_request_body: Option<u64>,
    /// Default 5m.
    pub idle_timeout: Duration,
    pub tls: Option<ListenerTls>,
    pub routes: Vec<Route>,
    /// Merge repeated slashes in request paths. Default true.
    pub merge_slashes: bool,
    /// What an encoded slash or backslash in a path gets. Default Reject.
    pub escaped_slashes: EscapedSlashes,
    /// `Upgrade` tokens forwarded (lower case). Default `[websocket]`.
    pub upgrades: Vec<String>,
    /// How long a started request body may send nothing. Default 30s.
    pub request_body_timeout: Duration,
    /// `http2.max_concurrent_streams`: streams one HTTP/2 connection may
    /// have open; more are refused (REFUSED_STREAM). Default 100.
    pub http2_max_concurrent_streams: u32,
    /// A request or response that moves no byte this long is reset. Default 5m.
    pub stream_idle_timeout: Duration,
}

/// `escaped_slashes:` — `%2F` and `%5C` in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400 (the default).
    #[default]
    Reject,
    /// Decoded to `/`, then normalized.
    Decode,
    /// Passed on as they are, never a separator (unsafe behind prefix rules).
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
    pub allowed_identities: Vec<String>,
    /// Default "x-client-identity".
    pub identity_header: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Given, or `<listener>-<n>` with n counting from 1.
    pub name: String,
    /// `match:`; absent = every request (`RouteMatch::default()`).
    pub matcher: RouteMatch,
    pub upstream: String,
    /// None = no route timeout.
    pub timeout: Option<Duration>,
    /// Filter names, outermost first; each names an entry of `Config::filters`.
    pub filters: Vec<String>,
    /// Route-level body limit; overrides the listener's.
    pub max_request_body: Option<u64>,
    /// Path matching is case-sensitive unless `case_sensitive: false`.
    pub case_sensitive: bool,
    /// `priority: high|normal|low`: the class of every request of this
    /// route in each `concurrency_limit` filter it names (the filter's own
    /// `priority` source is not read on this route). None = the filter decides.
    pub priority: Option<PriorityClass>,
    /// `queue: NAME`: the route answers 202 and the queue delivers later.
    pub queue: Option<String>,
}

/// A request's class in a `concurrency_limit` queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityClass {
    High,
    Normal,
    Low,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// The pattern, known to compile with the `regex` crate.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    /// Upper-case method names; None = any.
    pub methods: Option<Vec<String>>,
    /// Header name (lower case) and exact value.
    pub headers: Vec<(String, String)>,
    /// Host without port, lower case.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// h2c, or h2 over TLS.
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    LeastRequest,
    P2cEwma,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// `host:port` strings; a host may be an IP or a DNS name.
    pub endpoints: Vec<Endpoint>,
    /// Default Http1.
    pub protocol: UpstreamProtocol,
    /// Default 1s.
    pub connect_timeout: Duration,
    /// Default P2cEwma.
    pub load_balancing: LoadBalancing,
    pub pool: Pool,
    /// Default 30s.
    pub dns_refresh: Duration,
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Lower case; an IPv6 address without its brackets (`::1`).
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Default 90s.
    pub idle_timeout: Duration,
    /// Default 64.
    pub max_idle_per_endpoint: usize,
    /// Requests in flight (HTTP/1.1: connections in use) per endpoint;
    /// more wait up to `connect_timeout`, then get 503. Default 1024.
    pub max_connections_per_endpoint: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    /// Default 5s.
    pub interval: Duration,
    /// Default 1s.
    pub timeout: Duration,
    /// Default 3.
    pub unhealthy_after: u32,
    /// Default 2.
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// Default 5.
    pub consecutive_failures: u32,
    /// Default 30s.
    pub eject_for: Duration,
    /// Default 50; at most 100.
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub name: String,
    pub kind: FilterKind,
}

/// One variant per filter kind. Adding a kind = a new variant here, its
/// settings struct, its line in `filter_kinds!` below, its parser arm, and a
/// module in `filters/` (the compiler asks for each but the settings).
#[derive(Debug, Clone, PartialEq)]
pub enum FilterKind {
    Jwt(Jwt),
    RateLimit(RateLimit),
    Retry(Retry),
    CircuitBreaker(CircuitBreaker),
    ConcurrencyLimit(ConcurrencyLimit),
    Authorize(crate::authorize::Authorize),
}

/// The one list of filter kinds, each [`FilterKind`] variant with its YAML
/// key. [`FilterKindName`], its `ALL` and `NAMES`, and
/// [`FilterKind::kind`] are made from it, so none can miss a kind: a
/// variant left out of the list fails `kind`'s match, and the parser
/// matches on [`FilterKindName`] with no catch-all arm.
macro_rules! filter_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// A filter kind without its settings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum FilterKindName {
            $($variant,)*
        }

        impl FilterKindName {
            /// Every kind, in the order messages list them.
            pub const ALL: &'static [FilterKindName] = &[$(FilterKindName::$variant,)*];
            /// The YAML keys of [`Self::ALL`], in the same order.
            pub const NAMES: &'static [&'static str] = &[$($name,)*];

            /// The YAML key (`rate_limit`, ...).
            pub const fn name(self) -> &'static str {
                match self {
                    $(FilterKindName::$variant => $name,)*
                }
            }
        }

        impl FilterKind {
            /// This filter's kind, without its settings.
            pub fn kind(&self) -> FilterKindName {
                match self {
                    $(FilterKind::$variant(_) => FilterKindName::$variant,)*
                }
            }
        }
    };
}

filter_kinds! {
    Jwt => "jwt",
    RateLimit => "rate_limit",
    Retry => "retry",
    CircuitBreaker => "circuit_breaker",
    ConcurrencyLimit => "concurrency_limit",
    Authorize => "authorize",
}

impl FilterKindName {
    /// The kind with this YAML key.
    pub fn from_name(name: &str) -> Option<FilterKindName> {
        FilterKindName::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
    }
}

impl FilterKind {
    /// The YAML key of this kind (`rate_limit`, ...).
    pub fn kind_name(&self) -> &'static str {
        self.kind().name()
    }
}

/// A rate as a count per period (`100/s` = 100 per 1s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    Global,
    ClientIp,
    /// Lower-case header name.
    Header(String),
    /// Claim name.
    JwtClaim(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub key: RateLimitKey,
    pub rate: Rate,
    /// Default: the rate's count.
    pub burst: u32,
    /// Default 100000.
    pub max_keys: usize,
    /// `store: NAME` (a `stores:` entry): buckets shared with every sidecar
    /// naming the same store. None (`local`, the default): this process's.
    pub store: Option<String>,
    /// What decides while the store fails. Default local.
    pub on_store_error: crate::store::OnStoreError,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyLimit {
    /// Required, at least 1.
    pub max_in_flight: usize,
    /// Default 0.
    pub max_queue: usize,
    /// Default 100ms.
    pub queue_timeout: Duration,
    /// Where a request's class comes from on a route without its own
    /// `priority`. None = every request is normal.
    pub priority: Option<PrioritySource>,
}

/// `concurrency_limit.priority`: the value `high`, `normal` or `low` (any
/// case; anything else, or nothing, is normal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrioritySource {
    /// `{ header: NAME }`, lower case. Client-controlled: any client can
    /// claim `high`, so use it only where the clients are trusted.
    Header(String),
    /// `{ claim: NAME }`: a string claim of the token a `jwt` filter
    /// earlier in the route verified.
    Claim(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    File(String),
    /// `refresh` defaults to 5m.
    Url {
        url: String,
        refresh: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// Lower-case header name and prefix (default `authorization`, `"Bearer "`).
    /// A header other than `authorization` given without `prefix` has prefix "".
    Header {
        name: String,
        prefix: String,
    },
    Query(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    /// Any of these; empty = not checked.
    pub issuers: Vec<String>,
    /// Any of these; empty = not checked.
    pub audiences: Vec<String>,
    /// Upper-case names as written: HS256 ... EdDSA. Never "none".
    pub algorithms: Vec<String>,
    pub jwks: Option<JwksSource>,
    /// HS* shared secret. Exactly one of `jwks` and `secret` is set.
    pub secret: Option<String>,
    /// Default 0s.
    pub leeway: Duration,
    pub from: TokenSource,
    pub required_claims: Vec<String>,
    /// claim -> lower-case header name, in file order.
    pub forward_claims: Vec<(String, String)>,
    /// Default false: every copy of the token is removed before the upstream.
    pub forward_token: bool,
    /// Keep verified tokens so a repeated one skips the signature check.
    /// Default true; `false` is for measuring what the cache saves.
    pub cache: bool,
}

/// A retry or failure condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    ConnectFailure,
    Reset,
    Timeout,
    /// Any 5xx.
    Status5xx,
    Status(u16),
    /// gRPC status code number (`unavailable` = 14, ...).
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RetryMethods {
    /// GET HEAD OPTIONS PUT DELETE TRACE. The default.
    Idempotent,
    /// Upper-case method names.
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Tries in all, the first included; at least 1. Default 3.
    pub attempts: u32,
    /// Default [connect_failure, reset, timeout, 502, 503, 504]. Read from
    /// `retry_on` or its alias `on`.
    pub retry_on: Vec<Condition>,
    /// Default Idempotent.
    pub methods: RetryMethods,
    /// None = each try bounded only by the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Default 25ms.
    pub backoff_base: Duration,
    /// Default 250ms.
    pub backoff_max: Duration,
    /// Default 0.2.
    pub budget_ratio: f64,
    /// Default 10.
    pub budget_min_per_second: u32,
    /// Default 64 KiB.
    pub max_body_bytes: u64,
    /// Bytes all requests may keep for replay at once (one pool for the
    /// process, shared by every retry filter; each filter stops keeping
    /// copies once the pool would pass its own value). Default 64 MiB.
    pub max_buffered_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureRate {
    /// Failed fraction that opens the breaker, in (0, 1]. Required.
    pub threshold: f64,
    /// Requests in the window before the rate counts. Default 20.
    pub min_requests: u32,
    /// Default 10s.
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// Default Some(5); `consecutive_failures: 0` turns it off (None), which
    /// is only allowed with a `failure_rate`.
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<FailureRate>,
    /// Default 10s.
    pub open_for: Duration,
    /// Default 5m.
    pub max_open_for: Duration,
    /// Default 1.
    pub half_open_requests: u32,
    /// Default [connect_failure, timeout, 5xx].
    pub failure_on: Vec<Condition>,
}

// === impl Endpoint ===

/// `host:port`, with brackets around an IPv6 host (`[::1]:80`).
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}
