//! `queues:`: the asynchronous hand-off, 202 now and delivery later.

use schemars::JsonSchema;

use super::filters::{Backoff, Priority};
use super::values::{Condition, Count, Duration, HeaderName, List1, NonEmpty, Size, Text, ENV};
use crate::parse::queue::MAX_CONCURRENCY;

/// A queue: routes naming it answer 202 once a request is stored, and the
/// queue delivers it to the route's upstream later.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Queue {
    /// `local` (the embedded store in `data_dir`), or a store's name under
    /// `stores`, whose queue every sidecar naming it shares. Default
    /// `local`.
    store: Option<NonEmpty>,
    /// Jobs waiting; beyond it 503. Default `100000`.
    max_depth: Option<Count>,
    /// A larger request gets 413 and is not stored. Default `1MiB`.
    max_body_bytes: Option<Size>,
    /// Where a job's class (`high`, `normal`, `low`) comes from. Default:
    /// every job is `normal`.
    priority: Option<Priority>,
    /// How jobs are delivered.
    delivery: Option<Delivery>,
    /// How long a finished job's status and result stay. Default `24h`.
    keep_finished: Option<Duration>,
    /// The upstream's response body kept in the result; more is cut.
    /// Default `64KiB`.
    max_result_bytes: Option<Size>,
    /// POST the finished job to a URL the request names.
    callback: Option<Callback>,
    /// On a shared store: a job taken by a sidecar that then died is taken
    /// over after this (at least `delivery.per_try_timeout`). Default twice
    /// `delivery.per_try_timeout`.
    visibility_timeout: Option<Duration>,
}

/// How a queue delivers its jobs.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Delivery {
    /// Deliveries in flight at once, 1 to 10,000. Default `8`.
    #[schemars(extend("maximum" = MAX_CONCURRENCY))]
    concurrency: Option<Count>,
    /// Tries in all; then the job is `failed`. Default `10`.
    attempts: Option<Count>,
    /// One delivery; past it the try is a `timeout`. Default `30s`.
    per_try_timeout: Option<Duration>,
    /// The wait before each retry. Default `{ base: 1s, max: 5m }`.
    backoff: Option<Backoff>,
    /// What is tried again. Default `[connect_failure, reset, timeout, 5xx,
    /// 429]`.
    retry_on: Option<Vec<Condition>>,
}

/// Callbacks: the finished job POSTed, signed, to a URL the request names.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Callback {
    /// The request header naming the callback URL. Default
    /// `x-callback-url`.
    header: Option<HeaderName>,
    /// Hosts callbacks may go to: names or IP literals, `*.` for a domain.
    allowed_hosts: List1<NonEmpty>,
    /// Signs each callback (HMAC-SHA256), at least 16 bytes; use `${VAR}`.
    #[schemars(extend("anyOf" = [{"minLength": 16}, {"pattern": ENV}]))]
    secret: Text,
    /// Tries of a callback. Default `5`.
    attempts: Option<Count>,
}
