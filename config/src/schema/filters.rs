//! `filters:`: each filter is exactly one kind, with that kind's settings.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde_json::json;

use super::authorize::Authorize;
use super::store::OnStoreError;
use super::values::{
    any_case, scalar, Bool, Condition, Count, Duration, HeaderName, List1, Method, NonEmpty,
    Number, OneOrMore, Rate, Size, Text, Uint, Url, ENV,
};
use crate::parse::jwt::ALGORITHMS;

/// A filter: exactly one kind, with its settings. Routes name filters;
/// their state is shared by every route naming the same filter.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Filter {
    /// Verifies a JWT: 401 when missing or invalid, 403 when a required
    /// claim is absent.
    jwt: Option<Jwt>,
    /// A token bucket per key: 429 when empty.
    rate_limit: Option<RateLimit>,
    /// Retries failed tries, within a budget.
    retry: Option<Retry>,
    /// Stops sending to a failing upstream for a while: 503 while open.
    circuit_breaker: Option<CircuitBreaker>,
    /// Bounds requests in flight, queues a few more by priority, sheds the
    /// rest: 503.
    concurrency_limit: Option<ConcurrencyLimit>,
    /// Allows or denies each request by rules, or an external policy
    /// service: 403 when denied.
    authorize: Option<Authorize>,
}

/// The `jwt` filter: one of `jwks` or `secret`.
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend("oneOf" = [{"required": ["jwks"]}, {"required": ["secret"]}])
)]
pub struct Jwt {
    /// The token's `iss` must be one of these. Default: not checked.
    issuer: Option<OneOrMore<Text>>,
    /// The token's `aud` must contain one of these. Default: not checked.
    audiences: Option<Vec<Text>>,
    /// The only algorithms accepted (never `none`); HS* need `secret`, the
    /// others `jwks`.
    algorithms: List1<Algorithm>,
    /// Where the public keys are (for RS*, PS*, ES*, EdDSA).
    jwks: Option<Jwks>,
    /// The HS* key, at least 32, 48, 64 bytes for HS256, HS384, HS512; use
    /// `${VAR}`.
    secret: Option<NonEmpty>,
    /// Clock skew allowed on `exp` and `nbf`. Default `0s`.
    leeway: Option<Duration>,
    /// Where the token is. Default `{ header: authorization, prefix:
    /// "Bearer " }`.
    from: Option<TokenSource>,
    /// Claims that must be present (403 when one is missing).
    required_claims: Option<Vec<Text>>,
    /// Claim -> request header sent to the upstream, by claim.
    forward_claims: Option<BTreeMap<String, HeaderName>>,
    /// Keep the token in the request to the upstream. Default `false`.
    forward_token: Option<Bool>,
    /// Remember verified tokens until their `exp`. Default `true`.
    cache: Option<Bool>,
}

scalar! {
    /// A JWT algorithm (any case): HS256/384/512, RS256/384/512,
    /// PS256/384/512, ES256/384, EdDSA.
    Algorithm = {
        let any: Vec<String> = ALGORITHMS.iter().map(|a| any_case(a)).collect();
        json!({
            "type": "string",
            "anyOf": [
                {"enum": ALGORITHMS},
                {"pattern": format!("^({})$", any.join("|"))},
                {"pattern": ENV},
            ],
        })
    };
}

/// Where a jwt filter's keys are: one of `file` or `url`.
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend("oneOf" = [{"required": ["file"]}, {"required": ["url"]}])
)]
pub struct Jwks {
    /// A JWKS file, read at start and on every reload.
    file: Option<NonEmpty>,
    /// A JWKS URL, fetched at start and every `refresh`.
    url: Option<Url>,
    /// How often a `url` is fetched again. Default `5m`.
    refresh: Option<Duration>,
}

/// Where the token is: one of `header` (with an optional `prefix`),
/// `query` or `cookie`.
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend("oneOf" = [{"required": ["header"]}, {"required": ["query"]}, {"required": ["cookie"]}])
)]
pub struct TokenSource {
    /// A request header.
    header: Option<HeaderName>,
    /// Before the token in the header, compared without case. Default
    /// `"Bearer "` for `authorization`, else none.
    prefix: Option<Text>,
    /// A query parameter.
    query: Option<NonEmpty>,
    /// A cookie.
    cookie: Option<NonEmpty>,
}

/// The `rate_limit` filter.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RateLimit {
    /// What a bucket is kept for: `global`, `client_ip`, `header:NAME` or
    /// `jwt:CLAIM`.
    key: RateLimitKey,
    /// The rate the bucket refills at.
    rate: Rate,
    /// The bucket's size. Default: the rate's count.
    burst: Option<Count>,
    /// Distinct keys kept (a memory bound). Default `100000`.
    max_keys: Option<Count>,
    /// `local` (this process alone) or a store's name under `stores`, whose
    /// bucket every sidecar naming it shares. Default `local`.
    store: Option<NonEmpty>,
    /// What decides while the store fails or is slower than its `timeout`.
    /// Default `local`.
    on_store_error: Option<OnStoreError>,
}

