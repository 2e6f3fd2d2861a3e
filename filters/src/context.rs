//! What kaname knows about a request, carried in its extensions so filters
//! need no extra arguments.

use std::net::SocketAddr;
use std::sync::Arc;

/// Placed in every request's extensions by the listener before the chain runs.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The peer address of the client connection.
    pub client_addr: SocketAddr,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub upstream: Arc<str>,
    /// `content-type` starts with `application/grpc`.
    pub grpc: bool,
}

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
