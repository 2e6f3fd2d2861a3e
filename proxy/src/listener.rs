//! A listener: accepts connections, serves HTTP/1.1 and HTTP/2 on them and
//! hands each request to the first matching route of the running config.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use kaname_config::{Listener as ListenerConfig, ListenerProtocol};
use kaname_filters::body::{BodyEnd, OnEnd};
use kaname_filters::client_body::ClientBody;
use kaname_filters::context::Deadline;
use kaname_filters::metrics::Metrics;
use kaname_filters::retry::classify::grpc_status;
use kaname_filters::{is_grpc, Body, ErrorKind, RequestContext};
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chain::ListenerRoutes;
use crate::conn::{Activity, ActivityIo, GuardedBody};
use crate::drain::Drain;
use crate::h1_guard::H1Guard;
use crate::h2_guard::{H2Guard, H2Limits};
use crate::headers::{
    add_forwarded, client_value, ensure_request_id, ensure_traceparent, strip_hop_by_hop,
    X_REQUEST_ID,
};
use crate::request_metrics::RouteMetrics;
use crate::tls::io::ServerIo;
use crate::tls::server::{ConnTls, ServerTls};

/// What every connection of a listener shares. `routes` is swapped on reload.
pub struct ListenerShared {
    pub routes: ArcSwap<ListenerRoutes>,
    pub in_flight: IntGauge,
    pub connections: IntGauge,
    /// TLS termination, when the listener has `tls`; swapped on reload.
    pub tls: ArcSwapOption<ServerTls>,
    /// How new connections are served; swapped on reload.
    pub conn: ArcSwap<ConnSettings>,
    /// `kaname_limits_hit_total{limit="file_descriptors"}`.
    pub fd_refused: prometheus::IntCounter,
    /// `kaname_limits_hit_total{limit="stream_idle_timeout"}`.
    pub stream_idle_hit: prometheus::IntCounter,
    /// Bumped to retire the connections open so far (a reload changed how
    /// connections are served, or the listener moved or went away): each
    /// finishes its requests in flight and closes, as Envoy drains a
    /// listener it replaces, so clients reconnect to what now runs.
    pub epoch: watch::Sender<u64>,
}

impl ListenerShared {
    /// Retires every connection open now; new ones are not affected.
    pub fn retire_connections(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }
}

/// A listener's per-connection settings: protocol, head limits, timeouts.
pub struct ConnSettings {
    pub builder: auto::Builder<TokioExecutor>,
    pub idle_timeout: Duration,
    /// `stream_idle_timeout`.
    pub stream_idle_timeout: Duration,
    pub guard: GuardSettings,
    /// HTTP/2 reset and control-frame limits; None on an HTTP/1-only listener.
    pub h2: Option<H2Limits>,
    /// What these were built from, to see whether a reload changes them.
    pub key: ConnKey,
}

/// The listener settings a connection is served with.
pub type ConnKey = (ListenerProtocol, Duration, u64, Duration, u32, Duration);

/// Streams an HTTP/2 client may reset within `H2_WINDOW` (limits.md).
const H2_RESETS: u32 = 100;
/// PING, SETTINGS, PRIORITY and unearned WINDOW_UPDATE frames within `H2_WINDOW`.
const H2_CONTROL_FRAMES: u32 = 1000;
const H2_WINDOW: Duration = Duration::from_secs(10);

impl ConnSettings {
    pub fn of(cfg: &ListenerConfig, metrics: &Metrics) -> Self {
        let hit = |limit: &str| metrics.limits_hit_total.with_label_values(&[limit]);
        ConnSettings {
            builder: server_builder(cfg),
            idle_timeout: cfg.idle_timeout,
            stream_idle_timeout: cfg.stream_idle_timeout,
            guard: GuardSettings::of(cfg),
            h2: (cfg.protocol != ListenerProtocol::Http1).then(|| H2Limits {
                resets: H2_RESETS,
                control_frames: H2_CONTROL_FRAMES,
                window: H2_WINDOW,
                resets_hit: hit("h2_resets"),
                control_hit: hit("h2_control_frames"),
                streams_hit: hit("h2_max_concurrent_streams"),
            }),
            key: Self::key_of(cfg),
        }
    }

    pub fn key_of(cfg: &ListenerConfig) -> ConnKey {
        (
            cfg.protocol,
            cfg.header_read_timeout,
            cfg.max_header_bytes,
            cfg.idle_timeout,
            cfg.http2_max_concurrent_streams,
            cfg.stream_idle_timeout,
        )
    }
}

