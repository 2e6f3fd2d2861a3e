//! The request pipeline: every step a request meets, as tower layers in
//! one ordered stack per listener and one per route.
//!
//! [`listener_steps`] and [`route_steps`] are the one statement of that
//! order: `chain.rs` builds the stacks from them and `kaname explain`
//! prints them, so the two cannot drift apart. docs/architecture.md walks
//! one request through them.
//!
//! Every step takes and gives kaname's types (`Request<Body>`, a
//! `Response<Body>` or a [`kaname_filters::ProxyError`]); errors travel as
//! errors until the route's [`rescue`] layer makes them answers.

mod body_limit;
mod deadline;
mod forwarded;
mod identity;
mod ingress;
mod observe;
mod rescue;
mod trace;

use std::time::Duration;

use kaname_config::types::PriorityClass;
use kaname_config::{
    duration_words, priority_word, size_words, Config, Filter, Listener, Route, Upstream,
};
use kaname_filters::{ProxyError, RouteFuture};

pub use body_limit::BodyLimitLayer;
pub use deadline::DeadlineLayer;
pub use forwarded::ForwardedLayer;
pub use identity::IdentityCheckLayer;
pub use ingress::{
    NotRouted, PeerIdentityLayer, RequestIdLayer, RequestModelLayer, Router, Unrouted,
};
pub use observe::ObserveLayer;
pub use rescue::{Rescue, RescueLayer};
pub use trace::TraceLayer;

