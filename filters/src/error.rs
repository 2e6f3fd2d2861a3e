//! Why kaname answers a request itself: the one error type every filter and
//! the forwarder return instead of a response. One layer (the proxy's
//! `Rescue`) turns it into the answer, so every refusal and failure has the
//! same shape: the `kaname-error` kind, the JSON or gRPC body, the
//! `Retry-After` and other headers the refusing step adds, and the
//! access-log fields (`filter`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::context::UpstreamFailure;
use crate::{Body, ErrorKind};

/// A request kaname answers itself (a refusal) or could not get an answer
/// for (an upstream failure). Boxed: errors are rare, and every route
/// future's output is a `Result` with this in it, so it stays one pointer.
#[derive(Debug, Clone)]
pub struct ProxyError(Box<ErrorDetails>);

/// What a [`ProxyError`] says (its fields read through it).
#[derive(Debug, Clone)]
pub struct ErrorDetails {
    pub kind: ErrorKind,
    /// For the client (JSON `message` or `grpc-message`) and the debug log.
    pub message: String,
    /// How the try failed, when it did: what `retry_on`, `failure_on` and
    /// outlier detection read.
    pub failure: Option<UpstreamFailure>,
    /// The filter that refused the request (the access log's `filter`).
    pub refused_by: Option<Arc<str>>,
    /// Which of its rules did (an authorize filter; the access log's `rule`).
    pub rule: Option<Arc<str>>,
    /// The endpoint the failed try used, so a retry can avoid it.
    pub endpoint: Option<SocketAddr>,
    /// Headers of the answer besides kaname's own (`Retry-After`,
    /// `WWW-Authenticate`, `RateLimit-*`, `Allow`).
    pub headers: HeaderMap,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProxyError(Box::new(ErrorDetails {
            kind,
            message: message.into(),
            failure: None,
            refused_by: None,
            rule: None,
            endpoint: None,
            headers: HeaderMap::new(),
        }))
    }

    /// A filter's refusal (401/403, 429, circuit open, shed).
    pub fn refused(kind: ErrorKind, filter: &Arc<str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(kind, message);
        e.refused_by = Some(filter.clone());
        e
    }

    /// A try that failed: no connection, a reset, a timeout.
    pub fn upstream(kind: ErrorKind, failure: UpstreamFailure, message: impl Into<String>) -> Self {
        let mut e = Self::new(kind, message);
        e.failure = Some(failure);
        e
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    pub fn at_endpoint(mut self, addr: SocketAddr) -> Self {
        self.endpoint = Some(addr);
        self
    }

    /// The answer: JSON for HTTP, trailers-only for gRPC, with this error's
    /// headers and a [`Rescued`] record in the extensions.
    pub fn into_response(self, grpc: bool) -> Response<Body> {
        let e = *self.0;
        let mut res = e.kind.response(&e.message, grpc);
        let h = res.headers_mut();
        // `None`: another value of the name before it.
        let mut last = None;
        for (name, value) in e.headers {
            if let Some(name) = name {
                h.remove(&name);
                last = Some(name);
            }
            if let Some(name) = &last {
                h.append(name.clone(), value);
            }
        }
        res.extensions_mut().insert(Rescued {
            kind: e.kind,
            refused_by: e.refused_by,
            rule: e.rule,
            failure: e.failure,
        });
        res
    }

    /// The HTTP status of this answer as a client sees it (200 for gRPC,
    /// whose status is `grpc-status`).
    pub fn status(&self, grpc: bool) -> http::StatusCode {
        if grpc {
            http::StatusCode::OK
        } else {
            self.kind.status()
        }
    }
}

impl std::ops::Deref for ProxyError {
    type Target = ErrorDetails;
    fn deref(&self) -> &ErrorDetails {
        &self.0
    }
}

impl std::ops::DerefMut for ProxyError {
    fn deref_mut(&mut self) -> &mut ErrorDetails {
        &mut self.0
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ProxyError {}

/// In the extensions of an answer kaname made from a [`ProxyError`]: what
/// the access log and the layers outside the rescue need to know of it.
#[derive(Debug, Clone)]
pub struct Rescued {
    pub kind: ErrorKind,
    pub refused_by: Option<Arc<str>>,
    pub rule: Option<Arc<str>>,
    pub failure: Option<UpstreamFailure>,
}

/// A unit test's rescue: the answer as the proxy's rescue layer makes it
/// (gRPC from the error's kind is not known here, so HTTP).
#[cfg(test)]
pub fn rescue(e: ProxyError) -> Response<Body> {
    e.into_response(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_headers_and_filter() {
        let filter: Arc<str> = "limits".into();
        let res = ProxyError::refused(ErrorKind::RateLimited, &filter, "slow down")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("3"))
            .into_response(false);
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "3");
        assert_eq!(res.headers()["kaname-error"], "rate_limited");
        let rescued = res.extensions().get::<Rescued>().expect("rescued");
        assert_eq!(rescued.refused_by.as_deref(), Some("limits"));
    }

    #[test]
    fn grpc_answers_are_trailers_only() {
        let e = ProxyError::upstream(
            ErrorKind::UpstreamUnavailable,
            UpstreamFailure::Connect,
            "refused",
        );
        assert_eq!(e.status(true), 200);
        let res = e.into_response(true);
        assert_eq!(res.headers()["grpc-status"], "14");
    }
}