/// How the strict HTTP/1 head check runs on a listener's connections.
#[derive(Clone, Copy)]
pub struct GuardSettings {
    /// The largest head hyper accepts (its read buffer).
    pub head_limit: usize,
    /// Off for a listener that serves HTTP/2 only.
    pub enabled: bool,
    /// How long a request head may take (`header_read_timeout`).
    pub head_timeout: Duration,
}

impl GuardSettings {
    pub fn of(cfg: &ListenerConfig) -> Self {
        GuardSettings {
            head_limit: head_limit(cfg),
            enabled: cfg.protocol != ListenerProtocol::Http2,
            head_timeout: cfg.header_read_timeout,
        }
    }
}

fn head_limit(cfg: &ListenerConfig) -> usize {
    // hyper's floor is 8 KiB; it answers 431 when the head is larger.
    usize::try_from(cfg.max_header_bytes)
        .unwrap_or(usize::MAX)
        .max(8192)
}

/// Builds the HTTP server settings of a listener.
pub fn server_builder(cfg: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        // kaname's H1Guard bounds request heads instead: hyper's timeout also
        // runs while a keep-alive connection idles, closing it long before
        // `idle_timeout`, and costs a timer per request.
        .header_read_timeout(None)
        // hyper's default of 100 header lines (Envoy's too) is kept: a
        // larger limit makes hyper allocate and fill that many slots for
        // every request head (measured: 2.3% of CPU at 1000).
        .max_buf_size(head_limit(cfg))
        // One flat write per message beat writev by ~9% CPU per request
        // (bench/README.md).
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        // More are refused with REFUSED_STREAM (limits.md, 100 by default).
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): a client that opens and resets
        // streams faster than they are accepted gets a GOAWAY.
        .max_pending_accept_reset_streams(Some(20))
        // Streams kaname itself had to reset for the client's errors.
        .max_local_error_reset_streams(Some(1024))
        // What one stream may buffer to send to a slow reader: a client
        // holding many streams at a zero window holds this much per stream
        // (limits.md); 64 KiB is HTTP/2's default initial window.
        .max_send_buf_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    match cfg.protocol {
        ListenerProtocol::Auto => b,
        ListenerProtocol::Http1 => b.http1_only(),
        ListenerProtocol::Http2 => b.http2_only(),
    }
}

