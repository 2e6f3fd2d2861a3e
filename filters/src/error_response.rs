//! kaname's own answers: the `kaname-error` header and JSON body of the
//! contract, or a trailers-only gRPC answer when the request is gRPC.
//! Every refusal in kaname is built here, so they cannot drift apart.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// The kinds of answer kaname makes itself (the contract's error table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NoRoute,
    Unauthenticated,
    Forbidden,
    RateLimited,
    CircuitOpen,
    Overloaded,
    UpstreamUnavailable,
    UpstreamTimeout,
    PayloadTooLarge,
    HeaderTooLarge,
    BadRequest,
    /// More than one token for a jwt filter (RFC 6750 §2, `invalid_request`).
    InvalidRequest,
    /// `CONNECT` (kaname is not a forward proxy).
    MethodNotAllowed,
    /// The client's request body stalled past `request_body_timeout`.
    RequestTimeout,
    /// `/.kaname/jobs/<id>`: no such job, or it expired (async.md).
    NoJob,
    /// A job that cannot be cancelled now (delivering, finished, cancelled).
    JobConflict,
    /// An `Idempotency-Key` reused for another request.
    IdempotencyMismatch,
    /// A callback URL whose host the queue does not allow.
    CallbackNotAllowed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::NoJob => "no_job",
            ErrorKind::JobConflict => "job_conflict",
            ErrorKind::IdempotencyMismatch => "idempotency_mismatch",
            ErrorKind::CallbackNotAllowed => "callback_not_allowed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::CircuitOpen | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::BadRequest | ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::NoJob => StatusCode::NOT_FOUND,
            ErrorKind::JobConflict => StatusCode::CONFLICT,
            ErrorKind::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::CallbackNotAllowed => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code a gRPC client receives instead of the HTTP status.
    pub fn grpc_status(self) -> u32 {
        match self {
            ErrorKind::NoRoute | ErrorKind::MethodNotAllowed => 12, // UNIMPLEMENTED
            ErrorKind::Unauthenticated => 16,                       // UNAUTHENTICATED
            ErrorKind::Forbidden => 7,                              // PERMISSION_DENIED
            ErrorKind::InvalidRequest => 3,                         // INVALID_ARGUMENT
            ErrorKind::RateLimited | ErrorKind::Overloaded | ErrorKind::PayloadTooLarge => 8,
            ErrorKind::CircuitOpen | ErrorKind::UpstreamUnavailable => 14, // UNAVAILABLE
            ErrorKind::UpstreamTimeout | ErrorKind::RequestTimeout => 4,   // DEADLINE_EXCEEDED
            ErrorKind::HeaderTooLarge | ErrorKind::BadRequest => 13,       // INTERNAL
            ErrorKind::NoJob => 5,                                         // NOT_FOUND
            ErrorKind::JobConflict => 9,                                   // FAILED_PRECONDITION
            ErrorKind::IdempotencyMismatch | ErrorKind::CallbackNotAllowed => 3, // INVALID_ARGUMENT
        }
    }

    /// The answer for this kind: JSON for HTTP, trailers-only for gRPC.
    pub fn response(self, message: &str, grpc: bool) -> Response<Body> {
        let kind = HeaderValue::from_static(self.as_str());
        if grpc {
            let mut res = Response::new(body::empty());
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(self.grpc_status()));
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
                h.insert("grpc-message", v);
            }
            h.insert("kaname-error", kind);
            return res;
        }
        let json = serde_json::json!({ "error": self.as_str(), "message": message });
        let mut res = Response::new(body::full(json.to_string()));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("kaname-error", kind);
        res
    }
}

/// What gRPC's `grpc-message` escapes: everything but printable ASCII
/// (0x20–0x7E), and `%` itself (PROTOCOL-HTTP2.md).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%`
/// passes, everything else is `%XX` of its UTF-8 bytes.
pub fn grpc_percent_encode(msg: &str) -> String {
    percent_encoding::utf8_percent_encode(msg, GRPC_MESSAGE).to_string()
}

/// True when the request's `content-type` makes it a gRPC call.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().starts_with(b"application/grpc"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answer_has_header_and_json() {
        let res = ErrorKind::NoRoute.response("no route for GET /x", false);
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()["kaname-error"], "no_route");
        assert_eq!(res.headers()["content-type"], "application/json");
    }

    #[test]
    fn invalid_request_is_a_400_or_invalid_argument() {
        let res = ErrorKind::InvalidRequest.response("two tokens", false);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()["kaname-error"], "invalid_request");
        let res = ErrorKind::InvalidRequest.response("two tokens", true);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "3");
        assert_eq!(res.headers()["kaname-error"], "invalid_request");
    }

    #[test]
    fn grpc_messages_escape_percent_controls_and_non_ascii() {
        assert_eq!(grpc_percent_encode("a b~"), "a b~");
        assert_eq!(grpc_percent_encode("100%\n"), "100%25%0A");
        assert_eq!(grpc_percent_encode("ü"), "%C3%BC");
    }

    #[test]
    fn grpc_answer_is_trailers_only() {
        let res = ErrorKind::RateLimited.response("slow down: 100%", true);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "8");
        assert_eq!(res.headers()["grpc-message"], "slow down: 100%25");
        assert_eq!(res.headers()["kaname-error"], "rate_limited");
    }
}
