//! `listeners:`: addresses, limits, TLS and routes.

use std::collections::BTreeMap;

use schemars::JsonSchema;

use super::values::{
    choice, scalar, Bool, Duration, HeaderName, List1, ListenAddress, Method, NonEmpty, Path, Size,
    Text, Uint,
};
use crate::parse::listener::{ESCAPED_SLASHES, PRIORITIES, PROTOCOLS};

/// A listener: an address, its limits, TLS, and its routes.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Listener {
    /// Where to listen, `ip:port`.
    listen: ListenAddress,
    /// `auto` (HTTP/1.1 and HTTP/2 by prior knowledge on one port), `http1`
    /// or `http2`. Default `auto`.
    protocol: Option<ListenerProtocol>,
    /// A client slower than this to send its request head is cut off.
    /// Default `10s`.
    header_read_timeout: Option<Duration>,
    /// Larger request heads get 431. Default `64KiB`.
    max_header_bytes: Option<Size>,
    /// Larger request bodies get 413; a route may set its own. Default: no
    /// limit (bodies stream).
    max_request_body: Option<Size>,
    /// A connection with nothing in flight and no byte either way this long
    /// is closed. Default `5m`.
    idle_timeout: Option<Duration>,
    /// Terminate TLS here.
    tls: Option<ListenerTls>,
    /// The routes, in order: the first match wins; no match is a 404.
    routes: List1<Route>,
    /// `//api//x` is `/api/x` for routes, filters and the upstream. Default
    /// `true`.
    merge_slashes: Option<Bool>,
    /// `%2F` and `%5C` in a path: `reject` (400), `decode` (to `/`) or
    /// `keep` (passed on, never a separator). Default `reject`.
    escaped_slashes: Option<EscapedSlashes>,
    /// `Upgrade` protocols forwarded (never `h2c`). Default `[websocket]`.
    upgrades: Option<Vec<NonEmpty>>,
    /// A started request body that sends no byte this long gets 408.
    /// Default `30s`.
    request_body_timeout: Option<Duration>,
    /// HTTP/2 settings. Default `{ max_concurrent_streams: 100 }`.
    http2: Option<Http2>,
    /// Requests in flight that move no byte either way this long are reset.
    /// Default `5m`.
    stream_idle_timeout: Option<Duration>,
}

scalar! {
    /// The protocols a listener serves.
    ListenerProtocol = choice(PROTOCOLS);
}

scalar! {
    /// What to do with `%2F` and `%5C` in a path.
    EscapedSlashes = choice(ESCAPED_SLASHES);
}

/// HTTP/2 settings of a listener.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Http2 {
    /// Streams one HTTP/2 connection may have open, at least 1; more get
    /// REFUSED_STREAM. Default `100`.
    #[schemars(extend("minimum" = 1))]
    max_concurrent_streams: Option<Uint>,
}

/// TLS termination; with `client_ca`, mutual TLS.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("dependentRequired" = {"allowed_identities": ["client_ca"]}))]
pub struct ListenerTls {
    /// The certificate chain, a PEM file.
    cert: NonEmpty,
    /// The private key, a PEM file.
    key: NonEmpty,
    /// Set = mutual TLS: clients must present a certificate signed by this
    /// CA (a PEM file).
    client_ca: Option<NonEmpty>,
    /// URI or DNS SANs allowed in (needs `client_ca`). Default: any client
    /// the CA signed.
    allowed_identities: Option<Vec<Text>>,
    /// The verified client identity, sent to the upstream in this header.
    /// Default `x-client-identity`.
    identity_header: Option<HeaderName>,
}

/// A route: which requests, to which upstream, through which filters.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Route {
    /// The route's name, unique in the file. Default `<listener>-<n>`, n
    /// counting from 1.
    name: Option<NonEmpty>,
    /// Which requests; absent, every request.
    #[schemars(rename = "match")]
    matcher: Option<RouteMatch>,
    /// The upstream's name.
    upstream: NonEmpty,
    /// The whole request, retries included; 504 when exceeded. Default: none.
    timeout: Option<Duration>,
    /// Filter names, outermost first.
    filters: Option<Vec<NonEmpty>>,
    /// Larger request bodies get 413 (overrides the listener's).
    max_request_body: Option<Size>,
    /// `false` matches paths ignoring ASCII case. Default `true`.
    case_sensitive: Option<Bool>,
    /// The class of every request on this route in each `concurrency_limit`
    /// filter it names: `high`, `normal` or `low`. Default: the filter
    /// decides.
    priority: Option<RoutePriority>,
    /// The queue to hand requests to (202 now, delivery later).
    queue: Option<NonEmpty>,
}

scalar! {
    /// A priority class.
    RoutePriority = choice(PRIORITIES);
}

/// What a request must be to match; all given must hold. At most one of
/// `path`, `path_prefix`, `path_regex`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RouteMatch {
    /// The whole path, exactly.
    path: Option<Path>,
    /// The path starts with this.
    path_prefix: Option<Path>,
    /// The path matches this regex (Rust `regex` syntax).
    path_regex: Option<NonEmpty>,
    /// Any of these methods. Default: any method.
    methods: Option<List1<Method>>,
    /// Headers with exactly these values, by name; all must match.
    headers: Option<BTreeMap<String, Text>>,
    /// `Host` or `:authority`, port ignored, case-insensitive.
    host: Option<NonEmpty>,
}