/// Accepts connections until `stop` turns true; connections are watched by
/// `drain` so shutdown can drain them, and by the listener's epoch so a
/// reload can retire them.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    drain: Drain,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(fd_slot) = crate::fd_budget::client_slot() else {
            // Over the descriptor budget: closed at once, so the admin port
            // and upstream connections keep theirs.
            shared.fd_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (token, mut draining) = drain.connection();
        let gauge = shared.connections.clone();
        gauge.inc();
        let shared = shared.clone();
        let settings = shared.conn.load_full();
        let stream_idle_hit = shared.stream_idle_hit.clone();
        let mut retired = shared.epoch.subscribe();
        tokio::spawn(async move {
            let (idle_timeout, guard) = (settings.idle_timeout, settings.guard);
            // TLS first where configured (bounded and counted in `accept`);
            // a connection whose handshake fails is dropped.
            let (io, conn_tls) = match shared.tls.load_full() {
                None => (ServerIo::Plain(stream), None),
                Some(tls) => match tls.accept(stream).await {
                    Some((s, c)) => (ServerIo::Tls(Box::new(s)), Some(c)),
                    None => {
                        gauge.dec();
                        drop(token);
                        return;
                    }
                },
            };
            let activity = Activity::new();
            let activity2 = activity.clone();
            let client_ip = client_value(peer.ip());
            let service = hyper::service::service_fn(move |req| {
                let guard = activity2.request();
                let fut = handle(
                    shared.clone(),
                    peer,
                    client_ip.clone(),
                    conn_tls.clone(),
                    req,
                );
                async move {
                    // The request is in flight until its response body ends.
                    let res = fut.await;
                    res.map(|r| r.map(|body| GuardedBody::new(body, guard)))
                }
            });
            let io = ActivityIo::new(TokioIo::new(io), activity.clone());
            let io = H2Guard::new(io, settings.h2.clone(), Some(activity.clone()));
            let io = H1Guard::new(io, guard.head_limit, guard.enabled, guard.head_timeout);
            let conn = settings.builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let stream_idle = settings.stream_idle_timeout;
            let result = loop {
                // The one timer that can act now: the stall of the requests
                // in flight, or, with none, the idle end of the connection
                // (a past deadline of the other kind would spin the loop).
                // With none, wake by `stream_idle` at the latest to look at
                // requests that came since.
                let deadline = if activity.has_requests() {
                    activity.stall_deadline(stream_idle)
                } else {
                    activity
                        .idle_deadline(idle_timeout)
                        .min(Instant::now() + stream_idle)
                };
                let event = tokio::select! {
                    r = conn.as_mut() => ConnEvent::Done(r),
                    _ = draining.wait_for(|d| *d) => ConnEvent::Close,
                    _ = retired.changed() => ConnEvent::Close,
                    _ = tokio::time::sleep_until(deadline) => ConnEvent::Tick,
                };
                match event {
                    ConnEvent::Done(r) => break r,
                    ConnEvent::Tick if activity.is_stalled(stream_idle) => {
                        // Requests in flight moved nothing for
                        // stream_idle_timeout: reset, so their upstream
                        // tries are cancelled (limits.md).
                        stream_idle_hit.inc();
                        tracing::debug!(%peer, "stream_idle_timeout: connection reset");
                        break Ok(());
                    }
                    // Not due: the deadline moved on, or a request came or went.
                    ConnEvent::Tick if !activity.is_idle(idle_timeout) => continue,
                    ConnEvent::Tick | ConnEvent::Close => {
                        // Finish requests in flight, refuse new ones, then close.
                        conn.as_mut().graceful_shutdown();
                        break conn.as_mut().await;
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            gauge.dec();
            drop(token);
            drop(fd_slot);
        });
    }
}

enum ConnEvent<T> {
    Done(T),
    Close,
    Tick,
}

struct InFlightGuard(IntGauge);
impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `grpc-timeout` header as a duration (`1S`, `250m`, `100u`, ...).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

async fn handle(
    shared: Arc<ListenerShared>,
    peer: SocketAddr,
    client_ip: HeaderValue,
    tls: Option<Arc<ConnTls>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    shared.in_flight.inc();
    let _in_flight = InFlightGuard(shared.in_flight.clone());
    let routes = shared.routes.load_full();
    let (mut parts, body) = req.into_parts();
    // The request model first: nothing after this reads the raw target.
    let model = routes.model.apply(&mut parts);
    strip_hop_by_hop(&mut parts.headers, matches!(model, Ok(true)));
    // After the strip: a content-type named in Connection never reaches
    // the upstream, so it cannot make a request gRPC here either.
    let grpc = is_grpc(&parts.headers);
    let request_id = ensure_request_id(&mut parts.headers);
    if let Some(t) = &tls {
        // The identity header is kaname's word, never the client's.
        parts.headers.remove(&t.header);
        if let Some(id) = &t.identity {
            parts.headers.insert(t.header.clone(), id.clone());
        }
    }
    let method = parts.method.clone();
    let path = routes.access_log.then(|| parts.uri.path().to_owned());

    let found = match &model {
        Ok(_) => routes.find(&parts),
        Err(_) => None,
    };
    let (mut res, metrics, route_name, upstream_name) = match (model, found) {
        (Err(refusal), _) => (refusal.response(grpc), &routes.no_route_metrics, "", ""),
        // A client whose identity is not allowed learns nothing of the
        // routes: 403 on any path, as on a routed one below.
        (Ok(_), None) if tls.as_ref().is_some_and(|t| !t.allowed) => (
            ErrorKind::Forbidden.response(
                &format!(
                    "client identity is not allowed on listener \"{}\"",
                    routes.name
                ),
                grpc,
            ),
            &routes.no_route_metrics,
            "",
            "",
        ),
        (Ok(_), None) => {
            let msg = format!("no route for {} {}", parts.method, parts.uri.path());
            (
                ErrorKind::NoRoute.response(&msg, grpc),
                &routes.no_route_metrics,
                "",
                "",
            )
        }
        (Ok(_), Some(route)) => {
            add_forwarded(&mut parts.headers, &client_ip, tls.is_some());
            if routes.start_traces {
                ensure_traceparent(&mut parts.headers);
            }
            parts.extensions.insert(RequestContext {
                client_addr: peer,
                listener: routes.name.clone(),
                route: route.name.clone(),
                upstream: route.upstream.clone(),
                grpc,
            });
            let res = match route.max_request_body {
                // The handshake accepts any certificate of `client_ca`;
                // `allowed_identities` is enforced per request (403).
                _ if tls.as_ref().is_some_and(|t| !t.allowed) => ErrorKind::Forbidden.response(
                    &format!(
                        "client identity {:?} is not allowed on listener \"{}\"",
                        tls.as_ref()
                            .and_then(|t| t.identity.as_ref())
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        routes.name
                    ),
                    grpc,
                ),
                Some(limit) if declared_length(&parts.headers).is_some_and(|n| n > limit) => {
                    ErrorKind::PayloadTooLarge.response(
                        &format!("request body is larger than the limit of {limit} bytes"),
                        grpc,
                    )
                }
                limit => {
                    let (body, watch) =
                        ClientBody::new(body, limit, Some(routes.request_body_timeout));
                    let body: Body = body.boxed();
                    parts.extensions.insert(watch.clone());
                    // The smaller of the route timeout and the gRPC deadline wins.
                    let grpc_deadline = grpc.then(|| grpc_timeout(&parts.headers)).flatten();
                    let deadline = route.timeout.into_iter().chain(grpc_deadline).min();
                    if let Some(d) = deadline {
                        parts.extensions.insert(Deadline(started.into_std() + d));
                    }
                    let req = Request::from_parts(parts, body);
                    // Route services are always ready: filters that wait
                    // (queues) wait inside `call`, so no poll_ready here.
                    let call = tower::Service::call(&mut route.service.clone(), req);
                    match deadline {
                        None => call.await.unwrap_or_else(|never| match never {}),
                        Some(d) => match tokio::time::timeout(d, call).await {
                            Ok(Ok(r)) if grpc_deadline.is_some() => {
                                crate::grpc_deadline::bound(r, started + d, &route.upstream)
                            }
                            Ok(r) => r.unwrap_or_else(|never| match never {}),
                            // Cut while the client was still sending its
                            // body: the client's doing, not the upstream's.
                            Err(_) if watch.incomplete() => ErrorKind::RequestTimeout.response(
                                &format!("request body still arriving after {d:?}"),
                                grpc,
                            ),
                            Err(_) => {
                                let mut r = ErrorKind::UpstreamTimeout.response(
                                    &format!(
                                        "no response from upstream \"{}\" within {d:?}",
                                        route.upstream
                                    ),
                                    grpc,
                                );
                                r.extensions_mut()
                                    .insert(kaname_filters::UpstreamFailure::Timeout);
                                r
                            }
                        },
                    }
                }
            };
            (res, &route.metrics, &*route.name, &*route.upstream)
        }
    };
    res.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let status = res.status();
    let elapsed = started.elapsed();
    metrics.observe(&method, status, elapsed);
    if grpc {
        res = observe_grpc(res, metrics);
    }
    if let Some(path) = path {
        let bytes = res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let refused_by = res
            .extensions()
            .get::<kaname_filters::context::RefusedBy>()
            .map_or("", |r| &*r.0);
        tracing::info!(
            target: "kaname::access",
            method = %method,
            path = %path,
            route = route_name,
            upstream = upstream_name,
            filter = refused_by,
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes,
            request_id = request_id.to_str().unwrap_or(""),
            client = %peer,
        );
    }
    Ok(res)
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Counts a gRPC call by its final status: from the head of a trailers-only
/// answer, else from the trailers at the end of the body.
fn observe_grpc(res: Response<Body>, metrics: &Arc<RouteMetrics>) -> Response<Body> {
    if let Some(code) = grpc_status(res.headers()) {
        metrics.observe_grpc(code);
        return res;
    }
    if !res.status().is_success() {
        // Not a gRPC answer at all (an HTTP error from the upstream).
        metrics.observe_grpc(grpc_code_for_http(res.status()));
        return res;
    }
    // Counted by the trailers' status; a body that ends without one (the
    // upstream broke off) is UNKNOWN, one the client dropped CANCELLED.
    let metrics = metrics.clone();
    res.map(|b| {
        OnEnd::wrap(b, move |end| {
            metrics.observe_grpc(match end {
                BodyEnd::Trailers(t) => grpc_status(t).unwrap_or(2),
                BodyEnd::Eof | BodyEnd::Error => 2,
                BodyEnd::Dropped => 1,
            })
        })
    })
}

/// The gRPC spec's mapping of HTTP statuses seen by a gRPC client.
fn grpc_code_for_http(status: http::StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}