scalar! {
    /// A rate limit key.
    RateLimitKey = json!({
        "type": "string",
        "anyOf": [
            {"enum": ["global", "client_ip"]},
            {"pattern": "^header:\\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+\\s*$"},
            {"pattern": "^jwt:\\s*\\S"},
            {"pattern": ENV},
        ],
    });
}

/// The `retry` filter.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("not" = {"required": ["retry_on", "on"]}))]
pub struct Retry {
    /// Tries in all, the first included. Default `3`.
    attempts: Option<Count>,
    /// What is retried. Default `[connect_failure, reset, timeout, 502,
    /// 503, 504]`.
    retry_on: Option<Vec<Condition>>,
    /// An alias of `retry_on` (YAML 1.1 tools read a bare `on` as true).
    on: Option<Vec<Condition>>,
    /// `idempotent`, or a list of methods. Default `idempotent`.
    methods: Option<RetryMethods>,
    /// Bounds each try. Default: none (the route's `timeout` bounds all).
    per_try_timeout: Option<Duration>,
    /// Exponential backoff with full jitter. Default `{ base: 25ms, max:
    /// 250ms }`.
    backoff: Option<Backoff>,
    /// How much load retries may add, per upstream. Default `{ ratio: 0.2,
    /// min_per_second: 10 }`.
    budget: Option<RetryBudget>,
    /// Larger request bodies are sent once, never retried. Default `64KiB`.
    max_body_bytes: Option<Size>,
    /// All requests' replay copies at once (one pool per process). Default
    /// `64MiB`.
    max_buffered_bytes: Option<Size>,
}

/// `idempotent`, or a list of methods.
pub struct RetryMethods;

impl JsonSchema for RetryMethods {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryMethods".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let method = generator.subschema_for::<Method>();
        schemars::json_schema!({
            "description": "`idempotent` (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or a list of methods.",
            "anyOf": [
                {"const": "idempotent"},
                {"type": "array", "items": method, "minItems": 1},
                {"type": "string", "pattern": ENV},
            ],
        })
    }
}

/// Exponential backoff between tries, with full jitter.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Backoff {
    /// The first wait (at most `max`). Default `25ms` (a queue's delivery:
    /// `1s`).
    base: Option<Duration>,
    /// The longest wait. Default `250ms` (a queue's delivery: `5m`).
    max: Option<Duration>,
}

/// The retry budget, per upstream.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries as a share of requests (0.2 = 20% more load). Default `0.2`.
    #[schemars(extend("minimum" = 0))]
    ratio: Option<Number>,
    /// Retries allowed per second whatever the ratio. Default `10`.
    min_per_second: Option<Uint>,
}

/// The `circuit_breaker` filter, per upstream.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Failures in a row that open it; 0 turns this off (then
    /// `failure_rate` is needed). Default `5`.
    consecutive_failures: Option<Uint>,
    /// Open on a failure rate over a window.
    failure_rate: Option<FailureRate>,
    /// How long it stays open, then half-open; doubles on each failed
    /// probe, up to `max_open_for`. Default `10s`.
    open_for: Option<Duration>,
    /// The longest it stays open. Default `5m`.
    max_open_for: Option<Duration>,
    /// Probes let through while half-open. Default `1`.
    half_open_requests: Option<Count>,
    /// What counts as a failure. Default `[connect_failure, timeout, 5xx]`.
    failure_on: Option<Vec<Condition>>,
}

/// Opening on a failure rate.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FailureRate {
    /// The share of failures that opens it, greater than 0 and at most 1.
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 1))]
    threshold: Number,
    /// Requests in the window before the rate counts. Default `20`.
    min_requests: Option<Uint>,
    /// The window. Default `10s`.
    window: Option<Duration>,
}

/// The `concurrency_limit` filter.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// Requests inside at once.
    max_in_flight: Count,
    /// Requests waiting beyond that; more are shed at once. Default `0`.
    max_queue: Option<Uint>,
    /// A request that waited this long is shed. Default `100ms`.
    queue_timeout: Option<Duration>,
    /// Where a request's class (`high`, `normal`, `low`) comes from.
    /// Default: every request is `normal`.
    priority: Option<Priority>,
}

/// Where a request's priority class is read: one header or one claim.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Priority {
    /// A request header (client-controlled: for trusted clients only).
    header: Option<HeaderName>,
    /// A claim of the token a jwt filter earlier in the route verified.
    claim: Option<NonEmpty>,
}
