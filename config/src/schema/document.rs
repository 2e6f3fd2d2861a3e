//! The top level of the file: admin port, logs, tracing, and the maps of
//! listeners, upstreams, filters and queues.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde_json::json;

use super::filters::Filter;
use super::listener::Listener;
use super::queue::Queue;
use super::store::Store;
use super::upstream::Upstream;
use super::values::{
    any_case, choice, or_env, scalar, Bool, Count, Duration, ListenAddress, NonEmpty, Number, Text,
    Url, ENV,
};
use crate::parse::{tracing as otlp, LEVELS, LOG_FORMATS};

/// kaname's configuration: one YAML file.
///
/// Durations are strings with a unit (`250ms`, `2s`, `5m`, `1h`); sizes
/// are bytes, or a string with a unit (`64KiB`, `1MiB`); rates are `N/s`,
/// `N/m` or `N/h`. Any value may use `${VAR}` or `${VAR:-default}`. Unknown
/// keys are errors; top-level keys starting with `x-` are free (for YAML
/// anchors).
#[derive(JsonSchema)]
#[schemars(
    title = "kaname configuration",
    deny_unknown_fields,
    extend("patternProperties" = {"^x-": {}})
)]
pub struct Document {
    /// The admin port: `GET /metrics /live /ready /config`, `POST /reload`.
    admin: Option<Admin>,
    /// How long requests in flight may finish after SIGTERM or SIGINT.
    /// Default `30s`.
    shutdown_grace: Option<Duration>,
    /// Logging: level, format, access log.
    log: Option<Log>,
    /// W3C trace context and OpenTelemetry spans.
    tracing: Option<Tracing>,
    /// The listeners, by name: at least one.
    #[schemars(extend("minProperties" = 1))]
    listeners: BTreeMap<String, Listener>,
    /// The upstreams routes send to, by name.
    upstreams: Option<BTreeMap<String, Upstream>>,
    /// The filters routes name, by name; each has exactly one kind.
    filters: Option<BTreeMap<String, Filter>>,
    /// Where the embedded job store keeps its files (`jobs/`, locked by
    /// `jobs.lock`); created when missing. Default `./kaname-data`.
    data_dir: Option<NonEmpty>,
    /// The asynchronous hand-off (202 now, delivery later), by name.
    queues: Option<BTreeMap<String, Queue>>,
    /// State shared across replicas (Redis), by name; rate limits and
    /// queues name them in `store:` (`local` is taken: this process alone).
    stores: Option<BTreeMap<String, Store>>,
}

/// The admin port.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Admin {
    /// Where the admin port listens. Default `127.0.0.1:9901`.
    listen: Option<ListenAddress>,
    /// When set (use `${ADMIN_TOKEN}`), `/config`, `/reload` and `/metrics`
    /// need `Authorization: Bearer <token>`; printable ASCII without spaces.
    #[schemars(extend("pattern" = or_env("^[!-~]+$")))]
    token: Option<NonEmpty>,
    /// How long an admin client may take to send a request head. Default
    /// `10s`.
    header_timeout: Option<Duration>,
    /// Host names (without a port) this admin port may be reached by,
    /// beyond loopback and its listen address.
    allowed_hosts: Option<Vec<Text>>,
}

/// Logging.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Log {
    /// `trace`, `debug`, `info`, `warn`, `error`, `off`, or a filter such
    /// as `kaname=debug`; `RUST_LOG` wins when set. Default `info`.
    level: Option<LogLevel>,
    /// `json` or `text`. Default `json`.
    format: Option<LogFormat>,
    /// One line per request. Default `true`.
    access_log: Option<Bool>,
}

scalar! {
    /// A log level (any case), or a tracing filter with `=` in it.
    LogLevel = {
        let any: Vec<String> = LEVELS.iter().map(|l| any_case(l)).collect();
        json!({
            "type": "string",
            "anyOf": [
                {"enum": LEVELS},
                {"pattern": format!("^({})$", any.join("|"))},
                {"pattern": "="},
                {"pattern": ENV},
            ],
        })
    };
}

scalar! {
    /// The log format.
    LogFormat = choice(LOG_FORMATS);
}

/// W3C trace context and OpenTelemetry spans.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Tracing {
    /// A request without a valid `traceparent` starts a trace (a valid one
    /// is always continued). Default `true` with `otlp`, else `false`.
    start_traces: Option<Bool>,
    /// Export spans by OTLP.
    otlp: Option<Otlp>,
}

/// The OTLP span exporter.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Otlp {
    /// The collector's URL, `http://` or `https://`. gRPC: no path. HTTP:
    /// the full URL; an empty path becomes `/v1/traces`.
    endpoint: Url,
    /// `grpc` or `http/protobuf`. Default `grpc`.
    protocol: Option<OtlpProtocol>,
    /// Sent with every export (gRPC metadata or HTTP headers), by name.
    headers: Option<BTreeMap<String, Text>>,
    /// One export call, retries included. Default `5s`.
    timeout: Option<Duration>,
    /// The `service.name` resource attribute. Default `kaname`.
    service_name: Option<NonEmpty>,
    /// More resource attributes, by name.
    resource: Option<BTreeMap<String, Text>>,
    /// The ratio of new traces recorded, 0 to 1 (`0.01` is 1%). Default `1.0`.
    #[schemars(extend("minimum" = 0, "maximum" = 1))]
    sampling: Option<Number>,
    /// Ended spans waiting for export, at most 1,000,000; beyond it spans
    /// are dropped. Default `2048`.
    #[schemars(extend("maximum" = otlp::MAX_QUEUE))]
    max_queue: Option<Count>,
}

scalar! {
    /// The OTLP transport.
    OtlpProtocol = choice(otlp::OTLP_PROTOCOLS);
}
