//! gRPC status codes kaname reads from HTTP answers.

use http::StatusCode;

/// The gRPC spec's mapping of the HTTP status of an answer that is not a
/// gRPC answer, as a gRPC client sees it (doc/http-grpc-status-mapping.md).
pub fn for_http_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}
