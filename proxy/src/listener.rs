//! A listener: accepts connections, serves HTTP/1.1 and HTTP/2 on them and
//! hands each request to the first matching route of the running config.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use kaname_config::{Listener as ListenerConfig, ListenerProtocol};
use kaname_filters::client_body::ClientBody;
use kaname_filters::{RequestContext, RouteFuture};
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chain::ListenerRoutes;
use crate::conn::{Activity, GuardedBody};
use crate::drain::Drain;
use crate::h1_guard::H1Guard;
use crate::h2_guard::{H2Guard, H2Limits};
use crate::headers::client_value;
use crate::serve::{self, ServeBuilders, Served};
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
    pub builders: ServeBuilders,
    /// What the listener serves: one protocol, or either.
    pub protocol: ListenerProtocol,
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
            builders: server_builders(cfg),
            protocol: cfg.protocol,
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

/// Applies a listener's HTTP/1 settings to hyper's builder or to
/// hyper-util's `auto` one (the same methods, different types).
macro_rules! http1_settings {
    ($b:expr, $cfg:expr) => {
        $b
            // kaname's H1Guard bounds request heads instead: hyper's timeout also
            // runs while a keep-alive connection idles, closing it long before
            // `idle_timeout`, and costs a timer per request.
            .header_read_timeout(None)
            // hyper's default of 100 header lines (Envoy's too) is kept: a
            // larger limit makes hyper allocate and fill that many slots for
            // every request head (measured: 2.3% of CPU at 1000).
            .max_buf_size(head_limit($cfg))
            // One flat write per message beat writev by ~9% CPU per request
            // (bench/README.md).
            .writev(false)
    };
}

/// The same for HTTP/2.
macro_rules! http2_settings {
    ($b:expr, $cfg:expr) => {
        $b.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from($cfg.max_header_bytes).unwrap_or(u32::MAX))
            // More are refused with REFUSED_STREAM (limits.md, 100 by default).
            .max_concurrent_streams($cfg.http2_max_concurrent_streams)
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
            .keep_alive_timeout(Duration::from_secs(20))
    };
}

