//! What kaname knows about a request, carried in its extensions so filters
//! need no extra arguments.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// Placed in every request's extensions where it enters (its connection's
/// facts), completed by the request model (`grpc`) and the router (`route`,
/// `upstream`) before the route's layers run.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The peer address of the client connection.
    pub client_addr: SocketAddr,
    /// Its IP as a header value (for `x-forwarded-for`), made once per
    /// connection.
    pub client_ip: http::HeaderValue,
    /// The connection is TLS.
    pub tls: bool,
    /// The verified client certificate's names, when there is one.
    pub peer: Option<Arc<PeerIdentity>>,
    pub listener: Arc<str>,
    /// Empty until routed (and for a request no route takes).
    pub route: Arc<str>,
    pub upstream: Arc<str>,
    /// `content-type` starts with `application/grpc` (after the hop-by-hop
    /// strip, so a `Connection`-named content-type does not count).
    pub grpc: bool,
    /// The watch of the request's body ([`ClientBodyWatch::of`] finds it
    /// here): a field, not an extension of its own, as each extension is
    /// an allocation per request.
    pub body: Option<crate::client_body::ClientBodyWatch>,
}

/// The names a verified client certificate vouches for: its URI SANs
/// (SPIFFE IDs) first, then its DNS SANs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: Vec<String>,
}

impl RequestContext {
    /// Whether `req` is a gRPC call: from its context, else (a filter
    /// tested alone) from its `content-type`.
    pub fn grpc_of<B>(req: &http::Request<B>) -> bool {
        req.extensions()
            .get::<RequestContext>()
            .map_or_else(|| crate::is_grpc(req.headers()), |c| c.grpc)
    }
}

/// A route's own `priority:` (high | normal | low), placed in the request's
/// extensions by the listener for a route that sets one. Every
/// `concurrency_limit` filter on the route takes it as the request's class
/// instead of reading its `priority` source (header or claim). Absent: the
/// filter's source decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePriority(pub kaname_config::types::PriorityClass);

/// Placed in the extensions of a response kaname made because a try failed,
/// so retry and breaker filters can tell a connect failure from a reset or
/// a timeout without parsing bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made (refused, unreachable, connect timeout,
    /// or no endpoint to send to).
    Connect,
    /// The connection broke after the request was (partly) sent.
    Reset,
    /// A per-try or route timeout fired.
    Timeout,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect_failure",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Timeout => "timeout",
        }
    }
}

/// How many tries a request's forwarder sent (every retry's included), for
/// the access log: set by the observe layer when the log is on, counted by
/// the forwarder.
#[derive(Clone, Debug, Default)]
pub struct TryCount(pub Arc<std::sync::atomic::AtomicU32>);

impl TryCount {
    pub fn count(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The earliest instant a timeout (route, gRPC deadline, per-try) cuts the
/// request: set by the proxy's deadline layer, tightened by the retry
/// filter for each try. On tokio's clock, as every timer in kaname is, so a
/// paused-clock test moves them all together.
/// A try whose future is dropped before it was cancelled by its client,
/// which says nothing about the upstream; one dropped after it timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// For a try future dropped unfinished: was it cut by a timeout (an
    /// upstream failure) rather than by its client going away? Timers never
    /// fire early, so a timed-out try is always dropped after its deadline.
    pub fn expired(deadline: Option<Deadline>) -> bool {
        deadline.is_some_and(|d| Instant::now() >= d.0)
    }

    /// The earlier of the request's deadline and `limit` from now.
    pub fn tighten(ext: &mut http::Extensions, limit: std::time::Duration) {
        let per_try = Instant::now() + limit;
        let at = match ext.get::<Deadline>() {
            Some(d) if d.0 < per_try => d.0,
            _ => per_try,
        };
        ext.insert(Deadline(at));
    }
}

/// Set by the retry filter on a retry's request: the forwarder picks another
/// endpoint than this one when the balancer has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvoidEndpoint(pub SocketAddr);

/// Set by the retry filter on each try's request; the forwarder writes the
/// endpoint it picked into it (an answer, a failure or a try cut by
/// `per_try_timeout` alike), so the next try learns which endpoint to
/// avoid. Filters cannot name the proxy's endpoint type, so they speak in
/// addresses. A slot, not a mark on the response: a response's extensions
/// are empty until something is put in them, and the first insert
/// allocates them, on every response.
#[derive(Debug, Clone, Default)]
pub struct EndpointSlot(pub Arc<std::sync::Mutex<Option<SocketAddr>>>);

impl EndpointSlot {
    pub fn set(&self, addr: SocketAddr) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(addr);
        }
    }

    pub fn get(&self) -> Option<SocketAddr> {
        self.0.lock().ok().and_then(|slot| *slot)
    }
}