/// One step of a request's path, outermost first.
pub enum Step<'a> {
    // --- the listener's, before a route is chosen ---
    /// Normalized path and authority, allowed upgrades, hop-by-hop strip.
    RequestModel(&'a Listener),
    /// `x-request-id` kept or set.
    RequestId,
    /// The identity header set from the client certificate (TLS only).
    PeerIdentity(&'a str),
    /// The first matching route's stack, or the no-route stack.
    Router(usize),
    // --- a route's ---
    /// The trace context (`traceparent`) and, with `otlp`, the SERVER span.
    Trace(&'a kaname_config::Tracing),
    /// Metrics, gRPC status counts, access log, `x-request-id` on the answer.
    Observe,
    /// Errors become answers.
    Rescue,
    /// `allowed_identities`, per request (403).
    IdentityCheck(&'a [String]),
    /// `x-forwarded-for`, `x-forwarded-proto`.
    Forwarded,
    /// `max_request_body` (413).
    BodyLimit(u64),
    /// The route's `timeout` and the gRPC `grpc-timeout`.
    Deadline(Option<Duration>),
    /// The route's `priority`, for its concurrency limits.
    Priority(PriorityClass),
    /// A filter, in the route's order.
    Filter(&'a Filter),
    /// The terminal: one try to the upstream.
    Forward(&'a Upstream),
    /// A queue route's terminal: the request stored as a job, 202; the
    /// queue delivers it to the upstream later.
    Enqueue(&'a kaname_config::queue::Queue, &'a Upstream),
    /// The jobs stack's terminal: `GET`/`DELETE /.kaname/jobs/<id>` for
    /// these queues.
    Jobs(Vec<&'a str>),
    /// The no-route stack's terminal.
    Unrouted,
}

/// The listener's steps, outermost first.
pub fn listener_steps(l: &Listener) -> Vec<Step<'_>> {
    let mut steps = vec![Step::RequestModel(l), Step::RequestId];
    if let Some(tls) = &l.tls {
        steps.push(Step::PeerIdentity(&tls.identity_header));
    }
    steps.push(Step::Router(l.routes.len()));
    steps
}

/// A route's steps, outermost first; `None` for a filter or upstream the
/// config does not have (validation refuses that, so it is never seen).
pub fn route_steps<'a>(cfg: &'a Config, l: &'a Listener, r: &'a Route) -> Option<Vec<Step<'a>>> {
    let mut steps = Vec::with_capacity(8 + r.filters.len());
    if cfg.tracing.otlp.is_some() || cfg.tracing.start_traces {
        steps.push(Step::Trace(&cfg.tracing));
    }
    steps.extend([Step::Observe, Step::Rescue]);
    if let Some(tls) = l.tls.as_ref().filter(|t| !t.allowed_identities.is_empty()) {
        steps.push(Step::IdentityCheck(&tls.allowed_identities));
    }
    steps.push(Step::Forwarded);
    if let Some(limit) = r.max_request_body.or(l.max_request_body) {
        steps.push(Step::BodyLimit(limit));
    }
    steps.push(Step::Deadline(r.timeout));
    if let Some(p) = r.priority {
        steps.push(Step::Priority(p));
    }
    for name in &r.filters {
        steps.push(Step::Filter(cfg.filter(name)?));
    }
    let upstream = cfg.upstream(&r.upstream)?;
    steps.push(match &r.queue {
        Some(q) => Step::Enqueue(cfg.queues.iter().find(|x| x.name == *q)?, upstream),
        None => Step::Forward(upstream),
    });
    Some(steps)
}

/// The steps of a listener's jobs stack, when it has queue routes.
pub fn jobs_steps<'a>(l: &'a Listener) -> Option<Vec<Step<'a>>> {
    let mut names: Vec<&str> = l.routes.iter().filter_map(|r| r.queue.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    (!names.is_empty()).then(|| vec![Step::Observe, Step::Rescue, Step::Jobs(names)])
}

/// The steps of a listener's no-route stack.
pub fn no_route_steps<'a>() -> Vec<Step<'a>> {
    vec![Step::Observe, Step::Rescue, Step::Unrouted]
}

impl Step<'_> {
    /// The step's name (one word) and what it does here, in config words.
    pub fn describe(&self, cfg: &Config) -> (&'static str, String) {
        let w = &cfg.words;
        match self {
            Step::RequestModel(l) => (
                "request_model",
                w.listeners.get(&l.name).map_or_else(String::new, |lw| {
                    lw.pick(&[
                        "merge_slashes",
                        "escaped_slashes",
                        "upgrades",
                        "request_body_timeout",
                    ])
                }),
            ),
            Step::RequestId => ("request_id", "x-request-id kept or set".into()),
            Step::PeerIdentity(h) => (
                "peer_identity",
                format!("{h} set from the client certificate, never the client"),
            ),
            Step::Router(n) => (
                "router",
                format!("the first of {n} route{} that matches", plural(*n)),
            ),
            Step::Trace(t) => ("trace", trace_words(t)),
            Step::Observe => (
                "observe",
                format!(
                    "requests and durations counted, x-request-id answered{}",
                    if cfg.log.access_log {
                        ", access log"
                    } else {
                        ""
                    }
                ),
            ),
            Step::Rescue => ("rescue", "errors become kaname's answers".into()),
            Step::IdentityCheck(ids) => (
                "identity_check",
                format!("allowed_identities: [{}]", ids.join(", ")),
            ),
            Step::Forwarded => ("forwarded", "x-forwarded-for, x-forwarded-proto".into()),
            Step::BodyLimit(n) => (
                "body_limit",
                format!("max_request_body: {}", size_words(*n)),
            ),
            Step::Deadline(t) => (
                "deadline",
                match t {
                    Some(t) => format!(
                        "timeout: {}, or grpc-timeout when sooner",
                        duration_words(*t)
                    ),
                    None => "grpc-timeout of gRPC calls".into(),
                },
            ),
            Step::Priority(p) => ("priority", format!("priority: {}", priority_word(*p))),
            Step::Filter(f) => (
                f.kind.kind_name(),
                format!(
                    "{} {}",
                    f.name,
                    w.filters
                        .get(&f.name)
                        .map_or_else(String::new, |fw| fw.all())
                ),
            ),
            Step::Forward(u) => (
                "forward",
                format!(
                    "upstream {} {}",
                    u.name,
                    w.upstreams
                        .get(&u.name)
                        .map_or_else(String::new, |uw| uw.all())
                ),
            ),
            Step::Enqueue(q, u) => (
                "enqueue",
                format!(
                    "queue {} stores the request and answers 202; delivered to upstream {} {}",
                    q.name,
                    u.name,
                    crate::queue::describe(q)
                ),
            ),
            Step::Jobs(names) => (
                "jobs",
                format!(
                    "GET and DELETE /.kaname/jobs/<id> of queue{} {}",
                    plural(names.len()),
                    names.join(", ")
                ),
            ),
            Step::Unrouted => (
                "unrouted",
                "404 no_route, or the request model's refusal".into(),
            ),
        }
    }
}

fn trace_words(t: &kaname_config::Tracing) -> String {
    let start = if t.start_traces {
        "traceparent kept or started (start_traces)"
    } else {
        "traceparent passed on"
    };
    match &t.otlp {
        None => start.into(),
        Some(o) => format!(
            "{start}; SERVER span, CLIENT span per try, exported by otlp {} to {}, sampling: {}, max_queue: {}",
            o.protocol.word(),
            kaname_config::redact_url(&o.endpoint),
            o.sampling,
            o.max_queue
        ),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A step's refusal, as the future a pass-through step returns.
pub(crate) fn refuse(e: ProxyError) -> RouteFuture {
    Box::pin(std::future::ready(Err(e)))
}