/// Builds the HTTP server settings of a listener: hyper's HTTP/1 and HTTP/2
/// builders, and hyper-util's `auto` for a connection whose protocol is not
/// known before it is read (serve.rs).
pub fn server_builders(cfg: &ListenerConfig) -> ServeBuilders {
    let mut http1 = http1::Builder::new();
    http1_settings!(http1, cfg);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2_settings!(http2, cfg);
    let mut b = auto::Builder::new(TokioExecutor::new());
    http1_settings!(b.http1(), cfg);
    http2_settings!(b.http2(), cfg);
    let auto = match cfg.protocol {
        ListenerProtocol::Auto => b,
        ListenerProtocol::Http1 => b.http1_only(),
        ListenerProtocol::Http2 => b.http2_only(),
    };
    ServeBuilders { http1, http2, auto }
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
        let task = async move {
            let (idle_timeout, guard) = (settings.idle_timeout, settings.guard);
            // TLS first where configured (bounded and counted in `accept`);
            // a connection whose handshake fails is dropped.
            let (io, conn_tls) = match shared.tls.load_full() {
                None => (ServerIo::Plain(stream), None),
                // Boxed: the handshake's state is large and lives only now;
                // inline it would make every connection's task as large.
                Some(tls) => match Box::pin(tls.accept(stream)).await {
                    Some((s, c)) => (ServerIo::Tls(Box::new(s)), Some(c)),
                    None => {
                        gauge.dec();
                        drop(token);
                        return;
                    }
                },
            };
            // A new connection's first head is bounded from its start, the
            // wait for its first bytes included (slowloris).
            let head_by = Instant::now() + guard.head_timeout;
            // Silent past the deadline, gone, draining or retired: closed.
            let protocol = tokio::select! {
                p = tokio::time::timeout_at(head_by, serve::detect(&io, settings.protocol)) => {
                    p.ok().and_then(Result::ok)
                }
                _ = draining.wait_for(|d| *d) => None,
                _ = retired.changed() => None,
            };
            let Some(protocol) = protocol else {
                gauge.dec();
                drop(token);
                return;
            };
            let activity = Activity::new();
            let activity2 = activity.clone();
            let client_ip = client_value(peer.ip());
            let service = hyper::service::service_fn(move |req| {
                let guard = activity2.request();
                let fut = enter(&shared, peer, &client_ip, conn_tls.as_ref(), req);
                async move {
                    // The rescue layer answers every error; this is a backstop.
                    let res = fut.await.unwrap_or_else(|e| e.into_response(false));
                    // The request is in flight until its response body ends.
                    Ok::<_, Infallible>(res.map(|body| GuardedBody::new(body, guard)))
                }
            });
            // H2Guard tells `activity` of every byte either way. A connection
            // known to be HTTP/1 is not sniffed for HTTP/2 frames.
            let h2_limits = match protocol {
                serve::Protocol::Http1 => None,
                _ => settings.h2.clone(),
            };
            let io = H2Guard::new(TokioIo::new(io), h2_limits, Some(activity.clone()));
            let io = H1Guard::new(io, guard.head_limit, guard.enabled, guard.head_timeout)
                .first_head_by(head_by);
            let conn = Served::new(&settings.builders, protocol, io, service);
            tokio::pin!(conn);
            let stream_idle = settings.stream_idle_timeout;
            // HTTP/2: the first request by `head_by`, or the connection is
            // closed (H1Guard bounds HTTP/1's first head itself, with its
            // 408: not yet known, it is given a second to act first). A
            // client that sends the preface and then nothing, or only
            // SETTINGS and PINGs, holds no connection until idle_timeout.
            let first_request_by = match protocol {
                serve::Protocol::Http1 => None,
                serve::Protocol::Http2 => Some(head_by),
                serve::Protocol::Unknown => Some(head_by + Duration::from_secs(1)),
            };
            // The timer looks at the connection's activity counts at its
            // deadlines, and at least every eighth of the shorter timeout.
            let mut seen = activity.look(Instant::now());
            let result = loop {
                // The one timer that can act now: the stall of the requests
                // in flight, or, with none, the idle end of the connection
                // (a past deadline of the other kind would spin the loop);
                // the next look, to see requests and bytes that came since.
                let deadline = if activity.has_requests() {
                    seen.stall_deadline(stream_idle)
                } else {
                    seen.idle_deadline(idle_timeout)
                };
                let deadline = deadline.min(seen.next_look(idle_timeout, stream_idle));
                let deadline = match first_request_by {
                    Some(by) if !activity.has_had_requests() => deadline.min(by),
                    _ => deadline,
                };
                // The drain, the reload and the timer, polled only when one
                // of them woke the task: the connection wakes it several
                // times a request, and polling the three each time (a lock
                // in each watch) was ~1,000 instructions a request. A
                // FuturesUnordered polls only what its own waker woke.
                let mut signals = FuturesUnordered::new();
                signals.push(async {
                    tokio::select! {
                        _ = draining.wait_for(|d| *d) => ConnEvent::Close,
                        _ = retired.changed() => ConnEvent::Close,
                        _ = tokio::time::sleep_until(deadline) => ConnEvent::Tick,
                    }
                });
                let event = tokio::select! {
                    // The connection first: it is what wakes the task most.
                    biased;
                    r = conn.as_mut() => ConnEvent::Done(r),
                    Some(e) = signals.next() => e,
                };
                drop(signals);
                if let ConnEvent::Tick = event {
                    seen.update(&activity, Instant::now());
                }
                match event {
                    ConnEvent::Done(r) => break r,
                    ConnEvent::Tick if seen.is_stalled(&activity, stream_idle) => {
                        // Requests in flight moved nothing for
                        // stream_idle_timeout: reset, so their upstream
                        // tries are cancelled (limits.md).
                        stream_idle_hit.inc();
                        tracing::debug!(%peer, "stream_idle_timeout: connection reset");
                        break Ok(());
                    }
                    ConnEvent::Tick
                        if first_request_by.is_some_and(|by| Instant::now() >= by)
                            && !activity.has_had_requests() =>
                    {
                        tracing::debug!(%peer, "no request within header_read_timeout: connection closed");
                        // GOAWAY for a client that listens; one that does
                        // not answer its PING is not waited for.
                        conn.as_mut().graceful_shutdown();
                        let grace = Instant::now() + Duration::from_secs(1);
                        break tokio::time::timeout_at(grace, conn.as_mut())
                            .await
                            .unwrap_or(Ok(()));
                    }
                    // Not due: the deadline moved on, or a request came or went.
                    ConnEvent::Tick if !seen.is_idle(&activity, idle_timeout) => continue,
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
        };
        tokio::spawn(task);
    }
}

enum ConnEvent<T> {
    Done(T),
    Close,
    Tick,
}

/// Where a request enters kaname: its body wrapped (`request_body_timeout`;
/// the route's body-limit step bounds it later), its connection's facts in
/// its extensions, then the listener's pipeline (chain.rs) from the config
/// running now.
fn enter(
    shared: &ListenerShared,
    peer: SocketAddr,
    client_ip: &HeaderValue,
    tls: Option<&Arc<ConnTls>>,
    req: Request<Incoming>,
) -> RouteFuture {
    let routes = shared.routes.load();
    let (mut parts, body) = req.into_parts();
    let (body, watch) = ClientBody::new(body, None, Some(routes.request_body_timeout));
    parts.extensions.insert(RequestContext {
        client_addr: peer,
        client_ip: client_ip.clone(),
        tls: tls.is_some(),
        peer: tls.and_then(|t| t.peer.clone()),
        listener: routes.name.clone(),
        route: routes.unrouted.clone(),
        upstream: routes.unrouted.clone(),
        grpc: false,
        body: Some(watch),
    });
    if let Some(t) = tls {
        parts.extensions.insert(t.clone());
    }
    let req = Request::from_parts(parts, body.boxed());
    tower::Service::call(&mut routes.pipeline.clone(), req)
}
